"""Data parallel over several processes (torchrun; gloo on CPU, as `accelerate launch` does on GPUs)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

import conesfmt

ROOT = Path(__file__).resolve().parents[2]
ENVIRONMENT = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def torchrun(*arguments: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", *arguments]
    return subprocess.run(command, capture_output=True, text=True, timeout=1800, cwd=ROOT, env=ENVIRONMENT)


def test_two_processes_average_gradients_into_one_xi(tmp_path: Path) -> None:
    result = torchrun("-m", "tests.trainer.ddp_worker", str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    first, second = (np.load(tmp_path / f"delta-{rank}-of-2.npy") for rank in (0, 1))
    assert np.array_equal(first, second)  # every process ends with the same xi
    assert np.abs(first).sum() > 0


def test_cones_train_on_two_processes(world, tmp_path: Path) -> None:
    out = tmp_path / "red.cones"
    prior = tmp_path / "prior"  # empty: the main process generates, the other waits for it
    arguments = ["-m", "conesfmt.cli", "train", "--model", str(world["model"]), "--images", str(world["red"])]
    arguments += ["--class-word", "square", "--sparsity", "0.02", "--steps", "10", "--resolution", "32"]
    arguments += ["--num-class-images", "4", "--class-image-steps", "2", "--class-images", str(prior)]
    arguments += ["--device", "cpu", "--out", str(out)]
    result = torchrun(*arguments)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("concept 'sks square'") == 1  # one summary, from the main process
    assert len(list(prior.glob("*.png"))) == 4
    assert conesfmt.load(out).concepts["sks square"].total == round(0.02 * conesfmt.load(out).numel)
