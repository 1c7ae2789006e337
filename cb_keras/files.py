"""Atomic file writes: a reader (or a killed job) sees the old file or the new one.

Every result file of cb_keras and of the experiments goes through this
module: the content is written to a temporary file in the same folder,
flushed to disk, and renamed over the target (`write_atomically`, or
`save_atomically` for writers that need a file name). A write that fails
removes its temporary file; one that runs out of disk space raises an
`OSError` with ``errno.ENOSPC`` (or ``EDQUOT``) naming the target file.
A killed process may leave temporary files behind (`is_temporary`); the
experiments remove them when they resume a run.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pathlib
import tempfile
from typing import Any, Callable, Union

PathLike = Union[str, "os.PathLike[str]"]
# errno values of a write that found no space: the device is full, or the user's quota is.
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_PREFIX = ".tmp-"


def is_temporary(name: str) -> bool:
    """True for the name of a temporary file of this module (or of a Keras export)."""
    return name.startswith(_PREFIX) or (name.startswith(".") and name.endswith(".tmp"))


def write_atomically(path: PathLike, write: Callable[[Any], Any], binary: bool = False) -> None:
    """Call ``write(file)`` on a temporary file beside `path`, then rename it over `path`.

    The file is text (UTF-8, ``newline=""`` as the csv module wants) unless
    `binary`; it gets mode 0644. On error the temporary file is removed and
    `path` is left as it was.

    Raises:
        OSError: as raised by the file system; with ``errno`` in `DISK_FULL`
            and ``filename`` `path` when the disk is full.
    """
    path = pathlib.Path(path)
    with _named_disk_full(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                                             suffix=".tmp")
        try:
            options = {"mode": "wb"} if binary else {"mode": "w", "encoding": "utf-8",
                                                     "newline": ""}
            with open(handle, **options) as file:
                write(file)
                file.flush()
                os.fsync(file.fileno())
            os.chmod(temporary, 0o644)
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise


def save_atomically(path: PathLike, save: Callable[[pathlib.Path], Any]) -> None:
    """Call ``save(temporary)`` with a path beside `path` ending like it, then rename it over.

    For writers that take a file name, not a file (e.g. ``keras.Model.save``,
    which wants the ``.keras`` suffix). Errors as in `write_atomically`.
    """
    path = pathlib.Path(path)
    temporary = path.with_name(f"{_PREFIX}{path.name}")
    with _named_disk_full(path):
        try:
            save(temporary)
            sync(temporary)
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise


@contextlib.contextmanager
def _named_disk_full(path: pathlib.Path):
    """Re-raise an out-of-space OSError without a file name as one naming `path`."""
    try:
        yield
    except OSError as error:
        if error.errno in DISK_FULL and not error.filename:
            raise OSError(error.errno, error.strerror, str(path)) from error
        raise


def sync(path: PathLike) -> None:
    """Flush a file, or a folder's list of names, to disk (``fsync``)."""
    handle = os.open(path, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def write_text(path: PathLike, text: str) -> None:
    """Write `text` to `path` atomically."""
    write_atomically(path, lambda file: file.write(text))


def write_bytes(path: PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically."""
    write_atomically(path, lambda file: file.write(data), binary=True)


def save_png(figure: Any, path: PathLike) -> None:
    """Save a matplotlib Figure to `path` as a 100 dpi PNG, atomically."""
    write_atomically(path, lambda file: figure.savefig(file, format="png", dpi=100), binary=True)
