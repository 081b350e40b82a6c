"""``cones conformance --reader``: what counts as a rejection, and each way a reader can fail.

The contract (docs/conformance.md): exit 0 with the decoded JSON accepts, exit
1 rejects; another status, a signal, a sanitizer report on stderr or a run
past the per-input limit is a failure. Fingerprint values compare as binary32.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import conesfmt
from conesfmt.conformance import CommandReader
from conesfmt.conformance.properties import _normalise
from conesfmt.jsonform import to_json
from tests.conesfmt import reader_1_0

VECTORS = Path(__file__).resolve().parents[2] / "spec" / "vectors"
_BESIDE = Path(sys.executable).parent / "cones"
CONES = str(_BESIDE) if _BESIDE.exists() else shutil.which("cones")

# A reader built on this library that misbehaves in one chosen way on the files it rejects,
# or prints fingerprint values in their shortest binary32 form.
READER = """
import json, os, signal, sys, time
import numpy as np
from conesfmt import Container, FormatError
from conesfmt.jsonform import to_json

behaviour, path = sys.argv[1], sys.argv[2]
try:
    document = to_json(Container.from_bytes(open(path, "rb").read()))
except FormatError:
    if behaviour == "segfault":
        os.kill(os.getpid(), signal.SIGSEGV)
    if behaviour == "status-2":
        sys.exit(2)
    if behaviour == "asan":
        print("==4242==ERROR: AddressSanitizer: heap-buffer-overflow on address 0x6020", file=sys.stderr)
        sys.exit(1)
    if behaviour == "hang":
        with open(os.environ["PID_FILE"], "w") as handle:
            handle.write(str(os.getpid()))
        time.sleep(120)
    sys.exit(1)
if behaviour == "binary32" and document["fingerprint"]:
    rows = document["fingerprint"]["values"]
    document["fingerprint"]["values"] = "@VALUES@"
    text = "[" + ", ".join("[" + ", ".join(str(np.float32(v)) for v in row) + "]" for row in rows) + "]"
    print(json.dumps(document).replace('"@VALUES@"', text))
else:
    print(json.dumps(document))
"""


@pytest.fixture
def reader(tmp_path: Path) -> Path:
    path = tmp_path / "reader.py"
    path.write_text(READER)
    return path


def conformance(reader: Path, behaviour: str, *options: str, env: dict | None = None):
    assert CONES, "the cones console script is not installed (pip install -e .)"
    command = f"{sys.executable} {reader} {behaviour} {{}}"
    failure = reader.parent / "failure.cones"
    result = subprocess.run(
        [CONES, "conformance", "--reader", command, "--examples", "3", "--mutations", "3"]
        + ["--failure", str(failure), *options],
        capture_output=True,
        text=True,
        timeout=300,  # a hang guard, sized for a loaded 2-core machine
        env={**os.environ, **(env or {})},
    )
    return result, failure


@pytest.mark.parametrize(
    ("behaviour", "message"),
    [
        ("segfault", "reader was killed by signal SIGSEGV"),
        ("status-2", "reader exited with status 2: 0 accepts, 1 rejects, any other status is a failure"),
        ("asan", "reader's stderr has a sanitizer report (status 1): ==4242==ERROR: AddressSanitizer"),
    ],
)
def test_a_reader_that_crashes_instead_of_rejecting_fails(reader: Path, behaviour: str, message: str) -> None:
    result, failure = conformance(reader, behaviour)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.startswith(f"cones conformance: error: {message}"), result.stderr
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1
    with pytest.raises(conesfmt.FormatError):  # the input it crashed on is saved
        conesfmt.load(failure)


def test_a_reader_that_hangs_past_the_limit_fails_and_is_killed(reader: Path, tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    result, _ = conformance(reader, "hang", "--timeout", "2", env={"PID_FILE": str(pid_file)})
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.startswith("cones conformance: error: reader ran past the per-input limit of 2 s"), (
        result.stderr
    )
    with pytest.raises(ProcessLookupError):  # the sleeping reader did not outlive its input
        os.kill(int(pid_file.read_text()), 0)


def test_a_reader_that_prints_shortest_binary32_floats_passes(reader: Path) -> None:
    result, _ = conformance(reader, "binary32")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "passed: 1 hostile inputs refused, 3 valid containers, 9 mutated inputs" in result.stdout


def test_binary32_decimals_compare_equal_to_the_reference(reader: Path) -> None:
    path = VECTORS / "valid" / "newer-minor-fingerprint-extension.cones"
    printed = subprocess.run(
        [sys.executable, str(reader), "binary32", str(path)], capture_output=True, text=True, timeout=60
    ).stdout
    assert "[[0.99, -0.0]]" in printed  # binary64 would print 0.9900000095367432
    decoded = CommandReader(f"{sys.executable} {reader} binary32 {{}}", timeout=60).decode(path.read_bytes())
    expected = to_json(conesfmt.Container.from_bytes(path.read_bytes()))
    assert _normalise(decoded) == _normalise(expected)
    # ... but not a value that rounds to another binary32, nor +0.0 for -0.0.
    for wrong in ([[0.98999, -0.0]], [[0.99, 0.0]]):
        assert _normalise({**decoded, "fingerprint": {**decoded["fingerprint"], "values": wrong}}) != (
            _normalise(expected)
        )


def test_every_reader_gets_the_decoding_bomb_first(reader: Path) -> None:
    # `cones dump` with no index limit to speak of would decode 2**30 indices: a hang.
    unlimited = f"{CONES} dump --max-indices {1 << 40} {{}}"
    result = subprocess.run(
        [CONES, "conformance", "--reader", unlimited, "--examples", "1", "--timeout", "2"]
        + ["--failure", str(reader.parent / "failure.cones")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "reader ran past the per-input limit of 2 s on a 164037-byte input" in result.stderr


def test_the_1_0_reader_passes_the_kit_for_1_0_readers_but_not_the_1_1_kit(tmp_path: Path) -> None:
    """--format-minor 0 checks a 1.0 reader on 1.1 files too: it must read them, values skipped."""
    folder = reader_1_0.extract(tmp_path, reader_1_0.COMMIT_1_0_1)  # 968f55e's has no index limit
    command = f"{sys.executable} {folder / 'reader.py'} {folder} {{}}"
    run = [CONES, "conformance", "--reader", command, "--examples", "12", "--mutations", "4"]
    run += ["--failure", str(tmp_path / "failure.cones")]
    as_1_0 = subprocess.run([*run, "--format-minor", "0"], capture_output=True, text=True, timeout=600)
    assert as_1_0.returncode == 0, as_1_0.stdout + as_1_0.stderr
    as_1_1 = subprocess.run(run, capture_output=True, text=True, timeout=600)
    assert as_1_1.returncode == 1, as_1_1.stdout + as_1_1.stderr
    assert "reader decoded a valid container to different content" in as_1_1.stderr
    assert conesfmt.load(tmp_path / "failure.cones").version == (1, 1)  # a file with values
