"""Limits a reader enforces before it trusts a count or allocates (spec § 8).

The format limits (spec § 8.1) say what a valid file is; every one is far
above what a real container needs (SDXL's 140 cross-attention K/V tensors with
7 % of their 340 M entries shut fit easily). The reader limits (spec § 8.2)
bound the work a reader does for one file: a file above them is refused, not
invalid, and a caller can raise them.
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

# Reader limits (spec § 8.2): configurable, defaults here.

#: Indices a reader decodes from one file, all concepts together, by default
#: (``max_indices=``). Decoding time grows with this count, and a small file can
#: declare many (RLE blocks: 164 KB for 2**30). 2**27 = 134,217,728 is 3.9 x
#: SDXL's cross-attention K/V at 10 % (34,078,720) and 3.7 x Flux.1's text K/V
#: at 10 % (35,872,973), 8 x below ``spec/vectors/invalid/index-bomb.cones``;
#: decoding that many takes about 2.5 s on one core of the development machine.
DEFAULT_MAX_INDICES = 1 << 27
