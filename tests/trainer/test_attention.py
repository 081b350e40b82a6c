"""`cones attention` (the paper's Fig. 2): per-word cross-attention maps, before and after containers,
on SD 1.x, 2.x and SDXL; SD3 and Flux refused with the reason."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import conesfmt
import conesrt
from conesfmt.cli import main as cones
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


@pytest.mark.parametrize("family", ["sd2", "sdxl"])
def test_maps_on_sd2_and_sdxl(folders, family, tmp_path, capsys) -> None:
    """The same maps on the other UNet families (SDXL: both CLIPs' states as keys), through the
    command line too."""
    pipe = load_pipeline(folders(family))
    with conesrt.apply(pipe, every_key_entry(pipe.unet)):
        shut = attention_maps(pipe, PROMPT, seed=0, steps=2)
    np.testing.assert_allclose(shut.maps, 1 / pipe.tokenizer.model_max_length, rtol=1e-4)
    container = tmp_path / "keys.cones"
    conesfmt.save(every_key_entry(pipe.unet), container)
    out = tmp_path / "attention.png"
    command = ["attention", "--model", str(folders(family)), "--prompt", PROMPT, str(container)]
    assert cones([*command, "--out", str(out), "--steps", "2", "--device", "cpu"]) == 0
    assert out.is_file() and capsys.readouterr().out.count("attention share") == len(shut.tokens)


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_joint_attention_is_refused_with_a_reason(folders, family, tmp_path, capsys) -> None:
    command = ["attention", "--model", str(folders(family)), "--prompt", PROMPT]
    assert cones([*command, "--out", str(tmp_path / "a.png")]) == 1
    error = capsys.readouterr().err
    assert "SD3 and Flux have joint attention" in error and "Traceback" not in error
    assert not (tmp_path / "a.png").exists()
    with pytest.raises(ValueError, match="joint attention"):
        attention_maps(load_pipeline(folders(family)), PROMPT, steps=1)
