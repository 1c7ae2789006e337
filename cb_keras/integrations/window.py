"""`WindowCheck`: auto-tune's check of a^(L) for any model, and its `Conflict` record.

After each of the first `check_window` epochs of `fit` (and, with
`check_at_init`, before the first one) the callback measures a^(L) on a
fixed training sample, as auto-tune's check does (`cb_keras.autotune.check`,
docs/method.md §3): same sample (the first `samples` examples, 64 by
default), same metric (`cb_keras.measure` with the training learning rate
and batch size), same rule (a^(L) conflicts when its bundle entropy is
> 0). A diverged a^(L) (NaN/inf outputs) is not a conflict. The first
conflict is recorded as a `Conflict` and handed to `on_conflict`, which the
search integrations override (prune the trial, stop it).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from cb_keras import validation
from cb_keras.callback import ConflictingBundles
from cb_keras.inputs import take_sample
from cb_keras.report import LayerResult

SAMPLES = 64  # auto-tune's measurement sample (`AutoTuneConfig.samples`)
WINDOW = 10  # auto-tune's check window (`cb_keras.autotune.rules.VERSIONS`)


@dataclasses.dataclass(frozen=True)
class Conflict:
    """A conflicting a^(L) found by the check.

    Attributes:
        epoch: completed epochs when it was measured (0: at initialization).
        layer: name of a^(L).
        num_bundles: bundles of a^(L) on the sample (1: every sample in one).
        bundle_entropy: bundle entropy of a^(L) in nats, > 0.
        samples: size of the measurement sample.
    """

    epoch: int
    layer: str
    num_bundles: int
    bundle_entropy: float
    samples: int

    @property
    def message(self) -> str:
        """One line naming the epoch and the bundle count."""
        when = "at initialization" if self.epoch == 0 else f"after epoch {self.epoch}"
        return (f"a^L ({self.layer!r}) conflicts {when}: {self.num_bundles} bundle"
                f"{'' if self.num_bundles == 1 else 's'} for {self.samples} samples "
                f"(bundle entropy {self.bundle_entropy:.4f} nats)")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (e.g. for a trial's attributes)."""
        return dataclasses.asdict(self)


class WindowCheck(ConflictingBundles):
    """Measure a^(L) after epochs 1..check_window; `on_conflict` on the first conflict.

    A `cb_keras.ConflictingBundles` on a^(L) that measures only inside the
    window (its log keys ``bundle_entropy``, ``num_bundles`` and
    ``max_accuracy`` are NaN after it). Subclasses override `on_conflict`.

    Args:
        x: training inputs without augmentation (NumPy array, or a
            `tf.data.Dataset` of ``(x, y)`` batches); only the first
            `samples` are kept (taken once, here).
        y: their integer labels ``(N,)``; None for a Dataset.
        batch_size: the `batch_size` of `fit` (the metric depends on it).
        check_window: measure after epochs 1..check_window; default 10.
        check_at_init: also measure before the first epoch; default False.
        num_classes, learning_rate: as for `cb_keras.ConflictingBundles`
            (default: the model's output width, the optimizer's rate).
        samples: size of the measurement sample; default 64.
    """

    def __init__(self, x: Any, y: Any = None, *, batch_size: int,
                 check_window: int = WINDOW, check_at_init: bool = False,
                 num_classes: int | None = None, learning_rate: float | None = None,
                 samples: int = SAMPLES):
        validation.check_positive_int("check_window", check_window)
        if not isinstance(check_at_init, bool):
            raise TypeError(f"check_at_init must be True or False, got {check_at_init!r}.")
        # The sample is taken here, so copies of the callback (Keras Tuner
        # copies it for every trial) carry `samples` examples, not the data set.
        x, y = take_sample(x, y, validation.check_positive_int("samples", samples))
        super().__init__(x, y, num_classes=num_classes, learning_rate=learning_rate,
                         batch_size=batch_size, layers="last", samples=samples)
        self.check_window, self.check_at_init = check_window, check_at_init
        self.conflict: Conflict | None = None

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self.conflict = None
        if self.check_at_init:
            self._check(0, self._measure(-1).last, {})

    def on_epoch_end(self, epoch, logs=None):
        logs = {} if logs is None else logs
        if epoch + 1 > self.check_window:
            logs.update(bundle_entropy=math.nan, num_bundles=math.nan, max_accuracy=math.nan)
            return
        super().on_epoch_end(epoch, logs)
        self._check(epoch + 1, self.reports[-1].last, logs)

    def _check(self, epochs: int, last: LayerResult, logs: dict[str, Any]) -> None:
        """Record the first conflict of a^(L) and hand it to `on_conflict`."""
        if self.conflict is None and last.conflicting:
            self.conflict = Conflict(epoch=epochs, layer=last.name,
                                     num_bundles=int(last.num_bundles),
                                     bundle_entropy=float(last.bundle_entropy),
                                     samples=len(self._sample[1]))
            self.on_conflict(self.conflict, logs)

    def on_conflict(self, conflict: Conflict, logs: dict[str, Any]) -> None:
        """Called once, with the first conflict and the epoch's logs ({} at init)."""
        raise NotImplementedError

