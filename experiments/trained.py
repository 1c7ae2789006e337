"""A trained ResNet of a training run, and the measurements lesion and prune share.

`load_trial(path)` rebuilds the network of one finished trial of a `train`
run (``runs/<name>/`` for one seed, ``runs/<name>/seed<k>/`` for several)
from its ``state.json`` and restores its last checkpoint, with the data and
the measurement sample of the run's own flags.json. `--source_run` names
that trial for the `lesion` and `prune` commands.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import statistics
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from absl import flags

from cb_keras import files, pruning
from cb_keras.taps import strip_taps
from experiments import rundir, training

SOURCE_RUN = flags.DEFINE_string(
    "source_run", None,
    "Directory of a finished `train` run of a resnet (e.g. runs/train_resnet-...), or of "
    "one of its trials (runs/<name>/seed<k>/ when it trained several seeds).")
LATENCY_REPEATS = flags.DEFINE_integer(
    "latency_repeats", 50, "Timed inference calls per network; the median is reported.",
    lower_bound=1)
rundir.operational(LATENCY_REPEATS)


@dataclasses.dataclass
class Trained:
    """The final network of a trial with the data it was trained on.

    Attributes:
        trial: the trial's directory.
        model: the network, compiled as in training, final weights loaded.
        cfg: the run's training configuration.
        test: the test split, batched ``(images, labels)``.
        x: the measurement sample, float32 ``(N, H, W, C)`` training images.
        y: its int32 labels ``(N,)``.
        num_classes: C.
        spec: the network (see `experiments.model_flags`).
    """

    trial: rundir.RunDir
    spec: dict[str, Any]
    model: keras.Model
    cfg: training.TrainConfig
    test: tf.data.Dataset
    x: np.ndarray
    y: np.ndarray
    num_classes: int

    def conflicts(self) -> pruning.BlockConflicts:
        """Bundle metrics of every residual branch, on the run's measurement sample."""
        return pruning.conflicting_blocks(
            self.model, self.x, self.y, num_classes=self.num_classes,
            learning_rate=self.cfg.learning_rate, batch_size=self.cfg.batch_size,
            samples=self.cfg.measure_samples)


def trial_path(path: str | os.PathLike) -> pathlib.Path:
    """The trial directory of `path`: itself if it holds state.json, else its one trial.

    Raises:
        rundir.RunDirError: no trial there, or several (the error lists them).
    """
    path = pathlib.Path(path)
    if (path / rundir.STATE_FILE).exists():
        return path
    trials = sorted(p.parent for p in path.glob(f"*/{rundir.STATE_FILE}"))
    if len(trials) != 1:
        found = f"its trials are {[str(t) for t in trials]}; pass one of them" if trials \
            else "train one first: python -m experiments train --model=resnet ..."
        raise rundir.RunDirError(f"{path} is not a single trained network ({found}).")
    return trials[0]


def load_trial(path: str | os.PathLike) -> Trained:
    """The final network of the trial at `path` (see `trial_path`) and its data.

    Raises:
        rundir.RunDirError: not a finished trial of a training run.
    """
    trial = rundir.RunDir(trial_path(path), writer=False)
    state = trial.read_json(rundir.STATE_FILE)
    saved = rundir.RunDir(_run_root(trial.path)).read_json(rundir.FLAGS_FILE)
    if not state.get("finished") or saved is None:
        raise rundir.RunDirError(
            f"{trial.path} has not finished training; finish it first by rerunning its "
            "train command.")
    cfg = training.TrainConfig.from_flags(saved)
    _, test, info = training.load_data(cfg, augment=False)
    x, y = training.measurement_sampler(cfg)(state["seed"], state["completed_epochs"])
    model = training.build_model(state["spec"], info.input_shape, info.num_classes)
    training.compile_model(model, cfg)
    training.restore(model, trial.file(state["checkpoint"]))
    return Trained(trial, state["spec"], model, cfg, test, x, y, info.num_classes)


def _run_root(trial: pathlib.Path) -> pathlib.Path:
    """The run directory holding flags.json: the trial itself or its parent."""
    return trial if (trial / rundir.FLAGS_FILE).exists() else trial.parent


def accuracy(model: keras.Model, test: tf.data.Dataset) -> float:
    """Fraction of the test split whose arg-max output is the label, in [0, 1]."""
    labels = np.concatenate([y.numpy() for _, y in test])
    outputs = model.predict(test.map(lambda x, y: x), verbose=0)
    return float(np.mean(np.argmax(outputs, axis=-1) == labels))


def latency_ms(model: keras.Model, batch: tf.Tensor, repeats: int) -> float:
    """Median wall time of one inference call of `model` on `batch`, in ms (`latencies_ms`)."""
    return latencies_ms([model], batch, repeats)[0]


def latencies_ms(models: Sequence[keras.Model], batch: tf.Tensor, repeats: int) -> list[float]:
    """Median wall time of one inference call on `batch` per model, in milliseconds.

    Each call is a traced ``tf.function`` of ``model(batch, training=False)``
    that waits for its result; every model is warmed up once, then the
    models take turns for `repeats` rounds, so load from other processes
    affects all of them alike.
    """
    serves = [tf.function(lambda images, model=model: model(images, training=False))
              for model in models]
    times: list[list[float]] = [[] for _ in models]
    for round_ in range(repeats + 1):
        for serve, samples in zip(serves, times):
            start = time.perf_counter()
            serve(batch).numpy()
            if round_:  # round 0 traces and warms up
                samples.append(time.perf_counter() - start)
    return [1000.0 * statistics.median(samples) for samples in times]


def describe(model: keras.Model, blocks: int) -> dict[str, Any]:
    """``blocks`` (residual blocks left), ``weight_layers`` (Conv/Dense), ``parameters``."""
    return {"blocks": blocks, "weight_layers": pruning.weight_layers(model),
            "parameters": int(model.count_params())}


def save_keras(model: keras.Model, path: pathlib.Path) -> int:
    """Save `model`'s architecture and weights as .keras, atomically; returns bytes.

    Without optimizer and without the probe's marker layers
    (`cb_keras.taps.strip_taps`), so plain ``keras.models.load_model`` loads
    it without importing cb_keras.
    """
    temporary = path.with_name(f".tmp-{path.name}")  # Keras wants the .keras suffix
    strip_taps(model).save(temporary)
    files.sync(temporary)
    os.replace(temporary, path)
    return path.stat().st_size


def export_size(model: keras.Model, run: rundir.RunDir | None = None) -> int:
    """Export a SavedModel to ``run/export`` (`training.export`); returns its bytes.

    Without `run` the export goes to a temporary folder that is deleted.
    """
    if run is None:
        with tempfile.TemporaryDirectory() as folder:
            return export_size(model, rundir.RunDir(folder))
    training.export(run, model)
    return sum(f.stat().st_size for f in run.file(training.EXPORT_DIR).rglob("*")
               if f.is_file())
