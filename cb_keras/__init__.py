"""cb_keras: conflicting bundles for Keras 3."""

from cb_keras.bundles import BundleMetrics, bundle_metrics, weight_amplitude

__all__ = ["BundleMetrics", "bundle_metrics", "weight_amplitude"]
