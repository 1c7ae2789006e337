"""train: train one network of the papers, measuring the bundles of a^L every epoch.

    python -m experiments train --flagfile=flags/train_digits.cfg

Trains ``--seeds`` seeds of the network given by --model/--depth/--blocks/--width
on --dataset (see `experiments.training` for what one trial writes), then
writes results.json with every trial and the mean and std over them:

- ``finished`` (true), ``command`` ("train"), ``spec`` (the network),
  ``dataset``
- ``trials``: one dict per seed (`trial.train_trial`): ``seed``, ``dir``,
  ``spec``, ``parameters``, ``epochs``, ``loss``, ``accuracy``,
  ``test_accuracy`` (mean of the last 5 epochs; --accounting=reference: of
  the last 4, without the test split's last partial batch), ``test_accuracy_last``,
  ``test_loss``, ``num_bundles``, ``bundle_entropy``, ``max_accuracy``,
  ``conflicting`` (a^L of the final network), ``layers``,
  ``conflicting_layers``, ``first_conflict_epoch`` (0: at initialization),
  ``bundle_entropy_integral`` (mean bundle entropy of a^L over the
  measurements from initialization to the last epoch; with
  --accounting=reference the reference's number), ``train_seconds``
- ``<metric>_mean`` / ``<metric>_std`` over the trials for ``test_accuracy``,
  ``accuracy``, ``loss``, ``num_bundles``, ``bundle_entropy``, ``max_accuracy``,
  ``bundle_entropy_integral``
- ``conflicting_trials``: how many trials end with a conflicting a^L.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from absl import app, flags

from cb_keras.paper.spec import NetworkSpec
from experiments.runtime import command, console
from experiments.trials import recipe, trial
from experiments.runtime.config import RunConfig, StrategyConfig, TrainConfig
from experiments.runtime.rundir import RunDir
from experiments.options import model as model_flags
from experiments.options import run as run_flags
from experiments.options import strategy as strategy_flags
from experiments.options import training as training_flags
from experiments.runtime.strategy import Placement

flags.adopt_module_key_flags(run_flags)
flags.adopt_module_key_flags(strategy_flags)
flags.adopt_module_key_flags(training_flags)
flags.adopt_module_key_flags(model_flags)

AGGREGATED = ("test_accuracy", "accuracy", "loss", "num_bundles", "bundle_entropy",
              "max_accuracy", "bundle_entropy_integral")
SUMMARY_COLUMNS = (
    ("seed", "seed", "d"),
    ("epochs", "epochs", "d"),
    ("loss", "loss", ".4f"),
    ("accuracy", "acc", ".4f"),
    ("test_accuracy", "test_acc(last5)", ".4f"),
    ("num_bundles", "bundles", ".0f"),
    ("bundle_entropy", "H(a^L)", ".4f"),
    ("max_accuracy", "max_acc", ".3f"),
    ("conflicting", "conflicting", ""),
    ("first_conflict_epoch", "first_conflict", "d"),
)


@dataclasses.dataclass(frozen=True)
class Config:
    """What the flags of `train` say."""

    run: RunConfig
    strategy: StrategyConfig
    training: TrainConfig
    spec: NetworkSpec


def read_flags() -> Config:
    """The flags of `train`, read once."""
    return Config(run_flags.run_config("train", __name__), strategy_flags.strategy_config(),
                  training_flags.training_config(), model_flags.model_spec())


def train(run_dir: RunDir, cfg: Config, data: recipe.TrialData,
          dist: Placement) -> dict[str, Any]:
    """Train (or resume) every seed of the network; the results dict (module docstring)."""
    trials = [trial.train_trial(directory, cfg.spec, cfg.training, data, seed=seed,
                                strategy=dist,
                                label=f"[seed {seed}]" if cfg.training.seeds > 1 else "")
              for seed, directory in trial.trial_dirs(run_dir, "", cfg.training)]
    return {
        "command": "train", "spec": cfg.spec.to_dict(), "dataset": cfg.training.dataset,
        "trials": trials, **trial.mean_std(trials, AGGREGATED),
        "conflicting_trials": sum(bool(t["conflicting"]) for t in trials),
    }


def summary_table(results: dict[str, Any]) -> str:
    """The trials of a train run as a table, with mean and std rows for several."""
    rows = list(results["trials"])
    if len(rows) > 1:
        for stat in ("mean", "std"):
            rows.append({"seed": stat, **{k: results[f"{k}_{stat}"] for k in AGGREGATED}})
    return f"{NetworkSpec.from_dict(results['spec']).label} on {results['dataset']}\n" + \
        console.table(rows, SUMMARY_COLUMNS)


def main(argv: list[str]) -> None:
    """Train (or resume) the run given by the flags and print its summary."""
    command.no_arguments("train", argv)
    cfg = read_flags()
    data = recipe.data_once(cfg.training)
    command.execute(cfg.run, f"{cfg.spec.label}_{cfg.training.dataset}",
                    lambda run_dir, dist: train(run_dir, cfg, data(), dist), summary_table,
                    cfg.strategy, check=data)


if __name__ == "__main__":
    app.run(main)
