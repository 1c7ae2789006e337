"""Test session setup: the Keras backend, two CPU devices, golden data.

The backend is ``KERAS_BACKEND`` (default TensorFlow). Two CPU devices must
be configured before the backend initialises its runtime, so it happens here
at import time: two logical TensorFlow CPUs for `tf.distribute.MirroredStrategy`
tests (`cpu_devices` fixture), two XLA host devices on JAX for
`keras.distribution.DataParallel`. Tests marked ``tensorflow_only`` are
skipped, with the reason shown, on other backends; TensorFlow is never
imported there.
"""

import os
import pathlib

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("MPLBACKEND", "Agg")
BACKEND = os.environ["KERAS_BACKEND"]
if BACKEND == "tensorflow":
    import experiments  # noqa: F401  TensorFlow's process defaults, before TensorFlow
elif BACKEND == "jax":
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_force_host_platform_device_count=2").strip()

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from absl import flags  # noqa: E402

if BACKEND == "tensorflow":
    import tensorflow as tf

    _cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        _cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "tensorflow_only(reason): needs TensorFlow (tf.data, TFDS, SavedModel, "
        "tf.distribute or a TensorFlow-specific bit-exact path); skipped on other backends")


def pytest_collection_modifyitems(config, items):
    """Skip ``tensorflow_only`` tests on other backends, with their reason."""
    if BACKEND == "tensorflow":
        return
    for item in items:
        marker = item.get_closest_marker("tensorflow_only")
        if marker is not None:
            reason = marker.kwargs.get("reason") or (marker.args[0] if marker.args else "")
            item.add_marker(pytest.mark.skip(
                reason=f"TensorFlow only, Keras runs on {BACKEND}: {reason}"))

# The golden files live in the repository (tests/data/README.md says how they
# were made); CB_KERAS_FIXTURES points the tests at another copy.
FIXTURES = pathlib.Path(os.environ.get("CB_KERAS_FIXTURES",
                                       pathlib.Path(__file__).resolve().parent / "data"))


@pytest.fixture(scope="session")
def cpu_devices() -> list[str]:
    """Names of the two logical CPU devices, for MirroredStrategy tests."""
    return [d.name for d in tf.config.list_logical_devices("CPU")]


@pytest.fixture
def mirrored_strategy(cpu_devices) -> "tf.distribute.MirroredStrategy":
    """A MirroredStrategy over the two logical CPUs.

    ReductionToOneDevice, not the default collective all-reduce: collective
    instance keys restart with every strategy, so a second strategy in the
    same process fails with "Shape mismatch in the collective instance".
    """
    return tf.distribute.MirroredStrategy(
        cpu_devices, cross_device_ops=tf.distribute.ReductionToOneDevice())


@pytest.fixture(scope="session")
def bundle_cases() -> dict:
    """The golden cases of tests/data/bundle_cases.npz as a dict of arrays."""
    with np.load(FIXTURES / "bundle_cases.npz") as data:
        return {key: data[key] for key in data.files}


@pytest.fixture(scope="session")
def optimizer_cases() -> dict:
    """The golden trajectories of tests/data/optimizer_cases.npz."""
    with np.load(FIXTURES / "optimizer_cases.npz") as data:
        return {key: data[key] for key in data.files}


def nan_to_zero_relu(x):
    """ReLU as fused oneDNN and GPU kernels compute it: NaN comes out as 0."""
    return keras.ops.where(keras.ops.isnan(x), 0.0, keras.ops.relu(x))


@pytest.fixture(scope="module")
def sample():
    """The fixed measurement sample of 64 digits, ``(x, y)``."""
    from cb_keras.paper import data
    return data.measurement_sample("digits", 64)


@pytest.fixture
def nan_fed_relu_model():
    """(batch, 4) -> (batch, 3): a frozen sqrt of -1 (NaN) feeds `fused_relu`, whose
    outputs are all 0; the logits and their weights stay finite."""
    inputs = keras.Input((4,))
    h = keras.layers.Dense(4, kernel_initializer="zeros", trainable=False, name="pre",
                           bias_initializer=keras.initializers.Constant(-1.0))(inputs)
    h = keras.layers.Activation(keras.ops.sqrt, name="sqrt")(h)
    h = keras.layers.Activation(nan_to_zero_relu, name="fused_relu")(h)
    return keras.Model(inputs, keras.layers.Dense(3, name="logits")(h))


def short_branch_block(branch_kernel: int = 3) -> keras.Model:
    """(batch, 8, 8, 1) -> (batch, 10), one residual block "blk" (Add "blk_add") whose
    shortcut, 1x1 conv "proj" -> BN -> ReLU, is longer than its branch, one
    `branch_kernel` conv "branch"."""
    keras.utils.set_random_seed(5)
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="stem")(inputs)
    shortcut = keras.layers.Conv2D(8, 1, name="proj")(h)
    shortcut = keras.layers.ReLU(name="proj_relu")(
        keras.layers.BatchNormalization(name="proj_bn")(shortcut))
    branch = keras.layers.Conv2D(8, branch_kernel, padding="same", name="branch")(h)
    h = keras.layers.ReLU(name="out")(keras.layers.Add(name="blk_add")([shortcut, branch]))
    h = keras.layers.GlobalAveragePooling2D(name="gap")(h)
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(h))


def run_command(module, *argv: str) -> None:
    """What ``python -m experiments <module> ARGV`` does, in this process.

    absl parses `argv` for the command module and ``module.main`` runs with
    what remains; the flags are reset afterwards, also when it raises.
    """
    flags.FLAGS.unparse_flags()
    try:
        module.main(flags.FLAGS([module.__name__, *argv]))
    finally:
        flags.FLAGS.unparse_flags()


@pytest.fixture(scope="session")
def command():
    """`run_command`: ``command(module, *argv)`` runs an experiments command in-process
    (session-scoped, so module-scoped fixtures can make their runs with it)."""
    return run_command


# A small auto_tune search that restarts once: --learning_rate=1e-7 makes a^L one
# bundle, so attempt 0 (blocks 1,1,0,0) restarts after epoch 1 as 0,1,0,0, and
# --max_restarts=1 lets attempt 1 train its 2 epochs unchecked.
RESTARTING_SEARCH = (
    "--dataset=digits", "--model=vgg", "--blocks=1,1,0,0", "--epochs=2", "--check_window=1",
    "--max_restarts=1", "--learning_rate=1e-7", "--measure_every=0", "--measure_samples=64",
    "--latency_repeats=1", "--noaugment", "--noexport", "--progress=none")


@pytest.fixture(scope="session")
def restarting_search() -> tuple[str, ...]:
    """The flags of `RESTARTING_SEARCH` (add --run_dir)."""
    return RESTARTING_SEARCH


@pytest.fixture(scope="session")
def tensorboard_tags():
    """``tensorboard_tags(folder) -> set[str]``: the tags of the scalar summaries in the
    events files of `folder`."""
    def tags_of(folder: pathlib.Path) -> set[str]:
        tags = set()
        for path in folder.glob("events.out.tfevents.*"):
            for record in tf.data.TFRecordDataset(str(path)):
                event = tf.compat.v1.Event.FromString(record.numpy())
                tags.update(value.tag for value in event.summary.value)
        return tags
    return tags_of


@pytest.fixture
def parse():
    """Parse argv for an experiments command module; flags are reset after the test.

    ``parse(module, *argv)`` returns absl's remaining argv, as ``app.run``
    would pass it to ``module.main``.
    """
    def _parse(module, *argv: str) -> list[str]:
        flags.FLAGS.unparse_flags()
        return flags.FLAGS([module.__name__, *argv])
    yield _parse
    flags.FLAGS.unparse_flags()
