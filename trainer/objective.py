"""The concept-implanting loss (paper eq. 2-4), summed over subjects (sec. 3.3).

For each subject: the noise-prediction MSE on its images with its instance
prompt ("photo of a sks cat"), plus ``prior_weight`` (lambda) times the same
loss on prior images of its class with the class prompt ("photo of a cat").
The noise schedule and the prediction type (epsilon or v) are the base
model's own.

>>> loss, parts = implanting_loss(model, [subject], base.noise_scheduler, batch_size=2, generator=g)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from .data import LatentBank

#: ``model(noisy_latents, timesteps, text_embeddings) -> prediction``
Denoiser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class Subject:
    """What one subject contributes to the loss: its latents and prompts, and its prior's."""

    name: str
    instance: LatentBank
    instance_embedding: torch.Tensor  # (1, tokens, dim)
    prior: LatentBank | None = None
    prior_embedding: torch.Tensor | None = None
    prior_weight: float = 1.0
    #: What the prior term's prediction is compared with: ``"noise"`` (DreamBooth, the
    #: paper: the noise or velocity that made the noisy prior image) or ``"base"`` (the
    #: frozen base model's own prediction on the same input, so the term is 0 at
    #: xi = 1 and grows with any change of the prior prompt's predictions).
    prior_target: str = "noise"


def training_target(
    scheduler: DDPMScheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """What the UNet should predict: the noise (epsilon) or the velocity (v), per the model."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"unsupported prediction type {kind!r} (epsilon or v_prediction)")


def implanting_loss(
    model: Denoiser,
    subjects: Sequence[Subject],
    scheduler: DDPMScheduler,
    batch_size: int,
    generator: torch.Generator,
    reference: Denoiser | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """One stochastic estimate of the (multi-)concept-implanting loss, and its parts.

    All subjects' instance and prior samples go through the UNet in one batch.
    Noise and timesteps are drawn from ``generator`` (CPU), so a seed fixes them.
    ``reference`` (the unchanged base model) gives the target of prior terms
    whose ``prior_target`` is ``"base"``.
    """
    latents, embeddings, groups = [], [], []  # groups: (label, weight, start, stop)
    against_base = []  # (start, stop) of prior terms whose target is the base model's prediction
    for subject in subjects:
        if subject.prior_target not in ("noise", "base"):
            raise ValueError(f"prior_target must be 'noise' or 'base', got {subject.prior_target!r}")
        parts = [("instance", 1.0, subject.instance, subject.instance_embedding)]
        if subject.prior is not None and subject.prior_weight > 0:
            parts.append(("prior", subject.prior_weight, subject.prior, subject.prior_embedding))
        for label, weight, bank, embedding in parts:
            start = sum(x.shape[0] for x in latents)
            latents.append(bank.sample(batch_size, generator))
            embeddings.append(embedding.expand(batch_size, -1, -1))
            groups.append((f"{subject.name}/{label}", weight, start, start + batch_size))
            if label == "prior" and subject.prior_target == "base":
                against_base.append((start, start + batch_size))
    clean = torch.cat(latents)
    noise = torch.randn(clean.shape, generator=generator).to(clean.device)
    timesteps = torch.randint(
        scheduler.config.num_train_timesteps, (clean.shape[0],), generator=generator
    ).to(clean.device)
    noisy = scheduler.add_noise(clean, noise, timesteps)
    context = torch.cat(embeddings).to(clean.device)
    prediction = model(noisy, timesteps, context)
    target = training_target(scheduler, clean, noise, timesteps)
    if against_base:
        if reference is None:
            raise ValueError("a prior term with prior_target='base' needs the reference model")
        target = target.clone()
        with torch.no_grad():
            for start, stop in against_base:
                target[start:stop] = reference(noisy[start:stop], timesteps[start:stop], context[start:stop])
    per_sample = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    total = per_sample.new_zeros(())
    logged = {}
    for label, weight, start, stop in groups:
        part = per_sample[start:stop].mean()
        total = total + weight * part
        logged[label] = float(part.detach())
    return total, logged
