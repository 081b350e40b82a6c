"""Loading the parts of a local diffusers model folder, frozen: SD 1.x/2.x, SDXL, SD3 or Flux.

The family comes from the folder (trainer.families). SD 1.x/2.x folders are
loaded part by part, as the trainer always did; the other families as their
own pipeline class (``DiffusionPipeline.from_pretrained``), whose
``encode_prompt`` gives the conditioning and which draws the prior images.

>>> base = load_base_model("sdxl-base", device=torch.device("cuda"), weight_dtype=torch.float16)
>>> base.family.name, base.denoiser, base.adapter, base.noise_scheduler
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .config import check_model_folder
from .denoisers import DenoiserAdapter, adapter_for
from .errors import UsageError
from .families import Family, family_of
from .pipelines import components_left_out


@dataclass
class BaseModel:
    """The frozen components; only the concept-neuron variables are ever trained.

    ``pipeline`` holds every part (``pipeline.unet`` or ``pipeline.transformer``,
    ``vae``, the text encoders and tokenizers); ``noise_scheduler`` is the
    training schedule, a scheduler of its own that sampling never changes.
    """

    folder: Path
    family: Family
    pipeline: Any  # the family's diffusers pipeline class
    noise_scheduler: Any  # DDPMScheduler (UNet families) or FlowMatchEulerDiscreteScheduler
    adapter: DenoiserAdapter = field(init=False)

    def __post_init__(self) -> None:
        self.adapter = adapter_for(self.denoiser, self.pipeline)

    @property
    def denoiser(self) -> torch.nn.Module:
        """The UNet (SD 1.x, 2.x, SDXL) or transformer (SD3, Flux) whose K/V are searched."""
        return getattr(self.pipeline, self.family.denoiser)

    @property
    def unet(self) -> torch.nn.Module:
        """The denoiser under its SD name (a transformer for SD3 and Flux)."""
        return self.denoiser

    @property
    def vae(self):
        return self.pipeline.vae

    @property
    def text_encoder(self):
        return self.pipeline.text_encoder

    @property
    def tokenizer(self):
        return self.pipeline.tokenizer

    @property
    def native_resolution(self) -> int:
        """The pixel size the model was made for: its pipeline's default sample size (the
        denoiser's, in latents) times the VAE's stride."""
        return native_resolution(self.pipeline, self.denoiser)

    @property
    def latent_multiple(self) -> int:
        """What a resolution must be a multiple of: the VAE's stride, times the transformer's patch
        (SD3's ``patch_size``, Flux's 2x2 packing)."""
        stride = 2 ** (len(self.vae.config.block_out_channels) - 1)
        return stride * (2 if self.family.denoiser == "transformer" else 1)

    @property
    def name(self) -> str:
        """How containers name the base model: the hub name it came from, else the folder's name
        (never a local path, which would leak into files people share)."""
        origin = str(self.denoiser.config.get("_name_or_path") or "")
        if (
            origin
            and not Path(origin).is_absolute()
            and not origin.startswith(".")
            and not Path(origin).exists()
        ):
            return origin.removesuffix(f"/{self.family.denoiser}")
        return self.folder.resolve().name


def native_resolution(pipeline: Any, denoiser: torch.nn.Module) -> int:
    """The pixel size a pipeline was made for: its default sample size (the denoiser's, in
    latents) times the VAE's stride.

    >>> native_resolution(sdxl_pipe, sdxl_pipe.unet)
    1024
    """
    stride = 2 ** (len(pipeline.vae.config.block_out_channels) - 1)
    sample = getattr(pipeline, "default_sample_size", None) or denoiser.config.sample_size
    return int(sample) * stride


def load_base_model(model: str | Path, device: torch.device, weight_dtype: torch.dtype) -> BaseModel:
    """Load every part to ``device``, frozen (``requires_grad=False``), in eval mode.

    The training noise schedule and prediction type come from the folder's
    scheduler config: read as a DDPM schedule (epsilon or v) for the UNet
    families, as flow matching for SD3 and Flux.
    """
    folder = check_model_folder(model)
    family = family_of(folder)
    try:
        if family.name == "sd":
            pipeline, noise_scheduler = load_sd_parts(folder, weight_dtype)
        else:
            pipeline, noise_scheduler = load_pipeline_parts(folder, weight_dtype)
    except (OSError, ValueError) as error:
        raise UsageError(
            f"--model {folder}: cannot load it as a diffusers {family.title} folder ({error})"
        ) from None
    for module in pipeline.components.values():
        if isinstance(module, torch.nn.Module):
            module.requires_grad_(False)
            module.eval()
            module.to(device)
    pipeline.set_progress_bar_config(disable=True)
    return BaseModel(folder, family, pipeline, noise_scheduler)


def load_sd_parts(folder: Path, weight_dtype: torch.dtype):
    """SD 1.x/2.x, part by part (a folder needs no model_index.json); the pipeline samples with
    DPM-Solver++ on the folder's schedule."""
    from diffusers import (
        AutoencoderKL,
        DDPMScheduler,
        DPMSolverMultistepScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel, CLIPTokenizer

    unet = UNet2DConditionModel.from_pretrained(folder / "unet", dtype=weight_dtype)
    vae = AutoencoderKL.from_pretrained(folder / "vae", dtype=weight_dtype)
    text_encoder = CLIPTextModel.from_pretrained(folder / "text_encoder", dtype=weight_dtype)
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    noise_scheduler = DDPMScheduler.from_pretrained(folder / "scheduler")
    pipeline = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=DPMSolverMultistepScheduler.from_config(noise_scheduler.config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    return pipeline, noise_scheduler


def load_pipeline_parts(folder: Path, weight_dtype: torch.dtype):
    """SDXL, SD3, Flux: the folder's own pipeline class. SDXL samples with DPM-Solver++ on its
    schedule, as SD does; SD3 and Flux with their own flow-matching scheduler. The training
    schedule is a scheduler of its own, loaded from the same config."""
    from diffusers import (
        DDPMScheduler,
        DiffusionPipeline,
        DPMSolverMultistepScheduler,
        FlowMatchEulerDiscreteScheduler,
    )

    # Components saved as null (SD3 without T5: text_encoder_3, tokenizer_3) must be passed as None.
    pipeline = DiffusionPipeline.from_pretrained(folder, dtype=weight_dtype, **components_left_out(folder))
    if isinstance(pipeline.scheduler, FlowMatchEulerDiscreteScheduler):
        noise_scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipeline.scheduler.config)
    else:
        noise_scheduler = DDPMScheduler.from_pretrained(folder / "scheduler")
        pipeline.scheduler = DPMSolverMultistepScheduler.from_config(noise_scheduler.config)
    return pipeline, noise_scheduler
