"""Applying containers to a model in place, and removing them (the runtime's public verbs).

>>> with conesrt.apply(pipe, ["cat.cones", "lake.cones"]):
...     image = pipe("a photo of a sks cat by a zwx lake").images[0]
>>> # the UNet is bit for bit what it was before
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import torch

from .composition import Factors
from .fit import check_fits
from .ledger import LOCK, Shutting, existing_ledger, restore, shut
from .sources import ContainerLike, load_containers, select_concepts, strengths_for
from .targets import Shapes, resolve
from .torch_model import torch_value_reader

_SERIAL = itertools.count()
#: Weight dtypes values can scale (spec § 6.5, step 5); others can only be shut.
SCALABLE_TORCH_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


class Applied(NamedTuple):
    """One concept applied to a model: where it came from, its name, and its handle."""

    source: str
    concept: str
    handle: Handle


class Handle:
    """What :func:`apply` did; ``remove()`` undoes it exactly. A context manager.

    ``remove()`` may be called any number of times. ``saved_bytes`` is the
    memory the handle keeps: the base values of the entries it changed (in
    the weights' dtype), the index sets at about 2 bytes per index, a bit per
    index, and the containers' values it refers to (not copies: 2 bits per
    index for q4, 2 bytes for fp16, none for binary). When the target was a
    state dict, the handle also holds its tensors until removed, so that
    ``remove()`` reaches the weights even when the dict was a short-lived copy
    (``conesrt.apply(unet.state_dict(), ...)``); a module's or pipeline's
    weights are held weakly, as the model holds them.
    """

    def __init__(self) -> None:
        self._serial = next(_SERIAL)
        # (a callable giving the weight or None once it is gone, state-dict key, shutting)
        self._shuttings: list[tuple[Callable[[], torch.Tensor | None], str, Shutting]] = []
        self._concepts: list[tuple[str, str]] = []

    @property
    def concepts(self) -> list[tuple[str, str]]:
        """``(source, concept)`` for each concept this handle applied, in order."""
        return list(self._concepts)

    @property
    def active(self) -> bool:
        return bool(self._shuttings)

    @property
    def saved_bytes(self) -> int:
        """Bytes of saved values, compact indices and ownership bits kept by this handle."""
        return sum(shutting.nbytes for _, _, shutting in self._shuttings)

    def remove(self) -> None:
        """Restore every entry this handle shut that no other active handle still shuts."""
        with LOCK:
            while self._shuttings:
                weight, key, shutting = self._shuttings.pop()
                restore(weight(), key, shutting)
            self._concepts.clear()

    def __enter__(self) -> Handle:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "active" if self.active else "removed"
        names = ", ".join(f"{concept!r}" for _, concept in self._concepts)
        return f"<conesrt.Handle {state}: {names}; {self.saved_bytes:,} bytes kept>"


def apply(
    target: Any,
    containers: ContainerLike | Sequence[ContainerLike],
    *,
    concepts: Iterable[str] | None = None,
    strength: float | Sequence[float] = 1.0,
    strict: bool = True,
) -> Handle:
    """Shut the concept neurons of ``containers`` in ``target``'s weights, or scale them by their values.

    ``target`` is a torch module (a UNet), a diffusers pipeline (its ``.unet``)
    or a state dict of tensors. ``containers`` is one or a list of paths,
    bytes or :class:`conesfmt.Container`; ``concepts`` picks concepts by name
    inside multi-concept containers (default: all). The weights stay ordinary
    dense tensors (same objects, any dtype and device): no hooks, no cost at
    inference, and a ``torch.compile``d model sees the change.

    Each entry a concept indexes becomes θ · ξ, θ its base value and ξ the
    concept's value there (0 for a binary concept: the entry is shut; format
    1.1 stores others, spec § 6.4). ``strength`` s, one number or one per
    container, scales a concept's effect: ξ' = s·ξ + (1 − s), so 0 changes
    nothing, 1 is the concept as stored, a binary concept at 0.5 halves its
    entries, and A at s with B at 1 − s interpolates two subjects (the
    paper's appendix C.6). Concepts on one entry compose as the product of
    their ξ', taken in ascending order, from the saved base values
    (spec § 6.5), so after any sequence of applies and removes the weights are
    bit for bit what applying just the active ones gives.

    Everything is checked before the first write: a file that is not a valid
    container raises :class:`conesfmt.FormatError`; a model that lacks a layer
    of the container's table or has it with another shape, or whose weights
    differ at the fingerprint's sampled entries (8 per layer by default,
    spec § 4), raises :class:`FingerprintMismatch`. Only those entries are
    compared: other layers, and one changed weight that is not sampled, pass.
    ``strict=False`` applies despite other weights or a missing fingerprint,
    with a :class:`FingerprintWarning` (never despite another architecture).
    If writing fails midway, what was written is undone.

    >>> handle = conesrt.apply(unet, ["cat.cones", "lake.cones"])
    >>> handle.remove()  # bit for bit as before
    """
    with LOCK:
        tensors = resolve(target)
        shapes = Shapes(tensors)
        loaded = load_containers(containers, shapes)  # layer tables checked before any index is decoded
        plan = select_concepts(loaded, concepts)
        strengths = strengths_for(plan, strength, len(loaded))
        for source, container, _ in plan:
            check_fits(source, container, shapes, torch_value_reader(tensors), strict)
        work = []
        for (source, container, names), scale in zip(plan, strengths, strict=True):
            for name in names:
                concept = container.concepts[name]
                for key in concept.counts:
                    indices = container.indices(name, key)
                    factors = Factors(concept.values.get(key), indices.size, scale)
                    work.append((source, name, key, indices, factors))
        for _, _, key, _, factors in work:
            if not tensors[key].is_floating_point():
                raise TypeError(
                    f"weight {key!r} has dtype {tensors[key].dtype}; only float weights can be shut"
                )
            if not factors.shuts and tensors[key].dtype not in SCALABLE_TORCH_DTYPES:
                raise TypeError(
                    f"weight {key!r} has dtype {tensors[key].dtype}: its entries can be shut (a binary "
                    "concept at strength 1) but not scaled (spec § 6.5)"
                )
        # A module keeps its weights alive; a state dict may be a temporary copy of views.
        hold = (lambda t: lambda: t) if isinstance(target, Mapping) else weakref.ref
        handle = Handle()
        try:
            for source, name, key, indices, factors in work:
                tensor = tensors[key]
                shutting = shut(tensor, key, indices, (source, name), handle, factors)
                handle._shuttings.append((hold(tensor), key, shutting))
        except BaseException:
            handle.remove()
            raise
        handle._concepts = [(source, name) for source, _, names in plan for name in names]
        return handle


def active(target: Any) -> list[Applied]:
    """The concepts applied to ``target`` and not yet removed, in the order applied.

    >>> [(a.source, a.concept) for a in conesrt.active(unet)]
    [('cat.cones', 'cat')]
    """
    found: set[tuple[int, str, str]] = set()
    applied: list[Applied] = []
    with LOCK:
        for tensor in resolve(target).values():
            ledger = existing_ledger(tensor)
            for shutting in ledger.shuttings if ledger else ():
                key = (id(shutting.handle), *shutting.label)
                if key not in found:
                    found.add(key)
                    applied.append(Applied(*shutting.label, shutting.handle))
    return sorted(applied, key=lambda a: (a.handle._serial, a.handle._concepts.index((a.source, a.concept))))
