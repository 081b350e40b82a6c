"""Planted truth with exact targets: is it the search, or what the images carry?

    OMP_NUM_THREADS=1 python bench/planted_exact.py --model v2 --seeds 1,2,3 --json docs/planted-exact.json

Finding 4 (docs/planted.md): `cones train` recovers a planted random 1 % set
at chance from the teacher's images, and the planted set barely lowers the
teacher loss on them. That leaves two causes apart: the images do not pin
the set down (the objective), or the search cannot find a set even where
the objective does (the search). This bench removes the images. The target
is the teacher's own prediction (the base model with M shut) on the same
noisy input, so the distillation loss is 0 at M and larger at every other
set of the model's behaviour; it is computed

- on the instance prompt only ("a photo of a sks circle"): the most any
  number of the teacher's images of that prompt could tell, without noise;
- on the instance prompt and held-out world captions (every prompt the
  teacher could be asked): what the whole model's behaviour tells.

Searches, each returning exactly |M| entries:

- ``first order``: the |M| entries whose gradient at ξ = 1 most favours
  shutting (what ξ-descent with a small travel does: cones train's ranking);
- ``second order``: the |M| entries whose second-order gain at ξ = 1
  (gradient plus the Gauss-Newton diagonal, estimated with Hutchinson
  probes) most favours shutting;
- ``second order + swaps``: from that set, exchange shut and open entries
  by their second-order gains, keeping a round only if the training loss
  falls. (Iterative hard thresholding was tried in a first smoke run and
  did no better; it was dropped.)
- ``projected descent``: ξ-descent run long on the exact targets (Adam on
  δ = 1 − ξ from 0, kept in [0, 1]; ``--descent-steps``, 0 skips it), then
  the |M| largest δ.
- ``dense fit, then K/V shut set``: the same descent with δ free (any
  weight), then the shut set whose key/value change on the training tokens
  matches it (:func:`fista`, as bench/planted_kv.py uses); also skipped by
  ``--descent-steps 0``.

``--kind columns`` plants whole text-channel columns instead of a random set
(trainer.planted.plant).

Each is scored by recall of M and by the distillation loss on held-out
draws (other noise, timesteps and latents), beside a random set of |M|.
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
from diffusers import DDPMScheduler  # noqa: E402
from oracle import preserved_captions  # noqa: E402

import conesrt  # noqa: E402
from trainer import world  # noqa: E402
from trainer.config import TrainConfig, select_layers, unet_keys  # noqa: E402
from trainer.planted import plant  # noqa: E402
from trainer.xi import ConceptNeuronSearch  # noqa: E402


@torch.no_grad()
def embeddings(pipe, prompts: list[str]) -> torch.Tensor:
    out = []
    for start in range(0, len(prompts), 64):
        embedded, _ = pipe.encode_prompt(prompts[start : start + 64], "cpu", 1, False)
        out.append(embedded.float())
    return torch.cat(out)


@torch.no_grad()
def teacher_latents(pipe, planted, prompt: str, seeds: list[int]) -> torch.Tensor:
    resolution = pipe.unet.config.sample_size * pipe.vae_scale_factor
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    with conesrt.apply(pipe.unet, planted):
        drawn = pipe(
            [prompt] * len(seeds),
            generator=generators,
            output_type="latent",
            num_inference_steps=world.NUM_INFERENCE_STEPS,
            guidance_scale=world.GUIDANCE_SCALE,
            height=resolution,
            width=resolution,
        ).images
    return drawn.float()


def make_draws(scheduler, latents, contexts, batches: int, batch_size: int, seed: int):
    """(noisy, timesteps, context) batches: teacher latents, fresh noise and timesteps, a context per row."""
    generator = torch.Generator().manual_seed(seed)
    draws = []
    for _ in range(batches):
        rows = torch.randint(len(latents), (batch_size,), generator=generator)
        noise = torch.randn(latents[rows].shape, generator=generator)
        t = torch.randint(scheduler.config.num_train_timesteps, (batch_size,), generator=generator)
        which = torch.randint(len(contexts), (batch_size,), generator=generator)
        draws.append((scheduler.add_noise(latents[rows], noise, t), t, contexts[which]))
    return draws


@torch.no_grad()
def predictions(unet, container, draws):
    with conesrt.apply(unet, container) if container is not None else contextlib.nullcontext():
        return [unet(noisy, t, encoder_hidden_states=c).sample.float() for noisy, t, c in draws]


def loss_and_gradient(search: ConceptNeuronSearch, shut: list[torch.Tensor], draws, targets, grad: bool):
    """Distillation loss of the model with ``shut`` (0/1 per entry), and its gradient in δ."""
    for delta, mask in zip(search.delta, shut, strict=True):
        delta.data.copy_(mask)
        delta.grad = None
    total = 0.0
    for (noisy, t, c), target in zip(draws, targets, strict=True):
        with torch.set_grad_enabled(grad):
            loss = ((search(noisy, t, c).float() - target) ** 2).mean() / len(draws)
            if grad:
                loss.backward()
        total += float(loss.detach())
    gradient = [delta.grad.clone() for delta in search.delta] if grad else None
    return total, gradient


def unflatten(flat: torch.Tensor, like: list[torch.Tensor]) -> list[torch.Tensor]:
    """``flat`` cut into views shaped as ``like`` (the searched layers, in order)."""
    return [
        part.view_as(s) for part, s in zip(torch.split(flat, [s.numel() for s in like]), like, strict=True)
    ]


def top_k(scores: list[torch.Tensor], k: int) -> list[torch.Tensor]:
    flat = torch.cat([s.flatten() for s in scores])
    chosen = torch.zeros_like(flat)
    chosen[torch.topk(flat, k).indices] = 1
    return unflatten(chosen, scores)


def random_masks(like: list[torch.Tensor], k: int, seed: int) -> list[torch.Tensor]:
    """A random set of k entries over the layers shaped as ``like``: the same-size control."""
    flat = torch.zeros(sum(s.numel() for s in like), dtype=like[0].dtype)
    flat[torch.from_numpy(np.random.default_rng(seed + 100).choice(flat.numel(), k, replace=False))] = 1
    return unflatten(flat, like)


def sharing(truth: list[torch.Tensor], k: int, share: float, seed: int) -> list[torch.Tensor]:
    """A set of k entries of which round(share·k) are a random part of M and the rest random outside it."""
    flat_truth = torch.cat([m.flatten() for m in truth])
    inside, outside = flat_truth.nonzero().flatten(), (flat_truth == 0).nonzero().flatten()
    generator = torch.Generator().manual_seed(seed + 200)
    hits = round(share * k)
    chosen = torch.zeros_like(flat_truth)
    chosen[inside[torch.randperm(inside.numel(), generator=generator)[:hits]]] = 1
    chosen[outside[torch.randperm(outside.numel(), generator=generator)[: k - hits]]] = 1
    return unflatten(chosen, truth)


def best_moves(add: torch.Tensor, drop: torch.Tensor, shut: torch.Tensor, truth: torch.Tensor) -> dict:
    """Do the best one-entry moves from the set ``shut`` point at the planted set ``truth``?

    ``add`` and ``drop`` (flat, like ``shut`` and ``truth``) are each entry's change of an objective when
    it is shut too or opened again. Scored: the share of M's missing entries among as many best adds
    (outside the set), and of the wrong entries among as many best drops (inside it), each beside its
    chance.
    """
    missing, wrong = (truth * (1 - shut)).bool(), (shut * (1 - truth)).bool()
    out = {}
    for name, change, pool, wanted in (
        ("adds", add, ~shut.bool(), missing),
        ("drops", drop, shut.bool(), wrong),
    ):
        label = f"{name} that are {'in M' if name == 'adds' else 'not in M'}"
        count = int(wanted.sum())
        if count == 0:
            out[label], out[f"{name}, chance"] = float("nan"), float("nan")
            continue
        candidates = pool.nonzero().flatten()
        best = candidates[torch.topk(-change[candidates], count).indices]
        out[label] = float(wanted[best].float().mean())
        out[f"{name}, chance"] = count / candidates.numel()
    return out


def masks_of(container, keys, shapes) -> list[torch.Tensor]:
    (concept,) = container.concepts.values()
    out = []
    for key, shape in zip(keys, shapes, strict=True):
        mask = torch.zeros(int(np.prod(shape)))
        if key in concept.indices:
            mask[torch.from_numpy(concept.indices[key].astype(np.int64))] = 1
        out.append(mask.view(shape))
    return out


def recall(found: list[torch.Tensor], planted: list[torch.Tensor]) -> float:
    hits = sum(float((f * p).sum()) for f, p in zip(found, planted, strict=True))
    return hits / sum(float(p.sum()) for p in planted)


def curvature(search: ConceptNeuronSearch, shut, draws, probes: int, seed: int) -> list[torch.Tensor]:
    """The Gauss-Newton diagonal of the loss in δ: what shutting each entry alone adds, squared.

    For the loss ``L = mean ||f(δ) - target||²`` the change from shutting entry
    e alone is, to second order, ``g_e + ||J_e||² / n`` (J_e = ∂f/∂δ_e, n the
    outputs counted). ``||J_e||²`` is estimated as ``E (Jᵀv)_e²`` over random
    output directions v (Hutchinson), ``probes`` per batch.
    """
    generator = torch.Generator().manual_seed(seed)
    for delta, mask in zip(search.delta, shut, strict=True):
        delta.data.copy_(mask)
    total = [torch.zeros_like(delta) for delta in search.delta]
    outputs = 0
    for noisy, t, c in draws:
        out = search(noisy, t, c).float()
        outputs += out.numel()
        for probe in range(probes):
            v = torch.randn(out.shape, generator=generator)
            grads = torch.autograd.grad((out * v).sum(), list(search.delta), retain_graph=probe < probes - 1)
            for acc, g in zip(total, grads, strict=True):
                acc += g**2 / probes
    return [acc / outputs for acc in total]


def swaps(search, shut, k, draws, targets, diagonal, rounds: int, log) -> list[torch.Tensor]:
    """Exchange shut and open entries by second-order gains; keep an exchange only if the loss falls."""
    loss, gradient = loss_and_gradient(search, shut, draws, targets, True)
    count = max(1, k // 4)
    for round_ in range(rounds):
        flat_shut = torch.cat([s.flatten() for s in shut])
        flat_g = torch.cat([g.flatten() for g in gradient])
        flat_d = torch.cat([d.flatten() for d in diagonal])
        add = torch.where(flat_shut == 0, flat_g + flat_d, torch.inf)  # change from shutting e
        remove = torch.where(flat_shut == 1, -flat_g + flat_d, torch.inf)  # change from opening e
        adds, removes = torch.topk(-add, count).indices, torch.topk(-remove, count).indices
        gains = add[adds] + remove[removes]
        useful = int((gains < 0).sum())
        if useful == 0:
            if count == 1:
                break
            count = max(1, count // 2)
            continue
        proposal_flat = flat_shut.clone()
        proposal_flat[adds[:useful]] = 1
        proposal_flat[removes[:useful]] = 0
        proposal = unflatten(proposal_flat, shut)
        new_loss, new_gradient = loss_and_gradient(search, proposal, draws, targets, True)
        if new_loss < loss:
            shut, loss, gradient = proposal, new_loss, new_gradient
        else:
            count = max(1, useful // 2)
        log(round_, loss, useful, shut)
    return shut


def gram(features: torch.Tensor) -> torch.Tensor:
    """Σ_t x_t x_tᵀ over every token position of every prompt, float64."""
    flat = features.reshape(-1, features.shape[-1]).double()
    return flat.T @ flat


def fista(changes, weights, c_train, alpha: float, steps: int) -> list[torch.Tensor]:
    """Shut amounts c in [0, 1] whose change of the keys and values best matches ``changes`` (float64).

    Minimises ½ ||(c ⊙ W − T) Xᵀ||² + α λ₀ Σ c row by row, with X given by its
    Gram matrix ``c_train`` and λ₀ the largest gradient at c = 0 (FISTA:
    projected, accelerated gradient). For a planted set, T = M ⊙ W.
    """
    lipschitz = float(torch.linalg.eigvalsh(c_train)[-1])
    lam = alpha * max(float((w * (t @ c_train)).max()) for t, w in zip(changes, weights, strict=True))
    out = []
    for target, w in zip(changes, weights, strict=True):
        step = 1.0 / (lipschitz * (w**2).max(dim=1, keepdim=True).values.clamp_min(1e-30))
        c = torch.zeros_like(w)
        y, t = c.clone(), 1.0
        for _ in range(steps):
            g = w * ((y * w - target) @ c_train) + lam
            c_next = (y - step * g).clamp(0.0, 1.0)
            t_next = (1 + (1 + 4 * t * t) ** 0.5) / 2
            y = c_next + (t - 1) / t_next * (c_next - c)
            c, t = c_next, t_next
        out.append(c)
    return out


def projected_descent(
    search, k, draws, targets, steps: int, lr: float, log, project: bool = True
) -> list[torch.Tensor]:
    """ξ-descent run long on the exact targets: Adam on δ = 1 − ξ from 0, kept in [0, 1]; the top k."""
    for delta in search.delta:
        delta.data.zero_()
        delta.grad = None
    optimizer = torch.optim.Adam(search.delta, lr=lr)
    running = 0.0
    for step in range(steps):
        (noisy, t, c), target = draws[step % len(draws)], targets[step % len(draws)]
        loss = ((search(noisy, t, c).float() - target) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if project:
            search.project()
        running += float(loss.detach()) / len(draws)
        if (step + 1) % len(draws) == 0:
            if (step + 1) % (25 * len(draws)) == 0 or step + 1 == steps:
                log(step + 1, running, [d.detach().clone() for d in search.delta])
            running = 0.0
    deltas = [d.detach().clone() for d in search.delta]
    return top_k(deltas, k) if project else deltas


def run(args, pipe, seed: int) -> dict:
    unet = pipe.unet
    keys = select_layers(unet_keys(args.model), TrainConfig.layers)
    planted = plant(unet, keys, args.kind, args.fraction, seed)
    shapes = [unet.state_dict()[key].shape for key in keys]
    truth = masks_of(planted, keys, shapes)
    k = int(sum(float(m.sum()) for m in truth))
    n = sum(m.numel() for m in truth)
    prompt = f"a photo of a {args.token} {args.class_word}"
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    train_latents = teacher_latents(pipe, planted, prompt, list(range(args.images)))
    held_latents = teacher_latents(pipe, planted, prompt, list(range(10_000, 10_000 + args.images)))
    instance = embeddings(pipe, [prompt])
    captions = preserved_captions(2 * args.captions, seed=99)
    train_contexts = torch.cat([instance, embeddings(pipe, captions[: args.captions])])
    held_contexts = torch.cat([instance, embeddings(pipe, captions[args.captions :])])
    search = ConceptNeuronSearch(unet, keys)
    random_set = random_masks(truth, k, seed)
    row = {"seed": seed, "planted": k, "searched": n, "chance": k / n, "objectives": {}}
    objectives = {
        "instance prompt": (instance, instance),
        "instance prompt + captions": (train_contexts, held_contexts),
    }
    for objective in args.objectives.split(","):
        train_c, held_c = objectives[objective]
        draws = make_draws(scheduler, train_latents, train_c, args.batches, args.batch_size, seed)
        held = make_draws(scheduler, held_latents, held_c, args.batches, args.batch_size, seed + 7)
        targets = predictions(unet, planted, draws)
        held_targets = predictions(unet, planted, held)
        zero = [torch.zeros(s) for s in shapes]
        base_loss, gradient = loss_and_gradient(search, zero, draws, targets, True)
        first = top_k([-g for g in gradient], k)
        started = time.perf_counter()
        diagonal = curvature(search, zero, draws, args.probes, seed)
        second = top_k([-(g + d) for g, d in zip(gradient, diagonal, strict=True)], k)

        def log(round_, loss, moved, shut, objective=objective, base_loss=base_loss):
            print(
                f"    {objective} swaps {round_:3d}: train loss {loss:.3e} (base {base_loss:.3e}), "
                f"{moved} exchanged, recall {recall(shut, truth):.3f}",
                flush=True,
            )

        exchanged = swaps(search, second, k, draws, targets, diagonal, args.rounds, log)
        seconds = time.perf_counter() - started
        descended = None
        if args.descent_steps:

            def log_descent(step, loss, deltas, objective=objective, base_loss=base_loss):
                print(
                    f"    {objective} descent {step:5d}: train loss {loss:.3e} (base {base_loss:.3e}), "
                    f"recall of the top |M| {recall(top_k(deltas, k), truth):.3f}",
                    flush=True,
                )

            started = time.perf_counter()
            descended = projected_descent(
                search, k, draws, targets, args.descent_steps, args.descent_lr, log_descent
            )
            descent_seconds = time.perf_counter() - started
            # Two stages: a dense change fitted through the UNet (δ free, so θ(1 − δ) is any weight),
            # then the shut set whose change of the keys and values matches it on the training tokens.
            started = time.perf_counter()
            dense = projected_descent(
                search, k, draws, targets, args.descent_steps, args.descent_lr, log_descent, project=False
            )
            thetas = [theta.detach().double() for theta in search.thetas]
            shut_amounts = fista(
                [d.double() * w for d, w in zip(dense, thetas, strict=True)], thetas, gram(train_c), 0.0, 3000
            )
            two_stage = top_k([c.float() for c in shut_amounts], k)
            two_stage_seconds = time.perf_counter() - started

        def held_loss(masks, held=held, held_targets=held_targets):
            return loss_and_gradient(search, masks, held, held_targets, False)[0]

        measured = {
            "base": {"recall": 0.0, "held_out_loss": held_loss(zero)},
            "planted": {"recall": 1.0, "held_out_loss": held_loss(truth)},
            "random": {"recall": recall(random_set, truth), "held_out_loss": held_loss(random_set)},
            "first order": {"recall": recall(first, truth), "held_out_loss": held_loss(first)},
            "second order": {"recall": recall(second, truth), "held_out_loss": held_loss(second)},
            "second order + swaps": {
                "recall": recall(exchanged, truth),
                "held_out_loss": held_loss(exchanged),
                "seconds": seconds,
            },
        }
        if descended is not None:
            measured["projected descent"] = {
                "recall": recall(descended, truth),
                "held_out_loss": held_loss(descended),
                "seconds": descent_seconds,
            }
            measured["dense fit, then K/V shut set"] = {
                "recall": recall(two_stage, truth),
                "held_out_loss": held_loss(two_stage),
                "seconds": two_stage_seconds,
            }
        base = measured["base"]["held_out_loss"]
        for values in measured.values():
            values["loss_removed"] = 1 - values["held_out_loss"] / base
        row["objectives"][objective] = measured
        for name, values in measured.items():
            print(
                f"  seed {seed} {objective:<28} {name:<20} recall {values['recall']:.3f}  "
                f"held-out loss {values['held_out_loss']:.3e}  share removed {values['loss_removed']:+.3f}",
                flush=True,
            )
    return row


def write_report(args, rows: list[dict], started: float) -> None:
    """The planted benches' JSON (``--json``), rewritten after every seed: a long run keeps its results."""
    if args.json:
        report = {
            "date": date.today().isoformat(),
            "machine": platform.machine(),
            "args": {k: str(v) for k, v in vars(args).items()},
            "seconds": time.perf_counter() - started,
            "rows": rows,
        }
        args.json.write_text(json.dumps(report, indent=1))


def run_seeds(args, pipe, run) -> None:
    """``run(args, pipe, seed)`` for each of ``--seeds``, the report written after each."""
    started, rows = time.perf_counter(), []
    for seed in args.seeds.split(","):
        rows.append(run(args, pipe, int(seed)))
        write_report(args, rows, started)


def planted_arguments(doc: str) -> argparse.ArgumentParser:
    """The planted benches' shared options: the world, the planted-set seeds, kind and size."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--model", type=Path, default=world.MODEL_DIR)
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument(
        "--kind", choices=("random", "columns"), default="random", help="planted set (trainer.planted)"
    )
    parser.add_argument("--fraction", type=float, default=0.01)
    return parser


def main() -> None:
    parser = planted_arguments(__doc__)
    parser.add_argument("--token", default="sks")
    parser.add_argument("--class-word", default="circle")
    parser.add_argument("--images", type=int, default=32, help="teacher latents, training and held out")
    parser.add_argument("--captions", type=int, default=512, help="world captions, training and held out")
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--probes", type=int, default=8, help="Hutchinson probes per batch")
    parser.add_argument("--rounds", type=int, default=30, help="rounds of exchanges")
    parser.add_argument("--descent-steps", type=int, default=2000, help="projected ξ-descent steps (0: skip)")
    parser.add_argument("--descent-lr", type=float, default=0.01, help="its Adam step on δ = 1 − ξ")
    parser.add_argument("--objectives", default="instance prompt,instance prompt + captions")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pipe = world.load_pipeline(args.model)
    run_seeds(args, pipe, run)


if __name__ == "__main__":
    main()
