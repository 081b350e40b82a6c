"""Fingerprints of torch models, and the check that a container fits a model (spec § 4).

The algorithm itself (sample positions, tolerance) lives in
:mod:`conesfmt.fingerprint` and the fit check in :mod:`conesrt.fit`, numpy
only; this module reads the sampled values from torch tensors on any device.

>>> fp = conesrt.fingerprint(unet, ["mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight"])
>>> conesfmt.Container(layers=conesrt.layer_table(unet, keys), concepts=..., fingerprint=fp)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch

import conesfmt
from conesfmt.fingerprint import DEFAULT_SAMPLES_PER_LAYER, sample_positions

from .ledger import LOCK, base_values
from .targets import resolve

#: torch dtypes by their safetensors names, as the layer table records them (spec § 3).
DTYPE_NAMES: Mapping[torch.dtype, str] = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float8_e4m3fn: "F8_E4M3",
    torch.float8_e5m2: "F8_E5M2",
}


def dtype_name(tensor: torch.Tensor) -> str:
    """The safetensors name of a tensor's dtype (``""`` if it has none)."""
    return DTYPE_NAMES.get(tensor.dtype, "")


def layer_table(target: Any, layer_names: Iterable[str]) -> dict[str, conesfmt.Layer]:
    """Shape and dtype of each named weight of ``target`` (a module, pipeline or state dict).

    >>> conesrt.layer_table(unet, keys)["mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight"]
    Layer(shape=(1280, 768), dtype='F32')
    """
    tensors = resolve(target)
    table = {}
    for key in layer_names:
        if key not in tensors:
            raise ValueError(f"the model has no weight {key!r}")
        table[key] = conesfmt.Layer(tuple(tensors[key].shape), dtype_name(tensors[key]))
    return table


def fingerprint(
    target: Any, layer_names: Iterable[str], samples_per_layer: int = DEFAULT_SAMPLES_PER_LAYER
) -> conesfmt.Fingerprint:
    """The fingerprint of ``target``'s weights ``layer_names``, to store in a container.

    ``samples_per_layer`` values (1..256, spec § 4.2) of each layer, at fixed
    evenly spaced entries; each costs 4 bytes per layer in the file, and a
    model is later compared at those entries only. An edit that moves every
    entry beyond the dtypes' rounding (spec § 4.3: another training run, a
    fine-tune of these layers) is caught with any count; an edit of a random
    fraction ``f`` of the entries is missed with probability about
    ``(1 - f) ** (samples_per_layer * len(layer_names))``.
    Containers with different counts cannot be merged (:func:`conesfmt.merge`).
    The fingerprint records the dtype of each weight it read, so a container
    whose table gives shapes alone (``layers={key: shape}``) still knows the
    tolerance to check it with (spec § 4.3).

    >>> container = conesfmt.Container(layers, concepts, fingerprint=conesrt.fingerprint(unet, layers))
    """
    tensors = resolve(target)
    layer_names = list(layer_names)  # read three times below
    missing = [key for key in layer_names if key not in tensors]
    if missing:
        raise ValueError(f"the model has no weight {missing[0]!r} ({len(missing)} missing)")
    read = torch_value_reader(tensors)
    return conesfmt.Fingerprint(
        {
            key: read(key, sample_positions(tensors[key].numel(), samples_per_layer))[0].astype(np.float32)
            for key in layer_names
        },
        dtypes={key: dtype_name(tensors[key]) for key in layer_names},
    )


def torch_value_reader(tensors: Mapping[str, torch.Tensor]):
    """A :data:`conesrt.fit.ValueReader` of the base weights (with no shutting applied)."""

    def read(key: str, positions: np.ndarray) -> tuple[np.ndarray, str]:
        tensor = tensors[key]
        with LOCK:  # base values: what active shuttings saved, where they shut
            values = base_values(tensor, positions)
        return values.to(torch.float64).cpu().numpy(), dtype_name(tensor)

    return read
