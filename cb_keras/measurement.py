"""`measure`: the bundle metrics of a^(1)..a^(L) of a model on a fixed sample.

`measure(model, x, y, ...)` takes the first `samples` examples
(`cb_keras.inputs.take_sample`),
runs the probe model (`cb_keras.probe`) on them inside one compiled function per
forward batch that also fingerprints every measured output
(`bundles.fingerprint`; `tf.function` on TensorFlow, `jax.jit` on JAX), so
only ``N x L x 4`` integers leave the compiled function,
then groups the fingerprints per layer (`bundles.bundle_stats`) and returns a
`ConflictReport`. The probe and its traced functions are cached per model
and layer selection (`_measurer`).
"""

from __future__ import annotations

import math
import weakref
from typing import Any

import keras
import numpy as np

from cb_keras import bundles, validation
from cb_keras._backend import kernels
from cb_keras.inputs import sample_count, take_sample
from cb_keras.probe import LayersArg, check_layers, entry_points, probe_model, select_taps
from cb_keras.report import ConflictReport, LayerResult


def measure(model: keras.Model, x: Any, y: Any = None, *, num_classes: int,
            learning_rate: float, batch_size: int, layers: LayersArg = "auto",
            samples: int = 512, eval_batch_size: int | None = None) -> ConflictReport:
    """Bundle metrics (docs/method.md §1) of the outputs a^(1)..a^(L) of `model` on a fixed sample.

    Args:
        model: a functional or Sequential `keras.Model`.
        x: inputs, a NumPy array (N, ...) (or a nested structure of them
            matching the model's inputs), or a `tf.data.Dataset` of
            ``(x, y)`` batches (then `y` must be None).
        y: integer class labels, shape (N,) or (N, 1); None for a Dataset.
        num_classes: number of classes C.
        learning_rate: the training learning rate, > 0.
        batch_size: the *training* batch size (it enters the transform
            ``t = w_max - a * lr / bs``), a positive integer.
        layers: ``"auto"``/``"all"``, ``"last"`` or a list of layer names
            (see `probe`).
        samples: use the first `samples` examples of `x` (deterministic;
            fewer if `x` holds fewer). Default 512, as in the papers.
        eval_batch_size: samples per forward pass. Default None: the
            training `batch_size`, as the reference evaluates; this matters
            for `ScaledBranchTap` outputs, whose scales use the variance of
            one forward batch (a last, smaller batch gets its own scales).
            Every other output is per sample and does not depend on it.

    Returns:
        A `ConflictReport`: one `LayerResult` per measured output in graph
        order, and the metadata (num_samples, num_classes, weight_amplitude,
        learning_rate, batch_size). A layer whose outputs or inputs (or the
        model's inputs) hold NaN or inf is reported as ``diverged`` (its
        metrics are None/NaN, never numbers, and it is never conflicting);
        if the weights hold NaN or inf, every layer is (and the report's
        weight_amplitude is not finite).

    Raises:
        ValueError: invalid arguments (see `bundles.scalars`), a model
            without trainable weights, and the errors of `probe`.
        TypeError: `x` is not numeric arrays of shape (N, ...) (see
            `cb_keras.inputs.input_arrays`), or the errors of `probe`.

    The probe and its traced functions are cached per model and layer
    selection (held weakly: freed with the model), so measuring the same
    model again, e.g. every epoch, does not retrace. Works inside a
    `tf.distribute` strategy scope (the forward pass runs in cross-replica
    context on the current weights).

    Example:
        >>> report = measure(model, x_train, y_train, num_classes=10,
        ...                  learning_rate=1e-3, batch_size=64)
        >>> report.last.bundle_entropy, report.first_conflicting
    """
    sample_x, sample_y = take_sample(x, y, samples)
    num_samples = sample_count(sample_x)
    labels, columns = bundles.class_columns(
        bundles.check_labels(sample_y, num_samples, num_classes), num_classes)
    measurer = _measurer(model, layers)
    w_max = _weight_amplitude(model)
    if math.isfinite(w_max):
        constants = bundles.scalars(w_max, learning_rate, batch_size)
        results = measurer.measure(
            sample_x, labels, constants, columns,
            batch_size if eval_batch_size is None else eval_batch_size)
    else:  # the weights diverged, so no layer output is defined
        bundles.scalars(0.0, learning_rate, batch_size)  # still validate the arguments
        results = [LayerResult.diverged_layer(name) for name in measurer.names]
    return ConflictReport(
        layers=tuple(results), num_samples=num_samples, num_classes=int(num_classes),
        weight_amplitude=w_max, learning_rate=float(learning_rate),
        batch_size=int(batch_size))


def _weight_amplitude(model: keras.Model) -> float:
    """max |w| over the trainable weights (float), NaN or inf if they are not finite."""
    if not model.trainable_weights:
        return bundles.weight_amplitude(model)  # raises: nothing to measure against
    return float(bundles.weight_amplitude_tensor(model.trainable_weights))


class _Measurer:
    """A probe with its traced per-batch fingerprint function, reused across calls."""

    def __init__(self, model: keras.Model, layers: LayersArg):
        taps = select_taps(model, layers)
        self.names = [tap.name for tap in taps]
        entries, self.entries_of = entry_points(taps, keras.tree.flatten(model.inputs))
        self.probe = probe_model(model, taps, entries)
        self._fingerprint_batch = kernels.forward_function(self.probe, self._fingerprints)

    def measure(self, x: Any, labels: np.ndarray, constants: tuple, num_classes: int,
                eval_batch_size: int) -> list[LayerResult]:
        """Per-layer results on the sample `x` with (N,) int32 `labels`.

        `constants` are the float32 tensors ``(w_max, lr, 1/bs)`` of
        `bundles.scalars`; the sample goes through the probe in chunks of
        `eval_batch_size`.
        """
        num_samples = sample_count(x)
        if not validation.is_int(eval_batch_size) or eval_batch_size < 1:
            raise ValueError(
                f"eval_batch_size must be a positive integer or None, got {eval_batch_size!r}.")
        chunks = [self._fingerprint_batch(
                      keras.tree.map_structure(lambda a: a[start:start + eval_batch_size], x),
                      *constants)
                  for start in range(0, num_samples, eval_batch_size)]
        stats = kernels.stats_per_layer(keras.ops.concatenate(chunks, axis=1), labels,
                                        num_classes)
        return [_layer_result(name, *values) for name, values in
                zip(self.names, zip(*(keras.ops.convert_to_numpy(s) for s in stats)))]

    def _fingerprints(self, probe_outputs, w_max, learning_rate, inverse_batch_size) -> Any:
        """(L, n, K) fingerprints of the measured outputs, from the probe's outputs on a batch.

        Traced by the backend's compiler with the probe's forward pass
        (inference mode) on the batch (`kernels.forward_function`).

        A layer whose entries (`cb_keras.probe.entry_points`) hold NaN or inf gets the
        diverged fingerprint -1 in every row, whatever its outputs are.
        """
        outputs, entries = probe_outputs
        finite = [bundles.all_finite(entry) for entry in entries]
        fingerprints = []
        for name, indices in zip(self.names, self.entries_of):
            try:
                layer = bundles.fingerprint(
                    outputs[name], w_max, learning_rate, inverse_batch_size)
            except ValueError as error:
                raise ValueError(f"layer {name!r}: {error}") from error
            fingerprints.append(bundles.mark_diverged(
                layer, keras.ops.all(keras.ops.stack([finite[i] for i in indices]))))
        return keras.ops.stack(fingerprints)


def _layer_result(name: str, num_bundles, bundle_entropy, max_accuracy,
                  diverged) -> LayerResult:
    """One layer's result; a diverged layer gets no numbers."""
    if diverged:
        return LayerResult.diverged_layer(name)
    return LayerResult(name, int(num_bundles), float(bundle_entropy), float(max_accuracy))


_MEASURERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _measurer(model: keras.Model, layers: LayersArg) -> _Measurer:
    """The cached `_Measurer` of `model` for this layer selection and graph.

    The key includes the model's output tensors, so a Sequential model that
    gained or lost layers since is probed anew.
    """
    key = (check_layers(layers), tuple(map(id, getattr(model, "outputs", None) or ())))
    per_model = _MEASURERS.setdefault(model, {})
    if key not in per_model:
        per_model[key] = _Measurer(model, layers)
    return per_model[key]
