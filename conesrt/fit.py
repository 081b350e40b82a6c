"""Does a container fit a model? The one check shared by apply, bake and verify (spec § 4.3).

numpy only: the caller supplies the model's shapes and, per layer, a function
that returns the values at given flat positions with the dtype's name.

>>> check_fits("cat.cones", container, shapes, read_values, strict=True)  # raises if not
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping

import numpy as np

import conesfmt
from conesfmt.fingerprint import Mismatch, compare, sample_positions

#: ``read_values(key, positions) -> (values as float64, safetensors dtype name)``
ValueReader = Callable[[str, np.ndarray], tuple[np.ndarray, str]]


class FingerprintMismatch(ValueError):
    """A container does not fit a model: another architecture or other weights.

    ``mismatches`` lists one :class:`conesfmt.fingerprint.Mismatch` per layer at fault.
    """

    def __init__(self, message: str, mismatches: list[Mismatch]):
        super().__init__(message)
        self.mismatches = mismatches


def architecture_mismatches(
    container: conesfmt.Container, shapes: Mapping[str, tuple[int, ...]]
) -> list[Mismatch]:
    """Layers of the table that the model lacks or has with another shape."""
    mismatches = []
    for key, layer in container.layers.items():
        if key not in shapes:
            mismatches.append(Mismatch(key, "missing from the model"))
        elif tuple(shapes[key]) != layer.shape:
            mismatches.append(
                Mismatch(key, f"shape {tuple(shapes[key])} in the model, {layer.shape} in the container")
            )
    return mismatches


def weight_mismatches(container: conesfmt.Container, read_values: ValueReader) -> list[Mismatch]:
    """Layers whose sampled weights differ beyond the dtype tolerance."""
    fingerprint = container.fingerprint
    if fingerprint is None:
        return []
    samples = fingerprint.samples_per_layer
    observed = {
        key: read_values(key, sample_positions(layer.numel, samples))
        for key, layer in container.layers.items()
    }
    return compare(fingerprint, {key: layer.dtype for key, layer in container.layers.items()}, observed)


def describe(mismatches: list[Mismatch], limit: int = 3) -> str:
    """The first few mismatches in one line, and how many more."""
    shown = "; ".join(str(m) for m in mismatches[:limit])
    more = len(mismatches) - limit
    return shown + (f"; and {more} more layers" if more > 0 else "")


def check_fits(
    source: str,
    container: conesfmt.Container,
    shapes: Mapping[str, tuple[int, ...]],
    read_values: ValueReader,
    strict: bool,
) -> list[Mismatch]:
    """Raise :class:`FingerprintMismatch` unless ``container`` fits the model.

    Another architecture always raises. Other weights, or a container without
    a fingerprint, raise when ``strict`` and only warn otherwise. Returns the
    weight mismatches that were tolerated (empty when it fits).
    """
    base = container.metadata.get("base_model")
    made_for = f" (made for {base!r})" if base else ""
    mismatches = architecture_mismatches(container, shapes)
    if mismatches:
        raise FingerprintMismatch(
            f"{source} does not fit this model{made_for}: another architecture: {describe(mismatches)}",
            mismatches,
        )
    if container.fingerprint is None:
        message = f"{source} has no fingerprint, so it cannot be checked against this model"
        if strict:
            raise FingerprintMismatch(message + "; pass strict=False to use it anyway", [])
        warnings.warn(message, stacklevel=3)
        return []
    mismatches = weight_mismatches(container, read_values)
    if mismatches:
        message = (
            f"{source} does not fit this model{made_for}: other weights in "
            f"{len(mismatches)} of {len(container.layers)} layers: {describe(mismatches)}"
        )
        if strict:
            raise FingerprintMismatch(message + "; pass strict=False to use it anyway", mismatches)
        warnings.warn(message, stacklevel=3)
    return mismatches
