"""cones refine on two subjects: a subset of the union that fits both subjects better than the union."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import conesfmt
from tests.trainer.conftest import train_options
from trainer import RefineConfig, TrainConfig, UsageError, refine, train_concept
from trainer.base_model import load_base_model
from trainer.evaluate import loss_with
from trainer.runs import prepare_subject

CONES = str(Path(sys.executable).parent / "cones")


@pytest.fixture(scope="module")
def singles(world, tmp_path_factory) -> list[Path]:
    # Dense single masks (15 %): on a random-init model the two subjects' masks mostly
    # coincide at low density, and only a union with conflicts leaves a refine something to drop.
    folder = tmp_path_factory.mktemp("singles")
    red = train_concept(**train_options(world, out=folder / "red.cones", name="red", sparsity=0.15))
    blue = train_concept(
        **train_options(
            world, images=world["blue"], token="zwx", name="blue", sparsity=0.15, out=folder / "blue.cones"
        )
    )
    return [red.path, blue.path]


@pytest.fixture(scope="module")
def refined(world, singles, tmp_path_factory) -> Path:
    """``cones refine`` with its default selection: every union entry whose xi fell below 1."""
    out = tmp_path_factory.mktemp("refined") / "both.cones"
    data = ["--data", f"red={world['red']}", "--data", f"blue={world['blue']}"]
    small = [
        "--steps",
        "40",
        "--lr",
        "1e-3",
        "--resolution",
        "32",
        "--num-class-images",
        "4",
        "--class-image-steps",
        "2",
    ]
    command = [CONES, "refine", *map(str, singles), "--model", str(world["model"]), *data, *small]
    command += ["--class-images", str(world["prior"]), "--device", "cpu", "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "concept 'red + blue'" in result.stdout
    return out


def union_of(singles: list[Path]) -> conesfmt.Container:
    return conesfmt.merge([conesfmt.load(path) for path in singles])


def test_refined_mask_is_a_strict_subset_of_the_union(singles, refined) -> None:
    union = union_of(singles)
    (concept,) = conesfmt.load(refined).concepts.values()
    assert concept.metadata["method"] == "refine"
    subjects = json.loads(concept.metadata["subjects"])
    assert [(s["name"], s["trigger"], s["class_word"]) for s in subjects] == [
        ("red", "sks", "square"),
        ("blue", "zwx", "square"),
    ]
    kept = dropped = 0
    for key in union.layers:
        everything = np.union1d(union.indices("red", key), union.indices("blue", key))
        mine = conesfmt.load(refined).indices(next(iter(conesfmt.load(refined).concepts)), key)
        assert np.isin(mine, everything).all(), key
        kept, dropped = kept + mine.size, dropped + everything.size - mine.size
    assert kept > 0 and dropped > 0


def test_refine_beats_the_plain_union_on_the_joint_loss(world, singles, refined) -> None:
    base = load_base_model(world["model"], torch.device("cpu"), torch.float32)
    config = TrainConfig(**train_options(world))
    subjects = [
        prepare_subject(
            base, "red", world["red"], "photo of a sks square", "photo of a square", config, world["prior"]
        ),
        prepare_subject(
            base, "blue", world["blue"], "photo of a zwx square", "photo of a square", config, world["prior"]
        ),
    ]
    union, both = union_of(singles), conesfmt.load(refined)
    for seed in (4242, 777):  # two sets of fresh noise and timesteps
        evaluate = dict(subjects=subjects, scheduler=base.noise_scheduler, seed=seed, batches=16)
        joint_union = loss_with(base.unet, union, **evaluate)
        joint_refined = loss_with(base.unet, both, **evaluate)
        assert joint_refined < joint_union < loss_with(base.unet, None, **evaluate), (
            seed,
            joint_refined,
            joint_union,
        )


def test_refine_needs_data_for_every_subject(world, singles, tmp_path) -> None:
    config = RefineConfig(
        model=world["model"], containers=singles, data={"red": world["red"]}, out=tmp_path / "x.cones"
    )
    with pytest.raises(UsageError, match=r"no --data for \['blue'\]"):
        refine(config)
