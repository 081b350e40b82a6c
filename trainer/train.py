"""``train_concept``: find a subject's concept neurons and write them as a ``.cones`` file.

>>> result = trainer.train_concept(model="sd15", images="my-cat/", token="sks", class_word="cat",
...                                sparsity=0.01, steps=1000, out="cat.cones")
>>> result.report["sparsity"], result.path
(0.01, PosixPath('cat.cones'))
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator

import conesfmt
import conesrt

from .base_model import BaseModel, load_base_model
from .config import SearchConfig, TrainConfig, image_files, select_layers, unet_keys
from .data import class_image_folder, encode_images, encode_prompt, ensure_class_images
from .errors import UsageError
from .loop import DescentLog, run_descent
from .objective import Subject
from .report import format_report, make_report, peak_memory_bytes
from .xi import ConceptNeuronSearch, neurons_by_sparsity, neurons_by_threshold

WEIGHT_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class TrainResult:
    """What a run produced: the container (also written to ``path``), its summary, the loss log."""

    path: Path
    container: conesfmt.Container
    report: dict[str, Any]
    log: DescentLog

    @property
    def neurons(self) -> dict[str, np.ndarray]:
        (concept,) = self.container.concepts.values()
        return dict(concept.indices)


def make_accelerator(device: str, mixed_precision: str) -> Accelerator:
    """``device``: ``auto`` (CUDA when there is one), ``cuda`` or ``cpu``. Under
    ``accelerate launch`` the launcher's settings decide the devices."""
    if device not in ("auto", "cpu", "cuda"):
        raise UsageError(
            f"--device must be auto, cuda or cpu, got {device!r} (pick a GPU with CUDA_VISIBLE_DEVICES)"
        )
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda, but torch sees no CUDA device")
    if mixed_precision == "fp16" and (device == "cpu" or not torch.cuda.is_available()):
        raise UsageError("--mixed-precision fp16 needs a CUDA device (use bf16 on CPU)")
    # accelerate keeps one AcceleratorState per process; a second run in the same process
    # (a notebook, a benchmark) may want another precision. The distributed state is kept.
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(cpu=device == "cpu", mixed_precision=mixed_precision)


def prepare_subject(
    base: BaseModel,
    name: str,
    images: str | Path,
    instance_prompt: str,
    prior_prompt: str,
    config: SearchConfig,
    class_images: str | Path | None,
    accelerator: Accelerator | None = None,
) -> Subject:
    """Encode a subject's images and prompts, and its prior's (generating prior images if needed).

    With several processes, only the main one on each machine generates
    missing prior images; the others wait for it, then read the same folder.
    """
    bank = encode_images(base, image_files(images), config.resolution, config.flip)
    subject = Subject(name, bank, encode_prompt(base, instance_prompt), prior_weight=config.prior_weight)
    if config.prior_weight > 0:
        folder = class_image_folder(base, prior_prompt, config.resolution, config.seed, class_images)
        if accelerator is None or accelerator.is_local_main_process:
            ensure_class_images(
                base,
                folder,
                prior_prompt,
                config.num_class_images,
                config.resolution,
                config.class_image_steps,
                config.seed,
                progress=config.progress,
            )
        if accelerator is not None:
            accelerator.wait_for_everyone()
        paths = image_files(folder)[: config.num_class_images]
        subject.prior = encode_images(base, paths, config.resolution, config.flip)
        subject.prior_embedding = encode_prompt(base, prior_prompt)
    return subject


def config_subject(base: BaseModel, config: TrainConfig, accelerator: Accelerator | None = None) -> Subject:
    """The subject a :class:`TrainConfig` describes: its images, prompts and prior."""
    return prepare_subject(
        base,
        config.concept_name,
        config.images,
        config.instance_prompt,
        config.prior_prompt,
        config,
        config.class_images,
        accelerator,
    )


def select_neurons(
    deltas: dict[str, np.ndarray], config: SearchConfig
) -> tuple[dict[str, np.ndarray], int | None]:
    """The concept neurons by ``config.sparsity``, else by its threshold; and how many were asked."""
    if config.sparsity is not None:
        return neurons_by_sparsity(deltas, config.sparsity)
    # A threshold (eq. A20); with no tau at all (refine only), every entry whose xi fell below 1.
    return neurons_by_threshold(deltas, config.lr, config.tau or 0.0), None


def build_container(
    base: BaseModel,
    keys: list[str],
    name: str,
    neurons: dict[str, np.ndarray],
    metadata: dict[str, str],
) -> conesfmt.Container:
    """One concept over the searched layers, with the base model's fingerprint (spec § 4)."""
    return conesfmt.Container(
        conesrt.layer_table(base.unet, keys),
        {name: conesfmt.Concept(neurons, metadata)},
        conesrt.fingerprint(base.unet, keys),
        {"created_by": f"cones {conesfmt.__version__}", "base_model": base.name},
    )


def start(config: SearchConfig) -> tuple[Accelerator, BaseModel]:
    """The accelerator and the frozen base model of a run (after ``config.validate()``)."""
    accelerator = make_accelerator(config.device, config.mixed_precision)
    torch.manual_seed(config.seed)
    base = load_base_model(config.model, accelerator.device, WEIGHT_DTYPES[config.mixed_precision])
    native = base.native_resolution
    if config.resolution is None:
        config.resolution = native
    elif config.resolution > 2 * native and accelerator.is_main_process:
        ratio = config.resolution / native
        print(
            f"cones: note: --resolution {config.resolution} is {ratio:.0f}x the model's own ({native} px): "
            f"every image and step costs about {ratio**2:.0f}x as much",
            file=sys.stderr,
        )
    if config.gradient_checkpointing:
        base.unet.enable_gradient_checkpointing()
    return accelerator, base


def search_xi(
    config: SearchConfig,
    base: BaseModel,
    keys: list[str],
    subjects: list[Subject],
    accelerator: Accelerator,
    trainable: dict[str, torch.Tensor] | None = None,
) -> tuple[ConceptNeuronSearch, DescentLog]:
    """The K steps of Algorithm A2; the search holds xi (``search.deltas()``), to select from."""
    search = ConceptNeuronSearch(base.unet, keys, trainable)
    log = run_descent(
        search,
        subjects,
        base.noise_scheduler,
        steps=config.steps,
        lr=config.lr,
        batch_size=config.batch_size,
        seed=config.seed,
        accelerator=accelerator,
        progress=config.progress,
    )
    return search, log


def descend(
    config: SearchConfig,
    base: BaseModel,
    keys: list[str],
    subjects: list[Subject],
    accelerator: Accelerator,
    trainable: dict[str, torch.Tensor] | None = None,
) -> tuple[dict[str, np.ndarray], int | None, DescentLog]:
    """Algorithm A2 over ``keys`` for ``subjects``; returns the neurons, how many were asked, the log."""
    search, log = search_xi(config, base, keys, subjects, accelerator, trainable)
    deltas = search.deltas()
    neurons, wanted = select_neurons(deltas, config)
    chosen = np.concatenate([deltas[key][neurons[key]] for key in neurons] or [np.zeros(0)])
    if chosen.size:
        log.xi_travel = {"median": float(np.median(chosen)), "max": float(chosen.max())}
    return neurons, wanted, log


def finish(
    config: SearchConfig,
    accelerator: Accelerator,
    container: conesfmt.Container,
    wanted: int | None,
    log: DescentLog,
    started: float,
) -> TrainResult:
    """Write the container and the loss log (main process), summarise, return the result."""
    out = Path(config.out)
    if accelerator.is_main_process:
        conesfmt.save(container, out)
        log.write_csv(out.with_suffix(".loss.csv"))
    accelerator.wait_for_everyone()
    ((name, concept),) = container.concepts.items()
    report = make_report(
        dict(concept.indices),
        {key: layer.numel for key, layer in container.layers.items()},
        out.stat().st_size if out.exists() else len(container.to_bytes()),
        log.seconds_per_step,
        time.perf_counter() - started,
        peak_memory_bytes(accelerator.device),
        wanted,
        log.xi_travel,
    )
    if config.progress and accelerator.is_main_process:
        print(format_report(report, f"concept {name!r} -> {out}"))
    return TrainResult(out, container, report, log)


def train_concept(config: TrainConfig | None = None, **options: Any) -> TrainResult:
    """Find the concept neurons of one subject (Algorithm A2) and write a container.

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
    subject = config_subject(base, config, accelerator)
    keep_shut = conesrt.apply(base.unet, config.keep_shut) if config.keep_shut else None
    try:
        neurons, wanted, log = descend(config, base, keys, [subject], accelerator)
        settings = config.settings() | {
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
        container = build_container(base, keys, config.concept_name, neurons, metadata)
    finally:
        if keep_shut is not None:
            keep_shut.remove()
    return finish(config, accelerator, container, wanted, log, started)
