"""The decoded form of a container as JSON (spec § 12), for test vectors and conformance.

>>> to_json(conesfmt.Container({"w": (2, 3)}, {"cat": {"w": [1, 4]}}))["concepts"]
[{'name': 'cat', 'metadata': {}, 'indices': {'w': [1, 4]}}]
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .container import Concept, Container, Layer
from .fingerprint import Fingerprint


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
        "concepts": [
            {
                "name": name,
                "metadata": dict(concept.metadata),
                "indices": {key: values.tolist() for key, values in concept.indices.items()},
            }
            for name, concept in container.concepts.items()
        ],
    }


def from_json(document: dict[str, Any]) -> Container:
    """Build the container a decoded form describes (the inverse of :func:`to_json`)."""
    layers = {row["key"]: Layer(tuple(row["shape"]), row["dtype"]) for row in document["layers"]}
    fingerprint = None
    if document["fingerprint"] is not None:
        values = document["fingerprint"]["values"]
        fingerprint = Fingerprint(
            {key: np.array(v, np.float32) for key, v in zip(layers, values, strict=True)}
        )
    concepts = {
        row["name"]: Concept({k: np.array(v, np.int64) for k, v in row["indices"].items()}, row["metadata"])
        for row in document["concepts"]
    }
    return Container(layers, concepts, fingerprint, document["metadata"])
