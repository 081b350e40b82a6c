"""One subject at the CLI defaults, on the world's held-out test split: issue 11's acceptance figures.

    python bench/defaults.py --json docs/defaults.json        # about 30 min on one core

For each object subject and each of the test split's training seeds,
``cones train`` runs with nothing but its required arguments (the defaults
of trainer.config.SearchConfig); the container, and a random set of the same
size in the same layers, are scored with trainer.world.protocol's measures on
the TEST split (seeds and prompts no setting was tuned on). Printed beside:
the base model, its described ceiling (the identity spelt out in words), and
the acceptance thresholds: fidelity >= 0.5 x the mean described ceiling,
prior attributes >= 0.9, context >= 0.85 x the base model's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import conesrt  # noqa: E402
from trainer import train_concept, world  # noqa: E402
from trainer.config import SearchConfig  # noqa: E402
from trainer.evaluate import random_like  # noqa: E402
from trainer.world import protocol  # noqa: E402
from trainer.world.judge import subject_scores  # noqa: E402

MEASURES = ("fidelity", "alignment", "prior", "prior_attributes")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", default="sks,vnt,pxr")
    parser.add_argument("--seeds", default=",".join(str(s) for s in protocol.TEST.training_seeds))
    parser.add_argument(
        "--controls", type=int, default=None, help="random controls for the first N seeds (all)"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--model", type=Path, default=world.MODEL_DIR, help="a world model folder (default: the embedded one)"
    )
    parser.add_argument(
        "--split",
        choices=("test", "dev"),
        default="test",
        help="test: the acceptance figures; dev: diagnostics (e.g. of a world checkpoint)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    split = protocol.TEST if args.split == "test" else protocol.DEV
    if args.split == "dev" and args.seeds == parser.get_default("seeds"):
        args.seeds = ",".join(str(s) for s in split.training_seeds)
    pipe = world.load_pipeline(args.model)
    measure = protocol.Judged(pipe, split)
    rows = []
    defaults = {
        k: getattr(SearchConfig, k) for k in ("steps", "lr", "travel", "prior_weight", "preserve_weight")
    }
    print(f"cones train defaults: {defaults}", flush=True)
    with tempfile.TemporaryDirectory() as work:
        for token in args.subjects.split(","):
            subject = world.subject(token)
            base = measure([subject])
            ceiling = float(subject_scores(measure.sample(subject.description), subject).mean())
            rows.append({"subject": token, "method": "base model", **clean(base), "ceiling": ceiling})
            show(rows[-1])
            for number, seed in enumerate(int(s) for s in args.seeds.split(",")):
                result = train_concept(
                    model=args.model,
                    images=subject.image_paths[0].parent,
                    token=subject.token,
                    class_word=subject.class_word,
                    seed=seed,
                    class_images=Path(work) / "prior",
                    out=Path(work) / f"{token}-{seed}.cones",
                    progress=False,
                    device="cpu",
                )
                shut = result.report["shut"]
                with conesrt.apply(pipe, result.container):
                    rows.append(
                        {"subject": token, "method": "Cones", "seed": seed, "shut": shut}
                        | clean(measure([subject]))
                    )
                show(rows[-1])
                if args.controls is None or number < args.controls:
                    with conesrt.apply(pipe, random_like(result.container, seed)):
                        rows.append(
                            {"subject": token, "method": "random", "seed": seed, "shut": shut}
                            | clean(measure([subject]))
                        )
                    show(rows[-1])
                if args.json:
                    write(args.json, rows, defaults, time.perf_counter() - started, args.model, split.name)
    summary(rows, time.perf_counter() - started, split.name)


def clean(measured: dict) -> dict:
    return {k: float(measured[k]) for k in MEASURES if k in measured}


def show(row: dict) -> None:
    cells = " ".join(f"{k} {row[k]:.3f}" for k in (*MEASURES, "ceiling") if k in row)
    print(
        f"  {row['subject']} {row['method']:<10} seed {row.get('seed', '-')} "
        f"shut {row.get('shut', '-')}: {cells}",
        flush=True,
    )


def summary(rows: list[dict], seconds: float, split: str = "test") -> None:
    print(
        f"\n# CLI defaults on the {split} split — {date.today()} — "
        f"{platform.machine()} CPU, {seconds / 60:.0f} min\n"
    )
    print("| subject | method | shut (mean) | fidelity | context | prior kept | prior attributes |")
    print("|---|---|---|---|---|---|---|")
    subjects = list(dict.fromkeys(r["subject"] for r in rows))
    for token in subjects:
        for method in ("base model", "Cones", "random"):
            chosen = [r for r in rows if r["subject"] == token and r["method"] == method]
            if not chosen:
                continue
            shut = f"{np.mean([r['shut'] for r in chosen]):.0f}" if "shut" in chosen[0] else "—"
            cells = [f"{np.mean([r[k] for r in chosen]):.3f}" for k in MEASURES]
            print(f"| {token} | {method} | {shut} | " + " | ".join(cells) + " |")
    bases = {r["subject"]: r for r in rows if r["method"] == "base model"}
    cones = [r for r in rows if r["method"] == "Cones"]
    ceiling = np.mean([b["ceiling"] for b in bases.values()])
    fidelity = np.mean([r["fidelity"] for r in cones])
    attributes = np.mean([r["prior_attributes"] for r in cones])
    context = np.mean([r["alignment"] / max(bases[r["subject"]]["alignment"], 1e-9) for r in cones])
    print(
        f"\nacceptance: fidelity {fidelity:.3f} vs >= {0.5 * ceiling:.3f} "
        f"(0.5 x mean ceiling {ceiling:.3f}); "
        f"prior attributes {attributes:.3f} vs >= 0.9; context {context:.2f} x base vs >= 0.85"
    )


def write(path: Path, rows: list[dict], defaults: dict, seconds: float, model: Path, split: str) -> None:
    payload = {"date": str(date.today()), "machine": platform.machine(), "seconds": seconds}
    payload |= {"model": str(model), "split": split}
    path.write_text(json.dumps(payload | {"defaults": defaults, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
