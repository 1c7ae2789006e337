"""Atomic file writes: a reader (or a killed job) sees the old file or the new one.

Every result file of cb_keras and of the experiments goes through
`write_atomically`: the content is written to a temporary file in the same
folder, flushed to disk, and renamed over the target.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import tempfile
from typing import Any, Callable, Union

PathLike = Union[str, "os.PathLike[str]"]


def write_atomically(path: PathLike, write: Callable[[Any], Any], binary: bool = False) -> None:
    """Call ``write(file)`` on a temporary file beside `path`, then rename it over `path`.

    The file is text (UTF-8, ``newline=""`` as the csv module wants) unless
    `binary`; it gets mode 0644. On error the temporary file is removed and
    `path` is left as it was.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        options = {"mode": "wb"} if binary else {"mode": "w", "encoding": "utf-8", "newline": ""}
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


def save_png(figure: Any, path: PathLike) -> None:
    """Save a matplotlib Figure to `path` as a 100 dpi PNG, atomically."""
    write_atomically(path, lambda file: figure.savefig(file, format="png", dpi=100), binary=True)
