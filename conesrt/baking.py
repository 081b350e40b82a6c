"""Baking: write a new safetensors file with the concept neurons shut or scaled (numpy only).

For edge and mobile pipelines that convert weights ahead of time (Core ML has
no run-time adapter support). The output equals, bit for bit, what
:func:`conesrt.apply` gives, values and strengths included (both follow
spec § 6.5 through :mod:`conesrt.composition`), and loads in diffusers like
the original.

>>> conesrt.bake("sd15/unet", ["cat.cones", "lake.cones"], "unet-cat-lake.safetensors")
PosixPath('unet-cat-lake.safetensors')
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

import conesfmt
from conesfmt.files import replacing

from .composition import SCALABLE_DTYPES, Factors, compose_weights, factor_rows, product
from .fit import check_fits
from .sources import ContainerLike, load_containers, select_concepts, strengths_for
from .weights_file import SafetensorsFile, ShardedWeights, WeightsError, open_weights


def bake(
    src: str | os.PathLike[str],
    containers: ContainerLike | Sequence[ContainerLike],
    dst: str | os.PathLike[str],
    *,
    concepts: Iterable[str] | None = None,
    strength: float | Sequence[float] = 1.0,
    strict: bool = True,
    overwrite: bool = False,
) -> Path:
    """Copy the weights at ``src`` to ``dst`` with the concepts' neurons set to +0.0, or scaled.

    Entries become what :func:`conesrt.apply` makes them (spec § 6.5): +0.0
    for a binary concept, θ · ξ for one with values, and ``strength`` (one
    number, or one per container) scales a concept's effect as there.

    ``src`` is a ``.safetensors`` file or a diffusers model or pipeline folder
    (its UNet weights, or its transformer's for SD3 and Flux). A sharded model
    (an ``.index.json`` and its shards, as FLUX.1's transformer is saved) is
    written as a folder ``dst``: the index, every shard, and the source's
    ``config.json``, so ``dst`` loads like the original model folder.
    Every container is checked against ``src`` first, as
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
    weights = open_weights(src)
    loaded = load_containers(containers, weights.shapes)
    plan = select_concepts(loaded, concepts)
    strengths = strengths_for(plan, strength, len(loaded))
    for source, container, _ in plan:
        check_fits(source, container, weights.shapes, weights.read_values, strict)
    layers = _covers_by_layer(plan, strengths)
    for key, covers in layers.items():
        dtype = weights.entries[key].dtype
        if not all(factors.shuts for _, factors in covers) and dtype not in SCALABLE_DTYPES:
            raise WeightsError(
                f"{weights.path}: weight {key!r} has dtype {dtype}: its entries can be shut (a binary "
                "concept at strength 1) but not scaled (spec § 6.5)"
            )

    if isinstance(weights, ShardedWeights):
        _bake_shards(weights, layers, dst)
        return dst
    with replacing(dst) as temporary:
        shutil.copyfile(weights.path, temporary)
        _patch(weights, layers, temporary)
    return dst


def _patch(weights: SafetensorsFile, layers: dict[str, list[tuple[np.ndarray, Factors]]], path: Path) -> None:
    """Set the entries of ``layers`` (those in ``weights``) in the copy at ``path`` (spec § 6.5)."""
    memory = np.memmap(path, dtype=np.uint8, mode="r+")
    for key, covers in layers.items():
        if key not in weights.entries:
            continue
        entries = np.unique(np.concatenate([indices for indices, _ in covers]))
        region = weights.entry_bytes(memory, key)
        if all(factors.shuts for _, factors in covers):
            region[entries] = 0  # +0.0: all bits zero in every float format
        else:
            xi, zero = product(factor_rows(entries, covers))
            region[entries] = compose_weights(region[entries], weights.entries[key].dtype, xi, zero)
    memory.flush()
    del memory


def _bake_shards(
    weights: ShardedWeights, layers: dict[str, list[tuple[np.ndarray, Factors]]], dst: Path
) -> None:
    """Write ``dst`` as a model folder: the index, every shard (patched where the layers live), and
    the source folder's ``config.json`` if it has one, so that diffusers loads it like the original.

    The folder is filled under a temporary name beside ``dst`` and renamed at the end: a failure
    leaves no ``dst`` (or the old one), and a reader never sees half a model.
    """
    temporary = Path(tempfile.mkdtemp(dir=dst.parent if str(dst.parent) else ".", prefix=f".{dst.name}."))
    try:
        shutil.copyfile(weights.path, temporary / weights.path.name)
        config = weights.path.parent / "config.json"
        if config.is_file():
            shutil.copyfile(config, temporary / "config.json")
        for name, shard in weights.shards.items():
            shutil.copyfile(shard.path, temporary / name)
            touched = {key: covers for key, covers in layers.items() if weights.shard_of.get(key) == name}
            if touched:
                _patch(shard, touched, temporary / name)
        old = None
        if dst.exists() or dst.is_symlink():
            old = Path(tempfile.mkdtemp(dir=temporary.parent, prefix=f".{dst.name}.old."))
            os.replace(dst, old / dst.name)
        os.replace(temporary, dst)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


def _covers_by_layer(
    plan: list[tuple[str, conesfmt.Container, list[str]]], strengths: list[np.float32]
) -> dict[str, list[tuple[np.ndarray, Factors]]]:
    """Per layer, each selected concept's sorted indices there and its factors (spec § 6.5)."""
    layers: dict[str, list[tuple[np.ndarray, Factors]]] = {}
    for (_, container, names), strength in zip(plan, strengths, strict=True):
        for name in names:
            concept = container.concepts[name]
            for key in concept.counts:
                indices = container.indices(name, key)
                factors = Factors(concept.values.get(key), indices.size, strength)
                layers.setdefault(key, []).append((indices, factors))
    return layers
