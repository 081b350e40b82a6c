"""Container size and decode speed on the SD 1.x cross-attention K/V table (issues #2 and #13).

    taskset -c 0 python bench/format_size.py     # one CPU core, as the figures in docs/ were taken

Random masks (a uniformly random k-subset of all 19,169,280 entries, which is
what the floor log2 C(N, k) assumes) at the paper's four densities, then
structured masks of the kinds real training produces, then values on the
neurons (format 1.1, spec § 6.4): q4, fp16 and fp32 against the binary file
of the same mask, with issue 13's bounds (q4 at most 2 bits per entry + 1 KB
over binary, fp16 at most 16 bits per entry + 1 KB). Prints markdown tables.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import conesfmt  # noqa: E402
from bench.sd_tables import sd1_cross_attention_kv  # noqa: E402
from conesfmt.summary import floor_bytes  # noqa: E402

#: Paper, Table 2: storage of one to four subjects and their sparsity (SD 1.4).
PAPER = [(0.0132, 1.43e6), (0.0243, 3.41e6), (0.0454, 4.96e6), (0.0701, 7.75e6)]


def layer_table() -> dict[str, conesfmt.Layer]:
    return {key: conesfmt.Layer(shape, "F32") for key, shape in sd1_cross_attention_kv().items()}


def container_for(flat: np.ndarray, layers: dict[str, conesfmt.Layer], fingerprint) -> conesfmt.Container:
    """Split flat indices over the concatenated table into per-layer indices."""
    indices, start = {}, 0
    for key, layer in layers.items():
        stop = start + layer.numel
        lo, hi = np.searchsorted(flat, [start, stop])
        indices[key] = flat[lo:hi] - start
        start = stop
    concept = conesfmt.Concept(
        indices,
        trigger="sks",
        class_word="cat",
        metadata={"method": "random (bench/format_size.py)"},
    )
    metadata = {"created_by": "cones 0.1.0", "base_model": "SD 1.x layer table, random fingerprint"}
    return conesfmt.Container(layers, {"subject": concept}, fingerprint, metadata)


def timed(function, repeat: int):
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - started)
    return result, best


def decode_all(data: bytes, layers) -> int:
    container = conesfmt.Container.from_bytes(data)
    return sum(container.indices("subject", key).size for key in layers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="timing repeats, best is kept")
    parser.add_argument("--example", type=Path, help="also save the 1.32 %% container to this path")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    layers = layer_table()
    numel = sum(layer.numel for layer in layers.values())
    fingerprint = conesfmt.Fingerprint(
        {k: (rng.standard_normal(8) * 0.03).astype(np.float32) for k in layers}
    )
    empty = conesfmt.Container(layers, {}, fingerprint, {"created_by": "cones 0.1.0"}).to_bytes()

    print(
        f"# Format benchmark — {date.today()} — {platform.processor() or platform.machine()}, "
        f"Python {platform.python_version()}, numpy {np.__version__}, "
        f"zstd {'.'.join(map(str, __import__('zstandard').ZSTD_VERSION))}\n"
    )
    print(
        f"SD 1.x cross-attention K/V: {len(layers)} tensors, {numel:,} entries. "
        f"Fixed overhead (preamble, layer table, 8-sample fingerprint, metadata, end): "
        f"{len(empty):,} bytes.\n"
    )
    print("## Random masks\n")
    header = "density | shut k | container bytes | floor bytes | ratio | paper | encode s | decode ms"
    print(f"| {header} | indices/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for density, paper_bytes in PAPER:
        k = round(density * numel)
        flat = np.sort(rng.choice(numel, size=k, replace=False))
        container = container_for(flat, layers, fingerprint)
        data, encode_s = timed(container.to_bytes, max(1, args.repeat // 2))
        decoded, decode_s = timed(lambda data=data: decode_all(data, layers), args.repeat)
        assert decoded == k
        if args.example and density == PAPER[0][0]:
            conesfmt.save(container, args.example)
        floor = floor_bytes(numel, k)
        ratio = len(data) / floor
        print(
            f"| {100 * density:.2f} % | {k:,} | {len(data):,} | {floor:,.0f} | {ratio:.3f} | "
            f"{paper_bytes / 1e6:.2f} MB ({paper_bytes / len(data):.1f}x ours) | {encode_s:.2f} | "
            f"{1e3 * decode_s:.1f} | {k / decode_s / 1e6:.0f} M |"
        )

    values_table(rng, layers, fingerprint, numel, args.repeat)

    print("\n## Structured masks (where real training shuts whole rows or columns)\n")
    print("| mask | shut k | container bytes | random-subset floor | ratio to floor |")
    print("|---|---|---|---|---|")
    structured = {
        "whole rows (5 % of rows of every tensor)": lambda shape: _rows(rng, shape, 0.05),
        "whole columns (5 % of columns)": lambda shape: _columns(rng, shape, 0.05),
        "a few dense rows (2 % of rows, 60 % of each)": lambda shape: _dense_rows(rng, shape, 0.02, 0.6),
        "random 1.32 % inside 10 % of rows": lambda shape: _dense_rows(rng, shape, 0.10, 0.132),
    }
    for label, make in structured.items():
        indices = {key: make(layer.shape) for key, layer in layers.items()}
        container = conesfmt.Container(layers, {"subject": indices}, fingerprint)
        data = container.to_bytes()
        k = container.concepts["subject"].total
        floor = floor_bytes(numel, k)
        print(f"| {label} | {k:,} | {len(data):,} | {floor:,.0f} | {len(data) / floor:.3f} |")


#: Issue 13's storage bounds: extra bits per entry over the binary file, plus this many bytes.
VALUE_BOUNDS = {"q4": 2, "fp16": 16, "fp32": 32}
BOUND_SLACK_BYTES = 1024


def values_table(rng, layers, fingerprint, numel: int, repeat: int) -> None:
    """The same 1.32 % mask as binary and with values of each kind: bytes over binary, decode time."""
    k = round(PAPER[0][0] * numel)
    flat = np.sort(rng.choice(numel, size=k, replace=False))
    binary = container_for(flat, layers, fingerprint)
    binary_bytes = len(binary.to_bytes())
    concept = binary.concepts["subject"]
    learned = {key: rng.normal(0.6, 0.2, count) for key, count in concept.counts.items()}
    worst_fp16 = {}
    for key, count in concept.counts.items():  # uniformly random finite binary16 bit patterns
        patterns = rng.integers(0, 1 << 16, count, dtype=np.uint64).astype(np.uint16)
        patterns[(patterns & 0x7C00) == 0x7C00] &= 0xBFFF  # clear an exponent bit: finite
        worst_fp16[key] = patterns.view(np.float16)
    cases = {
        "q4, uniformly random codes (the worst case)": (
            "q4",
            {
                key: conesfmt.Q4(rng.normal(0.6, 0.2, 4), rng.integers(0, 4, n))
                for key, n in concept.counts.items()
            },
        ),
        "q4, N(0.6, 0.2) values quantised (quantize_q4)": ("q4", learned),
        "fp16, uniformly random finite bit patterns (the worst case)": ("fp16", worst_fp16),
        "fp16, N(0.6, 0.2) values": ("fp16", learned),
        "fp32, N(0.6, 0.2) values": ("fp32", learned),
    }
    print(f"\n## Values on the neurons (format 1.1), random mask at 1.32 % ({k:,} entries)\n")
    print(f"Binary container of this mask: {binary_bytes:,} bytes (format 1.0).\n")
    print(
        "| values | container bytes | over binary | bits per entry over binary | bound | within | decode ms |"
    )
    print("|---|---|---|---|---|---|---|")
    for label, (kind, values) in cases.items():
        valued = conesfmt.Container(
            layers,
            {
                "subject": conesfmt.Concept(
                    concept.indices, dict(concept.metadata), values=values, value_kind=kind
                )
            },
            fingerprint,
            dict(binary.metadata),
        )
        data = valued.to_bytes()
        over = len(data) - binary_bytes
        bound = VALUE_BOUNDS[kind] * k / 8 + BOUND_SLACK_BYTES
        decoded, decode_s = timed(lambda data=data: decode_values(data, layers), repeat)
        assert decoded == k
        print(
            f"| {label} | {len(data):,} | {over:,} | {8 * over / k:.3f} | "
            f"{VALUE_BOUNDS[kind]} bits + 1 KB = {bound:,.0f} | {'yes' if over <= bound else 'NO'} | "
            f"{1e3 * decode_s:.1f} |"
        )


def decode_values(data: bytes, layers) -> int:
    """Validate everything and expand every value to float32: the values' full decoding cost."""
    container = conesfmt.Container.from_bytes(data)
    return sum(container.values("subject", key).size for key in layers)


def _rows(rng, shape, fraction):
    rows = np.flatnonzero(rng.random(shape[0]) < fraction)
    return (rows[:, None] * shape[1] + np.arange(shape[1])).reshape(-1)


def _columns(rng, shape, fraction):
    columns = np.flatnonzero(rng.random(shape[1]) < fraction)
    return np.sort((np.arange(shape[0])[:, None] * shape[1] + columns).reshape(-1))


def _dense_rows(rng, shape, row_fraction, density):
    rows = np.flatnonzero(rng.random(shape[0]) < row_fraction)
    mask = rng.random((rows.size, shape[1])) < density
    r, c = np.nonzero(mask)
    return rows[r] * shape[1] + c


if __name__ == "__main__":
    main()
