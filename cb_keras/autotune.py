"""Auto-tune: the papers' architecture search by conflicting layer removal (docs/method.md §3).

The search trains a plain (VGG-style) or residual network of the papers
(`cb_keras.models`) epoch by epoch. It checks a^(L) on a training sample
after each of the first ``check_window`` epochs (and, if ``check_at_init``,
once before the first epoch); if a^(L) is conflicting it measures every
block, shrinks the architecture by a *pruning rule* and restarts training
from scratch with the smaller network. It stops when one training run
reaches its last epoch without a restart.

The reference code changed its rule twice; each version is a rule plus its
check schedule (`VERSIONS`, pure shrink functions in `shrink`):

- ``"first_conflict"`` (Nov 2020, commit 22556fc, the papers' text;
  default): remove the first conflicting block and all later blocks of its
  stage; checks after epochs 1..10. ``[3, 12, 41, 3]`` with
  ``stage3_block5`` first conflicting becomes ``[3, 12, 4, 3]``.
- ``"all_non_conflicting"`` (Dec 2020, commit 37ea297, the code when arXiv
  2103.04331 was written): every stage keeps as many blocks as it has
  non-conflicting ones; checks at initialization and after epochs 1..9.
- ``"non_conflicting"`` (May 2022, commit 9c0b9b5, the last version): in
  the first stage holding a conflicting block, keep as many blocks as that
  stage has non-conflicting ones; checks after epochs 1..10. ``stage3``
  with blocks 5 and 9 conflicting becomes 39 blocks.

A stage may shrink to zero blocks (the network then skips it). A block is
conflicting when its measured output is (docs/method.md §2): the block output
``stage{s}_block{b}_tap`` of a VGG net, the scaled residual branch
``stage{s}_block{b}_branch_tap`` of a ResNet. When a^(L) conflicts but the
rule cannot shrink the network (no block conflicts, or every block would
go), the run goes on without a restart and the search says so.

Training is delegated to a *trainer* (`Trainer`): a callable that trains one
network for a given number of epochs with the search's Keras callbacks and
returns a `TrainOutcome`. `fit_trainer` is a plain in-memory one; the
``python -m experiments auto_tune`` command passes a resumable one. The
search state is a JSON-able dict (`new_state`), handed to ``save_state``
after every change, so a caller that writes it atomically can resume the
search with ``auto_tune(..., state=saved)``: finished restarts are never
repeated.

Example:
    >>> train, test, info = cb_keras.data.load("digits", batch_size=64)
    >>> x, y = cb_keras.data.measurement_sample("digits", 64)
    >>> config = AutoTuneConfig(start_blocks=(3, 6, 12, 3), epochs=20)
    >>> trainer = fit_trainer(train, test, input_shape=info.input_shape,
    ...                       num_classes=info.num_classes)
    >>> result = auto_tune(config, trainer, x, y, num_classes=info.num_classes)
    >>> result.final_blocks, result.num_restarts, result.test_accuracy
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
import re
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np

from cb_keras import models, optimizers
from cb_keras.measurement import measure
from cb_keras.report import ConflictReport

KINDS = ("vgg", "resnet")
LAST_EPOCHS = 5  # the reported test accuracy is the mean over the last 5 epochs
# Name of the tap that decides whether a block conflicts, per model kind.
_BLOCK_TAP = {"vgg": re.compile(r"stage(\d+)_block(\d+)_tap"),
              "resnet": re.compile(r"stage(\d+)_block(\d+)_branch_tap")}

Pattern = list[list[bool]]  # pattern[s][b]: block b+1 of stage s+1 is conflicting
Sample = Callable[[int], tuple[np.ndarray, np.ndarray]]  # completed epochs -> (x, y)


@dataclasses.dataclass(frozen=True)
class RuleVersion:
    """One version of the reference's search: a pruning rule and its check schedule.

    Attributes:
        rule: name of the pruning rule (see `shrink`).
        check_at_init: a^(L) is also checked before the first training epoch.
        check_window: a^(L) is checked after epochs 1..check_window.
        reference: when and in which commit of the reference code it was used.
    """

    rule: str
    check_at_init: bool
    check_window: int
    reference: str


VERSIONS = {version.rule: version for version in (
    RuleVersion("first_conflict", False, 10, "Nov 2020, commit 22556fc"),
    RuleVersion("all_non_conflicting", True, 9, "Dec 2020, commit 37ea297"),
    RuleVersion("non_conflicting", False, 10, "May 2022, commit 9c0b9b5"),
)}
RULES = tuple(VERSIONS)


# ------------------------------------------------------------ pruning rules


def conflict_pattern(blocks: Sequence[int], conflicting_layers: Sequence[str],
                     kind: str = "vgg") -> Pattern:
    """Which blocks conflict, from the names of the conflicting measured layers.

    Args:
        blocks: blocks per stage of the measured network, e.g. ``[3, 12, 41, 3]``.
        conflicting_layers: names of its conflicting measured layers
            (`ConflictReport.conflicting`); names of non-block taps are ignored.
        kind: ``"vgg"`` (block output taps decide) or ``"resnet"`` (the
            scaled residual branch taps decide).

    Returns:
        ``pattern[s][b]`` is True iff block ``b + 1`` of stage ``s + 1`` conflicts;
        ``len(pattern[s]) == blocks[s]``.
    """
    _check_kind(kind)
    pattern = [[False] * count for count in _check_blocks(blocks)]
    for name in conflicting_layers:
        match = _BLOCK_TAP[kind].fullmatch(name)
        if match:
            stage, block = int(match.group(1)), int(match.group(2))
            if stage > len(pattern) or block > len(pattern[stage - 1]):
                raise ValueError(
                    f"layer {name!r} names a block that blocks={list(blocks)} does not "
                    "have; pass the block counts of the measured network.")
            pattern[stage - 1][block - 1] = True
    return pattern


def first_conflicting_block(pattern: Pattern) -> str | None:
    """Name ``stage{s}_block{b}`` of the first conflicting block, or None."""
    for stage, row in enumerate(pattern, start=1):
        for block, conflicting in enumerate(row, start=1):
            if conflicting:
                return f"stage{stage}_block{block}"
    return None


def shrink(blocks: Sequence[int], pattern: Pattern, rule: str = "first_conflict") -> list[int]:
    """The blocks per stage after removing conflicting blocks by `rule`.

    Args:
        blocks: blocks per stage, e.g. ``[3, 12, 41, 3]``.
        pattern: ``pattern[s][b]`` is True iff block b+1 of stage s+1
            conflicts (`conflict_pattern`); row s has ``blocks[s]`` entries.
        rule: one of `RULES`; see the module docstring.

    Returns:
        New block counts, equal to `blocks` when no block conflicts. Except
        for ``"all_non_conflicting"``, stages other than the first one
        holding a conflicting block are unchanged; the result may be all
        zeros (the caller decides what that means).

    Example:
        >>> pattern = [[True, False, False], [False, True, False, True]]
        >>> shrink([3, 4], pattern), shrink([3, 4], pattern, "non_conflicting")
        ([0, 4], [2, 4])
        >>> shrink([3, 4], pattern, "all_non_conflicting")
        [2, 2]
    """
    _check_rule(rule)
    blocks = _check_blocks(blocks)
    if [len(row) for row in pattern] != blocks:
        raise ValueError(
            f"the conflict pattern has {[len(row) for row in pattern]} blocks per stage but "
            f"blocks={blocks}; build it with conflict_pattern(blocks, ...).")
    if rule == "all_non_conflicting":
        return [row.count(False) for row in pattern]
    for stage, row in enumerate(pattern):
        if any(row):
            shrunk = list(blocks)
            shrunk[stage] = row.index(True) if rule == "first_conflict" else row.count(False)
            return shrunk
    return blocks


# ------------------------------------------------------------ configuration


@dataclasses.dataclass(frozen=True)
class AutoTuneConfig:
    """Settings of the search (defaults: the papers').

    Attributes:
        start_blocks: blocks per stage of the starting network; default
            ``(3, 12, 41, 3)``, the papers' 120-layer network.
        kind: ``"vgg"`` (plain, the papers') or ``"resnet"``.
        epochs: epochs of every training run; default 120.
        rule: pruning rule, one of `RULES`; default ``"first_conflict"``.
        check_window: a^(L) is checked after each of the first
            `check_window` epochs of a run (epochs 1..check_window); default
            None: the rule's version (`VERSIONS`: 10, or 9 for
            ``"all_non_conflicting"``).
        check_at_init: a^(L) is also checked before the first epoch of a
            run; default None: the rule's version (True only for
            ``"all_non_conflicting"``).
        samples: size of the measurement sample; default 64.
        max_restarts: at most this many restarts; None (default): no limit.
            Once reached, runs are no longer checked.
        final_epochs: None (default, the papers): the run that passes the
            check is the result. An int: then train the found network once
            more from scratch for this many epochs, without checks, and
            report that run.
        learning_rate: training learning rate (also the metric's lr), > 0.
        batch_size: training batch size (also the metric's bs), >= 1.
        seed: run k initialises its network with ``seed + k``.
    """

    start_blocks: tuple[int, ...] = tuple(models.PAPER_BLOCKS[120])
    kind: str = "vgg"
    epochs: int = 120
    rule: str = "first_conflict"
    check_window: int | None = None
    check_at_init: bool | None = None
    samples: int = 64
    max_restarts: int | None = None
    final_epochs: int | None = None
    learning_rate: float = optimizers.PAPER_LEARNING_RATE
    batch_size: int = 64
    seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "start_blocks", tuple(_check_blocks(self.start_blocks)))
        models.num_layers(self.start_blocks)  # four stages, as the builders need
        _check_kind(self.kind)
        _check_rule(self.rule)
        version = VERSIONS[self.rule]
        if self.check_window is None:
            object.__setattr__(self, "check_window", version.check_window)
        if self.check_at_init is None:
            object.__setattr__(self, "check_at_init", version.check_at_init)
        if not isinstance(self.check_at_init, bool):
            raise ValueError(f"check_at_init must be True, False or None, got "
                             f"{self.check_at_init!r}.")
        for name in ("epochs", "check_window", "samples", "batch_size"):
            _check_int(name, getattr(self, name), minimum=1)
        _check_int("seed", self.seed, minimum=0)
        if self.max_restarts is not None:
            _check_int("max_restarts", self.max_restarts, minimum=0)
        if self.final_epochs is not None:
            _check_int("final_epochs", self.final_epochs, minimum=1)
        if isinstance(self.learning_rate, bool) or not isinstance(
                self.learning_rate, numbers.Real) or not self.learning_rate > 0:
            raise ValueError(
                f"learning_rate must be a number > 0, got {self.learning_rate!r}; "
                "the papers use 1e-3.")


# ------------------------------------------------------------ restarts


@dataclasses.dataclass(frozen=True)
class Restart:
    """One restart of the search: why it happened and what it changed.

    Attributes:
        run: index of the run that conflicted (0: the starting network).
        epoch: completed epochs of that run when a^(L) conflicted (0: at
            initialization, before training).
        layer: name of a^(L); ``bundle_entropy`` its entropy (nats, > 0).
        first_conflicting_block: e.g. ``"stage3_block5"``.
        conflicting_blocks: names of all conflicting blocks, in order.
        blocks_before, blocks_after: blocks per stage of the two networks.
    """

    run: int
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
    checked).

    Args:
        sample: ``sample(epochs) -> (x, y)``, the measurement sample of the
            check after `epochs` completed epochs (0: at initialization):
            float32 images ``(N, H, W, C)`` and int labels ``(N,)``.
        num_classes, learning_rate, batch_size: as for `cb_keras.measure`.
        run: index of the run (recorded in the `Restart`).
        blocks: blocks per stage of the trained network.
        kind: ``"vgg"`` or ``"resnet"``.
        rule: pruning rule (see `shrink`).
        window: check after epochs 1..window.
        on_restart: called with the `Restart` when a restart is decided.
        log: receives one line when a conflict cannot shrink the network.
        at_init: `before_training` checks the untrained network (default False).
    """

    def __init__(self, sample: Sample, *, num_classes: int, learning_rate: float,
                 batch_size: int, run: int, blocks: Sequence[int], kind: str, rule: str,
                 window: int, on_restart: Callable[[Restart], None],
                 log: Callable[[str], None] = print, at_init: bool = False):
        super().__init__()
        self.sample = sample
        self.metric = dict(num_classes=num_classes, learning_rate=learning_rate,
                           batch_size=batch_size)
        self.run, self.blocks, self.kind, self.rule = run, tuple(blocks), kind, rule
        self.window, self.on_restart, self.log = window, on_restart, log
        self.at_init = at_init
        self.restart: Restart | None = None
        self._drawn: tuple = (None,)

    def before_training(self, model: keras.Model, logs: dict[str, Any]) -> bool:
        """The check at initialization, before the first epoch of a run.

        Args:
            model: the untrained network.
            logs: numbers measured at initialization (e.g. ``bundle_entropy``
                of a^(L)); the check adds its own keys.

        Returns:
            True when a restart was decided: the run must not train.
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
                     f"{_block_names(pattern) or 'none'}); training goes on.")
            return
        self.restart = Restart(
            run=self.run, epoch=epoch, layer=report.last.name,
            bundle_entropy=float(report.last.bundle_entropy),
            first_conflicting_block=first_conflicting_block(pattern),
            conflicting_blocks=tuple(_block_names(pattern)),
            blocks_before=self.blocks, blocks_after=after)
        self.on_restart(self.restart)
        self.model.stop_training = True


# ------------------------------------------------------------ trainers


@dataclasses.dataclass(frozen=True)
class TrainRequest:
    """One training run the search asks a trainer for.

    Attributes:
        run: index of the run, 0 for the starting network.
        kind: ``"vgg"`` or ``"resnet"``; blocks: blocks per stage.
        epochs: epochs to train (the run may stop earlier on a restart).
        seed: seed of the network's initialisation.
        callbacks: Keras callbacks to pass to ``fit`` (the `ConflictCheck`),
            before any callback that commits or reports the epoch.
        before_training: None, or a function the trainer calls once with
            the untrained network and the numbers it measured at
            initialization (a dict, may be empty) before the first epoch of
            a run it starts from scratch; True means: do not train (a
            restart was decided), return 0 completed epochs.
    """

    run: int
    kind: str
    blocks: tuple[int, ...]
    epochs: int
    seed: int
    callbacks: tuple[keras.callbacks.Callback, ...]
    before_training: Callable[[keras.Model, dict[str, Any]], bool] | None = None


@dataclasses.dataclass(frozen=True)
class TrainOutcome:
    """What a trainer returns for one run.

    Attributes:
        completed_epochs: epochs the run trained (fewer than asked on a restart).
        test_accuracy: mean test accuracy over its last 5 epochs, or None.
        summary: any other JSON-able numbers of the run (stored with it).
        load_model: returns the trained network (called for the final run only).
    """

    completed_epochs: int
    test_accuracy: float | None
    summary: dict[str, Any]
    load_model: Callable[[], keras.Model]


Trainer = Callable[[TrainRequest], TrainOutcome]


def fit_trainer(train: Any, test: Any, *, input_shape: Sequence[int], num_classes: int,
                learning_rate: float = optimizers.PAPER_LEARNING_RATE,
                verbose: int = 1) -> Trainer:
    """A plain in-memory trainer: ``model.fit`` with the papers' optimizer and loss.

    Args:
        train: training data for ``fit``, e.g. a batched ``tf.data.Dataset``
            of (images, labels) from `cb_keras.data.load`.
        test: test data for ``evaluate``, evaluated after each of the last 5
            epochs of a run.
        input_shape: ``(H, W, C)`` of one image; num_classes: C.
        learning_rate: of ``Lookahead(RAdam)``; use the search's.
        verbose: 1 prints one line per epoch, 0 nothing.

    Returns:
        A `Trainer`. It keeps nothing on disk: a killed search restarts its
        current run from epoch 0 (the experiments command resumes per epoch).
    """
    def trainer(request: TrainRequest) -> TrainOutcome:
        keras.utils.set_random_seed(request.seed)
        model = models.build(request.kind, input_shape, num_classes, blocks=request.blocks)
        model.compile(optimizer=optimizers.paper_optimizer(learning_rate),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"])
        if request.before_training is not None and request.before_training(model, {}):
            return TrainOutcome(0, None, {"parameters": int(model.count_params())},
                                lambda: model)
        tests = _LastEpochsTest(test, request.epochs)
        lines = [keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: print(
            _epoch_line(request, epoch, logs), flush=True))] if verbose else []
        history = model.fit(train, epochs=request.epochs, verbose=0,
                            callbacks=[*request.callbacks, tests, *lines])
        accuracy = float(np.mean(tests.accuracies)) if tests.accuracies else None
        return TrainOutcome(len(history.epoch), accuracy,
                            {"parameters": int(model.count_params())}, lambda: model)
    return trainer


class _LastEpochsTest(keras.callbacks.Callback):
    """Evaluates `test` after each of the last 5 of `epochs` epochs; keeps the accuracies."""

    def __init__(self, test: Any, epochs: int):
        super().__init__()
        self.test, self.epochs, self.accuracies = test, epochs, []

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 > self.epochs - LAST_EPOCHS:
            accuracy = self.model.evaluate(self.test, verbose=0, return_dict=True)["accuracy"]
            self.accuracies.append(accuracy)
            if logs is not None:
                logs["test_accuracy"] = accuracy


def _epoch_line(request: TrainRequest, epoch: int, logs: dict[str, Any]) -> str:
    """``[run 1 vgg-3-6-3-3] epoch 2/20  loss ..  acc ..  test_acc ..  H(a^L) ..``."""
    keys = (("loss", "loss"), ("accuracy", "acc"), ("test_accuracy", "test_acc"),
            ("check_bundle_entropy", "H(a^L)"))
    parts = [f"{label} {logs[key]:.4f}" for key, label in keys
             if key in logs and np.isfinite(logs[key])]
    return f"[run {request.run} {spec_label(request.kind, request.blocks)}] " \
           f"epoch {epoch + 1}/{request.epochs}  " + "  ".join(parts)


# ------------------------------------------------------------ the search


@dataclasses.dataclass(frozen=True)
class AutoTuneResult:
    """The outcome of a search.

    Attributes:
        start_blocks, final_blocks: blocks per stage of the starting and the
            found network.
        kind: ``"vgg"`` or ``"resnet"``.
        restarts: the `Restart` of every restart, in order.
        total_epochs: training epochs spent over all runs (final run included).
        test_accuracy: of the final run, mean over its last 5 epochs (None if
            the trainer did not test).
        start_parameters, final_parameters: parameter counts of the two networks.
        runs: per run, ``{"run", "blocks", "epochs" (asked), "final",
            "restart" (record or None), "completed_epochs", "test_accuracy",
            "summary"}`` (the search state's runs; the last three None until
            the run ends).
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
    runs: tuple[dict[str, Any], ...]
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
                "final_parameters": self.final_parameters, "runs": list(self.runs)}


def new_state(config: AutoTuneConfig) -> dict[str, Any]:
    """The JSON-able state of a search that has not started: run 0, the start network."""
    return {"config": _config_dict(config),
            "runs": [_new_run(0, config.start_blocks, config.epochs, final=False)]}


def auto_tune(config: AutoTuneConfig, trainer: Trainer, x: np.ndarray | None = None,
              y: np.ndarray | None = None, *, num_classes: int,
              sampler: Callable[[int, int], tuple[np.ndarray, np.ndarray]] | None = None,
              state: dict[str, Any] | None = None,
              save_state: Callable[[dict[str, Any]], None] = lambda state: None,
              on_restart: Callable[[Restart], None] = lambda restart: None,
              log: Callable[[str], None] = print) -> AutoTuneResult:
    """Run (or resume) the architecture search of docs/method.md §3.

    Args:
        config: the search settings.
        trainer: trains one run (`fit_trainer`, or a resumable one).
        x: training images without augmentation, ``(N, H, W, C)``, N >=
            ``config.samples``; the first ``config.samples`` are the fixed
            measurement sample of every check. y: their int labels ``(N,)``.
        num_classes: C.
        sampler: instead of `x` and `y`, ``sampler(seed, epochs) -> (x, y)``
            draws the sample of each check: `seed` is the run's seed,
            `epochs` its completed epochs (e.g. `cb_keras.data.sampler` with
            ``augmented=True``, as the reference measured).
        state: a state saved by `save_state` to resume; None (default) starts
            anew (`new_state`). It must come from the same config.
        save_state: called with the state dict after every change (a new
            run, a restart, a finished run); write it atomically to resume.
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
    state = _check_state(state or new_state(config), config)
    save_state(state)
    while True:
        run = state["runs"][-1]
        seed = config.seed + run["run"]
        check = _check_callback(config, state, functools.partial(sampler, seed), num_classes,
                                save_state, on_restart, log)
        outcome = trainer(TrainRequest(
            run=run["run"], kind=config.kind, blocks=tuple(run["blocks"]), epochs=run["epochs"],
            seed=seed, callbacks=(check,) if check else (),
            before_training=check.before_training if check and config.check_at_init else None))
        run.update(completed_epochs=outcome.completed_epochs,
                   test_accuracy=outcome.test_accuracy, summary=outcome.summary)
        save_state(state)
        if check is not None and check.restart is not None:
            continue  # the callback saved the restart and the next run
        if config.final_epochs is not None and not run["final"]:
            log(f"search done: {spec_label(config.kind, run['blocks'])} passed the check; "
                f"training it from scratch for {config.final_epochs} epochs")
            state["runs"].append(_new_run(len(state["runs"]), run["blocks"],
                                          config.final_epochs, final=True))
            save_state(state)
            continue
        return _result(config, state, outcome.load_model(), num_classes)


def _check_callback(config: AutoTuneConfig, state: dict[str, Any], sample: Sample,
                    num_classes: int, save_state, on_restart, log) -> ConflictCheck | None:
    """The check of the current run, or None (final run, or no restarts left)."""
    run = state["runs"][-1]
    restarts = sum(r["restart"] is not None for r in state["runs"])
    if run["final"] or (config.max_restarts is not None and restarts >= config.max_restarts):
        return None

    def restart(record: Restart) -> None:
        run.update(restart=record.to_dict(), completed_epochs=record.epoch)
        state["runs"].append(_new_run(len(state["runs"]), record.blocks_after,
                                      config.epochs, final=False))
        save_state(state)
        log(f"restart {restarts + 1}: run {record.run} conflicts after epoch {record.epoch} "
            f"(a^L H={record.bundle_entropy:.4f}), first conflicting block "
            f"{record.first_conflicting_block}: blocks {list(record.blocks_before)} -> "
            f"{list(record.blocks_after)}")
        on_restart(record)

    return ConflictCheck(
        sample, num_classes=num_classes, learning_rate=config.learning_rate,
        batch_size=config.batch_size, run=run["run"], blocks=run["blocks"],
        kind=config.kind, rule=config.rule, window=config.check_window,
        on_restart=restart, log=log, at_init=config.check_at_init)


def _result(config: AutoTuneConfig, state: dict[str, Any], model: keras.Model,
            num_classes: int) -> AutoTuneResult:
    """The result of a finished search state."""
    runs = state["runs"]
    start = models.build(config.kind, tuple(model.inputs[0].shape[1:]), num_classes,
                         blocks=config.start_blocks)
    return AutoTuneResult(
        start_blocks=config.start_blocks, final_blocks=tuple(runs[-1]["blocks"]),
        kind=config.kind,
        restarts=tuple(Restart.from_dict(r["restart"]) for r in runs if r["restart"]),
        total_epochs=sum(r["completed_epochs"] for r in runs),
        test_accuracy=runs[-1]["test_accuracy"],
        start_parameters=int(start.count_params()),
        final_parameters=int(model.count_params()), runs=tuple(runs), model=model)


def spec_label(kind: str, blocks: Sequence[int]) -> str:
    """A short name of a network, e.g. ``vgg-3-12-41-3``."""
    return f"{kind}-" + "-".join(str(b) for b in blocks)


def _new_run(index: int, blocks: Sequence[int], epochs: int, final: bool) -> dict[str, Any]:
    return {"run": index, "blocks": list(blocks), "epochs": epochs, "final": final,
            "restart": None, "completed_epochs": None, "test_accuracy": None,
            "summary": None}


def _config_dict(config: AutoTuneConfig) -> dict[str, Any]:
    return {key: list(value) if isinstance(value, tuple) else value
            for key, value in dataclasses.asdict(config).items()}


def _check_state(state: dict[str, Any], config: AutoTuneConfig) -> dict[str, Any]:
    """`state` if it belongs to `config`, else a ValueError saying what differs."""
    saved = state.get("config") if isinstance(state, dict) else None
    if saved != _config_dict(config) or not state.get("runs"):
        differing = sorted(key for key, value in _config_dict(config).items()
                           if not isinstance(saved, dict) or saved.get(key) != value)
        raise ValueError(
            f"the search state was saved with another config (differs in {differing}) or "
            "is not a search state; resume with the config it was saved with, or pass "
            "state=None to start anew.")
    return state


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
            f"cb_keras.data.measurement_sample(name, {samples})) or lower samples.")
    return x[:samples], y[:samples]


def _block_names(pattern: Pattern) -> list[str]:
    return [f"stage{s}_block{b}" for s, row in enumerate(pattern, start=1)
            for b, conflicting in enumerate(row, start=1) if conflicting]


def _check_blocks(blocks: Sequence[int]) -> list[int]:
    """`blocks` as a list of non-negative ints with a block somewhere."""
    if isinstance(blocks, str) or not isinstance(blocks, Sequence) or not blocks or not all(
            isinstance(b, numbers.Integral) and not isinstance(b, bool) and b >= 0
            for b in blocks) or not any(blocks):
        raise ValueError(
            f"blocks must be non-negative ints per stage with at least one block, got "
            f"{blocks!r}; e.g. (3, 12, 41, 3), the papers' 120-layer network.")
    return [int(b) for b in blocks]


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {list(KINDS)}, got {kind!r}.")


def _check_rule(rule: str) -> None:
    if rule not in RULES:
        raise ValueError(
            f"rule must be one of {list(RULES)} (" + "; ".join(
                f"{name!r}: {version.reference}" for name, version in VERSIONS.items())
            + f"), got {rule!r}.")


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}.")
