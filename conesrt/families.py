"""Which weights concept neurons live in, per model family (docs/families.md).

UNets (SD 1.x, SD 2.x, SDXL) have cross-attention: the paper searches its
key and value projections, ``...attn2.to_k.weight`` and ``...attn2.to_v.weight``.
Diffusion transformers (SD3, Flux) have none; each joint-attention block
projects the text tokens with keys and values of their own,
``transformer_blocks.N.attn.add_k_proj.weight`` / ``add_v_proj.weight``, and
those are the analogue: they act on text tokens only, as cross-attention's
K/V do. Flux's single-stream blocks (``single_transformer_blocks.N.attn.to_k``
/ ``to_v``) project text and image tokens with one matrix, so an entry shut
there also changes every image token; they are searched only on request.

>>> conesrt.searched_layers(pipe)[:1]          # an SDXL pipeline
['down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight']
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

#: Suffixes of the cross-attention K/V weights of a UNet (SD 1.x, 2.x, SDXL).
UNET_SUFFIXES = (".attn2.to_k.weight", ".attn2.to_v.weight")
#: Suffixes of the text stream's K/V weights in a joint-attention block (SD3, Flux).
JOINT_SUFFIXES = (".attn.add_k_proj.weight", ".attn.add_v_proj.weight")
#: Prefix and suffixes of Flux's single-stream K/V weights (one projection for text and image tokens).
SINGLE_STREAM_PREFIX = "single_transformer_blocks."
SINGLE_STREAM_SUFFIXES = (".attn.to_k.weight", ".attn.to_v.weight")


def searched_layers(target: Any, *, single_stream: bool = False) -> list[str]:
    """The state-dict keys concept neurons are searched in by default, in the model's order.

    ``target`` is a UNet or transformer, a diffusers pipeline (its ``.unet`` or
    ``.transformer``) or a state dict. A UNet gives its cross-attention
    ``attn2.to_k``/``to_v`` weights; a transformer the ``attn.add_k_proj`` /
    ``add_v_proj`` weights of its joint-attention blocks (biases are not
    searched). ``single_stream=True`` adds Flux's single-stream ``to_k``/``to_v``
    weights, which act on image tokens too (docs/families.md). Raises
    ``ValueError`` for a model with neither kind of layer.

    >>> keys = conesrt.searched_layers(flux_pipe)
    >>> len(keys), keys[0]                          # FLUX.1: 19 double-stream blocks
    (38, 'transformer_blocks.0.attn.add_k_proj.weight')
    """
    from .targets import resolve  # torch: searched_keys itself needs none

    return searched_keys(resolve(target), single_stream=single_stream)


def searched_keys(keys: Iterable[str], *, single_stream: bool = False) -> list[str]:
    """:func:`searched_layers` on the state-dict keys alone, without torch (the trainer checks
    ``--layers`` from a safetensors header before it imports torch).

    >>> searched_keys(["mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight", "conv_in.weight"])
    ['mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight']
    """
    keys = list(keys)
    found = [key for key in keys if key.endswith(UNET_SUFFIXES)]
    if not found:
        found = [key for key in keys if key.endswith(JOINT_SUFFIXES)]
    if single_stream:
        found += [
            key
            for key in keys
            if key.startswith(SINGLE_STREAM_PREFIX) and key.endswith(SINGLE_STREAM_SUFFIXES)
        ]
    if not found:
        raise ValueError(
            "no cross-attention (attn2.to_k/to_v) or joint-attention (attn.add_k_proj/add_v_proj) weights "
            "in this model; name the layers to use yourself"
        )
    return found
