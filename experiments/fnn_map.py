"""fnn_map: the first figure of the WACV paper, a grid of FNN widths x depths.

    python -m experiments fnn_map --flagfile=flags/fnn_map_digits.cfg

Trains an FNN for every (depth, width) of --depths x --widths (``--seeds``
seeds each) on --dataset, each in ``cells/d<depth>_w<width>/`` (one trial
directory, see `experiments.trials.trial`). Writes to the run directory:

- ``fnn_map.csv``: one row per cell (`CELL_COLUMNS`);
- ``fnn_map.png``: test accuracy as a heat map (depth x width), with a line
  around the networks whose a^L is conflicting at the end of training;
- ``results.json``: ``finished``, ``command`` ("fnn_map"), ``dataset``,
  ``depths``, ``widths``, ``cells`` (the rows of fnn_map.csv, each with its
  ``trials``), ``conflicting_cells`` (number), and the mean test accuracy
  of conflicting and of non-conflicting cells
  (``test_accuracy_conflicting``, ``test_accuracy_healthy``; None if empty).

A cell counts as conflicting when a^L conflicts in at least half of its runs.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from absl import app, flags

from cb_keras import files
from cb_keras.paper.spec import NetworkSpec
from experiments.runtime import command, console
from experiments.trials import recipe, trial
from experiments.runtime.config import RunConfig, StrategyConfig, TrainConfig
from experiments.options import run as run_flags
from experiments.options import strategy as strategy_flags
from experiments.options import training as training_flags
from experiments.options.parsers import define_int_list
from experiments.runtime.rundir import RunDir
from experiments.runtime.strategy import Placement

DEPTHS = define_int_list(
    "depths", [1, 2, 4, 8, 16, 32], "Hidden layers of the FNNs of the grid.", __name__)
WIDTHS = define_int_list(
    "widths", [4, 8, 16, 32, 64], "Units per hidden layer of the FNNs of the grid.", __name__)
flags.register_validator(DEPTHS, lambda v: bool(v) and min(v) >= 1,
                         "--depths needs at least one depth, each >= 1, e.g. 1,2,4,8.")
flags.register_validator(WIDTHS, lambda v: bool(v) and min(v) >= 1,
                         "--widths needs at least one width, each >= 1, e.g. 4,8,16.")
flags.adopt_module_key_flags(run_flags)
flags.adopt_module_key_flags(strategy_flags)
flags.adopt_module_key_flags(training_flags)

CSV_FILE = "fnn_map.csv"
PLOT_FILE = "fnn_map.png"
AGGREGATED = ("test_accuracy", "accuracy", "num_bundles", "bundle_entropy", "max_accuracy")
CELL_COLUMNS = ("depth", "width", "parameters",
                *[f"{k}_{s}" for k in AGGREGATED for s in ("mean", "std")],
                "conflicting_fraction", "conflicting")
TABLE_COLUMNS = (
    ("depth", "depth", "d"),
    ("width", "width", "d"),
    ("test_accuracy_mean", "test_acc", ".4f"),
    ("accuracy_mean", "train_acc", ".4f"),
    ("num_bundles_mean", "bundles", ".0f"),
    ("bundle_entropy_mean", "H(a^L)", ".4f"),
    ("max_accuracy_mean", "max_acc", ".3f"),
    ("conflicting", "conflicting", ""),
)


@dataclasses.dataclass(frozen=True)
class Config:
    """What the flags of `fnn_map` say (the grid sorted, without repeats)."""

    run: RunConfig
    strategy: StrategyConfig
    training: TrainConfig
    depths: list[int]
    widths: list[int]


def read_flags() -> Config:
    """The flags of `fnn_map`, read once."""
    return Config(run_flags.run_config("fnn_map", __name__), strategy_flags.strategy_config(),
                  training_flags.training_config(), sorted(set(DEPTHS.value)),
                  sorted(set(WIDTHS.value)))


def train_cell(run: RunDir, depth: int, width: int, cfg: TrainConfig, data: recipe.TrialData,
               dist: Placement) -> dict[str, Any]:
    """Train the runs of one FNN of the grid; its row of the table."""
    spec = NetworkSpec("fnn", depth=depth, width=width)
    trials = [trial.train_trial(directory, spec, cfg, data, seed=seed, strategy=dist,
                                label=f"[d={depth} w={width} seed {seed}]")
              for seed, directory in trial.trial_dirs(run, f"cells/d{depth}_w{width}", cfg)]
    fraction = float(np.mean([bool(t["conflicting"]) for t in trials]))
    return {"depth": depth, "width": width, "parameters": trials[0]["parameters"],
            **trial.mean_std(trials, AGGREGATED),
            "conflicting_fraction": fraction, "conflicting": fraction >= 0.5,
            "trials": trials}


def plot_map(cells: list[dict[str, Any]], depths: list[int], widths: list[int],
             title: str, path) -> None:
    """Heat map of test accuracy, the conflicting region outlined and hatched."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    accuracy = np.full((len(depths), len(widths)), np.nan)
    conflicting = np.zeros_like(accuracy, dtype=bool)
    for cell in cells:
        i, j = depths.index(cell["depth"]), widths.index(cell["width"])
        accuracy[i, j] = np.nan if cell["test_accuracy_mean"] is None \
            else cell["test_accuracy_mean"]
        conflicting[i, j] = cell["conflicting"]
    figure = Figure(figsize=(1.1 * len(widths) + 2.5, 0.6 * len(depths) + 2))
    axes = figure.subplots()
    image = axes.imshow(accuracy, cmap="viridis", vmin=0.0, vmax=1.0, origin="lower",
                        aspect="auto")
    figure.colorbar(image, ax=axes, label="test accuracy (mean of the last epochs)")
    for (i, j), value in np.ndenumerate(accuracy):
        axes.text(j, i, "-" if np.isnan(value) else f"{value:.2f}", ha="center",
                  va="center", color="white" if value < 0.6 else "black", fontsize=8)
        if conflicting[i, j]:
            axes.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="//",
                                     edgecolor="red", linewidth=0))
    for i, j in zip(*np.nonzero(conflicting)):
        for di, dj in ((1, 0), (-1, 0), (0, 1), (0, -1)):
            ni, nj = i + di, j + dj
            inside = 0 <= ni < len(depths) and 0 <= nj < len(widths)
            if not inside or not conflicting[ni, nj]:
                x = [j - 0.5, j + 0.5] if di else [j + dj / 2] * 2
                y = [i + di / 2] * 2 if di else [i - 0.5, i + 0.5]
                axes.plot(x, y, color="red", linewidth=2.5)
    axes.set_xticks(range(len(widths)), [str(w) for w in widths])
    axes.set_yticks(range(len(depths)), [str(d) for d in depths])
    axes.set_xlabel("width (units per hidden layer)")
    axes.set_ylabel("depth (hidden layers)")
    axes.set_title(f"{title}\nred: a^L conflicting (bundle entropy > 0)", fontsize=10)
    figure.tight_layout()
    files.save_png(figure, path)


def grid(run: RunDir, cfg: Config, data: recipe.TrialData,
         dist: Placement) -> dict[str, Any]:
    """Train (or resume) every cell of the grid, write the table and the map; the results."""
    cells = [train_cell(run, d, w, cfg.training, data, dist)
             for d in cfg.depths for w in cfg.widths]
    run.write_csv(CSV_FILE, cells, CELL_COLUMNS)
    if run.writer:
        plot_map(cells, cfg.depths, cfg.widths,
                 f"FNNs on {cfg.training.dataset}, {cfg.training.epochs} epochs",
                 run.file(PLOT_FILE))
    groups = {flag: [c["test_accuracy_mean"] for c in cells
                     if c["conflicting"] == flag and c["test_accuracy_mean"] is not None]
              for flag in (True, False)}
    return {
        "command": "fnn_map", "dataset": cfg.training.dataset, "depths": cfg.depths,
        "widths": cfg.widths, "cells": cells,
        "conflicting_cells": sum(c["conflicting"] for c in cells),
        "test_accuracy_conflicting": _mean(groups[True]),
        "test_accuracy_healthy": _mean(groups[False]),
    }


def summary_table(results: dict[str, Any]) -> str:
    """One row per cell of the grid."""
    return console.table(results["cells"], TABLE_COLUMNS)


def main(argv: list[str]) -> None:
    """Train (or resume) every cell of the grid, then write the table and the map."""
    command.no_arguments("fnn_map", argv)
    cfg = read_flags()
    data = recipe.data_once(cfg.training)
    command.execute(cfg.run, cfg.training.dataset, lambda run, dist: grid(run, cfg, data(), dist),
                    summary_table, cfg.strategy, check=data)


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


if __name__ == "__main__":
    app.run(main)
