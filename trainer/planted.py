"""Planted truth: shut a known set in the base model, let it draw the subject, and see what a search finds.

A search that cannot find a set it was shown the effect of is wrong whatever
the world (issue 11). The check, step by step:

1. :func:`plant` picks a set M of searched entries: ``random`` (a fraction of
   all of them, uniformly) or ``columns`` (whole input columns of the key and
   value projections, i.e. text-feature channels, in a few layers).
2. The *teacher* is the base model with M shut. :func:`render_teacher` draws
   the instance prompt with it: PNG files to train on, and held-out latents
   (other seeds) to score on.
3. ``cones train`` runs on the *base* model with the teacher's images and
   ``--sparsity |M| / N``, so that it returns exactly |M| entries.
4. :func:`score_sets` scores M, the found set and a random set of the same
   size on the same held-out draws (noise and timesteps no search saw): the
   teacher loss (the denoising loss on the teacher's held-out images, under
   the instance prompt) and the distance to the teacher's own predictions.
   :func:`summarise` turns that into recall and the share of M's reduction
   of the teacher loss that the found set achieves.

>>> planted = plant(pipe.unet, keys, "random", 0.01, seed=1)
>>> teacher = render_teacher(pipe, planted, "a photo of a sks square", folder, train_seeds, held_out_seeds)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import DDPMScheduler

import conesfmt
import conesrt

from .objective import training_target


def plant(
    unet: torch.nn.Module, keys: list[str], kind: str, fraction: float, seed: int
) -> conesfmt.Container:
    """A known set M of about ``fraction`` of the entries of ``keys``, as a one-concept container.

    ``random``: entries drawn uniformly over all layers. ``columns``: whole
    input columns (text channels) of single layers, drawn layer by layer until
    the fraction is reached — a structured set with a large, coherent effect.
    """
    rng = np.random.default_rng(seed)
    weights = unet.state_dict()
    sizes = {key: weights[key].numel() for key in keys}
    total = sum(sizes.values())
    wanted = int(round(fraction * total))
    if kind == "random":
        chosen = np.sort(rng.choice(total, wanted, replace=False))
        starts = np.cumsum([0, *sizes.values()])
        indices = {}
        for number, key in enumerate(keys):
            low, high = np.searchsorted(chosen, [starts[number], starts[number + 1]])
            indices[key] = (chosen[low:high] - starts[number]).astype(np.int64)
    elif kind == "columns":
        indices = {key: np.zeros(0, np.int64) for key in keys}
        placed = 0
        while placed < wanted:
            key = keys[rng.integers(len(keys))]
            rows, columns = weights[key].shape
            free = np.setdiff1d(np.arange(columns), np.unique(indices[key] % columns))
            if free.size == 0:
                continue
            column = rng.choice(free)
            indices[key] = np.sort(np.concatenate([indices[key], np.arange(rows) * columns + column]))
            placed += rows
    else:
        raise ValueError(f"planted set kind {kind!r}: random or columns")
    return conesfmt.Container(
        conesrt.layer_table(unet, keys),
        {"planted": {key: value for key, value in indices.items() if value.size}},
        conesrt.fingerprint(unet, keys),
        {"method": f"planted {kind} {fraction:g}"},
    )


@dataclass
class Teacher:
    """What the teacher drew: training images on disk, held-out latents, the prompt's features."""

    images: Path
    held_out: torch.Tensor  # latents (n, channels, h, w)
    embedding: torch.Tensor  # (1, tokens, width)


@torch.no_grad()
def render_teacher(
    pipe,
    planted: conesfmt.Container,
    prompt: str,
    folder: Path,
    train_seeds: list[int],
    held_out_seeds: list[int],
    steps: int = 25,
    guidance: float = 7.5,
    resolution: int | None = None,
) -> Teacher:
    """Draw ``prompt`` with the planted set shut; the base model is restored afterwards."""
    resolution = resolution or pipe.unet.config.sample_size * pipe.vae_scale_factor
    folder.mkdir(parents=True, exist_ok=True)
    options = dict(num_inference_steps=steps, guidance_scale=guidance, height=resolution, width=resolution)

    def draw(seeds: list[int], output_type: str):
        out = []
        for start in range(0, len(seeds), 16):
            chunk = seeds[start : start + 16]
            generators = [torch.Generator().manual_seed(seed) for seed in chunk]
            drawn = pipe([prompt] * len(chunk), generator=generators, output_type=output_type, **options)
            out += list(drawn.images)
        return out

    with conesrt.apply(pipe.unet, planted):
        for seed, image in zip(train_seeds, draw(train_seeds, "pil"), strict=True):
            image.save(folder / f"{seed}.png")
        held_out = torch.stack(draw(held_out_seeds, "latent")).float()
    embedding, _ = pipe.encode_prompt(prompt, "cpu", 1, False)
    return Teacher(folder, held_out, embedding.float())


@torch.no_grad()
def score_sets(
    pipe,
    teacher: Teacher,
    planted: conesfmt.Container,
    sets: dict[str, conesfmt.Container | None],
    batches: int = 16,
    batch_size: int = 8,
    seed: int = 54_321,
) -> dict[str, dict[str, float]]:
    """Teacher loss and distance to the teacher for each set (None: the base model), same draws for all."""
    # The training noise schedule, as the search uses it (the pipeline's own scheduler samples differently).
    unet, scheduler = pipe.unet, DDPMScheduler.from_config(pipe.scheduler.config)
    generator = torch.Generator().manual_seed(seed)
    draws = []
    for _ in range(batches):
        rows = torch.randint(len(teacher.held_out), (batch_size,), generator=generator)
        clean = teacher.held_out[rows]
        noise = torch.randn(clean.shape, generator=generator)
        timesteps = torch.randint(scheduler.config.num_train_timesteps, (batch_size,), generator=generator)
        target = training_target(scheduler, clean, noise, timesteps)  # noise or velocity, per the model
        draws.append((scheduler.add_noise(clean, noise, timesteps), timesteps, target.float()))
    context = teacher.embedding.expand(batch_size, -1, -1)

    def predictions(container):
        handle = conesrt.apply(unet, container) if container is not None else None
        try:
            return [unet(noisy, t, encoder_hidden_states=context).sample.float() for noisy, t, _ in draws]
        finally:
            if handle is not None:
                handle.remove()

    teacher_predictions = predictions(planted)
    scores = {}
    truths = [truth for *_, truth in draws]
    for name, container in sets.items():
        predicted = teacher_predictions if container is planted else predictions(container)
        scores[name] = {
            "teacher_loss": mean_squared(predicted, truths),
            "distance": mean_squared(predicted, teacher_predictions),
        }
    return scores


def mean_squared(first: list[torch.Tensor], second: list[torch.Tensor]) -> float:
    return float(np.mean([float(((a - b) ** 2).mean()) for a, b in zip(first, second, strict=True)]))


def recall(found: conesfmt.Container, planted: conesfmt.Container) -> float:
    """Share of the planted entries among those found."""
    (found_concept,) = found.concepts.values()
    (planted_concept,) = planted.concepts.values()
    hits = sum(
        np.intersect1d(found_concept.indices.get(key, np.zeros(0, np.int64)), indices).size
        for key, indices in planted_concept.indices.items()
    )
    return hits / sum(indices.size for indices in planted_concept.indices.values())


def summarise(scores: dict[str, dict[str, float]], found: str = "found") -> dict[str, float]:
    """The share of the planted set's teacher-loss reduction (and distance) that ``found`` achieves."""
    base, planted, other = scores["base"], scores["planted"], scores[found]
    reduction = base["teacher_loss"] - planted["teacher_loss"]
    return {
        "planted_reduction": reduction,
        "reduction_share": (base["teacher_loss"] - other["teacher_loss"]) / reduction
        if reduction
        else float("nan"),
        "distance_recovered": 1 - other["distance"] / base["distance"] if base["distance"] else float("nan"),
    }
