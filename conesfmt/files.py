"""Reading and writing container files; writes are atomic."""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from .container import Container, Layer
from .errors import FormatError
from .limits import DEFAULT_MAX_INDICES, MAX_SECTION_BYTES

#: Largest file :func:`load` reads (a few sections at their maximum size), a reader
#: limit of spec § 8.2: a valid file may be larger, and is then refused.
MAX_FILE_BYTES = 4 * MAX_SECTION_BYTES
#: Bytes :func:`load` reads at a time.
READ_CHUNK_BYTES = 1 << 20


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


def load(
    source: str | os.PathLike[str] | BinaryIO,
    *,
    max_indices: int = DEFAULT_MAX_INDICES,
    check_layers: Callable[[Mapping[str, Layer]], None] | None = None,
) -> Container:
    """Read a container from a path or a binary file object.

    Raises :class:`FormatError` (naming the file) if it is not a valid
    container, if it is larger than :data:`MAX_FILE_BYTES`, or if it declares
    more than ``max_indices`` indices (spec § 8.2); ``OSError`` if it cannot be
    read. ``check_layers`` as in :meth:`Container.from_bytes`. The file is read
    in pieces of :data:`READ_CHUNK_BYTES`, so memory follows the file's size.

    >>> container = conesfmt.load("cat.cones")
    """
    if hasattr(source, "read"):
        name = getattr(source, "name", "<stream>")
        data = _read_all(source, name)
    else:
        name = os.fspath(source)
        with open(source, "rb") as handle:
            data = _read_all(handle, name)
    try:
        return Container.from_bytes(data, max_indices=max_indices, check_layers=check_layers)
    except FormatError as error:
        raise FormatError(f"{name}: {error}") from None


def _read_all(handle: BinaryIO, name: str) -> bytes:
    """All bytes of ``handle``, in pieces: never an up-front allocation of the size limit (spec § 8.2)."""
    parts, total = [], 0
    while True:
        piece = handle.read(READ_CHUNK_BYTES)
        if not isinstance(piece, bytes | bytearray):
            raise FormatError(f"{name}: expected a binary file, got {type(piece).__name__} from read()")
        if not piece:
            return b"".join(parts)
        total += len(piece)
        if total > MAX_FILE_BYTES:
            raise FormatError(f"{name}: larger than {MAX_FILE_BYTES} bytes (MAX_FILE_BYTES, spec § 8.2)")
        parts.append(piece)
