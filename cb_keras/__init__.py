"""cb_keras: conflicting bundles for Keras 3, on every Keras backend (TensorFlow, JAX).

The measuring core is this package's top level (`bundle_metrics`, `probe`,
`measure`, `ConflictReport`, `ConflictingBundles`, and `pruning` for removing
blocks). Its users sit in subpackages that the core never imports:
`cb_keras.paper` (the papers' networks, optimizer, data and evaluation),
`cb_keras.autotune` (the architecture search) and `cb_keras.integrations`
(Optuna, Keras Tuner). `pruning`, `paper` and `autotune` are imported on first
use, so ``import cb_keras`` imports only Keras and the backend Keras runs on
(never TensorFlow on another backend).
"""

import importlib

from cb_keras.bundles import BundleMetrics, bundle_metrics, weight_amplitude
from cb_keras.callback import ConflictingBundles
from cb_keras.logs import quiet_expected_retracing
from cb_keras.measurement import measure
from cb_keras.probe import probe
from cb_keras.report import ConflictReport

_SUBMODULES = ("autotune", "paper", "pruning")

__all__ = ["BundleMetrics", "bundle_metrics", "weight_amplitude",
           "probe", "measure", "ConflictReport", "ConflictingBundles", *_SUBMODULES]


def __getattr__(name: str):
    """``cb_keras.<submodule>`` imports the submodule on first use."""
    if name in _SUBMODULES:
        return importlib.import_module(f"cb_keras.{name}")
    raise AttributeError(f"module 'cb_keras' has no attribute {name!r}")


quiet_expected_retracing()
