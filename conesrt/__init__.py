"""conesrt: apply ``.cones`` containers to a model in place, reversibly and bit-exactly.

>>> import conesrt
>>> with conesrt.apply(pipe, ["cat.cones", "lake.cones"]):
...     image = pipe("a sks cat by a zwx lake").images[0]
>>> with conesrt.apply(pipe, ["cat.cones", "lake.cones"], strength=[0.7, 0.3]):
...     image = pipe("a sks cat by a zwx lake").images[0]  # turned down; values per spec § 6.5

``apply``, ``active``, ``fingerprint``, ``layer_table`` and ``searched_layers``
(the default layers of each model family: UNets' cross-attention K/V, SD3's
and Flux's joint-attention text K/V) need torch;
``bake`` (write a safetensors file with the concept neurons shut) needs only
numpy and safetensors, and ``token_indices`` (where each concept's trigger
sits in a prompt, for diffusers' Attend-and-Excite pipeline: several
subjects in one image, docs/families.md) only the pipeline's tokenizer.
Importing ``conesrt`` imports neither: each name is loaded on first use, so
``cones`` commands that need no torch stay fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .baking import bake
    from .families import searched_layers
    from .fit import FingerprintMismatch, FingerprintWarning
    from .handles import Applied, Handle, active, apply
    from .torch_model import fingerprint, layer_table
    from .triggers import token_indices

_LAZY = {
    "apply": ".handles",
    "active": ".handles",
    "Applied": ".handles",
    "Handle": ".handles",
    "bake": ".baking",
    "fingerprint": ".torch_model",
    "layer_table": ".torch_model",
    "searched_layers": ".families",
    "token_indices": ".triggers",
    "FingerprintMismatch": ".fit",
    "FingerprintWarning": ".fit",
}
__all__ = [
    "Applied",
    "FingerprintMismatch",
    "FingerprintWarning",
    "Handle",
    "active",
    "apply",
    "bake",
    "fingerprint",
    "layer_table",
    "searched_layers",
    "token_indices",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'conesrt' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value
