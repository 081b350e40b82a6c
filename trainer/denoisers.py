"""How each model family's denoiser is conditioned and called: one small adapter per family.

The implanting loss (trainer.objective) and the ξ-descent (trainer.xi,
trainer.search) never look at the family. They hold a *conditioning* per
prompt (a tensor, or a dict of tensors, batch-first) and call
``adapter.predict(call, noisy, timesteps, conditioning)``; the forward process
and the training target come from trainer.schedules. What differs:

- **SD 1.x/2.x**: the CLIP's last hidden state; ``unet(x, t, encoder_hidden_states)``.
- **SDXL**: both CLIPs' penultimate states, concatenated; text_encoder_2's
  pooled ``text_embeds``; ``time_ids`` = original size, crop (0, 0), target
  size; the UNet's ``added_cond_kwargs``.
- **SD3**: CLIP-L and CLIP-G penultimate states, padded and joined to T5's
  sequence (zeros without T5); both CLIPs' pooled outputs as
  ``pooled_projections``.
- **Flux**: T5's sequence and CLIP's pooled output; 2x2-packed latents with
  ``img_ids`` / ``txt_ids``, the timestep as ``t / 1000``, the distilled
  guidance when the model embeds one.

The conditioning is what each pipeline's own ``encode_prompt`` returns.
The latents stay ``(batch, channels, height, width)`` throughout: Flux's
adapter packs them for the call and unpacks its prediction, so the loss
compares the same tensors as for every other family. The adapter of a
denoiser is chosen from the denoiser itself (:func:`adapter_for`), so any
code that holds only the model (trainer.xi, trainer.evaluate) calls it
right.

>>> adapter = adapter_for(base.denoiser, base.pipeline)
>>> conditioning = adapter.encode_prompt("photo of a sks cat", resolution=1024)
>>> prediction = adapter.predict(base.denoiser, noisy, timesteps, conditioning)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

#: One prompt's conditioning: a tensor (SD 1.x/2.x) or named tensors, each with the batch first.
Conditioning = torch.Tensor | dict[str, torch.Tensor]

#: Flux.1-dev's distilled guidance, as its pipeline and diffusers' DreamBooth script use by default.
FLUX_GUIDANCE = 3.5
#: Text tokens for SD3 and Flux (their pipelines' defaults), at most the T5 tokenizer's own length.
MAX_SEQUENCE_LENGTH = {"sd3": 256, "flux": 512}


def repeat_rows(conditioning: Conditioning, count: int) -> Conditioning:
    """``count`` rows of a one-row conditioning (views, no copies)."""
    if isinstance(conditioning, torch.Tensor):
        return conditioning.expand(count, *conditioning.shape[1:])
    return {name: repeat_rows(value, count) for name, value in conditioning.items()}


def concat_rows(parts: Sequence[Conditioning], device: torch.device | str) -> Conditioning:
    """Conditionings stacked along the batch, on ``device``."""
    if isinstance(parts[0], torch.Tensor):
        return torch.cat(list(parts)).to(device)
    return {name: concat_rows([part[name] for part in parts], device) for name in parts[0]}


def take_rows(conditioning: Conditioning, rows: torch.Tensor) -> Conditioning:
    """The given rows of a batched conditioning."""
    if isinstance(conditioning, torch.Tensor):
        return conditioning[rows]
    return {name: value[rows] for name, value in conditioning.items()}


def cast(conditioning: Conditioning, dtype: torch.dtype) -> Conditioning:
    if isinstance(conditioning, torch.Tensor):
        return conditioning.to(dtype)
    return {name: value.to(dtype) for name, value in conditioning.items()}


class DenoiserAdapter:
    """SD 1.x and 2.x: a UNet over the text encoder's last hidden state.

    ``denoiser`` is the UNet or transformer (its config decides details such
    as Flux's guidance); ``pipeline`` is needed only to encode prompts.
    """

    family = "sd"

    def __init__(self, denoiser: torch.nn.Module, pipeline: Any = None):
        self.config = getattr(denoiser, "config", None) or {}
        self.pipeline = pipeline

    def encode_prompt(self, prompt: str, resolution: int) -> Conditioning:
        """The text encoder's last hidden state for ``prompt``, padded to the tokenizer's length."""
        tokenizer, text_encoder = self.pipeline.tokenizer, self.pipeline.text_encoder
        tokens = tokenizer(
            prompt,
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        hidden = text_encoder(tokens.input_ids.to(text_encoder.device))[0]
        return hidden.float()

    def predict(
        self,
        call: Callable[..., Any],
        noisy: torch.Tensor,
        timesteps: torch.Tensor,
        conditioning: Conditioning,
    ) -> torch.Tensor:
        """The denoiser's output for ``noisy`` at ``timesteps``; ``call`` runs the denoiser (the
        module itself, or the module with substituted weights) on keyword arguments."""
        return call(sample=noisy, timestep=timesteps, encoder_hidden_states=conditioning).sample


class SDXLAdapter(DenoiserAdapter):
    """SDXL: two CLIPs' penultimate states, the pooled ``text_embeds``, and the size/crop ``time_ids``.

    The time ids are ``(resolution, resolution, 0, 0, resolution, resolution)``:
    the training images are resized and centre-cropped to the resolution, and
    these are the ids the pipeline uses at that size by default, so the
    subject is learnt where it will be drawn.
    """

    family = "sdxl"

    def encode_prompt(self, prompt: str, resolution: int) -> Conditioning:
        embeds, _, pooled, _ = self.pipeline.encode_prompt(
            prompt, device=self.pipeline.text_encoder_2.device, do_classifier_free_guidance=False
        )
        time_ids = torch.tensor([[resolution, resolution, 0, 0, resolution, resolution]], dtype=torch.float32)
        return {"encoder_hidden_states": embeds.float(), "text_embeds": pooled.float(), "time_ids": time_ids}

    def predict(self, call, noisy, timesteps, conditioning):
        added = {"text_embeds": conditioning["text_embeds"], "time_ids": conditioning["time_ids"]}
        return call(
            sample=noisy,
            timestep=timesteps,
            encoder_hidden_states=conditioning["encoder_hidden_states"],
            added_cond_kwargs=added,
        ).sample


def max_sequence_length(pipeline: Any, family: str) -> int:
    """Text tokens for SD3 and Flux: the pipeline's default, at most the T5 tokenizer's length."""
    tokenizer = getattr(pipeline, "tokenizer_3", None) or getattr(pipeline, "tokenizer_2", None)
    limit = getattr(tokenizer, "model_max_length", None) or MAX_SEQUENCE_LENGTH[family]
    return min(MAX_SEQUENCE_LENGTH[family], int(limit))


class SD3Adapter(DenoiserAdapter):
    """SD3: the joint sequence of CLIP-L, CLIP-G and T5 (zeros when the folder has no T5), the
    two CLIPs' pooled outputs; flow matching."""

    family = "sd3"

    def encode_prompt(self, prompt: str, resolution: int) -> Conditioning:
        embeds, _, pooled, _ = self.pipeline.encode_prompt(
            prompt,
            prompt_2=None,
            prompt_3=None,
            device=self.pipeline.text_encoder.device,
            do_classifier_free_guidance=False,
            max_sequence_length=max_sequence_length(self.pipeline, self.family),
        )
        return {"encoder_hidden_states": embeds.float(), "pooled_projections": pooled.float()}

    def predict(self, call, noisy, timesteps, conditioning):
        return call(
            hidden_states=noisy,
            timestep=timesteps,
            encoder_hidden_states=conditioning["encoder_hidden_states"],
            pooled_projections=conditioning["pooled_projections"],
        ).sample


class FluxAdapter(DenoiserAdapter):
    """Flux: T5's sequence and CLIP's pooled output; 2x2-packed latents with their position ids;
    the timestep as σ (t / 1000); the distilled guidance when the model embeds one."""

    family = "flux"

    def encode_prompt(self, prompt: str, resolution: int) -> Conditioning:
        embeds, pooled, _ = self.pipeline.encode_prompt(
            prompt,
            prompt_2=None,
            device=self.pipeline.text_encoder.device,
            max_sequence_length=max_sequence_length(self.pipeline, self.family),
        )
        return {"encoder_hidden_states": embeds.float(), "pooled_projections": pooled.float()}

    def predict(self, call, noisy, timesteps, conditioning):
        batch, channels, height, width = noisy.shape
        # FluxPipeline._pack_latents: every 2x2 patch of latents becomes one token of 4 x channels.
        packed = noisy.reshape(batch, channels, height // 2, 2, width // 2, 2).permute(0, 2, 4, 1, 3, 5)
        packed = packed.reshape(batch, (height // 2) * (width // 2), channels * 4)
        # FluxPipeline._prepare_latent_image_ids: (0, row, column) per token; text tokens are all 0.
        rows = torch.arange(height // 2, device=noisy.device)
        columns = torch.arange(width // 2, device=noisy.device)
        image_ids = torch.zeros(height // 2, width // 2, 3, device=noisy.device)
        image_ids[..., 1] += rows[:, None]
        image_ids[..., 2] += columns[None, :]
        text = conditioning["encoder_hidden_states"]
        text_ids = torch.zeros(text.shape[1], 3, device=noisy.device)
        guidance = None
        if self.config.get("guidance_embeds"):
            guidance = torch.full((batch,), FLUX_GUIDANCE, device=noisy.device, dtype=torch.float32)
        out = call(
            hidden_states=packed,
            timestep=timesteps / 1000,
            guidance=guidance,
            pooled_projections=conditioning["pooled_projections"],
            encoder_hidden_states=text,
            txt_ids=text_ids,
            img_ids=image_ids.reshape(-1, 3),
        ).sample
        # FluxPipeline._unpack_latents, back to (batch, channels, height, width).
        out = out.reshape(batch, height // 2, width // 2, channels, 2, 2).permute(0, 3, 1, 4, 2, 5)
        return out.reshape(batch, channels, height, width)


def adapter_for(denoiser: torch.nn.Module, pipeline: Any = None) -> DenoiserAdapter:
    """The adapter of a denoiser, from its class and config: an SDXL UNet (``text_time``
    embeddings), any other UNet, an SD3 or a Flux transformer.

    >>> adapter_for(pipe.transformer, pipe).family
    'flux'
    """
    kind = type(denoiser).__name__
    if kind == "FluxTransformer2DModel":
        return FluxAdapter(denoiser, pipeline)
    if kind == "SD3Transformer2DModel":
        return SD3Adapter(denoiser, pipeline)
    if (getattr(denoiser, "config", None) or {}).get("addition_embed_type") == "text_time":
        return SDXLAdapter(denoiser, pipeline)
    return DenoiserAdapter(denoiser, pipeline)
