"""Shut only in the identifier's keys and values: does a set then draw the subject in context?

    OMP_NUM_THREADS=1 python bench/gated_sets.py --model v2 --subject vnt --split dev \
        --gradient-seed 100 --json docs/gated-sets-vnt-dev-s100.json        # about 15 min, one core

*Hypothesis* (docs/method-notes.md, Finding 16). Every shut set so far changed
the keys and values of every token of every prompt, and its damage to the
other prompts followed the size of that change whichever ranking chose it
(Finding 15; Finding 10: at ≤ 1 % no K/V weight edit, shut or with free
values, draws there without that damage). A shut set applied only where the
identifier is — ``K = (θ − M ⊙ θ) x`` at the identifier's position (and the
class word after it), ``θ x`` at every other position — leaves every prompt
without the identifier exactly as the base model draws it, by construction.
What is left to measure is whether it still draws the subject, and in
context ("a V* class and a blue heart" keeps the heart): within a row the
identifier's change is a subset sum over its entries, which for a few
percent of the entries can already reach far.

*Rankings* (first order at δ = 0, mean of the same draws): the instance
loss's gradient summed over all tokens (``cones train``'s ranking with ρ → 0
and no prior term), over the identifier's position, and over the identifier
and class word (bench/token_paths.py's paths). *Controls*: the all-tokens set
shut as today (every token), the same set gated, and a random gated set of
the same size. The gated rows must keep every prior prompt's images
identical (prior kept 1.000): that checks the gate itself.

Per set: the protocol's measures (trainer/world/protocol.py), the held-out
subject loss (fixed draws, per timestep quarter, gated like the row).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import time
from datetime import date
from pathlib import Path

os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from oracle import kv_keys, world_bench  # noqa: E402
from preserving_sets import random_set  # noqa: E402
from shut_sets import container, instance_draw, subject_inputs, subject_loss  # noqa: E402
from token_paths import gradients_by_path, token_groups  # noqa: E402

import conesrt  # noqa: E402
from trainer.world import protocol  # noqa: E402
from trainer.xi import largest  # noqa: E402

GATES = ("identifier", "identifier + class word")


def indicator(weights: dict[str, torch.Tensor], chosen: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """A set of entries (flat indices per key) as δ = 1 on them, 0 elsewhere; keys without any left out."""
    amounts = {}
    for key, indices in chosen.items():
        if len(indices):
            mask = torch.zeros(weights[key].numel())
            mask[torch.as_tensor(indices, dtype=torch.long)] = 1
            amounts[key] = mask.view_as(weights[key])
    return amounts


class TokenGate:
    """Within the context, ``amounts`` (δ per entry, one tensor per searched key) shut the K/V weights for
    the gated tokens only: there the projection computes ``(θ − δ ⊙ θ) x``, elsewhere ``θ x``.

    Which positions are gated is read from the token ids the text encoder saw:
    the identifier's position (``"identifier"``), or it and the next one
    (``"identifier + class word"``). The UNet's text conditioning is matched,
    sample by sample, to the text encoder outputs recorded so far (an
    embedding computed elsewhere is declared with :meth:`declare`); a sample
    matching none, the unconditional one included, is not gated. Prompts
    without the identifier therefore run exactly the base model's arithmetic.
    ``amounts`` may require grad (the search's relaxation, :func:`gated_descent`): the shut part
    ``δ ⊙ θ`` is formed afresh at each UNet call that gates anything.

    >>> with TokenGate(pipe, indicator(weights, chosen), "vnt", "identifier + class word"):
    ...     images = protocol.sample(pipe, "a vnt ring and a blue heart", seeds)
    """

    def __init__(self, pipe, amounts: dict[str, torch.Tensor], identifier: str, gate: str):
        assert gate in GATES, gate
        self.pipe, self.gate, self.amounts = pipe, gate, amounts
        ids = pipe.tokenizer(identifier, add_special_tokens=False).input_ids
        assert len(ids) == 1, f"{identifier!r} is {len(ids)} tokens"
        self.identifier = ids[0]
        weights = pipe.unet.state_dict()
        self.thetas = {key: weights[key] for key in amounts}
        self.seen: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.current: torch.Tensor | None = None  # (samples, positions) of the UNet call under way
        self.shut: dict[str, torch.Tensor] = {}
        self.handles = []

    def positions(self, ids: torch.Tensor) -> torch.Tensor:
        gated = ids == self.identifier
        if self.gate == "identifier + class word":
            gated = gated | torch.nn.functional.pad(gated, (1, 0))[:, :-1]
        return gated

    def declare(self, embedding: torch.Tensor, prompt: str) -> None:
        ids = self.pipe.tokenizer(
            prompt, padding="max_length", max_length=embedding.shape[1], return_tensors="pt"
        ).input_ids
        self.seen.append((embedding.detach(), self.positions(ids)))

    def _record(self, module, args, kwargs, output):
        ids = args[0] if args else kwargs["input_ids"]
        self.seen = self.seen[-7:] + [(output[0].detach(), self.positions(ids.cpu()))]

    def _match(self, module, args, kwargs):
        states = kwargs.get("encoder_hidden_states", args[2] if len(args) > 2 else None)
        gates = []
        for sample in states:
            found = torch.zeros(sample.shape[0], dtype=torch.bool)
            for hidden, gated in reversed(self.seen):
                hit = next((g for h, g in zip(hidden, gated, strict=True) if torch.equal(h, sample)), None)
                if hit is not None:
                    found = hit
                    break
            gates.append(found)
        self.current = torch.stack(gates) if any(g.any() for g in gates) else None
        if self.current is not None:
            self.shut = {key: self.thetas[key] * amount for key, amount in self.amounts.items()}

    def _layer(self, key):
        def hook(module, args, output):
            if self.current is None:
                return None
            change = torch.nn.functional.linear(args[0], self.shut[key])
            return output - self.current[..., None].to(output.dtype) * change

        return hook

    def __enter__(self):
        unet = self.pipe.unet
        self.handles = [
            self.pipe.text_encoder.register_forward_hook(self._record, with_kwargs=True),
            unet.register_forward_pre_hook(self._match, with_kwargs=True),
        ] + [
            unet.get_submodule(key.removesuffix(".weight")).register_forward_hook(self._layer(key))
            for key in self.amounts
        ]
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()
        self.handles, self.current, self.shut = [], None, {}


def gated_descent(pipe, keys, bank, embedding, scheduler, identifier, gate, steps, lr, seed, prompt):
    """Projected Adam on δ ∈ [0, 1] of every K/V entry, applied at the gated positions only, on the
    instance loss alone (the other prompts see none of it, so no prior term). Returns δ per key and
    the loss per step."""
    weights = pipe.unet.state_dict()
    amounts = {key: torch.zeros_like(weights[key], requires_grad=True) for key in keys}
    optimiser = torch.optim.Adam(amounts.values(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    trainable = [p.requires_grad for p in pipe.unet.parameters()]
    pipe.unet.requires_grad_(False)
    losses = []
    try:
        with TokenGate(pipe, amounts, identifier, gate) as gated:
            gated.declare(embedding, prompt)
            for _ in range(steps):
                noisy, timesteps, target = instance_draw(bank, scheduler, 8, generator)
                prediction = pipe.unet(noisy, timesteps, encoder_hidden_states=embedding.expand(8, -1, -1))
                loss = ((prediction.sample - target) ** 2).mean()
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                with torch.no_grad():
                    for amount in amounts.values():
                        amount.clamp_(0.0, 1.0)
                losses.append(loss.item())
    finally:
        for parameter, flag in zip(pipe.unet.parameters(), trainable, strict=True):
            parameter.requires_grad_(flag)
    return {key: amount.detach() for key, amount in amounts.items()}, losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subject", default="vnt")
    parser.add_argument("--split", choices=("dev", "test"), default="dev")
    parser.add_argument("--sizes", default="532,2129,8516,34064", help="0.25, 1, 4, 16 %% of v2's entries")
    parser.add_argument("--gradient-seed", type=int, default=100)
    parser.add_argument("--gradient-batches", type=int, default=150, help="batches of 8 draws")
    parser.add_argument("--first-order", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--descent-steps", type=int, default=0, help="gated projected Adam; 0: none")
    parser.add_argument("--descent-lr", type=float, default=0.02)
    parser.add_argument("--descent-gate", choices=GATES, default=GATES[1])
    parser.add_argument("--descent-sizes", default="", help="top k of the descent's δ (default --sizes)")
    parser.add_argument("--random-sizes", default="", help="random gated sets (default --sizes)")
    parser.add_argument("--rankings", default=",".join(GATES), help="first-order gated rankings")
    parser.add_argument("--ungated", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument(
        "--projections", choices=("to_k,to_v", "to_v", "to_k"), default="to_k,to_v", help="searched, shut"
    )
    parser.add_argument("--save-deltas", type=Path, help="write the descent's δ here (torch.save)")
    parser.add_argument("--prior-once", action="store_true", help="measure the prior on one gated row only")
    args, split, pipe = world_bench(parser)
    started = time.perf_counter()
    scheduler, subject, bank, embedding = subject_inputs(args.model, args.subject)
    keys = [key for key in kv_keys(pipe.unet) if key.split(".")[-2] in args.projections.split(",")]
    weights = {key: pipe.unet.state_dict()[key] for key in keys}
    groups = token_groups(len(pipe.tokenizer(subject.prompt).input_ids), embedding.shape[1])
    groups = {name: groups[name] for name in ("all tokens", *GATES)}
    grads = gradients_by_path(
        pipe.unet, keys, groups, bank, embedding, scheduler, args.gradient_batches, 8, args.gradient_seed
    )
    rankings = {
        name: {key: (weights[key] * grad[key]).reshape(-1).numpy() for key in keys}
        for name, grad in grads.items()
    }
    print(f"  ranked ({(time.perf_counter() - started) / 60:.1f} min)", flush=True)
    measure = protocol.Judged(pipe, split)
    report = {"args": {k: str(v) for k, v in vars(args).items()}, "rows": []}
    rows = report["rows"]

    def score(name: str, size: int, chosen, gate: str | None, amounts=None) -> None:
        """One row: ``chosen`` (flat indices per key) shut everywhere (``gate`` None) or gated, or the
        ``amounts`` δ gated; neither is the base model. With --prior-once only the first gated row
        measures the prior (identical to the base model's by construction: the gate's check)."""
        row = {"set": name, "k": size, "gate": gate}
        if chosen is None and amounts is None:
            edit, prior = contextlib.nullcontext(), not args.prior_once
        elif gate is None:
            edit, prior = conesrt.apply(pipe, container(pipe.unet, keys, chosen)), True
        else:
            if amounts is None:
                amounts = indicator(weights, chosen)
            else:
                row["k"] = int(sum(int((a > 0).sum()) for a in amounts.values()))
                row["shut share"] = float(sum(float(a.sum()) for a in amounts.values()) / row["k"])
            edit = TokenGate(pipe, amounts, subject.token, gate)
            edit.declare(embedding, subject.prompt)
            prior = not args.prior_once or not any(r["gate"] for r in rows)
        with edit:
            row |= {"loss": subject_loss(pipe.unet, bank, embedding, scheduler), **measure([subject], prior)}
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "prior_per_prompt"}), flush=True)
        if args.json:
            args.json.write_text(json.dumps(report, indent=1))

    score("base model", 0, None, None)
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.descent_steps:
        amounts, losses = gated_descent(
            pipe,
            keys,
            bank,
            embedding,
            scheduler,
            subject.token,
            args.descent_gate,
            args.descent_steps,
            args.descent_lr,
            args.gradient_seed,
            subject.prompt,
        )
        tenth = max(len(losses) // 10, 1)
        report["descent"] = {
            "loss first tenth": float(np.mean(losses[:tenth])),
            "loss last tenth": float(np.mean(losses[-tenth:])),
            "entries above 0.5": int(sum(int((a > 0.5).sum()) for a in amounts.values())),
            "entries at 1": int(sum(int((a >= 1).sum()) for a in amounts.values())),
        }
        print(json.dumps(report["descent"]), flush=True)
        if args.save_deltas:
            torch.save(amounts, args.save_deltas)
        flat = {key: a.reshape(-1).numpy() for key, a in amounts.items()}
        for size in [int(s) for s in (args.descent_sizes or args.sizes).split(",")]:
            score("descent, top k of δ", size, largest(flat, size), args.descent_gate)
        score("descent, relaxed δ", 0, None, args.descent_gate, amounts=amounts)
    rng = np.random.default_rng(0)
    for size in sizes if args.first_order else ():
        everything = largest(rankings["all tokens"], size)
        if args.ungated:
            score("all tokens", size, everything, None)
            score("all tokens", size, everything, GATES[1])
        for gate in args.rankings.split(","):
            score(gate, size, largest(rankings[gate], size), gate)
    for size in [int(s) for s in (args.random_sizes or args.sizes).split(",")]:
        score("random", size, random_set(weights, size, rng), GATES[1])
    minutes = (time.perf_counter() - started) / 60
    print(
        f"\n# Gated sets for {args.subject}, {split.name} split, gradient seed {args.gradient_seed} — "
        f"{date.today()} — {platform.machine()} CPU, {minutes:.0f} min\n"
    )
    print("| ranking | k | shut in | subject loss | fidelity | context | prior kept | prior attributes |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        cells = " | ".join(
            f"{row[k]:.3f}" if k in row else "—"
            for k in ("fidelity", "alignment", "prior", "prior_attributes")
        )
        where = "—" if not row["k"] else row["gate"] or "every token"
        print(f"| {row['set']} | {row['k'] or '—'} | {where} | {np.mean(row['loss']):.4f} | {cells} |")


if __name__ == "__main__":
    main()
