"""Settings of `cones train`, tried on the world's DEV split (the split for choosing; TEST stays untouched).

    python bench/dev_sweep.py --subjects pxr --configs '[{"prior_weight": 0.3}, {"travel": 1.0}]'

Each config is a set of ``trainer.train_concept`` keywords over the defaults
(the code path of ``cones train``). Each is trained once (DEV's training
seed) and scored with trainer.world.protocol's measures on the DEV split;
``--random`` adds a random set of the same size. About 2–4 min a config on one
core.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import conesrt  # noqa: E402
from trainer import train_concept, world  # noqa: E402
from trainer.evaluate import random_like  # noqa: E402
from trainer.world import protocol  # noqa: E402


def show(tag: str, measured: dict, extra: str = "") -> None:
    cells = " ".join(f"{k} {v:.3f}" for k, v in measured.items() if k != "prior_per_prompt")
    print(f"{tag:50s} {cells} {extra}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", default="pxr")
    parser.add_argument("--configs", required=True, help="a JSON list of train_concept keyword sets")
    parser.add_argument("--random", action="store_true", help="also score a random set of the same size")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    split = protocol.DEV
    pipe = world.load_pipeline()
    measure = protocol.Judged(pipe, split)
    with tempfile.TemporaryDirectory() as work:
        for token in args.subjects.split(","):
            subject = world.subject(token)
            show(f"{token} base model", measure([subject]))
            for config in json.loads(args.configs):
                started = time.perf_counter()
                result = train_concept(
                    model=world.MODEL_DIR,
                    images=subject.image_paths[0].parent,
                    token=subject.token,
                    class_word=subject.class_word,
                    seed=split.training_seeds[0],
                    class_images=Path(work) / "prior",
                    out=Path(work) / f"{token}.cones",
                    overwrite=True,
                    progress=False,
                    device="cpu",
                    **config,
                )
                report = result.report
                extra = f"shut {report['shut']} rho {report['rho']:.3g} {time.perf_counter() - started:.0f} s"
                with conesrt.apply(pipe, result.container):
                    show(f"{token} {json.dumps(config)}", measure([subject]), extra)
                if args.random:
                    with conesrt.apply(pipe, random_like(result.container, 0)):
                        show(f"{token} {json.dumps(config)} [random]", measure([subject]))


if __name__ == "__main__":
    main()
