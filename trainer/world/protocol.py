"""How a search is judged on the small world: a development split to choose on, a test split to report.

Every choice of the method (step, selection, prior terms and their weights)
is made on ``DEV``; every figure a document reports about the method is
measured on ``TEST``, whose sampling seeds, prompts and training seeds no
choice looked at. The test split was fixed in the commit that added this
file, before any tuning of the search of issue 11.

Measures (``score``), for the model a pipeline holds now:

- **fidelity**: for "a photo of a V* class", the judge's probability that an
  image shows the subject's identity (shape present × its colour × its
  texture, or background colour × pattern), averaged over images; with
  several subjects the composite prompt is added.
- **alignment** (context): for a prompt that puts the subject beside another
  object ("a V* class and a blue heart"), the share of images in which that
  object appears in its colour (the subject does not count).
- **prior kept**: for prompts without a rare token, the share of images whose
  judged objects and background equal the base model's image of the same seed.
- **prior attributes**: 1 − the total-variation distance between the judged
  attribute distributions of the base and the edited images, per prompt,
  averaged over attributes and prompts (a prompt's images stay distributed the
  same, even where the chaotic sampler changes single seeds).

>>> TEST.sampling_seeds[:2], len(TEST.prior_prompts)
((1000, 1001), 12)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from trainer.world.scenes import caption, sample_scene
from trainer.world.vocabulary import RARE_TOKENS


def _world_captions(count: int, seed: int, exclude: Sequence[str] = ()) -> tuple[str, ...]:
    """``count`` distinct captions drawn as the world's pretraining captions are (scenes.caption)."""
    rng = np.random.default_rng(seed)
    found: list[str] = []
    while len(found) < count:
        text = caption(sample_scene(rng), rng)
        if text not in found and text not in exclude:
            found.append(text)
    return tuple(found)


@dataclass(frozen=True)
class Split:
    """Seeds and prompts of one split. ``context`` maps a class word to the other object (colour, shape)."""

    name: str
    sampling_seeds: tuple[int, ...]
    prior_prompts: tuple[str, ...]
    training_seeds: tuple[int, ...]
    context: Callable[[object], tuple[str, str, str]]

    def context_prompt(self, subject) -> tuple[str, str, str]:
        """(prompt, colour, shape) of the subject in context."""
        return self.context(subject)


def _test_context(subject) -> tuple[str, str, str]:
    # The paper-tables prompts (bench/paper_tables.edit_prompt), kept so that figures compare.
    if subject.class_word == "background":
        return f"a red heart on a {subject.token} background", "red", "heart"
    colour = "red" if subject.identity["colour"] == "blue" else "blue"
    other = "circle" if subject.class_word == "heart" else "heart"
    return f"a {subject.token} {subject.class_word} and a {colour} {other}", colour, other


def _dev_context(subject) -> tuple[str, str, str]:
    # Objects the base model draws beside a subject in about 0.6-0.9 of the dev images.
    if subject.class_word == "background":
        return f"a green circle on a {subject.token} background", "green", "circle"
    colour, other = ("green", "circle") if subject.class_word != "circle" else ("red", "square")
    return f"a {subject.token} {subject.class_word} and a {colour} {other}", colour, other


_PAPER_TABLES_PRIOR = (
    "a photo of a star",
    "a photo of a heart",
    "a red circle on a blue background",
    "a photo of a background",
)
_DEV_FIXED = (
    "a photo of a ring",
    "a photo of a circle",
    "a photo of a square",
    "a green triangle on a black background",
)
DEV = Split(
    name="dev",
    sampling_seeds=tuple(range(100, 108)),
    prior_prompts=_DEV_FIXED + _world_captions(4, seed=7, exclude=_PAPER_TABLES_PRIOR + _DEV_FIXED),
    training_seeds=(100, 101),
    context=_dev_context,
)
TEST = Split(
    name="test",
    sampling_seeds=tuple(range(1000, 1016)),
    prior_prompts=_PAPER_TABLES_PRIOR
    + _world_captions(8, seed=20261202, exclude=_PAPER_TABLES_PRIOR + DEV.prior_prompts),
    training_seeds=(0, 1, 2),
    context=_test_context,
)
#: Captions no split evaluates on: what a search may use as "the rest of the model" (a text prior).
EVALUATED_PROMPTS = frozenset(DEV.prior_prompts + TEST.prior_prompts)

assert not any(token in prompt.split() for prompt in EVALUATED_PROMPTS for token in RARE_TOKENS)


def sample(pipeline, prompt: str, seeds: Sequence[int]) -> list:
    """One image per seed for ``prompt`` at the world's settings (image ``i`` from ``seeds[i]``)."""
    import torch

    from trainer.world import GUIDANCE_SCALE, IMAGE_SIZE, NUM_INFERENCE_STEPS

    return pipeline(
        [prompt] * len(seeds),
        num_inference_steps=NUM_INFERENCE_STEPS,
        guidance_scale=GUIDANCE_SCALE,
        height=IMAGE_SIZE,
        width=IMAGE_SIZE,
        generator=[torch.Generator().manual_seed(seed) for seed in seeds],
    ).images


def attribute_similarity(old: list, new: list) -> float:
    """1 − the total-variation distance between what two sets of judged images show, over attributes.

    Identical sets give 1, sets with nothing in common 0. Attributes: which
    shapes appear (or nothing), shape:colour, shape:texture, background colour,
    background pattern.
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


def composite_prompt(subjects: Sequence) -> str:
    """ "a sks star and a vnt ring on a zwx background": every subject in one prompt."""
    objects = [s for s in subjects if s.class_word != "background"]
    backgrounds = [s for s in subjects if s.class_word == "background"]
    text = " and ".join(f"a {s.token} {s.class_word}" for s in objects)
    return text + (f" on a {backgrounds[0].token} background" if backgrounds else "")


class Judged:
    """The split's measures for whatever weights ``pipeline`` holds when called.

    The base model's prior images are drawn once, at construction, so build it
    before any edit.

    >>> measure = Judged(pipeline, TEST)            # base model
    >>> with conesrt.apply(pipeline, "sks.cones"):
    ...     measure([sks_star])["fidelity"]
    """

    def __init__(self, pipeline, split: Split):
        from trainer.world.judge import judge

        self.pipeline, self.split = pipeline, split
        self.base = {prompt: judge(self.sample(prompt)) for prompt in split.prior_prompts}

    def sample(self, prompt: str) -> list:
        return sample(self.pipeline, prompt, self.split.sampling_seeds)

    def __call__(self, subjects: Sequence, prior: bool = True) -> dict[str, float]:
        from trainer.world.judge import judge, subject_scores

        fidelity = [float(subject_scores(self.sample(s.prompt), s).mean()) for s in subjects]
        if len(subjects) > 1:
            images = self.sample(composite_prompt(subjects))
            fidelity.append(float(np.mean([subject_scores(images, s).mean() for s in subjects])))
        alignment = []
        for s in subjects:
            prompt, colour, shape = self.split.context_prompt(s)
            alignment.append(
                float(
                    np.mean(
                        [a.objects.get(shape, (None, None))[0] == colour for a in judge(self.sample(prompt))]
                    )
                )
            )
        measures = {"fidelity": float(np.mean(fidelity)), "alignment": float(np.mean(alignment))}
        if not prior:
            return measures
        kept, similar, per_prompt = [], [], {}
        for prompt, old in self.base.items():
            new = judge(self.sample(prompt))
            same = [
                (a.objects, a.background_colour, a.background_pattern)
                == (b.objects, b.background_colour, b.background_pattern)
                for a, b in zip(old, new, strict=True)
            ]
            kept += same
            similar.append(attribute_similarity(old, new))
            per_prompt[prompt] = similar[-1]
        return measures | {
            "prior": float(np.mean(kept)),
            "prior_attributes": float(np.mean(similar)),
            "prior_per_prompt": per_prompt,
        }
