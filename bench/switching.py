"""Switching one SDXL subject in and out, and writing containers, at app scale (issue 14, point 6).

    OMP_NUM_THREADS=1 python bench/switching.py      # about 3 minutes on 2 shared cores; prints markdown

An app keeps thousands of subjects and switches one in per request. The model
is diffusers' ``UNet2DConditionModel`` with SDXL 1.0 base's config
(:data:`bench.sd_tables.SDXL_UNET`), built on the meta device; its 140
cross-attention K/V weights (340,787,200 entries) are then given real fp16
values ~N(0, 0.02). The other 2.2 B weights stay on the meta device: conesrt
never reads them, and the state dict ``conesrt.apply`` walks has all 1,680
entries of the real model.

Switching: one subject at 1 % (a random subset, about 3.4 M indices) as the
bytes of its container. ``conesrt.apply(unet, data)`` (read and validate the
container, decode its indices, check the fingerprint, shut) then
``handle.remove()`` (restore), against a bare torch scatter of the same
pre-decoded indices (``index_select`` the values, ``index_fill_`` zeros,
``index_copy_`` them back). Median of ``--repeat`` calls of each, taken in
turns so that both see the same load.

Writer: random subsets at several densities over the same 140 layers; the
canonical encoding (``Container.to_bytes``, zstd level chosen per plane,
spec § 10) in indices per second, and its size against the floor
``log2 C(N, k)`` bits (:func:`conesfmt.summary.floor_bytes`).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import conesfmt  # noqa: E402
import conesrt  # noqa: E402
from bench.sd_tables import SDXL_UNET, sdxl_cross_attention_kv  # noqa: E402
from conesfmt.summary import floor_bytes  # noqa: E402
from conesrt.fit import check_fits  # noqa: E402
from conesrt.torch_model import torch_value_reader  # noqa: E402

SWITCH_DENSITY = 0.01
#: The issue's densities, and 0.6 %, where the writer is furthest above the floor.
WRITER_DENSITIES = (0.001, 0.005, 0.006, 0.01, 0.02, 0.05, 0.2)
#: Issue 14, point 6.
SWITCH_BOUND_S, SWITCH_BOUND_RATIO = 0.100, 1.5
WRITER_BOUND_RATE, WRITER_BOUND_FLOOR = 10e6, 1.05


def sdxl_kv_unet(seed: int, dtype: torch.dtype = torch.float16) -> tuple[torch.nn.Module, list[str]]:
    """SDXL's UNet on the meta device with real ``dtype`` values in its 140 attn2 to_k / to_v weights."""
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    with init_empty_weights():
        unet = UNet2DConditionModel(**SDXL_UNET)
    generator = torch.Generator().manual_seed(seed)
    for name, module in unet.named_modules():
        if name.endswith((".attn2.to_k", ".attn2.to_v")):
            weight = torch.empty(module.weight.shape, dtype=torch.float32)
            weight.normal_(0, 0.02, generator=generator)
            module.weight = torch.nn.Parameter(weight.to(dtype), requires_grad=False)
    keys = conesrt.searched_layers(unet)
    shapes = {key: tuple(tensor.shape) for key, tensor in unet.state_dict().items() if key in keys}
    assert shapes == sdxl_cross_attention_kv(), "bench/sd_tables.py disagrees with diffusers"
    return unet.eval().requires_grad_(False), keys


def random_subset(layers: dict[str, conesfmt.Layer], density: float, seed: int) -> dict[str, np.ndarray]:
    """A uniformly random subset of the concatenated layers (each entry in with ``density``), per layer."""
    rng = np.random.default_rng(seed)
    return {
        key: np.flatnonzero(rng.random(layer.numel, dtype=np.float32) < density)
        for key, layer in layers.items()
    }


def median_seconds(times: list[float]) -> float:
    return statistics.median(times)


def switching(unet, keys: list[str], repeat: int) -> dict:
    """Time one subject's container switched in and out, and the bare scatter, in turns."""
    state = unet.state_dict(keep_vars=True)
    layers = conesrt.layer_table(unet, keys)
    concept = conesfmt.Concept(random_subset(layers, SWITCH_DENSITY, seed=1), trigger="sks", class_word="dog")
    container = conesfmt.Container(
        layers, {"dog": concept}, conesrt.fingerprint(unet, keys), {"base_model": "SDXL, random K/V"}
    )
    data = container.to_bytes()
    count = container.concepts["dog"].total
    original = {key: state[key].detach().clone() for key in keys}
    decoded = {key: torch.from_numpy(np.array(container.indices("dog", key))) for key in keys}

    def bare_in() -> dict[str, torch.Tensor]:
        saved = {}
        for key, index in decoded.items():
            flat = state[key].detach().view(-1)
            saved[key] = flat.index_select(0, index)
            flat.index_fill_(0, index, 0)
        return saved

    def bare_out(saved: dict[str, torch.Tensor]) -> None:
        for key, index in decoded.items():
            state[key].detach().view(-1).index_put_((index,), saved[key])

    # The same three steps through numpy on the same memory: the fastest bare scatter found here.
    arrays = {key: state[key].detach().view(-1).view(torch.int16).numpy() for key in keys}
    numpy_indices = {key: index.numpy() for key, index in decoded.items()}

    def numpy_in() -> dict[str, np.ndarray]:
        saved = {}
        for key, index in numpy_indices.items():
            saved[key] = arrays[key].take(index)
            arrays[key][index] = 0
        return saved

    def numpy_out(saved: dict[str, np.ndarray]) -> None:
        for key, index in numpy_indices.items():
            arrays[key][index] = saved[key]

    def cones_in():
        return conesrt.apply(unet, data)

    def cones_out(handle) -> None:
        handle.remove()

    variants = {"cones": (cones_in, cones_out), "bare": (bare_in, bare_out), "numpy": (numpy_in, numpy_out)}
    wall: dict[str, list[float]] = {f"{name} {step}": [] for name in variants for step in ("in", "out")}
    cpu: dict[str, list[float]] = {name: [] for name in wall}
    parts: dict[str, list[float]] = {name: [] for name in ("read", "fingerprint")}
    read_values = torch_value_reader(state)
    model_shapes = {key: tuple(tensor.shape) for key, tensor in state.items()}
    for _ in range(repeat + 1):  # the first round warms up and is dropped
        for name, (switch_in, switch_out) in variants.items():
            started, started_cpu = time.perf_counter(), time.process_time()
            result = switch_in()
            middle, middle_cpu = time.perf_counter(), time.process_time()
            switch_out(result)
            ended, ended_cpu = time.perf_counter(), time.process_time()
            wall[f"{name} in"].append(middle - started)
            wall[f"{name} out"].append(ended - middle)
            cpu[f"{name} in"].append(middle_cpu - started_cpu)
            cpu[f"{name} out"].append(ended_cpu - middle_cpu)
        # Where switching in goes (each step again, outside the timed switch).
        started = time.perf_counter()
        loaded = conesfmt.Container.from_bytes(data)
        middle = time.perf_counter()
        check_fits("dog", loaded, model_shapes, read_values, True)
        parts["read"].append(middle - started)
        parts["fingerprint"].append(time.perf_counter() - middle)
    exact = all(torch.equal(state[k].view(torch.int16), original[k].view(torch.int16)) for k in keys)
    with conesrt.apply(unet, data) as handle:
        kept = handle.saved_bytes
        shut = all(bool((state[k].view(-1)[decoded[k]] == 0).all()) for k in keys)
    medians = {name: median_seconds(values[1:]) for name, values in (wall | parts).items()}
    cpu_medians = {name: median_seconds(values[1:]) for name, values in cpu.items()}
    return dict(
        count=count, bytes=len(data), medians=medians, cpu=cpu_medians, exact=exact, shut=shut, kept=kept
    )


def writer(keys_layers: dict[str, conesfmt.Layer], fingerprint, repeat: int) -> list[dict]:
    """Encode a random subset at each density; the best of ``repeat`` encodes, and the size."""
    numel = sum(layer.numel for layer in keys_layers.values())
    rows = []
    for number, density in enumerate(WRITER_DENSITIES):
        indices = random_subset(keys_layers, density, seed=10 + number)
        started = time.perf_counter()
        container = conesfmt.Container(keys_layers, {"subject": indices}, fingerprint)
        build = time.perf_counter() - started
        del indices
        k = container.concepts["subject"].total
        encodes, encodes_cpu = [], []
        for _ in range(repeat):
            started, started_cpu = time.perf_counter(), time.process_time()
            data = container.to_bytes()
            encodes.append(time.perf_counter() - started)
            encodes_cpu.append(time.process_time() - started_cpu)
        started = time.perf_counter()
        check = conesfmt.Container.from_bytes(data, max_indices=1 << 30)
        total = sum(check.indices("subject", key).size for key in keys_layers)
        decode = time.perf_counter() - started
        assert total == k
        floor = floor_bytes(numel, k)
        rows.append(
            dict(
                density=density,
                k=k,
                bytes=len(data),
                floor=floor,
                build=build,
                encode=min(encodes),
                encode_cpu=min(encodes_cpu),
                decode=decode,
            )
        )
        del container, check, data
    return rows


def print_switching(switch: dict, numel: int, repeat: int) -> None:
    m, c = switch["medians"], switch["cpu"]

    def both(name: str) -> tuple[float, float]:
        return m[f"{name} in"] + m[f"{name} out"], c[f"{name} in"] + c[f"{name} out"]

    (cones, cones_cpu), (bare, bare_cpu), (fastest, fastest_cpu) = both("cones"), both("bare"), both("numpy")
    print(
        f"SDXL UNet (diffusers UNet2DConditionModel, SDXL 1.0 base config), 140 cross-attention K/V "
        f"tensors, {numel:,} entries, fp16 (random values). One subject at {100 * SWITCH_DENSITY:g} %: "
        f"{switch['count']:,} indices, a {switch['bytes']:,}-byte container. Median of {repeat} "
        "(wall clock; the process's CPU time beside it).\n"
    )
    print("| what | wall | CPU | wall vs bare torch | wall vs bare numpy |")
    print("|---|---|---|---|---|")
    rows = [
        ("cones: switch in and out (`apply(unet, data)` + `remove()`)", cones, cones_cpu),
        ("cones: switch in: read, validate, decode, fingerprint check, shut", m["cones in"], c["cones in"]),
        ("cones: switch out: `remove()`", m["cones out"], c["cones out"]),
        ("bare torch scatter: index_select + index_fill_, index_put_ back", bare, bare_cpu),
        ("bare torch scatter: save + zero", m["bare in"], c["bare in"]),
        ("bare numpy scatter on the same memory: take + zero, assign back", fastest, fastest_cpu),
        ("in switching in: `Container.from_bytes` (validates, decodes the indices)", m["read"], None),
        ("in switching in: fingerprint check", m["fingerprint"], None),
    ]
    for label, seconds, cpu_seconds in rows:
        cpu_text = "" if cpu_seconds is None else f"{1e3 * cpu_seconds:,.1f} ms"
        ratios = f"{seconds / bare:.2f}x | {seconds / fastest:.2f}x"
        print(f"| {label} | {1e3 * seconds:,.1f} ms | {cpu_text} | {ratios} |")
    print()
    print("| check | value | target |")
    print("|---|---|---|")
    print(f"| cones switch in + out, wall | {1e3 * cones:.1f} ms | at most {1e3 * SWITCH_BOUND_S:.0f} ms |")
    print(
        f"| cones switch / bare torch scatter, wall | {cones / bare:.2f}x | at most {SWITCH_BOUND_RATIO}x |"
    )
    print(f"| cones switch / bare torch scatter, CPU | {cones_cpu / bare_cpu:.2f}x | |")
    print(f"| cones switch / bare numpy scatter, wall | {cones / fastest:.2f}x | |")
    print(f"| bare torch scatter alone, wall | {1e3 * bare:.1f} ms | |")
    exact = f"{switch['shut']}, {switch['exact']}"
    print(f"| entries shut while applied; bit-identical after remove | {exact} | True, True |")
    print(f"| memory kept by the handle | {switch['kept']:,} bytes | |")
    print()


def print_writer(rows: list[dict], numel: int, repeat: int) -> None:
    print(
        f"Writer: random subsets of the {numel:,} entries. encode = `Container.to_bytes()` (best of "
        f"{repeat}); build = `Container(...)` from the index arrays (validation); decode = "
        "`Container.from_bytes` + `indices()` of every layer.\n"
    )
    print(
        "| density | k | container bytes | floor bytes | bytes / floor | encode s "
        "| encode indices/s | encode indices/s, CPU | build + encode indices/s | decode indices/s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        k = row["k"]
        rates = [
            k / row["encode"],
            k / row["encode_cpu"],
            k / (row["build"] + row["encode"]),
            k / row["decode"],
        ]
        print(
            f"| {100 * row['density']:g} % | {k:,} | {row['bytes']:,} | {row['floor']:,.0f} | "
            f"{row['bytes'] / row['floor']:.3f} | {row['encode']:.2f} | "
            + " | ".join(f"{rate / 1e6:.1f} M" for rate in rates)
            + " |"
        )
    print()
    worst_rate = min(row["k"] / row["encode"] for row in rows)
    worst_cpu = min(row["k"] / row["encode_cpu"] for row in rows)
    worst_floor = max(row["bytes"] / row["floor"] for row in rows)
    print("| check | value | target |")
    print("|---|---|---|")
    bound = f"at least {WRITER_BOUND_RATE / 1e6:.0f} M"
    print(f"| slowest encode, wall | {worst_rate / 1e6:.1f} M indices/s | {bound} |")
    print(f"| slowest encode, CPU | {worst_cpu / 1e6:.1f} M indices/s | {bound} |")
    print(f"| largest bytes / floor | {worst_floor:.3f} | at most {WRITER_BOUND_FLOOR} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15, help="switching repeats (median; +1 warm-up)")
    parser.add_argument("--writer-repeat", type=int, default=3, help="encodes per density (best)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--skip-writer", action="store_true", help="switching only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    unet, keys = sdxl_kv_unet(seed=0)
    layers = conesrt.layer_table(unet, keys)
    numel = sum(layer.numel for layer in layers.values())
    print(
        f"# Switching benchmark — {date.today()} — {platform.machine()}, {args.threads} torch thread(s), "
        f"torch {torch.__version__}, numpy {np.__version__}, Python {platform.python_version()}\n"
    )
    print_switching(switching(unet, keys, args.repeat), numel, args.repeat)
    if not args.skip_writer:
        rows = writer(layers, conesrt.fingerprint(unet, keys), args.writer_repeat)
        print_writer(rows, numel, args.writer_repeat)


if __name__ == "__main__":
    main()
