"""The Keras backends side by side on this machine: TensorFlow, JAX and PyTorch, one table.

Run: ``python -m benchmarks.bench_backends [--python tensorflow=PY] [--python jax=PY]
[--python torch=PY] [--repeats 3] [--samples 512] [--size 32] [--out FILE.json]``

Each backend runs in its own process (``KERAS_BACKEND`` is read once, when
Keras starts), with the interpreter given for it (default: this one; a
backend that is not installed there is reported as missing). Each process
times, after one untimed warm-up call (tracing and compilation):

- ``metric D=...``: `cb_keras.bundle_metrics` on 512 distinct rows of D
  features (the reference's layer sizes 10, 4096, 16384), median seconds;
- ``predict R50`` and ``measure R50``: ``model.predict`` and
  `cb_keras.measure` of all 48 outputs of ``models.resnet([3, 6, 12, 3])``
  (the 50-layer ResNet) on `samples` random ``size x size x 3`` images,
  in one batch, median seconds;
- ``epoch VGG50``: one training epoch of the main job's start network (the
  50-layer VGG, blocks 3,6,12,3) on digits, batch 64, with Keras's SGD on
  every backend (the papers' optimizer is compared in its own benchmark),
  the second epoch's seconds.

It prints one row per measurement: seconds per backend and the ratios
jax / tensorflow (goal: <= 1.2) and torch / tensorflow.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

FEATURES = (10, 4096, 16384)
BLOCKS = (3, 6, 12, 3)
BACKENDS = ("tensorflow", "jax", "torch")


def median_seconds(fn, repeats: int) -> float:
    """Median wall time of `fn()` over `repeats` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def worker(repeats: int, samples: int, size: int) -> dict[str, float]:
    """The timings of this process's backend, by row name."""
    import keras
    import numpy as np

    import cb_keras
    from cb_keras.paper import data, models

    rng = np.random.default_rng(0)
    times = {}
    labels = np.arange(samples) % 10
    for features in FEATURES:
        a = rng.uniform(0.0, 100.0, (samples, features)).astype(np.float32)
        times[f"metric D={features}"] = median_seconds(lambda: cb_keras.bundle_metrics(
            a, labels, num_classes=10, weight_amplitude=0.5, learning_rate=1e-3,
            batch_size=64), repeats)
    keras.utils.set_random_seed(0)
    resnet = models.resnet(BLOCKS, (size, size, 3), 10)
    x = rng.random((samples, size, size, 3)).astype(np.float32)
    times["predict R50"] = median_seconds(
        lambda: resnet.predict(x, batch_size=samples, verbose=0), repeats)
    times["measure R50 (48 outputs)"] = median_seconds(lambda: cb_keras.measure(
        resnet, x, labels, num_classes=10, learning_rate=1e-3, batch_size=samples,
        layers="all", samples=samples), repeats)
    train, _, info = data.load("digits", batch_size=64, shuffle_seed=0)
    vgg = models.vgg(BLOCKS, info.input_shape, info.num_classes)
    vgg.compile(keras.optimizers.SGD(0.01),
                keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    vgg.fit(train, epochs=1, verbose=0)
    start = time.perf_counter()
    vgg.fit(train, epochs=1, verbose=0)
    times["epoch VGG50 digits"] = time.perf_counter() - start
    return times


def run_backend(backend: str, python: str, args: argparse.Namespace) -> dict | str:
    """The worker's timings on `backend`, or a one-line reason why there are none."""
    env = dict(os.environ, KERAS_BACKEND=backend)
    command = [python, "-m", "benchmarks.bench_backends", "--worker", "--repeats",
               str(args.repeats), "--samples", str(args.samples), "--size", str(args.size)]
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        return result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "failed"
    return json.loads(result.stdout.strip().splitlines()[-1])


def table(results: dict[str, dict | str]) -> str:
    """Rows of seconds per backend and each other backend's ratio to tensorflow."""
    timed = {b: r for b, r in results.items() if isinstance(r, dict)}
    others = [b for b in results if b != "tensorflow"]
    rows = [f"{'':28}" + "".join(f"{b:>12}" for b in results)
            + "".join(f"{b[:5] + '/tf':>10}" for b in others)]
    names = next(iter(timed.values()), {})
    for name in names:
        cells = "".join(f"{timed[b][name]:12.3f}" if b in timed else f"{'-':>12}"
                        for b in results)
        ratios = "".join(f"{timed[b][name] / timed['tensorflow'][name]:10.2f}"
                         if {b, "tensorflow"} <= set(timed) else f"{'-':>10}" for b in others)
        rows.append(f"{name:28}{cells}{ratios}")
    rows += [f"{b}: not run ({r})" for b, r in results.items() if not isinstance(r, dict)]
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", action="append", default=[],
                        help="BACKEND=INTERPRETER, e.g. jax=/path/venv-jax/bin/python")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--out", help="also write the timings as JSON to this file")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.repeats, args.samples, args.size)))
        return
    pythons = dict.fromkeys(BACKENDS, sys.executable)
    pythons.update(dict(item.split("=", 1) for item in args.python))
    results = {backend: run_backend(backend, python, args) for backend, python in pythons.items()}
    print(table(results))
    if args.out:
        with open(args.out, "w") as file:
            json.dump(results, file, indent=1)


if __name__ == "__main__":
    main()
