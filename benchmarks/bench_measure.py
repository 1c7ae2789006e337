"""Cost of `cb_keras.measure` on all layers of a 50-layer ResNet against `model.predict`.

Run: ``python -m benchmarks.bench_measure [--samples 512] [--size 32] [--repeats 3]``

Builds ``cb_keras.paper.models.resnet([3, 6, 12, 3])`` (50 layers, 24 residual
blocks, 48 measured outputs: each block's scaled branch and its output) on
random ``size x size x 3`` images, then times, on the same `samples` inputs
and with the same batch (all samples in one pass, which the branch scaling
needs):

- ``model.predict(x, batch_size=samples)``: the plain forward pass;
- ``cb_keras.measure(model, x, y, ...)``: forward pass, fingerprints of all
  48 outputs and the bundle metrics of each.

It prints the first (cold: tracing included) and the median warm time of
each, and the ratio measure / predict. Goal: warm ratio <= 1.5.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import cb_keras
from cb_keras.paper import models
from cb_keras.probe import tap_names

BLOCKS = (3, 6, 12, 3)
NUM_CLASSES = 10


def timed(fn, repeats: int) -> tuple[float, float]:
    """(seconds of the first call, median seconds of `repeats` further calls)."""
    start = time.perf_counter()
    fn()
    cold = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return cold, statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--size", type=int, default=32, help="image height and width, px")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.samples, args.size, args.size, 3)).astype(np.float32)
    y = rng.integers(0, NUM_CLASSES, size=args.samples)
    model = models.resnet(BLOCKS, (args.size, args.size, 3), NUM_CLASSES)

    def predict():
        model.predict(x, batch_size=args.samples, verbose=0)

    def measure():
        cb_keras.measure(model, x, y, num_classes=NUM_CLASSES, learning_rate=1e-3,
                         batch_size=64, samples=args.samples)

    predict_cold, predict_warm = timed(predict, args.repeats)
    measure_cold, measure_warm = timed(measure, args.repeats)
    print(f"{model.name}: {len(tap_names(model))} measured outputs, N={args.samples} samples of "
          f"{args.size}x{args.size}x3, one batch; median of {args.repeats} warm runs")
    print(f"{'':>8} {'cold s':>8} {'warm s':>8}")
    print(f"{'predict':>8} {predict_cold:8.3f} {predict_warm:8.3f}")
    print(f"{'measure':>8} {measure_cold:8.3f} {measure_warm:8.3f}")
    print(f"ratio measure / predict (warm): {measure_warm / predict_warm:.2f}  (goal <= 1.5)")


if __name__ == "__main__":
    main()
