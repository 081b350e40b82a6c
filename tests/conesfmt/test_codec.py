"""The byte-plane index codec (spec § 6.3)."""

from __future__ import annotations

import numpy as np
import pytest
import zstandard

from conesfmt import Container, FormatError
from conesfmt.codec import BLOCK_ENTRIES, encode_planes, iter_index_blocks, layer_width, plane_sizes


@pytest.mark.parametrize(
    ("numel", "width"),
    [
        (1, 1),
        (2, 1),
        (256, 1),
        (257, 2),
        (65_536, 2),
        (65_537, 3),
        (1 << 24, 3),
        ((1 << 24) + 1, 4),
        (1 << 40, 5),
    ],
)
def test_width_holds_the_largest_delta(numel: int, width: int) -> None:
    assert layer_width(numel) == width
    assert numel - 1 < 256**width


def test_planes_carry_only_the_layers_wide_enough() -> None:
    entries = [(256, 3), (70_000, 5), (300, 2)]  # widths 1, 3, 2
    assert plane_sizes(entries) == [10, 7, 5]
    frames = encode_planes(
        [(256, np.array([0, 1, 255])), (70_000, np.arange(5) * 13_000), (300, np.array([3, 299]))]
    )
    assert len(frames) == 3


def decode(frames, entries):
    out = {}
    for number, block in iter_index_blocks(frames, entries):
        out.setdefault(number, []).append(block)
    return [np.concatenate(out[n]) for n in sorted(out)]


@pytest.mark.parametrize(
    "count", [1, BLOCK_ENTRIES - 1, BLOCK_ENTRIES, BLOCK_ENTRIES + 1, 3 * BLOCK_ENTRIES + 7]
)
def test_blocks_join_across_boundaries(count: int) -> None:
    rng = np.random.default_rng(count)
    numel = 4 * count + 10
    indices = np.sort(rng.choice(numel, count, replace=False))
    frames = encode_planes([(numel, indices)])
    (decoded,) = decode(frames, [(numel, count)])
    np.testing.assert_array_equal(decoded, indices)


def test_every_entry_shut_compresses_to_almost_nothing() -> None:
    numel = 2_000_000
    container = Container({"w": (numel,)}, {"all": {"w": np.arange(numel)}})
    data = container.to_bytes()
    assert len(data) < 1_000
    assert Container.from_bytes(data).indices("all", "w").size == numel


def test_a_zero_delta_in_a_later_block_is_caught() -> None:
    numel = 10 * BLOCK_ENTRIES
    indices = np.arange(0, 4 * BLOCK_ENTRIES, 2)  # two blocks of deltas of 2
    frames = encode_planes([(numel, indices)])

    planes = [bytearray(zstandard.ZstdDecompressor().decompress(f)) for f in frames]
    for plane in planes:
        plane[BLOCK_ENTRIES] = 0  # the first delta of the second block
    broken = [zstandard.ZstdCompressor().compress(bytes(p)) for p in planes]
    with pytest.raises(FormatError, match=f"not strictly increasing at entry {BLOCK_ENTRIES}"):
        decode(broken, [(numel, indices.size)])


def test_structured_masks_go_below_the_random_floor() -> None:
    from conesfmt.summary import floor_bytes

    rows = np.arange(0, 1280, 7)  # every 7th row of a 1280x768 matrix shut entirely
    indices = (rows[:, None] * 768 + np.arange(768)).reshape(-1)
    data = Container({"w": (1280, 768)}, {"rows": {"w": indices}}).to_bytes()
    assert len(data) < 0.01 * floor_bytes(1280 * 768, indices.size)
