"""The runtime's fast paths (issue 14, point 6; bench/switching.py): keys looked up without building
the state dict, numpy writes on CPU memory, compact indices, and the shortcut for a shutting that
owns every entry — each equal to the slow way it replaces."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import conesrt
from conesrt.compact import CompactIndices
from conesrt.ledger import Shutting
from conesrt.targets import ModuleWeights, resolve
from tests.conesrt.helpers import assert_bit_identical, random_container, snapshot
from tests.tiny_models import cross_attention_keys, tiny_unet


def test_keys_looked_up_one_by_one_are_the_state_dicts_tensors() -> None:
    unet = tiny_unet()
    weights = resolve(unet)
    assert isinstance(weights, ModuleWeights)
    state = unet.state_dict(keep_vars=True)
    for key in state:  # each lookup before the state dict is built, on a fresh mapping
        assert ModuleWeights(unet)[key] is state[key]
        assert key in ModuleWeights(unet)
    assert list(weights) == list(state) and len(weights) == len(state)
    assert "no.such.weight" not in weights
    with pytest.raises(KeyError):
        weights["no.such.weight"]


def test_a_module_with_a_state_dict_hook_is_read_through_its_state_dict() -> None:
    def rename(module, state, prefix, local_metadata) -> None:
        for key in [k for k in state if k.startswith(prefix)]:
            state[f"{prefix}renamed_{key[len(prefix) :]}"] = state.pop(key)

    model = torch.nn.Sequential(torch.nn.Linear(3, 2))
    model._register_state_dict_hook(rename)
    weights = ModuleWeights(model)
    assert "0.weight" not in weights  # the attribute path, but not a state-dict key
    assert weights["renamed_0.weight"] is model[0].weight
    assert list(weights) == list(model.state_dict())


def test_non_persistent_buffers_are_not_weights() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 2))
    model[0].register_buffer("scratch", torch.zeros(2), persistent=False)
    model[0].register_buffer("kept", torch.zeros(2))
    assert "0.scratch" not in ModuleWeights(model)
    assert ModuleWeights(model)["0.kept"] is model[0].kept


def test_a_cpu_write_bumps_the_version_counter_as_torch_in_place_ops_do() -> None:
    unet = tiny_unet()
    keys = cross_attention_keys(unet)
    container = random_container(unet, seed=3, density=0.2)
    weight = unet.state_dict(keep_vars=True)[keys[0]]
    before = weight._version
    handle = conesrt.apply(unet, [container])
    assert weight._version > before
    applied = weight._version
    handle.remove()
    assert weight._version > applied


def test_apply_and_remove_through_the_state_dict_of_a_hooked_module_restore_bits() -> None:
    unet = tiny_unet()
    keys = cross_attention_keys(unet)
    container = random_container(unet, seed=4, density=0.3)
    unet._register_state_dict_hook(lambda module, state, prefix, local: None)  # the slow path
    base = snapshot(unet)
    with conesrt.apply(unet, [container]):
        flat = unet.state_dict()[keys[0]].reshape(-1)
        assert bool((flat[torch.from_numpy(np.array(container.indices("concept", keys[0])))] == 0).all())
    assert_bit_identical(unet, base)


@given(st.lists(st.integers(0, 300_000), unique=True, max_size=400).map(sorted))
def test_compact_indices_round_trip(indices: list[int]) -> None:
    array = np.array(indices, dtype=np.int64)
    compact = CompactIndices(array)
    assert np.array_equal(compact.decode(), array)
    assert compact.decode().dtype == np.int64


@given(st.integers(1, 40), st.data())
def test_owns_all_agrees_with_the_unpacked_bits(size: int, data) -> None:
    owned = np.array(data.draw(st.lists(st.booleans(), min_size=size, max_size=size)))
    shutting = Shutting(
        ("s", "c"),
        None,
        CompactIndices(np.arange(size)),
        np.packbits(owned),
        torch.zeros(int(owned.sum())),
        None,
    )
    assert shutting.owns_all() == bool(owned.all())
