"""How the xi-descent step rho and the prior weight lambda decide what shutting does (small world).

    python bench/step_size.py                  # about 15 minutes on a laptop CPU
    python bench/step_size.py --subject vnt --lrs 2e-5,30 --sparsities 0.005

Algorithm A2 ranks entries by how far xi moved. With a small rho xi stays near
1 and the ranking is first-order saliency (theta * dL/dtheta), although
shutting moves xi all the way to 0; with a larger rho xi travels toward 0 and
the gradient is sampled along that path (the paper's eq. 10 and A.2). This
script trains one subject for each (rho, lambda), shuts the top entries at
several sparsities, and measures, against random sets of the same size in the
same layers:

- held-out implanting loss, split into the subject's part and the prior's;
- subject score: the world's judge on images for "a photo of a V* class";
- prior kept: the share of images for prompts without the token whose judged
  attributes equal the base model's for the same seed.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from contextlib import nullcontext
from datetime import date
from pathlib import Path

os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import conesrt  # noqa: E402
from trainer import world  # noqa: E402
from trainer.base_model import load_base_model  # noqa: E402
from trainer.config import TrainConfig, select_layers, unet_keys  # noqa: E402
from trainer.evaluate import loss_with, random_like  # noqa: E402
from trainer.loop import run_descent  # noqa: E402
from trainer.train import build_container, make_accelerator, prepare_subject  # noqa: E402
from trainer.world.judge import judge, subject_scores  # noqa: E402
from trainer.xi import ConceptNeuronSearch, neurons_by_sparsity  # noqa: E402

PRIOR_PROMPTS = ("a photo of a {word}", "a photo of a red heart", "a blue circle on a yellow background")


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subject", default="sks")
    parser.add_argument("--lrs", type=floats, default=floats("2e-5,1,10,30,100"))
    parser.add_argument("--lambdas", type=floats, default=floats("1,0.3"))
    parser.add_argument("--sparsities", type=floats, default=floats("0.002,0.005,0.01,0.02"))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--images", type=int, default=8, help="images per prompt")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--model", type=Path, default=world.MODEL_DIR, help="the world model folder")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    subject = world.subject(args.subject)
    model = args.model
    folder = Path(tempfile.mkdtemp(prefix="cones-step-size-"))
    accelerator = make_accelerator("cpu", "no")
    base = load_base_model(model, torch.device("cpu"), torch.float32)
    config = TrainConfig(
        model=model,
        images=subject.image_paths[0].parent,
        resolution=world.IMAGE_SIZE,
        num_class_images=32,
        class_image_steps=world.NUM_INFERENCE_STEPS,
        seed=0,
        progress=False,
    )
    prepared = prepare_subject(
        base, subject.token, config.images, subject.prompt, subject.class_prompt, config, folder / "prior"
    )
    keys = select_layers(unet_keys(model), "cross")
    pipe = world.load_pipeline(model)

    def sample(prompt: str) -> list:
        return world.sample(pipe, prompt, args.images)

    priors = [p.format(word=subject.class_word) for p in PRIOR_PROMPTS]
    base_priors = {p: judge(sample(p)) for p in priors}

    def measure(container) -> dict[str, float]:
        evaluate = dict(subjects=[prepared], scheduler=base.noise_scheduler, seed=999, batches=16, parts=True)
        with conesrt.apply(base.unet, container) if container is not None else nullcontext():
            losses = loss_with(base.unet, None, **evaluate)
        with conesrt.apply(pipe, container) if container is not None else nullcontext():
            score = float(subject_scores(sample(subject.prompt), subject).mean())
            kept = [
                (a.objects, a.background_colour) == (b.objects, b.background_colour)
                for p in priors
                for a, b in zip(base_priors[p], judge(sample(p)), strict=True)
            ]
        name = subject.token
        return {
            "subject_loss": losses[f"{name}/instance"],
            "prior_loss": losses[f"{name}/prior"],
            "subject_score": score,
            "prior_kept": float(np.mean(kept)),
        }

    rows = [("base model", "", "", measure(None))]
    described = float(subject_scores(sample(subject.description), subject).mean())
    for lam in args.lambdas:
        for lr in args.lrs:
            prepared.prior_weight = lam
            search = ConceptNeuronSearch(base.unet, keys)
            run_descent(
                search,
                [prepared],
                base.noise_scheduler,
                steps=args.steps,
                lr=lr,
                batch_size=2,
                seed=0,
                accelerator=accelerator,
                progress=False,
            )
            prepared.prior_weight = 1.0
            deltas = search.deltas()
            travel = max(float(d.max()) for d in deltas.values())
            for sparsity in args.sparsities:
                neurons, _ = neurons_by_sparsity(deltas, sparsity)
                container = build_container(base, keys, subject.token, neurons, {})
                setting = f"rho {lr:g}, lambda {lam:g}"
                rows.append((setting, f"{100 * sparsity:g} %", f"{travel:.2g}", measure(container)))
                rows.append(
                    (f"{setting}: random", f"{100 * sparsity:g} %", "", measure(random_like(container, 0)))
                )
                print(f"  {rows[-2][0]} {rows[-2][1]}: {rows[-2][3]}  | random: {rows[-1][3]}", flush=True)

    print(
        f"\n# xi-descent step and prior weight — {date.today()} — {platform.machine()}, "
        f"{args.threads} thread(s), {(time.perf_counter() - started) / 60:.0f} min\n"
    )
    print(
        f"Subject {subject.name} ({subject.prompt!r}); {args.steps} steps, batch 2 + 2 prior; "
        f"{args.images} images per prompt. The base model's subject score for the described identity "
        f"({subject.description!r}): "
        f"{described:.3f}.\n"
    )
    print("| setting | sparsity | max 1 - xi | subject loss | prior loss | subject score | prior kept |")
    print("|---|---|---|---|---|---|---|")
    for setting, sparsity, travel, m in rows:
        print(
            f"| {setting} | {sparsity} | {travel} | {m['subject_loss']:.4f} | {m['prior_loss']:.4f} | "
            f"{m['subject_score']:.3f} | {m['prior_kept']:.2f} |"
        )


if __name__ == "__main__":
    main()
