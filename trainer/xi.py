"""xi, the variable of Algorithm A2 (eq. A12-A20), and the rules that read concept neurons off it.

Each searched weight is written ``xi * theta`` with ``theta`` frozen and ``xi``
starting at 1 (trainer.search runs the descent); the concept neurons are the
entries with ``xi_K < 1 - rho * tau`` (eq. A20), or the ``k`` entries with
the smallest xi.

We store ``delta = 1 - xi`` rather than xi. The two are the same algorithm,
but ``rho * theta * dL/dtheta`` is about 1e-10 per step for SD-scale weights
while float32 spaces numbers just below 1.0 by 6e-8: a float32 xi would
never move. ``delta`` starts at 0, where float32 resolves such steps exactly.
Then ``M_p = delta / rho`` (eq. A19) and the rule is ``delta > rho * tau``.

>>> search = ConceptNeuronSearch(unet, keys)
>>> prediction = search(noisy_latents, timesteps, text_embeddings)   # the denoiser with xi * theta

Gradient checkpointing (``--gradient-checkpointing``) must recompute each
block with the weights the forward substituted: :func:`enable_gradient_checkpointing`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.utils.checkpoint
from torch.func import functional_call

from .denoisers import Conditioning, adapter_for


class ConceptNeuronSearch(torch.nn.Module):
    """The denoiser (a UNet or transformer) with ``theta * (1 - delta)`` in place of each searched weight.

    Only ``delta`` (float32, one per searched entry) is a parameter; the
    denoiser is held but not registered as a submodule, so it is never
    trained, never cast, and never synchronised between processes. It is
    called as its family calls it (trainer.denoisers.adapter_for). ``trainable`` restricts
    the search to given entries (joint refine, sec. 3.3): elsewhere the
    gradient is zeroed, so delta stays 0 (xi stays 1).
    """

    def __init__(
        self, unet: torch.nn.Module, keys: Sequence[str], trainable: Mapping[str, torch.Tensor] | None = None
    ):
        super().__init__()
        object.__setattr__(self, "unet", unet)
        self.adapter = adapter_for(unet)
        self.keys = list(keys)
        weights = unet.state_dict(keep_vars=True)
        object.__setattr__(self, "thetas", [weights[key] for key in self.keys])  # frozen, not registered
        self.delta = torch.nn.ParameterList(
            torch.nn.Parameter(
                torch.zeros(weights[key].shape, dtype=torch.float32, device=weights[key].device)
            )
            for key in self.keys
        )
        if trainable is not None:
            for key, delta in zip(self.keys, self.delta, strict=True):
                mask = trainable[key].to(delta.device, torch.float32)
                self.register_buffer(f"_trainable_{len(self._buffers)}", mask, persistent=False)
                delta.register_hook(lambda grad, mask=mask: grad * mask)

    def forward(self, noisy: torch.Tensor, timesteps: torch.Tensor, embeddings: Conditioning) -> torch.Tensor:
        # eq. A12: gamma = xi * theta, with xi = 1 - delta; dL/d(delta) = -theta * dL/dgamma (A13).
        replaced = {
            key: theta * (1 - delta)
            for key, theta, delta in zip(self.keys, self.thetas, self.effective_deltas(), strict=True)
        }

        def call(**inputs):
            return functional_call(self.unet, replaced, (), inputs)

        return self.adapter.predict(call, noisy, timesteps, embeddings)

    def effective_deltas(self) -> list[torch.Tensor]:
        """The ``delta`` the forward uses: the parameters themselves (trainer.values reads
        them through four levels per layer for quaternary values)."""
        return list(self.delta)

    @torch.no_grad()
    def project(self) -> None:
        """Keep xi in [0, 1] (delta in [0, 1]): eq. 9 samples theta^k between 0 and theta."""
        for delta in self.delta:
            delta.clamp_(0.0, 1.0)

    def reference(
        self, noisy: torch.Tensor, timesteps: torch.Tensor, embeddings: Conditioning
    ) -> torch.Tensor:
        """The unchanged base model's prediction (xi = 1 everywhere)."""
        return self.adapter.predict(self.unet, noisy, timesteps, embeddings)

    def deltas(self) -> dict[str, np.ndarray]:
        """``1 - xi`` per searched weight, as float32 numpy arrays (flattened)."""
        return {
            key: delta.detach().float().cpu().numpy().reshape(-1)
            for key, delta in zip(self.keys, self.delta, strict=True)
        }


def checkpoint_substituted(block: torch.nn.Module, *args, **kwargs):
    """diffusers' ``gradient_checkpointing_func`` for a denoiser called through ``functional_call``.

    torch's checkpoint runs the block again in the backward pass, after
    :meth:`ConceptNeuronSearch.forward` has put the frozen ``theta`` back:
    the default recompute sees weights that need no gradient, saves other
    tensors than the forward did, and torch refuses ("a different number of
    tensors was saved"). Here the block's weights as the forward sees them
    (``theta * (1 - delta)`` where substituted, the block's own elsewhere)
    are captured at the forward and substituted again for the recompute, so
    the gradient of delta is the one without checkpointing.

    >>> unet.enable_gradient_checkpointing(gradient_checkpointing_func=checkpoint_substituted)
    """
    weights = dict(block.named_parameters())  # during the forward: the substituted tensors

    def run(*inputs, **named):
        return functional_call(block, weights, inputs, named)

    return torch.utils.checkpoint.checkpoint(run, *args, use_reentrant=False, **kwargs)


def enable_gradient_checkpointing(denoiser: torch.nn.Module) -> None:
    """Checkpoint the denoiser's blocks (diffusers' own choice of blocks) so that they recompute
    with the substituted weights (:func:`checkpoint_substituted`).

    >>> enable_gradient_checkpointing(base.denoiser)   # then ConceptNeuronSearch(base.denoiser, keys)
    """
    denoiser.enable_gradient_checkpointing(gradient_checkpointing_func=checkpoint_substituted)


def neurons_by_threshold(deltas: Mapping[str, np.ndarray], rho: float, tau: float) -> dict[str, np.ndarray]:
    """Eq. A20: entries with ``xi < 1 - rho * tau``, i.e. ``delta > rho * tau``."""
    return {key: np.flatnonzero(delta > rho * tau) for key, delta in deltas.items()}


def neurons_by_sparsity(
    deltas: Mapping[str, np.ndarray], fraction: float
) -> tuple[dict[str, np.ndarray], int]:
    """The ``round(fraction * N)`` entries with the smallest xi (largest delta), among those below 1.

    Entries whose xi did not go below 1 are never chosen (shutting them would
    raise the loss, eq. 7), so fewer may be returned; the second value is how
    many were asked for. Ties break by layer order, then index: deterministic.
    """
    wanted = int(round(fraction * sum(delta.size for delta in deltas.values())))
    return largest(deltas, wanted), wanted


def largest(deltas: Mapping[str, np.ndarray], count: int) -> dict[str, np.ndarray]:
    """The ``count`` entries with the largest delta > 0 across layers (ties: layer order, then index)."""
    keys = list(deltas)
    flat = np.concatenate([deltas[key] for key in keys]) if keys else np.zeros(0, np.float32)
    candidates = np.flatnonzero(flat > 0)
    if count <= 0:
        candidates = candidates[:0]
    elif candidates.size > count:
        values = flat[candidates]
        cut = np.partition(values, candidates.size - count)[candidates.size - count]  # the k-th largest
        above = candidates[values > cut]
        ties = candidates[values == cut][: count - above.size]  # lowest positions first
        candidates = np.sort(np.concatenate([above, ties]))
    starts = np.cumsum([0] + [deltas[key].size for key in keys])
    chosen = {}
    for number, key in enumerate(keys):
        lo, hi = np.searchsorted(candidates, [starts[number], starts[number + 1]])
        chosen[key] = candidates[lo:hi] - starts[number]
    return chosen
