"""The paper's Fig. 3 in miniature: binary, q4, fp16 and fp32 values on the embedded world (issue 13).

    OMP_NUM_THREADS=1 python bench/values.py --subjects pxr,vnt --seeds 0,1,2   # about an hour on 2 cores

For each subject, ``cones train`` runs once at its defaults (the search does
not depend on ``--values``); then, on the neurons it found, the values are
trained for each kind exactly as ``cones train --values KIND`` does after the
same search (trainer.values.train_values, the same settings and seed). Each
container is scored with trainer.world.protocol's measures on the TEST split
(fidelity, context, prior kept, prior attributes), beside the base model, and
its bytes are counted (the file, and its index and value sections). Also the
training objective on the search's held-out draws, shut against valued.

Then an interpolation strip between two subjects (paper appendix C.6):
``conesrt.apply(pipe, [first, second], strength=[1 - t, t])`` for the
composite prompt, t from 0 to 1, binary and fp32 containers of the first
seed, one image per cell and the judge's mean subject scores over a few
seeds. Last, the training objective and its instance and prior parts on
fresh draws, for every row: what the values trade. Writes docs/values.json
and docs/values-strip.png by default (docs/values.md reads them).

Resumable: every finished row is written to the JSON at once, and a rerun
skips rows (and containers, kept in ``--work``) it already has.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from datetime import date
from pathlib import Path

os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import conesfmt  # noqa: E402
import conesrt  # noqa: E402
from conesfmt.summary import summarize  # noqa: E402
from trainer import train_concept, world  # noqa: E402
from trainer.config import SearchConfig, TrainConfig  # noqa: E402
from trainer.runs import prepare_subject, prepare_trained_subject, start, value_settings  # noqa: E402
from trainer.values import train_values  # noqa: E402
from trainer.world import protocol  # noqa: E402
from trainer.world.judge import subject_scores  # noqa: E402

KINDS = ("binary", "q4", "fp16", "fp32")
MEASURES = ("fidelity", "alignment", "prior", "prior_attributes")
STRIP_STEPS = (0.0, 0.25, 0.5, 0.75, 1.0)
STRIP_KINDS = ("binary", "fp32")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", default="pxr,vnt", help="comma-separated world subjects")
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument(
        "--seeds", default=str(protocol.TEST.training_seeds[0]), help="training seeds (the strip: the first)"
    )
    parser.add_argument("--strip-seeds", type=int, default=8, help="seeds scored per strip cell")
    parser.add_argument("--work", type=Path, default=Path("/work/exp/values-work"))
    parser.add_argument("--json", type=Path, default=Path("docs/values.json"))
    parser.add_argument("--strip", type=Path, default=Path("docs/values-strip.png"))
    parser.add_argument("--no-strip", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    state = json.loads(args.json.read_text()) if args.json.exists() else {}
    state.setdefault("rows", [])
    state.setdefault("seconds", 0.0)
    started, previous = time.perf_counter(), state["seconds"]  # wall time of earlier runs
    for row in state["rows"]:  # rows of the first runs, which had one seed, 0
        if row["method"] != "base model":
            row.setdefault("seed", protocol.TEST.training_seeds[0])
    done = {(r["subject"], r["method"], r.get("seed")) for r in state["rows"]}
    seeds = [int(seed) for seed in args.seeds.split(",")]
    command = " ".join(["python", *sys.argv])
    state["commands"] = list(dict.fromkeys([*state.get("commands", []), command]))
    pipe = world.load_pipeline()
    measure = None  # the base model's prior images are drawn once, on first need
    tokens = args.subjects.split(",")
    kinds = args.kinds.split(",")

    def save() -> None:
        state.update(
            date=str(date.today()),
            machine=f"{platform.machine()}, {os.cpu_count()} CPUs, torch threads {args.threads}",
            seconds=previous + time.perf_counter() - started,
            defaults={
                k: getattr(SearchConfig, k)
                for k in ("steps", "travel", "prior_weight", "value_steps", "value_lr")
            },
        )
        args.json.write_text(json.dumps(state, indent=1) + "\n")

    made = {
        (token, seed): containers(world.subject(token), kinds, seed, args.work)
        for seed in seeds
        for token in tokens
    }
    if not args.no_strip and len(tokens) >= 2 and "strip" not in state:
        first, second = (world.subject(t) for t in tokens[:2])
        strip = interpolation_strip(
            pipe, first, second, seeds[0], args.work, args.strip, args.strip_seeds, kinds
        )
        state["strip"] = strip
        save()
    for (token, seed), paths in made.items():
        subject = world.subject(token)
        for method in ["base model", *kinds]:
            key = (token, method, None if method == "base model" else seed)
            if key in done:
                continue
            done.add(key)
            if measure is None:
                measure = protocol.Judged(pipe, protocol.TEST)
            began = time.perf_counter()
            if method == "base model":
                row = {"subject": token, "method": method} | clean(measure([subject]))
            else:
                container = conesfmt.load(paths[method])
                with conesrt.apply(pipe, container):
                    row = {"subject": token, "method": method, "seed": seed} | clean(measure([subject]))
                row |= described(container, paths[method])
            row["measure_seconds"] = time.perf_counter() - began
            state["rows"].append(row)
            show(row)
            save()
    # The training objective's parts on fresh draws: what the values trade (after the judged rows).
    for row in state["rows"]:
        if "loss_parts" not in row:
            path = None if row["method"] == "base model" else made_path(args.work, row)
            row["loss_parts"] = loss_parts(world.subject(row["subject"]), path, args.work)
            save()
    summary(state)


def made_path(work: Path, row: dict) -> Path:
    return work / f"{row['subject']}-{row['seed']}-{row['method']}.cones"


#: Draws of the loss parts: a seed neither the search, the value steps nor their held-out choice used.
PARTS_DRAWS = dict(seed=20_000, batches=16, batch_size=4)
_prepared: dict = {}


def loss_parts(subject, path: Path | None, work: Path) -> dict[str, float]:
    """The implanting loss and its instance and prior parts, with the container applied (None: base)."""
    from trainer.base_model import load_base_model
    from trainer.evaluate import held_out_loss

    if "base" not in _prepared:
        _prepared["base"] = load_base_model(world.MODEL_DIR, torch.device("cpu"), torch.float32)
    base = _prepared["base"]
    if subject.token not in _prepared:
        config = TrainConfig(
            model=world.MODEL_DIR,
            images=subject.image_paths[0].parent,
            token=subject.token,
            class_word=subject.class_word,
            class_images=work / f"prior-{subject.class_word}",
            resolution=base.native_resolution,
        )
        _prepared[subject.token] = prepare_subject(
            base,
            subject.token,
            config.images,
            config.instance_prompt,
            config.prior_prompt,
            config,
            config.class_images,
        )
    subjects = [_prepared[subject.token]]
    if path is None:
        measured = held_out_loss(base.unet, subjects, base.noise_scheduler, parts=True, **PARTS_DRAWS)
    else:
        with conesrt.apply(base.unet, conesfmt.load(path)):
            measured = held_out_loss(base.unet, subjects, base.noise_scheduler, parts=True, **PARTS_DRAWS)
    # Parts are logged as NAME/instance and NAME/prior; the name is the token here.
    return {label.split("/")[-1]: value for label, value in measured.items()}


def containers(subject, kinds, seed: int, work: Path) -> dict[str, Path]:
    """One container per kind for ``subject``: the search once, then the values on its neurons."""
    paths = {kind: work / f"{subject.token}-{seed}-{kind}.cones" for kind in kinds}
    config = TrainConfig(
        model=world.MODEL_DIR,
        images=subject.image_paths[0].parent,
        token=subject.token,
        class_word=subject.class_word,
        seed=seed,
        class_images=work / f"prior-{subject.class_word}",
        out=work / f"{subject.token}-{seed}-binary.cones",
        progress=False,
        device="cpu",
        overwrite=True,
    )
    if not config.out.exists():
        began = time.perf_counter()
        result = train_concept(config)
        print(
            f"  {subject.token}: search {time.perf_counter() - began:.0f} s, shut {result.report['shut']}",
            flush=True,
        )
    binary = conesfmt.load(config.out)
    missing = [kind for kind in kinds if kind != "binary" and not paths[kind].exists()]
    if not missing:
        return paths
    accelerator, base = start(config)
    trainee = prepare_trained_subject(base, config, accelerator)
    ((name, concept),) = binary.concepts.items()
    keys = list(binary.layers)
    neurons = {key: binary.indices(name, key) for key in keys}
    for kind in missing:
        began = time.perf_counter()
        trained = train_values(
            base.unet,
            keys,
            [trainee],
            base.noise_scheduler,
            neurons,
            value_settings(config, kind),
            accelerator,
        )
        # What cones train --values KIND records: the run's settings with the value fields.
        valued = dataclasses.replace(config, values=kind)
        training = json.loads(concept.metadata["training"]) | {
            k: v for k, v in valued.settings().items() if k in SearchConfig._VALUED
        }
        metadata = dict(concept.metadata) | {"training": json.dumps(training, sort_keys=True)}
        valued_concept = conesfmt.Concept(neurons, metadata, values=trained.stored)
        conesfmt.save(
            conesfmt.Container(binary.layers, {name: valued_concept}, binary.fingerprint, binary.metadata),
            paths[kind],
        )
        log = {k: v for k, v in trained.log.items() if k not in ("losses", "step_seconds")}
        paths[kind].with_suffix(".values.json").write_text(json.dumps(log, indent=1))
        print(
            f"  {subject.token} {kind}: values {time.perf_counter() - began:.0f} s, held-out loss "
            f"{log['held_out']['values']:.5f} vs shut {log['held_out']['shut']:.5f}, kept {log['kept']}",
            flush=True,
        )
    return paths


def described(container: conesfmt.Container, path: Path) -> dict:
    """Bytes (file, index and value sections), entries shut, and the value training's log."""
    summary_ = summarize(container, path.stat().st_size)
    (concept,) = summary_["concepts"]
    row = {
        "shut": concept["shut"],
        "file_bytes": summary_["bytes"],
        "index_bytes": concept["index_bytes"],
        "values_bytes": concept["values_bytes"],
        "value_kind": concept["value_kind"],
    }
    log_path = path.with_suffix(".values.json")
    if log_path.exists():
        log = json.loads(log_path.read_text())
        row |= {
            "held_out_shut": log["held_out"]["shut"],
            "held_out_values": log["held_out"]["values"],
            "kept": log["kept"],
            "xi_median": log["xi"].get("median"),
            "value_seconds": log["seconds"],
        }
        (name,) = container.concepts
        xi = np.concatenate([container.values(name, key) for key in container.layers])
        row["xi_open_share"] = float(np.mean(xi > 0)) if xi.size else 0.0
    return row


def interpolation_strip(pipe, first, second, seed, work, out: Path, seeds: int, kinds) -> dict:
    """Rows of kinds, columns of t: both subjects applied at strengths 1 - t and t (C.6)."""
    from PIL import Image, ImageDraw

    prompt = protocol.composite_prompt([first, second])
    draw_seeds = list(protocol.TEST.sampling_seeds[:seeds])
    rows = [kind for kind in STRIP_KINDS if kind in kinds]
    cells, scores = [], {}
    for kind in rows:
        pair = [conesfmt.load(work / f"{s.token}-{seed}-{kind}.cones") for s in (first, second)]
        for t in STRIP_STEPS:
            with conesrt.apply(pipe, pair, strength=[1 - t, t]):
                images = protocol.sample(pipe, prompt, draw_seeds)
            scores[f"{kind} t={t:g}"] = {
                s.token: float(subject_scores(images, s).mean()) for s in (first, second)
            }
            cells.append(images[0])
            print(f"  strip {kind} t={t:g}: {scores[f'{kind} t={t:g}']}", flush=True)
    size = cells[0].size[0]
    scale = max(1, 96 // size)
    cell = size * scale
    margin, top = 56, 18
    sheet = Image.new("RGB", (margin + cell * len(STRIP_STEPS), top + cell * len(rows)), "white")
    pen = ImageDraw.Draw(sheet)
    for column, t in enumerate(STRIP_STEPS):
        pen.text((margin + column * cell + 4, 3), f"t={t:g}", fill="black")
    for row, kind in enumerate(rows):
        pen.text((4, top + row * cell + cell // 2 - 6), kind, fill="black")
        for column in range(len(STRIP_STEPS)):
            image = cells[row * len(STRIP_STEPS) + column].resize((cell, cell), Image.NEAREST)
            sheet.paste(image, (margin + column * cell, top + row * cell))
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return {
        "prompt": prompt,
        "strengths": f"{first.token} at 1 - t, {second.token} at t",
        "seeds": draw_seeds,
        "scores": scores,
        "png": str(out),
    }


def clean(measured: dict) -> dict:
    return {k: float(measured[k]) for k in MEASURES if k in measured}


def show(row: dict) -> None:
    cells = " ".join(f"{k} {row[k]:.3f}" for k in MEASURES if k in row)
    extra = f" {row['file_bytes']} B" if "file_bytes" in row else ""
    print(f"  {row['subject']} {row['method']:<10}: {cells}{extra}", flush=True)


def summary(state: dict) -> None:
    print(f"\n# Values on concept neurons — {state['date']} — {state['machine']}\n")
    print(
        "| subject | values | seed | shut | fidelity | context | prior kept | prior attributes "
        "| file bytes | value bytes | held-out loss (valued / shut) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for row in state["rows"]:
        cells = [f"{row[k]:.3f}" for k in MEASURES]
        held = (
            f"{row['held_out_values']:.5f} / {row['held_out_shut']:.5f}" if "held_out_values" in row else "—"
        )
        print(
            f"| {row['subject']} | {row['method']} | {row.get('seed', '—')} | {row.get('shut', '—')} | "
            + " | ".join(cells)
            + f" | {row.get('file_bytes', '—')} | {row.get('values_bytes', '—')} | {held} |"
        )
    print("\ntraining objective on fresh draws (seed 20000, 16 x 4):\n")
    print("| subject | values | seed | loss | instance | prior |")
    print("|---|---|---|---|---|---|")
    for row in state["rows"]:
        if parts := row.get("loss_parts"):
            print(
                f"| {row['subject']} | {row['method']} | {row.get('seed', '—')} | {parts['loss']:.5f} | "
                f"{parts['instance']:.5f} | {parts['prior']:.5f} |"
            )
    print("\nmean over seeds:\n")
    print("| subject | values | seeds | fidelity | context | prior kept | prior attributes | file bytes |")
    print("|---|---|---|---|---|---|---|---|")
    for subject in dict.fromkeys(r["subject"] for r in state["rows"]):
        for method in ("base model", *KINDS):
            chosen = [r for r in state["rows"] if r["subject"] == subject and r["method"] == method]
            if not chosen:
                continue
            cells = [f"{np.mean([r[k] for r in chosen]):.3f}" for k in MEASURES]
            size = f"{np.mean([r['file_bytes'] for r in chosen]):.0f}" if "file_bytes" in chosen[0] else "—"
            print(f"| {subject} | {method} | {len(chosen)} | " + " | ".join(cells) + f" | {size} |")


if __name__ == "__main__":
    main()
