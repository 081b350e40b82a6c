"""A hypothesis state machine of applies and removes on a real tiny UNet (fp32 and fp16).

Invariant after every step: every weight equals, bit for bit, the base with
exactly the still-active concepts' entries set to +0.0. The containers overlap
heavily (densities up to 40 %, shared concepts, the same container twice),
and the base holds +0.0 and -0.0 entries inside the masks.
"""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule

import conesfmt
import conesrt
from tests.conesrt.helpers import assert_bit_identical, expected_state, snapshot
from tests.tiny_models import cross_attention_keys, tiny_unet


def make_world(dtype: torch.dtype):
    """A UNet with signed zeros in its base, and three containers of two concepts each."""
    unet = tiny_unet(seed=0, dtype=dtype)
    keys = cross_attention_keys(unet)
    rng = np.random.default_rng(0)
    with torch.no_grad():  # signed zeros in the base, some inside the masks below
        for key in keys[:4]:
            flat = unet.state_dict(keep_vars=True)[key].view(-1)
            flat[rng.choice(flat.numel(), 20, replace=False)] = 0.0
            flat[rng.choice(flat.numel(), 20, replace=False)] = -0.0
    base = snapshot(unet)
    table = conesrt.layer_table(unet, keys)
    fingerprint = conesrt.fingerprint(unet, keys)
    containers = []
    for number, density in enumerate([0.02, 0.1, 0.4]):
        concepts = {
            f"c{number}{name}": {
                key: np.flatnonzero(rng.random(base[key].numel()) < density)
                for key in rng.choice(keys, size=len(keys) // 2 + 1, replace=False)
            }
            for name in "ab"
        }
        containers.append(conesfmt.Container(table, concepts, fingerprint))
    return unet, keys, base, containers


def make_machine(dtype: torch.dtype) -> type[RuleBasedStateMachine]:
    unet, keys, base, containers = make_world(dtype)
    base_kv = {key: base[key] for key in keys}

    class ApplyRemove(RuleBasedStateMachine):
        handles = Bundle("handles")

        def __init__(self) -> None:
            super().__init__()
            assert conesrt.active(unet) == []  # the previous example cleaned up
            self.active: dict[int, tuple[object, list[tuple[int, str]]]] = {}

        @rule(
            target=handles,
            choices=st.lists(st.integers(0, 2), min_size=1, max_size=3),
            pick=st.sampled_from([None, "a", "b"]),
        )
        def apply(self, choices: list[int], pick: str | None):
            chosen = [containers[n] for n in choices]
            concepts = None if pick is None else [f"c{n}{pick}" for n in set(choices)]
            handle = conesrt.apply(unet, chosen, concepts=concepts)
            applied = [
                (n, name)
                for n in choices
                for name in containers[n].concepts
                if concepts is None or name in concepts
            ]
            self.active[id(handle)] = (handle, applied)
            return handle

        @rule(handle=consumes(handles))
        def remove(self, handle):
            handle.remove()
            self.active.pop(id(handle), None)

        @rule(handle=handles)
        def remove_again(self, handle):
            # Removing an already removed handle changes nothing; on an active one it removes it.
            handle.remove()
            self.active.pop(id(handle), None)

        @invariant()
        def weights_are_base_with_exactly_the_active_concepts_shut(self):
            shut: dict[str, list[np.ndarray]] = {}
            for _, applied in self.active.values():
                for number, name in applied:
                    for key, indices in containers[number].concepts[name].indices.items():
                        shut.setdefault(key, []).append(indices)
            expected = expected_state(base_kv, {k: np.unique(np.concatenate(v)) for k, v in shut.items()})
            assert_bit_identical(unet, expected, keys)

        def teardown(self):
            for handle, _ in list(self.active.values()):
                handle.remove()
            self.active.clear()
            assert_bit_identical(unet, base)  # every weight of the model, not only K/V

    return ApplyRemove


TestFloat32 = make_machine(torch.float32).TestCase
TestFloat16 = make_machine(torch.float16).TestCase
TestFloat32.settings = TestFloat16.settings = settings(
    settings(), max_examples=settings().max_examples // 2, stateful_step_count=12
)
