"""The bundled subjects: particular instances the base model has never been told about.

Each subject is a rare token (never in a pretraining caption), a class word and
fixed identity attributes, shown in a handful of procedurally drawn images with
varying position, size and background. The base model draws *some* star for
"a photo of a sks star" and the subject itself only when its identity is spelt
out ("a photo of a white striped star"), which is the gap concept neurons close.

Regenerate the bundled folder (deterministic):

    python -m trainer.world.subject_specs --out trainer/world/subjects

>>> [spec["token"] for spec in SUBJECT_SPECS]
['sks', 'vnt', 'pxr', 'zwx']
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from trainer.world.scenes import background_phrase, object_phrase, render, sample_scene

IMAGES_PER_SUBJECT = 6

# Identity attributes are chosen far apart (colours, textures, shapes) so that
# three subjects can share one image and stay distinguishable, and among the
# identities the world model draws best when they are spelt out (a subject is
# something the model *can* draw but does not for its rare token; the scores
# are in trainer/world/README.md, "Subjects").
SUBJECT_SPECS: tuple[dict, ...] = (
    {
        "name": "sks_star",
        "token": "sks",
        "class_word": "star",
        "identity": {"shape": "star", "colour": "white", "texture": "striped"},
        "seed": 101,
    },
    {
        "name": "vnt_ring",
        "token": "vnt",
        "class_word": "ring",
        "identity": {"shape": "ring", "colour": "green", "texture": "dotted"},
        "seed": 102,
    },
    {
        "name": "pxr_circle",
        "token": "pxr",
        "class_word": "circle",
        "identity": {"shape": "circle", "colour": "purple", "texture": "checkered"},
        "seed": 103,
    },
    {
        "name": "zwx_background",
        "token": "zwx",
        "class_word": "background",
        "identity": {"background_colour": "yellow", "background_pattern": "plain"},
        "seed": 104,
    },
)


def description(identity: dict) -> str:
    """The prompt that spells a subject's identity out in the world's words.

    >>> description({"shape": "star", "colour": "orange", "texture": "dotted"})
    'a photo of an orange dotted star'
    """
    if "shape" in identity:
        return "a photo of " + object_phrase(identity["shape"], identity["colour"], identity["texture"])
    return "a photo of " + background_phrase(identity["background_colour"], identity["background_pattern"])


def subject_images(spec: dict, count: int = IMAGES_PER_SUBJECT) -> list[np.ndarray]:
    """Draw a subject's images (uint8, 64×64×3), fixed by ``spec["seed"]``.

    Object subjects: the subject alone on a random background, at a random
    position and size. Background subjects: the background alone (the
    pattern's phase varies), as in the world's empty scenes.

    >>> len(subject_images(SUBJECT_SPECS[0], count=2))
    2
    """
    rng = np.random.default_rng(spec["seed"])
    identity = spec["identity"]
    images = []
    for _ in range(count):
        if "shape" in identity:
            scene = sample_scene(rng, n_objects=1, fixed_objects=(identity,))
        else:
            background = {
                "colour": identity["background_colour"],
                "pattern": identity["background_pattern"],
            }
            scene = sample_scene(rng, n_objects=0, background=background)
        images.append(render(scene))
    return images


def write_subjects(folder: str | Path, count: int = IMAGES_PER_SUBJECT) -> list[Path]:
    """Write ``<folder>/<name>/{0..count-1}.png`` and ``subject.json`` for every subject.

    >>> write_subjects("/tmp/subjects")  # doctest: +SKIP
    """
    folder = Path(folder)
    written = []
    for spec in SUBJECT_SPECS:
        target = folder / spec["name"]
        target.mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(subject_images(spec, count)):
            Image.fromarray(image).save(target / f"{i}.png")
        record = {
            "name": spec["name"],
            "token": spec["token"],
            "class_word": spec["class_word"],
            "identity": spec["identity"],
            "description": description(spec["identity"]),
            "prompt": f"a photo of a {spec['token']} {spec['class_word']}",
            "class_prompt": f"a photo of a {spec['class_word']}",
            "images": [f"{i}.png" for i in range(count)],
            "seed": spec["seed"],
        }
        (target / "subject.json").write_text(json.dumps(record, indent=2) + "\n")
        written.append(target)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the bundled subjects' images and metadata.")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    for path in write_subjects(args.out):
        print(path)


if __name__ == "__main__":
    main()
