"""A real StableDiffusionPipeline: apply, generate, remove; the same seed gives the same image."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from diffusers import StableDiffusionPipeline

import conesfmt
import conesrt
from tests.conesrt.helpers import assert_bit_identical, random_container, snapshot
from tests.tiny_models import tiny_pipeline

README = Path(__file__).resolve().parents[2] / "README.md"


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


def test_the_readme_example_loads_with_dtype_and_applies_in_half_precision(tmp_path) -> None:
    """diffusers 0.42 deprecates ``torch_dtype=`` for ``dtype=``: the README uses the new name."""
    section = README.read_text().split("### Apply them to a model")[1]
    example = section.split("```python\n")[1].split("```")[0]
    assert "dtype=torch.float16" in example and "torch_dtype" not in example

    pipe = tiny_pipeline(tmp_path)
    container = random_container(pipe.unet, seed=3)  # made on the fp32 weights
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        half = StableDiffusionPipeline.from_pretrained(
            tmp_path / "pipeline", dtype=torch.float16, safety_checker=None
        )
    assert not [w for w in caught if "dtype" in str(w.message)]
    assert half.unet.dtype == torch.float16
    base = snapshot(half.unet)
    with conesrt.apply(half, container) as handle:
        assert handle.active
    assert_bit_identical(half.unet, base)
