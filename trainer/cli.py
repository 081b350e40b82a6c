"""``cones train``: the trainer's subcommands (argument parsing only; torch loads on use).

cones train --model sd15 --images my-cat/ --token sks --class-word cat --sparsity 0.01 --out cat.cones
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .config import VALUE_CHOICES
from .errors import UsageError

#: Exceptions the ``cones`` command reports as one line (see conesfmt.cli).
USER_ERRORS = (UsageError,)


def default(field: str):
    """A SearchConfig field's default: the one place the commands' defaults live."""
    from dataclasses import fields

    from .config import SearchConfig

    return next(f.default for f in fields(SearchConfig) if f.name == field)


def add_search_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``train`` and ``refine``: the model, the descent, the selection, the hardware."""
    parser.add_argument(
        "--model",
        required=True,
        type=Path,
        help="local diffusers folder: SD 1.x/2.x, SDXL, SD3 or Flux (read from its model_index.json)",
    )
    parser.add_argument(
        "--steps", type=int, default=default("steps"), help=f"gradient steps K (default {default('steps')})"
    )
    parser.add_argument(
        "--lr",
        type=float,
        default=default("lr"),
        help="step rho of the plain descent on xi (default: calibrated on the first batches so that "
        "the entries with the largest gradients travel --travel in K steps)",
    )
    parser.add_argument(
        "--travel",
        type=float,
        default=default("travel"),
        help=f"with the calibrated step, how far xi of those entries moves in K steps "
        f"(default {default('travel'):g}: xi stays near 1; 1: from open to shut)",
    )
    # At most one of the two; TrainConfig.validate checks it, for a one-line error.
    parser.add_argument("--tau", type=float, help="threshold: shut entries with xi < 1 - lr*tau (eq. A20)")
    parser.add_argument(
        "--sparsity",
        type=float,
        help="shut this fraction of the searched entries, e.g. 0.01 (default, with no --tau either: "
        "the count with the lowest held-out loss)",
    )
    parser.add_argument(
        "--values",  # checked by SearchConfig.validate, for the one-line error of every option
        default=None,
        metavar="{" + ",".join(VALUE_CHOICES) + "}",
        help="what the container stores on each concept neuron: "
        + "; ".join(f"{kind}: {what}" for kind, what in VALUE_CHOICES.items())
        + ". Other than binary, xi is then trained on the found neurons only, starting shut, and "
        "kept only if it is no worse than shutting on held-out draws (default: binary for train; for refine "
        "the most precise kind among the inputs)",
    )
    parser.add_argument(
        "--value-steps",
        type=int,
        help="gradient steps of the value training (default: a third of --steps, "
        f"{max(1, default('steps') // 3)} at the default)",
    )
    parser.add_argument(
        "--value-lr",
        type=float,
        help="Adam's step on xi in the value training (default: 2 / --value-steps)",
    )
    parser.add_argument(
        "--prior-weight",
        type=float,
        default=default("prior_weight"),
        help=f"lambda of the prior loss (default {default('prior_weight'):g})",
    )
    parser.add_argument(
        "--preserve-weight",
        type=float,
        default=default("preserve_weight"),
        help="mu: keep the base model's predictions for the class and the empty prompt "
        f"(default {default('preserve_weight'):g})",
    )
    parser.add_argument(
        "--num-class-images",
        type=int,
        default=default("num_class_images"),
        help=f"prior images per class (default {default('num_class_images')})",
    )
    parser.add_argument(
        "--class-image-steps",
        type=int,
        default=default("class_image_steps"),
        help=f"sampling steps for generated prior images (default {default('class_image_steps')})",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=default("batch_size"),
        help=f"subject images per step, and as many prior (default {default('batch_size')})",
    )
    parser.add_argument(
        "--resolution",
        type=int,
        help="pixels; images are resized and cropped (default: the model's own, e.g. 512 for SD 1.x)",
    )
    parser.add_argument("--no-flip", dest="flip", action="store_false", help="no mirror-image augmentation")
    parser.add_argument(
        "--mixed-precision",
        choices=["no", "fp16", "bf16"],
        default="no",
        help="weights in fp16/bf16, xi in fp32 (fp16 needs CUDA; default no)",
    )
    parser.add_argument("--gradient-checkpointing", action="store_true", help="less memory, slower steps")
    parser.add_argument(
        "--seed", type=int, default=0, help="fixes the noise, timesteps and prior images (default 0)"
    )
    parser.add_argument("--device", default="auto", help="auto, cuda or cpu (default auto)")
    parser.add_argument("--out", "-o", required=True, type=Path, help="the .cones file to write")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument("--quiet", action="store_true", help="no progress bar and no summary")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``train``."""
    train = subparsers.add_parser(
        "train",
        help="find a subject's concept neurons (xi-descent) and write a .cones file",
        description="Find the concept neurons of one subject in a diffusion model (SD 1.x/2.x, SDXL, "
        "SD3, Flux) with xi-descent (Cones, Algorithm A2) and write them as a .cones container. Prompts are "
        '"photo of a TOKEN CLASS" and, for the prior, "photo of a CLASS".',
    )
    train.add_argument("--images", required=True, type=Path, help="folder of the subject's images")
    train.add_argument("--token", default="sks", help="the rare token that names the subject (default sks)")
    train.add_argument("--class-word", default="", help="the subject's class, e.g. cat")
    train.add_argument("--prompt", help='instance prompt (default "photo of a TOKEN CLASS")')
    train.add_argument("--class-prompt", help='prior prompt (default "photo of a CLASS")')
    train.add_argument("--class-images", type=Path, help="prior images; missing ones are generated into it")
    train.add_argument(
        "--layers",
        default="cross",
        help="cross (default: a UNet's cross-attention K/V, a transformer's joint-attention text K/V), "
        "self, cross+self, or comma-separated globs of state-dict keys",
    )
    train.add_argument("--name", help='the concept\'s name (default "TOKEN CLASS")')
    train.add_argument(
        "--keep-shut",
        action="append",
        default=[],
        type=Path,
        metavar="OTHER.cones",
        help="train while another container's neurons are shut (sequential training)",
    )
    add_search_options(train)
    train.set_defaults(handler=_train)

    refine = subparsers.add_parser(
        "refine",
        help="refine several subjects' concept neurons jointly (sec. 3.3) into one concept",
        description="Sum the subjects' implanting losses and run xi-descent on the union of the input "
        "masks only; the refined mask is a subset of that union. Each subject's prompts come from "
        "its container's metadata.",
    )
    refine.add_argument("containers", nargs="+", type=Path, metavar="CONTAINER", help="single-subject .cones")
    refine.add_argument(
        "--data",
        action="append",
        default=[],
        metavar="NAME=DIR",
        required=True,
        help="images of the concept NAME (repeat for each subject)",
    )
    refine.add_argument(
        "--class-images",
        action="append",
        default=[],
        metavar="CLASS=DIR",
        help="prior images per class word (repeatable), or one DIR when all subjects share a class",
    )
    refine.add_argument("--name", help='the refined concept\'s name (default "A + B")')
    refine.epilog = "Without --tau or --sparsity, refine keeps the count with the lowest held-out joint loss."
    add_search_options(refine)
    refine.set_defaults(handler=_refine)

    attention = subparsers.add_parser(
        "attention",
        help="draw each word's cross-attention map before and after containers are applied (paper Fig. 2)",
        description="Generate one image for --prompt with the model as it is and with the containers "
        "applied (same seed), record where the image attends to each word in every cross-attention "
        "layer, and draw one row per word: its map before | after, with its share of attention.",
    )
    attention.add_argument(
        "--model", required=True, type=Path, help="local diffusers SD 1.x/2.x or SDXL folder (UNet models)"
    )
    attention.add_argument("--prompt", required=True, help='e.g. "a photo of a sks cat"')
    attention.add_argument(
        "containers", nargs="*", type=Path, metavar="CONTAINER", help=".cones files to apply for 'after'"
    )
    attention.add_argument("--out", "-o", required=True, type=Path, help="the PNG to write")
    attention.add_argument("--seed", type=int, default=0, help="the generation's seed (default 0)")
    attention.add_argument("--steps", type=int, default=25, help="denoising steps (default 25)")
    attention.add_argument("--guidance", type=float, default=7.5, help="guidance scale (default 7.5)")
    attention.add_argument("--device", default="auto", help="auto, cuda or cpu (default auto)")
    attention.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    attention.set_defaults(handler=_attention)

    demo = subparsers.add_parser(
        "demo",
        help="the whole mission on the embedded small world: train, apply, compare, remove",
        description="Find the concept neurons of a bundled subject of the embedded small world "
        "(offline, on a CPU) with cones train's defaults, apply them, draw images for a few prompts "
        "before and after with the same seeds, remove them and check that the model is bit-identical. "
        "Writes the .cones file, grid.png, attention.png and report.json into --out.",
    )
    demo.add_argument(
        "--out", type=Path, default=Path("cones-demo"), help="output folder (default cones-demo)"
    )
    demo.add_argument(
        "--model",
        type=Path,
        help="another diffusers SD 1.x/2.x, SDXL, SD3 or Flux folder (default: the embedded world)",
    )
    demo.add_argument("--resolution", type=int, help="pixels, with --model (default: the model's own)")
    demo.add_argument("--sampling-steps", type=int, help="denoising steps, with --model (default 30)")
    demo.add_argument("--images", type=Path, help="another subject's images (with --token and --class-word)")
    demo.add_argument(
        "--subject",
        default="zwx",
        help="a bundled subject: zwx (background, the default), pxr (circle), sks (star), vnt (ring)",
    )
    demo.add_argument("--token", help="the subject's rare token, with --images")
    demo.add_argument("--class-word", help="the subject's class, with --images")
    for option, kind in (("steps", int), ("lr", float), ("sparsity", float), ("num-class-images", int)):
        demo.add_argument(f"--{option}", type=kind, help="as cones train (default: cones train's)")
    demo.add_argument("--prior-weight", type=float, help="as cones train (default: cones train's)")
    demo.add_argument("--preserve-weight", type=float, help="as cones train (default: cones train's)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--device", default="cpu")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(handler=_demo)


def _attention(args: argparse.Namespace) -> int:
    from .attention import JOINT_ATTENTION
    from .config import check_model_folder, check_out
    from .families import family_of

    check_model_folder(args.model)
    if (family := family_of(args.model)).denoiser != "unet":
        raise UsageError(f"--model {args.model}: a {family.title} folder; {JOINT_ATTENTION}")
    check_out(args.out, args.overwrite)
    for path in args.containers:
        if not path.is_file():
            raise UsageError(f"{path}: no such container")
    from .presentation import quiet_libraries

    quiet_libraries()
    import torch

    import conesrt

    from .attention import attention_maps, draw
    from .pipelines import load_pipeline

    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    device = "cpu" if device == "auto" else device
    pipe = load_pipeline(args.model, device)
    options = dict(seed=args.seed, steps=args.steps, guidance=args.guidance)
    before = attention_maps(pipe, args.prompt, **options)
    after = None
    if args.containers:
        with conesrt.apply(pipe, args.containers):
            after = attention_maps(pipe, args.prompt, **options)
    draw(before, after, args.out)
    for position, token in enumerate(before.tokens):
        shares = " -> ".join(f"{m.share(position):.3f}" for m in (before, after) if m is not None)
        print(f"  {token!r:>20}  attention share {shares}")
    print(f"wrote {args.out}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo
    from .presentation import quiet_libraries

    quiet_libraries()

    report = run_demo(
        out=args.out,
        model=args.model,
        images=args.images,
        subject=args.subject,
        token=args.token,
        class_word=args.class_word,
        steps=args.steps,
        lr=args.lr,
        sparsity=args.sparsity,
        num_class_images=args.num_class_images,
        prior_weight=args.prior_weight,
        preserve_weight=args.preserve_weight,
        seed=args.seed,
        device=args.device,
        progress=not args.quiet,
        resolution=args.resolution,
        sampling_steps=args.sampling_steps,
    )
    print(format_demo(report, args.out))
    return 0


#: What the demo's summary calls the searched layers, per family (trainer.families).
SEARCHED = {
    "sd": "cross-attention K/V",
    "sdxl": "cross-attention K/V",
    "sd3": "joint-attention text K/V",
    "flux": "joint-attention text K/V",
}


def format_demo(report: dict, out: Path) -> str:
    lines = [
        "",
        f"cones demo: concept neurons of a {report['subject']['token']} {report['subject']['class_word']}",
        f"  shut {report['shut']:,} of {report['searched']:,} {SEARCHED[report.get('family', 'sd')]} entries "
        f"({100 * report['sparsity']:.2f} %), container {report['container_bytes']:,} bytes",
    ]
    if "before" in report:
        lines.append(
            f"  subject score (judge, subject prompts): {report['before']['subject_score']:.2f} before, "
            f"{report['after']['subject_score']:.2f} after"
        )
        lines.append(
            f"  other prompts unchanged (judge, same seeds): {100 * report['prior_unchanged']:.0f} %"
        )
    timings = report["timings"]
    lines.append(
        f"  apply {timings['apply_ms']:.1f} ms, remove {timings['remove_ms']:.1f} ms; "
        f"model bit-identical after remove: {'yes' if report['bit_identical_after_remove'] else 'NO'}"
    )
    lines.append(
        f"  {report['total_s']:.0f} s in all; wrote {out}/grid.png, {out}/report.json, {report['container']}"
    )
    return "\n".join(lines)


def search_options(args: argparse.Namespace) -> dict:
    """The SearchConfig fields that add_search_options parsed, for train and refine alike."""
    shared = ("model", "out", "num_class_images", "class_image_steps", "prior_weight", "preserve_weight")
    shared += ("steps", "lr", "travel", "tau")
    shared += ("sparsity", "batch_size", "resolution", "flip", "mixed_precision", "gradient_checkpointing")
    shared += ("seed", "device", "name", "overwrite", "value_steps", "value_lr")
    options = {field: getattr(args, field) for field in shared} | {"progress": not args.quiet}
    if args.values is not None:  # unset: TrainConfig's binary, RefineConfig's "as the inputs"
        options["values"] = args.values
    return options


def _pairs(values: list[str], option: str) -> dict[str, str]:
    pairs = {}
    for value in values:
        name, sep, folder = value.rpartition("=")
        if not sep or not name or not folder:
            raise UsageError(f"{option} {value!r}: expected NAME=DIR")
        pairs[name] = folder
    return pairs


def _refine(args: argparse.Namespace) -> int:
    from .config import RefineConfig

    if len(args.class_images) == 1 and "=" not in args.class_images[0]:
        class_images: dict[str, str] | str | None = args.class_images[0]
    else:
        class_images = _pairs(args.class_images, "--class-images") or None
    config = RefineConfig(
        containers=args.containers,
        data=_pairs(args.data, "--data"),
        class_images=class_images,
        **search_options(args),
    )
    config.validate()  # before importing torch
    from .presentation import quiet_libraries

    quiet_libraries()
    from .refine import refine

    refine(config)
    return 0


def _train(args: argparse.Namespace) -> int:
    from .config import TrainConfig

    config = TrainConfig(
        images=args.images,
        token=args.token,
        class_word=args.class_word,
        prompt=args.prompt,
        class_prompt=args.class_prompt,
        class_images=args.class_images,
        layers=args.layers,
        keep_shut=args.keep_shut,
        **search_options(args),
    )
    config.validate()  # before importing torch: a typo costs a second, not the imports
    from .presentation import quiet_libraries

    quiet_libraries()
    from .train import train_concept

    train_concept(config)
    return 0
