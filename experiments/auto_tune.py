"""auto_tune: the papers' architecture search by conflicting layer removal (docs/method.md §3).

    python -m experiments auto_tune --flagfile=flags/auto_tune_digits.cfg

Starts from the network of --model (vgg or resnet) and --depth/--blocks (the
papers: ``--model=vgg --depth=120``, blocks 3,12,41,3) and runs
`cb_keras.autotune.auto_tune`: every attempt of the search (one training, numbered
0, 1, ...) is a trial of the `train` command's code
(`experiments.trials.trial.train_trial`, --epochs epochs, seed ``--seed +
attempt``); after each of its first --check_window epochs a^L is measured on
--measure_samples training images (the papers: 64; see --measure_sample_source); on
a conflict the architecture shrinks by --prune_rule (a version of the rule,
`cb_keras.autotune.rules.VERSIONS`, docs/reproduction.md, which also sets
--check_window and --check_at_init) and training restarts from scratch.
--max_restarts caps the restarts; --final_epochs retrains the found network from scratch.

Run directory (besides flags.json):

- ``search.json``: the search state (`cb_keras.autotune.SearchState.to_dict`):
  every attempt with its blocks, epochs, restart record and summary. Written
  atomically after every change; rerunning the command resumes from it and
  the current attempt's trial resumes after its last committed epoch.
- ``attempt00/``, ``attempt01/``, ...: one trial directory per attempt
  (state.json, metrics.csv, checkpoints/, tensorboard/, conflicts.csv/png);
  an attempt that restarted loses its checkpoints once its numbers are in
  search.json (`drop_restarted_checkpoints`).
- ``restarts.csv``: one row per restart (`RESTART_COLUMNS`).
- ``tensorboard/``: per restart (step = restart number = conflicting attempt + 1) the scalars
  ``epoch_restart_conflict_epoch``, ``epoch_restart_layers_after`` and
  ``epoch_restart_blocks_stage{1..4}``.
- ``export/`` (SavedModel, with --export) and ``final.keras``: the final network.
- ``search.png``: the blocks per stage of every attempt (stacked bars), with the
  epoch and block of each conflict and the final test accuracy.
- ``results.json``: ``finished``, ``command`` ("auto_tune"), ``dataset``,
  ``kind``, ``start_blocks``, ``final_blocks``, ``start_layers``,
  ``final_layers``, ``num_restarts``, ``restarts`` (the records),
  ``total_epochs`` (all attempts), ``test_accuracy`` (last attempt, mean of its
  last 5 epochs, 4 with --accounting=reference), ``accounting``, ``start_parameters``, ``final_parameters``,
  ``start_latency_ms``, ``final_latency_ms`` (median of --latency_repeats
  inference calls on one test batch of --batch_size images, the two networks
  taking turns; the start network is built once more for it),
  ``train_seconds`` (all attempts), ``attempts`` (the search state's attempts).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Any

from absl import app, flags

from cb_keras import autotune, files
from cb_keras.autotune import check, rules, trainer
from cb_keras.paper import evaluation, models
from cb_keras.paper.spec import NetworkSpec
from experiments.runtime import command, console, rundir, serving
from experiments.trials import recipe, trained, trial
from experiments.trials.callbacks import ScalarSummaries
from experiments.runtime.config import RunConfig, StrategyConfig, TrainConfig
from experiments.options import model as model_flags
from experiments.options import run as run_flags
from experiments.options import source as source_flags
from experiments.options import strategy as strategy_flags
from experiments.options import training as training_flags
from experiments.runtime.strategy import Placement

PRUNE_RULE = flags.DEFINE_enum(
    "prune_rule", "first_conflict", list(rules.RULES),
    "Version of the rule, with its check schedule (docs/reproduction.md): first_conflict "
    "(the papers' text; commit 22556fc coded it off by one block): remove the first "
    "conflicting block and the rest of its stage, checks after epochs 1..10; "
    "all_non_conflicting (Dec 2020, 37ea297): every stage keeps its non-conflicting "
    "blocks, checks at initialization and after epochs 1..9; non_conflicting (8491b7b, Apr "
    "2022; final form 9c0b9b5, May 2022): the first stage with a conflicting block keeps "
    "its non-conflicting blocks, checks after epochs 1..10.")
CHECK_WINDOW = flags.DEFINE_integer(
    "check_window", None,
    "Check a^L after each of the first N epochs of every attempt (default: the --prune_rule "
    "version's, 10 or 9).", lower_bound=1)
CHECK_AT_INIT = flags.DEFINE_bool(
    "check_at_init", None,
    "Also check a^L before the first epoch of every attempt (default: the --prune_rule "
    "version's, true only for all_non_conflicting).")
MAX_RESTARTS = flags.DEFINE_integer(
    "max_restarts", None, "At most this many restarts (default: no limit).", lower_bound=0)
FINAL_EPOCHS = flags.DEFINE_integer(
    "final_epochs", None,
    "Default: the attempt that passes the check is the result (the papers). N: then train "
    "the found network once more from scratch for N epochs, unchecked, and report that "
    "attempt.",
    lower_bound=1)
flags.adopt_module_key_flags(run_flags)
flags.adopt_module_key_flags(strategy_flags)
flags.adopt_module_key_flags(training_flags)
flags.adopt_module_key_flags(model_flags)
flags.declare_key_flag(source_flags.LATENCY_REPEATS.name)

SEARCH_FILE = "search.json"
RESTARTS_FILE = "restarts.csv"
KERAS_FILE = "final.keras"
PLOT_FILE = "search.png"
RESTART_COLUMNS = ("restart", "attempt", "epoch", "layer", "bundle_entropy",
                   "first_conflicting_block", "conflicting_blocks", "blocks_before",
                   "blocks_after")
SUMMARY_COLUMNS = (
    ("network", "network", ""),
    ("blocks", "blocks", ""),
    ("layers", "layers", "d"),
    ("parameters", "parameters", ",d"),
    ("latency_ms", "latency_ms", ".2f"),
)


@dataclasses.dataclass(frozen=True)
class Config:
    """What the flags of `auto_tune` say.

    The search's own settings (`search_config`) are derived from this record,
    so the bundle metric of the checks and the optimizer of the trainings
    take the learning rate and batch size of the one `training` config.
    """

    run: RunConfig
    strategy: StrategyConfig
    training: TrainConfig
    spec: NetworkSpec
    rule: str
    check_window: int | None
    check_at_init: bool | None
    max_restarts: int | None
    final_epochs: int | None
    latency_repeats: int

    @property
    def search_config(self) -> autotune.AutoTuneConfig:
        """The settings of `cb_keras.autotune.auto_tune`."""
        return autotune.AutoTuneConfig(
            start_blocks=self.spec.blocks, kind=self.spec.kind,
            epochs=self.training.trained_epochs, check_window=self.check_window,
            check_at_init=self.check_at_init, samples=self.training.measure_samples,
            rule=self.rule, max_restarts=self.max_restarts,
            final_epochs=None if self.final_epochs is None
            else self.training.epoch_accounting.trained_epochs(self.final_epochs),
            **self.training.metric_step, seed=self.training.seed)


def read_flags() -> Config:
    """The flags of `auto_tune`, read once.

    Raises:
        app.UsageError: a network that is not a block network, or --seeds.
        ValueError: search settings that `cb_keras.autotune.AutoTuneConfig` refuses.
    """
    training = training_flags.training_config()
    if training.seeds != 1:
        raise app.UsageError(
            f"auto_tune trains one network per attempt; got --seeds={training.seeds}. Drop --seeds "
            "(repeat the search with other --seed values instead).")
    return config_from_flags(run_flags.run_config("auto_tune", __name__), training)


def config_from_flags(run: RunConfig, training: TrainConfig) -> Config:
    """The search given by the model and search flags, with this run and training.

    Also the `compare` command's auto-tune contestant (one per seed).

    Raises:
        app.UsageError: a network that is not a block network, or --final_epochs
            too small for --accounting=reference.
        ValueError: search settings that `cb_keras.autotune.AutoTuneConfig` refuses.
    """
    spec = model_flags.model_spec()
    if spec.kind not in rules.RULE_KINDS:
        raise app.UsageError(
            f"auto_tune shrinks block networks, so --model must be one of "
            f"{list(rules.RULE_KINDS)}, got --model={spec.kind}; the papers start from "
            "--model=vgg --depth=120.")
    if FINAL_EPOCHS.value is not None:
        try:
            training.epoch_accounting.trained_epochs(FINAL_EPOCHS.value)
        except ValueError as error:
            raise app.UsageError(f"--final_epochs={FINAL_EPOCHS.value}: {error}") from error
    cfg = Config(run, strategy_flags.strategy_config(), training, spec, PRUNE_RULE.value,
                 CHECK_WINDOW.value, CHECK_AT_INIT.value, MAX_RESTARTS.value,
                 FINAL_EPOCHS.value, source_flags.LATENCY_REPEATS.value)
    cfg.search_config  # checks the search settings before a run directory is made
    return cfg


def trial_trainer(run: rundir.RunDir, cfg: TrainConfig, data: recipe.TrialData,
                  dist: Placement) -> trainer.Trainer:
    """A resumable trainer: attempt k is a `train` trial in ``run/attempt<k>``."""
    return lambda request: train_attempt(run, cfg, data, dist, request)


def train_attempt(run: rundir.RunDir, cfg: TrainConfig, data: recipe.TrialData,
                  dist: Placement, request: trainer.TrainRequest,
                  until: int | None = None) -> trainer.TrainOutcome:
    """Train (or resume) attempt ``request.attempt`` as a trial in ``run/attempt<k>``, up to
    epoch `until`."""
    directory = run.sub(_trial_dir_name(request.attempt))
    result = trial.train_trial(
        directory, request.network,
        dataclasses.replace(cfg.with_trained_epochs(request.epochs), export=False),
        data, seed=request.seed, strategy=dist,
        label=f"[attempt {request.attempt} {request.network.label}]", callbacks=request.callbacks,
        until=until, before_training=request.before_training, checkpoint_stopped=False,
        measured=request.restart_report)
    return trainer.TrainOutcome(result["epochs"], result["test_accuracy"], result,
                                lambda: trained.load_trial(directory.path, data).model)


def finish_restarted_attempts(run: rundir.RunDir, state: autotune.SearchState, cfg: Config,
                              data: recipe.TrialData,
                              dist: Placement) -> autotune.SearchState:
    """Finish the attempts whose restart is in `state` but whose trial is not done.

    A search killed right after saving a restart has not finished that attempt's
    trial (no conflicts.csv, no numbers in search.json). Its trial resumes
    from its checkpoints up to the restart's epoch, as the uninterrupted
    search trained it.

    Returns:
        `state` with the numbers of those attempts (`state` itself if there were none).
    """
    for record in [a for a in state.attempts if a.restart and a.summary is None]:
        request = trainer.TrainRequest(
            attempt=record.attempt, kind=cfg.spec.kind, blocks=record.blocks,
            epochs=record.epochs, seed=cfg.training.seed + record.attempt,
            **cfg.training.metric_step, callbacks=())
        outcome = train_attempt(run, cfg.training, data, dist, request,
                                until=record.restart.epoch)
        state = state.ended(record.attempt, outcome)
    return state


def drop_restarted_checkpoints(run: rundir.RunDir, state: autotune.SearchState) -> None:
    """Delete the checkpoints of every attempt that restarted and whose trial is done.

    A restarted attempt's checkpoints serve only to finish its trial after a kill
    (`finish_restarted_attempts`: the epochs up to the restart, then its
    conflicts.csv and numbers). Once `state` holds its numbers, its trial's
    state.json is finished and a rerun reads the numbers from there, so the
    checkpoints (model and optimizer state, by far the largest files of the
    run directory) are of no further use. Called after `state` is saved, so a
    kill during the deletion leaves a state that a rerun completes.
    """
    for record in state.attempts:
        if record.restart and record.summary is not None:
            run.sub(_trial_dir_name(record.attempt)).prune_checkpoints(keep=0)


def read_search_state(run: rundir.RunDir, cfg: Config) -> autotune.SearchState | None:
    """search.json, checked against the search settings and the trial directories beside it.

    A search resumes only from a state that an uninterrupted search could
    have saved: it was saved with these settings, its attempts follow one
    another (every attempt but the last ended with a restart, or passed the
    check before the --final_epochs attempt), and it knows every attempt whose
    trial directory ``attempt<k>/`` exists and every restart whose trial stopped early.

    Returns:
        The state, or None for a search that has not started (no search.json,
        no trial directory).

    Raises:
        rundir.RunDirError: the state is missing, damaged or edited, or an
            earlier cb_keras wrote it (the message names search.json and
            what is wrong).
    """
    trials = sorted(int(match.group(1)) for path in run.path.glob("attempt*")
                    if (match := _TRIAL_DIR.fullmatch(path.name)) and path.is_dir())
    data = run.read_json(SEARCH_FILE)
    if data is None and not trials:
        return None
    if isinstance(data, dict) and "runs" in data and "attempts" not in data:
        raise rundir.RunDirError(
            f"{run.file(SEARCH_FILE)} was written by an earlier cb_keras, which called the "
            "search's attempts 'runs' (CHANGELOG.md, Renamed); this version does not resume it. "
            f"Delete {run.path} to search anew, or finish it with the version that made it.")
    state, problem = None, None
    if data is None:
        problem = (f"is missing, but the run directory holds the trials "
                   f"{', '.join(_trial_dir_name(k) for k in trials)} of a search")
    elif not isinstance(data, dict) or data.get("config") != cfg.search_config.to_dict():
        problem = "is not a search state of these flags (its 'config' differs or is missing)"
    else:
        try:
            state = autotune.SearchState.from_dict(data, cfg.search_config)
        except ValueError:
            problem = (f"lacks its attempts, or an attempt lacks one of the fields "
                       f"{list(autotune.state.ATTEMPT_FIELDS)}")
        else:
            problem = _search_state_problem(run, state, cfg, trials)
    if problem:
        raise rundir.RunDirError(
            f"{run.file(SEARCH_FILE)} {problem}; it was lost, damaged or edited, and resuming "
            f"from it would not give the search's result. Restore it, or delete {run.path} to "
            "search anew.")
    return state


_TRIAL_DIR = re.compile(r"attempt(\d{2,})")


def _trial_dir_name(attempt: int) -> str:
    """The name of attempt `attempt`'s trial directory: ``attempt00``, ``attempt01``, ..."""
    return f"attempt{attempt:02d}"


def _search_state_problem(run: rundir.RunDir, state: autotune.SearchState, cfg: Config,
                          trials: list[int]) -> str | None:
    """What makes `state` not the state of this search with these trials, or None."""
    attempts = state.attempts
    if [a.attempt for a in attempts] != list(range(len(attempts))) or \
            attempts[0].blocks != cfg.spec.blocks:
        return "does not number its attempts 0, 1, ... or does not start from --blocks"
    for record, following in zip(attempts, attempts[1:] + (None,)):
        restart = record.restart
        if restart is None and following is not None and not (
                following.final and record.summary is not None):
            return (f"has attempt {following.attempt} after attempt {record.attempt}, which "
                    "did not restart")
        if restart is not None and following is None:
            return (f"ends with the restart of attempt {record.attempt} but lacks the attempt "
                    f"that restart began (attempt {record.attempt + 1})")
        if restart is not None and following.blocks != restart.blocks_after:
            return f"has attempt {following.attempt} with other blocks than its restart gave"
        ran = run.sub(_trial_dir_name(record.attempt)).read_json(rundir.STATE_FILE) or {}
        if restart is None and ran.get("finished") and \
                ran.get("completed_epochs", 0) < record.epochs:
            return (f"lacks the restart of attempt {record.attempt}, whose trial stopped "
                    f"after epoch {ran['completed_epochs']} of {record.epochs}")
    missing = [k for k in trials if k >= len(attempts)]
    if missing:
        return (f"lacks attempt {missing[0]}, whose trial directory {_trial_dir_name(missing[0])} "
                "exists")
    return None


def restart_rows(records: Sequence[check.Restart]) -> list[dict[str, Any]]:
    """One row of restarts.csv per restart, in order (`RESTART_COLUMNS`)."""
    return [{**record.to_dict(), "restart": number,
             **{key: " ".join(map(str, getattr(record, key))) for key in
                ("conflicting_blocks", "blocks_before", "blocks_after")}}
            for number, record in enumerate(records, start=1)]


def restart_scalars(record: check.Restart) -> dict[str, float]:
    """The TensorBoard scalars of one restart."""
    return {"restart_conflict_epoch": record.epoch,
            "restart_layers_after": models.num_layers(record.blocks_after),
            **{f"restart_blocks_stage{s}": b
               for s, b in enumerate(record.blocks_after, start=1)}}


def search(run: rundir.RunDir, cfg: Config, data: recipe.TrialData,
           dist: Placement) -> dict[str, Any]:
    """Run or resume the search in `run` on `data` (loaded for ``cfg.training``); export
    the final network; the results dict."""
    summaries = ScalarSummaries(run.file(trial.TENSORBOARD_DIR), enabled=run.writer)

    def save_state(state: autotune.SearchState) -> None:
        run.write_json(SEARCH_FILE, state.to_dict())
        run.write_csv(RESTARTS_FILE, restart_rows(state.restarts), RESTART_COLUMNS)
        drop_restarted_checkpoints(run, state)

    def on_restart(record: check.Restart) -> None:
        # Only checked attempts restart and each restart adds one attempt: attempt k's is
        # number k + 1.
        summaries.on_epoch_end(record.attempt, restart_scalars(record))

    state = read_search_state(run, cfg)
    if state is not None:
        finished = finish_restarted_attempts(run, state, cfg, data, dist)
        if finished is not state:
            save_state(finished)
        state = finished
    result = autotune.auto_tune(
        cfg.search_config, trial_trainer(run, cfg.training, data, dist),
        num_classes=data.info.num_classes,
        sampler=data.sample,
        state=state, save_state=save_state, on_restart=on_restart,
        log=lambda line: print(f"auto_tune: {line}", flush=True))
    if cfg.training.export:
        serving.export(run, result.model)
    serving.save_keras(result.model, run.file(KERAS_FILE))
    start = NetworkSpec(result.kind, result.start_blocks).build(data.info.input_shape,
                                                                data.info.num_classes)
    start_ms, final_ms = serving.latencies_ms([start, result.model], next(iter(data.test))[0],
                                              cfg.latency_repeats)
    results = {
        "command": "auto_tune", "dataset": cfg.training.dataset,
        "accounting": cfg.training.accounting, **result.to_dict(),
        "start_latency_ms": start_ms, "final_latency_ms": final_ms,
        "train_seconds": round(sum((a.summary or {}).get("train_seconds", 0.0)
                                   for a in result.attempts), 1),
    }
    if run.writer:
        files.save_png(search_figure(results), run.file(PLOT_FILE))
    return results


def search_figure(results: dict[str, Any]):
    """A matplotlib Figure: blocks per stage of each attempt, why it ended, the final accuracy."""
    from matplotlib.figure import Figure

    attempts = results["attempts"]
    figure = Figure(figsize=(max(5.0, 1.3 * len(attempts) + 2.0), 4.5), layout="constrained")
    axes = figure.subplots()
    positions = list(range(len(attempts)))
    bottoms = [0] * len(attempts)
    for stage in range(len(attempts[0]["blocks"])):
        counts = [a["blocks"][stage] for a in attempts]
        axes.bar(positions, counts, bottom=bottoms, label=f"stage {stage + 1}")
        bottoms = [b + c for b, c in zip(bottoms, counts)]
    for position, a, height in zip(positions, attempts, bottoms):
        restart = a["restart"]
        label = (f"conflict after\nepoch {restart['epoch']} at\n"
                 f"{restart['first_conflicting_block']}" if restart else
                 f"final\ntest acc {console.format_value(results['test_accuracy'], '.3f')}")
        axes.annotate(label, (position, height), ha="center", va="bottom", fontsize=8,
                      xytext=(0, 3), textcoords="offset points")
    axes.set_xticks(positions, [f"attempt {a['attempt']}" for a in attempts])
    axes.set_ylabel("blocks")
    axes.set_ylim(0, max(bottoms) * 1.35 + 1)
    axes.set_title(f"auto_tune on {results['dataset']}: {results['start_layers']} -> "
                   f"{results['final_layers']} layers, {results['num_restarts']} restarts",
                   fontsize=10)
    axes.legend(fontsize=8, loc="upper right")
    return figure


def summary_text(results: dict[str, Any]) -> str:
    """Start vs final network as a table, with restarts, epochs and accuracy."""
    rows = [{"network": name, "blocks": ",".join(map(str, results[f"{name}_blocks"])),
             "layers": results[f"{name}_layers"],
             "parameters": results[f"{name}_parameters"],
             "latency_ms": results[f"{name}_latency_ms"]} for name in ("start", "final")]
    restarts = "\n".join(
        f"  restart {row['restart']}: attempt {row['attempt']} conflicted after epoch "
        f"{row['epoch']}, first conflicting block {row['first_conflicting_block']}: "
        f"{row['blocks_before']} -> {row['blocks_after']}"
        for row in restart_rows([check.Restart.from_dict(r) for r in results["restarts"]]))
    accuracy = console.format_value(results["test_accuracy"], ".4f")
    return (f"auto_tune on {results['dataset']}: {results['num_restarts']} restarts, "
            f"{results['total_epochs']} epochs in all ({results['train_seconds']} s of "
            f"training), test accuracy {accuracy} (last attempt, mean of its last "
            f"{evaluation.accounting(results.get('accounting', 'cb_keras')).last_epochs} "
            "epochs)\n"
            + (restarts + "\n" if restarts else "") + console.table(rows, SUMMARY_COLUMNS))


def main(argv: list[str]) -> None:
    """Search (or resume) the architecture given by the flags and print the summary."""
    command.no_arguments("auto_tune", argv)
    cfg = read_flags()
    data = recipe.data_once(cfg.training)
    command.execute(cfg.run, f"{cfg.spec.label}_{cfg.training.dataset}",
                    lambda run, dist: search(run, cfg, data(), dist), summary_text,
                    cfg.strategy, check=data)


if __name__ == "__main__":
    app.run(main)
