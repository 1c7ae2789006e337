"""`ConflictPruningCallback`: prune an Optuna trial whose a^(L) conflicts.

Needs Optuna (``pip install 'cb_keras[optuna]'``). Inside an Optuna
objective, pass the callback to `model.fit`; after each epoch of its window
it runs auto-tune's check of a^(L) (`cb_keras.integrations.window`) and, on
a conflict, raises `optuna.TrialPruned` with a message naming the epoch and
the bundle count. With ``monitor`` it also reports that metric with
`trial.report` every epoch and asks the study's pruner (Median, Hyperband,
...) whether to stop, as Optuna's own Keras callback does, so one callback
serves both pruners. docs/search.md has a complete example.

What a trial records (``trial.user_attrs``): ``bundle_entropy``, the
bundle entropy of a^(L) (nats) of each check in order, and on a conflict
``conflict`` (`Conflict.to_dict`). The bundle entropy is not reported with
`trial.report`: intermediate values are what the study's pruner compares
in the study's direction, and a^(L)'s entropy is no objective.
"""

from __future__ import annotations

import math
from typing import Any

import optuna

from cb_keras.integrations.window import SAMPLES, WINDOW, Conflict, WindowCheck

ENTROPY_ATTR = "bundle_entropy"
CONFLICT_ATTR = "conflict"


class ConflictPruningCallback(WindowCheck):
    """A Keras callback for `model.fit` inside an Optuna objective.

    Args:
        trial: the `optuna.Trial` the objective received.
        x, y: training inputs without augmentation and their integer labels
            (or a `tf.data.Dataset` of ``(x, y)`` batches and ``y=None``);
            the first `samples` are the measurement sample.
        batch_size: the `batch_size` of `fit`.
        check_window: check a^(L) after epochs 1..check_window; default 10.
        monitor: a key of the epoch logs (e.g. ``"val_accuracy"``) to report
            with `trial.report` after every epoch, letting the study's pruner
            stop the trial; default None (no report, only the check).
        check_at_init: also check before the first epoch; default False.
        num_classes, learning_rate, samples: see `WindowCheck`.

    Raises (from `fit`):
        optuna.TrialPruned: a^(L) conflicts (message: the epoch and the
            bundle count), or the study's pruner stops the trial.
        ValueError: `monitor` is not among the epoch's logs.

    Example:
        >>> def objective(trial):
        ...     model = build(trial)  # compiled
        ...     model.fit(x, y, batch_size=64, epochs=20, validation_split=0.2,
        ...               callbacks=[ConflictPruningCallback(
        ...                   trial, x, y, batch_size=64, monitor="val_accuracy")])
        ...     return model.evaluate(x_test, y_test, verbose=0)[1]
    """

    def __init__(self, trial: optuna.Trial, x: Any, y: Any = None, *, batch_size: int,
                 check_window: int = WINDOW, monitor: str | None = None,
                 check_at_init: bool = False, num_classes: int | None = None,
                 learning_rate: float | None = None, samples: int = SAMPLES):
        super().__init__(x, y, batch_size=batch_size, check_window=check_window,
                         check_at_init=check_at_init, num_classes=num_classes,
                         learning_rate=learning_rate, samples=samples)
        self.trial, self.monitor = trial, monitor
        self._entropies: list[float | None] = []

    def on_epoch_end(self, epoch, logs=None):
        logs = {} if logs is None else logs
        super().on_epoch_end(epoch, logs)
        if epoch + 1 <= self.check_window:
            self._record_entropy(logs["bundle_entropy"])
        if self.monitor is not None:
            self._report(epoch + 1, logs)

    def on_conflict(self, conflict: Conflict, logs: dict[str, Any]) -> None:
        self._record_entropy(conflict.bundle_entropy)
        self.trial.set_user_attr(CONFLICT_ATTR, conflict.to_dict())
        raise optuna.TrialPruned(f"trial {self.trial.number} pruned: {conflict.message}.")

    def _record_entropy(self, entropy: float) -> None:
        self._entropies.append(None if math.isnan(entropy) else float(entropy))
        self.trial.set_user_attr(ENTROPY_ATTR, list(self._entropies))

    def _report(self, epochs: int, logs: dict[str, Any]) -> None:
        """Report `monitor` after `epochs` epochs; TrialPruned if the study's pruner says so."""
        if self.monitor not in logs:
            raise ValueError(
                f"monitor={self.monitor!r} is not among the epoch's logs {sorted(logs)}; "
                "pass one of them (validation metrics need validation data in fit).")
        value = float(logs[self.monitor])
        self.trial.report(value, step=epochs)
        if self.trial.should_prune():
            raise optuna.TrialPruned(
                f"trial {self.trial.number} pruned by the study's pruner after epoch "
                f"{epochs}: {self.monitor}={value:.4f}.")
