"""What an entry becomes under the active concepts (spec § 6.5): strengths, the sorted product, rounding.

numpy only: :func:`conesrt.apply` (torch) and :func:`conesrt.bake` (numpy)
both take the factors and their product from here, so the two agree bit for
bit. For an entry of base value θ indexed by active concepts with values ξ_c
and strengths s_c:

1. ξ' = s·ξ + (1 − s) per concept, in binary32 (s = 1: ξ' = ξ; s = 0: ξ' = 1);
2. any ξ' = 0: the entry is +0.0;
3. otherwise Ξ = the product of the ξ' in ascending order, in binary32;
4. Ξ = 1: the entry is θ, bit for bit;
5. otherwise θ·Ξ in binary32 (binary64 for F64 weights), rounded to the weight's dtype;
6. a NaN result is the dtype's canonical quiet NaN.

The order of step 3 depends only on the values, so the result depends only
on the multiset of active (concept, strength) pairs, never on the order they
were applied or removed in.

>>> factors = Factors(None, count=3, strength=0.5)  # a binary concept at half strength
>>> factors.constant, factors.at(np.array([0, 2])).tolist()
(0.5, [0.5, 0.5])
>>> product([np.array([0.5, 1.0], np.float32), np.array([0.25, 0.0], np.float32)])
(array([0.125, 0.   ], dtype=float32), array([False,  True]))
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from conesfmt.values import Q4, StoredValues

_ONE = np.float32(1.0)
#: Weight dtypes (safetensors names) whose entries can take any value of spec § 6.5, step 5.
SCALABLE_DTYPES = ("F32", "F16", "BF16", "F64")
#: Bits of each dtype's canonical quiet NaN (spec § 6.5, step 6).
CANONICAL_NAN_BITS = {"F32": 0x7FC00000, "F16": 0x7E00, "BF16": 0x7FC0, "F64": 0x7FF8000000000000}


def check_strength(strength: float, where: str) -> np.float32:
    """A strength as spec § 6.5 uses it: a finite number, rounded to binary32. Raises ``ValueError``."""
    if isinstance(strength, bool) or not isinstance(strength, int | float | np.floating | np.integer):
        raise ValueError(f"{where}: strength must be a number, got {type(strength).__name__}")
    if not math.isfinite(float(strength)):
        raise ValueError(f"{where}: strength must be finite, got {strength}")
    with np.errstate(over="ignore"):
        rounded = np.float32(strength)
    if not np.isfinite(rounded):
        raise ValueError(f"{where}: strength {strength} is beyond binary32's range")
    return rounded


class Factors:
    """ξ' = s·ξ + (1 − s) of one concept in one layer, per index in index order (spec § 6.5, step 1).

    ``values`` is the concept's stored values for the layer (``None`` for a
    binary concept, ξ = 0): kept by reference, never copied or expanded
    beyond what a call asks for, so memory stays what the container holds.

    >>> Factors(conesfmt.Q4([0, 0.5, 1, 2], [3, 1]), count=2, strength=1.0).at(np.array([0, 1])).tolist()
    [2.0, 0.5]
    """

    __slots__ = ("values", "count", "strength", "constant")

    def __init__(self, values: StoredValues | None, count: int, strength: float | np.float32):
        self.values = values
        self.count = count
        self.strength = np.float32(strength)
        #: The one ξ' of every index of a binary concept, 1 − s; None for a concept with values.
        self.constant: np.float32 | None = None
        if values is None:
            self.constant = self._scaled(np.zeros(1, np.float32))[0]

    def _scaled(self, xi: np.ndarray) -> np.ndarray:
        """Step 1 in binary32: (s × ξ) + (1 − s), each operation rounded (numpy fuses nothing)."""
        s = self.strength
        return (s * xi.astype(np.float32, copy=False)) + (_ONE - s)

    @property
    def shuts(self) -> bool:
        """Whether every index becomes +0.0 whatever else applies: a binary concept at strength 1."""
        return self.constant == 0

    def at(self, ranks: np.ndarray) -> np.ndarray:
        """float32 ξ' at ``ranks`` (0-based positions among the layer's indices)."""
        if self.values is None:
            return np.full(ranks.size, self.constant, dtype=np.float32)
        if isinstance(self.values, Q4):
            levels = self._scaled(self.values.codebook)  # 4 values, then a gather
            codes = (self.values.packed[ranks >> 2] >> (2 * (ranks & 3)).astype(np.uint8)) & 3
            return levels[codes]
        return self._scaled(self.values[ranks])

    def all(self) -> np.ndarray:
        """float32 ξ' of every index."""
        if self.values is None:
            return np.full(self.count, self.constant, dtype=np.float32)
        if isinstance(self.values, Q4):
            return self._scaled(self.values.codebook)[self.values.codes]
        return self._scaled(np.asarray(self.values))

    @property
    def nbytes(self) -> int:
        """Bytes of the container's values this refers to (0 for a binary concept)."""
        return 0 if self.values is None else int(self.values.nbytes)


def factor_rows(entries: np.ndarray, covers: Sequence[tuple[np.ndarray, Factors]]) -> list[np.ndarray]:
    """ξ' of each concept at sorted ``entries``, 1.0 where it does not index them.

    ``covers`` holds, per active concept, its sorted indices in the layer and
    its :class:`Factors`. Multiplying by 1.0 is exact, so the rows can go to
    :func:`product` whole.
    """
    rows = []
    for indices, factors in covers:
        row = np.ones(entries.size, dtype=np.float32)
        if indices.size and entries.size:
            position = np.minimum(np.searchsorted(indices, entries), indices.size - 1)
            hit = indices[position] == entries
            if hit.any():
                row[hit] = factors.at(position[hit])
        rows.append(row)
    return rows


def product(rows: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Steps 2 and 3: (Ξ, zero) per entry from equal-length float32 rows of factors.

    ``zero`` marks entries with a zero factor (they become +0.0, whatever Ξ
    says); elsewhere Ξ is the product of the factors in ascending order.
    """
    if not rows:
        raise ValueError("no factors")
    stacked = np.stack([np.asarray(row, dtype=np.float32) for row in rows])
    zero = (stacked == 0).any(axis=0)
    if len(rows) > 1:
        stacked.sort(axis=0)
    xi = stacked[0].copy()
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        for row in stacked[1:]:
            xi *= row
    return xi, zero


# --------------------------------------------------------------------------- numpy weights (for bake)


def decode_weights(raw: np.ndarray, dtype: str) -> np.ndarray:
    """Little-endian weight bytes ``(n, itemsize)`` as float32 (float64 for F64), exactly."""
    flat = np.ascontiguousarray(raw).reshape(-1)
    if dtype == "F32":
        return flat.view("<f4").astype(np.float32)
    if dtype == "F16":
        return flat.view("<f2").astype(np.float32)
    if dtype == "BF16":
        return (flat.view("<u2").astype(np.uint32) << 16).view(np.float32)
    if dtype == "F64":
        return flat.view("<f8").astype(np.float64)
    raise ValueError(f"values cannot scale weights of dtype {dtype}")


def encode_weights(values: np.ndarray, dtype: str) -> np.ndarray:
    """float32 (float64 for F64) values rounded to ``dtype`` (ties to even), as ``(n, itemsize)`` bytes.

    numpy has no bfloat16: a binary32 is rounded to its upper 16 bits as
    torch and CUDA do, ``(bits + 0x7FFF + lowest kept bit) >> 16``.
    """
    if dtype == "F32":
        out = values.astype("<f4")
    elif dtype == "F16":
        with np.errstate(over="ignore"):
            out = values.astype("<f2")
    elif dtype == "BF16":
        bits = values.astype(np.float32).view(np.uint32).astype(np.uint64)
        out = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype("<u2")
    elif dtype == "F64":
        out = values.astype("<f8")
    else:
        raise ValueError(f"values cannot scale weights of dtype {dtype}")
    nan = np.isnan(values)
    if nan.any():
        bits_dtype = {"F32": "<u4", "F16": "<u2", "BF16": "<u2", "F64": "<u8"}[dtype]
        out = out.view(bits_dtype).copy()
        out[nan] = CANONICAL_NAN_BITS[dtype]
    return out.view(np.uint8).reshape(values.size, -1)


def compose_weights(raw: np.ndarray, dtype: str, xi: np.ndarray, zero: np.ndarray) -> np.ndarray:
    """Steps 2, 4, 5, 6 in numpy: new bytes ``(n, itemsize)`` for base bytes ``raw`` (spec § 6.5).

    Raises ``ValueError`` for a dtype outside :data:`SCALABLE_DTYPES` when an
    entry needs a value other than +0.0 or its base.
    """
    keep = (xi == 1) & ~zero
    out = np.array(raw, dtype=np.uint8, copy=True).reshape(xi.size, -1)
    scaled = ~keep & ~zero
    if scaled.any():
        if dtype not in SCALABLE_DTYPES:
            raise ValueError(
                f"weights of dtype {dtype} can only be shut (+0.0) or left as they are; these values "
                "scale them (spec § 6.5)"
            )
        theta = decode_weights(out[scaled], dtype)
        wide = np.float64 if dtype == "F64" else np.float32
        with np.errstate(over="ignore", under="ignore", invalid="ignore"):
            out[scaled] = encode_weights(theta * xi[scaled].astype(wide), dtype)
    out[zero] = 0
    return out
