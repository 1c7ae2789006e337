"""compare: auto-tune against the fixed depths of the papers' table and Keras Tuner.

    python -m experiments compare --flagfile=flags/compare_digits.cfg

For each of --seeds seeds (--seed, --seed + 1, ...) it trains every contestant
of --contestants with the same training flags:

- ``auto_tune``: the `auto_tune` command's search from the network of
  --model and --blocks/--depth, with its flags (--prune_rule, ...);
- ``auto_tune_non_conflicting``, ``auto_tune_all_non_conflicting``: the
  same search with the reference's later rule versions, each with its own
  check schedule (`cb_keras.autotune.rules.VERSIONS`: the second one also checks at
  initialization);
- ``fixed``: every depth of --fixed_depths of the papers' table, one
  network each (``vgg-d4``, ``vgg-d10``, ...), trained once for --epochs;
- ``keras_tuner``: Keras Tuner's random search over blocks per stage, the
  networks auto-tune can reach from its start (`experiments.contestants.tuner`), with a
  budget of --tuner_budget epochs, each trial trained for --epochs;
- ``keras_tuner_check``: the same search, but every trial runs auto-tune's
  a^L check and stops when a^L conflicts in its first epochs (scored 0);
- ``optuna_tpe_median``, ``optuna_tpe_check``: the same search space and
  budget with Optuna's TPE sampler (`experiments.contestants.optuna_search`), whose
  trials are pruned by Optuna's MedianPruner on the training accuracy, or
  by auto-tune's a^L check; pruned trials are never the result.

Every contestant reports the test accuracy of the network it ends with
(mean of the last 5 epochs of its training), that network's parameters and
latency, the epochs it trained in all and its wall time. auto_tune never
looks at the test split; the fixed depths and the tuners are judged on it
(the best fixed depth is chosen by its test accuracy, Keras Tuner and
Optuna score their trials with it), which favours them.

Run directory (besides flags.json):

- ``<contestant>/seed<k>/``: the contestant's run (an auto_tune run
  directory, a `train` trial, or a tuner directory with ``trials/`` and
  ``tuner/`` (Keras Tuner) or ``optuna.journal`` (Optuna)) and ``cell.json``, its result once finished. Rerunning the
  command skips finished cells and resumes the unfinished one after its
  last committed epoch (a resumed cell's ``wall_seconds`` counts only the
  process that finished it, and its ``resumed`` is true).
- ``cells.csv``: one row per contestant and seed (`CELL_COLUMNS`).
- ``compare.csv``: one row per contestant (`ROW_COLUMNS`): mean and std of
  the test accuracy over seeds, the networks found, their mean parameters
  and latency (median of --latency_repeats calls on one test batch of
  --batch_size images, measured after all training, the networks taking
  turns), mean epochs and wall time (over the cells that ran in one process;
  empty if none did).
- ``compare.png``: test accuracy (mean, std as error bar) against the epochs
  trained (a cost that does not depend on the machine or its load) and
  against parameters.
- ``results.json``: ``finished``, ``command`` ("compare"), ``dataset``,
  ``seeds``, ``start_blocks``, ``tuner_budget``, ``cells`` and ``rows``.

With --partial it trains nothing and tabulates the cells finished so far
into ``cells_partial.csv``, ``compare_partial.csv`` and
``compare_partial.png`` (rows then may have fewer seeds; see their ``seeds``),
also while the comparison runs in another process.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

import numpy as np
from absl import app, flags

from cb_keras import files
from cb_keras.paper import models
from cb_keras.paper.spec import NetworkSpec
from experiments import auto_tune
from experiments.contestants import optuna_search, tuner
from experiments.runtime import command, console, rundir, serving
from experiments.trials import recipe, trial
from experiments.runtime.config import RunConfig, TrainConfig
from experiments.options import run as run_flags
from experiments.options import training as training_flags
from experiments.options.parsers import define_int_list
from experiments.runtime.rundir import RunDir
from experiments.runtime.strategy import Placement

CONTESTANTS = ("auto_tune", "auto_tune_non_conflicting", "auto_tune_all_non_conflicting",
               "fixed", "keras_tuner", "keras_tuner_check", "optuna_tpe_median",
               "optuna_tpe_check")
CONTESTANTS_FLAG = flags.DEFINE_list(
    "contestants", ["auto_tune", "fixed", "keras_tuner", "keras_tuner_check"],
    "What to compare, comma-separated: auto_tune (--prune_rule), auto_tune_non_conflicting "
    "and auto_tune_all_non_conflicting (auto_tune with that rule version and its own check "
    "schedule), fixed (every --fixed_depths), keras_tuner, keras_tuner_check (Keras Tuner "
    "stopping trials whose a^L conflicts early), optuna_tpe_median (Optuna's TPE with its "
    "MedianPruner), optuna_tpe_check (Optuna's TPE pruning trials whose a^L conflicts early).")
FIXED_DEPTHS = define_int_list(
    "fixed_depths", [4, 10, 20, 30],
    "Depths of the papers' table trained as fixed networks of --model.", __name__)
TUNER_BUDGET = flags.DEFINE_integer(
    "tuner_budget", None,
    "Epochs each Keras Tuner search trains at least (default: 2 x --epochs); set it to at "
    "least auto_tune's total epochs.", lower_bound=1)
PARTIAL = flags.DEFINE_bool(
    "partial", False,
    "Train nothing: tabulate the cells finished so far, e.g. while the comparison runs in "
    "another process (writes cells_partial.csv, compare_partial.csv and compare_partial.png; "
    "the seeds column says how many seeds each row has).")
rundir.operational(PARTIAL)
flags.register_validator(
    FIXED_DEPTHS, lambda depths: bool(depths) and set(depths) <= set(models.PAPER_BLOCKS),
    f"--fixed_depths must be depths of the papers' table: "
    f"{', '.join(map(str, sorted(models.PAPER_BLOCKS)))}.")
flags.register_validator(
    CONTESTANTS_FLAG, lambda names: bool(names) and set(names) <= set(CONTESTANTS),
    f"--contestants must be a comma-separated list of {', '.join(CONTESTANTS)}.")
flags.adopt_module_key_flags(auto_tune)

CELL_FILE = "cell.json"
CELLS_CSV = "cells.csv"
ROWS_CSV = "compare.csv"
PLOT_FILE = "compare.png"
CELL_COLUMNS = ("contestant", "seed", "blocks", "layers", "parameters", "test_accuracy",
                "epochs", "train_seconds", "wall_seconds", "resumed")
ROW_COLUMNS = ("contestant", "networks", "layers", "parameters", "latency_ms",
               "test_accuracy_mean", "test_accuracy_std", "epochs", "train_seconds",
               "wall_seconds", "seeds")
TABLE_COLUMNS = (
    ("contestant", "contestant", ""),
    ("networks", "networks found", ""),
    ("parameters", "parameters", ",.0f"),
    ("latency_ms", "latency_ms", ".2f"),
    ("epochs", "epochs", ".1f"),
    ("wall_seconds", "wall_s", ".0f"),
    ("test_accuracy_mean", "test_acc", ".4f"),
    ("test_accuracy_std", "std", ".4f"),
    ("seeds", "seeds", "d"),
)


@dataclasses.dataclass(frozen=True)
class Config:
    """What the flags of `compare` say.

    ``search`` is the auto_tune contestant's config (its training seed is
    replaced per seed); ``training.seeds`` is the number of seeds.
    """

    run: RunConfig
    search: auto_tune.Config
    contestants: tuple[str, ...]
    fixed_depths: tuple[int, ...]
    tuner_budget: int
    partial: bool = False

    @property
    def training(self) -> TrainConfig:
        return self.search.training

    @property
    def seeds(self) -> list[int]:
        return [self.training.seed + k for k in range(self.training.seeds)]

    @property
    def cells(self) -> list[str]:
        """Contestant cells in the order they train (fixed depths expanded)."""
        names = []
        for contestant in self.contestants:
            names += ([f"{self.search.spec.kind}-d{d}" for d in self.fixed_depths]
                      if contestant == "fixed" else [contestant])
        return names


def read_flags() -> Config:
    """The flags of `compare`, read once.

    Raises:
        app.UsageError: a network auto-tune cannot shrink, or a tuner budget
            below --epochs.
        console.CommandError: a Keras Tuner contestant without keras-tuner.
    """
    training = training_flags.training_config()
    search = auto_tune.config_from_flags(run_flags.run_config("compare", __name__),
                                         dataclasses.replace(training, seeds=1))
    budget = TUNER_BUDGET.value or 2 * training.epochs
    if budget < training.epochs:
        raise app.UsageError(f"--tuner_budget={budget} is below --epochs={training.epochs}: "
                             "a tuner trial trains --epochs epochs.")
    contestants = tuple(c for c in CONTESTANTS if c in CONTESTANTS_FLAG.value)
    if any(c.startswith("keras_tuner") for c in contestants):
        tuner.require()
    if any(c.startswith("optuna") for c in contestants):
        optuna_search.require()
    return Config(search.run, dataclasses.replace(search, training=training), contestants,
                  tuple(FIXED_DEPTHS.value), budget, PARTIAL.value)


def run_cell(run: RunDir, cfg: Config, data: recipe.TrialData, dist: Placement,
             name: str, seed: int) -> dict[str, Any]:
    """Train (or resume) one contestant with one seed on `data` (loaded for
    ``cfg.training``); its cell (`CELL_COLUMNS`)."""
    directory = run.sub(name).sub(f"seed{seed}")
    done = directory.read_json(CELL_FILE)
    if done:
        return done
    resumed = directory.path.exists()
    print(f"compare: {name}, seed {seed}", flush=True)
    training = dataclasses.replace(cfg.training, seed=seed, seeds=1)
    label = f"[{name} seed {seed}]"
    kind = cfg.search.spec.kind
    start = time.perf_counter()
    if name.startswith("auto_tune"):
        found = auto_tune.search(directory, auto_tune_config(cfg, name, training), data, dist)
        outcome = {"blocks": found["final_blocks"], "parameters": found["final_parameters"],
                   "test_accuracy": found["test_accuracy"], "epochs": found["total_epochs"],
                   "train_seconds": found["train_seconds"], "restarts": found["num_restarts"]}
    elif name.startswith(("keras_tuner", "optuna")):
        search = cfg.search.search_config
        space = tuner.Search(
            kind=kind, max_blocks=cfg.search.spec.blocks, budget=cfg.tuner_budget,
            training=training, check=name.endswith("_check"), rule=search.rule,
            window=search.check_window, at_init=search.check_at_init)
        outcome = (tuner.search(directory, space, data, dist, label)
                   if name.startswith("keras_tuner")
                   else optuna_search.search(directory, space, "median" if name.endswith(
                       "_median") else None, data, dist, label))
    else:
        blocks = models.paper_blocks(int(name.rsplit("-d", 1)[1]))
        result = trial.train_trial(directory, NetworkSpec(kind, blocks), training,
                                   data, seed=seed, strategy=dist, label=label)
        outcome = {"blocks": blocks, **{k: result[k] for k in
                                        ("parameters", "test_accuracy", "epochs",
                                         "train_seconds")}}
    cell = {"contestant": name, "seed": seed, **outcome,
            "layers": models.num_layers(outcome["blocks"]),
            "wall_seconds": round(time.perf_counter() - start, 1), "resumed": resumed}
    directory.write_json(CELL_FILE, cell)
    print(f"compare: {name}, seed {seed}: {NetworkSpec(kind, cell['blocks']).label}, test "
          f"accuracy {console.format_value(cell['test_accuracy'], '.4f')}, "
          f"{cell['epochs']} epochs, {cell['wall_seconds']} s", flush=True)
    return cell


def auto_tune_config(cfg: Config, name: str, training: TrainConfig) -> auto_tune.Config:
    """The search of an auto_tune contestant: ``auto_tune`` as the flags say,
    ``auto_tune_<rule>`` with that rule version and its own check schedule
    (`cb_keras.autotune.rules.VERSIONS`)."""
    if name == "auto_tune":
        return dataclasses.replace(cfg.search, training=training)
    return dataclasses.replace(cfg.search, training=training, rule=name[len("auto_tune_"):],
                               check_window=None, check_at_init=None)


def blocks_text(blocks: list[int]) -> str:
    return ",".join(map(str, blocks))


def aggregate(cells: list[dict[str, Any]], latency: dict[str, float]) -> list[dict[str, Any]]:
    """One row per contestant (`ROW_COLUMNS`), in the order of `cells`."""
    rows = []
    for name in dict.fromkeys(c["contestant"] for c in cells):
        mine = [c for c in cells if c["contestant"] == name]
        accuracy = [c["test_accuracy"] for c in mine if c["test_accuracy"] is not None]
        networks = list(dict.fromkeys(blocks_text(c["blocks"]) for c in mine))
        rows.append({
            "contestant": name, "networks": " | ".join(networks),
            "layers": " | ".join(str(models.num_layers([int(b) for b in n.split(",")]))
                                 for n in networks),
            "parameters": float(np.mean([c["parameters"] for c in mine])),
            "latency_ms": float(np.mean([latency[blocks_text(c["blocks"])] for c in mine])),
            "test_accuracy_mean": float(np.mean(accuracy)) if accuracy else None,
            "test_accuracy_std": float(np.std(accuracy)) if accuracy else None,
            "epochs": float(np.mean([c["epochs"] for c in mine])),
            "train_seconds": float(np.mean([c["train_seconds"] for c in mine])),
            "wall_seconds": _mean([c["wall_seconds"] for c in mine if not c.get("resumed")]),
            "seeds": len(mine),
        })
    return rows


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def latencies(cfg: Config, data: recipe.TrialData,
              cells: list[dict[str, Any]]) -> dict[str, float]:
    """Latency (ms) of every network found, by blocks text, the networks taking turns
    (`experiments.runtime.serving.latencies_ms`); untrained weights time the same."""
    info = data.info
    texts = list(dict.fromkeys(blocks_text(c["blocks"]) for c in cells))
    models = [NetworkSpec(cfg.search.spec.kind, [int(b) for b in text.split(",")])
              .build(info.input_shape, info.num_classes) for text in texts]
    return dict(zip(texts, serving.latencies_ms(models, next(iter(data.test))[0],
                                                cfg.search.latency_repeats)))


def compare(run: RunDir, cfg: Config, data: recipe.TrialData,
            dist: Placement) -> dict[str, Any]:
    """Train every cell (seed by seed), then measure, tabulate and draw; the results."""
    cells = [run_cell(run, cfg, data, dist, name, seed)
             for seed in cfg.seeds for name in cfg.cells]
    return tabulate(run, cfg, data, cells)


def tabulate(run: RunDir, cfg: Config, data: recipe.TrialData, cells: list[dict[str, Any]],
             suffix: str = "") -> dict[str, Any]:
    """Latencies, rows, cells.csv, compare.csv and compare.png (names + `suffix`); the results."""
    rows = aggregate(cells, latencies(cfg, data, cells))

    def name(file: str) -> str:
        return file.replace(".", f"{suffix}.")

    run.write_csv(name(CELLS_CSV), [{**c, "blocks": blocks_text(c["blocks"])} for c in cells],
                  CELL_COLUMNS)
    run.write_csv(name(ROWS_CSV), rows, ROW_COLUMNS)
    results = {"command": "compare", "dataset": cfg.training.dataset, "seeds": cfg.seeds,
               "start_blocks": list(cfg.search.spec.blocks),
               "tuner_budget": cfg.tuner_budget, "cells": cells, "rows": rows}
    if run.writer:
        files.save_png(figure(results), run.file(name(PLOT_FILE)))
    return results


def report_partial(cfg: Config, readable: str, data: recipe.TrialData) -> str:
    """`--partial`: tabulate the finished cells of the run the flags name, train nothing.

    Raises:
        console.CommandError: no run with these flags there, or no finished cell yet.
    """
    path = command.locate(cfg.run, readable)
    run = RunDir(path, writer=not path.is_dir() or os.access(path, os.W_OK))
    if not run.start(cfg.run.flag_values, record=False):
        raise console.CommandError(f"{run.path} holds no compare run yet; start it without "
                                   "--partial.")
    cells = [cell for seed in cfg.seeds for name in cfg.cells
             if (cell := run.sub(name).sub(f"seed{seed}").read_json(CELL_FILE))]
    if not cells:
        raise console.CommandError(f"{run.path} has no finished cell yet; try again later.")
    results = tabulate(run, cfg, data, cells, "_partial")
    return (f"{len(cells)} of {len(cfg.seeds) * len(cfg.cells)} cells finished "
            + (f"(files *_partial.* in {run.path})" if run.writer else
               f"({run.path} is read-only: no *_partial.* files written)")
            + "\n" + summary_table(results))


def figure(results: dict[str, Any]):
    """A matplotlib Figure: test accuracy against epochs trained and against parameters."""
    from matplotlib.figure import Figure

    rows = [r for r in results["rows"] if r["test_accuracy_mean"] is not None]
    others = iter(["tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown",
                   "tab:pink", "tab:gray", "tab:olive", "tab:cyan"] * 4)
    colors = {r["contestant"]: "tab:red" if r["contestant"] == "auto_tune" else next(others)
              for r in rows}
    fig = Figure(figsize=(11, 4.6), layout="constrained")
    for axes, key, label, scale in zip(
            fig.subplots(1, 2), ("epochs", "parameters"),
            ("training epochs per run, all networks tried", "parameters of the network found"),
            ("linear", "log")):
        for row in rows:
            axes.errorbar(row[key], row["test_accuracy_mean"], yerr=row["test_accuracy_std"],
                          fmt="o", capsize=3, ms=6, color=colors[row["contestant"]],
                          label=f"{row['contestant']} ({row['seeds']})")
        axes.set_xscale(scale)
        axes.set_xlabel(label + (" (log scale)" if scale == "log" else ""))
        axes.set_ylabel("test accuracy (mean ± std over seeds)")
        axes.grid(alpha=0.3)
    # One legend below both panels: labels next to the points overlapped
    # where two contestants landed close together.
    fig.legend(*axes.get_legend_handles_labels(), loc="outside lower center",
               ncols=min(len(rows), 6), fontsize=8)
    fig.suptitle(f"compare on {results['dataset']}: auto_tune from "
                 f"{blocks_text(results['start_blocks'])}, Keras Tuner budget "
                 f"{results['tuner_budget']} epochs; (n) = seeds", fontsize=10)
    return fig


def summary_table(results: dict[str, Any]) -> str:
    """The contestants as a table (means over seeds)."""
    return (f"compare on {results['dataset']}, seeds {results['seeds']}: means over seeds\n"
            + console.table(results["rows"], TABLE_COLUMNS))


def main(argv: list[str]) -> None:
    """Run (or resume) the comparison given by the flags and print its table."""
    command.no_arguments("compare", argv)
    cfg = read_flags()
    readable = f"{cfg.search.spec.label}_{cfg.training.dataset}"
    data = recipe.data_once(cfg.training)
    if cfg.partial:
        print(report_partial(cfg, readable, data()), flush=True)
        return
    command.execute(cfg.run, readable, lambda run, dist: compare(run, cfg, data(), dist),
                    summary_table, cfg.search.strategy, check=data)


if __name__ == "__main__":
    app.run(main)
