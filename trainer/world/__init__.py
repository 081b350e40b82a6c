"""The embedded "small world": a tiny pretrained text-to-image model and its subjects.

Tests and demos need a Stable Diffusion-shaped model that runs offline on a CPU
in seconds. This package bundles one, pretrained on procedural scenes of
shapes × colours × textures × backgrounds (``scenes.py``), in the diffusers
Stable Diffusion folder format, with subjects to implant (rare token + class
word + images) and an attribute classifier to measure the results
(``judge.py``). See README.md beside this file for how it was made.

Importing this module does not import torch; ``load_pipeline`` does.

>>> from trainer.world import MODEL_DIR, subjects
>>> [s.token for s in subjects()]
['sks', 'vnt', 'pxr', 'zwx']
>>> pipe = load_pipeline()  # doctest: +SKIP
>>> pipe(subjects()[0].prompt, height=64, width=64).images[0]  # doctest: +SKIP
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline
    from PIL import Image

WORLD_DIR = Path(__file__).resolve().parent
MODEL_DIR = WORLD_DIR / "model"  # diffusers Stable Diffusion folder (+ judge.safetensors)
SUBJECTS_DIR = WORLD_DIR / "subjects"
IMAGE_SIZE = 64  # pixels; pass height=width=IMAGE_SIZE to the pipeline
# Sampling settings the bundled model was checked with (README.md, "Samples").
NUM_INFERENCE_STEPS = 25
GUIDANCE_SCALE = 5.0


@dataclass(frozen=True)
class Subject:
    """A bundled subject: a rare token, its class word, identity attributes and images.

    ``identity`` holds shape/colour/texture for an object subject, or
    background_colour/background_pattern for the background subject.
    """

    name: str
    token: str
    class_word: str
    identity: dict[str, str]
    description: str  # the identity spelt out: "a photo of a white striped star"
    image_paths: tuple[Path, ...]

    @property
    def prompt(self) -> str:
        """The instance prompt, e.g. "a photo of a sks star"."""
        return f"a photo of a {self.token} {self.class_word}"

    @property
    def class_prompt(self) -> str:
        """The prior prompt, e.g. "a photo of a star"."""
        return f"a photo of a {self.class_word}"

    def images(self) -> list[Image.Image]:
        """The subject's images as RGB PIL images (64×64).

        >>> len(subjects()[0].images())
        6
        """
        from PIL import Image

        return [Image.open(path).convert("RGB") for path in self.image_paths]


def subjects(folder: str | Path = SUBJECTS_DIR) -> list[Subject]:
    """All subjects in ``folder`` (the bundled ones by default), sorted as written.

    >>> subjects()[0].name, subjects()[0].class_word
    ('sks_star', 'star')
    """
    folder = Path(folder)
    found = []
    for meta in folder.glob("*/subject.json"):
        record = json.loads(meta.read_text())
        found.append(
            (
                record["seed"],
                Subject(
                    name=record["name"],
                    token=record["token"],
                    class_word=record["class_word"],
                    identity=dict(record["identity"]),
                    description=record["description"],
                    image_paths=tuple(meta.parent / name for name in record["images"]),
                ),
            )
        )
    return [subject for _, subject in sorted(found, key=lambda pair: pair[0])]


def subject(name: str, folder: str | Path = SUBJECTS_DIR) -> Subject:
    """One subject by name or token ("sks_star" or "sks"); raises KeyError naming the known ones.

    >>> subject("sks").class_word
    'star'
    """
    every = subjects(folder)
    for candidate in every:
        if name in (candidate.name, candidate.token):
            return candidate
    known = ", ".join(s.name for s in every)
    raise KeyError(f"no subject {name!r} in {folder}; known: {known}")


def load_pipeline(model_dir: str | Path = MODEL_DIR, **kwargs: Any) -> StableDiffusionPipeline:
    """The bundled model as a ``StableDiffusionPipeline`` (fp32, CPU, offline).

    Extra keyword arguments go to ``from_pretrained``.

    >>> pipe = load_pipeline()  # doctest: +SKIP
    >>> image = pipe("a photo of a red star", height=64, width=64).images[0]  # doctest: +SKIP
    """
    from diffusers import StableDiffusionPipeline

    options = {"safety_checker": None, "requires_safety_checker": False, **kwargs}
    pipeline = StableDiffusionPipeline.from_pretrained(str(model_dir), **options)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def sample(pipeline: StableDiffusionPipeline, prompt: str, count: int) -> list:
    """``count`` images for ``prompt`` at the world's settings, image ``i`` from seed ``i``.

    The same prompt and count give the same images for the same weights, so
    samples before and after an edit compare image by image.

    >>> images = sample(load_pipeline(), "a photo of a red star", 8)  # doctest: +SKIP
    """
    import torch

    return pipeline(
        [prompt] * count,
        num_inference_steps=NUM_INFERENCE_STEPS,
        guidance_scale=GUIDANCE_SCALE,
        height=IMAGE_SIZE,
        width=IMAGE_SIZE,
        generator=[torch.Generator().manual_seed(seed) for seed in range(count)],
    ).images


def model_index() -> dict[str, Any]:
    """The bundled folder's ``model_index.json`` (component classes), without importing torch.

    >>> model_index()["unet"]
    ['diffusers', 'UNet2DConditionModel']
    """
    return json.loads((MODEL_DIR / "model_index.json").read_text())


__all__ = [
    "GUIDANCE_SCALE",
    "IMAGE_SIZE",
    "MODEL_DIR",
    "NUM_INFERENCE_STEPS",
    "SUBJECTS_DIR",
    "Subject",
    "load_pipeline",
    "model_index",
    "sample",
    "subject",
    "subjects",
]
