"""The decoded form of a container as JSON (spec § 12), for test vectors and conformance.

>>> to_json(conesfmt.Container({"w": (2, 3)}, {"cat": {"w": [1, 4]}}))["concepts"]
[{'name': 'cat', 'metadata': {}, 'indices': {'w': [1, 4]}}]

A concept with values (format 1.1) also has ``"values"``: its kind and, per
layer, a list of numbers (fp16, fp32) or ``{"codebook": [4 numbers], "codes": [...]}`` (q4).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .container import Concept, Container, Layer
from .fingerprint import Fingerprint
from .values import Q4, StoredValues


def to_json(container: Container) -> dict[str, Any]:
    """The JSON-ready dict of spec § 12 (floats as Python floats: exact for binary32)."""
    fingerprint = container.fingerprint
    return {
        "version": list(container.version),
        "layers": [
            {"key": key, "dtype": layer.dtype, "shape": list(layer.shape)}
            for key, layer in container.layers.items()
        ],
        "fingerprint": None
        if fingerprint is None
        else {
            "samples_per_layer": fingerprint.samples_per_layer,
            "values": [fingerprint.samples[key].astype(np.float64).tolist() for key in container.layers],
        },
        "metadata": dict(container.metadata),
        "concepts": [_concept_json(name, concept) for name, concept in container.concepts.items()],
    }


def _concept_json(name: str, concept: Concept) -> dict[str, Any]:
    document: dict[str, Any] = {
        "name": name,
        "metadata": dict(concept.metadata),
        "indices": {key: values.tolist() for key, values in concept.indices.items()},
    }
    if concept.value_kind != "binary":
        document["values"] = {
            "kind": concept.value_kind,
            "layers": {key: _stored_json(stored) for key, stored in concept.values.items()},
        }
    return document


def _stored_json(stored: StoredValues) -> Any:
    """Exact numbers: a float16 or float32 value as the Python float of the same value."""
    if isinstance(stored, Q4):
        return {"codebook": stored.codebook.astype(np.float64).tolist(), "codes": stored.codes.tolist()}
    return stored.astype(np.float64).tolist()


def from_json(document: dict[str, Any]) -> Container:
    """Build the container a decoded form describes (the inverse of :func:`to_json`)."""
    layers = {row["key"]: Layer(tuple(row["shape"]), row["dtype"]) for row in document["layers"]}
    fingerprint = None
    if document["fingerprint"] is not None:
        values = document["fingerprint"]["values"]
        fingerprint = Fingerprint(
            {key: np.array(v, np.float32) for key, v in zip(layers, values, strict=True)}
        )
    concepts = {row["name"]: _concept_from_json(row) for row in document["concepts"]}
    return Container(layers, concepts, fingerprint, document["metadata"])


def _concept_from_json(row: dict[str, Any]) -> Concept:
    indices = {k: np.array(v, np.int64) for k, v in row["indices"].items()}
    if "values" not in row:
        return Concept(indices, row["metadata"])
    kind, layers = row["values"]["kind"], row["values"]["layers"]
    if kind == "q4":
        values = {k: Q4(v["codebook"], np.array(v["codes"], np.int64)) for k, v in layers.items()}
    else:
        dtype = np.float16 if kind == "fp16" else np.float32
        values = {k: np.array(v, dtype) for k, v in layers.items()}
    return Concept(indices, row["metadata"], values=values, value_kind=kind)
