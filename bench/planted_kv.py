"""Planted truth read off the keys and values themselves: does the world's text pin the set down?

    OMP_NUM_THREADS=1 python bench/planted_kv.py --model v2 --seeds 1,2,3 --json docs/planted-kv.json

bench/planted_exact.py (Finding 11) shows that even with the teacher's exact
predictions as targets the search recovers a planted random 1 % set at
about chance. That leaves two causes: the set is not identifiable from
what the text features let it do (the world: its text features have low
effective rank, so many sets change the keys and values alike), or it is,
and the search through the UNet does not find it (the search). This bench
removes the UNet. It gives the search the planted set's exact change of
every key and value,

    R = (M ⊙ W) Xᵀ          for every searched weight W, X the text features,

over the tokens of the instance prompt ("a photo of a sks circle": 24
positions, all that the instance-prompt objective depends on), of the
instance and the empty prompt (all that the teacher's guided images of it
depend on), or of the instance prompt and 512 world captions (what the
whole model's text can tell), and solves the
relaxed problem of the concept-neuron search in closed, convex form

    min over c in [0, 1]:   ½ ||((c − M) ⊙ W) Xᵀ||²  +  α λ₀ Σ c

by FISTA (projected, accelerated gradient; λ₀ is the largest gradient at
c = 0, so α is scale-free). The |M| largest c are the found set. It is
scored by recall of M and by the share of M's key/value change it leaves
unexplained on the tokens of 512 *other* captions (1 for the base model, 0
for M; a random set of the same size is about 2).

If recall is high here, the text carries the set and Finding 11's failure is
the search's (what the UNet lets it see); if it is low, no search of the UNet
can recover a planted random set in this world.

``--overlaps 0,0.5,0.9`` is the control of bench/planted_gauss_newton.py on
the same footing: it scores sets of |M| entries holding that share of M (the
same sets for the same seed and layers) by this objective on the captions'
tokens, and whether its exact best one-entry moves from each (shut one more,
open one) point at M. Beside the UNet's verdict on the same sets it says
whether what the keys and values can tell survives the UNet. ``--layers``
takes the searched layers as that bench does.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from oracle import preserved_captions  # noqa: E402
from planted_exact import (  # noqa: E402
    best_moves,
    embeddings,
    fista,
    gram,
    masks_of,
    planted_arguments,
    random_masks,
    recall,
    sharing,
    top_k,
)

from trainer import world  # noqa: E402
from trainer.config import TrainConfig, select_layers, unet_keys  # noqa: E402
from trainer.planted import plant  # noqa: E402


def unexplained(found: list[torch.Tensor], truth: list[torch.Tensor], weights, c_held) -> float:
    """||((found − M) ⊙ W) Xᵀ||² / ||(M ⊙ W) Xᵀ||² on held-out tokens (X given by its Gram matrix)."""
    miss = sum(
        float(((((f - m) * w) @ c_held) * ((f - m) * w)).sum())
        for f, m, w in zip(found, truth, weights, strict=True)
    )
    total = sum(float((((m * w) @ c_held) * (m * w)).sum()) for m, w in zip(truth, weights, strict=True))
    return miss / total


def moves_from(shut, truth, weights, c_train) -> dict:
    """This objective's verdict on a set, ||((s − M) ⊙ W) Xᵀ||² / ||(M ⊙ W) Xᵀ||², and its one-entry moves.

    With a = (s − M) ⊙ W per row and G = XᵀX, shutting one more entry (r, j) changes
    ||a G^½||² by 2 W_rj (aG)_rj + W_rj² G_jj, opening one by −2 W_rj (aG)_rj + W_rj² G_jj.
    """
    total = sum(float((((m * w) @ c_train) * (m * w)).sum()) for m, w in zip(truth, weights, strict=True))
    objective, adds, drops = 0.0, [], []
    for s, m, w in zip(shut, truth, weights, strict=True):
        a = (s - m) * w
        ag = a @ c_train
        objective += float((ag * a).sum())
        curvature = w**2 * torch.diagonal(c_train)
        adds.append((2 * w * ag + curvature).flatten())
        drops.append((-2 * w * ag + curvature).flatten())
    flat = lambda tensors: torch.cat([x.flatten() for x in tensors])  # noqa: E731
    return {"objective_of_set": objective / total} | best_moves(
        torch.cat(adds), torch.cat(drops), flat(shut), flat(truth)
    )


def spectrum(c: torch.Tensor) -> dict:
    values = torch.linalg.eigvalsh(c).flip(0).clamp_min(0)
    share = torch.cumsum(values, 0) / values.sum()
    return {
        "rank_99": int((share < 0.99).sum()) + 1,
        "rank_999": int((share < 0.999).sum()) + 1,
        "condition_top_over_256th": float(values[0] / values[-1].clamp_min(1e-300)),
    }


def main() -> None:
    parser = planted_arguments(__doc__)
    parser.add_argument("--prompt", default="a photo of a sks circle")
    parser.add_argument("--captions", type=int, default=512)
    parser.add_argument("--alphas", default="0,0.001,0.01")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument(
        "--layers",
        default=TrainConfig.layers,
        help="searched (and planted) layers: a preset or state-dict globs",
    )
    parser.add_argument(
        "--overlaps",
        type=lambda text: [float(x) for x in text.split(",")],
        default=[],
        help="comma-separated shares of M: score sets holding that share of M and their best one-entry moves",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pipe = world.load_pipeline(args.model)
    unet = pipe.unet
    keys = select_layers(unet_keys(args.model), args.layers)
    state = unet.state_dict()
    weights = [state[key].double() for key in keys]
    captions = preserved_captions(2 * args.captions, seed=99)
    instance = embeddings(pipe, [args.prompt])
    grams = {
        "instance prompt": gram(instance),
        "instance and empty prompt": gram(torch.cat([instance, embeddings(pipe, [""])])),
        "instance prompt + captions": gram(
            torch.cat([instance, embeddings(pipe, captions[: args.captions])])
        ),
    }
    c_held = gram(embeddings(pipe, captions[args.captions :]))
    started = time.perf_counter()
    report = {
        "date": date.today().isoformat(),
        "machine": platform.machine(),
        "args": {k: str(v) for k, v in vars(args).items()},
        "spectra": {name: spectrum(c) for name, c in grams.items()} | {"held-out captions": spectrum(c_held)},
        "rows": [],
    }
    print(json.dumps(report["spectra"]), flush=True)
    for seed in [int(s) for s in args.seeds.split(",")]:
        truth = [
            m.double()
            for m in masks_of(
                plant(unet, keys, args.kind, args.fraction, seed), keys, [w.shape for w in weights]
            )
        ]
        k = int(sum(float(m.sum()) for m in truth))
        random_set = random_masks(truth, k, seed)
        searched = sum(m.numel() for m in truth)
        row = {"seed": seed, "planted": k, "searched": searched, "chance": k / searched, "sets": {}}
        row["sets"]["random"] = {
            "recall": recall(random_set, truth),
            "unexplained": unexplained(random_set, truth, weights, c_held),
        }
        for name, c_train in grams.items():
            # Least squares without box or sparsity: (c ⊙ W) fitted freely, the rank's verdict alone.
            projector = c_train @ torch.linalg.pinv(c_train, hermitian=True)
            free = top_k(
                [
                    torch.where(w != 0, ((m * w) @ projector) / w, 0.0)
                    for m, w in zip(truth, weights, strict=True)
                ],
                k,
            )
            label = f"{name}: least squares"
            row["sets"][label] = {
                "recall": recall(free, truth),
                "unexplained": unexplained(free, truth, weights, c_held),
            }
            for alpha in [float(a) for a in args.alphas.split(",")]:
                c = fista(
                    [m * w for m, w in zip(truth, weights, strict=True)], weights, c_train, alpha, args.steps
                )
                found = top_k(c, k)
                label = f"{name}: box lasso alpha={alpha:g}"
                row["sets"][label] = {
                    "recall": recall(found, truth),
                    "unexplained": unexplained(found, truth, weights, c_held),
                    "entries_above_half": int(sum(float((x > 0.5).sum()) for x in c)),
                }
        row["overlaps"] = []
        for share in args.overlaps:
            shut = sharing(truth, k, share, seed)
            point = {"share of M": share} | moves_from(
                shut, truth, weights, grams["instance prompt + captions"]
            )
            point["unexplained"] = unexplained(shut, truth, weights, c_held)
            row["overlaps"].append(point)
            print(
                f"  seed {seed} a set holding {share:.2f} of M: K/V objective "
                f"{point['objective_of_set']:.3f} (held out {point['unexplained']:.3f}); best adds hold "
                f"{point['adds that are in M']:.3f} of M's missing entries "
                f"(chance {point['adds, chance']:.4f}), best drops "
                f"{point['drops that are not in M']:.3f} of the wrong ones "
                f"(chance {point['drops, chance']:.3f})",
                flush=True,
            )
        for label, values in row["sets"].items():
            print(
                f"  seed {seed} {label:<58} recall {values['recall']:.3f}  "
                f"unexplained {values['unexplained']:.3f}",
                flush=True,
            )
        report["rows"].append(row)
    report["seconds"] = time.perf_counter() - started
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
