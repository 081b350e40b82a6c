"""Layer tables of real Stable Diffusion UNets, for benchmarks (no torch needed).

The SD 1.x table is the cross-attention key/value projections of
``UNet2DConditionModel`` with the SD 1.x config: 16 transformer blocks, 32
tensors of (320 | 640 | 1280) x 768, 19,169,280 entries. ``bench/runtime.py``
checks it against a real diffusers UNet built from that config.

The SDXL table is the same for SDXL 1.0 base (:data:`SDXL_UNET`): 70
transformer blocks, 140 tensors of (640 | 1280) x 2048, 340,787,200 entries;
``bench/switching.py`` checks it against diffusers.
"""

from __future__ import annotations

#: (block path, channels) of the 16 transformer blocks of SD 1.x, in state-dict order.
_SD1_BLOCKS = (
    [(f"down_blocks.{b}.attentions.{a}", c) for b, c in enumerate((320, 640, 1280)) for a in range(2)]
    + [("mid_block.attentions.0", 1280)]
    + [
        (f"up_blocks.{b}.attentions.{a}", c)
        for b, c in zip((1, 2, 3), (1280, 640, 320), strict=True)
        for a in range(3)
    ]
)
SD1_CROSS_ATTENTION_DIM = 768


def sd1_cross_attention_kv() -> dict[str, tuple[int, int]]:
    """State-dict key -> shape of the 32 attn2 to_k / to_v weights of SD 1.x."""
    return {
        f"{block}.transformer_blocks.0.attn2.to_{kv}.weight": (channels, SD1_CROSS_ATTENTION_DIM)
        for block, channels in _SD1_BLOCKS
        for kv in "kv"
    }


assert sum(a * b for a, b in sd1_cross_attention_kv().values()) == 19_169_280


#: ``UNet2DConditionModel`` config of SDXL 1.0 base (``unet/config.json`` of
#: stabilityai/stable-diffusion-xl-base-1.0; keys left at diffusers' defaults omitted).
SDXL_UNET = dict(
    sample_size=128,
    in_channels=4,
    out_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(320, 640, 1280),
    layers_per_block=2,
    transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20),
    cross_attention_dim=2048,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)
SDXL_CROSS_ATTENTION_DIM = 2048
#: (block path, channels, transformer layers) of SDXL's 14 attention blocks, in state-dict order.
_SDXL_BLOCKS = (
    [(f"down_blocks.{b}.attentions.{a}", c, n) for b, c, n in ((1, 640, 2), (2, 1280, 10)) for a in range(2)]
    + [(f"up_blocks.{b}.attentions.{a}", c, n) for b, c, n in ((0, 1280, 10), (1, 640, 2)) for a in range(3)]
    + [("mid_block.attentions.0", 1280, 10)]  # diffusers registers mid_block after up_blocks
)


def sdxl_cross_attention_kv() -> dict[str, tuple[int, int]]:
    """State-dict key -> shape of the 140 attn2 to_k / to_v weights of SDXL (70 transformer blocks)."""
    return {
        f"{block}.transformer_blocks.{t}.attn2.to_{kv}.weight": (channels, SDXL_CROSS_ATTENTION_DIM)
        for block, channels, layers in _SDXL_BLOCKS
        for t in range(layers)
        for kv in "kv"
    }


assert len(sdxl_cross_attention_kv()) == 140
assert sum(a * b for a, b in sdxl_cross_attention_kv().values()) == 340_787_200
