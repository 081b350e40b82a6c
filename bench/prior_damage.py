"""Why Cones changes prompts without the token, on the small world: its entries against matched random sets.

    python bench/prior_damage.py --subject sks --seed 0     # about 6 min on one core

The paper-tables bench (bench/paper_tables.py) finds that Cones keeps less of
the base model's images for prompts without the rare token than a random mask
of the same size. This bench asks why. It trains the subject's concept
neurons with the paper-tables settings, then scores, like that bench, the
Cones mask against random masks built to share one property with it at a time:

- uniform random: the same number of entries in each layer (the tables' control);
- column-matched random: the same number in each (layer, column), i.e. on the
  same text-feature channels, rows drawn at random;
- magnitude-matched random: for each Cones entry, a random entry of the same
  layer whose size ``|theta_ij| * rms(h_j)`` (the change it makes to a
  token's key or value when shut) ranks within 1 % of it.

Beside fidelity and the two prior measures it reports:

- ``|dKV| sks``: how much the mask changes the keys and values of the rare
  token (root of the sum of squares over all searched layers), and
  ``|dKV| other``: the same, per token, for "a photo of a heart" (no token);
- ``specific``: the part of the rare token's change that differs from the
  mean change of the other tokens of its prompt, over the part they share;
- ``leak``: how often the subject's look (colour and texture, or background
  colour) appears on the objects and backgrounds drawn for the prior prompts,
  against the base model's images.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from datetime import date
from pathlib import Path

os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import paper_tables  # noqa: E402
import torch  # noqa: E402

import conesfmt  # noqa: E402
import conesrt  # noqa: E402
from trainer import world  # noqa: E402
from trainer.evaluate import random_like  # noqa: E402
from trainer.train import train_concept  # noqa: E402
from trainer.world.judge import judge  # noqa: E402

UNRELATED = "a photo of a heart"


def text_features(pipe, prompt: str) -> tuple[np.ndarray, list[str]]:
    """The text encoder's output for a prompt (tokens, channels) and its tokens."""
    ids = pipe.tokenizer(
        prompt, padding="max_length", max_length=pipe.tokenizer.model_max_length, return_tensors="pt"
    ).input_ids
    with torch.no_grad():
        features = pipe.text_encoder(ids)[0][0].float().numpy()
    return features, pipe.tokenizer.convert_ids_to_tokens(ids[0])


def entry_sizes(weights: dict[str, torch.Tensor], container: conesfmt.Container, channels_rms: np.ndarray):
    """``|theta_ij| * rms(h_j)`` per entry of each layer: how much shutting it changes a key or value."""
    return {
        key: (np.abs(weights[key].float().numpy()) * channels_rms[None, :]).reshape(-1)
        for key in container.layers
    }


def column_matched(container: conesfmt.Container, rng: np.random.Generator) -> conesfmt.Container:
    """Random rows on the same (layer, column) counts as the container's one concept."""
    (concept,) = container.concepts.values()
    chosen = {}
    for key, layer in container.layers.items():
        rows, columns = layer.shape
        indices = np.asarray(concept.indices.get(key, ()), dtype=np.int64)
        counts = np.bincount(indices % columns, minlength=columns)
        parts = [rng.choice(rows, n, replace=False) * columns + j for j, n in enumerate(counts) if n]
        chosen[key] = np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)
    return conesfmt.Container(container.layers, {"column-matched": chosen}, container.fingerprint)


def magnitude_matched(
    container: conesfmt.Container, sizes: dict[str, np.ndarray], rng: np.random.Generator
) -> conesfmt.Container:
    """For each entry, a random one of the same layer whose size ranks within 1 % of the layer of it."""
    (concept,) = container.concepts.values()
    chosen = {}
    for key in container.layers:
        order = np.argsort(sizes[key], kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(order.size)
        window = max(1, order.size // 100)
        taken: set[int] = set()
        for r in rank[np.asarray(concept.indices.get(key, ()), dtype=np.int64)]:
            while True:  # at most 2 % of a layer is shut, so a free entry is always near
                q = int(np.clip(r + rng.integers(-window, window + 1), 0, order.size - 1))
                if int(order[q]) not in taken:
                    taken.add(int(order[q]))
                    break
        chosen[key] = np.array(sorted(taken), dtype=np.int64)
    return conesfmt.Container(container.layers, {"magnitude-matched": chosen}, container.fingerprint)


def kv_change(weights, container, instance: np.ndarray, position: int, unrelated: np.ndarray) -> dict:
    """How much the mask changes keys and values: of the rare token, and per token of an unrelated prompt."""
    (concept,) = container.concepts.values()
    token, specific, shared, other = 0.0, 0.0, 0.0, 0.0
    for key, layer in container.layers.items():
        mask = np.zeros(layer.numel, np.float32)
        mask[np.asarray(concept.indices.get(key, ()), dtype=np.int64)] = 1
        change = -(mask.reshape(layer.shape) * weights[key].float().numpy())  # shutting: theta -> 0
        per_token = instance @ change.T
        common = np.delete(per_token, position, axis=0).mean(axis=0)
        token += float((per_token[position] ** 2).sum())
        specific += float(((per_token[position] - common) ** 2).sum())
        shared += float((common**2).sum())
        other += float(((unrelated @ change.T) ** 2).sum(axis=1).mean())
    return {
        "dkv_token": token**0.5,
        "dkv_other": other**0.5,
        "specific": (specific / shared) ** 0.5 if shared else float("nan"),
    }


def where(container: conesfmt.Container, instance: np.ndarray, position: int) -> list[str]:
    """Where the mask sits: the share of each layer it shuts, and on which text channels."""
    (concept,) = container.concepts.values()
    per_column = np.zeros(instance.shape[1])
    lines = []
    for key, layer in container.layers.items():
        indices = np.asarray(concept.indices.get(key, ()), dtype=np.int64)
        per_column += np.bincount(indices % layer.shape[1], minlength=layer.shape[1])
        lines.append(f"  {key}: {indices.size / layer.numel:.1%} shut")
    token = np.abs(instance[position])
    others = np.abs(np.delete(instance, position, axis=0)).mean(axis=0)
    correlations = {
        "the other tokens' mean |h_j|": others,
        "the rare token's |h_j|": token,
        "their ratio": token / others,
    }
    lines += [
        f"  correlation of shut entries per text channel j with {name}: "
        f"{np.corrcoef(per_column, values)[0, 1]:.2f}"
        for name, values in correlations.items()
    ]
    return lines


def leak(images_by_prompt: dict[str, list], subject) -> float:
    """Share of drawn objects (or backgrounds) that wear the subject's look, over the prior prompts."""
    identity = subject.identity
    hits, total = 0, 0
    for images in images_by_prompt.values():
        for attributes in judge(images):
            if "shape" in identity:
                looks = list(attributes.objects.values())
                hits += sum(look == (identity["colour"], identity["texture"]) for look in looks)
                total += len(looks)
            else:
                hits += attributes.background_colour == identity["background_colour"]
                total += 1
    return hits / max(total, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subject", default="sks", help="a bundled subject token")
    parser.add_argument("--seed", type=int, default=0, help="the training seed")
    parser.add_argument("--controls", type=int, default=3, help="random sets of each kind")
    parser.add_argument("--sparsity", type=float, default=0.02)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=30.0)
    parser.add_argument("--images", type=int, default=8, help="images per prompt")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    subject = world.subject(args.subject)
    folder = Path(tempfile.mkdtemp(prefix="cones-prior-damage-"))
    settings = argparse.Namespace(class_images=32, steps=args.steps, lr=args.lr, prior_weight=1.0)
    config = paper_tables.subject_config(
        world.MODEL_DIR, settings, args.seed, subject, folder, sparsity=args.sparsity
    )
    result = train_concept(config)
    cones = result.container

    pipe = world.load_pipeline()
    weights = pipe.unet.state_dict()
    instance, tokens = text_features(pipe, paper_tables.subject_prompt(subject))
    position = tokens.index(f"{subject.token}</w>")
    unrelated, _ = text_features(pipe, UNRELATED)
    every_prompt = np.concatenate([text_features(pipe, p)[0] for p in paper_tables.PRIOR_PROMPTS])
    sizes = entry_sizes(weights, cones, np.sqrt((every_prompt**2).mean(axis=0)))

    sample = paper_tables.Sampler(pipe, args.images)
    priors = {prompt: sample(prompt) for prompt in paper_tables.PRIOR_PROMPTS}
    rows = [("base model", {"leak": leak(priors, subject)})]
    masks = [("Cones", cones)]
    for kind, build in (
        ("uniform random", lambda rng: random_like(cones, int(rng.integers(2**31)))),
        ("column-matched random", lambda rng: column_matched(cones, rng)),
        ("magnitude-matched random", lambda rng: magnitude_matched(cones, sizes, rng)),
    ):
        masks += [(kind, build(np.random.default_rng(seed))) for seed in range(args.controls)]
    for kind, mask in masks:
        with conesrt.apply(pipe, mask):
            measured = paper_tables.score(sample, [subject], priors)
            measured["leak"] = leak({prompt: sample(prompt) for prompt in priors}, subject)
        measured |= kv_change(weights, mask, instance, position, unrelated)
        rows.append((kind, measured))

    print("\nWhere the Cones mask sits:\n" + "\n".join(where(cones, instance, position)))
    columns = ["fidelity", "prior", "prior_attributes", "leak", "dkv_token", "dkv_other", "specific"]
    print(
        f"\n{subject.token} ({subject.name}), seed {args.seed}, {cones.concepts[subject.token].total} "
        f"entries ({args.sparsity:.1%}), {args.images} images per prompt; means over {args.controls} "
        f"random sets of each kind, range in brackets ({date.today()}, {platform.machine()}, "
        f"{args.threads} thread)\n"
    )
    print("| mask | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for kind in dict.fromkeys(kind for kind, _ in rows):
        group = [measured for k, measured in rows if k == kind]
        cells = []
        for column in columns:
            values = [m[column] for m in group if column in m]
            if not values:
                cells.append("")
            elif len(values) == 1:
                cells.append(f"{values[0]:.3f}")
            else:
                cells.append(f"{np.mean(values):.3f} [{min(values):.3f}, {max(values):.3f}]")
        print(f"| {kind} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
