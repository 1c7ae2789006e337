"""Per-epoch Keras callbacks of a trial: test split, TensorBoard scalars, commit.

A trial (`experiments.trials.trial.train_trial`) passes them to `fit` in this
order, after `cb_keras.ConflictingBundles` where noted, so each sees the
numbers of the ones before it in the epoch's logs:

1. `cb_keras.paper.evaluation.TestEvaluation` adds ``test_loss`` and ``test_accuracy``;
2. ``ConflictingBundles`` adds the bundle metrics of a^L;
3. `EpochCommit` saves the checkpoint, metrics.csv and state.json;
4. `ScalarSummaries` writes the numbers for TensorBoard (on TensorFlow).
"""

from __future__ import annotations

import pathlib
import time
from typing import Any, Sequence

import keras
import numpy as np

from cb_keras import _backend
from experiments.runtime.rundir import STATE_FILE, RunDir
from experiments.trials.state import TrialState

METRICS_FILE = "metrics.csv"
_FIRST_COLUMNS = ("epoch", "loss", "accuracy", "test_loss", "test_accuracy")


class EpochCommit(keras.callbacks.Callback):
    """Commits every finished epoch to the trial directory (the resume point).

    Order: checkpoint (model + optimizer), metrics.csv, then state.json (the
    commit), then checkpoints beyond `keep` are deleted. Epochs are counted
    from 1 in the files: row ``epoch=3`` and ``epoch_0003.weights.h5`` hold
    the state after three epochs.

    Args:
        trial: the trial directory.
        state: the trial's state before the first epoch of this `fit`;
            `state` is the committed one after each epoch
            (`TrialState.commit_epoch`).
        keep: checkpoints to keep.
        checkpoint_stopped: False: an epoch at which an earlier callback
            stopped training (``model.stop_training``) gets no checkpoint and
            no state.json: it goes into `state` only (``checkpoint`` None), for
            the trial to commit with its result (`train_trial`); a kill before
            then resumes from the epoch before and trains the stopped one again.
    """

    def __init__(self, trial: RunDir, state: TrialState, keep: int,
                 checkpoint_stopped: bool = True):
        super().__init__()
        self.trial, self.state, self.keep = trial, state, keep
        self.checkpoint_stopped = checkpoint_stopped
        self._started = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        done = epoch + 1
        row = {"epoch": done, **{k: number(v) for k, v in (logs or {}).items()},
               "seconds": round(time.monotonic() - self._started, 3)}
        committed = self.checkpoint_stopped or not self.model.stop_training
        checkpoint = self.trial.save_checkpoint(self.model, done) if committed else None
        self.state = self.state.commit_epoch(row, checkpoint)
        write_metrics(self.trial, self.state.history)
        if committed:
            self.trial.write_json(STATE_FILE, self.state.to_dict())
            self.trial.prune_checkpoints(self.keep, protect=done)


class ScalarSummaries(keras.callbacks.Callback):
    """Writes the numbers of every epoch's logs as TensorBoard scalars ``epoch_<key>``.

    Keras's own TensorBoard callback needs the separate `tensorboard` package
    for its summary ops; this one writes the same event files with core
    TensorFlow ops, so every run logs and any TensorBoard can show them. The
    step is the number of completed epochs. One writer serves all `fit`
    calls of a trial (one events file per process).

    Event files are written through TensorFlow, so only where Keras runs on
    it; elsewhere this writes nothing, and metrics.csv (and auto_tune's
    restarts.csv) hold the same numbers (docs/experiments.md, On JAX).

    Args:
        log_dir: folder of the events file.
        enabled: False on non-chief workers (writes nothing).
    """

    def __init__(self, log_dir: str | pathlib.Path, enabled: bool = True):
        super().__init__()
        self.log_dir = str(log_dir)
        self.enabled = enabled and _backend.NAME == "tensorflow"
        self._writer = None

    def on_epoch_end(self, epoch, logs=None):
        if not self.enabled:
            return
        import tensorflow as tf

        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.log_dir)
        with self._writer.as_default():
            for key, value in (logs or {}).items():
                value = number(value)
                if isinstance(value, (int, float)):
                    tf.summary.write(f"epoch_{key}", tf.constant(value, tf.float32),
                                     step=epoch + 1, metadata=_scalar_metadata())
        self._writer.flush()


def _scalar_metadata():
    """What TensorBoard's scalars plugin expects of a float32 scalar summary (a SummaryMetadata)."""
    from tensorflow.core.framework import summary_pb2

    metadata = summary_pb2.SummaryMetadata()
    metadata.plugin_data.plugin_name = "scalars"
    metadata.data_class = summary_pb2.DATA_CLASS_SCALAR
    return metadata


def write_metrics(trial: RunDir, history: Sequence[dict[str, Any]]) -> None:
    """metrics.csv: one row per epoch, the known columns first."""
    columns = [c for c in _FIRST_COLUMNS if any(c in row for row in history)]
    for row in history:
        columns += [k for k in row if k not in columns]
    trial.write_csv(METRICS_FILE, history, columns)


def number(value: Any) -> Any:
    """A logs value as a Python scalar; None for NaN/inf (e.g. epochs not measured)."""
    value = np.asarray(value)
    if value.size != 1:
        return value.tolist()
    value = value.item()
    return None if isinstance(value, float) and not np.isfinite(value) else value
