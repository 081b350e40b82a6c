"""Which shut sets exist, and which does each ranking find? Diagnostics for issue 11 on the world.

    python bench/shut_sets.py --subject pxr --split dev        # about 25 min on one core

Every row is a set of shut K/V entries of one size k, scored with the
protocol's measures and the held-out subject loss (the instance term of the
objective on the subject's own images, per timestep quarter, fixed draws no
ranking saw):

- **sparse oracle**: the k entries whose shutting most lowers TIME's
  objective toward the *described* prompt's keys and values (bench/oracle.py;
  to second order, per entry: ``G·θ − H_jj θ²`` with ``G`` its gradient and
  ``H`` its curvature). It knows the answer in words, so it says whether a
  shut set of that size that draws the subject exists at all.
- **first order**: the k entries with the largest ``−∂L/∂δ`` at the base
  model (δ = 1 − ξ = 0), L the instance loss alone, averaged over 1,200
  draws — Algorithm A2 with ρ → 0 and no prior term.
- **curvature**: the same plus the second-order term of shutting an entry
  alone, ``−(g + h/2)``, with ``h`` the Gauss–Newton diagonal estimated by
  random projections (Optimal Brain Damage with the gradient kept).
- **random**: k entries drawn uniformly (the chance level).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from datetime import date
from pathlib import Path

os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from oracle import aligned_features, kv_keys, preserved_covariance  # noqa: E402

import conesfmt  # noqa: E402
import conesrt  # noqa: E402
from trainer import world  # noqa: E402
from trainer.base_model import load_base_model  # noqa: E402
from trainer.config import image_files  # noqa: E402
from trainer.data import encode_images, encode_prompt  # noqa: E402
from trainer.evaluate import random_like  # noqa: E402
from trainer.objective import training_target  # noqa: E402
from trainer.world import protocol  # noqa: E402
from trainer.xi import ConceptNeuronSearch, largest  # noqa: E402


def container(unet, keys, chosen: dict[str, np.ndarray]) -> conesfmt.Container:
    concept = {key: value.astype(np.int64) for key, value in chosen.items() if len(value)}
    return conesfmt.Container(
        conesrt.layer_table(unet, keys), {"set": concept}, conesrt.fingerprint(unet, keys)
    )


def sparse_oracle(pipe, subject, keys, lam: float) -> dict[str, np.ndarray]:
    """Per entry, the second-order decrease of TIME's objective when that entry alone is shut."""
    c, d = aligned_features(pipe, subject)
    curvature = torch.diag(c.T @ c / len(c) + lam * preserved_covariance(pipe))
    benefit = {}
    for key in keys:
        w = pipe.unet.state_dict()[key].double()
        gradient = 2 * w @ (c.T - d.T) @ c / len(c)
        benefit[key] = (gradient * w - curvature[None, :] * w * w).reshape(-1).numpy()
    return benefit


def gradient_rankings(
    search, bank, embedding, scheduler, batches: int, batch: int, seed: int, metric=None, curvature=True
):
    """Mean −∂L/∂δ and the Gauss–Newton diagonal of the instance loss at δ = 0.

    ``metric`` (optional) maps the residual (prediction − target) before it is squared: the loss is
    then posed in that metric of the outputs (bench/decorrelated_sets.py). The curvature stays
    Euclidean; ``curvature=False`` skips it (the second value is then None). The draws depend on
    neither.
    """
    generator = torch.Generator().manual_seed(seed)
    gradient = [torch.zeros_like(d) for d in search.delta]
    diagonal = [torch.zeros_like(d) for d in search.delta]
    for _ in range(batches):
        noisy, timesteps, target = instance_draw(bank, scheduler, batch, generator)
        prediction = search(noisy, timesteps, embedding.expand(batch, -1, -1))
        residual = prediction - target
        loss = ((residual if metric is None else metric(residual)) ** 2).mean()
        for total, part in zip(
            gradient, torch.autograd.grad(loss, list(search.delta), retain_graph=curvature), strict=True
        ):
            total += part
        probe = (prediction * torch.randn(prediction.shape, generator=generator)).sum()
        if not curvature:
            continue
        for total, part in zip(diagonal, torch.autograd.grad(probe, list(search.delta)), strict=True):
            total += part**2 * (2 / prediction.numel())
    keys = search.keys
    first = {k: (-g / batches).reshape(-1).numpy() for k, g in zip(keys, gradient, strict=True)}
    if not curvature:
        return first, None
    second = {
        k: first[k] - 0.5 * (h / batches).reshape(-1).numpy() for k, h in zip(keys, diagonal, strict=True)
    }
    return first, second


def instance_draw(bank, scheduler, batch: int, generator, timesteps: tuple[int, int] | None = None):
    """One draw of the instance loss's inputs: (noisy latents, timesteps, target). Drawn in the order
    clean, noise, timesteps from ``generator``; ``timesteps`` limits them to [low, high)."""
    clean = bank.sample(batch, generator)
    noise = torch.randn(clean.shape, generator=generator)
    low, high = timesteps or (0, scheduler.config.num_train_timesteps)
    steps = torch.randint(low, high, (batch,), generator=generator)
    return scheduler.add_noise(clean, noise, steps), steps, training_target(scheduler, clean, noise, steps)


def subject_inputs(model: Path, token: str):
    """What the instance loss draws from: (the model's scheduler, the world subject, its image latents
    at the world's 64 px with flips, its instance prompt's embedding)."""
    base = load_base_model(model, torch.device("cpu"), torch.float32)
    subject = world.subject(token)
    bank = encode_images(base, image_files(subject.image_paths[0].parent), 64, True)
    return base.noise_scheduler, subject, bank, encode_prompt(base, subject.prompt)


@torch.no_grad()
def subject_loss(unet, bank, embedding, scheduler) -> list[float]:
    """The instance loss per timestep quarter, on fixed draws (seed 7)."""
    quarters = []
    for low in range(0, 1000, 250):
        generator = torch.Generator().manual_seed(7)
        total = 0.0
        for _ in range(16):
            noisy, timesteps, target = instance_draw(bank, scheduler, 8, generator, (low, low + 250))
            prediction = unet(noisy, timesteps, encoder_hidden_states=embedding.expand(8, -1, -1)).sample
            total += float(((prediction - target) ** 2).mean())
        quarters.append(total / 16)
    return quarters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subject", default="pxr")
    parser.add_argument("--split", choices=("dev", "test"), default="dev")
    parser.add_argument("--sizes", default="532,2129")
    parser.add_argument("--oracle-lambda", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    split = protocol.DEV if args.split == "dev" else protocol.TEST
    pipe = world.load_pipeline()
    scheduler, subject, bank, embedding = subject_inputs(world.MODEL_DIR, args.subject)
    keys = kv_keys(pipe.unet)
    search = ConceptNeuronSearch(pipe.unet, keys)
    first, curvature = gradient_rankings(search, bank, embedding, scheduler, 150, 8, seed=1)
    rankings = {"sparse oracle": sparse_oracle(pipe, subject, keys, args.oracle_lambda)}
    rankings |= {"first order": first, "curvature": curvature}
    measure = protocol.Judged(pipe, split)
    rows = [("base model", 0, subject_loss(pipe.unet, bank, embedding, scheduler), measure([subject]))]
    print(f"  {rows[-1][0]}: {rows[-1][2]} {rows[-1][3]}", flush=True)
    for size in (int(s) for s in args.sizes.split(",")):
        for name, ranking in rankings.items():
            chosen = container(pipe.unet, keys, largest(ranking, size))
            with conesrt.apply(pipe, chosen):
                rows.append(
                    (name, size, subject_loss(pipe.unet, bank, embedding, scheduler), measure([subject]))
                )
            print(f"  {name} {size}: {rows[-1][2]} {rows[-1][3]}", flush=True)
        with conesrt.apply(pipe, random_like(chosen, 0)):
            rows.append(
                ("random", size, subject_loss(pipe.unet, bank, embedding, scheduler), measure([subject]))
            )
    minutes = (time.perf_counter() - started) / 60
    print(
        f"\n# Shut sets for {args.subject}, {split.name} split — {date.today()} — "
        f"{platform.machine()} CPU, {minutes:.0f} min\n"
    )
    print(
        "| set | k | subject loss, t quarters (mean) | fidelity | context | prior kept | prior attributes |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, size, quarters, measured in rows:
        loss = " / ".join(f"{q:.4f}" for q in quarters) + f" ({np.mean(quarters):.4f})"
        cells = " | ".join(
            f"{measured[k]:.3f}" for k in ("fidelity", "alignment", "prior", "prior_attributes")
        )
        print(f"| {name} | {size or '—'} | {loss} | {cells} |")


if __name__ == "__main__":
    main()
