"""Tiny conflict-aware searches on digits, for the integration tests and their processes.

Imported by tests/test_integrations_*.py, and run as a script to be one
process of a multi-process search:

    python tests/search_workers.py optuna STORAGE TRIALS
        optimize the study "digits" in STORAGE (a journal file path, or a
        database URL such as postgresql://...) for TRIALS trials;
    python tests/search_workers.py keras_tuner DIRECTORY [MARKERS]
        be the chief or a worker (KERASTUNER_* environment variables) of a
        distributed Keras Tuner search in DIRECTORY; with MARKERS, every
        trial writes MARKERS/<tuner id>_<trial id> when it starts and takes
        one second per epoch (so a test can kill a worker mid-trial).

The networks: `cb_keras.paper.models.fnn` 2 x `width` trained with SGD (momentum
0.9). With learning rate 0.1 it learns (about 0.85 validation accuracy
after 3 epochs); with 50 its a^L collapses into one bundle after epoch 1.
"""

from __future__ import annotations

import functools
import os
import pathlib
import sys
import time

import keras
import numpy as np

HEALTHY, COLLAPSING = 0.1, 50.0  # learning rates
EPOCHS, WINDOW, BATCH = 3, 2, 64


@functools.cache
def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """sklearn digits: float32 (N, 8, 8, 1) images in [0, 1], int labels; 1400 train, rest val."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.images / 16).astype(np.float32)[..., None]
    y = data.target.astype(np.int32)
    return x[:1400], y[:1400], x[1400:], y[1400:]


def build(learning_rate: float, width: int = 32, depth: int = 2) -> keras.Model:
    """The compiled network (seeded: the same hyperparameters give the same network)."""
    from cb_keras.paper import models

    keras.utils.set_random_seed(0)
    model = models.fnn(depth, width, (8, 8, 1), 10)
    model.compile(keras.optimizers.SGD(learning_rate, momentum=0.9),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


def optuna_objective(trial, extra_callbacks=()) -> float:
    """Train the trial's network with the conflict callback; its validation accuracy."""
    from cb_keras.integrations.optuna import ConflictPruningCallback

    x, y, x_val, y_val = digits()
    trial.set_user_attr("pid", os.getpid())
    model = build(trial.suggest_float("learning_rate", 1e-4, 100.0, log=True))
    check = ConflictPruningCallback(trial, x, y, batch_size=BATCH, check_window=WINDOW,
                                    monitor="val_accuracy")
    history = model.fit(x, y, batch_size=BATCH, epochs=EPOCHS, verbose=0,
                        validation_data=(x_val, y_val), callbacks=[check, *extra_callbacks])
    return history.history["val_accuracy"][-1]


def optuna_storage(storage: str):
    """A journal file path, or a database URL."""
    import optuna

    if "://" in storage:
        return storage
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(storage))


def keras_tuner_model(hp) -> keras.Model:
    return build(hp.Choice("learning_rate", [HEALTHY, COLLAPSING]),
                 hp.Choice("width", [16, 32]))


class Marker(keras.callbacks.Callback):
    """Writes `directory/<tuner id>_<trial id>` when a trial starts; 1 s per epoch."""

    def __init__(self, directory: pathlib.Path, tuner_id: str):
        super().__init__()
        self.directory, self.tuner_id = directory, tuner_id
        self.trial_id = None

    def on_train_begin(self, logs=None):
        (self.directory / f"{self.tuner_id}_{self.trial_id}").write_text(str(os.getpid()))

    def on_epoch_end(self, epoch, logs=None):
        time.sleep(1)


class MarkingTuner:
    """Mixin: tells the Marker callbacks of a trial its id."""

    def run_trial(self, trial, *args, **kwargs):
        for callback in kwargs.get("callbacks", []):
            if isinstance(callback, Marker):
                callback.trial_id = trial.trial_id
        return super().run_trial(trial, *args, **kwargs)


def keras_tuner_search(directory: str, markers: str | None = None):
    """One process of a (distributed) RandomSearch over the 4 networks, with the check."""
    import keras_tuner

    from cb_keras.integrations.keras_tuner import ConflictStop

    tuner = type("Tuner", (MarkingTuner, keras_tuner.RandomSearch), {})(
        keras_tuner_model, objective="val_accuracy", max_trials=4, seed=1,
        directory=directory, project_name="digits")
    x, y, x_val, y_val = digits()
    callbacks = [ConflictStop(x, y, batch_size=BATCH, check_window=WINDOW)]
    if markers:
        callbacks.append(Marker(pathlib.Path(markers),
                                os.environ.get("KERASTUNER_TUNER_ID", "solo")))
    tuner.search(x, y, batch_size=BATCH, epochs=EPOCHS, validation_data=(x_val, y_val),
                 callbacks=callbacks, verbose=0)
    return tuner


def main(argv: list[str]) -> None:
    if argv[1] == "optuna":
        import optuna

        study = optuna.load_study(study_name="digits", storage=optuna_storage(argv[2]))
        study.optimize(optuna_objective, n_trials=int(argv[3]))
    elif argv[1] == "keras_tuner":
        keras_tuner_search(argv[2], argv[3] if len(argv) > 3 else None)
    else:
        raise SystemExit(f"unknown search {argv[1]!r}; use optuna or keras_tuner.")


if __name__ == "__main__":
    main(sys.argv)
