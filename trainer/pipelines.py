"""Loading a local diffusers model folder as its pipeline, for drawing (attention maps, the demo).

>>> pipe = load_pipeline("sd15", device="cuda")
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .config import check_model_folder
from .errors import UsageError


def load_pipeline(model: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32):
    """The folder's own pipeline class (``model_index.json``), on ``device``, progress bars off.

    No safety checker is loaded (none is needed offline, and most local folders
    have none). Raises :class:`UsageError` when the folder does not load.
    """
    from diffusers import DiffusionPipeline

    folder = check_model_folder(model)
    options: dict = {"dtype": dtype}
    index = (
        json.loads((folder / "model_index.json").read_text())
        if (folder / "model_index.json").exists()
        else {}
    )
    if "safety_checker" in index:
        options |= {"safety_checker": None, "requires_safety_checker": False}
    try:
        pipe = DiffusionPipeline.from_pretrained(folder, **options)
    except (OSError, ValueError) as error:
        raise UsageError(f"--model {folder}: cannot load it as a diffusers pipeline ({error})") from None
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)
