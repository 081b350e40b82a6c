"""The summary at the end of a run: what was shut, where, at what cost.

>>> print(format_report(report))
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from conesfmt.summary import floor_bytes

#: Below this 1 - xi on every chosen entry, xi did not move beyond rounding (rho far too small).
NOT_MOVED = 1e-6


def peak_memory_bytes(device: torch.device) -> int:
    """Peak memory of this run: CUDA's allocator peak, else the process's peak resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def make_report(
    neurons: dict[str, np.ndarray],
    numels: dict[str, int],
    file_bytes: int,
    seconds_per_step: float,
    total_seconds: float,
    peak_bytes: int,
    wanted: int | None = None,
    xi_travel: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Counts per layer and in total, sparsity, size against the floor, time and memory."""
    total_numel = sum(numels.values())
    shut = sum(int(v.size) for v in neurons.values())
    floor = floor_bytes(total_numel, shut)
    return {
        "shut": shut,
        "searched": total_numel,
        "sparsity": shut / total_numel,
        "asked_for": wanted,
        "per_layer": {
            key: {"shut": int(neurons[key].size) if key in neurons else 0, "numel": numels[key]}
            for key in numels
        },
        "file_bytes": file_bytes,
        "floor_bytes": floor,
        "ratio_to_floor": file_bytes / floor if floor else None,
        "seconds_per_step": seconds_per_step,
        "total_seconds": total_seconds,
        "peak_memory_bytes": peak_bytes,
        "xi_travel": xi_travel or {},
    }


def format_report(report: dict[str, Any], title: str) -> str:
    width = max((len(key) for key in report["per_layer"]), default=10)
    lines = [title, f"  {'layer':<{width}}  {'shut':>9}  {'of':>10}  {'sparsity':>8}"]
    for key, row in report["per_layer"].items():
        share = 100 * row["shut"] / row["numel"]
        lines.append(f"  {key:<{width}}  {row['shut']:>9,}  {row['numel']:>10,}  {share:7.3f} %")
    total, searched, share = report["shut"], report["searched"], 100 * report["sparsity"]
    lines.append(f"  {'total':<{width}}  {total:>9,}  {searched:>10,}  {share:7.3f} %")
    if report["asked_for"] is not None and report["shut"] < report["asked_for"]:
        lines.append(
            f"  note: asked for {report['asked_for']:,} entries but only {report['shut']:,} have xi < 1; "
            "train longer or with a larger --lr"
        )
    travel = report["xi_travel"]
    if travel:
        lines.append(
            f"  step rho {report.get('rho', float('nan')):.3g}; xi of the chosen entries: "
            f"1 - xi = {travel['median']:.2g} (median), {travel['max']:.2g} (max)"
        )
        if travel["max"] < NOT_MOVED:
            lines.append(
                "  note: xi did not move measurably, so the ranking is rounding noise; "
                "leave --lr unset (calibrated) or raise it"
            )
    selection = report.get("selection") or {}
    if selection.get("candidates"):
        tried = ", ".join(f"{count:,}: {loss:.4f}" for count, loss in selection["candidates"])
        lines.append(f"  count chosen by the held-out loss (base model {selection['base']:.4f}; {tried})")
        if min(loss for _, loss in selection["candidates"]) >= selection["base"]:
            lines.append(
                "  note: no candidate set lowers the held-out loss below the base model's; the subject may "
                "need more steps, other images or another --preserve-weight"
            )
    if values := report.get("values"):
        held = values["held_out"]
        verdict = "kept" if values["kept"] else "not kept (no better than shut: stored as xi = 0)"
        lines.append(
            f"  values {values['kind']}: {values['steps']} steps, held-out loss {held['values']:.4f} "
            f"against {held['shut']:.4f} shut, {verdict}; xi median {values['xi'].get('median', 0):.3g}"
        )
    ratio = report["ratio_to_floor"]
    lines.append(
        f"  file {report['file_bytes']:,} bytes; floor log2 C(N,k)/8 = {report['floor_bytes']:,.0f} bytes"
        + (f" ({ratio:.2f}x)" if ratio else "")
    )
    lines.append(
        f"  {report['seconds_per_step']:.3f} s/step, {report['total_seconds']:.1f} s in all, "
        f"peak memory {report['peak_memory_bytes'] / 2**20:,.0f} MiB"
    )
    return "\n".join(lines)
