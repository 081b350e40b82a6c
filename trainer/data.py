"""The frozen work, done once: images to latent distributions, prompts to embeddings.

Subject and prior images are resized, centre-cropped, flipped (augmentation)
and encoded by the VAE once; each step then samples latents from the cached
Gaussians (``mean + std * noise``), as encoding each step would, at no VAE
cost. Prompts are encoded once, by the family's adapter (trainer.denoisers).

>>> bank = encode_images(base, image_files("cat/"), resolution=512, flip=True)
>>> latents = bank.sample(batch_size=2, generator=generator)
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from conesfmt.files import replacing

from .base_model import BaseModel
from .config import IMAGE_SUFFIXES, image_files
from .denoisers import MAX_SEQUENCE_LENGTH, Conditioning, max_sequence_length


@dataclass
class LatentBank:
    """Cached VAE posteriors of a set of images (already scaled by the VAE's factor)."""

    mean: torch.Tensor  # (n, c, h, w)
    std: torch.Tensor

    def __len__(self) -> int:
        return self.mean.shape[0]

    def sample(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """``batch_size`` latents: random images (with replacement), a fresh posterior sample each."""
        picks = torch.randint(len(self), (batch_size,), generator=generator).to(self.mean.device)
        noise = torch.randn(self.mean[picks].shape, generator=generator).to(self.mean.device, self.mean.dtype)
        return self.mean[picks] + self.std[picks] * noise


def load_image(path: Path, resolution: int) -> torch.Tensor:
    """RGB in [-1, 1], shorter side resized to ``resolution``, centre-cropped square."""
    with Image.open(path) as opened:
        image = opened.convert("RGB")
    scale = resolution / min(image.size)
    size = (max(resolution, round(image.width * scale)), max(resolution, round(image.height * scale)))
    image = image.resize(size, Image.Resampling.BICUBIC)
    left, top = (image.width - resolution) // 2, (image.height - resolution) // 2
    image = image.crop((left, top, left + resolution, top + resolution))
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1)


@torch.no_grad()
def encode_images(
    base: BaseModel, paths: list[Path], resolution: int, flip: bool, batch_size: int = 8
) -> LatentBank:
    """Encode images (and their mirror images if ``flip``) to cached latent distributions.

    Latents are ``(z - shift_factor) * scaling_factor`` as the VAE's config
    says (SD3's and Flux's VAEs have a shift; SD's none). SDXL's VAE runs in
    float32 when its config asks (``force_upcast``: it overflows in float16),
    as its pipeline does.
    """
    pixels = torch.stack([load_image(path, resolution) for path in paths])
    if flip:
        pixels = torch.cat([pixels, pixels.flip(-1)])
    vae = base.vae
    weight_dtype = vae.dtype
    upcast = base.family.name == "sdxl" and weight_dtype == torch.float16 and vae.config.get("force_upcast")
    if upcast:
        vae.to(torch.float32)
    means, stds = [], []
    for start in range(0, len(pixels), batch_size):
        chunk = pixels[start : start + batch_size].to(vae.device, vae.dtype)
        posterior = vae.encode(chunk).latent_dist
        means.append(posterior.mean.float())
        stds.append(posterior.std.float())
    if upcast:
        vae.to(weight_dtype)
    factor, shift = vae.config.scaling_factor, vae.config.get("shift_factor")
    mean = torch.cat(means) if shift is None else torch.cat(means) - shift
    return LatentBank(mean * factor, torch.cat(stds) * factor)


@torch.no_grad()
def encode_prompt(base: BaseModel, prompt: str, resolution: int | None = None) -> Conditioning:
    """The conditioning of ``prompt`` for the base model's family (trainer.denoisers), in float32:
    for SD 1.x/2.x the text encoder's last hidden state, padded to the tokenizer's length.
    ``resolution`` (pixels; None: the model's own) sets SDXL's size ids."""
    return base.adapter.encode_prompt(prompt, resolution or base.native_resolution)


def class_image_folder(base: BaseModel, prompt: str, resolution: int, seed: int, cache: Path | None) -> Path:
    """Where generated prior images are cached: per model, prompt, resolution and seed."""
    if cache is not None:
        return Path(cache)
    # "v2": images seeded per number (trainer.data.image_seed); older caches are not mixed in.
    key = f"v2|{base.folder.resolve()}|{prompt}|{resolution}|{seed}"
    key = hashlib.sha256(key.encode()).hexdigest()[:16]
    return Path.home() / ".cache" / "cones" / "class-images" / key


def image_seed(seed: int, number: int) -> int:
    """The generator seed of prior image ``number`` in a run seeded ``seed``."""
    return (seed * 1_000_003 + number) % (1 << 63)


@torch.no_grad()
def ensure_class_images(
    base: BaseModel,
    folder: Path,
    prompt: str,
    count: int,
    resolution: int,
    steps: int,
    seed: int,
    progress: bool = True,
    batch_size: int = 4,
) -> list[Path]:
    """Make sure ``folder`` holds at least ``count`` prior images, generating the missing ones.

    As in DreamBooth: existing images are used as they are; missing ones are
    generated by the base model with the class prompt and saved, so the next
    run finds them.
    """
    folder.mkdir(parents=True, exist_ok=True)
    existing = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    missing = count - len(existing)
    if missing > 0:
        # The model's own pipeline class draws them (trainer.base_model: DPM-Solver++ for the UNet
        # families, the flow-matching scheduler for SD3 and Flux), at its default guidance.
        pipe = base.pipeline
        options = {}
        if base.family.name in MAX_SEQUENCE_LENGTH:
            options["max_sequence_length"] = max_sequence_length(pipe, base.family.name)
        from .presentation import progress_bar

        # Advanced at every denoising step (by a fraction of an image), so the bar shows a rate
        # and an ETA from the first image on.
        bar = progress_bar(
            total=missing,
            desc=f"prior images for {prompt!r}",
            unit="image",
            enabled=progress,
            # The count in tenths of an image, not the float the fractions sum to ("0.9600000000000001").
            bar_format="{l_bar}{bar}| {n:.1f}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]",
        )
        batch = [0]

        def advance(pipeline, step, timestep, callback_kwargs):
            bar.update(batch[0] / steps)
            return callback_kwargs

        # Image k is named k and seeded by k: a top-up never repeats an image nor
        # overwrites a file, and image k is the same whatever the batch size.
        taken = {path.name for path in folder.iterdir()}
        free = (k for k in itertools.count() if f"{k:05d}.png" not in taken)
        made = 0
        while made < missing:
            n = min(batch_size, missing - made)
            numbers = list(itertools.islice(free, n))
            batch[0] = n
            images = pipe(
                [prompt] * n,
                num_inference_steps=steps,
                height=resolution,
                width=resolution,
                generator=[torch.Generator().manual_seed(image_seed(seed, k)) for k in numbers],
                callback_on_step_end=advance,
                **options,
            ).images
            for number, image in zip(numbers, images, strict=True):
                with replacing(folder / f"{number:05d}.png") as temporary:
                    image.save(temporary, format="PNG")
                made += 1
            bar.n = made  # exact again, whatever rounding the fractions left
            bar.refresh()
        bar.close()
    return image_files(folder)[:count]
