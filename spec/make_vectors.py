"""Regenerate the test vectors of spec § 11 (deterministic), those of version 1.1's values included.

    python spec/make_vectors.py            # writes spec/vectors/
    python spec/make_vectors.py --check    # exit 1 if the files on disk differ

Valid vectors are written by the library (canonical ones) or by hand (the
non-canonical ones a reader must still accept); each gets its decoded form
(spec § 12) as JSON. Invalid vectors are assembled field by field, so that
each breaks exactly one rule of spec § 9 and everything else (CRCs included)
is right; the manifest records the rule, a reason, and a piece of the error
message the reference reader gives, so a vector rejected for the wrong reason
fails the test.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
from pathlib import Path

import numpy as np
import zstandard

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

import conesfmt  # noqa: E402
from conesfmt.conformance.hostile import index_bomb  # noqa: E402
from conesfmt.jsonform import to_json  # noqa: E402
from conesfmt.sections import MAGIC, section  # noqa: E402
from conesfmt.wire import FieldWriter  # noqa: E402

VECTORS = ROOT / "vectors"


# --------------------------------------------------------------------------- building blocks


def preamble(major: int = 1, minor: int = 0) -> bytes:
    return MAGIC + bytes([major, minor])


def layer_table(rows: list[tuple[str, str, tuple[int, ...]]], count: int | None = None) -> bytes:
    """LAYR payload from (key, dtype, shape) rows, in the given order (not sorted for you)."""
    w = FieldWriter()
    w.u32(len(rows) if count is None else count)
    for key, dtype, shape in rows:
        w.str16(key)
        w.str8(dtype)
        w.u8(len(shape))
        for d in shape:
            w.u32(d)
    return bytes(w.buffer)


def raw_map(pairs: list[tuple[bytes, bytes]]) -> bytes:
    """A map with the given raw key/value bytes in the given order (may be invalid)."""
    w = FieldWriter()
    w.u16(len(pairs))
    for key, value in pairs:
        w.u16(len(key))
        w.raw(key)
        w.u16(len(value))
        w.raw(value)
    return bytes(w.buffer)


def zstd(data: bytes, level: int = 19, checksum: bool = False, content_size: bool = True) -> bytes:
    return zstandard.ZstdCompressor(
        level=level, write_content_size=content_size, write_checksum=checksum, write_dict_id=False
    ).compress(data)


def hand_frame(content: bytes, descriptor: int, window: int | None = None, fcs_size: int = 1) -> bytes:
    """A zstd frame of ``content`` in one raw block, with the header spelt out (RFC 8878 § 3.1.1.1).

    ``descriptor`` is the Frame_Header_Descriptor byte, ``window`` the
    Window_Descriptor byte (present unless single-segment), ``fcs_size`` the
    bytes of Frame_Content_Size (a 2-byte field holds the size minus 256).
    """
    size = len(content) - 256 if fcs_size == 2 else len(content)
    header = b"\x28\xb5\x2f\xfd" + bytes([descriptor]) + (bytes([window]) if window is not None else b"")
    header += size.to_bytes(fcs_size, "little")
    return header + struct.pack("<I", (len(content) << 3) | 1)[:3] + content


def oversized_block_frame(byte: int, match_length: int) -> bytes:
    """A single-segment frame whose one compressed block decodes to ``1 + match_length`` bytes.

    The block holds one literal ``byte`` and one sequence (literal length 1,
    offset 1, match length ``match_length``) in the predefined FSE tables of
    RFC 8878 § 3.1.1.3.2.2, so its Block_Size is 9 bytes whatever it decodes to.
    ``match_length`` is 65,539 + 16 extra bits (match-length code 52).
    """
    # Predefined distributions (RFC 8878 § 3.1.1.3.2.2.1-3) and the FSE spread of § 4.1.1.
    literal_lengths = [4, 3, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 3, 2, 1]
    literal_lengths += [1, 1, 1, 1, -1, -1, -1, -1]
    match_lengths = [1, 4, 3] + [2] * 6 + [1] * 37 + [-1] * 7
    offsets = [1] * 6 + [2] * 3 + [1] * 15 + [-1] * 5

    def state_of(distribution: list[int], log: int, symbol: int) -> int:
        size = 1 << log
        table: list[int | None] = [None] * size
        high = size - 1
        for number, probability in enumerate(distribution):
            if probability == -1:
                table[high] = number
                high -= 1
        step, position = (size >> 1) + (size >> 3) + 3, 0
        for number, probability in enumerate(distribution):
            for _ in range(max(probability, 0)):
                table[position] = number
                position = (position + step) & (size - 1)
                while position > high:
                    position = (position + step) & (size - 1)
        return table.index(symbol)

    extra = match_length - 65_539
    assert 0 <= extra < 1 << 16
    # The bitstream is read backwards: the initial states (LL, OF, ML), then the extra
    # bits of offset, match length and literal length; so they are written in reverse.
    value, bits = 0, 0
    for field, width in [
        (extra, 16),  # match length code 52: 16 extra bits
        (0, 2),  # offset code 2: Offset_Value 4 + 0, i.e. offset 1
        (state_of(match_lengths, 6, 52), 6),
        (state_of(offsets, 5, 2), 5),
        (state_of(literal_lengths, 6, 1), 6),  # literal length code 1
        (1, 1),  # the end marker
    ]:
        value |= field << bits
        bits += width
    stream = value.to_bytes((bits + 7) // 8, "little")
    # Raw literals section of 1 byte; 1 sequence; all three tables predefined.
    block = bytes([1 << 3, byte, 1, 0x00]) + stream
    content = 1 + match_length
    header = b"\x28\xb5\x2f\xfd" + bytes([0xA0]) + struct.pack("<I", content)  # single segment
    return header + struct.pack("<I", (len(block) << 3) | (2 << 1) | 1)[:3] + block


def planes_of(deltas: list[int], width: int) -> list[bytes]:
    values = np.array(deltas, dtype="<u8").view(np.uint8).reshape(-1, 8)
    return [values[:, j].tobytes() for j in range(width)]


def concept_payload(
    name: bytes,
    entries: list[tuple[int, int]],
    frames: list[bytes],
    metadata: bytes = b"\x00\x00",
    codec: int = 1,
    frame_lengths: list[int] | None = None,
    entry_count: int | None = None,
) -> bytes:
    w = FieldWriter()
    w.u16(len(name))
    w.raw(name)
    w.raw(metadata)
    w.u8(codec)
    w.u32(len(entries) if entry_count is None else entry_count)
    for layer, count in entries:
        w.u32(layer)
        w.u64(count)
    for length in frame_lengths if frame_lengths is not None else [len(f) for f in frames]:
        w.u32(length)
    for frame in frames:
        w.raw(frame)
    return bytes(w.buffer)


END = section(b"CEND", b"")
# A small valid base: one 2-D layer of 20 entries (width 1), one concept.
BASE_LAYERS = [("blk.attn2.to_k.weight", "F32", (4, 5))]
BASE_LAYR = section(b"LAYR", layer_table(BASE_LAYERS))


def base_concept(deltas: list[int] = (2, 3, 10), name: bytes = b"cat", **kw) -> bytes:  # noqa: B006
    frames = kw.pop("frames", None) or [zstd(p) for p in planes_of(list(deltas), 1)]
    return section(b"CNPT", concept_payload(name, [(0, len(deltas))], frames, **kw))


# Version 1.1: values (spec § 6.4). The base concept has 3 indices (2, 5, 15) in one layer.
KIND_Q4, KIND_FP16, KIND_FP32 = 1, 2, 3


def values_payload(
    name: bytes,
    kind: int,
    planes: list[bytes],
    codebooks: list[list[float]] | None = None,
    frames: list[bytes] | None = None,
    frame_lengths: list[int] | None = None,
) -> bytes:
    """A vals payload from uncompressed planes (or ready frames), fields in spec § 6.4 order."""
    w = FieldWriter()
    w.u16(len(name))
    w.raw(name)
    w.u8(kind)
    for levels in codebooks or []:
        w.raw(struct.pack("<4f", *levels))
    frames = frames if frames is not None else [zstd(plane) for plane in planes]
    for length in frame_lengths if frame_lengths is not None else [len(f) for f in frames]:
        w.u32(length)
    for frame in frames:
        w.raw(frame)
    return bytes(w.buffer)


def payload_of(sec: bytes) -> bytes:
    """The payload of a framed section (its 8-byte header and 4-byte CRC dropped)."""
    return sec[8:-4]


def float_planes(values: list[float], dtype: str) -> list[bytes]:
    """The byte planes of fp16 (``<f2``) or fp32 (``<f4``) values, or raw bit patterns (``<u2``/``<u4``)."""
    raw = np.array(values, dtype=dtype).view(np.uint8).reshape(len(values), -1)
    return [raw[:, j].tobytes() for j in range(raw.shape[1])]


def base_values(kind: int = KIND_FP16, name: bytes = b"cat", **kw) -> bytes:
    """A valid vals section for the base concept, unless ``kw`` says otherwise."""
    if kind == KIND_Q4:
        planes = kw.pop("planes", [bytes([3 | 0 << 2 | 2 << 4])])
        codebooks = kw.pop("codebooks", [[0.0, 0.5, 0.75, 1.25]])
        return section(b"vals", values_payload(name, kind, planes, codebooks, **kw))
    dtype = "<f2" if kind == KIND_FP16 else "<f4"
    planes = kw.pop("planes", None) or float_planes([0.5, -0.0, 1.5], dtype)
    return section(b"vals", values_payload(name, kind, planes, **kw))


def assemble(*parts: bytes, major: int = 1, minor: int = 0) -> bytes:
    return preamble(major, minor) + b"".join(parts)


def with_bad_crc(sec: bytes) -> bytes:
    return sec[:-4] + struct.pack("<I", (struct.unpack("<I", sec[-4:])[0] ^ 1))


# --------------------------------------------------------------------------- valid vectors


def valid_vectors() -> dict[str, tuple[bytes, bool]]:
    """name -> (file bytes, canonical?)."""
    rng = np.random.default_rng(20261123)
    out: dict[str, tuple[bytes, bool]] = {}

    out["empty"] = (conesfmt.Container({}).to_bytes(), True)

    layers = {
        "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight": conesfmt.Layer((32, 24), "F32"),
        "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_v.weight": conesfmt.Layer((32, 24), "F32"),
        "mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight": conesfmt.Layer((64, 24), "F32"),
    }
    keys = list(layers)
    fingerprint = conesfmt.Fingerprint(
        {k: (rng.standard_normal(8) * 0.05).astype(np.float32) for k in layers}
    )
    cat = conesfmt.Concept(
        {keys[0]: [0, 5, 6, 7, 500], keys[2]: [1535]},
        {"prompt": "photo of a sks cat", "method": "xi-descent", "training": '{"steps": 1000}'},
        trigger="sks",
        class_word="cat",
    )
    out["one-concept"] = (
        conesfmt.Container(layers, {"cat": cat}, fingerprint, {"created_by": "cones 0.1.0"}).to_bytes(),
        True,
    )

    shapes = {
        "a.scalar_row": conesfmt.Layer((1,), "F16"),
        "b.vector": conesfmt.Layer((300,), "BF16"),  # width 2, every entry shut below
        "c.conv": conesfmt.Layer((4, 3, 3, 3), ""),
        "d.cube": conesfmt.Layer((70, 40, 30), "F32"),  # 84,000 entries: width 3
        "e.tiny": conesfmt.Layer((2, 2), "F64"),
    }
    concepts = {
        "chat noir 🐈": conesfmt.Concept(
            {
                "a.scalar_row": [0],
                "b.vector": np.arange(300),
                "d.cube": rng.choice(84_000, 200, replace=False),
            },
            {"trigger": "zwx", "class_word": "chat", "note": "ünïcödé ✓"},
        ),
        "nothing": conesfmt.Concept({}, {"method": "merge"}),
        "corners": {"c.conv": [0, 107], "e.tiny": np.array([[True, False], [False, True]])},
    }
    out["multi-concept"] = (conesfmt.Container(shapes, concepts).to_bytes(), True)

    # Non-canonical files a reader must accept (spec § 10): another zstd level
    # with content checksums, an unknown optional section, and a newer minor
    # with fields appended to known sections.
    frames = [zstd(p, level=1, checksum=True) for p in planes_of([2, 3, 10], 1)]
    out["zstd-level1-checksum"] = (
        assemble(BASE_LAYR, section(b"CNPT", concept_payload(b"cat", [(0, 3)], frames)), END),
        False,
    )
    out["unknown-optional-section"] = (
        assemble(BASE_LAYR, section(b"note", b"any bytes \x00\xff"), base_concept(), END),
        False,
    )
    out["newer-minor-extensions"] = (
        assemble(
            section(b"LAYR", layer_table(BASE_LAYERS) + b"future"),
            section(b"tile", b"\x01\x02"),
            section(
                b"CNPT",
                concept_payload(b"cat", [(0, 3)], [zstd(planes_of([2, 3, 10], 1)[0])]) + b"\x07",
            ),
            section(b"CEND", b"ext"),
            minor=3,
        ),
        False,
    )
    # Spec 1.0.1 (its change log names the findings).
    out["empty-meta"] = (assemble(BASE_LAYR, section(b"META", raw_map([])), base_concept(), END), False)
    out["optional-section-before-layers"] = (
        assemble(section(b"note", b"before the layer table"), BASE_LAYR, base_concept(), END),
        False,
    )
    fingerprint_payload = struct.pack("<H", 2) + struct.pack("<2f", 0.99, -0.0)
    out["newer-minor-fingerprint-extension"] = (
        assemble(
            BASE_LAYR,
            section(b"FPRT", fingerprint_payload + b"\x01\x02\x03\x04\x05"),
            section(b"META", raw_map([(b"base_model", b"tiny")]) + b"appended"),
            base_concept(),
            END,
            minor=2,  # 1 until spec 1.1, which made minor 1 the current version (its change log)
        ),
        False,
    )
    content = bytes(planes_of([2, 3, 10], 1)[0])
    forms = {
        "content size in 1 byte, single segment": hand_frame(content, 0x20),
        "content size in 8 bytes": hand_frame(content, 0xE0, fcs_size=8),
        "content size in 4 bytes, window descriptor": hand_frame(content, 0x80, window=0x00, fcs_size=4),
        "unused bit set": hand_frame(content, 0x30),
    }
    frame_layers = [BASE_LAYERS[0], ("blk.attn2.to_v.weight", "F32", (16, 16))]
    concepts = [section(b"CNPT", concept_payload(n.encode(), [(0, 3)], [f])) for n, f in forms.items()]
    every = bytes(planes_of([0] + [1] * 255, 1)[0])  # all 256 entries: a 256-byte plane
    concepts.append(
        section(
            b"CNPT",
            concept_payload(
                b"content size in 2 bytes (+256)", [(1, 256)], [hand_frame(every, 0x60, fcs_size=2)]
            ),
        )
    )
    out["frame-header-forms"] = (assemble(section(b"LAYR", layer_table(frame_layers)), *concepts, END), False)
    out.update(valid_value_vectors(rng))
    return out


def valid_value_vectors(rng: np.random.Generator) -> dict[str, tuple[bytes, bool]]:
    """Version 1.1 (spec § 6.4): each kind, all kinds together, and the files a reader must still accept."""
    out: dict[str, tuple[bytes, bool]] = {}
    key = BASE_LAYERS[0][0]
    table = {
        key: conesfmt.Layer(BASE_LAYERS[0][2], "F32"),
        "blk.attn2.to_v.weight": conesfmt.Layer((3, 7), "F32"),
    }
    q4 = conesfmt.Q4([0.0, 0.5, 0.75, 1.25], [3, 0, 2])
    q4_second = conesfmt.Q4([-1.0, 2.0, 2.0, 0.125], [1, 0, 3, 3, 2])  # levels unsorted and repeated
    concepts = {
        "cat": conesfmt.Concept(
            {key: [2, 5, 15], "blk.attn2.to_v.weight": [0, 1, 2, 3, 20]},
            values={key: q4, "blk.attn2.to_v.weight": q4_second},
            trigger="sks",
        )
    }
    out["values-q4"] = (conesfmt.Container(table, concepts).to_bytes(), True)
    fp16 = np.array([0.5, -0.0, 2.0**-24, 65504.0, -2.5], np.float16)  # a subnormal and the largest
    out["values-fp16"] = (
        conesfmt.Container(
            table,
            {
                "cat": conesfmt.Concept(
                    {"blk.attn2.to_v.weight": [0, 4, 8, 9, 20]}, values={"blk.attn2.to_v.weight": fp16}
                )
            },
        ).to_bytes(),
        True,
    )
    fp32 = np.array([1.0 + 2.0**-23, -0.0, 2.0**-149, 3.4028235e38, -0.25], np.float32)
    out["values-fp32"] = (
        conesfmt.Container(
            table,
            {
                "cat": conesfmt.Concept(
                    {"blk.attn2.to_v.weight": [1, 2, 3, 5, 8]}, values={"blk.attn2.to_v.weight": fp32}
                )
            },
        ).to_bytes(),
        True,
    )

    # Every kind in one file, over layers of delta widths 1, 2 and 3, counts not multiples of 4.
    shapes = {
        "a.small": conesfmt.Layer((5, 5), "F16"),  # width 1
        "b.mid": conesfmt.Layer((40, 30), "BF16"),  # width 2
        "c.large": conesfmt.Layer((300, 300), "F32"),  # width 3
    }

    def random_indices(numel: int, count: int) -> np.ndarray:
        return np.sort(rng.choice(numel, count, replace=False))

    picks = {
        key: random_indices(layer.numel, n)
        for (key, layer), n in zip(shapes.items(), (7, 301, 1023), strict=True)
    }
    mixed = {
        "binary": conesfmt.Concept({k: v[::2] for k, v in picks.items()}, {"method": "xi-descent"}),
        "quaternary": conesfmt.Concept(
            picks,
            values={k: rng.uniform(-0.5, 1.5, v.size).astype(np.float32) for k, v in picks.items()},
            value_kind="q4",
        ),
        "half": conesfmt.Concept(
            {k: v[1::3] for k, v in picks.items()},
            values={k: rng.normal(0.3, 0.2, v[1::3].size).astype(np.float16) for k, v in picks.items()},
        ),
        "single": conesfmt.Concept(
            {"c.large": picks["c.large"]},
            values={"c.large": rng.normal(0.0, 1.0, picks["c.large"].size).astype(np.float32)},
        ),
        "no entries, q4": conesfmt.Concept(
            {}, {"note": "a valued concept may touch no layer"}, value_kind="q4", values={}
        ),
    }
    out["values-mixed"] = (
        conesfmt.Container(shapes, mixed, metadata={"created_by": "cones 0.1.0"}).to_bytes(),
        True,
    )

    # Files a reader must accept that no canonical writer makes.
    out["values-minor-0-skipped"] = (
        assemble(
            BASE_LAYR, base_concept(), section(b"vals", b"not values: in a 1.0 file an unknown section"), END
        ),
        False,
    )
    out["values-newer-minor-unknown-kind"] = (
        assemble(
            BASE_LAYR, base_concept(), section(b"vals", values_payload(b"cat", 9, [b"future"])), END, minor=2
        ),
        False,
    )
    out["values-newer-minor-extension"] = (
        assemble(
            BASE_LAYR,
            base_concept(),
            section(b"vals", payload_of(base_values()) + b"\x01\x02"),
            END,
            minor=2,
        ),
        False,
    )
    out["values-optional-section-between"] = (
        assemble(
            BASE_LAYR,
            base_concept(),
            section(b"note", b"between a concept and its values"),
            base_values(KIND_Q4),
            END,
            minor=1,
        ),
        False,
    )
    frames = [zstd(plane, level=1, checksum=True) for plane in float_planes([0.5, -0.0, 1.5], "<f4")]
    out["values-level1-checksum"] = (
        assemble(
            BASE_LAYR,
            base_concept(),
            section(b"vals", values_payload(b"cat", KIND_FP32, [], frames=frames)),
            END,
            minor=1,
        ),
        False,
    )
    return out


# --------------------------------------------------------------------------- invalid vectors


def invalid_vectors() -> dict[str, tuple[bytes, int, str, str]]:
    """name -> (file bytes, rule of spec § 9, reason, piece of the reference error)."""
    good = assemble(BASE_LAYR, base_concept(), END)
    v: dict[str, tuple[bytes, int, str, str]] = {}

    def add(name: str, data: bytes, rule: int, reason: str, error: str) -> None:
        v[name] = (data, rule, reason, error)

    add("bad-magic", b"PK\x03\x04" + good[4:], 1, "starts with a ZIP signature", "bad magic")
    add(
        "magic-line-endings",
        good.replace(b"\r\n", b"\n", 1),
        1,
        "\\r\\n in the magic became \\n, as a text-mode transfer does",
        "text-mode",
    )
    add("empty-file", b"", 1, "zero bytes", "bad magic")
    add("preamble-only-magic", MAGIC, 1, "ends after the magic, without a version", "preamble")
    add(
        "major-2",
        assemble(BASE_LAYR, END, major=2),
        2,
        "major version 2 is unknown",
        "major version",
    )
    add(
        "major-0",
        assemble(BASE_LAYR, END, major=0),
        2,
        "major version 0 is unknown",
        "major version",
    )
    add("truncated-in-section", good[:-20], 3, "cut inside the last sections", "truncated")
    add(
        "truncated-in-end-marker",
        good[:-2],
        3,
        "cut inside CEND's CRC: 2 of its 4 bytes are present",
        "2 bytes missing",
    )
    add(
        "truncated-at-boundary",
        assemble(BASE_LAYR, base_concept()),
        3,
        "no CEND: cut between sections",
        "no CEND",
    )
    add(
        "length-overflows-file",
        good[: len(preamble()) + len(BASE_LAYR)] + b"CNPT" + struct.pack("<I", 1 << 20) + b"\x00" * 20,
        3,
        "a concept section declares 1 MiB of payload; 20 bytes follow",
        "truncated",
    )
    add(
        "section-length-over-limit",
        good[:12] + b"LAYR" + struct.pack("<I", 0xFFFFFFF0) + good[20:],
        3,
        "a section length above 2^31",
        "exceeds",
    )
    add(
        "bad-tag",
        assemble(BASE_LAYR, section(b"CN1T", b""), END),
        4,
        "tag has a digit",
        "invalid section tag",
    )
    add(
        "crc-mismatch",
        assemble(BASE_LAYR, with_bad_crc(base_concept()), END),
        5,
        "one CRC bit flipped",
        "checksum",
    )
    add(
        "payload-bit-flip",
        good[:40] + bytes([good[40] ^ 0x10]) + good[41:],
        5,
        "a bit of the layer table flipped, CRC unchanged",
        "checksum",
    )
    add(
        "unknown-required-section",
        assemble(BASE_LAYR, section(b"ZZZZ", b""), base_concept(), END),
        6,
        "required section ZZZZ is not defined in 1.0",
        "unknown required section",
    )
    add(
        "unknown-required-section-newer-minor",
        assemble(BASE_LAYR, section(b"Tile", b""), END, minor=7),
        6,
        "even in a newer minor, an unknown required section is rejected",
        "unknown required section",
    )
    meta = section(b"META", raw_map([(b"k", b"v")]))
    fprt = section(b"FPRT", struct.pack("<H", 1) + struct.pack("<f", 0.5))
    add(
        "meta-before-fingerprint",
        assemble(BASE_LAYR, meta, fprt, END),
        7,
        "FPRT after META",
        "out of order",
    )
    add(
        "layer-table-twice",
        assemble(BASE_LAYR, BASE_LAYR, END),
        7,
        "two LAYR sections",
        "out of order",
    )
    add(
        "concept-before-layers",
        assemble(base_concept(), BASE_LAYR, END),
        7,
        "CNPT before LAYR",
        "first known section",
    )
    add("no-layer-table", assemble(END), 7, "CEND with no LAYR", "first known section")
    add(
        "concept-after-end",
        assemble(BASE_LAYR, END, base_concept()),
        8,
        "a section after CEND",
        "trailing bytes",
    )
    add("trailing-byte", good + b"\x00", 8, "one zero byte after CEND", "trailing bytes")
    add(
        "payload-trailing-bytes",
        assemble(section(b"LAYR", layer_table(BASE_LAYERS) + b"xx"), END),
        9,
        "two extra bytes after the layer table's fields in a 1.0 file",
        "unexpected bytes",
    )
    add(
        "end-not-empty",
        assemble(BASE_LAYR, section(b"CEND", b"x")),
        9,
        "CEND carries a byte",
        "unexpected bytes",
    )
    add(
        "string-past-payload",
        assemble(section(b"LAYR", struct.pack("<IH", 1, 500) + b"a key of 20 bytes..."), END),
        10,
        "a key declares 500 bytes, 20 remain (enough for one layer record, so only this rule catches it)",
        "only 20 remain",
    )
    add(
        "name-not-utf8",
        assemble(BASE_LAYR, base_concept(name=b"c\xffat"), END),
        11,
        "the concept name has an 0xFF byte",
        "not valid UTF-8",
    )
    add(
        "name-surrogate",
        assemble(BASE_LAYR, base_concept(name=b"\xed\xa0\x80"), END),
        11,
        "the concept name encodes a UTF-16 surrogate",
        "not valid UTF-8",
    )
    add(
        "empty-name",
        assemble(BASE_LAYR, base_concept(name=b""), END),
        11,
        "concept name of 0 bytes",
        "allowed 1..256",
    )
    add(
        "name-too-long",
        assemble(BASE_LAYR, base_concept(name=b"n" * 257), END),
        11,
        "concept name of 257 bytes",
        "allowed 1..256",
    )
    add(
        "map-keys-unsorted",
        assemble(BASE_LAYR, section(b"META", raw_map([(b"b", b"1"), (b"a", b"2")])), END),
        12,
        "metadata keys b, a",
        "out of order",
    )
    add(
        "map-duplicate-key",
        assemble(BASE_LAYR, section(b"META", raw_map([(b"a", b"1"), (b"a", b"2")])), END),
        12,
        "metadata key a twice",
        "duplicate",
    )
    add(
        "map-too-many-entries",
        assemble(BASE_LAYR, section(b"META", raw_map([(b"k%04d" % i, b"") for i in range(1025)])), END),
        12,
        "1,025 metadata entries",
        "at most 1024",
    )
    two = [("b.weight", "F32", (2, 2)), ("a.weight", "F32", (2, 2))]
    add(
        "layers-unsorted",
        assemble(section(b"LAYR", layer_table(two)), END),
        13,
        "layer keys b, a",
        "out of order",
    )
    dup = [("a.weight", "F32", (2, 2)), ("a.weight", "F32", (2, 2))]
    add(
        "layers-duplicate",
        assemble(section(b"LAYR", layer_table(dup)), END),
        13,
        "layer key twice",
        "duplicate",
    )
    add(
        "layer-ndim-0",
        assemble(section(b"LAYR", layer_table([("a", "F32", ())]) + struct.pack("<I", 7)), END),
        13,
        "a layer with no dimensions, followed by 4 bytes (the size of the one dimension a record needs)",
        "0 dimensions",
    )
    add(
        "layer-dim-0",
        assemble(section(b"LAYR", layer_table([("a", "F32", (3, 0))])), END),
        13,
        "a dimension of 0",
        "dimensions must be",
    )
    add(
        "layer-numel-over-limit",
        assemble(section(b"LAYR", layer_table([("a", "F32", (1 << 21, 1 << 20))])), END),
        13,
        "2^41 entries in one layer",
        "at most 1099511627776",
    )
    add(
        "layer-bad-dtype",
        assemble(section(b"LAYR", layer_table([("a", "F-32", (3,))])), END),
        13,
        "dtype with a '-'",
        "dtype",
    )
    add(
        "layer-count-over-limit",
        assemble(section(b"LAYR", layer_table([], count=65_537)), END),
        13,
        "65,537 layers declared (checked before reading them)",
        "at most 65536",
    )
    add(
        "layer-table-oversized",
        preamble() + b"LAYR" + struct.pack("<I", (16 << 20) + 1) + struct.pack("<I", 0),
        13,
        "a layer table declared at 16 MiB + 1 byte (rejected from its header)",
        "exceeds",
    )
    add(
        "fingerprint-zero-samples",
        assemble(BASE_LAYR, section(b"FPRT", struct.pack("<H", 0)), END),
        14,
        "0 samples per layer with a layer in the table",
        "samples per layer",
    )
    add(
        "fingerprint-short",
        assemble(BASE_LAYR, section(b"FPRT", struct.pack("<H", 2) + struct.pack("<f", 0.5)), END),
        14,
        "2 samples declared, 1 value present",
        "sample values",
    )
    add(
        "fingerprint-long",
        assemble(BASE_LAYR, section(b"FPRT", struct.pack("<H", 1) + struct.pack("<2f", 0.5, 0.25)), END),
        9,
        "1 sample per layer declared, 2 values present, in a 1.0 file (a newer minor may append them)",
        "unexpected bytes",
    )
    add(
        "fingerprint-nan",
        assemble(BASE_LAYR, section(b"FPRT", struct.pack("<H", 1) + struct.pack("<f", float("nan"))), END),
        14,
        "a NaN sample value",
        "finite",
    )
    add(
        "duplicate-concept",
        assemble(BASE_LAYR, base_concept(), base_concept(), END),
        15,
        "two concepts named cat",
        "duplicate concept name",
    )
    add(
        "unknown-codec",
        assemble(BASE_LAYR, base_concept(codec=2), END),
        16,
        "codec 2",
        "unknown codec",
    )
    add(
        "entry-count-over-layers",
        assemble(BASE_LAYR, base_concept(entry_count=2), END),
        17,
        "2 entries with one layer in the table",
        "entries but the table has",
    )
    add(
        "entry-layer-out-of-range",
        assemble(BASE_LAYR, section(b"CNPT", concept_payload(b"cat", [(1, 1)], [zstd(b"\x02")])), END),
        17,
        "entry names layer #1 of a 1-layer table",
        "table has 1",
    )
    two_sorted = [("a.weight", "F32", (2, 2)), ("b.weight", "F32", (2, 2))]
    add(
        "entry-layers-not-increasing",
        assemble(
            section(b"LAYR", layer_table(two_sorted)),
            section(b"CNPT", concept_payload(b"cat", [(1, 1), (0, 1)], [zstd(b"\x01\x01")])),
            END,
        ),
        17,
        "entries for layer 1 then layer 0",
        "strictly increase",
    )
    add(
        "entry-count-zero",
        assemble(BASE_LAYR, section(b"CNPT", concept_payload(b"cat", [(0, 0)], [zstd(b"")])), END),
        17,
        "an entry with count 0",
        "count 0",
    )
    add(
        "entry-count-over-numel",
        assemble(
            BASE_LAYR,
            section(b"CNPT", concept_payload(b"cat", [(0, 21)], [zstd(bytes([0] + [1] * 20))])),
            END,
        ),
        17,
        "21 shut entries in a 20-entry layer",
        "count 21",
    )
    add(
        "frame-not-zstd",
        assemble(BASE_LAYR, base_concept(frames=[b"\x00\x01\x02\x03\x04\x05\x06\x07\x08"]), END),
        18,
        "the frame is not zstd",
        "not a zstd frame",
    )
    add(
        "frame-size-mismatch",
        assemble(BASE_LAYR, base_concept(frames=[zstd(b"\x02\x03\x0a\x01")]), END),
        18,
        "frame decompresses to 4 bytes, the entry says 3",
        "declares 4 bytes",
    )
    add(
        "frame-no-content-size",
        assemble(BASE_LAYR, base_concept(frames=[zstd(b"\x02\x03\x0a", content_size=False)]), END),
        18,
        "the frame does not declare its content size",
        "content size",
    )
    frame = zstd(b"\x02\x03\x0a")
    add(
        "frame-trailing-bytes",
        assemble(BASE_LAYR, base_concept(frames=[frame + b"\x00\x00"]), END),
        18,
        "two bytes after the zstd frame, inside its stated length",
        "spans",
    )
    add(
        "frame-two-frames",
        assemble(BASE_LAYR, base_concept(frames=[frame + frame]), END),
        18,
        "a second zstd frame after the first",
        "spans",
    )
    corrupt = bytearray(zstd(bytes(range(200)) * 4))
    corrupt[-6] ^= 0xFF
    add(
        "frame-corrupt",
        assemble(
            section(b"LAYR", layer_table([("a", "F32", (100_000,))])),
            section(
                b"CNPT",
                concept_payload(b"cat", [(0, 800)], [bytes(corrupt), zstd(bytes(800)), zstd(bytes(800))]),
            ),
            END,
        ),
        18,
        "a corrupted byte inside the compressed plane",
        "corrupt",
    )
    add(
        "frame-window-too-large",
        assemble(BASE_LAYR, base_concept(frames=[frame_with_window(b"\x02\x03\x0a", window_log=27)]), END),
        18,
        "the frame header asks for a 128 MiB window",
        "window",
    )
    window_layer = section(b"LAYR", layer_table([("a", "F32", (1600,))]))  # width 2: two planes
    deltas = [0] + [1] * 1499
    low, high = planes_of(deltas, 2)
    add(
        "frame-window-below-content",
        assemble(
            window_layer,
            section(b"CNPT", concept_payload(b"cat", [(0, 1500)], [frame_with_window(low, 10), zstd(high)])),
            END,
        ),
        18,
        "a 1,500-byte plane in a frame whose header asks for a 1 KiB window (below min(content, 128 KiB))",
        "below min(content size, 128 KiB)",
    )
    add(
        "frame-reserved-bit",
        assemble(BASE_LAYR, base_concept(frames=[hand_frame(bytes(planes_of([2, 3, 10], 1)[0]), 0x28)]), END),
        18,
        "the frame header's reserved bit (bit 3 of the descriptor) is set",
        "zstd frame header",
    )
    big = section(b"LAYR", layer_table([("a", "F32", (1024, 1024))]))  # width 3
    count = 1 + 131_074  # indices 1..131,075: deltas 1, one plane byte each
    add(
        "frame-block-decodes-over-maximum",
        assemble(
            big,
            section(
                b"CNPT",
                concept_payload(
                    b"cat",
                    [(0, count)],
                    [oversized_block_frame(1, 131_074), zstd(bytes(count)), zstd(bytes(count))],
                ),
            ),
            END,
        ),
        18,
        "a 9-byte compressed block that decodes to 131,075 bytes, over Block_Maximum_Size (128 KiB); "
        "the frame's content size is right (libzstd's one-shot decoder accepts it; its streaming decoder "
        "reports corruption)",
        "corrupt zstd data",
    )
    add(
        "frame-length-past-payload",
        assemble(BASE_LAYR, base_concept(frame_lengths=[len(frame) + 5], frames=[frame]), END),
        10,
        "the frame length runs past the payload",
        "remain",
    )
    add(
        "zero-delta",
        assemble(BASE_LAYR, base_concept(deltas=[2, 3, 0]), END),
        19,
        "deltas 2, 3, 0: index 5 twice",
        "not strictly increasing",
    )
    add(
        "index-out-of-range",
        assemble(BASE_LAYR, base_concept(deltas=[2, 3, 15]), END),
        19,
        "indices 2, 5, 20 in a 20-entry layer",
        ">= numel 20",
    )
    add(
        "index-bomb",
        index_bomb(),
        19,
        "164 KB: one layer of 2^40 entries, 2^30 indices in RLE blocks, the last delta 0; with the "
        "default index limit (spec § 8.2) a reader refuses it before decoding any index",
        "max_indices",
    )
    invalid_value_vectors(add)
    return v


def invalid_value_vectors(add) -> None:
    """Version 1.1 (spec § 6.4, § 9 rules 20-23): each breaks one rule in a file of minor 1.

    A 1.0 reader accepts every one of them: to it, ``vals`` is an unknown optional section.
    """
    good = [BASE_LAYR, base_concept()]
    add(
        "values-before-concept",
        assemble(BASE_LAYR, base_values(), base_concept(), END, minor=1),
        20,
        "a vals section before the first CNPT",
        "before any concept",
    )
    add(
        "values-twice",
        assemble(*good, base_values(), base_values(), END, minor=1),
        20,
        "two vals sections for one concept",
        "a second values section",
    )
    add(
        "values-name-mismatch",
        assemble(*good, base_values(name=b"dog"), END, minor=1),
        20,
        "vals names concept dog after the CNPT of cat",
        "follows the CNPT of concept 'cat'",
    )
    add(
        "values-unknown-kind",
        assemble(*good, section(b"vals", values_payload(b"cat", 4, [b"\x00\x00\x00"])), END, minor=1),
        21,
        "value kind 4 in a 1.1 file",
        "unknown value kind 4",
    )
    add(
        "values-codebook-nan",
        assemble(*good, base_values(KIND_Q4, codebooks=[[0.0, float("nan"), 0.75, 1.25]]), END, minor=1),
        22,
        "a NaN level in a q4 codebook",
        "codebook",
    )
    add(
        "values-fp16-infinity",
        assemble(*good, base_values(planes=float_planes([0.5, np.inf, 1.5], "<f2")), END, minor=1),
        22,
        "an fp16 value of +infinity (bits 0x7C00)",
        "not finite",
    )
    add(
        "values-fp32-nan",
        assemble(
            *good,
            base_values(KIND_FP32, planes=float_planes([0x3F000000, 0x7FC00001, 0], "<u4")),
            END,
            minor=1,
        ),
        22,
        "an fp32 value that is a NaN (bits 0x7FC00001)",
        "not finite",
    )
    add(
        "values-q4-padding",
        assemble(*good, base_values(KIND_Q4, planes=[bytes([3 | 0 << 2 | 2 << 4 | 1 << 6])]), END, minor=1),
        23,
        "3 codes in one byte whose unused top bits are 01",
        "padding bits",
    )
    add(
        "values-frame-size-mismatch",
        assemble(*good, base_values(planes=float_planes([0.5, -0.0, 1.5, 2.0], "<f2")), END, minor=1),
        18,
        "fp16 planes of 4 bytes for a concept of 3 indices",
        "declares 4 bytes",
    )
    add(
        "values-frame-not-zstd",
        assemble(
            *good,
            section(
                b"vals", values_payload(b"cat", KIND_Q4, [], [[0, 1, 2, 3]], frames=[b"\x03\x00\x00\x00\x00"])
            ),
            END,
            minor=1,
        ),
        18,
        "the q4 code frame is not zstd",
        "not a zstd frame",
    )
    add(
        "values-trailing-bytes",
        assemble(*good, section(b"vals", payload_of(base_values()) + b"\x00"), END, minor=1),
        9,
        "a byte after the last field of vals in a 1.1 file",
        "unexpected bytes",
    )
    add(
        "values-missing-plane",
        assemble(
            *good,
            section(b"vals", values_payload(b"cat", KIND_FP32, float_planes([0.5, -0.0, 1.5], "<f4")[:2])),
            END,
            minor=1,
        ),
        10,
        "an fp32 vals section with 2 of its 4 planes: its frames, read after 4 lengths, run past the payload",
        "remain",
    )
    add(
        "values-codebooks-short",
        assemble(
            *good,
            section(b"vals", values_payload(b"cat", KIND_Q4, [], frames=[]) + b"\x00" * 8),
            END,
            minor=1,
        ),
        10,
        "a q4 vals section with 8 of the 16 bytes of its one codebook",
        "q4 codebooks",
    )


def frame_with_window(content: bytes, window_log: int) -> bytes:
    """A zstd frame holding ``content`` in one raw block, whose header asks for ``2**window_log``.

    RFC 8878 § 3.1.1.1: descriptor 0x80 = 4-byte content size, not single
    segment, so a Window_Descriptor byte (exponent ``window_log - 10``) follows.
    """
    header = b"\x28\xb5\x2f\xfd" + bytes([0x80, (window_log - 10) << 3]) + struct.pack("<I", len(content))
    last_raw_block = struct.pack("<I", (len(content) << 3) | 1)[:3]
    return header + last_raw_block + content


# --------------------------------------------------------------------------- output


def build() -> dict[Path, bytes]:
    files: dict[Path, bytes] = {}
    valid_manifest = {}
    for name, (data, canonical) in valid_vectors().items():
        decoded = conesfmt.Container.from_bytes(data)  # the library must accept its own vectors
        files[VECTORS / "valid" / f"{name}.cones"] = data
        files[VECTORS / "valid" / f"{name}.json"] = (
            json.dumps(to_json(decoded), indent=1, ensure_ascii=False) + "\n"
        ).encode("utf-8")
        valid_manifest[name] = {
            "canonical": canonical,
            "minor": _VALUES_MINOR if name.startswith("values-") else 0,
        }
    invalid_manifest = {}
    for name, (data, rule, reason, error) in invalid_vectors().items():
        files[VECTORS / "invalid" / f"{name}.cones"] = data
        invalid_manifest[name] = {"rule": rule, "reason": reason, "error_contains": error}
        invalid_manifest[name]["minor"] = _VALUES_MINOR if name.startswith("values-") else 0
    meta = {"zstd_version": zstandard.ZSTD_VERSION}
    files[VECTORS / "valid" / "manifest.json"] = _json({"generated_with": meta, "vectors": valid_manifest})
    files[VECTORS / "invalid" / "manifest.json"] = _json(
        {"generated_with": meta, "vectors": invalid_manifest}
    )
    return files


#: The minor version whose rules a vector tests (spec § 11): values arrived in 1.1.
_VALUES_MINOR = 1


def _json(document: object) -> bytes:
    return (json.dumps(document, indent=1, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the files on disk, write nothing")
    args = parser.parse_args()
    files = build()
    if args.check:
        stale = [
            str(p.relative_to(ROOT)) for p, data in files.items() if not p.exists() or p.read_bytes() != data
        ]
        extra = {p for p in VECTORS.rglob("*") if p.is_file() and p not in files}
        for path in stale:
            print(f"differs: {path}")
        for path in sorted(extra):
            print(f"not generated: {path.relative_to(ROOT)}")
        return 1 if stale or extra else 0
    for path, data in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    print(f"wrote {len(files)} files under {VECTORS.relative_to(ROOT.parent)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
