"""`ConflictCheck`: the search's check of a^(L) during training, and its `Restart` record.

After each epoch of a check window the callback reads (or measures) the
bundle entropy of a^(L); if it conflicts, it measures every block, shrinks
the network by a pruning rule (`cb_keras.autotune.rules`) and, when that gives a
smaller network, records a `Restart` and stops training
(docs/method.md §3).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np

from cb_keras.measurement import measure
from cb_keras.report import ConflictReport
from cb_keras.autotune.rules import block_names, conflict_pattern, first_conflicting_block, shrink

Sample = Callable[[int], tuple[np.ndarray, np.ndarray]]  # completed epochs -> (x, y)


@dataclasses.dataclass(frozen=True)
class Restart:
    """One restart of the search: why it happened and what it changed.

    Attributes:
        attempt: index of the attempt that conflicted (0: the starting network).
        epoch: completed epochs of that attempt when a^(L) conflicted (0: at
            initialization, before training).
        layer: name of a^(L); ``bundle_entropy`` its entropy (nats, > 0).
        first_conflicting_block: e.g. ``"stage3_block5"``.
        conflicting_blocks: names of all conflicting blocks, in order.
        blocks_before, blocks_after: blocks per stage of the two networks.
    """

    attempt: int
    epoch: int
    layer: str
    bundle_entropy: float
    first_conflicting_block: str
    conflicting_blocks: tuple[str, ...]
    blocks_before: tuple[int, ...]
    blocks_after: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples as lists)."""
        return {key: list(value) if isinstance(value, tuple) else value
                for key, value in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Restart:
        """Inverse of `to_dict`."""
        return cls(**{**data, **{key: tuple(data[key]) for key in
                                 ("conflicting_blocks", "blocks_before", "blocks_after")}})


class ConflictCheck(keras.callbacks.Callback):
    """Stops training when a^(L) conflicts early and the network can shrink.

    After each of the first `window` epochs (and, with `at_init`, in
    `before_training`) it checks a^(L): it reads the bundle entropy of a^(L)
    from the epoch's logs when a `cb_keras.ConflictingBundles` placed before
    it measured it there (keys ``bundle_entropy``, ``num_bundles``; it must
    measure with the same learning rate, batch size and sample), so a^(L) is
    measured once per epoch, and measures a^(L) itself otherwise. If a^(L)
    is conflicting, it measures every layer, shrinks `blocks` by `rule` and,
    if that gives a different, non-empty network, calls
    ``on_restart(restart)`` (before later callbacks see the epoch, so the
    decision is saved before the epoch is committed) and sets
    ``model.stop_training``. The checked numbers of a^(L) go into the logs
    as ``check_bundle_entropy`` and ``check_num_bundles`` (NaN when not
    checked). After a restart, ``restart`` holds its `Restart` and
    ``restart_report`` the report of every layer it was decided on (the
    network as it stopped, on ``sample(restart.epoch)``).

    Args:
        sample: ``sample(epochs) -> (x, y)``, the measurement sample of the
            check after `epochs` completed epochs (0: at initialization):
            float32 images ``(N, H, W, C)`` and int labels ``(N,)``.
        num_classes, learning_rate, batch_size: as for `cb_keras.measure`.
        attempt: index of the search's attempt (recorded in the `Restart`).
        blocks: blocks per stage of the trained network.
        kind: ``"vgg"`` or ``"resnet"``.
        rule: pruning rule (see `shrink`).
        window: check after epochs 1..window.
        on_restart: called with the `Restart` when a restart is decided.
        log: receives one line when a conflict cannot shrink the network.
        at_init: `before_training` checks the untrained network (default False).
    """

    def __init__(self, sample: Sample, *, num_classes: int, learning_rate: float,
                 batch_size: int, attempt: int, blocks: Sequence[int], kind: str, rule: str,
                 window: int, on_restart: Callable[[Restart], None],
                 log: Callable[[str], None] = print, at_init: bool = False):
        super().__init__()
        self.sample = sample
        self.metric = dict(num_classes=num_classes, learning_rate=learning_rate,
                           batch_size=batch_size)
        self.attempt, self.blocks, self.kind, self.rule = attempt, tuple(blocks), kind, rule
        self.window, self.on_restart, self.log = window, on_restart, log
        self.at_init = at_init
        self.restart: Restart | None = None
        self.restart_report: ConflictReport | None = None
        self._drawn: tuple = (None,)

    def before_training(self, model: keras.Model, logs: dict[str, Any]) -> bool:
        """The check at initialization, before the first epoch of an attempt.

        Args:
            model: the untrained network.
            logs: numbers measured at initialization (e.g. ``bundle_entropy``
                of a^(L)); the check adds its own keys.

        Returns:
            True when a restart was decided: the attempt must not train.
        """
        self.set_model(model)
        logs.update(check_bundle_entropy=np.nan, check_num_bundles=np.nan)
        if self.at_init:
            self._check(0, logs)
        return self.restart is not None

    def on_epoch_end(self, epoch, logs=None):
        logs = {} if logs is None else logs
        logs.update(check_bundle_entropy=np.nan, check_num_bundles=np.nan)
        if epoch + 1 <= self.window:
            self._check(epoch + 1, logs)

    def _check(self, epochs: int, logs: dict[str, Any]) -> None:
        """Check a^(L) after `epochs` completed epochs; decide on a conflict."""
        if self.restart is not None:
            return
        entropy, bundles = logs.get("bundle_entropy"), logs.get("num_bundles")
        if entropy is None or not np.isfinite(entropy):
            last = self._measure(epochs, "last").last
            entropy, bundles = last.bundle_entropy, last.num_bundles
        logs.update(check_bundle_entropy=entropy, check_num_bundles=bundles or np.nan)
        if entropy is not None and entropy > 0:
            self._decide(epochs, self._measure(epochs, "auto"))

    def _measure(self, epochs: int, layers: str) -> ConflictReport:
        """`cb_keras.measure` of `layers` on the sample of the check after `epochs`."""
        if self._drawn[0] != epochs:  # a drawn sample serves both measurements
            self._drawn = (epochs, *self.sample(epochs))
        _, x, y = self._drawn
        return measure(self.model, x, y, layers=layers, samples=len(y), **self.metric)

    def _decide(self, epoch: int, report: ConflictReport) -> None:
        """Shrink by the rule; restart if that gives another non-empty network."""
        pattern = conflict_pattern(self.blocks, report.conflicting, self.kind)
        after = tuple(shrink(self.blocks, pattern, self.rule))
        if after == self.blocks or not any(after):
            self.log(f"epoch {epoch}: a^L conflicts but rule {self.rule!r} cannot shrink "
                     f"blocks {list(self.blocks)} (conflicting blocks: "
                     f"{block_names(pattern) or 'none'}); training goes on.")
            return
        self.restart = Restart(
            attempt=self.attempt, epoch=epoch, layer=report.last.name,
            bundle_entropy=float(report.last.bundle_entropy),
            first_conflicting_block=first_conflicting_block(pattern),
            conflicting_blocks=tuple(block_names(pattern)),
            blocks_before=self.blocks, blocks_after=after)
        self.restart_report = report
        self.on_restart(self.restart)
        self.model.stop_training = True
