"""Containers over a tiny UNet's cross-attention K/V weights, and bit-level comparisons."""

from __future__ import annotations

import numpy as np
import torch

import conesfmt
import conesrt
from tests.tiny_models import cross_attention_keys

_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def random_container(
    unet: torch.nn.Module,
    seed: int,
    density: float = 0.05,
    names: tuple[str, ...] = ("concept",),
    fingerprint: bool = True,
) -> conesfmt.Container:
    """Random masks over every attn2 to_k/to_v weight, one concept per name."""
    rng = np.random.default_rng(seed)
    keys = cross_attention_keys(unet)
    state = unet.state_dict()
    concepts = {
        name: {key: np.flatnonzero(rng.random(state[key].numel()) < density) for key in keys}
        for name in names
    }
    return conesfmt.Container(
        conesrt.layer_table(unet, keys),
        concepts,
        conesrt.fingerprint(unet, keys) if fingerprint else None,
        {"base_model": "tiny"},
    )


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in module.state_dict().items()}


def bits(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().contiguous().view(_BITS[tensor.element_size()])


def assert_bit_identical(
    module: torch.nn.Module, reference: dict[str, torch.Tensor], keys: list[str] | None = None
) -> None:
    """Every weight (or those of ``keys``) equals ``reference`` bit for bit."""
    state = module.state_dict()
    for key in state if keys is None else keys:
        assert torch.equal(bits(state[key]), bits(reference[key])), f"{key} differs"


def expected_state(base: dict[str, torch.Tensor], shut: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """The base weights with exactly ``shut`` entries set to +0.0."""
    expected = {key: value.clone() for key, value in base.items()}
    for key, indices in shut.items():
        expected[key].view(-1)[torch.from_numpy(indices)] = 0.0
    return expected


def union(containers: list[conesfmt.Container], keys: list[str]) -> dict[str, np.ndarray]:
    return {
        key: np.unique(
            np.concatenate(
                [np.zeros(0, np.int64)] + [c.indices(name, key) for c in containers for name in c.concepts]
            )
        )
        for key in keys
    }


def random_values(kind: str, count: int, rng: np.random.Generator):
    """Values of a kind for ``count`` indices, with exact 0 and 1 among them (spec § 6.5's edge cases)."""
    if kind == "q4":
        levels = [0.0, 1.0, float(rng.uniform(-0.5, 0.5)), float(rng.uniform(0.5, 2.0))]
        return conesfmt.Q4(levels, rng.integers(0, 4, count))
    dtype = np.float16 if kind == "fp16" else np.float32
    values = rng.normal(0.6, 0.5, count).astype(dtype)
    special = rng.random(count)
    values[special < 0.05] = 0.0
    values[(special >= 0.05) & (special < 0.1)] = 1.0
    values[(special >= 0.1) & (special < 0.12)] = -0.0
    return values


def valued_container(
    unet: torch.nn.Module,
    seed: int,
    kinds: tuple[str, ...] = ("q4",),
    density: float = 0.05,
    fingerprint: bool = True,
) -> conesfmt.Container:
    """Random masks over every attn2 to_k/to_v weight, one concept per kind (``binary``, ``q4``, ...)."""
    rng = np.random.default_rng(seed)
    keys = cross_attention_keys(unet)
    state = unet.state_dict()
    concepts = {}
    for number, kind in enumerate(kinds):
        indices = {key: np.flatnonzero(rng.random(state[key].numel()) < density) for key in keys}
        if kind == "binary":
            concepts[f"{kind}{number}"] = conesfmt.Concept(indices)
        else:
            values = {key: random_values(kind, idx.size, rng) for key, idx in indices.items()}
            concepts[f"{kind}{number}"] = conesfmt.Concept(indices, values=values, value_kind=kind)
    return conesfmt.Container(
        conesrt.layer_table(unet, keys),
        concepts,
        conesrt.fingerprint(unet, keys) if fingerprint else None,
        {"base_model": "tiny"},
    )


#: Canonical quiet NaN bits of each torch dtype (spec § 6.5, step 6), as signed integers.
_NAN_BITS = {
    torch.float32: 0x7FC00000,
    torch.float16: 0x7E00,
    torch.bfloat16: 0x7FC0,
    torch.float64: 0x7FF8 << 48,
}


def reference_state(
    base: dict[str, torch.Tensor],
    active: list[tuple[conesfmt.Container, str, float]],
    keys: list[str],
) -> dict[str, torch.Tensor]:
    """Spec § 6.5 from scratch, densely: every weight from its base and the active (container, concept, s).

    Written from the spec, not from conesrt: a (concepts x numel) table of
    factors per layer, 1 where a concept does not index an entry, sorted down
    each column and multiplied in order; then the product with the base in
    binary32 and torch's rounding to the weight's dtype.
    """
    expected = {key: value.clone() for key, value in base.items()}
    one = np.float32(1.0)
    for key in keys:
        theta = base[key].reshape(-1)
        table = np.ones((max(1, len(active)), theta.numel()), dtype=np.float32)
        covered = np.zeros(theta.numel(), dtype=bool)
        for row, (container, name, strength) in enumerate(active):
            indices = container.indices(name, key)
            s = np.float32(strength)
            table[row, indices] = (s * container.values(name, key)) + (one - s)
            covered[indices] = True
        zero = (table == 0).any(axis=0)
        table.sort(axis=0)
        product = table[0].copy()
        with np.errstate(all="ignore"):
            for row in table[1:]:
                product = product * row
        wide = torch.float64 if theta.dtype == torch.float64 else torch.float32
        scaled = (theta.to(wide) * torch.from_numpy(product).to(wide)).to(theta.dtype)
        scaled.view(_BITS[scaled.element_size()])[torch.isnan(scaled)] = _NAN_BITS[theta.dtype]
        unchanged = torch.from_numpy(~covered | (product == 1))
        result = torch.where(unchanged, theta, scaled)
        result[torch.from_numpy(covered & zero)] = 0.0
        expected[key] = result.reshape(base[key].shape)
    return expected
