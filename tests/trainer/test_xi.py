"""xi-descent's parts: gradients reach only xi, xi stays fp32, the mask rule of eq. (A20)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.tiny_models import cross_attention_keys, tiny_unet
from trainer.data import LatentBank
from trainer.loop import run_descent
from trainer.objective import Subject, implanting_loss
from trainer.train import make_accelerator
from trainer.xi import ConceptNeuronSearch, neurons_by_sparsity, neurons_by_threshold


def toy_subject(dtype=torch.float32) -> Subject:
    generator = torch.Generator().manual_seed(0)
    bank = LatentBank(torch.randn(3, 4, 16, 16, generator=generator), torch.full((3, 4, 16, 16), 0.1))
    instance, prior = torch.randn(2, 1, 8, 32, generator=generator)
    return Subject("toy", bank, instance, bank, prior, 1.0)


def scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)


def test_gradient_reaches_only_xi() -> None:
    unet = tiny_unet(seed=0).requires_grad_(False)
    search = ConceptNeuronSearch(unet, cross_attention_keys(unet))
    loss, _ = implanting_loss(search, [toy_subject()], scheduler(), 2, torch.Generator().manual_seed(1))
    loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in unet.parameters())
    assert [name for name, p in search.named_parameters() if p.requires_grad] == [
        f"delta.{n}" for n in range(len(search.keys))
    ]
    assert all(delta.grad is not None and delta.grad.abs().sum() > 0 for delta in search.delta)


def test_one_step_is_plain_gradient_descent_on_xi() -> None:
    """delta_1 = rho * theta * dL/dgamma at theta (eq. A15-A16), exactly what SGD(lr=rho) gives."""
    unet = tiny_unet(seed=0).requires_grad_(False)
    keys = cross_attention_keys(unet)
    rho = 1e-3
    # dL/dgamma at gamma = theta, by autograd on the weights themselves
    for key in keys:
        unet.state_dict(keep_vars=True)[key].requires_grad_(True)

    def model(noisy, t, embeddings):
        return unet(noisy, t, encoder_hidden_states=embeddings).sample

    loss, _ = implanting_loss(model, [toy_subject()], scheduler(), 2, torch.Generator().manual_seed(5))
    loss.backward()
    expected = {
        key: rho * unet.state_dict(keep_vars=True)[key] * unet.state_dict(keep_vars=True)[key].grad
        for key in keys
    }
    unet.requires_grad_(False)
    search = ConceptNeuronSearch(unet, keys)
    optimizer = torch.optim.SGD(search.parameters(), lr=rho)
    loss, _ = implanting_loss(search, [toy_subject()], scheduler(), 2, torch.Generator().manual_seed(5))
    loss.backward()
    optimizer.step()
    for key, delta in zip(keys, search.delta, strict=True):
        torch.testing.assert_close(delta.detach(), expected[key].detach(), rtol=1e-4, atol=1e-12)


def test_xi_stays_fp32_under_autocast() -> None:
    unet = tiny_unet(seed=0, dtype=torch.bfloat16).requires_grad_(False)
    search = ConceptNeuronSearch(unet, cross_attention_keys(unet))
    seen = []
    for delta in search.delta:
        delta.register_hook(lambda grad: seen.append(grad.dtype) or grad)
    accelerator = make_accelerator("cpu", "bf16")
    run_descent(
        search,
        [toy_subject()],
        scheduler(),
        steps=2,
        lr=1e-3,
        batch_size=2,
        seed=0,
        accelerator=accelerator,
        progress=False,
    )
    assert all(delta.dtype == torch.float32 for delta in search.delta)
    assert seen and set(seen) == {torch.float32}
    assert any(delta.abs().sum() > 0 for delta in search.delta)


def test_trainable_entries_restrict_the_search() -> None:
    unet = tiny_unet(seed=0).requires_grad_(False)
    keys = cross_attention_keys(unet)
    weights = unet.state_dict()
    masks = {
        key: torch.rand(weights[key].shape, generator=torch.Generator().manual_seed(3)) < 0.1 for key in keys
    }
    search = ConceptNeuronSearch(unet, keys, trainable=masks)
    run_descent(
        search,
        [toy_subject()],
        scheduler(),
        steps=3,
        lr=1e-2,
        batch_size=2,
        seed=0,
        accelerator=make_accelerator("cpu", "no"),
        progress=False,
    )
    for key, delta in zip(keys, search.delta, strict=True):
        assert (delta[~masks[key]] == 0).all()
        assert (delta[masks[key]] != 0).any()


def test_mask_rule_of_eq_A20_by_hand() -> None:
    # xi = 1 - delta: [1, 0.9999, 0.9997, 1.0001, 0.9995]; rho = 0.1, tau = 0.002 -> 1 - rho*tau = 0.9998
    deltas = {"w": np.array([0.0, 1e-4, 3e-4, -1e-4, 5e-4], np.float32)}
    chosen = neurons_by_threshold(deltas, rho=0.1, tau=0.002)
    assert chosen["w"].tolist() == [2, 4]  # xi < 0.9998 exactly for entries 2 and 4
    assert neurons_by_threshold(deltas, rho=0.1, tau=0.0009)["w"].tolist() == [1, 2, 4]


def test_sparsity_takes_the_smallest_xi_across_layers() -> None:
    deltas = {"a": np.array([0.5, 0.0, 0.2], np.float32), "b": np.array([0.2, 0.9, -0.3, 0.1], np.float32)}
    chosen, wanted = neurons_by_sparsity(deltas, fraction=3 / 7)
    assert wanted == 3
    # largest deltas 0.9 (b1), 0.5 (a0), then a tie at 0.2 (a2, b0): the first in layer order wins
    assert chosen["a"].tolist() == [0, 2] and chosen["b"].tolist() == [1]
    # never an entry whose xi did not go below 1, even if that leaves fewer than asked
    chosen, wanted = neurons_by_sparsity(deltas, fraction=6 / 7)
    assert wanted == 6 and sum(v.size for v in chosen.values()) == 5
    assert 2 not in chosen["b"] and 1 not in chosen["a"]
    # a fraction that rounds to no entry at all chooses none
    chosen, wanted = neurons_by_sparsity(deltas, fraction=0.01)
    assert wanted == 0 and all(v.size == 0 for v in chosen.values())


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
def test_target_follows_the_prediction_type(kind: str) -> None:
    from diffusers import DDPMScheduler

    from trainer.objective import training_target

    sched = DDPMScheduler(prediction_type=kind)
    latents, noise, t = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8), torch.tensor([10, 500])
    target = training_target(sched, latents, noise, t)
    expected = noise if kind == "epsilon" else sched.get_velocity(latents, noise, t)
    assert torch.equal(target, expected)


def test_a_prior_against_the_base_model_is_zero_until_xi_moves() -> None:
    """prior_target='base': the prior term compares with the unchanged model's prediction."""
    unet = tiny_unet(seed=0).requires_grad_(False)
    search = ConceptNeuronSearch(unet, cross_attention_keys(unet))
    subject = toy_subject()
    subject.prior_target = "base"
    _, parts = implanting_loss(
        search, [subject], scheduler(), 2, torch.Generator().manual_seed(3), reference=search.reference
    )
    # the same weights, in a batch of another size: equal up to float32 rounding
    assert parts["toy/prior"] < 1e-10 and parts["toy/instance"] > 1e-3
    with torch.no_grad():
        search.delta[0].fill_(0.5)  # half of one layer's weights
    loss, parts = implanting_loss(
        search, [subject], scheduler(), 2, torch.Generator().manual_seed(3), reference=search.reference
    )
    assert parts["toy/prior"] > 1e-6
    loss.backward()
    assert search.delta[0].grad.abs().sum() > 0
    with pytest.raises(ValueError, match="needs the reference model"):
        implanting_loss(search, [subject], scheduler(), 2, torch.Generator().manual_seed(3))
    subject.prior_target = "nois"
    with pytest.raises(ValueError, match="'noise' or 'base'"):
        implanting_loss(search, [subject], scheduler(), 2, torch.Generator().manual_seed(3))
