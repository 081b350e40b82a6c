"""The conformance properties, for this library or any reader that decodes to spec § 12 JSON.

A *reader* is anything with ``decode(data: bytes) -> dict | None``: the decoded
form of a valid file, or ``None`` when it rejects the file. Other exceptions,
hangs and oversized allocations are failures.

>>> reader = LibraryReader()                     # this library
>>> reader = CommandReader("./my-reader {}")     # JSON on stdout; non-zero exit: rejected
>>> summary = run(reader, examples=200)          # hypothesis drives every property
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import tempfile
import time
import tracemalloc
from dataclasses import dataclass
from typing import Any, Protocol

from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from ..container import Container
from ..errors import FormatError
from ..jsonform import to_json
from .mutations import mutations
from .strategies import containers

#: A reader may use this much memory to validate a file, beyond 16 bytes per file byte
#: (the reference reader decodes in blocks of 65,536 indices).
MEMORY_ALLOWANCE = 8 << 20
#: Seconds one decode may take before it counts as a hang.
DECODE_SECONDS = 5.0


class ConformanceFailure(AssertionError):
    """A reader disagrees with the reference; ``data`` is the input that shows it."""

    def __init__(self, message: str, data: bytes):
        super().__init__(message)
        self.data = data


class Reader(Protocol):
    def decode(self, data: bytes) -> dict[str, Any] | None: ...


class LibraryReader:
    """This library as a reader: FormatError means rejected, anything else propagates."""

    def decode(self, data: bytes) -> dict[str, Any] | None:
        try:
            return to_json(Container.from_bytes(data))
        except FormatError:
            return None


class CommandReader:
    """An external reader: ``command`` with ``{}`` replaced by a file path (appended if absent).

    Exit status 0 with the decoded JSON on stdout means accepted; any other
    status means rejected; running longer than ``timeout`` seconds is a hang.
    """

    def __init__(self, command: str, timeout: float = 30.0):
        self.command = command
        self.timeout = timeout

    def decode(self, data: bytes) -> dict[str, Any] | None:
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "input.cones")
            with open(path, "wb") as handle:
                handle.write(data)
            argv = shlex.split(self.command)
            argv = [path if part == "{}" else part for part in argv] if "{}" in argv else [*argv, path]
            try:
                result = subprocess.run(argv, capture_output=True, timeout=self.timeout)
            except subprocess.TimeoutExpired:
                raise AssertionError(f"reader hung for more than {self.timeout} s") from None
        if result.returncode != 0:
            return None
        try:
            return json.loads(result.stdout)
        except json.JSONDecodeError as error:
            raise AssertionError(f"reader exited 0 but printed no JSON ({error})") from None


def check_round_trip(container: Container) -> None:
    """Encoding then decoding gives back an equal container."""
    assert Container.from_bytes(container.to_bytes()) == container


def check_canonical(container: Container) -> None:
    """Decoding a written file and writing it again gives the same bytes (spec § 10)."""
    data = container.to_bytes()
    assert Container.from_bytes(data).to_bytes() == data
    assert container.to_bytes() == data  # and writing is deterministic


def check_valid(reader: Reader, container: Container) -> None:
    """A reader decodes a valid file to exactly its content."""
    data = container.to_bytes()
    decoded = reader.decode(data)
    if decoded is None:
        raise ConformanceFailure("reader rejected a valid container", data)
    if _normalise(decoded) != _normalise(to_json(container)):
        raise ConformanceFailure("reader decoded a valid container to different content", data)


def check_mutation(reader: Reader, data: bytes) -> bool:
    """Any input is either a valid container or rejected; never a crash, hang or huge allocation.

    For this library the check is direct; for another reader it is
    differential: it must accept exactly what this library accepts, with the
    same content. Returns whether the input was accepted.
    """
    expected = _library_decode_checked(data)
    if isinstance(reader, LibraryReader):
        return expected is not None
    started = time.monotonic()
    got = reader.decode(data)
    assert time.monotonic() - started < max(DECODE_SECONDS, getattr(reader, "timeout", 0))
    if expected is None and got is not None:
        raise ConformanceFailure("reader accepted a file the reference reader rejects", data)
    if expected is not None and got is None:
        raise ConformanceFailure("reader rejected a file the reference reader accepts", data)
    if expected is not None and _normalise(got) != _normalise(expected):
        raise ConformanceFailure("reader decoded a file to different content than the reference", data)
    return expected is not None


def _library_decode_checked(data: bytes) -> dict[str, Any] | None:
    tracemalloc.start()
    started = time.monotonic()
    try:
        container = Container.from_bytes(data)
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


def _normalise(document: dict[str, Any]) -> str:
    return json.dumps(document, sort_keys=True)


@dataclass
class Summary:
    """What :func:`run` checked."""

    valid_containers: int = 0
    mutated_inputs: int = 0
    accepted_mutations: int = 0


def run(
    reader: Reader,
    examples: int = 200,
    mutations_per_example: int = 10,
    seed: int | None = None,
    shrink: bool | None = None,
) -> Summary:
    """Run every property against ``reader`` with hypothesis; raises on the first failure.

    ``shrink`` (default: only for this library) lets hypothesis minimise a
    failing example; for an external reader each step costs a process start.

    >>> run(CommandReader("cones dump {}"), examples=20)
    Summary(valid_containers=20, mutated_inputs=200, ...)
    """
    summary = Summary()
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
        check_valid(reader, container)
        summary.valid_containers += 1
        encoded = container.to_bytes()
        for _ in range(mutations_per_example):
            mutated = data.draw(mutations(encoded))
            summary.accepted_mutations += check_mutation(reader, mutated)
            summary.mutated_inputs += 1

    if seed is not None:
        from hypothesis import seed as hypothesis_seed

        properties = hypothesis_seed(seed)(properties)
    properties()
    return summary
