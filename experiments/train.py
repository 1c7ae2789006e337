"""train: train one network of the papers, measuring the bundles of a^L every epoch.

    python -m experiments train --flagfile=flags/train_digits.cfg

Trains ``--runs`` seeds of the network given by --model/--depth/--blocks/--width
on --dataset (see `experiments.training` for what one trial writes), then
writes results.json with every trial and the mean and std over them:

- ``finished`` (true), ``command`` ("train"), ``spec`` (the network),
  ``dataset``
- ``trials``: one dict per seed (`training.train_trial`): ``seed``, ``dir``,
  ``spec``, ``parameters``, ``epochs``, ``loss``, ``accuracy``,
  ``test_accuracy`` (mean of the last 5 epochs), ``test_accuracy_last``,
  ``test_loss``, ``num_bundles``, ``bundle_entropy``, ``max_accuracy``,
  ``conflicting`` (a^L of the final network), ``layers``,
  ``conflicting_layers``, ``first_conflict_epoch`` (0: at initialization),
  ``bundle_entropy_integral`` (mean bundle entropy of a^L over the
  measurements from initialization to the last epoch), ``train_seconds``
- ``<metric>_mean`` / ``<metric>_std`` over the trials for ``test_accuracy``,
  ``accuracy``, ``loss``, ``num_bundles``, ``bundle_entropy``, ``max_accuracy``,
  ``bundle_entropy_integral``
- ``conflicting_trials``: how many trials end with a conflicting a^L.
"""

from __future__ import annotations

from typing import Any

from absl import app, flags

from experiments import config, console, model_flags, rundir, strategy, training

flags.adopt_module_key_flags(rundir)
flags.adopt_module_key_flags(strategy)
flags.adopt_module_key_flags(config)
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


def summary_table(results: dict[str, Any]) -> str:
    """The trials of a train run as a table, with mean and std rows for several."""
    rows = list(results["trials"])
    if len(rows) > 1:
        for stat in ("mean", "std"):
            rows.append({"seed": stat, **{k: results[f"{k}_{stat}"] for k in AGGREGATED}})
    return f"{training.spec_name(results['spec'])} on {results['dataset']}\n" + \
        console.table(rows, SUMMARY_COLUMNS)


def main(argv: list[str]) -> None:
    """Train (or resume) the run given by the flags and print its summary."""
    if len(argv) > 1:
        raise app.UsageError(f"train takes no positional arguments, got {argv[1:]}.")
    dist = strategy.make()
    spec = model_flags.model_spec()
    cfg = config.training_config()
    run = rundir.open_run("train", f"{training.spec_name(spec)}_{cfg.dataset}", __name__,
                          writer=strategy.is_chief(dist))
    results = run.results
    if results is None:
        trials = [training.train_trial(trial, spec, cfg, seed=seed, strategy=dist,
                                       label=f"[seed {seed}]" if cfg.runs > 1 else "")
                  for seed, trial in training.trial_dirs(run, "", cfg)]
        results = run.finish({
            "command": "train", "spec": spec, "dataset": cfg.dataset,
            "trials": trials, **training.mean_std(trials, AGGREGATED),
            "conflicting_trials": sum(bool(t["conflicting"]) for t in trials),
        })
    print(summary_table(results), run.size_line(), sep="\n", flush=True)


if __name__ == "__main__":
    app.run(main)
