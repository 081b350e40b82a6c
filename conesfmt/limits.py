"""Limits a reader enforces before it trusts a count or allocates (spec § 8).

They protect readers from hostile files; every one is far above what a real
container needs (SDXL's 140 cross-attention K/V tensors with 7 % of their
340 M entries shut fit easily).
"""

from __future__ import annotations

#: Layers in the layer table (SD 1.x: 32, SDXL: 140 for attn2 K/V).
MAX_LAYERS = 65_536
#: Bytes of a layer key (a state-dict name), UTF-8.
MAX_KEY_BYTES = 1_024
#: Bytes of a dtype name such as ``F32`` or ``BF16``.
MAX_DTYPE_BYTES = 16
#: Dimensions of a layer's shape.
MAX_NDIM = 8
#: Entries of one layer (product of its dimensions): 2**40.
MAX_LAYER_NUMEL = 1 << 40
#: Concepts in one container.
MAX_CONCEPTS = 65_536
#: Bytes of a concept name, UTF-8.
MAX_NAME_BYTES = 256
#: Entries of one metadata map.
MAX_MAP_ENTRIES = 1_024
#: Bytes of a metadata key, UTF-8.
MAX_MAP_KEY_BYTES = 256
#: Bytes of one encoded metadata map (count, keys and values together).
MAX_MAP_BYTES = 1 << 20
#: Fingerprint samples per layer.
MAX_SAMPLES_PER_LAYER = 256
#: Bytes of a section's payload (a u32 length could say up to 4 GiB).
MAX_SECTION_BYTES = 1 << 31
#: Bytes of the LAYR payload: the "header" a reader parses before anything else.
MAX_LAYER_TABLE_BYTES = 16 << 20
#: zstd window a reader needs per index stream (zstd level 19 uses at most this).
MAX_ZSTD_WINDOW = 8 << 20
