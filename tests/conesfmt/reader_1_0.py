"""The format 1.0 reader, as it was: conesfmt of an earlier commit, extracted from git for tests.

Version 1.1 promises (spec § 2.4, § 6.4) that a 1.0 reader reads every 1.1
file, skipping the values; these helpers let tests run the real one.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

#: A commit whose conesfmt reads format 1.0 (spec revision 1.0), the one issue 13 names.
COMMIT = "968f55e"
#: The last commit whose conesfmt reads format 1.0 only (spec revision 1.0.1: it has the
#: index limit of § 8.2, so it also refuses the decoding bomb the conformance kit gives first).
COMMIT_1_0_1 = "f7e1f43"
ROOT = Path(__file__).resolve().parents[2]

#: A command-line reader on the 1.0 conesfmt (the kit's contract): argv[1] its folder, argv[2] a file.
READER = """
import json, sys
sys.path.insert(0, sys.argv[1])
import conesfmt
from conesfmt.jsonform import to_json
assert conesfmt.__file__.startswith(sys.argv[1]), conesfmt.__file__
try:
    container = conesfmt.Container.from_bytes(open(sys.argv[2], "rb").read())
except conesfmt.FormatError as error:
    print(error, file=sys.stderr)
    sys.exit(1)
print(json.dumps(to_json(container)))
"""


def extract(folder: Path, commit: str = COMMIT) -> Path:
    """Write ``commit``'s ``conesfmt`` and :data:`READER` under ``folder`` (skips without git or commit)."""
    try:
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", "--format=tar", commit, "conesfmt"], capture_output=True
        )
    except FileNotFoundError:
        pytest.skip("git is not installed")
    if archive.returncode != 0:
        pytest.skip(f"commit {commit} is not in this checkout ({archive.stderr.decode()[:100]})")
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
    (folder / "reader.py").write_text(READER)
    return folder
