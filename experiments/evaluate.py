"""evaluate: recompute the test accuracy and per-layer conflicts of a run.

    python -m experiments evaluate --run_dir=runs/<name>

For every trial of a run made by a training command (train, fnn_map, ...),
as the reference's evaluate.py does:

- test accuracy and loss of each of the last ``--last_epochs`` epochs whose
  checkpoint exists, and their mean (the reported test accuracy when the run
  kept that many checkpoints: 5, or 4 with ``--accounting=reference``, whose
  test split also drops its last partial batch; by default a run keeps 2);
- bundle metrics of every layer of the newest checkpoint, written to
  ``evaluation/<trial>/conflicts.csv`` and ``conflicts.png`` (the trial's own
  files from training stay as they are).

It reads the run and writes only under ``--output_dir`` (default: the run
directory), so a run on read-only storage is evaluated with
``--output_dir=<a writable folder>``.

Writes ``evaluation.json`` to the output folder: ``run`` (its path),
``finished`` (whether training had finished), ``trials`` (one dict per trial:
``dir``, ``spec``, ``seed``, ``epochs`` (evaluated), ``test_accuracy_by_epoch``,
``test_accuracy``, ``test_loss`` (means), ``layers``, ``conflicting_layers``,
``first_conflicting`` and the ``num_bundles``, ``bundle_entropy``,
``max_accuracy`` of a^L) and ``test_accuracy_mean`` / ``test_accuracy_std``
over the trials.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

import numpy as np
from absl import app, flags

from cb_keras.paper.spec import NetworkSpec
from experiments.runtime import command, console, rundir, strategy
from experiments.trials import recipe, trial
from experiments.trials.state import TrialState
from experiments.runtime.config import RunConfig, StrategyConfig, TrainConfig
from experiments.options import run as run_flags
from experiments.options import strategy as strategy_flags

LAST_EPOCHS = flags.DEFINE_integer(
    "last_epochs", None,
    "Average the test accuracy over the checkpoints of this many last epochs, of those the "
    "run kept (--keep_checkpoints, default 2). Default: the run's --accounting, 5 "
    "(cb_keras) or 4 (reference); the reported number needs that many kept checkpoints.",
    lower_bound=1)
SAMPLES = flags.DEFINE_integer(
    "samples", None, "Training samples for the per-layer bundle metrics (default: the "
    "run's --measure_samples).", lower_bound=1)
OUTPUT_DIR = flags.DEFINE_string(
    "output_dir", None, "Folder for evaluation.json and evaluation/ (default: the run "
    "directory); use another one for a run on read-only storage.")
flags.adopt_module_key_flags(run_flags)
flags.adopt_module_key_flags(strategy_flags)

EVALUATION_FILE = "evaluation.json"
EVALUATION_DIR = "evaluation"
TABLE_COLUMNS = (
    ("dir", "trial", ""),
    ("epochs", "epochs", ""),
    ("test_accuracy", "test_acc", ".4f"),
    ("layers", "layers", "d"),
    ("conflicting", "conflicting", "d"),
    ("first_conflicting", "first_conflicting", ""),
    ("bundle_entropy", "H(a^L)", ".4f"),
)


@dataclasses.dataclass(frozen=True)
class Config:
    """What the flags of `evaluate` say."""

    run: RunConfig
    strategy: StrategyConfig
    last_epochs: int | None  # None: the run's accounting decides
    samples: int | None
    output_dir: str | None


def read_flags() -> Config:
    """The flags of `evaluate`, read once.

    Raises:
        app.UsageError: neither --run_dir nor --name names the run.
    """
    if not (run_flags.RUN_DIR.value or run_flags.NAME.value):
        raise app.UsageError(
            "evaluate needs the run to evaluate: --run_dir=runs/<name> (or --name=<name> "
            "under --runs_root).")
    return Config(run_flags.run_config("evaluate", __name__), strategy_flags.strategy_config(),
                  LAST_EPOCHS.value, SAMPLES.value, OUTPUT_DIR.value)


def evaluate_trial(directory: rundir.RunDir, output: rundir.RunDir, data: recipe.TrialData,
                   last_epochs: int, dist: strategy.Placement) -> dict[str, Any]:
    """Test accuracy over the last checkpoints of a trial; per-layer conflicts to `output`.

    `data` is the run's, loaded for its training settings (``data.config``).
    """
    state = TrialState.from_dict(directory.read_json(rundir.STATE_FILE))
    checkpoints = list(directory.checkpoints().items())[-last_epochs:]
    if not checkpoints:
        raise rundir.RunDirError(
            f"{directory.path} has no checkpoints to evaluate; train it first (or keep "
            "checkpoints: --keep_checkpoints).")
    cfg, info = data.config, data.info
    x, y = data.sample(state.seed, checkpoints[-1][0])
    with dist.scope():
        model = NetworkSpec.from_dict(state.spec).build(info.input_shape, info.num_classes)
        recipe.compile_model(model, cfg)
    tests = {}
    for epoch, path in checkpoints:  # oldest first: the model ends at the newest
        trial.restore(model, path)
        tests[epoch] = model.evaluate(data.test, verbose=0, return_dict=True)
    report = trial.write_conflicts(output, model, x, y, num_classes=info.num_classes,
                                   cfg=cfg)
    return {
        "dir": str(directory.path), "spec": state.spec, "seed": state.seed,
        "epochs": list(tests),
        "test_accuracy_by_epoch": {e: v["accuracy"] for e, v in tests.items()},
        "test_accuracy": float(np.mean([v["accuracy"] for v in tests.values()])),
        "test_loss": float(np.mean([v["loss"] for v in tests.values()])),
        "layers": len(report), "conflicting_layers": report.conflicting,
        "first_conflicting": report.first_conflicting,
        "num_bundles": report.last.num_bundles,
        "bundle_entropy": report.last.bundle_entropy,
        "max_accuracy": report.last.max_accuracy,
    }


def evaluate_run(run: rundir.RunDir, output: rundir.RunDir, cfg: Config,
                 dist: strategy.Placement) -> list[dict[str, Any]]:
    """Evaluate every trial of `run` into `output` (evaluation.json); the trials' dicts.

    Raises:
        app.UsageError: `run` holds no run.
        rundir.RunDirError: `output` is read-only, or `run` holds no trained network.
    """
    saved = run.read_json(rundir.FLAGS_FILE)
    if saved is None:
        raise app.UsageError(f"{run.path} holds no run (no {rundir.FLAGS_FILE}); pass the "
                             "directory a train or fnn_map command wrote.")
    if output.path.exists() and not output.path.is_dir():
        raise rundir.RunDirError(f"--output_dir={output.path} is a file; pass a folder for "
                                 "the evaluation's files.")
    if output.writer and output.path.is_dir() and not os.access(output.path, os.W_OK):
        raise rundir.RunDirError(f"{output.path} is read-only; pass --output_dir=<a writable "
                                 "folder> for the evaluation's files.")
    trained_with = TrainConfig.from_flags(saved)
    if cfg.samples:
        trained_with = dataclasses.replace(trained_with, measure_samples=cfg.samples)
    trials = sorted((path.parent for path in run.path.rglob(rundir.STATE_FILE)),
                    key=lambda path: [int(part) if part.isdigit() else part
                                      for part in re.split(r"(\d+)", str(path))])
    trials = [path for path in trials if _has_checkpoints_or_is_unfinished(run, path)]
    if not trials:
        raise rundir.RunDirError(f"{run.path} holds no trained network yet; train it first.")
    data = recipe.trial_data(trained_with)
    results = [evaluate_trial(rundir.RunDir(path, writer=False),
                              output.sub(f"{EVALUATION_DIR}/{path.relative_to(run.path)}"),
                              data,
                              cfg.last_epochs or trained_with.epoch_accounting.last_epochs,
                              dist) for path in trials]
    output.write_json(EVALUATION_FILE, {
        "run": str(run.path), "finished": run.results is not None, "trials": results,
        **trial.mean_std(results, ["test_accuracy"])})
    return results


def _has_checkpoints_or_is_unfinished(run: rundir.RunDir, path) -> bool:
    """False, with a line saying so, for a finished trial that kept no checkpoint: an
    auto_tune attempt that restarted, whose numbers are in search.json."""
    trial_dir = rundir.RunDir(path, writer=False)
    state = TrialState.from_dict(trial_dir.read_json(rundir.STATE_FILE))
    if state.finished and not trial_dir.checkpoints():
        print(f"evaluate: skipping {path.relative_to(run.path)}: it restarted and kept no "
              "checkpoint (its numbers are in search.json)", flush=True)
        return False
    return True


def main(argv: list[str]) -> None:
    """Evaluate every trial of the run named by --run_dir (or --name)."""
    command.no_arguments("evaluate", argv)
    cfg = read_flags()
    dist = strategy.make(cfg.strategy)
    run = rundir.RunDir(command.locate(cfg.run, ""), writer=False)
    output = rundir.RunDir(cfg.output_dir or run.path, writer=strategy.is_chief(dist))
    with strategy.active(dist):
        results = evaluate_run(run, output, cfg, dist)
    rows = [{**r, "epochs": f"{r['epochs'][0]}-{r['epochs'][-1]}",
             "conflicting": len(r["conflicting_layers"])} for r in results]
    print(console.table(rows, TABLE_COLUMNS), flush=True)
    if run.results is None:
        print(f"Note: {run.path} has not finished training; evaluated its last checkpoints.")


if __name__ == "__main__":
    app.run(main)
