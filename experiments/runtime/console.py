"""What a run prints: one compact line per epoch and a summary table at the end."""

from __future__ import annotations

import importlib.util
import math
import time
from typing import Any, Mapping, Sequence

import keras
from absl import app, flags, logging


def _quiet_unless_asked() -> None:
    """Keep TensorFlow's INFO logs (e.g. of SavedModel export) off the console.

    absl's `app.run` raises the log level to INFO; an explicit --verbosity wins.
    """
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)


app.call_after_init(_quiet_unless_asked)


class CommandError(Exception):
    """A command cannot go on for a reason the user can fix.

    ``python -m experiments`` prints the message alone (no flag help, no
    traceback) and exits with status 1; the message says what to do.
    """


def require_package(module: str, package: str, extra: str, needed_by: str) -> None:
    """Fail with the install command when an optional package is missing.

    Raises:
        CommandError: `module` cannot be imported; names `package` and `extra`.
    """
    if importlib.util.find_spec(module) is None:
        raise CommandError(
            f"{needed_by} need the optional package {package}: pip install "
            f"'cb_keras[{extra}]' (or drop them from --contestants).")


def size_text(num_bytes: int) -> str:
    """A byte count for people, e.g. ``'3.4 MB'`` (powers of 1000)."""
    value, units = float(num_bytes), ["B", "kB", "MB", "GB"]
    while value >= 1000 and len(units) > 1:
        value, units = value / 1000, units[1:]
    return f"{value:.0f} B" if units[0] == "B" else f"{value:.1f} {units[0]}"


# (logs key, short label, format) of the numbers shown per epoch, in order.
EPOCH_FIELDS = (
    ("loss", "loss", ".4f"),
    ("accuracy", "acc", ".4f"),
    ("test_accuracy", "test_acc", ".4f"),
)


def format_value(value: Any, fmt: str) -> str:
    """`value` formatted with `fmt`; '-' for missing or non-finite numbers."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return format(value, fmt)


def progress_callbacks(mode: str, epochs: int, label: str,
                       bundle_fields: Sequence[tuple[str, str, str]]
                       ) -> list[keras.callbacks.Callback]:
    """The callbacks of a --progress mode: 'line', 'bar' or 'none'."""
    if mode == "line":
        return [ProgressLine(epochs, label, bundle_fields)]
    return [EpochBar(epochs)] if mode == "bar" else []


class EpochBar(keras.callbacks.ProgbarLogger):
    """Keras's progress bar, numbering epochs of the whole training.

    The trials call `fit` once per epoch; this bar still shows "Epoch 3/120".

    Args:
        epochs: the total number of epochs of the training.
    """

    def __init__(self, epochs: int):
        super().__init__()
        self.total_epochs = epochs

    def set_params(self, params):
        super().set_params({**params, "verbose": 1, "epochs": self.total_epochs})


class ProgressLine(keras.callbacks.Callback):
    """Prints one line per epoch: loss, accuracy, test accuracy, bundles of a^L.

    Args:
        epochs: the total number of epochs of the training.
        label: prefix of every line, e.g. ``"[seed 0]"``; default ''.
        bundle_fields: (logs key, label, format) of the bundle metrics to show,
            in order; keys missing or NaN in an epoch's logs (not measured)
            are skipped.
    """

    def __init__(self, epochs: int, label: str = "",
                 bundle_fields: Sequence[tuple[str, str, str]] = ()):
        super().__init__()
        self.epochs = epochs
        self.label = label
        self.bundle_fields = tuple(bundle_fields)
        self._started = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        parts = [f"{self.label} epoch {epoch + 1}/{self.epochs}".strip()]
        parts += [f"{name} {format_value(logs.get(key), fmt)}"
                  for key, name, fmt in EPOCH_FIELDS if key in logs]
        bundles = [f"{name} {format_value(logs[key], fmt)}" for key, name, fmt
                   in self.bundle_fields if format_value(logs.get(key), fmt) != "-"]
        if bundles:
            parts.append("| a^L " + " ".join(bundles))
        parts.append(f"| {time.monotonic() - self._started:.1f}s")
        print("  ".join(parts), flush=True)


def table(rows: Sequence[Mapping[str, Any]],
          columns: Sequence[tuple[str, str, str]]) -> str:
    """A plain-text table: `columns` are (key, header, format) triples."""
    cells = [[header for _, header, _ in columns]]
    cells += [[format_value(row.get(key), fmt) if not isinstance(row.get(key), str)
               else row[key] for key, _, fmt in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(line, widths)) for line in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
