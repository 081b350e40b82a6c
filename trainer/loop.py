"""The descent loop shared by ``cones train`` and ``cones refine``: Algorithm A2's K steps.

Reads top to bottom: sample a batch, compute the implanting loss (eq. 4, or
its sum over subjects for a joint refine), backpropagate to delta = 1 - xi
only, take a plain gradient step of size rho. accelerate provides mixed
precision (loss scaling included) and data parallelism over several GPUs.

>>> log = run_descent(search, subjects, base.noise_scheduler, steps=1000, lr=2e-5, batch_size=2,
...                   seed=0, accelerator=Accelerator())
"""

from __future__ import annotations

import csv
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from diffusers import DDPMScheduler

from .objective import Subject, implanting_loss
from .presentation import progress_bar
from .xi import ConceptNeuronSearch


@dataclass
class DescentLog:
    """Loss per step, its parts per subject, and wall time."""

    losses: list[float] = field(default_factory=list)
    parts: list[dict[str, float]] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    #: How far xi moved from 1 on the chosen entries: 1 - xi at the median and at most.
    xi_travel: dict[str, float] = field(default_factory=dict)

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
                writer.writerow(
                    [
                        step + 1,
                        f"{loss:.6g}",
                        *(f"{parts.get(c, float('nan')):.6g}" for c in columns),
                        f"{seconds:.4f}",
                    ]
                )


def run_descent(
    search: ConceptNeuronSearch,
    subjects: Sequence[Subject],
    scheduler: DDPMScheduler,
    *,
    steps: int,
    lr: float,
    batch_size: int,
    seed: int,
    accelerator: Accelerator,
    progress: bool = True,
) -> DescentLog:
    """K steps of plain gradient descent on delta (= 1 - xi) with step ``lr`` (rho)."""
    optimizer = torch.optim.SGD(search.parameters(), lr=lr)  # plain gradient descent: no momentum
    model, optimizer = accelerator.prepare(search, optimizer)
    # Each process draws its own batches; gradients are averaged across processes.
    generator = torch.Generator().manual_seed(seed * 1009 + accelerator.process_index)
    log = DescentLog()
    shown = progress and accelerator.is_main_process
    bar = progress_bar(iterable=range(steps), desc="xi-descent", unit="step", enabled=shown)
    running = None
    for _ in bar:
        started = time.perf_counter()
        with accelerator.autocast():
            loss, parts = implanting_loss(
                model, subjects, scheduler, batch_size, generator, reference=search.reference
            )
        accelerator.backward(loss)
        optimizer.step()  # delta <- delta - rho * dL/d(delta), i.e. xi <- xi - rho * dL/d(xi)
        optimizer.zero_grad(set_to_none=True)
        value = float(loss.detach())
        log.losses.append(value)
        log.parts.append(parts)
        log.seconds.append(time.perf_counter() - started)
        running = value if running is None else 0.95 * running + 0.05 * value
        bar.set_postfix(loss=f"{running:.4f}")
    bar.close()
    return log
