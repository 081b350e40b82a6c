"""Values on the concept neurons (paper sec. 3.2, Fig. 3): ξ trained on the found entries only.

Binary, the default, shuts the concept neurons (ξ = 0) and stores nothing
more. The other value kinds (``q4``, ``fp16``, ``fp32``; spec § 6.4) train ξ
on those entries only, with the same loss and data as the search
(trainer.search), every other entry frozen at ξ = 1:

    ξ ← ξ₀ on the neurons (0, the shut state; refine: the inputs' values), 1 elsewhere
    repeat V times:
        g ← ∂L_con/∂ξ on the neurons                             eq. A12-A13, as the search
        ξ ← clip(ξ − Adam(g), 0, 1)
        q4, the last V/2 steps: the forward reads ξ through four levels c per layer,
            ξ_q = c[nearest level]; ∂L/∂ξ := ∂L/∂ξ_q (straight-through),
            ∂L/∂c_j = Σ ∂L/∂ξ_q over the entries coded j (the levels are learned)
    fp32: ξ as it is; fp16: rounded to float16; q4: conesfmt.Q4(c, codes)
    keep ξ only if its held-out loss is at most the shut state's; else ξ = 0

Three choices, and why:

- **Starting shut.** From ξ = 0, the binary result is where the descent
  begins, and the last line keeps whichever of the two is better on the
  search's own held-out draws (trainer.search.held_out_loss): a valued
  container is never worse than the binary one on the training objective.
- **Adam, not A2's plain step.** θ ⊙ ∂L/∂γ differs by orders of magnitude
  between entries and between models (trainer.search calibrates ρ for that);
  Adam's step is a distance in ξ whatever the scale, so ``lr`` means the same
  on every model: the default 2 / V lets an entry whose gradient keeps its
  sign cross [0, 1] twice.
- **ξ in [0, 1]**, as in the search (eq. 9 samples θ^k between 0 and θ): a
  value reopens a shut entry partly; it never flips its sign or amplifies it.

>>> trained = train_values(base.unet, keys, [subject], base.noise_scheduler, found.neurons,
...                        ValueSettings(kind="q4", steps=100, batch_size=2, seed=0), accelerator)
>>> trained.kind, trained.stored[key], trained.log["held_out"]
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from accelerate import Accelerator
from diffusers import DDPMScheduler

import conesfmt
from conesfmt.values import Q4_LEVELS, StoredValues, expand

from .objective import Subject, implanting_loss
from .presentation import progress_bar
from .search import HELD_OUT_BATCHES, held_out_loss
from .xi import ConceptNeuronSearch

#: The kinds ``cones train --values`` takes (conesfmt.VALUE_KINDS), binary first: the default.
VALUE_KINDS = conesfmt.VALUE_KINDS
#: Kinds ordered from the least to the most precise: refine keeps the most precise of its inputs.
PRECISION_ORDER = ("binary", "q4", "fp16", "fp32")
#: Added to the run's seed for the value steps' draws, so they are not the search's own.
VALUE_SEED_OFFSET = 7919


@dataclass(kw_only=True)
class ValueSettings:
    """How the values are trained: ``kind``, ``steps`` V (gradient steps), ``lr`` (Adam's step, in ξ;
    None: 2 / V), ``batch_size`` (subject images per step, as the search), ``seed``."""

    kind: str
    steps: int
    batch_size: int
    seed: int
    lr: float | None = None
    progress: bool = True

    @property
    def step_size(self) -> float:
        return self.lr if self.lr is not None else 2.0 / self.steps


@dataclass
class TrainedValues:
    """ξ per neuron: in stored form for conesfmt.Concept (``stored``), as float32 (``xi``), and the log.

    Both are aligned with the neurons' indices, layer by layer (every layer
    of the search, empty ones included). ``log`` holds the loss per step,
    the held-out losses of the shut state and of the values, and whether
    the values were kept.
    """

    kind: str
    stored: dict[str, StoredValues]
    xi: dict[str, np.ndarray]
    log: dict = field(default_factory=dict)


class QuaternaryXi(ConceptNeuronSearch):
    """The search's module with ξ on the neurons read through four learned levels per layer.

    ``delta`` holds the latent ξ (as 1 − ξ); the forward uses the nearest of
    the layer's ``levels`` instead, and passes the gradient straight through
    to the latent ξ and, summed over the entries coded j, to level j.
    """

    def __init__(
        self,
        unet: torch.nn.Module,
        keys: Sequence[str],
        trainable: Mapping[str, torch.Tensor],
        positions: Mapping[str, torch.Tensor],
        levels: Mapping[str, np.ndarray],
    ):
        super().__init__(unet, keys, trainable)
        object.__setattr__(self, "positions", [positions[key] for key in self.keys])
        self.levels = torch.nn.ParameterList(
            torch.nn.Parameter(torch.tensor(levels[key], dtype=torch.float32, device=delta.device))
            for key, delta in zip(self.keys, self.delta, strict=True)
        )

    def codes(self, number: int) -> torch.Tensor:
        """The nearest level of each neuron's latent ξ in layer ``number``."""
        latent = 1 - self.delta[number].detach().reshape(-1)[self.positions[number]]
        return (latent[:, None] - self.levels[number].detach()[None, :]).abs().argmin(dim=1)

    def effective_deltas(self) -> list[torch.Tensor]:
        deltas = []
        for number, (delta, levels, where) in enumerate(
            zip(self.delta, self.levels, self.positions, strict=True)
        ):
            if where.numel() == 0:
                # Still in the graph, so that every parameter gets a gradient (distributed runs).
                deltas.append(delta + 0 * levels.sum())
                continue
            flat = delta.reshape(-1)
            latent = 1 - flat[where]
            quantised = levels[self.codes(number)] + (latent - latent.detach())  # straight-through
            deltas.append(flat.index_put((where,), 1 - quantised).view_as(delta))
        return deltas

    @torch.no_grad()
    def project(self) -> None:
        super().project()
        for levels in self.levels:
            levels.clamp_(0.0, 1.0)


def train_values(
    unet: torch.nn.Module,
    keys: Sequence[str],
    subjects: Sequence[Subject],
    scheduler: DDPMScheduler,
    neurons: Mapping[str, np.ndarray],
    settings: ValueSettings,
    accelerator: Accelerator,
    start: Mapping[str, np.ndarray] | None = None,
) -> TrainedValues:
    """ξ on ``neurons`` (flat indices per layer of ``keys``) trained for ``subjects``, as ``settings.kind``.

    ``start`` is ξ₀ per neuron (default 0: the shut state). Raises
    ``ValueError`` for ``binary`` (nothing to train) or an unknown kind.
    Returns values never worse than ξ = 0 on the held-out draws of the
    search.
    """
    if settings.kind not in VALUE_KINDS or settings.kind == "binary":
        raise ValueError(f"values of kind {settings.kind!r}: give one of q4, fp16, fp32")
    started = time.perf_counter()
    device = accelerator.device
    neurons = {key: np.array(neurons[key], np.int64) for key in keys}  # own, writable copies
    positions = {key: torch.from_numpy(neurons[key]).to(device) for key in keys}
    begin = {
        key: np.zeros(len(neurons[key]), np.float32) if start is None else np.asarray(start[key], np.float32)
        for key in keys
    }
    trainable = {}
    weights = unet.state_dict(keep_vars=True)
    for key in keys:
        mask = torch.zeros(weights[key].numel(), dtype=torch.bool, device=device)
        mask[positions[key]] = True
        trainable[key] = mask.view(weights[key].shape)
    generator = torch.Generator().manual_seed(
        settings.seed * 1009 + VALUE_SEED_OFFSET + accelerator.process_index
    )
    losses: list[float] = []
    seconds: list[float] = []

    continuous = settings.steps - settings.steps // 2 if settings.kind == "q4" else settings.steps
    xi = plain = ConceptNeuronSearch(unet, keys, trainable)
    set_xi(xi, positions, begin)
    descend(xi, subjects, scheduler, settings, accelerator, generator, continuous, losses, seconds)
    latent = current_xi(xi, positions)
    if settings.kind == "q4":
        levels = {key: conesfmt.quantize_q4(latent[key]).codebook for key in keys}
        xi = QuaternaryXi(unet, keys, trainable, positions, levels)
        set_xi(xi, positions, latent)
        quantised = settings.steps - continuous
        descend(xi, subjects, scheduler, settings, accelerator, generator, quantised, losses, seconds)
        stored = {
            key: conesfmt.Q4(xi.levels[number].detach().cpu().numpy(), xi.codes(number).cpu().numpy())
            for number, key in enumerate(keys)
        }
    else:
        dtype = np.float16 if settings.kind == "fp16" else np.float32
        stored = {key: current_xi(xi, positions)[key].astype(dtype) for key in keys}
    expanded = {key: expand(settings.kind, stored[key]) for key in keys}

    # Never worse than the shut state on the training objective (held-out draws of the search).
    batch = max(settings.batch_size, 4)
    shut_loss = held_out_loss(plain, subjects, scheduler, batch, neurons)
    valued_loss = held_out_loss(plain, subjects, scheduler, batch, neurons, expanded)
    kept = valued_loss <= shut_loss
    if not kept:
        stored = {key: shut_values(settings.kind, len(neurons[key])) for key in keys}
        expanded = {key: np.zeros(len(neurons[key]), np.float32) for key in keys}
    chosen = np.concatenate([expanded[key] for key in keys] or [np.zeros(0, np.float32)])
    log = {
        "kind": settings.kind,
        "steps": settings.steps,
        "lr": settings.step_size,
        "held_out": {"shut": shut_loss, "values": valued_loss, "batches": HELD_OUT_BATCHES},
        "kept": bool(kept),
        "xi": {"median": float(np.median(chosen)), "max": float(chosen.max())} if chosen.size else {},
        "seconds": time.perf_counter() - started,
        "losses": losses,
        "step_seconds": seconds,
    }
    return TrainedValues(settings.kind, stored, expanded, log)


def descend(
    xi: ConceptNeuronSearch,
    subjects: Sequence[Subject],
    scheduler: DDPMScheduler,
    settings: ValueSettings,
    accelerator: Accelerator,
    generator: torch.Generator,
    steps: int,
    losses: list[float],
    seconds: list[float],
) -> None:
    """``steps`` Adam steps on every parameter of ``xi`` (the hooks keep all but the neurons at ξ = 1)."""
    if steps <= 0:
        return
    model, optimizer = accelerator.prepare(xi, torch.optim.Adam(xi.parameters(), lr=settings.step_size))
    shown = settings.progress and accelerator.is_main_process
    bar = progress_bar(iterable=range(steps), desc=f"values ({settings.kind})", unit="step", enabled=shown)
    running = None
    for _ in bar:
        began = time.perf_counter()
        with accelerator.autocast():
            loss, _ = implanting_loss(
                model, subjects, scheduler, settings.batch_size, generator, reference=xi.reference
            )
        accelerator.backward(loss)
        optimizer.step()  # zero gradient off the neurons: Adam leaves those entries exactly where they are
        optimizer.zero_grad(set_to_none=True)
        xi.project()
        losses.append(float(loss.detach()))
        seconds.append(time.perf_counter() - began)
        running = losses[-1] if running is None else 0.95 * running + 0.05 * losses[-1]
        bar.set_postfix(loss=f"{running:.4f}", refresh=False)
    bar.close()


@torch.no_grad()
def set_xi(
    xi: ConceptNeuronSearch, positions: Mapping[str, torch.Tensor], values: Mapping[str, np.ndarray]
) -> None:
    """ξ = ``values`` on the neurons, 1 elsewhere."""
    for key, delta in zip(xi.keys, xi.delta, strict=True):
        delta.zero_()
        if positions[key].numel():
            given = torch.as_tensor(np.asarray(values[key], np.float32), device=delta.device)
            delta.view(-1)[positions[key]] = 1.0 - given


def current_xi(xi: ConceptNeuronSearch, positions: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """ξ on the neurons, float32, aligned with their indices."""
    return {
        key: (1.0 - delta.detach().reshape(-1)[positions[key]]).clamp(0, 1).float().cpu().numpy()
        for key, delta in zip(xi.keys, xi.delta, strict=True)
    }


def shut_values(kind: str, count: int) -> StoredValues:
    """ξ = 0 for ``count`` neurons in the stored form of ``kind``: what binary does, as values."""
    if kind == "q4":
        return conesfmt.Q4(np.zeros(Q4_LEVELS), np.zeros(count, np.uint8))
    return np.zeros(count, np.float16 if kind == "fp16" else np.float32)


def finest_kind(kinds: Sequence[str]) -> str:
    """The most precise of ``kinds`` (binary when empty): what a refine of such inputs stores.

    >>> finest_kind(["binary", "q4"])
    'q4'
    """
    return max(kinds, key=PRECISION_ORDER.index, default="binary")


def write_value_csv(log: dict, path) -> None:
    """The value steps' loss per step: ``step,loss,seconds`` (beside the search's ``.loss.csv``)."""
    with open(path, "w") as handle:
        handle.write("step,loss,seconds\n")
        for step, (loss, seconds) in enumerate(zip(log["losses"], log["step_seconds"], strict=True)):
            handle.write(f"{step + 1},{loss:.6g},{seconds:.4f}\n")
