"""The byte layout of a container: preamble and sections (spec § 2-§ 7).

::

    preamble   magic "\\x89CONES\\r\\n\\x1a\\n" (10 bytes), major u8, minor u8
    section    tag (4 ASCII letters), length u32, payload, crc32 u32
               (the CRC covers tag, length and payload)
    order      LAYR, FPRT?, META?, (CNPT vals?)*, CEND; unknown optional sections
               (lower-case first letter) anywhere before CEND; nothing after CEND
    vals       (format 1.1, spec § 6.4) the values of the concept just before it;
               in a file of minor 0 an unknown optional section like any other

:func:`encode` writes the canonical form; :func:`decode` accepts any valid
file and raises :class:`FormatError` naming the section and field at fault.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import NamedTuple

import numpy as np

from .codec import (
    BLOCK_ENTRIES,
    CODEC_BYTE_PLANES,
    PlaneReader,
    check_frame,
    compress_planes,
    encode_planes,
    iter_index_blocks,
    layer_width,
    plane_sizes,
)
from .container import FORMAT_VERSION, VALUES_MINOR, Concept, Container, Layer, check_layer, minimal_minor
from .errors import FormatError
from .fingerprint import Fingerprint
from .limits import (
    DEFAULT_MAX_INDICES,
    MAX_CONCEPTS,
    MAX_DTYPE_BYTES,
    MAX_KEY_BYTES,
    MAX_LAYER_TABLE_BYTES,
    MAX_LAYERS,
    MAX_NAME_BYTES,
    MAX_SAMPLES_PER_LAYER,
    MAX_SECTION_BYTES,
)
from .values import KIND_CODES, KIND_NAMES, Q4, Q4_LEVELS, VALUE_PLANES, StoredValues, iter_value_blocks
from .values import encode_planes as encode_value_planes
from .values import plane_sizes as value_plane_sizes
from .wire import FieldReader, FieldWriter

MAGIC = b"\x89CONES\r\n\x1a\n"
PREAMBLE_SIZE = len(MAGIC) + 2
TAG_LAYERS = b"LAYR"
TAG_FINGERPRINT = b"FPRT"
TAG_METADATA = b"META"
TAG_CONCEPT = b"CNPT"
TAG_END = b"CEND"
#: Values of the concept before it (spec § 6.4): optional, known from minor 1 on.
TAG_VALUES = b"vals"
#: Known sections in the order they must appear (spec § 2.3); CNPT may repeat.
_ORDER = {TAG_LAYERS: 0, TAG_FINGERPRINT: 1, TAG_METADATA: 2, TAG_CONCEPT: 3, TAG_END: 4}
_SECTION_HEADER = struct.Struct("<4sI")
_CRC = struct.Struct("<I")


def section(tag: bytes, payload: bytes | bytearray) -> bytes:
    """Frame one section: tag, length, payload, CRC32 of all three (spec § 2.2)."""
    header = _SECTION_HEADER.pack(tag, len(payload))
    return header + bytes(payload) + _CRC.pack(zlib.crc32(payload, zlib.crc32(header)))


def encode(container: Container, sizes: dict[str, tuple[int, int]] | None = None) -> bytes:
    """The canonical bytes of a container (spec § 10).

    ``sizes``, if given, receives per concept the bytes of its CNPT and of its
    ``vals`` section (0 for a binary concept), framing included.
    """
    layer_keys = list(container.layers)
    parts = [MAGIC, bytes([FORMAT_VERSION[0], minimal_minor(container.concepts.values())])]

    table = FieldWriter()
    table.u32(len(layer_keys))
    for key, layer in container.layers.items():
        table.str16(key)
        table.str8(layer.dtype)
        table.u8(len(layer.shape))
        for dim in layer.shape:
            table.u32(dim)
    parts.append(section(TAG_LAYERS, table.buffer))

    if container.fingerprint is not None:
        fingerprint = FieldWriter()
        fingerprint.u16(container.fingerprint.samples_per_layer if layer_keys else 0)
        for key in layer_keys:
            fingerprint.raw(container.fingerprint.samples[key].astype("<f4").tobytes())
        parts.append(section(TAG_FINGERPRINT, fingerprint.buffer))

    if container.metadata:
        metadata = FieldWriter()
        metadata.map(container.metadata)
        parts.append(section(TAG_METADATA, metadata.buffer))

    position = {key: number for number, key in enumerate(layer_keys)}
    for name, concept in container.concepts.items():
        record = FieldWriter()
        record.str16(name)
        record.map(concept.metadata)
        record.u8(CODEC_BYTE_PLANES)
        used = [key for key in layer_keys if key in concept.indices]
        record.u32(len(used))
        for key in used:
            record.u32(position[key])
            record.u64(len(concept.indices[key]))
        frames = encode_planes([(container.layers[key].numel, concept.indices[key]) for key in used])
        for frame in frames:
            record.u32(len(frame))
        for frame in frames:
            record.raw(frame)
        parts.append(section(TAG_CONCEPT, record.buffer))
        values = b""
        if concept.value_kind != "binary":
            values = section(TAG_VALUES, _values_payload(name, concept, used))
            parts.append(values)
        if sizes is not None:
            sizes[name] = (len(parts[-1 - bool(values)]), len(values))

    parts.append(section(TAG_END, b""))
    return b"".join(parts)


def _values_payload(name: str, concept: Concept, used: list[str]) -> bytearray:
    """A ``vals`` payload (spec § 6.4): name, kind, q4 codebooks, value frames."""
    record = FieldWriter()
    record.str16(name)
    record.u8(KIND_CODES[concept.value_kind])
    stored = [concept.values[key] for key in used]
    if concept.value_kind == "q4":
        for layer_values in stored:
            record.raw(layer_values.codebook.astype("<f4").tobytes())
    frames = compress_planes(encode_value_planes(concept.value_kind, stored))
    for frame in frames:
        record.u32(len(frame))
    for frame in frames:
        record.raw(frame)
    return record.buffer


def decode(
    data: bytes | bytearray | memoryview,
    *,
    max_indices: int = DEFAULT_MAX_INDICES,
    check_layers: Callable[[Mapping[str, Layer]], None] | None = None,
    reader_minor: int = FORMAT_VERSION[1],
) -> Container:
    """Parse and validate every rule of the spec; see :meth:`Container.from_bytes`.

    Two passes: the structure of every section first (framing, CRCs, fields,
    counts against ``max_indices``, frame headers), then the index and value
    data, the part whose cost grows with what the file declares (spec § 8.2).
    ``reader_minor`` 0 reads as a 1.0 reader does (``vals`` is an unknown
    optional section; the conformance kit checks 1.0 readers with it).
    """
    if not isinstance(max_indices, int) or max_indices < 0:
        raise ValueError(f"max_indices must be an int >= 0, got {max_indices!r}")
    data = memoryview(data).cast("B") if not isinstance(data, bytes) else data
    minor = _read_preamble(data)
    # A file of a newer minor may append fields to known sections (spec § 2.4).
    extension = minor > reader_minor
    # vals means values only in files of minor >= 1: 1.0 left the tag free (spec § 6.4).
    values_known = minor >= VALUES_MINOR and reader_minor >= VALUES_MINOR
    valued: set[str] = set()
    last_concept: str | None = None
    layers: dict[str, Layer] | None = None
    fingerprint: Fingerprint | None = None
    metadata: dict[str, str] = {}
    pending: dict[str, _PendingConcept] = {}
    indices_left = max_indices
    stage = -1
    position = PREAMBLE_SIZE
    number = 0
    while True:
        tag, payload, next_position = _read_section(data, position, number)
        label = f"section #{number} ({tag.decode('ascii')} at byte {position})"
        if tag == TAG_VALUES and values_known:
            if last_concept is None:
                raise FormatError(f"{label}: values before any concept (they belong to the CNPT before them)")
            if last_concept in valued:
                raise FormatError(f"{label}: a second values section for concept {last_concept!r}")
            valued.add(last_concept)
            reader = FieldReader(payload, label)
            values = _read_values(reader, pending[last_concept], extension)
            if values is not None:
                reader.expect_end(allow_extension=extension)
                pending[last_concept] = pending[last_concept]._replace(values=values)
            # else: a kind of a newer minor, skipped: the concept stays binary (spec § 6.4)
        elif tag not in _ORDER:
            if tag[:1].isupper():
                raise FormatError(f"{label}: unknown required section")
            # An unknown optional section is skipped, even before LAYR (spec § 2.3).
        else:
            order = _ORDER[tag]
            if order < stage or (order == stage and tag != TAG_CONCEPT):
                raise FormatError(f"{label}: out of order or repeated")
            if layers is None and tag != TAG_LAYERS:
                raise FormatError(
                    f"{label}: comes before the layer table (LAYR must be the first known section)"
                )
            stage = order
            reader = FieldReader(payload, label)
            if tag == TAG_LAYERS:
                layers = _read_layers(reader)
            elif tag == TAG_FINGERPRINT:
                fingerprint = _read_fingerprint(reader, layers)
            elif tag == TAG_METADATA:
                metadata = reader.map("container metadata")
            elif tag == TAG_CONCEPT:
                if len(pending) == MAX_CONCEPTS:
                    raise FormatError(f"{label}: more than {MAX_CONCEPTS} concepts")
                concept = _read_concept(reader, layers, indices_left, max_indices, next_position - position)
                if concept.name in pending:
                    raise FormatError(f"{label}: duplicate concept name {concept.name!r}")
                pending[concept.name] = concept
                last_concept = concept.name
                indices_left -= concept.total
            reader.expect_end(allow_extension=extension)
            if tag == TAG_LAYERS and check_layers is not None:
                check_layers(MappingProxyType(layers))  # the caller's check, before any index is read
            if tag == TAG_END:
                if next_position != len(data):
                    raise FormatError(f"{len(data) - next_position} trailing bytes after CEND")
                break
        position, number = next_position, number + 1
    assert layers is not None
    # Decoded indices and values kept while validating: at most 8 bytes per file byte, plus 4 MiB.
    budget = [8 * len(data) + (4 << 20)]
    concepts = {name: concept.validate(budget) for name, concept in pending.items()}
    return Container._trusted(layers, concepts, fingerprint, metadata, (FORMAT_VERSION[0], minor))


def _read_preamble(data: bytes | memoryview) -> int:
    head = bytes(data[: len(MAGIC)])
    if head != MAGIC:
        if head.startswith(MAGIC[:6]) or bytes(data[:6]) == MAGIC[:6]:
            raise FormatError(
                "bad magic: the bytes after '\\x89CONES' were altered, as by a text-mode "
                "transfer that rewrote line endings"
            )
        raise FormatError(f"bad magic {head[:10]!r}: not a .cones container")
    if len(data) < PREAMBLE_SIZE:
        raise FormatError("file ends inside the preamble")
    major, minor = data[len(MAGIC)], data[len(MAGIC) + 1]
    if major != FORMAT_VERSION[0]:
        raise FormatError(f"unsupported major version {major}.{minor} (this reader reads 1.x)")
    return minor


def _read_section(data: bytes | memoryview, position: int, number: int) -> tuple[bytes, memoryview, int]:
    where = f"section #{number} at byte {position}"
    if position == len(data):
        last = "the preamble" if number == 0 else f"section #{number - 1}"
        raise FormatError(f"{where}: file is truncated: it ends after {last}, with no CEND section")
    if position + _SECTION_HEADER.size > len(data):
        raise FormatError(
            f"{where}: file is truncated inside a section header: "
            f"{len(data) - position} of its 8 bytes (tag, length) are present"
        )
    tag, length = _SECTION_HEADER.unpack_from(data, position)
    if not (tag.isascii() and tag.isalpha()):
        raise FormatError(f"{where}: invalid section tag {tag!r}")
    # Size caps come from the header alone, before the payload is read (spec § 8.1).
    cap = MAX_LAYER_TABLE_BYTES if tag == TAG_LAYERS else MAX_SECTION_BYTES
    if length > cap:
        raise FormatError(f"{where} ({tag.decode()}): length {length} exceeds {cap}")
    end = position + _SECTION_HEADER.size + length
    if end + _CRC.size > len(data):
        present = len(data) - position - _SECTION_HEADER.size
        raise FormatError(
            f"{where} ({tag.decode()}): file is truncated: {length + _CRC.size - present} bytes "
            f"missing (its {length}-byte payload and 4-byte CRC need {length + _CRC.size} bytes, "
            f"the file has {present})"
        )
    view = memoryview(data)
    (stored,) = _CRC.unpack_from(data, end)
    if zlib.crc32(view[position:end]) != stored:
        raise FormatError(f"{where} ({tag.decode()}): checksum mismatch")
    return tag, view[position + _SECTION_HEADER.size : end], end + _CRC.size


def _read_layers(reader: FieldReader) -> dict[str, Layer]:
    count = reader.u32("layer count")
    if count > MAX_LAYERS:
        raise reader.fail(f"{count} layers, at most {MAX_LAYERS} allowed")
    layers: dict[str, Layer] = {}
    previous = b""
    for number in range(count):
        key = reader.str16(f"layer #{number} key", min_bytes=1, max_bytes=MAX_KEY_BYTES)
        encoded = key.encode("utf-8")
        if number and encoded <= previous:
            kind = "duplicate" if encoded == previous else "out of order"
            raise reader.fail(f"layer key {key!r} is {kind} (keys must strictly increase)")
        previous = encoded
        dtype = reader.str8(f"layer {key!r} dtype", max_bytes=MAX_DTYPE_BYTES)
        ndim = reader.u8(f"layer {key!r} ndim")
        if ndim == 0:
            raise reader.fail(f"layer {key!r}: 0 dimensions")
        shape = tuple(reader.u32(f"layer {key!r} dimension {d}") for d in range(min(ndim, 255)))
        try:
            check_layer(key, shape, dtype)
        except FormatError as error:
            raise reader.fail(str(error)) from None
        layers[key] = Layer(shape, dtype)
    return layers


def _read_fingerprint(reader: FieldReader, layers: dict[str, Layer]) -> Fingerprint:
    samples = reader.u16("samples per layer")
    if layers and not 1 <= samples <= MAX_SAMPLES_PER_LAYER:
        raise reader.fail(f"{samples} samples per layer, allowed 1..{MAX_SAMPLES_PER_LAYER}")
    if not layers and samples != 0:
        raise reader.fail("samples per layer must be 0 when the layer table is empty")
    raw = reader.take(4 * samples * len(layers), "sample values")
    values = np.frombuffer(raw, dtype="<f4").reshape(len(layers), samples)
    if not np.isfinite(values).all():
        raise reader.fail("sample values must be finite")
    return Fingerprint({key: values[n].astype(np.float32) for n, key in enumerate(layers)})


class _PendingValues(NamedTuple):
    """A ``vals`` section whose fields and frame headers are checked (spec § 6.4)."""

    kind: str
    codebooks: np.ndarray | None  # (entries, 4) float32 for q4
    frames: list[bytes]
    where: str
    section_bytes: int

    def nbytes(self, counts: list[int]) -> int:
        """Memory the decoded values take."""
        if self.kind == "q4":
            return sum(-(-count // 4) + 4 * Q4_LEVELS for count in counts)
        return VALUE_PLANES[self.kind] * sum(counts)

    def decode(self, entries: list[tuple[str, int]], keep: bool) -> dict[str, StoredValues]:
        """Decode and check every value; return them per layer if ``keep``."""
        counts = [count for _, count in entries]
        sizes = value_plane_sizes(self.kind, counts)
        readers = [
            PlaneReader(memoryview(frame), size, f"{self.where}, value plane {plane}")
            for plane, (frame, size) in enumerate(zip(self.frames, sizes, strict=True))
        ]
        labels = [f"{self.where}, layer {key!r}" for key, _ in entries]
        if self.kind == "q4":
            arrays = [np.empty(-(-count // 4), np.uint8) for count in counts] if keep else []
        else:
            dtype = np.float16 if self.kind == "fp16" else np.float32
            arrays = [np.empty(count, dtype) for count in counts] if keep else []
        filled = [0] * len(entries)
        for number, block in iter_value_blocks(self.kind, readers, counts, labels, BLOCK_ENTRIES):
            if keep:
                arrays[number][filled[number] : filled[number] + block.size] = block
            filled[number] += block.size
        for reader in readers:
            reader.finish()
        if not keep:
            return {}
        stored: dict[str, StoredValues] = {}
        for number, ((key, count), array) in enumerate(zip(entries, arrays, strict=True)):
            array.flags.writeable = False
            if self.kind == "q4":
                assert self.codebooks is not None
                stored[key] = Q4._from_packed(self.codebooks[number], array, count)
            else:
                stored[key] = array
        return stored


class _PendingConcept(NamedTuple):
    """A concept whose fields and frame headers are checked, and whose indices are not yet read."""

    name: str
    metadata: dict[str, str]
    entries: list[tuple[str, int]]  # (layer key, count) per entry
    numels: list[int]
    frames: list[bytes]
    where: str
    section_bytes: int
    values: _PendingValues | None = None

    @property
    def total(self) -> int:
        return sum(count for _, count in self.entries)

    def validate(self, budget: list[int]) -> Concept:
        """Decode and check every index (spec § 6.3) and value (§ 6.4); ``budget`` is bytes that may be kept.

        If the decoded indices (and values) fit the budget they are kept (one
        pass instead of two for ordinary files); otherwise they are decoded
        again on first use, so a small file that describes many indices cannot
        make this allocate much (spec § 8.1).
        """
        sizes = (self.section_bytes, self.values.section_bytes if self.values else 0)
        needed = 8 * self.total
        if needed <= budget[0]:
            budget[0] -= needed
            arrays = self._decode(keep=True)
            loader = lambda: arrays  # noqa: E731
        else:
            self._decode(keep=False)
            loader = lambda: self._decode(keep=True)  # noqa: E731
        if self.values is None:
            return Concept._lazy(self.metadata, dict(self.entries), loader, encoded_bytes=sizes)
        values, entries = self.values, self.entries
        needed = values.nbytes([count for _, count in entries])
        if needed <= budget[0]:
            budget[0] -= needed
            stored = values.decode(entries, keep=True)
            values_loader = lambda: stored  # noqa: E731
        else:
            values.decode(entries, keep=False)
            values_loader = lambda: values.decode(entries, keep=True)  # noqa: E731
        return Concept._lazy(self.metadata, dict(entries), loader, values.kind, values_loader, sizes)

    def _decode(self, keep: bool) -> dict[str, np.ndarray]:
        arrays = {key: np.empty(count, dtype=np.int64) for key, count in self.entries} if keep else {}
        sizes = [(numel, count) for numel, (_, count) in zip(self.numels, self.entries, strict=True)]
        labels = [f"{self.where}, layer {key!r}" for key, _ in self.entries]
        out = [arrays[key] for key, _ in self.entries] if keep else None
        for _ in iter_index_blocks(self.frames, sizes, self.where, labels, out):
            pass  # each block is validated, and decoded in place when kept
        for array in arrays.values():
            array.flags.writeable = False
        return arrays


def _read_concept(
    reader: FieldReader, layers: dict[str, Layer], indices_left: int, max_indices: int, section_bytes: int
) -> _PendingConcept:
    """One CNPT payload, up to its frame headers.

    ``indices_left`` of the reader's ``max_indices`` may still be declared (spec § 8.2).
    """
    name = reader.str16("concept name", min_bytes=1, max_bytes=MAX_NAME_BYTES)
    reader.where = f"{reader.where}, concept {name!r}"
    metadata = reader.map("metadata")
    codec = reader.u8("codec")
    if codec != CODEC_BYTE_PLANES:
        raise reader.fail(f"unknown codec {codec} (version 1.0 knows {CODEC_BYTE_PLANES})")
    keys = list(layers)
    entry_count = reader.u32("entry count")
    if entry_count > len(keys):
        raise reader.fail(f"{entry_count} entries but the table has {len(keys)} layers")
    entries: list[tuple[str, int]] = []
    previous = -1
    for number in range(entry_count):
        layer_number = reader.u32(f"entry #{number} layer")
        if layer_number >= len(keys):
            raise reader.fail(f"entry #{number} names layer #{layer_number}, table has {len(keys)}")
        if layer_number <= previous:
            raise reader.fail(f"entry #{number}: layer numbers must strictly increase")
        previous = layer_number
        key = keys[layer_number]
        count = reader.u64(f"layer {key!r} count")
        numel = layers[key].numel
        if not 1 <= count <= numel:
            raise reader.fail(f"layer {key!r}: count {count}, allowed 1..numel={numel}")
        # Compared as a difference, so the running total never overflows (spec § 1.1).
        if count > indices_left:
            raise reader.fail(
                f"layer {key!r}: count {count:,} takes the file past this reader's limit of "
                f"{max_indices:,} indices (max_indices, spec § 8.2); the file may be valid: "
                f"raise max_indices (--max-indices on the command line) to read it"
            )
        indices_left -= count
        entries.append((key, count))
    widths = [layer_width(layers[key].numel) for key, _ in entries]
    frame_lengths = [reader.u32(f"plane {plane} frame length") for plane in range(max(widths, default=0))]
    frames = [
        bytes(reader.take(length, f"plane {plane} frame")) for plane, length in enumerate(frame_lengths)
    ]
    numels = [layers[key].numel for key, _ in entries]
    # Frame headers now, with the structure: cheap, and before any index is decoded.
    sizes = plane_sizes([(numel, count) for numel, (_, count) in zip(numels, entries, strict=True)])
    for plane, (frame, size) in enumerate(zip(frames, sizes, strict=True)):
        check_frame(memoryview(frame), size, f"{reader.where}, plane {plane}")
    return _PendingConcept(name, metadata, entries, numels, frames, reader.where, section_bytes)


def _read_values(reader: FieldReader, concept: _PendingConcept, newer_minor: bool) -> _PendingValues | None:
    """One ``vals`` payload, up to its frame headers (spec § 6.4); None for a kind of a newer minor."""
    section_bytes = len(reader.data) + 12
    name = reader.str16("concept name", min_bytes=1, max_bytes=MAX_NAME_BYTES)
    if name != concept.name:
        raise reader.fail(
            f"names concept {name!r}, but follows the CNPT of concept {concept.name!r} "
            "(values belong to the CNPT before them)"
        )
    reader.where = f"{reader.where}, values of concept {name!r}"
    code = reader.u8("value kind")
    if code not in KIND_NAMES:
        if newer_minor:
            return None
        known = ", ".join(f"{c} {k}" for c, k in KIND_NAMES.items())
        raise reader.fail(f"unknown value kind {code} (version 1.1 knows {known})")
    kind = KIND_NAMES[code]
    entries = concept.entries
    codebooks = None
    if kind == "q4":
        raw = reader.take(4 * Q4_LEVELS * len(entries), "q4 codebooks")
        codebooks = np.frombuffer(raw, dtype="<f4").reshape(len(entries), Q4_LEVELS).astype(np.float32)
        for number, (key, _) in enumerate(entries):
            if not np.isfinite(codebooks[number]).all():
                raise reader.fail(f"layer {key!r}: q4 codebook {codebooks[number].tolist()} is not finite")
    planes = VALUE_PLANES[kind] if entries else 0
    lengths = [reader.u32(f"value plane {plane} frame length") for plane in range(planes)]
    frames = [bytes(reader.take(n, f"value plane {plane} frame")) for plane, n in enumerate(lengths)]
    sizes = value_plane_sizes(kind, [count for _, count in entries])
    for plane, (frame, size) in enumerate(zip(frames, sizes, strict=True)):
        check_frame(memoryview(frame), size, f"{reader.where}, value plane {plane}")
    return _PendingValues(kind, codebooks, frames, reader.where, section_bytes)
