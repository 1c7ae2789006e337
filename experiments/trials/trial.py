"""Resumable training of one network (a *trial*), shared by the commands.

Flag-free: every function takes plain values, so `train`, `fnn_map`, `prune`
and `auto_tune` call it the same way, with the `TrainConfig` their `main`
read from the flags and the data it loaded once (`recipe.trial_data`):

    result = train_trial(run.sub("cell_a"), spec, cfg, data, seed=cfg.seed,
                         strategy=strategy, label="[a]")

One trial trains ``spec`` for ``cfg.trained_epochs`` epochs (``cfg.epochs``,
or one fewer with the reference accounting, `cb_keras.paper.evaluation`) with
`keras.Model.fit`, measures the bundles of a^L with
`cb_keras.ConflictingBundles` at initialization and every
``cfg.measure_every`` epochs, tests every ``cfg.test_every`` epochs and in
each of the last 5 (reference accounting: 4), and after every epoch commits
a checkpoint (model and optimizer state), ``metrics.csv`` and ``state.json``
(see `rundir`). Called
again on the same directory it resumes after the last committed epoch, or
returns the stored result of a finished trial.

Seed schedule: the network is initialised from ``seed``; the training data
of epoch e (shuffle order and augmentation) is seeded with
``data_seed(seed, e)``, listed in ``state.json["data_seeds"]``. The trial
calls `fit` once per epoch on a pipeline built with that epoch's seed, so
an interrupted and resumed trial sees exactly the data of an uninterrupted
one.
"""

from __future__ import annotations

import os
import re
import warnings
from typing import Any, Callable, Sequence

import keras
import numpy as np

from cb_keras.callback import ConflictingBundles, bundle_logs
from cb_keras.paper.spec import NetworkSpec
from cb_keras.measurement import measure
from cb_keras.paper.evaluation import LAST_EPOCHS, TestEvaluation, in_last_epochs
from cb_keras.report import ConflictReport
from experiments.runtime import console, serving
from experiments.trials.callbacks import EpochCommit, ScalarSummaries, number, write_metrics
from experiments.runtime.config import TrainConfig
from experiments.trials.recipe import TrialData, compile_model
from experiments.trials.state import TrialState
from experiments.runtime.rundir import STATE_FILE, RunDir, RunDirError
from experiments.runtime.strategy import Placement

# before_training(untrained model, logs measured at initialization) -> do not train
BeforeTraining = Callable[[keras.Model, dict[str, Any]], bool]
CONFLICTS_FILE = "conflicts.csv"
CONFLICTS_PLOT = "conflicts.png"
TENSORBOARD_DIR = "tensorboard"
# Bundle metrics of a^L that the callback adds to the logs: (key, label, format).
BUNDLE_FIELDS = (
    ("num_bundles", "bundles", ".0f"),
    ("bundle_entropy", "H", ".4f"),
    ("max_accuracy", "max_acc", ".3f"),
)


# Keras's warnings of a load that skipped objects of the file or of the model.
_PARTIAL_LOAD = re.compile(r"Skipping variable loading|could not be loaded")


def restore(model: keras.Model, checkpoint: os.PathLike) -> None:
    """Load model and optimizer state from a checkpoint of `RunDir.save_checkpoint`.

    Raises:
        RunDirError: the file is missing or does not load (empty, truncated,
            of another network), or loads only in part: Keras's warnings of
            the variables it skipped are the error's message, not console lines.
    """
    if not os.path.exists(checkpoint):
        raise RunDirError(
            f"Checkpoint {checkpoint} is missing, but the trial's {STATE_FILE} resumes from "
            f"it. Restore the file, or delete that {STATE_FILE} to retrain the trial.")
    model.optimizer.build(model.trainable_variables)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            model.load_weights(checkpoint)
            error = None
        except (OSError, ValueError, KeyError) as raised:
            error = raised
    # Keras warns of each object it skips, and loads the rest.
    skipped = [w for w in caught if _PARTIAL_LOAD.search(str(w.message))]
    for other in caught:
        if other not in skipped:
            warnings.warn_explicit(other.message, other.category, other.filename, other.lineno)
    if error is not None or skipped:
        problem = _first_line(error) if error else _first_line(Warning(skipped[0].message))
        raise RunDirError(f"Checkpoint {checkpoint} does not load ({problem}); it is "
                          "damaged or of another network.") from error


def resume(model: keras.Model, trial: RunDir, state: TrialState,
           label: str = "") -> TrialState:
    """Restore the newest checkpoint of `trial` that loads; the state at its epoch.

    Tries the checkpoint of ``state`` first, then older ones. Falling back
    to epoch k prints one line and rolls the state back to k
    (`TrialState.roll_back`), so training redoes the lost epochs.

    Raises:
        RunDirError: no checkpoint loads.
    """
    done = state.completed_epochs
    older = [(epoch, path) for epoch, path in reversed(trial.checkpoints().items())
             if epoch < done]
    try:
        restore(model, trial.file(state.checkpoint))
        return state
    except RunDirError as error:
        problem = error
    for epoch, path in older:
        try:
            restore(model, path)
        except RunDirError:
            continue
        print(f"{label} {problem} Resuming from the checkpoint of epoch {epoch} instead."
              .strip(), flush=True)
        return state.roll_back(epoch, str(path.relative_to(trial.path)))
    raise RunDirError(f"{problem} No older checkpoint of {trial.path} loads either; delete "
                      f"its {STATE_FILE} to retrain the trial.")


def _first_line(error: BaseException) -> str:
    """The first line of an exception's message."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def data_seed(seed: int, epoch: int) -> int:
    """Seed of the training data (shuffle order, augmentation) of 0-based `epoch`."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def write_conflicts(trial: RunDir, model: keras.Model, x: np.ndarray, y: np.ndarray,
                    *, num_classes: int, cfg: TrainConfig,
                    report: ConflictReport | None = None) -> ConflictReport:
    """Measure every layer of `model` on ``(x, y)``; write conflicts.csv and conflicts.png.

    `report`: that measurement, when a callback already made it (then
    nothing is measured again).
    """
    if report is None:
        report = measure(model, x, y, num_classes=num_classes, **cfg.metric_step,
                         layers="auto", samples=cfg.measure_samples)
    if trial.writer:
        report.save_csv(trial.file(CONFLICTS_FILE))
        report.plot(trial.file(CONFLICTS_PLOT))
    return report


def summarize(history: list[dict[str, Any]], report: ConflictReport,
              measure_every: int, last_epochs: int = LAST_EPOCHS) -> dict[str, Any]:
    """The numbers of a trial: its per-epoch history and the final network's report.

    Keys: ``epochs``; ``loss``, ``accuracy`` (training, last epoch);
    ``test_accuracy`` (mean over the tested epochs among the last
    `last_epochs`, `cb_keras.paper.evaluation.Accounting.last_epochs`),
    ``test_accuracy_last``, ``test_loss``; ``num_bundles``,
    ``bundle_entropy``, ``max_accuracy``, ``conflicting`` (a^L of the final
    network); ``layers`` (measured), ``conflicting_layers`` (their names);
    ``first_conflict_epoch`` (first epoch whose a^L was conflicting when
    measured during training, 0 at initialization, or None);
    ``bundle_entropy_integral`` (`entropy_integral`); ``train_seconds``.
    """
    last = history[-1]
    tested = [r for r in history if r.get("test_accuracy") is not None]
    recent = [r["test_accuracy"] for r in tested
              if in_last_epochs(r["epoch"], last["epoch"], last_epochs)]
    return {
        "epochs": last["epoch"],
        "loss": last.get("loss"),
        "accuracy": last.get("accuracy"),
        "test_accuracy": float(np.mean(recent)) if recent else None,
        "test_accuracy_last": tested[-1]["test_accuracy"] if tested else None,
        "test_loss": tested[-1]["test_loss"] if tested else None,
        "num_bundles": report.last.num_bundles,
        "bundle_entropy": report.last.bundle_entropy,
        "max_accuracy": report.last.max_accuracy,
        "conflicting": report.last.conflicting,
        "layers": len(report),
        "conflicting_layers": report.conflicting,
        "first_conflict_epoch": next((r["epoch"] for r in history
                                      if (r.get("bundle_entropy") or 0) > 0), None),
        "bundle_entropy_integral": entropy_integral(history, measure_every),
        "train_seconds": round(sum(r.get("seconds", 0.0) for r in history), 1),
    }


def entropy_integral(history: list[dict[str, Any]], every: int) -> float | None:
    """Normalized integral of a^L's bundle entropy over training, as the reference reported it.

    The mean of the bundle entropies (nats) measured at initialization
    (epoch 0) and after every `every`-th epoch up to the last one: with
    ``every=1`` and T trained epochs, ``sum(H_0 .. H_T) / (T + 1)``. The
    reference's evaluate.py (commit 1a4c762) summed ``H_e / epochs`` over its
    checkpoints e = 0 .. epochs - 1, after ``epochs - 1`` trained epochs: the
    same number when T = epochs - 1 (``--accounting=reference``). None when a scheduled
    measurement is missing (not measured at initialization, ``every=0``, or a^L diverged).

    Args:
        history: rows of metrics.csv, ``{"epoch": completed epochs,
            "bundle_entropy": ... or None}``.
        every: the trial's measure_every.
    """
    entropies = {r["epoch"]: r.get("bundle_entropy") for r in history}
    scheduled = [e for e in range(max(entropies, default=-1) + 1) if every and e % every == 0]
    values = [entropies.get(e) for e in scheduled]
    if not values or any(value is None for value in values):
        return None
    return float(np.mean(values))


def begin_trial(trial: RunDir, state: TrialState, model: keras.Model, x: np.ndarray,
                y: np.ndarray, *, num_classes: int, cfg: TrainConfig,
                before_training: BeforeTraining | None) -> tuple[TrialState, bool]:
    """Epoch 0 of a trial: measure the untrained network and commit the row ``epoch=0``.

    The row holds the bundle metrics of a^L on ``(x, y)`` (with
    ``cfg.measure_every`` > 0) and what `before_training` added; it goes to
    metrics.csv and state.json (no checkpoint: the seed rebuilds the network).

    Returns:
        The state with that row, and True when ``before_training(model, logs)``
        decided that the trial must not train.
    """
    logs: dict[str, Any] = {}
    if cfg.measure_every:
        last = measure(model, x, y, num_classes=num_classes, **cfg.metric_step,
                       layers="last", samples=cfg.measure_samples).last
        logs.update(bundle_logs(last))
    stop = bool(before_training and before_training(model, logs))
    state = state.begin({"epoch": 0, **{k: number(v) for k, v in logs.items()}})
    write_metrics(trial, state.history)
    trial.write_json(STATE_FILE, state.to_dict())
    return state, stop


def train_trial(trial: RunDir, spec: NetworkSpec, cfg: TrainConfig, data: TrialData, *,
                seed: int, strategy: Placement, label: str = "",
                callbacks: Sequence[keras.callbacks.Callback] = (),
                until: int | None = None,
                before_training: BeforeTraining | None = None,
                checkpoint_stopped: bool = True,
                measured: Callable[[], ConflictReport | None] = lambda: None) -> dict[str, Any]:
    """Train one network with one seed, resumably; returns its result.

    Args:
        trial: the trial's directory (state, metrics, checkpoints, ...).
        spec: the network.
        cfg: training and measurement settings.
        data: the command's data, loaded once for `cfg` (`recipe.trial_data`).
        seed: initialises the network and seeds the data pipeline.
        strategy: where training and measurement run (`experiments.runtime.strategy`).
        label: prefix of the progress lines, e.g. ``"[seed 1]"``.
        callbacks: extra Keras callbacks (e.g. one that stops training).
        until: train epochs up to this one only (default:
            ``cfg.trained_epochs``), e.g. to finish a trial that a callback
            stopped before it was killed; the data seeds and test epochs stay
            those of ``cfg.trained_epochs``.
        before_training: called once, with the untrained network and the
            numbers measured at initialization, before the first epoch of a
            new trial (`begin_trial`); True: do not train.
        checkpoint_stopped: False: the epoch at which a callback stops
            training is committed with the trial's result, without a
            checkpoint (`EpochCommit`), for a trial whose network nobody
            loads once it stopped (auto_tune's restarted attempts).
        measured: returns the report of every layer of the network as it
            ends, measured by a callback on the trial's sample
            (``data.sample(seed, completed epochs)``) with `cfg`'s metric
            settings, or None; conflicts.csv then holds it instead of a
            second measurement (auto_tune's check at a restart).

    Returns:
        ``seed``, ``spec``, ``dir``, ``parameters`` and the keys of
        `summarize`; the same dict is stored in ``state.json["result"]``.
    """
    saved = trial.read_json(STATE_FILE)
    state = TrialState.from_dict(saved) if saved else TrialState.new(
        spec.to_dict(), seed, [data_seed(seed, e) for e in range(cfg.trained_epochs)])
    if state.finished:
        print(f"{label} finished earlier: {trial.path}".strip(), flush=True)
        return state.result
    state.check_trial(spec.to_dict(), seed, trial.path)
    start = state.completed_epochs
    info = data.info
    keras.utils.set_random_seed(seed)
    with strategy.scope():
        model = spec.build(info.input_shape, info.num_classes)
        compile_model(model, cfg)
        if start:
            state = resume(model, trial, state, label)
            start = state.completed_epochs
            print(f"{label} resuming {trial.path} after epoch {start}".strip(), flush=True)
    measuring = measuring_callbacks(trial, *data.sample(seed, start), info.num_classes, cfg)
    stopped = False
    if not state.history:
        state, stopped = begin_trial(
            trial, state, model, *data.sample(seed, 0), num_classes=info.num_classes,
            cfg=cfg, before_training=before_training)
    commit = EpochCommit(trial, state, cfg.keep_checkpoints, checkpoint_stopped)
    epoch_callbacks = [
        TestEvaluation(data.test, cfg.test_every, cfg.trained_epochs,
                       cfg.epoch_accounting.last_epochs),
        *measuring,
        *callbacks,
        commit,
        ScalarSummaries(trial.file(TENSORBOARD_DIR), enabled=trial.writer),
        *console.progress_callbacks(cfg.progress, cfg.trained_epochs, label, BUNDLE_FIELDS)]
    for epoch in range(start, 0 if stopped else cfg.trained_epochs if until is None else until):
        train = data.training_batches(shuffle_seed=state.data_seeds[epoch])
        for callback in measuring:  # it takes its sample once per fit: this epoch's
            callback.x, callback.y = data.sample(seed, epoch + 1)
        model.fit(train, epochs=epoch + 1, initial_epoch=epoch, verbose=0, shuffle=False,
                  callbacks=epoch_callbacks)
        if model.stop_training:
            break
    state = commit.state
    report = write_conflicts(trial, model, *data.sample(seed, state.completed_epochs),
                             num_classes=info.num_classes, cfg=cfg, report=measured())
    if cfg.export:
        serving.export(trial, model)
    state = state.finish({
        "seed": seed, "spec": spec.to_dict(), "dir": str(trial.path),
        "parameters": int(model.count_params()),
        **summarize(list(state.history), report, cfg.measure_every,
                    cfg.epoch_accounting.last_epochs),
    })
    trial.write_json(STATE_FILE, state.to_dict())
    return state.result


def measuring_callbacks(trial: RunDir, x: np.ndarray, y: np.ndarray, num_classes: int,
                        cfg: TrainConfig) -> list[keras.callbacks.Callback]:
    """The ConflictingBundles callback of the config (none if measure_every is 0)."""
    if not cfg.measure_every:
        return []
    every_layer = cfg.measure_layers == "all"
    return [ConflictingBundles(
        x, y, num_classes=num_classes, **cfg.metric_step, every=cfg.measure_every,
        layers="auto" if every_layer else "last", samples=cfg.measure_samples,
        log_dir=str(trial.file(TENSORBOARD_DIR)) if every_layer and trial.writer else None)]


def trial_dirs(run: RunDir, prefix: str, cfg: TrainConfig) -> list[tuple[int, RunDir]]:
    """(seed, directory) of the `cfg.seeds` trials of one network.

    One seed: the network's directory itself (``run/prefix``, or the run
    directory when `prefix` is empty); several: ``seed<k>/`` inside it.
    """
    base = run.sub(prefix) if prefix else run
    seeds = [cfg.seed + k for k in range(cfg.seeds)]
    if cfg.seeds == 1:
        return [(seeds[0], base)]
    return [(s, base.sub(f"seed{s}")) for s in seeds]


def mean_std(results: list[dict[str, Any]], keys: Sequence[str]) -> dict[str, Any]:
    """``{key_mean, key_std}`` over trial results, for every numeric key given."""
    out = {}
    for key in keys:
        values = [float(r[key]) for r in results if r.get(key) is not None]
        out[f"{key}_mean"] = float(np.mean(values)) if values else None
        out[f"{key}_std"] = float(np.std(values)) if values else None
    return out
