"""Where each concept's trigger sits in a prompt: token indices for Attend-and-Excite (docs/families.md).

Several subjects in one image (the paper's appendix C.5, Fig. A14): with the
containers applied, diffusers' ``StableDiffusionAttendAndExcitePipeline``
strengthens the cross-attention of the tokens it is given at each step, so
that no subject is left out. Those tokens are the concepts' triggers, which
every container records (``trigger`` in a concept's metadata, spec § 6.2;
``cones train --token``, and ``cones refine`` joins its subjects' triggers).

>>> prompt = "a photo of a sks cat by a zwx lake"
>>> with conesrt.apply(pipe, ["cat.cones", "lake.cones"]):
...     indices = conesrt.token_indices(pipe.tokenizer, prompt, ["cat.cones", "lake.cones"])
...     image = pipe(prompt, token_indices=indices).images[0]
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from .sources import ContainerLike, load_containers, select_concepts


def token_indices(
    tokenizer: Any,
    prompt: str,
    containers: ContainerLike | Sequence[ContainerLike],
    *,
    concepts: Iterable[str] | None = None,
) -> list[int]:
    """Positions in ``tokenizer(prompt).input_ids`` of every token of each concept's trigger.

    ``tokenizer`` is the pipeline's (``pipe.tokenizer``, a transformers
    tokenizer); positions count the start token, as Attend-and-Excite's
    ``token_indices`` and ``pipe.get_indices(prompt)`` do. ``containers``
    and ``concepts`` are as for :func:`conesrt.apply`. A trigger of several
    words (``"sks zwx"`` from ``cones refine``) gives each word's tokens; a
    word that splits into several tokens gives all of them, and each
    occurrence in the prompt counts. Returns sorted, distinct positions.
    Raises ``ValueError`` for a concept without a trigger, or a trigger word
    the prompt does not contain (naming both).

    >>> indices = conesrt.token_indices(pipe.tokenizer, prompt, ["cat.cones", "lake.cones"])
    >>> [pipe.get_indices(prompt)[i] for i in indices]  # the tokens Attend-and-Excite will excite
    """
    ids = list(tokenizer(prompt).input_ids)
    found: set[int] = set()
    for source, container, names in select_concepts(load_containers(containers), concepts):
        for name in names:
            trigger = container.concepts[name].trigger
            if not trigger.strip():
                raise ValueError(
                    f"concept {name!r} of {source} records no trigger; give Attend-and-Excite its token "
                    f"indices yourself (pipe.get_indices(prompt) lists them)"
                )
            for word in trigger.split():
                word_ids = list(tokenizer(word, add_special_tokens=False).input_ids)
                hits = _occurrences(ids, word_ids)
                if not hits:
                    raise ValueError(
                        f"the prompt {prompt!r} does not contain {word!r}, the trigger of concept {name!r} "
                        f"of {source}"
                    )
                found.update(start + offset for start in hits for offset in range(len(word_ids)))
    return sorted(found)


def _occurrences(ids: list[int], word: list[int]) -> list[int]:
    """Start positions of ``word`` as a run of consecutive ids in ``ids``."""
    if not word:
        return []
    return [start for start in range(len(ids) - len(word) + 1) if ids[start : start + len(word)] == word]
