"""Planted truth (issue 11): a set shut in the base model, drawn by it, and searched for by `cones train`."""

from __future__ import annotations

import numpy as np
import pytest

from trainer import train_concept
from trainer.config import TrainConfig, select_layers, unet_keys
from trainer.evaluate import random_like
from trainer.pipelines import load_pipeline
from trainer.planted import plant, recall, render_teacher, score_sets, summarise

from .conftest import train_options


@pytest.fixture(scope="module")
def planted_run(world, tmp_path_factory):
    """A random 1 % set planted in the tiny model, its teacher's images, and what the search finds."""
    work = tmp_path_factory.mktemp("planted")
    pipe = load_pipeline(world["model"])
    keys = select_layers(unet_keys(world["model"]), TrainConfig.layers)
    planted = plant(pipe.unet, keys, "random", 0.01, seed=1)
    prompt = "a photo of a sks square"
    seeds, held_out = list(range(8)), list(range(100, 108))
    teacher = render_teacher(pipe, planted, prompt, work / "teacher", seeds, held_out, steps=4)
    (concept,) = planted.concepts.values()
    searched = sum(layer.numel for layer in planted.layers.values())
    found = train_concept(
        **train_options(
            world,
            images=teacher.images,
            sparsity=sum(concept.counts.values()) / searched,
            lr=None,
            steps=60,
            out=work / "found.cones",
        )
    ).container
    sets = {"base": None, "planted": planted, "found": found, "random": random_like(planted, 7)}
    return planted, found, score_sets(pipe, teacher, planted, sets, batches=4, batch_size=4)


def test_plant_draws_the_asked_share_and_kind(world):
    pipe = load_pipeline(world["model"])
    keys = select_layers(unet_keys(world["model"]), TrainConfig.layers)
    searched = sum(pipe.unet.state_dict()[key].numel() for key in keys)
    for kind in ("random", "columns"):
        planted = plant(pipe.unet, keys, kind, 0.05, seed=3)
        (concept,) = planted.concepts.values()
        count = sum(concept.counts.values())
        assert 0.04 * searched <= count <= 0.06 * searched, kind
        assert recall(planted, planted) == 1.0
    for key, indices in concept.indices.items():  # columns: every row of each chosen column
        rows, columns = pipe.unet.state_dict()[key].shape
        per_column = np.bincount(indices % columns, minlength=columns)
        assert set(np.unique(per_column)) <= {0, rows}


def test_scores_put_the_planted_set_on_the_teacher(planted_run):
    planted, found, scores = planted_run
    assert scores["planted"]["distance"] == 0.0
    assert scores["base"]["distance"] > 0.0
    assert recall(found, planted) <= 1.0
    assert sum(next(iter(found.concepts.values())).counts.values()) == sum(
        next(iter(planted.concepts.values())).counts.values()
    )


@pytest.mark.xfail(
    strict=True,
    reason="issue 11, not met: a random 1 % planted set changes the model's predictions about as much as "
    "any random set of its size, and its own reduction of the teacher loss is within the spread of random "
    "sets, so nothing trained on the teacher's images can single it out (docs/planted.md); even the exact "
    "change of the instance prompt's keys and values recovers only 0.29-0.37 of it (docs/planted-kv.md)",
)
def test_search_recovers_a_planted_random_set(planted_run):
    planted, found, scores = planted_run
    assert recall(found, planted) >= 0.8
    assert summarise(scores)["reduction_share"] >= 0.9
