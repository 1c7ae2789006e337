"""lesion: the extension paper's lesion study on a trained ResNet (docs/method.md §4).

    python -m experiments lesion --source_run=runs/<train run of a resnet>
    python -m experiments lesion --flagfile=flags/lesion_digits.cfg --source_run=...

Loads the final network of --source_run (see `experiments.trials.trained`),
measures the residual branch of every block on the run's measurement sample
and splits the blocks into conflicting (bundle entropy > 0) and
non-conflicting ones. Then, for each group -- ``conflicting``,
``non_conflicting`` and ``any`` (all blocks; with --lesion_k=reference the
first 58, `lesion_groups`) -- and each k of the group
(`largest_k`; --lesion_k) it lesions k blocks drawn at random from the group
(--lesion_draws draws, without replacement within a draw; a group with fewer
than k blocks is skipped) and measures the test accuracy of the lesioned
network
(`cb_keras.pruning.Lesion`: the blocks' branches are multiplied by 0, which
equals removing them). Draws that pick the same set are evaluated once.

Writes to the run directory:

- ``lesion_draws.csv``: one row per draw (`DRAW_COLUMNS`): group, k, draw,
  removed blocks (``;``-separated), test accuracy;
- ``lesion.csv``: one row per group and k (`CURVE_COLUMNS`): mean and std of
  the test accuracy over the draws;
- ``lesion.png``: the three curves, mean +- std over k, with the intact
  network's accuracy;
- ``branches.csv``: bundle metrics of every block's branch;
- ``results.json``: ``command``, ``source``, ``dataset``, ``blocks``,
  ``conflicting_blocks``, ``test_accuracy`` (intact), ``draws``, ``k_rule``, ``curves``
  (the rows of lesion.csv), and ``all_conflicting_removed``: the network
  with every conflicting block physically removed (`remove_blocks`):
  ``test_accuracy``, ``parameters``, ``parameters_before``, ``blocks``.
"""

from __future__ import annotations

import dataclasses
import itertools
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from absl import app, flags

from cb_keras import files, pruning
from experiments.runtime import command, console, rundir, serving
from experiments.trials import trained
from experiments.runtime.config import RunConfig
from experiments.options import run as run_flags
from experiments.options import source as source_flags

DRAWS = flags.DEFINE_integer(
    "lesion_draws", 15, "Random draws of k blocks per group and k (the papers: 15).",
    lower_bound=1)
LESION_SEED = flags.DEFINE_integer("lesion_seed", 0, "Seed of the random draws.")
K_RULE = flags.DEFINE_enum(
    "lesion_k", "conflicting", ["conflicting", "reference"],
    "Which numbers k of lesioned blocks each group is studied with. conflicting: k = 1 .. "
    "the number of conflicting blocks in every group, as the paper describes it; "
    "reference: as the reference code ran it (lesion.py, ba6985f), k = 1 .. n-1 for the n "
    "conflicting and the n non-conflicting blocks, and k = 1 .. max(both)-1 for any blocks, "
    "drawn from the first 58 blocks only (its range(0, 58); the 120-layer ResNet has 59).")
MAX_K = flags.DEFINE_integer(
    "lesion_max_k", None,
    "With --lesion_k=conflicting: the largest k instead of the number of conflicting "
    "blocks; a larger k extends the non-conflicting and any curves.", lower_bound=1)
flags.register_multi_flags_validator(
    [K_RULE, MAX_K], lambda values: values["lesion_k"] == "conflicting"
    or values["lesion_max_k"] is None,
    "--lesion_max_k sets the largest k of --lesion_k=conflicting; --lesion_k=reference "
    "takes k from the group sizes. Drop one of the two flags.")
flags.adopt_module_key_flags(run_flags)
flags.adopt_module_key_flags(source_flags)

GROUPS = ("conflicting", "non_conflicting", "any")
# The reference's lesion.py (ba6985f) drew its "any" blocks from range(0, 58).
REFERENCE_ANY_BLOCKS = 58
DRAWS_FILE = "lesion_draws.csv"
CURVES_FILE = "lesion.csv"
PLOT_FILE = "lesion.png"
BRANCHES_FILE = "branches.csv"
DRAW_COLUMNS = ("group", "k", "draw", "removed", "test_accuracy")
CURVE_COLUMNS = ("group", "k", "draws", "test_accuracy_mean", "test_accuracy_std")
TABLE_COLUMNS = (("k", "k", "d"),) + tuple(
    (f"{group}_mean", f"{group} (mean)", ".4f") for group in GROUPS)


@dataclasses.dataclass(frozen=True)
class Config:
    """What the flags of `lesion` say."""

    run: RunConfig
    source_run: str
    draws: int
    seed: int
    k_rule: str
    max_k: int | None


def read_flags() -> Config:
    """The flags of `lesion`, read once.

    Raises:
        app.UsageError: no --source_run.
    """
    if not source_flags.SOURCE_RUN.value:
        raise app.UsageError(
            "lesion needs a trained resnet: --source_run=runs/<name> of a finished "
            "`python -m experiments train --model=resnet ...` run.")
    return Config(run_flags.run_config("lesion", __name__), source_flags.SOURCE_RUN.value,
                  DRAWS.value, LESION_SEED.value, K_RULE.value, MAX_K.value)


def lesion_groups(found: pruning.BlockConflicts, rule: str) -> dict[str, list[str]]:
    """Block names of the three groups; `rule` as for `largest_k`.

    ``any`` holds every block, except with rule ``"reference"``: the first
    `REFERENCE_ANY_BLOCKS` (58) blocks, as the reference drew them, which
    leaves out the last of the 120-layer ResNet's 59.
    """
    return {"conflicting": list(found.conflicting),
            "non_conflicting": list(found.non_conflicting),
            "any": list(found.names[:REFERENCE_ANY_BLOCKS] if rule == "reference"
                        else found.names)}


def largest_k(groups: dict[str, Sequence[str]], rule: str,
              max_k: int | None = None) -> dict[str, int]:
    """The largest number of lesioned blocks per group; the study draws k = 1 .. that.

    Args:
        groups: block names of ``conflicting``, ``non_conflicting`` and ``any``.
        rule: ``"conflicting"``: every group up to the number of conflicting
            blocks (or `max_k`); ``"reference"``: the reference code's ranges,
            n - 1 for a group of n blocks, max(conflicting, non-conflicting)
            - 1 for ``any``.
        max_k: replaces the number of conflicting blocks of rule "conflicting".
    """
    conflicting, others = len(groups["conflicting"]), len(groups["non_conflicting"])
    if rule == "reference":
        return {"conflicting": conflicting - 1, "non_conflicting": others - 1,
                "any": max(conflicting, others) - 1}
    if rule != "conflicting":
        raise ValueError(f"rule must be 'conflicting' or 'reference', got {rule!r}.")
    return dict.fromkeys(groups, max_k or conflicting)


def draw_sets(groups: dict[str, Sequence[str]], largest: dict[str, int], draws: int,
              seed: int) -> list[dict[str, Any]]:
    """The random lesions of the study: ``{group, k, draw, removed}`` per draw.

    For k = 1, 2, ... and every group with ``k <= largest[group]`` and at
    least k blocks, `draws` sets of k distinct blocks, each sorted in the
    group's order.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for k in range(1, max(largest.values(), default=0) + 1):
        for group, names in groups.items():
            if k > largest[group] or len(names) < k:
                continue
            for draw in range(draws):
                chosen = sorted(rng.choice(len(names), size=k, replace=False))
                rows.append({"group": group, "k": k, "draw": draw,
                             "removed": [names[i] for i in chosen]})
    return rows


def evaluate_draws(rows: list[dict[str, Any]], accuracy: Callable[[list[str]], float],
                   log: Callable[[str], None] = lambda line: None) -> list[dict[str, Any]]:
    """`rows` with ``test_accuracy`` of each lesion, every distinct set evaluated once.

    `log` gets one progress line per group and k, when its draws are done.
    """
    cache: dict[frozenset, float] = {}
    done = 0
    for (group, k), batch in itertools.groupby(rows, key=lambda row: (row["group"], row["k"])):
        batch = list(batch)
        for row in batch:
            key = frozenset(row["removed"])
            if key not in cache:
                cache[key] = accuracy(row["removed"])
            row["test_accuracy"] = cache[key]
        done += len(batch)
        log(f"k={k} {group}: test accuracy "
            f"{np.mean([row['test_accuracy'] for row in batch]):.4f} over {len(batch)} draws "
            f"({done}/{len(rows)} lesions)")
    return rows


def curves(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and std of the test accuracy per group and k (`CURVE_COLUMNS`)."""
    keys = sorted({(row["group"], row["k"]) for row in rows},
                  key=lambda key: (GROUPS.index(key[0]), key[1]))
    out = []
    for group, k in keys:
        values = [row["test_accuracy"] for row in rows if (row["group"], row["k"]) == (group, k)]
        out.append({"group": group, "k": k, "draws": len(values),
                    "test_accuracy_mean": float(np.mean(values)),
                    "test_accuracy_std": float(np.std(values))})
    return out


def plot(curve_rows: list[dict[str, Any]], intact: float, title: str,
         path: pathlib.Path) -> None:
    """lesion.png: test accuracy (mean +- std) over the number of lesioned blocks."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(6.5, 4.5), layout="constrained")
    axes = figure.subplots()
    colors = {"conflicting": "tab:red", "non_conflicting": "tab:blue", "any": "tab:gray"}
    for group in GROUPS:
        rows = [row for row in curve_rows if row["group"] == group]
        if not rows:
            continue
        k = np.array([row["k"] for row in rows])
        mean = np.array([row["test_accuracy_mean"] for row in rows])
        std = np.array([row["test_accuracy_std"] for row in rows])
        axes.plot(k, mean, marker="o", color=colors[group], label=group.replace("_", "-"))
        axes.fill_between(k, mean - std, mean + std, color=colors[group], alpha=0.2)
    axes.axhline(intact, color="black", linestyle="--", linewidth=1, label="intact")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("blocks removed (k)")
    axes.set_ylabel("test accuracy (mean ± std over draws)")
    axes.set_title(title, fontsize=9)
    axes.legend()
    files.save_png(figure, path)


def lesion_study(source: trained.Trained, run: rundir.RunDir, draws: int, seed: int,
                 k_rule: str = "conflicting", max_k: int | None = None) -> dict[str, Any]:
    """Run the study on `source`, write its files to `run`; returns results.json.

    k runs from 1 to `largest_k` (`k_rule`, `max_k`) of each group.
    """
    found = source.conflicts()
    lesion = pruning.Lesion(source.model)
    groups = lesion_groups(found, k_rule)
    rows = evaluate_draws(
        draw_sets(groups, largest_k(groups, k_rule, max_k), draws, seed),
        lambda removed: serving.accuracy(lesion.lesion(removed), source.data.test),
        log=lambda line: print(f"lesion: {line}", flush=True))
    curve_rows = curves(rows)
    intact = serving.accuracy(lesion.lesion([]), source.data.test)
    pruned = pruning.remove_blocks(source.model, found.conflicting)
    if run.writer:
        found.report.save_csv(run.file(BRANCHES_FILE))
        run.write_csv(DRAWS_FILE, [{**row, "removed": ";".join(row["removed"])}
                                   for row in rows], DRAW_COLUMNS)
        run.write_csv(CURVES_FILE, curve_rows, CURVE_COLUMNS)
        plot(curve_rows, intact, f"Lesion study of {'/'.join(source.trial.path.parts[-2:])} "
             f"({len(found.conflicting)}/{len(found.names)} blocks conflicting)",
             run.file(PLOT_FILE))
    return {
        "command": "lesion", "source": str(source.trial.path),
        "dataset": source.data.config.dataset, "blocks": found.names,
        "conflicting_blocks": found.conflicting, "test_accuracy": intact,
        "draws": draws, "k_rule": k_rule, "curves": curve_rows,
        "all_conflicting_removed": {
            "test_accuracy": serving.accuracy(pruned, source.data.test),
            "parameters": int(pruned.count_params()),
            "parameters_before": int(source.model.count_params()),
            "blocks": len(found.non_conflicting)},
    }


def summary_table(results: dict[str, Any]) -> str:
    """Mean test accuracy per k and group, and the all-conflicting removal."""
    by_k: dict[int, dict[str, Any]] = {}
    for row in results["curves"]:
        by_k.setdefault(row["k"], {"k": row["k"]})[f"{row['group']}_mean"] = \
            row["test_accuracy_mean"]
    removed = results["all_conflicting_removed"]
    if not by_k:
        return (f"intact test accuracy {results['test_accuracy']:.4f}; none of the "
                f"{len(results['blocks'])} blocks is conflicting, so there is nothing to "
                "lesion (--lesion_max_k=K draws K non-conflicting blocks anyway).")
    return (f"intact test accuracy {results['test_accuracy']:.4f}; "
            f"{len(results['conflicting_blocks'])}/{len(results['blocks'])} blocks "
            f"conflicting; all of them removed: test accuracy "
            f"{removed['test_accuracy']:.4f}, parameters {removed['parameters_before']:,} -> "
            f"{removed['parameters']:,}\n" + console.table(list(by_k.values()), TABLE_COLUMNS))


def main(argv: list[str]) -> None:
    """Run (or show) the lesion study of --source_run."""
    command.no_arguments("lesion", argv)
    cfg = read_flags()
    command.execute(
        cfg.run, pathlib.Path(cfg.source_run).name,
        lambda run, _: lesion_study(trained.load_trial(cfg.source_run), run, cfg.draws,
                                    cfg.seed, cfg.k_rule, cfg.max_k), summary_table,
        check=lambda: trained.check_residual_source(cfg.source_run))


if __name__ == "__main__":
    app.run(main)
