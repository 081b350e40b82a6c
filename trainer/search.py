"""The concept-neuron search, Algorithm A2, as one piece of code for ``cones train`` and ``cones refine``.

    ξ ← 1 on every searched entry (δ = 1 − ξ = 0)                     A2, "Input"
    ρ ← the given step, or one calibrated on the first batches        (below)
    repeat K times:
        g ← ∂L_con(ξ ⊙ θ)/∂ξ = θ ⊙ ∂L_con/∂γ                          eq. A12-A13
        ξ ← clip(ξ − ρ g, 0, 1)                                        eq. A15, kept in [0, 1]
    M_p ← (1 − ξ) / ρ                                                  eq. A19
    concept neurons ← M_p > τ (eq. A20), or the k entries with the largest M_p,
                      or the k among a few candidates with the lowest held-out loss

Two departures from the letter of A2, both measured (docs/method-notes.md):

- **ξ stays in [0, 1].** Eq. 9 samples θ^k "ranging from zero to θ"; plain
  descent with a step large enough to matter pushes ξ below 0 (sign-flipped
  weights) for the very entries it then shuts, so the search evaluated
  weights the container never ships.
- **The step is scale-aware.** The right ρ depends on the model's gradient
  scale: SD 1.4's 2e-5 moves ξ by about 1e-7 on an SD-size UNet and by
  nothing at all on a small one. By default ρ is set from the mean gradient
  of the first ``calibration_batches`` draws, so that an entry whose gradient
  stays at the 99th percentile of that mean travels ``travel`` in K steps
  (1: all the way to shut; the default 0.01 keeps ξ near 1, where the
  paper's own ρ keeps it on SD, and measured better on the world's dev
  split, docs/method-notes.md). The rule is still plain gradient descent.

With neither τ nor a sparsity, the count is chosen by the objective itself:
for each candidate count (``CANDIDATE_FRACTIONS``), the held-out loss (the
same objective, on noise and timesteps the descent never drew) of the model
with those entries shut; the lowest wins.

>>> result = search(base.unet, keys, [subject], base.noise_scheduler, settings, accelerator)
>>> result.neurons, result.rho, result.selection
"""

from __future__ import annotations

import csv
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from diffusers import DDPMScheduler

from .objective import Subject, implanting_loss
from .presentation import progress_bar
from .xi import ConceptNeuronSearch, largest, neurons_by_sparsity, neurons_by_threshold

#: Candidate counts for the held-out selection, as fractions of the searched entries.
CANDIDATE_FRACTIONS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.04)
#: ... and as fractions of the entries whose xi moved at all.
MOVED_FRACTIONS = (0.25, 0.5, 1.0)
#: The quantile of the first batches' mean |∂L/∂ξ| that the calibrated step moves by ``travel`` in K steps.
CALIBRATION_QUANTILE = 0.99
#: Draws of the held-out selection (each of ``batch_size`` per subject, fixed seed).
HELD_OUT_BATCHES = 8
HELD_OUT_SEED = 1_000_003


@dataclass(kw_only=True)
class SearchSettings:
    """How far and how the descent goes, and how the neurons are chosen (units in SearchConfig)."""

    steps: int
    lr: float | None  # rho; None: calibrated to ``travel``
    travel: float
    tau: float | None
    sparsity: float | None
    batch_size: int
    seed: int
    calibration_batches: int = 4
    progress: bool = True


@dataclass
class SearchLog:
    """Loss per step and its parts, wall time, the step used, and how the neurons were chosen."""

    losses: list[float] = field(default_factory=list)
    parts: list[dict[str, float]] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    rho: float = 0.0
    #: How far xi moved from 1 on the chosen entries: 1 - xi at the median and at most.
    xi_travel: dict[str, float] = field(default_factory=dict)
    #: For a held-out choice: {"candidates": [[count, loss], ...], "base": loss, "chosen": count}.
    selection: dict = field(default_factory=dict)
    #: How the values on the neurons were trained (trainer.values); empty for binary.
    values: dict = field(default_factory=dict)

    @property
    def seconds_per_step(self) -> float:
        # The first steps pay for warm-up (allocations, kernel choice); report the steady state.
        steady = self.seconds[len(self.seconds) // 5 :] or self.seconds
        return sum(steady) / max(len(steady), 1)

    def write_csv(self, path: Path) -> None:
        columns = sorted({label for parts in self.parts for label in parts})
        with open(path, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["step", "loss", *columns, "seconds"])
            for step, (loss, parts, seconds) in enumerate(
                zip(self.losses, self.parts, self.seconds, strict=True)
            ):
                cells = (f"{parts.get(c, float('nan')):.6g}" for c in columns)
                writer.writerow([step + 1, f"{loss:.6g}", *cells, f"{seconds:.4f}"])


@dataclass
class SearchResult:
    """The concept neurons (flat indices per layer), 1 − ξ per entry, how many were asked, the log."""

    neurons: dict[str, np.ndarray]
    deltas: dict[str, np.ndarray]
    wanted: int | None
    log: SearchLog


def search(
    unet: torch.nn.Module,
    keys: Sequence[str],
    subjects: Sequence[Subject],
    scheduler: DDPMScheduler,
    settings: SearchSettings,
    accelerator: Accelerator,
    trainable: Mapping[str, torch.Tensor] | None = None,
) -> SearchResult:
    """Algorithm A2 over ``keys`` for ``subjects`` (one for train, several for refine).

    ``trainable`` (refine) restricts ξ to given entries; elsewhere it stays 1.
    """
    xi = ConceptNeuronSearch(unet, keys, trainable)
    # Plain gradient descent, as A2 (no momentum); accelerate adds loss scaling and data parallelism.
    model, optimizer = accelerator.prepare(xi, torch.optim.SGD(xi.parameters(), lr=1.0))
    # Each process draws its own batches; gradients are averaged across processes.
    generator = torch.Generator().manual_seed(settings.seed * 1009 + accelerator.process_index)

    def loss_and_parts():
        with accelerator.autocast():
            return implanting_loss(
                model, subjects, scheduler, settings.batch_size, generator, reference=xi.reference
            )

    log = SearchLog()
    log.rho = settings.lr or calibrated_step(xi, loss_and_parts, settings)
    for group in optimizer.param_groups:
        group["lr"] = log.rho
    shown = settings.progress and accelerator.is_main_process
    bar = progress_bar(iterable=range(settings.steps), desc="xi-descent", unit="step", enabled=shown)
    running = None
    for _ in bar:
        started = time.perf_counter()
        loss, parts = loss_and_parts()
        accelerator.backward(loss)
        optimizer.step()  # delta <- delta - rho * dL/d(delta), i.e. xi <- xi - rho * dL/dxi (eq. A15)
        optimizer.zero_grad(set_to_none=True)
        xi.project()  # xi in [0, 1]
        log.losses.append(float(loss.detach()))
        log.parts.append(parts)
        log.seconds.append(time.perf_counter() - started)
        running = log.losses[-1] if running is None else 0.95 * running + 0.05 * log.losses[-1]
        bar.set_postfix(loss=f"{running:.4f}", refresh=False)  # redraws follow the bar's own interval
    bar.close()

    deltas = xi.deltas()
    if settings.sparsity is not None:
        neurons, wanted = neurons_by_sparsity(deltas, settings.sparsity)
    elif settings.tau is not None:
        neurons, wanted = neurons_by_threshold(deltas, log.rho, settings.tau), None
    else:
        neurons, log.selection = chosen_by_held_out_loss(xi, deltas, subjects, scheduler, settings)
        wanted = None
    chosen = np.concatenate([deltas[key][neurons[key]] for key in neurons] or [np.zeros(0)])
    if chosen.size:
        log.xi_travel = {"median": float(np.median(chosen)), "max": float(chosen.max())}
    return SearchResult(neurons, deltas, wanted, log)


def calibrated_step(xi: ConceptNeuronSearch, loss_and_parts, settings: SearchSettings) -> float:
    """ρ such that an entry at the 99th percentile of the mean |∂L/∂ξ| travels ``travel`` in K steps.

    Measured on ``calibration_batches`` draws at ξ = 1 (the gradients are
    discarded; the descent's own draws follow), without loss scaling: a
    quantile does not mind the smallest gradients underflowing in fp16.
    Entries ξ cannot move (outside ``trainable``) have zero gradient and do
    not count.
    """
    total = [torch.zeros_like(delta) for delta in xi.delta]
    for _ in range(settings.calibration_batches):
        loss, _ = loss_and_parts()
        loss.backward()
        for running, delta in zip(total, xi.delta, strict=True):
            running += delta.grad
            delta.grad = None
    magnitudes = torch.cat([t.abs().flatten() for t in total]) / settings.calibration_batches
    magnitudes = magnitudes[magnitudes > 0]
    if magnitudes.numel() == 0:
        raise ValueError("the loss does not depend on any searched entry: nothing to search")
    # torch.quantile takes at most 2**24 values: a fixed sample of a million is plenty.
    order = torch.randperm(magnitudes.numel(), generator=torch.Generator().manual_seed(0))
    scale = float(
        torch.quantile(
            magnitudes[order[:1_000_000].to(magnitudes.device)].float().cpu(), CALIBRATION_QUANTILE
        )
    )
    return settings.travel / (settings.steps * scale)


@torch.no_grad()
def held_out_loss(
    xi: ConceptNeuronSearch,
    subjects: Sequence[Subject],
    scheduler: DDPMScheduler,
    batch_size: int,
    shut: Mapping[str, np.ndarray] | None,
    values: Mapping[str, np.ndarray] | None = None,
) -> float:
    """The objective with ``shut`` entries at ξ = 0 and all others at 1, on fixed held-out draws.

    ``values`` (trainer.values) gives the shut entries ξ other than 0: one per
    index of ``shut``, in its order.
    """
    saved = [delta.detach().clone() for delta in xi.delta]
    try:
        for key, delta in zip(xi.keys, xi.delta, strict=True):
            delta.zero_()
            if shut is not None and len(shut[key]):
                where = torch.as_tensor(shut[key], device=delta.device)
                if values is None:
                    delta.view(-1)[where] = 1.0
                else:
                    xi_values = torch.as_tensor(np.asarray(values[key], np.float32), device=delta.device)
                    delta.view(-1)[where] = 1.0 - xi_values
        generator = torch.Generator().manual_seed(HELD_OUT_SEED)
        total = 0.0
        for _ in range(HELD_OUT_BATCHES):
            loss, _ = implanting_loss(xi, subjects, scheduler, batch_size, generator, reference=xi.reference)
            total += float(loss)
        return total / HELD_OUT_BATCHES
    finally:
        for delta, value in zip(xi.delta, saved, strict=True):
            delta.copy_(value)


def chosen_by_held_out_loss(
    xi: ConceptNeuronSearch,
    deltas: dict[str, np.ndarray],
    subjects: Sequence[Subject],
    scheduler: DDPMScheduler,
    settings: SearchSettings,
) -> tuple[dict[str, np.ndarray], dict]:
    """Among the candidate counts, the set of largest 1 − ξ whose held-out loss is lowest."""
    size = sum(delta.size for delta in deltas.values())
    moved = sum(int((delta > 0).sum()) for delta in deltas.values())
    # Fractions of all entries, and of those that moved at all (every one of them: eq. 8's tau -> 0+,
    # which a refine over a large union may need).
    counts = {min(moved, max(1, round(f * size))) for f in CANDIDATE_FRACTIONS}
    counts |= {round(f * moved) for f in MOVED_FRACTIONS}
    counts = sorted(counts - {0})
    batch = max(settings.batch_size, 4)
    base = held_out_loss(xi, subjects, scheduler, batch, None)
    candidates = []
    for count in counts:
        neurons = largest(deltas, count)
        candidates.append((count, held_out_loss(xi, subjects, scheduler, batch, neurons), neurons))
    if not candidates:
        return {key: np.zeros(0, np.int64) for key in deltas}, {"base": base, "candidates": [], "chosen": 0}
    count, _, neurons = min(candidates, key=lambda c: c[1])
    record = {"base": base, "candidates": [[c, loss] for c, loss, _ in candidates], "chosen": count}
    return neurons, record
