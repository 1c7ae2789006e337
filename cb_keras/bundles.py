"""The conflicting-bundle metric of one layer (docs/method.md §1), on tensors.

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
   operation rounds exactly as the reference: no fused multiply-add (it is
   never compiled with XLA, which contracts multiply and subtract), and no
   reassociation (the scalars enter as tensors, so constant folding leaves
   them alone, and the multiplies are ops that Grappler's arithmetic
   optimizer does not reorder).
2. `fingerprint` turns each row into K = 4 integers. Float equality of two
   rows of ``t`` is bit equality (``t`` is never ``-0.0``, since ``w_max``
   is ``+0.0`` or positive, and NaN/inf rows are flagged, not grouped). The
   float32 bit pattern of every component is split into two 16-bit halves h, and
   each fingerprint is ``sum_d h_d * r_d`` over the 2D halves, with fixed
   pseudo-random integer weights ``r_d`` in ``[0, 2^k)``. The halves and
   weights are held in float64 and k is chosen so that every partial sum
   stays below ``2^53`` (``k = min(24, 37 - ceil(log2(2D)))``): the product
   is then computed *exactly*, in any summation order, on any device, by one
   BLAS matrix product. Equal rows therefore *always* get equal fingerprints.
   Distinct rows differ in some half by a nonzero ``delta``; with all other
   weights fixed, at most one value of that half's weight makes the two sums
   agree, so one fingerprint collides with probability at most ``2^-k`` and
   all four with at most ``2^-4k`` per pair of rows:

   =====================  ====  ==========================  ==================
   features D             k     collision bound per pair    N = 512 (1.3e5 pairs)
   =====================  ====  ==========================  ==================
   <= 4096                24    2^-96                       < 1e-23
   16384                  22    2^-88                       < 1e-21
   131072 (= 2^17)        19    2^-76                       < 2e-18
   1048576 (= 2^20, max)  16    2^-64                       < 1e-14
   =====================  ====  ==========================  ==================

   Only this integer part is compiled with XLA (one fused pass plus the
   matrix product); the transform of step 1 never is.
3. `bundle_stats` groups identical fingerprint rows (a sort, O(N log N)) and
   computes the three numbers with segment sums.

Fingerprints can be computed batch by batch and concatenated: measuring all
L layers of a network keeps only ``N x L x 4`` integers. `cb_keras.measurement`
does exactly that inside its own `tf.function`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import tensorflow as tf

from cb_keras import validation

ENTROPY_EPSILON = 1e-5
MAX_CLASSES = 2**31 - 1  # class indices are int32 in the graph
FINGERPRINT_HASHES = 4
MAX_WEIGHT_BITS = 24
MAX_FEATURES = 2**20
_HASH_SEED = (20201104, 21030467)
_EXPONENT_MASK = 0x7F800000  # all exponent bits set: inf or NaN


@dataclasses.dataclass(frozen=True)
class BundleMetrics:
    """Bundle metrics of one layer.

    Attributes:
        num_bundles: number of distinct rows of the transformed outputs.
        bundle_entropy: docs/method.md §1 bundle entropy in nats, >= 0.
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
    features = a.shape[1:].num_elements()  # static when known, even if N is not
    a = tf.reshape(a, [-1, features] if features is not None else [tf.shape(a)[0], -1])
    # MulNoNan equals Mul for the nonzero lr and 1/bs, but Grappler's
    # arithmetic optimizer does not reassociate it: a chain of Mul ops with
    # scalars would become a * (lr * (1/bs)), which rounds differently.
    scaled = tf.math.multiply_no_nan(tf.math.multiply_no_nan(a, learning_rate),
                                     inverse_batch_size)
    return weight_amplitude - scaled


def fingerprint(activations: tf.Tensor, weight_amplitude: tf.Tensor,
                learning_rate: tf.Tensor, inverse_batch_size: tf.Tensor) -> tf.Tensor:
    """Per-sample fingerprints of the transformed outputs, shape (N, 4) int64.

    Rows of `transform` that are equal (float equality) give equal rows here;
    distinct rows collide with probability <= 2^-64 (module docstring). A row
    holding NaN or inf gets the fingerprint (-1, -1, -1, -1) (see
    `diverged`); every other fingerprint is >= 0.

    Traceable; arguments as in `transform`. Works on any batch of samples:
    the fingerprints of a layer can be computed batch by batch and
    concatenated along axis 0. Do not call it under ``jit_compile=True``
    (module docstring, step 1).
    """
    t = transform(activations, weight_amplitude, learning_rate, inverse_batch_size)
    features = check_features(activations.shape)
    return _hash_rows(tf.bitcast(t, tf.int32), _weight_bits(features))


def check_features(shape: tf.TensorShape) -> int:
    """The number of features D per sample of activations of `shape` (N, ...).

    Raises ValueError unless D is static and in [1, MAX_FEATURES].
    """
    features = tf.TensorShape(shape)[1:].num_elements()
    if features is None:
        raise ValueError(
            f"activations of shape {shape} have no static feature size; "
            "build the model with a fixed input shape (all but the batch axis).")
    if features < 1:
        raise ValueError(
            f"activations of shape {shape} have no features per sample (a zero-sized "
            "axis), so samples cannot differ; measure a layer with at least one output.")
    if features > MAX_FEATURES:
        raise ValueError(
            f"A layer with {features} features per sample is larger than the "
            f"{MAX_FEATURES} the exact fingerprint supports; measure a smaller "
            "layer (e.g. after pooling).")
    return features


def diverged(fingerprints: tf.Tensor) -> tf.Tensor:
    """Boolean scalar tensor: does any row of `fingerprints` come from NaN/inf?"""
    return tf.reduce_any(fingerprints < 0)


def all_finite(tensor: tf.Tensor) -> tf.Tensor:
    """Boolean scalar tensor: no NaN or inf in `tensor` (any shape; True if not floating)."""
    if not tensor.dtype.is_floating:
        return tf.constant(True)
    return tf.reduce_all(tf.math.is_finite(tensor))


def mark_diverged(fingerprints: tf.Tensor, inputs_finite: tf.Tensor) -> tf.Tensor:
    """`fingerprints` (N, K), every row set to -1 (diverged) unless `inputs_finite`.

    A layer that received NaN or inf can still output finite numbers (a fused
    ReLU may turn NaN into 0), so its inputs decide divergence as well.
    """
    return tf.where(inputs_finite, fingerprints, tf.constant(-1, fingerprints.dtype))


def _weight_bits(features: int) -> int:
    """Bits k of the hash weights so that every sum stays below 2^53 (exact in float64).

    A sum has 2 * features terms, each below 2^16 * 2^k.
    """
    return min(MAX_WEIGHT_BITS, 53 - 16 - math.ceil(math.log2(2 * features)))


@tf.function(jit_compile=True)
def _hash_rows(bits: tf.Tensor, weight_bits: int) -> tf.Tensor:
    """Exact weighted sums of the 16-bit halves of each row: (N, D) int32 -> (N, 4) int64.

    The halves and the weights are integers held exactly in float64, and
    every partial sum stays below 2^53, so the matrix product is exact in
    any summation order (and fast: one BLAS call). A collapsed layer (all
    rows equal, found in one fused pass) only hashes its first row.
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
    """Validated float32 tensors ``(w_max, lr, float32(1 / bs))`` for `fingerprint`.

    All three must be finite in float32, and lr and 1/bs nonzero after rounding
    to float32 (the transform's precision); otherwise a ValueError says which.
    """
    weight_amplitude = _real("weight_amplitude", weight_amplitude)
    if not math.isfinite(weight_amplitude):
        raise ValueError(
            f"weight_amplitude is {weight_amplitude}: the model's weights are not "
            "finite, so training diverged; lower the learning rate.")
    if weight_amplitude < 0:
        raise ValueError(
            f"weight_amplitude must be >= 0 (it is a max |w|), got {weight_amplitude!r}; "
            "use cb_keras.weight_amplitude(model).")
    learning_rate = check_learning_rate(learning_rate)
    batch_size = validation.check_positive_int("batch_size", batch_size)
    # `+ 0.0` turns -0.0 into +0.0, so that t = w_max - x is never -0.0 and
    # float equality of rows is bit equality of rows.
    return (tf.constant(_float32("weight_amplitude", weight_amplitude + 0.0), tf.float32),
            tf.constant(learning_rate, tf.float32),
            tf.constant(_positive_float32("1 / batch_size", 1.0 / batch_size),
                        tf.float32))


def check_learning_rate(learning_rate: float) -> np.float32:
    """The learning rate as float32; ValueError unless it is finite and > 0 in float32."""
    return _positive_float32("learning_rate", _real("learning_rate", learning_rate))


def _positive_float32(name: str, value: float) -> np.float32:
    """`value` (a float) rounded to float32; ValueError unless finite and > 0 there."""
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}.")
    rounded = _float32(name, value)
    if rounded == 0:
        raise ValueError(
            f"{name}={value!r} is 0 in float32, the precision of the transform "
            "t = w_max - a * lr / bs, so every layer would be a single bundle; "
            f"it must be at least {float(np.finfo(np.float32).smallest_subnormal):.1e}.")
    return rounded


def _float32(name: str, value: float) -> np.float32:
    """`value` (a float) as float32; ValueError if it does not fit (inf in float32)."""
    with np.errstate(over="ignore"):
        rounded = np.float32(value)
    if not np.isfinite(rounded):
        raise ValueError(
            f"{name}={value!r} is not finite in float32 (the precision of the transform; "
            f"the largest float32 is {float(np.finfo(np.float32).max):.4g}).")
    return rounded


def _real(name: str, value: Any) -> float:
    """`value` as a Python float; TypeError unless it is a real scalar (not bool or str)."""
    if isinstance(value, (bool, str, bytes)) or np.ndim(value) != 0:
        raise TypeError(f"{name} must be a real number, got {value!r}.")
    try:
        return float(value)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{name} must be a real number, got {value!r}.") from error


def check_labels(labels: Any, num_samples: int, num_classes: int) -> tf.Tensor:
    """Validate labels against N and C; returns them as an (N,) int32 tensor.

    Accepts shape (N,) or (N, 1) integer labels (NumPy or tensor). Raises
    TypeError for non-integer labels and ValueError for a wrong length,
    zero samples, or values outside [0, num_classes).
    """
    if validation.check_positive_int("num_classes", num_classes) > MAX_CLASSES:
        raise ValueError(
            f"num_classes={num_classes} is more than {MAX_CLASSES} (int32 class "
            "indices); pass the number of classes of the data set.")
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


def class_columns(labels: tf.Tensor, num_classes: int) -> tuple[tf.Tensor, int]:
    """Labels and the one-hot width C' for `bundle_stats`, with C' <= N.

    The metrics only depend on the classes present in the sample. When
    num_classes exceeds the N samples, the labels (N,) are renumbered by their
    rank among the classes present (same order, same metrics) and C' = N, so
    memory is O(N * min(C, N)) however large num_classes is.
    """
    num_samples = int(labels.shape[0])
    if num_classes <= num_samples:
        return labels, int(num_classes)
    _, ranks = np.unique(labels.numpy(), return_inverse=True)
    return tf.constant(ranks.reshape(-1), tf.int32), num_samples


def divergence_error() -> ValueError:
    """The error for activations that hold NaN or inf (training diverged)."""
    return ValueError(
        "activations contain NaN or inf: training diverged, so bundles are not "
        "defined. Lower the learning rate or check the input data.")


def _float32_overflow(activations: tf.Tensor) -> ValueError | None:
    """The error for finite activations (e.g. float64) beyond float32's range, else None."""
    if activations.dtype.size <= 4:
        return None
    largest = float(tf.reduce_max(tf.abs(tf.cast(activations, tf.float64))))
    if not math.isfinite(largest) or largest <= float(np.finfo(np.float32).max):
        return None
    return ValueError(
        f"activations are finite but overflow float32 (max |a| = {largest:.3g}; the largest "
        f"float32 is {float(np.finfo(np.float32).max):.4g}), the precision of the transform, "
        "so bundles are not defined. Scale the layer's outputs into float32's range.")


@tf.function
def _layer_metrics(activations, labels, weight_amplitude, learning_rate,
                   inverse_batch_size, num_classes):
    """One graph for `bundle_metrics`: fingerprints, grouping, metrics, divergence flag."""
    fingerprints = fingerprint(activations, weight_amplitude, learning_rate, inverse_batch_size)
    return bundle_stats(fingerprints, labels, num_classes) + (diverged(fingerprints),)


def bundle_metrics(activations: Any, labels: Any, *, num_classes: int,
                   weight_amplitude: float, learning_rate: float,
                   batch_size: int) -> BundleMetrics:
    """Bundle metrics of one layer's outputs (docs/method.md §1).

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
        TypeError: non-numeric activations, non-integer labels, or a
            learning rate or weight amplitude that is not a real number.
        ValueError: zero samples or zero features per sample, length
            mismatch, labels out of range, num_classes above 2**31 - 1, a
            learning rate or 1 / batch_size that is not > 0 in float32, a
            weight amplitude or learning rate beyond float32, NaN/inf
            activations, or finite ones that overflow float32.

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
    check_features(activations.shape)
    labels, columns = class_columns(
        check_labels(labels, activations.shape[0], num_classes), num_classes)
    wmax, lr, inverse_bs = scalars(weight_amplitude, learning_rate, batch_size)
    num_bundles, entropy, max_accuracy, is_diverged = _layer_metrics(
        activations, labels, wmax, lr, inverse_bs, columns)
    if is_diverged:
        raise _float32_overflow(activations) or divergence_error()
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
