"""The paper's Tables 1 and 2 in miniature, on the embedded small world (issue #6).

    python bench/paper_tables.py                     # about 40 min on one core of a laptop CPU
    python bench/paper_tables.py --seeds 1 --steps 100 --images 4    # a quick look

For one, two and three subjects (star, ring or circle alone; star + ring;
star + ring + yellow background), and several training seeds, each method is scored with
the world's attribute judge (trainer/world/judge.py), trained on the world's
own procedural images:

- subject fidelity: for prompts "a photo of a V* class" (and, with several
  subjects, "a V1* star and a V2* ring on a V3* background"), the judge's
  probability that the image shows the subject's identity (shape present
  with the subject's colour and texture; or the background's colour and
  pattern), averaged over subjects and images. The analogue of the paper's
  image alignment, with a judge that knows what the subject is.
- text alignment: for "a V* class and a blue heart" (objects) or
  "a red heart on a V* background" (the background subject), how often the
  named context object is drawn in its colour (see ``edit_prompt``). The
  analogue of the paper's CLIP text alignment.
- prior preservation: for prompts without a rare token, the fraction of
  images (same seed as the base model's) whose judged attributes equal the
  base model's image: 1.0 means untouched.
- storage of what each method ships.

Methods: the base model; a random mask of the same size in the same layers;
Cones (the single subject's mask, or the direct merge of single masks);
Cones joint refine (sec. 3.3); and a Custom-Diffusion-style fine-tune of the
same K/V weights (those weights trainable with AdamW, everything else
frozen, the same loss and steps). Prints markdown tables; writes a plot.
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

import numpy as np  # noqa: E402
import torch  # noqa: E402

import conesfmt  # noqa: E402
import conesrt  # noqa: E402
from trainer import world  # noqa: E402
from trainer.base_model import load_base_model  # noqa: E402
from trainer.config import TrainConfig  # noqa: E402
from trainer.evaluate import random_like  # noqa: E402
from trainer.objective import implanting_loss  # noqa: E402
from trainer.refine import refine  # noqa: E402
from trainer.runs import prepare_subject  # noqa: E402
from trainer.train import train_concept  # noqa: E402
from trainer.world.judge import judge, subject_scores  # noqa: E402

SUBJECT_SETS = {1: [["sks"], ["vnt"], ["pxr"]], 2: [["sks", "vnt"]], 3: [["sks", "vnt", "zwx"]]}
MEASURES = ("fidelity", "alignment", "prior", "prior_attributes")
PRIOR_PROMPTS = [
    "a photo of a star",
    "a photo of a heart",
    "a red circle on a blue background",
    "a photo of a background",
]


def subject_prompt(subject) -> str:
    return f"a photo of a {subject.token} {subject.class_word}"


def edit_prompt(subject) -> tuple[str, callable]:
    """A prompt that puts the subject in a context, and how to tell the context was drawn.

    The context is an object of another colour, a phrase the world model
    follows (the base model draws it in 0.46-0.69 of images,
    docs/paper-tables.md); background patterns it does not draw.
    """
    if subject.class_word == "background":
        colour, other = "red", "heart"
        prompt = f"a red heart on a {subject.token} background"
    else:
        colour = "red" if subject.identity["colour"] == "blue" else "blue"
        other = "circle" if subject.class_word == "heart" else "heart"
        prompt = f"a {subject.token} {subject.class_word} and a {colour} {other}"
    # The named object itself, in the named colour: a subject drawn in that
    # colour does not count as the context.
    return prompt, lambda a: a.objects.get(other, (None, None))[0] == colour


def composite_prompt(subjects) -> str:
    objects = [s for s in subjects if s.class_word != "background"]
    backgrounds = [s for s in subjects if s.class_word == "background"]
    text = " and ".join(f"a {s.token} {s.class_word}" for s in objects)
    return text + (f" on a {backgrounds[0].token} background" if backgrounds else "")


class Sampler:
    """Images for a prompt and fixed seeds, from the pipeline's current weights (batched)."""

    def __init__(self, pipe, count: int):
        self.pipe, self.count = pipe, count

    def __call__(self, prompt: str) -> list:
        return world.sample(self.pipe, prompt, self.count)


def score(sample: Sampler, subjects, base_priors: dict[str, list]) -> dict[str, float]:
    """The three measures for the model as the pipeline now holds it."""
    fidelity = [float(subject_scores(sample(subject_prompt(s)), s).mean()) for s in subjects]
    if len(subjects) > 1:
        images = sample(composite_prompt(subjects))
        fidelity.append(float(np.mean([subject_scores(images, s).mean() for s in subjects])))
    alignment = []
    for s in subjects:
        prompt, drawn = edit_prompt(s)
        alignment.append(float(np.mean([drawn(a) for a in judge(sample(prompt))])))
    kept, similar = [], []
    for prompt, base_images in base_priors.items():
        old_attributes, new_attributes = judge(base_images), judge(sample(prompt))
        for old, new in zip(old_attributes, new_attributes, strict=True):
            kept.append(
                (old.objects, old.background_colour, old.background_pattern)
                == (new.objects, new.background_colour, new.background_pattern)
            )
        similar.append(attribute_similarity(old_attributes, new_attributes))
    return {
        "fidelity": float(np.mean(fidelity)),
        "alignment": float(np.mean(alignment)),
        "prior": float(np.mean(kept)),
        "prior_attributes": float(np.mean(similar)),
    }


def attribute_similarity(old: list, new: list) -> float:
    """1 - total variation distance between what two sets of images show, averaged over attributes.

    Per-seed equality (``prior``) asks that each image stay the same; this asks
    only that the prompt's images stay distributed the same: which shapes
    appear, in which colours and textures, on which backgrounds. Identical
    image sets give 1, sets with nothing in common 0.
    """

    def distribution(attributes: list, read) -> dict:
        counts: dict = {}
        for a in attributes:
            for value in read(a):
                counts[value] = counts.get(value, 0) + 1 / len(attributes)
        return counts

    readers = [
        lambda a: list(a.objects) or ["nothing"],
        lambda a: [f"{shape}:{colour}" for shape, (colour, _) in a.objects.items()],
        lambda a: [f"{shape}:{texture}" for shape, (_, texture) in a.objects.items()],
        lambda a: [a.background_colour],
        lambda a: [a.background_pattern],
    ]
    similarities = []
    for read in readers:
        p, q = distribution(old, read), distribution(new, read)
        total = max(sum(p.values()), sum(q.values()), 1e-9)
        distance = sum(abs(p.get(k, 0) - q.get(k, 0)) for k in p.keys() | q.keys()) / (2 * total)
        similarities.append(1 - distance)
    return float(np.mean(similarities))


def union_container(containers: list[conesfmt.Container]) -> conesfmt.Container:
    """One concept with the union of every input concept (for the random control's size)."""
    first = containers[0]
    indices = {
        key: np.unique(np.concatenate([c.indices(n, key) for c in containers for n in c.concepts]))
        for key in first.layers
    }
    return conesfmt.Container(first.layers, {"union": indices}, first.fingerprint)


def shared_settings(model: Path, args, seed: int) -> dict:
    """The settings every trained method shares: the same data, prior, steps, rho and seed."""
    return dict(
        model=model,
        num_class_images=args.class_images,
        class_image_steps=world.NUM_INFERENCE_STEPS,
        steps=args.steps,
        lr=args.lr,
        travel=args.travel,
        prior_weight=args.prior_weight,
        resolution=world.IMAGE_SIZE,
        seed=seed,
        device="cpu",
        overwrite=True,
        progress=False,
    )


def prior_folder(folder: Path, class_word: str) -> Path:
    """Where the prior images of a class word are generated once and shared by every method."""
    return folder / f"prior-{class_word}"


def subject_config(model: Path, args, seed: int, subject, folder: Path, **options) -> TrainConfig:
    """A bundled subject's search with the shared settings; ``options`` set or override fields."""
    fields = shared_settings(model, args, seed) | {
        "images": subject.image_paths[0].parent,
        "token": subject.token,
        "class_word": subject.class_word,
        "prompt": subject_prompt(subject),
        "class_prompt": subject.class_prompt,
        "class_images": prior_folder(folder, subject.class_word),
        "name": subject.token,
        "out": folder / f"{subject.token}.cones",
    }
    return TrainConfig(**(fields | options))


def custom_diffusion(
    model: Path, subjects, data: dict, args, seed: int, folder: Path
) -> dict[str, torch.Tensor]:
    """A plain fine-tune of the attn2 to_k/to_v weights on all subjects (AdamW), as Custom Diffusion."""
    base = load_base_model(model, torch.device("cpu"), torch.float32)
    config = TrainConfig(**shared_settings(model, args, seed), images=data[subjects[0].token])
    prepared = [
        prepare_subject(
            base,
            s.token,
            data[s.token],
            subject_prompt(s),
            f"a photo of a {s.class_word}",
            config,
            prior_folder(folder, s.class_word),
        )
        for s in subjects
    ]
    weights = base.unet.state_dict(keep_vars=True)
    keys = [k for k in weights if ".attn2.to_k.weight" in k or ".attn2.to_v.weight" in k]
    for key in keys:
        weights[key].requires_grad_(True)
    optimizer = torch.optim.AdamW([weights[k] for k in keys], lr=args.cd_lr, weight_decay=1e-2)
    generator = torch.Generator().manual_seed(seed * 1009)

    def model_fn(noisy, timesteps, embeddings):
        return base.unet(noisy, timesteps, encoder_hidden_states=embeddings).sample

    for _ in range(args.steps * len(subjects) if args.scale_steps else args.steps):
        loss, _ = implanting_loss(model_fn, prepared, base.noise_scheduler, 2, generator)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return {k: weights[k].detach().clone() for k in keys}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="training seeds per configuration")
    parser.add_argument("--steps", type=int, default=300, help="xi-descent steps per subject")
    defaults = TrainConfig.__dataclass_fields__
    parser.add_argument("--lr", type=float, default=defaults["lr"].default, help="rho; default: calibrated")
    parser.add_argument("--travel", type=float, default=defaults["travel"].default, help="xi travel")
    parser.add_argument(
        "--sparsity",
        type=float,
        default=defaults["sparsity"].default,
        help="single-subject sparsity; default: cones train's (the count chosen on held-out draws)",
    )
    parser.add_argument(
        "--prior-weight", type=float, default=defaults["prior_weight"].default, help="lambda, every method"
    )
    parser.add_argument("--cd-lr", type=float, default=1e-4, help="AdamW step of the fine-tune baseline")
    parser.add_argument("--images", type=int, default=8, help="images per prompt")
    parser.add_argument("--class-images", type=int, default=32)
    parser.add_argument("--scale-steps", action="store_true", help="steps x subjects for joint runs")
    parser.add_argument("--model", type=Path, default=world.MODEL_DIR, help="the world model folder")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument("--plot", type=Path, default=Path("docs/paper-tables.png"))
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads")
    parser.add_argument(
        "--from-json", type=Path, help="print the tables and draw the plot from a saved --json run"
    )
    args = parser.parse_args()
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        settings = argparse.Namespace(**{"travel": None} | saved["settings"], plot=args.plot, json=None)
        report(saved["results"], settings, saved["seconds"], when=saved["date"])
        return
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    # Resumable: rows already in --json (same settings) are kept and not measured again.
    saved = json.loads(args.json.read_text()) if args.json and args.json.exists() else None
    results: list[dict] = saved["results"] if saved and saved["settings"] == settings_of(args) else []
    done = {(r["subjects"], r["set"], r["method"], r["seed"]) for r in results}
    if results:
        print(f"  resuming: {len(results)} rows already measured in {args.json}", flush=True)

    model = args.model
    folder = Path(tempfile.mkdtemp(prefix="cones-paper-"))
    every = {s.token: s for s in world.subjects()}
    data = {token: s.image_paths[0].parent for token, s in every.items()}
    pipe = world.load_pipeline(model)
    sample = Sampler(pipe, args.images)
    base_weights = {k: v.detach().clone() for k, v in pipe.unet.state_dict().items()}

    def restore_base() -> None:
        with torch.no_grad():
            for key, value in pipe.unet.state_dict(keep_vars=True).items():
                value.copy_(base_weights[key])

    priors = {prompt: sample(prompt) for prompt in PRIOR_PROMPTS}

    def record(n: int, tokens: list[str], method: str, seed: int, measure, storage=None) -> None:
        """Score one row (``measure()`` inside whatever edit is applied) unless --json has it."""
        if (n, "+".join(tokens), method, seed) in done:
            return
        measured = measure()
        results.append(
            {
                "subjects": n,
                "set": "+".join(tokens),
                "method": method,
                "seed": seed,
                **measured,
                "storage": storage() if callable(storage) else storage,
            }
        )
        scores = "  ".join(f"{name} {measured[name]:.3f}" for name in MEASURES)
        print(f"  {n} subject(s) {'+'.join(tokens):<11} seed {seed}  {method:<16} {scores}", flush=True)
        if args.json:  # after every row, so that an interrupted run resumes here
            write_json(results, args, time.perf_counter() - started)

    def missing(n: int, tokens: list[str], seed: int, methods: list[str]) -> bool:
        return any((n, "+".join(tokens), m, seed) not in done for m in methods)

    def scored(subjects):
        return lambda: score(sample, subjects, priors)

    singles: dict[tuple[str, int], Path] = {}
    for n, sets in SUBJECT_SETS.items():
        for tokens in sets:
            subjects = [every[t] for t in tokens]
            record(n, tokens, "base model", -1, scored(subjects))
            if n == 1:  # what the base model draws when the identity is spelt out: a ceiling
                (s,) = subjects

                def described(s=s) -> dict:
                    fidelity = float(subject_scores(sample(s.description), s).mean())
                    return {"fidelity": fidelity, **dict.fromkeys(MEASURES[1:], float("nan"))}

                record(n, tokens, "base, described", -1, described)
            methods = ["Cones" if n == 1 else "Cones merge", "random mask", "K/V fine-tune"]
            methods += ["Cones refine"] if n > 1 else []
            for seed in range(args.seeds):
                if not missing(n, tokens, seed, methods):
                    continue
                for token in tokens:  # single-subject masks (cached across configurations)
                    if (token, seed) not in singles:
                        config = subject_config(
                            model,
                            args,
                            seed,
                            every[token],
                            folder,
                            sparsity=args.sparsity,
                            out=folder / f"{token}-{seed}.cones",
                        )
                        result = train_concept(config)
                        singles[(token, seed)] = result.path
                paths = [singles[(t, seed)] for t in tokens]
                merged = conesfmt.merge([conesfmt.load(p) for p in paths])
                union = union_container([merged])
                with conesrt.apply(pipe, merged):
                    record(n, tokens, methods[0], seed, scored(subjects), len(merged.to_bytes()))
                with conesrt.apply(pipe, random_like(union, seed)):
                    record(n, tokens, "random mask", seed, scored(subjects))
                if n > 1 and missing(n, tokens, seed, ["Cones refine"]):
                    refined = refine(
                        **shared_settings(model, args, seed),
                        containers=paths,
                        data={t: data[t] for t in tokens},
                        class_images={
                            every[t].class_word: prior_folder(folder, every[t].class_word) for t in tokens
                        },
                        out=folder / f"refined-{'+'.join(tokens)}-{seed}.cones",
                    )
                    with conesrt.apply(pipe, refined.container):
                        record(n, tokens, "Cones refine", seed, scored(subjects), refined.path.stat().st_size)
                if missing(n, tokens, seed, ["K/V fine-tune"]):
                    tuned = custom_diffusion(model, subjects, data, args, seed, folder)
                    with torch.no_grad():
                        for key, value in tuned.items():
                            pipe.unet.state_dict(keep_vars=True)[key].copy_(value)
                    storage = sum(v.numel() * 2 for v in tuned.values())  # shipped as fp16
                    record(n, tokens, "K/V fine-tune", seed, scored(subjects), storage)
                    restore_base()
    report(results, args, time.perf_counter() - started)


def settings_of(args) -> dict:
    """The settings a saved run was made with (a resumed run must have the same)."""
    return {
        k: str(v) if isinstance(v, Path) else v
        for k, v in vars(args).items()
        if k not in ("json", "plot", "from_json", "threads")
    }


def write_json(results: list[dict], args, seconds: float) -> None:
    record = {
        "results": results,
        "settings": settings_of(args),
        "seconds": seconds,
        "date": str(date.today()),
    }
    temporary = args.json.with_suffix(".tmp")
    temporary.write_text(json.dumps(record, indent=1))
    temporary.replace(args.json)


def report(results: list[dict], args, seconds: float, when: str | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if args.json:
        write_json(results, args, seconds)
    methods = [
        "base model",
        "base, described",
        "random mask",
        "Cones",
        "Cones merge",
        "Cones refine",
        "K/V fine-tune",
    ]
    minutes = seconds / 60
    print(
        f"\n# Tables 1 and 2 in miniature — {when or date.today()} — {platform.machine()}, CPU, "
        f"{minutes:.0f} min\n"
    )
    rho = f"rho {args.lr:g}" if args.lr is not None else f"rho calibrated to travel {args.travel:g}"
    sparsity = f"{100 * args.sparsity:g} %" if args.sparsity is not None else "chosen on held-out draws"
    print(
        f"{args.seeds} training seeds, {args.steps} xi-descent steps ({rho}), single-subject "
        f"sparsity {sparsity}, prior weight {args.prior_weight:g}, {args.images} images per prompt, "
        f"K/V fine-tune: AdamW lr {args.cd_lr:g}.\n"
    )
    print(
        "| subjects | method | subject fidelity | text alignment | prior kept (same seed) "
        "| prior attributes | storage |"
    )
    print("|---|---|---|---|---|---|---|")
    summary = {}
    for n in sorted({r["subjects"] for r in results}):
        for method in methods:
            rows = [r for r in results if r["subjects"] == n and r["method"] == method]
            if not rows:
                continue
            cells = []
            for measure in MEASURES:
                values = np.array([r[measure] for r in rows], dtype=float)
                if np.isnan(values).all():
                    cells.append("—")
                    continue
                # mean and spread over seeds (and subject sets)
                cells.append(f"{values.mean():.3f} ± {values.std():.3f}")
                summary[(n, method, measure)] = (values.mean(), values.std())
            storage = [r["storage"] for r in rows if r["storage"] is not None]
            size = f"{np.mean(storage) / 1024:.1f} KB" if storage else "—"
            print(f"| {n} | {method} | {' | '.join(cells)} | {size} |")
    figure, axes = plt.subplots(1, 4, figsize=(17, 3.6))
    for axis, measure, title in zip(
        axes,
        MEASURES,
        ("subject fidelity", "text alignment", "prior kept (same seed)", "prior attributes"),
        strict=True,
    ):
        width = 0.11
        for offset, method in enumerate(methods):
            xs, ys, es = [], [], []
            for n in (1, 2, 3):
                if (n, method, measure) in summary:
                    xs.append(n + (offset - 3) * width)
                    ys.append(summary[(n, method, measure)][0])
                    es.append(summary[(n, method, measure)][1])
            if xs:
                axis.bar(xs, ys, width, yerr=es, label=method, capsize=2, color=f"C{offset}")
        axis.set_xticks([1, 2, 3], ["1 subject", "2 subjects", "3 subjects"])
        axis.set_ylim(0, 1)
        axis.set_title(title)
    axes[0].legend(fontsize=7, loc="upper right")
    figure.tight_layout()
    args.plot.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.plot, dpi=110)
    print(f"\nplot: {args.plot}")


if __name__ == "__main__":
    main()
