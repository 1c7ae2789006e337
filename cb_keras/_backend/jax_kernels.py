"""The kernels of `cb_keras.bundles`, taps and `measure` on JAX (`jax.jit`).

The transform ``t = w_max - ((a * lr) * (1 / bs))`` must round like the
reference's separate float32 operations. XLA may contract a multiply and a
subtract into one fused multiply-add, or reassociate the two multiplies
(it does on GPUs, and on CPUs under ``--xla_cpu_enable_fast_math``), so each
product passes through an integer XOR with a zero that the compiler cannot
see (it is computed at run time from the learning rate's bits): the product
is then rounded to float32 before the next operation, as the reference does.

The fingerprint of a row: its float32 bit pattern split into 2D 16-bit
halves h, and ``sum_d h_d * r_d mod 2^32`` (low 31 bits kept) for each of 4
sets of fixed pseudo-random 32-bit weights ``r_d``: an integer matrix
product, exact in any summation order on any device (JAX has no float64
without ``jax_enable_x64``). Two distinct rows differ in some half by
``delta = 2^s * odd`` with ``s <= 15``, so one fingerprint collides with
probability at most ``2^(s - 31) <= 2^-16`` per pair, all four with at most
``2^-64``, for every layer width.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import keras
import numpy as np

from cb_keras._backend.constants import (BRANCH_SCALE_EPSILON, ENTROPY_EPSILON,
                                         FINGERPRINT_HASHES)

_HASH_SEED = 20201104
_EXPONENT_MASK = 0x7F800000  # all exponent bits set: inf or NaN


def constants(weight_amplitude, learning_rate, inverse_batch_size) -> tuple:
    """The float32 scalars of the transform as arrays (run-time arguments of the kernels)."""
    return tuple(jnp.asarray(value, jnp.float32)
                 for value in (weight_amplitude, learning_rate, inverse_batch_size))


def _rounded(x: jax.Array, zero: jax.Array) -> jax.Array:
    """`x` unchanged, but rounded to float32 before any later operation (no FMA, no reassociation)."""
    bits = jax.lax.bitcast_convert_type(x, jnp.int32) ^ zero
    return jax.lax.bitcast_convert_type(bits, jnp.float32)


def transform(activations, weight_amplitude, learning_rate, inverse_batch_size) -> jax.Array:
    """``t = w_max - ((a * lr) * (1 / bs))`` in float32, flattened to (N, D)."""
    a = jnp.asarray(activations).astype(jnp.float32)
    a = a.reshape(a.shape[0], -1)
    # lr is > 0 and finite, so its bits are a positive int32: the minimum is
    # 0 at run time, but not for the compiler.
    zero = jnp.minimum(jax.lax.bitcast_convert_type(learning_rate, jnp.int32), 0)
    scaled = _rounded(_rounded(a * learning_rate, zero) * inverse_batch_size, zero)
    return weight_amplitude - scaled


def fingerprint(activations, weight_amplitude, learning_rate, inverse_batch_size,
                features: int) -> jax.Array:
    """(N, 4) int32 fingerprints of `transform`'s rows, >= 0 (-1 rows: NaN or inf)."""
    t = transform(activations, weight_amplitude, learning_rate, inverse_batch_size)
    bits = jax.lax.bitcast_convert_type(t, jnp.uint32)
    weights = _hash_weights(features)
    sums = (jnp.dot(bits & 0xFFFF, weights[0], preferred_element_type=jnp.uint32)
            + jnp.dot(bits >> 16, weights[1], preferred_element_type=jnp.uint32))
    hashes = (sums & 0x7FFFFFFF).astype(jnp.int32)
    finite = jnp.all((bits & _EXPONENT_MASK) != _EXPONENT_MASK, axis=1, keepdims=True)
    return jnp.where(finite, hashes, -1)


@functools.cache
def _hash_weights(features: int) -> np.ndarray:
    """The fixed (2, D, 4) uint32 weights of the low and high halves (NumPy: fast to compile)."""
    return np.random.default_rng(_HASH_SEED).integers(
        0, 2**32, (2, features, FINGERPRINT_HASHES), dtype=np.uint32)


def diverged(fingerprints: jax.Array) -> jax.Array:
    """Boolean scalar: does any row of `fingerprints` come from NaN/inf?"""
    return jnp.any(fingerprints < 0)


def all_finite(tensor) -> jax.Array:
    """Boolean scalar: no NaN or inf in `tensor` (True if not floating)."""
    if not jnp.issubdtype(tensor.dtype, jnp.inexact):
        return jnp.asarray(True)
    return jnp.all(jnp.isfinite(tensor))


def mark_diverged(fingerprints: jax.Array, inputs_finite: jax.Array) -> jax.Array:
    """`fingerprints` (N, K), every row set to -1 (diverged) unless `inputs_finite`."""
    return jnp.where(inputs_finite, fingerprints, -1)


def bundle_stats(fingerprints: jax.Array, labels: jax.Array,
                 num_classes: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(num_bundles, bundle_entropy, max_accuracy)`` of (N, K) fingerprints. Traceable.

    Equal rows are found by a lexicographic sort; bundle b's class counts by
    a segment sum over N segments (the unused ones are empty and add 0).
    """
    num_samples = fingerprints.shape[0]
    order = jnp.lexsort(tuple(fingerprints[:, k] for k in reversed(range(fingerprints.shape[1]))))
    rows = fingerprints[order]
    starts = jnp.concatenate([jnp.ones(1, bool), jnp.any(rows[1:] != rows[:-1], axis=1)])
    sorted_bundle = jnp.cumsum(starts.astype(jnp.int32)) - 1
    bundle_of_sample = jnp.zeros(num_samples, jnp.int32).at[order].set(sorted_bundle)
    counts = jax.ops.segment_sum(
        jax.nn.one_hot(labels.astype(jnp.int32), num_classes, dtype=jnp.float32),
        bundle_of_sample, num_segments=num_samples)  # (N, C): class c in bundle b
    sizes = jnp.sum(counts, axis=1)
    fractions = counts / jnp.where(sizes > 0, sizes, 1.0)[:, None]
    entropy = -jnp.sum(fractions * jnp.log(fractions + ENTROPY_EPSILON), axis=1)
    bundle_entropy = jnp.sum(sizes * jnp.maximum(entropy, 0.0)) / num_samples
    max_accuracy = jnp.sum(jnp.max(counts, axis=1)) / num_samples
    return sorted_bundle[-1] + 1, bundle_entropy, max_accuracy


@functools.partial(jax.jit, static_argnums=(3, 4))
def layer_metrics(activations, labels, constants_: tuple, num_classes: int, features: int):
    """``(num_bundles, bundle_entropy, max_accuracy, diverged)`` of one layer, one XLA program."""
    fingerprints = fingerprint(activations, *constants_, features)
    return bundle_stats(fingerprints, labels, num_classes) + (diverged(fingerprints),)


def weight_amplitude(variables: list) -> jax.Array:
    """max |w| over `variables`, a float32 scalar."""
    return jnp.max(jnp.stack([jnp.max(jnp.abs(jnp.asarray(keras.ops.convert_to_tensor(v),
                                                          jnp.float32)))
                              for v in variables]))


def scaled_branch(branch, conv1, conv2) -> jax.Array:
    """The reference's residual branch ``(branch * s2) * s1`` in float32 (`cb_keras.taps`)."""
    return (jnp.asarray(branch, jnp.float32) * _scale(conv2)) * _scale(conv1)


def _scale(x) -> jax.Array:
    """``1.0 / sqrt(var(x) + 1e-6)`` in float32 over all axes; NaN for an infinite variance."""
    variance = jnp.var(jnp.asarray(x, jnp.float32))
    scale = 1.0 / jnp.sqrt(variance + BRANCH_SCALE_EPSILON)
    return jnp.where(jnp.isfinite(variance), scale, jnp.float32(float("nan")))


def forward_function(probe, fingerprints_fn):
    """``run(x, *constants)``: the probe's forward pass and `fingerprints_fn` in one `jax.jit`.

    The weights are arguments (`stateless_call`), not constants of the
    trace, so one compiled program serves every epoch.
    """
    @jax.jit
    def run(trainable, non_trainable, x, *constants_):
        outputs, _ = probe.stateless_call(trainable, non_trainable, x, training=False)
        return fingerprints_fn(outputs, *constants_)

    def call(x, *constants_):
        return run([v.value for v in probe.trainable_variables],
                   [v.value for v in probe.non_trainable_variables], x, *constants_)
    return call


@functools.partial(jax.jit, static_argnums=2)
def stats_per_layer(fingerprints: jax.Array, labels: jax.Array,
                    num_classes: int) -> tuple[jax.Array, ...]:
    """(L, N, K) fingerprints -> (L,) num_bundles, bundle_entropy, max_accuracy, diverged."""
    return jax.vmap(lambda layer: bundle_stats(layer, labels, num_classes)
                    + (diverged(layer),))(fingerprints)
