"""The run directory of an experiment: where it is, what it wrote, how it resumes.

Layout (one *trial* is one training of one network with one seed)::

    runs/<name>/flags.json      every flag value of the run (key flags of the command)
                environment.json  the settings that change its numbers: Python,
                                Keras backend, versions, oneDNN and Grappler
                                (`experiments.runtime.environment`)
                results.json    the final numbers; written last, so it marks a
                                finished run
                <trial files>   for a single trial, directly in the run directory:
                  state.json      resume point: completed epochs, checkpoint,
                                  per-epoch history, seed schedule
                  metrics.csv     one row per completed epoch
                  conflicts.csv   per-layer bundle metrics of the final network
                  conflicts.png
                  tensorboard/    scalars of every epoch; with --measure_layers=all
                                  also each epoch's per-layer report and plot
                  checkpoints/    epoch_0007.weights.h5 ...: model and optimizer
                                  state of the last complete epochs
                  export/         SavedModel of the final network

Every file is written atomically (temporary file in the same folder, then
``os.replace``): a run killed at any moment leaves either the old or the new
version of each file, never a torn one. ``state.json`` is the commit point of
an epoch: it is written after the epoch's checkpoint, so a killed run resumes
from the last epoch whose state was committed and loses at most the epoch in
progress. Nothing is pickled: state is JSON, weights are Keras ``.weights.h5``.

Flag-free: `experiments.runtime.command` opens the run directory that the flags
name (`experiments.options.run`); flag modules declare here which of their
flags are operational (`operational`).
"""

from __future__ import annotations

import csv
import errno
import fcntl
import hashlib
import io
import json
import math
import os
import pathlib
import re
import shutil
import socket
import time
from typing import Any, Iterable, Mapping, Sequence

from cb_keras import files
from experiments.runtime.console import CommandError, size_text

FLAGS_FILE = "flags.json"
RESULTS_FILE = "results.json"
STATE_FILE = "state.json"
LOCK_FILE = ".lock"
CHECKPOINTS = "checkpoints"
_CHECKPOINT_PATTERN = re.compile(r"epoch_(\d{4,})\.weights\.h5")

# Names of the flags declared with `operational`.
_operational_flags: set[str] = set()


# Run directories this process holds the lock of: resolved path -> open lock file.
_LOCKS: dict[pathlib.Path, Any] = {}


class RunDirError(CommandError):
    """A run directory cannot be used as asked (e.g. resumed with other flags)."""


def operational(*holders: Any) -> None:
    """Declare flags (absl flag holders) that do not change results (where/how a run executes).

    They are still written to flags.json, but may differ when a run is
    resumed, and they do not enter the default run name.
    """
    _operational_flags.update(holder.name for holder in holders)


def is_operational(name: str) -> bool:
    """True if flag `name` was declared with `operational`."""
    return name in _operational_flags


def jsonable(value: Any) -> Any:
    """`value` as plain JSON data: NumPy scalars/arrays to Python, NaN/inf to None."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "tolist"):  # NumPy scalar or array, tf eager tensor via numpy()
        return jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def csv_text(rows: Iterable[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """Rows as CSV text with a header; missing or None values become empty cells."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore",
                            lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in columns})
    return buffer.getvalue()


def default_name(command: str, readable: str, flag_values: Mapping[str, Any]) -> str:
    """``<command>_<readable>_<hash>``: the hash covers every non-operational flag."""
    relevant = {k: v for k, v in sorted(flag_values.items()) if not is_operational(k)}
    digest = hashlib.sha256(json.dumps(jsonable(relevant), sort_keys=True).encode())
    slug = re.sub(r"[^A-Za-z0-9._=+-]+", "-", readable).strip("-")
    return f"{command}_{slug}_{digest.hexdigest()[:8]}" if slug else \
        f"{command}_{digest.hexdigest()[:8]}"


class RunDir:
    """One run directory (or the sub-directory of one trial of a run).

    Args:
        path: the folder; created on the first write.
        writer: False on the non-chief workers of a multi-worker run: they
            read state (to resume) but never write.
    """

    def __init__(self, path: str | os.PathLike, *, writer: bool = True):
        self.path = pathlib.Path(path)
        self.writer = writer

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def file(self, name: str) -> pathlib.Path:
        """Path of `name` inside the run directory."""
        return self.path / name

    def sub(self, name: str) -> "RunDir":
        """A nested run directory (a trial or a grid cell)."""
        return RunDir(self.path / name, writer=self.writer)

    # -- atomic files -----------------------------------------------------
    def write_json(self, name: str, data: Any) -> None:
        """Write `data` as indented JSON, atomically (no NaN: they become null)."""
        if self.writer:
            files.write_text(self.file(name),
                             json.dumps(jsonable(data), indent=2, allow_nan=False) + "\n")

    def read_json(self, name: str) -> dict | None:
        """The JSON object in `name`, or None if the file does not exist.

        Raises:
            RunDirError: the run directory is a file, or `name` is not a JSON
                object (torn, binary, edited by hand).
        """
        path = self.file(name)
        if self.path.exists() and not self.path.is_dir():
            raise RunDirError(
                f"{self.path} is a file, not a run directory; pass another --run_dir or "
                "--name.")
        if not path.exists():
            return None
        try:
            content = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            content = error
        if not isinstance(content, dict):
            problem = content if isinstance(content, Exception) else "not a JSON object"
            raise RunDirError(
                f"{path} is not a valid run file ({problem}); it was not written by this "
                "tool or was edited. Restore it or start a new run (--name).")
        return content

    def write_csv(self, name: str, rows: Iterable[Mapping[str, Any]],
                  columns: Sequence[str]) -> None:
        """Write rows as CSV with the given columns, atomically."""
        if self.writer:
            files.write_text(self.file(name), csv_text(rows, columns))

    # -- flags and results ------------------------------------------------
    def start(self, flag_values: Mapping[str, Any], *, record: bool = True) -> bool:
        """Record the flags of a new run, or check them when resuming.

        flags.json is written only when `record` and its content changes
        (a new run, or other operational flags). A run that was started
        with other flags but never trained (`never_trained`, e.g. it failed
        before its first epoch) is cleared and started anew, with one line.

        Returns:
            True if the run directory already held this run (resuming).

        Raises:
            RunDirError: a flag value is a non-finite float (JSON cannot hold
                it), or the directory holds a run started with other values of
                flags that affect results.
        """
        not_finite = [f"--{name}={value}" for name, value in sorted(flag_values.items())
                      if isinstance(value, float) and not math.isfinite(value)]
        if not_finite:
            raise RunDirError(f"{', '.join(not_finite)} is not a finite number; pass one.")
        saved = self.read_json(FLAGS_FILE)
        current = jsonable(dict(flag_values))
        changed = [] if saved is None else sorted(
            name for name in set(saved) | set(current)
            if not is_operational(name) and saved.get(name) != current.get(name))
        details = ", ".join(
            f"--{n}={_flag_text(saved.get(n))} (now {_flag_text(current.get(n))})"
            for n in changed)
        if changed and record and self.never_trained():
            print(f"{self.path} was started with other flags ({details}) but never completed "
                  "an epoch; starting it anew with these.", flush=True)
            self.clear()
            saved = None
        if saved is None:
            if record:
                self.write_json(FLAGS_FILE, current)
            return False
        if changed:
            raise RunDirError(
                f"{self.path} holds a run started with other flags: {details}. Resume it "
                f"with the flags recorded in {self.file(FLAGS_FILE)}, or start a new run "
                "with another --name or --run_dir.")
        if record and {**saved, **current} != saved:  # operational flags may change
            self.write_json(FLAGS_FILE, {**saved, **current})
        return True

    def never_trained(self) -> bool:
        """True if the run holds nothing an epoch or a finished step produced.

        That is: no results.json, and besides ``.lock`` only JSON and CSV files,
        every trial's state.json at epoch 0 (no checkpoint, no export, no
        plot). Such a run failed before its first epoch; other flags may
        start it anew (`clear`).
        """
        for path in self.path.rglob("*"):
            if path.is_dir() or path.name == LOCK_FILE:
                continue
            if path.name == RESULTS_FILE or path.suffix not in (".json", ".csv"):
                return False
            if path.name == STATE_FILE:
                state = RunDir(path.parent, writer=False).read_json(STATE_FILE) or {}
                if state.get("completed_epochs") != 0 or state.get("finished"):
                    return False
        return True

    def clear(self) -> None:
        """Delete everything in the run directory but its lock (see `never_trained`)."""
        for path in sorted(self.path.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            if path.is_dir() and not path.is_symlink():
                path.rmdir()
            elif path.name != LOCK_FILE or path.parent != self.path:
                path.unlink()

    def lock(self) -> None:
        """Hold an exclusive lock on the run directory until this process ends.

        The lock is an ``fcntl.flock`` on ``.lock``, which names the holder
        (pid, host, start time); the system releases it when the holder
        dies, however it dies. Locking again in the same process is a no-op.

        Raises:
            RunDirError: another process holds the lock (the message names it).
        """
        key = self.path.resolve()
        if key in _LOCKS:
            return
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            handle = open(self.file(LOCK_FILE), "a+", encoding="utf-8")
        except OSError as error:
            raise RunDirError(self._unwritable(error)) from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "a process that has not yet written its name"
            handle.close()
            raise RunDirError(
                f"{self.path} is in use by {holder}; wait for it to end or pass another "
                "--run_dir or --name.") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on host {socket.gethostname()} since "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}\n")
        handle.flush()
        _LOCKS[key] = handle
        self.remove_temporaries()

    def _unwritable(self, error: OSError) -> str:
        """The message for an unfinished run whose directory or lock cannot be written."""
        if error.errno == errno.EROFS:
            return (f"{self.path} is on read-only storage, and an unfinished run must write "
                    "(its lock, checkpoints and results); copy it to writable storage and "
                    "pass that --run_dir.")
        if self.file(LOCK_FILE).is_dir():
            return (f"{self.file(LOCK_FILE)} is a folder, not the run's lock file; remove it "
                    "and rerun.")
        return (f"cannot make or lock the run directory {self.path} ({error.strerror}: "
                f"{error.filename}; a path above it may be a file or a dangling link); pass "
                "another --run_dir or --runs_root.")

    def remove_temporaries(self) -> None:
        """Delete the temporary files (and export folders) a killed writer left behind.

        Only called by the lock's holder: no other process writes the run.
        """
        for path in sorted(self.path.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            if files.is_temporary(path.name):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink(missing_ok=True)

    def size_bytes(self) -> int:
        """Bytes of all files under the run directory."""
        return sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())

    def size_line(self) -> str:
        """``run directory: 12.3 MB (runs/<name>)``, for the end of a summary."""
        return f"run directory: {size_text(self.size_bytes())} ({self.path})"

    @property
    def results(self) -> dict | None:
        """The content of results.json, or None while the run is not finished."""
        return self.read_json(RESULTS_FILE)

    def finish(self, results: Mapping[str, Any]) -> dict[str, Any]:
        """Write results.json (marks the run as finished); returns what it holds."""
        final = jsonable({"finished": True, **results})
        self.write_json(RESULTS_FILE, final)
        return final

    # -- checkpoints ------------------------------------------------------
    def checkpoints(self) -> dict[int, pathlib.Path]:
        """Existing checkpoint files by completed epoch (1-based), oldest first."""
        folder = self.file(CHECKPOINTS)
        found = {}
        if folder.is_dir():
            for path in folder.iterdir():
                match = _CHECKPOINT_PATTERN.fullmatch(path.name)
                if match:
                    found[int(match.group(1))] = path
        return dict(sorted(found.items()))

    def save_checkpoint(self, model: Any, epoch: int) -> str:
        """Save model and optimizer state after `epoch` epochs, atomically.

        Returns:
            The checkpoint's path relative to the run directory.
        """
        relative = f"{CHECKPOINTS}/epoch_{epoch:04d}.weights.h5"
        if self.writer:
            target = self.file(relative)
            files.write_bytes(target, weights_h5(model))  # on disk before state.json
            files.sync(target.parent)
        return relative

    def prune_checkpoints(self, keep: int, protect: int | None = None) -> None:
        """Delete all but the newest `keep` checkpoints (never epoch `protect`); 0 keeps none."""
        if not self.writer:
            return
        epochs = list(self.checkpoints().items())
        for epoch, path in epochs[:max(0, len(epochs) - keep)]:
            if epoch != protect:
                path.unlink(missing_ok=True)


def weights_h5(model: Any) -> bytes:
    """The content of ``model.save_weights("x.weights.h5")`` (model and optimizer), made in memory.

    HDF5 writing to a full disk cannot recover: h5py then fails to close the
    file and the process dies of a segmentation fault. Made in memory, the
    file is written by `cb_keras.files`, whose errors are ordinary OSErrors.
    """
    from keras.src.saving import saving_lib  # save_weights's own writer, given a buffer

    buffer = io.BytesIO()
    store = saving_lib.H5IOStore(buffer, mode="w")
    saving_lib._save_state(model, weights_store=store, assets_store=None, inner_path="",
                           visited_saveables=set())
    store.close()
    return buffer.getvalue()


def _flag_text(value: Any) -> str:
    """A flag value as a user would type it."""
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return "<unset>" if value is None else str(value)
