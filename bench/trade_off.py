"""Subject fidelity against prior preservation: Cones at several sparsities, the fine-tune at several lrs.

    python bench/trade_off.py --seeds 0,1 --json docs/trade-off.json     # about 55 min on one core
    python bench/trade_off.py --from-json docs/trade-off.json --plot docs/trade-off.png
    python bench/trade_off.py --subjects pxr --seeds 0 --json a.json   # one per seed; --from-json merges

The paper-tables bench (bench/paper_tables.py) scores one setting of each
method. Both Cones and the fine-tune buy fidelity with prior damage, so one
point each says little about which method is better; this bench traces each
method's curve. For every subject and seed, one xi-descent (cones train's
defaults: 300 steps, rho calibrated to ``--travel``, lambda 0.3) gives the masks of every sparsity
(the k entries whose xi fell furthest, for each k), each scored like the
paper-tables bench, beside a random mask of the same size; the
Custom-Diffusion-style fine-tune of the same K/V weights is trained once per
AdamW step size. Prints a table of means and draws fidelity against the two
prior measures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import paper_tables  # noqa: E402
import torch  # noqa: E402

import conesrt  # noqa: E402
from trainer import world  # noqa: E402
from trainer.config import TrainConfig, select_layers, unet_keys  # noqa: E402
from trainer.evaluate import random_like  # noqa: E402
from trainer.runs import build_container, prepare_trained_subject, search_settings, start  # noqa: E402
from trainer.search import search  # noqa: E402
from trainer.xi import neurons_by_sparsity  # noqa: E402

MEASURES = ("fidelity", "prior", "prior_attributes")


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",")]


def run(args) -> list[dict]:
    pipe = world.load_pipeline(args.model)
    sample = paper_tables.Sampler(pipe, args.images)
    base_weights = {k: v.detach().clone() for k, v in pipe.unet.state_dict().items()}
    priors = {prompt: sample(prompt) for prompt in paper_tables.PRIOR_PROMPTS}
    folder = Path(tempfile.mkdtemp(prefix="cones-trade-off-"))
    results = []

    def record(token: str, seed: int, method: str, setting: float, measured: dict, storage: int) -> None:
        results.append(
            {"subject": token, "seed": seed, "method": method, "setting": setting, "storage": storage}
            | {name: measured[name] for name in MEASURES}
        )
        scores = "  ".join(f"{name} {measured[name]:.3f}" for name in MEASURES)
        print(f"  {token} seed {seed}  {method:<14} {setting:<8g} {scores}", flush=True)

    for token in args.subjects.split(","):
        subject = world.subject(token)
        record(token, -1, "base model", 0, paper_tables.score(sample, [subject], priors), 0)
        for seed in (int(s) for s in args.seeds.split(",")):
            config = paper_tables.subject_config(
                args.model,
                args,
                seed,
                subject,
                folder,
                sparsity=max(args.sparsities),
                out=folder / f"{token}-{seed}.cones",
            )
            config.validate()
            keys = select_layers(unet_keys(config.model), config.layers)
            accelerator, base = start(config)
            prepared = prepare_trained_subject(base, config, accelerator)
            found = search(
                base.unet, keys, [prepared], base.noise_scheduler, search_settings(config), accelerator
            )
            deltas = found.deltas
            for sparsity in args.sparsities:
                neurons, _ = neurons_by_sparsity(deltas, sparsity)
                mask = build_container(base, keys, token, neurons, {"trigger": token})
                with conesrt.apply(pipe, mask):
                    measured = paper_tables.score(sample, [subject], priors)
                record(token, seed, "Cones", sparsity, measured, len(mask.to_bytes()))
                with conesrt.apply(pipe, random_like(mask, seed)):
                    measured = paper_tables.score(sample, [subject], priors)
                record(token, seed, "random mask", sparsity, measured, 0)
            for cd_lr in args.cd_lrs:
                settings = argparse.Namespace(**vars(args) | {"cd_lr": cd_lr, "scale_steps": False})
                data = {token: subject.image_paths[0].parent}
                tuned = paper_tables.custom_diffusion(args.model, [subject], data, settings, seed, folder)
                with torch.no_grad():
                    for key, value in tuned.items():
                        pipe.unet.state_dict(keep_vars=True)[key].copy_(value)
                measured = paper_tables.score(sample, [subject], priors)
                record(
                    token, seed, "K/V fine-tune", cd_lr, measured, sum(v.numel() * 2 for v in tuned.values())
                )
                with torch.no_grad():
                    for key, value in pipe.unet.state_dict(keep_vars=True).items():
                        value.copy_(base_weights[key])
    return results


def report(results: list[dict], plot: Path | None, header: str) -> None:
    """A table of means over subjects and seeds per (method, setting), and the plot."""
    groups: dict[tuple[str, float], list[dict]] = {}
    for row in results:
        groups.setdefault((row["method"], row["setting"]), []).append(row)
    print(f"\n{header}\n")
    print(
        "| method | setting | runs | subject fidelity | prior kept (same seed) | prior attributes | storage |"
    )
    print("|---|---|---|---|---|---|---|")
    for (method, setting), rows in groups.items():
        cells = []
        for name in MEASURES:
            values = np.array([r[name] for r in rows])
            cells.append(f"{values.mean():.3f}" + (f" ± {values.std(ddof=1):.3f}" if len(rows) > 1 else ""))
        label = {"Cones": f"{setting:.1%}", "random mask": f"{setting:.1%}", "base model": ""}.get(
            method, f"lr {setting:g}"
        )
        storage = max(r["storage"] for r in rows)
        print(
            f"| {method} | {label} | {len(rows)} | "
            + " | ".join(cells)
            + f" | {f'{storage / 1024:.1f} KB' if storage else ''} |"
        )
    if plot is None:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    styles = {
        "Cones": ("tab:red", "o"),
        "K/V fine-tune": ("tab:blue", "s"),
        "random mask": ("tab:gray", "^"),
        "base model": ("black", "*"),
    }
    for axis, measure, title in zip(
        axes, ("prior", "prior_attributes"), ("prior kept (same seed)", "prior attributes"), strict=True
    ):
        for method, (colour, marker) in styles.items():
            points = [(s, rows) for (m, s), rows in groups.items() if m == method]
            if not points:
                continue
            xs = [np.mean([r["fidelity"] for r in rows]) for _, rows in points]
            ys = [np.mean([r[measure] for r in rows]) for _, rows in points]
            axis.plot(xs, ys, color=colour, marker=marker, label=method, markersize=9 if marker == "*" else 6)
            for (setting, _), x, y in zip(points, xs, ys, strict=True):
                if method == "Cones":
                    axis.annotate(
                        f"{setting:.1%}", (x, y), textcoords="offset points", xytext=(6, 2), fontsize=8
                    )
                elif method == "K/V fine-tune":
                    text = f"lr {setting:.0e}"
                    axis.annotate(text, (x, y), textcoords="offset points", xytext=(-26, 8), fontsize=8)
        axis.set_xlabel("subject fidelity (mean over subjects and seeds)")
        axis.set_ylabel(title)
        axis.set_ylim(0, 1.05)
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower left")
    figure.suptitle("Fidelity against prior preservation on the small world (up and right is better)")
    figure.tight_layout()
    figure.savefig(plot, dpi=110)
    print(f"\nplot: {plot}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", default="sks,vnt,pxr", help="bundled subject tokens")
    parser.add_argument("--seeds", default="0,1", help="training seeds, comma-separated")
    parser.add_argument("--sparsities", type=floats, default=floats("0.002,0.005,0.01,0.02"))
    parser.add_argument("--cd-lrs", type=floats, default=floats("3e-5,1e-4,3e-4"), help="fine-tune steps")
    parser.add_argument("--steps", type=int, default=300)
    defaults = TrainConfig.__dataclass_fields__
    parser.add_argument("--lr", type=float, default=defaults["lr"].default, help="rho; default: calibrated")
    parser.add_argument("--travel", type=float, default=defaults["travel"].default, help="xi travel")
    parser.add_argument(
        "--prior-weight", type=float, default=defaults["prior_weight"].default, help="lambda, both methods"
    )
    parser.add_argument("--images", type=int, default=8, help="images per prompt")
    parser.add_argument("--class-images", type=int, default=32)
    parser.add_argument("--model", type=Path, default=world.MODEL_DIR)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, help="write the raw results here")
    parser.add_argument("--plot", type=Path, help="draw the plot here")
    parser.add_argument("--from-json", type=Path, nargs="+", help="report saved --json runs (merged)")
    args = parser.parse_args()
    if args.from_json:
        saved = [json.loads(path.read_text()) for path in args.from_json]
        results = [row for run in saved for row in run["results"]]
        base = {(r["subject"], r["method"]) for r in results if r["method"] == "base model"}
        results = [r for r in results if r["method"] != "base model"] + [
            next(r for r in results if (r["subject"], r["method"]) == key) for key in sorted(base)
        ]
        headers = "; ".join(run["header"] for run in saved)
        report(results, args.plot, headers)
        return
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    results = run(args)
    header = (
        f"{args.subjects} × seeds {args.seeds}, {args.images} images per prompt, "
        f"{(time.perf_counter() - started) / 60:.0f} min on {date.today()}, {platform.machine()}, "
        f"{args.threads} thread(s)"
    )
    if args.json:
        args.json.write_text(json.dumps({"header": header, "results": results}, indent=1))
    report(results, args.plot, header)


if __name__ == "__main__":
    main()
