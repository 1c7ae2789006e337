"""The backend boundary: the few kernels that differ between Keras backends.

Everything else in cb_keras is written once, with NumPy and ``keras.ops``.
The kernels of the running backend (``keras.backend.backend()``) are the
module `kernels`: `cb_keras._backend.tf_kernels` on TensorFlow (the
reference's bit-exact float ops, `tf.function`), `cb_keras._backend.jax_kernels`
on JAX (`jax.jit`), `cb_keras._backend.torch_kernels` on PyTorch (eager). All
offer the same functions; see `cb_keras.bundles` for what they compute.

TensorFlow-only features (TFDS data sets, SavedModel export,
``tf.distribute``) import TensorFlow where they are used, through
`require_tensorflow`, so ``import cb_keras`` never imports it on another
backend.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType
from typing import Any

import keras

NAME = keras.backend.backend()
_KERNEL_MODULES = {"tensorflow": "tf_kernels", "jax": "jax_kernels", "torch": "torch_kernels"}

if NAME not in _KERNEL_MODULES:
    raise ImportError(
        f"cb_keras supports the Keras backends {sorted(_KERNEL_MODULES)}, but Keras runs "
        f"on {NAME!r}; set KERAS_BACKEND to one of them before importing keras.")

kernels: ModuleType = importlib.import_module(f"cb_keras._backend.{_KERNEL_MODULES[NAME]}")


def is_tf_dataset(x: Any) -> bool:
    """Is `x` a `tf.data.Dataset`? Never imports TensorFlow (none exists before it is)."""
    tf = sys.modules.get("tensorflow")
    return tf is not None and isinstance(x, tf.data.Dataset)


def require_tensorflow(feature: str) -> ModuleType:
    """The `tensorflow` module; ImportError naming `feature` if it is not installed."""
    try:
        return importlib.import_module("tensorflow")
    except ImportError as error:
        raise ImportError(
            f"{feature} needs TensorFlow, which is not installed (Keras runs on {NAME!r}); "
            "pip install tensorflow, or use a feature that works on every backend.") from error
