"""A faithful re-implementation of the papers' reference bundle algorithm.

The baseline that `bench_bundles.py` compares `cb_keras.bundles` against.
Like the reference code, it walks the samples in a Python loop with eager
TensorFlow ops, keeping a float bundle-id vector: each sample not yet in a
bundle opens a new bundle, every unassigned sample whose transformed row
matches it in all D components joins it (equal components counted with a
float sum and compared with D), and the bundle's entropy is added from a
masked bincount of its labels. Cost: O(num_bundles * N * D) — O(N^2 * D)
for a healthy layer — plus one host read per sample.
"""

from __future__ import annotations

import tensorflow as tf


def reference_bundles(a, y, *, num_classes: int, weight_amplitude: float,
                      learning_rate: float, batch_size: int) -> tuple[int, float]:
    """``(num_bundles, bundle_entropy)`` computed the way the reference does.

    Args:
        a: layer outputs, shape (N, ...).
        y: integer labels, shape (N,).
    """
    a = tf.cast(a, tf.float32)
    t = weight_amplitude - a * learning_rate * (1.0 / float(batch_size))
    t = tf.reshape(t, [tf.shape(t)[0], -1])
    y = tf.constant(y)
    bundle = tf.zeros(tf.shape(t)[0], dtype=tf.float32)
    entropy_sum = tf.constant(0.0, tf.float32)
    for i in range(len(t)):
        if bundle[i] != 0:
            continue
        bundle, entropy_sum = _grow_bundle(i, bundle, t, y, entropy_sum, num_classes)
    return int(tf.reduce_max(bundle)), float(entropy_sum) / float(len(t))


def _grow_bundle(i, bundle, t, y, entropy_sum, num_classes):
    """Assign every unassigned row equal to row i to a new bundle; add its entropy."""
    features = tf.cast(tf.shape(t)[1], tf.float32)
    new_id = tf.reduce_max(bundle) + 1.0
    samples = tf.shape(t)[0]
    unassigned = tf.cast(tf.less_equal(bundle, 0.0), tf.float32)
    bundle += tf.one_hot(i, samples, dtype=tf.float32) * new_id * unassigned
    unassigned = tf.cast(tf.less_equal(bundle, 0.0), tf.float32)
    matches = tf.reduce_sum(tf.cast(tf.equal(t[i], t), tf.float32), axis=-1)
    same = tf.cast(tf.greater_equal(matches, features), tf.float32)
    bundle += same * new_id * unassigned
    members = tf.cast(tf.boolean_mask(y, same), tf.int32)
    fractions = tf.math.bincount(members, minlength=num_classes, maxlength=num_classes,
                                 dtype=tf.float32)
    fractions /= tf.reduce_sum(fractions)
    entropy = -tf.reduce_sum(fractions * tf.math.log(fractions + 1e-5), axis=-1)
    return bundle, entropy_sum + tf.maximum(0.0, entropy) * tf.reduce_sum(same)
