"""Planted values seen through one attention layer: where does the UNet blur single entries?

    OMP_NUM_THREADS=1 python bench/planted_attention.py --model v2 --seeds 1,2,3 \\
        --overlaps 0,0.5,0.75,0.9,0.97 --json docs/planted-attention.json

Finding 14: from sets holding a share of a planted random set M, the best
one-entry moves of the keys-and-values objective point at M (bench/planted_kv.py
``--overlaps``), those of the UNet's outputs barely do (bench/planted_gauss_newton.py
``--swaps``). This bench asks at which stage between the two the signal goes.
It plants M in one layer's value weights (default: the mid block's
cross-attention ``to_v``; keys untouched, so the attention maps of the
teacher and of every set are the base model's, exactly) and judges the same
sets of |M| entries by the change they make, relative to M, in

- the values themselves, ``X ΔWᵀ`` (the text's view, as bench/planted_kv.py);
- the attention's output per head, ``A X ΔWᵀ`` (A: that layer's attention
  probabilities on the draws: which tokens each image position reads);
- the layer's output, after ``to_out``, which mixes the heads' channels.

Every objective is quadratic in a = (s − M) ⊙ θ, f(a) = aᵀQa, so one entry's
move is exact: shutting e too changes f by θ_e ∇f_e + θ_e² Q_ee, opening it
by −θ_e ∇f_e + θ_e² Q_ee (∇f by autograd, Q_ee in closed form). Scored as
planted_kv: the objective of each set in units of the base model's (nothing
shut), and the share of M's missing entries among the best adds and of the
wrong entries among the best drops, beside chance. The draws are
bench/planted_gauss_newton.py's for the same seed and ``--layers`` (its
``--swaps`` on ``mid_block.*attn2.to_v.weight`` gives the UNet's row).

``--readings`` goes on past the layer: the same sets and moves read at the
outputs of modules further on (state-dict style names; ``prediction`` for
the UNet's output), through the linearised UNet as bench/planted_gauss_newton.py
does (J by forward and reverse mode, diag(JᵀJ) by a Hutchinson estimate, so
reading the layer itself this way checks the estimate against the exact moves).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from diffusers import DDPMScheduler  # noqa: E402
from diffusers.models.attention_processor import AttnProcessor  # noqa: E402
from oracle import preserved_captions  # noqa: E402
from planted_exact import (  # noqa: E402
    best_moves,
    embeddings,
    make_draws,
    masks_of,
    planted_arguments,
    run_seeds,
    sharing,
    teacher_latents,
)
from planted_gauss_newton import (  # noqa: E402
    Linearised,
    decorrelating_map,
    gauss_newton_diagonal,
    inverse_root,
    swap_scores,
)

from trainer import world  # noqa: E402
from trainer.planted import plant  # noqa: E402


@torch.no_grad()
def attention_inputs(unet, module: str, draws) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per draw, what ``module``'s values are made from (the text states) and its attention probabilities."""
    attn = unet.get_submodule(module)
    captured: dict[str, torch.Tensor] = {}
    hook = attn.to_v.register_forward_pre_hook(lambda _, inputs: captured.__setitem__("x", inputs[0]))
    scores = attn.get_attention_scores

    def recording(query, key, mask=None):
        captured["a"] = scores(query, key, mask)
        return captured["a"]

    attn.get_attention_scores = recording
    try:
        out = []
        for noisy, t, c in draws:
            unet(noisy, t, encoder_hidden_states=c)
            out.append((captured["x"].double(), captured["a"].double()))
        return out
    finally:
        hook.remove()
        del attn.get_attention_scores


def stages(attn, inputs):
    """Three views of a value change a (inner × text width): its values, the heads' outputs, the layer's."""
    w_out = attn.to_out[0].weight.detach().double()

    def values(a):
        return [x @ a.T for x, _ in inputs]

    def heads(a):
        return [torch.bmm(p, attn.head_to_batch_dim(v)) for v, (_, p) in zip(values(a), inputs, strict=True)]

    def layer(a):
        return [attn.batch_to_head_dim(h) @ w_out.T for h in heads(a)]

    # Q_ee of each view: Σ_b (Xᵀ X)_jj; Σ_b (Xᵀ A_hᵀ A_h X)_jj for row r's head h;
    # and that times (W_outᵀ W_out)_rr.
    inner = w_out.shape[1]
    head_of_row = torch.arange(inner) // (inner // attn.heads)
    text = sum((x**2).sum(dim=(0, 1)) for x, _ in inputs)
    per_head = torch.zeros(attn.heads, text.numel(), dtype=torch.float64)
    for x, p in inputs:
        ax = torch.bmm(p, x.repeat_interleave(attn.heads, dim=0))  # (batch·heads, positions, width)
        per_head += (ax**2).sum(dim=1).view(-1, attn.heads, text.numel()).sum(dim=0)
    through_heads = per_head[head_of_row]
    diagonals = {
        "values": text.expand(inner, -1),
        "attention heads": through_heads,
        "layer output": through_heads * (w_out**2).sum(dim=0)[:, None],
    }
    return {
        name: (view, diagonals[name])
        for name, view in (("values", values), ("attention heads", heads), ("layer output", layer))
    }


def reading_of(unet, reading: str, keys, thetas, draws, row: dict):
    """The module a ``--readings`` entry reads, and what is applied to its output.

    ``prediction`` reads the UNet's output; a module's name, that module's. ``R:silu``,
    ``R:conv1`` and ``R:whitened`` step through resnet R's first convolution, which has
    no module of its own between them: its first GroupNorm's output after the
    activation, then ``conv1`` of that (as reading ``R.conv1``), then ``conv1`` followed
    by the 1×1 map (W Wᵀ)^(-1/2), W the convolution's weight on the input channels the
    change reaches, flattened to (out, channels × 3 × 3): the same row space with
    every singular value 1. If a single entry's signal is back there, ``conv1`` only
    weights it down; if not, it removes it. The spectrum of W goes into ``row``.
    ``X:decorrelated`` reads X (a module or ``prediction``) in the metric of
    :func:`decorrelated`.
    """
    if reading == "prediction":
        return None, None
    if ":" not in reading:
        return reading, None
    name, step = reading.rsplit(":", 1)
    if step == "decorrelated":
        return decorrelated(unet, None if name == "prediction" else name, keys, thetas, draws, row)
    resnet = unet.get_submodule(name)
    if step == "silu":
        return f"{name}.norm1", resnet.nonlinearity
    if step == "conv1":
        return f"{name}.norm1", lambda out: resnet.conv1(resnet.nonlinearity(out))
    if step != "whitened":
        raise SystemExit(f"--readings: unknown step {step!r} in {reading!r} (silu, conv1, whitened)")
    probe = Linearised(unet, keys, thetas, draws[:1], f"{name}.norm1")
    change = probe.apply([torch.randn_like(t) for t in thetas])[0]
    reached = change.abs().sum(dim=(0, 2, 3)) > 0
    weight = resnet.conv1.weight.detach().double()[:, reached].flatten(1)
    whiten, values = inverse_root(weight @ weight.T)
    singular = values.sqrt().flip(0)
    row.setdefault("spectra", {})[name] = {
        "input channels reached": int(reached.sum()),
        "input channels": int(reached.numel()),
        "singular values, largest / median / smallest": [
            float(singular[0]),
            float(singular.median()),
            float(singular[-1]),
        ],
        "participation ratio / outputs": float(values.sum() ** 2 / (values**2).sum() / values.numel()),
    }
    print(f"  {name}.conv1 on the reached channels: {row['spectra'][name]}", flush=True)
    whiten = whiten.float()

    def whitened(out):
        return torch.einsum("oc,bchw->bohw", whiten, resnet.conv1(resnet.nonlinearity(out)))

    return f"{name}.norm1", whitened


def decorrelated(unet, module, keys, thetas, draws, row: dict):
    """Read ``module``'s output in the metric where random sets' changes are white (decorrelating_map)."""
    transform, spectrum = decorrelating_map(Linearised(unet, keys, thetas, draws, module))
    label = f"{module or 'prediction'} (random-set changes)"
    row.setdefault("spectra", {})[label] = spectrum
    print(f"  {label}: {spectrum}", flush=True)
    return module, transform


def judged(view, diagonal, shut, truth, theta) -> dict:
    """The view's objective of ``shut`` relative to nothing shut, and its exact best one-entry moves."""

    def f(a):
        return sum((y**2).sum() for y in view(a))

    a = ((shut - truth) * theta).requires_grad_(True)
    objective = f(a)
    (gradient,) = torch.autograd.grad(objective, a)
    with torch.no_grad():
        base = f(-truth * theta)
    curvature = theta**2 * diagonal
    return {"objective_of_set": float(objective.detach() / base)} | best_moves(
        (theta * gradient + curvature).flatten(),
        (-theta * gradient + curvature).flatten(),
        shut.flatten(),
        truth.flatten(),
    )


def run(args, pipe, seed: int) -> dict:
    unet = pipe.unet
    key = f"{args.module}.to_v.weight"
    theta = unet.state_dict()[key].detach().double()
    planted = plant(unet, [key], args.kind, args.fraction, seed)
    (truth,) = [m.double() for m in masks_of(planted, [key], [theta.shape])]
    k = int(truth.sum())
    # The draws of planted_gauss_newton.run for this seed and layer.
    prompt = f"a photo of a {args.token} {args.class_word}"
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    latents = teacher_latents(pipe, planted, prompt, list(range(args.images)))
    captions = preserved_captions(2 * args.captions, seed=99)
    contexts = torch.cat([embeddings(pipe, [prompt]), embeddings(pipe, captions[: args.captions])])
    draws = make_draws(scheduler, latents, contexts, args.batches, args.batch_size, seed)
    attn = unet.get_submodule(args.module)
    views = stages(attn, attention_inputs(unet, args.module, draws))
    row = {"seed": seed, "layer": key, "planted": k, "searched": truth.numel(), "overlaps": []}
    for share in args.overlaps:
        shut = sharing([truth], k, share, seed)[0]
        point = {"share of M": share}
        for name, (view, diagonal) in views.items():
            point[name] = judged(view, diagonal, shut, truth, theta)
            got = point[name]
            print(
                f"  seed {seed} {share:.2f} of M, {name:<15}: objective {got['objective_of_set']:.3f}; "
                f"best adds in M {got['adds that are in M']:.3f} (chance {got['adds, chance']:.4f}), "
                f"best drops wrong {got['drops that are not in M']:.3f} (chance {got['drops, chance']:.3f})",
                flush=True,
            )
        row["overlaps"].append(point)
    thetas, masks = [theta.float()], [truth.float()]
    for reading in args.readings:
        module, post = reading_of(unet, reading, [key], thetas, draws, row)
        operator = Linearised(unet, [key], thetas, draws, module, post)
        diagonal = gauss_newton_diagonal(operator, args.hutchinson)
        residuals = operator.apply([-thetas[0] * masks[0]])
        energy = sum(float((r.double() ** 2).sum()) for r in residuals)
        for point in row["overlaps"]:
            shut = sharing(masks, k, point["share of M"], seed)
            misfit = operator.apply([-thetas[0] * shut[0]])
            got = {
                "objective_of_set": sum(
                    float(((m - r).double() ** 2).sum()) for m, r in zip(misfit, residuals, strict=True)
                )
                / energy
            } | swap_scores(operator, thetas, residuals, diagonal, shut, masks)
            point[reading] = got
            print(
                f"  seed {seed} {point['share of M']:.2f} of M, {reading}: "
                f"objective {got['objective_of_set']:.3f}; best adds in M {got['adds that are in M']:.3f}, "
                f"best drops wrong {got['drops that are not in M']:.3f}",
                flush=True,
            )
        del operator
    return row


def main() -> None:
    parser = planted_arguments(__doc__)
    parser.add_argument("--token", default="sks")
    parser.add_argument("--class-word", default="circle")
    parser.add_argument("--images", type=int, default=32, help="teacher latents")
    parser.add_argument("--captions", type=int, default=512, help="world captions")
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--module",
        default="mid_block.attentions.0.transformer_blocks.0.attn2",
        help="the cross-attention layer",
    )
    parser.add_argument(
        "--overlaps", type=lambda text: [float(x) for x in text.split(",")], default=[0, 0.5, 0.75, 0.9, 0.97]
    )
    parser.add_argument(
        "--readings",
        type=lambda text: [name for name in text.split(",") if name],
        default=[],
        help="comma-separated modules further on whose outputs judge the same sets ('prediction': the "
        "UNet; RESNET:silu, RESNET:conv1, RESNET:whitened: the steps of its conv1, see reading_of)",
    )
    parser.add_argument("--hutchinson", type=int, default=64, help="samples of diag(JᵀJ) for --readings")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pipe = world.load_pipeline(args.model)
    pipe.unet.set_attn_processor(AttnProcessor())  # probabilities formed where they can be read
    run_seeds(args, pipe, run)


if __name__ == "__main__":
    main()
