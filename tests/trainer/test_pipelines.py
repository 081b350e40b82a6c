"""trainer.pipelines.load_pipeline on folders that list components as null in model_index.json."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch

from tests.tiny_models import tiny_sd3_pipeline
from trainer.pipelines import components_left_out, load_pipeline


def test_sd3_without_t5_loads_and_draws(tmp_path: Path) -> None:
    from diffusers import StableDiffusion3Pipeline

    full = tiny_sd3_pipeline(tmp_path / "full")
    StableDiffusion3Pipeline(
        **full.components | {"text_encoder_3": None, "tokenizer_3": None}
    ).save_pretrained(tmp_path / "no-t5")
    index = json.loads((tmp_path / "no-t5" / "model_index.json").read_text())
    assert index["text_encoder_3"] == [None, None] and index["tokenizer_3"] == [None, None]
    assert components_left_out(tmp_path / "no-t5") == {
        "feature_extractor": None,
        "image_encoder": None,
        "text_encoder_3": None,
        "tokenizer_3": None,
    }
    pipe = load_pipeline(tmp_path / "no-t5")
    assert type(pipe).__name__ == "StableDiffusion3Pipeline" and pipe.text_encoder_3 is None
    options = {"height": 32, "width": 32, "num_inference_steps": 2, "output_type": "np"}
    image = pipe("a photo of a square", generator=torch.Generator().manual_seed(0), **options).images[0]
    assert image.shape == (32, 32, 3) and np.isfinite(image).all()


def test_a_null_safety_checker_that_the_folder_requires_is_left_out(world, tmp_path: Path) -> None:
    folder = tmp_path / "sd"
    shutil.copytree(world["model"], folder)
    index = json.loads((folder / "model_index.json").read_text())
    index |= {"safety_checker": [None, None], "feature_extractor": [None, None]}
    index["requires_safety_checker"] = True
    (folder / "model_index.json").write_text(json.dumps(index))
    pipe = load_pipeline(folder)
    assert pipe.safety_checker is None and pipe.feature_extractor is None
    assert components_left_out(world["model"] / "unet") == {}  # no model_index.json: nothing left out
