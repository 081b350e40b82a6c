"""The paper's Fig. 2 as a tool: each word's cross-attention map, before and after containers are applied.

Shutting a subject's concept neurons should make the cross-attention map of
its identifier ("sks") outline the subject (paper sec. 3.2, Fig. 2). For a
prompt and a seed, ``attention_maps`` generates an image and records, for
every token, where the image attends to it: the softmax of ``q · k`` over the
prompt's tokens, in every ``attn2`` layer, averaged over heads, layers
(upsampled to the finest level), denoising steps and the conditional half
of classifier-free guidance. ``draw`` puts one row per word: the word, its
map over the image before, and after.

Queries and keys are read by forward hooks on each ``attn2.to_q`` and
``attn2.to_k``, so any attention processor (SDPA included) runs unchanged.
Any UNet pipeline works (SD 1.x, 2.x, SDXL). SD3 and Flux have no
cross-attention: their joint attention takes one softmax over text and image
tokens together (after q/k norms, and Flux's rotary embedding), which is not
the map of Fig. 2, and is not drawn here (:data:`JOINT_ATTENTION`).

    cones attention --model M --prompt "a photo of a sks star" --container sks.cones --out attention.png

>>> before = attention_maps(pipe, "a photo of a sks star", seed=0)
>>> with conesrt.apply(pipe, "sks.cones"):
...     after = attention_maps(pipe, "a photo of a sks star", seed=0)
>>> draw(before, after, "attention.png")
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

#: Why a transformer pipeline (SD3, Flux) gets no maps.
JOINT_ATTENTION = (
    "attention maps are read from a UNet's cross-attention (SD 1.x, 2.x, SDXL); SD3 and Flux have "
    "joint attention instead (one softmax over text and image tokens together), which cones does not "
    "draw"
)


@dataclass
class AttentionMaps:
    """One generation's image and, per token, its cross-attention map (each map sums to the token's share)."""

    image: object  # PIL image
    tokens: list[str]  # the prompt's tokens, BOS and EOS included (no padding)
    maps: np.ndarray  # (len(tokens), height, width): mean attention probability per latent pixel
    padding_share: float  # attention on the padding tokens after EOS, averaged over pixels

    def share(self, position: int) -> float:
        """The token's mean attention probability over the image."""
        return float(self.maps[position].mean())


class _Recorder:
    """Hooks on every cross-attention layer: accumulates head-averaged attention probabilities."""

    def __init__(self, unet: torch.nn.Module):
        self.total: torch.Tensor | None = None
        self.calls = 0
        self.handles = []
        self.size = 0
        for module in unet.modules():
            if getattr(module, "is_cross_attention", False) and hasattr(module, "to_q"):
                self.handles.append(module.to_q.register_forward_hook(self._query(module)))
                self.handles.append(module.to_k.register_forward_hook(self._key(module)))

    def _query(self, attention):
        def hook(_, __, output):
            attention._cones_query = output

        return hook

    def _key(self, attention):
        def hook(_, __, key):
            query = attention.__dict__.pop("_cones_query")
            heads = attention.heads
            batch, pixels, inner = query.shape
            half = batch // 2 if batch > 1 else 0  # the conditional half of classifier-free guidance
            q = query[half:].reshape(batch - half, pixels, heads, inner // heads).transpose(1, 2)
            k = key[half:].reshape(batch - half, key.shape[1], heads, inner // heads).transpose(1, 2)
            probabilities = (q.float() @ k.float().transpose(-1, -2) * attention.scale).softmax(-1)
            side = int(round(pixels**0.5))
            maps = probabilities.mean((0, 1)).T.reshape(1, -1, side, side)  # (1, tokens, side, side)
            self.size = max(self.size, side)
            self.pending.append(maps)

        return hook

    def begin_step(self) -> None:
        self.pending: list[torch.Tensor] = []

    def end_step(self) -> None:
        if not self.pending:
            return
        stacked = torch.stack(
            [
                F.interpolate(m, size=(self.size, self.size), mode="bilinear", align_corners=False)[0]
                for m in self.pending
            ]
        ).mean(0)
        self.total = stacked if self.total is None else self.total + stacked
        self.calls += 1

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


@torch.no_grad()
def attention_maps(
    pipe, prompt: str, seed: int = 0, steps: int = 25, guidance: float = 7.5, size: int | None = None
) -> AttentionMaps:
    """Generate one image for ``prompt`` and record each token's cross-attention map.

    ``pipe`` is a diffusers UNet pipeline, SD 1.x/2.x or SDXL (its UNet as it
    is now: apply containers first to see their effect). ``size`` in pixels
    (default: the model's own). Raises ``ValueError`` for a transformer
    pipeline (SD3, Flux: :data:`JOINT_ATTENTION`) or a UNet without
    cross-attention.
    """
    if getattr(pipe, "unet", None) is None:
        raise ValueError(f"{type(pipe).__name__}: {JOINT_ATTENTION}")
    recorder = _Recorder(pipe.unet)
    if not recorder.handles:
        raise ValueError("this UNet has no cross-attention layers (attn2) to record")
    size = size or pipe.unet.config.sample_size * pipe.vae_scale_factor
    recorder.begin_step()

    def step_end(pipeline, step, timestep, callback_kwargs):
        recorder.end_step()
        recorder.begin_step()
        return callback_kwargs

    try:
        image = pipe(
            prompt,
            num_inference_steps=steps,
            guidance_scale=guidance,
            height=size,
            width=size,
            generator=torch.Generator().manual_seed(seed),
            callback_on_step_end=step_end,
        ).images[0]
    finally:
        recorder.remove()
    ids = pipe.tokenizer(prompt, truncation=True, max_length=pipe.tokenizer.model_max_length).input_ids
    tokens = [pipe.tokenizer.decode([i]) for i in ids]
    maps = (recorder.total / max(recorder.calls, 1)).cpu().numpy()
    return AttentionMaps(image, tokens, maps[: len(ids)], float(maps[len(ids) :].sum(0).mean()))


def _heat(attention: np.ndarray, image, cell: int, low: float, high: float):
    """The map as a heat overlay on the image (brighter: more attention), scaled from ``low`` to ``high``."""
    from PIL import Image

    base = np.asarray(image.convert("L").resize((cell, cell)), dtype=np.float32) / 255
    scaled = np.clip((attention - low) / max(high - low, 1e-8), 0, 1)
    heat = (
        np.asarray(
            Image.fromarray((scaled * 255).astype(np.uint8)).resize((cell, cell), Image.Resampling.BILINEAR),
            dtype=np.float32,
        )
        / 255
    )
    rgb = np.stack([heat, heat**2, 0.25 * (1 - heat)], -1) * 0.8 + 0.2 * base[..., None]
    return Image.fromarray((np.clip(rgb, 0, 1) * 255).astype(np.uint8))


def draw(before: AttentionMaps, after: AttentionMaps | None, path: str | Path, cell: int = 128) -> Path:
    """A PNG: the images, then one row per word (BOS and EOS left out): its map before | after.

    A word's two maps share one scale, from the lower of their minima to the
    higher of their maxima, so a change shows; the label gives the token's
    share of attention (mean probability over the image) before -> after.
    """
    from PIL import Image, ImageDraw

    from .presentation import label_font

    columns = [before] + ([after] if after is not None else [])
    words = [(i, t) for i, t in enumerate(before.tokens) if t not in ("<|startoftext|>", "<|endoftext|>")]
    label = 190
    width = label + len(columns) * (cell + 8)
    height = 24 + (len(words) + 1) * (cell + 8)
    sheet = Image.new("RGB", (width, height), "white")
    pen = ImageDraw.Draw(sheet)
    for column, title in enumerate(["before", "after"][: len(columns)]):
        pen.text((label + column * (cell + 8) + 4, 6), title, fill="black", font=label_font())
    top = 24
    pen.text((4, top + cell // 2), "image", fill="black", font=label_font())
    for column, maps in enumerate(columns):
        sheet.paste(
            maps.image.resize((cell, cell), Image.Resampling.NEAREST), (label + column * (cell + 8), top)
        )
    for row, (position, token) in enumerate(words, start=1):
        y = top + row * (cell + 8)
        shares = " -> ".join(f"{m.share(position):.3f}" for m in columns)
        pen.text((4, y + cell // 2 - 10), f'"{token}"', fill="black", font=label_font())
        pen.text((4, y + cell // 2 + 4), f"share {shares}", fill="black", font=label_font())
        low = min(float(m.maps[position].min()) for m in columns)
        high = max(float(m.maps[position].max()) for m in columns)
        for column, maps in enumerate(columns):
            heat = _heat(maps.maps[position], maps.image, cell, low, high)
            sheet.paste(heat, (label + column * (cell + 8), y))
    path = Path(path)
    sheet.save(path)
    return path
