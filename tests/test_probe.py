"""probe and measure: which outputs are tapped, their values, and the metrics on them."""

import gc
import weakref

import keras
import numpy as np
import pytest
import tensorflow as tf
from sklearn.datasets import load_digits

import cb_keras
from cb_keras.probe import probe, tap_names
from conftest import nan_to_zero_relu, short_branch_block
from cb_keras.taps import BRANCH_SCALE_EPSILON, ScaledBranchTap, Tap

# lr and batch size at which the digits models below have bundles that are
# neither all singletons nor one: the metric is sensitive to every rounding.
LR, BS = 1e-3, 8192


@pytest.fixture(scope="module")
def digits():
    """The first 256 digits: (x (256, 64) float32 in [0, 1], y (256,) int)."""
    data = load_digits()
    return (data.data[:256] / 16).astype("float32"), data.target[:256]


def mlp():
    keras.utils.set_random_seed(1)
    return keras.Sequential([
        keras.Input((64,)),
        keras.layers.Dense(16, activation="relu", name="fused"),
        keras.layers.Dense(16, name="linear"),
        keras.layers.Activation("relu", name="act"),
        keras.layers.Dropout(0.5, name="drop"),
        keras.layers.Dense(16, activation="tanh", name="tanh"),
        keras.layers.Dense(10, name="logits"),
        keras.layers.Softmax(name="probs"),
    ])


def cnn():
    keras.utils.set_random_seed(2)
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv1")(inputs)
    h = keras.layers.Conv2D(4, 3, padding="same", name="conv2")(h)
    h = keras.layers.BatchNormalization(name="bn2")(h)
    h = keras.layers.ReLU(name="relu2")(h)
    h = keras.layers.MaxPooling2D(name="pool")(h)
    h = keras.layers.Flatten(name="flat")(h)
    h = keras.layers.Dense(16, activation="relu", name="hidden")(h)
    return keras.Model(inputs, keras.layers.Dense(10, activation="softmax", name="head")(h))


def residual_block(h, filters, stride, name, shortcut_first=True):
    """conv-BN-ReLU-conv-BN branch, identity or 1x1-conv-BN shortcut, Add, ReLU."""
    b = keras.layers.Conv2D(filters, 3, strides=stride, padding="same", name=f"{name}_c1")(h)
    b = keras.layers.BatchNormalization(name=f"{name}_bn1")(b)
    b = keras.layers.ReLU(name=f"{name}_r1")(b)
    b = keras.layers.Conv2D(filters, 3, padding="same", name=f"{name}_c2")(b)
    b = keras.layers.BatchNormalization(name=f"{name}_bn2")(b)
    shortcut = h
    if stride != 1 or filters != h.shape[-1]:
        shortcut = keras.layers.Conv2D(filters, 1, strides=stride, name=f"{name}_pc")(h)
        shortcut = keras.layers.BatchNormalization(name=f"{name}_pbn")(shortcut)
    pair = [shortcut, b] if shortcut_first else [b, shortcut]
    return keras.layers.ReLU(name=f"{name}_out")(keras.layers.Add(name=f"{name}_add")(pair))


def resnet():
    """Stem, an identity block, a projection block with the branch first in its Add."""
    keras.utils.set_random_seed(3)
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="stem")(inputs)
    h = residual_block(h, 8, 1, "id")
    h = residual_block(h, 16, 2, "proj", shortcut_first=False)
    h = keras.layers.GlobalAveragePooling2D(name="gap")(h)
    model = keras.Model(inputs, keras.layers.Dense(10, name="logits")(h))
    _randomise_batch_norm(model)
    return model


def _randomise_batch_norm(model):
    """Non-trivial BN statistics, so inference-mode BN is not near identity."""
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            size = layer.moving_mean.shape
            layer.moving_mean.assign(rng.normal(0, 0.1, size).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, size).astype("float32"))


def tapped_block():
    """A residual block marked as the builders of cb_keras.paper.models mark it."""
    keras.utils.set_random_seed(4)
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="stem")(inputs)
    h = Tap(name="stem_tap")(h)
    c1 = keras.layers.Conv2D(4, 3, padding="same", name="c1")(h)
    b = keras.layers.ReLU(name="r1")(c1)
    c2 = keras.layers.Conv2D(4, 3, padding="same", name="c2")(b)
    branch = ScaledBranchTap(name="block_branch_tap")([c2, c1, c2])
    h = keras.layers.ReLU(name="out")(keras.layers.Add(name="add")([h, branch]))
    h = Tap(name="block_out_tap")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(h))


def images(x):
    return x.reshape(-1, 8, 8, 1)


def test_auto_taps_of_a_sequential_mlp():
    # Fused activations and Activation layers; not the linear Dense, the
    # dropout, the logits or the softmax head.
    assert tap_names(mlp()) == ["fused", "act", "tanh"]
    assert tap_names(mlp(), "last") == ["tanh"]


def test_auto_taps_of_a_functional_cnn():
    assert tap_names(cnn()) == ["conv1", "relu2", "hidden"]


def test_auto_taps_of_a_resnet_follow_the_graph_not_the_input_order():
    # Branch before the addition (whatever its position in the Add), then
    # the block output; the internal ReLU is a Conv activation.
    assert tap_names(resnet()) == [
        "stem", "id_r1", "id_bn2", "id_out", "proj_r1", "proj_bn2", "proj_out"]


def test_add_without_activation_measures_the_add_output():
    inputs = keras.Input((4,))
    h = keras.layers.Dense(4, activation="relu", name="d1")(inputs)
    b = keras.layers.Dense(4, name="branch")(h)
    h = keras.layers.Add(name="add")([h, b])
    model = keras.Model(inputs, keras.layers.Dense(2, name="logits")(h))
    assert tap_names(model) == ["d1", "branch", "add"]


@pytest.mark.parametrize("branch_kernel", [3, 1])
def test_a_branch_shorter_than_its_projection_shortcut_is_measured(branch_kernel):
    # 3x3: the lone 1x1 conv path is the shortcut, however long. 1x1: the
    # structure cannot tell, so both inputs are measured.
    assert tap_names(short_branch_block(branch_kernel)) == ["stem", "proj_relu", "branch", "out"]


def test_add_of_unrelated_inputs_is_not_a_residual_block():
    first, second = keras.Input((4,)), keras.Input((4,))
    h = keras.layers.Add(name="add")([first, second])
    h = keras.layers.Dense(4, activation="relu", name="hidden")(h)
    model = keras.Model([first, second], keras.layers.Dense(2, name="logits")(h))
    assert tap_names(model) == ["hidden"]


def test_resnet_branch_taps_equal_the_branches_computed_layer_by_layer(digits):
    model = resnet()
    x = images(digits[0][:32])
    outputs = probe(model)(x)
    layer = model.get_layer
    stem = layer("stem")(x)

    def branch(h, name):
        h = layer(f"{name}_r1")(layer(f"{name}_bn1")(layer(f"{name}_c1")(h), training=False))
        return layer(f"{name}_bn2")(layer(f"{name}_c2")(h), training=False)

    id_out = layer("id_out")(stem + branch(stem, "id"))
    shortcut = layer("proj_pbn")(layer("proj_pc")(id_out), training=False)
    expected = {"stem": stem, "id_bn2": branch(stem, "id"), "id_out": id_out,
                "proj_bn2": branch(id_out, "proj"),
                "proj_out": layer("proj_out")(shortcut + branch(id_out, "proj"))}
    for name, value in expected.items():
        np.testing.assert_allclose(outputs[name], value, rtol=1e-5, atol=1e-6, err_msg=name)
    # The projection path is not what was tapped as the branch.
    assert not np.allclose(outputs["proj_bn2"], shortcut, atol=1e-3)


def test_tap_marked_model_measures_exactly_its_taps_with_branch_scaling(digits):
    model = tapped_block()
    assert tap_names(model) == ["stem_tap", "block_branch_tap", "block_out_tap"]
    x = images(digits[0][:64])
    outputs = probe(model)(x)
    c1, c2 = (keras.Model(model.input, model.get_layer(n).output)(x).numpy().astype("float64")
              for n in ("c1", "c2"))
    scale = 1 / np.sqrt(c1.var() + BRANCH_SCALE_EPSILON) / np.sqrt(c2.var() + BRANCH_SCALE_EPSILON)
    np.testing.assert_allclose(outputs["block_branch_tap"], c2 * scale, rtol=2e-5, atol=1e-6)
    assert abs(scale - 1) > 0.1  # the scaling is not a no-op here
    np.testing.assert_array_equal(outputs["block_out_tap"],
                                  keras.Model(model.input, model.get_layer("out").output)(x))


def test_probe_layers_do_not_clash_with_model_layer_names():
    inputs = keras.Input((4,))
    h = Tap(name="t")(keras.layers.Dense(4, activation="relu", name="t_measured")(inputs))
    model = keras.Model(inputs, keras.layers.Dense(2, name="logits")(h))
    x = np.ones((2, 4), "float32")
    assert list(probe(model)(x)) == ["t"]
    np.testing.assert_array_equal(probe(model)(x)["t"],
                                  probe(model, ["t_measured"])(x)["t_measured"])


def test_named_layers_are_measured_in_graph_order():
    model = resnet()
    assert tap_names(model, ["proj_out", "stem", "id_add"]) == ["stem", "id_add", "proj_out"]
    assert list(probe(model, ["logits"]).output) == ["logits"]


@pytest.mark.parametrize("build, reshape", [(mlp, False), (cnn, True), (resnet, True),
                                            (tapped_block, True)])
def test_measure_agrees_with_bundle_metrics_on_the_probed_activations(digits, build, reshape):
    model = build()
    x, y = digits
    x = images(x) if reshape else x
    report = cb_keras.measure(model, x, y, num_classes=10, learning_rate=LR, batch_size=BS)
    activations = probe(model)(x)
    assert report.names == list(activations)
    w_max = cb_keras.weight_amplitude(model)
    for layer in report:
        expected = cb_keras.bundle_metrics(
            activations[layer.name], y, num_classes=10, weight_amplitude=w_max,
            learning_rate=LR, batch_size=BS)
        assert (layer.num_bundles, layer.max_accuracy) == \
            (expected.num_bundles, pytest.approx(expected.max_accuracy, abs=1e-6)), layer.name
        assert layer.bundle_entropy == pytest.approx(expected.bundle_entropy, abs=1e-6)
    assert report.num_samples == 256 and report.weight_amplitude == w_max
    assert (report.learning_rate, report.batch_size, report.num_classes) == (LR, BS, 10)


def test_measure_is_not_trivial_at_these_settings(digits):
    # Guards the agreement test above: some layers neither split every
    # sample nor merge all of them.
    report = cb_keras.measure(resnet(), images(digits[0]), digits[1], num_classes=10,
                              learning_rate=LR, batch_size=BS)
    assert any(1 < layer.num_bundles < 256 for layer in report)
    assert report.conflicting and len(report.conflicting) < len(report)
    assert report.first_conflicting == report.conflicting[0]


def test_measure_of_a_dataset_and_in_chunks_equals_measure_of_arrays(digits):
    model = cnn()
    x, y = images(digits[0]), digits[1]
    settings = dict(num_classes=10, learning_rate=LR, batch_size=BS, samples=200)
    whole = cb_keras.measure(model, x, y, **settings)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(64)
    assert cb_keras.measure(model, dataset, **settings) == whole
    assert cb_keras.measure(model, x, y, eval_batch_size=48, **settings) == whole
    assert whole.num_samples == 200


def test_measure_last_measures_only_the_last_output(digits):
    model = mlp()
    report = cb_keras.measure(model, *digits, num_classes=10, learning_rate=LR, batch_size=BS,
                              layers="last")
    full = cb_keras.measure(model, *digits, num_classes=10, learning_rate=LR, batch_size=BS)
    assert report.names == ["tanh"] and report.last == full.last


def test_non_finite_outputs_are_reported_as_diverged(digits):
    # tanh, not ReLU: TensorFlow's fused MatMul+ReLU kernels turn NaN into 0.
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(8, "tanh", name="t1"),
                              keras.layers.Dense(8, "tanh", name="t2"), keras.layers.Dense(10)])
    x, y = digits[0].copy(), digits[1]
    x[3, 5] = np.nan
    report = cb_keras.measure(model, x, y, num_classes=10, learning_rate=LR, batch_size=BS)
    assert report.diverged == report.names == ["t1", "t2"]
    assert report.conflicting == []
    assert report.last.num_bundles is None and np.isnan(report.last.bundle_entropy)
    assert np.isnan(report.last.max_accuracy)


def test_a_layer_fed_nan_is_diverged_even_when_its_outputs_are_finite(nan_fed_relu_model):
    # Fused MatMul+ReLU kernels (oneDNN, GPU) give 0 for NaN, as fused_relu here.
    x = np.random.default_rng(0).normal(size=(16, 4)).astype("float32")
    report = cb_keras.measure(nan_fed_relu_model, x, np.arange(16) % 3, num_classes=3,
                              learning_rate=LR, batch_size=16)
    assert report.diverged == report.names == ["sqrt", "fused_relu"]
    assert report.conflicting == [] and report.first_conflicting is None


def test_nan_inputs_make_every_layer_diverged_behind_a_fused_relu(digits):
    model = keras.Sequential([
        keras.Input((64,)), keras.layers.Dense(16, activation=nan_to_zero_relu, name="fused"),
        keras.layers.Dense(8, activation="tanh", name="t"), keras.layers.Dense(10)])
    x, y = digits[0].copy(), digits[1]
    x[3, 5] = np.nan
    report = cb_keras.measure(model, x, y, num_classes=10, learning_rate=LR, batch_size=BS,
                              layers="last")
    assert report.diverged == report.names == ["t"]


def test_non_finite_weights_make_every_layer_diverged(digits):
    model = mlp()
    kernel = model.get_layer("tanh").kernel
    kernel.assign(np.full(kernel.shape, np.inf, "float32"))
    report = cb_keras.measure(model, *digits, num_classes=10, learning_rate=LR, batch_size=BS)
    assert report.diverged == report.names and not np.isfinite(report.weight_amplitude)


def test_measure_follows_a_sequential_model_that_changed(digits):
    model = mlp()
    settings = dict(num_classes=10, learning_rate=LR, batch_size=BS)
    assert cb_keras.measure(model, *digits, **settings).names == ["fused", "act", "tanh"]
    for _ in range(3):  # softmax, logits, tanh
        model.pop()
    model.add(keras.layers.Dense(10, name="new_logits"))
    assert cb_keras.measure(model, *digits, **settings).names == ["fused", "act"]


def test_cached_probes_do_not_keep_models_alive(digits):
    model = mlp()
    cb_keras.measure(model, *digits, num_classes=10, learning_rate=LR, batch_size=BS)
    reference = weakref.ref(model)
    del model
    gc.collect()
    assert reference() is None


def test_measure_works_under_a_distribution_strategy(digits, mirrored_strategy):
    strategy = mirrored_strategy
    with strategy.scope():
        model = cnn()
    x, y = images(digits[0]), digits[1]
    settings = dict(num_classes=10, learning_rate=LR, batch_size=BS)
    with strategy.scope():
        inside = cb_keras.measure(model, x, y, **settings)
    assert cb_keras.measure(model, x, y, **settings) == inside


# ------------------------------------------------------------------ errors


class _TwoOutputs(keras.layers.Layer):
    def call(self, x):
        return x, -x


def test_unknown_names_list_the_available_layers():
    with pytest.raises(ValueError, match=r"unknown layer names \['nope'\].*available: "
                                         r"\['d1', 'd2'\]"):
        probe(keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, name="d1"),
                                keras.layers.Dense(2, name="d2")]), ["nope"])


def test_model_without_measurable_layers_says_what_to_do():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="softmax")])
    with pytest.raises(ValueError, match="no measurable layers.*Pass layers=\\[names\\]"):
        probe(model)


def test_subclassed_model_is_rejected_with_advice():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.hidden = keras.layers.Dense(4, activation="relu")

        def call(self, x):
            return self.hidden(x)

    model = Net()
    model(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="subclassed keras.Model.*functional API"):
        probe(model)


def test_unbuilt_sequential_is_rejected_with_advice():
    with pytest.raises(ValueError, match="is not built.*keras.Input"):
        probe(keras.Sequential([keras.layers.Dense(2)]))


def test_nested_models_are_rejected_with_advice():
    inner = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, activation="relu",
                                                                    name="inner_dense")],
                             name="backbone")
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inner(inputs)))
    with pytest.raises(ValueError, match=r"nested model\(s\) \['backbone'\].*Build the model flat"):
        probe(model)
    with pytest.raises(ValueError, match=r"\['inner_dense'\] lie inside nested model\(s\) "
                                         r"\['backbone'\]"):
        probe(model, ["inner_dense"])
    assert tap_names(model, ["backbone"]) == ["backbone"]


def test_shared_layers_are_rejected_with_advice():
    relu = keras.layers.ReLU(name="shared_relu")
    inputs = keras.Input((3,))
    h = relu(keras.layers.Dense(4)(inputs))
    h = relu(keras.layers.Dense(4)(h))
    model = keras.Model(inputs, keras.layers.Dense(2)(h))
    with pytest.raises(ValueError, match="'shared_relu' is called 2 times.*separate layer"):
        probe(model)


def test_multi_output_layers_cannot_be_named():
    inputs = keras.Input((3,))
    first, _ = _TwoOutputs(name="two")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2)(first))
    with pytest.raises(ValueError, match="'two' has 2 outputs"):
        probe(model, ["two"])


@pytest.mark.parametrize("layers, error, message", [
    ("every", ValueError, r"not a mode; use one of \['auto', 'all', 'last'\]"),
    ([], TypeError, "non-empty list of layer names"),
    (3, TypeError, "non-empty list of layer names"),
])
def test_bad_layers_arguments(layers, error, message):
    with pytest.raises(error, match=message):
        probe(mlp(), layers)


def test_probe_needs_a_keras_model():
    with pytest.raises(TypeError, match="needs a keras.Model, got Dense"):
        probe(keras.layers.Dense(2))


def test_too_large_layer_is_named_in_the_error():
    inputs = keras.Input((2**20 + 1,))
    model = keras.Model(inputs, keras.layers.Dense(2)(Tap(name="huge")(inputs)))
    with pytest.raises(ValueError, match="layer 'huge': A layer with 1048577 features"):
        cb_keras.measure(model, np.zeros((2, 2**20 + 1), "float32"), [0, 1], num_classes=2,
                         learning_rate=LR, batch_size=BS)


def reference_scaled_branches(model, x, batch_size):
    """Every block's scaled branch as the reference computes it, written out.

    The reference runs the model eagerly on forward batches of the training
    batch size and takes, per block, ``branch * s2 * s1`` (Python's left to
    right: ``(branch * s2) * s1``) with ``s = 1.0 / sqrt(var(conv) + 1e-6)``
    over all axes of the batch. Returns {tap name: (N, ...) float32 array}.
    """
    taps = [layer for layer in model.layers if isinstance(layer, ScaledBranchTap)]
    parts = keras.Model(model.input, [tap.input for tap in taps])
    values = {tap.name: [] for tap in taps}
    for start in range(0, len(x), batch_size):
        outputs = parts(x[start:start + batch_size], training=False)
        for tap, (branch, conv1, conv2) in zip(taps, outputs):
            scale1 = 1.0 / tf.math.sqrt(tf.math.reduce_variance(conv1) + 1e-6)
            scale2 = 1.0 / tf.math.sqrt(tf.math.reduce_variance(conv2) + 1e-6)
            values[tap.name].append((branch * scale2 * scale1).numpy())
    return {name: np.concatenate(parts) for name, parts in values.items()}


@pytest.fixture(scope="module")
def trained_resnet():
    """A small ResNet of the papers after a few steps on digits, and 512 digits.

    Trained briefly, so BN statistics and weights are not at their
    initial values.
    """
    keras.utils.set_random_seed(5)
    data = load_digits()
    x = (data.data[:512] / 16).astype("float32").reshape(-1, 8, 8, 1)
    model = cb_keras.paper.models.resnet([2, 1, 0, 0], (8, 8, 1), 10)
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(
        from_logits=True))
    model.fit(x, data.target[:512], batch_size=64, epochs=1, verbose=0)
    return model, x, data.target[:512]


@pytest.mark.parametrize("samples", [64, 512])
@pytest.mark.parametrize("batch_size", [32, 64])
def test_scaled_branches_equal_the_reference_formula_bit_for_bit(trained_resnet, samples,
                                                                 batch_size):
    model, x, y = trained_resnet
    x, y = x[:samples], y[:samples]
    expected = reference_scaled_branches(model, x, batch_size)
    forward = tf.function(probe(model))  # in a graph, as measure runs it
    got = {name: np.concatenate([forward(x[i:i + batch_size])[name].numpy()
                                 for i in range(0, samples, batch_size)])
           for name in expected}
    for name in expected:
        np.testing.assert_array_equal(got[name].view(np.int32), expected[name].view(np.int32),
                                      err_msg=name)
    # measure evaluates in forward batches of the training batch size by
    # default: its bundles are those of the reference's values. This
    # learning rate puts the branches near the metric's resolution, where one
    # rounding changes the bundles (checked at the end).
    learning_rate = 1e-7 * batch_size / 64
    report = cb_keras.measure(model, x, y, num_classes=10, learning_rate=learning_rate,
                              batch_size=batch_size, samples=samples)
    w_max = cb_keras.weight_amplitude(model)
    for name, values in expected.items():
        want = cb_keras.bundle_metrics(values, y, num_classes=10, weight_amplitude=w_max,
                                       learning_rate=learning_rate, batch_size=batch_size)
        layer = report[name]
        assert (layer.num_bundles, layer.bundle_entropy) == \
            (want.num_bundles, pytest.approx(want.bundle_entropy, abs=1e-6)), name
    assert any(1 < report[name].num_bundles < samples for name in expected)


def test_scales_are_per_forward_batch(trained_resnet):
    # One batch of 64 and two of 32 give different scales, so the measured
    # values differ: the forward batch is part of the definition.
    model, x, _ = trained_resnet
    whole = reference_scaled_branches(model, x[:64], 64)
    halves = reference_scaled_branches(model, x[:64], 32)
    assert any(not np.array_equal(whole[name], halves[name]) for name in whole)


@pytest.mark.parametrize("kwargs, message", [
    (dict(samples=0), "samples must be a positive integer, got 0"),
    (dict(eval_batch_size=0), "eval_batch_size must be a positive integer or None, got 0"),
    (dict(y=None), "y is None but x is not a tf.data.Dataset"),
    (dict(y=np.zeros(5, int)), "x holds 256 samples in its first 512 but y holds 5"),
    (dict(learning_rate=0.0), "learning_rate must be > 0"),
    (dict(learning_rate=1e-50), "learning_rate=1e-50 is 0 in float32"),
    (dict(learning_rate=float("inf")), "learning_rate=inf is not finite in float32"),
    (dict(num_classes=3), r"labels must lie in \[0, 3\)"),
])
def test_bad_measure_arguments(digits, kwargs, message):
    arguments = dict(x=digits[0], y=digits[1], num_classes=10, learning_rate=LR, batch_size=BS)
    with pytest.raises(ValueError, match=message):
        cb_keras.measure(mlp(), **{**arguments, **kwargs})


@pytest.mark.parametrize("dataset, y, message", [
    (tf.data.Dataset.from_tensor_slices((np.zeros((4, 64), "float32"), np.zeros(4, int))),
     np.zeros(4, int), "must yield \\(x, y\\) batches and y must be None"),
    (tf.data.Dataset.from_tensor_slices(np.zeros((4, 64), "float32")).batch(2), None,
     "must yield \\(x, y\\) or \\(x, y, sample_weight\\) batches"),
    (tf.data.Dataset.from_tensor_slices((np.zeros((0, 64), "float32"), np.zeros(0, int))),
     None, "the Dataset is empty"),
    (tf.data.Dataset.from_tensor_slices((np.zeros((4, 64), "float32"), np.zeros(4, int))),
     None, "yields single examples, not batches; batch it first"),
])
def test_bad_datasets(dataset, y, message):
    with pytest.raises(ValueError, match=message):
        cb_keras.measure(mlp(), dataset, y, num_classes=10, learning_rate=LR, batch_size=BS)


def test_a_nested_list_is_one_array(digits):
    x, y = digits
    model = mlp()
    arguments = dict(num_classes=10, learning_rate=LR, batch_size=BS)
    assert cb_keras.measure(model, x.tolist(), y.tolist(), **arguments) == \
        cb_keras.measure(model, x, y, **arguments)


@pytest.mark.parametrize("x, message", [
    ([[0.0, 1.0], [2.0]], "nested list that is not rectangular"),
    ([["a"] * 64] * 4, "numeric arrays of shape \\(N, ...\\).*dtype <U1"),
    (3.0, "got an array of shape \\(\\) and dtype float64"),
    ([], "x holds no arrays"),
])
def test_inputs_that_are_not_numeric_arrays_are_a_type_error(x, message):
    with pytest.raises(TypeError, match=message):
        cb_keras.measure(mlp(), x, [0, 1, 2, 3], num_classes=10, learning_rate=LR,
                         batch_size=BS)


def test_num_classes_far_above_the_labels_gives_the_same_metrics(digits):
    model = mlp()
    arguments = dict(learning_rate=LR, batch_size=BS)
    huge = cb_keras.measure(model, *digits, num_classes=10**9, **arguments)
    assert huge.num_classes == 10**9
    assert huge.layers == cb_keras.measure(model, *digits, num_classes=10, **arguments).layers


def test_model_without_trainable_weights_is_rejected(digits):
    model = mlp()
    model.trainable = False
    with pytest.raises(ValueError, match="has no trainable weights"):
        cb_keras.measure(model, *digits, num_classes=10, learning_rate=LR, batch_size=BS)
