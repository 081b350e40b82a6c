"""Issue 14, the trainer's side: ``cones train`` and ``cones refine`` on SD 1.x, SD 2.x, SDXL, SD3 and Flux.

For each family, on the tiny pipelines of tests/tiny_models.py (saved and
loaded with ``from_pretrained``): train a few steps through the ``cones``
entry point → container → ``conesrt.apply`` to the family's pipeline →
a different image → ``remove`` → bit-identical weights and image → ``bake``
equals ``apply``. Then how each family's adapter calls its denoiser (as the
pipeline itself does) and the flow-matching forward process (as the
scheduler's own).
"""

from __future__ import annotations

import json
import shutil
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import conesfmt
import conesrt
from conesfmt.cli import main as cones
from tests.conesrt.helpers import assert_bit_identical, bits, snapshot
from trainer import UsageError
from trainer.base_model import load_base_model
from trainer.config import check_model_folder
from trainer.denoisers import FLUX_GUIDANCE

FAMILIES = ["sd1", "sd2", "sdxl", "sd3", "flux"]
#: What `cones train` takes from a transformer pipeline: T5 prompts at most the tiny tokenizer's 32.
DRAW = {"height": 32, "width": 32, "num_inference_steps": 2, "output_type": "np"}
TEXT = {"sd3": {"max_sequence_length": 32}, "flux": {"max_sequence_length": 32}}


def draw(pipe, family: str) -> np.ndarray:
    generator = torch.Generator().manual_seed(5)
    options = DRAW | TEXT.get(family, {})
    return pipe("photo of a sks square", generator=generator, **options).images[0]


def pipeline(folder: Path):
    """The folder as a user loads it: its own pipeline class."""
    from diffusers import DiffusionPipeline

    listed = json.loads((folder / "model_index.json").read_text())
    pipe = DiffusionPipeline.from_pretrained(
        folder, **({"safety_checker": None} if "safety_checker" in listed else {})
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module", params=FAMILIES)
def trained(request, folders, world, tmp_path_factory) -> dict:
    """``cones train`` (the console entry point, in process) for 3 steps on one family, with 2
    prior images drawn by the family's own pipeline."""
    family = request.param
    root = tmp_path_factory.mktemp(f"trained-{family}")
    out = root / "red.cones"
    command = ["train", "--model", str(folders(family)), "--images", str(world["red"])]
    command += ["--class-word", "square", "--sparsity", "0.1", "--steps", "3", "--lr", "1e-3"]
    command += ["--resolution", "32", "--num-class-images", "2", "--class-image-steps", "2"]
    command += ["--class-images", str(root / "prior"), "--batch-size", "1", "--device", "cpu"]
    command += ["--quiet", "--out", str(out)]
    assert cones(command) == 0
    return {"family": family, "folder": folders(family), "out": out, "prior": root / "prior", "root": root}


def test_train_apply_remove_and_bake_on_each_family(trained) -> None:
    family, folder, path = trained["family"], trained["folder"], trained["out"]
    container = conesfmt.load(path)
    (concept,) = container.concepts.values()
    pipe = pipeline(folder)
    denoiser = pipe.transformer if family in ("sd3", "flux") else pipe.unet
    # The family's searched layers (conesrt.families), every one of them (in the weight file's order).
    assert sorted(container.layers) == sorted(conesrt.searched_layers(pipe))
    assert 0 < concept.total <= round(0.1 * container.numel)
    part = "transformer" if family in ("sd3", "flux") else "unet"
    assert len(container.metadata[f"base_model_{part}_sha256"]) == 64
    assert len(list(trained["prior"].glob("*.png"))) == 2  # drawn by the family's pipeline

    base = snapshot(denoiser)
    before = draw(pipe, family)
    with conesrt.apply(pipe, [path]):
        applied = snapshot(denoiser)
        shut = draw(pipe, family)
    after = draw(pipe, family)
    assert not np.allclose(before, shut, atol=1e-4)
    assert np.array_equal(before, after)
    assert_bit_identical(denoiser, base)

    baked = conesrt.bake(folder, [path], trained["root"] / "baked.safetensors")
    for key, value in load_file(baked).items():
        assert torch.equal(bits(value), bits(applied[key])), key


def test_refine_on_each_family_keeps_a_subset_of_the_union(trained, world) -> None:
    single = trained["out"]
    out = trained["root"] / "refined.cones"
    command = [
        "refine",
        str(single),
        "--model",
        str(trained["folder"]),
        "--data",
        f"sks square={world['red']}",
    ]
    command += ["--sparsity", "0.05", "--steps", "2", "--lr", "1e-3", "--resolution", "32"]
    command += ["--num-class-images", "2", "--class-images", str(trained["prior"]), "--batch-size", "1"]
    command += ["--device", "cpu", "--quiet", "--out", str(out)]
    assert cones(command) == 0
    union, refined = conesfmt.load(single), conesfmt.load(out)
    ((name, concept),) = refined.concepts.items()
    assert concept.metadata["method"] == "refine" and concept.total > 0
    for key in union.layers:
        assert np.isin(refined.indices(name, key), union.indices("sks square", key)).all(), key


@pytest.mark.parametrize("family", [*FAMILIES, "flux-guidance"])
def test_the_adapter_calls_the_denoiser_as_its_pipeline_does(folders, family) -> None:
    """The trainer's prediction for the pipeline's own first-step input, with the trainer's own
    conditioning of the prompt, is the pipeline's prediction: same call, same conditioning."""
    base = load_base_model(folders(family), torch.device("cpu"), torch.float32)
    seen = {}

    def record(module, args, kwargs, output):
        seen.setdefault("call", (args, kwargs, output[0]))

    hook = base.denoiser.register_forward_hook(record, with_kwargs=True)
    options = DRAW | TEXT.get(family.split("-")[0], {}) | {"num_inference_steps": 1, "output_type": "latent"}
    # Flux's guidance_scale is its embedded guidance (no classifier-free batch); elsewhere 1.0: none.
    guidance = FLUX_GUIDANCE if family.startswith("flux") else 1.0
    base.pipeline("photo of a sks cat", guidance_scale=guidance, **options)
    hook.remove()
    args, kwargs, expected = seen["call"]
    if family.startswith("flux"):
        from diffusers import FluxPipeline

        scale = base.pipeline.vae_scale_factor
        unpack = partial(FluxPipeline._unpack_latents, height=32, width=32, vae_scale_factor=scale)
        noisy, timesteps, expected = (
            unpack(kwargs["hidden_states"]),
            kwargs["timestep"] * 1000,
            unpack(expected),
        )
    elif family == "sd3":
        noisy, timesteps = kwargs["hidden_states"], kwargs["timestep"]
    else:
        noisy, timesteps = args[0], args[1].expand(args[0].shape[0])
    conditioning = base.adapter.encode_prompt("photo of a sks cat", 32)
    with torch.no_grad():
        predicted = base.adapter.predict(base.denoiser, noisy, timesteps, conditioning)
    torch.testing.assert_close(predicted, expected, rtol=1e-5, atol=1e-5)


def test_flow_matching_noises_as_the_scheduler_does() -> None:
    """(1 - σ) x + σ ε with σ of each drawn timestep, as FlowMatchEulerDiscreteScheduler.scale_noise
    (SD3's shift 3 applied), and the velocity ε - x as the target."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from trainer.schedules import noise_schedule

    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    schedule = noise_schedule(scheduler)
    timesteps = schedule.draw_timesteps(6, torch.Generator().manual_seed(0))
    assert set(timesteps.tolist()) <= set(scheduler.timesteps.tolist())
    clean, noise = torch.randn(6, 4, 8, 8), torch.randn(6, 4, 8, 8)
    expected = torch.cat(
        [scheduler.scale_noise(clean[i : i + 1], timesteps[i : i + 1], noise[i : i + 1]) for i in range(6)]
    )
    torch.testing.assert_close(schedule.add_noise(clean, noise, timesteps), expected, rtol=0, atol=1e-6)
    assert torch.equal(schedule.target(clean, noise, timesteps), noise - clean)


def test_sd3_without_t5_trains_on_zeros_in_its_place(folders, world, tmp_path) -> None:
    """An SD3 folder without its T5 (model_index.json says null): the pipeline's zeros stand in."""
    from diffusers import StableDiffusion3Pipeline

    from trainer import train_concept

    full = StableDiffusion3Pipeline.from_pretrained(folders("sd3"))
    StableDiffusion3Pipeline(
        **full.components | {"text_encoder_3": None, "tokenizer_3": None}
    ).save_pretrained(tmp_path / "no-t5")
    assert not (tmp_path / "no-t5" / "text_encoder_3").exists()
    base = load_base_model(tmp_path / "no-t5", torch.device("cpu"), torch.float32)
    text = base.adapter.encode_prompt("photo of a sks square", 32)["encoder_hidden_states"]
    clip_tokens = base.pipeline.tokenizer.model_max_length
    assert text.shape[1] > clip_tokens and not text[:, clip_tokens:].any()
    result = train_concept(
        model=tmp_path / "no-t5",
        images=world["red"],
        class_word="square",
        prior_weight=0.0,
        sparsity=0.1,
        steps=2,
        lr=1e-3,
        resolution=32,
        batch_size=1,
        device="cpu",
        progress=False,
        out=tmp_path / "red.cones",
    )
    assert result.container.concepts["sks square"].total > 0


def test_folders_are_checked_per_family(folders, tmp_path) -> None:
    flux = tmp_path / "flux"
    shutil.copytree(folders("flux"), flux, ignore=shutil.ignore_patterns("transformer"))
    with pytest.raises(
        UsageError, match=r"missing transformer \(a diffusers Flux folder has transformer, vae"
    ):
        check_model_folder(flux)
    index = json.loads((flux / "model_index.json").read_text())
    (flux / "model_index.json").write_text(json.dumps(index | {"_class_name": "KandinskyPipeline"}))
    with pytest.raises(UsageError, match="a KandinskyPipeline; cones train takes StableDiffusionPipeline"):
        check_model_folder(flux)
