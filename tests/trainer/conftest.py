"""A tiny Stable Diffusion folder on disk and a subject, shared by the trainer tests."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.tiny_models import (
    tiny_flux_pipeline,
    tiny_pipeline,
    tiny_sd2_pipeline,
    tiny_sd3_pipeline,
    tiny_sdxl_pipeline,
)

#: The tiny pipeline of each family but SD 1.x (the world's), by the name tests give it.
BUILDERS = {
    "sd2": tiny_sd2_pipeline,
    "sdxl": tiny_sdxl_pipeline,
    "sd3": tiny_sd3_pipeline,
    "flux": tiny_flux_pipeline,
    "flux-guidance": partial(tiny_flux_pipeline, guidance_embeds=True),  # FLUX.1-dev's guidance embedding
}


def subject_images(folder: Path, colour: tuple[int, int, int], seed: int, count: int = 4) -> Path:
    """A small square of one colour on random plain backgrounds, at varied sizes and places."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for number in range(count):
        height, width = rng.integers(40, 64, size=2)
        image = np.zeros((height, width, 3), np.uint8)
        image[:] = rng.integers(0, 256, 3)
        top, left = rng.integers(0, 12, size=2)
        image[top : top + 24, left : left + 24] = colour
        Image.fromarray(image).save(folder / f"{number}.png")
    return folder


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> dict[str, Path]:
    """A saved tiny pipeline, two subjects, and a folder for prior images (filled on first use)."""
    root = tmp_path_factory.mktemp("world")
    tiny_pipeline(root)
    return {
        "model": root / "pipeline",
        "red": subject_images(root / "red", (220, 30, 30), seed=1),
        "blue": subject_images(root / "blue", (30, 60, 230), seed=2),
        "prior": root / "prior",
        "root": root,
    }


@pytest.fixture(scope="session")
def folders(world, tmp_path_factory):
    """``folders(name)``: the saved tiny pipeline of a family, built once (SD 1.x: the tests' world)."""
    built = {"sd1": world["model"]}

    def folder(name: str) -> Path:
        if name not in built:
            root = tmp_path_factory.mktemp(name)
            BUILDERS[name](root)
            built[name] = root / "pipeline"
        return built[name]

    return folder


def train_options(world: dict[str, Path], **overrides) -> dict:
    """Settings small enough for a CPU test: 32 px, 40 steps, 4 prior images of 2 sampling steps."""
    options = dict(
        model=world["model"],
        images=world["red"],
        token="sks",
        class_word="square",
        sparsity=0.02,
        steps=40,
        lr=1e-3,
        resolution=32,
        num_class_images=4,
        class_image_steps=2,
        class_images=world["prior"],
        device="cpu",
        progress=False,
        overwrite=True,
    )
    return options | overrides
