"""How well the world model draws candidate subject identities when they are spelt out.

    python bench/world_candidates.py                    # the bundled model, about 6 min on one core
    python bench/world_candidates.py --model DIR --json candidates.json

For each shape and eight colour/texture pairs, and for each background colour
and pattern: the judge's subject score of 12 images for the description prompt
("a photo of a white striped star", "a photo of a yellow plain background").
A bundled subject should be an identity the model can draw when told in words
but does not draw for its rare token (trainer/world/README.md, "Subjects").
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from trainer import world  # noqa: E402
from trainer.world.judge import load_judge, subject_scores  # noqa: E402
from trainer.world.scenes import BACKGROUND_PATTERNS, COLOUR_NAMES, SHAPES  # noqa: E402
from trainer.world.subject_specs import description  # noqa: E402

# Colour/texture pairs, each colour once and each texture twice.
OBJECT_PAIRS = (
    ("orange", "dotted"),
    ("blue", "striped"),
    ("purple", "checkered"),
    ("red", "striped"),
    ("yellow", "checkered"),
    ("green", "dotted"),
    ("white", "striped"),
    ("black", "checkered"),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=world.MODEL_DIR)
    parser.add_argument("--images", type=int, default=12, help="images per description")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the scores here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pipe = world.load_pipeline(args.model)
    net = load_judge(args.model / "judge.safetensors")

    def drawn(identity: dict) -> float:
        images = world.sample(pipe, description(identity), args.images)
        return float(subject_scores(images, identity, net).mean())

    scores: dict[str, float] = {}
    print("| shape | " + " | ".join(f"{c} {t}" for c, t in OBJECT_PAIRS) + " |")
    print("|---" * (len(OBJECT_PAIRS) + 1) + "|")
    for shape in SHAPES:
        row = []
        for colour, texture in OBJECT_PAIRS:
            score = drawn({"shape": shape, "colour": colour, "texture": texture})
            scores[f"{colour} {texture} {shape}"] = score
            row.append(f"{score:.2f}")
        print(f"| {shape} | " + " | ".join(row) + " |", flush=True)
    print("\n| background | " + " | ".join(COLOUR_NAMES) + " |")
    print("|---" * (len(COLOUR_NAMES) + 1) + "|")
    for pattern in BACKGROUND_PATTERNS:
        row = []
        for colour in COLOUR_NAMES:
            score = drawn({"background_colour": colour, "background_pattern": pattern})
            scores[f"{colour} {pattern} background"] = score
            row.append(f"{score:.2f}")
        print(f"| {pattern} | " + " | ".join(row) + " |", flush=True)
    if args.json:
        args.json.write_text(json.dumps(scores, indent=1) + "\n")


if __name__ == "__main__":
    main()
