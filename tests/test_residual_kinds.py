"""cb_keras.pruning on the three kinds of residual block: Add layers, the ``+`` operator
and nested layers (``layers=``); ConvNeXt, a custom residual layer, KerasHub backbones."""

import json
import subprocess
import sys

import keras
import numpy as np
import pytest

from cb_keras import pruning


@keras.saving.register_keras_serializable(package="cb_keras_tests")
class ResidualMLP(keras.layers.Layer):
    """A custom nested residual layer: ``x + Dense(relu(Dense(x)))`` on the last axis."""

    def build(self, input_shape):
        self.hidden = keras.layers.Dense(2 * input_shape[-1], activation="relu", name="hidden")
        self.out = keras.layers.Dense(input_shape[-1], name="out")
        self.hidden.build(input_shape)
        self.out.build(tuple(input_shape[:-1]) + (2 * input_shape[-1],))

    def call(self, x):
        return x + self.out(self.hidden(x))


def residual_mlp(features: int, width: int, blocks: int, seed: int) -> keras.Model:
    """``(batch, features) -> (batch, 3)``: an embedding, `blocks` ResidualMLP layers
    ``mlp0``, ``mlp1``, ... of `width` units, and a head; initialized with `seed`."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((features,))
    h = keras.layers.Dense(width, name="embed")(inputs)
    for i in range(blocks):
        h = ResidualMLP(name=f"mlp{i}")(h)
    return keras.Model(inputs, keras.layers.Dense(3, name="head")(h))


def nested_block(width: int, name: str) -> keras.Model:
    """A residual block as a nested functional model of standard layers (x + f(x))."""
    inputs = keras.Input((None, width))
    h = keras.layers.Dense(width, activation="relu", name=f"{name}_fc")(inputs)
    return keras.Model(inputs, keras.layers.Add()([inputs, h]), name=name)


def three_kinds(shape=(3, 4, 6)) -> keras.Model:
    """One block of each kind: blk1 (an Add layer), blk2 (``+``), blk3 (ResidualMLP)."""
    inputs = keras.Input(shape)
    x = keras.layers.Dense(8, name="stem")(inputs)
    h = keras.layers.Dense(8, activation="tanh", name="blk1_fc")(x)
    x = keras.layers.Add(name="blk1_add")([x, h])
    h = keras.layers.Dense(8, activation="relu", name="blk2_fc1")(x)
    x = x + keras.layers.Dense(8, name="blk2_fc2")(h)
    x = ResidualMLP(name="blk3")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="head")(x), name="three_kinds")


@pytest.fixture(scope="module")
def model() -> keras.Model:
    keras.utils.set_random_seed(0)
    return three_kinds()


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(16, 3, 4, 6)).astype("float32")


def _numpy(outputs):
    return keras.ops.convert_to_numpy(outputs)


def test_the_three_kinds_are_found_in_graph_order(model):
    blocks = pruning.residual_blocks(model, layers=ResidualMLP)
    assert [(b.name, b.kind, b.shortcut_index, b.branches) for b in blocks] == [
        ("blk1", "add", 0, ("blk1_fc",)), ("blk2", "operator", 0, ("blk2_fc2",)),
        ("blk3", "layer", 0, ("blk3_branch",))]
    assert [b.name for b in pruning.residual_blocks(model)] == ["blk1", "blk2"]
    for selector in ("blk3", ["blk3"], (ResidualMLP,),
                     lambda layer: isinstance(layer, ResidualMLP)):
        assert [b.name for b in pruning.residual_blocks(model, layers=selector)][-1] == "blk3"


@pytest.mark.parametrize("removed", [["blk1"], ["blk2"], ["blk3"], ["blk1", "blk2", "blk3"]])
def test_pruned_equals_lesioned_for_every_kind(model, x, removed):
    pruned = pruning.remove_blocks(model, removed, layers=ResidualMLP)
    expected = _numpy(pruning.lesioned(model, removed, layers=ResidualMLP)(x))
    np.testing.assert_allclose(_numpy(pruned(x)), expected, rtol=1e-6, atol=1e-6)
    assert np.abs(_numpy(model(x)) - expected).max() > 1e-3  # the lesion matters
    assert pruned.count_params() < model.count_params()
    names = {layer.name for layer in pruned.layers}
    gone = {"blk1": {"blk1_fc"}, "blk2": {"blk2_fc1", "blk2_fc2"}, "blk3": {"blk3"}}
    for block in removed:
        assert not gone[block] & names


def test_lesion_gates_are_exact_when_open(model, x):
    lesion = pruning.Lesion(model, layers=ResidualMLP)
    np.testing.assert_array_equal(_numpy(lesion.lesion([])(x)), _numpy(model(x)))


def test_a_custom_residual_layer_is_pruned_to_a_working_smaller_model():
    model = residual_mlp(features=5, width=12, blocks=4, seed=1)
    pruned = pruning.remove_blocks(model, ["mlp1", "mlp3"], layers=ResidualMLP)
    assert [layer.name for layer in pruned.layers if isinstance(layer, ResidualMLP)] \
        == ["mlp0", "mlp2"]
    x = np.random.default_rng(2).normal(size=(32, 5)).astype("float32")
    y = np.random.default_rng(3).integers(0, 3, 32)
    pruned.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    assert np.isfinite(pruned.fit(x, y, epochs=1, verbose=0).history["loss"][0])


def test_standard_layer_exports_load_in_plain_keras(tmp_path):
    """``+`` blocks and nested functional blocks: the pruned .keras file needs no cb_keras."""
    keras.utils.set_random_seed(2)
    inputs = keras.Input((4, 6))
    x = keras.layers.Dense(8, name="stem")(inputs)
    for i in range(3):
        x = x + keras.layers.Dense(8, activation="relu", name=f"op{i}_fc")(x)
        x = nested_block(8, f"nest{i}")(x)
    model = keras.Model(inputs, keras.layers.Dense(2, name="head")(x))
    layers = lambda layer: layer.name.startswith("nest")  # noqa: E731
    names = [b.name for b in pruning.residual_blocks(model, layers=layers)]
    assert names == ["op0_fc", "nest0", "op1_fc", "nest1", "op2_fc", "nest2"]
    removed = ["op1_fc", "nest0", "nest2"]
    pruned = pruning.remove_blocks(model, removed, layers=layers)
    x_test = np.random.default_rng(0).normal(size=(8, 4, 6)).astype("float32")
    np.testing.assert_allclose(
        _numpy(pruned(x_test)), _numpy(pruning.lesioned(model, removed, layers=layers)(x_test)),
        rtol=1e-6, atol=1e-6)
    pruned.save(tmp_path / "pruned.keras")
    np.save(tmp_path / "x.npy", x_test)
    script = (
        "import sys, json, numpy as np, keras\n"
        f"m = keras.models.load_model({str(tmp_path / 'pruned.keras')!r})\n"
        f"np.save({str(tmp_path / 'y.npy')!r}, "
        f"keras.ops.convert_to_numpy(m(np.load({str(tmp_path / 'x.npy')!r}))))\n"
        "print(json.dumps([k for k in sys.modules if k.split('.')[0] == 'cb_keras']))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), _numpy(pruned(x_test)),
                               rtol=1e-6, atol=1e-6)


def test_convnext_tiny_blocks_are_found_and_removed():
    keras.utils.set_random_seed(0)
    model = keras.applications.ConvNeXtTiny(weights=None, input_shape=(32, 32, 3), classes=10)
    for layer in model.layers:  # layer scales of 1, not 1e-6, so that lesions matter
        if type(layer).__name__ == "LayerScale":
            layer.set_weights([np.ones_like(w) for w in layer.get_weights()])
    blocks = pruning.residual_blocks(model)
    assert len(blocks) == 18 and {b.kind for b in blocks} == {"operator"}
    assert [b.name for b in blocks][:2] == ["convnext_tiny_stage_0_block_0",
                                            "convnext_tiny_stage_0_block_1"]
    assert blocks[-1].name == "convnext_tiny_stage_3_block_2"
    removed = ["convnext_tiny_stage_0_block_1", "convnext_tiny_stage_2_block_8",
               "convnext_tiny_stage_3_block_2"]
    pruned = pruning.remove_blocks(model, removed)
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    expected = _numpy(pruning.lesioned(model, removed)(x))
    np.testing.assert_allclose(_numpy(pruned(x)), expected, rtol=1e-5, atol=1e-6)
    assert np.abs(_numpy(model(x)) - expected).max() > 1e-4
    assert len(pruning.residual_blocks(pruned)) == 15
    assert pruned.count_params() < model.count_params()


def test_conflicting_blocks_measures_every_kind(model):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 3, 4, 6)).astype("float32")
    y = rng.integers(0, 3, 64)
    for block, dead in (("blk1", "blk1_fc"), ("blk2", "blk2_fc2"), ("blk3", "blk3")):
        copy = pruning.remove_blocks(model, [])  # a copy we may change
        layer = copy.get_layer(dead)
        dense = layer.out if block == "blk3" else layer
        dense.set_weights([np.zeros_like(w) for w in dense.get_weights()])
        found = pruning.conflicting_blocks(copy, x, y, num_classes=3, learning_rate=1e-3,
                                           batch_size=64, samples=64, layers=ResidualMLP)
        assert found.names == ["blk1", "blk2", "blk3"]
        assert found.conflicting == [block], block
        assert found.metrics(block).num_bundles == 1


def test_a_keras_hub_bert_backbone_from_a_config_is_pruned():
    keras_hub = pytest.importorskip("keras_hub", reason="keras-hub is the optional extra 'hub'")
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=50, num_layers=3, num_heads=2, hidden_dim=16, intermediate_dim=32,
        max_sequence_length=8, dropout=0.0)
    layers = keras_hub.layers.TransformerEncoder
    names = [b.name for b in pruning.residual_blocks(backbone, layers=layers)]
    assert names == ["transformer_layer_0", "transformer_layer_1", "transformer_layer_2"]
    rng = np.random.default_rng(0)
    inputs = {"token_ids": rng.integers(0, 50, (4, 8)), "segment_ids": np.zeros((4, 8), "int32"),
              "padding_mask": np.ones((4, 8), "int32")}
    pruned = pruning.remove_blocks(backbone, ["transformer_layer_1"], layers=layers)
    lesioned = pruning.lesioned(backbone, ["transformer_layer_1"], layers=layers)(inputs)
    outputs = pruned(inputs)
    for key in ("sequence_output", "pooled_output"):
        np.testing.assert_allclose(_numpy(outputs[key]), _numpy(lesioned[key]),
                                   rtol=1e-5, atol=1e-6)
    assert pruned.count_params() < backbone.count_params()
    assert len(pruning.residual_blocks(pruned, layers=layers)) == 2


def test_a_keras_hub_gemma_backbone_from_a_config_is_pruned():
    keras_hub = pytest.importorskip("keras_hub", reason="keras-hub is the optional extra 'hub'")
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.GemmaBackbone(
        vocabulary_size=50, num_layers=2, num_query_heads=2, num_key_value_heads=1,
        hidden_dim=16, intermediate_dim=32, head_dim=8)
    decoder = type(backbone.transformer_layers[0])
    pruned = pruning.remove_blocks(backbone, [backbone.transformer_layers[0].name],
                                   layers=decoder)
    inputs = {"token_ids": np.random.default_rng(0).integers(0, 50, (2, 6)),
              "padding_mask": np.ones((2, 6), "int32")}
    lesioned = pruning.lesioned(backbone, [backbone.transformer_layers[0].name],
                                layers=decoder)(inputs)
    np.testing.assert_allclose(_numpy(pruned(inputs)), _numpy(lesioned), rtol=1e-5, atol=1e-5)
    assert pruned.count_params() < backbone.count_params()


def test_a_layer_that_changes_the_shape_is_refused(model):
    with pytest.raises(ValueError, match=r"layer 'stem' \(Dense\) maps its input \(None, 3, 4, "
                                         r"6\) to \[\(None, 3, 4, 8\)\].*Pass only the residual"):
        pruning.residual_blocks(model, layers=keras.layers.Dense)


def test_a_shared_block_layer_is_refused():
    inputs = keras.Input((6,))
    shared = ResidualMLP(name="twice")
    model = keras.Model(inputs, shared(shared(inputs)))
    with pytest.raises(ValueError, match=r"layers \['twice'\] are called more than once"):
        pruning.remove_blocks(model, ["twice"], layers=ResidualMLP)


def test_a_model_without_blocks_says_what_to_pass():
    inputs = keras.Input((6,))
    model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Dense(6)(inputs)), name="mlp")
    with pytest.raises(ValueError, match=r"model 'mlp' has no residual blocks.*pass layers="):
        pruning.residual_blocks(model)


@pytest.mark.parametrize("layers, error, message", [
    (3, TypeError, r"layers= takes keras layer classes.*got 3"),
    (keras.layers.Dense(2), TypeError, r"layers= takes keras layer classes"),
    (["nope"], ValueError, r"layers= names \['nope'\], which are not layers of 'three_kinds'"),
])
def test_bad_layers_arguments_are_refused(model, layers, error, message):
    with pytest.raises(error, match=message):
        pruning.residual_blocks(model, layers=layers)


def test_operator_adds_that_broadcast_or_add_a_constant_are_not_blocks():
    inputs = keras.Input((4, 6))
    x = keras.layers.Dense(6, name="fc")(inputs) + 1.0
    pooled = keras.ops.mean(x, axis=1, keepdims=True)
    x = x + keras.layers.Dense(6, name="pooled_fc")(pooled)  # (4, 6) + (1, 6)
    model = keras.Model(inputs, x, name="broadcasts")
    with pytest.raises(ValueError, match="has no residual blocks"):
        pruning.residual_blocks(model)
