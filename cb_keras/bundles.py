"""The conflicting-bundle metric of one layer (SPEC §1), on tensors.

The idea
--------
Take the outputs ``a`` of one layer for N training samples, shape ``(N, ...)``.
Gradient descent can only separate two samples i and j at this layer if the
difference between ``a_i`` and ``a_j`` survives being turned into a weight
update and added to the largest weight of the model. So we compute, in
float32 and in exactly this order,

    t = w_max - ((a * float32(lr)) * float32(1 / bs))          shape (N, D)

and call samples whose rows of ``t`` are *equal in every component* one
*bundle*. Every member of a bundle gets the same prediction from all later
layers, so:

- ``num_bundles``: the number of distinct rows of ``t``;
- ``bundle_entropy``: ``(1/N) * sum_b |b| * max(0, H_b)`` with
  ``H_b = -sum_c p_bc * ln(p_bc + 1e-5)`` and ``p_bc`` the fraction of bundle
  b with label c. A layer is *conflicting* iff this is > 0: some bundle holds
  samples of different classes, which no later layer can tell apart;
- ``max_accuracy``: ``(1/N) * sum_b max_c |{i in b: y_i = c}|``, the best
  training accuracy any network on top of this layer can reach on the sample.

How it is computed (fast and exact)
-----------------------------------
The reference implementation compares rows one sample at a time in a Python
loop, O(N^2 * D) for a healthy layer. Here:

1. `transform` computes ``t`` with separate float32 TensorFlow ops, so every
   operation rounds exactly as the reference (no fused multiply-add; the
   scalars enter as tensors, so no constant folding reassociates them).
2. `fingerprint` turns each row into K = 3 integers. The float32 bit pattern
   of every component (``-0.0`` canonicalised to ``+0.0`` so that float
   equality and bit equality agree) is split into two 16-bit halves h, and
   each fingerprint is ``sum_d h_d * r_d`` with fixed pseudo-random weights
   ``r_d`` in ``[0, 2^22)``. The sum never exceeds ``2^63`` for
   ``D <= 2^23`` features, so it is computed exactly in int64, in any order,
   on any device: equal rows *always* get equal fingerprints.
   Distinct rows differ in some half by a nonzero ``delta`` with
   ``|delta| < 2^16``; with all other weights fixed, at most one value of
   that half's weight makes the sums agree, so one fingerprint collides with
   probability at most ``2^-22`` and all three with at most ``2^-66`` per
   pair of rows: for N = 512 (about 1.3e5 pairs) below ``2e-15`` per layer.
   The kernel is one fused XLA loop over the ``(N, D)`` elements.
3. `bundle_stats` groups identical fingerprint rows (a sort, O(N log N)) and
   computes the three numbers with segment sums.

Fingerprints can be computed batch by batch and concatenated: measuring all
L layers of a network keeps only ``N x L x 3`` integers. The probe does
exactly that inside its own `tf.function`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import tensorflow as tf

ENTROPY_EPSILON = 1e-5
FINGERPRINT_HASHES = 3
HASH_WEIGHT_BITS = 22
MAX_FEATURES = 2**23
_HASH_SEED = (20201104, 21030467)


@dataclasses.dataclass(frozen=True)
class BundleMetrics:
    """Bundle metrics of one layer.

    Attributes:
        num_bundles: number of distinct rows of the transformed outputs.
        bundle_entropy: SPEC §1 bundle entropy in nats, >= 0.
        max_accuracy: upper bound on the training accuracy on the sample
            that any network on top of this layer can reach, in [0, 1].
    """

    num_bundles: int
    bundle_entropy: float
    max_accuracy: float

    @property
    def conflicting(self) -> bool:
        """True iff some bundle mixes classes (bundle_entropy > 0)."""
        return self.bundle_entropy > 0.0


def transform(activations: tf.Tensor, weight_amplitude: tf.Tensor,
              learning_rate: tf.Tensor, inverse_batch_size: tf.Tensor) -> tf.Tensor:
    """``t = w_max - ((a * lr) * (1 / bs))`` in float32, flattened to (N, D).

    Args:
        activations: layer outputs, shape (N, ...), any real dtype; cast to
            float32 first.
        weight_amplitude: float32 scalar, max |w| over all trainable weights.
        learning_rate: float32 scalar.
        inverse_batch_size: float32 scalar ``float32(1 / bs)`` (the division
            is done in float64 first, as the reference does).

    Returns:
        float32 tensor of shape (N, D), D the product of the trailing dims.
    """
    a = tf.cast(activations, tf.float32)
    a = tf.reshape(a, [tf.shape(a)[0], -1])
    return weight_amplitude - ((a * learning_rate) * inverse_batch_size)


def fingerprint(activations: tf.Tensor, weight_amplitude: tf.Tensor,
                learning_rate: tf.Tensor, inverse_batch_size: tf.Tensor) -> tf.Tensor:
    """Per-sample fingerprints of the transformed outputs, shape (N, 3) int64.

    Rows of `transform` that are equal (float equality) give equal rows here;
    distinct rows collide with probability <= 2^-66 (module docstring).
    Traceable; arguments as in `transform`. Works on any batch of samples:
    the fingerprints of a layer can be computed batch by batch and
    concatenated along axis 0.
    """
    t = transform(activations, weight_amplitude, learning_rate, inverse_batch_size)
    features = t.shape[1]
    if features is not None and features > MAX_FEATURES:
        raise ValueError(
            f"A layer with {features} features per sample is larger than the "
            f"{MAX_FEATURES} the exact fingerprint supports; measure a smaller "
            "layer (e.g. after pooling) or fewer spatial positions.")
    t = tf.where(tf.equal(t, 0.0), tf.zeros_like(t), t)  # -0.0 -> +0.0
    return _hash_rows(tf.bitcast(t, tf.int32))


@tf.function(jit_compile=True)
def _hash_rows(bits: tf.Tensor) -> tf.Tensor:
    """K exact weighted sums of the 16-bit halves of each row, (N, D) -> (N, K)."""
    features = tf.shape(bits)[1]
    weights = tf.random.stateless_uniform(
        [2, FINGERPRINT_HASHES, features], seed=_HASH_SEED,
        minval=0, maxval=2**HASH_WEIGHT_BITS, dtype=tf.int64)
    unsigned = tf.bitwise.bitwise_and(tf.cast(bits, tf.int64), 0xFFFFFFFF)
    low = tf.bitwise.bitwise_and(unsigned, 0xFFFF)
    high = tf.bitwise.right_shift(unsigned, 16)
    return (tf.reduce_sum(low[:, None, :] * weights[0][None], axis=-1)
            + tf.reduce_sum(high[:, None, :] * weights[1][None], axis=-1))


def bundle_stats(fingerprints: tf.Tensor, labels: tf.Tensor,
                 num_classes: int) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Group equal fingerprints and compute the metrics. Traceable.

    Args:
        fingerprints: (N, K) int64, from `fingerprint`.
        labels: (N,) integer class labels in [0, num_classes).
        num_classes: the number of classes C (a Python int).

    Returns:
        ``(num_bundles, bundle_entropy, max_accuracy)``: an int32 scalar and
        two float32 scalars.
    """
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


def scalars(weight_amplitude: float, learning_rate: float,
            batch_size: int) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Validated float32 tensors ``(w_max, lr, float32(1 / bs))`` for `fingerprint`."""
    if not np.isfinite(weight_amplitude):
        raise ValueError(
            f"weight_amplitude is {weight_amplitude}: the model's weights are not "
            "finite, so training diverged; lower the learning rate.")
    if not learning_rate > 0:
        raise ValueError(f"learning_rate must be > 0, got {learning_rate!r}.")
    if isinstance(batch_size, bool) or not float(batch_size).is_integer() or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    return (tf.constant(weight_amplitude, tf.float32),
            tf.constant(learning_rate, tf.float32),
            tf.constant(1.0 / int(batch_size), tf.float32))


def check_labels(labels: Any, num_samples: int, num_classes: int) -> tf.Tensor:
    """Validate labels against N and C; returns them as an (N,) int32 tensor.

    Accepts shape (N,) or (N, 1) integer labels (NumPy or tensor). Raises
    TypeError for non-integer labels and ValueError for a wrong length,
    zero samples, or values outside [0, num_classes).
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) \
            or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}.")
    labels = tf.convert_to_tensor(labels)
    if not labels.dtype.is_integer:
        raise TypeError(
            f"labels must be integer class indices, got dtype {labels.dtype.name}; "
            "for one-hot labels pass np.argmax(y, axis=-1).")
    if labels.shape.rank == 2 and labels.shape[1] == 1:
        labels = tf.reshape(labels, [-1])
    if labels.shape.rank != 1:
        raise ValueError(f"labels must have shape (N,) or (N, 1), got {labels.shape}.")
    if labels.shape[0] != num_samples:
        raise ValueError(
            f"activations hold {num_samples} samples but labels hold {labels.shape[0]}; "
            "pass one label per sample.")
    if num_samples == 0:
        raise ValueError("activations hold zero samples; measure at least one sample.")
    low, high = int(tf.reduce_min(labels)), int(tf.reduce_max(labels))
    if low < 0 or high >= num_classes:
        raise ValueError(
            f"labels must lie in [0, {num_classes}) for num_classes={num_classes}, "
            f"got values in [{low}, {high}].")
    return tf.cast(labels, tf.int32)


def check_finite(activations: tf.Tensor, layer: str = "activations") -> None:
    """Raise ValueError if `activations` hold NaN or inf (training diverged)."""
    if not bool(tf.reduce_all(tf.math.is_finite(tf.cast(activations, tf.float32)))):
        raise ValueError(
            f"{layer} contain NaN or inf: training diverged, so bundles are not "
            "defined. Lower the learning rate or check the input data.")


def bundle_metrics(activations: Any, labels: Any, *, num_classes: int,
                   weight_amplitude: float, learning_rate: float,
                   batch_size: int) -> BundleMetrics:
    """Bundle metrics of one layer's outputs (SPEC §1).

    Args:
        activations: outputs a^(l) for N samples, shape (N, ...), NumPy array
            or tensor of any float dtype (float16/bfloat16 included).
        labels: integer class labels, shape (N,) or (N, 1).
        num_classes: number of classes C.
        weight_amplitude: max |w| over all trainable weights of the model
            (see `weight_amplitude`).
        learning_rate: the training learning rate, > 0.
        batch_size: the training batch size, a positive integer.

    Returns:
        BundleMetrics(num_bundles, bundle_entropy, max_accuracy).

    Raises:
        TypeError: non-numeric activations or non-integer labels.
        ValueError: zero samples, length mismatch, labels out of range,
            non-positive learning rate or batch size, NaN/inf activations.

    Example:
        >>> m = bundle_metrics(np.zeros((4, 3)), [0, 1, 0, 1], num_classes=2,
        ...                    weight_amplitude=0.5, learning_rate=1e-3,
        ...                    batch_size=64)
        >>> m.num_bundles, round(m.max_accuracy, 2)
        (1, 0.5)
    """
    activations = tf.convert_to_tensor(activations)
    if not (activations.dtype.is_floating or activations.dtype.is_integer):
        raise TypeError(f"activations must be numeric, got dtype {activations.dtype.name}.")
    if activations.shape.rank is None or activations.shape.rank < 1:
        raise ValueError(f"activations must have shape (N, ...), got {activations.shape}.")
    labels = check_labels(labels, activations.shape[0], num_classes)
    wmax, lr, inverse_bs = scalars(weight_amplitude, learning_rate, batch_size)
    check_finite(activations)
    fingerprints = fingerprint(activations, wmax, lr, inverse_bs)
    num_bundles, entropy, max_accuracy = bundle_stats(fingerprints, labels, num_classes)
    return BundleMetrics(int(num_bundles), float(entropy), float(max_accuracy))


def weight_amplitude(model: Any) -> float:
    """Largest absolute value over all trainable weights of `model` (float).

    Raises ValueError if the model has no trainable weights or if any is NaN
    or inf (diverged training).
    """
    variables = list(model.trainable_weights)
    if not variables:
        raise ValueError(
            f"model {getattr(model, 'name', model)!r} has no trainable weights; "
            "build it (call it on data) or unfreeze its layers before measuring.")
    value = float(weight_amplitude_tensor(variables))
    if not np.isfinite(value):
        raise ValueError("The model's weights contain NaN or inf: training diverged.")
    return value


def weight_amplitude_tensor(variables: list) -> tf.Tensor:
    """Traceable max |w| over `variables`, a float32 scalar tensor."""
    return tf.reduce_max(tf.stack(
        [tf.reduce_max(tf.abs(tf.cast(tf.convert_to_tensor(v), tf.float32))) for v in variables]))
