"""The papers' experimental setting (docs/method.md §5): what the measuring core is tested on.

- `models`: the papers' networks (FNN, VGG, ResNet) with their taps and block names.
- `spec`: `NetworkSpec`, the one name of such a network (JSON form, label, build).
- `optimizers`: Lookahead(RAdam) as TF-Addons computed it (docs/reproduction.md).
- `batch_norm`: BatchNormalization with the reference's moving variance.
- `data`: the data sets with the papers' preprocessing; `array_data` is their
  NumPy pipeline off TensorFlow.
- `evaluation`: test accuracy as the papers report it.

Everything here is built on the measuring core (`cb_keras`) and never imported by it.
"""

from cb_keras.paper import array_data, batch_norm, data, evaluation, models, optimizers, spec

__all__ = ["array_data", "batch_norm", "data", "evaluation", "models", "optimizers",
           "spec"]
