"""``refine``: several subjects' concept neurons, fine-tuned jointly (paper sec. 3.3).

The loss is the sum of every subject's implanting loss (its own images, its
own prompts from its container's metadata, and the prior of its class
word); xi is trainable only on the union of the input masks, so the refined
mask is a subset of that union. It runs the same loop as ``cones train``.
Valued inputs (format 1.1) give a valued result: the most precise input
kind unless ``values`` says another, with ξ trained on the refined neurons
(trainer.values) starting from the inputs' values (their product where
several shut one entry: what applying them all gives).

>>> result = trainer.refine(model="sd15", containers=["cat.cones", "lake.cones"],
...                         data={"sks cat": "cat/", "zwx lake": "lake/"}, sparsity=0.02, out="both.cones")
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import conesfmt
from conesrt.fit import check_fits
from conesrt.torch_model import torch_value_reader

from .config import RefineConfig
from .errors import UsageError
from .runs import (
    TrainResult,
    build_container,
    finish,
    prepare_subject,
    search_settings,
    start,
    value_settings,
)
from .search import search
from .values import finest_kind, train_values


def subject_prompts(name: str, concept: conesfmt.Concept) -> tuple[str, str, str]:
    """(instance prompt, prior prompt, class word) of a concept, from its metadata."""
    metadata = concept.metadata
    class_word = metadata.get("class_word", "")
    trigger = metadata.get("trigger", "")
    prompt = metadata.get("prompt") or (
        f"photo of a {trigger} {class_word}" if trigger and class_word else ""
    )
    class_prompt = metadata.get("class_prompt") or (f"photo of a {class_word}" if class_word else "")
    if not prompt or not class_prompt:
        raise UsageError(
            f"concept {name!r} records no prompt/class_prompt (nor trigger and class_word) in its metadata"
        )
    return prompt, class_prompt, class_word


def class_images_for(config: RefineConfig, class_word: str) -> str | Path | None:
    if isinstance(config.class_images, dict):
        return config.class_images.get(class_word)
    return config.class_images


def union_masks(container: conesfmt.Container, device: torch.device) -> dict[str, torch.Tensor]:
    """Per layer, a boolean mask of the entries any concept shuts: where xi may move."""
    masks = {}
    for key, layer in container.layers.items():
        mask = np.zeros(layer.numel, dtype=bool)
        for name in container.concepts:
            mask[container.indices(name, key)] = True
        masks[key] = torch.from_numpy(mask.reshape(layer.shape)).to(device)
    return masks


def union_values(container: conesfmt.Container, neurons: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """ξ per neuron as the input concepts give it: the product of their ξ (1 where a concept is absent)."""
    start = {}
    for key, chosen in neurons.items():
        xi = np.ones(len(chosen), np.float32)
        for name in container.concepts:
            indices = container.indices(name, key)
            if not indices.size or not len(chosen):
                continue
            rank = np.minimum(np.searchsorted(indices, chosen), indices.size - 1)
            present = indices[rank] == chosen
            xi[present] *= container.values(name, key)[rank[present]]
        start[key] = xi
    return start


def refine(config: RefineConfig | None = None, **options: Any) -> TrainResult:
    """Refine several subjects' concept neurons jointly and write one concept.

    Takes a :class:`RefineConfig` or its fields as keywords. Every concept of
    the input containers needs images (``data``); the inputs must share the
    layer table and the base model, and the base model must fit them. The
    result's metadata lists every subject's name, trigger and class word.
    """
    config = config or RefineConfig(**options)
    config.validate()
    started = time.perf_counter()
    paths = [Path(p) for p in config.containers]
    union = conesfmt.merge([conesfmt.load(p) for p in paths], names=[p.name for p in paths])
    missing = [name for name in union.concepts if name not in config.data]
    unknown = [name for name in config.data if name not in union.concepts]
    if missing or unknown:
        problem = f"no --data for {missing}" if missing else f"--data names {unknown}, which no input holds"
        raise UsageError(f"{problem} (the inputs hold {list(union.concepts)}; use --data NAME=DIR)")
    prompts = {name: subject_prompts(name, concept) for name, concept in union.concepts.items()}
    if isinstance(config.class_images, dict):
        words = {word for _, _, word in prompts.values()}
        stray = sorted(set(config.class_images) - words)
        if stray:
            raise UsageError(f"--class-images for {stray}, but the subjects' classes are {sorted(words)}")

    accelerator, base = start(config)
    keys = list(union.layers)
    tensors = base.unet.state_dict(keep_vars=True)
    check_fits(
        ", ".join(p.name for p in paths),
        union,
        {k: tuple(v.shape) for k, v in tensors.items()},
        torch_value_reader(tensors),
        strict=True,
    )
    subjects = [
        prepare_subject(
            base,
            name,
            config.data[name],
            prompt,
            class_prompt,
            config,
            class_images_for(config, class_word),
            accelerator,
        )
        for name, (prompt, class_prompt, class_word) in prompts.items()
    ]
    masks = union_masks(union, accelerator.device)
    found = search(
        base.unet, keys, subjects, base.noise_scheduler, search_settings(config), accelerator, trainable=masks
    )
    kind = config.values or finest_kind([c.value_kind for c in union.concepts.values()])
    trained = None
    if kind != "binary":
        trained = train_values(
            base.unet,
            keys,
            subjects,
            base.noise_scheduler,
            found.neurons,
            value_settings(config, kind),
            accelerator,
            start=union_values(union, found.neurons),
        )
        found.log.values = trained.log

    listed = [
        {
            "name": name,
            "trigger": c.metadata.get("trigger", ""),
            "class_word": c.metadata.get("class_word", ""),
        }
        for name, c in union.concepts.items()
    ]
    settings = config.settings() | {
        "rho": found.log.rho,
        "inputs": [p.name for p in paths],
        "union_entries": int(sum(int(m.sum()) for m in masks.values())),
        "subject_images": {s.name: len(s.instance) for s in subjects},
    }
    if kind != "binary":
        settings |= {
            "values": kind,
            "value_steps": config.resolved_value_steps,
            "value_lr": config.value_lr,
            "input_values": [c.value_kind for c in union.concepts.values()],
        }
    metadata = {
        "method": "refine",
        "subjects": json.dumps(listed),
        "trigger": " ".join(item["trigger"] for item in listed if item["trigger"]),
        "class_word": " ".join(dict.fromkeys(item["class_word"] for item in listed if item["class_word"])),
        "training": json.dumps(settings, sort_keys=True),
        "base_model": base.name,
    }
    name = config.name or " + ".join(union.concepts)
    stored = trained.stored if trained is not None else None
    container = build_container(base, keys, name, found.neurons, metadata, values=stored)
    return finish(config, accelerator, container, found, started)
