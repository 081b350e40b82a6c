"""`cones attention` (the paper's Fig. 2): per-word cross-attention maps, before and after containers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import conesfmt
import conesrt
from trainer.attention import attention_maps, draw
from trainer.pipelines import load_pipeline

CONES = str(Path(sys.executable).parent / "cones")
PROMPT = "a photo of a sks square"


def every_key_entry(unet) -> conesfmt.Container:
    """A container that shuts every entry of every cross-attention key projection."""
    keys = [key for key in unet.state_dict() if ".attn2.to_k." in key]
    table = conesrt.layer_table(unet, keys)
    concept = {key: np.arange(table[key].numel, dtype=np.int64) for key in keys}
    return conesfmt.Container(table, {"keys off": concept}, conesrt.fingerprint(unet, keys))


@pytest.fixture(scope="module")
def pipe(world):
    return load_pipeline(world["model"])


def test_maps_are_attention_probabilities(pipe) -> None:
    maps = attention_maps(pipe, PROMPT, seed=0, steps=2)
    assert maps.tokens[0] == "<|startoftext|>" and maps.tokens[-1] == "<|endoftext|>"
    assert maps.tokens[1] == "a"  # the tiny tokenizer spells words letter by letter
    assert maps.maps.shape[0] == len(maps.tokens)
    # Over all tokens (the padding after EOS included) every pixel's attention sums to one.
    assert maps.maps.sum(0).mean() + maps.padding_share == pytest.approx(1.0, abs=1e-4)
    assert (maps.maps >= 0).all()


def test_keys_shut_spread_attention_evenly(pipe) -> None:
    """With every key zero, q . k = 0 for all tokens: each token gets 1/77 of every pixel's attention."""
    before = attention_maps(pipe, PROMPT, seed=0, steps=2)
    with conesrt.apply(pipe, every_key_entry(pipe.unet)):
        after = attention_maps(pipe, PROMPT, seed=0, steps=2)
    length = pipe.tokenizer.model_max_length
    np.testing.assert_allclose(after.maps, 1 / length, rtol=1e-4)
    assert not np.allclose(before.maps, 1 / length, rtol=1e-2)


def test_draw_has_a_row_per_word(pipe, tmp_path) -> None:
    before = attention_maps(pipe, PROMPT, seed=0, steps=2)
    path = draw(before, before, tmp_path / "a.png", cell=32)
    words = len(before.tokens) - 2  # BOS and EOS are left out
    with Image.open(path) as image:
        assert image.height == 24 + (words + 1) * (32 + 8)


def test_cli_draws_before_and_after(world, pipe, tmp_path) -> None:
    container = tmp_path / "keys.cones"
    conesfmt.save(every_key_entry(pipe.unet), container)
    out = tmp_path / "attention.png"
    command = [CONES, "attention", "--model", str(world["model"]), "--prompt", PROMPT, str(container)]
    command += ["--out", str(out), "--steps", "2"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr
    assert out.is_file()
    assert result.stdout.count("attention share") == len(attention_maps(pipe, PROMPT, steps=1).tokens)
    again = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    assert again.returncode != 0 and "--overwrite" in again.stderr + again.stdout
    assert "Traceback" not in again.stderr
