"""Test session setup: quiet TensorFlow, two logical CPU devices, golden data.

Two logical CPU devices must be configured before TensorFlow initialises its
runtime, so it happens here at import time; tests of
`tf.distribute.MirroredStrategy` use them (`cpu_devices` fixture).
"""

import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)

# The golden files live in the repository (tests/data/README.md says how they
# were made); CB_KERAS_FIXTURES points the tests at another copy.
FIXTURES = pathlib.Path(os.environ.get("CB_KERAS_FIXTURES",
                                       pathlib.Path(__file__).resolve().parent / "data"))


@pytest.fixture(scope="session")
def cpu_devices() -> list[str]:
    """Names of the two logical CPU devices, for MirroredStrategy tests."""
    return [d.name for d in tf.config.list_logical_devices("CPU")]


@pytest.fixture
def mirrored_strategy(cpu_devices) -> tf.distribute.MirroredStrategy:
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
