"""cones demo end to end on the embedded world (fewer steps than the default, for CI), and on the
tiny SD 2.x, SDXL and Flux folders."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

import conesfmt
import conesrt
from conesfmt.cli import main as cones
from trainer import world
from trainer.pipelines import load_pipeline

CONES = str(Path(sys.executable).parent / "cones")


def test_demo_writes_container_grid_and_report(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = subprocess.run(
        [CONES, "demo", "--out", str(out), "--steps", "20", "--num-class-images", "8", "--quiet"],
        capture_output=True,
        text=True,
        timeout=1800,  # a hang guard: about 1 min alone, several on a busy 2-core machine
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "model bit-identical after remove: yes" in result.stdout
    report = json.loads((out / "report.json").read_text())
    assert report["bit_identical_after_remove"] is True
    container = conesfmt.load(report["container"])
    (concept,) = container.concepts.values()
    assert concept.trigger == "zwx" and concept.class_word == "background"
    assert report["shut"] == concept.total > 0
    assert report["container_bytes"] == Path(report["container"]).stat().st_size
    assert 0 <= report["before"]["subject_score"] <= 1 and 0 <= report["after"]["subject_score"] <= 1
    assert 0 <= report["prior_unchanged"] <= 1
    with Image.open(out / "grid.png") as grid:
        cell = 2 * world.IMAGE_SIZE
        assert grid.width == 2 * len(report["seeds"]) * cell + 12


@pytest.mark.parametrize("family", ["sd2", "sdxl", "flux"])
def test_demo_on_a_model_folder(folders, world, family: str, tmp_path: Path) -> None:
    """``cones demo --model DIR`` (in process) on a tiny SD 2.x, SDXL and Flux folder: trained,
    applied, drawn before | after, removed bit-identically; attention maps for the UNets only."""
    out = tmp_path / "demo"
    command = ["demo", "--model", str(folders(family)), "--images", str(world["red"])]
    command += ["--class-word", "square", "--steps", "2", "--num-class-images", "2"]
    command += ["--sampling-steps", "2", "--out", str(out), "--quiet"]
    if family == "flux":  # FluxPipeline's own default sample size would give 256 px
        command += ["--resolution", "32"]
    assert cones(command) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["family"] == family.removesuffix("2") and report["bit_identical_after_remove"] is True
    assert report["resolution"] == 32  # the UNets' own: 16 latents x the VAE's stride 2
    container = conesfmt.load(report["container"])
    assert sorted(container.layers) == sorted(conesrt.searched_layers(load_pipeline(folders(family))))
    assert report["shut"] == container.concepts["sks square"].total > 0
    with Image.open(out / "grid.png") as grid:
        assert grid.width == 2 * len(report["seeds"]) * 2 * 32 + 12
    unet = family != "flux"
    assert (out / "attention.png").is_file() == unet
    assert (report["attention_share"] is not None) == unet


def test_demo_options_for_a_model_need_one(tmp_path: Path, capsys) -> None:
    assert cones(["demo", "--resolution", "64", "--out", str(tmp_path / "demo")]) == 1
    assert "--resolution and --sampling-steps go with --model" in capsys.readouterr().err
