"""Which model family a diffusers folder holds, read from its ``model_index.json`` (no torch).

``cones train`` and ``cones refine`` take a local diffusers pipeline folder of
one of these families (docs/training-families.md says how each is trained):

| family | pipeline (``_class_name``)  | denoiser      | searched by default (conesrt.families) |
|--------|-----------------------------|---------------|----------------------------------------|
| sd     | StableDiffusionPipeline     | ``unet``      | attn2 to_k / to_v (SD 1.x and 2.x)     |
| sdxl   | StableDiffusionXLPipeline   | ``unet``      | attn2 to_k / to_v                      |
| sd3    | StableDiffusion3Pipeline    | ``transformer`` | joint blocks' add_k_proj / add_v_proj |
| flux   | FluxPipeline                | ``transformer`` | joint blocks' add_k_proj / add_v_proj |

A folder without ``model_index.json`` is read as SD 1.x/2.x, as before
families existed. The model's layers come from conesrt.families, the one
place that knows them.

>>> family_of("sdxl-base").name, family_of("sdxl-base").denoiser
('sdxl', 'unet')
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .errors import UsageError


@dataclass(frozen=True)
class Family:
    """What the trainer needs to know about a family before loading anything."""

    name: str
    title: str  # how messages name it
    pipeline: str  # model_index.json's _class_name
    denoiser: str  # the subfolder (and pipeline attribute) of the denoiser
    parts: tuple[str, ...]  # subfolders every folder of the family has


FAMILIES = {
    family.pipeline: family
    for family in (
        Family(
            "sd",
            "SD",
            "StableDiffusionPipeline",
            "unet",
            ("unet", "vae", "text_encoder", "tokenizer", "scheduler"),
        ),
        Family(
            "sdxl",
            "SDXL",
            "StableDiffusionXLPipeline",
            "unet",
            ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler"),
        ),
        Family(
            "sd3",
            "SD3",
            "StableDiffusion3Pipeline",
            "transformer",
            # T5 (text_encoder_3, tokenizer_3) may be absent: the pipeline puts zeros in its place.
            ("transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler"),
        ),
        Family(
            "flux",
            "Flux",
            "FluxPipeline",
            "transformer",
            ("transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler"),
        ),
    )
}
#: A folder without model_index.json: SD 1.x/2.x, whose parts the trainer always loaded one by one.
DEFAULT = FAMILIES["StableDiffusionPipeline"]


def family_of(folder: str | Path) -> Family:
    """The family of a local diffusers folder, from ``model_index.json``'s ``_class_name``.

    Raises :class:`UsageError` for a pipeline class the trainer does not take
    (the message lists those it does) or an unreadable index.
    """
    index = Path(folder) / "model_index.json"
    if not index.is_file():
        return DEFAULT
    try:
        name = json.loads(index.read_text()).get("_class_name", "")
    except (OSError, ValueError, AttributeError) as error:
        raise UsageError(f"--model {folder}: cannot read model_index.json ({error})") from None
    if name not in FAMILIES:
        raise UsageError(
            f"--model {folder}: a {name or 'pipeline without _class_name'}; cones train takes "
            + ", ".join(FAMILIES)
        )
    return FAMILIES[name]
