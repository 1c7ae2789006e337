"""The trained network of a finished trial, with its data: what lesion and prune start from.

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
from typing import Any

import keras
import numpy as np

from cb_keras import pruning
from experiments.runtime import rundir
from experiments.trials import recipe
from experiments.runtime.config import TrainConfig
from experiments.trials.trial import restore


@dataclasses.dataclass
class Trained:
    """The final network of a trial with the data it was trained on.

    Attributes:
        trial: the trial's directory.
        model: the network, compiled as in training, final weights loaded.
        cfg: the run's training configuration.
        test: the test split, batched ``(images, labels)`` (`cb_keras.paper.data.load`).
        x: the measurement sample, float32 ``(N, H, W, C)`` training images.
        y: its int32 labels ``(N,)``.
        num_classes: C.
        spec: the network (see `experiments.trials.recipe`).
    """

    trial: rundir.RunDir
    spec: dict[str, Any]
    model: keras.Model
    cfg: TrainConfig
    test: Any
    x: np.ndarray
    y: np.ndarray
    num_classes: int

    def conflicts(self) -> pruning.BlockConflicts:
        """Bundle metrics of every residual branch, on the run's measurement sample."""
        return pruning.conflicting_blocks(
            self.model, self.x, self.y, num_classes=self.num_classes,
            **self.cfg.metric_step, samples=self.cfg.measure_samples)


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


def load_trial(path: str | os.PathLike, cfg: TrainConfig | None = None) -> Trained:
    """The final network of the trial at `path` (see `trial_path`) and its data.

    Args:
        path: a trial directory, or a run directory holding one trial.
        cfg: the trial's training settings; default: its run's flags.json
            (in the trial directory or its parent).

    Raises:
        rundir.RunDirError: not a finished trial of a training run.
    """
    trial, state, saved = _finished(path, cfg)
    cfg = cfg or TrainConfig.from_flags(saved)
    _, test, info = recipe.load_data(cfg, augment=False)
    x, y = recipe.measurement_sampler(cfg)(state["seed"], state["completed_epochs"])
    model = recipe.build_model(state["spec"], info.input_shape, info.num_classes)
    recipe.compile_model(model, cfg)
    restore(model, trial.file(state["checkpoint"]))
    return Trained(trial, state["spec"], model, cfg, test, x, y, info.num_classes)


def check_residual_source(path: str | os.PathLike) -> None:
    """Refuse a --source_run that is not a finished training of a resnet.

    Reads only its state.json and flags.json, so lesion and prune call it
    before their own run directory is made.

    Raises:
        rundir.RunDirError: not a single finished trial of a training run, or
            its network has no residual blocks.
    """
    trial, state, _ = _finished(path, None)
    spec = state.get("spec") or {}
    if spec.get("model") != "resnet":
        raise rundir.RunDirError(
            f"{trial.path} trained a {recipe.spec_name(spec) if spec.get('model') else spec} "
            "network, which has no residual blocks; --source_run needs a train run of "
            "--model=resnet.")


def _finished(path: str | os.PathLike, cfg: TrainConfig | None
              ) -> tuple[rundir.RunDir, dict[str, Any], dict[str, Any] | None]:
    """(trial, its state.json, its run's flags.json or None with `cfg`) of a finished trial.

    Raises:
        rundir.RunDirError: not a single trial (`trial_path`), or not finished.
    """
    trial = rundir.RunDir(trial_path(path), writer=False)
    state = trial.read_json(rundir.STATE_FILE)
    saved = None if cfg else rundir.RunDir(_run_root(trial.path)).read_json(rundir.FLAGS_FILE)
    if not state.get("finished") or (saved is None and cfg is None):
        raise rundir.RunDirError(
            f"{trial.path} has not finished training; finish it first by rerunning its "
            "train command.")
    return trial, state, saved


def _run_root(trial: pathlib.Path) -> pathlib.Path:
    """The run directory holding flags.json: the trial itself or its parent."""
    return trial if (trial / rundir.FLAGS_FILE).exists() else trial.parent
