"""``train_concept``: find a subject's concept neurons and write them as a ``.cones`` file.

>>> result = trainer.train_concept(model="sd15", images="my-cat/", token="sks", class_word="cat",
...                                out="cat.cones")
>>> result.report["sparsity"], result.path
(0.005, PosixPath('cat.cones'))
"""

from __future__ import annotations

import json
import time
from typing import Any

import conesrt

from .config import TrainConfig, select_layers, unet_keys
from .runs import (
    TrainResult,
    build_container,
    finish,
    prepare_trained_subject,
    search_settings,
    start,
    value_settings,
)
from .search import search
from .values import train_values


def train_concept(config: TrainConfig | None = None, **options: Any) -> TrainResult:
    """Find the concept neurons of one subject (Algorithm A2, trainer.search) and write a container.

    With ``values`` other than ``binary``, ξ is then trained on the neurons
    found (trainer.values) and stored with them (format 1.1).

    Takes a :class:`TrainConfig` or its fields as keywords. Raises
    :class:`UsageError` on bad input before any heavy work. Writes
    ``config.out`` atomically, and the loss per step beside it
    (``NAME.loss.csv``); prints a summary unless ``progress=False``.
    """
    config = config or TrainConfig(**options)
    config.validate()
    started = time.perf_counter()
    keys = select_layers(unet_keys(config.model), config.layers)
    accelerator, base = start(config)
    # Prior images come from the base model itself, before --keep-shut changes it.
    subject = prepare_trained_subject(base, config, accelerator)
    keep_shut = conesrt.apply(base.unet, config.keep_shut) if config.keep_shut else None
    valued = config.values not in (None, "binary")
    trained = None
    try:
        found = search(base.unet, keys, [subject], base.noise_scheduler, search_settings(config), accelerator)
        if valued:
            trained = train_values(
                base.unet,
                keys,
                [subject],
                base.noise_scheduler,
                found.neurons,
                value_settings(config, config.values),
                accelerator,
            )
            found.log.values = trained.log
    finally:
        if keep_shut is not None:
            keep_shut.remove()
    settings = config.settings() | {
        "rho": found.log.rho,
        "subject_images": len(subject.instance),
        "prior_images": len(subject.prior or ()),
    }
    metadata = {
        "trigger": config.token,
        "class_word": config.class_word,
        "prompt": config.instance_prompt,
        "class_prompt": config.prior_prompt,
        "method": "xi-descent",
        "training": json.dumps(settings, sort_keys=True),
        "base_model": base.name,
    }
    stored = trained.stored if trained is not None else None
    container = build_container(base, keys, config.concept_name, found.neurons, metadata, values=stored)
    return finish(config, accelerator, container, found, started)
