"""Keras Tuner over blocks per stage, with an epoch budget and the optional a^L check.

The `compare` command's third contestant: the package keras-tuner
(``pip install 'cb_keras[tuner]'``) searches the same space auto-tune can
reach from its start network, every network of the same family (``vgg`` or
``resnet``) with ``0 .. start[s]`` blocks in stage s and at least one block.
Its oracle is Keras Tuner's `RandomSearchOracle` (seeded, so a search with
and one without the check draw the same networks in the same order); every trial trains one
network with the `train` command's code (`experiments.trials.trial.train_trial`,
resumable after each epoch, in ``<directory>/trials/trial_<id>/``), and is
scored by its test accuracy (mean of its last 5 epochs; the same number
the fixed depths report).

Budget: a new trial starts while the finished and running trials together
have trained fewer than `budget` epochs, so the search trains at least
`budget` epochs (and less than `budget` + one trial's epochs).

With ``check``, every trial runs auto-tune's own check of a^L
(`cb_keras.autotune.check.ConflictCheck`: same window, sample and pruning rule):
when a^L conflicts in a trial's first epochs and the rule would shrink the
network, the trial stops there and is scored 0 (a network whose classes
collapse into shared bundles; the worst score of the objective,
`cb_keras.integrations.keras_tuner.worst_score`, as the library's
`ConflictStop` scores it), and the epochs it saved go to further trials.
No tuner does this by itself. The check here is auto-tune's, rule
included (a trial stops only when the rule would shrink its network), so
the search stops the same trials auto-tune would restart.

Keras Tuner keeps its own state in ``<directory>/tuner/`` (oracle and
trials); rerunning the search with the same directory resumes it: the
running trial continues after its last committed epoch.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence


from cb_keras.autotune import check
from cb_keras.paper.spec import NetworkSpec
from experiments.runtime import console
from experiments.trials import recipe, trial
from experiments.runtime.config import TrainConfig
from experiments.runtime.rundir import STATE_FILE, RunDir
from experiments.runtime.strategy import Placement

OBJECTIVE = "test_accuracy"
MAX_TRIALS = 100  # the budget ends a search long before


def require() -> None:
    """Fail in one line with the install command when keras-tuner is missing."""
    console.require_package("keras_tuner", "keras-tuner", "tuner",
                            "The Keras Tuner contestants (keras_tuner, keras_tuner_check)")


@dataclasses.dataclass(frozen=True)
class Search:
    """One tuner search: the space, its budget, the training and the check.

    Attributes:
        kind: ``"vgg"`` or ``"resnet"``.
        max_blocks: the largest blocks per stage (auto-tune's start network).
        budget: epochs the search trains at least (see the module docstring).
        training: training of every trial (its ``seed`` seeds the oracle and
            every trial's network).
        check: run auto-tune's a^L check in every trial.
        rule, window, at_init: the check's pruning rule and schedule
            (`cb_keras.autotune.rules.VERSIONS`).
    """

    kind: str
    max_blocks: tuple[int, ...]
    budget: int
    training: TrainConfig
    check: bool
    rule: str
    window: int
    at_init: bool


def search(directory: RunDir, cfg: Search, data: recipe.TrialData,
           strategy: Placement, label: str = "") -> dict[str, Any]:
    """Run (or resume) the search in `directory` on `data` (loaded for ``cfg.training``);
    its best network and what it cost.

    Returns:
        ``blocks`` and ``parameters`` of the best trial, its ``test_accuracy``,
        ``epochs`` (all trials), ``train_seconds`` (all trials), ``trials``
        (one dict per trial: ``trial``, ``blocks``, ``epochs``, ``score``,
        ``stopped_by_check``) and ``stopped_trials``.

    Raises:
        console.CommandError: keras-tuner is missing, or what a trial raised.
    """
    require()
    import keras_tuner

    from cb_keras.integrations.keras_tuner import worst_score

    trials_dir = directory.sub("trials")
    space = keras_tuner.HyperParameters()
    for stage, most in enumerate(cfg.max_blocks, start=1):
        space.Int(f"stage{stage}", 0, most)
    objective = keras_tuner.Objective(OBJECTIVE, "max")
    oracle = _budget_oracle(keras_tuner)(
        lambda: spent_epochs(trials_dir) >= cfg.budget, objective=objective,
        max_trials=MAX_TRIALS, seed=oracle_seed(cfg.training.seed), hyperparameters=space)
    tuner = _tuner(keras_tuner)(oracle, directory=str(directory.path), project_name="tuner",
                               run=lambda hp, trial_id: _run_trial(
                                   trials_dir.sub(f"trial_{trial_id}"), hp, cfg, data,
                                   strategy, f"{label}[trial {trial_id}]",
                                   worst_score(objective)))
    try:
        tuner.search(verbose=0)
    except keras_tuner.errors.FatalError as error:
        raise error.__cause__ or error from None
    done = [t for t in oracle.trials.values() if t.score is not None]
    if not done:
        raise console.CommandError(f"{directory.path}: the tuner finished no trial.")
    records = [_trial_record(trials_dir.sub(f"trial_{t.trial_id}"), t, cfg) for t in
               sorted(done, key=lambda t: t.trial_id)]
    return search_cell(records, stopped_trials=sum(r["stopped_by_check"] for r in records))


def search_cell(records: list[dict[str, Any]], stopped_trials: int) -> dict[str, Any]:
    """A search contestant's cell: its best scored trial (the earlier one on a tie) and
    what all its `records` (one per trial, with ``score`` None if it has none) cost."""
    best = max((r for r in records if r["score"] is not None),
               key=lambda r: (r["score"], -r["trial"]))
    return {
        "blocks": best["blocks"], "parameters": best["parameters"],
        "test_accuracy": best["test_accuracy"],
        "epochs": sum(r["epochs"] for r in records),
        "train_seconds": round(sum(r["train_seconds"] for r in records), 1),
        "trials": records, "stopped_trials": stopped_trials,
    }


def oracle_seed(seed: int) -> int:
    """The oracle's seed for a search of training seed `seed`: ``seed + 1``.

    Keras Tuner reads seed 0 (or None) as "draw a random seed", so the
    oracle of training seed 0 would draw other networks on every run.
    """
    return seed + 1


def _blocks(values: dict[str, Any], stages: int) -> list[int]:
    return [int(values[f"stage{s}"]) for s in range(1, stages + 1)]


def _trial_record(directory: RunDir, kt_trial: Any, cfg: Search) -> dict[str, Any]:
    """What one finished trial trained and scored (from its state.json)."""
    result = directory.read_json(STATE_FILE)["result"]
    return {"trial": int(kt_trial.trial_id),
            "blocks": _blocks(kt_trial.hyperparameters.values, len(cfg.max_blocks)),
            "epochs": result["epochs"], "score": float(kt_trial.score),
            "test_accuracy": result["test_accuracy"], "parameters": result["parameters"],
            "train_seconds": result["train_seconds"],
            "stopped_by_check": result["epochs"] < cfg.training.trained_epochs}


def spent_epochs(trials_dir: RunDir) -> int:
    """Epochs the trials in ``trials_dir/trial_*`` trained so far (from their committed state)."""
    states = [trials_dir.sub(p.name).read_json(STATE_FILE)
              for p in sorted(trials_dir.path.glob("trial_*"))]
    return sum(s["completed_epochs"] for s in states if s)


def _run_trial(directory: RunDir, values: dict[str, Any], cfg: Search,
               data: recipe.TrialData, strategy: Placement, label: str,
               conflict_score: float) -> float:
    """Train the trial's network (resumably); its score (`conflict_score` if stopped)."""
    blocks = _blocks(values, len(cfg.max_blocks))
    result = train_blocks(directory, blocks, cfg, data, strategy, label)
    stopped = result["epochs"] < cfg.training.trained_epochs
    score = conflict_score if stopped else result["test_accuracy"]
    print(f"{label} {NetworkSpec(cfg.kind, blocks).label}: "
          + (f"stopped by the a^L check after epoch {result['epochs']}, score {score}" if stopped
             else f"test accuracy {console.format_value(score, '.4f')}"), flush=True)
    return float(score)


def train_blocks(directory: RunDir, blocks: list[int], cfg: Search, data: recipe.TrialData,
                 strategy: Placement, label: str,
                 callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """Train one network of the search (resumably), with the check if ``cfg.check``.

    `callbacks` run after the check; the result is `trial.train_trial`'s
    (its ``epochs`` < ``cfg.training.trained_epochs`` when a callback stopped it).
    """
    spec = NetworkSpec(cfg.kind, blocks)
    before = None
    callbacks = list(callbacks)
    if cfg.check:
        conflict = check.ConflictCheck(
            lambda epochs: data.sample(cfg.training.seed, epochs),
            num_classes=data.info.num_classes, **cfg.training.metric_step,
            attempt=0, blocks=blocks, kind=cfg.kind, rule=cfg.rule, window=cfg.window,
            on_restart=lambda restart: None, at_init=cfg.at_init,
            log=lambda line: print(f"{label} {line}", flush=True))
        callbacks, before = [conflict, *callbacks], conflict.before_training
    return trial.train_trial(directory, spec, cfg.training, data, seed=cfg.training.seed,
                             strategy=strategy, label=f"{label} {spec.label}",
                             callbacks=callbacks, before_training=before)


def _budget_oracle(keras_tuner) -> type:
    """`RandomSearchOracle` that stops when `exhausted()` and never proposes zero blocks."""

    class BudgetOracle(keras_tuner.oracles.RandomSearchOracle):
        def __init__(self, exhausted: Callable[[], bool], **kwargs):
            super().__init__(**kwargs)
            self.exhausted = exhausted

        def populate_space(self, trial_id):
            if self.exhausted():
                return {"status": "STOPPED", "values": None}
            for _ in range(100):
                response = super().populate_space(trial_id)
                if response["values"] is None or any(response["values"].values()):
                    return response
            return {"status": "STOPPED", "values": None}

    return BudgetOracle


def _tuner(keras_tuner) -> type:
    """`BaseTuner` whose trial is `run(hyperparameter values, trial id) -> score`.

    An exception of a trial ends the search (Keras Tuner would record the
    trial as failed and go on); it is raised as it was.
    """

    class BlockTuner(keras_tuner.engine.base_tuner.BaseTuner):
        def __init__(self, oracle, *, run, **kwargs):
            self._run = run
            super().__init__(oracle, **kwargs)

        def run_trial(self, trial, *args, **kwargs):
            try:
                return {OBJECTIVE: self._run(trial.hyperparameters.values, trial.trial_id)}
            except Exception as error:
                raise keras_tuner.errors.FatalError(str(error)) from error

    return BlockTuner
