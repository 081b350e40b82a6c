"""Loading a local diffusers model folder as its pipeline, for drawing (attention maps, the demo).

>>> pipe = load_pipeline("sd15", device="cuda")
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .config import check_model_folder
from .errors import UsageError

#: Components a pipeline may list that drawing and training never need (nothing is checked offline).
UNUSED_COMPONENTS = ("safety_checker", "feature_extractor", "image_encoder")


def components_left_out(folder: Path) -> dict[str, None]:
    """``from_pretrained`` keywords for the components not to load, each as ``None``.

    Those ``model_index.json`` lists as null (``[null, null]``: SD3 without T5
    lists ``text_encoder_3`` and ``tokenizer_3``, many SD folders list
    ``safety_checker``), which diffusers refuses to leave out by itself for a
    component its pipeline requires; and those in :data:`UNUSED_COMPONENTS`.
    A folder without ``model_index.json`` gives none.

    >>> components_left_out(Path("sd3-without-t5"))
    {'text_encoder_3': None, 'tokenizer_3': None}
    """
    index = folder / "model_index.json"
    listed = json.loads(index.read_text()) if index.is_file() else {}
    return {
        name: None
        for name, entry in listed.items()
        if (isinstance(entry, list) and entry[:1] == [None]) or name in UNUSED_COMPONENTS
    }


def load_pipeline(model: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32):
    """The folder's own pipeline class (``model_index.json``), on ``device``, progress bars off.

    No safety checker is loaded (none is needed offline, and most local folders
    have none), nor any component the folder lists as null
    (:func:`components_left_out`). Raises :class:`UsageError` when the folder
    does not load.
    """
    from diffusers import DiffusionPipeline

    folder = check_model_folder(model)
    options: dict = {"dtype": dtype} | components_left_out(folder)
    if "safety_checker" in options:
        options["requires_safety_checker"] = False
    try:
        pipe = DiffusionPipeline.from_pretrained(folder, **options)
    except (OSError, ValueError) as error:
        raise UsageError(f"--model {folder}: cannot load it as a diffusers pipeline ({error})") from None
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)
