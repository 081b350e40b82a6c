"""The forward (noising) process each family was trained with, and what its denoiser predicts.

Two kinds, read from the model's own scheduler:

- **Diffusion** (SD 1.x, SD 2.x, SDXL; any DDPM-style scheduler config):
  ``x_t = √ᾱ_t x + √(1 − ᾱ_t) ε`` at an integer timestep drawn uniformly
  from ``[0, num_train_timesteps)``; the target is ε (``epsilon``) or the
  velocity (``v_prediction``), per the config.
- **Flow matching** (SD3, Flux; ``FlowMatchEulerDiscreteScheduler``):
  ``x_σ = (1 − σ) x + σ ε``, the target is the velocity ``ε − x``. A
  timestep is one of the scheduler's own training timesteps (σ·1000, with
  SD3's shift applied; Flux shifts only at sampling time), drawn uniformly,
  as diffusers' DreamBooth scripts do with ``weighting_scheme="none"``; the
  loss weight is uniform (docs/training-families.md).

>>> schedule = noise_schedule(base.noise_scheduler)
>>> t = schedule.draw_timesteps(4, generator)
>>> noisy, target = schedule.add_noise(x, noise, t), schedule.target(x, noise, t)
"""

from __future__ import annotations

from typing import Any, Protocol

import torch


class NoiseSchedule(Protocol):
    """What the implanting loss needs from a family's forward process (all tensors batch-first)."""

    def draw_timesteps(self, count: int, generator: torch.Generator) -> torch.Tensor: ...

    def add_noise(
        self, clean: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor: ...

    def target(self, clean: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor: ...


class DiffusionSchedule:
    """A DDPM-style schedule (``scheduler.add_noise``), epsilon or v prediction per its config."""

    def __init__(self, scheduler: Any):
        self.scheduler = scheduler

    def draw_timesteps(self, count: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randint(self.scheduler.config.num_train_timesteps, (count,), generator=generator)

    def add_noise(self, clean: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return self.scheduler.add_noise(clean, noise, timesteps)

    def target(self, clean: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        kind = self.scheduler.config.prediction_type
        if kind == "epsilon":
            return noise
        if kind == "v_prediction":
            return self.scheduler.get_velocity(clean, noise, timesteps)
        raise ValueError(f"unsupported prediction type {kind!r} (epsilon or v_prediction)")


class FlowMatchingSchedule:
    """Rectified flow: ``x_σ = (1 − σ) x + σ ε``, target ``ε − x``, σ = the scheduler's sigma at t.

    The training timesteps and sigmas are those of a fresh scheduler made from
    ``scheduler``'s config (a pipeline's own scheduler changes them when it samples).
    """

    def __init__(self, scheduler: Any):
        fresh = type(scheduler).from_config(scheduler.config)
        self.timesteps = fresh.timesteps.float().cpu()
        self.sigmas = fresh.sigmas.float().cpu()[: len(self.timesteps)]

    def draw_timesteps(self, count: int, generator: torch.Generator) -> torch.Tensor:
        return self.timesteps[torch.randint(len(self.timesteps), (count,), generator=generator)]

    def sigma(self, timesteps: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """σ of each timestep (looked up, not divided: exactly the scheduler's), shaped to broadcast."""
        table = self.timesteps.to(timesteps.device)
        position = (table[None, :] == timesteps.float()[:, None]).int().argmax(1)
        sigma = self.sigmas.to(timesteps.device)[position]
        return sigma.reshape(-1, *([1] * (like.ndim - 1))).to(like.dtype)

    def add_noise(self, clean: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        sigma = self.sigma(timesteps, clean)
        return (1.0 - sigma) * clean + sigma * noise

    def target(self, clean: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return noise - clean


def noise_schedule(scheduler: Any) -> NoiseSchedule:
    """The schedule of a diffusers scheduler (a flow-matching one, or any DDPM-style one);
    a :class:`NoiseSchedule` is returned as it is.

    >>> type(noise_schedule(DDPMScheduler())).__name__
    'DiffusionSchedule'
    """
    if isinstance(scheduler, (DiffusionSchedule, FlowMatchingSchedule)):
        return scheduler
    from diffusers import FlowMatchEulerDiscreteScheduler

    if isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
        return FlowMatchingSchedule(scheduler)
    return DiffusionSchedule(scheduler)
