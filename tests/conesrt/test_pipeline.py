"""A real StableDiffusionPipeline: apply, generate, remove; the same seed gives the same image."""

from __future__ import annotations

import numpy as np
import torch

import conesfmt
import conesrt
from tests.conesrt.helpers import random_container
from tests.tiny_models import tiny_pipeline


def generate(pipe) -> np.ndarray:
    generator = torch.Generator().manual_seed(1234)
    return pipe(
        "photo of a sks cat",
        num_inference_steps=3,
        height=32,
        width=32,
        generator=generator,
        output_type="np",
    ).images[0]


def test_apply_generate_remove_gives_the_same_image_again(tmp_path) -> None:
    pipe = tiny_pipeline(tmp_path)
    path = conesfmt.save(random_container(pipe.unet, seed=1, density=0.2), tmp_path / "cat.cones")

    first = generate(pipe)
    with conesrt.apply(pipe, [path]):
        shut = generate(pipe)
    again = generate(pipe)

    assert np.array_equal(first, again)  # bit-identical: same bytes
    assert not np.allclose(first, shut, atol=1e-3)
