"""cb_keras: conflicting bundles for Keras 3."""

from cb_keras import autotune, data, models, optimizers, pruning
from cb_keras.bundles import BundleMetrics, bundle_metrics, weight_amplitude
from cb_keras.callback import ConflictingBundles
from cb_keras.logs import quiet_expected_retracing
from cb_keras.measurement import measure
from cb_keras.probe import probe
from cb_keras.report import ConflictReport

__all__ = ["BundleMetrics", "bundle_metrics", "weight_amplitude",
           "probe", "measure", "ConflictReport", "ConflictingBundles",
           "autotune", "data", "models", "optimizers", "pruning"]

quiet_expected_retracing()
