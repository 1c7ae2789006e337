"""The skeleton every command's `main` shares: run directory, resume, results, summary.

A command reads its flags once, at the top of `main`, into a frozen config
(records of `experiments.runtime.config` and its own), and hands its work to
`execute`:

    def main(argv):
        command.no_arguments("train", argv)
        cfg = read_flags()
        command.execute(cfg.run, readable, lambda run, dist: work(run, cfg, dist),
                        summary_table, cfg.strategy)

`execute` makes the placement (`experiments.runtime.strategy`), locates the
run directory, locks an unfinished run, records or checks its flags, does the
work unless results.json marks the run finished, writes results.json, and
prints the summary with the directory's size.
Errors a user can fix are `console.CommandError`s (a `rundir.RunDirError`
for the run directory), which ``python -m experiments`` prints as one line.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any, Callable, Mapping

from absl import app

from experiments.runtime import environment, strategy
from experiments.runtime.config import RunConfig, StrategyConfig
from experiments.runtime.rundir import RESULTS_FILE, RunDir, RunDirError, default_name

Work = Callable[[RunDir, strategy.Placement], Mapping[str, Any]]


def no_arguments(command: str, argv: list[str]) -> None:
    """Refuse positional arguments: every command takes flags only.

    Raises:
        app.UsageError: `argv` holds more than the program name.
    """
    if len(argv) > 1:
        raise app.UsageError(f"{command} takes no positional arguments, got {argv[1:]}.")


def locate(cfg: RunConfig, readable: str) -> pathlib.Path:
    """The run directory named by --run_dir, else --runs_root/--name, else derived.

    Raises:
        app.UsageError: a --name that is not one folder name (it would escape
            --runs_root).
    """
    if cfg.run_dir:
        return pathlib.Path(cfg.run_dir)
    if cfg.name is not None and (cfg.name in ("", ".", "..") or "/" in cfg.name
                                 or os.sep in cfg.name):
        raise app.UsageError(
            f"--name={cfg.name} is not a folder name under --runs_root={cfg.runs_root}; pass "
            "a name without '/' (or a path with --run_dir).")
    name = cfg.name or default_name(cfg.command, readable, cfg.flag_values)
    return pathlib.Path(cfg.runs_root) / name


def open_run(cfg: RunConfig, readable: str, *, writer: bool = True,
             check: Callable[[], object] = lambda: None) -> RunDir:
    """Locate the run and start or resume it (see `RunDir.start`).

    Args:
        cfg: the command, its flags and the run location.
        readable: short description for the default run name (e.g. the network).
        writer: False on non-chief workers.
        check: raises a `CommandError` for flags the run cannot use (e.g.
            more measurement samples than the data set has); called for an
            unfinished run before anything is written (what it returns is
            ignored: `experiments.trials.recipe.data_once` loads the data here).

    A finished run is returned as is (check ``run.results``) and nothing is
    written to it, so it may sit on read-only storage. An unfinished run is
    locked for this process first (`RunDir.lock`); a new one records the
    settings that change its numbers, a resumed one warns if they changed
    (`experiments.runtime.environment`).
    """
    run = RunDir(locate(cfg, readable), writer=writer)
    finished = run.results is not None
    if not finished:
        check()
    if writer and not finished:
        run.lock()
    resumed = run.start(cfg.flag_values, record=not finished)
    if finished:
        print(f"{cfg.command}: {run.path} is already finished; its results are in "
              f"{run.file(RESULTS_FILE)}.", flush=True)
    else:
        print(f"{cfg.command}: {'resuming' if resumed else 'starting'} {run.path}",
              flush=True)
        if not resumed:
            environment.record(run)
        elif warning := environment.compare(run):
            print(f"{cfg.command}: {warning}", flush=True)
    return run


def execute(cfg: RunConfig, readable: str, work: Work,
            summary: Callable[[dict[str, Any]], str],
            placement: StrategyConfig = StrategyConfig("none"),
            check: Callable[[], object] = lambda: None) -> dict[str, Any]:
    """Open the run, do `work` unless it is finished, print its summary; its results.

    Args:
        cfg: the command, its flags and the run location.
        readable: short description for the default run name.
        work: ``work(run, strategy) -> results`` of an unfinished (new or
            resumed) run; it resumes whatever an earlier, stopped process left
            in the run directory.
        summary: the text printed for the results (also of a finished run).
        placement: the strategy to make; only its chief worker writes files.
        check: refuses flags the run cannot use before anything is written
            (see `open_run`).
    """
    dist = strategy.make(placement)
    with strategy.active(dist):
        run = open_run(cfg, readable, writer=strategy.is_chief(dist), check=check)
        results = run.results
        if results is None:
            results = run.finish(work(run, dist))
            text = summary(results)
        else:
            text = _summary_of_saved(run, results, summary)
    print(text, run.size_line(), sep="\n", flush=True)
    return results


def _summary_of_saved(run: RunDir, results: dict[str, Any],
                      summary: Callable[[dict[str, Any]], str]) -> str:
    """The summary of a finished run's results.json, or a RunDirError if it is not one.

    A results.json edited by hand or written by another tool lacks the
    numbers the summary shows (KeyError, TypeError, ...): the error says so
    in one line instead of a traceback.
    """
    try:
        if results.get("finished") is not True:
            raise KeyError("finished")
        return summary(results)
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as error:
        raise RunDirError(
            f"{run.file(RESULTS_FILE)} is not the results of a finished run "
            f"({type(error).__name__}: {error}); it was edited or damaged. Restore it, or "
            "delete it and rerun the same command to redo the run's last step.") from None
