"""A safetensors weights file, read and patched with numpy only (no torch).

safetensors' Python API validates a file and lists its tensors, but gives no
byte offsets, and numpy has no bfloat16. Shutting needs neither: +0.0 is all
zero bits in every float format, so a shut entry is ``itemsize`` zero bytes
at a known offset. The offsets come from the file's header, which the
safetensors format defines as an 8-byte little-endian length followed by that
much JSON (``{"name": {"dtype", "shape", "data_offsets": [begin, end]}}``).

>>> weights = SafetensorsFile("unet/diffusion_pytorch_model.safetensors")
>>> weights.shapes["mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight"]
(1280, 768)
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open

from conesfmt.fingerprint import values_from_bytes

#: Bytes per element of the safetensors dtypes a weight can have.
ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1}
#: File names diffusers uses for a model's weights, by where they live in a folder: a model
#: folder, a UNet pipeline's (SD 1.x, 2.x, SDXL) or a transformer pipeline's (SD3, Flux).
WEIGHTS_NAMES = (
    "diffusion_pytorch_model.safetensors",
    "unet/diffusion_pytorch_model.safetensors",
    "transformer/diffusion_pytorch_model.safetensors",
)
#: The index of a sharded model (FLUX.1's transformer is three shards), in the same places.
INDEX_NAMES = tuple(name + ".index.json" for name in WEIGHTS_NAMES)


class WeightsError(ValueError):
    """A weights file or folder that cannot be used (missing, sharded, not safetensors)."""


@dataclass(frozen=True)
class TensorEntry:
    dtype: str
    shape: tuple[int, ...]
    begin: int  # absolute byte offset in the file
    end: int


def find_weights(path: str | os.PathLike[str]) -> Path:
    """A ``.safetensors`` file or shard index, or the denoiser's weights (or their index) inside a
    diffusers model or pipeline folder (``unet/`` or ``transformer/``)."""
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        for name in WEIGHTS_NAMES + INDEX_NAMES:
            if (path / name).is_file():
                return path / name
        raise WeightsError(f"{path}: no {' or '.join(WEIGHTS_NAMES)} (or its .index.json) in this folder")
    raise WeightsError(f"{path}: no such file or folder")


def open_weights(path: str | os.PathLike[str]) -> SafetensorsFile | ShardedWeights:
    """The weights at ``path`` (see :func:`find_weights`): one file, or the shards of an index."""
    found = find_weights(path)
    return ShardedWeights(found) if found.name.endswith(".index.json") else SafetensorsFile(found)


class SafetensorsFile:
    """The tensors of a safetensors file: shapes, dtypes and byte ranges, read with numpy."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = find_weights(path)
        try:
            with safe_open(self.path, framework="numpy") as handle:  # validates the header
                keys = set(handle.keys())
        except (SafetensorError, OSError) as error:
            raise WeightsError(f"{self.path}: not a valid safetensors file ({error})") from None
        with open(self.path, "rb") as handle:
            (header_size,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(header_size))
        start = 8 + header_size
        self.entries = {
            key: TensorEntry(
                info["dtype"],
                tuple(info["shape"]),
                start + info["data_offsets"][0],
                start + info["data_offsets"][1],
            )
            for key, info in header.items()
            if key in keys
        }

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {key: entry.shape for key, entry in self.entries.items()}

    def entry_bytes(self, memory: np.ndarray, key: str) -> np.ndarray:
        """The tensor's bytes in ``memory`` (a uint8 memmap of the file) as (numel, itemsize)."""
        entry = self.entries[key]
        if entry.dtype not in ITEMSIZE:
            raise WeightsError(
                f"{self.path}: weight {key!r} has dtype {entry.dtype}; only floats can be shut"
            )
        numel = math.prod(entry.shape)
        return memory[entry.begin : entry.end].reshape(numel, ITEMSIZE[entry.dtype])

    def read_values(self, key: str, positions: np.ndarray) -> tuple[np.ndarray, str]:
        """Values at flat ``positions`` as float64, and the dtype name (a :data:`conesrt.fit.ValueReader`)."""
        memory = np.memmap(self.path, dtype=np.uint8, mode="r")
        raw = np.ascontiguousarray(self.entry_bytes(memory, key)[positions])
        dtype = self.entries[key].dtype
        try:
            return values_from_bytes(raw.tobytes(), dtype), dtype
        except ValueError:
            return np.full(positions.size, np.nan), dtype  # cannot compare: counts as a mismatch


class ShardedWeights:
    """A model saved in shards: ``NAME.safetensors.index.json`` and the files it names.

    The same reading interface as :class:`SafetensorsFile` (``shapes``,
    ``entries``, ``read_values``), each tensor read from its own shard.

    >>> weights = ShardedWeights("flux/transformer/diffusion_pytorch_model.safetensors.index.json")
    >>> weights.shard_of["transformer_blocks.0.attn.add_k_proj.weight"]
    'diffusion_pytorch_model-00001-of-00003.safetensors'
    """

    def __init__(self, index: str | os.PathLike[str]):
        self.path = Path(index)
        try:
            weight_map = json.loads(self.path.read_text())["weight_map"]
            if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
                raise TypeError
        except (OSError, ValueError, KeyError, TypeError):
            raise WeightsError(
                f"{self.path}: not a shard index (JSON with a weight_map of key -> file)"
            ) from None
        names = sorted(set(weight_map.values()))
        bad = [name for name in names if Path(name).name != name]
        if bad:
            raise WeightsError(f"{self.path}: shard {bad[0]!r} is not a file name in the index's folder")
        self.shards = {name: SafetensorsFile(self.path.parent / name) for name in names}
        self.shard_of: dict[str, str] = {}
        self.entries: dict[str, TensorEntry] = {}
        for name, shard in self.shards.items():
            for key, entry in shard.entries.items():
                if weight_map.get(key) == name:
                    self.shard_of[key] = name
                    self.entries[key] = entry
        missing = sorted(set(weight_map) - set(self.entries))
        if missing:
            raise WeightsError(f"{self.path}: {missing[0]!r} is not in {weight_map[missing[0]]}")

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {key: entry.shape for key, entry in self.entries.items()}

    def read_values(self, key: str, positions: np.ndarray) -> tuple[np.ndarray, str]:
        """Values at flat ``positions`` as float64, and the dtype name (a :data:`conesrt.fit.ValueReader`)."""
        return self.shards[self.shard_of[key]].read_values(key, positions)
