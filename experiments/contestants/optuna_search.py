"""Optuna's TPE over blocks per stage, with an epoch budget: compare's Optuna contestants.

The same search as `experiments.contestants.tuner` (same space, budget rule, trial
training, test-accuracy score and a^L check), with Optuna
(``pip install 'cb_keras[optuna]'``) instead of Keras Tuner: its TPE
sampler (seeded with `tuner.oracle_seed`) proposes the blocks per stage,
and a trial stopped early is recorded as *pruned*, never as a result:

- ``pruner="median"``: Optuna's `MedianPruner` (from the second trial on,
  after any epoch) compares the trial's training accuracy of each epoch,
  reported with `trial.report`, with the completed trials' at that epoch;
- ``check=True`` (`tuner.Search.check`): auto-tune's a^L check, as in the
  ``keras_tuner_check`` contestant.

The study lives in ``<directory>/optuna.journal`` (Optuna's journal file)
and every trial in ``<directory>/trials/trial_<number>/``; rerunning with
the same directory resumes: a trial left running by a killed process is
recorded as failed and enqueued again with its directory, so it continues
after its last committed epoch.
"""

from __future__ import annotations

from typing import Any

import keras

from cb_keras.paper.spec import NetworkSpec
from experiments.contestants import tuner
from experiments.runtime import console
from experiments.trials import recipe
from experiments.runtime.rundir import STATE_FILE, RunDir
from experiments.runtime.strategy import Placement

JOURNAL = "optuna.journal"
DIR_ATTR = "directory"  # user attribute: the trial's directory (kept when retried)
PRUNERS = (None, "median")


def require() -> None:
    """Fail in one line with the install command when optuna is missing."""
    console.require_package("optuna", "optuna", "optuna",
                            "The Optuna contestants (optuna_tpe_median, optuna_tpe_check)")


class ReportAccuracy(keras.callbacks.Callback):
    """Reports each epoch's training accuracy to the trial; stops when the pruner says so.

    It stops training rather than raising `optuna.TrialPruned`, so the
    trial's last epoch is committed like any stopped trial's.
    """

    def __init__(self, trial):
        super().__init__()
        self.trial = trial

    def on_epoch_end(self, epoch, logs=None):
        self.trial.report(float(logs["accuracy"]), step=epoch + 1)
        if self.trial.should_prune():
            self.model.stop_training = True


def search(directory: RunDir, cfg: tuner.Search, pruner: str | None, data: recipe.TrialData,
           strategy: Placement, label: str = "") -> dict[str, Any]:
    """Run (or resume) the study in `directory` on `data` (loaded for ``cfg.training``);
    the best completed trial and the costs.

    Returns:
        The keys of `tuner.search`; a trial's ``score`` is its test accuracy,
        or None when it was pruned (``stopped_by_check`` or
        ``stopped_by_pruner`` then says which).

    Raises:
        console.CommandError: optuna is missing, or no trial completed.
    """
    require()
    import optuna

    if pruner not in PRUNERS:
        raise ValueError(f"pruner must be one of {PRUNERS}, got {pruner!r}.")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trials_dir = directory.sub("trials")
    directory.path.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(
        study_name="compare", direction="maximize", load_if_exists=True,
        storage=optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(directory.file(JOURNAL)))),
        sampler=optuna.samplers.TPESampler(seed=tuner.oracle_seed(cfg.training.seed)),
        pruner=(optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0)
                if pruner == "median" else optuna.pruners.NopPruner()))
    for left in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(left.number, state=optuna.trial.TrialState.FAIL)
        study.enqueue_trial(left.params, user_attrs={DIR_ATTR: left.user_attrs[DIR_ATTR]})

    def objective(trial) -> float:
        blocks = [trial.suggest_int(f"stage{s}", 0, most)
                  for s, most in enumerate(cfg.max_blocks, start=1)]
        name = trial.user_attrs.get(DIR_ATTR) or f"trial_{trial.number}"
        trial.set_user_attr(DIR_ATTR, name)
        if not any(blocks):
            raise optuna.TrialPruned("a network needs at least one block")
        callbacks = [ReportAccuracy(trial)] if pruner else []
        result = tuner.train_blocks(trials_dir.sub(name), blocks, cfg, data, strategy,
                                    f"{label}[trial {trial.number}]", callbacks)
        spec_name = NetworkSpec(cfg.kind, blocks).label
        if result["epochs"] < cfg.training.trained_epochs:
            why = "the a^L check" if cfg.check else f"the {pruner} pruner"
            print(f"{label}[trial {trial.number}] {spec_name}: pruned by {why} after epoch "
                  f"{result['epochs']}", flush=True)
            raise optuna.TrialPruned(f"stopped by {why} after epoch {result['epochs']}")
        print(f"{label}[trial {trial.number}] {spec_name}: test accuracy "
              f"{console.format_value(result['test_accuracy'], '.4f')}", flush=True)
        return float(result["test_accuracy"])

    def stop_at_budget(study, _) -> None:
        if tuner.spent_epochs(trials_dir) >= cfg.budget:
            study.stop()

    if tuner.spent_epochs(trials_dir) < cfg.budget:
        study.optimize(objective, n_trials=max(tuner.MAX_TRIALS - len(study.trials), 0),
                       callbacks=[stop_at_budget])
    return _results(directory, study, trials_dir, cfg)


def _results(directory: RunDir, study, trials_dir: RunDir, cfg: tuner.Search) -> dict[str, Any]:
    """The keys of `tuner.search`, from the study and the trials' state.json."""
    import optuna

    records = []
    for t in study.get_trials(deepcopy=False):
        state = t.user_attrs.get(DIR_ATTR) and trials_dir.sub(t.user_attrs[DIR_ATTR]).read_json(
            STATE_FILE)
        if t.state == optuna.trial.TrialState.FAIL or not state or "result" not in state:
            continue  # retried under a new number, or pruned before training
        result = state["result"]
        pruned = t.state == optuna.trial.TrialState.PRUNED
        records.append({
            "trial": t.number, "blocks": [t.params[f"stage{s}"] for s in
                                          range(1, len(cfg.max_blocks) + 1)],
            "epochs": result["epochs"], "score": None if pruned else t.value,
            "test_accuracy": result["test_accuracy"], "parameters": result["parameters"],
            "train_seconds": result["train_seconds"],
            "stopped_by_check": pruned and cfg.check,
            "stopped_by_pruner": pruned and not cfg.check})
    if all(r["score"] is None for r in records):
        raise console.CommandError(f"{directory.path}: the study completed no trial.")
    return tuner.search_cell(records, stopped_trials=sum(r["score"] is None for r in records))
