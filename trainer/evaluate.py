"""Held-out concept loss: the implanting loss on noise and timesteps not used in training.

This is how tests and benchmarks tell whether shutting a set of entries makes
the model fit the subject better: the base model, the found concept neurons
and random sets of the same size are all scored on the same fixed draws.

>>> held_out_loss(base.unet, [subject], base.noise_scheduler, seed=10_000)
0.1834
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

import conesfmt
import conesrt

from .denoisers import adapter_for, cast
from .objective import Subject, implanting_loss


@torch.no_grad()
def held_out_loss(
    unet: torch.nn.Module,
    subjects: Sequence[Subject],
    scheduler,
    seed: int = 10_000,
    batches: int = 16,
    batch_size: int = 4,
    parts: bool = False,
) -> float | dict[str, float]:
    """Mean implanting loss over ``batches`` fixed draws (a seed the training never uses).

    ``unet`` is the denoiser of any family (a UNet or transformer), called as its family calls it.
    """
    generator = torch.Generator().manual_seed(seed)
    adapter = adapter_for(unet)

    def model(noisy, timesteps, embeddings):
        return adapter.predict(unet, noisy, timesteps, cast(embeddings, unet.dtype))

    totals: dict[str, float] = {}
    total = 0.0
    for _ in range(batches):
        loss, logged = implanting_loss(model, subjects, scheduler, batch_size, generator)
        total += float(loss)
        for label, value in logged.items():
            totals[label] = totals.get(label, 0.0) + value
    if parts:
        return {"loss": total / batches} | {label: value / batches for label, value in totals.items()}
    return total / batches


def random_like(container: conesfmt.Container, seed: int) -> conesfmt.Container:
    """Random entries with the same count in the same layers as each concept: the control."""
    rng = np.random.default_rng(seed)
    concepts = {}
    for name, concept in container.concepts.items():
        concepts[name] = {
            key: np.sort(rng.choice(container.layers[key].numel, count, replace=False))
            for key, count in concept.counts.items()
        }
    return conesfmt.Container(container.layers, concepts, container.fingerprint, {"method": "random control"})


def loss_with(
    unet: torch.nn.Module, container: conesfmt.Container | None, subjects, scheduler, **options
) -> float:
    """:func:`held_out_loss` with ``container`` applied (``None``: the base model)."""
    if container is None:
        return held_out_loss(unet, subjects, scheduler, **options)
    with conesrt.apply(unet, container):
        return held_out_loss(unet, subjects, scheduler, **options)
