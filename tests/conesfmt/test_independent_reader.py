"""The independent reader (written from the spec alone) agrees with conesfmt.

Two readers that agree on the vectors and on mutated inputs are the evidence
that the spec says enough: spec/independent_reader.py was written from
spec/cones-format-v1.md without reading conesfmt.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conesfmt.conformance import CommandReader, run

SPEC = Path(__file__).resolve().parents[2] / "spec"
READER = SPEC / "independent_reader.py"
VALID = sorted((SPEC / "vectors" / "valid").glob("*.cones"))
INVALID = sorted((SPEC / "vectors" / "invalid").glob("*.cones"))


def read(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(READER), str(path)], capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.stem)
def test_it_decodes_every_valid_vector(path: Path) -> None:
    result = read(path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_it_rejects_every_invalid_vector(path: Path) -> None:
    result = read(path)
    assert result.returncode == 1, (result.returncode, result.stderr[-500:])


def test_it_agrees_with_conesfmt_on_mutated_inputs() -> None:
    summary = run(CommandReader(f"{sys.executable} {READER} {{}}"), examples=12, mutations_per_example=6)
    assert summary.valid_containers == 12 and summary.mutated_inputs == 72
