"""Run by tests/trainer/test_distributed.py under ``accelerate launch``: a few steps of
xi-descent, then each process saves its delta, so the test can check they agree."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from tests.tiny_models import cross_attention_keys, tiny_unet
from tests.trainer.test_xi import scheduler, settings, toy_subject
from trainer.runs import make_accelerator
from trainer.search import search


def main(out: Path) -> None:
    torch.set_num_threads(1)
    accelerator = make_accelerator("cpu", "no")
    unet = tiny_unet(seed=0).requires_grad_(False)
    found = search(
        unet,
        cross_attention_keys(unet),
        [toy_subject()],
        scheduler(),
        settings(steps=3, lr=None),
        accelerator,
    )
    deltas = np.concatenate(list(found.deltas.values()))
    np.save(out / f"delta-{accelerator.process_index}-of-{accelerator.num_processes}.npy", deltas)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
