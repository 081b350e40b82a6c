"""Layer tables of real Stable Diffusion UNets, for benchmarks (no torch needed).

The SD 1.x table is the cross-attention key/value projections of
``UNet2DConditionModel`` with the SD 1.x config: 16 transformer blocks, 32
tensors of (320 | 640 | 1280) x 768, 19,169,280 entries. ``bench/runtime.py``
checks it against a real diffusers UNet built from that config.
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
