"""Bad input to cones train: one clear line, exit status 1, before any heavy work."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CONES = str(Path(sys.executable).parent / "cones")


def cones_train(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CONES, "train", *args], capture_output=True, text=True, timeout=600, env=env)


def without_torch(tmp_path: Path) -> dict[str, str]:
    """An environment in which importing torch fails: what runs there loaded no model, took no step."""
    guard = tmp_path / "no-torch"
    guard.mkdir()
    (guard / "torch.py").write_text("raise ImportError('torch was imported before the input was checked')\n")
    return os.environ | {"PYTHONPATH": os.pathsep.join([str(guard), os.environ.get("PYTHONPATH", "")])}


@pytest.fixture
def ok(world, tmp_path) -> dict[str, str]:
    return {
        "--model": str(world["model"]),
        "--images": str(world["red"]),
        "--class-word": "square",
        "--sparsity": "0.01",
        "--out": str(tmp_path / "out.cones"),
        "--device": "cpu",
    }


def args(options: dict[str, str | None]) -> list[str]:
    flat = []
    for key, value in options.items():
        if value is not None:
            flat += [key, value]
    return flat


def model_without_vae(tmp_path: Path, world) -> str:
    copy = tmp_path / "model"
    shutil.copytree(world["model"], copy, ignore=shutil.ignore_patterns("vae"))
    return str(copy)


def broken_image_folder(tmp_path: Path) -> str:
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "0.png").write_bytes(b"not a png at all")
    return str(folder)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda tmp, world: {"--images": str(tmp)}, "no images (looked for .png"),
        (lambda tmp, world: {"--images": str(tmp / "nowhere")}, "no such folder of images"),
        (lambda tmp, world: {"--images": broken_image_folder(tmp)}, "0.png: cannot read this image"),
        (
            lambda tmp, world: {"--model": model_without_vae(tmp, world)},
            "missing vae (a diffusers SD folder has",
        ),
        (lambda tmp, world: {"--layers": "*attn3*"}, "--layers '*attn3*' matches no weight"),
        (lambda tmp, world: {"--tau": "0.5"}, "give at most one of --tau"),
        (lambda tmp, world: {"--class-images": str(world["red"] / "0.png")}, "is a file; give a folder"),
        (lambda tmp, world: {"--sparsity": "1.5"}, "--sparsity is a fraction"),
        (lambda tmp, world: {"--out": str(world["red"] / "0.png")}, "exists; pass --overwrite"),
        (lambda tmp, world: {"--keep-shut": str(tmp / "missing.cones")}, "--keep-shut"),
    ],
    ids=[
        "empty-folder",
        "no-folder",
        "unreadable-image",
        "model-missing-parts",
        "layers-match-nothing",
        "both-tau-and-sparsity",
        "class-images-is-a-file",
        "sparsity-range",
        "output-exists",
        "keep-shut-missing",
    ],
)
def test_one_line_error_before_heavy_work(ok, world, tmp_path, change, message) -> None:
    options = ok | change(tmp_path, world)
    result = cones_train(*args(options), env=without_torch(tmp_path))
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("cones train: error: "), result.stderr
    assert message in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "torch was imported" not in result.stderr  # no model was loaded, no step was taken
    assert not (tmp_path / "out.cones").exists()
