"""Reading and writing container files; writes are atomic."""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from .container import Container
from .errors import FormatError
from .limits import MAX_SECTION_BYTES

#: Largest file :func:`load` reads (a few sections at their maximum size).
MAX_FILE_BYTES = 4 * MAX_SECTION_BYTES


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: Permissions a new file gets (as ``open`` would give it), read once at import.
NEW_FILE_MODE = 0o666 & ~_umask()


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
    with replacing(path) as temporary, open(temporary, "wb") as handle:
        handle.write(data)
    return path


@contextmanager
def replacing(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary path beside ``path`` to write; on success it replaces ``path`` atomically.

    On leaving the block, the temporary file is flushed to disk, given the
    permissions of the file it replaces (or those of a new file), and renamed
    over ``path``. On an exception it is deleted and ``path`` is untouched.

    >>> with replacing("model.safetensors") as temporary:
    ...     temporary.write_bytes(data)
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    descriptor, name = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    os.close(descriptor)
    temporary = Path(name)
    try:
        yield temporary
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        mode = stat.S_IMODE(path.stat().st_mode) if path.exists() else NEW_FILE_MODE
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
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
