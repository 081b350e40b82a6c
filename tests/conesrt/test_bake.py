"""Baking with numpy only: the output loads in diffusers and equals apply bit for bit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DConditionModel

import conesfmt
import conesrt
from tests.conesrt.helpers import assert_bit_identical, random_container, snapshot
from tests.conesrt.test_apply import noisy
from tests.tiny_models import cross_attention_keys, tiny_unet

WEIGHTS = "diffusion_pytorch_model.safetensors"
CONES = str(Path(sys.executable).parent / "cones")


def saved_unet(folder: Path, dtype: torch.dtype = torch.float32, seed: int = 0) -> Path:
    tiny_unet(seed=seed, dtype=dtype).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_baked_file_equals_apply_bit_for_bit(tmp_path: Path, dtype: torch.dtype) -> None:
    model = saved_unet(tmp_path / "unet", dtype)
    unet = UNet2DConditionModel.from_pretrained(model, dtype=dtype)
    containers = [random_container(unet, seed=s, names=(f"c{s}",)) for s in (1, 2)]
    paths = [conesfmt.save(c, tmp_path / f"c{n}.cones") for n, c in enumerate(containers)]

    baked_folder = tmp_path / "baked"
    baked_folder.mkdir()
    (baked_folder / "config.json").write_bytes((model / "config.json").read_bytes())
    out = conesrt.bake(model, paths, baked_folder / WEIGHTS)
    assert out == baked_folder / WEIGHTS

    with conesrt.apply(unet, paths):
        applied = snapshot(unet)
    baked = UNet2DConditionModel.from_pretrained(baked_folder, dtype=dtype)
    assert_bit_identical(baked, applied)


def test_bake_imports_no_torch(tmp_path: Path) -> None:
    model = saved_unet(tmp_path / "unet")
    container = conesfmt.save(random_container(tiny_unet(seed=0), seed=3), tmp_path / "c.cones")
    code = (
        "import sys, conesrt\n"
        f"conesrt.bake({str(model)!r}, [{str(container)!r}], {str(tmp_path / 'out.safetensors')!r})\n"
        "assert 'torch' not in sys.modules, 'baking imported torch'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out.safetensors").exists()


def test_bake_checks_the_fingerprint_and_writes_nothing_on_failure(tmp_path: Path) -> None:
    model = saved_unet(tmp_path / "unet", seed=1)  # another init than the container's model
    container = random_container(tiny_unet(seed=0), seed=4)
    with pytest.raises(conesrt.FingerprintMismatch, match="other weights"):
        conesrt.bake(model, [container], tmp_path / "out.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["unet"]


def test_bake_from_a_pipeline_folder_in_place(tmp_path: Path) -> None:
    model = saved_unet(tmp_path / "pipe" / "unet")
    unet = UNet2DConditionModel.from_pretrained(model)
    container = random_container(unet, seed=5)
    with conesrt.apply(unet, container):
        applied = snapshot(unet)
    conesrt.bake(tmp_path / "pipe", [container], model / WEIGHTS, overwrite=True)  # atomic replace
    assert_bit_identical(UNet2DConditionModel.from_pretrained(model), applied)


def test_stacking_on_a_baked_file_needs_strict_false(tmp_path: Path) -> None:
    """Documented in the README: bake every subject in one call."""
    model = saved_unet(tmp_path / "unet")
    unet = UNet2DConditionModel.from_pretrained(model)
    first, second = (random_container(unet, seed=s, density=0.3, names=(f"c{s}",)) for s in (6, 7))
    once = conesrt.bake(model, [first, second], tmp_path / "once.safetensors")
    baked = conesrt.bake(model, [first], tmp_path / "first.safetensors")
    with pytest.raises(conesrt.FingerprintMismatch):
        conesrt.bake(baked, [second], tmp_path / "stacked.safetensors")
    with pytest.warns(conesrt.FingerprintWarning):
        stacked = conesrt.bake(baked, [second], tmp_path / "stacked.safetensors", strict=False)
    assert stacked.read_bytes() == once.read_bytes()


def cones(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CONES, *args], capture_output=True, text=True)


def test_cones_bake_and_verify(tmp_path: Path) -> None:
    model = saved_unet(tmp_path / "unet")
    container = conesfmt.save(random_container(tiny_unet(seed=0), seed=6), tmp_path / "cat.cones")
    out = tmp_path / "baked.safetensors"

    result = cones("bake", str(container), "--model", str(model), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"wrote {out}")
    result = cones("bake", str(container), "--model", str(model), "--out", str(out))
    assert result.returncode == 1 and "exists; pass --overwrite" in result.stderr

    result = cones("verify", str(container), "--model", str(model))
    assert result.returncode == 0, result.stderr
    assert "cat.cones fits" in result.stdout and "14 layers" in result.stdout

    other = tmp_path / "other"
    noisy(tiny_unet(seed=0), 0.01).save_pretrained(other)
    result = cones("verify", str(container), "--model", str(other))
    assert result.returncode == 1
    assert result.stderr.startswith("cones verify: error: cat.cones does not fit this model")
    assert "sampled weights differ" in result.stderr and "Traceback" not in result.stderr

    result = cones("verify", str(container), "--model", str(tmp_path / "nowhere"))
    assert result.returncode == 1 and "no such file or folder" in result.stderr


def test_bake_refuses_an_existing_output_unless_overwrite(tmp_path: Path) -> None:
    """As `cones bake` needs --overwrite, conesrt.bake needs overwrite=True."""
    model = saved_unet(tmp_path / "unet")
    container = random_container(tiny_unet(seed=0), seed=8)
    out = tmp_path / "out.safetensors"
    out.write_bytes(b"keep me")
    with pytest.raises(FileExistsError, match=r"out\.safetensors exists; pass overwrite=True to replace it"):
        conesrt.bake(model, [container], out)
    assert out.read_bytes() == b"keep me"
    with pytest.raises(FileExistsError):  # refused before the model or the containers are read
        conesrt.bake(tmp_path / "nowhere", [tmp_path / "missing.cones"], out)
    with pytest.raises(FileExistsError):  # baking in place replaces the source: it needs it too
        conesrt.bake(model, [container], model / WEIGHTS)

    fresh = conesrt.bake(model, [container], tmp_path / "fresh.safetensors")
    assert conesrt.bake(model, [container], out, overwrite=True) == out
    assert out.read_bytes() == fresh.read_bytes()


def one_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def test_cones_bake_and_verify_name_their_own_override(tmp_path: Path) -> None:
    """On the command line the override is --no-strict, never Python's strict=False."""
    other = tmp_path / "other"
    noisy(tiny_unet(seed=0), 0.01).save_pretrained(other)
    container = conesfmt.save(random_container(tiny_unet(seed=0), seed=6), tmp_path / "cat.cones")
    out = tmp_path / "baked.safetensors"

    result = cones("bake", str(container), "--model", str(other), "--out", str(out))
    line = one_line(result.stderr)
    assert result.returncode == 1 and not out.exists()
    assert line.startswith(
        "cones bake: error: cat.cones does not fit this model (made for 'tiny'): other weights"
    )
    assert line.endswith("; pass --no-strict to bake it anyway") and "strict=False" not in line

    result = cones("verify", str(container), "--model", str(other))
    line = one_line(result.stderr)
    assert result.returncode == 1 and line.startswith("cones verify: error: cat.cones does not fit")
    assert line.endswith("; cones bake --no-strict would use it anyway") and "strict=False" not in line

    unet = tiny_unet(seed=0)
    keys = cross_attention_keys(unet)
    table = {**conesrt.layer_table(unet, keys), "extra.attn2.to_k.weight": (4, 4)}
    alien = conesfmt.save(conesfmt.Container(table, {"c": {keys[0]: [1]}}), tmp_path / "alien.cones")
    for command in ("verify", "bake"):
        result = cones(
            command, str(alien), "--model", str(other), *(["--out", str(out)] * (command == "bake"))
        )
        line = one_line(result.stderr)
        assert result.returncode == 1 and "another architecture: extra.attn2.to_k.weight" in line
        assert line.endswith("missing from the model")  # no override exists: none is offered

    unchecked = conesfmt.save(random_container(unet, seed=6, fingerprint=False), tmp_path / "bare.cones")
    result = cones("verify", str(unchecked), "--model", str(other))
    assert one_line(result.stderr) == (
        "cones verify: error: bare.cones has no fingerprint: its layer table fits this model, "
        "but the weights cannot be checked; cones bake --no-strict would use it anyway"
    )


def test_cones_bake_no_strict_warns_in_one_line(tmp_path: Path) -> None:
    other = tmp_path / "other"
    noisy(tiny_unet(seed=0), 0.01).save_pretrained(other)
    container = conesfmt.save(random_container(tiny_unet(seed=0), seed=6), tmp_path / "cat.cones")
    out = tmp_path / "baked.safetensors"

    result = cones("bake", str(container), "--model", str(other), "--out", str(out), "--no-strict")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"wrote {out}")
    line = one_line(
        result.stderr
    )  # a raw Python warning takes two: "file.py:LINE: UserWarning: ..." and the source
    assert line.startswith(
        "cones bake: warning: cat.cones does not fit this model (made for 'tiny'): other weights"
    )
    assert line.endswith("; baked anyway (--no-strict)")
    assert "UserWarning" not in line and ".py:" not in line and "strict=False" not in line

    unchecked = conesfmt.save(
        random_container(tiny_unet(seed=0), seed=6, fingerprint=False), tmp_path / "bare.cones"
    )
    result = cones(
        "bake", str(unchecked), "--model", str(other), "--out", str(out), "--overwrite", "--no-strict"
    )
    assert result.returncode == 0, result.stderr
    assert one_line(result.stderr) == (
        "cones bake: warning: bare.cones has no fingerprint: its layer table fits this model, "
        "but the weights cannot be checked; baked anyway (--no-strict)"
    )


def test_a_command_without_an_override_prints_only_what_differs(tmp_path: Path, monkeypatch, capsys) -> None:
    """As in `cones train --keep-shut`: a fingerprint error that reaches the shared handler
    says what differs and offers no strict=False."""
    import conesrt.cli
    from conesfmt.cli import main

    container = random_container(tiny_unet(seed=0), seed=6)

    def handler(args) -> int:
        conesrt.apply(
            tiny_unet(seed=1), container
        )  # another model, as a subcommand with no --no-strict meets it
        return 0

    monkeypatch.setattr(conesrt.cli, "_verify", handler)
    assert main(["verify", "cat.cones", "--model", str(tmp_path)]) == 1
    line = one_line(capsys.readouterr().err)
    assert line.startswith("cones verify: error: container #0 does not fit this model (made for 'tiny')")
    assert "sampled weights differ" in line and "strict" not in line
