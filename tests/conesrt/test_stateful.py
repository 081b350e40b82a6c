"""A hypothesis state machine of applies and removes on a real tiny UNet (fp32, fp16 and bf16).

Containers mix binary, q4, fp16 and fp32 concepts (format 1.1), each applied
at a random strength. Invariant after every step, against two references
built from scratch: every weight equals, bit for bit, spec § 6.5 evaluated
densely from the base weights and the still-active (concept, strength) pairs
(``helpers.reference_state``); and, as a step of its own and at the end of
every run, a fresh copy of the base weights with just those pairs applied,
in another order. The containers
overlap heavily (densities up to 40 %, the same container twice), their
values include exact 0 and 1, and the base holds +0.0 and -0.0 entries
inside the masks.
"""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule

import conesfmt
import conesrt
from tests.conesrt.helpers import assert_bit_identical, random_values, reference_state, snapshot
from tests.tiny_models import cross_attention_keys, tiny_unet

#: Strengths: the edges spec § 6.5 names (0, 1), a half, beyond 1 and below 0, and any binary32 between.
STRENGTHS = st.one_of(
    st.sampled_from([1.0, 1.0, 0.0, 0.5, 2.0, -0.5]),
    st.floats(-1.5, 2.5, width=32, allow_subnormal=False),
)
#: The value kind of each concept of each container: (first, second) concept.
KINDS = [("binary", "q4"), ("fp16", "binary"), ("q4", "fp32"), ("fp16", "q4")]


def make_world(dtype: torch.dtype):
    """A UNet with signed zeros in its base, and four containers of two concepts each, of mixed kinds."""
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
    for number, (density, kinds) in enumerate(zip([0.02, 0.1, 0.4, 0.25], KINDS, strict=True)):
        concepts = {}
        for name, kind in zip("ab", kinds, strict=True):
            touched = rng.choice(keys, size=len(keys) // 2 + 1, replace=False)
            indices = {key: np.flatnonzero(rng.random(base[key].numel()) < density) for key in touched}
            if kind == "binary":
                concepts[f"c{number}{name}"] = conesfmt.Concept(indices)
            else:
                values = {key: random_values(kind, idx.size, rng) for key, idx in indices.items()}
                concepts[f"c{number}{name}"] = conesfmt.Concept(indices, values=values, value_kind=kind)
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
            # id(handle) -> (handle, [(container number, concept, strength)])
            self.active: dict[int, tuple[object, list[tuple[int, str, float]]]] = {}

        @rule(
            target=handles,
            choices=st.lists(st.integers(0, len(containers) - 1), min_size=1, max_size=3),
            pick=st.sampled_from([None, "a", "b"]),
            strength=STRENGTHS,
        )
        def apply(self, choices: list[int], pick: str | None, strength: float):
            chosen = [containers[n] for n in choices]
            concepts = None if pick is None else [f"c{n}{pick}" for n in set(choices)]
            handle = conesrt.apply(unet, chosen, concepts=concepts, strength=strength)
            applied = [
                (n, name, strength)
                for n in choices
                for name in containers[n].concepts
                if concepts is None or name in concepts
            ]
            self.active[id(handle)] = (handle, applied)
            return handle

        @rule(
            target=handles,
            first=st.integers(0, len(containers) - 1),
            second=st.integers(0, len(containers) - 1),
            strengths=st.tuples(STRENGTHS, STRENGTHS),
        )
        def apply_two_at_their_own_strengths(self, first: int, second: int, strengths: tuple[float, float]):
            handle = conesrt.apply(unet, [containers[first], containers[second]], strength=list(strengths))
            applied = [
                (n, name, s)
                for n, s in zip((first, second), strengths, strict=True)
                for name in containers[n].concepts
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

        def active_pairs(self) -> list[tuple[int, str, float]]:
            return [pair for _, applied in self.active.values() for pair in applied]

        @invariant()
        def weights_are_spec_6_5_of_the_base_and_the_active_concepts(self):
            active = [(containers[n], name, s) for n, name, s in self.active_pairs()]
            assert_bit_identical(unet, reference_state(base_kv, active, keys), keys)

        @rule()
        def compare_with_a_fresh_apply_of_just_the_active_concepts(self):
            """A fresh copy of the base with just the active pairs applied, in reverse order, is the same."""
            fresh = {key: value.clone() for key, value in base_kv.items()}
            handles = [
                conesrt.apply(fresh, containers[n], concepts=[name], strength=s)
                for n, name, s in reversed(self.active_pairs())
            ]
            assert_bit_identical(unet, fresh, keys)
            for handle in handles:
                handle.remove()

        def teardown(self):
            self.compare_with_a_fresh_apply_of_just_the_active_concepts()
            for handle, _ in list(self.active.values()):
                handle.remove()
            self.active.clear()
            assert_bit_identical(unet, base)  # every weight of the model, not only K/V

    return ApplyRemove


TestFloat32 = make_machine(torch.float32).TestCase
TestFloat16 = make_machine(torch.float16).TestCase
TestBFloat16 = make_machine(torch.bfloat16).TestCase
TestFloat32.settings = TestFloat16.settings = TestBFloat16.settings = settings(
    settings(), max_examples=settings().max_examples // 2, stateful_step_count=12, deadline=None
)
