"""How far ξ travels: the paper's fixed step against the calibrated one, on the world and on SD 1.5's UNet.

    python bench/travel.py                 # about 15 min on one core (the SD-size UNet dominates)
    python bench/travel.py --skip-sd       # the world only, a minute

A2 ranks entries by how far ξ moved; shutting moves ξ all the way to 0, so
a search whose ξ never leaves the neighbourhood of 1 ranks first-order
saliency only. The right step depends on the model's gradient scale. For
each model this bench runs K steps of projected plain descent from ξ = 1
with (a) the paper's ρ = 2e-5 (B.4) and (b) the step ``cones train``
calibrates (trainer.search.calibrated_step: the 99th percentile of the
first batches' mean |∂L/∂ξ| travels ``--travel`` in K steps), and prints
the step and the travel 1 − ξ of the 1 % of entries that moved most
(median and maximum) and of all entries (share that moved at all).

Models: the bundled world (its own subject images), and a UNet with SD
1.5's configuration (860 M parameters, 32 cross-attention K/V tensors,
19,169,280 searched entries) at random initialisation, on random latents
and text features at 32×32 latents (a 256-pixel image) to keep a CPU step
in seconds. Random weights are not SD's, but the gradient scale a step must
adapt to is the point, and it is what a fixed ρ cannot follow.
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

import numpy as np  # noqa: E402
import torch  # noqa: E402

from trainer import world  # noqa: E402
from trainer.config import SearchConfig  # noqa: E402
from trainer.data import LatentBank  # noqa: E402
from trainer.objective import Subject  # noqa: E402
from trainer.runs import make_accelerator  # noqa: E402
from trainer.search import SearchSettings, search  # noqa: E402

PAPER_RHO = 2e-5  # B.4, one subject


def kv_keys(unet) -> list[str]:
    return [k for k in unet.state_dict() if ".attn2.to_k.weight" in k or ".attn2.to_v.weight" in k]


def world_case():
    from trainer.base_model import load_base_model
    from trainer.config import image_files
    from trainer.data import encode_images, encode_prompt

    base = load_base_model(world.MODEL_DIR, torch.device("cpu"), torch.float32)
    star = world.subject("pxr")
    subject = Subject(
        "pxr",
        encode_images(base, image_files(star.image_paths[0].parent), world.IMAGE_SIZE, True),
        encode_prompt(base, star.prompt),
        prior_weight=0.0,
    )
    return "world (3.2 M-parameter UNet)", base.unet, subject, base.noise_scheduler


def sd15_case(latent_size: int):
    from diffusers import DDPMScheduler, UNet2DConditionModel

    torch.manual_seed(0)
    # SD 1.5's UNet config (diffusers' v1-5 unet/config.json), random weights.
    unet = UNet2DConditionModel(
        sample_size=latent_size,
        cross_attention_dim=768,
        block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2,
        attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    ).requires_grad_(False)
    generator = torch.Generator().manual_seed(1)
    latents = torch.randn(4, 4, latent_size, latent_size, generator=generator)
    text = torch.randn(1, 77, 768, generator=generator)
    subject = Subject("random", LatentBank(latents, torch.zeros_like(latents)), text, prior_weight=0.0)
    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    return "SD 1.5 UNet config, random weights (860 M)", unet, subject, scheduler


def travel_of(deltas: dict[str, np.ndarray]) -> dict[str, float]:
    moved = np.concatenate(list(deltas.values()))
    top = np.sort(moved)[-max(1, moved.size // 100) :]
    return {
        "top 1 % median": float(np.median(top)),
        "max": float(moved.max()),
        "share moved": float((moved > 0).mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="K for the world")
    parser.add_argument("--sd-steps", type=int, default=5, help="K for the SD-size UNet")
    parser.add_argument(
        "--travel",
        type=float,
        default=SearchConfig.travel,
        help="the calibrated step's target (cones train's)",
    )
    parser.add_argument("--sd-latent", type=int, default=32)
    parser.add_argument("--skip-sd", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cases = [(world_case(), args.steps)]
    if not args.skip_sd:
        cases.append((sd15_case(args.sd_latent), args.sd_steps))
    print(
        f"\n# Travel of xi — {date.today()} — {platform.machine()}, CPU, {args.threads} thread(s), "
        f"calibrated to travel {args.travel:g}\n"
    )
    columns = "1 - xi, top 1 % (median) | max | share moved | s/step"
    print(f"| model | searched entries | K | step | rho | {columns} |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (name, unet, subject, scheduler), steps in cases:
        keys = kv_keys(unet)
        entries = sum(unet.state_dict()[k].numel() for k in keys)
        for label, rho in (("paper, fixed", PAPER_RHO), ("calibrated", None)):
            settings = SearchSettings(
                steps=steps,
                lr=rho,
                travel=args.travel,
                tau=None,
                sparsity=0.01,
                batch_size=1,
                seed=0,
                progress=False,
            )
            started = time.perf_counter()
            found = search(unet, keys, [subject], scheduler, settings, make_accelerator("cpu", "no"))
            seconds = (time.perf_counter() - started) / steps
            moved = travel_of(found.deltas)
            print(
                f"| {name} | {entries:,} | {steps} | {label} | {found.log.rho:.3g} | "
                f"{moved['top 1 % median']:.3g} | {moved['max']:.3g} | {moved['share moved']:.2f} | "
                f"{seconds:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
