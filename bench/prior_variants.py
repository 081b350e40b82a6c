"""Variants of the objective and of the searched weights, for keeping the prior. Beyond the paper.

    python bench/prior_variants.py --subject sks --seed 0     # about 3 min on one core
    python bench/prior_variants.py --subject sks --seed 0 --prior-target base --no-keep
    python bench/prior_variants.py --subject sks --no-keep --layers "*attn2.to_k.weight" --sparsity 0.04

Each run trains one subject's concept neurons with the paper-tables settings
and one change, and scores the result like the paper-tables bench
(bench/paper_tables.py): fidelity, text alignment, and prior on its four
prior prompts. Compare with the plain Cones rows of docs/paper-tables.json.

- By default the search also sees the base model's own images for a few
  other prompts (``KEEP``; each a loss term of weight 1, as an instance with
  no prior). None of them is among the prompts the prior is scored on.
  ``--no-keep`` leaves them out (the paper's single prior).
- ``--prior-target base`` compares the class prompt's predictions with the
  frozen base model's own instead of with the noise
  (``Subject.prior_target``). That term is 0 until xi moves and penalises any
  change of the class prompt's predictions; DreamBooth's term can also be
  lowered by a change.
- ``--layers`` searches other weights (a preset or globs, as ``cones train
  --layers``). With the keys only, a change common to every token's key
  does not move the attention (softmax ignores a shift shared by all
  scores). ``--sparsity`` is a fraction of the searched weights, so 0.04
  of the keys is as many entries as 0.02 of keys and values.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import paper_tables  # noqa: E402
import torch  # noqa: E402

import conesrt  # noqa: E402
from trainer import world  # noqa: E402
from trainer.config import image_files, select_layers, unet_keys  # noqa: E402
from trainer.data import encode_images, encode_prompt, ensure_class_images  # noqa: E402
from trainer.objective import Subject  # noqa: E402
from trainer.train import build_container, config_subject, descend, start  # noqa: E402

KEEP = (
    "a photo of a square",
    "a green triangle on a black background",
    "a photo of a diamond and a red ring",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subject", default="sks", help="a bundled subject token")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sparsity", type=float, default=0.02)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=30.0)
    parser.add_argument("--images", type=int, default=8, help="images per prompt")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--prior-target", choices=("noise", "base"), default="noise")
    parser.add_argument("--prior-weight", type=float, default=1.0, help="lambda")
    parser.add_argument("--no-keep", action="store_true", help="no prompts beyond the class prompt")
    parser.add_argument("--layers", default="cross", help="the searched weights: a preset or globs")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    settings = argparse.Namespace(
        class_images=32, steps=args.steps, lr=args.lr, prior_weight=args.prior_weight
    )
    subject = world.subject(args.subject)
    folder = Path(tempfile.mkdtemp(prefix="cones-held-out-"))
    config = paper_tables.subject_config(
        world.MODEL_DIR, settings, args.seed, subject, folder, sparsity=args.sparsity, layers=args.layers
    )
    config.validate()
    keys = select_layers(unet_keys(config.model), config.layers)
    accelerator, base = start(config)
    terms = [config_subject(base, config, accelerator)]
    terms[0].prior_target = args.prior_target
    keep = () if args.no_keep else KEEP
    for i, prompt in enumerate(keep):
        images = folder / f"keep-{i}"
        ensure_class_images(
            base, images, prompt, 32, world.IMAGE_SIZE, world.NUM_INFERENCE_STEPS, args.seed, progress=False
        )
        bank = encode_images(base, image_files(images), world.IMAGE_SIZE, config.flip)
        terms.append(Subject(f"keep-{i}", bank, encode_prompt(base, prompt), prior_weight=0.0))
    neurons, _, _ = descend(config, base, keys, terms, accelerator)
    metadata = {"trigger": subject.token, "class_word": subject.class_word}
    container = build_container(base, keys, subject.token, neurons, metadata)

    pipe = world.load_pipeline()
    sample = paper_tables.Sampler(pipe, args.images)
    priors = {prompt: sample(prompt) for prompt in paper_tables.PRIOR_PROMPTS}
    with conesrt.apply(pipe, container):
        measured = paper_tables.score(sample, [subject], priors)
    scores = "  ".join(f"{name} {measured[name]:.3f}" for name in paper_tables.MEASURES)
    objective = f"prior against the {args.prior_target}, lambda {args.prior_weight:g}"
    objective += (
        f", {len(keep)} more prompts, layers {args.layers}, {container.concepts[subject.token].total}"
    )
    objective += " entries"
    print(f"{subject.token} seed {args.seed}, Cones with {objective}: {scores}")


if __name__ == "__main__":
    main()
