"""BesselBatchNormalization: the reference's moving variance, on any backend, and plain exports."""

import keras
import numpy as np
import pytest

from cb_keras.paper import models
from cb_keras.paper.batch_norm import BesselBatchNormalization
from cb_keras.paper.spec import NetworkSpec
from cb_keras.taps import strip_taps

MOMENTUM = 0.99  # Keras's default, the reference's
numpy = keras.ops.convert_to_numpy  # np.asarray fails on a PyTorch tensor that tracks gradients


def _batch_norms(model: keras.Model) -> list:
    return [layer for layer in model.layers
            if isinstance(layer, keras.layers.BatchNormalization)]


@pytest.mark.parametrize("kind", ["vgg", "resnet"])
def test_papers_networks_move_toward_the_unbiased_batch_variance(kind):
    # tf.keras 2.3's fused kernel (the reference's) moved the moving variance
    # toward var * n / (n - 1); Keras 3's layer moves it toward var.
    rng = np.random.default_rng(0)
    model = NetworkSpec(kind, [1, 1, 0, 0]).build((8, 8, 3), 4)
    layers = _batch_norms(model)
    assert layers and all(isinstance(layer, BesselBatchNormalization) for layer in layers)
    x = rng.normal(size=(6, 8, 8, 3)).astype("float32")
    y = np.arange(6) % 4
    # The inputs of every batch normalization in the training forward pass.
    inputs = [numpy(batch).astype(np.float64).reshape(-1, batch.shape[-1]) for batch in
              keras.Model(model.inputs, [layer.input for layer in layers])(x, training=True)]
    old = []
    for layer, batch in zip(layers, inputs):
        # Moving statistics well below the batch's, so the factor n / (n - 1)
        # (n >= 24) changes the new moving variance by far more than rounding.
        scale = rng.uniform(0.01, 0.1, size=batch.shape[1]) * batch.var(axis=0)
        old.append((rng.normal(size=batch.shape[1]).astype("float32"), scale.astype("float32")))
        layer.moving_mean.assign(old[-1][0])
        layer.moving_variance.assign(old[-1][1])

    model.compile(optimizer=keras.optimizers.SGD(0.0),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.train_on_batch(x, y)

    for layer, (mean, variance), batch in zip(layers, old, inputs):
        assert batch.shape[0] >= 24, layer.name  # n = 6 * 2 * 2 at the smallest
        np.testing.assert_allclose(
            np.array(layer.moving_variance),
            MOMENTUM * variance + (1 - MOMENTUM) * batch.var(axis=0, ddof=1),
            rtol=1e-5, err_msg=layer.name)
        np.testing.assert_allclose(
            np.array(layer.moving_mean), MOMENTUM * mean + (1 - MOMENTUM) * batch.mean(axis=0),
            rtol=1e-5, atol=1e-6, err_msg=layer.name)


@pytest.mark.parametrize("shape", [(4, 3, 5, 6), (1, 1, 1, 6)], ids=["n=60", "n=1"])
def test_statistics_equal_tensorflows_fused_kernel(shape):
    # The kernel tf.keras 2.3 ran for 4-D inputs; exponential_avg_factor = 1 - momentum.
    tf = pytest.importorskip("tensorflow")
    rng = np.random.default_rng(1)
    x = (rng.normal(size=shape) * 3.0 + 1.0).astype("float32")
    channels = shape[-1]
    gamma, beta = rng.uniform(0.5, 2, channels), rng.normal(size=channels)
    mean, variance = rng.normal(size=channels), rng.uniform(0.5, 2.0, channels)
    layer = BesselBatchNormalization()
    layer.build(shape)
    layer.set_weights([w.astype("float32") for w in (gamma, beta, mean, variance)])
    outputs = layer(x, training=True)

    fused = tf.raw_ops.FusedBatchNormV3(
        x=x, scale=gamma.astype("float32"), offset=beta.astype("float32"),
        mean=mean.astype("float32"), variance=variance.astype("float32"),
        epsilon=layer.epsilon, exponential_avg_factor=1 - MOMENTUM, is_training=True)
    np.testing.assert_allclose(np.array(layer.moving_mean), fused.batch_mean, rtol=1e-6,
                               atol=1e-7)
    np.testing.assert_allclose(np.array(layer.moving_variance), fused.batch_variance,
                               rtol=1e-6)
    np.testing.assert_allclose(np.asarray(outputs), fused.y, rtol=1e-5, atol=1e-5)


def test_inference_is_keras_and_serving_layer_copies_it():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(3, 4, 4, 5)).astype("float32")
    layer = BesselBatchNormalization(momentum=0.9, epsilon=1e-2, name="bn")
    layer.build(x.shape)
    layer.set_weights([rng.uniform(0.5, 2, 5).astype("float32") for _ in range(4)])
    copy = layer.serving_layer()
    assert type(copy) is keras.layers.BatchNormalization
    assert (copy.name, copy.momentum, copy.epsilon) == ("bn", 0.9, 1e-2)
    np.testing.assert_array_equal(numpy(copy(x, training=False)), numpy(layer(x, training=False)))
    copy.moving_variance.assign(np.ones(5, "float32"))  # a copy, not shared
    assert not np.array_equal(np.array(layer.moving_variance), np.ones(5))


def test_strip_taps_replaces_it_by_plain_batch_normalization():
    model = models.resnet([1, 1, 0, 0], (8, 8, 1), 10)
    stripped = strip_taps(model)
    layers = _batch_norms(stripped)
    assert sorted(layer.name for layer in layers) == sorted(
        layer.name for layer in _batch_norms(model))
    assert all(type(layer) is keras.layers.BatchNormalization for layer in layers)
    x = np.random.default_rng(3).normal(size=(2, 8, 8, 1)).astype("float32")
    np.testing.assert_array_equal(numpy(stripped(x)), numpy(model(x)))


@pytest.mark.parametrize("kwargs", [{"renorm": True}, {"synchronized": True}])
def test_rejects_modes_the_reference_kernel_lacked(kwargs):
    with pytest.raises(ValueError, match="keras.layers.BatchNormalization"):
        BesselBatchNormalization(**kwargs)


def test_rejects_a_mask_in_training():
    layer = BesselBatchNormalization()
    x = np.ones((2, 3, 4), "float32")
    with pytest.raises(ValueError, match="mask"):
        layer(x, training=True, mask=np.ones((2, 3), bool))
