"""What any edit of the cross-attention K/V weights can do in the small world: a dense oracle for Cones.

    python bench/oracle.py --split test --json docs/oracle.json      # about 20 min on one core

Cones changes only the key and value projections of the cross-attention
layers, and only by shutting entries. This bench asks what the best *dense*
edit of the same weights achieves, so that Cones can be judged against it
(issue 11): if no K/V edit brings the subject out while keeping the rest of
the model, the world is the bottleneck, not the search.

The edit is TIME's closed form (Orgad et al., 2023, "Editing Implicit
Assumptions in Text-to-Image Diffusion Models"), with the identity the
subject images show as its target: for every weight ``W`` of every searched
layer,

    W' = argmin  Σ_t ||W' c_t − W d_t||² / m  +  λ · E_h ||W' h − W h||²

where ``c_t`` are the text features of the instance prompt ("a photo of a
pxr circle") from the rare token on, ``d_t`` those of the description at the
same place ("a photo of a purple checkered circle", shifted by the extra
words), and ``h`` runs over every token of 2,000 world captions that no
split evaluates (trainer.world.protocol.EVALUATED_PROMPTS). λ trades the
subject (λ → 0: the instance prompt's keys and values become the
description's) against the rest of the model (λ → ∞: no change). The
solution is ``W' = W (D Cᵀ/m + λ Σ) (C Cᵀ/m + λ Σ)⁻¹`` with ``Σ = E hhᵀ``.

Scored with trainer.world.protocol's measures on the chosen split, beside
the base model and the base model told the identity in words.
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

import numpy as np  # noqa: E402
import torch  # noqa: E402

from trainer import world  # noqa: E402
from trainer.world import protocol  # noqa: E402
from trainer.world.judge import subject_scores  # noqa: E402
from trainer.world.scenes import caption, sample_scene  # noqa: E402

RARE_POSITION = 5  # "<bos> a photo of a" come first: the rare token is the sixth token


@torch.no_grad()
def text_features(pipe, prompts: list[str]) -> torch.Tensor:
    """The text encoder's last hidden state (prompts, tokens, width), as the UNet reads it."""
    ids = pipe.tokenizer(
        prompts, padding="max_length", max_length=pipe.tokenizer.model_max_length, return_tensors="pt"
    ).input_ids
    return torch.cat([pipe.text_encoder(ids[i : i + 256])[0] for i in range(0, len(ids), 256)]).double()


def preserved_captions(count: int, seed: int) -> list[str]:
    """World captions as pretraining draws them, none of which a split evaluates."""
    rng = np.random.default_rng(seed)
    found: list[str] = []
    while len(found) < count:
        text = caption(sample_scene(rng), rng)
        if text not in protocol.EVALUATED_PROMPTS:
            found.append(text)
    return found


def kv_keys(unet) -> list[str]:
    return [k for k in unet.state_dict() if ".attn2.to_k." in k or ".attn2.to_v." in k]


def aligned_features(pipe, subject) -> tuple[torch.Tensor, torch.Tensor]:
    """The instance prompt's text features from the rare token on, and the description's at the same place."""
    length = pipe.tokenizer.model_max_length
    instance = text_features(pipe, [subject.prompt])[0]
    described = text_features(pipe, [subject.description])[0]
    shift = len(pipe.tokenizer(subject.description).input_ids) - len(pipe.tokenizer(subject.prompt).input_ids)
    sources = list(range(RARE_POSITION, length))
    return instance[sources], described[[min(p + shift, length - 1) for p in sources]]


def preserved_features(pipe, count: int = 2000) -> torch.Tensor:
    """The text features of ``count`` world captions that no split evaluates (captions, tokens, width)."""
    return text_features(pipe, preserved_captions(count, seed=99))


def token_covariance(features: torch.Tensor) -> torch.Tensor:
    """Σ = E hhᵀ over every token of ``features``."""
    flat = features.reshape(-1, features.shape[-1])
    return flat.T @ flat / flat.shape[0]


def preserved_covariance(pipe, count: int = 2000) -> torch.Tensor:
    """Σ = E hhᵀ over every token of ``count`` world captions that no split evaluates."""
    return token_covariance(preserved_features(pipe, count))


def time_edit(pipe, subject, sigma: torch.Tensor, lam: float) -> dict[str, torch.Tensor]:
    """TIME's closed-form change of every searched weight, for one subject and one λ."""
    c, d = aligned_features(pipe, subject)
    m = len(c)
    inverse = torch.linalg.inv(c.T @ c / m + lam * sigma)
    weights = pipe.unet.state_dict()
    changes = {}
    for key in kv_keys(pipe.unet):
        w = weights[key].double()
        changes[key] = ((w @ (d.T @ c / m) + lam * w @ sigma) @ inverse - w).to(weights[key].dtype)
    return changes


class Edited:
    """Adds changes to the UNet's weights for a ``with`` block, then restores them exactly."""

    def __init__(self, unet, changes: dict[str, torch.Tensor]):
        self.unet, self.changes = unet, changes

    def __enter__(self):
        weights = self.unet.state_dict()
        self.saved = {key: weights[key].clone() for key in self.changes}
        for key, change in self.changes.items():
            weights[key].add_(change)
        return self

    def __exit__(self, *exc):
        weights = self.unet.state_dict()
        for key, value in self.saved.items():
            weights[key].copy_(value)


def world_bench(parser: argparse.ArgumentParser):
    """Adds --model, --threads and --json, parses, and loads the world: (args, split, pipeline)."""
    parser.add_argument("--model", type=Path, default=world.MODEL_DIR)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    split = protocol.DEV if args.split == "dev" else protocol.TEST
    return args, split, world.load_pipeline(args.model)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", choices=("dev", "test"), default="test")
    parser.add_argument("--subjects", default="sks,vnt,pxr,zwx")
    parser.add_argument("--lambdas", default="0.01,0.1,1,10,100,1000")
    parser.add_argument("--captions", type=int, default=2000, help="preserved world captions")
    args, split, pipe = world_bench(parser)
    started = time.perf_counter()
    sigma = preserved_covariance(pipe, args.captions)
    measure = protocol.Judged(pipe, split)
    rows = []

    def record(subject, method: str, lam: float | None, measured: dict) -> None:
        row = {"subject": subject.token, "method": method, "lambda": lam}
        row |= {k: v for k, v in measured.items() if k != "prior_per_prompt"}
        rows.append(row)
        cells = " ".join(f"{k} {v:.3f}" for k, v in row.items() if isinstance(v, float) and k != "lambda")
        print(f"  {subject.token} {method:<16} λ={lam}  {cells}", flush=True)

    for token in args.subjects.split(","):
        subject = world.subject(token)
        record(subject, "base model", None, measure([subject]))
        described = float(subject_scores(measure.sample(subject.description), subject).mean())
        record(subject, "base, described", None, {"fidelity": described})
        for lam in (float(x) for x in args.lambdas.split(",")):
            changes = time_edit(pipe, subject, sigma, lam)
            relative = np.mean(
                [
                    float(
                        ((dw.double() @ sigma) * dw.double()).sum()
                        / ((w.double() @ sigma) * w.double()).sum()
                    )
                    for dw, w in ((changes[k], pipe.unet.state_dict()[k]) for k in changes)
                ]
            )
            with Edited(pipe.unet, changes):
                measured = measure([subject])
            record(subject, "TIME oracle", lam, measured | {"preserved_change": relative})
    report(rows, args, split, time.perf_counter() - started)


def report(rows: list[dict], args, split, seconds: float) -> None:
    print(
        f"\n# Dense K/V oracle — {date.today()} — {platform.machine()}, CPU, {seconds / 60:.0f} min, "
        f"{split.name} split ({len(split.sampling_seeds)} images per prompt)\n"
    )
    columns = "fidelity | context | prior kept | prior attributes | change on preserved tokens"
    print(f"| subject | edit | λ | {columns} |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        cells = [
            f"{r[k]:.3f}" if isinstance(r.get(k), float) else "—"
            for k in ("fidelity", "alignment", "prior", "prior_attributes", "preserved_change")
        ]
        lam = "—" if r["lambda"] is None else f"{r['lambda']:g}"
        print(f"| {r['subject']} | {r['method']} | {lam} | " + " | ".join(cells) + " |")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "rows": rows,
                    "split": split.name,
                    "seconds": seconds,
                    "date": str(date.today()),
                    "model": str(args.model),
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
