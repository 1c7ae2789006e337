"""A small vision transformer built from nested residual layers (``depth_prune``'s network).

``vit(input_shape, num_classes, blocks=6, dim=32, heads=2, patch=2)``: a
Conv2D patch embedding (``patch`` x ``patch`` patches, ``dim`` features),
learned position embeddings, ``blocks`` pre-norm `EncoderBlock` layers named
``encoder{i}`` (i from 0), a final LayerNormalization, mean pooling over the
tokens and a Dense layer of ``num_classes`` logits. Each `EncoderBlock` is one
residual block for `cb_keras.pruning` with ``layers=EncoderBlock``; it maps
``(batch, tokens, dim)`` to the same shape.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras


@keras.saving.register_keras_serializable(package="experiments")
class EncoderBlock(keras.layers.Layer):
    """Pre-norm transformer encoder layer: ``x + MHA(LN(x))``, then ``+ MLP(LN(.))``.

    Input and output ``(batch, tokens, dim)``; the MLP has ``mlp_ratio * dim``
    GELU units.
    """

    def __init__(self, heads: int, mlp_ratio: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.heads = heads
        self.mlp_ratio = mlp_ratio

    def build(self, input_shape):
        dim = input_shape[-1]
        self.norm1 = keras.layers.LayerNormalization(epsilon=1e-6, name="norm1")
        self.attention = keras.layers.MultiHeadAttention(self.heads, dim // self.heads,
                                                         name="attention")
        self.norm2 = keras.layers.LayerNormalization(epsilon=1e-6, name="norm2")
        self.hidden = keras.layers.Dense(self.mlp_ratio * dim, activation="gelu", name="hidden")
        self.out = keras.layers.Dense(dim, name="out")
        self.norm1.build(input_shape)
        self.attention.build(input_shape, input_shape)
        self.norm2.build(input_shape)
        self.hidden.build(input_shape)
        self.out.build(tuple(input_shape[:-1]) + (self.mlp_ratio * dim,))

    def call(self, x, training=None):
        h = self.norm1(x)
        x = x + self.attention(h, h, training=training)
        return x + self.out(self.hidden(self.norm2(x)))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "heads": self.heads, "mlp_ratio": self.mlp_ratio}


@keras.saving.register_keras_serializable(package="experiments")
class PositionEmbedding(keras.layers.Layer):
    """Adds a learned embedding ``(tokens, dim)`` to its input ``(batch, tokens, dim)``."""

    def build(self, input_shape):
        self.embedding = self.add_weight(
            shape=tuple(input_shape[1:]), initializer=keras.initializers.RandomNormal(0.0, 0.02),
            name="embedding")

    def call(self, x):
        return x + self.embedding

    def compute_output_shape(self, input_shape):
        return input_shape


def vit(input_shape: Sequence[int], num_classes: int, *, blocks: int = 6, dim: int = 32,
        heads: int = 2, patch: int = 2) -> keras.Model:
    """The uncompiled network of the module docstring, ``(batch, H, W, C) -> (batch, C) logits``.

    Raises:
        ValueError: H or W not divisible by `patch`, or `dim` by `heads`.
    """
    height, width = input_shape[:2]
    if height % patch or width % patch or dim % heads:
        raise ValueError(f"vit needs H and W ({height}, {width}) divisible by patch={patch} "
                         f"and dim={dim} divisible by heads={heads}.")
    inputs = keras.Input(tuple(input_shape))
    x = keras.layers.Conv2D(dim, patch, strides=patch, name="patches")(inputs)
    x = keras.layers.Reshape(((height // patch) * (width // patch), dim), name="tokens")(x)
    x = PositionEmbedding(name="positions")(x)
    for i in range(blocks):
        x = EncoderBlock(heads, name=f"encoder{i}")(x)
    x = keras.layers.LayerNormalization(epsilon=1e-6, name="final_norm")(x)
    x = keras.layers.GlobalAveragePooling1D(name="pool")(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes, name="logits")(x),
                       name=f"vit{blocks}")
