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
