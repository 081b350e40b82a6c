"""Values on concept neurons (spec § 6.4, format 1.1): a multiplier ξ of the base weight per index.

The paper optimises its loss *on* the concept neurons in float32, float16,
quaternary and binary precision and finds about the same results (sec. 3.2,
Fig. 3). A concept's *value kind* says which:

- ``binary``: no values, ξ = 0 (the entries are shut); what version 1.0 stores
  and what a 1.0 reader falls back to for any concept;
- ``q4``: the paper's quaternary: per layer a codebook of 4 float32 levels, and
  a 2-bit code per index (:class:`Q4`);
- ``fp16`` / ``fp32``: one IEEE binary16 / binary32 value per index.

Stored values are kept in that form (a q4 layer costs 2 bits per index in
memory too); :meth:`conesfmt.Container.values` expands them to float32.

>>> q4 = Q4([0.0, 0.5, 0.75, 1.25], codes=[3, 0, 0, 2])
>>> q4.expand().tolist()
[1.25, 0.0, 0.0, 0.75]
>>> quantize_q4(np.array([0.1, 0.11, 0.5, 0.52, 0.9, 1.3], np.float32)).codes.tolist()
[0, 0, 1, 2, 3, 3]
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from .errors import FormatError

#: The value kinds, by the names the API, the decoded form (spec § 12) and ``cones`` use.
VALUE_KINDS = ("binary", "q4", "fp16", "fp32")
#: The ``kind`` byte of a ``vals`` section (spec § 6.4) for each kind that has values.
KIND_CODES = {"q4": 1, "fp16": 2, "fp32": 3}
KIND_NAMES = {code: name for name, code in KIND_CODES.items()}
#: Levels of a q4 codebook, and bits of a q4 code.
Q4_LEVELS = 4
Q4_BITS = 2
#: Codes per byte of a packed q4 plane.
Q4_CODES_PER_BYTE = 8 // Q4_BITS
#: Value planes of each kind (spec § 6.4): bytes per value of fp16/fp32, one plane of codes for q4.
VALUE_PLANES = {"q4": 1, "fp16": 2, "fp32": 4}
#: numpy dtype of a stored fp16/fp32 value, and the unsigned integer of the same width.
_FLOAT_DTYPES = {"fp16": np.dtype("<f2"), "fp32": np.dtype("<f4")}
_BITS_DTYPES = {"fp16": np.dtype("<u2"), "fp32": np.dtype("<u4")}
#: Exponent bits of binary16 / binary32: all ones means infinity or NaN.
_EXPONENT_MASKS = {"fp16": 0x7C00, "fp32": 0x7F800000}
#: Rounds of Lloyd's algorithm :func:`quantize_q4` runs at most.
QUANTIZE_ITERATIONS = 64


class Q4:
    """Quaternary values of one layer: 4 float32 levels and a 2-bit code per index (spec § 6.4).

    ``codebook`` holds 4 finite numbers (rounded to float32), ``codes`` one
    integer 0..3 per index, in the order of the indices they go with. The codes
    are kept packed, 4 to a byte. Raises :class:`FormatError` on anything else.

    >>> q = Q4([0.0, 0.25, 0.5, 1.0], [3, 0, 2]); q.expand().tolist(), q.nbytes
    ([1.0, 0.0, 0.5], 17)
    """

    __slots__ = ("codebook", "packed", "size")

    def __init__(self, codebook: Any, codes: Any):
        levels = np.array(codebook, dtype=np.float64).reshape(-1)
        if levels.size != Q4_LEVELS:
            raise FormatError(f"a q4 codebook has {Q4_LEVELS} levels, got {levels.size}")
        with np.errstate(over="ignore"):
            levels = levels.astype(np.float32)
        if not np.isfinite(levels).all():
            raise FormatError(f"q4 codebook {levels.tolist()} must be finite (as float32)")
        codes = np.asarray(codes)
        if codes.ndim != 1 or (codes.size and codes.dtype.kind not in "iu"):
            raise FormatError(f"q4 codes must be a 1-D array of integers, got {codes.dtype} {codes.shape}")
        if codes.size and (int(codes.min()) < 0 or int(codes.max()) >= Q4_LEVELS):
            low, high = int(codes.min()), int(codes.max())
            raise FormatError(f"q4 codes must be 0..{Q4_LEVELS - 1}, got {low}..{high}")
        self._set(levels, pack_codes(codes.astype(np.uint8)), int(codes.size))

    def _set(self, codebook: np.ndarray, packed: np.ndarray, size: int) -> None:
        codebook.flags.writeable = False
        packed.flags.writeable = False
        self.codebook, self.packed, self.size = codebook, packed, size

    @classmethod
    def _from_packed(cls, codebook: np.ndarray, packed: np.ndarray, size: int) -> Q4:
        """A q4 layer the decoder has validated (finite codebook, zero padding bits)."""
        q4 = cls.__new__(cls)
        q4._set(np.array(codebook, dtype=np.float32), packed, size)
        return q4

    @property
    def codes(self) -> np.ndarray:
        """One uint8 code 0..3 per index."""
        return unpack_codes(self.packed, self.size)

    def expand(self) -> np.ndarray:
        """float32 ξ per index: the codebook level each code names."""
        return self.codebook[self.codes]

    def take(self, ranks: np.ndarray) -> np.ndarray:
        """float32 ξ at the given positions (0-based ranks among this layer's indices)."""
        ranks = np.asarray(ranks, dtype=np.int64)
        codes = (self.packed[ranks // Q4_CODES_PER_BYTE] >> (Q4_BITS * (ranks % Q4_CODES_PER_BYTE))) & 3
        return self.codebook[codes]

    def permuted(self, order: np.ndarray) -> Q4:
        """The same codebook, codes reordered: ``codes[order]``."""
        q4 = Q4.__new__(Q4)
        q4._set(self.codebook.copy(), pack_codes(self.codes[order]), self.size)
        return q4

    @property
    def nbytes(self) -> int:
        return self.codebook.nbytes + self.packed.nbytes

    def __len__(self) -> int:
        return self.size

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Q4):
            return NotImplemented
        return (
            self.size == other.size
            and np.array_equal(self.codebook.view(np.uint32), other.codebook.view(np.uint32))
            and np.array_equal(self.packed, other.packed)
        )

    def __repr__(self) -> str:
        return f"Q4({self.size} codes, codebook={self.codebook.tolist()})"


#: What a concept stores for one layer: a Q4, or a read-only float16 / float32 array.
StoredValues = Q4 | np.ndarray


def pack_codes(codes: np.ndarray) -> np.ndarray:
    """2-bit codes packed 4 to a byte, index ``k`` at bits ``2 (k mod 4)`` of byte ``k // 4`` (spec § 6.4).

    >>> pack_codes(np.array([1, 2, 3, 0, 3], np.uint8)).tolist()
    [57, 3]
    """
    padded = np.zeros(-(-codes.size // Q4_CODES_PER_BYTE) * Q4_CODES_PER_BYTE, dtype=np.uint8)
    padded[: codes.size] = codes
    quads = padded.reshape(-1, Q4_CODES_PER_BYTE)
    return (quads[:, 0] | quads[:, 1] << 2 | quads[:, 2] << 4 | quads[:, 3] << 6).astype(np.uint8)


def unpack_codes(packed: np.ndarray, size: int) -> np.ndarray:
    """The inverse of :func:`pack_codes`: ``size`` codes as uint8."""
    shifts = np.arange(0, 8, Q4_BITS, dtype=np.uint8)
    return ((packed[:, None] >> shifts) & 3).reshape(-1)[:size].astype(np.uint8)


def quantize_q4(values: Any, iterations: int = QUANTIZE_ITERATIONS) -> Q4:
    """Four levels that fit ``values`` (any finite floats), and the nearest level's code for each.

    Lloyd's algorithm in one dimension (k-means with k = 4), started from the
    1/8, 3/8, 5/8 and 7/8 quantiles and run until no code changes or for
    ``iterations`` rounds: deterministic, and a local minimum of the squared
    error. A trainer that learns its four levels (straight-through, issue 13)
    passes them to :class:`Q4` directly instead. Raises :class:`FormatError`
    on non-finite values.

    >>> quantize_q4([0.0, 0.0, 1.0]).codebook.tolist()
    [0.0, 0.0, 0.0, 1.0]
    """
    data = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.isfinite(data).all():
        raise FormatError("values to quantise must be finite")
    if data.size == 0:
        return Q4(np.zeros(Q4_LEVELS), np.zeros(0, np.uint8))
    levels = np.quantile(data, (2 * np.arange(Q4_LEVELS) + 1) / (2 * Q4_LEVELS), method="nearest")
    codes = np.full(data.size, -1)
    for _ in range(iterations):
        levels = np.sort(levels)
        # Nearest level; a value halfway between two goes to the lower one.
        new_codes = np.searchsorted((levels[1:] + levels[:-1]) / 2, data, side="left")
        if np.array_equal(new_codes, codes):
            break
        codes = new_codes
        sums = np.bincount(codes, weights=data, minlength=Q4_LEVELS)
        counts = np.bincount(codes, minlength=Q4_LEVELS)
        levels = np.where(counts > 0, sums / np.maximum(counts, 1), levels)
    return Q4(levels, codes)


def stored_values(values: Mapping[str, Any] | None, kind: str | None) -> tuple[str, dict[str, Any]]:
    """The value kind of a concept and its values per layer in stored form, from what a caller gave.

    ``kind`` None infers it: no values is binary; :class:`Q4` objects are q4;
    float16 arrays fp16; float32 arrays fp32. Any other input (Python lists,
    float64 arrays) needs ``kind``, which converts: ``fp32``/``fp16`` round to
    nearest, ``q4`` quantises float arrays with :func:`quantize_q4`. Alignment
    with the indices is checked later, against the layer table.
    """
    if kind is not None and kind not in VALUE_KINDS:
        raise FormatError(f"value kind {kind!r} is not one of {', '.join(VALUE_KINDS)}")
    if values is None:
        if kind not in (None, "binary"):
            raise FormatError(f"a {kind} concept needs values= (one per index of each layer)")
        return "binary", {}
    if not isinstance(values, Mapping):
        raise FormatError(f"values must map a layer key to its values, got {type(values).__name__}")
    if kind == "binary":
        raise FormatError("a binary concept has no values (its entries are shut: xi = 0)")
    if kind is None:
        kinds = {_inferred_kind(key, value) for key, value in values.items()}
        if len(kinds) > 1:
            raise FormatError(f"values of one concept must share one kind, got {sorted(kinds)}")
        if not kinds:
            raise FormatError("values={} gives no kind: pass value_kind='q4', 'fp16' or 'fp32'")
        kind = kinds.pop()
    return kind, {key: _converted(key, value, kind) for key, value in values.items()}


def _inferred_kind(key: str, value: Any) -> str:
    if isinstance(value, Q4):
        return "q4"
    dtype = getattr(value, "dtype", None)
    if dtype == np.float16:
        return "fp16"
    if dtype == np.float32:
        return "fp32"
    raise FormatError(
        f"values of layer {key!r} ({type(value).__name__} of {dtype}) need value_kind='q4', 'fp16' "
        "or 'fp32' (inferred only from Q4, float16 or float32 arrays)"
    )


def _converted(key: str, value: Any, kind: str) -> StoredValues:
    if kind == "q4":
        return value if isinstance(value, Q4) else quantize_q4(_floats(key, value))
    floats = value.expand() if isinstance(value, Q4) else _floats(key, value)
    with np.errstate(over="ignore"):
        array = floats.astype(_FLOAT_DTYPES[kind].newbyteorder("="))
    array.flags.writeable = False
    return array


def _floats(key: str, value: Any) -> np.ndarray:
    array = np.asarray(value)
    if array.dtype.kind not in "fiu" or array.ndim != 1:
        raise FormatError(
            f"values of layer {key!r} must be a 1-D array of numbers, got {array.dtype} {array.shape}"
        )
    return array


def check_stored(kind: str, stored: StoredValues, count: int, where: str) -> None:
    """Stored values of one layer: the right form, one per index, finite (spec § 6.4)."""
    if kind == "q4":
        if not isinstance(stored, Q4):
            raise FormatError(f"{where}: q4 values must be a conesfmt.Q4")
        size = stored.size
    else:
        size = len(stored)
        finite = np.isfinite(stored)
        if not finite.all():
            bad = int(np.flatnonzero(~finite)[0])
            raise FormatError(f"{where}: value #{bad} ({stored[bad]}) is not finite as {kind}")
    if size != count:
        raise FormatError(f"{where}: {size} values for {count} indices")


def reorder(kind: str, stored: StoredValues, order: np.ndarray) -> StoredValues:
    """Values following their indices when those are sorted: ``stored[order]``."""
    if kind == "q4":
        return stored.permuted(order)
    array = np.ascontiguousarray(stored[order])
    array.flags.writeable = False
    return array


def expand(kind: str, stored: StoredValues) -> np.ndarray:
    """float32 ξ per index."""
    if kind == "q4":
        return stored.expand()
    return np.asarray(stored, dtype=np.float32)


def stored_nbytes(kind: str, stored: StoredValues) -> int:
    return stored.nbytes


def stored_equal(kind: str, first: StoredValues, second: StoredValues) -> bool:
    """Bit for bit (a NaN is never stored; -0.0 and +0.0 differ)."""
    if kind == "q4":
        return first == second
    bits = _BITS_DTYPES[kind].newbyteorder("=")
    return first.shape == second.shape and np.array_equal(first.view(bits), second.view(bits))


# --------------------------------------------------------------------------- planes (spec § 6.4)


def plane_sizes(kind: str, counts: Sequence[int]) -> list[int]:
    """Decompressed bytes of each value plane for entries of ``counts`` indices."""
    if not counts:
        return []
    if kind == "q4":
        return [sum(-(-count // Q4_CODES_PER_BYTE) for count in counts)]
    return [sum(counts)] * VALUE_PLANES[kind]


def encode_planes(kind: str, layers: Sequence[StoredValues]) -> list[bytes]:
    """The uncompressed value planes of a concept's entries, in entry order."""
    if not layers:
        return []
    if kind == "q4":
        return [b"".join(stored.packed.tobytes() for stored in layers)]
    dtype = _FLOAT_DTYPES[kind]
    raw = np.concatenate([np.asarray(stored).astype(dtype).view(np.uint8) for stored in layers])
    columns = raw.reshape(-1, dtype.itemsize)
    return [np.ascontiguousarray(columns[:, plane]).tobytes() for plane in range(dtype.itemsize)]


def iter_value_blocks(
    kind: str, readers: Sequence[Any], counts: Sequence[int], labels: Sequence[str], block: int
) -> Iterator[tuple[int, np.ndarray]]:
    """Decode and validate value planes, yielding ``(entry number, block)`` in order (spec § 6.4).

    ``readers`` give each plane's decompressed bytes (``read(size)``) and
    ``labels[n]`` names entry ``n`` in errors. A block is, for fp16/fp32,
    ``block`` values or fewer (float arrays); for q4, packed code bytes for up
    to ``block`` codes. Values must be finite and the padding bits of each
    entry's last q4 byte 0. Memory is bounded by ``block``, not by the counts.
    """
    for number, count in enumerate(counts):
        if kind == "q4":
            size = -(-count // Q4_CODES_PER_BYTE)
            step = -(-block // Q4_CODES_PER_BYTE)
            for start in range(0, size, step):
                piece = np.frombuffer(readers[0].read(min(step, size - start)), dtype=np.uint8)
                if start + piece.size == size and count % Q4_CODES_PER_BYTE:
                    used = Q4_BITS * (count % Q4_CODES_PER_BYTE)
                    if int(piece[-1]) >> used:
                        raise FormatError(
                            f"{labels[number]}: padding bits of the last code byte are not 0 "
                            f"(byte {int(piece[-1]):#04x}, {count} codes)"
                        )
                yield number, piece
            continue
        width = _FLOAT_DTYPES[kind].itemsize
        for start in range(0, count, block):
            size = min(block, count - start)
            columns = np.empty((size, width), dtype=np.uint8)
            for plane in range(width):
                columns[:, plane] = np.frombuffer(readers[plane].read(size), dtype=np.uint8)
            bits = columns.view(_BITS_DTYPES[kind]).reshape(-1)
            mask = _EXPONENT_MASKS[kind]
            bad = np.flatnonzero((bits & mask) == mask)
            if bad.size:
                raise FormatError(
                    f"{labels[number]}: value #{start + int(bad[0])} is not finite "
                    f"({kind} bits {int(bits[bad[0]]):#x})"
                )
            yield number, columns.view(_FLOAT_DTYPES[kind]).reshape(-1)
