"""Does a text-space preservation term let a shut set spare the other prompts? Issue 11, on the world.

    python bench/preserving_sets.py --subject pxr --split dev      # 8 min on one core (TEST: 15-20)

*Hypothesis.* The sets the search finds damage every prompt because each
entry is ranked alone: shutting entry (i, j) of a key or value weight changes
output i of *every* token by ``−W_ij h_j``, and no single input channel j is
specific to the rare token (docs/method-notes.md, Findings 3 and 6). A *set*
can still be specific: within one row, the changes of several shut entries
can cancel on the features every other prompt uses (the world's text
features span few directions) while adding up on the rare token's. A ranking
entry by entry cannot see that; a selection that prices the whole set's
change on the other prompts' features can.

*The selection.* With ``b`` the first-order benefit of shutting each entry
alone (``−∂L/∂δ`` at δ = 0, the instance loss on the subject's images, as
bench/shut_sets.py's "first order") and ``Σ = E hhᵀ`` over every token of
2,000 world captions no split evaluates (bench/oracle.py), choose the k
entries ``m`` (0/1 per entry) that minimise

    − Σ b·m / B  +  α · mean over tensors  ||(m ⊙ W) Σ^½||² / ||W Σ^½||²

(B: the benefit of the k best entries alone, so α is unitless: a relative
change of the other prompts' keys and values of 10 % — squared, 0.01 — costs
α % of the first-order set's benefit). Solved as a continuous relaxation
(m in [0, 1], Σm = k, accelerated projected gradient), rounded to its k
largest. α = 0 is the first-order ranking; the controls that could refute
the hypothesis are that ranking, a random set of the same size, and the
first-order ranking cut to fewer entries (``--first-order-sizes``): a smaller
set also spares the other prompts, so a preserving set is only better if it
keeps more of them than a first-order set that draws the subject as much.

Reported per set: its predicted benefit (share of the first-order set's),
the relative change it makes to the other prompts' keys and values (``√``
of the penalty), that of their mean token (the part every prompt carries;
``--penalty shared`` prices only that), that of the instance prompt's rare
token, the held-out subject loss and the protocol's measures
(trainer/world/protocol.py).
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
from oracle import (  # noqa: E402
    RARE_POSITION,
    kv_keys,
    preserved_features,
    text_features,
    token_covariance,
    world_bench,
)
from shut_sets import container, gradient_rankings, subject_inputs, subject_loss  # noqa: E402

import conesrt  # noqa: E402
from trainer.world import protocol  # noqa: E402
from trainer.xi import ConceptNeuronSearch, largest  # noqa: E402


def project_capped_simplex(v: torch.Tensor, k: float) -> torch.Tensor:
    """The point of {0 ≤ m ≤ 1, Σ m = k} nearest to ``v`` (bisection on the shift)."""
    low, high = float(v.min()) - 1.0, float(v.max())
    for _ in range(60):
        shift = 0.5 * (low + high)
        if float((v - shift).clamp(0, 1).sum()) > k:
            low = shift
        else:
            high = shift
    return (v - 0.5 * (low + high)).clamp(0, 1)


def preserving_selection(
    weights: dict[str, torch.Tensor],
    benefit: dict[str, np.ndarray],
    sigma: torch.Tensor,
    k: int,
    alpha: float,
    iterations: int = 400,
) -> dict[str, np.ndarray]:
    """The k entries minimising −benefit + α · the relative change of the preserved keys and values."""
    keys = list(weights)
    first = largest(benefit, k)
    scale = sum(float(benefit[key][first[key]].sum()) for key in keys)
    if alpha == 0:
        return first
    w = [weights[key].double() for key in keys]
    energy = [float(torch.einsum("oi,ij,oj->", x, sigma, x)) for x in w]
    b = torch.cat([torch.as_tensor(benefit[key], dtype=torch.float64) for key in keys]) / scale
    sizes = [x.numel() for x in w]
    # Lipschitz constant of the penalty's gradient: 2α/T · max_t max(w²) λmax(Σ) / E_t.
    top = float(torch.linalg.eigvalsh(sigma)[-1])
    lipschitz = max(
        2 * alpha / len(w) * float((x**2).max()) * top / e for x, e in zip(w, energy, strict=True)
    )

    def gradient(m: torch.Tensor) -> torch.Tensor:
        parts = []
        for x, e, piece in zip(w, energy, torch.split(m, sizes), strict=True):
            mw = piece.view_as(x) * x
            parts.append((2 * alpha / len(w) / e * (mw @ sigma) * x).reshape(-1))
        return torch.cat(parts) - b

    flat = torch.cat(
        [
            torch.as_tensor(np.isin(np.arange(n), first[key]), dtype=torch.float64)
            for key, n in zip(keys, sizes, strict=True)
        ]
    )
    m, previous, t = flat.clone(), flat.clone(), 1.0
    for _ in range(iterations):
        t_next = (1 + (1 + 4 * t * t) ** 0.5) / 2
        y = m + (t - 1) / t_next * (m - previous)
        previous, m = m, project_capped_simplex(y - gradient(y) / lipschitz, k)
        t = t_next
    ranked = {key: piece.numpy() + 1e-9 for key, piece in zip(keys, torch.split(m, sizes), strict=True)}
    return largest(ranked, k)


def random_set(weights: dict[str, torch.Tensor], k: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """k entries drawn uniformly over all searched entries (so per tensor in proportion to its size)."""
    keys, sizes = list(weights), [weights[key].numel() for key in weights]
    flat = np.sort(rng.choice(sum(sizes), k, replace=False))
    starts = np.cumsum([0, *sizes])
    return {
        key: flat[(flat >= lo) & (flat < hi)] - lo
        for key, lo, hi in zip(keys, starts[:-1], starts[1:], strict=True)
    }


def describe_top(weights, benefit, sizes: list[int], features: torch.Tensor) -> list[dict]:
    """Where the first-order ranking's best entries sit: projection, input channels, their shared part.

    A channel's shared part is |mean| / RMS of that text-feature channel over every token of the
    held-out captions: how much of it every prompt carries.
    """
    flat = features.reshape(-1, features.shape[-1])
    shared = (flat.mean(0).abs() / flat.pow(2).mean(0).sqrt()).numpy()
    rows = []
    for size in sizes:
        chosen = largest(benefit, size)
        values = sum(len(v) for key, v in chosen.items() if key.split(".")[-2] == "to_v")
        columns = np.concatenate([v % weights[key].shape[1] for key, v in chosen.items()])
        rows.append(
            {
                "k": size,
                "to_v": values,
                "input_channels": int(len(np.unique(columns))),
                "shared_part_median": float(np.median(shared[columns])),
                "shared_part_all_channels": float(np.median(shared)),
            }
        )
    return rows


def relative_changes(weights, chosen, sigma, rare: torch.Tensor) -> tuple[float, float]:
    """√ mean over tensors of the preserved change², and the rare token's relative change."""
    preserved, own = [], []
    for key, x in weights.items():
        x = x.double()
        mask = torch.zeros(x.numel(), dtype=torch.float64)
        mask[torch.as_tensor(chosen[key], dtype=torch.long)] = 1
        mw = mask.view_as(x) * x
        preserved.append(
            float(torch.einsum("oi,ij,oj->", mw, sigma, mw) / torch.einsum("oi,ij,oj->", x, sigma, x))
        )
        own.append(float((mw @ rare).norm() ** 2 / (x @ rare).norm() ** 2))
    return float(np.mean(preserved)) ** 0.5, float(np.mean(own)) ** 0.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subject", default="pxr")
    parser.add_argument("--split", choices=("dev", "test"), default="dev")
    parser.add_argument("--size", type=int, default=532)
    parser.add_argument("--alphas", default="0,1,10,100")
    parser.add_argument(
        "--first-order-sizes", default="", help="comma-separated smaller k for first-order (α = 0) rows"
    )
    parser.add_argument(
        "--projections",
        choices=("to_k,to_v", "to_k", "to_v"),
        default="to_k,to_v",
        help="select (and draw random sets) among these projections only",
    )
    parser.add_argument(
        "--penalty",
        choices=("tokens", "shared"),
        default="tokens",
        help="price the change of every held-out token's K/V (Σ = E hhᵀ), or of their mean only (μμᵀ)",
    )
    parser.add_argument("--gradient-seed", type=int, default=1)
    args, split, pipe = world_bench(parser)
    started = time.perf_counter()
    scheduler, subject, bank, embedding = subject_inputs(args.model, args.subject)
    keys = [key for key in kv_keys(pipe.unet) if key.split(".")[-2] in args.projections.split(",")]
    weights = {key: pipe.unet.state_dict()[key].detach().float().clone() for key in keys}
    search = ConceptNeuronSearch(pipe.unet, keys)
    benefit, _ = gradient_rankings(search, bank, embedding, scheduler, 150, 8, seed=args.gradient_seed)
    del search
    held_out = preserved_features(pipe)
    sigma = token_covariance(held_out)
    shared = held_out.reshape(-1, held_out.shape[-1]).mean(0, keepdim=True)
    shared_sigma = shared.T @ shared  # the mean token's outer product: what every prompt carries
    priced = sigma if args.penalty == "tokens" else shared_sigma
    first = largest(benefit, args.size)
    total = sum(float(benefit[key][first[key]].sum()) for key in keys)  # the first-order set's benefit
    placement = describe_top(weights, benefit, [33, 133, args.size], held_out)
    for row in placement:
        print(json.dumps(row), flush=True)
    rare = text_features(pipe, [subject.prompt])[0, RARE_POSITION]
    measure = protocol.Judged(pipe, split)
    rows = []

    def score(name: str, chosen: dict[str, np.ndarray] | None) -> None:
        row = {"set": name, "k": 0}
        if chosen is None:
            row |= {"loss": subject_loss(pipe.unet, bank, embedding, scheduler), **measure([subject])}
        else:
            built = container(pipe.unet, keys, chosen)
            row["k"] = int(sum(len(v) for v in chosen.values()))
            row["benefit"] = sum(float(benefit[key][chosen[key]].sum()) for key in keys) / total
            row["preserved_change"], row["rare_change"] = relative_changes(weights, chosen, sigma, rare)
            row["shared_change"] = relative_changes(weights, chosen, shared_sigma, rare)[0]
            with conesrt.apply(pipe, built):
                row |= {"loss": subject_loss(pipe.unet, bank, embedding, scheduler), **measure([subject])}
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "prior_per_prompt"}), flush=True)

    score("base model", None)
    last = None
    for alpha in (float(a) for a in args.alphas.split(",")):
        last = preserving_selection(weights, benefit, priced, args.size, alpha)
        score(f"α = {alpha:g}", last)
    rng = np.random.default_rng(0)
    score(
        "random",
        {key: np.sort(rng.choice(weights[key].numel(), len(last[key]), replace=False)) for key in keys},
    )
    for size in (int(s) for s in args.first_order_sizes.split(",") if s):
        score(f"α = 0, k = {size}", largest(benefit, size))
        score(f"random, k = {size}", random_set(weights, size, rng))
    minutes = (time.perf_counter() - started) / 60
    print(
        f"\n# Text-space-preserving shut sets for {args.subject}, {split.name} split, k = {args.size} — "
        f"{date.today()} — {platform.machine()} CPU, {minutes:.0f} min\n"
    )
    columns = "benefit | preserved K/V change | shared change | rare-token change | subject loss"
    print(f"| set | {columns} | fidelity | context | prior kept | prior attributes |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        cells = " | ".join(f"{row[k]:.3f}" for k in ("fidelity", "alignment", "prior", "prior_attributes"))
        extra = " | ".join(
            f"{row[k]:.3f}" if k in row else "—"
            for k in ("benefit", "preserved_change", "shared_change", "rare_change")
        )
        print(f"| {row['set']} | {extra} | {np.mean(row['loss']):.4f} | {cells} |")
    print("\n| first-order best k | in to_v | input channels | their shared part (median) | all channels' |")
    print("|---|---|---|---|---|")
    for row in placement:
        print(
            f"| {row['k']} | {row['to_v']} | {row['input_channels']} | {row['shared_part_median']:.2f} | "
            f"{row['shared_part_all_channels']:.2f} |"
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows, "placement": placement},
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
