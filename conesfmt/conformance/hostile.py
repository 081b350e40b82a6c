"""Hostile inputs every reader must refuse quickly: small files that declare a lot of work.

Fuzzing rarely finds these (a mutation cannot write a thousand valid zstd
blocks), so the kit builds them and gives them to every reader it checks
(:func:`conesfmt.conformance.run`); ``spec/make_vectors.py`` writes the same
bytes as test vectors.

>>> len(index_bomb())
164037
"""

from __future__ import annotations

import struct

from ..sections import MAGIC, section
from ..wire import FieldWriter

#: RFC 8878 § 3.1.1.2.4: the largest block, and what a 128 KiB window allows.
_BLOCK = 128 << 10


def rle_frame(byte: int, size: int, last: int | None = None) -> bytes:
    """A zstd frame of ``size`` copies of ``byte`` in RLE blocks of 128 KiB (4 bytes each).

    Not single-segment, with a 128 KiB window and an 8-byte content size, so
    every rule of spec § 6.3 holds. ``last``, if given, replaces the final byte
    (one raw block of one byte).
    """
    header = b"\x28\xb5\x2f\xfd" + bytes([0xC0, 7 << 3]) + struct.pack("<Q", size)
    blocks = []
    remaining = size - (last is not None)
    while remaining:
        length = min(_BLOCK, remaining)
        remaining -= length
        final = remaining == 0 and last is None
        blocks.append(struct.pack("<I", (length << 3) | (1 << 1) | final)[:3] + bytes([byte]))
    if last is not None:
        blocks.append(struct.pack("<I", (1 << 3) | 1)[:3] + bytes([last]))  # raw, last block
    return header + b"".join(blocks)


def index_bomb(count: int = 1 << 30) -> bytes:
    """One layer of 2**40 entries, ``count`` indices in 5 planes of RLE blocks, and a bad last delta.

    164,037 bytes for 2**30 indices. Every field and frame header is valid; only the
    last delta, 0, breaks a rule (spec § 9, rule 19), so a reader without a
    limit on the indices it decodes (spec § 8.2) finds out after decoding them
    all: 10-20 s for 2**30, hours for a 160 MB file of this kind.
    """
    layers = FieldWriter()
    layers.u32(1)
    layers.str16("bomb.weight")
    layers.str8("F32")
    layers.u8(2)
    layers.u32(1 << 20)
    layers.u32(1 << 20)
    # Deltas 1, 1, ..., 1, 0: plane 0 is the low byte; planes 1-4 (width 5 for 2**40) are 0.
    frames = [rle_frame(1, count, last=0)] + [rle_frame(0, count) for _ in range(4)]
    concept = FieldWriter()
    concept.str16("bomb")
    concept.map({})
    concept.u8(1)  # codec 1
    concept.u32(1)  # one entry
    concept.u32(0)  # layer #0
    concept.u64(count)
    for frame in frames:
        concept.u32(len(frame))
    for frame in frames:
        concept.raw(frame)
    return (
        MAGIC
        + bytes([1, 0])
        + section(b"LAYR", layers.buffer)
        + section(b"CNPT", concept.buffer)
        + section(b"CEND", b"")
    )


#: name -> bytes builder of each hostile input the kit gives every reader.
HOSTILE_INPUTS = {"index-bomb": index_bomb}
