"""Check the bundled model: a sample grid, the judge on its samples, subject scores, timings.

    python -m trainer.world.evaluate --grid trainer/world/samples.png \\
        --json trainer/world/evaluation.json

What it measures (numbers in README.md):

- ``explicit_captions``: samples for fully explicit captions of random scenes
  (``scenes.full_caption``), judged per attribute. ``chance`` is the same
  agreement measured against a *different* scene's caption, i.e. what a model
  that ignores the text would score.
- ``subjects``: mean ``judge.subject_score`` of the subject's own images, of
  base-model samples for its instance prompt ("a photo of a sks star", should
  be low) and for its description ("a photo of a white striped star", shows the
  base model can draw the identity when told in words).
- ``timing_s``: loading the folder, and one 25-step generation of a batch of 4.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from trainer.world import GUIDANCE_SCALE, IMAGE_SIZE, MODEL_DIR, NUM_INFERENCE_STEPS, subjects
from trainer.world import judge as judging
from trainer.world.scenes import COLOUR_NAMES, SHAPES, TEXTURES, full_caption, sample_scene

GRID_PROMPTS: tuple[str, ...] = (
    "a photo of a red star",
    "a photo of a blue circle on a yellow background",
    "a photo of a green striped square",
    "a photo of an orange dotted heart on a white background",
    "a photo of a purple checkered triangle on a black background",
    "a photo of a yellow ring on a blue striped background",
    "a photo of a white cross on a red background",
    "a photo of a black diamond on an orange dotted background",
    "a photo of a red star and a blue heart",
    "a photo of a yellow striped circle and a green square on a purple background",
    "a photo of a sks star",
    "a photo of a white striped star",
)


def generate(
    pipeline,
    prompts: list[str],
    seed: int,
    *,
    guidance_scale: float,
    steps: int = NUM_INFERENCE_STEPS,
    batch_size: int = 16,
) -> np.ndarray:
    """uint8 samples (N, 64, 64, 3), one per prompt, seeded per batch.

    >>> pipe = load_pipeline()  # doctest: +SKIP
    >>> generate(pipe, ["a photo of a red star"], seed=0, guidance_scale=5)  # doctest: +SKIP
    """
    images = []
    for start in range(0, len(prompts), batch_size):
        generator = torch.Generator().manual_seed(seed + start)
        out = pipeline(
            prompts[start : start + batch_size],
            height=IMAGE_SIZE,
            width=IMAGE_SIZE,
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            generator=generator,
            output_type="np",
        ).images
        images.append((out * 255).round().astype(np.uint8))
    return np.concatenate(images)


def save_grid(pipeline, path: Path, *, guidance_scale: float, per_prompt: int = 4, seed: int = 0) -> None:
    """A labelled grid: one row per prompt in GRID_PROMPTS, ``per_prompt`` seeds each."""
    from PIL import Image, ImageDraw

    from trainer.presentation import label_font

    label_width = 430
    grid = Image.new(
        "RGB",
        (label_width + per_prompt * (IMAGE_SIZE + 2), len(GRID_PROMPTS) * (IMAGE_SIZE + 2)),
        "white",
    )
    draw = ImageDraw.Draw(grid)
    for row, prompt in enumerate(GRID_PROMPTS):
        images = generate(pipeline, [prompt] * per_prompt, seed + 1000 * row, guidance_scale=guidance_scale)
        y = row * (IMAGE_SIZE + 2)
        draw.text((4, y + IMAGE_SIZE // 2 - 6), prompt, fill="black", font=label_font())
        for column, image in enumerate(images):
            grid.paste(Image.fromarray(image), (label_width + column * (IMAGE_SIZE + 2), y))
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path, optimize=True)


def _agreement(attributes: list[judging.Attributes], scene_list: list) -> dict[str, float]:
    """Fraction of objects/backgrounds whose judged attributes match the scenes'."""
    hits = {
        "shape": [],
        "colour": [],
        "texture": [],
        "all_object": [],
        "background_colour": [],
        "background_pattern": [],
    }
    for seen, scene in zip(attributes, scene_list, strict=True):
        for obj in scene.objects:
            found = seen.objects.get(obj.shape)
            hits["shape"].append(found is not None)
            hits["colour"].append(found is not None and found[0] == obj.colour)
            hits["texture"].append(found is not None and found[1] == obj.texture)
            hits["all_object"].append(found == (obj.colour, obj.texture))
        hits["background_colour"].append(seen.background_colour == scene.background_colour)
        hits["background_pattern"].append(seen.background_pattern == scene.background_pattern)
    return {name: round(float(np.mean(values)), 3) for name, values in hits.items()}


def explicit_caption_accuracy(pipeline, count: int, seed: int, *, guidance_scale: float) -> dict:
    """Judge agreement on samples for fully explicit captions, and a mismatched-caption chance."""
    rng = np.random.default_rng(seed)
    scene_list = [sample_scene(rng, n_objects=int(rng.integers(1, 3))) for _ in range(count)]
    images = generate(pipeline, [full_caption(s) for s in scene_list], seed, guidance_scale=guidance_scale)
    attributes = judging.judge(images)
    shifted = scene_list[1:] + scene_list[:1]
    return {
        "count": count,
        "accuracy": _agreement(attributes, scene_list),
        "chance": _agreement(attributes, shifted),
        "chance_uniform": {
            "colour": round(1 / (len(COLOUR_NAMES) - 1), 3),
            "texture": round(1 / len(TEXTURES), 3),
            "shape_present_prior": round(1.4 / len(SHAPES), 3),
        },
    }


def subject_report(pipeline, count: int, seed: int, *, guidance_scale: float) -> dict:
    """Subject scores of the subject images and of base-model samples for its prompts."""
    report = {}
    for subject in subjects():
        instance = generate(pipeline, [subject.prompt] * count, seed, guidance_scale=guidance_scale)
        described = generate(pipeline, [subject.description] * count, seed, guidance_scale=guidance_scale)
        report[subject.name] = {
            "subject_images": round(judging.subject_score(subject.images(), subject), 3),
            "base_model_instance_prompt": round(judging.subject_score(instance, subject), 3),
            "base_model_description_prompt": round(judging.subject_score(described, subject), 3),
        }
    return report


def timing(model_dir: Path, *, guidance_scale: float) -> dict:
    """Seconds to import diffusers, load the folder and run one 25-step generation of a batch of 4."""
    start = time.perf_counter()
    import diffusers  # noqa: F401  (a first import costs ~4 s; timed apart from loading)

    from trainer.world import load_pipeline

    imported = time.perf_counter()
    pipeline = load_pipeline(model_dir)
    loaded = time.perf_counter()
    generate(
        pipeline,
        ["a photo of a red star on a blue background"] * 4,
        0,
        guidance_scale=guidance_scale,
    )
    done = time.perf_counter()
    return {
        "import_diffusers": round(imported - start, 2),
        "load": round(loaded - imported, 2),
        "generate_batch4_25steps": round(done - loaded, 2),
        "threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=MODEL_DIR)
    parser.add_argument("--grid", type=Path, default=None, help="write the sample grid PNG here")
    parser.add_argument("--json", type=Path, default=None, help="write the measurements here")
    parser.add_argument("--guidance-scale", type=float, default=GUIDANCE_SCALE)
    parser.add_argument("--scenes", type=int, default=96, help="random scenes for explicit captions")
    parser.add_argument("--per-subject", type=int, default=16, help="samples per subject prompt")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from trainer.world import load_pipeline

    report = {
        "guidance_scale": args.guidance_scale,
        "timing_s": timing(args.model, guidance_scale=args.guidance_scale),
    }
    pipeline = load_pipeline(args.model)
    if args.grid:
        save_grid(pipeline, args.grid, guidance_scale=args.guidance_scale, seed=args.seed)
    report["explicit_captions"] = explicit_caption_accuracy(
        pipeline, args.scenes, args.seed, guidance_scale=args.guidance_scale
    )
    report["subjects"] = subject_report(
        pipeline, args.per_subject, args.seed, guidance_scale=args.guidance_scale
    )
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
