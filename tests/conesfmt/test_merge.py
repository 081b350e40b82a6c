"""conesfmt.merge and cones merge: the direct union, each concept kept separate."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import conesfmt
from conesfmt import Container, Fingerprint, FormatError, Layer

LAYERS = {"a.to_k.weight": Layer((8, 4), "F32"), "a.to_v.weight": Layer((8, 4), "F32")}
SAMPLES = {key: np.array([0.25, -0.5], np.float32) for key in LAYERS}


def single(name: str, indices: list[int], fingerprint=SAMPLES, layers=LAYERS) -> Container:
    fp = Fingerprint(fingerprint) if fingerprint is not None else None
    return Container(layers, {name: conesfmt.Concept({"a.to_k.weight": indices}, trigger=name[:3])}, fp)


def test_merge_keeps_each_concept() -> None:
    merged = conesfmt.merge(
        [single("cat", [1, 2]), single("lake", [2, 5])], names=["cat.cones", "lake.cones"]
    )
    assert list(merged.concepts) == ["cat", "lake"]
    assert merged.indices("lake", "a.to_k.weight").tolist() == [2, 5]
    assert merged.concepts["cat"].trigger == "cat"
    assert merged.metadata["merged_from"] == '["cat.cones", "lake.cones"]'
    assert Container.from_bytes(merged.to_bytes()) == merged


def test_fp16_and_fp32_copies_of_one_model_merge() -> None:
    layers16 = {key: Layer(layer.shape, "F16") for key, layer in LAYERS.items()}
    rounded = {key: values.astype(np.float16).astype(np.float32) for key, values in SAMPLES.items()}
    conesfmt.merge([single("cat", [1]), single("lake", [2], fingerprint=rounded, layers=layers16)])


@pytest.mark.parametrize(
    ("other", "message"),
    [
        (
            single("lake", [2], fingerprint={k: v * 1.01 for k, v in SAMPLES.items()}),
            "lake.cones was made for another base model",
        ),
        (single("lake", [2], fingerprint=None), "lake.cones has no fingerprint"),
        (single("cat", [3]), "concept 'cat' is in both cat.cones and lake.cones"),
        (
            Container({"a.to_k.weight": (8, 4)}, {"lake": {}}),
            "lake.cones has another layer table than cat.cones: it lacks 'a.to_v.weight'",
        ),
        (
            Container({**LAYERS, "a.to_v.weight": (4, 8)}, {"lake": {}}, Fingerprint(SAMPLES)),
            "reshapes 'a.to_v.weight'",
        ),
    ],
    ids=["other-weights", "no-fingerprint", "same-name", "missing-layer", "other-shape"],
)
def test_incompatible_inputs_name_the_file(other: Container, message: str) -> None:
    with pytest.raises(FormatError, match=message):
        conesfmt.merge([single("cat", [1]), other], names=["cat.cones", "lake.cones"])


def test_cones_merge(tmp_path: Path) -> None:
    cones = (
        str(Path(sys.executable).parent / "cones")
        if (Path(sys.executable).parent / "cones").exists()
        else shutil.which("cones")
    )
    cat = conesfmt.save(single("cat", [1, 2]), tmp_path / "cat.cones")
    lake = conesfmt.save(single("lake", [7]), tmp_path / "lake.cones")
    out = tmp_path / "both.cones"
    result = subprocess.run(
        [cones, "merge", str(cat), str(lake), "-o", str(out)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "'cat' (2 entries), 'lake' (1 entries)" in result.stdout
    assert list(conesfmt.load(out).concepts) == ["cat", "lake"]
    bad = conesfmt.save(
        single("other", [1], fingerprint={k: v + 1 for k, v in SAMPLES.items()}), tmp_path / "other.cones"
    )
    result = subprocess.run(
        [cones, "merge", str(cat), str(bad), "-o", str(tmp_path / "x.cones")], capture_output=True, text=True
    )
    assert result.returncode == 1
    assert result.stderr.startswith(
        "cones merge: error: other.cones was made for another base model than cat.cones"
    )
