"""What ``apply`` can act on: a torch module, a diffusers pipeline, or a state dict."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

#: The pipeline attributes that hold the denoiser, in the order they are looked for:
#: UNet pipelines (SD 1.x, 2.x, SDXL) and transformer pipelines (SD3, Flux).
DENOISERS = ("unet", "transformer")


def resolve(target: Any) -> Mapping[str, torch.Tensor]:
    """The target's weights by state-dict key, as the very tensor objects it uses.

    A module gives ``state_dict(keep_vars=True)`` (its Parameter objects, so
    in-place edits reach the model and tensor identity is kept); a diffusers
    pipeline gives its denoiser's, ``.unet`` or ``.transformer``; a mapping of
    name to tensor is used as is.

    >>> resolve(pipe)["mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight"].shape
    torch.Size([1280, 768])
    """
    if isinstance(target, torch.nn.Module):
        return target.state_dict(keep_vars=True)
    for name in DENOISERS:
        denoiser = getattr(target, name, None)
        if isinstance(denoiser, torch.nn.Module):
            return denoiser.state_dict(keep_vars=True)
    if isinstance(target, Mapping):
        bad = [key for key, value in target.items() if not isinstance(value, torch.Tensor)]
        if bad:
            raise TypeError(
                f"state dict entry {bad[0]!r} is a {type(target[bad[0]]).__name__}, not a torch.Tensor"
            )
        return target
    raise TypeError(
        f"cannot apply to a {type(target).__name__}: pass a torch module (a UNet or transformer), "
        "a diffusers pipeline with a .unet or .transformer, or a state dict of tensors"
    )
