"""The conformance properties, for this library or any reader that decodes to spec § 12 JSON.

A *reader* is anything with ``decode(data: bytes) -> dict | None``: the decoded
form of a valid file, or ``None`` when it rejects the file. Other exceptions,
hangs and oversized allocations are failures.

>>> reader = LibraryReader()                     # this library
>>> reader = CommandReader("./my-reader {}")     # JSON on stdout and exit 0; exit 1: rejected
>>> summary = run(reader, examples=200)          # hypothesis drives every property
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shlex
import signal
import subprocess
import tempfile
import time
import tracemalloc
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Any, Protocol

import numpy as np
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from ..container import FORMAT_VERSION, VALUES_MINOR, Container
from ..contract import DECODE_SECONDS, REJECT_STATUS
from ..errors import FormatError
from ..jsonform import to_json
from ..sections import decode
from .hostile import HOSTILE_INPUTS
from .mutations import mutations
from .strategies import containers

#: A reader may use this much memory to validate a file, beyond 16 bytes per file byte
#: (the reference reader decodes in blocks of 65,536 indices).
MEMORY_ALLOWANCE = 8 << 20
#: What AddressSanitizer, LeakSanitizer, MemorySanitizer, ThreadSanitizer and UBSan print.
_SANITIZER_REPORT = re.compile(
    rb"^.*(?:(?:Address|HWAddress|Leak|Memory|Thread|UndefinedBehavior)Sanitizer"
    rb"|:\d+:\d+: runtime error: ).*$",
    re.MULTILINE,
)


class ConformanceFailure(AssertionError):
    """A reader disagrees with the reference or misbehaves; ``data`` is the input that shows it."""

    def __init__(self, message: str, data: bytes):
        super().__init__(message)
        self.data = data


class Reader(Protocol):
    def decode(self, data: bytes) -> dict[str, Any] | None: ...


class LibraryReader:
    """This library as a reader: FormatError means rejected, anything else propagates.

    ``minor`` 0 reads as a 1.0 reader does (``vals`` is an unknown optional
    section): the reference a 1.0 reader is compared with.
    """

    def __init__(self, minor: int = FORMAT_VERSION[1]):
        self.minor = minor

    def decode(self, data: bytes) -> dict[str, Any] | None:
        try:
            return to_json(decode(data, reader_minor=self.minor))
        except FormatError:
            return None


class CommandReader:
    """An external reader: ``command`` with ``{}`` replaced by a file path (appended if absent).

    Exit status 0 with the decoded JSON on stdout means accepted;
    :data:`REJECT_STATUS` (1) means rejected. Anything else raises
    :class:`ConformanceFailure`: another status, death by a signal (SIGSEGV,
    SIGABRT...), a sanitizer report on stderr, or running longer than
    ``timeout`` seconds (the process group is then killed). JSON numbers are
    read exactly (as decimals), so fingerprint values can be compared as binary32.

    >>> CommandReader("./my-reader {}", timeout=5.0).decode(data)
    {'version': [1, 0], ...}
    """

    def __init__(self, command: str, timeout: float = DECODE_SECONDS):
        self.command = command
        self.timeout = timeout

    def decode(self, data: bytes) -> dict[str, Any] | None:
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "input.cones")
            with open(path, "wb") as handle:
                handle.write(data)
            argv = shlex.split(self.command)
            argv = [path if part == "{}" else part for part in argv] if "{}" in argv else [*argv, path]
            process = subprocess.Popen(
                argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
            )
            try:
                stdout, stderr = process.communicate(timeout=self.timeout)
            except subprocess.TimeoutExpired:
                _kill_group(process)
                raise ConformanceFailure(
                    f"reader ran past the per-input limit of {self.timeout:g} s on a {len(data)}-byte "
                    f"input (a hang; --timeout)",
                    data,
                ) from None
            finally:
                _kill_group(process)  # nothing it started outlives the input
        status = process.returncode
        report = _SANITIZER_REPORT.search(stderr)
        if report:
            line = report.group(0).decode("utf-8", "replace").strip()[:200]
            raise ConformanceFailure(
                f"reader's stderr has a sanitizer report (status {status}): {line}", data
            )
        if status < 0:
            name = signal.Signals(-status).name if -status in signal.Signals._value2member_map_ else -status
            raise ConformanceFailure(f"reader was killed by signal {name}{_tail(stderr)}", data)
        if status == REJECT_STATUS:
            return None
        if status != 0:
            raise ConformanceFailure(
                f"reader exited with status {status}: 0 accepts, {REJECT_STATUS} rejects, any other "
                f"status is a failure{_tail(stderr)}",
                data,
            )
        try:
            return json.loads(stdout, parse_float=Decimal)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ConformanceFailure(f"reader exited 0 but printed no JSON ({error})", data) from None


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    """Kill the reader's process group (a shell wrapper's children too) and reap it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.communicate()


def _tail(stderr: bytes) -> str:
    lines = stderr.decode("utf-8", "replace").strip().splitlines()
    return f" (stderr: {lines[-1][:200]})" if lines else ""


def check_round_trip(container: Container) -> None:
    """Encoding then decoding gives back an equal container."""
    assert Container.from_bytes(container.to_bytes()) == container


def check_canonical(container: Container) -> None:
    """Decoding a written file and writing it again gives the same bytes (spec § 10)."""
    data = container.to_bytes()
    assert Container.from_bytes(data).to_bytes() == data
    assert container.to_bytes() == data  # and writing is deterministic


def check_valid(reader: Reader, container: Container, minor: int = FORMAT_VERSION[1]) -> None:
    """A reader decodes a valid file to exactly its content (for a 1.0 reader: without values)."""
    data = container.to_bytes()
    decoded = reader.decode(data)
    if decoded is None:
        raise ConformanceFailure("reader rejected a valid container", data)
    expected = to_json(container) if minor >= VALUES_MINOR else to_json(decode(data, reader_minor=minor))
    if _normalise(decoded) != _normalise(expected):
        raise ConformanceFailure("reader decoded a valid container to different content", data)


def check_mutation(reader: Reader, data: bytes, minor: int = FORMAT_VERSION[1]) -> bool:
    """Any input is either a valid container or rejected; never a crash, hang or huge allocation.

    For this library the check is direct; for another reader it is
    differential: it must accept exactly what this library accepts (reading
    as a reader of ``minor``), with the same content. Returns whether the
    input was accepted.
    """
    expected = _library_decode_checked(data, minor)
    if isinstance(reader, LibraryReader) and reader.minor == minor:
        return expected is not None
    got = _timed_decode(reader, data)
    if expected is None and got is not None:
        raise ConformanceFailure("reader accepted a file the reference reader rejects", data)
    if expected is not None and got is None:
        raise ConformanceFailure("reader rejected a file the reference reader accepts", data)
    if expected is not None and _normalise(got) != _normalise(expected):
        raise ConformanceFailure("reader decoded a file to different content than the reference", data)
    return expected is not None


def _library_decode_checked(data: bytes, minor: int = FORMAT_VERSION[1]) -> dict[str, Any] | None:
    tracemalloc.start()
    started = time.monotonic()
    try:
        container = decode(data, reader_minor=minor)
    except FormatError:
        container = None
    finally:
        elapsed = time.monotonic() - started
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert elapsed < DECODE_SECONDS, f"decoding {len(data)} bytes took {elapsed:.1f} s"
    budget = MEMORY_ALLOWANCE + 16 * len(data)
    assert peak <= budget, f"decoding {len(data)} bytes allocated {peak} bytes (budget {budget})"
    if container is None:
        return None
    # Accepted: it must be a valid container in every respect.
    decoded = to_json(container)
    assert Container.from_bytes(container.to_bytes()) == container
    return decoded


def _timed_decode(reader: Reader, data: bytes) -> dict[str, Any] | None:
    """``reader.decode(data)``, failing if it takes longer than the reader's per-input limit."""
    limit = getattr(reader, "timeout", DECODE_SECONDS)
    started = time.monotonic()
    got = reader.decode(data)
    elapsed = time.monotonic() - started
    if elapsed > limit:
        raise ConformanceFailure(
            f"reader took {elapsed:.1f} s on a {len(data)}-byte input, "
            f"over the per-input limit of {limit:g} s",
            data,
        )
    return got


def check_hostile(reader: Reader) -> int:
    """Every hostile input (:mod:`.hostile`) is rejected by the reference and by ``reader``, in time.

    Returns how many were checked.
    """
    for name, build in HOSTILE_INPUTS.items():
        data = build()
        if _library_decode_checked(data) is not None:
            raise AssertionError(f"the reference reader accepted the hostile input {name!r}")
        if not isinstance(reader, LibraryReader) and _timed_decode(reader, data) is not None:
            raise ConformanceFailure(f"reader accepted the hostile input {name!r}", data)
    return len(HOSTILE_INPUTS)


def binary32(value: Any) -> Any:
    """The binary32 value nearest to a JSON number, as a float (ties to even); other values unchanged.

    ``value`` is read exactly (a :class:`~decimal.Decimal` from ``parse_float``,
    an int, or a float), so any decimal that rounds to a binary32 compares equal
    to it (spec § 12): ``0.99`` and ``0.9900000095367432`` are the same value.
    The sign of zero is kept.
    """
    return _nearest(value, np.float32)


def binary16(value: Any) -> Any:
    """The binary16 value nearest to a JSON number (fp16 values, spec § 12), like :func:`binary32`."""
    return _nearest(value, np.float16)


def _nearest(value: Any, dtype: type[np.floating]) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        return value
    if (
        isinstance(value, Decimal)
        and not value.is_finite()
        or isinstance(value, float)
        and not math.isfinite(value)
    ):
        return float(value)
    exact = Fraction(value)
    negative = value.is_signed() if isinstance(value, Decimal) else math.copysign(1.0, value) < 0
    if exact == 0:
        return -0.0 if negative else 0.0
    largest = np.finfo(dtype).max
    # Beyond the midpoint between the largest finite value and the next power of two, it rounds to infinity.
    ulp = Fraction(float(largest)) - Fraction(float(np.nextafter(largest, dtype(0))))
    if abs(exact) >= Fraction(float(largest)) + ulp / 2:
        return -math.inf if negative else math.inf
    bits = np.uint16 if dtype == np.float16 else np.uint32
    with np.errstate(over="ignore"):
        guess = np.clip(dtype(float(exact)), -largest, largest)  # float(Fraction): correctly rounded
        candidates = [guess, np.nextafter(guess, dtype(-np.inf)), np.nextafter(guess, dtype(np.inf))]
    best = min(
        (c for c in candidates if np.isfinite(c)),
        key=lambda c: (abs(Fraction(float(c)) - exact), int(c.view(bits)) & 1),
    )
    return float(best)


def _normalise(document: Any) -> str:
    """Canonical JSON text of a decoded form: fingerprint values, q4 levels and fp32 values as
    binary32, fp16 values as binary16, other numbers as read (spec § 12)."""
    if isinstance(document, dict) and isinstance(document.get("fingerprint"), dict):
        fingerprint = document["fingerprint"]
        if isinstance(fingerprint.get("values"), list):
            rows = fingerprint["values"]
            values = [[binary32(v) for v in row] if isinstance(row, list) else row for row in rows]
            document = {**document, "fingerprint": {**fingerprint, "values": values}}
    if isinstance(document, dict) and isinstance(document.get("concepts"), list):
        document = {**document, "concepts": [_normalise_values(c) for c in document["concepts"]]}
    return json.dumps(document, sort_keys=True, default=_plain_number)


def _normalise_values(concept: Any) -> Any:
    values = concept.get("values") if isinstance(concept, dict) else None
    if not isinstance(values, dict) or not isinstance(values.get("layers"), dict):
        return concept
    nearest = binary16 if values.get("kind") == "fp16" else binary32
    layers = {}
    for key, stored in values["layers"].items():
        if isinstance(stored, dict) and isinstance(stored.get("codebook"), list):
            stored = {**stored, "codebook": [binary32(v) for v in stored["codebook"]]}
        elif isinstance(stored, list):
            stored = [nearest(v) for v in stored]
        layers[key] = stored
    return {**concept, "values": {**values, "layers": layers}}


def _plain_number(value: Any) -> Any:
    """JSON for a Decimal outside the fingerprint (a float where the spec has an int stays a float)."""
    if isinstance(value, Decimal):
        return float(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


@dataclass
class Summary:
    """What :func:`run` checked."""

    valid_containers: int = 0
    mutated_inputs: int = 0
    accepted_mutations: int = 0
    hostile_inputs: int = 0


def run(
    reader: Reader,
    examples: int = 200,
    mutations_per_example: int = 10,
    seed: int | None = None,
    shrink: bool | None = None,
    minor: int = FORMAT_VERSION[1],
) -> Summary:
    """Run every property against ``reader`` with hypothesis; raises on the first failure.

    The hostile inputs (:mod:`.hostile`) come first, then ``examples`` valid
    containers and ``mutations_per_example`` mutations of each. ``minor`` is
    the minor version the reader implements: 0 for a 1.0 reader, which must
    read 1.1 files too, skipping their values (spec § 2.4, § 6.4).

    ``shrink`` (default: only for this library) lets hypothesis minimise a
    failing example; for an external reader each step costs a process start.

    >>> run(CommandReader("cones dump {}"), examples=20)
    Summary(valid_containers=20, mutated_inputs=200, accepted_mutations=..., hostile_inputs=1)
    """
    summary = Summary()
    summary.hostile_inputs = check_hostile(reader)
    if shrink is None:
        shrink = isinstance(reader, LibraryReader)
    phases = [Phase.explicit, Phase.generate] + ([Phase.shrink] if shrink else [])
    options = dict(
        max_examples=examples, deadline=None, database=None, derandomize=seed is None, phases=phases
    )

    @settings(**options)
    @given(containers(), st.data())
    def properties(container: Container, data: st.DataObject) -> None:
        check_round_trip(container)
        check_canonical(container)
        check_valid(reader, container, minor)
        summary.valid_containers += 1
        encoded = container.to_bytes()
        for _ in range(mutations_per_example):
            mutated = data.draw(mutations(encoded))
            summary.accepted_mutations += check_mutation(reader, mutated, minor)
            summary.mutated_inputs += 1

    if seed is not None:
        from hypothesis import seed as hypothesis_seed

        properties = hypothesis_seed(seed)(properties)
    properties()
    return summary
