"""A faithful re-implementation of the papers' reference bundle algorithm.

The baseline that `bench_bundles.py` compares `cb_keras.bundles` against.
Like the reference code, it walks the samples in a Python loop with eager
TensorFlow ops: each sample not yet in a bundle opens a new bundle and
collects every unassigned sample whose transformed row equals its own.
Cost: O(num_bundles * N * D) — O(N^2 * D) for a healthy layer.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def reference_bundles(a, y, *, num_classes: int, weight_amplitude: float,
                      learning_rate: float, batch_size: int) -> tuple[int, float]:
    """``(num_bundles, bundle_entropy)`` the way the reference computes them.

    Args:
        a: layer outputs, shape (N, ...).
        y: integer labels, shape (N,).
    """
    a = tf.reshape(tf.cast(a, tf.float32), [a.shape[0], -1])
    t = tf.constant(weight_amplitude, tf.float32) - (
        (a * tf.constant(learning_rate, tf.float32)) * tf.constant(1.0 / batch_size, tf.float32))
    num_samples = int(a.shape[0])
    bundle = np.full(num_samples, -1)
    num_bundles = 0
    for i in range(num_samples):
        if bundle[i] >= 0:
            continue
        same = tf.reduce_all(tf.equal(t, t[i]), axis=-1).numpy()
        bundle[np.logical_and(same, bundle < 0)] = num_bundles
        num_bundles += 1
    entropy = 0.0
    y = np.asarray(y)
    for b in range(num_bundles):
        members = y[bundle == b]
        fractions = tf.constant(
            np.bincount(members, minlength=num_classes) / len(members), tf.float32)
        h = -tf.reduce_sum(fractions * tf.math.log(fractions + 1e-5))
        entropy += len(members) * max(0.0, float(h))
    return num_bundles, entropy / num_samples
