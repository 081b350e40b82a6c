"""Shutting weight entries and restoring them bit-exactly, with overlaps.

The invariant, for every entry ``e`` of a weight with base value ``b``:

- if no active shutting covers ``e``, its value is ``b``;
- otherwise its value is +0.0, and exactly one active shutting covering ``e``
  *owns* it and keeps ``b`` — unless ``b`` is itself +0.0 (all bits zero),
  in which case nobody needs to.

Applying a shutting reads the entries first: those whose bits are already
all zero are shut (or were +0.0 to begin with) and are not owned; the others
are owned, their values saved, and set to +0.0. Removing a shutting hands each
entry it owns to another active shutting that covers it, or writes ``b``
back. So an entry shut by two containers stays shut until both are removed,
in any order, and every weight is always bit for bit what it would be with
only the active shuttings applied. No reference counts are stored: a
shutting keeps its index set (2 bytes per index, :class:`CompactIndices`), a
bit per index saying whether it owns it, and the saved values of what it
owns, in the weight's own dtype and device.

>>> ledger = ledger_for(weight)
>>> shutting = shut(weight, np.array([3, 8, 9]), label="cat")
>>> restore(weight, shutting)
"""

from __future__ import annotations

import threading
import warnings
import weakref
from dataclasses import dataclass, field

import numpy as np
import torch

from .compact import CompactIndices

#: Integer dtypes of the same width, to test a float's bits for +0.0.
_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}

#: One lock for every ledger: apply and remove are not meant to race.
LOCK = threading.RLock()


@dataclass(eq=False)
class Shutting:
    """One concept applied to one weight: what it shuts, owns and saved."""

    label: tuple[str, str]  # (source, concept)
    handle: object
    indices: CompactIndices
    owned: np.ndarray  # np.packbits of a bool per index
    saved: torch.Tensor  # base values of the owned entries, in index order

    @property
    def nbytes(self) -> int:
        return self.indices.nbytes + self.owned.nbytes + self.saved.numel() * self.saved.element_size()

    def owned_mask(self) -> np.ndarray:
        return np.unpackbits(self.owned, count=self.indices.size).astype(bool)


@dataclass(eq=False)
class TensorLedger:
    """The active shuttings of one weight, in the order they were applied."""

    tensor: weakref.ref
    device: str
    data_ptr: int
    shuttings: list[Shutting] = field(default_factory=list)


# Keyed by id(tensor); an entry is dropped when its tensor is garbage collected.
_LEDGERS: dict[int, TensorLedger] = {}
# (device, data pointer) -> id(tensor): catches the same memory reached through another object.
_BY_MEMORY: dict[tuple[str, int], int] = {}


def _memory(tensor: torch.Tensor) -> tuple[str, int]:
    return str(tensor.device), tensor.data_ptr()


def _own_ledger(tensor: torch.Tensor) -> TensorLedger | None:
    """The ledger made for this very tensor object, its memory key kept current.

    ``module.to(...)`` and ``.half()`` swap a parameter's storage but keep the
    object, so the ledger follows the object and its memory key is updated.
    """
    ledger = _LEDGERS.get(id(tensor))
    if ledger is None or ledger.tensor() is not tensor:
        return None
    memory = _memory(tensor)
    if (ledger.device, ledger.data_ptr) != memory:
        if _BY_MEMORY.get((ledger.device, ledger.data_ptr)) == id(tensor):
            del _BY_MEMORY[(ledger.device, ledger.data_ptr)]
        ledger.device, ledger.data_ptr = memory
        _BY_MEMORY[memory] = id(tensor)
    return ledger


def _ledger_by_memory(memory: tuple[str, int]) -> TensorLedger | None:
    """The ledger of another live tensor object whose storage is ``memory`` right now.

    Stale keys (the tensor moved to another device or dtype, and its old
    memory was reused by someone else) are dropped, never trusted.
    """
    owner = _BY_MEMORY.get(memory)
    if owner is None:
        return None
    ledger = _LEDGERS.get(owner)
    tensor = ledger.tensor() if ledger is not None else None
    if tensor is None or _memory(tensor) != memory:
        del _BY_MEMORY[memory]
        if tensor is not None:
            _own_ledger(tensor)  # re-key it under its current memory
        return None
    return ledger


def ledger_for(tensor: torch.Tensor, key: str) -> TensorLedger:
    """The ledger of ``tensor``, created on first use."""
    ledger = _own_ledger(tensor)
    if ledger is not None:
        return ledger
    memory = _memory(tensor)
    other = _ledger_by_memory(memory)
    if other is not None and other.shuttings:
        raise RuntimeError(
            f"weight {key!r} is already shut through another tensor object over the same memory "
            "(e.g. a state_dict() copy); apply and remove through one object, such as the module"
        )
    identity = id(tensor)

    def forget(_: weakref.ref) -> None:
        if _LEDGERS.get(identity) is not ledger:
            return  # the id was reused and has a new ledger
        del _LEDGERS[identity]
        if _BY_MEMORY.get((ledger.device, ledger.data_ptr)) == identity:
            del _BY_MEMORY[(ledger.device, ledger.data_ptr)]

    ledger = TensorLedger(weakref.ref(tensor, forget), *memory)
    _LEDGERS[identity] = ledger
    _BY_MEMORY[memory] = identity
    return ledger


def existing_ledger(tensor: torch.Tensor) -> TensorLedger | None:
    """The ledger of ``tensor``, or of another tensor object over the same memory."""
    return _own_ledger(tensor) or _ledger_by_memory(_memory(tensor))


def base_values(tensor: torch.Tensor, positions: np.ndarray) -> torch.Tensor:
    """Values at flat ``positions`` as they are with no shutting applied.

    Fingerprints are of the base weights: checking a second container, or
    making one while another is applied, must not see the first one's zeros.
    """
    index = torch.from_numpy(positions).to(tensor.device)
    with torch.no_grad():
        values = tensor.detach().reshape(-1).index_select(0, index)
    ledger = existing_ledger(tensor)
    for shutting in ledger.shuttings if ledger else ():
        owned = shutting.indices.decode()[shutting.owned_mask()]
        if owned.size == 0:
            continue
        where = np.minimum(np.searchsorted(owned, positions), owned.size - 1)
        hit = owned[where] == positions
        if hit.any():
            saved = shutting.saved[torch.from_numpy(where[hit]).to(shutting.saved.device)]
            values[torch.from_numpy(np.flatnonzero(hit)).to(values.device)] = saved.to(
                values.device, values.dtype
            )
    return values


def flat(tensor: torch.Tensor, key: str) -> torch.Tensor:
    """A 1-D view of the weight's storage (in-place edits reach the model)."""
    if not tensor.is_contiguous():
        raise ValueError(f"weight {key!r} is not contiguous; shutting needs a contiguous tensor")
    return tensor.detach().view(-1)


def shut(
    tensor: torch.Tensor, key: str, indices: np.ndarray, label: tuple[str, str], handle: object
) -> Shutting:
    """Shut ``indices`` (sorted int64, validated) of ``tensor`` and record it in its ledger."""
    ledger = ledger_for(tensor, key)
    weights = flat(tensor, key)
    positions = _as_index(indices, weights.device)
    compact = CompactIndices(indices)
    with torch.no_grad():
        values = weights.index_select(0, positions)
        owned = values.view(_BITS[values.element_size()]) != 0
        # The first shutting of a weight owns everything it shuts: no selection needed.
        saved = values if bool(owned.all()) else values[owned]
        shutting = Shutting(label, handle, compact, np.packbits(owned.cpu().numpy()), saved)
        weights.index_fill_(0, positions, 0)  # validated indices: writes all or raises before writing
    ledger.shuttings.append(shutting)
    return shutting


def _as_index(indices: np.ndarray, device: torch.device) -> torch.Tensor:
    """Indices as a torch tensor on ``device``, without copying a read-only numpy array on CPU.

    Container arrays are read-only; torch warns that it cannot protect them, but
    indices are only ever read here.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(indices).to(device)


def restore(tensor: torch.Tensor | None, key: str, shutting: Shutting) -> None:
    """Remove ``shutting``: hand over what others still shut, write the rest back.

    Values are written back in the weight's current dtype: after a round trip
    such as fp32 -> fp16 -> fp32 while applied, the restored entries are the
    exact fp32 base, the others carry the round trip's rounding.
    """
    if tensor is None:
        return  # the model is gone; nothing to restore
    ledger = existing_ledger(tensor)
    if ledger is None or shutting not in ledger.shuttings:
        return
    others = [other for other in ledger.shuttings if other is not shutting]
    owned = shutting.indices.decode()[shutting.owned_mask()]
    values = shutting.saved
    keep = np.ones(owned.size, dtype=bool)
    if others and owned.size:
        cover = _first_cover(owned, others, tensor.numel())
        for number, other in enumerate(others):
            hit = cover == number
            if hit.any():
                _hand_over(other, owned[hit], values[torch.from_numpy(hit).to(values.device)])
                keep &= ~hit
    weights = flat(tensor, key)
    with torch.no_grad():
        if keep.all():
            positions, back = owned, values
        else:
            positions, back = owned[keep], values[torch.from_numpy(keep).to(values.device)]
        weights.index_copy_(
            0,
            torch.from_numpy(positions).to(weights.device),
            back.to(device=weights.device, dtype=weights.dtype),
        )
    ledger.shuttings.remove(shutting)


def _first_cover(entries: np.ndarray, others: list[Shutting], numel: int) -> np.ndarray:
    """For each entry, the number of the first other shutting that covers it, else -1."""
    cover = np.full(entries.size, -1, dtype=np.int64)
    if numel <= 1 << 28 and len(others) < 1 << 15:
        # A transient table over the layer: one pass per shutting, no sorting.
        table = np.full(numel, -1, dtype=np.int8 if len(others) < 127 else np.int16)
        for number in range(len(others) - 1, -1, -1):
            table[others[number].indices.decode()] = number
        return table[entries].astype(np.int64)
    for number, other in enumerate(others):  # huge layers: binary search instead
        theirs = other.indices.decode()
        if theirs.size == 0:
            continue
        position = np.minimum(np.searchsorted(theirs, entries), theirs.size - 1)
        hit = (cover < 0) & (theirs[position] == entries)
        cover[hit] = number
    return cover


def _hand_over(heir: Shutting, entries: np.ndarray, values: torch.Tensor) -> None:
    """Make ``heir`` own ``entries`` (which it covers) with their saved base ``values``."""
    indices = heir.indices.decode()
    mask = heir.owned_mask()
    old_positions = np.flatnonzero(mask)
    new_positions = np.searchsorted(indices, entries)
    mask[new_positions] = True
    rank = np.cumsum(mask) - 1
    saved = torch.empty(int(mask.sum()), dtype=heir.saved.dtype, device=heir.saved.device)
    saved[torch.from_numpy(rank[old_positions]).to(saved.device)] = heir.saved
    saved[torch.from_numpy(rank[new_positions]).to(saved.device)] = values.to(saved.device, saved.dtype)
    heir.owned = np.packbits(mask)
    heir.saved = saved
