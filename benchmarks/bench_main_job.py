"""Where the main job's time goes, and the papers' optimizer against Keras AdamW.

Run: ``python -m benchmarks.bench_main_job [--part optimizers|search|both]
[--repeats 2] [--epochs 3] [--flagfile flags/auto_tune_digits.cfg] [--keep_run_dir]
[-- absl flags]``

``optimizers``: trains the main job's start network (50-layer VGG, blocks
3,6,12,3, digits, batch 64, one ``fit`` per epoch as the main job does) from
the same seed with ``paper_optimizer(1e-3)`` and with
``keras.optimizers.AdamW(1e-3, weight_decay=1e-2)``, taking turns `repeats`
times, and prints per optimizer the first step (tracing included), the
first epoch and the median later epoch and step, min and median over the
repeats, and the ratio paper / AdamW.

``search``: runs the main job, ``python -m experiments auto_tune
--flagfile=...``, in this process in a fresh temporary run directory (absl
flags after ``--`` override the flagfile, e.g. ``-- --epochs=12``), and
splits its wall time into phases by timing the functions that do the work
(time inside a nested phase counts for that phase only): model build,
first step of each network (tracing), training steps, measurement (a^L
checks and all-block measurements), test evaluation, checkpoints, export and
latency; ``other`` is the rest (data pipelines, files, callbacks). It also
prints the first and the median later epoch of every attempt, the ratio of the
wall time to the time in training steps (the main job's goal: at most 1.5,
docs/performance.md) and the bytes the run directory holds at the end, then
deletes the run directory (``--keep_run_dir``: keeps it and prints its path,
e.g. for ``du -sh``).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import csv
import functools
import os
import pathlib
import shutil
import statistics
import sys
import tempfile
import time
from typing import Callable

import keras
from keras.src.backend.tensorflow.trainer import TensorFlowTrainer

from cb_keras.autotune import trainer
from cb_keras.paper import data, models, optimizers

BLOCKS = (3, 6, 12, 3)
BATCH_SIZE = 64
OPTIMIZERS: dict[str, Callable[[], keras.optimizers.Optimizer]] = {
    "paper": lambda: optimizers.paper_optimizer(1e-3),
    "adamw": lambda: keras.optimizers.AdamW(1e-3, weight_decay=1e-2),
}


# ------------------------------------------------------------ optimizers


class _StepTimes(keras.callbacks.Callback):
    """Seconds from the start of `fit` to the end of each of its batches."""

    def on_train_begin(self, logs=None):
        self.start, self.ends = time.perf_counter(), []

    def on_train_batch_end(self, batch, logs=None):
        self.ends.append(time.perf_counter() - self.start)


def train_times(make_optimizer: Callable[[], keras.optimizers.Optimizer],
                epochs: int) -> dict[str, float]:
    """Seconds of the first step, first epoch, median later epoch and step of one network."""
    train, _, info = data.load("digits", batch_size=BATCH_SIZE, shuffle_seed=0)
    keras.utils.set_random_seed(0)
    model = models.vgg(BLOCKS, info.input_shape, info.num_classes)
    trainer.compile_model(model, make_optimizer())  # as the commands compile
    epoch_seconds, later_steps, clock = [], [], _StepTimes()
    for epoch in range(epochs):
        model.fit(train, epochs=epoch + 1, initial_epoch=epoch, verbose=0, callbacks=[clock])
        epoch_seconds.append(clock.ends[-1])
        if epoch == 0:
            first_step = clock.ends[0]
        else:
            later_steps += [b - a for a, b in zip([0.0] + clock.ends, clock.ends)]
    return {"first step": first_step, "first epoch": epoch_seconds[0],
            "later epoch": statistics.median(epoch_seconds[1:]),
            "later step": statistics.median(later_steps)}


def compare_optimizers(repeats: int, epochs: int) -> None:
    """Print the `train_times` of both optimizers, taking turns, and their ratio."""
    runs = collections.defaultdict(list)
    for _ in range(repeats):
        for name, make in OPTIMIZERS.items():
            runs[name].append(train_times(make, epochs))
    print(f"vgg {','.join(map(str, BLOCKS))} on digits, batch {BATCH_SIZE}, {epochs} epochs, "
          f"{repeats} runs per optimizer taking turns; seconds, min / median over runs")
    print(f"{'':>12} {'paper':>15} {'adamw':>15} {'paper/adamw':>12}")
    for key in runs["paper"][0]:
        cells = {name: [r[key] for r in runs[name]] for name in OPTIMIZERS}
        ratio = statistics.median(cells["paper"]) / statistics.median(cells["adamw"])
        print(f"{key:>12} " + " ".join(
            f"{min(v):7.3f}/{statistics.median(v):7.3f}" for v in cells.values())
            + f" {ratio:12.2f}", flush=True)


# ------------------------------------------------------------ the main job


class PhaseClock:
    """Exclusive wall time per phase: time in a nested phase counts for it only."""

    def __init__(self):
        self.seconds: collections.Counter = collections.Counter()
        self.calls: collections.Counter = collections.Counter()
        self._stack: list[str] = []
        self._since = time.perf_counter()

    @contextlib.contextmanager
    def phase(self, name: str):
        """Charge the time until exit to `name`."""
        self._switch()
        self._stack.append(name)
        self.calls[name] += 1
        try:
            yield
        finally:
            self._switch()
            self._stack.pop()

    def _switch(self) -> None:
        now = time.perf_counter()
        if self._stack:
            self.seconds[self._stack[-1]] += now - self._since
        self._since = now

    def timed(self, function: Callable, name: str) -> Callable:
        """`function` with its calls charged to phase `name`."""
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            with self.phase(name):
                return function(*args, **kwargs)
        return wrapper


def instrument(clock: PhaseClock) -> None:
    """Charge the main job's work to phases (module docstring) by wrapping its functions."""
    from cb_keras.measurement import measure
    from cb_keras.paper.spec import NetworkSpec
    from experiments.runtime import rundir, serving
    from experiments.trials import recipe

    phases = {recipe.compile_model: "model build", measure: "measurement",
              serving.export: "export", serving.save_keras: "export",
              serving.latencies_ms: "latency"}
    for module in [m for name, m in sys.modules.items()
                   if name.startswith(("cb_keras", "experiments"))]:
        for attribute, value in list(vars(module).items()):
            if callable(value) and value in phases:
                setattr(module, attribute, clock.timed(value, phases[value]))
    NetworkSpec.build = clock.timed(NetworkSpec.build, "model build")
    rundir.RunDir.save_checkpoint = clock.timed(rundir.RunDir.save_checkpoint, "checkpoints")
    TensorFlowTrainer.evaluate = clock.timed(TensorFlowTrainer.evaluate, "test evaluation")
    make_train_function = TensorFlowTrainer.make_train_function

    def timed_make_train_function(model, force=False):
        fresh = model.train_function is None or force
        make_train_function(model, force)
        if fresh:  # the first call of a new train function traces it
            step, calls = model.train_function, []

            def train_function(iterator):
                calls.append(None)
                name = "first step (trace)" if len(calls) == 1 else "training steps"
                with clock.phase(name):
                    return step(iterator)
            model.train_function = train_function
        return model.train_function

    TensorFlowTrainer.make_train_function = timed_make_train_function


def run_search(flagfile: str, extra_flags: list[str]) -> tuple[float, PhaseClock, str]:
    """Run the main job in a temporary run directory: (wall seconds, phases, run dir)."""
    from absl import flags

    from experiments import auto_tune

    run_dir = os.path.join(tempfile.mkdtemp(prefix="bench_main_job_"), "run")
    flags.FLAGS(["auto_tune", f"--flagfile={flagfile}", f"--run_dir={run_dir}",
                 *extra_flags])
    clock = PhaseClock()
    instrument(clock)
    start = time.perf_counter()
    with clock.phase("other"):
        auto_tune.main(["auto_tune"])
    return time.perf_counter() - start, clock, run_dir


def epoch_seconds(run_dir: str) -> list[tuple[str, float, float | None, int]]:
    """Per attempt: (name, first epoch s, median later epoch s or None, epochs) from
    metrics.csv."""
    rows = []
    for name in sorted(os.listdir(run_dir)):
        path = os.path.join(run_dir, name, "metrics.csv")
        if name.startswith("attempt") and os.path.exists(path):
            with open(path, newline="") as file:
                seconds = [float(r["seconds"]) for r in csv.DictReader(file)
                           if r.get("seconds")]
            if seconds:
                later = statistics.median(seconds[1:]) if len(seconds) > 1 else None
                rows.append((name, seconds[0], later, len(seconds)))
    return rows


def report_search(flagfile: str, extra_flags: list[str], keep_run_dir: bool = False) -> None:
    """Print the main job's wall time by phase, its epoch times per attempt and its run
    directory."""
    wall, clock, run_dir = run_search(flagfile, extra_flags)
    print(f"\nmain job ({flagfile} {' '.join(extra_flags)}): {wall:.1f} s wall, "
          f"{wall / clock.seconds['training steps']:.2f} x the training steps")
    print(f"{'phase':>20} {'seconds':>8} {'share':>6} {'calls':>6}")
    for name, seconds in clock.seconds.most_common():
        print(f"{name:>20} {seconds:8.1f} {seconds / wall:6.1%} {clock.calls[name]:6d}")
    print(f"{'attempt':>20} {'epochs':>6} {'first epoch s':>14} {'later epoch s':>14}")
    for name, first, later, count in epoch_seconds(run_dir):
        later_text = f"{later:14.2f}" if later is not None else f"{'-':>14}"
        print(f"{name:>20} {count:6d} {first:14.2f} {later_text}", flush=True)
    size = sum(f.stat().st_size for f in pathlib.Path(run_dir).rglob("*") if f.is_file())
    print(f"run directory: {size / 1e6:.1f} MB"
          + (f" (kept: {run_dir})" if keep_run_dir else ""), flush=True)
    if not keep_run_dir:
        shutil.rmtree(os.path.dirname(run_dir))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("optimizers", "search", "both"), default="both")
    parser.add_argument("--repeats", type=int, default=2, help="runs per optimizer")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per optimizer run (>= 2)")
    parser.add_argument("--flagfile", default="flags/auto_tune_digits.cfg")
    parser.add_argument("--keep_run_dir", action="store_true",
                        help="keep the main job's run directory (its path is printed)")
    parser.add_argument("search_flags", nargs="*", help="absl flags for the main job, after --")
    args = parser.parse_args(argv)
    if args.epochs < 2 or args.repeats < 1:
        parser.error("--epochs must be >= 2 (the first epoch and later ones) and --repeats >= 1.")
    if args.part in ("optimizers", "both"):
        compare_optimizers(args.repeats, args.epochs)
    if args.part in ("search", "both"):
        report_search(args.flagfile, args.search_flags, args.keep_run_dir)


if __name__ == "__main__":
    main()
