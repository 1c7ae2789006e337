"""The kernels of `cb_keras.bundles`, taps and `measure` on TensorFlow.

The transform ``t = w_max - ((a * lr) * (1 / bs))`` uses separate float32
TensorFlow ops, so every operation rounds exactly as the reference: no fused
multiply-add (it is never compiled with XLA, which contracts multiply and
subtract), and no reassociation (the scalars enter as tensors, so constant
folding leaves them alone, and the multiplies are MulNoNan ops, which
Grappler's arithmetic optimizer does not reorder). Only the integer
fingerprint is compiled with XLA.

The fingerprint of a row: its float32 bit pattern split into 2D 16-bit
halves h, and ``sum_d h_d * r_d`` for each of 4 sets of fixed pseudo-random
integer weights ``r_d`` in ``[0, 2^k)``, held in float64 with k chosen so that
every partial sum stays below ``2^53`` (`cb_keras._backend.constants.weight_bits`):
the product is then exact in any summation order, on any device, by one BLAS
matrix product. One fingerprint collides with probability at most ``2^-k``
per pair of distinct rows, all four with at most ``2^-4k`` (<= 2^-64).
"""

from __future__ import annotations

import tensorflow as tf

from cb_keras._backend.constants import (BRANCH_SCALE_EPSILON, ENTROPY_EPSILON,
                                         FINGERPRINT_HASHES, weight_bits)

_HASH_SEED = (20201104, 21030467)
_EXPONENT_MASK = 0x7F800000  # all exponent bits set: inf or NaN


def constants(weight_amplitude, learning_rate, inverse_batch_size) -> tuple:
    """The float32 scalars of the transform as tensors (never folded as constants)."""
    return tuple(tf.constant(value, tf.float32)
                 for value in (weight_amplitude, learning_rate, inverse_batch_size))


def transform(activations: tf.Tensor, weight_amplitude: tf.Tensor,
              learning_rate: tf.Tensor, inverse_batch_size: tf.Tensor) -> tf.Tensor:
    """``t = w_max - ((a * lr) * (1 / bs))`` in float32, flattened to (N, D)."""
    a = tf.cast(activations, tf.float32)
    features = a.shape[1:].num_elements()  # static when known, even if N is not
    a = tf.reshape(a, [-1, features] if features is not None else [tf.shape(a)[0], -1])
    # MulNoNan equals Mul for the nonzero lr and 1/bs, but Grappler's
    # arithmetic optimizer does not reassociate it: a chain of Mul ops with
    # scalars would become a * (lr * (1/bs)), which rounds differently.
    scaled = tf.math.multiply_no_nan(tf.math.multiply_no_nan(a, learning_rate),
                                     inverse_batch_size)
    return weight_amplitude - scaled


def fingerprint(activations, weight_amplitude, learning_rate, inverse_batch_size,
                features: int) -> tf.Tensor:
    """(N, 4) int64 fingerprints of `transform`'s rows (-1 rows: NaN or inf)."""
    t = transform(activations, weight_amplitude, learning_rate, inverse_batch_size)
    return _hash_rows(tf.bitcast(t, tf.int32), weight_bits(features))


@tf.function(jit_compile=True)
def _hash_rows(bits: tf.Tensor, weight_bits: int) -> tf.Tensor:
    """Exact weighted sums of the 16-bit halves of each row: (N, D) int32 -> (N, 4) int64.

    A collapsed layer (all rows equal, found in one fused pass) only hashes
    its first row.
    """
    features = bits.shape[1]
    weights = tf.cast(tf.random.stateless_uniform(
        [2, features, FINGERPRINT_HASHES], seed=_HASH_SEED,
        minval=0, maxval=2**weight_bits, dtype=tf.int64), tf.float64)

    def weighted_sums(rows):
        low = tf.cast(tf.bitwise.bitwise_and(rows, 0xFFFF), tf.float64)
        high = tf.cast(tf.bitwise.bitwise_and(tf.bitwise.right_shift(rows, 16), 0xFFFF),
                       tf.float64)
        return tf.cast(tf.matmul(low, weights[0]) + tf.matmul(high, weights[1]), tf.int64)

    collapsed = tf.reduce_all(tf.equal(bits, bits[:1]))
    sums = tf.cond(collapsed,
                   lambda: tf.tile(weighted_sums(bits[:1]), [tf.shape(bits)[0], 1]),
                   lambda: weighted_sums(bits))
    exponent = tf.bitwise.bitwise_and(bits, _EXPONENT_MASK)
    finite = tf.reduce_all(tf.not_equal(exponent, _EXPONENT_MASK), axis=1, keepdims=True)
    return tf.where(finite, sums, tf.constant(-1, tf.int64))


def diverged(fingerprints: tf.Tensor) -> tf.Tensor:
    """Boolean scalar tensor: does any row of `fingerprints` come from NaN/inf?"""
    return tf.reduce_any(fingerprints < 0)


def all_finite(tensor: tf.Tensor) -> tf.Tensor:
    """Boolean scalar tensor: no NaN or inf in `tensor` (True if not floating)."""
    if not tensor.dtype.is_floating:
        return tf.constant(True)
    return tf.reduce_all(tf.math.is_finite(tensor))


def mark_diverged(fingerprints: tf.Tensor, inputs_finite: tf.Tensor) -> tf.Tensor:
    """`fingerprints` (N, K), every row set to -1 (diverged) unless `inputs_finite`."""
    return tf.where(inputs_finite, fingerprints, tf.constant(-1, fingerprints.dtype))


def bundle_stats(fingerprints: tf.Tensor, labels: tf.Tensor,
                 num_classes: int) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """``(num_bundles, bundle_entropy, max_accuracy)`` of (N, K) fingerprints. Traceable."""
    unique_rows, bundle_of_sample = tf.raw_ops.UniqueV2(x=fingerprints, axis=[0])
    num_bundles = tf.shape(unique_rows)[0]
    counts = tf.math.unsorted_segment_sum(
        tf.one_hot(tf.cast(labels, tf.int32), num_classes, dtype=tf.float32),
        bundle_of_sample, num_bundles)  # (B, C): samples of class c in bundle b
    sizes = tf.reduce_sum(counts, axis=1)
    fractions = counts / sizes[:, None]
    entropy = -tf.reduce_sum(fractions * tf.math.log(fractions + ENTROPY_EPSILON), axis=1)
    num_samples = tf.cast(tf.shape(fingerprints)[0], tf.float32)
    bundle_entropy = tf.reduce_sum(sizes * tf.maximum(entropy, 0.0)) / num_samples
    max_accuracy = tf.reduce_sum(tf.reduce_max(counts, axis=1)) / num_samples
    return num_bundles, bundle_entropy, max_accuracy


def layer_metrics(activations, labels, constants_: tuple, num_classes: int, features: int):
    """``(num_bundles, bundle_entropy, max_accuracy, diverged)`` of one layer, one graph.

    `constants_` as from `constants`; `features` is D, the features per sample.
    """
    return _layer_metrics(activations, labels, *constants_, num_classes, features)


@tf.function
def _layer_metrics(activations, labels, weight_amplitude, learning_rate,
                   inverse_batch_size, num_classes, features):
    fingerprints = fingerprint(activations, weight_amplitude, learning_rate,
                               inverse_batch_size, features)
    return bundle_stats(fingerprints, labels, num_classes) + (diverged(fingerprints),)


def weight_amplitude(variables: list) -> tf.Tensor:
    """Traceable max |w| over `variables`, a float32 scalar tensor."""
    return tf.reduce_max(tf.stack(
        [tf.reduce_max(tf.abs(tf.cast(tf.convert_to_tensor(v), tf.float32))) for v in variables]))


def scaled_branch(branch, conv1, conv2) -> tf.Tensor:
    """The reference's residual branch ``(branch * s2) * s1`` in float32 (`cb_keras.taps`)."""
    branch = tf.cast(branch, tf.float32)
    # MulNoNan equals Mul here (a scale is never 0: `_scale` turns the one
    # way to get 0 into NaN), but Grappler's arithmetic optimizer would
    # reassociate two plain Muls by scalars into branch * (s2 * s1),
    # which rounds differently from the reference in about a third of
    # the values.
    return tf.math.multiply_no_nan(tf.math.multiply_no_nan(branch, _scale(conv2)),
                                   _scale(conv1))


def _scale(x):
    """``1.0 / sqrt(var(x) + 1e-6)`` in float32, the variance over all axes of `x`.

    A division, not rsqrt (they round differently). An infinite variance
    would give a scale of 0 and hide a diverged branch; it gives NaN instead,
    so the layer is reported as diverged.
    """
    variance = tf.math.reduce_variance(tf.cast(x, tf.float32))
    scale = 1.0 / tf.math.sqrt(variance + BRANCH_SCALE_EPSILON)
    return tf.where(tf.math.is_finite(variance), scale, tf.constant(float("nan")))


def forward_function(probe, fingerprints_fn):
    """``run(x, *constants)``: the probe's forward pass and `fingerprints_fn` in one graph.

    Not reduce_retracing: the fingerprint needs a static batch size to know
    the feature size, so each chunk size gets its own trace (at most two per
    sample size: full chunks and the remainder).
    """
    @tf.function
    def run(x, *constants_):
        return fingerprints_fn(probe(x, training=False), *constants_)
    return run


@tf.function(reduce_retracing=True)
def stats_per_layer(fingerprints: tf.Tensor, labels: tf.Tensor,
                    num_classes: int) -> tuple[tf.Tensor, ...]:
    """(L, N, K) fingerprints -> (L,) num_bundles, bundle_entropy, max_accuracy, diverged.

    One graph for every model (the layer axis is a loop), so measuring many
    models does not retrace it.
    """
    return tf.map_fn(
        lambda layer: bundle_stats(layer, labels, num_classes) + (diverged(layer),),
        fingerprints, fn_output_signature=(tf.int32, tf.float32, tf.float32, tf.bool))
