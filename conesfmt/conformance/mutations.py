"""Mutations of valid files: blind byte edits and edits that know the section framing.

Blind edits (bit flips, truncations, insertions) are almost all caught by the
section CRCs. To reach the rules behind the CRC, the section-aware edits
change a length or a count field, splice, drop or reorder sections, and then
*recompute the CRC*, so a reader's field validation is what must catch them.
Index and value edits go behind the zstd frames: they decompress a plane,
edit it, and compress it again (spec § 6.3, § 6.4).

>>> @given(st.data())
... def test(data):
...     mutated = data.draw(mutations(valid_bytes))
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import zstandard
from hypothesis import strategies as st

PREAMBLE_SIZE = 12
_INTERESTING_U32 = [0, 1, 2, 3, 7, 8, 255, 256, 65_535, 65_536, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]
_INTERESTING_U64 = _INTERESTING_U32 + [1 << 32, 1 << 40, (1 << 40) + 1, (1 << 63), (1 << 64) - 1]


@dataclass(frozen=True)
class SectionSpan:
    """Where a section lies: header at ``start``, payload ``[payload, end)``, CRC after."""

    start: int
    tag: bytes
    payload: int
    end: int


def sections(data: bytes) -> list[SectionSpan]:
    """The sections whose framing is intact, from the start, up to the first broken one."""
    spans, position = [], PREAMBLE_SIZE
    while position + 8 <= len(data):
        tag, length = struct.unpack_from("<4sI", data, position)
        end = position + 8 + length
        if end + 4 > len(data):
            break
        spans.append(SectionSpan(position, tag, position + 8, end))
        position = end + 4
    return spans


def reframe(tag: bytes, payload: bytes) -> bytes:
    """A section with a correct length and CRC around any payload."""
    header = struct.pack("<4sI", tag, len(payload))
    return header + payload + struct.pack("<I", zlib.crc32(payload, zlib.crc32(header)))


def _replace_section(data: bytes, span: SectionSpan, new: bytes) -> bytes:
    return data[: span.start] + new + data[span.end + 4 :]


@st.composite
def blind_mutations(draw: st.DrawFn, data: bytes) -> bytes:
    """Edits that ignore the structure: flips, byte sets, truncation, insertion, deletion."""
    size = len(data)
    kind = draw(st.sampled_from(["flip", "set", "truncate", "insert", "delete", "duplicate", "version"]))
    if kind == "truncate" or size == 0:
        return data[: draw(st.integers(0, max(0, size - 1)))]
    # Mostly past the preamble: small files would otherwise spend a quarter of
    # their edits on the magic.
    low = draw(st.sampled_from([0, PREAMBLE_SIZE, PREAMBLE_SIZE, PREAMBLE_SIZE]))
    position = draw(st.integers(min(low, size - 1), size - 1))
    if kind == "flip":
        return (
            data[:position] + bytes([data[position] ^ (1 << draw(st.integers(0, 7)))]) + data[position + 1 :]
        )
    if kind == "set":
        return data[:position] + bytes([draw(st.integers(0, 255))]) + data[position + 1 :]
    if kind == "insert":
        return data[:position] + draw(st.binary(min_size=1, max_size=16)) + data[position:]
    if kind == "delete":
        return data[:position] + data[position + draw(st.integers(1, 16)) :]
    if kind == "duplicate":
        length = draw(st.integers(1, 64))
        return data[:position] + data[position : position + length] + data[position:]
    version = draw(st.sampled_from([(0, 0), (1, 1), (1, 255), (2, 0), (255, 0)]))
    return data[:10] + bytes(version) + data[12:]


@st.composite
def structural_mutations(draw: st.DrawFn, data: bytes) -> bytes:
    """Edits of lengths, counts and section order, with CRCs recomputed."""
    spans = sections(data)
    if not spans:
        return draw(blind_mutations(data))
    span = draw(st.sampled_from(spans))
    payload = data[span.payload : span.end]
    kind = draw(
        st.sampled_from(
            [
                "length",
                "u8",
                "u16",
                "u32",
                "u64",
                "shorten",
                "extend",
                "drop",
                "repeat",
                "swap",
                "retag",
            ]
        )
    )
    if kind == "length":
        # Only the length field changes; the CRC stays: framing must catch it.
        new_length = draw(st.one_of(st.integers(0, len(payload) + 16), st.sampled_from(_INTERESTING_U32)))
        header = struct.pack("<4sI", span.tag, new_length)
        return data[: span.start] + header + data[span.payload :]
    if kind in ("u8", "u16", "u32", "u64") and payload:
        width = {"u8": 1, "u16": 2, "u32": 4, "u64": 8}[kind]
        if len(payload) < width:
            return draw(blind_mutations(data))
        offset = draw(st.integers(0, len(payload) - width))
        (old,) = struct.unpack_from("<" + "BHIQ"[["u8", "u16", "u32", "u64"].index(kind)], payload, offset)
        limit = (1 << (8 * width)) - 1
        specials = [v for v in (_INTERESTING_U64 if width == 8 else _INTERESTING_U32) if v <= limit]
        value = draw(
            st.one_of(
                st.sampled_from(specials),
                st.integers(max(0, old - 4), min(limit, old + 4)),
                st.integers(0, limit),
            )
        )
        edited = payload[:offset] + value.to_bytes(width, "little") + payload[offset + width :]
        return _replace_section(data, span, reframe(span.tag, edited))
    if kind == "shorten" and payload:
        cut = draw(st.integers(0, len(payload) - 1))
        return _replace_section(data, span, reframe(span.tag, payload[:cut]))
    if kind == "extend":
        return _replace_section(
            data, span, reframe(span.tag, payload + draw(st.binary(min_size=1, max_size=12)))
        )
    if kind == "drop":
        return data[: span.start] + data[span.end + 4 :]
    if kind == "repeat":
        whole = data[span.start : span.end + 4]
        return data[: span.end + 4] + whole + data[span.end + 4 :]
    if kind == "swap" and len(spans) > 1:
        other = draw(st.sampled_from([s for s in spans if s != span]))
        first, second = sorted([span, other], key=lambda s: s.start)
        return (
            data[: first.start]
            + data[second.start : second.end + 4]
            + data[first.end + 4 : second.start]
            + data[first.start : first.end + 4]
            + data[second.end + 4 :]
        )
    # retag: another case, another known tag, or random letters
    tag = draw(
        st.one_of(
            st.sampled_from(
                [b"LAYR", b"FPRT", b"META", b"CNPT", b"CEND", b"vals", b"layr", b"cnpt", b"Zzzz", b"zzzz"]
            ),
            st.binary(min_size=4, max_size=4),
        )
    )
    return _replace_section(data, span, reframe(tag, payload))


def _parse_concept(payload: bytes, widths: list[int]) -> tuple[int, list[list[int]], list[bytes]] | None:
    """Offsets of a CNPT payload: (start of the entry table, [[layer, count]], frames)."""
    try:
        position = 2 + struct.unpack_from("<H", payload, 0)[0]
        (count,) = struct.unpack_from("<H", payload, position)
        position += 2
        for _ in range(count):
            for _ in range(2):
                position += 2 + struct.unpack_from("<H", payload, position)[0]
        position += 1  # codec
        table = position
        (entry_count,) = struct.unpack_from("<I", payload, position)
        position += 4
        entries = []
        for _ in range(entry_count):
            entries.append(list(struct.unpack_from("<IQ", payload, position)))
            position += 12
        planes = max((widths[layer] for layer, _ in entries if layer < len(widths)), default=0)
        lengths = struct.unpack_from(f"<{planes}I", payload, position)
        position += 4 * planes
        frames = []
        for length in lengths:
            frames.append(payload[position : position + length])
            position += length
        return table, entries, frames
    except (struct.error, IndexError):
        return None


def _layer_widths(data: bytes, spans: list[SectionSpan]) -> list[int] | None:
    layr = next((s for s in spans if s.tag == b"LAYR"), None)
    if layr is None:
        return None
    payload = data[layr.payload : layr.end]
    try:
        (count,) = struct.unpack_from("<I", payload, 0)
        position, widths = 4, []
        for _ in range(min(count, 65_536)):
            position += 2 + struct.unpack_from("<H", payload, position)[0]
            position += 1 + payload[position]
            ndim = payload[position]
            dims = struct.unpack_from(f"<{ndim}I", payload, position + 1)
            position += 1 + 4 * ndim
            numel = 1
            for d in dims:
                numel *= d
            widths.append(max(1, ((numel - 1).bit_length() + 7) // 8))
        return widths
    except (struct.error, IndexError):
        return None


@st.composite
def index_mutations(draw: st.DrawFn, data: bytes) -> bytes:
    """Edits of decoded index data, re-compressed with consistent sizes and CRCs.

    These reach the rules behind the zstd frames (spec § 9, rules 17-19): a
    delta set to 0 or to a huge value, a count grown or shrunk together with
    its planes, a plane one byte short or long.
    """
    spans = sections(data)
    widths = _layer_widths(data, spans)
    concepts = [s for s in spans if s.tag == b"CNPT"]
    if widths is None or not concepts:
        return draw(structural_mutations(data))
    span = draw(st.sampled_from(concepts))
    payload = data[span.payload : span.end]
    parsed = _parse_concept(payload, widths)
    if parsed is None or not parsed[2]:
        return draw(structural_mutations(data))
    table, entries, frames = parsed
    try:
        planes = [bytearray(zstandard.ZstdDecompressor().decompress(f)) for f in frames]
    except zstandard.ZstdError:
        return draw(structural_mutations(data))
    kind = draw(st.sampled_from(["byte", "zero-delta", "huge-delta", "count", "plane-size"]))
    plane = draw(st.integers(0, len(planes) - 1))
    if kind == "plane-size" or not planes[plane]:
        if planes[plane] and draw(st.booleans()):
            del planes[plane][draw(st.integers(0, len(planes[plane]) - 1))]
        else:
            planes[plane].insert(draw(st.integers(0, len(planes[plane]))), draw(st.integers(0, 255)))
    elif kind == "count":
        # Grow or shrink one entry and its planes together, so that sizes agree
        # and only the index rules can object.
        def width_of(layer: int) -> int:
            return widths[layer] if layer < len(widths) else 1

        number = draw(st.integers(0, len(entries) - 1))
        layer, count = entries[number]
        grow = draw(st.booleans()) or count <= 1
        for j in range(min(width_of(layer), len(planes))):
            end = sum(c for other, c in entries[:number] if width_of(other) > j) + count
            if grow:
                planes[j].insert(end, draw(st.integers(0, 255)) if j == 0 else 0)
            else:
                del planes[j][end - 1]
        entries[number][1] = count + (1 if grow else -1)
    else:
        position = draw(st.integers(0, len(planes[plane]) - 1))
        value = {"byte": draw(st.integers(0, 255)), "zero-delta": 0, "huge-delta": 255}[kind]
        if kind == "zero-delta":
            for j in range(len(planes)):
                if position < len(planes[j]):
                    planes[j][position] = 0
        else:
            planes[plane][position] = value
    frames = [zstandard.ZstdCompressor(level=3).compress(bytes(p)) for p in planes]
    rebuilt = bytearray(payload[:table])
    rebuilt += struct.pack("<I", len(entries))
    for layer, count in entries:
        rebuilt += struct.pack("<IQ", layer, count)
    for frame in frames:
        rebuilt += struct.pack("<I", len(frame))
    for frame in frames:
        rebuilt += frame
    return _replace_section(data, span, reframe(span.tag, bytes(rebuilt)))


#: Value planes per kind byte of a vals section (spec § 6.4): 1 q4, 2 fp16, 3 fp32.
_VALUE_PLANES = {1: 1, 2: 2, 3: 4}


def _parse_values(payload: bytes, entries: int) -> tuple[int, int, int, list[bytes]] | None:
    """Offsets of a vals payload: (kind, start of the codebooks, start of the frame lengths, frames)."""
    try:
        position = 2 + struct.unpack_from("<H", payload, 0)[0]
        kind = payload[position]
        codebooks = position + 1
        position = codebooks + (16 * entries if kind == 1 else 0)
        planes = _VALUE_PLANES.get(kind, 0) if entries else 0
        lengths = struct.unpack_from(f"<{planes}I", payload, position)
        position += 4 * planes
        frames = []
        for length in lengths:
            frames.append(payload[position : position + length])
            position += length
        return kind, codebooks, codebooks + (16 * entries if kind == 1 else 0), frames
    except (struct.error, IndexError):
        return None


@st.composite
def value_mutations(draw: st.DrawFn, data: bytes) -> bytes:
    """Edits of a concept's values (spec § 6.4), re-compressed with consistent sizes and CRCs.

    These reach the value rules behind the frames (spec § 9, rules 18, 22, 23):
    a value made infinite or NaN, a byte changed, the padding bits of a q4
    byte set, a codebook level made NaN, a plane one byte short or long.
    """
    spans = sections(data)
    widths = _layer_widths(data, spans)
    values = [n for n, s in enumerate(spans) if s.tag == b"vals" and any(t.tag == b"CNPT" for t in spans[:n])]
    if widths is None or not values:
        return draw(index_mutations(data))
    number = draw(st.sampled_from(values))
    span = spans[number]
    concept = next(s for s in reversed(spans[:number]) if s.tag == b"CNPT")
    parsed_concept = _parse_concept(data[concept.payload : concept.end], widths)
    payload = data[span.payload : span.end]
    parsed = _parse_values(payload, len(parsed_concept[1])) if parsed_concept else None
    if parsed is None or not parsed[3]:
        return draw(structural_mutations(data))
    kind, codebooks, lengths_at, frames = parsed
    try:
        planes = [bytearray(zstandard.ZstdDecompressor().decompress(f)) for f in frames]
    except zstandard.ZstdError:
        return draw(structural_mutations(data))
    edit = draw(st.sampled_from(["byte", "non-finite", "padding", "codebook", "plane-size"]))
    head = bytearray(payload[:lengths_at])
    plane = draw(st.integers(0, len(planes) - 1))
    if edit == "plane-size" or not planes[plane]:
        if planes[plane] and draw(st.booleans()):
            del planes[plane][draw(st.integers(0, len(planes[plane]) - 1))]
        else:
            planes[plane].insert(draw(st.integers(0, len(planes[plane]))), draw(st.integers(0, 255)))
    elif edit == "codebook" and kind == 1 and len(head) >= codebooks + 4:
        offset = codebooks + 4 * draw(st.integers(0, (len(head) - codebooks) // 4 - 1))
        head[offset : offset + 4] = struct.pack(
            "<f", draw(st.sampled_from([float("nan"), float("inf"), -0.0, 3.0]))
        )
    elif edit == "non-finite" and kind in (2, 3):
        # Exponent all ones: the high byte of the value (plane 1 of fp16, plane 3 of fp32) and its top bit.
        position = draw(st.integers(0, len(planes[0]) - 1))
        top = len(planes) - 1
        planes[top][position] |= 0x7F  # fp16: bits 0x7C00; fp32: 0x7F000000 and, below,
        if top == 3:
            planes[2][position] |= 0x80  # 0x00800000
    elif edit == "padding" and kind == 1:
        position = draw(st.integers(0, len(planes[0]) - 1))
        planes[0][position] |= 1 << draw(st.integers(0, 7))
    else:
        position = draw(st.integers(0, len(planes[plane]) - 1))
        planes[plane][position] = draw(st.integers(0, 255))
    frames = [zstandard.ZstdCompressor(level=3).compress(bytes(p)) for p in planes]
    rebuilt = head
    for frame in frames:
        rebuilt += struct.pack("<I", len(frame))
    for frame in frames:
        rebuilt += frame
    return _replace_section(data, span, reframe(span.tag, bytes(rebuilt)))


@st.composite
def mutations(draw: st.DrawFn, data: bytes) -> bytes:
    """One mutation of ``data``: blind (1/4), structural (1/2) or of index data (1/4).

    When ``data`` has values (format 1.1), a third of the index-data edits are
    edits of values instead.
    """
    kind = draw(st.sampled_from(["blind", "structural", "structural", "index"]))
    if kind == "index" and b"vals" in data and draw(st.integers(0, 2)) == 0:
        kind = "values"
    strategy = {
        "blind": blind_mutations,
        "structural": structural_mutations,
        "index": index_mutations,
        "values": value_mutations,
    }[kind]
    return draw(strategy(data))
