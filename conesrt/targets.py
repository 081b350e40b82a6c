"""What ``apply`` can act on: a torch module, a diffusers pipeline, or a state dict."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch

#: The pipeline attributes that hold the denoiser, in the order they are looked for:
#: UNet pipelines (SD 1.x, 2.x, SDXL) and transformer pipelines (SD3, Flux).
DENOISERS = ("unet", "transformer")


class ModuleWeights(Mapping[str, torch.Tensor]):
    """``module.state_dict(keep_vars=True)``, each key looked up on its own where that is the same.

    Building SDXL's state dict (1,680 entries) takes about 10 ms, as long as
    the rest of a switch's bookkeeping together, while a container names 140
    of its weights. A key ``a.b.weight`` is found as the parameter (or
    persistent buffer) ``weight`` of submodule ``a.b`` when every module on
    the way is a plain one: no state-dict hooks, and torch's own
    ``state_dict`` and ``_save_to_state_dict`` (which then put exactly that
    object under exactly that key). Anything else, and iterating, use the
    real state dict, built once.
    """

    def __init__(self, module: torch.nn.Module):
        self._module = module
        self._state: dict[str, torch.Tensor] | None = None
        self._found: dict[str, torch.Tensor] = {}  # keys looked up so far: as the state dict, a snapshot

    def _full(self) -> dict[str, torch.Tensor]:
        if self._state is None:
            self._state = self._module.state_dict(keep_vars=True)
        return self._state

    def _lookup(self, key: str) -> torch.Tensor | None:
        if key in self._found:
            return self._found[key]
        *path, name = key.split(".")
        owner = self._module
        for step in path:
            if not _plain(owner):
                return None
            owner = owner._modules.get(step)
            if owner is None:
                return None
        if not _plain(owner):
            return None
        tensor = owner._parameters.get(name)
        if tensor is None and name not in owner._non_persistent_buffers_set:
            tensor = owner._buffers.get(name)
        if tensor is not None:
            self._found[key] = tensor
        return tensor

    def __getitem__(self, key: str) -> torch.Tensor:
        tensor = self._lookup(key) if self._state is None else None
        return self._full()[key] if tensor is None else tensor

    def __contains__(self, key: object) -> bool:
        if isinstance(key, str) and self._state is None and self._lookup(key) is not None:
            return True
        return key in self._full()

    def __iter__(self) -> Iterator[str]:
        return iter(self._full())

    def __len__(self) -> int:
        return len(self._full())


def _plain(module: torch.nn.Module) -> bool:
    """Whether ``state_dict`` of ``module`` puts each parameter and persistent buffer under its name."""
    kind = type(module)
    return (
        not module._state_dict_hooks
        and not module._state_dict_pre_hooks
        and kind.state_dict is torch.nn.Module.state_dict
        and kind._save_to_state_dict is torch.nn.Module._save_to_state_dict
    )


def resolve(target: Any) -> Mapping[str, torch.Tensor]:
    """The target's weights by state-dict key, as the very tensor objects it uses.

    A module gives its ``state_dict(keep_vars=True)`` (its Parameter objects,
    so in-place edits reach the model and tensor identity is kept), as a
    :class:`ModuleWeights` that looks keys up without building it where it
    can; a diffusers pipeline gives its denoiser's, ``.unet`` or
    ``.transformer``; a mapping of name to tensor is used as is.

    >>> resolve(pipe)["mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight"].shape
    torch.Size([1280, 768])
    """
    if isinstance(target, torch.nn.Module):
        return ModuleWeights(target)
    for name in DENOISERS:
        denoiser = getattr(target, name, None)
        if isinstance(denoiser, torch.nn.Module):
            return ModuleWeights(denoiser)
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


class Shapes(Mapping[str, tuple[int, ...]]):
    """The shapes of a mapping of tensors, read as they are asked for (see :class:`ModuleWeights`)."""

    def __init__(self, tensors: Mapping[str, torch.Tensor]):
        self._tensors = tensors

    def __getitem__(self, key: str) -> tuple[int, ...]:
        return tuple(self._tensors[key].shape)

    def __contains__(self, key: object) -> bool:
        return key in self._tensors

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)
