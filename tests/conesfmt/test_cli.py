"""The ``cones`` command's format subcommands: inspect, dump, conformance."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import conesfmt

VECTORS = Path(__file__).resolve().parents[2] / "spec" / "vectors"
# The console script installed beside this interpreter (the venv's), else on PATH.
_BESIDE = Path(sys.executable).parent / "cones"
CONES = str(_BESIDE) if _BESIDE.exists() else shutil.which("cones")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    assert CONES, "the cones console script is not installed (pip install -e .)"
    return subprocess.run([CONES, *args], capture_output=True, text=True, timeout=120)


@pytest.fixture
def example(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    layers = {
        f"blk{i}.attn2.to_{kv}.weight": conesfmt.Layer((64, 48), "F32") for i in range(3) for kv in "kv"
    }
    concept = conesfmt.Concept(
        {key: np.flatnonzero(rng.random(64 * 48) < 0.02) for key in list(layers)[:4]},
        trigger="sks",
        class_word="cat",
    )
    fingerprint = conesfmt.Fingerprint({k: rng.standard_normal(8).astype(np.float32) for k in layers})
    return conesfmt.save(conesfmt.Container(layers, {"cat": concept}, fingerprint), tmp_path / "cat.cones")


def test_inspect_shows_what_the_container_holds(example: Path) -> None:
    result = run("inspect", str(example))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    container = conesfmt.load(example)
    total = container.concepts["cat"].total
    assert ".cones 1.0" in out
    assert "8 sampled values x 6 layers" in out
    assert "6 tensors, 18,432 entries" in out
    assert "concept 'cat'" in out and "trigger='sks'" in out
    assert f"shut {total:,} of 18,432 entries" in out
    assert "blk0.attn2.to_k.weight" in out and "blk2.attn2.to_v.weight" not in out  # untouched layers omitted
    assert f"{example.stat().st_size:,} bytes on disk" in out and "floor log2 C(N,k)/8" in out


def test_inspect_json(example: Path) -> None:
    result = run("inspect", str(example), "--json")
    summary = json.loads(result.stdout)
    container = conesfmt.load(example)
    assert summary["bytes"] == example.stat().st_size
    (concept,) = summary["concepts"]
    assert concept["shut"] == container.concepts["cat"].total
    assert sum(concept["per_layer"].values()) == concept["shut"]
    assert concept["sparsity"] == pytest.approx(concept["shut"] / 18_432)
    assert summary["ratio_to_floor"] == pytest.approx(summary["bytes"] / summary["floor_bytes"])


def test_dump_prints_the_decoded_form(example: Path) -> None:
    from conesfmt.jsonform import to_json

    result = run("dump", str(example))
    assert json.loads(result.stdout) == to_json(conesfmt.load(example))


@pytest.mark.parametrize("name", ["crc-mismatch", "truncated-at-boundary", "zero-delta"])
def test_bad_files_give_one_line_and_status_1(name: str) -> None:
    result = run("inspect", str(VECTORS / "invalid" / f"{name}.cones"))
    assert result.returncode == 1
    assert result.stderr.startswith("cones inspect: error: ")
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1


def test_missing_file() -> None:
    result = run("dump", "/nonexistent/cat.cones")
    assert result.returncode == 1
    assert result.stderr == "cones dump: error: /nonexistent/cat.cones: No such file or directory\n"


def test_conformance_against_an_external_reader() -> None:
    # `cones dump` stands in for another implementation: same content, same rejections.
    result = run("conformance", "--reader", f"{CONES} dump {{}}", "--examples", "4", "--mutations", "3")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "passed: " in result.stdout and "12 mutated inputs" in result.stdout


def test_conformance_catches_a_lenient_reader(tmp_path: Path) -> None:
    # A reader that accepts everything (but the large hostile input, which it refuses)
    # must be caught by the differential check.
    lenient = tmp_path / "lenient.py"
    lenient.write_text(
        "import sys, json\n"
        "from conesfmt import Container\n"
        "from conesfmt.jsonform import to_json\n"
        "data = open(sys.argv[1], 'rb').read()\n"
        "if len(data) > 100_000:\n    sys.exit(1)\n"
        "try:\n    print(json.dumps(to_json(Container.from_bytes(data))))\n"
        "except Exception:\n    print('{}')\n"
    )
    failure = tmp_path / "failure.cones"
    reader = f"{sys.executable} {lenient} {{}}"
    result = run(
        "conformance", "--reader", reader, "--examples", "5", "--mutations", "5", "--failure", str(failure)
    )
    assert result.returncode == 1
    assert result.stderr.startswith(
        "cones conformance: error: reader accepted a file the reference reader rejects"
    )
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1
    with pytest.raises(conesfmt.FormatError):  # the saved input is one the reference rejects
        conesfmt.load(failure)


def test_format_commands_import_no_torch(example: Path) -> None:
    code = (
        "import sys, conesfmt\n"
        "assert 'torch' not in sys.modules\n"
        "from conesfmt.cli import main\n"
        f"main(['inspect', {str(example)!r}])\n"
        "assert 'torch' not in sys.modules, 'cones inspect imported torch'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_inspect_shows_the_training_settings(tmp_path: Path) -> None:
    settings = {"lr": 2e-05, "sparsity": 0.01, "steps": 1000, "seed": 0, "layers": "cross", "tau": None}
    concept = conesfmt.Concept(
        {"w": [1, 2]},
        {"method": "xi-descent", "training": json.dumps(settings, sort_keys=True), "note": "n" * 400},
        trigger="sks",
        class_word="cat",
    )
    path = conesfmt.save(conesfmt.Container({"w": (4, 4)}, {"cat": concept}), tmp_path / "cat.cones")
    out = run("inspect", str(path)).stdout
    assert "concept 'cat'  (class_word='cat', method='xi-descent', trigger='sks')" in out
    assert '  training: layers="cross", lr=2e-05, seed=0, sparsity=0.01, steps=1000, tau=null\n' in out
    assert f"  note: {'n' * 300}... (400 characters)\n" in out


def test_truncated_end_marker_says_what_is_missing(example: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.cones"
    cut.write_bytes(example.read_bytes()[:-3])
    result = run("inspect", str(cut))
    assert result.returncode == 1
    assert "(CEND): file is truncated: 3 bytes missing (its 0-byte payload and 4-byte CRC need 4 bytes" in (
        result.stderr
    )
    assert "declares 0 bytes" not in result.stderr


def test_help_names_only_commands_that_exist() -> None:
    from conesfmt.cli import build_parser

    parser, _ = build_parser()
    (commands,) = [action.choices for action in parser._actions if action.dest == "command"]
    described = parser.description.split(":")[1].split("(")[0]  # "train, inspect, ... .cones containers"
    named = set(re.findall(r"[a-z]+", described)) - {"and", "cones", "containers"}
    assert named and named <= set(commands), named - set(commands)
    assert "apply" not in commands and "conesrt.apply" in parser.description  # apply is Python's


def test_version() -> None:
    result = run("--version")
    assert result.returncode == 0
    assert result.stdout == f"cones {conesfmt.__version__} (.cones format 1.1, spec 1.1.0)\n"


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("dump", ["file         a .cones file", "(spec § 8.2; default 134,217,728)"]),
        ("inspect", ["file           a .cones file", "default 134,217,728"]),
        ("merge", [".cones files to unite, in order", "the .cones file to write"]),
        ("conformance", ["(default 100)", "(default 20)", "(default 5)", "(default: fixed)"]),
    ],
)
def test_every_argument_has_help_and_shows_its_default(command: str, expected: list[str]) -> None:
    result = run(command, "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for phrase in expected:
        assert " ".join(phrase.split()) in text, phrase
