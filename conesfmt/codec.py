"""Index coding of a concept: deltas, byte planes, one zstd frame per plane (spec § 6.3).

A layer's shut entries are flat row-major indices ``i_0 < i_1 < ...``. They are
stored as deltas ``d_0 = i_0`` and ``d_k = i_k - i_(k-1) >= 1``, each written
in ``w`` little-endian bytes, ``w`` the fewest bytes that hold ``numel - 1``.
Byte ``j`` of every delta of every layer of the concept (layers in table
order) forms plane ``j``, compressed as its own zstd frame. Splitting the
planes keeps each frame's byte statistics uniform, which is what brings random
masks to within about 2 % of the information-theoretic floor
(``bench/format_size.py``), and it lets a reader decode in fixed-size blocks
(:data:`BLOCK_ENTRIES`), so memory stays bounded whatever the file claims.

>>> frames = encode_planes([(1000, np.array([3, 4, 999]))])
>>> [block.tolist() for _, block in iter_index_blocks(frames, [(1000, 3)])]
[[3, 4, 999]]
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import zstandard

from .errors import FormatError
from .limits import MAX_ZSTD_WINDOW

#: The only codec of version 1.0 (spec § 6.3): byte planes of deltas, zstd.
CODEC_BYTE_PLANES = 1
#: zstd level of the canonical writer for planes of at most :data:`SMALL_PLANE_BYTES`
#: (spec § 10): level 19 gains 1-2 % over level 3 there, at a few M bytes/s.
ZSTD_LEVEL = 19
#: Planes up to this size are compressed at :data:`ZSTD_LEVEL`; larger ones by
#: :func:`plane_parameters` (spec § 10), so that writing stays above 10 M indices/s.
SMALL_PLANE_BYTES = 1 << 17
#: Entries decoded at a time; bounds a reader's working memory.
BLOCK_ENTRIES = 1 << 16

_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
#: RFC 8878 § 3.1.1.2.4: no block holds more than 128 KiB.
MAX_ZSTD_BLOCK = 128 << 10
_BLOCK_RLE = 1
_BLOCK_RESERVED = 3


def layer_width(numel: int) -> int:
    """Bytes per delta for a layer of ``numel`` entries: enough for ``numel - 1``, at least 1.

    >>> layer_width(256), layer_width(257), layer_width(640 * 768)
    (1, 2, 3)
    """
    return max(1, ((numel - 1).bit_length() + 7) // 8)


def plane_sizes(entries: Sequence[tuple[int, int]]) -> list[int]:
    """Decompressed size of each plane for ``(numel, count)`` entries (spec § 6.3)."""
    widths = [layer_width(numel) for numel, _ in entries]
    return [
        sum(count for (_, count), width in zip(entries, widths, strict=True) if width > plane)
        for plane in range(max(widths, default=0))
    ]


def encode_planes(entries: Sequence[tuple[int, np.ndarray]]) -> list[bytes]:
    """Encode ``(numel, sorted indices)`` per non-empty layer into one zstd frame per plane.

    The indices must already be validated (strictly increasing, in range).
    """
    widths = [layer_width(numel) for numel, _ in entries]
    sizes = plane_sizes([(numel, len(indices)) for numel, indices in entries])
    planes = [np.empty(size, dtype=np.uint8) for size in sizes]
    filled = [0] * len(planes)
    for (_, indices), width in zip(entries, widths, strict=True):
        # Deltas in 4 bytes when they fit (layers up to 2**32 entries), else 8; byte j is plane j.
        deltas = np.empty(indices.size, dtype="<u4" if width <= 4 else "<u8")
        deltas[0] = indices[0]
        np.subtract(indices[1:], indices[:-1], out=deltas[1:], casting="unsafe")
        delta_bytes = deltas.view(np.uint8).reshape(indices.size, -1)
        for plane in range(width):
            planes[plane][filled[plane] : filled[plane] + indices.size] = delta_bytes[:, plane]
            filled[plane] += indices.size
    return compress_planes(planes)


#: zstd's optimal parser with small tables and a short search, for planes of scattered small
#: numbers (the second byte of deltas at 0.1-0.9 % density): 1.19-1.57 x the plane's entropy at
#: 14-19 M bytes/s, where levels 1-12 lose 1.4-2.1 x at 25-60 M bytes/s and level 16, 1.17-1.48 x,
#: runs at 2 M bytes/s (bench/switching.py, docs/switching.md).
_SPARSE_PARAMETERS = dict(
    strategy=zstandard.STRATEGY_BTOPT,
    window_log=17,
    hash_log=14,
    chain_log=14,
    search_log=1,
    min_match=4,
    target_length=64,
)


def plane_parameters(plane: bytes | np.ndarray) -> int | dict[str, int]:
    """The zstd level (or parameter set) the canonical writer uses for ``plane`` (spec § 10).

    Small planes (at most :data:`SMALL_PLANE_BYTES`) get :data:`ZSTD_LEVEL`.
    Larger ones are chosen by their share ``z`` of zero bytes, which tells
    scattered small numbers from long runs: level 1 for ``z < 1/4`` or
    ``z >= 31/32`` (near-uniform bytes, or nearly all zeros: entropy coding is
    all there is to gain), :data:`_SPARSE_PARAMETERS` for ``1/4 <= z < 29/32``
    and level 9 for ``29/32 <= z < 31/32``. On random masks over SDXL's 140
    K/V layers at 0.1, 0.5, 0.6, 1, 2, 5 and 20 % this writes at least 14 M
    indices/s (CPU time, one core) at 1.015-1.058 x the floor; the most is near
    0.6 %, where only zstd's slow parsers (level 16: 1-2 M indices/s) stay
    under 1.05 x (``bench/switching.py``, docs/switching.md).
    """
    size = len(plane)
    if size <= SMALL_PLANE_BYTES:
        return ZSTD_LEVEL
    zeros = size - np.count_nonzero(np.frombuffer(plane, dtype=np.uint8))
    # Exact integer comparisons of zeros / size against the thresholds.
    if 4 * zeros < size or 32 * zeros >= 31 * size:
        return 1
    if 32 * zeros < 29 * size:
        return _SPARSE_PARAMETERS
    return 9


def _compressor(choice: int | dict[str, int]) -> zstandard.ZstdCompressor:
    frame = dict(write_content_size=True, write_checksum=False, write_dict_id=False)
    if isinstance(choice, int):
        return zstandard.ZstdCompressor(level=choice, **frame)
    return zstandard.ZstdCompressor(
        compression_params=zstandard.ZstdCompressionParameters(threads=0, **choice, **frame)
    )


def compress_planes(planes: Sequence[bytes | np.ndarray]) -> list[bytes]:
    """One canonical zstd frame per plane (spec § 10): the level of :func:`plane_parameters`, the
    content size, no checksum, no dictionary ID, one thread.

    Index planes (§ 6.3) and value planes (§ 6.4) are compressed alike.
    """
    return [_compressor(plane_parameters(plane)).compress(plane) for plane in planes]


def _frame_blocks(
    frame: memoryview, position: int, block_maximum: int, checksum: bool, where: str
) -> list[int]:
    """Offsets in ``frame`` where the header (at ``position``) and each block end (RFC 8878 § 3.1.1).

    The last offset is the frame's end, content checksum included: python-zstandard
    exposes no ``ZSTD_findFrameCompressedSize``, and walking the block headers is
    how the reader proves a frame ends exactly where the section says it does (no
    trailing bytes, no second frame). Each block header is checked on the way
    (spec § 6.3): no reserved block type, no ``Block_Size`` over ``block_maximum``.
    """
    ends = [position]
    while True:
        if position + 3 > len(frame):
            raise FormatError(f"{where}: zstd frame is truncated")
        header = int.from_bytes(frame[position : position + 3], "little")
        block_type = (header >> 1) & 3
        if block_type == _BLOCK_RESERVED:
            raise FormatError(f"{where}: zstd block of reserved type")
        if header >> 3 > block_maximum:
            raise FormatError(
                f"{where}: zstd block of {header >> 3} bytes exceeds Block_Maximum_Size {block_maximum}"
            )
        position += 3 + (1 if block_type == _BLOCK_RLE else header >> 3)
        if header & 1:
            ends.append(position + (4 if checksum else 0))
            return ends
        ends.append(position)


def check_frame(frame: memoryview, expected_size: int, where: str) -> tuple[int, list[int]]:
    """Check a plane's zstd frame from its headers alone (spec § 6.3); return its block layout.

    ``expected_size`` is the plane size ``P_j``. Returns ``Block_Maximum_Size``
    and the offsets where the header and each block end (see
    :func:`_frame_blocks`). Raises :class:`FormatError` naming ``where``.
    """
    if bytes(frame[:4]) != _ZSTD_MAGIC:
        raise FormatError(f"{where}: not a zstd frame (bad magic)")
    try:
        params = zstandard.get_frame_parameters(frame)
        header_size = zstandard.frame_header_size(frame)
    except zstandard.ZstdError as error:
        raise FormatError(f"{where}: bad zstd frame header ({error})") from None
    if params.content_size == zstandard.CONTENTSIZE_UNKNOWN:
        raise FormatError(f"{where}: zstd frame does not declare its content size")
    if params.content_size != expected_size:
        raise FormatError(
            f"{where}: zstd frame declares {params.content_size} bytes, "
            f"the entry table implies {expected_size}"
        )
    if params.dict_id != 0:
        raise FormatError(f"{where}: zstd frame needs a dictionary ({params.dict_id})")
    if params.window_size > MAX_ZSTD_WINDOW:
        raise FormatError(f"{where}: zstd window of {params.window_size} bytes exceeds {MAX_ZSTD_WINDOW}")
    # With the window at least min(content, 128 KiB), no block header can ask for more than
    # RFC 8878's Block_Maximum_Size = min(window, 128 KiB) unnoticed: a header check, so every
    # reader agrees.
    if params.window_size < min(expected_size, MAX_ZSTD_BLOCK):
        raise FormatError(
            f"{where}: zstd window of {params.window_size} bytes is below "
            f"min(content size, 128 KiB) = {min(expected_size, MAX_ZSTD_BLOCK)}"
        )
    block_maximum = min(params.window_size, MAX_ZSTD_BLOCK)  # RFC 8878 § 3.1.1.2.4
    ends = _frame_blocks(frame, header_size, block_maximum, params.has_checksum, where)
    if ends[-1] != len(frame):
        raise FormatError(f"{where}: zstd frame spans {ends[-1]} bytes, the section says {len(frame)}")
    return block_maximum, ends


class PlaneReader:
    """Reads one plane's frame a zstd block at a time, checking it against its declared size.

    Feeding the decoder one whole block at a time is what lets the reader see
    how much each block decodes to: RFC 8878 § 3.1.1.2.4 caps it at
    ``Block_Maximum_Size``, which libzstd does not enforce (spec § 6.3).
    Memory: one decoded block and the zstd window.
    """

    def __init__(self, frame: memoryview, expected_size: int, where: str):
        self.where = where
        self.block_maximum, self.ends = check_frame(frame, expected_size, where)
        self.frame = frame
        self.fed = 0  # entries of ends given to the decoder: blocks fed
        self.decoder = zstandard.ZstdDecompressor(max_window_size=MAX_ZSTD_WINDOW).decompressobj()
        self.block = b""  # the last decoded block, read from ``offset`` on
        self.offset = 0

    def _decode_block(self) -> bool:
        """Decode the next block into ``self.block``; False when the frame is done."""
        if self.fed == len(self.ends) - 1:
            return False
        # ends[0] is the header's end: the first piece carries the header with block 0.
        start = 0 if self.fed == 0 else self.ends[self.fed]
        self.fed += 1
        try:
            self.block = self.decoder.decompress(self.frame[start : self.ends[self.fed]])
        except zstandard.ZstdError as error:
            raise FormatError(f"{self.where}: corrupt zstd data ({error})") from None
        self.offset = 0
        if len(self.block) > self.block_maximum:
            raise FormatError(
                f"{self.where}: zstd block #{self.fed - 1} decodes to {len(self.block)} bytes, "
                f"over Block_Maximum_Size {self.block_maximum}"
            )
        return True

    def read(self, size: int) -> bytes:
        parts = []
        while size:
            if self.offset == len(self.block):
                if not self._decode_block():
                    raise FormatError(f"{self.where}: zstd frame ends early")
                continue
            piece = self.block[self.offset : self.offset + size]
            self.offset += len(piece)
            size -= len(piece)
            parts.append(piece)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def finish(self) -> None:
        while self.offset == len(self.block) and self._decode_block():
            pass
        if self.offset < len(self.block):
            raise FormatError(f"{self.where}: zstd frame holds more bytes than declared")


def iter_index_blocks(
    frames: Sequence[bytes | memoryview],
    entries: Sequence[tuple[int, int]],
    concept: str = "concept",
    where: Sequence[str] | None = None,
    out: Sequence[np.ndarray] | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """Decode and validate, yielding ``(entry number, int64 indices)`` blocks in order.

    ``entries`` holds ``(numel, count)`` per non-empty layer; ``concept`` names
    the concept and ``where[n]`` entry ``n`` in errors. Every rule of spec § 6.3
    is checked: frame sizes, deltas >= 1 after the first, last index < numel.
    Memory use is bounded by :data:`BLOCK_ENTRIES` and the zstd window, not by
    the counts. With ``out`` (one int64 array of ``count`` per entry), each
    block is decoded straight into its place there, and the blocks yielded
    are views of it.
    """
    where = where or [f"{concept}, entry #{n}" for n in range(len(entries))]
    sizes = plane_sizes(entries)
    if len(frames) != len(sizes):
        raise FormatError(f"{concept}: {len(frames)} frames, expected {len(sizes)}")
    readers = [
        PlaneReader(memoryview(frame), size, f"{concept}, plane {plane}")
        for plane, (frame, size) in enumerate(zip(frames, sizes, strict=True))
    ]
    for number, (numel, count) in enumerate(entries):
        width = layer_width(numel)
        previous = -1
        for start in range(0, count, BLOCK_ENTRIES):
            size = min(BLOCK_ENTRIES, count - start)
            planes = [np.frombuffer(readers[plane].read(size), dtype=np.uint8) for plane in range(width)]
            indices = np.empty(size, np.int64) if out is None else out[number][start : start + size]
            if width <= 4:
                # numel <= 2**32: deltas and indices fit in uint32 (any block of a valid layer).
                deltas = planes[-1].astype(np.uint32)
                for plane in planes[-2::-1]:
                    deltas <<= 8
                    deltas |= plane
            else:
                delta_bytes = np.zeros((size, 8), dtype=np.uint8)
                for plane, data in enumerate(planes):
                    delta_bytes[:, plane] = data
                deltas = delta_bytes.view("<u8").reshape(-1).astype(np.int64)
            first = 1 if previous < 0 else 0
            if not deltas[first:].all():
                position = start + first + int(np.flatnonzero(deltas[first:] == 0)[0])
                raise FormatError(f"{where[number]}: indices not strictly increasing at entry {position}")
            # The block continues from the previous one: its first index, checked against numel
            # in Python integers, so the running sum never wraps (spec § 1.1).
            head = int(deltas[0]) + max(previous, 0)
            if head >= numel:
                raise FormatError(f"{where[number]}: index {head} >= numel {numel}")
            deltas[0] = head
            # Deltas are < 2**40 and blocks 2**16 long, so the int64 sums cannot overflow.
            np.cumsum(deltas, dtype=np.int64, out=indices)
            if indices[-1] >= numel:
                raise FormatError(f"{where[number]}: index {int(indices[-1])} >= numel {numel}")
            previous = int(indices[-1])
            yield number, indices
    for reader in readers:
        reader.finish()
