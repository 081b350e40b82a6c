"""Is it sparsity or shutting that keeps Cones' sets below the dense oracle? Issue 11, on the world.

    python bench/sparse_oracle.py --model v2 --split dev --subjects vnt,pxr     # 20 min on one core
    python bench/sparse_oracle.py --model v2 --edits "k fitted values,random" --sizes 532,2129,8516,34064

*Hypothesis.* On the v2 world the dense TIME oracle (bench/oracle.py, λ = 100)
draws about twice what Cones' shut sets draw at the same prior (Finding 9).
Two things separate a Cones set from it: the set is *sparse* (k of the K/V
entries) and its entries are *shut* (set to zero, not to a chosen value).
This bench takes them apart:

- **oracle, top k values**: the oracle's change ΔW kept on its k most
  important entries (|ΔW_ij| · √M_jj, M = CCᵀ/m + λΣ the curvature of TIME's
  objective: the cost to second order of dropping that entry's change alone),
  zero elsewhere. The dense change's entries cancel each other within a
  row, so cutting it raises J far above the unedited model's
  (docs/sparse-oracle.md): a naive sparsification, kept as the first row
  measured.
- **oracle, k fitted values** (added after the first DEV rows showed the
  truncated change drawing nothing and costing prior): the k entries whose
  change alone most lowers TIME's objective (g_ij² / M_jj, g = −½ its
  gradient at ΔW = 0), with their values then fitted jointly per row
  (ΔW_i,S = g_i,S M_SS⁻¹, the objective's minimum on that support). The
  best a sparse K/V edit of free values does here, up to the choice of
  support. If it draws like the dense oracle, sparsity is not the bound.
- **oracle, top k shut**: the k entries whose shutting alone most lowers
  TIME's objective (bench/shut_sets.py's sparse oracle, same λ), shut. The
  gap to the row above is what shutting costs against free values.
- **random, k shut**: k entries drawn uniformly, shut (the chance level of
  damage).

Every row also gives TIME's objective J on its edited weights, and the share
of the dense oracle's reduction of J that it achieves (no images needed).

All of them know the identity in words (the description's keys and values),
so they bound what a search could find; Cones' own sets at the same sizes
are in Findings 7–9.
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
from oracle import Edited, aligned_features, kv_keys, preserved_covariance, time_edit, world_bench  # noqa: E402
from preserving_sets import random_set  # noqa: E402
from shut_sets import container, sparse_oracle  # noqa: E402

import conesrt  # noqa: E402
from trainer import world  # noqa: E402
from trainer.world import protocol  # noqa: E402
from trainer.xi import largest  # noqa: E402


def top_changes(pipe, subject, changes, sigma, lam: float, k: int) -> dict[str, torch.Tensor]:
    """The oracle's change kept on its k entries of largest |ΔW_ij| · √M_jj, zero elsewhere."""
    c, _ = aligned_features(pipe, subject)
    scale = torch.diag(c.T @ c / len(c) + lam * sigma).sqrt()
    importance = {
        key: (dw.double().abs() * scale[None, :]).reshape(-1).numpy() for key, dw in changes.items()
    }
    kept = largest(importance, k)
    sparse = {}
    for key, dw in changes.items():
        mask = torch.zeros(dw.numel(), dtype=dw.dtype)
        mask[torch.as_tensor(kept[key], dtype=torch.long)] = 1
        sparse[key] = dw * mask.view_as(dw)
    return sparse


def fitted_changes(pipe, subject, sigma, lam: float, k: int) -> dict[str, torch.Tensor]:
    """TIME's objective minimised over the k entries that lower it most alone, every other entry unchanged."""
    c, d = aligned_features(pipe, subject)
    curvature = c.T @ c / len(c) + lam * sigma
    weights = pipe.unet.state_dict()
    pull = {key: weights[key].double() @ (d - c).T @ c / len(c) for key in kv_keys(pipe.unet)}
    gain = {key: (g * g / torch.diag(curvature)[None, :]).reshape(-1).numpy() for key, g in pull.items()}
    changes = {}
    for key, support in largest(gain, k).items():
        g = pull[key]
        change = torch.zeros_like(g)
        rows, columns = np.divmod(support, g.shape[1])
        for row in np.unique(rows):
            s = torch.as_tensor(columns[rows == row])
            change[row, s] = torch.linalg.solve(curvature[s][:, s], g[row, s])
        changes[key] = change.to(weights[key].dtype)
    return changes


def time_objective(pipe, subject, sigma, lam: float, base: dict[str, torch.Tensor]) -> float:
    """TIME's objective at the UNet's current weights W: Σ_layers ‖W C − W₀ D‖²/m + λ tr(ΔW Σ ΔWᵀ)."""
    c, d = (x.double() for x in aligned_features(pipe, subject))
    weights = pipe.unet.state_dict()
    total = 0.0
    for key, w0 in base.items():
        w0 = w0.double()
        change = weights[key].double() - w0
        total += ((w0 + change) @ c.T - w0 @ d.T).square().sum().item() / len(c)
        total += lam * torch.einsum("ij,jk,ik->", change, sigma.double(), change).item()
    return total


EDITS = ("base", "dense", "top k values", "k fitted values", "top k shut", "random")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", choices=("dev", "test"), default="dev")
    parser.add_argument("--subjects", default="vnt,pxr")
    parser.add_argument("--lam", type=float, default=100.0, help="TIME's λ (Finding 9's)")
    parser.add_argument("--sizes", default="532,2129", help="k, comma-separated")
    parser.add_argument("--edits", default=",".join(EDITS), help=f"which rows, of {', '.join(EDITS)}")
    args, split, pipe = world_bench(parser)
    started = time.perf_counter()
    sigma = preserved_covariance(pipe)
    keys = kv_keys(pipe.unet)
    weights = {key: pipe.unet.state_dict()[key].clone() for key in keys}
    total = sum(w.numel() for w in weights.values())
    sizes = [int(s) for s in args.sizes.split(",")]
    measure = protocol.Judged(pipe, split)
    rng = np.random.default_rng(0)
    edits = set(args.edits.split(","))
    if edits - set(EDITS):
        parser.error(
            f"--edits: unknown {', '.join(sorted(edits - set(EDITS)))}; choose from {', '.join(EDITS)}"
        )
    rows = []
    unedited, time_edit_objective = {}, {}  # J₀ and J_dense per subject

    def record(subject, name: str, k: int | None, measured: dict) -> None:
        objective = time_objective(pipe, subject, sigma, args.lam, weights)
        row = {"subject": subject.token, "edit": name, "k": k, "objective": objective}
        row |= {key: v for key, v in measured.items() if key != "prior_per_prompt"}
        rows.append(row)
        print(json.dumps(row), flush=True)

    for token in args.subjects.split(","):
        subject = world.subject(token)
        if "base" in edits:
            record(subject, "base model", None, measure([subject]))
        unedited[token] = time_objective(pipe, subject, sigma, args.lam, weights)
        changes = time_edit(pipe, subject, sigma, args.lam)
        with Edited(pipe.unet, changes):
            time_edit_objective[token] = time_objective(pipe, subject, sigma, args.lam, weights)
            if "dense" in edits:
                record(subject, "dense oracle", total, measure([subject]))
        shut_benefit = sparse_oracle(pipe, subject, keys, args.lam)
        for k in sizes:
            if "top k values" in edits:
                with Edited(pipe.unet, top_changes(pipe, subject, changes, sigma, args.lam, k)):
                    record(subject, "oracle, top k values", k, measure([subject]))
            if "k fitted values" in edits:
                with Edited(pipe.unet, fitted_changes(pipe, subject, sigma, args.lam, k)):
                    record(subject, "oracle, k fitted values", k, measure([subject]))
            if "top k shut" in edits:
                with conesrt.apply(pipe, container(pipe.unet, keys, largest(shut_benefit, k))):
                    record(subject, "oracle, top k shut", k, measure([subject]))
            random = random_set(weights, k, rng)  # drawn whether measured or not: the same sets in every run
            if "random" in edits:
                with conesrt.apply(pipe, container(pipe.unet, keys, random)):
                    record(subject, "random, k shut", k, measure([subject]))
    minutes = (time.perf_counter() - started) / 60
    print(
        f"\n# Sparse vs shut oracle, λ = {args.lam:g}, {split.name} split, {args.model} — {date.today()} — "
        f"{platform.machine()} CPU, {minutes:.0f} min ({total:,} K/V entries)\n"
    )
    print(
        "J: TIME's objective on the edited weights; share: (J₀ − J) / (J₀ − J_dense),\n"
        "the part of the dense oracle's reduction of it that the edit achieves.\n"
    )
    print("| subject | edit | k | J | share | fidelity | context | prior kept | prior attributes |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        start, dense = unedited[r["subject"]], time_edit_objective[r["subject"]]
        share = (start - r["objective"]) / (start - dense)
        cells = " | ".join(f"{r[key]:.3f}" for key in ("fidelity", "alignment", "prior", "prior_attributes"))
        k = "—" if r["k"] is None else f"{r['k']:,}"
        print(f"| {r['subject']} | {r['edit']} | {k} | {r['objective']:.1f} | {share:.3f} | {cells} |")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "args": {k: str(v) for k, v in vars(args).items()},
                    "unedited_objective": unedited,
                    "dense_objective": time_edit_objective,
                    "rows": rows,
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
