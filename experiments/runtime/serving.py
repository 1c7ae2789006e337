"""A trained network as it is shipped and served: files, sizes, latency, test accuracy.

`prune`, `auto_tune` and the trials export with `export` (SavedModel) and
`save_keras` (.keras that plain Keras loads); `latencies_ms` times inference
calls of several networks in turns.

A SavedModel is written through TensorFlow, so `export` works where Keras
runs on TensorFlow only (`CAN_EXPORT`; the commands skip or refuse it
elsewhere with `NO_EXPORT`); everything else works on every backend.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import statistics
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np

from cb_keras import _backend, files, logs, pruning
from cb_keras.taps import strip_taps
from experiments.runtime.rundir import RunDir

EXPORT_DIR = "export"
CAN_EXPORT = _backend.NAME == "tensorflow"
NO_EXPORT = (f"a SavedModel (export/) is written through TensorFlow, and Keras runs on "
             f"{_backend.NAME!r}")


def export(trial: RunDir, model: keras.Model) -> None:
    """Export `model` as a SavedModel to export/, replacing an older export (`CAN_EXPORT`)."""
    if not trial.writer:
        return
    tmp, target = trial.file(f".tmp-{EXPORT_DIR}"), trial.file(EXPORT_DIR)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.export(str(tmp), verbose=False)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)


def export_size(model: keras.Model, run: RunDir | None = None) -> int:
    """Export a SavedModel to ``run/export`` (`export`); returns its bytes.

    Without `run` the export goes to a temporary folder that is deleted.
    """
    if run is None:
        with tempfile.TemporaryDirectory() as folder:
            return export_size(model, RunDir(folder))
    export(run, model)
    return sum(f.stat().st_size for f in run.file(EXPORT_DIR).rglob("*")
               if f.is_file())


def save_keras(model: keras.Model, path: pathlib.Path) -> int:
    """Save `model`'s architecture and weights as .keras, atomically; returns bytes.

    Without optimizer and without the probe's marker layers
    (`cb_keras.taps.strip_taps`), so plain ``keras.models.load_model`` loads
    it without importing cb_keras.
    """
    files.save_atomically(path, strip_taps(model).save)  # Keras wants the .keras suffix
    return path.stat().st_size


def describe(model: keras.Model, blocks: int) -> dict[str, Any]:
    """``blocks`` (residual blocks left), ``weight_layers`` (Conv/Dense), ``parameters``."""
    return {"blocks": blocks, "weight_layers": pruning.weight_layers(model),
            "parameters": int(model.count_params())}


def accuracy(model: keras.Model, test: Any) -> float:
    """Fraction of the test split whose arg-max output is the label, in [0, 1].

    `test`: ``(images, labels)`` batches (`cb_keras.paper.data.load`);
    `predict` reads the images of each.
    """
    labels = np.concatenate([np.asarray(y) for _, y in test])
    outputs = model.predict(test, verbose=0)
    return float(np.mean(np.argmax(outputs, axis=-1) == labels))


def _inference(model: keras.Model):
    """``model(images, training=False)`` compiled anew, traced on its first call.

    On TensorFlow a ``tf.function``: TensorFlow counts the traces of all of
    them as retracing of one function (they share their code) and warns
    after a few networks; the warning is filtered (`cb_keras.logs`), as each
    network is traced only once. On JAX a ``jax.jit`` of the model's
    stateless call on its current weights.
    """
    if _backend.NAME == "tensorflow":
        import tensorflow as tf

        def infer(images):
            return model(images, training=False)
        return tf.function(infer)
    import jax

    weights = ([v.value for v in model.trainable_variables],
               [v.value for v in model.non_trainable_variables])
    call = jax.jit(lambda weights, images: model.stateless_call(
        *weights, images, training=False)[0])
    return lambda images: call(weights, images)


logs.quiet_expected_retracing([_inference.__qualname__ + ".<locals>.infer"])


def latencies_ms(models: Sequence[keras.Model], batch: Any, repeats: int) -> list[float]:
    """Median wall time of one inference call on `batch` per model, in milliseconds.

    Each call is a compiled ``model(batch, training=False)`` (`_inference`)
    that waits for its result; every model is warmed up once, then the
    models take turns for `repeats` rounds, so load from other processes
    affects all of them alike.
    """
    serves = [_inference(model) for model in models]
    times: list[list[float]] = [[] for _ in models]
    for round_ in range(repeats + 1):
        for serve, samples in zip(serves, times):
            start = time.perf_counter()
            np.asarray(serve(batch))
            if round_:  # round 0 traces and warms up
                samples.append(time.perf_counter() - start)
    return [1000.0 * statistics.median(samples) for samples in times]
