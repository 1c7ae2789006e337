"""TensorFlow's CPU kernels for the main job's network: oneDNN, XLA and Grappler on or off.

Run: ``python -m benchmarks.bench_kernels [--optimizer paper|adamw] [--steps 5]``

TensorFlow uses its oneDNN kernels by default only on CPUs with AVX-512
VNNI/BF16 or AMX, and optimises every graph with Grappler; the commands and
benchmarks turn oneDNN on and Grappler off (``TF_ENABLE_ONEDNN_OPTS=1``,
``CB_KERAS_GRAPPLER=0``, experiments/__init__.py). This benchmark shows what
each buys on the machine it runs on, and what XLA would. Each setting runs
in a fresh process with those two variables set (TensorFlow reads the first
when it starts): it builds the main job's start network (50-layer VGG,
blocks 3,6,12,3, digits), compiles it as the commands do
(`cb_keras.autotune.trainer.compile_model`, with ``jit_compile`` set for XLA), and
times the first train step on one batch of 64 (tracing,
graph optimisation and XLA compilation included) and the median of
``--steps`` later steps. It prints seconds and the ratio of each setting's
later step to that of the commands' default (oneDNN on, no XLA, Grappler off).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

# (oneDNN, XLA, Grappler); the first is the commands' default, the third TensorFlow's.
SETTINGS = (("1", False, "0"), ("1", False, "1"), ("0", False, "1"), ("1", True, "1"),
            ("0", True, "1"))
BLOCKS = (3, 6, 12, 3)
BATCH_SIZE = 64


def step_times(optimizer: str, steps: int, jit: bool) -> dict[str, float]:
    """First and median later train step, in seconds, in this process."""
    import keras

    from benchmarks.bench_main_job import OPTIMIZERS
    from cb_keras.autotune import trainer
    from cb_keras.paper import data, models

    train, _, info = data.load("digits", batch_size=BATCH_SIZE, shuffle_seed=0)
    keras.utils.set_random_seed(0)
    model = models.vgg(BLOCKS, info.input_shape, info.num_classes)
    trainer.compile_model(model, OPTIMIZERS[optimizer]())
    model.jit_compile = jit
    x, y = next(iter(train))
    start = time.perf_counter()
    model.train_on_batch(x, y)
    first = time.perf_counter() - start
    later = []
    for _ in range(steps):
        start = time.perf_counter()
        model.train_on_batch(x, y)
        later.append(time.perf_counter() - start)
    return {"first step": first, "later step": statistics.median(later)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--optimizer", choices=("paper", "adamw"), default="paper")
    parser.add_argument("--steps", type=int, default=5, help="later steps to time (>= 1)")
    parser.add_argument("--jit", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be >= 1.")
    if args.one:  # a child: one setting, in this process
        times = step_times(args.optimizer, args.steps, args.jit)
        print(json.dumps(times))
        return
    print(f"vgg {','.join(map(str, BLOCKS))} on digits, batch {BATCH_SIZE}, {args.optimizer} "
          f"optimizer; seconds; one process per setting")
    print(f"{'oneDNN':>7} {'XLA':>4} {'Grappler':>8} {'first step':>11} {'later step':>11} "
          f"{'later / default':>16}")
    default = None
    for onednn, jit, grappler in SETTINGS:
        command = [sys.executable, "-m", "benchmarks.bench_kernels", "--one",
                   f"--optimizer={args.optimizer}", f"--steps={args.steps}"]
        child = subprocess.run(command + ["--jit"] * jit, capture_output=True, text=True,
                               env={**os.environ, "TF_ENABLE_ONEDNN_OPTS": onednn,
                                    "CB_KERAS_GRAPPLER": grappler}, check=True)
        times = json.loads(child.stdout.strip().splitlines()[-1])
        default = default or times["later step"]
        print(f"{'on' if onednn == '1' else 'off':>7} {'on' if jit else 'off':>4} "
              f"{'on' if grappler == '1' else 'off':>8} "
              f"{times['first step']:11.2f} {times['later step']:11.3f} "
              f"{times['later step'] / default:16.2f}", flush=True)


if __name__ == "__main__":
    main()
