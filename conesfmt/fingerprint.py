"""The model fingerprint: sampled weight values compared with a dtype-aware tolerance (spec § 4).

A container records, for every layer of its table, the values of
``samples_per_layer`` evenly spaced entries of the base model's weight. A
model fits when each of its values lies within the rounding error of the two
dtypes involved (the one seen at training, the model's own), so the same
weights in fp32, fp16 or bf16 fit, while another model of the same
architecture (SD 1.4 against SD 1.5, a fine-tune, 1 % noise) does not.

This module is numpy only: ``conesrt`` gathers the values from torch tensors,
and baking checks safetensors files with it without torch.

>>> positions = sample_positions(numel=640 * 768, samples_per_layer=8)
>>> mismatches = compare(fingerprint, layers, observed)  # [] when the model fits
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from .errors import FormatError
from .limits import MAX_SAMPLES_PER_LAYER

#: Samples per layer the writer uses by default: 32 layers cost 1 KiB in SD 1.x.
DEFAULT_SAMPLES_PER_LAYER = 8

#: Unit roundoff (half an ulp at 1.0) of the dtypes a fingerprint can be checked in,
#: by their safetensors names (spec § 4.3).
UNIT_ROUNDOFF: Mapping[str, float] = MappingProxyType(
    {
        "F64": 2.0**-53,
        "F32": 2.0**-24,
        "F16": 2.0**-11,
        "BF16": 2.0**-8,
        "F8_E4M3": 2.0**-4,
        "F8_E5M2": 2.0**-3,
    }
)
#: Absolute slack: fp16 subnormals are spaced 2**-24 apart (spec § 4.3).
ABSOLUTE_SLACK = 2.0**-24


@dataclass(frozen=True, eq=False)
class Fingerprint:
    """Sampled values per layer key, each a float32 array of the same length.

    ``dtypes``, if given, names per layer the dtype of the weights the values
    were read from (safetensors names, ``"F16"``...). It is not a field of the
    file: the layer table holds it (spec § 3), and a :class:`~conesfmt.Container`
    given a table without dtypes (``layers={key: shape}``) takes them from here,
    since the tolerance of spec § 4.3 needs them. ``conesrt.fingerprint`` fills it.

    >>> fp = Fingerprint({"mid.attn2.to_k.weight": np.array([0.01, -0.02], np.float32)})
    >>> fp.samples_per_layer
    2
    """

    samples: Mapping[str, np.ndarray]
    dtypes: Mapping[str, str] | None = None

    def __post_init__(self) -> None:
        normalized = {}
        lengths = set()
        for key, values in self.samples.items():
            array = np.array(values, dtype=np.float32).reshape(-1)
            if not np.isfinite(array).all():
                raise FormatError(f"fingerprint of layer {key!r}: values must be finite")
            array.flags.writeable = False
            normalized[key] = array
            lengths.add(array.size)
        if len(lengths) > 1:
            raise FormatError(f"fingerprint: layers have different sample counts {sorted(lengths)}")
        if lengths and not 1 <= next(iter(lengths)) <= MAX_SAMPLES_PER_LAYER:
            raise FormatError(
                f"fingerprint: {next(iter(lengths))} samples per layer, allowed 1..{MAX_SAMPLES_PER_LAYER}"
            )
        object.__setattr__(self, "samples", MappingProxyType(normalized))
        if self.dtypes is not None:
            dtypes = dict(self.dtypes)
            unknown = sorted(set(dtypes) - set(normalized))
            if unknown:
                raise FormatError(f"fingerprint: a dtype for layer {unknown[0]!r}, which has no samples")
            if not all(isinstance(name, str) for name in dtypes.values()):
                raise FormatError("fingerprint: dtypes must be safetensors dtype names (str)")
            object.__setattr__(self, "dtypes", MappingProxyType(dtypes))

    @property
    def samples_per_layer(self) -> int:
        return next(iter(self.samples.values())).size if self.samples else 0

    def __eq__(self, other: object) -> bool:
        """Same layers and the same sampled bits; ``dtypes`` is not compared (the layer table has it)."""
        if not isinstance(other, Fingerprint):
            return NotImplemented
        return self.samples.keys() == other.samples.keys() and all(
            np.array_equal(self.samples[k].view(np.uint32), other.samples[k].view(np.uint32))
            for k in self.samples
        )

    def __repr__(self) -> str:
        return f"Fingerprint({len(self.samples)} layers x {self.samples_per_layer} samples)"


@dataclass(frozen=True)
class Mismatch:
    """Why one layer does not fit: ``reason`` is human-readable."""

    layer: str
    reason: str

    def __str__(self) -> str:
        return f"{self.layer}: {self.reason}"


def sample_positions(numel: int, samples_per_layer: int) -> np.ndarray:
    """Flat positions ``floor((2j + 1) * numel / (2 S))`` for ``j < S`` (spec § 4.2).

    Exact integer arithmetic: ``numel <= 2**40`` and ``S <= 256`` keep the
    products below 2**50.

    >>> sample_positions(100, 4).tolist()
    [12, 37, 62, 87]
    """
    j = np.arange(samples_per_layer, dtype=np.int64)
    return ((2 * j + 1) * numel) // (2 * samples_per_layer)


def _float8_table(exponent_bits: int, mantissa_bits: int, ieee_specials: bool) -> np.ndarray:
    """The value of each of the 256 codes of a float8 format, as float64.

    ``F8_E4M3`` (``float8_e4m3fn``: bias 7, no infinities, NaN at all exponent
    and mantissa bits set) and ``F8_E5M2`` (bias 15, IEEE-like: infinities and
    NaNs at the top exponent), as torch and the OCP 8-bit formats define them.
    """
    codes = np.arange(256)
    sign = np.where(codes & 0x80, -1.0, 1.0)
    exponent = (codes >> mantissa_bits) & ((1 << exponent_bits) - 1)
    mantissa = codes & ((1 << mantissa_bits) - 1)
    bias = (1 << (exponent_bits - 1)) - 1
    fraction = mantissa / (1 << mantissa_bits)
    normal = (1.0 + fraction) * np.exp2(exponent.astype(np.float64) - bias)
    subnormal = fraction * 2.0 ** (1 - bias)
    table = sign * np.where(exponent == 0, subnormal, normal)
    top = exponent == (1 << exponent_bits) - 1
    if ieee_specials:
        table[top & (mantissa == 0)] = sign[top & (mantissa == 0)] * np.inf
        table[top & (mantissa != 0)] = np.nan
    else:
        table[top & (mantissa == (1 << mantissa_bits) - 1)] = np.nan
    table.flags.writeable = False
    return table


#: float8 codes to values, for fingerprints of fp8 weights read without torch (bake, verify).
_FLOAT8 = {
    "F8_E4M3": _float8_table(4, 3, ieee_specials=False),
    "F8_E5M2": _float8_table(5, 2, ieee_specials=True),
}


def values_from_bytes(raw: bytes | memoryview | np.ndarray, dtype: str) -> np.ndarray:
    """Little-endian raw values of a safetensors dtype as float64 (F64, F32, F16, BF16, F8_E4M3, F8_E5M2).

    numpy has no bfloat16; its bits are the upper half of a float32. Nor has it
    float8: each of the 256 codes is looked up in a table.

    >>> values_from_bytes(np.array([1.5], "<f4").tobytes(), "F32").tolist()
    [1.5]
    >>> values_from_bytes(bytes([0x38, 0x7E]), "F8_E4M3").tolist()
    [1.0, 448.0]
    """
    data = np.frombuffer(raw, dtype=np.uint8)
    if dtype == "BF16":
        return (data.view("<u2").astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    if dtype in _FLOAT8:
        return _FLOAT8[dtype][data]
    numpy_dtype = {"F64": "<f8", "F32": "<f4", "F16": "<f2"}.get(dtype)
    if numpy_dtype is None:
        raise FormatError(f"cannot read values of dtype {dtype!r} without torch")
    return data.view(numpy_dtype).astype(np.float64)


def compare(
    fingerprint: Fingerprint,
    training_dtypes: Mapping[str, str],
    observed: Mapping[str, tuple[np.ndarray, str]],
) -> list[Mismatch]:
    """Check a model's values at :func:`sample_positions` against a fingerprint (spec § 4.3).

    ``training_dtypes`` maps each layer to the dtype recorded in the layer
    table; ``observed`` maps each layer to ``(values as float64, model dtype)``.
    A sample fits when ``|x - v| <= 2 (u_train + u_model) max(|x|, |v|) + 2**-24``
    (the factor 2 absorbs the rounding of the bound itself). Returns one
    :class:`Mismatch` per layer that does not fit; empty when the model fits.
    """
    mismatches = []
    for layer, stored in fingerprint.samples.items():
        values, model_dtype = observed[layer]
        u_train = UNIT_ROUNDOFF.get(training_dtypes.get(layer, ""))
        u_model = UNIT_ROUNDOFF.get(model_dtype)
        if u_train is None or u_model is None:
            unknown = model_dtype if u_model is None else training_dtypes.get(layer, "")
            mismatches.append(Mismatch(layer, f"cannot compare values of dtype {unknown!r}"))
            continue
        expected = stored.astype(np.float64)
        values = np.asarray(values, dtype=np.float64)
        scale = np.maximum(np.abs(values), np.abs(expected))
        tolerance = 2 * (u_train + u_model) * scale + ABSOLUTE_SLACK
        deviation = np.abs(values - expected)
        bad = ~(deviation <= tolerance)  # NaN in the model counts as a mismatch
        if bad.any():
            relative = float(np.max(deviation[bad] / np.maximum(scale[bad], ABSOLUTE_SLACK)))
            mismatches.append(
                Mismatch(
                    layer,
                    f"{int(bad.sum())} of {bad.size} sampled weights differ "
                    f"(up to {relative:.2%} relative; tolerance {2 * (u_train + u_model):.2g} "
                    f"for {training_dtypes.get(layer)} vs {model_dtype})",
                )
            )
    return mismatches
