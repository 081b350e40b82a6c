"""Merging containers: the direct union of several subjects, each concept kept separate.

The paper's additivity (sec. 3.2): concept neurons of several subjects can
simply be united. A merged container holds every input concept as its own
concept, so a runtime can apply any subset of them; applying all of them is
applying the union.

>>> merged = conesfmt.merge([conesfmt.load("cat.cones"), conesfmt.load("lake.cones")])
>>> list(merged.concepts)
['sks cat', 'zwx lake']
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from .container import Container
from .errors import FormatError
from .fingerprint import compare


def merge(containers: Sequence[Container], names: Sequence[str] | None = None) -> Container:
    """One container with every concept of ``containers``, in order.

    All inputs must share the layer table (keys and shapes) and be made for
    the same base model: their fingerprints must match each other within the
    dtype tolerance of spec § 4.3 (so fp16 and fp32 copies of one model
    merge). ``names`` labels the inputs in errors (default ``#0, #1, ...``).
    Raises :class:`FormatError` naming the input that differs, or a concept
    name that appears twice.
    """
    if not containers:
        raise FormatError("nothing to merge")
    names = list(names) if names is not None else [f"#{n}" for n in range(len(containers))]
    first, first_name = containers[0], names[0]
    concepts: dict = {}
    sources: dict[str, str] = {}
    for container, name in zip(containers, names, strict=True):
        _check_compatible(first, first_name, container, name)
        for concept_name, concept in container.concepts.items():
            if concept_name in concepts:
                raise FormatError(
                    f"concept {concept_name!r} is in both {sources[concept_name]} and {name}; "
                    "concept names must be unique in a container (train with --name)"
                )
            concepts[concept_name] = concept
            sources[concept_name] = name
    metadata = {key: value for key, value in first.metadata.items() if key != "merged_from"}
    metadata["merged_from"] = json.dumps(names)
    return Container(first.layers, concepts, first.fingerprint, metadata)


def _check_compatible(first: Container, first_name: str, other: Container, name: str) -> None:
    shapes = {key: layer.shape for key, layer in first.layers.items()}
    theirs = {key: layer.shape for key, layer in other.layers.items()}
    if shapes != theirs:
        missing = sorted(set(shapes) - set(theirs))
        extra = sorted(set(theirs) - set(shapes))
        reshaped = sorted(k for k in set(shapes) & set(theirs) if shapes[k] != theirs[k])
        detail = "; ".join(
            f"{label} {keys[0]!r}" + (f" and {len(keys) - 1} more" if len(keys) > 1 else "")
            for label, keys in (("lacks", missing), ("adds", extra), ("reshapes", reshaped))
            if keys
        )
        raise FormatError(f"{name} has another layer table than {first_name}: it {detail}")
    if (first.fingerprint is None) != (other.fingerprint is None):
        lacking = name if other.fingerprint is None else first_name
        raise FormatError(
            f"{lacking} has no fingerprint, so it cannot be shown to share {first_name}'s base model"
        )
    if first.fingerprint is None or other is first:
        return
    if first.fingerprint.samples_per_layer != other.fingerprint.samples_per_layer:
        raise FormatError(f"{name} samples its fingerprint differently from {first_name}")
    # The other container's samples stand for "the model"; the tolerance covers both dtypes.
    observed = {key: (other.fingerprint.samples[key], other.layers[key].dtype) for key in other.layers}
    mismatches = compare(first.fingerprint, {k: v.dtype for k, v in first.layers.items()}, observed)
    if mismatches:
        raise FormatError(
            f"{name} was made for another base model than {first_name}: "
            f"{mismatches[0]} ({len(mismatches)} layers differ)"
        )
