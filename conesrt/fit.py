"""Does a container fit a model? The one check shared by apply, bake and verify (spec § 4.3).

numpy only: the caller supplies the model's shapes and, per layer, a function
that returns the values at given flat positions with the dtype's name.

What it catches: a layer of the container's table that the model lacks or
has with another shape, and any difference beyond the dtypes' rounding at
the fingerprint's sampled entries (by default 8 per layer at fixed, evenly
spaced positions, spec § 4.2). Nothing else is read: the model's other
layers, and the other entries of the table's layers, are not compared, so
one changed weight passes unless it is a sampled one.

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

#: The advice a Python caller gets; the ``cones`` commands name their own flag instead.
PYTHON_OVERRIDE = "pass strict=False to use it anyway"


class FingerprintMismatch(ValueError):
    """A container does not fit a model: another architecture or other weights.

    ``reason`` says what differs, without advice; ``overridable`` is true when
    ``strict=False`` (``--no-strict`` in ``cones bake``) would use the
    container anyway, i.e. for other weights or a missing fingerprint, never
    for another architecture. ``str()`` is ``reason``, plus that advice when
    it applies. ``mismatches`` lists one :class:`conesfmt.fingerprint.Mismatch`
    per layer at fault.

    >>> raised.value.reason
    "cat.cones does not fit this model: other weights in 32 of 32 layers: ..."
    """

    def __init__(self, reason: str, mismatches: list[Mismatch], overridable: bool = False):
        super().__init__(f"{reason}; {PYTHON_OVERRIDE}" if overridable else reason)
        self.reason = reason
        self.mismatches = mismatches
        self.overridable = overridable
        # What ``cones`` prints where the subcommand has no override to offer (conesfmt.cli.main).
        self.command_line_message = reason


class FingerprintWarning(UserWarning):
    """``strict=False`` used a container that does not fit (other weights, or no fingerprint).

    ``reason`` is the :attr:`FingerprintMismatch.reason` it would have raised.

    >>> warnings.simplefilter("error", conesrt.FingerprintWarning)  # make it an error again
    """

    def __init__(self, reason: str):
        super().__init__(f"{reason}; using it anyway (strict=False)")
        self.reason = reason


def architecture_mismatches(
    container: conesfmt.Container | Mapping[str, conesfmt.Layer], shapes: Mapping[str, tuple[int, ...]]
) -> list[Mismatch]:
    """Layers of the table (a container's, or a table) that the model lacks or has with another shape."""
    layers = container.layers if isinstance(container, conesfmt.Container) else container
    mismatches = []
    for key, layer in layers.items():
        if key not in shapes:
            mismatches.append(Mismatch(key, "missing from the model"))
        elif tuple(shapes[key]) != layer.shape:
            mismatches.append(
                Mismatch(key, f"shape {tuple(shapes[key])} in the model, {layer.shape} in the container")
            )
    return mismatches


def check_architecture(
    source: str, layers: Mapping[str, conesfmt.Layer], shapes: Mapping[str, tuple[int, ...]]
) -> None:
    """Raise :class:`FingerprintMismatch` if the model lacks a layer of ``layers`` or has another shape.

    Given to ``conesfmt.load(..., check_layers=)``, it runs on a file's layer
    table before any index is decoded, so a container for another model is
    refused without paying for its indices (spec § 8.2).
    """
    mismatches = architecture_mismatches(layers, shapes)
    if mismatches:
        raise FingerprintMismatch(
            f"{source} does not fit this model: another architecture: {describe(mismatches)}", mismatches
        )


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

    Another architecture always raises. Other weights at the sampled entries,
    or a container without a fingerprint, raise when ``strict`` and only emit
    a :class:`FingerprintWarning` otherwise. Returns the weight mismatches
    that were tolerated (empty when it fits).
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
        reason = (
            f"{source} has no fingerprint: its layer table fits this model, but the weights cannot be checked"
        )
        if strict:
            raise FingerprintMismatch(reason, [], overridable=True)
        warnings.warn(FingerprintWarning(reason), stacklevel=3)
        return []
    mismatches = weight_mismatches(container, read_values)
    if mismatches:
        reason = (
            f"{source} does not fit this model{made_for}: other weights in "
            f"{len(mismatches)} of {len(container.layers)} layers: {describe(mismatches)}"
        )
        if strict:
            raise FingerprintMismatch(reason, mismatches, overridable=True)
        warnings.warn(FingerprintWarning(reason), stacklevel=3)
    return mismatches
