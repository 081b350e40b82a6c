"""The concept-implanting loss (paper eq. 2-4), summed over subjects (sec. 3.3), and what it preserves.

For each subject: the noise-prediction MSE on its images with its instance
prompt ("photo of a sks cat"), plus ``prior_weight`` (λ) times the same loss
on prior images of its class with the class prompt ("photo of a cat"). The
forward process and the target are the base model's own (trainer.schedules:
epsilon or v for the UNet families, flow matching for SD3 and Flux); the
family's conditioning and call are the model's business (trainer.denoisers),
so this module reads the same for every family.

Optionally (``preserve_weight`` μ > 0) the loss also asks the edited model to
predict what the frozen base model predicts on the prior images, for the
class prompt and for the empty prompt that classifier-free guidance
subtracts. The paper's prior term cannot see every change: its prior images
are the base model's own guided samples, so an edit that moves every prompt
toward sharper, more typical images lowers it too (docs/method-notes.md).
The preservation term is 0 at ξ = 1 and grows with any change of those
predictions.

>>> loss, parts = implanting_loss(model, [subject], base.noise_scheduler, batch_size=2, generator=g,
...                               reference=search.reference)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .data import LatentBank
from .denoisers import Conditioning, concat_rows, repeat_rows, take_rows
from .schedules import noise_schedule

#: ``model(noisy_latents, timesteps, conditioning) -> prediction`` (trainer.xi wraps a denoiser so)
Denoiser = Callable[[torch.Tensor, torch.Tensor, Conditioning], torch.Tensor]


@dataclass
class Subject:
    """What one subject contributes to the loss: its latents and prompts, and its prior's."""

    name: str
    instance: LatentBank
    instance_embedding: Conditioning  # one row: (1, tokens, dim) for SD, named tensors otherwise
    prior: LatentBank | None = None
    prior_embedding: Conditioning | None = None
    prior_weight: float = 1.0
    #: μ: weight of keeping the base model's predictions on the prior images, for the class
    #: prompt and for the empty prompt (``empty_embedding``); 0 turns the term off.
    preserve_weight: float = 0.0
    empty_embedding: Conditioning | None = None


def training_target(
    scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """What the denoiser should predict: the noise (epsilon), the velocity (v), or for flow
    matching ``noise - latents``, per the model's scheduler (trainer.schedules)."""
    return noise_schedule(scheduler).target(latents, noise, timesteps)


def implanting_loss(
    model: Denoiser,
    subjects: Sequence[Subject],
    scheduler,
    batch_size: int,
    generator: torch.Generator,
    reference: Denoiser | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """One stochastic estimate of the (multi-)concept-implanting loss, and its parts.

    All subjects' samples go through the denoiser in one batch. Noise and
    timesteps are drawn from ``generator`` (CPU), so a seed fixes them.
    ``scheduler`` is the model's training scheduler (or a trainer.schedules
    schedule): it says how to noise and what to predict.
    ``reference`` (the unchanged base model) gives the targets of the
    preservation terms; it is needed when any subject has ``preserve_weight``.
    Parts are logged as ``NAME/instance``, ``NAME/prior`` and ``NAME/preserve``.
    """
    blocks = []  # (latents, conditioning, noise, timesteps), batch_size rows each
    terms = []  # (label, weight, block number, target: "data" or "base")

    schedule = noise_schedule(scheduler)

    def block(latents: torch.Tensor, embedding: Conditioning, like: int | None = None) -> int:
        if like is None:
            noise = torch.randn(latents.shape, generator=generator)
            timesteps = schedule.draw_timesteps(batch_size, generator)
        else:  # the same noisy images under another prompt
            noise, timesteps = blocks[like][2], blocks[like][3]
        blocks.append((latents, repeat_rows(embedding, batch_size), noise, timesteps))
        return len(blocks) - 1

    for subject in subjects:
        own = block(subject.instance.sample(batch_size, generator), subject.instance_embedding)
        terms.append((f"{subject.name}/instance", 1.0, own, "data"))
        wants_prior = subject.prior is not None and subject.prior_weight > 0
        wants_preserve = subject.prior is not None and subject.preserve_weight > 0
        if not (wants_prior or wants_preserve):
            continue
        prior = block(subject.prior.sample(batch_size, generator), subject.prior_embedding)
        if wants_prior:
            terms.append((f"{subject.name}/prior", subject.prior_weight, prior, "data"))
        if wants_preserve:
            if subject.empty_embedding is None:
                raise ValueError(f"subject {subject.name!r} preserves the empty prompt but has no embedding")
            empty = block(blocks[prior][0], subject.empty_embedding, like=prior)
            terms.append((f"{subject.name}/preserve", subject.preserve_weight / 2, prior, "base"))
            terms.append((f"{subject.name}/preserve", subject.preserve_weight / 2, empty, "base"))
    clean = torch.cat([b[0] for b in blocks])
    device = clean.device
    noise = torch.cat([b[2] for b in blocks]).to(device)
    timesteps = torch.cat([b[3] for b in blocks]).to(device)
    context = concat_rows([b[1] for b in blocks], device)
    noisy = schedule.add_noise(clean, noise, timesteps)
    prediction = model(noisy, timesteps, context).float()
    data_target = schedule.target(clean, noise, timesteps).float()
    base_target = torch.zeros_like(prediction)
    preserved = sorted({number for *_, number, kind in terms if kind == "base"})
    if preserved:
        if reference is None:
            raise ValueError("a preservation term (preserve_weight > 0) needs the reference model")
        rows = torch.cat([torch.arange(n * batch_size, (n + 1) * batch_size) for n in preserved]).to(device)
        with torch.no_grad():
            base_target[rows] = reference(noisy[rows], timesteps[rows], take_rows(context, rows)).float()
    total = prediction.new_zeros(())
    logged: dict[str, float] = {}
    for label, weight, number, kind in terms:
        rows = slice(number * batch_size, (number + 1) * batch_size)
        target = data_target if kind == "data" else base_target
        part = F.mse_loss(prediction[rows], target[rows])
        total = total + weight * part
        share = 0.5 if kind == "base" else 1.0  # the two preservation halves log as their mean
        logged[label] = logged.get(label, 0.0) + share * float(part.detach())
    return total, logged
