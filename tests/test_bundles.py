"""The exact bundle metric (docs/method.md §1) against the golden cases and a slow oracle."""

import re

import numpy as np
import pytest
import tensorflow as tf

import cb_keras
from cb_keras import bundles

SETTINGS = dict(weight_amplitude=0.5, learning_rate=1e-3, batch_size=64)


def slow_bundle_metrics(a, y, *, num_classes, weight_amplitude, learning_rate, batch_size):
    """Obviously-correct oracle: NumPy float32 transform, dict of row tuples, float64 sums."""
    a = np.asarray(a).astype(np.float32).reshape(len(a), -1)
    t = np.float32(weight_amplitude) - (
        (a * np.float32(learning_rate)) * np.float32(1.0 / batch_size))
    groups: dict[tuple, list[int]] = {}
    for row, label in zip(t, y):
        groups.setdefault(tuple(row.tolist()), []).append(int(label))
    entropy = accuracy = 0.0
    for labels in groups.values():
        p = np.bincount(labels, minlength=num_classes) / len(labels)
        h = -np.sum(p * np.log(p + 1e-5))
        entropy += len(labels) * max(0.0, h)
        accuracy += np.bincount(labels).max()
    return len(groups), entropy / len(t), accuracy / len(t)


def golden_case(cases, i):
    inputs = dict(num_classes=int(cases[f"{i}_C"]), weight_amplitude=float(cases[f"{i}_wmax"]),
                  learning_rate=float(cases[f"{i}_lr"]), batch_size=int(cases[f"{i}_bs"]))
    return cases[f"{i}_a"], cases[f"{i}_y"], inputs


def case_indices():
    with np.load(__import__("conftest").FIXTURES / "bundle_cases.npz") as data:
        return list(enumerate(data["names"].tolist()))


@pytest.mark.parametrize("index,name", case_indices())
def test_golden_case(bundle_cases, index, name):
    a, y, inputs = golden_case(bundle_cases, index)
    result = cb_keras.bundle_metrics(a, y, **inputs)
    assert result.num_bundles == int(bundle_cases[f"{index}_nb"]), name
    assert result.bundle_entropy == pytest.approx(float(bundle_cases[f"{index}_H"]), abs=1e-5)
    assert result.conflicting == (float(bundle_cases[f"{index}_H"]) > 0)


@pytest.mark.parametrize("index,name", case_indices())
def test_golden_case_inside_tf_function(bundle_cases, index, name):
    """The traceable pieces give the same numbers in a graph (probe's use)."""
    a, y, inputs = golden_case(bundle_cases, index)
    scalars = bundles.scalars(inputs["weight_amplitude"], inputs["learning_rate"],
                              inputs["batch_size"])

    @tf.function
    def graph(a, y, w, lr, ibs):
        return bundles.bundle_stats(bundles.fingerprint(a, w, lr, ibs), y, inputs["num_classes"])

    num_bundles, entropy, _ = graph(tf.constant(a), tf.constant(y), *scalars)
    assert int(num_bundles) == int(bundle_cases[f"{index}_nb"]), name
    assert float(entropy) == pytest.approx(float(bundle_cases[f"{index}_H"]), abs=1e-5)


def near_boundary_layer(rng, samples=300, features=16):
    """Prototypes plus noise near the float32 rounding boundary of the transform."""
    protos = rng.uniform(0, 4, size=(6, features)).astype(np.float32)
    which = rng.integers(0, 6, size=samples)
    scale = rng.choice([0.0, 1e-3, 2e-3, 4e-3, 1e-2], size=(samples, 1))
    noise = rng.integers(-2, 3, size=(samples, features)) * scale
    return (protos[which] + noise).astype(np.float32), which


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("batch_size", [64, 100])
def test_agrees_with_slow_oracle_near_rounding_boundary(seed, batch_size):
    """bs=100 makes 1/bs inexact, so a fused multiply-add would round differently."""
    rng = np.random.default_rng(seed)
    a, protos = near_boundary_layer(rng)
    y = (protos + rng.integers(0, 2, size=len(protos))) % 4
    settings = {**SETTINGS, "batch_size": batch_size}
    fast = cb_keras.bundle_metrics(a, y, num_classes=4, **settings)
    slow = slow_bundle_metrics(a, y, num_classes=4, **settings)
    assert 1 < fast.num_bundles < len(a)  # the case really sits between the extremes
    assert fast.num_bundles == slow[0]
    assert fast.bundle_entropy == pytest.approx(slow[1], abs=1e-5)
    assert fast.max_accuracy == pytest.approx(slow[2], abs=1e-6)


def test_agrees_with_slow_oracle_on_random_conv_outputs():
    rng = np.random.default_rng(7)
    a = np.maximum(rng.normal(size=(128, 4, 4, 3)), 0).astype(np.float32) * 1e-3
    y = rng.integers(0, 10, size=128)
    fast = cb_keras.bundle_metrics(a, y, num_classes=10, **SETTINGS)
    slow = slow_bundle_metrics(a, y, num_classes=10, **SETTINGS)
    assert (fast.num_bundles, fast.bundle_entropy) == (slow[0], pytest.approx(slow[1], abs=1e-5))


def test_max_accuracy_of_known_bundles():
    a = np.array([[0.0], [0.0], [0.0], [5.0], [5.0]], np.float32)
    y = np.array([0, 0, 1, 1, 2])
    result = cb_keras.bundle_metrics(a, y, num_classes=3, **SETTINGS)
    assert result.num_bundles == 2
    assert result.max_accuracy == pytest.approx(3 / 5)
    assert result.conflicting


@pytest.mark.parametrize("dtype", [np.float16, tf.bfloat16, np.float64, np.int32])
def test_any_dtype_is_cast_to_float32_first(dtype):
    rng = np.random.default_rng(1)
    a = rng.uniform(0, 8, size=(64, 5)).astype(np.float32)
    cast = tf.cast(a, dtype)
    y = rng.integers(0, 3, size=64)
    expected = cb_keras.bundle_metrics(tf.cast(cast, tf.float32), y, num_classes=3, **SETTINGS)
    assert cb_keras.bundle_metrics(cast, y, num_classes=3, **SETTINGS) == expected


def test_shape_is_flattened_and_tensor_input_accepted():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(50, 3, 2, 4)).astype(np.float32)
    y = rng.integers(0, 5, size=50)
    flat = cb_keras.bundle_metrics(a.reshape(50, -1), y, num_classes=5, **SETTINGS)
    assert cb_keras.bundle_metrics(tf.constant(a), tf.constant(y), num_classes=5,
                                   **SETTINGS) == flat
    assert cb_keras.bundle_metrics(a, y.reshape(-1, 1), num_classes=5, **SETTINGS) == flat


def test_sample_order_does_not_matter():
    rng = np.random.default_rng(3)
    a, y = near_boundary_layer(rng)
    order = rng.permutation(len(a))
    assert cb_keras.bundle_metrics(a, y, num_classes=6, **SETTINGS) == \
        cb_keras.bundle_metrics(a[order], y[order], num_classes=6, **SETTINGS)


def test_fingerprints_stream_batch_by_batch():
    rng = np.random.default_rng(4)
    a, _ = near_boundary_layer(rng, samples=96)
    scalars = bundles.scalars(0.5, 1e-3, 64)
    whole = bundles.fingerprint(tf.constant(a), *scalars)
    parts = tf.concat([bundles.fingerprint(tf.constant(a[i:i + 32]), *scalars)
                       for i in range(0, 96, 32)], axis=0)
    assert whole.shape == (96, bundles.FINGERPRINT_HASHES)
    np.testing.assert_array_equal(whole.numpy(), parts.numpy())


def test_distinct_rows_get_distinct_fingerprints_even_one_ulp_apart():
    base = np.full((1, 4096), 3.0, np.float32)
    neighbours = np.repeat(base, 4096, axis=0)
    neighbours[np.arange(4096), np.arange(4096)] = np.nextafter(np.float32(3.0), np.float32(4))
    result = cb_keras.bundle_metrics(np.concatenate([base, neighbours]), np.zeros(4097, int),
                                     num_classes=1, weight_amplitude=0.0, learning_rate=1.0,
                                     batch_size=1)
    assert result.num_bundles == 4097


def test_zero_weight_amplitude_and_signed_zero_are_one_bundle():
    a = np.array([[0.0, 1.0], [-0.0, 1.0]], np.float32)
    result = cb_keras.bundle_metrics(a, [0, 1], num_classes=2, weight_amplitude=-0.0,
                                     learning_rate=1.0, batch_size=1)
    assert result.num_bundles == 1


def test_weight_amplitude_of_a_model():
    import keras
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    kernel, bias = model.layers[0].get_weights()
    model.layers[0].set_weights([np.full_like(kernel, 0.25), np.array([-1.5, 0.5], np.float32)])
    assert cb_keras.weight_amplitude(model) == 1.5
    model.layers[0].set_weights([np.full_like(kernel, np.nan), np.zeros(2, np.float32)])
    with pytest.raises(ValueError, match="training diverged"):
        cb_keras.weight_amplitude(model)


def call(a=None, y=None, **overrides):
    a = np.zeros((4, 3), np.float32) if a is None else a
    y = [0, 1, 0, 1] if y is None else y
    return cb_keras.bundle_metrics(a, y, **{"num_classes": 2, **SETTINGS, **overrides})


@pytest.mark.parametrize("kwargs,error,message", [
    (dict(y=[0, 1, 0, 2]), ValueError, "labels must lie in [0, 2)"),
    (dict(y=[0, -1, 0, 1]), ValueError, "got values in [-1, 1]"),
    (dict(y=[0.0, 1.0, 0.0, 1.0]), TypeError, "labels must be integer class indices"),
    (dict(y=[0, 1, 0]), ValueError, "activations hold 4 samples but labels hold 3"),
    (dict(a=np.zeros((0, 3), np.float32), y=np.zeros(0, int)), ValueError, "zero samples"),
    (dict(learning_rate=0.0), ValueError, "learning_rate must be > 0"),
    (dict(learning_rate=-1e-3), ValueError, "learning_rate must be > 0"),
    (dict(batch_size=0), ValueError, "batch_size must be a positive integer"),
    (dict(batch_size=2.5), ValueError, "batch_size must be a positive integer"),
    (dict(num_classes=0), ValueError, "num_classes must be a positive integer"),
    (dict(weight_amplitude=-1.0), ValueError, "weight_amplitude must be >= 0"),
    (dict(weight_amplitude=float("inf")), ValueError, "training diverged"),
    (dict(a=np.array([[0, 1, np.nan]] * 4, np.float32)), ValueError, "training diverged"),
    (dict(a=np.array([[0, 1, np.inf]] * 4, np.float16)), ValueError, "training diverged"),
    (dict(a=np.array(["x"] * 4)), TypeError, "activations must be numeric"),
    (dict(learning_rate=1e-50), ValueError, "learning_rate=1e-50 is 0 in float32"),
    (dict(learning_rate=float("inf")), ValueError, "learning_rate=inf is not finite in float32"),
    (dict(learning_rate="1e-3"), TypeError, "learning_rate must be a real number"),
    (dict(batch_size=10**46), ValueError, "1 / batch_size=1e-46 is 0 in float32"),
    (dict(weight_amplitude=1e39), ValueError, "weight_amplitude=1e+39 is not finite in float32"),
    (dict(a=np.zeros((4, 0), np.float32)), ValueError, "(4, 0) have no features per sample"),
    (dict(num_classes=2**31), ValueError, "num_classes=2147483648 is more than 2147483647"),
])
def test_bad_input_is_a_clear_error(kwargs, error, message):
    with pytest.raises(error, match=re.escape(message)):
        call(**kwargs)


def test_num_classes_far_above_the_sample_size_allocates_n_columns_only():
    """The one-hot counts need the classes present, at most N: 10**9 costs nothing."""
    labels, columns = bundles.class_columns(tf.constant([7, 3, 7, 999_999_999]), 10**9)
    assert columns == 4
    np.testing.assert_array_equal(labels.numpy(), [1, 0, 1, 2])
    a = np.array([[0.0], [0.0], [1.0], [1.0]], np.float32)
    huge = call(a, y=[3, 999_999_999, 3, 3], num_classes=10**9)
    assert huge == call(a, y=[0, 1, 0, 0], num_classes=2)
    assert (huge.num_bundles, huge.max_accuracy) == (2, 0.75)


def test_too_wide_layer_is_refused_with_advice():
    a = tf.zeros((1, bundles.MAX_FEATURES + 1))
    with pytest.raises(ValueError, match="after pooling"):
        bundles.fingerprint(a, *bundles.scalars(0.5, 1e-3, 64))


@pytest.mark.parametrize("graph", [False, True])
def test_transform_rounds_each_operation_like_numpy_float32(graph):
    """No fused multiply-add, no reassociation: bit-identical to NumPy's float32 ops."""
    a = np.random.default_rng(5).normal(size=(512, 512)).astype(np.float32) * 7
    scalars = bundles.scalars(1.7, 3e-3, 96)
    transform = tf.function(bundles.transform) if graph else bundles.transform
    expected = np.float32(1.7) - ((a * np.float32(3e-3)) * np.float32(1.0 / 96))
    np.testing.assert_array_equal(transform(tf.constant(a), *scalars).numpy().view(np.int32),
                                  expected.view(np.int32))


def test_fingerprint_traces_with_unknown_batch_size():
    fingerprint = tf.function(bundles.fingerprint, input_signature=[
        tf.TensorSpec([None, 3, 2], tf.float32)] + [tf.TensorSpec([], tf.float32)] * 3)
    a = np.arange(24, dtype=np.float32).reshape(4, 3, 2)
    np.testing.assert_array_equal(fingerprint(a, *bundles.scalars(0.5, 1.0, 1)).numpy(),
                                  bundles.fingerprint(tf.constant(a),
                                                      *bundles.scalars(0.5, 1.0, 1)).numpy())
