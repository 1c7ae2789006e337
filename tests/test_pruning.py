"""cb_keras.pruning: residual blocks found, lesioned and removed (docs/method.md §4)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from cb_keras import pruning
from cb_keras.paper import models
from conftest import short_branch_block

IDENTITY_BLOCK = "stage1_block2"    # 64 -> 64 filters, stride 1
PROJECTION_BLOCK = "stage2_block1"  # 64 -> 128 filters, stride 2


def _randomize_batch_norms(model: keras.Model, seed: int = 1) -> None:
    """Non-trivial BN statistics, so inference differs from an identity per layer."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, variance = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape), rng.normal(size=beta.shape),
                               0.1 * rng.normal(size=mean.shape),
                               rng.uniform(0.5, 1.5, variance.shape)])


@pytest.fixture(scope="module")
def resnet() -> keras.Model:
    """A cb_keras ResNet with two identity blocks and one projection block."""
    keras.utils.set_random_seed(0)
    model = models.resnet([2, 1, 0, 0], (8, 8, 1), 10)
    _randomize_batch_norms(model)
    return model


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).random((16, 8, 8, 1)).astype("float32")


def _branch_parameters(model: keras.Model, block: str) -> int:
    """Parameters of the layers only a cb_keras block's branch uses."""
    return sum(model.get_layer(f"{block}_{part}").count_params()
               for part in ("conv1", "bn1", "conv2", "bn2"))


def test_blocks_of_a_cb_keras_resnet(resnet):
    blocks = pruning.residual_blocks(resnet)
    assert [b.name for b in blocks] == ["stage1_block1", IDENTITY_BLOCK, PROJECTION_BLOCK]
    assert all(b.shortcut_index == 0 for b in blocks)
    assert blocks[2].branches == (f"{PROJECTION_BLOCK}_branch_tap",)


@pytest.mark.parametrize("removed", [[IDENTITY_BLOCK], [PROJECTION_BLOCK],
                                     ["stage1_block1", IDENTITY_BLOCK, PROJECTION_BLOCK]])
def test_pruned_equals_lesioned_and_is_smaller(resnet, images, removed):
    pruned = pruning.remove_blocks(resnet, removed)
    expected = pruning.lesioned(resnet, removed)(images).numpy()
    np.testing.assert_allclose(pruned(images).numpy(), expected, rtol=1e-5, atol=1e-6)
    assert np.abs(resnet(images).numpy() - expected).max() > 1e-3  # the lesion matters
    removed_parameters = sum(_branch_parameters(resnet, block) for block in removed)
    assert pruned.count_params() == resnet.count_params() - removed_parameters
    assert pruning.weight_layers(pruned) == pruning.weight_layers(resnet) - 2 * len(removed)
    layer_names = {layer.name for layer in pruned.layers}
    for block in removed:
        assert f"{block}_conv1" not in layer_names and f"{block}_add" not in layer_names
        assert f"{block}_out" in layer_names
    assert (f"{PROJECTION_BLOCK}_proj_conv" in layer_names)


def test_pruned_model_is_independent_of_the_original(images):
    model = models.resnet([1, 1, 0, 0], (8, 8, 1), 10)
    pruned = pruning.remove_blocks(model, ["stage1_block1"])
    before = pruned(images).numpy()
    for weight in model.weights:
        weight.assign(weight + 1.0)
    np.testing.assert_array_equal(pruned(images).numpy(), before)


def test_lesion_switches_gates_without_new_models(resnet, images):
    lesion = pruning.Lesion(resnet)
    np.testing.assert_allclose(lesion.lesion([]).predict(images, verbose=0),
                               resnet.predict(images, verbose=0), rtol=1e-5, atol=1e-5)
    lesioned = lesion.lesion([IDENTITY_BLOCK]).predict(images, verbose=0)
    pruned = pruning.remove_blocks(resnet, [IDENTITY_BLOCK]).predict(images, verbose=0)
    np.testing.assert_allclose(lesioned, pruned, rtol=1e-5, atol=1e-6)


def test_savedmodel_and_keras_file_round_trip(resnet, images, tmp_path):
    pruned = pruning.remove_blocks(resnet, [IDENTITY_BLOCK, PROJECTION_BLOCK])
    expected = pruned(images).numpy()
    pruned.export(str(tmp_path / "saved"), verbose=False)
    served = tf.saved_model.load(str(tmp_path / "saved"))  # keep it: it owns the variables
    np.testing.assert_allclose(served.serve(tf.constant(images)).numpy(), expected,
                               rtol=1e-5, atol=1e-6)
    pruned.save(tmp_path / "pruned.keras")
    reloaded = keras.models.load_model(tmp_path / "pruned.keras")
    np.testing.assert_allclose(reloaded(images).numpy(), expected, rtol=1e-5, atol=1e-6)


def _user_resnet() -> keras.Model:
    """A functional ResNet in keras.applications naming, shortcut as the *second* Add input."""
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv1_conv")(inputs)
    x = keras.layers.Activation("relu", name="conv1_relu")(x)
    for name, filters, stride in (("conv2_block1", 8, 1), ("conv3_block1", 16, 2)):
        shortcut = x
        if stride > 1:
            shortcut = keras.layers.Conv2D(filters, 1, strides=stride, name=f"{name}_0_conv")(x)
            shortcut = keras.layers.BatchNormalization(name=f"{name}_0_bn")(shortcut)
        y = keras.layers.Conv2D(filters, 3, strides=stride, padding="same",
                                name=f"{name}_1_conv")(x)
        y = keras.layers.Activation("relu", name=f"{name}_1_relu")(y)
        y = keras.layers.Conv2D(filters, 3, padding="same", name=f"{name}_2_conv")(y)
        y = keras.layers.BatchNormalization(name=f"{name}_2_bn")(y)
        x = keras.layers.Add(name=f"{name}_add")([y, shortcut])
        x = keras.layers.Activation("relu", name=f"{name}_out")(x)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    outputs = keras.layers.Dense(5, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs)


def test_user_functional_resnet():
    keras.utils.set_random_seed(0)
    model = _user_resnet()
    _randomize_batch_norms(model)
    blocks = pruning.residual_blocks(model)
    assert [(b.name, b.shortcut_index, b.branches) for b in blocks] == [
        ("conv2_block1", 1, ("conv2_block1_2_bn",)), ("conv3_block1", 1, ("conv3_block1_2_bn",))]
    x = np.random.default_rng(0).random((8, 8, 8, 3)).astype("float32")
    for removed in (["conv2_block1"], ["conv3_block1"]):
        pruned = pruning.remove_blocks(model, removed)
        np.testing.assert_allclose(pruned(x).numpy(),
                                   pruning.lesioned(model, removed)(x).numpy(),
                                   rtol=1e-5, atol=1e-7)
        assert pruned.count_params() < model.count_params()


def test_keras_applications_resnet50():
    model = keras.applications.ResNet50(weights=None, input_shape=(32, 32, 3), classes=10)
    names = [block.name for block in pruning.residual_blocks(model)]
    assert len(names) == 16 and names[:2] == ["conv2_block1", "conv2_block2"]
    removed = ["conv2_block2", "conv3_block1", "conv5_block3"]  # identity and projection
    pruned = pruning.remove_blocks(model, removed)
    x = np.random.default_rng(0).random((2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(pruned(x).numpy(), pruning.lesioned(model, removed)(x).numpy(),
                               rtol=1e-5, atol=1e-7)
    assert pruning.weight_layers(pruned) == pruning.weight_layers(model) - 3 * len(removed)


def test_conflicting_blocks_finds_a_dead_branch(resnet):
    model = pruning.remove_blocks(resnet, [])  # a copy we may change
    bn2 = model.get_layer(f"{IDENTITY_BLOCK}_bn2")
    gamma, beta, mean, variance = bn2.get_weights()
    bn2.set_weights([np.zeros_like(gamma), np.zeros_like(beta), mean, variance])
    rng = np.random.default_rng(0)
    x = rng.random((64, 8, 8, 1)).astype("float32")
    y = rng.integers(0, 10, 64)
    found = pruning.conflicting_blocks(model, x, y, num_classes=10, learning_rate=1e-3,
                                       batch_size=64, samples=64)
    assert found.conflicting == [IDENTITY_BLOCK]
    assert found.non_conflicting == ["stage1_block1", PROJECTION_BLOCK]
    assert found.metrics(IDENTITY_BLOCK).num_bundles == 1
    assert found.report.num_samples == 64


def test_unknown_block_names_list_the_blocks(resnet):
    with pytest.raises(ValueError, match=r"\['stage1_block1_conv1'\] are not residual blocks"
                                         r".*\['stage1_block1', 'stage1_block2'"):
        pruning.remove_blocks(resnet, ["stage1_block1_conv1"])
    with pytest.raises(TypeError, match=r"pass \['stage1_block1'\]"):
        pruning.remove_blocks(resnet, "stage1_block1")


def test_networks_without_residual_blocks_are_refused():
    with pytest.raises(ValueError, match="has no residual blocks"):
        pruning.remove_blocks(models.vgg([1, 0, 0, 0], (8, 8, 1), 10), ["stage1_block1"])


def _layer_names(model: keras.Model) -> set[str]:
    return {layer.name for layer in model.layers}


def test_a_branch_shorter_than_its_projection_shortcut_is_removed():
    model = short_branch_block(branch_kernel=3)
    assert [(b.name, b.shortcut_index, b.branches) for b in pruning.residual_blocks(model)] \
        == [("blk", 0, ("branch",))]
    pruned = pruning.remove_blocks(model, ["blk"])
    assert "branch" not in _layer_names(pruned)
    assert {"proj", "proj_bn", "proj_relu"} <= _layer_names(pruned)
    x = np.random.default_rng(0).random((4, 8, 8, 1)).astype("float32")
    np.testing.assert_allclose(pruned(x).numpy(), pruning.lesioned(model, ["blk"])(x).numpy(),
                               rtol=1e-5, atol=1e-6)


def test_an_ambiguous_shortcut_is_asked_for():
    model = short_branch_block(branch_kernel=1)  # two paths with one 1x1 conv each
    with pytest.raises(ValueError, match=r"shortcut of residual block 'blk' cannot be told"
                                         r".*\['proj_relu', 'branch'\].*shortcuts=\{'blk': "):
        pruning.remove_blocks(model, ["blk"])
    pruned = pruning.remove_blocks(model, ["blk"], shortcuts={"blk": 0})
    assert "branch" not in _layer_names(pruned) and "proj" in _layer_names(pruned)
    assert pruning.Lesion(model, shortcuts={"blk": 1}).blocks[0].branches == ("proj_relu",)


@pytest.mark.parametrize("shortcuts, message", [
    ({"nope": 0}, r"shortcuts names \['nope'\], which are not residual blocks.*\['blk'\]"),
    ({"blk": 2}, r"shortcuts\['blk'\] must be the index of an input .*\(0 to 1, "),
    ({"blk": 1.0}, r"shortcuts\['blk'\] must be the index of an input"),
])
def test_bad_shortcuts_are_refused(shortcuts, message):
    with pytest.raises(ValueError, match=message):
        pruning.residual_blocks(short_branch_block(), shortcuts)


def test_weight_layers_counts_every_kind_of_the_registry():
    inputs = keras.Input((8, 8, 2))
    h = keras.layers.Conv2DTranspose(2, 3, padding="same", name="up")(inputs)
    h = keras.layers.Reshape((64, 2))(h)
    h = keras.layers.EinsumDense("abc,cd->abd", (64, 3), name="einsum")(h)
    h = keras.layers.SeparableConv1D(2, 3, name="sep")(h)
    outputs = keras.layers.Dense(4, name="logits")(keras.layers.Flatten()(h))
    assert pruning.weight_layers(keras.Model(inputs, outputs)) == 4
