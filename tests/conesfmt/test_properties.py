"""Hypothesis properties of the format: round trip, canonical bytes, and mutations.

The default profile checks 10,000 mutated inputs; ``--hypothesis-profile=slow``
runs 20 times as many.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from conesfmt import Container
from conesfmt.conformance import containers, mutations
from conesfmt.conformance.properties import (
    LibraryReader,
    check_canonical,
    check_mutation,
    check_round_trip,
)

MUTATIONS_PER_CONTAINER = 40
mutated_inputs = 0


@given(containers())
def test_round_trip(container: Container) -> None:
    check_round_trip(container)


@given(containers())
def test_canonical_bytes(container: Container) -> None:
    check_canonical(container)


@settings(max_examples=settings().max_examples * 5 // 2)
@given(containers(), st.data())
def test_every_mutation_is_valid_or_rejected(container: Container, data: st.DataObject) -> None:
    global mutated_inputs
    encoded = container.to_bytes()
    reader = LibraryReader()
    for _ in range(MUTATIONS_PER_CONTAINER):
        check_mutation(reader, data.draw(mutations(encoded)))
        mutated_inputs += 1


def test_at_least_ten_thousand_mutations_were_checked() -> None:
    # Runs after the property above (pytest keeps file order).
    assert mutated_inputs >= 10_000, mutated_inputs
