"""The Container API: construction rules, accessors, equality, files."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest

import conesfmt
from conesfmt import Concept, Container, FormatError, Layer

KEY = "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight"


def small() -> Container:
    return Container(
        {KEY: (640, 768), "b.weight": Layer((4, 4), "F16")},
        {
            "cat": {KEY: [99, 5, 17]},
            "mug": Concept({"b.weight": np.eye(4, dtype=bool)}, trigger="zwx"),
        },
        conesfmt.Fingerprint({KEY: [0.5, -0.25], "b.weight": [1.0, 2.0]}),
        {"created_by": "tests"},
    )


def test_accessors() -> None:
    container = small()
    assert list(container.layers) == ["b.weight", KEY]  # canonical order: sorted keys
    assert container.layers[KEY] == Layer((640, 768), "")
    assert container.layers["b.weight"].numel == 16
    assert list(container.concepts) == ["cat", "mug"]  # concepts keep their order
    assert container.indices("cat", KEY).tolist() == [5, 17, 99]
    assert container.indices("cat", KEY).dtype == np.int64
    assert container.indices("cat", "b.weight").size == 0
    assert container.indices("mug", "b.weight").tolist() == [0, 5, 10, 15]
    assert container.concepts["mug"].trigger == "zwx"
    assert container.concepts["cat"].total == 3
    assert container.metadata == {"created_by": "tests"}
    assert container.numel == 640 * 768 + 16
    with pytest.raises(KeyError, match="no concept 'dog'"):
        container.indices("dog", KEY)


def test_arrays_are_read_only() -> None:
    indices = small().indices("cat", KEY)
    with pytest.raises(ValueError):
        indices[0] = 1


def test_round_trip_and_lazy_decoding() -> None:
    container = small()
    decoded = Container.from_bytes(container.to_bytes())
    assert decoded == container
    assert decoded.concepts["cat"].counts == {KEY: 3}  # known before decoding the indices
    assert decoded.indices("cat", KEY).tolist() == [5, 17, 99]


def test_equality_sees_every_part() -> None:
    base = small()
    assert base != Container({KEY: (640, 768), "b.weight": Layer((4, 4), "F16")}, {"cat": {KEY: [5, 17, 99]}})
    changed = Container(
        base.layers,
        {"cat": {KEY: [5, 17, 98]}, "mug": base.concepts["mug"]},
        base.fingerprint,
        base.metadata,
    )
    assert changed != base
    reordered = Container(
        base.layers,
        {"mug": base.concepts["mug"], "cat": base.concepts["cat"]},
        base.fingerprint,
        base.metadata,
    )
    assert reordered != base


@pytest.mark.parametrize(
    ("layers", "concepts", "message"),
    [
        ({"w": (4,)}, {"c": {"w": [4]}}, "index 4 >= numel 4"),
        ({"w": (4,)}, {"c": {"w": [-1]}}, "negative index -1"),
        ({"w": (4,)}, {"c": {"w": [1, 1]}}, "index 1 appears twice"),
        ({"w": (4,)}, {"c": {"w": [0.5]}}, "must be integers"),
        ({"w": (4,)}, {"c": {"x": [0]}}, "layer 'x' is not in the layer table"),
        ({"w": (4,)}, {"c": {"w": np.ones(3, bool)}}, "boolean mask of shape"),
        ({"w": (4,)}, {"": {"w": [0]}}, "concept name"),
        ({"w": (4,)}, {"c": [0, 1]}, "expected a mapping"),
        ({"w": (0, 3)}, {}, "dimensions must be"),
        ({"w": ()}, {}, "0 dimensions"),
        ({"w": (2,) * 9}, {}, "9 dimensions"),
        ({"w": (1 << 21, 1 << 20)}, {}, "at most 1099511627776"),
        ({"w": Layer((4,), "f-32")}, {}, "dtype"),
        ({"": (4,)}, {}, "layer key"),
        ({"w": (4,)}, {"c": Concept({"w": [0]}, {"": "x"})}, "metadata key"),
    ],
)
def test_invalid_construction_names_the_fault(layers, concepts, message) -> None:
    with pytest.raises(FormatError, match=message.replace("(", r"\(")):
        Container(layers, concepts)


def test_uint64_indices_above_int64_are_out_of_range() -> None:
    with pytest.raises(FormatError, match=">= numel"):
        Container({"w": (4,)}, {"c": {"w": np.array([2**63 + 1], np.uint64)}})


def test_fingerprint_must_cover_the_layer_table() -> None:
    with pytest.raises(FormatError, match="missing"):
        Container({"w": (4,), "v": (2,)}, fingerprint=conesfmt.Fingerprint({"w": [1.0]}))
    with pytest.raises(FormatError, match="finite"):
        conesfmt.Fingerprint({"w": [float("nan")]})


def test_a_concept_from_another_container_is_checked_again() -> None:
    source = Container({"w": (100,)}, {"c": {"w": [99]}})
    decoded = Container.from_bytes(source.to_bytes())
    with pytest.raises(FormatError, match="index 99 >= numel 10"):
        Container({"w": (10,)}, {"c": decoded.concepts["c"]})


def test_save_is_atomic_and_load_accepts_paths_and_files(tmp_path: Path) -> None:
    path = tmp_path / "cat.cones"
    conesfmt.save(small(), path)
    assert conesfmt.load(path) == small()
    with open(path, "rb") as handle:
        assert conesfmt.load(handle) == small()
    assert conesfmt.load(io.BytesIO(path.read_bytes())) == small()
    assert [p.name for p in tmp_path.iterdir()] == ["cat.cones"]  # no temporary left


def test_failed_save_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "cat.cones"
    conesfmt.save(small(), path)
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError, match="disk full"):
        conesfmt.save(Container({"w": (3,)}), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["cat.cones"]


def test_load_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.cones"
    path.write_bytes(b"\x89CONES\r\n\x1a\n\x01\x00")
    with pytest.raises(FormatError, match=r"broken\.cones: .*no CEND"):
        conesfmt.load(path)
    with pytest.raises(FormatError, match="binary file"):
        conesfmt.load(io.StringIO("text"))


def test_saved_files_get_ordinary_permissions(tmp_path: Path) -> None:
    from conesfmt.files import NEW_FILE_MODE

    path = conesfmt.save(small(), tmp_path / "cat.cones")
    assert path.stat().st_mode & 0o777 == NEW_FILE_MODE  # not the 0600 of a temporary file
    path.chmod(0o640)
    conesfmt.save(small(), path)
    assert path.stat().st_mode & 0o777 == 0o640  # replacing a file keeps its permissions
