"""What a container holds, in numbers: entries shut, sparsity, bytes against the floor.

The floor is the information-theoretic minimum to store *which* ``k`` of ``N``
entries are shut when any ``k``-subset is equally likely: ``log2 C(N, k)``
bits. Real masks have structure and can go below it.

>>> floor_bytes(19_169_280, 253_034)  # SD 1.x cross-attention K/V at 1.32 %
242799.1...
"""

from __future__ import annotations

import math
from typing import Any

from .container import Container


def floor_bytes(numel: int, shut: int) -> float:
    """``log2 C(numel, shut) / 8``: bytes to name a ``shut``-subset of ``numel`` entries."""
    if not 0 <= shut <= numel:
        raise ValueError(f"shut={shut} must be within 0..numel={numel}")
    log_choose = math.lgamma(numel + 1) - math.lgamma(shut + 1) - math.lgamma(numel - shut + 1)
    return max(0.0, log_choose / math.log(2) / 8)


def summarize(container: Container, file_bytes: int | None = None) -> dict[str, Any]:
    """A JSON-ready summary: layers, fingerprint, and per concept the counts and the floor.

    ``file_bytes`` is the size on disk (default: the canonical encoding's).
    """
    numel = container.numel
    if file_bytes is None:
        file_bytes = len(container.to_bytes())
    concepts = []
    for name, concept in container.concepts.items():
        shut = concept.total
        concepts.append(
            {
                "name": name,
                "metadata": dict(concept.metadata),
                "shut": shut,
                "sparsity": shut / numel if numel else 0.0,
                "floor_bytes": floor_bytes(numel, shut),
                "per_layer": {key: concept.counts.get(key, 0) for key in container.layers},
            }
        )
    floor = sum(c["floor_bytes"] for c in concepts)
    fingerprint = container.fingerprint
    return {
        "version": ".".join(map(str, container.version)),
        "bytes": file_bytes,
        "floor_bytes": floor,
        "ratio_to_floor": file_bytes / floor if floor else None,
        "numel": numel,
        "layers": [
            {"key": key, "shape": list(layer.shape), "dtype": layer.dtype, "numel": layer.numel}
            for key, layer in container.layers.items()
        ],
        "fingerprint": None
        if fingerprint is None
        else {
            "samples_per_layer": fingerprint.samples_per_layer,
            "layers": len(fingerprint.samples),
        },
        "metadata": dict(container.metadata),
        "concepts": concepts,
    }
