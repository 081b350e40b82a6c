"""Apply and remove on a real-size SD 1.x UNet, against the alternatives (issue #3).

    python bench/runtime.py            # about 2 minutes on a laptop CPU; prints markdown tables

The UNet is diffusers' ``UNet2DConditionModel`` with the SD 1.x config (random
weights: the method's cost does not depend on their values). Four containers
at the paper's densities (1.32 / 2.43 / 4.54 / 7.01 %, independent random
masks, so they overlap) over its 32 cross-attention K/V tensors are applied
together and removed, from files. Side by side, in the same run and thread
setting:

(a) the raw scatter: pre-decoded indices; save the values, write zeros, write them back;
(b) diffusers/PEFT: ``load_lora_weights`` + ``fuse_lora`` + ``unfuse_lora`` of a
    rank-4 LoRA on the same layers (made and saved by this script), and how far
    the weights are from the original afterwards;
(c) a whole-tensor backup: clone the 32 tensors, shut, copy them back.

Then the app-scale rows (issue 14): one subject at 1 % switched in and out of
SDXL- and FLUX.1-size denoisers, beside the bare torch scatter of the same
indices and a rank-4 PEFT LoRA load + fuse + unfuse + unload on the same
layers, measured by bench/switching.py's code in this same run
(``--app-scale`` picks the models, ``--app-scale`` with none skips them; the
per-step tables and the writer's rows: ``python bench/switching.py``).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")  # keep the printed tables readable

import conesfmt  # noqa: E402
import conesrt  # noqa: E402
from bench import switching as app  # noqa: E402
from bench.sd_tables import sd1_cross_attention_kv  # noqa: E402
from conesrt.fit import check_fits  # noqa: E402
from conesrt.torch_model import torch_value_reader  # noqa: E402

DENSITIES = (0.0132, 0.0243, 0.0454, 0.0701)
SD1_UNET = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    cross_attention_dim=768,
    attention_head_dim=8,
)


def sd1_unet(seed: int):
    """The SD 1.x UNet architecture, weights ~N(0, 0.02) (fast: no per-layer init)."""
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    with init_empty_weights():
        unet = UNet2DConditionModel(**SD1_UNET)
    unet.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in unet.parameters():
            parameter.normal_(0, 0.02, generator=generator)
    return unet.eval().requires_grad_(False)


def timings(repeat: int, function) -> list[float]:
    """Seconds of each of ``repeat`` calls; the first is the cold one."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return times


def best_of(repeat: int, function) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="warm timing repeats; the best is kept")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for every variant (default 1)")
    parser.add_argument(
        "--app-scale",
        nargs="*",
        choices=list(app.SCALES),
        default=list(app.SCALES),
        help="SDXL- and Flux-size switching rows (default: all; give none to skip)",
    )
    parser.add_argument("--app-repeat", type=int, default=11, help="switching rounds at app scale (median)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    unet = sd1_unet(seed=0)
    state = unet.state_dict(keep_vars=True)
    table = sd1_cross_attention_kv()
    keys = [k for k in state if ".attn2.to_k.weight" in k or ".attn2.to_v.weight" in k]
    assert {k: tuple(state[k].shape) for k in keys} == table, "bench/sd_tables.py disagrees with diffusers"
    original = {key: state[key].detach().clone() for key in keys}

    rng = np.random.default_rng(0)
    layers = conesrt.layer_table(unet, keys)
    fingerprint = conesrt.fingerprint(unet, keys)
    containers = [
        conesfmt.Container(
            layers,
            {f"subject{n}": {k: np.flatnonzero(rng.random(layers[k].numel) < d) for k in keys}},
            fingerprint,
            {"base_model": "SD 1.x architecture, random weights"},
        )
        for n, d in enumerate(DENSITIES)
    ]
    folder = Path(tempfile.mkdtemp())
    paths = [conesfmt.save(c, folder / f"subject{n}.cones") for n, c in enumerate(containers)]
    shut_total = sum(c.concepts[f"subject{n}"].total for n, c in enumerate(containers))
    distinct = sum(
        np.unique(np.concatenate([c.indices(f"subject{n}", k) for n, c in enumerate(containers)])).size
        for k in keys
    )

    # --- cones: apply the four files, remove them --------------------------------------------
    kept = []

    def cones_cycle(sources) -> None:
        handle = conesrt.apply(unet, sources)
        kept.append(handle.saved_bytes)
        handle.remove()

    cones_cold, *cones_warm = timings(args.repeat + 1, lambda: cones_cycle(paths))
    cones_files = min(cones_warm)
    cones_loaded = best_of(args.repeat, lambda: cones_cycle(containers))
    one_subject = best_of(args.repeat, lambda: cones_cycle(paths[:1]))
    apply_only = best_of(
        args.repeat, lambda: kept.append(conesrt.apply(unet, containers)) or kept.pop().remove()
    )
    handle = conesrt.apply(unet, containers)
    remove_only = best_of(1, handle.remove)
    exact = max(float((state[k] - original[k]).abs().max()) for k in keys)
    bits_equal = all(torch.equal(state[k].view(torch.int32), original[k].view(torch.int32)) for k in keys)
    read = torch_value_reader(state)
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    fingerprint_check = best_of(
        args.repeat, lambda: [check_fits(f"c{n}", c, shapes, read, True) for n, c in enumerate(containers)]
    )
    memory = max(kept)
    bound = distinct * (4 + 4) + 64 * 1024

    # --- (a) raw scatter with pre-decoded indices ---------------------------------------------
    decoded = [
        {k: torch.from_numpy(np.array(c.indices(f"subject{n}", k))) for k in keys}
        for n, c in enumerate(containers)
    ]

    def raw_scatter() -> None:
        saved = []
        for indices in decoded:
            values = {}
            for key, index in indices.items():
                flat = state[key].detach().view(-1)
                values[key] = flat.index_select(0, index)
                flat.index_fill_(0, index, 0)
            saved.append(values)
        for indices, values in zip(reversed(decoded), reversed(saved), strict=True):
            for key, index in indices.items():
                state[key].detach().view(-1).index_copy_(0, index, values[key])

    raw = best_of(args.repeat, raw_scatter)

    # --- (c) whole-tensor backup ---------------------------------------------------------------
    def whole_tensor_backup() -> None:
        backup = {key: state[key].detach().clone() for key in keys}
        for indices in decoded:
            for key, index in indices.items():
                state[key].detach().view(-1).index_fill_(0, index, 0)
        for key in keys:
            state[key].detach().copy_(backup[key])

    whole = best_of(args.repeat, whole_tensor_backup)
    whole_bytes = sum(state[k].numel() * state[k].element_size() for k in keys)

    # --- (b) diffusers / PEFT LoRA: load, fuse, unfuse ----------------------------------------
    lora_cold, lora_seconds, lora_drift, lora_unload = lora_cycle(unet, folder, args.repeat + 1)
    wide_targets = ["to_q", "to_k", "to_v", "to_out.0"]  # diffusers' DreamBooth-LoRA default
    _, wide_lora, _, _ = lora_cycle(unet, folder, 3, targets=wide_targets, name="lora-wide")
    for key in keys:  # whatever the LoRA cycle left, start clean for the record
        state[key].detach().copy_(original[key])

    cones_cycle_s = cones_files
    print(
        f"# Runtime benchmark — {date.today()} — {platform.machine()}, {args.threads} torch thread(s), "
        f"torch {torch.__version__}, Python {platform.python_version()}\n"
    )
    print(
        f"SD 1.x UNet (diffusers UNet2DConditionModel, SD 1.x config, random weights), 32 cross-attention "
        f"K/V tensors, {sum(v.numel() for v in original.values()):,} entries, fp32. Four containers at "
        f"{', '.join(f'{100 * d:.2f} %' for d in DENSITIES)}: {shut_total:,} indices, {distinct:,} distinct "
        f"entries (they overlap).\n"
    )
    print("| what | time | vs raw scatter |")
    print("|---|---|---|")
    rows = [
        ("cones: apply the 4 files + remove (load, validate, fingerprint, shut, restore)", cones_files),
        ("cones: apply 4 loaded containers + remove", cones_loaded),
        ("cones: apply 4 loaded containers", apply_only),
        ("cones: remove them", remove_only),
        ("cones: fingerprint check of the 4 containers (part of apply)", fingerprint_check),
        ("(a) raw scatter, pre-decoded indices: save, zero, write back", raw),
        ("cones: the 4 files + remove, first call in the process (cold)", cones_cold),
        ("(b) diffusers/PEFT: load_lora_weights + fuse_lora + unfuse_lora, rank 4", lora_seconds),
        ("(b) diffusers/PEFT: the same, first call in the process (cold)", lora_cold),
        ("(b) diffusers/PEFT: unload_lora_weights afterwards", lora_unload),
        ("(c) whole-tensor backup: clone, zero, copy back", whole),
        ("context: cones, one subject's file (1.32 %) apply + remove", one_subject),
        ("context: LoRA rank 4 on every attention to_q/k/v/out (128 modules), load+fuse+unfuse", wide_lora),
    ]
    for label, seconds in rows:
        print(f"| {label} | {1e3 * seconds:,.1f} ms | {seconds / raw:.2f}x |")
    print()
    print("| check | value | target |")
    print("|---|---|---|")
    print(f"| cones apply+remove / raw scatter | {cones_cycle_s / raw:.2f}x | at most 4x |")
    lora_vs_cones = lora_seconds / cones_cycle_s
    print(f"| LoRA load+fuse+unfuse / cones apply+remove, warm | {lora_vs_cones:.2f}x | at least 20x |")
    print(f"| LoRA load+fuse+unfuse / cones apply+remove, cold | {lora_cold / cones_cold:.2f}x | |")
    bound_note = "an upper bound for any method that scatters"
    print(f"| LoRA load+fuse+unfuse / raw scatter (a), warm | {lora_seconds / raw:.2f}x | {bound_note} |")
    print(f"| memory kept by the handle | {memory:,} bytes | at most k x (4 + 4) + 64 KiB = {bound:,} |")
    print(f"| (c) memory of a whole-tensor backup | {whole_bytes:,} bytes | |")
    print(f"| cones: max abs difference after remove | {exact:g} (bit-identical: {bits_equal}) | 0 |")
    print(f"| LoRA: max abs difference after unfuse | {lora_drift:.3g} | |")
    if args.app_scale:
        del unet, state, original, decoded, containers
        app_scale(args.app_scale, args.app_repeat)


def app_scale(names: list[str], repeat: int) -> None:
    """SDXL- and Flux-size rows: one subject switched in and out (bench/switching.py's measurement)."""
    results = []
    for name in names:
        model, keys = app.scale_model(app.SCALES[name], seed=0)
        numel = sum(layer.numel for layer in conesrt.layer_table(model, keys).values())
        results.append((app.SCALES[name], app.switching(model, keys, repeat), numel, len(keys)))
        del model, keys
    print("\n## App scale: SDXL and FLUX.1\n")
    app.print_summary(results, repeat)
    print("| check | " + " | ".join(scale.name for scale, *_ in results) + " | target |")
    print("|---|" + "---|" * len(results) + "---|")
    walls = [app.both(switch, "cones")[0] for _, switch, *_ in results]
    ratios = [app.both(switch, "cones")[0] / app.both(switch, "bare")[0] for _, switch, *_ in results]
    print(
        "| cones switch in + out, wall | "
        + " | ".join(f"{1e3 * w:.0f} ms" for w in walls)
        + f" | at most {1e3 * app.SWITCH_BOUND_S:.0f} ms |"
    )
    print(
        "| cones switch / bare torch scatter | "
        + " | ".join(f"{r:.2f}x" for r in ratios)
        + f" | at most {app.SWITCH_BOUND_RATIO}x |"
    )


def lora_cycle(
    unet,
    folder: Path,
    repeat: int,
    targets: tuple[str, ...] | list[str] = ("attn2.to_k", "attn2.to_v"),
    name="lora",
) -> tuple[float, float, float, float]:
    """(cold seconds, best warm seconds, max abs drift after unfuse, best unload seconds)."""
    """Make a rank-4 LoRA on attn2 to_k/to_v, save it as diffusers does, then time the cycle."""
    from diffusers import DDPMScheduler, StableDiffusionPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    keys = [k for k in unet.state_dict() if any(f".{t}.weight" in k for t in targets) and "attn" in k]
    original = {k: unet.state_dict()[k].clone() for k in keys}
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=list(targets)))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in unet.named_parameters():
            if "lora_" in name:  # non-zero A and B, so that fusing changes the weights
                parameter.normal_(0, 0.05, generator=generator)
    lora_layers = get_peft_model_state_dict(unet)
    StableDiffusionPipeline.save_lora_weights(folder / name, unet_lora_layers=lora_layers)
    unet.delete_adapters("default")
    # load_lora_weights is a pipeline method; only the UNet takes part here.
    pipe = StableDiffusionPipeline(
        vae=None,
        text_encoder=None,
        tokenizer=None,
        unet=unet,
        scheduler=DDPMScheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    seconds, unload = [], []
    drift = 0.0
    for _ in range(repeat):
        started = time.perf_counter()
        pipe.load_lora_weights(folder / name)
        pipe.fuse_lora()
        pipe.unfuse_lora()
        seconds.append(time.perf_counter() - started)
        started = time.perf_counter()
        pipe.unload_lora_weights()
        unload.append(time.perf_counter() - started)
        drift = max(drift, max(float((unet.state_dict()[k] - original[k]).abs().max()) for k in keys))
    return seconds[0], min(seconds[1:]), drift, min(unload)


if __name__ == "__main__":
    main()
