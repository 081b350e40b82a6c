"""xi-descent's parts: gradients reach only xi, xi stays fp32, the mask rule of eq. (A20)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.tiny_models import cross_attention_keys, tiny_unet
from trainer.data import LatentBank
from trainer.objective import Subject, implanting_loss
from trainer.runs import make_accelerator
from trainer.search import SearchSettings, search
from trainer.xi import ConceptNeuronSearch, neurons_by_sparsity, neurons_by_threshold


def settings(**overrides) -> SearchSettings:
    options = dict(
        steps=2, lr=1e-3, travel=1.0, tau=None, sparsity=0.02, batch_size=2, seed=0, progress=False
    )
    return SearchSettings(**(options | overrides))


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
    seen = []
    original = ConceptNeuronSearch.__init__

    def watched(self, *args, **kwargs):
        original(self, *args, **kwargs)
        for delta in self.delta:
            delta.register_hook(lambda grad: seen.append(grad.dtype) or grad)

    ConceptNeuronSearch.__init__ = watched
    try:
        found = search(
            unet,
            cross_attention_keys(unet),
            [toy_subject()],
            scheduler(),
            settings(),
            make_accelerator("cpu", "bf16"),
        )
    finally:
        ConceptNeuronSearch.__init__ = original
    assert all(delta.dtype == np.float32 for delta in found.deltas.values())
    assert seen and set(seen) == {torch.float32}
    assert any(np.abs(delta).sum() > 0 for delta in found.deltas.values())


def test_trainable_entries_restrict_the_search() -> None:
    unet = tiny_unet(seed=0).requires_grad_(False)
    keys = cross_attention_keys(unet)
    weights = unet.state_dict()
    masks = {
        key: torch.rand(weights[key].shape, generator=torch.Generator().manual_seed(3)) < 0.1 for key in keys
    }
    found = search(
        unet,
        keys,
        [toy_subject()],
        scheduler(),
        settings(steps=3, lr=1e-2),
        make_accelerator("cpu", "no"),
        trainable=masks,
    )
    for key in keys:
        delta = found.deltas[key].reshape(masks[key].shape)
        assert (delta[~masks[key].numpy()] == 0).all()
        assert (delta[masks[key].numpy()] != 0).any()


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


def test_preservation_is_zero_until_xi_moves() -> None:
    """preserve_weight: the class and empty prompts' predictions compared with the unchanged model's."""
    unet = tiny_unet(seed=0).requires_grad_(False)
    search = ConceptNeuronSearch(unet, cross_attention_keys(unet))
    subject = toy_subject()
    subject.preserve_weight = 1.0
    subject.empty_embedding = torch.randn(1, 8, 32, generator=torch.Generator().manual_seed(9))
    _, parts = implanting_loss(
        search, [subject], scheduler(), 2, torch.Generator().manual_seed(3), reference=search.reference
    )
    # the same weights, in a batch of another size: equal up to float32 rounding
    assert parts["toy/preserve"] < 1e-10 and parts["toy/instance"] > 1e-3 and parts["toy/prior"] > 1e-3
    with torch.no_grad():
        search.delta[0].fill_(0.5)  # half of one layer's weights
    loss, parts = implanting_loss(
        search, [subject], scheduler(), 2, torch.Generator().manual_seed(3), reference=search.reference
    )
    assert parts["toy/preserve"] > 1e-6
    loss.backward()
    assert search.delta[0].grad.abs().sum() > 0
    with pytest.raises(ValueError, match="needs the reference model"):
        implanting_loss(search, [subject], scheduler(), 2, torch.Generator().manual_seed(3))
    subject.empty_embedding = None
    with pytest.raises(ValueError, match="has no embedding"):
        implanting_loss(search, [subject], scheduler(), 2, torch.Generator().manual_seed(3), search.reference)


def test_xi_stays_between_0_and_1() -> None:
    """Eq. 9 samples theta^k between 0 and theta: a step far too large shuts entries, never flips them."""
    unet = tiny_unet(seed=0).requires_grad_(False)
    found = search(
        unet,
        cross_attention_keys(unet),
        [toy_subject()],
        scheduler(),
        settings(steps=5, lr=1e3),
        make_accelerator("cpu", "no"),
    )
    deltas = np.concatenate(list(found.deltas.values()))
    assert deltas.min() >= 0 and deltas.max() <= 1 and (deltas == 1).any()


def test_the_calibrated_step_sets_how_far_xi_travels() -> None:
    """rho = travel / (K * the 99th percentile of the first batches' mean |dL/dxi|): the top entries
    move by about ``travel`` in K steps (bench/travel.py shows it on a full-size SD 1.5 UNet)."""
    unet = tiny_unet(seed=0).requires_grad_(False)
    keys = cross_attention_keys(unet)
    rhos = {}
    for travel in (0.25, 0.5):
        found = search(
            unet,
            keys,
            [toy_subject()],
            scheduler(),
            settings(steps=10, lr=None, travel=travel),
            make_accelerator("cpu", "no"),
        )
        rhos[travel] = found.log.rho
        moved = np.concatenate(list(found.deltas.values()))
        top = np.sort(moved)[-int(0.01 * moved.size) :]  # the 1 % that moved most
        assert 0.2 * travel < float(np.median(top)) <= 1.0, (travel, np.median(top))
    assert rhos[0.5] == pytest.approx(2 * rhos[0.25], rel=1e-6)  # the same first batches, twice the travel


def test_without_a_count_the_held_out_loss_chooses_it() -> None:
    unet = tiny_unet(seed=0).requires_grad_(False)
    found = search(
        unet,
        cross_attention_keys(unet),
        [toy_subject()],
        scheduler(),
        settings(steps=5, lr=None, sparsity=None),
        make_accelerator("cpu", "no"),
    )
    record = found.log.selection
    losses = dict((count, loss) for count, loss in record["candidates"])
    assert record["chosen"] == min(losses, key=losses.get) == sum(v.size for v in found.neurons.values())
    assert len(losses) >= 3 and "base" in record


def test_the_bar_counts_steps_and_redraws_rarely_into_a_log(capsys) -> None:
    """Not a terminal (a log, CI): the bar shows its step count and rate, without a line per step."""
    unet = tiny_unet(seed=0).requires_grad_(False)
    keys = cross_attention_keys(unet)
    search(
        unet,
        keys,
        [toy_subject()],
        scheduler(),
        settings(steps=30, progress=True),
        make_accelerator("cpu", "no"),
    )
    lines = [
        line for line in capsys.readouterr().err.replace("\r", "\n").splitlines() if "xi-descent" in line
    ]
    assert 1 <= len(lines) <= 4, lines
    assert "30/30" in lines[-1] and ("step/s" in lines[-1] or "s/step" in lines[-1])
