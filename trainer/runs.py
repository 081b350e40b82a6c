"""What ``cones train`` and ``cones refine`` share around the search: the model, the data, the output.

A run validates its config, loads the frozen base model (``start``),
prepares each subject once (``prepare_subject``: image latents, prompt
embeddings, prior images), runs trainer.search, and writes the container and
its summary (``finish``).

>>> accelerator, base = start(config)
>>> subject = prepare_subject(base, "sks cat", "cat/", "photo of a sks cat", "photo of a cat", config, None)
"""

from __future__ import annotations

import hashlib
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
from .config import SearchConfig, TrainConfig, image_files
from .data import class_image_folder, encode_images, encode_prompt, ensure_class_images
from .errors import UsageError
from .objective import Subject
from .report import format_report, make_report, peak_memory_bytes
from .search import SearchResult, SearchSettings
from .values import ValueSettings, write_value_csv
from .xi import enable_gradient_checkpointing

WEIGHT_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class TrainResult:
    """What a run produced: the container (also written to ``path``), its summary, the search log."""

    path: Path
    container: conesfmt.Container
    report: dict[str, Any]
    log: Any  # trainer.search.SearchLog

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


def start(config: SearchConfig) -> tuple[Accelerator, BaseModel]:
    """The accelerator and the frozen base model of a run (after ``config.validate()``).

    Settles the resolution: the model's own unless given, with a note when
    the given one is far above it.
    """
    accelerator = make_accelerator(config.device, config.mixed_precision)
    torch.manual_seed(config.seed)
    base = load_base_model(config.model, accelerator.device, WEIGHT_DTYPES[config.mixed_precision])
    native = base.native_resolution
    if config.resolution is None:
        config.resolution = native
    if config.resolution % base.latent_multiple:
        raise UsageError(
            f"--resolution {config.resolution}: {base.family.title} takes multiples of "
            f"{base.latent_multiple} pixels (the VAE's stride times the transformer's 2x2 patches)"
        )
    elif config.resolution > 2 * native and accelerator.is_main_process:
        ratio = config.resolution / native
        print(
            f"cones: note: --resolution {config.resolution} is {ratio:.0f}x the model's own ({native} px): "
            f"every image and step costs about {ratio**2:.0f}x as much",
            file=sys.stderr,
        )
    if config.gradient_checkpointing:
        enable_gradient_checkpointing(base.denoiser)  # recomputes with xi * theta, not theta
    return accelerator, base


def prepare_trained_subject(
    base: BaseModel, config: TrainConfig, accelerator: Accelerator | None = None
) -> Subject:
    """``prepare_subject`` for the one subject a ``TrainConfig`` describes (cones train)."""
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
    instance = encode_prompt(base, instance_prompt, config.resolution)
    subject = Subject(name, bank, instance, prior_weight=config.prior_weight)
    if config.prior_weight > 0 or config.preserve_weight > 0:
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
        subject.prior_embedding = encode_prompt(base, prior_prompt, config.resolution)
        subject.preserve_weight = config.preserve_weight
        subject.empty_embedding = encode_prompt(base, "", config.resolution)
    return subject


def search_settings(config: SearchConfig) -> SearchSettings:
    return SearchSettings(
        steps=config.steps,
        lr=config.lr,
        travel=config.travel,
        tau=config.tau,
        sparsity=config.sparsity,
        batch_size=config.batch_size,
        seed=config.seed,
        progress=config.progress,
    )


def value_settings(config: SearchConfig, kind: str) -> ValueSettings:
    return ValueSettings(
        kind=kind,
        steps=config.resolved_value_steps,
        lr=config.value_lr,
        batch_size=config.batch_size,
        seed=config.seed,
        progress=config.progress,
    )


#: Weight files of a diffusers UNet (or transformer) folder, in the order they are hashed.
UNET_WEIGHT_PATTERNS = ("diffusion_pytorch_model*.safetensors", "diffusion_pytorch_model*.bin")


def unet_digest(folder: Path, part: str = "unet") -> str:
    """SHA-256 of the denoiser's weight files' bytes (``part``: ``unet``, or ``transformer`` for
    SD3 and Flux), in name order: which weights a container was made on.

    The folder's name says little (``model``, ``stable-diffusion-v1-5``); for
    a UNet in one file this is what ``sha256sum unet/diffusion_pytorch_model.safetensors``
    prints. About 2 s per GB; "" when the folder has no weight file.
    """
    digest = hashlib.sha256()
    files = sorted({path for pattern in UNET_WEIGHT_PATTERNS for path in (folder / part).glob(pattern)})
    for path in files:
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 24):
                digest.update(chunk)
    return digest.hexdigest() if files else ""


def build_container(
    base: BaseModel,
    keys: list[str],
    name: str,
    neurons: dict[str, np.ndarray],
    metadata: dict[str, str],
    values: dict[str, Any] | None = None,
) -> conesfmt.Container:
    """One concept over the searched layers, with the base model's fingerprint (spec § 4).

    The container's metadata names the base model (its hub name or folder
    name) and the SHA-256 of its UNet weight files (``base_model_unet_sha256``; for SD3 and Flux
    its transformer's, ``base_model_transformer_sha256``).
    ``values`` (trainer.values: Q4, float16 or float32 per layer, aligned with
    ``neurons``) makes a valued concept (format 1.1, spec § 6.4); None: binary.
    """
    identity = {"base_model": base.name}
    part = base.family.denoiser
    if digest := unet_digest(Path(base.folder), part):
        identity[f"base_model_{part}_sha256"] = digest
    return conesfmt.Container(
        conesrt.layer_table(base.unet, keys),
        {name: conesfmt.Concept(neurons, metadata, values=values)},
        conesrt.fingerprint(base.unet, keys),
        {"created_by": f"cones {conesfmt.__version__}"} | identity,
    )


def finish(
    config: SearchConfig,
    accelerator: Accelerator,
    container: conesfmt.Container,
    found: SearchResult,
    started: float,
) -> TrainResult:
    """Write the container and the loss log (main process), summarise, return the result."""
    out = Path(config.out)
    if accelerator.is_main_process:
        conesfmt.save(container, out)
        found.log.write_csv(out.with_suffix(".loss.csv"))
        if found.log.values:
            write_value_csv(found.log.values, out.with_suffix(".values.csv"))
    accelerator.wait_for_everyone()
    ((name, concept),) = container.concepts.items()
    report = make_report(
        dict(concept.indices),
        {key: layer.numel for key, layer in container.layers.items()},
        out.stat().st_size if out.exists() else len(container.to_bytes()),
        found.log.seconds_per_step,
        time.perf_counter() - started,
        peak_memory_bytes(accelerator.device),
        found.wanted,
        found.log.xi_travel,
    ) | {"rho": found.log.rho, "selection": found.log.selection}
    if found.log.values:
        per_step = ("losses", "step_seconds")
        report["values"] = {k: v for k, v in found.log.values.items() if k not in per_step}
    if config.progress and accelerator.is_main_process:
        print(format_report(report, f"concept {name!r} -> {out}"))
    return TrainResult(out, container, report, found.log)
