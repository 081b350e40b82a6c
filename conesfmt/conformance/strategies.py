"""Hypothesis strategies that generate valid containers, edge cases included.

>>> from hypothesis import given
>>> @given(containers())
... def test_round_trip(container):
...     assert Container.from_bytes(container.to_bytes()) == container
"""

from __future__ import annotations

import math

import numpy as np
from hypothesis import strategies as st

from ..container import Concept, Container, Layer
from ..fingerprint import Fingerprint
from ..values import Q4

# Text without surrogates (they cannot be UTF-8), control characters included.
_TEXT = st.characters(codec="utf-8")


def _utf8_fits(max_bytes: int):
    return lambda text: len(text.encode("utf-8")) <= max_bytes


def names(max_bytes: int = 256, min_size: int = 1) -> st.SearchStrategy[str]:
    """Unicode strings that fit ``max_bytes`` of UTF-8 (emoji, combining marks, NUL...)."""
    return st.text(_TEXT, min_size=min_size, max_size=min(max_bytes, 24)).filter(_utf8_fits(max_bytes))


def metadata_maps(max_entries: int = 4) -> st.SearchStrategy[dict[str, str]]:
    return st.dictionaries(names(max_bytes=256), st.text(_TEXT, max_size=40), max_size=max_entries)


def shapes() -> st.SearchStrategy[tuple[int, ...]]:
    """1-D to 4-D shapes whose numel spans all delta widths of spec § 6.3 (1, 2 and 3 bytes)."""
    small = st.lists(st.integers(1, 9), min_size=1, max_size=4)
    wide = st.lists(st.integers(1, 700), min_size=1, max_size=2)
    exact = st.sampled_from([[1], [256], [257], [16, 16], [256, 257], [65_536], [65_537], [320, 768]])
    return st.one_of(small, wide, exact).map(tuple)


def layer_tables(max_layers: int = 5) -> st.SearchStrategy[dict[str, Layer]]:
    dtypes = st.sampled_from(["F32", "F16", "BF16", "F64", ""])
    return st.dictionaries(names(max_bytes=1024), st.builds(Layer, shapes(), dtypes), max_size=max_layers)


@st.composite
def index_sets(draw: st.DrawFn, numel: int) -> np.ndarray:
    """Sorted unique indices into ``numel`` entries: none, all, a few, edges, or many."""
    kind = draw(st.sampled_from(["none", "all", "few", "edges", "random", "runs"]))
    if kind == "none":
        return np.zeros(0, np.int64)
    if kind == "all":
        return np.arange(numel, dtype=np.int64)
    if kind == "few":
        values = draw(st.sets(st.integers(0, numel - 1), max_size=min(numel, 20)))
        return np.array(sorted(values), np.int64)
    if kind == "edges":
        return np.unique(np.array([0, numel - 1, numel // 2], np.int64))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if kind == "random":
        density = draw(st.sampled_from([0.001, 0.0132, 0.0701, 0.5, 0.99]))
        return np.flatnonzero(rng.random(numel) < density)
    # Whole rows of a 2-D view: the structured masks real training produces.
    columns = 1 << draw(st.integers(0, min(10, int(math.log2(numel)))))
    rows = numel // columns
    chosen = np.flatnonzero(rng.random(rows) < 0.2)
    return (chosen[:, None] * columns + np.arange(columns)).reshape(-1)


#: float16 / float32 values that are edge cases: signed zeros, the smallest subnormal, the largest.
_SPECIAL_FP16 = [0.0, -0.0, 2.0**-24, -(2.0**-24), 2.0**-14, 65504.0, -65504.0, 1.0, 0.5]
_SPECIAL_FP32 = [0.0, -0.0, 2.0**-149, 2.0**-126, float(np.finfo(np.float32).max), -1.0, 1.0 + 2.0**-23]


@st.composite
def layer_values(draw: st.DrawFn, kind: str, count: int) -> Q4 | np.ndarray:
    """Finite values of one kind for ``count`` indices: random, constant, or edge cases."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    style = draw(st.sampled_from(["random", "constant", "special"]))
    if kind == "q4":
        levels = draw(
            st.lists(st.floats(width=32, allow_nan=False, allow_infinity=False), min_size=4, max_size=4)
        )
        codes = np.full(count, draw(st.integers(0, 3))) if style == "constant" else rng.integers(0, 4, count)
        return Q4(levels, codes)
    dtype = np.float16 if kind == "fp16" else np.float32
    special = np.array(_SPECIAL_FP16 if kind == "fp16" else _SPECIAL_FP32, dtype)
    if style == "constant":
        return np.full(count, special[draw(st.integers(0, special.size - 1))], dtype)
    if style == "special":
        return special[rng.integers(0, special.size, count)]
    return rng.normal(0.5, draw(st.sampled_from([0.01, 0.3, 3.0])), count).astype(dtype)


def value_kinds() -> st.SearchStrategy[str]:
    """Mostly binary, as real containers are; each kind of spec § 6.4 often enough."""
    return st.sampled_from(["binary", "binary", "binary", "q4", "fp16", "fp32"])


@st.composite
def containers(draw: st.DrawFn, max_layers: int = 5, max_concepts: int = 4, values: bool = True) -> Container:
    """Valid containers: empty ones, no concepts, layers with none or all entries shut,
    1-D to 4-D shapes, unicode names and metadata, with or without a fingerprint, and
    (``values``, format 1.1) concepts with q4, fp16 or fp32 values among binary ones."""
    layers = draw(layer_tables(max_layers))
    fingerprint = None
    if draw(st.booleans()):
        samples = draw(st.integers(1, 16))
        floats = st.floats(width=32, allow_nan=False, allow_infinity=False)
        fingerprint = Fingerprint(
            {
                key: np.array(draw(st.lists(floats, min_size=samples, max_size=samples)), np.float32)
                for key in layers
            }
        )
    concept_names = draw(st.lists(names(), max_size=max_concepts, unique=True))
    concepts = {}
    for name in concept_names:
        touched = draw(st.lists(st.sampled_from(sorted(layers)), unique=True)) if layers else []
        indices = {key: draw(index_sets(layers[key].numel)) for key in touched}
        kind = draw(value_kinds()) if values else "binary"
        if kind == "binary":
            concepts[name] = Concept(indices, draw(metadata_maps()))
            continue
        stored = {key: draw(layer_values(kind, indices[key].size)) for key in touched}
        concepts[name] = Concept(indices, draw(metadata_maps()), values=stored, value_kind=kind)
    return Container(layers, concepts, fingerprint, draw(metadata_maps()))
