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
loop, O(N^2 * D) for a healthy layer. Here, with the kernels of the running
Keras backend (`cb_keras._backend`; each kernel module's docstring gives
its details):

1. `transform` computes ``t`` so that every operation rounds exactly as the
   reference's separate float32 operations: no fused multiply-add and no
   reassociation (on TensorFlow: ops that are never XLA-compiled nor
   reordered; on JAX: each product rounded through an integer XOR with a
   run-time zero).
2. `fingerprint` turns each row into K = 4 integers. Float equality of two
   rows of ``t`` is bit equality (``t`` is never ``-0.0``, since ``w_max``
   is ``+0.0`` or positive, and NaN/inf rows are flagged, not grouped). The
   float32 bit pattern of every component is split into two 16-bit halves h, and
   each fingerprint is an exact integer weighted sum ``sum_d h_d * r_d`` over
   the 2D halves with fixed pseudo-random weights ``r_d``, computed by one
   matrix product whose result does not depend on the summation order.
   Equal rows therefore *always* get equal fingerprints. Distinct rows differ
   in some half, and all four fingerprints collide with probability at most
   2^-64 per pair of rows (below 1e-14 for all pairs of N = 512 samples).
   On TensorFlow, where the weights are held exactly in float64:

   =====================  ====  ==========================  ==================
   features D             k     collision bound per pair    N = 512 (1.3e5 pairs)
   =====================  ====  ==========================  ==================
   <= 4096                24    2^-96                       < 1e-23
   16384                  22    2^-88                       < 1e-21
   131072 (= 2^17)        19    2^-76                       < 2e-18
   1048576 (= 2^20, max)  16    2^-64                       < 1e-14
   =====================  ====  ==========================  ==================

   On JAX (32-bit integers) the bound is 2^-64 for every D.
3. `bundle_stats` groups identical fingerprint rows and computes the three
   numbers with segment sums.

Fingerprints can be computed batch by batch and concatenated: measuring all
L layers of a network keeps only ``N x L x 4`` integers. `cb_keras.measurement`
does exactly that inside one compiled function per forward batch.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import keras
import numpy as np

from cb_keras import validation
from cb_keras._backend import kernels
from cb_keras._backend.constants import ENTROPY_EPSILON, FINGERPRINT_HASHES  # noqa: F401

MAX_CLASSES = 2**31 - 1  # class indices are int32 in the graph
MAX_FEATURES = 2**20


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


transform = kernels.transform  # (N, ...) -> (N, D): t = w_max - ((a * lr) * (1 / bs))
diverged = kernels.diverged  # (N, K) fingerprints -> bool scalar: any row from NaN/inf?
all_finite = kernels.all_finite  # any tensor -> bool scalar: no NaN or inf (True if not float)
# mark_diverged(fingerprints, inputs_finite): every row -1 unless inputs_finite. A
# layer that received NaN or inf can still output finite numbers (a fused ReLU
# may turn NaN into 0), so its inputs decide divergence as well.
mark_diverged = kernels.mark_diverged
# bundle_stats(fingerprints (N, K), labels (N,), num_classes) -> (num_bundles,
# bundle_entropy, max_accuracy): an integer scalar and two float32 scalars. Traceable.
bundle_stats = kernels.bundle_stats


def fingerprint(activations: Any, weight_amplitude: Any, learning_rate: Any,
                inverse_batch_size: Any) -> Any:
    """Per-sample fingerprints of the transformed outputs, shape (N, 4), integers.

    Rows of `transform` that are equal (float equality) give equal rows here;
    distinct rows collide with probability <= 2^-64 (module docstring). A row
    holding NaN or inf gets the fingerprint (-1, -1, -1, -1) (see
    `diverged`); every other fingerprint is >= 0.

    Traceable (by the backend's compiler); arguments as in `transform`, the
    scalars as from `scalars`. Works on any batch of samples: the
    fingerprints of a layer can be computed batch by batch and concatenated
    along axis 0. On TensorFlow, do not call it under ``jit_compile=True``
    (module docstring, step 1).
    """
    features = check_features(activations.shape)
    return kernels.fingerprint(activations, weight_amplitude, learning_rate,
                               inverse_batch_size, features)


def check_features(shape: Any) -> int:
    """The number of features D per sample of activations of `shape` (N, ...).

    Raises ValueError unless D is static and in [1, MAX_FEATURES].
    """
    dims = tuple(shape)[1:]
    features = None if any(d is None for d in dims) else math.prod(dims)
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


def scalars(weight_amplitude: float, learning_rate: float, batch_size: int) -> tuple:
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
    return kernels.constants(_float32("weight_amplitude", weight_amplitude + 0.0),
                             learning_rate,
                             _positive_float32("1 / batch_size", 1.0 / batch_size))


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


def check_labels(labels: Any, num_samples: int, num_classes: int) -> np.ndarray:
    """Validate labels against N and C; returns them as an (N,) int32 array.

    Accepts shape (N,) or (N, 1) integer labels (NumPy or tensor). Raises
    TypeError for non-integer labels and ValueError for a wrong length,
    zero samples, or values outside [0, num_classes).
    """
    if validation.check_positive_int("num_classes", num_classes) > MAX_CLASSES:
        raise ValueError(
            f"num_classes={num_classes} is more than {MAX_CLASSES} (int32 class "
            "indices); pass the number of classes of the data set.")
    labels = np.asarray(keras.ops.convert_to_numpy(labels) if keras.ops.is_tensor(labels)
                        else labels)
    if labels.dtype.kind not in "iu":
        raise TypeError(
            f"labels must be integer class indices, got dtype {labels.dtype.name}; "
            "for one-hot labels pass np.argmax(y, axis=-1).")
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels.reshape(-1)
    if labels.ndim != 1:
        raise ValueError(f"labels must have shape (N,) or (N, 1), got {labels.shape}.")
    if labels.shape[0] != num_samples:
        raise ValueError(
            f"activations hold {num_samples} samples but labels hold {labels.shape[0]}; "
            "pass one label per sample.")
    if num_samples == 0:
        raise ValueError("activations hold zero samples; measure at least one sample.")
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        raise ValueError(
            f"labels must lie in [0, {num_classes}) for num_classes={num_classes}, "
            f"got values in [{low}, {high}].")
    return labels.astype(np.int32)


def class_columns(labels: Any, num_classes: int) -> tuple[Any, int]:
    """Labels as an (N,) int32 backend tensor and the one-hot width C' for `bundle_stats`, C' <= N.

    The metrics only depend on the classes present in the sample. When
    num_classes exceeds the N samples, the labels (N,) are renumbered by their
    rank among the classes present (same order, same metrics) and C' = N, so
    memory is O(N * min(C, N)) however large num_classes is.
    """
    labels = keras.ops.convert_to_numpy(labels)
    num_samples = int(labels.shape[0])
    if num_classes > num_samples:
        labels = np.unique(labels, return_inverse=True)[1].reshape(-1)
    return (keras.ops.convert_to_tensor(labels, "int32"),
            min(int(num_classes), num_samples))


def divergence_error() -> ValueError:
    """The error for activations that hold NaN or inf (training diverged)."""
    return ValueError(
        "activations contain NaN or inf: training diverged, so bundles are not "
        "defined. Lower the learning rate or check the input data.")


def _float32_overflow(activations: Any) -> ValueError | None:
    """The error for finite activations (e.g. float64) beyond float32's range, else None."""
    if keras.backend.standardize_dtype(activations.dtype) not in ("float64", "int64", "uint64"):
        return None
    largest = float(np.max(np.abs(
        np.asarray(keras.ops.convert_to_numpy(activations), dtype=np.float64))))
    if not math.isfinite(largest) or largest <= float(np.finfo(np.float32).max):
        return None
    return ValueError(
        f"activations are finite but overflow float32 (max |a| = {largest:.3g}; the largest "
        f"float32 is {float(np.finfo(np.float32).max):.4g}), the precision of the transform, "
        "so bundles are not defined. Scale the layer's outputs into float32's range.")


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
    if not keras.ops.is_tensor(activations):
        activations = np.asarray(activations)
    try:
        dtype = keras.backend.standardize_dtype(activations.dtype)
    except ValueError:  # strings, objects
        dtype = str(activations.dtype)
    if not dtype.startswith(("float", "bfloat", "int", "uint")):
        raise TypeError(f"activations must be numeric, got dtype {dtype}.")
    if len(activations.shape) < 1:
        raise ValueError(f"activations must have shape (N, ...), got {activations.shape}.")
    features = check_features(activations.shape)
    labels, columns = class_columns(
        check_labels(labels, activations.shape[0], num_classes), num_classes)
    num_bundles, entropy, max_accuracy, is_diverged = kernels.layer_metrics(
        activations, labels, scalars(weight_amplitude, learning_rate, batch_size),
        columns, features)
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


weight_amplitude_tensor = kernels.weight_amplitude  # variables -> float32 scalar max |w|
