"""Baking: write a new safetensors file with the concept neurons shut (numpy only).

For edge and mobile pipelines that convert weights ahead of time (Core ML has
no run-time adapter support). The output equals, bit for bit, what
:func:`conesrt.apply` gives, and loads in diffusers like the original.

>>> conesrt.bake("sd15/unet", ["cat.cones", "lake.cones"], "unet-cat-lake.safetensors")
PosixPath('unet-cat-lake.safetensors')
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

import conesfmt
from conesfmt.files import replacing

from .fit import check_fits
from .sources import ContainerLike, load_containers, select_concepts
from .weights_file import SafetensorsFile


def bake(
    src: str | os.PathLike[str],
    containers: ContainerLike | Sequence[ContainerLike],
    dst: str | os.PathLike[str],
    *,
    concepts: Iterable[str] | None = None,
    strict: bool = True,
    overwrite: bool = False,
) -> Path:
    """Copy the weights at ``src`` to ``dst`` with the concepts' neurons set to +0.0.

    ``src`` is a ``.safetensors`` file or a diffusers model or pipeline folder
    (its UNet weights). Every container is checked against ``src`` first, as
    in :func:`conesrt.apply`: its layer table (names, shapes) and its
    fingerprint's sampled weights (spec § 4; other entries are not compared).
    ``strict=False`` bakes despite other weights or a missing fingerprint,
    with a :class:`conesrt.FingerprintWarning`. An existing ``dst`` raises
    :class:`FileExistsError` before anything is read, unless ``overwrite``
    (like ``cones bake --overwrite``). The write is atomic: ``dst`` appears
    complete or not at all, and may be ``src`` itself (with ``overwrite``).
    Imports no torch. Returns ``dst`` as a :class:`~pathlib.Path`.
    """
    dst = Path(dst)
    if not overwrite and (dst.exists() or dst.is_symlink()):
        raise FileExistsError(f"{dst} exists; pass overwrite=True to replace it")
    weights = SafetensorsFile(src)
    plan = select_concepts(load_containers(containers, weights.shapes), concepts)
    for source, container, _ in plan:
        check_fits(source, container, weights.shapes, weights.read_values, strict)
    shut = _union_by_layer(plan)

    with replacing(dst) as temporary:
        shutil.copyfile(weights.path, temporary)
        memory = np.memmap(temporary, dtype=np.uint8, mode="r+")
        for key, indices in shut.items():
            weights.entry_bytes(memory, key)[indices] = 0  # +0.0: all bits zero in every float format
        memory.flush()
        del memory
    return dst


def _union_by_layer(plan: list[tuple[str, conesfmt.Container, list[str]]]) -> dict[str, np.ndarray]:
    """Sorted indices shut in each layer by any selected concept."""
    parts: dict[str, list[np.ndarray]] = {}
    for _, container, names in plan:
        for name in names:
            for key in container.concepts[name].counts:
                parts.setdefault(key, []).append(container.indices(name, key))
    return {key: np.unique(np.concatenate(arrays)) for key, arrays in parts.items()}
