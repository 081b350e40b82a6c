"""trainer: find concept neurons (xi-descent) and refine several subjects jointly.

>>> import trainer
>>> result = trainer.train_concept(model="sd15", images="my-cat/", token="sks", class_word="cat",
...                                sparsity=0.01, out="cat.cones")
>>> both = trainer.refine(model="sd15", containers=["cat.cones", "lake.cones"],
...                       data={"sks cat": "my-cat/", "zwx lake": "my-lake/"},
...                       sparsity=0.02, out="both.cones")

Importing ``trainer`` loads no torch; each name is imported on first use, so
``cones`` commands start fast. ``trainer.world`` is the embedded small world.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import RefineConfig, TrainConfig
    from .errors import UsageError
    from .refine import refine
    from .runs import TrainResult
    from .train import train_concept

_LAZY = {
    "TrainConfig": ".config",
    "RefineConfig": ".config",
    "refine": ".refine",
    "UsageError": ".errors",
    "TrainResult": ".runs",
    "train_concept": ".train",
}
__all__ = ["RefineConfig", "TrainConfig", "TrainResult", "UsageError", "refine", "train_concept"]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'trainer' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value
