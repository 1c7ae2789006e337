"""Speed of `cb_keras.bundle_metrics` against the reference algorithm.

Run: ``python -m benchmarks.bench_bundles [--samples 512] [--repeats 5]``

Prints, for D in {10, 4096, 16384} and for a healthy layer (all N rows
distinct) and a collapsed one (all rows equal, several classes), the median
wall time of the reference's greedy Python loop (`reference_bundles`), of
`cb_keras.bundle_metrics`, and the ratio reference / cb_keras. Both get the
same inputs and must agree on the numbers; the first call of each shape is a
warm-up (tracing and XLA compilation) and is not timed.
"""

from __future__ import annotations

import argparse

import numpy as np

import cb_keras
from benchmarks.bench_backends import median_seconds
from benchmarks.reference_bundles import reference_bundles

FEATURES = (10, 4096, 16384)
SETTINGS = dict(num_classes=10, weight_amplitude=0.5, learning_rate=1e-3, batch_size=64)


def layer(kind: str, samples: int, features: int, rng: np.random.Generator) -> np.ndarray:
    """Activations (samples, features): 'healthy' all distinct, 'collapsed' all equal."""
    if kind == "healthy":
        return rng.uniform(0.0, 100.0, size=(samples, features)).astype(np.float32)
    return np.zeros((samples, features), np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"N={args.samples} samples; median of {args.repeats} runs")
    print(f"{'layer':>9} {'D':>6} {'reference s':>12} {'cb_keras s':>11} {'speed-up':>9}")
    for kind in ("healthy", "collapsed"):
        for features in FEATURES:
            a = layer(kind, args.samples, features, rng)
            y = rng.integers(0, 10, size=args.samples)
            fast = cb_keras.bundle_metrics(a, y, **SETTINGS)
            slow = reference_bundles(a, y, **SETTINGS)
            if fast.num_bundles != slow[0] or abs(fast.bundle_entropy - slow[1]) > 1e-5:
                raise AssertionError(f"results differ: {fast} vs reference {slow}")
            t_ref = median_seconds(lambda: reference_bundles(a, y, **SETTINGS), args.repeats)
            t_fast = median_seconds(lambda: cb_keras.bundle_metrics(a, y, **SETTINGS),
                                    args.repeats)
            print(f"{kind:>9} {features:>6} {t_ref:>12.4f} {t_fast:>11.4f} "
                  f"{t_ref / t_fast:>8.1f}x")


if __name__ == "__main__":
    main()
