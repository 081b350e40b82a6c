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
    """A JSON-ready summary: layers, fingerprint, and per concept the counts, the floor and the bytes.

    ``file_bytes`` is the size on disk (default: the canonical encoding's).
    Per concept, ``index_bytes`` and ``values_bytes`` are the bytes of its
    CNPT and ``vals`` sections (spec § 6), framing included: as read from the
    file for a loaded container, else of the canonical encoding.
    """
    from .sections import encode

    numel = container.numel
    sizes: dict[str, tuple[int, int]] = {}
    if file_bytes is None or any(c._encoded_bytes is None for c in container.concepts.values()):
        encoded = len(encode(container, sizes))
        file_bytes = encoded if file_bytes is None else file_bytes
    concepts = []
    for name, concept in container.concepts.items():
        shut = concept.total
        index_bytes, values_bytes = concept._encoded_bytes or sizes[name]
        concepts.append(
            {
                "name": name,
                "metadata": dict(concept.metadata),
                "shut": shut,
                "sparsity": shut / numel if numel else 0.0,
                "floor_bytes": floor_bytes(numel, shut),
                "per_layer": {key: concept.counts.get(key, 0) for key in container.layers},
                "value_kind": concept.value_kind,
                "index_bytes": index_bytes,
                "values_bytes": values_bytes,
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
