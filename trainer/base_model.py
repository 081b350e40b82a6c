"""Loading the parts of a local diffusers Stable Diffusion folder, frozen.

>>> base = load_base_model("sd15", device=torch.device("cuda"), weight_dtype=torch.float16)
>>> base.unet, base.vae, base.text_encoder, base.tokenizer, base.noise_scheduler
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from .config import check_model_folder
from .errors import UsageError


@dataclass
class BaseModel:
    """The frozen components; only the concept-neuron variables are ever trained."""

    folder: Path
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    noise_scheduler: DDPMScheduler

    @property
    def native_resolution(self) -> int:
        """The pixel size the model was made for: its UNet's sample size times the VAE's stride."""
        stride = 2 ** (len(self.vae.config.block_out_channels) - 1)
        return int(self.unet.config.sample_size) * stride

    @property
    def name(self) -> str:
        """How containers name the base model: the hub name it came from, else the folder's name
        (never a local path, which would leak into files people share)."""
        origin = str(self.unet.config.get("_name_or_path") or "")
        if (
            origin
            and not Path(origin).is_absolute()
            and not origin.startswith(".")
            and not Path(origin).exists()
        ):
            return origin.removesuffix("/unet")
        return self.folder.resolve().name


def load_base_model(model: str | Path, device: torch.device, weight_dtype: torch.dtype) -> BaseModel:
    """Load every part to ``device``, frozen (``requires_grad=False``), in eval mode.

    The training noise schedule and prediction type (epsilon or v) come from
    the folder's scheduler config, read as a DDPM schedule.
    """
    folder = check_model_folder(model)
    try:
        unet = UNet2DConditionModel.from_pretrained(folder / "unet", dtype=weight_dtype)
        vae = AutoencoderKL.from_pretrained(folder / "vae", dtype=weight_dtype)
        text_encoder = CLIPTextModel.from_pretrained(folder / "text_encoder", dtype=weight_dtype)
        tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
        noise_scheduler = DDPMScheduler.from_pretrained(folder / "scheduler")
    except (OSError, ValueError) as error:
        raise UsageError(
            f"--model {folder}: cannot load it as a diffusers Stable Diffusion folder ({error})"
        ) from None
    for module in (unet, vae, text_encoder):
        module.requires_grad_(False)
        module.eval()
        module.to(device)
    return BaseModel(folder, unet, vae, text_encoder, tokenizer, noise_scheduler)
