"""How a model's inputs become a measurement sample, and the numbers read off training.

`take_sample` takes the first examples of arrays, a `tf.data.Dataset` or a
`keras.utils.PyDataset` as NumPy (`input_arrays` checks the arrays);
`dataset_batch_size` reads the static batch size of a batched data set and
`learning_rate_of` an optimizer's current learning rate, the two training
numbers the metric's transform uses (docs/method.md §1). `measure`, the
`ConflictingBundles` callback and the search's trainers all use these.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from cb_keras import _backend, validation


def take_sample(x: Any, y: Any, samples: int) -> tuple[Any, np.ndarray]:
    """The first `samples` examples of `x`, `y` as NumPy: ``(x[:n], y[:n])``.

    `x` is an array or a nested structure of arrays with `y` an array, or a
    `tf.data.Dataset` or `keras.utils.PyDataset` of ``(x, y)`` (or
    ``(x, y, sample_weight)``) batches with `y` None; a nested list of numbers is one array (`input_arrays`).
    Raises TypeError for inputs that are not numeric arrays with a sample
    axis, and ValueError for a wrong `samples`, a length mismatch, an empty
    source, or `y` given with a Dataset (or missing without one).
    """
    validation.check_positive_int("samples", samples)
    if _backend.is_tf_dataset(x) or isinstance(x, keras.utils.PyDataset):
        if y is not None:
            raise ValueError(
                "x is a tf.data.Dataset, so it must yield (x, y) batches and y must "
                "be None; pass y=None.")
        return _sample_from_dataset(x, samples)
    if y is None:
        raise ValueError(
            "y is None but x is not a tf.data.Dataset; pass the integer labels y "
            "of x, or a Dataset of (x, y) batches as x.")
    sample_x = keras.tree.map_structure(lambda a: a[:samples], input_arrays(x))
    sample_y = np.asarray(y)[:samples]
    if sample_count(sample_x) != len(sample_y):
        raise ValueError(
            f"x holds {sample_count(sample_x)} samples in its first {samples} but y holds "
            f"{len(sample_y)}; pass one label per sample.")
    return sample_x, sample_y


def input_arrays(x: Any) -> Any:
    """`x` as NumPy arrays of shape (N, ...): an array, or a nested structure of them.

    A list or tuple whose elements are all numbers (a nested list of samples)
    becomes one array; a list of arrays stays a list of model inputs, as in
    Keras. TypeError for anything that is not a numeric array with a sample
    axis (strings, ragged lists, scalars).
    """
    if isinstance(x, (list, tuple)) and x \
            and all(np.ndim(leaf) == 0 for leaf in keras.tree.flatten(x)):
        try:
            x = np.asarray(x)
        except ValueError as error:  # ragged nesting
            raise TypeError(
                f"x is a nested list that is not rectangular ({error}); pass a NumPy "
                "array of shape (N, ...).") from error
    arrays = keras.tree.map_structure(np.asarray, x)
    if not keras.tree.flatten(arrays):
        raise TypeError(f"x holds no arrays (got {x!r}); pass the samples as an array "
                        "of shape (N, ...).")
    for array in keras.tree.flatten(arrays):
        if array.ndim == 0 or not (np.issubdtype(array.dtype, np.number)
                                   or array.dtype == np.bool_):
            raise TypeError(
                f"x must be numeric arrays of shape (N, ...) (one per model input), got "
                f"an array of shape {array.shape} and dtype {array.dtype}; convert it "
                "with np.asarray(x, dtype='float32').")
    return arrays


def _sample_from_dataset(dataset: Any, samples: int) -> tuple[Any, np.ndarray]:
    """Concatenate the first batches of a Dataset of (x, y) batches up to `samples`."""
    xs, ys, count = [], [], 0
    for element in dataset:
        if not isinstance(element, (tuple, list)) or len(element) not in (2, 3):
            raise ValueError(
                "the Dataset must yield (x, y) or (x, y, sample_weight) batches; got "
                f"elements of structure {keras.tree.map_structure(lambda t: t.shape, element)}.")
        if np.ndim(element[1]) == 0:
            raise ValueError(
                "the Dataset yields single examples, not batches; batch it first, e.g. "
                "dataset.batch(64).")
        xs.append(keras.tree.map_structure(np.asarray, element[0]))
        ys.append(np.asarray(element[1]))
        count += len(ys[-1])
        if count >= samples:
            break
    if not ys:
        raise ValueError("the Dataset is empty; pass the training data to measure on.")
    sample_x = keras.tree.map_structure(lambda *parts: np.concatenate(parts)[:samples], *xs)
    return sample_x, np.concatenate(ys)[:samples]


def sample_count(x: Any) -> int:
    """N: the length of the leading axis of the (first) input array of `x`."""
    return len(keras.tree.flatten(x)[0])


def dataset_batch_size(x: Any) -> int | None:
    """The static batch size of a batched `tf.data.Dataset`, or the ``batch_size`` of a
    `keras.utils.PyDataset` such as `cb_keras.paper.data.load`'s off TensorFlow (None if unknown)."""
    if isinstance(x, keras.utils.PyDataset):
        size = getattr(x, "batch_size", None)
        return size if validation.is_int(size) else None
    if _backend.is_tf_dataset(x):
        static = keras.tree.flatten(x.element_spec)[0].shape
        if static.rank and static[0] is not None:
            return int(static[0])
    return None


def learning_rate_of(optimizer: Any) -> float:
    """The current learning rate of a Keras optimizer, as a float.

    Follows `LearningRateSchedule`s (evaluated at ``optimizer.iterations``)
    and callables, and wrappers that expose ``learning_rate`` (e.g.
    LossScaleOptimizer). Raises ValueError when there is none.
    """
    rate = getattr(optimizer, "learning_rate", None)
    if rate is None:
        raise ValueError(
            f"cannot read a learning rate from the optimizer {optimizer!r} (it has no "
            "`learning_rate`); pass learning_rate= to ConflictingBundles.")
    if isinstance(rate, keras.optimizers.schedules.LearningRateSchedule):
        rate = rate(optimizer.iterations)
    elif callable(rate):
        rate = rate()
    return float(keras.ops.convert_to_numpy(rate))
