"""The embedded small world: bundled model, tokenizer, subjects, scenes and judge."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from trainer import world
from trainer.world import scenes, subject_specs, vocabulary

MAX_MODEL_BYTES = 20 * 1024 * 1024


@pytest.fixture(scope="module")
def pipeline():
    os.environ["HF_HUB_OFFLINE"] = "1"  # a hub call would fail loudly instead of hanging
    return world.load_pipeline()


@pytest.mark.parametrize(
    "module", ["components", "scenes", "vocabulary", "subject_specs", "judge", "pretrain"]
)
def test_world_docstring_examples_hold(module: str) -> None:
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(f"trainer.world.{module}"))
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed"


def test_scheduler_has_zero_terminal_snr_and_v_prediction() -> None:
    """The bundled model was trained for it: sampling must start from pure noise."""
    from diffusers import DPMSolverMultistepScheduler

    scheduler = DPMSolverMultistepScheduler.from_pretrained(world.MODEL_DIR / "scheduler")
    assert scheduler.config.prediction_type == "v_prediction"
    assert scheduler.alphas_cumprod[-1] < 1e-6
    scheduler.set_timesteps(world.NUM_INFERENCE_STEPS)
    assert int(scheduler.timesteps[0]) == 999


def test_import_does_not_load_torch():
    code = "import sys, trainer.world as w; w.subjects(); assert 'torch' not in sys.modules, 'torch'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=world.WORLD_DIR.parents[1])


def test_model_folder_is_small_and_complete():
    index = world.model_index()
    for component in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert component in index and (world.MODEL_DIR / component).is_dir()
    weights = sum(p.stat().st_size for p in world.MODEL_DIR.rglob("*.safetensors"))
    assert weights <= MAX_MODEL_BYTES


def test_pipeline_loads_offline_with_cross_attention_in_fp32(pipeline):
    names = [name for name, _ in pipeline.unet.named_parameters()]
    assert any(".attn2.to_k.weight" in n for n in names)
    assert any(".attn2.to_v.weight" in n for n in names)
    assert pipeline.unet.dtype == pipeline.vae.dtype == pipeline.text_encoder.dtype
    assert str(pipeline.unet.dtype) == "torch.float32"


def test_seeded_generation_is_deterministic(pipeline):
    import torch

    def sample() -> np.ndarray:
        return pipeline(
            ["a photo of a red star", "a photo of a sks star"],
            height=world.IMAGE_SIZE,
            width=world.IMAGE_SIZE,
            num_inference_steps=8,
            guidance_scale=world.GUIDANCE_SCALE,
            generator=torch.Generator().manual_seed(7),
            output_type="np",
        ).images

    first, second = sample(), sample()
    assert first.shape == (2, 64, 64, 3)
    np.testing.assert_array_equal(first, second)


def test_world_sample_draws_image_i_from_seed_i(pipeline):
    three = [np.asarray(image) for image in world.sample(pipeline, "a photo of a red star", 3)]
    two = [np.asarray(image) for image in world.sample(pipeline, "a photo of a red star", 2)]
    assert three[0].shape == (world.IMAGE_SIZE, world.IMAGE_SIZE, 3)
    # Image 1 is seed 1's, whatever the count. A batch of 3 and one of 2 run
    # different matrix-multiply blockings, so a pixel may round the other way.
    same_seed = np.abs(three[1].astype(int) - two[1].astype(int))
    other_seed = np.abs(three[0].astype(int) - three[1].astype(int))
    assert same_seed.max() <= 2 and (same_seed > 0).mean() < 0.001
    assert other_seed.mean() > 10


def test_tokenizer_encodes_rare_tokens_to_single_known_ids(pipeline):
    tokenizer = pipeline.tokenizer
    vocab = json.loads((world.MODEL_DIR / "tokenizer" / "vocab.json").read_text())
    for token in vocabulary.RARE_TOKENS:
        ids = tokenizer(f"a photo of a {token} star").input_ids
        assert ids[5] == vocab[f"{token}</w>"]
        assert len(ids) == 8  # BOS a photo of a <token> star EOS
    assert tokenizer.model_max_length == vocabulary.MAX_LENGTH


def test_rare_tokens_never_occur_in_pretraining_captions():
    rng = np.random.default_rng(0)
    words = set()
    for scene in scenes.make_dataset(300, seed=0)[1]:
        for _ in range(3):
            words.update(scenes.caption(scene, rng).split())
    assert words <= set(scenes.CAPTION_WORDS)
    assert not words & set(vocabulary.RARE_TOKENS)


def test_dataset_is_deterministic_for_a_seed():
    images_a, scenes_a = scenes.make_dataset(6, seed=11)
    images_b, scenes_b = scenes.make_dataset(6, seed=11)
    images_c, _ = scenes.make_dataset(6, seed=12)
    np.testing.assert_array_equal(images_a, images_b)
    assert scenes_a == scenes_b
    assert not np.array_equal(images_a, images_c)
    rng_a, rng_b = np.random.default_rng(5), np.random.default_rng(5)
    assert [scenes.caption(s, rng_a) for s in scenes_a] == [scenes.caption(s, rng_b) for s in scenes_b]


def test_scenes_respect_their_rules():
    rng = np.random.default_rng(3)
    for _ in range(200):
        scene = scenes.sample_scene(rng)
        shapes = [o.shape for o in scene.objects]
        assert len(shapes) == len(set(shapes)) <= 2
        assert all(o.colour != scene.background_colour for o in scene.objects)


def test_bundled_subjects_load_and_match_their_generator():
    from PIL import Image

    bundled = world.subjects()
    assert len(bundled) >= 3
    assert {s.class_word for s in bundled} >= {"star", "ring", "background"}
    assert {s.token for s in bundled} <= set(vocabulary.RARE_TOKENS)
    for spec, subject in zip(subject_specs.SUBJECT_SPECS, bundled, strict=True):
        assert subject.name == spec["name"] and 4 <= len(subject.image_paths) <= 6
        assert subject.prompt == f"a photo of a {subject.token} {subject.class_word}"
        regenerated = subject_specs.subject_images(spec, len(subject.image_paths))
        for path, image in zip(subject.image_paths, regenerated, strict=True):
            np.testing.assert_array_equal(np.asarray(Image.open(path).convert("RGB")), image)
    assert world.subject("sks").name == "sks_star"
    with pytest.raises(KeyError, match="known"):
        world.subject("nope")


def test_judge_recognises_subjects_and_not_random_scenes():
    from trainer.world import judge

    random_images, _ = scenes.make_dataset(64, seed=99)
    for subject in world.subjects():
        assert judge.subject_score(subject.images(), subject) > 0.8, subject.name
        assert judge.subject_score(random_images, subject) < 0.15, subject.name


def test_judge_reads_procedural_scenes():
    from trainer.world import judge

    images, scene_list = scenes.make_dataset(64, seed=123)
    seen = judge.judge(images)
    pairs = list(zip(seen, scene_list, strict=True))
    backgrounds = np.mean([a.background_colour == s.background_colour for a, s in pairs])
    shapes = np.mean([set(a.objects) == {o.shape for o in s.objects} for a, s in pairs])
    assert backgrounds > 0.9 and shapes > 0.8
