"""cones train / trainer.train_concept on a tiny model: the method works, deterministically."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import conesfmt
import conesrt
from tests.trainer.conftest import train_options
from trainer import TrainConfig, train_concept
from trainer.base_model import load_base_model
from trainer.evaluate import loss_with, random_like
from trainer.runs import prepare_subject

CONES = str(Path(sys.executable).parent / "cones")


@pytest.fixture(scope="module")
def trained(world, tmp_path_factory) -> Path:
    """``cones train`` end to end, in a subprocess, as a user would run it."""
    out = tmp_path_factory.mktemp("train") / "red.cones"
    options = train_options(world)
    command = [
        CONES,
        "train",
        "--model",
        str(world["model"]),
        "--images",
        str(world["red"]),
        "--class-word",
        "square",
    ]
    command += ["--sparsity", "0.02", "--steps", "40", "--lr", "1e-3", "--resolution", "32"]
    command += ["--num-class-images", "4", "--class-image-steps", "2", "--class-images", str(world["prior"])]
    command += ["--device", "cpu", "--out", str(out)]
    assert options["steps"] == 40  # the same settings the API tests use
    # The time limit only catches a hang: on a busy 2-core machine this takes minutes, not seconds.
    result = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "concept 'sks square'" in result.stdout and "s/step" in result.stdout
    return out


def test_train_writes_a_container_and_a_loss_log(trained: Path) -> None:
    container = conesfmt.load(trained)
    (concept,) = container.concepts.values()
    assert concept.trigger == "sks" and concept.class_word == "square"
    assert (
        concept.metadata["prompt"] == "photo of a sks square" and concept.metadata["method"] == "xi-descent"
    )
    assert container.fingerprint is not None
    assert all(key.endswith(("attn2.to_k.weight", "attn2.to_v.weight")) for key in container.layers)
    assert concept.total == round(0.02 * container.numel)
    log = trained.with_suffix(".loss.csv").read_text().splitlines()
    assert log[0].startswith("step,loss,") and len(log) == 41


def test_the_container_identifies_its_base_model(world, trained: Path) -> None:
    """Not only the folder's name: the SHA-256 of the UNet's weights, as sha256sum prints it."""
    (weights,) = (world["model"] / "unet").glob("diffusion_pytorch_model*.safetensors")
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    metadata = conesfmt.load(trained).metadata
    assert metadata["base_model"] == world["model"].name
    assert metadata["base_model_unet_sha256"] == digest


def test_found_neurons_lower_the_held_out_loss(world, trained: Path) -> None:
    config = TrainConfig(**train_options(world, out=trained))
    base = load_base_model(world["model"], torch.device("cpu"), torch.float32)
    subject = prepare_subject(
        base, "red", world["red"], config.instance_prompt, config.prior_prompt, config, world["prior"]
    )
    container = conesfmt.load(trained)
    evaluate = dict(subjects=[subject], scheduler=base.noise_scheduler, seed=777, batches=12)
    base_loss = loss_with(base.unet, None, **evaluate)
    found = loss_with(base.unet, container, **evaluate)
    controls = [loss_with(base.unet, random_like(container, seed), **evaluate) for seed in range(4)]
    assert found < base_loss, (found, base_loss)
    assert found < min(controls), (found, controls)
    # and clearly so: by more than the spread of the random controls
    assert min(controls) - found > 2 * (max(controls) - min(controls)), (found, controls)


def test_the_same_seed_gives_the_same_mask(world, trained: Path, tmp_path: Path) -> None:
    again = train_concept(**train_options(world, out=tmp_path / "again.cones"))
    first = conesfmt.load(trained)
    assert again.container.concepts["sks square"] == first.concepts["sks square"]
    other = train_concept(**train_options(world, out=tmp_path / "other.cones", seed=1))
    assert other.container.concepts["sks square"] != first.concepts["sks square"]


def test_keep_shut_trains_beside_another_concept(world, trained: Path, tmp_path: Path) -> None:
    base = load_base_model(world["model"], torch.device("cpu"), torch.float32)
    before = {k: v.clone() for k, v in base.unet.state_dict().items()}
    second = train_concept(
        **train_options(
            world, images=world["blue"], token="zwx", keep_shut=[trained], out=tmp_path / "blue.cones"
        )
    )
    first = conesfmt.load(trained)
    # The first concept's entries were zero during the search, so none of them is chosen again.
    for key, indices in first.concepts["sks square"].indices.items():
        assert not np.isin(second.container.indices("sks square".replace("sks", "zwx"), key), indices).any()
    # The second container fits the base model, alone or with the first.
    with conesrt.apply(base.unet, [first, second.container]):
        pass
    assert all(torch.equal(v, before[k]) for k, v in base.unet.state_dict().items())
    assert "red.cones" in second.container.concepts["zwx square"].metadata["training"]


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def same_image(a: Path, b: Path) -> bool:
    """The same seed drew both: equal up to the BLAS's rounding, which depends on the batch size
    on some CPUs (one unit in a few pixels), while two seeds differ everywhere (tens of units)."""
    return float(np.abs(pixels(a) - pixels(b)).mean()) < 1.0


def test_prior_images_top_up_without_repeats(world, tmp_path: Path) -> None:
    from trainer.data import ensure_class_images

    base = load_base_model(world["model"], torch.device("cpu"), torch.float32)
    make = dict(prompt="a photo of a square", resolution=32, steps=2, seed=0, progress=False)
    ensure_class_images(base, tmp_path / "topped", count=2, batch_size=2, **make)
    topped = ensure_class_images(base, tmp_path / "topped", count=4, batch_size=2, **make)
    at_once = ensure_class_images(base, tmp_path / "once", count=4, batch_size=3, **make)
    # The top-up drew new images, not the first two again: every pair differs.
    assert not any(same_image(a, b) for i, a in enumerate(topped) for b in topped[i + 1 :])
    # Image k comes from seed k, whatever the batches: it matches image k of the other run, and only it.
    for k, path in enumerate(topped):
        assert [same_image(path, other) for other in at_once] == [j == k for j in range(4)], k
    # A folder with a gap in the names: the user's file is kept, the gap and the next name filled.
    (tmp_path / "gapped").mkdir()
    users_file = topped[3].read_bytes()
    (tmp_path / "gapped" / "00001.png").write_bytes(users_file)
    filled = ensure_class_images(base, tmp_path / "gapped", count=3, batch_size=2, **make)
    assert [p.name for p in filled] == ["00000.png", "00001.png", "00002.png"]
    assert filled[1].read_bytes() == users_file  # untouched, byte for byte
    assert same_image(filled[0], topped[0]) and same_image(filled[2], topped[2])


def test_the_prior_image_bar_shows_a_rate_and_tidy_counts(world, tmp_path: Path, capsys) -> None:
    """Advanced by a fraction of an image per denoising step, the bar still prints counts like 0.5."""
    from trainer.data import ensure_class_images

    base = load_base_model(world["model"], torch.device("cpu"), torch.float32)
    ensure_class_images(
        base,
        tmp_path / "prior",
        "a photo of a square",
        count=2,
        resolution=32,
        steps=3,
        seed=0,
        batch_size=2,
        progress=True,
    )
    err = capsys.readouterr().err.replace("\r", "\n")
    lines = [line for line in err.splitlines() if "prior images" in line]
    assert lines and "2.0/2" in lines[-1], lines
    assert "image/s" in lines[-1] or "s/image" in lines[-1], lines
    counts = [re.search(r"\| ([0-9.]+)/2 ", line) for line in lines]
    assert all(c and len(c.group(1).split(".")[-1]) == 1 for c in counts), lines


def test_keep_shut_does_not_change_the_prior_images(world, trained: Path, tmp_path: Path) -> None:
    from trainer.data import ensure_class_images

    options = train_options(world, keep_shut=[trained], class_images=tmp_path / "prior", steps=2)
    train_concept(**options | {"out": tmp_path / "x.cones"})
    base = load_base_model(world["model"], torch.device("cpu"), torch.float32)
    expected = ensure_class_images(
        base, tmp_path / "base-prior", "photo of a square", 4, 32, 2, seed=0, progress=False
    )
    made = sorted((tmp_path / "prior").glob("*.png"))
    assert [p.read_bytes() for p in made] == [p.read_bytes() for p in expected]
