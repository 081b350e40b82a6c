"""cones train / refine --values: xi trained on the found neurons, stored as q4, fp16 or fp32 (issue 13)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import conesfmt
import conesrt
from tests.trainer.conftest import train_options
from trainer import TrainConfig, refine, train_concept
from trainer.base_model import load_base_model
from trainer.evaluate import loss_with
from trainer.refine import union_values
from trainer.runs import prepare_subject
from trainer.values import finest_kind

CONES = str(Path(sys.executable).parent / "cones")
#: Small enough for seconds per run: 20 search steps, 10 value steps.
SMALL = dict(steps=20, value_steps=10)


def only(container: conesfmt.Container) -> tuple[str, conesfmt.Concept]:
    ((name, concept),) = container.concepts.items()
    return name, concept


#: The reports of the runs made through the API, by kind.
REPORTS: dict[str, dict] = {}


@pytest.fixture(scope="module")
def trained(world, tmp_path_factory) -> dict[str, Path]:
    """One container per value kind, same search; fp16 through the command line, the others the API."""
    folder = tmp_path_factory.mktemp("values")
    paths = {"no flag": folder / "plain.cones"}
    train_concept(**train_options(world, out=paths["no flag"], **SMALL))
    for kind in ("binary", "q4", "fp32"):
        paths[kind] = folder / f"{kind}.cones"
        REPORTS[kind] = train_concept(**train_options(world, out=paths[kind], values=kind, **SMALL)).report
    paths["fp16"] = folder / "fp16.cones"
    options = train_options(world, out=paths["fp16"], **SMALL)
    command = [CONES, "train", "--values", "fp16", "--quiet"]
    for option in ("model", "images", "token", "class_word", "sparsity", "steps", "value_steps", "lr"):
        command += [f"--{option.replace('_', '-')}", str(options[option])]
    command += ["--resolution", "32", "--num-class-images", "4", "--class-image-steps", "2"]
    command += ["--class-images", str(world["prior"]), "--device", "cpu", "--out", str(paths["fp16"])]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return paths


def test_binary_is_what_it_was(trained) -> None:
    # --values binary (and no flag) is today's behaviour: the same bytes, no value fields recorded.
    plain = trained["no flag"].read_bytes()
    assert trained["binary"].read_bytes() == plain
    container = conesfmt.load(trained["no flag"])
    _, concept = only(container)
    assert concept.value_kind == "binary" and container.version == (1, 0)
    assert not {"values", "value_steps", "value_lr"} & set(json.loads(concept.metadata["training"]))


@pytest.mark.parametrize("kind", ["q4", "fp16", "fp32"])
def test_valued_container_holds_one_value_per_neuron(trained, kind) -> None:
    binary = conesfmt.load(trained["binary"])
    container = conesfmt.load(trained[kind])
    name, concept = only(container)
    assert concept.value_kind == kind and container.version == (1, 1)
    assert json.loads(concept.metadata["training"])["values"] == kind
    opened = 0
    for key in container.layers:
        # The same neurons as binary (the search does not depend on --values) ...
        np.testing.assert_array_equal(container.indices(name, key), binary.indices(name, key))
        xi = container.values(name, key)
        # ... and one value per index, in [0, 1] (eq. 9: between shut and the base weight).
        assert xi.shape == container.indices(name, key).shape and xi.dtype == np.float32
        assert ((xi >= 0) & (xi <= 1)).all()
        opened += int((xi > 0).sum())
        if kind == "q4":
            assert len(np.unique(xi)) <= 4, key
            if len(xi):
                assert isinstance(concept.values[key], conesfmt.Q4)
        if kind == "fp16":
            np.testing.assert_array_equal(xi.astype(np.float16).astype(np.float32), xi)
    assert opened > 0  # the value steps reopened some neurons: they did something


@pytest.fixture(scope="module")
def judged(world):
    """The base model and the red subject, to score containers on draws no run used."""
    config = TrainConfig(**train_options(world, out=world["root"] / "unused.cones"))
    base = load_base_model(config.model, torch.device("cpu"), torch.float32)
    config.resolution = 32
    subject = prepare_subject(
        base, "red", world["red"], config.instance_prompt, config.prior_prompt, config, world["prior"]
    )
    return base, subject


#: Draws neither the search nor the value steps used.
FRESH = dict(batches=8, batch_size=4, seed=20_000)


@pytest.fixture(scope="module")
def shut_loss(trained, judged) -> float:
    base, subject = judged
    return loss_with(base.unet, conesfmt.load(trained["binary"]), [subject], base.noise_scheduler, **FRESH)


@pytest.mark.parametrize("kind", ["q4", "fp16", "fp32"])
def test_values_are_no_worse_than_shutting(trained, judged, shut_loss, kind) -> None:
    base, subject = judged
    container = conesfmt.load(trained[kind])
    valued = loss_with(base.unet, container, [subject], base.noise_scheduler, **FRESH)
    shut = shut_loss
    # Ten value steps move the loss by about 0.1 %; on fresh draws the gain can be smaller than
    # the draws' spread, so allow 0.5 % (the guarantee itself is exact on the search's held-out
    # draws: test_the_guard_keeps_values_only_when_they_help).
    assert valued <= shut * 1.005, (valued, shut)


@pytest.mark.parametrize("kind", ["q4", "fp32"])
def test_the_guard_keeps_values_only_when_they_help(trained, kind) -> None:
    values = REPORTS[kind]["values"]
    held = values["held_out"]
    assert values["kind"] == kind and values["steps"] == SMALL["value_steps"]
    assert (held["values"] <= held["shut"]) == values["kept"]
    if not values["kept"]:  # stored as xi = 0: binary's values
        container = conesfmt.load(trained[kind])
        name, _ = only(container)
        assert all(not container.values(name, key).any() for key in container.layers)
    lines = trained[kind].with_suffix(".values.csv").read_text().splitlines()
    assert lines[0] == "step,loss,seconds" and len(lines) == 1 + SMALL["value_steps"]
    assert "values" not in REPORTS["binary"]


def test_apply_multiplies_the_weights_by_the_values(trained, judged) -> None:
    base, _ = judged
    container = conesfmt.load(trained["fp32"])
    name, _ = only(container)
    weights = base.unet.state_dict()
    before = {key: weights[key].clone() for key in container.layers}
    with conesrt.apply(base.unet, container):
        for key in container.layers:
            indices = torch.from_numpy(np.array(container.indices(name, key)))
            xi = torch.as_tensor(np.array(container.values(name, key)))
            got = weights[key].view(-1)[indices]
            torch.testing.assert_close(got, before[key].view(-1)[indices] * xi, rtol=0, atol=1e-7)
    assert all(torch.equal(weights[key], before[key]) for key in container.layers)


def test_refine_keeps_and_refines_the_values(world, trained, tmp_path) -> None:
    result = refine(
        model=world["model"],
        containers=[trained["q4"]],
        data={"sks square": world["red"]},
        sparsity=0.01,  # a subset of the input's 2 %, without the held-out choice of a count
        class_images=world["prior"],
        out=tmp_path / "refined.cones",
        resolution=32,
        num_class_images=4,
        class_image_steps=2,
        lr=1e-3,
        device="cpu",
        progress=False,
        **SMALL,
    )
    name, concept = only(conesfmt.load(result.path))
    assert concept.value_kind == "q4"
    training = json.loads(concept.metadata["training"])
    assert training["values"] == "q4" and training["input_values"] == ["q4"]
    for key in result.container.layers:
        assert len(np.unique(result.container.values(name, key))) <= 4
    assert result.report["values"]["kind"] == "q4"


def test_refine_starts_from_the_product_of_the_inputs_values() -> None:
    layers = {"w": conesfmt.Layer((2, 4), "F32")}
    first = conesfmt.Concept({"w": [1, 2, 5]}, values={"w": np.array([0.5, 0.25, 1.0], np.float32)})
    second = conesfmt.Concept({"w": [2, 6]})  # binary: xi = 0
    third = conesfmt.Concept({"w": [1, 7]}, values={"w": np.array([0.5, 0.75], np.float32)})
    union = conesfmt.Container(layers, {"a": first, "b": second, "c": third})
    start = union_values(union, {"w": np.array([1, 2, 5, 7])})
    np.testing.assert_array_equal(start["w"], np.array([0.25, 0.0, 1.0, 0.75], np.float32))
    assert finest_kind(["binary", "q4", "fp16"]) == "fp16" and finest_kind([]) == "binary"


def test_value_steps_default_to_a_third_of_the_steps(world) -> None:
    assert TrainConfig(**train_options(world, steps=300)).resolved_value_steps == 100
    assert TrainConfig(**train_options(world, steps=2)).resolved_value_steps == 1
    assert TrainConfig(**train_options(world, value_steps=7)).resolved_value_steps == 7


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--values", "q3", "--values must be one of binary, q4, fp16, fp32"),
        ("--value-steps", "0", "--value-steps must be at least 1"),
        ("--value-lr", "-1", "--value-lr must be positive"),
    ],
)
def test_bad_value_options_give_one_line(world, tmp_path, option, value, message) -> None:
    command = [CONES, "train", "--model", str(world["model"]), "--images", str(world["red"])]
    command += ["--class-word", "square", "--out", str(tmp_path / "out.cones"), option, value]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("cones train: error: ") and message in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "out.cones").exists()
