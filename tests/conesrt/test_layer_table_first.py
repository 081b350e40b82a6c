"""apply and bake check a container's layer table against the model before decoding any index.

A container for another architecture is refused from its table alone, so a
large (or hostile) file costs nothing to refuse: here the index data is even
corrupt, and the error is still the architecture's, not the format's.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

import conesfmt
import conesrt

VECTORS = Path(__file__).resolve().parents[2] / "spec" / "vectors"
# Layer blk.attn2.to_k.weight of shape (4, 5), and a delta of 0 in its index data.
CORRUPT_INDICES = VECTORS / "invalid" / "zero-delta.cones"


def test_apply_refuses_another_architecture_before_decoding_indices() -> None:
    model = {"blk.attn2.to_k.weight": torch.ones(5, 4)}
    for container in (CORRUPT_INDICES, CORRUPT_INDICES.read_bytes()):
        with pytest.raises(conesrt.FingerprintMismatch, match=r"another architecture: .*shape \(5, 4\)"):
            conesrt.apply(model, container)
    assert torch.equal(model["blk.attn2.to_k.weight"], torch.ones(5, 4))
    # The same model shape: the table fits, so the indices are decoded and their error shows.
    with pytest.raises(conesfmt.FormatError, match="not strictly increasing"):
        conesrt.apply({"blk.attn2.to_k.weight": torch.ones(4, 5)}, CORRUPT_INDICES)


def test_bake_refuses_another_architecture_before_decoding_indices(tmp_path: Path) -> None:
    # A safetensors file written by hand: one F32 tensor of shape (5, 4).
    header = json.dumps({"blk.attn2.to_k.weight": {"dtype": "F32", "shape": [5, 4], "data_offsets": [0, 80]}})
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(struct.pack("<Q", len(header)) + header.encode() + np.ones(20, "<f4").tobytes())
    with pytest.raises(conesrt.FingerprintMismatch, match="another architecture"):
        conesrt.bake(weights, [CORRUPT_INDICES], tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()
