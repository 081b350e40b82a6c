"""cones demo end to end on the embedded world (fewer steps than the default, for CI)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import conesfmt
from trainer import world

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
    from PIL import Image

    with Image.open(out / "grid.png") as grid:
        cell = 2 * world.IMAGE_SIZE
        assert grid.width == 2 * len(report["seeds"]) * cell + 12
