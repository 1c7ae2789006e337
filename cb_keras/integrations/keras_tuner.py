"""`ConflictStop`: stop a Keras Tuner trial whose a^(L) conflicts; score it the worst.

Needs Keras Tuner (``pip install 'cb_keras[tuner]'``). Keras Tuner's oracle
never sees a trial's intermediate results (keras-tuner#279), so no tuner can
stop a trial early by itself. `ConflictStop` is a Keras callback passed the
ordinary way, ``tuner.search(..., callbacks=[ConflictStop(...)])``, with
any tuner (`RandomSearch`, `BayesianOptimization`, `Hyperband`, ...; Keras
Tuner copies it for every trial). After each epoch of its window it runs
auto-tune's check of a^(L) (`cb_keras.integrations.window`); on a conflict
it stops training at once and sets the objective of every epoch of the
trial to `worst_score`, so the trial's score, the objective's best epoch,
is the worst value and the oracle never picks it. A distributed search
(chief and workers) needs nothing more: every worker runs the callback.
docs/search.md has complete examples.
"""

from __future__ import annotations

from typing import Any

import keras_tuner
from keras_tuner.src.engine.objective import create_objective

from cb_keras.integrations.window import SAMPLES, WINDOW, Conflict, WindowCheck

MAX_SCORE = 0.0  # worst value of a maximized objective: accuracy-like metrics are >= 0


def objective_of(objective: str | keras_tuner.Objective) -> keras_tuner.Objective:
    """The `keras_tuner.Objective` of a name (direction inferred as Keras Tuner does)."""
    if isinstance(objective, keras_tuner.Objective):
        return objective
    if not isinstance(objective, str):
        raise TypeError(f"objective must be a metric name or a keras_tuner.Objective, got "
                        f"{objective!r}.")
    return create_objective(objective)


def worst_score(objective: str | keras_tuner.Objective) -> float:
    """The score of a trial stopped by the check: the worst value of `objective`.

    0 for a maximized objective (accuracy, AUC, ... are >= 0). A minimized
    one (a loss) has no finite worst value; pass ``score=`` to `ConflictStop`.

    Raises:
        ValueError: `objective` is minimized.
    """
    objective = objective_of(objective)
    if objective.direction != "max":
        raise ValueError(
            f"objective {objective.name!r} is minimized and has no natural worst value: pass "
            "score=<a value worse than any real trial's>, e.g. score=1e9 for a loss.")
    return MAX_SCORE


class ConflictStop(WindowCheck):
    """Stops a Keras Tuner trial whose a^(L) conflicts and scores it `score`.

    Args:
        x, y: training inputs without augmentation and their integer labels
            (or a `tf.data.Dataset` of ``(x, y)`` batches and ``y=None``);
            the first `samples` are the measurement sample (kept here).
        batch_size: the `batch_size` of `fit`.
        objective: the tuner's objective, a metric name (e.g. the default
            ``"val_accuracy"``) or a `keras_tuner.Objective`.
        score: the stopped trial's objective value; default `worst_score`.
        check_window, check_at_init, num_classes, learning_rate, samples:
            see `WindowCheck`.
        verbose: 1 (default) prints one line when it stops a trial.

    Attributes:
        conflict: the `Conflict` of the last `fit`, or None.

    Example:
        >>> tuner = keras_tuner.RandomSearch(build, objective="val_accuracy",
        ...                                  max_trials=10)
        >>> tuner.search(x, y, batch_size=64, epochs=20, validation_split=0.2,
        ...              callbacks=[ConflictStop(x, y, batch_size=64)])
    """

    def __init__(self, x: Any, y: Any = None, *, batch_size: int,
                 objective: str | keras_tuner.Objective = "val_accuracy",
                 score: float | None = None, check_window: int = WINDOW,
                 check_at_init: bool = False, num_classes: int | None = None,
                 learning_rate: float | None = None, samples: int = SAMPLES,
                 verbose: int = 1):
        super().__init__(x, y, batch_size=batch_size, check_window=check_window,
                         check_at_init=check_at_init, num_classes=num_classes,
                         learning_rate=learning_rate, samples=samples)
        self.objective = objective_of(objective)
        self.score = worst_score(self.objective) if score is None else float(score)
        self.print_stop = bool(verbose)  # `verbose` is ConflictingBundles' per-epoch line

    def on_conflict(self, conflict: Conflict, logs: dict[str, Any]) -> None:
        self.model.stop_training = True
        if self.print_stop:
            print(f"ConflictStop: {conflict.message}; trial stopped, "
                  f"{self.objective.name} scored {self.score}.", flush=True)

    def on_epoch_end(self, epoch, logs=None):
        logs = {} if logs is None else logs
        super().on_epoch_end(epoch, logs)
        if self.conflict is not None:  # History and Keras Tuner's callbacks come later
            logs[self.objective.name] = self.score

    def on_train_end(self, logs=None):
        history = getattr(self.model, "history", None)
        if self.conflict is not None and history is not None:
            values = history.history.get(self.objective.name, [])
            values[:] = [self.score] * len(values)  # the best epoch is the worst value
