"""The library agrees with every test vector of spec § 11, and the vectors are current."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import zstandard

import conesfmt
from conesfmt.jsonform import from_json, to_json

VECTORS = Path(__file__).resolve().parents[2] / "spec" / "vectors"
VALID = json.loads((VECTORS / "valid" / "manifest.json").read_text())
INVALID = json.loads((VECTORS / "invalid" / "manifest.json").read_text())


@pytest.mark.parametrize("name", sorted(VALID["vectors"]))
def test_valid_vector_decodes_to_its_json(name: str) -> None:
    data = (VECTORS / "valid" / f"{name}.cones").read_bytes()
    expected = json.loads((VECTORS / "valid" / f"{name}.json").read_text(encoding="utf-8"))
    container = conesfmt.Container.from_bytes(data)
    assert to_json(container) == expected
    # The JSON describes the same container, and re-encoding it is canonical.
    assert from_json(expected).to_bytes() == container.to_bytes()
    if VALID["vectors"][name]["canonical"]:
        assert container.to_bytes() == data
    else:
        assert container.to_bytes() != data


@pytest.mark.parametrize("name", sorted(INVALID["vectors"]))
def test_invalid_vector_is_rejected_for_its_reason(name: str) -> None:
    info = INVALID["vectors"][name]
    data = (VECTORS / "invalid" / f"{name}.cones").read_bytes()
    with pytest.raises(conesfmt.FormatError) as raised:
        conesfmt.Container.from_bytes(data)
    assert info["error_contains"] in str(raised.value), (info["rule"], info["reason"])


def test_every_rule_of_section_9_has_a_vector() -> None:
    rules = {info["rule"] for info in INVALID["vectors"].values()}
    assert rules == set(range(1, 20))


def test_vectors_are_what_the_script_generates() -> None:
    if VALID["generated_with"]["zstd_version"] != list(zstandard.ZSTD_VERSION):
        pytest.skip("canonical frames depend on the zstd library version (spec § 10)")
    script = VECTORS.parent / "make_vectors.py"
    result = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
