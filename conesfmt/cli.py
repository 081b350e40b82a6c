"""The ``cones`` command: subcommands of every package, and the format's own.

Each package keeps its subcommands in its own ``cli`` module (``conesfmt.cli``,
``conesrt.cli``, ``trainer.cli``), which imports nothing heavy at import
time: ``cones inspect`` never loads torch. User errors (a bad file, a wrong
option) print one line and exit with status 1; a traceback means a bug.

    cones inspect cat.cones
    cones inspect cat.cones --json
    cones dump cat.cones                      # the decoded form of spec § 12
    cones conformance --reader "./my-reader {}"
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from . import __version__
from .container import FORMAT_VERSION, SPEC_REVISION
from .contract import DECODE_SECONDS, REJECT_STATUS
from .errors import FormatError
from .files import load
from .jsonform import to_json
from .limits import DEFAULT_MAX_INDICES
from .summary import summarize

#: Modules that contribute subcommands, in the order of ``cones --help``.
COMMAND_MODULES = ("conesfmt.cli", "conesrt.cli", "trainer.cli")


class CommandError(Exception):
    """A user error in a subcommand: printed as one line, exit status 1."""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``inspect``, ``dump`` and ``conformance``."""
    inspect = subparsers.add_parser(
        "inspect",
        help="show what a container holds: layers, concepts, sparsity, size against the floor",
        description="Show a container's version, fingerprint, layer table, each concept's "
        "metadata, entries shut per layer, sparsity, value kind (binary, q4, fp16, fp32) and the "
        "bytes its indices and values cost, and bytes on disk against the information-theoretic "
        "floor log2 C(N,k)/8.",
    )
    inspect.add_argument("file", type=Path, help="a .cones file")
    inspect.add_argument("--json", action="store_true", help="print a JSON summary instead")
    _add_max_indices(inspect)
    inspect.set_defaults(handler=_inspect)

    dump = subparsers.add_parser(
        "dump",
        help="print a container's full decoded content as JSON (spec § 12)",
        description="Print the decoded form of spec § 12 (every index). Exit status 1 "
        "if the file is not a valid container: this is the reference reader of the "
        "conformance kit.",
    )
    dump.add_argument("file", type=Path, help="a .cones file")
    _add_max_indices(dump)
    dump.set_defaults(handler=_dump)

    merge = subparsers.add_parser(
        "merge",
        help="unite several containers into one, each concept kept separate (no training)",
        description="Write one multi-concept container holding every concept of the inputs, "
        "values included, so that conesrt.apply(..., concepts=[...]) can apply any subset. The "
        "inputs must share the layer table and the base model (fingerprint).",
    )
    merge.add_argument(
        "containers", nargs="+", type=Path, metavar="CONTAINER", help=".cones files to unite, in order"
    )
    merge.add_argument("--out", "-o", required=True, type=Path, help="the .cones file to write")
    merge.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    merge.set_defaults(handler=_merge)

    conformance = subparsers.add_parser(
        "conformance",
        help="run the hypothesis conformance kit against a reader",
        description="Give a reader the hostile inputs (a decoding bomb), then generate valid "
        "containers and mutations of them, and check the reader against this library: it must "
        "decode valid files to their content and accept exactly the mutations this library "
        "accepts. The reader is a command that prints the decoded JSON (spec § 12) and exits 0, "
        f"or exits {REJECT_STATUS} to reject; another status, a signal, a sanitizer report on "
        "stderr or a run past --timeout is a failure (docs/conformance.md).",
    )
    conformance.add_argument(
        "--reader",
        default=None,
        help='command with {} for the file path, e.g. "./my-reader {}" (default: this library)',
    )
    conformance.add_argument("--examples", type=int, default=100, help="valid containers (default 100)")
    conformance.add_argument("--mutations", type=int, default=20, help="mutations per container (default 20)")
    conformance.add_argument(
        "--timeout",
        type=float,
        default=DECODE_SECONDS,
        help=f"seconds the reader may take on one input, its start included (default {DECODE_SECONDS:g})",
    )
    conformance.add_argument(
        "--format-minor",
        type=int,
        choices=range(FORMAT_VERSION[1] + 1),
        default=FORMAT_VERSION[1],
        metavar="M",
        help=f"the minor version the reader implements (default {FORMAT_VERSION[1]}); 0 for a 1.0 reader, "
        "which must read 1.1 files too, without their values (spec § 2.4, § 6.4)",
    )
    conformance.add_argument("--seed", type=int, default=None, help="hypothesis seed (default: fixed)")
    conformance.add_argument(
        "--shrink", action="store_true", help="minimise a failing input first (slow for a command reader)"
    )
    conformance.add_argument(
        "--failure",
        type=Path,
        default=Path("conformance-failure.cones"),
        help="where to save an input the reader gets wrong (default: ./conformance-failure.cones)",
    )
    conformance.set_defaults(handler=_conformance)


def _add_max_indices(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-indices",
        type=int,
        default=DEFAULT_MAX_INDICES,
        metavar="N",
        help="refuse a file that declares more than N indices, all concepts together: decoding "
        f"time grows with them (spec § 8.2; default {DEFAULT_MAX_INDICES:,})",
    )


def _inspect(args: argparse.Namespace) -> int:
    container = load(args.file, max_indices=args.max_indices)
    summary = summarize(container, file_bytes=args.file.stat().st_size)
    if args.json:
        print(json.dumps({"file": str(args.file), **summary}, indent=1, ensure_ascii=False))
        return 0
    print(format_summary(summary, str(args.file)))
    return 0


def format_summary(summary: dict[str, Any], title: str) -> str:
    """The human-readable form of :func:`conesfmt.summary.summarize`."""
    lines = [f"{title}: .cones {summary['version']}, {summary['bytes']:,} bytes"]
    fingerprint = summary["fingerprint"]
    if fingerprint is None:
        lines.append("fingerprint:  none (cannot be checked against a model)")
    else:
        samples, layers = fingerprint["samples_per_layer"], fingerprint["layers"]
        lines.append(f"fingerprint:  {samples} sampled values x {layers} layers")
    dtypes = sorted({row["dtype"] or "?" for row in summary["layers"]})
    lines.append(
        f"layers:       {len(summary['layers'])} tensors, {summary['numel']:,} entries"
        + (f" ({', '.join(dtypes)})" if dtypes else "")
    )
    for key, value in summary["metadata"].items():
        lines.append(f"metadata:     {key} = {value}")
    width = max((len(row["key"]) for row in summary["layers"]), default=10)
    for concept in summary["concepts"]:
        lines.append("")
        metadata = concept["metadata"]
        inline = {k: v for k, v in metadata.items() if len(v) <= _INLINE_VALUE and k not in _OWN_LINE}
        described = ", ".join(f"{k}={v!r}" for k, v in inline.items())
        lines.append(f"concept {concept['name']!r}" + (f"  ({described})" if described else ""))
        for key, value in metadata.items():
            if key not in inline:
                lines.extend(_metadata_lines(key, value))
        lines.append(
            f"  shut {concept['shut']:,} of {summary['numel']:,} entries "
            f"({100 * concept['sparsity']:.3f} %), floor {concept['floor_bytes']:,.0f} bytes"
        )
        lines.append(_values_line(concept))
        for row in summary["layers"]:
            count = concept["per_layer"][row["key"]]
            if count:
                shape = "x".join(map(str, row["shape"]))
                percent = 100 * count / row["numel"]
                lines.append(f"    {row['key']:<{width}}  {shape:>11}  {count:>10,}  {percent:7.3f} %")
    lines.append("")
    if summary["ratio_to_floor"] is None:
        lines.append(f"size:         {summary['bytes']:,} bytes (no entries shut: the floor is 0)")
    else:
        lines.append(
            f"size:         {summary['bytes']:,} bytes on disk; floor log2 C(N,k)/8 = "
            f"{summary['floor_bytes']:,.0f} bytes; ratio {summary['ratio_to_floor']:.3f}"
        )
    return "\n".join(lines)


def _values_line(concept: dict[str, Any]) -> str:
    """What a concept's values are and cost (spec § 6.4): kind, bytes, bits per entry."""
    kind, index_bytes, values_bytes = concept["value_kind"], concept["index_bytes"], concept["values_bytes"]
    indices = f"indices {index_bytes:,} bytes"
    if kind == "binary":
        return f"  values:  binary (entries shut, no values stored); {indices}"
    what = {"q4": "q4 (4 levels per layer, 2-bit codes)", "fp16": "fp16", "fp32": "fp32"}[kind]
    per_entry = f", {8 * values_bytes / concept['shut']:.2f} bits per entry" if concept["shut"] else ""
    return f"  values:  {what}, {values_bytes:,} bytes{per_entry}; {indices}"


#: Metadata values up to this many characters go on the concept's line; longer ones on their own.
_INLINE_VALUE = 60
#: Characters of a long metadata value that inspect shows (a value may hold 65,535 bytes).
_SHOWN_VALUE = 300
#: Well-known keys always shown on their own line (spec § 6.2): how the concept was made.
_OWN_LINE = ("training", "subjects")


def _metadata_lines(key: str, value: str, width: int = 100) -> list[str]:
    """``key: value`` lines for one concept metadata entry; a JSON object as ``name=value`` pairs.

    The trainer records its settings as a JSON object under ``training``
    (spec § 6.2): ``{"lr": 2e-05, "steps": 1000}`` reads ``lr=2e-05, steps=1000``.
    """
    try:
        parsed = json.loads(value)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and parsed:
        items = [f"{name}={json.dumps(item, ensure_ascii=False)}" for name, item in parsed.items()]
    else:
        shown = (
            value if len(value) <= _SHOWN_VALUE else f"{value[:_SHOWN_VALUE]}... ({len(value):,} characters)"
        )
        items = [shown.replace("\n", " ")]
    lines, current = [], f"  {key}:"
    indent = " " * len(current)
    for number, item in enumerate(items):
        piece = item + ("," if number < len(items) - 1 else "")
        if len(current) + 1 + len(piece) > width and current.strip() != f"{key}:":
            lines.append(current)
            current = indent
        current += " " + piece
    lines.append(current)
    return lines


def _merge(args: argparse.Namespace) -> int:
    from .files import save
    from .merge import merge

    if args.out.exists() and not args.overwrite:
        raise CommandError(f"{args.out} exists; pass --overwrite to replace it")
    merged = merge([load(path) for path in args.containers], names=[path.name for path in args.containers])
    save(merged, args.out)
    summary = summarize(merged, file_bytes=args.out.stat().st_size)
    concepts = ", ".join(_merged_concept(c) for c in summary["concepts"])
    print(f"wrote {args.out} ({summary['bytes']:,} bytes): {concepts}")
    return 0


def _merged_concept(concept: dict[str, Any]) -> str:
    kind = "" if concept["value_kind"] == "binary" else f", {concept['value_kind']} values"
    return f"{concept['name']!r} ({concept['shut']:,} entries{kind})"


def _dump(args: argparse.Namespace) -> int:
    json.dump(to_json(load(args.file, max_indices=args.max_indices)), sys.stdout, ensure_ascii=False)
    sys.stdout.write("\n")
    return 0


def _conformance(args: argparse.Namespace) -> int:
    try:
        from .conformance import CommandReader, ConformanceFailure, LibraryReader, run
    except ImportError as error:
        raise CommandError(
            f"the conformance kit needs hypothesis: pip install hypothesis ({error})"
        ) from None
    if args.reader is None:
        reader = LibraryReader(args.format_minor)
    else:
        reader = CommandReader(args.reader, timeout=args.timeout)
    try:
        summary = run(
            reader,
            examples=args.examples,
            mutations_per_example=args.mutations,
            seed=args.seed,
            shrink=args.shrink or None,
            minor=args.format_minor,
        )
    except ConformanceFailure as failure:
        args.failure.write_bytes(failure.data)
        raise CommandError(f"{failure} (the input is saved in {args.failure})") from None
    print(
        f"passed: {summary.hostile_inputs} hostile inputs refused, {summary.valid_containers} valid "
        f"containers, {summary.mutated_inputs} mutated inputs ({summary.accepted_mutations} of them "
        "valid containers, the rest rejected)"
    )
    return 0


def build_parser() -> tuple[argparse.ArgumentParser, tuple[type[BaseException], ...]]:
    """The full ``cones`` parser, and the exception types that mean a user error."""
    parser = argparse.ArgumentParser(
        prog="cones",
        description="Concept neurons for diffusion models: train, inspect, merge, verify and bake "
        ".cones containers (to apply one to a model in Python: conesrt.apply).",
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"cones {__version__} (.cones format {FORMAT_VERSION[0]}.{FORMAT_VERSION[1]}, "
        f"spec {SPEC_REVISION})",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    user_errors: list[type[BaseException]] = [CommandError, FormatError, OSError]
    for name in COMMAND_MODULES:
        module = importlib.import_module(name)
        module.register(subparsers)
        user_errors.extend(getattr(module, "USER_ERRORS", ()))
    return parser, tuple(user_errors)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``cones`` console script."""
    parser, user_errors = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except BrokenPipeError:
        # The reader of our output went away (`cones inspect f | head`): not an error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except user_errors as error:
        # An error may word itself for the command line (conesrt's fingerprint errors: no strict=False).
        message = getattr(error, "command_line_message", None) or str(error)
        if isinstance(error, OSError) and error.filename is not None:
            message = f"{error.filename}: {error.strerror}"
        print(f"cones {args.command}: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"cones {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
