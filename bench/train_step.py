"""Time per step and peak memory: xi-descent against a plain fine-tune of the same weights (issue #4).

    python bench/train_step.py                                   # CPU, a mid-size UNet (92 M params), 256 px
    python bench/train_step.py --size sd1 --device cuda --resolution 512 --mixed-precision bf16

Both variants compute the same loss (trainer.objective, prior preservation on)
on the same model, batch and resolution. "xi-descent" trains delta = 1 - xi
over every attn2 to_k/to_v entry (trainer.xi); "fine-tune" trains those
weights themselves with AdamW, as Custom Diffusion does, everything else
frozen. Each variant runs in its own process so that peak memory is its own:
the CPU's peak resident set, or CUDA's allocator peak. A third process builds
the model and data without training, for the baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SIZES = {
    # SD 1.x's layout at reduced width: 4 resolutions, cross-attention at 3, 768-d text.
    "mid": dict(block_out_channels=(128, 256, 384, 384), layers_per_block=2, attention_head_dim=8),
    "sd1": dict(block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, attention_head_dim=8),
}


def build(args):
    import torch
    from accelerate import init_empty_weights
    from diffusers import DDPMScheduler, UNet2DConditionModel

    from trainer.data import LatentBank
    from trainer.objective import Subject

    device = torch.device(args.device)
    with init_empty_weights():
        unet = UNet2DConditionModel(
            sample_size=args.resolution // 8,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            cross_attention_dim=768,
            **SIZES[args.size],
        )
    unet.to_empty(device=device)
    generator = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for parameter in unet.parameters():
            parameter.normal_(0, 0.02, generator=generator)
    unet.requires_grad_(False).train(False)
    latent = args.resolution // 8
    banks = [
        LatentBank(
            torch.randn(4, 4, latent, latent, device=device),
            torch.full((4, 4, latent, latent), 0.1, device=device),
        )
        for _ in range(2)
    ]
    subject = Subject(
        "bench",
        banks[0],
        torch.randn(1, 77, 768, device=device),
        banks[1],
        torch.randn(1, 77, 768, device=device),
    )
    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    keys = [k for k in unet.state_dict() if ".attn2.to_k.weight" in k or ".attn2.to_v.weight" in k]
    return unet, keys, subject, scheduler


def worker(args) -> dict:
    """One variant in this process: returns seconds per step and peak memory."""
    import torch

    from trainer.objective import implanting_loss
    from trainer.report import peak_memory_bytes
    from trainer.xi import ConceptNeuronSearch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    unet, keys, subject, scheduler = build(args)
    device = torch.device(args.device)
    if args.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    if args.worker == "baseline":
        return {
            "seconds_per_step": 0.0,
            "peak_bytes": peak_memory_bytes(device),
            "params": sum(p.numel() for p in unet.parameters()),
        }
    if args.worker == "xi":
        model = ConceptNeuronSearch(unet, keys)
        optimizer = torch.optim.SGD(model.parameters(), lr=2e-5)
    else:
        weights = unet.state_dict(keep_vars=True)
        for key in keys:
            weights[key].requires_grad_(True)

        def model(noisy, timesteps, embeddings):
            return unet(noisy, timesteps, encoder_hidden_states=embeddings).sample

        optimizer = torch.optim.AdamW([weights[key] for key in keys], lr=1e-5)
    dtype = {"no": None, "fp16": torch.float16, "bf16": torch.bfloat16}[args.mixed_precision]
    generator = torch.Generator().manual_seed(1)
    times = []
    for step in range(args.warmup + args.steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss, _ = implanting_loss(model, [subject], scheduler, args.batch_size, generator)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step >= args.warmup:
            times.append(time.perf_counter() - started)
    trained = sum(p.numel() for group in optimizer.param_groups for p in group["params"])
    return {
        "seconds_per_step": sorted(times)[len(times) // 2],  # the median step
        "peak_bytes": peak_memory_bytes(device),
        "trained": trained,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="mid")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], default="no")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--worker", choices=["xi", "finetune", "baseline"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return

    results = {}
    passed = [a for a in sys.argv[1:]]
    for variant in ("baseline", "finetune", "xi", "finetune", "xi"):  # alternate: drift hits both
        output = subprocess.run(
            [sys.executable, __file__, *passed, "--worker", variant],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        result = json.loads(output.strip().splitlines()[-1])
        previous = results.get(variant)
        if previous is None or result["seconds_per_step"] < previous["seconds_per_step"]:
            results[variant] = result
    base = results["baseline"]
    print(
        f"# Training step benchmark — {date.today()} — {platform.machine()}, device {args.device}, "
        f"{args.threads} torch thread(s)\n"
    )
    millions = base["params"] / 1e6
    print(
        f"UNet2DConditionModel, {args.size} size ({millions:.0f} M parameters), {args.resolution} px "
        f"({args.resolution // 8}x{args.resolution // 8} latents), batch {args.batch_size} subject + "
        f"{args.batch_size} prior, mixed precision {args.mixed_precision}"
        f"{', gradient checkpointing' if args.gradient_checkpointing else ''}; median of {args.steps} steps "
        f"after {args.warmup} warm-up, best of 2 runs.\n"
    )
    print("| variant | trained entries | s/step | peak memory | above the model alone |")
    print("|---|---|---|---|---|")
    for variant, label in (
        ("finetune", "fine-tune of attn2 K/V (AdamW)"),
        ("xi", "xi-descent over attn2 K/V"),
    ):
        row = results[variant]
        peak, above = row["peak_bytes"] / 2**20, (row["peak_bytes"] - base["peak_bytes"]) / 2**20
        seconds = row["seconds_per_step"]
        print(f"| {label} | {row['trained']:,} | {seconds:.3f} | {peak:,.0f} MiB | {above:,.0f} MiB |")
    ratio = results["xi"]["seconds_per_step"] / results["finetune"]["seconds_per_step"]
    print(f"\nxi-descent / fine-tune, time per step: {ratio:.2f}x (target: at most 1.2x)")


if __name__ == "__main__":
    main()
