"""Where containers come from: paths, bytes or loaded containers, and which concepts to use.

Shared by :func:`conesrt.apply` and :func:`conesrt.bake`; numpy only.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

import conesfmt

from .composition import check_strength
from .fit import check_architecture

ContainerLike = str | os.PathLike[str] | bytes | bytearray | memoryview | conesfmt.Container


def load_containers(
    containers: ContainerLike | Sequence[ContainerLike],
    shapes: Mapping[str, tuple[int, ...]] | None = None,
) -> list[tuple[str, conesfmt.Container]]:
    """``(source label, container)`` for each input; a bad file raises FormatError naming it.

    With ``shapes`` (the model's), each file's layer table is checked against
    them before any of its indices is decoded: another architecture raises
    :class:`~conesrt.FingerprintMismatch` at once.
    """
    if isinstance(containers, (str, os.PathLike, bytes, bytearray, memoryview, conesfmt.Container)):
        containers = [containers]

    def checker(source: str) -> Callable[[Mapping[str, conesfmt.Layer]], None] | None:
        return None if shapes is None else lambda layers: check_architecture(source, layers, shapes)

    loaded = []
    for number, item in enumerate(containers):
        if isinstance(item, conesfmt.Container):
            loaded.append((f"container #{number}", item))
        elif isinstance(item, (bytes, bytearray, memoryview)):
            source = f"container #{number}"
            try:
                loaded.append((source, conesfmt.Container.from_bytes(item, check_layers=checker(source))))
            except conesfmt.FormatError as error:
                raise conesfmt.FormatError(f"container #{number}: {error}") from None
        elif isinstance(item, (str, os.PathLike)):
            source = Path(item).name
            loaded.append((source, conesfmt.load(item, check_layers=checker(source))))
        else:
            raise TypeError(
                f"container #{number}: expected a path, bytes or conesfmt.Container, "
                f"got {type(item).__name__}"
            )
    return loaded


def select_concepts(
    loaded: list[tuple[str, conesfmt.Container]], concepts: Iterable[str] | None
) -> list[tuple[str, conesfmt.Container, list[str]]]:
    """The concepts to use from each container: all, or those named (each must exist somewhere)."""
    if concepts is None:
        return [(source, container, list(container.concepts)) for source, container in loaded]
    wanted = list(dict.fromkeys([concepts] if isinstance(concepts, str) else concepts))
    plan = [
        (source, container, [n for n in container.concepts if n in wanted]) for source, container in loaded
    ]
    found = {name for _, _, names in plan for name in names}
    missing = [name for name in wanted if name not in found]
    if missing:
        available = sorted({n for _, c in loaded for n in c.concepts})
        raise ValueError(f"no concept {missing[0]!r} in the given containers (they have {available})")
    return plan


def strengths_for(
    plan: list[tuple[str, conesfmt.Container, list[str]]], strength: float | Sequence[float], count: int
) -> list[np.float32]:
    """One strength per container of ``plan`` (spec § 6.5): a number for all, or one per container.

    Raises ``ValueError`` for a sequence of another length, or a strength that
    is not a finite number.
    """
    if isinstance(strength, str) or not isinstance(strength, Sequence | np.ndarray):
        return [check_strength(strength, source) for source, _, _ in plan]
    strengths = list(strength)
    if len(strengths) != count:
        raise ValueError(
            f"{len(strengths)} strengths for {count} containers: give one number, or one per container"
        )
    return [check_strength(s, source) for s, (source, _, _) in zip(strengths, plan, strict=True)]
