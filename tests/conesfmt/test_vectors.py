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
from tests.conesfmt import reader_1_0

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
    assert rules == set(range(1, 24))


def test_vectors_are_what_the_script_generates() -> None:
    if VALID["generated_with"]["zstd_version"] != list(zstandard.ZSTD_VERSION):
        pytest.skip("canonical frames depend on the zstd library version (spec § 10)")
    script = VECTORS.parent / "make_vectors.py"
    result = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("commit", [reader_1_0.COMMIT, reader_1_0.COMMIT_1_0_1])
def test_every_valid_vector_reads_in_the_1_0_reader_as_the_same_indices(tmp_path: Path, commit: str) -> None:
    """Spec § 2.4 for 1.1: a 1.0 reader (conesfmt of spec 1.0 and 1.0.1) reads every file, values skipped."""
    folder = reader_1_0.extract(tmp_path, commit)
    old = {}
    for path in sorted((VECTORS / "valid").glob("*.cones")):
        result = subprocess.run(
            [sys.executable, str(folder / "reader.py"), str(folder), str(path)],
            capture_output=True,
            text=True,
            cwd=folder,
        )
        assert result.returncode == 0, (path.name, result.stderr[-2000:])
        old[path.stem] = json.loads(result.stdout)
    assert set(old) == set(VALID["vectors"])
    valued = 0
    for name, decoded in old.items():
        expected = json.loads((VECTORS / "valid" / f"{name}.json").read_text(encoding="utf-8"))
        valued += any("values" in concept for concept in expected["concepts"])
        # Everything but the values is the same: layers, fingerprint, metadata, names, indices.
        for concept in expected["concepts"]:
            concept.pop("values", None)
        assert decoded == expected, name
    assert valued >= 5


_VERDICTS = """
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import conesfmt
verdicts = {}
for path in sorted(Path(sys.argv[2]).glob("*.cones")):
    try:
        conesfmt.Container.from_bytes(path.read_bytes())
        verdicts[path.stem] = "accepted"
    except conesfmt.FormatError:
        verdicts[path.stem] = "rejected"
print(json.dumps(verdicts))
"""


def test_the_1_0_reader_rejects_the_invalid_vectors_of_minor_0_and_accepts_those_of_minor_1(
    tmp_path: Path,
) -> None:
    """Spec § 11: to a 1.0 reader (spec 1.0.1, with the index limit) vals is an unknown optional section."""
    folder = reader_1_0.extract(tmp_path, reader_1_0.COMMIT_1_0_1)
    result = subprocess.run(
        [sys.executable, "-c", _VERDICTS, str(folder), str(VECTORS / "invalid")],
        capture_output=True,
        text=True,
        cwd=folder,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    verdicts = json.loads(result.stdout)
    expected = {
        name: "accepted" if info["minor"] == 1 else "rejected" for name, info in INVALID["vectors"].items()
    }
    assert verdicts == expected
    assert sum(info["minor"] == 1 for info in INVALID["vectors"].values()) == 13
