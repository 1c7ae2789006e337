"""Auto-tune: the papers' architecture search by conflicting layer removal (docs/method.md §3).

The search trains a plain (VGG-style) or residual network of the papers
(`cb_keras.paper.models`) epoch by epoch. It checks a^(L) on a training sample
after each of the first ``check_window`` epochs (and, if ``check_at_init``,
once before the first epoch); if a^(L) is conflicting it measures every
block, shrinks the architecture by a *pruning rule* (`cb_keras.autotune.rules`, which
holds its three versions, `VERSIONS`: the papers' and two of the reference
code's) and restarts training from scratch with the smaller network (`cb_keras.autotune.check.ConflictCheck` decides,
and records a `Restart`); each training is one *attempt* of the search,
numbered 0, 1, ... (`cb_keras.autotune.state.SearchAttempt`). It stops when
one attempt reaches its last epoch without a restart. When a^(L) conflicts
but the rule cannot shrink the network (no block conflicts, or every block
would go), the attempt goes on without a restart and the search says so.

The search has no training loop: a *trainer* (`cb_keras.autotune.trainer.Trainer`)
trains one network per `TrainRequest`, which carries the config's learning
rate and batch size, the ones the check measures with. `fit_trainer` is a
plain in-memory one; the ``python -m experiments auto_tune`` command passes
a resumable one. The search state is a record (`cb_keras.autotune.state.SearchState`),
handed to ``save_state`` after every change, so a caller that writes its
``to_dict()`` atomically can resume the search with ``auto_tune(...,
state=SearchState.from_dict(saved, config))``: finished restarts are never
repeated.

Example:
    >>> train, test, info = cb_keras.paper.data.load("digits", batch_size=64)
    >>> x, y = cb_keras.paper.data.measurement_sample("digits", 64)
    >>> config = AutoTuneConfig(start_blocks=(3, 6, 12, 3), epochs=20)
    >>> trainer = fit_trainer(train, test, input_shape=info.input_shape,
    ...                       num_classes=info.num_classes)
    >>> result = auto_tune(config, trainer, x, y, num_classes=info.num_classes)
    >>> result.final_blocks, result.num_restarts, result.test_accuracy
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import keras
import numpy as np

from cb_keras.paper import models
from cb_keras.paper.spec import NetworkSpec
from cb_keras.autotune.check import ConflictCheck, Restart, Sample
from cb_keras.autotune.config import AutoTuneConfig
from cb_keras.autotune.state import SearchAttempt, SearchState
from cb_keras.autotune.trainer import Trainer, TrainRequest

__all__ = ["AutoTuneResult", "auto_tune"]


@dataclasses.dataclass(frozen=True)
class AutoTuneResult:
    """The outcome of a search.

    Attributes:
        start_blocks, final_blocks: blocks per stage of the starting and the
            found network.
        kind: ``"vgg"`` or ``"resnet"``.
        restarts: the `Restart` of every restart, in order.
        total_epochs: training epochs spent over all attempts (the final one included).
        test_accuracy: of the last attempt, mean over its last 5 epochs (None if
            the trainer did not test).
        start_parameters, final_parameters: parameter counts of the two networks.
        attempts: every `SearchAttempt` of the search, in order.
        model: the trained final network.
    """

    start_blocks: tuple[int, ...]
    final_blocks: tuple[int, ...]
    kind: str
    restarts: tuple[Restart, ...]
    total_epochs: int
    test_accuracy: float | None
    start_parameters: int
    final_parameters: int
    attempts: tuple[SearchAttempt, ...]
    model: keras.Model = dataclasses.field(repr=False, compare=False)

    @property
    def num_restarts(self) -> int:
        """Number of restarts."""
        return len(self.restarts)

    def to_dict(self) -> dict[str, Any]:
        """The numbers as a JSON-ready dict (without the model)."""
        return {"kind": self.kind, "start_blocks": list(self.start_blocks),
                "final_blocks": list(self.final_blocks),
                "start_layers": models.num_layers(self.start_blocks),
                "final_layers": models.num_layers(self.final_blocks),
                "num_restarts": self.num_restarts,
                "restarts": [r.to_dict() for r in self.restarts],
                "total_epochs": self.total_epochs, "test_accuracy": self.test_accuracy,
                "start_parameters": self.start_parameters,
                "final_parameters": self.final_parameters,
                "attempts": [a.to_dict() for a in self.attempts]}


def auto_tune(config: AutoTuneConfig, trainer: Trainer, x: np.ndarray | None = None,
              y: np.ndarray | None = None, *, num_classes: int,
              sampler: Callable[[int, int], tuple[np.ndarray, np.ndarray]] | None = None,
              state: SearchState | None = None,
              save_state: Callable[[SearchState], None] = lambda state: None,
              on_restart: Callable[[Restart], None] = lambda restart: None,
              log: Callable[[str], None] = print) -> AutoTuneResult:
    """Run (or resume) the architecture search of docs/method.md §3.

    Args:
        config: the search settings.
        trainer: trains one attempt (`fit_trainer`, or a resumable one).
        x: training images without augmentation, ``(N, H, W, C)``, N >=
            ``config.samples``; the first ``config.samples`` are the fixed
            measurement sample of every check. y: their int labels ``(N,)``.
        num_classes: C.
        sampler: instead of `x` and `y`, ``sampler(seed, epochs) -> (x, y)``
            draws the sample of each check: `seed` is the attempt's seed,
            `epochs` its completed epochs (e.g. `cb_keras.paper.data.sampler` with
            ``augmented=True``, as the reference measured).
        state: a state saved by `save_state` to resume (e.g.
            ``SearchState.from_dict(saved, config)``); None (default) starts
            anew (`SearchState.start`). It must come from the same config.
        save_state: called with the `SearchState` after every change (a new
            attempt, a restart, a finished attempt); write its ``to_dict()``
            atomically to resume.
        on_restart: called once per restart, after the state is saved
            (e.g. for logs).
        log: receives one line per restart and per notable event.

    Returns:
        The `AutoTuneResult`.

    Raises:
        ValueError: a `state` of another config, a sample smaller than
            ``config.samples``, or neither or both of `x` and `sampler`.
    """
    sampler = _sampler(x, y, sampler, config.samples)
    state = SearchState.start(config) if state is None else state.check_config(config)
    save_state(state)
    while True:
        attempt = state.current
        seed = config.seed + attempt.attempt

        def restart(record: Restart) -> None:
            nonlocal state
            state = state.restarted(record)
            save_state(state)
            log(f"restart {len(state.restarts)}: attempt {record.attempt} conflicts after epoch "
                f"{record.epoch} (a^L H={record.bundle_entropy:.4f}), first conflicting block "
                f"{record.first_conflicting_block}: blocks {list(record.blocks_before)} -> "
                f"{list(record.blocks_after)}")
            on_restart(record)

        check = _check_callback(config, state, functools.partial(sampler, seed), num_classes,
                                restart, log)
        outcome = trainer(TrainRequest(
            attempt=attempt.attempt, kind=config.kind, blocks=attempt.blocks,
            epochs=attempt.epochs,
            seed=seed, learning_rate=config.learning_rate, batch_size=config.batch_size,
            callbacks=(check,) if check else (),
            before_training=check.before_training if check and config.check_at_init else None,
            restart_report=lambda: check.restart_report if check else None))
        state = state.ended(attempt.attempt, outcome)
        save_state(state)
        if check is not None and check.restart is not None:
            continue  # the callback saved the restart and the next attempt
        if config.final_epochs is not None and not attempt.final:
            log(f"search done: {NetworkSpec(config.kind, attempt.blocks).label} passed the "
                f"check; training it from scratch for {config.final_epochs} epochs")
            state = state.with_final_attempt()
            save_state(state)
            continue
        return _result(state, outcome.load_model())


def _check_callback(config: AutoTuneConfig, state: SearchState, sample: Sample,
                    num_classes: int, restart: Callable[[Restart], None],
                    log: Callable[[str], None]) -> ConflictCheck | None:
    """The check of the current attempt, or None (final attempt, or no restarts left)."""
    attempt = state.current
    if attempt.final or (config.max_restarts is not None
                     and len(state.restarts) >= config.max_restarts):
        return None
    return ConflictCheck(
        sample, num_classes=num_classes, learning_rate=config.learning_rate,
        batch_size=config.batch_size, attempt=attempt.attempt, blocks=attempt.blocks,
        kind=config.kind, rule=config.rule, window=config.check_window,
        on_restart=restart, log=log, at_init=config.check_at_init)


def _result(state: SearchState, model: keras.Model) -> AutoTuneResult:
    """The result of a finished search state."""
    config = state.config
    return AutoTuneResult(
        start_blocks=config.start_blocks, final_blocks=state.current.blocks,
        kind=config.kind, restarts=state.restarts, total_epochs=state.total_epochs,
        test_accuracy=state.current.test_accuracy,
        start_parameters=int(state.attempts[0].summary["parameters"]),
        final_parameters=int(model.count_params()), attempts=state.attempts, model=model)


def _sampler(x: np.ndarray | None, y: np.ndarray | None, sampler, samples: int
             ) -> Callable[[int, int], tuple[np.ndarray, np.ndarray]]:
    """``sampler(seed, epochs) -> (x, y)`` of `samples` examples, from arrays or a sampler."""
    if (x is None) == (sampler is None):
        raise ValueError(
            "pass the measurement sample either as arrays x, y (the fixed sample of every "
            "check) or as sampler=... (a new sample per check), not "
            + ("both." if sampler is not None else "neither."))
    if sampler is None:
        fixed = _sample(x, y, samples)
        return lambda seed, epochs: fixed
    return lambda seed, epochs: _sample(*sampler(seed, epochs), samples)


def _sample(x: np.ndarray, y: np.ndarray, samples: int) -> tuple[np.ndarray, np.ndarray]:
    """The first `samples` examples, with an error if there are fewer."""
    x, y = np.asarray(x), np.asarray(y)
    if len(x) < samples or len(y) != len(x):
        raise ValueError(
            f"the measurement sample holds {len(x)} images and {len(y)} labels, but the "
            f"search measures on {samples}; pass at least that many (e.g. "
            f"cb_keras.paper.data.measurement_sample(name, {samples})) or lower samples.")
    return x[:samples], y[:samples]
