"""Reading and writing container files; writes are atomic."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO

from .container import Container
from .errors import FormatError
from .limits import MAX_SECTION_BYTES

#: Largest file :func:`load` reads (a few sections at their maximum size).
MAX_FILE_BYTES = 4 * MAX_SECTION_BYTES


def save(container: Container, path: str | os.PathLike[str]) -> Path:
    """Write ``container`` to ``path`` atomically and return the path.

    The bytes go to a temporary file in the same folder, are flushed to disk,
    and the file is renamed over ``path``: a crash leaves either the old file
    or the new one, never a half-written file under the final name.

    >>> conesfmt.save(container, "cat.cones")
    PosixPath('cat.cones')
    """
    path = Path(path)
    data = container.to_bytes()
    write_atomic(path, data)
    return path


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically (temporary file, fsync, rename)."""
    folder = path.parent if str(path.parent) else Path(".")
    handle = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed below, renamed after the fsync
        dir=folder, prefix=f".{path.name}.", suffix=".tmp", delete=False
    )
    try:
        with handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise


def load(source: str | os.PathLike[str] | BinaryIO) -> Container:
    """Read a container from a path or a binary file object.

    Raises :class:`FormatError` (naming the file) if it is not a valid
    container, and ``OSError`` if it cannot be read.

    >>> container = conesfmt.load("cat.cones")
    """
    if hasattr(source, "read"):
        name = getattr(source, "name", "<stream>")
        data = source.read(MAX_FILE_BYTES + 1)
    else:
        name = os.fspath(source)
        with open(source, "rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    if not isinstance(data, bytes | bytearray):
        raise FormatError(f"{name}: expected a binary file, got {type(data).__name__} from read()")
    if len(data) > MAX_FILE_BYTES:
        raise FormatError(f"{name}: larger than {MAX_FILE_BYTES} bytes")
    try:
        return Container.from_bytes(data)
    except FormatError as error:
        raise FormatError(f"{name}: {error}") from None
