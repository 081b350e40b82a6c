"""Values on concept neurons (format 1.1, spec § 6.4): the API, the encoding, the limits."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import conesfmt
from conesfmt import Q4, Concept, Container, FormatError, quantize_q4
from conesfmt.values import pack_codes, unpack_codes

KEY, OTHER = "blk.attn2.to_k.weight", "blk.attn2.to_v.weight"
LAYERS = {KEY: (40, 30), OTHER: (300,)}
CONES = str(Path(sys.executable).parent / "cones")


def test_values_follow_their_indices_when_those_are_sorted() -> None:
    values = np.array([0.5, -0.25, 2.0], np.float32)
    container = Container(LAYERS, {"cat": Concept({KEY: [900, 3, 47]}, values={KEY: values})})
    assert container.indices("cat", KEY).tolist() == [3, 47, 900]
    assert container.values("cat", KEY).tolist() == [-0.25, 2.0, 0.5]
    assert container.values("cat", OTHER).size == 0  # a layer the concept does not touch
    assert container.concepts["cat"].value_kind == "fp32" and container.version == (1, 1)


def test_a_binary_concept_has_zero_values_and_writes_a_1_0_file() -> None:
    container = Container(LAYERS, {"cat": {KEY: [1, 2]}})
    assert container.values("cat", KEY).tolist() == [0.0, 0.0]
    assert container.concepts["cat"].value_kind == "binary" and container.concepts["cat"].values == {}
    data = container.to_bytes()
    assert data[10:12] == bytes([1, 0]) and b"vals" not in data
    assert container.version == (1, 0)


def test_kinds_are_inferred_from_the_values_or_converted() -> None:
    fp16 = Concept({KEY: [1, 2]}, values={KEY: np.array([0.1, 0.2], np.float16)})
    q4 = Concept({KEY: [1, 2]}, values={KEY: Q4([0, 1, 2, 3], [3, 1])})
    converted = Concept({KEY: [1, 2]}, values={KEY: [0.1, 0.2]}, value_kind="fp16")
    quantised = Concept({KEY: [1, 2, 3]}, values={KEY: [0.1, 0.5, 0.9]}, value_kind="q4")
    assert [c.value_kind for c in (fp16, q4, converted, quantised)] == ["fp16", "q4", "fp16", "q4"]
    assert converted.values[KEY].tolist() == np.array([0.1, 0.2], np.float16).tolist()
    assert Container(LAYERS, {"c": quantised}).values("c", KEY).tolist() == pytest.approx([0.1, 0.5, 0.9])
    with pytest.raises(FormatError, match="need value_kind"):
        Concept({KEY: [1]}, values={KEY: [0.5]})  # float64: which kind?
    with pytest.raises(FormatError, match="share one kind"):
        Concept({KEY: [1], OTHER: [1]}, values={KEY: np.ones(1, np.float16), OTHER: np.ones(1, np.float32)})
    with pytest.raises(FormatError, match="needs values="):
        Concept({KEY: [1]}, value_kind="fp32")
    with pytest.raises(FormatError, match="not one of"):
        Concept({KEY: [1]}, values={KEY: [1.0]}, value_kind="int8")


@pytest.mark.parametrize(
    ("values", "kind", "message"),
    [
        ({KEY: np.array([0.5], np.float32)}, None, "layer 'blk.attn2.to_k.weight': 1 values for 2 indices"),
        ({KEY: np.array([0.5, np.inf], np.float32)}, None, "layer 'blk.attn2.to_k.weight': value #1"),
        ({KEY: np.array([0.5, 7e4])}, "fp16", "not finite as fp16"),  # overflows binary16
        (
            {KEY: np.ones(2, np.float16), OTHER: np.ones(1, np.float16)},
            None,
            "'blk.attn2.to_v.weight', which has",
        ),
        ({}, "fp16", "a concept of kind fp16 needs values for every layer"),
    ],
)
def test_bad_values_name_the_concept_and_layer(values, kind: str | None, message: str) -> None:
    with pytest.raises(FormatError, match=message) as raised:
        Container(LAYERS, {"cat": Concept({KEY: [1, 2]}, values=values, value_kind=kind)})
    assert "concept 'cat'" in str(raised.value)


def test_q4_codes_pack_four_to_a_byte_low_bits_first() -> None:
    codes = np.array([1, 2, 3, 0, 3], np.uint8)
    assert pack_codes(codes).tolist() == [0b00111001, 0b00000011]
    assert unpack_codes(pack_codes(codes), 5).tolist() == codes.tolist()
    q4 = Q4([0.0, 0.25, 0.5, 1.0], codes)
    assert q4.expand().tolist() == [0.25, 0.5, 1.0, 0.0, 1.0] and q4.take(np.array([4, 0])).tolist() == [
        1.0,
        0.25,
    ]
    assert q4.nbytes == 16 + 2
    for bad, message in [([0, 1, 2], "4 levels"), ([0, 1, 2, np.nan], "finite"), ([0, 1, 2, 1e39], "finite")]:
        with pytest.raises(FormatError, match=message):
            Q4(bad, [0])
    with pytest.raises(FormatError, match="0..3"):
        Q4([0, 1, 2, 3], [4])


def test_quantize_q4_finds_four_levels_deterministically() -> None:
    rng = np.random.default_rng(0)
    clusters = np.concatenate([rng.normal(c, 0.01, 100) for c in (-1.0, 0.0, 0.5, 2.0)]).astype(np.float32)
    q4 = quantize_q4(clusters)
    assert np.allclose(q4.codebook, [-1.0, 0.0, 0.5, 2.0], atol=0.01)
    assert np.abs(q4.expand() - clusters).max() < 0.05
    assert quantize_q4(clusters) == q4  # same input, same codebook and codes
    assert quantize_q4([]).size == 0 and quantize_q4([0.5]).expand().tolist() == [0.5]
    with pytest.raises(FormatError, match="finite"):
        quantize_q4([0.5, np.nan])


def test_every_kind_round_trips_bit_for_bit() -> None:
    rng = np.random.default_rng(1)
    rows = np.sort(rng.choice(1200, 301, replace=False))
    special = np.array([-0.0, 2.0**-24, 65504.0, -65504.0, 0.0], np.float16)
    fp16 = np.concatenate([special, rng.normal(0, 1, rows.size - special.size).astype(np.float16)])
    concepts = {
        "binary": {KEY: rows},
        "q4": Concept(
            {KEY: rows, OTHER: [0, 299]},
            values={KEY: quantize_q4(rng.random(rows.size)), OTHER: Q4([5, -5, 0, 0], [1, 0])},
        ),
        "fp16": Concept({KEY: rows}, values={KEY: fp16}),
        "fp32": Concept({OTHER: np.arange(300)}, values={OTHER: rng.normal(0, 1, 300).astype(np.float32)}),
        "empty": Concept({}, value_kind="q4", values={}),
    }
    container = Container(LAYERS, concepts, metadata={"base_model": "tiny"})
    data = container.to_bytes()
    decoded = Container.from_bytes(data)
    assert decoded == container and decoded.to_bytes() == data
    assert (
        decoded.values("fp16", KEY)[:5].view(np.uint32).tolist()
        == special.astype(np.float32).view(np.uint32).tolist()
    )
    assert [c.value_kind for c in decoded.concepts.values()] == ["binary", "q4", "fp16", "fp32", "q4"]
    # A container differing only in one value's sign of zero is another container.
    flipped = fp16.copy()
    flipped[0] = 0.0
    other = Container(
        LAYERS,
        {**concepts, "fp16": Concept({KEY: rows}, values={KEY: flipped})},
        metadata={"base_model": "tiny"},
    )
    assert other != container and other.to_bytes() != data


def test_a_large_lazily_decoded_concept_keeps_its_values() -> None:
    """Past the decoder's memory budget, indices and values are decoded again on first use."""
    layers = {"big": (1 << 20, 64)}
    indices = np.arange(0, 1 << 26, 2)  # 2**25 indices, 8 bytes each: over 8 x the file + 4 MiB
    values = Q4([0.0, 0.5, 1.0, 2.0], np.tile(np.arange(4, dtype=np.uint8), indices.size // 4))
    container = Container(layers, {"c": Concept({"big": indices}, values={"big": values})})
    decoded = Container.from_bytes(container.to_bytes())
    concept = decoded.concepts["c"]
    assert concept._values is None and concept._indices is None  # not kept after validation
    assert concept.values["big"] == values and np.array_equal(decoded.indices("c", "big"), indices)


def test_merge_keeps_values_and_inspect_shows_them(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    rows = np.sort(rng.choice(1200, 400, replace=False))
    q4 = Container(LAYERS, {"cat": Concept({KEY: rows}, values={KEY: quantize_q4(rng.random(400))})})
    fp16 = Container(LAYERS, {"lake": Concept({KEY: rows}, values={KEY: rng.random(400).astype(np.float16)})})
    binary = Container(LAYERS, {"hat": {KEY: rows}})
    paths = [
        conesfmt.save(c, tmp_path / f"{n}.cones")
        for n, c in zip(("cat", "lake", "hat"), (q4, fp16, binary), strict=True)
    ]
    out = tmp_path / "merged.cones"
    result = subprocess.run(
        [CONES, "merge", *map(str, paths), "-o", str(out)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "'cat' (400 entries, q4 values)" in result.stdout and "'hat' (400 entries)" in result.stdout
    merged = conesfmt.load(out)
    assert merged.concepts["cat"] == q4.concepts["cat"] and merged.concepts["lake"] == fp16.concepts["lake"]
    assert merged.version == (1, 1)

    shown = subprocess.run([CONES, "inspect", str(out)], capture_output=True, text=True).stdout
    assert ".cones 1.1" in shown
    assert "values:  q4 (4 levels per layer, 2-bit codes)," in shown and "values:  fp16," in shown
    assert "values:  binary (entries shut, no values stored)" in shown
    summary = json.loads(
        subprocess.run([CONES, "inspect", "--json", str(out)], capture_output=True, text=True).stdout
    )
    kinds = {c["name"]: (c["value_kind"], c["values_bytes"]) for c in summary["concepts"]}
    assert kinds["hat"] == ("binary", 0) and kinds["cat"][0] == "q4" and kinds["lake"][0] == "fp16"
    # q4 at 2 bits per index: 100 bytes of codes, a 16-byte codebook, a frame and the section's fields.
    assert 100 + 16 < kinds["cat"][1] < 100 + 16 + 60
    assert kinds["lake"][1] < 800 + 60
    # The sizes are those of the sections on disk, which together make the file.
    fixed = len(Container(LAYERS, metadata=merged.metadata).to_bytes())  # preamble, LAYR, META, CEND
    per_concept = sum(c["index_bytes"] + c["values_bytes"] for c in summary["concepts"])
    assert summary["bytes"] == fixed + per_concept


def test_values_cost_at_most_their_bits_per_entry_and_a_kilobyte() -> None:
    """Issue 13's storage bound (bench/format_size.py measures it on SD 1.x): incompressible values,
    q4 at most 2 bits per entry + 1 KB over the binary file, fp16 at most 16 bits per entry + 1 KB."""
    rng = np.random.default_rng(3)
    layers = {f"down.{n}.attn2.to_{kv}.weight": (320, 768) for n in range(8) for kv in "kv"}
    indices = {key: np.flatnonzero(rng.random(320 * 768) < 0.0132) for key in layers}
    count = sum(v.size for v in indices.values())
    binary = len(Container(layers, {"s": indices}).to_bytes())
    q4 = {key: Q4([0.1, 0.5, 0.9, 1.3], rng.integers(0, 4, v.size)) for key, v in indices.items()}
    fp16 = {}
    for key, v in indices.items():
        bits = rng.integers(0, 1 << 16, v.size).astype(np.uint16)
        bits[(bits & 0x7C00) == 0x7C00] &= 0xBFFF  # finite
        fp16[key] = bits.view(np.float16)
    for values, bits_per_entry in ((q4, 2), (fp16, 16)):
        valued = len(Container(layers, {"s": Concept(indices, values=values)}).to_bytes())
        assert valued - binary <= bits_per_entry * count / 8 + 1024, (valued - binary, count)
