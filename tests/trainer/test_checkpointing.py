"""--gradient-checkpointing: the blocks recompute with the substituted weights, so delta's gradient
is the one without checkpointing (SD 1.x's UNet, SD3's and Flux's transformers)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import conesfmt
import conesrt
from conesfmt.cli import main as cones
from tests.tiny_models import (
    T5_WIDTH,
    cross_attention_keys,
    flux_transformer_config,
    sd3_transformer_config,
    tiny_unet,
)
from trainer.xi import ConceptNeuronSearch, enable_gradient_checkpointing


def tiny_denoiser(family: str):
    """A tiny denoiser, its searched keys (Flux: the single-stream blocks too, so that both kinds of
    checkpointed block hold substituted weights) and one batch of its conditioning."""
    generator = torch.Generator().manual_seed(3)
    if family == "sd":
        unet = tiny_unet(seed=0)
        return unet, cross_attention_keys(unet), torch.randn(2, 8, 32, generator=generator)
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

    torch.manual_seed(0)
    if family == "sd3":
        model = SD3Transformer2DModel(**sd3_transformer_config()).eval()
        pooled = sd3_transformer_config()["pooled_projection_dim"]
        keys = conesrt.searched_layers(model)
    else:
        model = FluxTransformer2DModel(**flux_transformer_config()).eval()
        pooled = flux_transformer_config()["pooled_projection_dim"]
        keys = conesrt.searched_layers(model, single_stream=True)
    conditioning = {
        "encoder_hidden_states": torch.randn(2, 6, T5_WIDTH, generator=generator),
        "pooled_projections": torch.randn(2, pooled, generator=generator),
    }
    return model, keys, conditioning


def delta_gradients(search: ConceptNeuronSearch, conditioning) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(4)
    noisy = torch.randn(2, 4, 16, 16, generator=generator)
    for delta in search.delta:
        delta.grad = None
    search(noisy, torch.tensor([10, 700]), conditioning).square().mean().backward()
    return [delta.grad.clone() for delta in search.delta]


@pytest.mark.parametrize("family", ["sd", "sd3", "flux"])
def test_checkpointing_gives_the_same_gradient_of_delta(family: str) -> None:
    denoiser, keys, conditioning = tiny_denoiser(family)
    denoiser.requires_grad_(False)
    search = ConceptNeuronSearch(denoiser, keys)
    with torch.no_grad():  # xi away from 1, so a recompute with theta itself would differ
        for delta in search.delta:
            delta.uniform_(0.0, 0.5, generator=torch.Generator().manual_seed(delta.numel()))
    plain = delta_gradients(search, conditioning)
    enable_gradient_checkpointing(denoiser)
    assert denoiser.is_gradient_checkpointing
    checkpointed = delta_gradients(search, conditioning)
    assert keys and all(gradient.abs().sum() > 0 for gradient in plain)
    for key, expected, got in zip(keys, plain, checkpointed, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-8, msg=key)


def test_cones_train_with_gradient_checkpointing_finds_the_same_neurons(world, tmp_path: Path) -> None:
    """Two steps through the entry point, with and without the flag: the same container."""
    command = ["train", "--model", str(world["model"]), "--images", str(world["red"])]
    command += ["--class-word", "square", "--sparsity", "0.05", "--steps", "2", "--lr", "1e-3"]
    command += ["--resolution", "32", "--num-class-images", "2", "--class-image-steps", "2"]
    command += ["--class-images", str(tmp_path / "prior"), "--batch-size", "1", "--device", "cpu", "--quiet"]
    assert cones([*command, "--out", str(tmp_path / "plain.cones")]) == 0
    assert cones([*command, "--gradient-checkpointing", "--out", str(tmp_path / "checkpointed.cones")]) == 0
    plain = conesfmt.load(tmp_path / "plain.cones")
    checkpointed = conesfmt.load(tmp_path / "checkpointed.cones")
    assert plain.concepts["sks square"].total > 0
    for key in plain.layers:
        assert (plain.indices("sks square", key) == checkpointed.indices("sks square", key)).all(), key
