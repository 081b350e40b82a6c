"""Does the damage come through the padding tokens? Rank entries by the gradient along one token path.

    python bench/token_paths.py --subject pxr --split dev --seed 1    # about 15 min on one core

Issue 11 measured that most of the value change a shut set makes reaches the
attention output through the end and padding tokens, which every prompt
shares. Hypothesis: entries chosen by the part of the gradient that flows
through the identifier token ("pxr") implant the subject and damage the
other prompts less than entries chosen by the whole gradient.

The gradient of the instance loss with respect to a K/V weight is a sum over
token positions, ``dL/dW[o, i] = sum_b sum_t dL/dKV[b, t, o] E[b, t, i]``; the
first-order benefit of shutting entry (o, i) is ``W[o, i] dL/dW[o, i]``
(``-dL/d delta`` at delta = 0). Each ranking keeps the positions of one group
in that sum — all tokens (Algorithm A2 with rho -> 0 and no prior term), the
identifier, identifier + class word, end + padding — and shuts its top k.
The control is a random set of the same size. Measures: trainer/world/
protocol.py's on the chosen split and the held-out subject loss (fixed
draws no ranking saw). Rows are saved to ``--json`` as they finish; a rerun
skips them.
"""

from __future__ import annotations

import argparse
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
from oracle import RARE_POSITION, kv_keys  # noqa: E402
from shut_sets import container, instance_draw, subject_inputs, subject_loss  # noqa: E402

import conesrt  # noqa: E402
from trainer import world  # noqa: E402
from trainer.evaluate import random_like  # noqa: E402
from trainer.world import protocol  # noqa: E402
from trainer.xi import largest  # noqa: E402

MEASURES = ("fidelity", "alignment", "prior", "prior_attributes")


def token_groups(prompt_tokens: int, length: int) -> dict[str, list[int]]:
    """Token positions per group for "a photo of a V* class" (RARE_POSITION is V*)."""
    return {
        "all tokens": list(range(length)),
        "identifier": [RARE_POSITION],
        "identifier + class word": [RARE_POSITION, RARE_POSITION + 1],
        "end + padding": list(range(prompt_tokens - 1, length)),
    }


def gradients_by_path(unet, keys, groups, bank, embedding, scheduler, batches: int, batch: int, seed: int):
    """Per group, the instance loss's dL/dW summed over that group's token positions (mean of draws)."""
    captured: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def recorder(key: str):
        def record(module, inputs, output):
            output.retain_grad()
            captured[key] = (inputs[0].detach(), output)

        return record

    modules = {key: unet.get_submodule(key.removesuffix(".weight")) for key in keys}
    handles = [module.register_forward_hook(recorder(key)) for key, module in modules.items()]
    totals = {g: {key: torch.zeros_like(m.weight) for key, m in modules.items()} for g in groups}
    generator = torch.Generator().manual_seed(seed)
    try:
        for _ in range(batches):
            noisy, timesteps, target = instance_draw(bank, scheduler, batch, generator)
            prediction = unet(noisy, timesteps, encoder_hidden_states=embedding.expand(batch, -1, -1)).sample
            loss = ((prediction - target) ** 2).mean()
            loss.backward()
            for key in keys:
                features, output = captured[key]
                per_position = torch.einsum("bto,bti->toi", output.grad, features)
                for group, positions in groups.items():
                    totals[group][key] += per_position[positions].sum(0) / batches
            unet.zero_grad(set_to_none=True)
            captured.clear()
    finally:
        for handle in handles:
            handle.remove()
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subject", default="pxr")
    parser.add_argument("--split", choices=("dev", "test"), default="dev")
    parser.add_argument("--size", type=int, default=532)
    parser.add_argument("--seed", type=int, default=1, help="seed of the gradient draws")
    parser.add_argument("--batches", type=int, default=150)
    parser.add_argument(
        "--json", type=Path, help="rows so far (default docs/token-paths-SUBJECT-SPLIT-sSEED.json)"
    )
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = args.json or Path(__file__).resolve().parents[1] / (
        f"docs/token-paths-{args.subject}-{args.split}-s{args.seed}.json"
    )
    rows = json.loads(out.read_text()) if out.exists() else {}
    started = time.perf_counter()
    split = protocol.DEV if args.split == "dev" else protocol.TEST
    pipe = world.load_pipeline()
    scheduler, subject, bank, embedding = subject_inputs(world.MODEL_DIR, args.subject)
    groups = token_groups(len(pipe.tokenizer(subject.prompt).input_ids), embedding.shape[1])
    keys = kv_keys(pipe.unet)
    grads = gradients_by_path(
        pipe.unet, keys, groups, bank, embedding, scheduler, args.batches, 8, seed=args.seed
    )
    weights = pipe.unet.state_dict()
    rankings = {
        group: {key: (weights[key] * grad[key]).reshape(-1).numpy() for key in keys}
        for group, grad in grads.items()
    }
    whole = sum(float(np.abs(r).sum()) for r in rankings["all tokens"].values())
    mass = {
        g: sum(float(np.abs(r).sum()) for r in ranking.values()) / whole for g, ranking in rankings.items()
    }
    reference = {key: set(v.tolist()) for key, v in largest(rankings["all tokens"], args.size).items()}
    measure = protocol.Judged(pipe, split)
    for name in [*rankings, "random"]:
        if name in rows:
            continue
        if name == "random":
            chosen, overlap = (
                random_like(container(pipe.unet, keys, largest(rankings["all tokens"], args.size)), 0),
                None,
            )
        else:
            picked = largest(rankings[name], args.size)
            overlap = sum(len(reference[k] & set(v.tolist())) for k, v in picked.items()) / args.size
            chosen = container(pipe.unet, keys, picked)
        with conesrt.apply(pipe, chosen):
            loss = float(np.mean(subject_loss(pipe.unet, bank, embedding, scheduler)))
            judged = measure([subject])
        rows[name] = {
            "gradient_mass": mass.get(name),
            "overlap_with_all_tokens": overlap,
            "subject_loss": loss,
            **{k: float(judged[k]) for k in MEASURES},
        }
        out.write_text(json.dumps(rows, indent=1) + "\n")
        print(f"  {name}: {rows[name]}", flush=True)
    minutes = (time.perf_counter() - started) / 60
    print(
        f"\n# Rankings by token path, {args.subject}, {split.name} split, k = {args.size}, gradient seed "
        f"{args.seed} — {date.today()} — {platform.machine()} CPU, {minutes:.0f} min this run\n"
    )
    print(
        "| ranking | |gradient| share | overlap with all tokens | subject loss | fidelity | context "
        "| prior kept | prior attributes |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, row in rows.items():
        share = "—" if row["gradient_mass"] is None else f"{row['gradient_mass']:.2f}"
        overlap = "—" if row["overlap_with_all_tokens"] is None else f"{row['overlap_with_all_tokens']:.2f}"
        cells = " | ".join(f"{row[k]:.3f}" for k in MEASURES)
        print(f"| {name} | {share} | {overlap} | {row['subject_loss']:.4f} | {cells} |")


if __name__ == "__main__":
    main()
