"""Shutting (or scaling) weight entries and restoring them bit-exactly, with overlaps.

A *shutting* is one concept applied to one weight at one strength: its
indices and its factors ξ' (:class:`~conesrt.composition.Factors`; for a
binary concept at strength 1, ξ' = 0: the entries are shut). The invariant,
for every entry ``e`` of a weight with base value ``b``:

- if no active shutting covers ``e``, its value is ``b``;
- otherwise its value is what spec § 6.5 gives for ``b`` and the factors of
  the active shuttings that cover it (+0.0 if one of them shuts it), and at
  most one of them *owns* ``e`` and keeps ``b`` — exactly one unless ``b`` is
  itself +0.0 (all bits zero), which nobody needs to keep.

Applying a shutting: an entry no other active shutting covers holds its base
value; if its bits are not all zero the new shutting owns it and saves it.
Every entry is then recomputed from the base values (saved, or +0.0) and the
factors of all the shuttings that cover it. Removing a shutting hands each
entry it owns to another active shutting that covers it, writes the base
back where none does, and recomputes the rest from the factors still there.
Since spec § 6.5 makes an entry a function of its base and the multiset of
factors, every weight is always bit for bit what it would be with only the
active shuttings applied, in any order. No reference counts are stored: a
shutting keeps its index set (2 bytes per index, :class:`CompactIndices`), a
bit per index saying whether it owns it, the saved values of what it owns (in
the weight's own dtype and device), and a reference to the container's
values, never a copy. When every shutting of a weight shuts (binary,
strength 1), entries another shutting covers read +0.0, so ownership comes
from the bits alone, as in version 1.0, and nothing is recomputed.

>>> ledger = ledger_for(weight)
>>> shutting = shut(weight, key, np.array([3, 8, 9]), ("cat.cones", "cat"), handle, Factors(None, 3, 1.0))
>>> restore(weight, key, shutting)
"""

from __future__ import annotations

import threading
import warnings
import weakref
from dataclasses import dataclass, field

import numpy as np
import torch

from .compact import CompactIndices
from .composition import CANONICAL_NAN_BITS, Factors, factor_rows, product

#: Integer dtypes of the same width, to test a float's bits for +0.0.
_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
#: Weight dtypes whose entries values can scale (spec § 6.5, step 5), by their safetensors names.
_SCALABLE = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64"}

#: One lock for every ledger: apply and remove are not meant to race.
LOCK = threading.RLock()


@dataclass(eq=False)
class Shutting:
    """One concept applied to one weight: what it covers, its factors, what it owns and saved."""

    label: tuple[str, str]  # (source, concept)
    handle: object
    indices: CompactIndices
    owned: np.ndarray  # np.packbits of a bool per index
    saved: torch.Tensor  # base values of the owned entries, in index order
    factors: Factors  # xi' per index (spec § 6.5): the container's values, by reference, and the strength

    @property
    def nbytes(self) -> int:
        """Saved values, compact indices, ownership bits, and the container values it refers to."""
        saved = self.saved.numel() * self.saved.element_size()
        return self.indices.nbytes + self.owned.nbytes + saved + self.factors.nbytes

    def owned_mask(self) -> np.ndarray:
        return np.unpackbits(self.owned, count=self.indices.size).astype(bool)

    def owns_all(self) -> bool:
        """Whether every bit of :attr:`owned` is set (np.packbits: the first index is the top bit)."""
        full, rest = divmod(self.indices.size, 8)
        if not bool((self.owned[:full] == 0xFF).all()):
            return False
        return rest == 0 or int(self.owned[full]) == (0xFF << (8 - rest)) & 0xFF


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
    shuttings = ledger.shuttings if ledger else []
    if shuttings:
        decoded = [shutting.indices.decode() for shutting in shuttings]
        covered = _covered(positions, decoded)
        if covered.any():
            values[torch.from_numpy(np.flatnonzero(covered)).to(values.device)] = _base_of(
                positions[covered], shuttings, decoded, values.dtype, values.device
            )
    return values


def _match(sorted_values: np.ndarray, entries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where each entry sits in ``sorted_values``, and whether it is there."""
    if sorted_values.size == 0:
        return np.zeros(entries.size, np.int64), np.zeros(entries.size, bool)
    position = np.minimum(np.searchsorted(sorted_values, entries), sorted_values.size - 1)
    return position, sorted_values[position] == entries


def _covered(entries: np.ndarray, decoded: list[np.ndarray]) -> np.ndarray:
    """Whether any of the index sets ``decoded`` holds each entry."""
    covered = np.zeros(entries.size, dtype=bool)
    for indices in decoded:
        covered |= _match(indices, entries)[1]
    return covered


def _base_of(
    entries: np.ndarray, shuttings: list[Shutting], decoded: list[np.ndarray], dtype: torch.dtype, device
) -> torch.Tensor:
    """Base values of entries that ``shuttings`` (their indices ``decoded``) cover: the owner's
    saved value, +0.0 where none owns it."""
    base = torch.zeros(entries.size, dtype=dtype, device=device)
    if entries.size == 0:
        return base
    for shutting, indices in zip(shuttings, decoded, strict=True):
        position, hit = _match(indices[shutting.owned_mask()], entries)
        if hit.any():
            saved = shutting.saved[torch.from_numpy(position[hit]).to(shutting.saved.device)]
            base[torch.from_numpy(np.flatnonzero(hit)).to(device)] = saved.to(device, dtype)
    return base


def _composed(base: torch.Tensor, xi: np.ndarray, zero: np.ndarray, key: str) -> torch.Tensor:
    """Spec § 6.5, steps 2 and 4-6, on the device: the new values of entries with these bases.

    ``xi`` and ``zero`` come from :func:`conesrt.composition.product`, which
    bake uses too; the product with the base is one binary32 (binary64)
    multiplication and one rounding to the weight's dtype, as in numpy.
    """
    device, dtype = base.device, base.dtype
    keep = (xi == 1) & ~zero
    scaled = np.flatnonzero(~keep & ~zero)
    out = base.clone()
    if scaled.size:
        if dtype not in _SCALABLE:
            raise TypeError(
                f"weight {key!r} has dtype {dtype}: its entries can only be shut (+0.0) or left as they are, "
                "and these values scale them (spec § 6.5)"
            )
        wide = torch.float64 if dtype == torch.float64 else torch.float32
        where = torch.from_numpy(scaled).to(device)
        factors = torch.from_numpy(xi[scaled].astype(np.float64 if wide == torch.float64 else np.float32))
        values = (base.index_select(0, where).to(wide) * factors.to(device)).to(dtype)
        nan = torch.isnan(values)
        if bool(nan.any()):  # one NaN for every device and library (step 6)
            values.view(_BITS[values.element_size()])[nan] = CANONICAL_NAN_BITS[_SCALABLE[dtype]]
        out[where] = values
    if zero.any():
        out[torch.from_numpy(np.flatnonzero(zero)).to(device)] = 0
    return out


def _bits(values: torch.Tensor) -> torch.Tensor:
    """The same memory as integers of the same width: writes that keep every bit, in any float dtype."""
    return values.view(_BITS[values.element_size()])


def _on_numpy(tensor: torch.Tensor) -> bool:
    """Whether numpy can work on ``tensor``'s memory: a plain tensor (not a subclass) on the CPU."""
    return tensor.device.type == "cpu" and type(tensor) is torch.Tensor


def _take(weights: torch.Tensor, indices: np.ndarray) -> torch.Tensor:
    """A copy of the entries of the 1-D ``weights`` at validated ``indices``.

    On the CPU, numpy's ``take`` on the same memory, as integers of the same
    width (every bit kept, any float dtype, float8 included), is what
    ``index_select`` does at the speed of the memory; elsewhere ``index_select``.
    """
    if _on_numpy(weights):
        return torch.from_numpy(_bits(weights).numpy().take(indices)).view(weights.dtype)
    return weights.index_select(0, _as_index(indices, weights.device))


def _put(weights: torch.Tensor, indices: np.ndarray, values: torch.Tensor | None) -> None:
    """Write ``values`` (``None``: +0.0, all bits zero) into the 1-D ``weights`` at validated ``indices``.

    Written through the bits, which every dtype supports (torch has no
    ``index_fill_`` for float8). On the CPU through numpy on the same memory,
    up to twice as fast as ``index_fill_`` / ``index_copy_`` at SDXL scale
    (docs/switching.md), and the tensor's version counter is bumped as torch's
    own in-place ops do, so autograd still sees the change.
    """
    bits = _bits(weights)
    if _on_numpy(weights):
        target = bits.numpy()
        target[indices] = 0 if values is None else _bits(values.contiguous()).numpy()
        torch.autograd.graph.increment_version(weights)
        return
    positions = _as_index(indices, weights.device)
    if values is None:
        bits.index_fill_(0, positions, 0)
    else:
        bits.index_copy_(0, positions, _bits(values))


def flat(tensor: torch.Tensor, key: str) -> torch.Tensor:
    """A 1-D view of the weight's storage (in-place edits reach the model)."""
    if not tensor.is_contiguous():
        raise ValueError(f"weight {key!r} is not contiguous; shutting needs a contiguous tensor")
    return tensor.detach().view(-1)


def shut(
    tensor: torch.Tensor,
    key: str,
    indices: np.ndarray,
    label: tuple[str, str],
    handle: object,
    factors: Factors | None = None,
) -> Shutting:
    """Apply one concept's ``indices`` (sorted int64, validated) and ``factors`` to ``tensor``; record it.

    ``factors`` default: a binary concept at strength 1 (the entries are shut).
    Everything is computed before the one write, so a failure changes nothing.
    """
    factors = factors if factors is not None else Factors(None, indices.size, 1.0)
    ledger = ledger_for(tensor, key)
    weights = flat(tensor, key)
    others = ledger.shuttings
    # Entries another shutting covers read +0.0 when every other shutting shuts: the bits tell.
    only_shut = all(other.factors.shuts for other in others)
    with torch.no_grad():
        values = _take(weights, indices)
        compact = CompactIndices(indices)  # after the take, which brought the indices into the cache
        bits = _bits(values)
        owned = bits.numpy() != 0 if _on_numpy(bits) else (bits != 0).cpu().numpy()
        covered = None
        decoded = [] if only_shut and factors.shuts else [other.indices.decode() for other in others]
        if not only_shut:
            covered = _covered(indices, decoded)
            owned &= ~covered
        # The first shutting of a weight owns everything it shuts: no selection needed.
        saved = values if bool(owned.all()) else values[torch.from_numpy(owned).to(values.device)]
        shutting = Shutting(label, handle, compact, np.packbits(owned), saved, factors)
        if factors.shuts:
            # +0.0 is all bits zero in every float format. Validated indices: all or nothing.
            _put(weights, indices, None)
        else:
            base = values
            if covered is not None and covered.any():  # they hold other concepts' values, not the base
                base = values.clone()
                base[torch.from_numpy(np.flatnonzero(covered)).to(base.device)] = _base_of(
                    indices[covered], others, decoded, values.dtype, values.device
                )
            covers = [(theirs, other.factors) for theirs, other in zip(decoded, others, strict=True)]
            xi, zero = product(factor_rows(indices, covers) + [factors.all()])
            _put(weights, indices, _composed(base, xi, zero, key))
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
    # Every shutting shuts (binary, strength 1): what others cover stays +0.0 and what nobody
    # owns is +0.0 already, so only the owned entries move: handed over, or written back.
    only_shut = shutting.factors.shuts and all(other.factors.shuts for other in others)
    entries = shutting.indices.decode()
    owns_all = shutting.owns_all()
    # The mask is only read when something is recomputed; a shutting that owns all needs no copy.
    mask = None if only_shut and owns_all else shutting.owned_mask()
    owned = entries if owns_all else entries[mask]
    values = shutting.saved
    weights = flat(tensor, key)
    device, dtype = weights.device, weights.dtype
    decoded = [other.indices.decode() for other in others]
    with torch.no_grad():
        if only_shut:
            cover = _first_cover(owned, decoded, tensor.numel()) if others and owned.size else None
            free = None  # not read: nothing is recomputed
        else:
            full_cover = _first_cover(entries, decoded, tensor.numel()) if others else None
            free = np.ones(entries.size, bool) if full_cover is None else full_cover < 0
            cover = None if full_cover is None else full_cover[mask]
        writes: list[tuple[np.ndarray, torch.Tensor]] = []
        if not only_shut and not free.all() and not all(other.factors.shuts for other in others):
            # What others still cover: recomputed from its base and their factors (spec § 6.5),
            # unless one of them shuts everything it covers, which then stays +0.0.
            still = ~free
            merged = torch.empty(int(still.sum()), dtype=dtype, device=device)
            mine = mask[still]
            merged[torch.from_numpy(np.flatnonzero(~mine)).to(device)] = _base_of(
                entries[still & ~mask], others, decoded, dtype, device
            )
            merged[torch.from_numpy(np.flatnonzero(mine)).to(device)] = values[
                torch.from_numpy(still[mask]).to(values.device)
            ].to(device, dtype)
            covers = [(theirs, other.factors) for theirs, other in zip(decoded, others, strict=True)]
            xi, zero = product(factor_rows(entries[still], covers))
            writes.append((entries[still], _composed(merged, xi, zero, key)))
        if not only_shut:
            unowned = free & ~mask  # base +0.0: a factor may have made them -0.0 or NaN
            if unowned.any():
                writes.append((entries[unowned], torch.zeros(int(unowned.sum()), dtype=dtype, device=device)))
        # The base goes back where no other shutting covers an owned entry; the others hand over.
        back = None if cover is None else cover < 0
        if back is None or back.all():
            writes.append((owned, values.to(device, dtype)))
        elif back.any():
            writes.append((owned[back], values[torch.from_numpy(back).to(values.device)].to(device, dtype)))
        if back is not None and not back.all():
            for number, other in enumerate(others):
                hit = cover == number
                if hit.any():
                    _hand_over(
                        other, decoded[number], owned[hit], values[torch.from_numpy(hit).to(values.device)]
                    )
        for positions, new in writes:
            _put(weights, positions, new)
    ledger.shuttings.remove(shutting)


def _first_cover(entries: np.ndarray, decoded: list[np.ndarray], numel: int) -> np.ndarray:
    """For each entry, the number of the first index set of ``decoded`` that holds it, else -1."""
    cover = np.full(entries.size, -1, dtype=np.int64)
    if numel <= 1 << 28 and len(decoded) < 1 << 15:
        # A transient table over the layer: one pass per shutting, no sorting.
        table = np.full(numel, -1, dtype=np.int8 if len(decoded) < 127 else np.int16)
        for number in range(len(decoded) - 1, -1, -1):
            table[decoded[number]] = number
        return table[entries].astype(np.int64)
    for number, theirs in enumerate(decoded):  # huge layers: binary search instead
        if theirs.size == 0:
            continue
        position = np.minimum(np.searchsorted(theirs, entries), theirs.size - 1)
        hit = (cover < 0) & (theirs[position] == entries)
        cover[hit] = number
    return cover


def _hand_over(heir: Shutting, indices: np.ndarray, entries: np.ndarray, values: torch.Tensor) -> None:
    """Make ``heir`` (its indices decoded: ``indices``) own ``entries``, which it covers, with their
    saved base ``values``."""
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
