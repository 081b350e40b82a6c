"""Run by tests/trainer/test_distributed.py under ``accelerate launch``: a few steps of
xi-descent, then each process saves its delta, so the test can check they agree."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from tests.tiny_models import cross_attention_keys, tiny_unet
from tests.trainer.test_xi import scheduler, toy_subject
from trainer.loop import run_descent
from trainer.train import make_accelerator
from trainer.xi import ConceptNeuronSearch


def main(out: Path) -> None:
    torch.set_num_threads(1)
    accelerator = make_accelerator("cpu", "no")
    unet = tiny_unet(seed=0).requires_grad_(False)
    search = ConceptNeuronSearch(unet, cross_attention_keys(unet))
    run_descent(
        search,
        [toy_subject()],
        scheduler(),
        steps=3,
        lr=1e-2,
        batch_size=2,
        seed=0,
        accelerator=accelerator,
        progress=False,
    )
    deltas = np.concatenate(list(search.deltas().values()))
    np.save(out / f"delta-{accelerator.process_index}-of-{accelerator.num_processes}.npy", deltas)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
