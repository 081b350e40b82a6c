"""What conesrt searches in each model family, and what one subject costs there (issue 14, docs/families.md).

    OMP_NUM_THREADS=1 python bench/families.py      # about a minute; prints a markdown table

Each denoiser is built on the meta device from its published config (no
weights: only names and shapes), ``conesrt.searched_layers`` gives the
layers, and a random 1 % subset of their entries is written with the
canonical writer, with an 8-sample fingerprint per layer, as ``cones train``
writes a container.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import conesfmt  # noqa: E402
import conesrt  # noqa: E402
from bench.runtime import SD1_UNET  # noqa: E402
from bench.sd_tables import SDXL_UNET  # noqa: E402
from conesfmt.summary import floor_bytes  # noqa: E402

SD2_UNET = SD1_UNET | dict(
    sample_size=96, attention_head_dim=(5, 10, 20, 20), cross_attention_dim=1024, use_linear_projection=True
)
SD3_MEDIUM = dict(
    sample_size=128,
    patch_size=2,
    in_channels=16,
    out_channels=16,
    num_layers=24,
    attention_head_dim=64,
    num_attention_heads=24,
    joint_attention_dim=4096,
    caption_projection_dim=1536,
    pooled_projection_dim=2048,
    pos_embed_max_size=192,
)
SD35_LARGE = SD3_MEDIUM | dict(
    num_layers=38, num_attention_heads=38, caption_projection_dim=2432, qk_norm="rms_norm"
)
FLUX_1 = dict(
    patch_size=1,
    in_channels=64,
    num_layers=19,
    num_single_layers=38,
    attention_head_dim=128,
    num_attention_heads=24,
    joint_attention_dim=4096,
    pooled_projection_dim=768,
    guidance_embeds=True,
    axes_dims_rope=(16, 56, 56),
)


def denoisers():
    """(family, model class name, config, single_stream) of each row."""
    return [
        ("SD 1.x", "UNet2DConditionModel", SD1_UNET, False),
        ("SD 2.x", "UNet2DConditionModel", SD2_UNET, False),
        ("SDXL", "UNet2DConditionModel", SDXL_UNET, False),
        ("SD3 medium", "SD3Transformer2DModel", SD3_MEDIUM, False),
        ("SD3.5 large", "SD3Transformer2DModel", SD35_LARGE, False),
        ("FLUX.1", "FluxTransformer2DModel", FLUX_1, False),
        ("FLUX.1, single-stream too", "FluxTransformer2DModel", FLUX_1, True),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--density", type=float, default=0.01, help="share of the searched entries (default 1 %%)"
    )
    args = parser.parse_args()
    import diffusers
    from accelerate import init_empty_weights

    rng = np.random.default_rng(0)
    print(
        f"| family | layers searched | tensors | entries | one subject at {100 * args.density:g} % | floor |"
    )
    print("|---|---|---|---|---|---|")
    for family, kind, config, single_stream in denoisers():
        with init_empty_weights():
            model = getattr(diffusers, kind)(**config)
        keys = conesrt.searched_layers(model, single_stream=single_stream)
        state = model.state_dict()
        layers = {key: conesfmt.Layer(tuple(state[key].shape), "BF16") for key in keys}
        numel = sum(layer.numel for layer in layers.values())
        indices = {}
        for key, layer in layers.items():  # a uniformly random subset: geometric gaps
            gaps = rng.geometric(args.density, size=int(layer.numel * args.density * 1.1) + 64)
            flat = np.cumsum(gaps) - 1
            indices[key] = flat[flat < layer.numel]
        samples = {key: rng.standard_normal(8).astype(np.float32) * 0.02 for key in keys}
        fingerprint = conesfmt.Fingerprint(samples, dtypes={key: "BF16" for key in keys})
        container = conesfmt.Container(layers, {"subject": indices}, fingerprint)
        size = len(container.to_bytes())
        k = container.concepts["subject"].total
        suffixes = sorted({".".join(key.split(".")[-3:]) for key in keys})
        shapes = sorted({"×".join(map(str, layer.shape)) for layer in layers.values()})
        print(
            f"| {family} | {', '.join(f'`{s}`' for s in suffixes)} ({', '.join(shapes)}) | {len(keys)} | "
            f"{numel:,} | {size / 1e6:.2f} MB ({k:,} indices) | {floor_bytes(numel, k) / 1e6:.2f} MB |"
        )


if __name__ == "__main__":
    main()
