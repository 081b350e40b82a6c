"""Field encoding: little-endian fixed-width integers, strings and maps (spec § 1).

A :class:`FieldReader` walks one section payload and raises :class:`FormatError`
naming the field at fault on any short read or invalid value; a
:class:`FieldWriter` appends the same fields to a buffer.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping

from .errors import FormatError
from .limits import MAX_MAP_BYTES, MAX_MAP_ENTRIES, MAX_MAP_KEY_BYTES

_U8 = struct.Struct("<B")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


class FieldReader:
    """Reads fields from ``data[start:end]``; ``where`` prefixes every error message.

    >>> r = FieldReader(b"\\x02\\x00hi", where="META")
    >>> r.str16("key", max_bytes=8)
    'hi'
    """

    def __init__(self, data: bytes | memoryview, where: str, start: int = 0, end: int | None = None):
        self.data = memoryview(data)
        self.pos = start
        self.end = len(self.data) if end is None else end
        self.where = where

    def fail(self, message: str) -> FormatError:
        return FormatError(f"{self.where}: {message}")

    @property
    def remaining(self) -> int:
        return self.end - self.pos

    def take(self, size: int, field: str) -> memoryview:
        if size < 0 or size > self.remaining:
            raise self.fail(f"{field} needs {size} bytes but only {self.remaining} remain")
        view = self.data[self.pos : self.pos + size]
        self.pos += size
        return view

    def _unpack(self, fmt: struct.Struct, field: str) -> int:
        return fmt.unpack(self.take(fmt.size, field))[0]

    def u8(self, field: str) -> int:
        return self._unpack(_U8, field)

    def u16(self, field: str) -> int:
        return self._unpack(_U16, field)

    def u32(self, field: str) -> int:
        return self._unpack(_U32, field)

    def u64(self, field: str) -> int:
        return self._unpack(_U64, field)

    def _text(self, size: int, field: str, min_bytes: int, max_bytes: int) -> str:
        if size < min_bytes or size > max_bytes:
            raise self.fail(f"{field} is {size} bytes, allowed {min_bytes}..{max_bytes}")
        raw = self.take(size, field)
        try:
            return bytes(raw).decode("utf-8")
        except UnicodeDecodeError as error:
            raise self.fail(f"{field} is not valid UTF-8 ({error.reason})") from None

    def str8(self, field: str, *, max_bytes: int, min_bytes: int = 0) -> str:
        return self._text(self.u8(f"{field} length"), field, min_bytes, max_bytes)

    def str16(self, field: str, *, max_bytes: int, min_bytes: int = 0) -> str:
        return self._text(self.u16(f"{field} length"), field, min_bytes, max_bytes)

    def map(self, field: str) -> dict[str, str]:
        """A metadata map (spec § 1.3): u16 count, then sorted unique (key, value) pairs."""
        start = self.pos
        count = self.u16(f"{field} count")
        if count > MAX_MAP_ENTRIES:
            raise self.fail(f"{field} has {count} entries, at most {MAX_MAP_ENTRIES} allowed")
        result: dict[str, str] = {}
        previous: bytes | None = None
        for number in range(count):
            key = self.str16(f"{field} key #{number}", min_bytes=1, max_bytes=MAX_MAP_KEY_BYTES)
            encoded = key.encode("utf-8")
            if previous is not None and encoded <= previous:
                kind = "duplicate" if encoded == previous else "out of order"
                raise self.fail(f"{field} key {key!r} is {kind} (keys must strictly increase)")
            previous = encoded
            result[key] = self.str16(f"{field} value of {key!r}", max_bytes=0xFFFF)
            if self.pos - start > MAX_MAP_BYTES:
                raise self.fail(f"{field} is longer than {MAX_MAP_BYTES} bytes")
        return result

    def expect_end(self, allow_extension: bool) -> None:
        """Unknown trailing fields are only allowed in files of a newer minor (spec § 2.4)."""
        if self.remaining and not allow_extension:
            raise self.fail(f"{self.remaining} unexpected bytes after the last field")


class FieldWriter:
    """Appends fields in the layout :class:`FieldReader` reads.

    >>> w = FieldWriter(); w.str16("hi"); bytes(w.buffer)
    b'\\x02\\x00hi'
    """

    def __init__(self) -> None:
        self.buffer = bytearray()

    def u8(self, value: int) -> None:
        self.buffer += _U8.pack(value)

    def u16(self, value: int) -> None:
        self.buffer += _U16.pack(value)

    def u32(self, value: int) -> None:
        self.buffer += _U32.pack(value)

    def u64(self, value: int) -> None:
        self.buffer += _U64.pack(value)

    def raw(self, data: bytes | bytearray | memoryview) -> None:
        self.buffer += data

    def str8(self, text: str) -> None:
        encoded = text.encode("utf-8")
        self.u8(len(encoded))
        self.buffer += encoded

    def str16(self, text: str) -> None:
        encoded = text.encode("utf-8")
        self.u16(len(encoded))
        self.buffer += encoded

    def map(self, entries: Mapping[str, str]) -> None:
        """Writes keys in increasing UTF-8 byte order, the one canonical order."""
        self.u16(len(entries))
        for key in sorted(entries, key=lambda k: k.encode("utf-8")):
            self.str16(key)
            self.str16(entries[key])
