"""``cones demo``: the whole mission on the embedded small world, offline, in a few minutes on a CPU.

It finds the concept neurons of a bundled subject, writes the container,
applies it with conesrt, draws images for a few prompts before and after,
measures them with the world's attribute judge, removes the container and
checks that the model is bit-identical to before. Into ``--out`` it writes
the ``.cones`` file, ``grid.png`` (before | after, same seeds) and
``report.json``, and ``attention.png`` (each word's cross-attention map for the
subject prompt, before | after: the paper's Fig. 2).

``--model`` takes any folder ``cones train`` takes (SD 1.x/2.x, SDXL, SD3,
Flux), loaded as its own pipeline class and drawn at its own resolution and
default guidance. SD3 and Flux have no cross-attention (trainer.attention:
joint attention), so their demo draws no ``attention.png``.

>>> report = run_demo(out="cones-demo")   # the bundled world and its "zwx background"
>>> report["after"]["subject_score"] > report["before"]["subject_score"]
True
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UsageError

SEEDS = (0, 1, 2, 3)
#: Settings of the search the demo may override; every other one is ``cones train``'s default.
SEARCH_OVERRIDES = ("steps", "lr", "sparsity", "num_class_images", "prior_weight", "preserve_weight")


@dataclass
class DemoSubject:
    token: str
    class_word: str
    images: Path
    identity: Any = None  # a trainer.world.Subject when the subject is bundled


def _world_prompts(subject: DemoSubject) -> list[tuple[str, str]]:
    """(prompt, what it shows) rows of the grid."""
    token, word = subject.token, subject.class_word
    if word == "background":
        return [
            (f"a photo of a {token} background", "subject"),
            (f"a red heart on a {token} background", "subject, in context"),
            ("a photo of a background", "prior"),
            ("a photo of a blue heart", "unrelated"),
        ]
    return [
        (f"a photo of a {token} {word}", "subject"),
        (f"a {token} {word} on a blue background", "subject, in context"),
        (f"a photo of a {word}", "prior"),
        ("a photo of a red heart" if word != "heart" else "a photo of a green star", "unrelated"),
    ]


def denoiser_of(pipe):
    """The pipeline's UNet (SD 1.x, 2.x, SDXL) or transformer (SD3, Flux)."""
    unet = getattr(pipe, "unet", None)
    return unet if unet is not None else pipe.transformer


def default_guidance(pipe) -> float:
    """The guidance scale the pipeline's own ``__call__`` defaults to (SD 7.5, SDXL 5, SD3 7,
    Flux's embedded 3.5)."""
    import inspect

    return float(inspect.signature(type(pipe).__call__).parameters["guidance_scale"].default)


def denoiser_digest(denoiser) -> str:
    """SHA-256 of every weight's bytes of the UNet or transformer, in state-dict order: equal
    digests, equal bits."""
    import torch

    digest = hashlib.sha256()
    for key, tensor in denoiser.state_dict().items():
        digest.update(key.encode())
        digest.update(tensor.detach().contiguous().cpu().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def generate(
    pipe, prompts: list[str], seeds: tuple[int, ...], steps: int, guidance: float, size: int, **options
):
    """One image per (prompt, seed); each seed's generator starts afresh, so runs compare image by image.
    ``options`` go to the pipeline (SD3's and Flux's ``max_sequence_length``)."""
    import torch

    images = []
    for prompt in prompts:
        row = []
        for seed in seeds:
            generator = torch.Generator().manual_seed(seed)
            row.append(
                pipe(
                    prompt,
                    num_inference_steps=steps,
                    guidance_scale=guidance,
                    height=size,
                    width=size,
                    generator=generator,
                    **options,
                ).images[0]
            )
        images.append(row)
    return images


def draw_grid(rows: list[tuple[str, list, list]], path: Path, scale: int = 2) -> None:
    """A PNG: per prompt, a caption, then the images before | after for the same seeds."""
    from PIL import Image, ImageDraw

    from .presentation import label_font

    cell = rows[0][1][0].width * scale
    seeds = len(rows[0][1])
    gap, caption = 12, 18
    width = 2 * seeds * cell + gap
    height = 22 + len(rows) * (caption + cell + 6)
    grid = Image.new("RGB", (width, height), "white")
    pen = ImageDraw.Draw(grid)
    pen.text((4, 4), "before (base model)", fill="black", font=label_font())
    pen.text((seeds * cell + gap + 4, 4), "after (concept neurons shut)", fill="black", font=label_font())
    top = 22
    for prompt, before, after in rows:
        pen.text((4, top + 3), f'"{prompt}"', fill="black", font=label_font())
        top += caption
        for column, image in enumerate(before):
            grid.paste(image.resize((cell, cell), Image.Resampling.NEAREST), (column * cell, top))
        for column, image in enumerate(after):
            grid.paste(
                image.resize((cell, cell), Image.Resampling.NEAREST),
                (seeds * cell + gap + column * cell, top),
            )
        top += cell + 6
    grid.save(path)


def _judge_rows(rows, subject: DemoSubject) -> dict[str, Any]:
    """Subject fidelity on the subject prompts; agreement with the base model on the others."""
    from .world.judge import judge, subject_scores

    measured: dict[str, Any] = {}
    for label in ("before", "after"):
        images = [
            image
            for (_, role, b, a) in rows
            if role.startswith("subject")
            for image in (b if label == "before" else a)
        ]
        measured[label] = {"subject_score": float(subject_scores(images, subject.identity).mean())}
    kept = total = 0
    for _, role, before, after in rows:
        if role.startswith("subject"):
            continue
        for old, new in zip(judge(before), judge(after), strict=True):
            same = (old.objects, old.background_colour, old.background_pattern) == (
                new.objects,
                new.background_colour,
                new.background_pattern,
            )
            kept += same
            total += 1
    measured["prior_unchanged"] = kept / total if total else None
    return measured


def run_demo(
    out: str | Path = "cones-demo",
    model: str | Path | None = None,
    images: str | Path | None = None,
    subject: str = "zwx",
    token: str | None = None,
    class_word: str | None = None,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
    resolution: int | None = None,
    sampling_steps: int | None = None,
    **search: Any,
) -> dict[str, Any]:
    """Run the demo and return its report (also written to ``out/report.json``).

    The search runs with ``cones train``'s defaults; ``search`` may set any of
    ``SEARCH_OVERRIDES`` (``steps=20`` for a quick look), None meaning the default.

    Default: the bundled world and its subject ``subject`` (``zwx``, a yellow background).
    ``model`` (a diffusers SD 1.x/2.x, SDXL, SD3 or Flux folder) and ``images``
    (with ``token`` and ``class_word``) replace them; the judge's metrics are
    only measured on the bundled world, which is what it was trained on.
    ``resolution`` (pixels; default the model's own) and ``sampling_steps``
    (default 30) set how another model draws and trains; the world has its own.
    """
    import conesrt

    from . import world
    from .base_model import native_resolution
    from .denoisers import MAX_SEQUENCE_LENGTH, adapter_for, max_sequence_length
    from .pipelines import load_pipeline
    from .train import train_concept

    started = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    bundled = model is None
    model_dir = Path(model) if model is not None else world.MODEL_DIR
    if bundled and (resolution or sampling_steps):
        raise UsageError("--resolution and --sampling-steps go with --model: the world draws as it was made")
    if images is None:
        if not bundled:
            raise UsageError("with --model, give the subject's --images (and --token, --class-word)")
        try:
            chosen = world.subject(subject)
        except KeyError as error:
            raise UsageError(str(error.args[0])) from None
        the_subject = DemoSubject(chosen.token, chosen.class_word, chosen.image_paths[0].parent, chosen)
    else:
        if not class_word:
            raise UsageError("with --images, give --class-word (and --token, default sks)")
        the_subject = DemoSubject(token or "sks", class_word, Path(images))

    prompts = (
        _world_prompts(the_subject)
        if bundled
        else [
            (f"a photo of a {the_subject.token} {the_subject.class_word}", "subject"),
            (f"a photo of a {the_subject.class_word}", "prior"),
        ]
    )

    timings: dict[str, float] = {}
    if bundled:
        pipe = world.load_pipeline(model_dir).to(device)
        size, steps_sampling, guidance = world.IMAGE_SIZE, world.NUM_INFERENCE_STEPS, world.GUIDANCE_SCALE
    else:
        pipe = load_pipeline(model_dir, device)  # the folder's own pipeline class, offline
        size = resolution or native_resolution(pipe, denoiser_of(pipe))
        steps_sampling, guidance = sampling_steps or 30, default_guidance(pipe)
    denoiser = denoiser_of(pipe)
    family = adapter_for(denoiser).family
    drawing = {}
    if family in MAX_SEQUENCE_LENGTH:  # SD3, Flux: as many T5 tokens as training and prior images use
        drawing["max_sequence_length"] = max_sequence_length(pipe, family)
    digest_before = denoiser_digest(denoiser)

    clock = time.perf_counter()
    before = generate(pipe, [p for p, _ in prompts], SEEDS, steps_sampling, guidance, size, **drawing)
    timings["generate_before_s"] = time.perf_counter() - clock

    unknown = set(search) - set(SEARCH_OVERRIDES)
    if unknown:
        raise TypeError(f"run_demo() does not set {sorted(unknown)}; it may set {list(SEARCH_OVERRIDES)}")
    overrides = {key: value for key, value in search.items() if value is not None}
    container_path = out / f"{the_subject.token}-{the_subject.class_word}.cones"
    clock = time.perf_counter()
    result = train_concept(
        model=model_dir,
        images=the_subject.images,
        token=the_subject.token,
        class_word=the_subject.class_word,
        prompt=f"a photo of a {the_subject.token} {the_subject.class_word}",
        class_prompt=f"a photo of a {the_subject.class_word}",
        class_images=out / "prior-images",
        class_image_steps=steps_sampling,
        resolution=size,
        seed=seed,
        device=device,
        out=container_path,
        overwrite=True,
        progress=progress,
        **overrides,
    )
    timings["train_s"] = time.perf_counter() - clock

    from .attention import attention_maps, draw

    subject_prompt = prompts[0][0]
    attention = dict(seed=SEEDS[0], steps=steps_sampling, guidance=guidance, size=size)
    with_maps = getattr(pipe, "unet", None) is not None  # SD3, Flux: joint attention, no maps
    attention_before = attention_maps(pipe, subject_prompt, **attention) if with_maps else None
    clock = time.perf_counter()
    handle = conesrt.apply(pipe, container_path)
    timings["apply_ms"] = 1e3 * (time.perf_counter() - clock)
    clock = time.perf_counter()
    after = generate(pipe, [p for p, _ in prompts], SEEDS, steps_sampling, guidance, size, **drawing)
    timings["generate_after_s"] = time.perf_counter() - clock
    if with_maps:
        attention_after = attention_maps(pipe, subject_prompt, **attention)
        draw(attention_before, attention_after, out / "attention.png")
    clock = time.perf_counter()
    handle.remove()
    timings["remove_ms"] = 1e3 * (time.perf_counter() - clock)
    digest_after = denoiser_digest(denoiser)

    rows = [(prompt, role, b, a) for (prompt, role), b, a in zip(prompts, before, after, strict=True)]
    draw_grid([(prompt, b, a) for prompt, _, b, a in rows], out / "grid.png")
    report: dict[str, Any] = {
        "subject": {
            "token": the_subject.token,
            "class_word": the_subject.class_word,
            "images": str(the_subject.images),
        },
        "model": str(model_dir),
        "family": family,
        "resolution": size,
        "container": str(container_path),
        "container_bytes": container_path.stat().st_size,
        "floor_bytes": result.report["floor_bytes"],
        "shut": result.report["shut"],
        "searched": result.report["searched"],
        "sparsity": result.report["sparsity"],
        "train": {
            **json.loads(
                result.container.concepts[next(iter(result.container.concepts))].metadata["training"]
            ),
            "seconds_per_step": result.report["seconds_per_step"],
            "xi_travel": result.report["xi_travel"],
            "seed": seed,
        },
        "prompts": [{"prompt": p, "role": r} for p, r, _, _ in rows],
        "seeds": list(SEEDS),
        "timings": timings,
        "bit_identical_after_remove": digest_before == digest_after,
        # per token of the subject prompt: [token, share of attention before, after] (None: SD3, Flux)
        "attention_share": [
            [token, round(attention_before.share(i), 4), round(attention_after.share(i), 4)]
            for i, token in enumerate(attention_before.tokens)
        ]
        if with_maps
        else None,
        "denoiser_sha256": digest_before,
    }
    if bundled and the_subject.identity is not None:
        report |= _judge_rows(rows, the_subject)
    report["total_s"] = time.perf_counter() - started
    (out / "report.json").write_text(json.dumps(report, indent=1))
    if not report["bit_identical_after_remove"]:
        raise RuntimeError("the denoiser differs after remove: this is a bug, please report it")
    return report
