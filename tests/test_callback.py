"""ConflictingBundles inside model.fit: logs, files, stopping, strategies, mixed precision."""

import csv
import dataclasses
import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from sklearn.datasets import load_digits

import cb_keras
from cb_keras.callback import LOG_KEYS
from cb_keras.inputs import learning_rate_of
from cb_keras.probe import tap_names
from cb_keras.report import read_csv

SAMPLES = 256


@pytest.fixture(scope="module")
def digits():
    """All 1797 digits: x (1797, 64) float32 in [0, 1], y (1797,) int."""
    data = load_digits()
    return (data.data / 16).astype("float32"), data.target


@pytest.fixture
def mixed_precision():
    """Switch to the mixed_float16 policy for one test and restore the previous one."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    yield
    keras.mixed_precision.set_global_policy(previous)


def mlp(depth=2, width=32, learning_rate=1e-2, optimizer=None, seed=0):
    """A compiled ReLU MLP on the 64 digit pixels with a 10-way logits head."""
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [keras.Input((64,))]
        + [keras.layers.Dense(width, activation="relu", name=f"hidden{i}") for i in range(depth)]
        + [keras.layers.Dense(10, name="logits")])
    model.compile(optimizer or keras.optimizers.SGD(learning_rate),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


def fit(model, data, callback, epochs=2, **kwargs):
    x, y = data
    return model.fit(x, y, batch_size=64, epochs=epochs, callbacks=[callback], verbose=0,
                     **kwargs)


def test_logs_reach_history_and_csv_logger(digits, tmp_path):
    callback = cb_keras.ConflictingBundles(*digits, batch_size=64, samples=SAMPLES)
    path = tmp_path / "metrics.csv"
    history = mlp().fit(*digits, batch_size=64, epochs=2, verbose=0,
                        callbacks=[callback, keras.callbacks.CSVLogger(str(path))])
    reports = callback.reports
    assert [r.epoch for r in reports] == [0, 1] and reports[0].names == ["hidden1"]
    assert history.history["bundle_entropy"] == [r.last.bundle_entropy for r in reports]
    assert history.history["num_bundles"] == [r.last.num_bundles for r in reports]
    assert history.history["max_accuracy"] == [r.last.max_accuracy for r in reports]
    assert reports[0].num_samples == SAMPLES and reports[0].batch_size == 64
    assert reports[0].learning_rate == pytest.approx(1e-2)
    with open(path, newline="") as file:
        rows = list(csv.DictReader(file))
    assert set(LOG_KEYS) <= set(rows[0]) and len(rows) == 2
    assert float(rows[1]["num_bundles"]) == reports[1].last.num_bundles


def test_every_measures_every_nth_epoch_and_logs_nan_otherwise(digits):
    callback = cb_keras.ConflictingBundles(*digits, batch_size=64, samples=SAMPLES, every=2)
    history = fit(mlp(), digits, callback, epochs=3)
    assert [r.epoch for r in callback.reports] == [1]
    entropy = history.history["bundle_entropy"]
    assert len(entropy) == 3 and math.isnan(entropy[0]) and math.isnan(entropy[2])
    assert entropy[1] == callback.reports[0].last.bundle_entropy


def test_stop_on_conflict_stops_a_collapsing_deep_narrow_mlp(digits):
    # 30 ReLU layers of width 3 collapse all samples into one bundle.
    narrow = mlp(depth=30, width=3, learning_rate=0.05)
    callback = cb_keras.ConflictingBundles(*digits, batch_size=64, samples=SAMPLES,
                                           stop_on_conflict=True)
    history = fit(narrow, digits, callback, epochs=5)
    assert history.epoch == [0] and callback.stopped_epoch == 0
    last = callback.reports[-1].last
    assert last.name == "hidden29" and last.conflicting and last.num_bundles == 1


def test_stop_on_conflict_lets_a_healthy_mlp_train(digits):
    callback = cb_keras.ConflictingBundles(*digits, batch_size=64, samples=SAMPLES,
                                           stop_on_conflict=True)
    history = fit(mlp(depth=1, width=64), digits, callback, epochs=2)
    assert history.epoch == [0, 1] and history.history["bundle_entropy"] == [0.0, 0.0]


def test_stop_on_conflict_goes_on_when_a_L_diverged(nan_fed_relu_model):
    # a^(L) is fed NaN and outputs 0s: diverged, not one conflicting bundle.
    model = nan_fed_relu_model
    model.compile(optimizer=keras.optimizers.SGD(1e-2),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    y = np.arange(32) % 3
    callback = cb_keras.ConflictingBundles(x, y, batch_size=16, stop_on_conflict=True)
    history = model.fit(x, y, batch_size=16, epochs=2, callbacks=[callback], verbose=0)
    assert history.epoch == [0, 1] and np.isfinite(history.history["loss"]).all()
    assert [r.last.diverged for r in callback.reports] == [True, True]
    assert all(math.isnan(value) for key in LOG_KEYS for value in history.history[key])


def test_all_layers_write_per_epoch_reports_and_a_resumable_csv(digits, tmp_path):
    model = mlp(depth=3)
    callback = cb_keras.ConflictingBundles(*digits, batch_size=64, samples=SAMPLES,
                                           layers="auto", log_dir=tmp_path)
    fit(model, digits, callback, epochs=2)
    names = tap_names(model)
    assert names == ["hidden0", "hidden1", "hidden2"]
    assert callback.reports[-1].names == names
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "conflicts.csv", "conflicts_epoch0000.json", "conflicts_epoch0000.png",
        "conflicts_epoch0001.json", "conflicts_epoch0001.png"]
    assert read_csv(tmp_path / "conflicts.csv") == callback.reports
    # The same instance resumes: its per-run state is reset, the files continue.
    fit(model, digits, callback, epochs=3, initial_epoch=2)
    assert [r.epoch for r in callback.reports] == [2]
    assert [r.epoch for r in read_csv(tmp_path / "conflicts.csv")] == [0, 1, 2]


def test_learning_rate_follows_a_schedule_and_an_explicit_one_wins(digits):
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=10, decay_rate=0.5)
    model = mlp(optimizer=keras.optimizers.SGD(schedule))
    callback = cb_keras.ConflictingBundles(*digits, batch_size=64, samples=SAMPLES)
    fit(model, digits, callback, epochs=1)
    assert callback.reports[0].learning_rate == pytest.approx(
        float(schedule(model.optimizer.iterations)))
    assert callback.reports[0].learning_rate < 0.02  # 29 steps of decay, not the initial 0.1
    fixed = cb_keras.ConflictingBundles(*digits, batch_size=64, samples=SAMPLES,
                                        learning_rate=0.3)
    fit(model, digits, fixed, epochs=1)
    assert fixed.reports[0].learning_rate == 0.3


def test_batch_size_comes_from_a_dataset_with_a_static_batch(digits):
    dataset = tf.data.Dataset.from_tensor_slices(digits).batch(32, drop_remainder=True)
    assert cb_keras.ConflictingBundles(dataset).batch_size == 32


# Transform constants at which these MLPs have some bundles of several samples,
# so that comparing two measurements checks every rounding.
SENSITIVE = dict(learning_rate=1e-3, batch_size=8192)


def assert_not_trivial(report):
    assert any(1 < layer.num_bundles < report.num_samples for layer in report), report


def _same_but_epoch(report, other):
    return dataclasses.replace(report, epoch=None) == dataclasses.replace(other, epoch=None)


def test_fit_under_mirrored_strategy(digits, mirrored_strategy):
    strategy = mirrored_strategy
    with strategy.scope():
        model = mlp()
    dataset = tf.data.Dataset.from_tensor_slices(digits).batch(64, drop_remainder=True)
    callback = cb_keras.ConflictingBundles(dataset, samples=SAMPLES, layers="auto",
                                           **SENSITIVE)
    history = model.fit(dataset, epochs=2, callbacks=[callback], verbose=0)
    assert set(LOG_KEYS) <= set(history.history)
    report = callback.reports[-1]
    assert_not_trivial(report)
    after = cb_keras.measure(model, *digits, num_classes=10, samples=SAMPLES, layers="auto",
                             **SENSITIVE)
    assert _same_but_epoch(report, after)


def test_fit_with_mixed_precision(digits, mixed_precision):
    model = mlp(depth=3)
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    callback = cb_keras.ConflictingBundles(*digits, batch_size=64, samples=SAMPLES,
                                           layers="auto")
    history = fit(model, digits, callback)
    assert set(LOG_KEYS) <= set(history.history)
    report = callback.reports[-1]
    assert report.learning_rate == pytest.approx(1e-2) and not report.diverged
    assert model.get_layer("hidden2").output.dtype == "float16"
    sensitive = cb_keras.ConflictingBundles(*digits, samples=SAMPLES, layers="auto", **SENSITIVE)
    fit(model, digits, sensitive, epochs=1)
    assert_not_trivial(sensitive.reports[0])
    after = cb_keras.measure(model, *digits, num_classes=10, samples=SAMPLES, **SENSITIVE)
    assert _same_but_epoch(sensitive.reports[0], after)


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize("kwargs, message", [
    (dict(), "needs the training batch size.*pass batch_size="),
    (dict(batch_size=0), "batch_size must be a positive integer, got 0"),
    (dict(batch_size=64, every=0), "every must be a positive integer, got 0"),
    (dict(batch_size=64, samples=-1), "samples must be a positive integer, got -1"),
    (dict(batch_size=64, num_classes=0), "num_classes must be a positive integer, got 0"),
    (dict(batch_size=64, learning_rate=0.0), "learning_rate must be > 0, got 0.0"),
    (dict(batch_size=64, learning_rate=1e-50), "learning_rate=1e-50 is 0 in float32"),
    (dict(batch_size=64, layers="every"), "not a mode; use one of"),
])
def test_bad_arguments_fail_in_the_constructor(digits, kwargs, message):
    with pytest.raises(ValueError, match=message):
        cb_keras.ConflictingBundles(*digits, **kwargs)


def test_a_dataset_without_static_batch_needs_batch_size(digits):
    dataset = tf.data.Dataset.from_tensor_slices(digits).batch(32)
    with pytest.raises(ValueError, match="needs the training batch size.*drop_remainder=True"):
        cb_keras.ConflictingBundles(dataset)


def test_num_classes_that_cannot_be_inferred_fails_before_training(digits):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    x, y = digits
    callback = cb_keras.ConflictingBundles(x, y % 2, batch_size=64)
    with pytest.raises(ValueError, match=r"cannot infer num_classes .*\[\(None, 1\)\].*"
                                         "pass num_classes="):
        model.fit(x, y % 2, epochs=1, verbose=0, callbacks=[callback])
    assert model.optimizer.iterations.numpy() == 0


def test_untappable_model_fails_before_training(digits):
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.head = keras.layers.Dense(10)

        def call(self, x):
            return self.head(x)

    model = Net()
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    callback = cb_keras.ConflictingBundles(*digits, batch_size=64, num_classes=10)
    with pytest.raises(ValueError, match="subclassed keras.Model"):
        fit(model, digits, callback, epochs=1)
    assert model.optimizer.iterations.numpy() == 0


def test_an_optimizer_without_learning_rate_says_to_pass_one():
    with pytest.raises(ValueError, match="cannot read a learning rate.*pass learning_rate="):
        learning_rate_of(object())


def test_learning_rate_of_plain_and_callable_rates():
    assert learning_rate_of(keras.optimizers.Adam(0.25)) == 0.25

    class Wrapper:
        learning_rate = staticmethod(lambda: np.float32(0.5))

    assert learning_rate_of(Wrapper()) == 0.5
