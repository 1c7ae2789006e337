"""cb_keras on every Keras backend: run this file with KERAS_BACKEND=tensorflow, =jax and =torch.

The metric on the golden cases, the probe, `measure`, the residual branch
tap and the callback inside ``model.fit``, on the backend the session runs
(``KERAS_BACKEND``), and the guarantees of the other backends in
subprocesses: no TensorFlow import on JAX and PyTorch (loading digits
included), the tf.data pipeline imported on TensorFlow only when a call
needs it, the transform's rounding under a compiler that contracts
multiply-adds (JAX) and PyTorch's square root.
"""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import cb_keras
from cb_keras import bundles
from cb_keras.probe import probe
from cb_keras.taps import BRANCH_SCALE_EPSILON, ScaledBranchTap, Tap

BACKEND = keras.backend.backend()
REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def golden_cases():
    with np.load(__import__("conftest").FIXTURES / "bundle_cases.npz") as data:
        return {key: data[key] for key in data.files}


MODULE_OF_BACKEND = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}
LIBRARY = {"tensorflow": "TensorFlow", "jax": "JAX", "torch": "PyTorch"}


def run_on(backend: str, code: str, **environment: str) -> subprocess.CompletedProcess:
    """Run `code` in a fresh Python on Keras `backend` (skipped without its library)."""
    pytest.importorskip(MODULE_OF_BACKEND[backend], reason=f"{LIBRARY[backend]} is not installed")
    env = dict(os.environ, KERAS_BACKEND=backend, PYTHONPATH=REPOSITORY, **environment)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("index", range(len(golden_cases()["names"])))
def test_golden_cases_on_this_backend(bundle_cases, index):
    name = str(bundle_cases["names"][index])
    result = cb_keras.bundle_metrics(
        bundle_cases[f"{index}_a"], bundle_cases[f"{index}_y"],
        num_classes=int(bundle_cases[f"{index}_C"]),
        weight_amplitude=float(bundle_cases[f"{index}_wmax"]),
        learning_rate=float(bundle_cases[f"{index}_lr"]),
        batch_size=int(bundle_cases[f"{index}_bs"]))
    assert result.num_bundles == int(bundle_cases[f"{index}_nb"]), name
    assert result.bundle_entropy == pytest.approx(float(bundle_cases[f"{index}_H"]), abs=1e-6)


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_import_measure_and_fit_load_no_other_backend(backend):
    result = run_on(backend, """
        import sys
        import keras, numpy as np
        import cb_keras
        inputs = keras.Input((4,))
        h = keras.layers.Dense(8, activation="relu", name="h")(inputs)
        model = keras.Model(inputs, keras.layers.Dense(3, name="logits")(h))
        x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
        y = np.arange(32) % 3
        cb_keras.measure(model, x, y, num_classes=3, learning_rate=0.1, batch_size=8)
        model.compile("sgd", "sparse_categorical_crossentropy")
        model.fit(x, y, batch_size=8, epochs=1, verbose=0,
                  callbacks=[cb_keras.ConflictingBundles(x, y, batch_size=8)])
        cb_keras.paper.models, cb_keras.pruning
        others = {"tensorflow", "tensorflow_datasets", "jax", "torch"} - {keras.backend.backend()}
        print(sorted(m for m in sys.modules if m.split(".")[0] in others))
    """)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_digits_load_off_tensorflow_without_the_tf_data_pipeline(backend):
    result = run_on(backend, """
        import sys
        from cb_keras.paper import data
        data.load("digits", batch_size=64, shuffle_seed=0)
        data.measurement_sample("digits", 64)
        data.augmented_sample("digits", 64, batch_size=64, seed=0)
        print(sorted(m for m in sys.modules if m == "cb_keras.paper.tf_data"
                     or m.split(".")[0] in {"tensorflow", "tensorflow_datasets"}))
    """)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_tensorflow_imports_the_tf_data_pipeline_only_when_a_call_needs_it():
    result = run_on("tensorflow", """
        import sys
        from cb_keras.paper import data
        pipeline = ("cb_keras.paper.tf_data", "tensorflow_datasets")
        print([m in sys.modules for m in pipeline])
        data.load("digits", batch_size=64)
        print([m in sys.modules for m in pipeline])
    """)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-2:] == ["[False, False]", "[True, True]"]


def test_jax_transform_rounds_like_separate_float32_operations_under_fast_math():
    """XLA's fast math contracts ``w - x * ibs`` into an FMA and reassociates the
    products (1865 of 512 x 4096 values differ when unguarded); the guarded
    transform still equals NumPy's separate float32 operations bit for bit."""
    result = run_on("jax", """
        import jax, numpy as np
        from cb_keras import bundles
        a = np.random.default_rng(0).normal(size=(512, 4096)).astype(np.float32)
        w, lr, ibs = bundles.scalars(0.73, 0.1, 64)
        t = jax.jit(bundles.transform)(a, w, lr, ibs)
        expected = np.float32(0.73) - ((a * np.float32(0.1)) * np.float32(1 / 64))
        print(int(np.sum(np.asarray(t).view(np.int32) != expected.view(np.int32))))
    """, XLA_FLAGS="--xla_cpu_enable_fast_math=true")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "0"


def test_torch_transform_and_square_root_round_like_numpy_float32():
    """PyTorch's float32 sqrt is one unit in the last place off for about a sixth
    of the values on the CPU; `torch_kernels.sqrt` (branch scale, RAdam) is
    correctly rounded, and the transform rounds each operation on its own."""
    result = run_on("torch", """
        import numpy as np, torch
        from cb_keras import bundles
        from cb_keras._backend import torch_kernels
        rng = np.random.default_rng(0)
        a = rng.normal(size=(512, 4096)).astype(np.float32)
        w, lr, ibs = bundles.scalars(0.73, 0.1, 64)
        t = bundles.transform(torch.from_numpy(a), w, lr, ibs).numpy()
        expected = np.float32(0.73) - ((a * np.float32(0.1)) * np.float32(1 / 64))
        x = (np.abs(a[:8]).reshape(-1) * np.float32(10.0) ** rng.integers(-20, 20, 8 * 4096)
             ).astype(np.float32)
        sqrt = torch_kernels.sqrt(torch.from_numpy(x)).numpy()
        print(int(np.sum(t.view(np.int32) != expected.view(np.int32))),
              int(np.sum(sqrt.view(np.int32) != np.sqrt(x).view(np.int32))))
    """)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "0 0"


def mlp(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((16,))
    h = keras.layers.Dense(12, activation="relu", name="h1")(inputs)
    h = keras.layers.Dense(6, activation="tanh", name="h2")(h)
    return keras.Model(inputs, keras.layers.Dense(4, name="logits")(h))


def sample(n: int = 96):
    rng = np.random.default_rng(1)
    return rng.normal(size=(n, 16)).astype("float32"), np.arange(n) % 4


def test_measure_equals_bundle_metrics_of_each_probed_layer_and_is_cached():
    model, (x, y) = mlp(), sample()
    settings = dict(num_classes=4, learning_rate=0.05, batch_size=32)
    report = cb_keras.measure(model, x, y, layers="all", **settings)
    outputs = probe(model, "all")(x)
    assert [layer.name for layer in report.layers] == list(outputs) == ["h1", "h2"]
    w_max = cb_keras.weight_amplitude(model)
    for layer in report.layers:
        expected = cb_keras.bundle_metrics(
            keras.ops.convert_to_numpy(outputs[layer.name]), y, weight_amplitude=w_max,
            **settings)
        assert (layer.num_bundles, layer.bundle_entropy, layer.max_accuracy) == (
            expected.num_bundles, expected.bundle_entropy, expected.max_accuracy)
    assert report.weight_amplitude == w_max and report.num_samples == 96
    from cb_keras.measurement import _measurer
    assert _measurer(model, "all") is _measurer(model, "all")
    assert cb_keras.measure(model, x, y, layers="all", **settings) == report


def test_measure_follows_new_weights():
    """The compiled forward pass reads the current weights, not those of its first trace."""
    model, (x, y) = mlp(), sample()
    settings = dict(num_classes=4, learning_rate=0.05, batch_size=32, layers="all")
    before = cb_keras.measure(model, x, y, **settings)
    model.get_layer("h1").kernel.assign(np.zeros((16, 12), "float32"))
    after = cb_keras.measure(model, x, y, **settings)
    assert before.layers[0].num_bundles == 96
    assert after.layers[0].num_bundles == 1 and after.layers[0].conflicting


def branch_block() -> keras.Model:
    keras.utils.set_random_seed(3)
    inputs = keras.Input((6, 6, 2))
    c1 = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="c1")(inputs)
    c2 = keras.layers.Conv2D(4, 3, padding="same", name="c2")(c1)
    branch = ScaledBranchTap(name="branch_tap")([c2, c1, c2])
    h = Tap(name="out_tap")(keras.layers.ReLU(name="out")(branch))
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inputs, keras.layers.Dense(3, name="logits")(h))


def test_branch_tap_is_the_formula_in_float32_bit_for_bit_per_forward_batch():
    model = branch_block()
    x = np.random.default_rng(2).normal(size=(40, 6, 6, 2)).astype("float32")
    y = np.arange(40) % 3
    batch = 16
    convs = keras.Model(model.input, [model.get_layer("c1").output,
                                      model.get_layer("c2").output])
    ops, f = keras.ops, np.float32

    def scale(c):  # the backend's variance; then IEEE float32 operations (NumPy's)
        variance = f(ops.convert_to_numpy(ops.var(ops.cast(c, "float32"))))
        return f(1.0) / np.sqrt(variance + f(BRANCH_SCALE_EPSILON))

    expected = []
    for start in range(0, 40, batch):
        c1, c2 = convs(x[start:start + batch])
        formula = (ops.convert_to_numpy(ops.cast(c2, "float32")) * scale(c2)) * scale(c1)
        tapped = ops.convert_to_numpy(probe(model)(x[start:start + batch])["branch_tap"])
        np.testing.assert_array_equal(tapped.view(np.int32), formula.view(np.int32))
        expected.append(formula)
    # measure evaluates in forward batches of the training batch size.
    report = cb_keras.measure(model, x, y, num_classes=3, learning_rate=0.01,
                              batch_size=batch)
    direct = cb_keras.bundle_metrics(np.concatenate(expected), y, num_classes=3,
                                     weight_amplitude=cb_keras.weight_amplitude(model),
                                     learning_rate=0.01, batch_size=batch)
    layer = report.layers[0]
    assert layer.name == "branch_tap"
    assert (layer.num_bundles, layer.bundle_entropy) == (direct.num_bundles,
                                                         direct.bundle_entropy)


def fit(model, x, y, callback, epochs):
    model.compile(keras.optimizers.SGD(0.05),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model.fit(x, y, batch_size=32, epochs=epochs, verbose=0, callbacks=[callback])


def test_callback_logs_inside_fit_and_matches_measure():
    model, (x, y) = mlp(), sample()
    callback = cb_keras.ConflictingBundles(x, y, batch_size=32, layers="all")
    history = fit(model, x, y, callback, epochs=2)
    assert {"bundle_entropy", "num_bundles", "max_accuracy"} <= set(history.history)
    assert len(callback.reports) == 2
    assert history.history["num_bundles"][-1] == callback.reports[-1].last.num_bundles
    again = cb_keras.measure(model, x, y, num_classes=4, learning_rate=0.05, batch_size=32,
                             layers="all")
    assert again.layers == callback.reports[-1].layers


def test_stop_on_conflict_inside_fit():
    model, (x, y) = mlp(), sample()
    model.get_layer("h2").kernel.assign(np.zeros((12, 6), "float32"))
    model.get_layer("h2").trainable = False  # a^(L) stays one bundle: conflicting
    callback = cb_keras.ConflictingBundles(x, y, batch_size=32, stop_on_conflict=True)
    history = fit(model, x, y, callback, epochs=4)
    assert history.epoch == [0] and callback.reports[-1].last.num_bundles == 1
    assert history.history["bundle_entropy"][0] == pytest.approx(np.log(4), abs=1e-3)


def numpy(x):
    return keras.ops.convert_to_numpy(x)


def test_pruning_lesion_and_plain_keras_file_on_this_backend(tmp_path):
    from cb_keras import pruning, taps
    from cb_keras.paper import models

    keras.utils.set_random_seed(0)
    model = models.resnet([2, 1, 0, 0], (8, 8, 1), 10)
    x = np.random.default_rng(0).random((24, 8, 8, 1)).astype("float32")
    y = np.arange(24) % 10
    blocks = pruning.residual_blocks(model)
    assert [b.name for b in blocks] == ["stage1_block1", "stage1_block2", "stage2_block1"]
    # A dead branch (zero last conv) gives every sample the same branch: one bundle.
    conv2 = model.get_layer("stage1_block2_conv2")
    conv2.kernel.assign(np.zeros(conv2.kernel.shape, "float32"))
    conflicts = pruning.conflicting_blocks(model, x, y, num_classes=10, learning_rate=1e-3,
                                           batch_size=8)
    assert conflicts.conflicting == ["stage1_block2"]
    report = cb_keras.measure(model, x, y, layers=[b.branches[0] for b in blocks],
                              num_classes=10, learning_rate=1e-3, batch_size=8)
    assert [conflicts.metrics(b.name) for b in blocks] == list(report.layers)
    removed = ["stage1_block2", "stage2_block1"]
    pruned = pruning.remove_blocks(model, removed)
    expected = numpy(pruning.lesioned(model, removed)(x))
    np.testing.assert_allclose(numpy(pruned(x)), expected, rtol=1e-5, atol=1e-6)
    assert pruning.weight_layers(pruned) == pruning.weight_layers(model) - 4
    taps.strip_taps(pruned).save(tmp_path / "pruned.keras")
    np.save(tmp_path / "x.npy", x)
    # Plain Keras loads it: no cb_keras import in the loading process.
    loaded = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, keras, numpy as np
            model = keras.models.load_model({str(tmp_path / "pruned.keras")!r})
            np.save({str(tmp_path / "out.npy")!r},
                    keras.ops.convert_to_numpy(model(np.load({str(tmp_path / "x.npy")!r}))))
            assert "cb_keras" not in sys.modules
        """)], env=dict(os.environ, KERAS_BACKEND=BACKEND), capture_output=True, text=True,
        timeout=300)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(BACKEND != "jax", reason="keras.distribution.DataParallel is JAX's")
def test_fit_under_data_parallel_measures_as_on_one_device():
    devices = keras.distribution.list_devices("cpu")
    assert len(devices) == 2  # conftest: --xla_force_host_platform_device_count=2
    x, y = sample()

    def train(distribution):
        keras.distribution.set_distribution(distribution)
        try:
            model = mlp()
            callback = cb_keras.ConflictingBundles(x, y, batch_size=32, layers="all")
            fit(model, x, y, callback, epochs=2)
            return model, callback.reports
        finally:
            keras.distribution.set_distribution(None)

    parallel_model, parallel = train(keras.distribution.DataParallel(devices=devices))
    assert len(parallel_model.get_layer("h1").kernel.value.sharding.device_set) == 2
    single_model, single = train(None)
    assert [report.layers for report in parallel] == [report.layers for report in single]
