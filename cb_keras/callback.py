"""`ConflictingBundles`: measure conflicting bundles during `model.fit`."""

from __future__ import annotations

import dataclasses
import math
import pathlib
from typing import Any

import keras

from cb_keras import bundles, validation
from cb_keras.inputs import dataset_batch_size, learning_rate_of, take_sample
from cb_keras.measurement import measure
from cb_keras.probe import LayersArg, check_layers, tap_names
from cb_keras.report import ConflictReport, LayerResult, write_csv

LOG_KEYS = ("bundle_entropy", "num_bundles", "max_accuracy")


class ConflictingBundles(keras.callbacks.Callback):
    """Measure the bundles of a^(L) (or all layers) on a fixed training sample after each epoch.

    After every `every`-th epoch it measures the bundle metrics (docs/method.md §1) of
    the model's outputs a^(1)..a^(L) on the first `samples` examples of
    ``(x, y)`` and adds those of a^(L) to the epoch's `logs`, so History,
    CSVLogger, TensorBoard, EarlyStopping and the progress bar see them
    (place it before those callbacks in the list):

    - ``bundle_entropy``: bundle entropy of a^(L) in nats; > 0 means a^(L)
      is conflicting (training cannot separate some samples of different
      classes any more);
    - ``num_bundles``: number of bundles of a^(L) (1 .. samples);
    - ``max_accuracy``: the training accuracy bound on the sample, in [0, 1].

    On epochs it does not measure (``every > 1``), and for a diverged a^(L)
    (NaN/inf outputs), the three keys are NaN, so every epoch has them.
    `reports` holds the `ConflictReport` of each measured epoch of the
    current run. With `log_dir`, each measured epoch writes
    ``conflicts_epoch{epoch:04d}.json`` and ``.png`` (per-layer report and
    plot) and rewrites ``conflicts.csv`` from all epoch JSON files in
    `log_dir` (so a resumed run continues it).

    Args:
        x: training inputs (NumPy array or nested structure of them), or a
            `tf.data.Dataset` of ``(x, y)`` batches. Only the first `samples`
            examples are used, taken once per `fit` (use data without
            augmentation; a shuffled Dataset gives a different sample each run).
        y: integer labels of `x`; None if `x` is a Dataset. Default None.
        num_classes: number of classes. Default None: the last dimension of
            the model's (single) output.
        learning_rate: learning rate of the transform. Default None: the
            optimizer's current learning rate at each measurement (schedules
            and wrappers such as LossScaleOptimizer are followed).
        batch_size: the `batch_size` of `fit`. Default None: the static batch
            dimension of `x` if it is a Dataset batched with
            ``drop_remainder=True``; otherwise an error (Keras 3 does not tell
            callbacks the batch size).
        every: measure after every `every`-th epoch (epochs every-1,
            2*every-1, ... counted from 0). Default 1.
        layers: ``"last"`` (a^(L) only), ``"auto"``/``"all"``, or a list of
            layer names (see `cb_keras.probe`). Default ``"last"``.
        stop_on_conflict: set ``model.stop_training`` when a^(L) is
            conflicting. Default False.
        log_dir: directory for the per-epoch report files (made on the first
            write; a file there is refused). Default None.
        samples: size of the fixed sample. Default 512.
        verbose: 1 prints one line per measurement and when stopping.
            Default 0.

    Example:
        >>> callback = cb_keras.ConflictingBundles(x_train, y_train, batch_size=64)
        >>> history = model.fit(x_train, y_train, batch_size=64, epochs=5,
        ...                     callbacks=[callback])
        >>> history.history["bundle_entropy"]
    """

    def __init__(self, x: Any, y: Any = None, *, num_classes: int | None = None,
                 learning_rate: float | None = None, batch_size: int | None = None,
                 every: int = 1, layers: LayersArg = "last", stop_on_conflict: bool = False,
                 log_dir: str | pathlib.Path | None = None, samples: int = 512,
                 verbose: int = 0):
        super().__init__()
        validation.check_positive_int("every", every)
        validation.check_positive_int("samples", samples)
        if num_classes is not None:
            validation.check_positive_int("num_classes", num_classes)
        if learning_rate is not None:
            bundles.check_learning_rate(learning_rate)
        self.x, self.y = x, y
        self.num_classes = num_classes
        self.learning_rate = learning_rate
        self.batch_size = _training_batch_size(x, batch_size)
        self.every = every
        self.layers = check_layers(layers)
        self.stop_on_conflict = stop_on_conflict
        self.log_dir = None if log_dir is None else pathlib.Path(log_dir)
        if self.log_dir is not None and self.log_dir.exists() and not self.log_dir.is_dir():
            raise ValueError(f"log_dir={str(log_dir)!r} is a file, not a folder; pass a "
                             "folder for the per-epoch report files.")
        self.samples = samples
        self.verbose = verbose

    def on_train_begin(self, logs=None):
        self.reports: list[ConflictReport] = []
        self.stopped_epoch = 0
        self._sample = take_sample(self.x, self.y, self.samples)
        self._num_classes = self.num_classes or _output_classes(self.model)
        bundles.check_labels(self._sample[1], len(self._sample[1]), self._num_classes)
        self._current_learning_rate()  # fail now, not after the first epoch
        tap_names(self.model, self.layers)  # the same: unsupported models fail now

    def on_epoch_end(self, epoch, logs=None):
        logs = {} if logs is None else logs
        if (epoch + 1) % self.every:
            logs.update(dict.fromkeys(LOG_KEYS, math.nan))
            return
        report = self._measure(epoch)
        self.reports.append(report)
        last = report.last
        logs.update(bundle_logs(last))
        if self.log_dir is not None:
            self._write(report)
        if self.verbose:
            print(f"\nEpoch {epoch + 1}: {_summary(report)}")
        if self.stop_on_conflict and last.conflicting:
            self.stopped_epoch = epoch
            self.model.stop_training = True
            if self.verbose:
                print(f"Epoch {epoch + 1}: a^(L) {last.name!r} is conflicting; "
                      "stopping training.")

    def _measure(self, epoch: int) -> ConflictReport:
        """Measure the fixed sample now; the report carries the epoch."""
        x, y = self._sample
        report = measure(self.model, x, y, num_classes=self._num_classes,
                         learning_rate=self._current_learning_rate(),
                         batch_size=self.batch_size, layers=self.layers,
                         samples=self.samples)
        return dataclasses.replace(report, epoch=epoch)

    def _current_learning_rate(self) -> float:
        """The given learning rate, else the optimizer's current one."""
        if self.learning_rate is not None:
            return float(self.learning_rate)
        return learning_rate_of(self.model.optimizer)

    def _write(self, report: ConflictReport) -> None:
        """Per-epoch JSON and PNG, and conflicts.csv rebuilt from all epoch JSON files."""
        stem = self.log_dir / f"conflicts_epoch{report.epoch:04d}"
        report.save_json(stem.with_suffix(".json"))
        report.plot(stem.with_suffix(".png"))
        epochs = sorted(self.log_dir.glob("conflicts_epoch*.json"))
        write_csv([ConflictReport.load_json(path) for path in epochs],
                  self.log_dir / "conflicts.csv")


def bundle_logs(layer: LayerResult) -> dict[str, float]:
    """The `LOG_KEYS` of one measured layer (all NaN for a diverged layer)."""
    return {"bundle_entropy": layer.bundle_entropy, "max_accuracy": layer.max_accuracy,
            "num_bundles": math.nan if layer.num_bundles is None else layer.num_bundles}


def _training_batch_size(x: Any, batch_size: int | None) -> int:
    """`batch_size` if given, else the static batch size of a Dataset `x`."""
    if batch_size is not None:
        return validation.check_positive_int("batch_size", batch_size)
    static = dataset_batch_size(x)
    if static is not None:
        return static
    raise ValueError(
        "ConflictingBundles needs the training batch size, which Keras 3 does not give "
        "callbacks: pass batch_size=<the batch_size of fit> (or pass as x the training "
        "tf.data.Dataset batched with drop_remainder=True, whose batch size is static).")


def _output_classes(model: keras.Model) -> int:
    """Number of classes from a single output of shape (batch, C) with C > 1."""
    outputs = getattr(model, "outputs", None) or []
    shapes = [tuple(output.shape) for output in outputs]
    if len(shapes) == 1 and len(shapes[0]) == 2 and (shapes[0][-1] or 0) > 1:
        return int(shapes[0][-1])
    raise ValueError(
        f"cannot infer num_classes from the model's output shapes {shapes} (it needs one "
        "output of shape (batch, C) with C > 1); pass num_classes= to ConflictingBundles.")


def _summary(report: ConflictReport) -> str:
    """One line: a^(L)'s metrics, and the conflicting layers when several are measured."""
    last = report.last
    if last.diverged:
        text = f"a^(L) {last.name!r} diverged (NaN/inf outputs)"
    else:
        text = (f"a^(L) {last.name!r}: {last.num_bundles} bundles, bundle entropy "
                f"{last.bundle_entropy:.4f}, max accuracy {last.max_accuracy:.4f}")
    if len(report) > 1:
        text += f"; {len(report.conflicting)}/{len(report)} layers conflicting"
        if report.first_conflicting:
            text += f", first {report.first_conflicting!r}"
    return text
