"""Planted truth through the UNet, solved as the linear problem it nearly is: is the failure the conditioning?

    OMP_NUM_THREADS=1 python bench/planted_gauss_newton.py --model v2 --seeds 1,2,3 \
        --iterations 100 --json docs/planted-gauss-newton.json

bench/planted_exact.py (Finding 11) gives the searches the teacher's exact
predictions over 512 captions, and every search through the UNet recovers
the planted 1 % set at chance; bench/planted_kv.py (Finding 12) gives a
convex solver the exact change of the keys and values on the same captions'
tokens, and it recovers 0.93 of it. The hypothesis tested here: the
information is visible through the UNet, but first-order steps (the
gradient ranking, Adam) only move along the few text directions that carry
the token energy (16 of 256 carry 99 % of it; the token Gram's condition is
about 2e9), so they never resolve which entries were shut.

The planted change moves the output by about 1 % of its norm, so the
teacher's predictions are, to first order, ``f(θ) + J ΔW*`` with ΔW* = −θ ⊙ M.
Each search here solves the least-squares problem ``min ||J ΔW − r||²``
(r the teacher's prediction minus the base model's, J the Jacobian in the
searched K/V weights, through torch.func's jvp and vjp) by conjugate
gradients on the normal equations, from ΔW = 0:

- ``conjugate gradients``: plain CG (the control: the same solver without
  knowledge of the text);
- ``preconditioned CG``: CG preconditioned by the inverse of the text Gram
  ``A = Σ_t x_t x_tᵀ`` over the training prompts' tokens (the input factor of
  K-FAC; both K and V read the same text), damped to a condition of
  ``--condition``.

Two more solve for the shut amounts m directly, ΔW = −θ ⊙ m, on the same
linear model (projected gradient, step 1/L):

- ``box then top k``: m in [0, 1] (FISTA; convex), read as its k largest;
- ``k-sparse (IHT)``: m in [0, 1] with at most k nonzero (iterative hard
  thresholding), the planted set's own constraint.

``--metric decorrelated`` poses the same problems in the metric of the
outputs where the changes random sets make are white (decorrelating_map):
bench/planted_attention.py finds that the distillation loss's own metric is
ruled by a few output directions, and that in this one the one-entry moves
point at M again.

For these the log separates the three ways a set can fail: the linear
objective of m itself, of its top-k set (binarising), and the UNet's own
loss of that set on the same training draws (the nonlinearity), each
relative to the base model's (1 = no better than shutting nothing).

Each dense ΔW is read out as a shut set of |M| entries by the box solver of
bench/planted_kv.py (:func:`planted_exact.fista`, the K/V change on the
training tokens), and scored as planted_exact scores: recall of M and the
distillation loss on held-out draws (other latents, noise, timesteps and
512 other captions), beside the planted set and a random set of |M|.
Also reported: the dense ΔW's own held-out loss, its error in the keys and
values of the held-out captions (relative to the planted change), and how
well the planted change itself satisfies the linear model (``linear
residual of M``: near 0 means first order holds).

Two controls of whether M is identifiable at all, beside the solvers:
``--overlaps 0,0.5,0.9`` scores sets of |M| entries holding that share of M
(the rest random): how much the objective rewards overlap (compare
bench/planted_kv.py --overlaps, the same sets judged by their keys and
values, which a convex solver does recover). ``--swaps`` adds, for each
such set, whether the linear model's best one-entry moves from it (shut
one more, open one) point at M: a local search can only be led to M if
they do. ``--warm-start 0.5`` starts the shut-amount solvers at
such a set instead of at nothing shut: if they leave it for sets far from
M, M does not even sit in a basin of its own.
"""

from __future__ import annotations

import os
import sys
import time
from functools import cached_property
from pathlib import Path

os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from diffusers import DDPMScheduler  # noqa: E402
from diffusers.models.attention_processor import AttnProcessor  # noqa: E402
from oracle import preserved_captions  # noqa: E402
from planted_exact import (  # noqa: E402
    best_moves,
    embeddings,
    fista,
    gram,
    loss_and_gradient,
    make_draws,
    masks_of,
    planted_arguments,
    predictions,
    random_masks,
    recall,
    run_seeds,
    sharing,
    teacher_latents,
    top_k,
)
from torch.func import functional_call, jvp, vjp  # noqa: E402

from trainer import world  # noqa: E402
from trainer.config import TrainConfig, select_layers, unet_keys  # noqa: E402
from trainer.planted import plant  # noqa: E402
from trainer.xi import ConceptNeuronSearch  # noqa: E402

SOLVERS = [
    "conjugate gradients",
    "preconditioned CG",
    "box then top k",
    "k-sparse (IHT)",
    "Jacobi box then top k",
]


def dot(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return sum(float((x.double() * y.double()).sum()) for x, y in zip(a, b, strict=True))


class Linearised:
    """The UNet's predictions on fixed draws as a linear function of the change ΔW of the searched weights.

    ``apply(dw)`` is J ΔW per draw (forward-mode), ``adjoint(outputs)`` is
    Jᵀ applied to them (reverse mode, one stored graph per batch), and
    ``normal(dw)`` is JᵀJ ΔW / n with n the outputs counted. ``reading``, a
    submodule's name, reads that module's output instead of the prediction;
    ``post`` maps what is read on (a function of the read tensor, linearised
    with the rest), e.g. the next steps of a block that are not modules of their own.
    """

    def __init__(self, unet, keys, thetas, draws, reading: str | None = None, post=None):
        self.unet, self.keys, self.thetas, self.draws, self.reading = unet, keys, thetas, draws, reading
        self.post = post or (lambda out: out)

    @cached_property
    def _pairs(self):
        """(output, reverse-mode function) per draw, built on first use: ``apply`` alone needs none."""
        zero = [torch.zeros_like(theta) for theta in self.thetas]
        return [vjp(self.function(draw), zero) for draw in self.draws]

    @property
    def adjoints(self):
        return [back for _, back in self._pairs]

    @property
    def shapes(self):
        return [out.shape for out, _ in self._pairs]

    @property
    def outputs(self) -> int:
        return sum(out.numel() for out, _ in self._pairs)

    def function(self, draw):
        noisy, t, c = draw

        def f(dw):
            weights = {key: theta + d for key, theta, d in zip(self.keys, self.thetas, dw, strict=True)}
            if self.reading is None:
                out = functional_call(self.unet, weights, (noisy, t), {"encoder_hidden_states": c}).sample
                return self.post(out)
            read = {}

            def keep(_, __, out):  # returns None: the module's output goes on unchanged
                read["out"] = out if torch.is_tensor(out) else out[0]

            hook = self.unet.get_submodule(self.reading).register_forward_hook(keep)
            try:
                functional_call(self.unet, weights, (noisy, t), {"encoder_hidden_states": c})
            finally:
                hook.remove()
            return self.post(read["out"])

        return f

    def apply(self, dw: list[torch.Tensor]) -> list[torch.Tensor]:
        zero = [torch.zeros_like(theta) for theta in self.thetas]
        return [jvp(self.function(draw), (zero,), (dw,))[1].detach() for draw in self.draws]

    def adjoint(self, outputs: list[torch.Tensor]) -> list[torch.Tensor]:
        total = [torch.zeros_like(theta) for theta in self.thetas]
        for back, out in zip(self.adjoints, outputs, strict=True):
            for acc, g in zip(total, back(out)[0], strict=True):
                acc += g.detach()
        return [acc / self.outputs for acc in total]

    def normal(self, dw: list[torch.Tensor]) -> list[torch.Tensor]:
        return self.adjoint(self.apply(dw))


def inverse_root(gram: torch.Tensor, floor: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """G^(-1/2) of a symmetric positive (semi)definite G, and G's eigenvalues (ascending), those below
    ``floor`` times the largest raised to it first."""
    values, vectors = torch.linalg.eigh(gram)
    values = values.clamp(min=floor * float(values[-1]))
    return (vectors * values.rsqrt()) @ vectors.T, values


def decorrelating_map(operator: Linearised, sets: int = 32, fraction: float = 0.01, seed: int = 12345):
    """C^(-1/2) as a map on the operator's outputs, C the covariance of the changes random sets make there.

    C is over one output element's values (a sample's channels × positions as one
    vector), estimated from ``sets`` random sets of ``fraction`` of the searched entries
    shut, each over every draw: the metric in which the changes any random set makes
    are white. Eigenvalues below 1e-6 of the largest are floored there. Returns the
    map and a summary of C's spectrum.
    """
    generator = torch.Generator().manual_seed(seed)
    columns = []
    for _ in range(sets):
        shut = [(torch.rand(t.shape, generator=generator) < fraction).float() for t in operator.thetas]
        dw = [-t * m for t, m in zip(operator.thetas, shut, strict=True)]
        columns += [out.flatten(1).double() for out in operator.apply(dw)]
    changes = torch.cat(columns)
    white, values = whitening(changes.T @ changes / len(changes), floor=1e-6)
    return white, {"dimensions": int(values.numel()), "vectors": int(len(changes))} | change_spectrum(values)


def whitening(covariance: torch.Tensor, floor: float):
    """The map r ↦ C^(-1/2) r on a batch of outputs (each flattened to one vector), and C's eigenvalues
    (ascending, those below ``floor`` times the largest raised to it)."""
    transform, values = inverse_root(covariance, floor)
    transform = transform.float()

    def white(out):
        return (out.flatten(1) @ transform.T).view(out.shape)

    return white, values


def change_spectrum(values: torch.Tensor) -> dict:
    """A summary of a covariance's eigenvalues (ascending): its size, range, and how few directions hold
    90 / 99 % of it."""
    share = values.flip(0).cumsum(0) / values.sum()
    return {
        "dimensions": int(values.numel()),
        "eigenvalues, largest / median / smallest": [
            float(values[-1]),
            float(values.median()),
            float(values[0]),
        ],
        "directions holding 90 / 99 % of the change": [
            int((share < 0.9).sum()) + 1,
            int((share < 0.99).sum()) + 1,
        ],
    }


def conjugate_gradients(operator: Linearised, rhs, precondition, iterations: int, log) -> list[torch.Tensor]:
    """(Preconditioned) CG on JᵀJ ΔW = Jᵀ r from ΔW = 0; ``precondition`` maps a residual to M⁻¹ of it."""
    x = [torch.zeros_like(g) for g in rhs]
    residual = [g.clone() for g in rhs]
    z = precondition(residual)
    direction = [zi.clone() for zi in z]
    rz = dot(residual, z)
    for iteration in range(1, iterations + 1):
        product = operator.normal(direction)
        step = rz / dot(direction, product)
        x = [xi + step * p for xi, p in zip(x, direction, strict=True)]
        residual = [r - step * q for r, q in zip(residual, product, strict=True)]
        z = precondition(residual)
        rz_next = dot(residual, z)
        direction = [zi + (rz_next / rz) * p for zi, p in zip(z, direction, strict=True)]
        rz = rz_next
        log(iteration, x)
    return x


def keep_k(v: list[torch.Tensor], k: int) -> list[torch.Tensor]:
    """The nearest point of {m in [0, 1], at most k nonzero} to ``v``: clamp, keep the k that gain most."""
    clamped = [x.clamp(0.0, 1.0) for x in v]
    gain = [
        c * (2 * x - c) for c, x in zip(clamped, v, strict=True)
    ]  # ||c||² - ||c - x||² + ||x||² per entry
    return [c * keep for c, keep in zip(clamped, top_k(gain, k), strict=True)]


def swap_scores(operator: Linearised, thetas, residuals, diagonal, shut, truth) -> dict:
    """Do one-entry moves from ``shut`` point at M? The linear model's exact change of ``||J(−θ⊙s) − r||²/n``.

    With a = J(−θ ⊙ s) − r, g = Jᵀa / n and D = diag(JᵀJ) / n (Hutchinson),
    shutting one more entry e changes the objective by −2θ_e g_e + θ_e² D_e,
    opening a shut one by +2θ_e g_e + θ_e² D_e. Scored: the share of M's
    missing entries among as many best adds (outside s), and of the wrong
    entries among as many best drops (inside s), each beside its chance.
    """
    misfit = [
        o - r
        for o, r in zip(
            operator.apply([-t * x for t, x in zip(thetas, shut, strict=True)]), residuals, strict=True
        )
    ]
    g = operator.adjoint(misfit)
    flat = lambda tensors: torch.cat([x.flatten() for x in tensors])  # noqa: E731
    theta, g, d = flat(thetas), flat(g), flat(diagonal)
    return best_moves(-2 * theta * g + theta**2 * d, 2 * theta * g + theta**2 * d, flat(shut), flat(truth))


def gauss_newton_diagonal(operator: Linearised, samples: int, seed: int = 0) -> list[torch.Tensor]:
    """diag(JᵀJ) / n, estimated as E[(Jᵀz)²] / n over Rademacher z on the outputs (Hutchinson)."""
    generator = torch.Generator().manual_seed(seed)
    total = [torch.zeros_like(theta) for theta in operator.thetas]
    for _ in range(samples):
        z = [torch.randint(0, 2, shape, generator=generator).float() * 2 - 1 for shape in operator.shapes]
        for acc, g in zip(total, operator.adjoint(z), strict=True):
            acc += g.double() ** 2
    return [(acc * operator.outputs / samples).float() for acc in total]


def shut_amounts(
    operator: Linearised, thetas, residuals, k, iterations: int, sparse: bool, log, metric=None, start=None
):
    """Shut amounts m minimising ½ ||J(−θ ⊙ m) − r||² / n: projected gradient on the linearised model.

    ``sparse=False``: m in [0, 1] (the box relaxation; FISTA, convex), read as the
    k largest; ``sparse=True``: m in [0, 1] with at most k nonzero (iterative
    hard thresholding, no momentum), the planted set's own constraint. Step
    1 / L with L the largest eigenvalue of m ↦ θ ⊙ JᵀJ (θ ⊙ m) / n (power
    iteration). With ``metric`` (a positive diagonal D, one tensor a layer) the
    steps are D⁻¹ times the gradient and L is that of D^(-1/2) H D^(-1/2): FISTA
    in the metric D, where the box projection is still a clamp. ``start``: the
    first iterate (default 0, nothing shut). Logs the linear objective of the
    iterate.
    """
    metric = metric or [torch.ones_like(t) for t in thetas]
    root = [d.rsqrt() for d in metric]  # D^(-1/2)

    def hessian(v):  # D^(-1/2) θ ⊙ JᵀJ (θ ⊙ D^(-1/2) v) / n
        scaled = [t * r * x for t, r, x in zip(thetas, root, v, strict=True)]
        return [t * r * g for t, r, g in zip(thetas, root, operator.normal(scaled), strict=True)]

    generator = torch.Generator().manual_seed(0)
    v = [torch.randn(t.shape, generator=generator) for t in thetas]
    for _ in range(8):
        w = hessian(v)
        lipschitz = dot(w, v) / dot(v, v)
        v = [x / dot(w, w) ** 0.5 for x in w]
    step = 1.0 / (1.05 * lipschitz)
    scale = sum(float((r.double() ** 2).sum()) for r in residuals) / operator.outputs
    m = [x.clone() for x in start] if start is not None else [torch.zeros_like(t) for t in thetas]
    y, momentum = m, 1.0
    for iteration in range(1, iterations + 1):
        misfit = [
            o - r
            for o, r in zip(
                operator.apply([-t * x for t, x in zip(thetas, y, strict=True)]), residuals, strict=True
            )
        ]
        objective = sum(float((e.double() ** 2).sum()) for e in misfit) / operator.outputs
        gradient = [-t * g for t, g in zip(thetas, operator.adjoint(misfit), strict=True)]
        moved = [x - step * g / d for x, g, d in zip(y, gradient, metric, strict=True)]
        m_next = keep_k(moved, k) if sparse else [x.clamp(0.0, 1.0) for x in moved]
        if sparse:
            y = m_next
        else:
            momentum_next = (1 + (1 + 4 * momentum**2) ** 0.5) / 2
            y = [a + (momentum - 1) / momentum_next * (a - b) for a, b in zip(m_next, m, strict=True)]
            momentum = momentum_next
        m = m_next
        log(iteration, m, objective / scale)
    return m


def text_preconditioner(features: torch.Tensor, condition: float):
    """ΔW ↦ ΔW (A + εI)⁻¹ per searched layer, A the text Gram, ε = λ_max / ``condition``."""
    a = gram(features)
    eps = float(torch.linalg.eigvalsh(a)[-1]) / condition
    inverse = torch.linalg.inv(a + eps * torch.eye(a.shape[0], dtype=a.dtype)).float()

    def precondition(residual):
        return [r @ inverse for r in residual]

    return precondition


@torch.no_grad()
def dense_loss(unet, keys, thetas, dw, draws, targets) -> float:
    total = 0.0
    weights = {key: theta + d for key, theta, d in zip(keys, thetas, dw, strict=True)}
    for (noisy, t, c), target in zip(draws, targets, strict=True):
        out = functional_call(unet, weights, (noisy, t), {"encoder_hidden_states": c}).sample
        total += float(((out.float() - target) ** 2).mean()) / len(draws)
    return total


def kv_error(dw, truth_dw, held_gram) -> float:
    """||(ΔW − ΔW*) Xᵀ|| / ||ΔW* Xᵀ|| over the held-out captions' tokens X (the keys' and values' error)."""
    error = sum(
        float(((d.double() - t) @ held_gram * (d.double() - t)).sum())
        for d, t in zip(dw, truth_dw, strict=True)
    )
    norm = sum(float((t @ held_gram * t).sum()) for t in truth_dw)
    return (error / norm) ** 0.5


def run(args, pipe, seed: int) -> dict:
    unet = pipe.unet
    keys = select_layers(unet_keys(args.model), args.layers)
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
    train_c = torch.cat([instance, embeddings(pipe, captions[: args.captions])])
    held_c = torch.cat([instance, embeddings(pipe, captions[args.captions :])])
    # The same draws as planted_exact's "instance prompt + captions" objective for this seed.
    draws = make_draws(scheduler, train_latents, train_c, args.batches, args.batch_size, seed)
    held = make_draws(scheduler, held_latents, held_c, args.batches, args.batch_size, seed + 7)
    targets = predictions(unet, planted, draws)
    held_targets = predictions(unet, planted, held)
    base = predictions(unet, None, draws)
    residuals = [target - b for target, b in zip(targets, base, strict=True)]

    thetas = [unet.state_dict()[key].detach().clone() for key in keys]
    truth_dw = [-(theta.double() * m.double()) for theta, m in zip(thetas, truth, strict=True)]
    held_gram = gram(held_c)
    search = ConceptNeuronSearch(unet, keys)

    def held_loss(masks):
        return loss_and_gradient(search, masks, held, held_targets, False)[0]

    zero = [torch.zeros(s) for s in shapes]
    base_loss = held_loss(zero)
    row = {
        "seed": seed,
        "planted": k,
        "searched": n,
        "outputs": sum(noisy.numel() for noisy, _, _ in draws),
        "chance": k / n,
        "base held-out loss": base_loss,
        "planted held-out loss": held_loss(truth),
        "random": {"recall": recall(random_masks(truth, k, seed), truth)},
        "searches": {},
    }
    row["random"]["held_out_loss"] = held_loss(random_masks(truth, k, seed))

    def report(name, result):
        row["searches"][name] = result
        print(
            f"  seed {seed} {name:<20} shut set: recall {result['recall']:.3f} (chance {k / n:.3f}), "
            f"held-out loss {result['held_out_loss']:.3e} = {result['held_out_loss'] / base_loss:.2f} x base "
            f"(random {row['random']['held_out_loss'] / base_loss:.2f} x)",
            flush=True,
        )

    started = time.perf_counter()
    operator = Linearised(unet, keys, thetas, draws)
    if args.metric == "decorrelated":
        # The linear model and its solvers in the metric where random sets' changes are white.
        white, row["metric spectrum"] = decorrelating_map(operator, fraction=args.fraction)
        operator = Linearised(unet, keys, thetas, draws, post=white)
        residuals = [white(r) for r in residuals]
        print(f"  seed {seed}: decorrelated metric, {row['metric spectrum']}", flush=True)
    rhs = operator.adjoint(residuals)
    residual_energy = sum(float((r.double() ** 2).sum()) for r in residuals)

    def linear_misfit(masks):
        """||J(−θ ⊙ mask) − r||² / ||r||²: the linear model's verdict on a set."""
        linear = operator.apply([-t * m for t, m in zip(thetas, masks, strict=True)])
        return (
            sum(float(((lin - r).double() ** 2).sum()) for lin, r in zip(linear, residuals, strict=True))
            / residual_energy
        )

    def train_loss(masks):
        return loss_and_gradient(search, masks, draws, targets, False)[0]

    base_train_loss = train_loss(zero)
    row["linear residual of M"] = linear_misfit(truth)
    print(
        f"  seed {seed}: planted {k} of {n}; linear residual of M {row['linear residual of M']:.4f} "
        f"({time.perf_counter() - started:.0f} s)",
        flush=True,
    )
    if args.overlaps:
        # How the objective rates sets by how much of M they hold: is M identifiable with a margin?
        row["overlaps"] = []
        diagonal = gauss_newton_diagonal(operator, args.hutchinson) if args.swaps else None
        for share in args.overlaps:
            shut = sharing(truth, k, share, seed)
            point = {
                "share of M": share,
                "linear_objective_of_set": linear_misfit(shut),
                "train_objective_of_set": train_loss(shut) / base_train_loss,
                "held_out_loss": held_loss(shut) / base_loss,
            }
            if args.swaps:
                point.update(swap_scores(operator, thetas, residuals, diagonal, shut, truth))
                print(
                    f"  seed {seed} from a set holding {share:.2f} of M, one entry changed: the best "
                    f"adds hold {point['adds that are in M']:.3f} of M's missing entries (chance "
                    f"{point['adds, chance']:.4f}), the best drops {point['drops that are not in M']:.3f} "
                    f"of the wrong ones (chance {point['drops, chance']:.3f})",
                    flush=True,
                )
            row["overlaps"].append(point)
            print(
                f"  seed {seed} a set holding {share:.2f} of M: "
                f"linear {point['linear_objective_of_set']:.3f}, "
                f"UNet {point['train_objective_of_set']:.3f} (train), held-out loss "
                f"{point['held_out_loss']:.3f} x base",
                flush=True,
            )
    start = sharing(truth, k, args.warm_start, seed) if args.warm_start is not None else None
    groups = {}
    if start is not None:
        groups = {
            "started and in M": [a * b for a, b in zip(start, truth, strict=True)],
            "started, not in M": [a * (1 - b) for a, b in zip(start, truth, strict=True)],
            "in M, not started": [(1 - a) * b for a, b in zip(start, truth, strict=True)],
            "the rest": [(1 - a) * (1 - b) for a, b in zip(start, truth, strict=True)],
        }
    row["warm start"] = args.warm_start
    solvers = {
        "conjugate gradients": lambda residual: residual,
        "preconditioned CG": text_preconditioner(train_c, args.condition),
    }
    for name, precondition in solvers.items():
        if name not in args.solvers:
            continue
        started = time.perf_counter()
        trace = []

        def log(iteration, dw, name=name, trace=trace, started=started):
            if iteration % args.every and iteration != args.iterations:
                return
            point = {
                "iteration": iteration,
                "held_out_loss_dense": dense_loss(unet, keys, thetas, dw, held, held_targets),
                "kv_error_held_out": kv_error(dw, truth_dw, held_gram),
                "recall_ratio": recall(
                    top_k([(-d / t).nan_to_num(0.0) for d, t in zip(dw, thetas, strict=True)], k), truth
                ),
                "seconds": time.perf_counter() - started,
            }
            trace.append(point)
            print(
                f"  seed {seed} {name:<20} it {iteration:3d}: dense held-out loss "
                f"{point['held_out_loss_dense']:.3e} (base {base_loss:.3e}), K/V error "
                f"{point['kv_error_held_out']:.3f}, recall of −ΔW/θ {point['recall_ratio']:.3f} "
                f"({point['seconds']:.0f} s)",
                flush=True,
            )

        dw = conjugate_gradients(operator, rhs, precondition, args.iterations, log)
        amounts = fista(
            [-d.double() for d in dw], [t.double() for t in thetas], gram(train_c), 0.0, args.fista_steps
        )
        shut = top_k([c.float() for c in amounts], k)
        result = {
            "recall": recall(shut, truth),
            "held_out_loss": held_loss(shut),
            "held_out_loss_dense": trace[-1]["held_out_loss_dense"],
            "kv_error_held_out": trace[-1]["kv_error_held_out"],
            "seconds": time.perf_counter() - started,
            "trace": trace,
        }
        report(name, result)
    for name, sparse in (
        ("box then top k", False),
        ("k-sparse (IHT)", True),
        ("Jacobi box then top k", False),
    ):
        if name not in args.solvers:
            continue
        started = time.perf_counter()
        metric = None
        if name.startswith("Jacobi"):
            # D = θ² ⊙ diag(JᵀJ)/n, the shut amounts' own Gauss-Newton diagonal, floored at
            # --damping of its mean so that entries the outputs barely see do not take huge steps.
            diagonal = gauss_newton_diagonal(operator, args.hutchinson)
            metric = [t**2 * d for t, d in zip(thetas, diagonal, strict=True)]
            floor = args.damping * sum(float(d.sum()) for d in metric) / n
            metric = [d.clamp_min(floor) for d in metric]
        trace = []

        def log(iteration, m, objective, name=name, trace=trace, started=started):
            if iteration % args.every and iteration != args.sparse_iterations:
                return
            shut = top_k(m, k)
            point = {
                "iteration": iteration,
                "linear_objective": objective,
                # The set itself, on the training draws: linear model, then the UNet.
                "linear_objective_of_set": linear_misfit(shut),
                "train_objective_of_set": train_loss(shut) / base_train_loss,
                "recall": recall(shut, truth),
                "held_out_loss": held_loss(shut),
                "seconds": time.perf_counter() - started,
            }
            if start is not None:  # where the iterate's mass sits: has it left the start's wrong entries?
                for group, weights in groups.items():
                    point[f"mean shut amount, {group}"] = sum(
                        float((x * w).sum()) for x, w in zip(m, weights, strict=True)
                    ) / max(1.0, sum(float(w.sum()) for w in weights))
            trace.append(point)
            if start is not None:
                print(
                    "  " + ", ".join(f"{g}: mean m {point[f'mean shut amount, {g}']:.4f}" for g in groups),
                    flush=True,
                )
            print(
                f"  seed {seed} {name:<20} it {iteration:3d}: linear objective {objective:.4f} "
                f"(M {row['linear residual of M']:.4f}); its top k: linear "
                f"{point['linear_objective_of_set']:.3f}, "
                f"UNet {point['train_objective_of_set']:.2f}; recall {point['recall']:.3f}, held-out loss "
                f"{point['held_out_loss'] / base_loss:.2f} x base ({point['seconds']:.0f} s)",
                flush=True,
            )

        shut_amounts(operator, thetas, residuals, k, args.sparse_iterations, sparse, log, metric, start)
        result = dict(trace[-1], trace=trace)
        report(name, result)
    return row


def main() -> None:
    parser = planted_arguments(__doc__)
    parser.add_argument("--token", default="sks")
    parser.add_argument("--class-word", default="circle")
    parser.add_argument("--images", type=int, default=32, help="teacher latents, training and held out")
    parser.add_argument("--captions", type=int, default=512, help="world captions, training and held out")
    parser.add_argument(
        "--layers",
        default=TrainConfig.layers,
        help="searched (and planted) layers: a preset or state-dict globs; fewer unknowns than outputs "
        "asks whether the outputs identify the set at all",
    )
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--iterations", type=int, default=40, help="CG iterations")
    parser.add_argument("--every", type=int, default=10, help="score the dense change every this many")
    parser.add_argument("--sparse-iterations", type=int, default=150, help="of the shut-amount solvers")
    parser.add_argument(
        "--solvers",
        type=lambda text: [name for name in text.split(",") if name],
        default=SOLVERS,
        help=f"comma-separated, of {','.join(SOLVERS)} ('' for none: --overlaps alone)",
    )
    parser.add_argument("--condition", type=float, default=1e6, help="of the damped text Gram")
    parser.add_argument("--fista-steps", type=int, default=3000)
    parser.add_argument("--hutchinson", type=int, default=32, help="samples of the Jacobi solver's diagonal")
    parser.add_argument("--damping", type=float, default=0.01, help="its floor, relative to its mean")
    parser.add_argument(
        "--overlaps",
        type=lambda text: [float(x) for x in text.split(",")],
        default=[],
        help="comma-separated shares of M: score sets holding that share of M, the rest random",
    )
    parser.add_argument(
        "--swaps",
        action="store_true",
        help="with --overlaps: do the linear model's best one-entry adds and drops from each set point at M?",
    )
    parser.add_argument(
        "--warm-start",
        type=float,
        default=None,
        help="start the shut-amount solvers at a set holding this share of M (default: from nothing shut)",
    )
    parser.add_argument(
        "--metric",
        choices=["euclidean", "decorrelated"],
        default="euclidean",
        help="of the linear model's outputs: the distillation loss's own, or where random sets' changes are "
        "white (decorrelating_map); the held-out losses reported stay the distillation loss",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if unknown := [name for name in args.solvers if name not in SOLVERS]:
        parser.error(f"unknown solver {', '.join(map(repr, unknown))}; choose from {', '.join(SOLVERS)}")
    torch.set_num_threads(args.threads)
    pipe = world.load_pipeline(args.model)
    pipe.unet.set_attn_processor(AttnProcessor())  # plain matmuls: forward-mode AD runs through them
    run_seeds(args, pipe, run)


if __name__ == "__main__":
    main()
