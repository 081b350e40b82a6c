"""``cones bake`` and ``cones verify``: the runtime's subcommands (no torch needed).

cones bake --model sd15/unet cat.cones lake.cones --out unet-cat-lake.safetensors
cones verify cat.cones --model sd15
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from conesfmt.cli import CommandError

from .fit import FingerprintMismatch, FingerprintWarning

#: Exceptions the ``cones`` command reports as one line (see conesfmt.cli).
USER_ERRORS = (FingerprintMismatch,)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``bake`` and ``verify``."""
    bake = subparsers.add_parser(
        "bake",
        help="write a safetensors file with concept neurons shut (numpy only, for edge and mobile)",
        description="Copy a model's weights with the containers' concept neurons set to +0.0, or "
        "scaled by their values (format 1.1). The result equals conesrt.apply bit for bit, strengths "
        "included, and loads in diffusers like the original.",
    )
    bake.add_argument("containers", nargs="+", type=Path, metavar="CONTAINER", help=".cones files")
    bake.add_argument(
        "--model",
        required=True,
        type=Path,
        help="a .safetensors file, or a diffusers model or pipeline folder (its UNet's or transformer's "
        "weights; a sharded model's .index.json and shards)",
    )
    bake.add_argument(
        "--out",
        "-o",
        required=True,
        type=Path,
        help="the safetensors file to write (for a sharded model: the folder to write)",
    )
    bake.add_argument(
        "--concept", action="append", dest="concepts", help="use only this concept (repeatable)"
    )
    bake.add_argument(
        "--strength",
        action="append",
        type=float,
        dest="strengths",
        metavar="S",
        help="scale each concept's effect (spec § 6.5): xi' = S*xi + (1 - S); 0 changes nothing, 1 (the "
        "default) is the container as stored, a binary container at 0.5 halves its entries. Once for "
        "every container, or once per container in their order",
    )
    bake.add_argument(
        "--no-strict",
        action="store_true",
        help="bake even if the sampled weights differ or there is no fingerprint (warns); "
        "never despite another architecture",
    )
    bake.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    bake.set_defaults(handler=_bake)

    verify = subparsers.add_parser(
        "verify",
        help="say whether a container fits a model, and why not",
        description="Check a container's layer table (names, shapes) and its fingerprint "
        "(8 sampled weights per layer by default, within the dtypes' rounding; spec § 4) "
        "against a model's weights. Other entries and layers are not compared. Exit status "
        "0 if it fits, 1 if not. verify changes nothing, so it has no --no-strict; "
        "cones bake --no-strict uses a container despite other weights or a missing fingerprint.",
    )
    verify.add_argument("container", type=Path, help="a .cones file")
    verify.add_argument(
        "--model",
        required=True,
        type=Path,
        help="a .safetensors file or a diffusers model or pipeline folder",
    )
    verify.set_defaults(handler=_verify)


def _bake(args: argparse.Namespace) -> int:
    from .baking import bake
    from .weights_file import WeightsError

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", FingerprintWarning)
        try:
            out = bake(
                args.model,
                args.containers,
                args.out,
                concepts=args.concepts,
                strength=_strength(args.strengths),
                strict=not args.no_strict,
                overwrite=args.overwrite,
            )
        except FileExistsError:  # raised before anything is read
            raise CommandError(f"{args.out} exists; pass --overwrite to replace it") from None
        except FingerprintMismatch as error:
            advice = "; pass --no-strict to bake it anyway" if error.overridable else ""
            raise CommandError(error.reason + advice) from None
        except (WeightsError, ValueError) as error:
            raise CommandError(str(error)) from None
    for warning in caught:
        if isinstance(warning.message, FingerprintWarning):
            # One line like every other message, not Python's "file:line: UserWarning: ...".
            print(
                f"cones bake: warning: {warning.message.reason}; baked anyway (--no-strict)", file=sys.stderr
            )
        else:
            warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)
    size = sum(p.stat().st_size for p in out.iterdir()) if out.is_dir() else out.stat().st_size
    print(f"wrote {out} ({size:,} bytes)")
    return 0


def _strength(strengths: list[float] | None) -> float | list[float]:
    """``--strength`` given never (1), once (for all), or once per container."""
    if not strengths:
        return 1.0
    return strengths[0] if len(strengths) == 1 else strengths


def _verify(args: argparse.Namespace) -> int:
    import conesfmt

    from .fit import check_fits
    from .weights_file import WeightsError, open_weights

    container = conesfmt.load(args.container)
    try:
        weights = open_weights(args.model)
    except WeightsError as error:
        raise CommandError(str(error)) from None
    name = args.container.name
    try:
        check_fits(name, container, weights.shapes, weights.read_values, strict=True)
    except FingerprintMismatch as error:
        advice = "; cones bake --no-strict would use it anyway" if error.overridable else ""
        raise CommandError(error.reason + advice) from None
    assert container.fingerprint is not None  # check_fits raised otherwise
    dtypes = sorted({weights.entries[key].dtype for key in container.layers})
    samples = container.fingerprint.samples_per_layer * len(container.layers)
    print(
        f"{name} fits {weights.path}: {len(container.layers)} layers with the same shapes, "
        f"{samples} sampled weights within tolerance (model dtype {', '.join(dtypes)}); "
        "the other entries are not compared (spec § 4)"
    )
    return 0
