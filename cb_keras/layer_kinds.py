"""Which Keras layer classes are weight layers and which are activations (one registry).

The probe measures the activations of weight layers and the activation
layers (docs/method.md §2); the residual-block rule and
`cb_keras.pruning.weight_layers` count weight layers. All of them ask here,
so a layer class added to the registry counts everywhere.
"""

from __future__ import annotations

from typing import Any

import keras

# Layers with a kernel that a network's depth counts: dense and convolutional.
WEIGHT_LAYERS = (
    keras.layers.Dense, keras.layers.EinsumDense,
    keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D,
    keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose,
    keras.layers.Conv3DTranspose, keras.layers.DepthwiseConv1D,
    keras.layers.DepthwiseConv2D, keras.layers.SeparableConv1D,
    keras.layers.SeparableConv2D)
# Layers that are an activation function and nothing else (besides `Activation`).
ACTIVATION_LAYERS = (keras.layers.ReLU, keras.layers.LeakyReLU,
                     keras.layers.PReLU, keras.layers.ELU)
# Activation functions that do not make a hidden activation output.
NOT_HIDDEN_ACTIVATIONS = ("linear", "softmax", "log_softmax")


def is_weight_layer(layer: Any) -> bool:
    """Is `layer` a dense or convolutional layer (`WEIGHT_LAYERS`)?"""
    return isinstance(layer, WEIGHT_LAYERS)


def is_hidden_activation(layer: Any) -> bool:
    """Does `layer` output a hidden activation: an activation layer, or a weight
    layer or ``Activation`` with a fused non-linear, non-softmax activation?"""
    if isinstance(layer, ACTIVATION_LAYERS):
        return True
    if isinstance(layer, (keras.layers.Activation,) + WEIGHT_LAYERS):
        return activation_name(layer) not in NOT_HIDDEN_ACTIVATIONS
    return False


def activation_name(layer: Any) -> str:
    """The name of a layer's activation function ('linear' for none)."""
    activation = getattr(layer, "activation", None)
    return getattr(activation, "__name__", "linear") if activation is not None else "linear"
