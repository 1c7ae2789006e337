"""BatchNormalization whose moving variance tracks the unbiased batch variance, as the reference's.

The reference trained with ``tf.keras`` 2.3, whose ``BatchNormalization``
ran TensorFlow's fused kernel on 4-D inputs. That kernel normalises a batch
with its biased variance but moves the moving variance toward the
*unbiased* one, ``var * n / (n - 1)`` with ``n = batch * height * width``
the number of values per channel (Bessel's correction; ``n / 1`` for
``n = 1``, as the kernel). Keras 3's ``BatchNormalization`` moves it toward
the biased variance on every backend. `BesselBatchNormalization` differs
from it in that one respect and only in training; it is written with
``keras.ops`` alone, so it runs on every Keras backend.

At inference both layers compute the same function of the same weights, so
`BesselBatchNormalization.serving_layer` turns one into a
``keras.layers.BatchNormalization`` that plain Keras loads without cb_keras
(`cb_keras.taps.strip_taps` calls it before a network is saved for serving).
"""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="cb_keras")
class BesselBatchNormalization(keras.layers.BatchNormalization):
    """``keras.layers.BatchNormalization`` with the reference's moving variance.

    In training, for inputs ``(batch, ..., channels)`` with ``n`` values per
    channel, batch mean ``mu`` and biased batch variance ``var``:

        outputs         = gamma * (x - mu) / sqrt(var + epsilon) + beta
        moving_mean     = momentum * moving_mean + (1 - momentum) * mu
        moving_variance = momentum * moving_variance
                          + (1 - momentum) * var * n / max(n - 1, 1)

    Keras's layer omits the factor ``n / max(n - 1, 1)``. Inference, the
    arguments and the weights are Keras's. Not supported (ValueError): batch
    renormalisation, synchronized statistics and masks in training, which
    the reference's fused kernel did not have either.

    Example:
        >>> y = BesselBatchNormalization(name="stem_bn")(x)   # x: (batch, H, W, C)
    """

    def __init__(self, **kwargs):
        for option in ("renorm", "synchronized"):
            if kwargs.get(option):
                raise ValueError(
                    f"BesselBatchNormalization does not support {option}=True (the "
                    "reference's fused kernel had no such mode); use "
                    "keras.layers.BatchNormalization for it.")
        super().__init__(**kwargs)

    def call(self, inputs, training=None, mask=None):
        if not (training and self.trainable):
            return super().call(inputs, training=training, mask=mask)
        if mask is not None:
            raise ValueError(
                "BesselBatchNormalization does not take a mask in training; use "
                "keras.layers.BatchNormalization for masked inputs.")
        x = ops.cast(inputs, keras.backend.result_type(inputs.dtype, "float32"))
        mean, variance = ops.moments(x, axes=self._reduction_axes)
        count = ops.cast(ops.size(x) // ops.shape(x)[self.axis], x.dtype)
        bessel = count / ops.maximum(count - 1.0, 1.0)
        momentum = self.momentum
        self.moving_mean.assign(
            ops.cast(self.moving_mean, x.dtype) * momentum + mean * (1.0 - momentum))
        self.moving_variance.assign(
            ops.cast(self.moving_variance, x.dtype) * momentum
            + variance * bessel * (1.0 - momentum))
        outputs = ops.batch_normalization(
            x, mean, variance, axis=self.axis,
            offset=None if self.beta is None else ops.cast(self.beta, x.dtype),
            scale=None if self.gamma is None else ops.cast(self.gamma, x.dtype),
            epsilon=self.epsilon)
        return ops.cast(outputs, self.compute_dtype)

    def serving_layer(self) -> keras.layers.BatchNormalization:
        """A built ``keras.layers.BatchNormalization`` with this layer's config, name and weights.

        Its inference equals this layer's; it does not share the weights (a copy).
        """
        copy = keras.layers.BatchNormalization.from_config(self.get_config())
        copy.build_from_config(self.get_build_config())
        copy.set_weights(self.get_weights())
        return copy
