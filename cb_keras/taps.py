"""Marker layers that tell the probe which outputs a^(l) to measure (docs/method.md §2).

A builder that knows its architecture (``cb_keras.paper.models``) places these
identity layers in the forward graph; `cb_keras.probe` finds them and reads
the measured tensor from them. They change nothing in the forward pass, hold
no weights and save and load with the model.

- `Tap`: marks its input, shape ``(batch, ...)``, as a measured output.
- `ScaledBranchTap`: marks the residual branch of a block. It is called on
  ``[branch, conv1, conv2]`` (the branch before the addition and the outputs
  of the block's two convolutions), returns ``branch`` unchanged, and the
  probe measures ``(branch * s2) * s1`` in float32, in that order, with
  ``s_k = 1.0 / sqrt(var(conv_k) + 1e-6)``, the variance taken over all axes
  of the evaluated forward batch: the reference implementation's scaling, the
  same operations in the same order (``models/residual_block.py`` of
  GitHub peerdavid/conflicting-bundles, commit 1a4c762; docs/method.md §2).
  The variance's summation order is TensorFlow's, so the scales agree with
  an independent float64 computation to float32 rounding (tests/test_probe.py). `cb_keras.measure` evaluates in forward
  batches of the training batch size, so each batch gets its own scales.
"""

from __future__ import annotations

import keras

from cb_keras._backend import kernels
from cb_keras._backend.constants import BRANCH_SCALE_EPSILON  # noqa: F401  (the scale's epsilon)


@keras.saving.register_keras_serializable(package="cb_keras")
class Tap(keras.layers.Layer):
    """Identity layer marking its input as a measured layer output a^(l)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True

    def call(self, inputs):
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape

    def measured(self, inputs):
        """The tensor to measure, built from this layer's (symbolic) inputs."""
        return inputs


@keras.saving.register_keras_serializable(package="cb_keras")
class ScaledBranchTap(Tap):
    """Identity on a residual branch; measured as branch * (s(conv1) * s(conv2)).

    Call it as ``ScaledBranchTap(name=...)([branch, conv1, conv2])``; it
    returns ``branch``. ``measured`` gives the reference scaling of
    docs/method.md §2: ``(branch * s2) * s1``.
    """

    def call(self, inputs):
        return inputs[0]

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def measured(self, inputs):
        return kernels.scaled_branch(*inputs)


def strip_taps(model: keras.Model) -> keras.Model:
    """`model` without its `Tap` layers, loadable by plain Keras (no cb_keras import).

    Taps are identities in the forward pass, and a layer with a
    ``serving_layer()`` method is replaced by the plain Keras layer it returns
    (the same inference; e.g.
    `cb_keras.paper.batch_norm.BesselBatchNormalization` becomes a
    ``keras.layers.BatchNormalization`` with a copy of its weights), so the
    result computes the same outputs; it shares every other layer (and so
    every weight) with `model`.
    Use it before saving a model as ``.keras`` for serving: a saved model
    with cb_keras layers needs ``import cb_keras`` to load.

    Args:
        model: a functional or Sequential Keras model (e.g. of `cb_keras.paper.models`).

    Returns:
        A functional ``keras.Model`` with the same inputs, outputs and name.

    Raises:
        ValueError: `model` is not functional (a subclassed model has no
            graph of layers to rebuild).
    """
    if not isinstance(model, keras.Model) or getattr(model, "inputs", None) is None:
        raise ValueError(f"strip_taps needs a functional or Sequential keras.Model, got "
                         f"{type(model).__name__}; build it with keras.Model(inputs, outputs).")
    functional = keras.Model(model.inputs, model.outputs, name=model.name)

    def call_function(layer, *args, **kwargs):
        if isinstance(layer, Tap):
            return layer.call(args[0])  # the identity on the symbolic inputs
        return layer(*args, **kwargs)

    def clone_function(layer):
        serving_layer = getattr(layer, "serving_layer", None)
        return serving_layer() if callable(serving_layer) else layer

    return keras.models.clone_model(functional, clone_function=clone_function,
                                    call_function=call_function)

