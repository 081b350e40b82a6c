"""Reader limits (spec § 8.2): the index limit that defuses the decoding bomb; memory follows the file.

No wall-clock asserts: the bomb is shown to be refused before any index is
decoded, which is what makes it fast on any machine (measured figures are in
docs/conformance.md).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import conesfmt
from conesfmt import sections
from conesfmt.conformance.hostile import index_bomb
from conesfmt.limits import DEFAULT_MAX_INDICES

SPEC = Path(__file__).resolve().parents[2] / "spec"
BOMB = SPEC / "vectors" / "invalid" / "index-bomb.cones"


def test_the_vector_is_the_kits_bomb() -> None:
    assert BOMB.read_bytes() == index_bomb()
    assert len(index_bomb()) < 170_000


def test_the_default_limit_sits_between_real_masks_and_the_bomb() -> None:
    sdxl, flux = 340_787_200, 358_729_728  # cross-attention / text K/V entries (DESIGN.md)
    assert 3 * max(sdxl, flux) // 10 <= DEFAULT_MAX_INDICES  # well above either at 10 %
    assert DEFAULT_MAX_INDICES * 8 <= 1 << 30  # far below the bomb's 2**30


def test_the_bomb_is_refused_before_any_index_is_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("an index was decoded")

    monkeypatch.setattr(sections, "iter_index_blocks", no_decoding)
    limit = r"limit of 134,217,728 indices \(max_indices, spec § 8\.2\)"
    with pytest.raises(conesfmt.FormatError, match=limit):
        conesfmt.load(BOMB)


def test_the_independent_reader_refuses_the_bomb_at_its_limit() -> None:
    result = subprocess.run(
        [sys.executable, str(SPEC / "independent_reader.py"), str(BOMB)],
        capture_output=True,
        text=True,
        timeout=120,  # a hang guard: without the limit it takes minutes
    )
    assert result.returncode == 1
    assert "past the reader limit of 134217728 indices (--max-indices, spec § 8.2)" in result.stderr


def two_concepts() -> bytes:
    layers = {"a": (10, 10), "b": (300,)}
    concepts = {"x": {"a": np.arange(60)}, "y": {"a": [1, 2], "b": np.arange(38)}}
    return conesfmt.Container(layers, concepts).to_bytes()


def test_the_limit_counts_every_concept_and_is_configurable() -> None:
    data = two_concepts()  # 60 + 40 indices
    assert conesfmt.Container.from_bytes(data, max_indices=100).concepts["y"].total == 40
    over = r"concept 'y': layer 'b': count 38 .* limit of 99 indices"
    with pytest.raises(conesfmt.FormatError, match=over):
        conesfmt.Container.from_bytes(data, max_indices=99)
    with pytest.raises(ValueError, match="max_indices"):
        conesfmt.Container.from_bytes(data, max_indices=-1)


def test_the_command_line_limit(tmp_path: Path) -> None:
    path = tmp_path / "two.cones"
    path.write_bytes(two_concepts())
    cones = Path(sys.executable).parent / "cones"
    refused = subprocess.run([cones, "dump", "--max-indices", "99", path], capture_output=True, text=True)
    assert refused.returncode == 1 and "limit of 99 indices" in refused.stderr
    read = subprocess.run([cones, "dump", "--max-indices", "100", path], capture_output=True, text=True)
    assert read.returncode == 0, read.stderr


def test_check_layers_runs_before_any_index_is_read() -> None:
    # zero-delta breaks an index rule; a check of the layer table must see the table first.
    data = (SPEC / "vectors" / "invalid" / "zero-delta.cones").read_bytes()
    seen = []

    class OtherModel(Exception):
        pass

    def check(layers: object) -> None:
        seen.append(dict(layers))
        raise OtherModel

    with pytest.raises(OtherModel):
        conesfmt.Container.from_bytes(data, check_layers=check)
    assert seen == [{"blk.attn2.to_k.weight": conesfmt.Layer((4, 5), "F32")}]


def test_load_needs_memory_for_the_file_not_for_the_size_limit() -> None:
    # Under a 2 GiB address-space limit, reading must not ask for MAX_FILE_BYTES (8 GiB) up front.
    code = (
        "import resource, conesfmt\n"
        "resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))\n"
        f"try:\n    conesfmt.load({str(BOMB)!r})\n"
        "except conesfmt.FormatError as error:\n    print('refused:', error)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "max_indices" in result.stdout
