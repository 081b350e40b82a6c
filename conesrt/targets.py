"""What ``apply`` can act on: a torch module, a diffusers pipeline, or a state dict."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch


def resolve(target: Any) -> Mapping[str, torch.Tensor]:
    """The target's weights by state-dict key, as the very tensor objects it uses.

    A module gives ``state_dict(keep_vars=True)`` (its Parameter objects, so
    in-place edits reach the model and tensor identity is kept); a diffusers
    pipeline gives its ``.unet``'s; a mapping of name to tensor is used as is.

    >>> resolve(pipe)["mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight"].shape
    torch.Size([1280, 768])
    """
    if isinstance(target, torch.nn.Module):
        return target.state_dict(keep_vars=True)
    unet = getattr(target, "unet", None)
    if isinstance(unet, torch.nn.Module):
        return unet.state_dict(keep_vars=True)
    if isinstance(target, Mapping):
        bad = [key for key, value in target.items() if not isinstance(value, torch.Tensor)]
        if bad:
            raise TypeError(
                f"state dict entry {bad[0]!r} is a {type(target[bad[0]]).__name__}, not a torch.Tensor"
            )
        return target
    raise TypeError(
        f"cannot apply to a {type(target).__name__}: pass a torch module (a UNet), "
        "a diffusers pipeline with a .unet, or a state dict of tensors"
    )
