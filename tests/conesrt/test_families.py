"""Issue 14 at runtime: the fingerprint trap of the README one-liner, fp8 weights, and
``apply`` / ``remove`` / ``bake`` on the denoisers of SD 2.x, SDXL, SD3 and Flux pipelines."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import conesfmt
import conesrt
from tests.conesrt.helpers import assert_bit_identical, bits, snapshot
from tests.tiny_models import (
    cross_attention_keys,
    tiny_flux_pipeline,
    tiny_sd2_pipeline,
    tiny_sd3_pipeline,
    tiny_sdxl_pipeline,
    tiny_unet,
)


def readme_container(model: torch.nn.Module, keys: list[str], seed: int, density: float = 0.1):
    """A container built as the README's format example builds it: ``layers={key: shape}``, shapes
    alone, with ``fingerprint=conesrt.fingerprint(model, keys)``."""
    rng = np.random.default_rng(seed)
    state = model.state_dict()
    return conesfmt.Container(
        layers={key: tuple(state[key].shape) for key in keys},
        concepts={
            "cat": conesfmt.Concept(
                {key: np.flatnonzero(rng.random(state[key].numel()) < density) for key in keys},
                trigger="sks",
                class_word="cat",
            )
        },
        fingerprint=conesrt.fingerprint(model, keys),
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_a_container_built_as_the_readme_shows_fits_the_weights_it_was_made_on(tmp_path, dtype) -> None:
    unet = tiny_unet(dtype=dtype)
    keys = cross_attention_keys(unet)
    container = readme_container(unet, keys, seed=1)
    assert {container.layers[key].dtype for key in keys} == {conesrt.layer_table(unet, keys)[keys[0]].dtype}
    path = conesfmt.save(container, tmp_path / "cat.cones")
    base = snapshot(unet)
    for source in (container, path):  # in memory and through a file
        with conesrt.apply(unet, [source]):
            shut = unet.state_dict()
            for key in keys:
                flat = shut[key].reshape(-1)
                assert bool((flat[torch.from_numpy(container.indices("cat", key))] == 0).all())
        assert_bit_identical(unet, base)


def test_a_layer_table_dtype_that_disagrees_with_the_fingerprint_is_refused() -> None:
    unet = tiny_unet(dtype=torch.float16)
    keys = cross_attention_keys(unet)[:1]
    state = unet.state_dict()
    with pytest.raises(conesfmt.FormatError, match="layer_table"):
        conesfmt.Container(
            layers={keys[0]: conesfmt.Layer(tuple(state[keys[0]].shape), "F32")},
            concepts={"cat": {keys[0]: [1, 2]}},
            fingerprint=conesrt.fingerprint(unet, keys),
        )


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_fp8_weights_apply_and_remove_bit_exact(tmp_path, dtype) -> None:
    unet = tiny_unet().to(dtype)
    keys = cross_attention_keys(unet)
    container = readme_container(unet, keys, seed=2)
    base = snapshot(unet)
    with conesrt.apply(unet, [container]):
        state = unet.state_dict()
        for key in keys:
            flat = bits(state[key]).reshape(-1)
            shut = torch.from_numpy(container.indices("cat", key))
            assert bool((flat[shut] == 0).all())
            keep = torch.ones(flat.numel(), dtype=torch.bool)
            keep[shut] = False
            assert torch.equal(flat[keep], bits(base[key]).reshape(-1)[keep])
    assert_bit_identical(unet, base)

    # bake reads fp8 fingerprints without torch, and writes what apply makes.
    from safetensors.torch import save_file

    save_file({key: value.contiguous() for key, value in base.items()}, tmp_path / "unet.safetensors")
    written = conesrt.bake(tmp_path / "unet.safetensors", [container], tmp_path / "baked.safetensors")
    baked = load_file(written)
    with conesrt.apply(unet, [container]):
        for key, value in unet.state_dict().items():
            assert torch.equal(bits(baked[key]), bits(value)), key


# --------------------------------------------------------------------------- families


def _sd2(folder):
    pipe = tiny_sd2_pipeline(folder)
    return pipe, pipe.unet, dict(height=32, width=32)


def _sdxl(folder):
    pipe = tiny_sdxl_pipeline(folder)
    return pipe, pipe.unet, dict(height=32, width=32)


def _sd3(folder):
    pipe = tiny_sd3_pipeline(folder)
    return pipe, pipe.transformer, dict(height=32, width=32, max_sequence_length=32)


def _flux(folder):
    pipe = tiny_flux_pipeline(folder)
    return pipe, pipe.transformer, dict(height=32, width=32, max_sequence_length=32)


FAMILIES = {"sd2": _sd2, "sdxl": _sdxl, "sd3": _sd3, "flux": _flux}
UNET_KV = (".attn2.to_k.weight", ".attn2.to_v.weight")
JOINT_KV = (".attn.add_k_proj.weight", ".attn.add_v_proj.weight")
SEARCHED = {"sd2": UNET_KV, "sdxl": UNET_KV, "sd3": JOINT_KV, "flux": JOINT_KV}


def _generate(pipe, kwargs) -> np.ndarray:
    return pipe(
        "photo of a sks cat",
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(7),
        output_type="np",
        **kwargs,
    ).images[0]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_apply_remove_and_bake_on_each_family(tmp_path, family) -> None:
    pipe, denoiser, kwargs = FAMILIES[family](tmp_path)
    keys = conesrt.searched_layers(pipe)
    assert keys and all(key.endswith(SEARCHED[family]) for key in keys)
    assert sum(key.endswith(SEARCHED[family][1]) for key in keys) == len(keys) // 2
    container = readme_container(denoiser, keys, seed=3, density=0.3)
    path = conesfmt.save(container, tmp_path / "cat.cones")
    base = snapshot(denoiser)

    first = _generate(pipe, kwargs)
    with conesrt.apply(pipe, [path]):
        applied = snapshot(denoiser)
        shut = _generate(pipe, kwargs)
    again = _generate(pipe, kwargs)
    assert not np.allclose(first, shut, atol=1e-4)
    assert np.array_equal(first, again)
    assert_bit_identical(denoiser, base)

    # bake on the saved pipeline folder equals apply, entry for entry.
    baked = conesrt.bake(tmp_path / "pipeline", [path], tmp_path / "baked.safetensors")
    for key, value in load_file(baked).items():
        assert torch.equal(bits(value), bits(applied[key])), key
