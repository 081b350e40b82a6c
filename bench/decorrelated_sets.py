"""Does the instance loss, posed where random sets' changes are white, rank sets that draw and spare the rest?

    OMP_NUM_THREADS=1 python bench/decorrelated_sets.py --model v2 --subject vnt --split dev \
        --gradient-seed 100 --controls --json docs/decorrelated-sets-vnt-dev-s100.json   # 13 min, one core

*Hypothesis* (docs/method-notes.md, Finding 14). The instance loss's own,
Euclidean metric on the prediction is ruled by the few output directions in
which any K/V change moves the prediction most. The first-order ranking
(``−∂L/∂δ`` at δ = 0, bench/shut_sets.py) therefore rewards the entries with
the largest effect along those directions, and those are the entries that
move every prompt (Finding 8: its 33 best entries cost 14 × a random set's
prior). In the metric ``C^(-1/2)``, C the covariance of the changes that
random 1 % sets make to the base model's predictions (estimated on the base
model alone: no teacher and no subject knowledge beyond the loss's own noisy
inputs), every such direction weighs the same; in the planted bench this
metric doubled what a solver recovers (docs/planted-gauss-newton.md, (g)).
Ranked in it, the entries would be those whose change fits the subject's
images specifically, and the sets would draw the subject with less damage.

*Controls*, all on the same gradient draws: the Euclidean first-order
ranking, and random sets, each at every size of ``--sizes`` — a curve, so a
metric that merely prefers entries of smaller effect shows up as a move along
the Euclidean curve (less fidelity, less damage), not above it.

*The one setting*: C's eigenvalues span many orders, and the residual of the
instance loss holds the noise it cannot fit in every direction, so the
floor under C's eigenvalues (relative to the largest) decides how much the
weakest directions are amplified. ``--floors`` lists the floors to run;
choose on DEV, confirm on TEST.

``--controls`` adds two sets per size that ask whether the damage depends on the
ranking at all (both rankings choose value entries only): k random entries among
the value weights, and the k value entries of largest effect on the instance
prompt, ``|θ_ij| · ||x_j||`` over its tokens (no gradient, no images).

Per set: the protocol's measures (trainer/world/protocol.py), the held-out
subject loss (fixed draws, per timestep quarter), its share of value
entries, its overlap with the Euclidean set of the same size, and the
relative change it makes to the keys and values (bench/preserving_sets.py's
measure, root mean square over the searched tensors) of the instance
prompt's tokens, of its rare token, and of 2,000 held-out world captions'
tokens (the other prompts).
"""

from __future__ import annotations

import argparse
import json
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
from oracle import RARE_POSITION, kv_keys, preserved_covariance, text_features, token_covariance, world_bench  # noqa: E402
from planted_gauss_newton import change_spectrum, whitening  # noqa: E402
from preserving_sets import random_set, relative_changes  # noqa: E402
from shut_sets import container, gradient_rankings, instance_draw, subject_inputs, subject_loss  # noqa: E402

import conesrt  # noqa: E402
from trainer.world import protocol  # noqa: E402
from trainer.xi import ConceptNeuronSearch, largest  # noqa: E402


@torch.no_grad()
def change_covariance(
    search, bank, embedding, scheduler, sets: int = 32, fraction: float = 0.01, batches: int = 16, seed=12345
) -> torch.Tensor:
    """E ΔεΔεᵀ over ``sets`` random sets of ``fraction`` of the searched entries shut × 8 · ``batches`` draws.

    Δε is the change of the base model's prediction (one sample's channels × positions as one vector)
    when the set is shut, exactly (no linearisation), on draws of the instance loss's own inputs: the
    subject's noisy latents and the instance prompt. Nothing here sees a target.
    """
    generator = torch.Generator().manual_seed(seed)
    draws = []
    for _ in range(batches):
        noisy, timesteps, _ = instance_draw(bank, scheduler, 8, generator)
        draws.append((noisy, timesteps, search.reference(noisy, timesteps, embedding.expand(8, -1, -1))))
    total, count = None, 0
    for _ in range(sets):
        for delta in search.delta:
            delta.copy_((torch.rand(delta.shape, generator=generator) < fraction).float())
        for noisy, timesteps, base in draws:
            change = (search(noisy, timesteps, embedding.expand(8, -1, -1)) - base).flatten(1).double()
            total = change.T @ change if total is None else total + change.T @ change
            count += len(change)
    for delta in search.delta:
        delta.zero_()
    return total / count


def effect_sizes(weights: dict[str, torch.Tensor], tokens: torch.Tensor) -> dict[str, np.ndarray]:
    """Per entry, the norm of the change shutting it alone makes to one prompt's keys or values."""
    norms = tokens.double().norm(dim=0)  # per input channel, over the prompt's tokens
    return {key: (w.detach().double().abs() * norms).reshape(-1).numpy() for key, w in weights.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subject", default="vnt")
    parser.add_argument("--split", choices=("dev", "test"), default="dev")
    parser.add_argument("--sizes", default="133,266,532")
    parser.add_argument("--floors", default="1e-6,1e-4,1e-2", help="floors under C's eigenvalues, × largest")
    parser.add_argument("--gradient-seed", type=int, default=100)
    parser.add_argument("--controls", action="store_true", help="random and largest-effect value sets")
    parser.add_argument("--gradient-batches", type=int, default=150, help="batches of 8 draws per ranking")
    args, split, pipe = world_bench(parser)
    started = time.perf_counter()
    scheduler, subject, bank, embedding = subject_inputs(args.model, args.subject)
    keys = kv_keys(pipe.unet)
    weights = {key: pipe.unet.state_dict()[key] for key in keys}
    search = ConceptNeuronSearch(pipe.unet, keys)
    covariance = change_covariance(search, bank, embedding, scheduler)
    report = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "covariance": change_spectrum(torch.linalg.eigvalsh(covariance)),
    }
    print(json.dumps(report["covariance"]), flush=True)
    draws = (bank, embedding, scheduler, args.gradient_batches, 8, args.gradient_seed)
    rankings = {"first order": gradient_rankings(search, *draws, curvature=False)[0]}
    for floor in (float(f) for f in args.floors.split(",") if f):
        metric = whitening(covariance, floor)[0]
        rankings[f"decorrelated, floor {floor:g}"] = gradient_rankings(
            search, *draws, metric, curvature=False
        )[0]
        print(f"  ranked: floor {floor:g} ({(time.perf_counter() - started) / 60:.1f} min)", flush=True)
    del search
    values = {key: w for key, w in weights.items() if key.split(".")[-2] == "to_v"}
    tokens = text_features(pipe, [subject.prompt])[0].detach()
    effect = effect_sizes(values, tokens)
    prompt_sigma, captions_sigma = token_covariance(tokens), preserved_covariance(pipe)
    measure = protocol.Judged(pipe, split)
    rows = report["rows"] = []

    def everywhere(chosen: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A set over some of the searched tensors, as one over all of them (none elsewhere)."""
        return {key: np.zeros(0, np.int64) for key in weights} | chosen

    def score(name: str, size: int, chosen: dict[str, np.ndarray] | None, reference=None) -> None:
        row = {"set": name, "k": size}
        if chosen is None:
            row |= {"loss": subject_loss(pipe.unet, bank, embedding, scheduler), **measure([subject])}
        else:
            row["to_v"] = sum(len(v) for key, v in chosen.items() if key.split(".")[-2] == "to_v") / size
            row["prompt change"] = relative_changes(weights, chosen, prompt_sigma, tokens[RARE_POSITION])[0]
            row["captions change"], row["rare change"] = relative_changes(
                weights, chosen, captions_sigma, tokens[RARE_POSITION]
            )
            if reference is not None:
                row["overlap with first order"] = (
                    sum(len(np.intersect1d(chosen[key], reference[key])) for key in keys) / size
                )
            with conesrt.apply(pipe, container(pipe.unet, keys, chosen)):
                row |= {"loss": subject_loss(pipe.unet, bank, embedding, scheduler), **measure([subject])}
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "prior_per_prompt"}), flush=True)
        if args.json:
            args.json.write_text(json.dumps(report, indent=1))

    score("base model", 0, None)
    rng, other = np.random.default_rng(0), np.random.default_rng(1)  # the random rows, the controls
    for size in (int(s) for s in args.sizes.split(",")):
        first = largest(rankings["first order"], size)
        for name, ranking in rankings.items():
            score(name, size, first if name == "first order" else largest(ranking, size), first)
        score("random", size, random_set(weights, size, rng))
        if args.controls:
            score(
                "random values",
                size,
                everywhere(random_set(values, size, other)),
                first,
            )
            score(
                "largest effect, values",
                size,
                everywhere(largest(effect, size)),
                first,
            )
    minutes = (time.perf_counter() - started) / 60
    print(
        f"\n# Decorrelated rankings for {args.subject}, {split.name} split, gradient seed "
        f"{args.gradient_seed} — {date.today()} — {platform.machine()} CPU, {minutes:.0f} min\n"
    )
    print(
        "| set | k | value share | overlap with first order | prompt / rare / captions K/V change "
        "| subject loss | fidelity | context | prior kept | prior attributes |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        cells = " | ".join(f"{row[k]:.3f}" for k in ("fidelity", "alignment", "prior", "prior_attributes"))
        extra = " | ".join(f"{row[k]:.2f}" if k in row else "—" for k in ("to_v", "overlap with first order"))
        change = " / ".join(
            f"{row[k]:.3f}" if k in row else "—" for k in ("prompt change", "rare change", "captions change")
        )
        loss = np.mean(row["loss"])
        print(f"| {row['set']} | {row['k'] or '—'} | {extra} | {change} | {loss:.4f} | {cells} |")


if __name__ == "__main__":
    main()
