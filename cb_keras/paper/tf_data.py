"""The papers' data sets as ``tf.data`` pipelines, on TensorFlow (docs/method.md §5).

`cb_keras.paper.data` uses it when Keras runs on TensorFlow; this module
holds everything of that pipeline that needs TensorFlow: the TFDS and
in-memory sources, the preprocessing steps of `cb_keras.paper.data`'s table
as ``tf.image`` operations, the seeded training batches and the unaugmented
test batches and measurement sample. Each training example draws a seed
from ``tf.data.Dataset.random``, split into one per step of the stateless
random ops; that stream and the shuffle are seeded by ``shuffle_seed``,
combined with TensorFlow's global seed as every tf.data seed is.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

BRIGHTNESS_DELTA = 0.25

Step = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]  # (image, seed (2,) int64) -> image


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


_MNIST = ((convert, pad(32), crop(28), bright), (convert,))
# name -> (training augmentation, test preprocessing), as `cb_keras.paper.data`'s table.
RECIPES: dict[str, tuple[tuple[Step, ...], tuple[Step, ...]]] = {
    "mnist": _MNIST,
    "cifar10": ((convert, standardize, pad(38), crop(32), flip, bright), (convert, standardize)),
    "svhn_cropped": ((convert, pad(36), crop(32), standardize, bright), (convert, standardize)),
    "imagenette": ((convert, pad(138), crop(128), flip, standardize, bright),
                   (convert, pad(128), standardize)),
    "digits": ((zero_pad(10), crop(8)), ()),
    "mnist5k": _MNIST,
}


@dataclasses.dataclass(frozen=True)
class Source:
    """Unprocessed splits: (image, label) examples, images uint8 or float32."""

    train: tf.data.Dataset
    test: tf.data.Dataset
    num_classes: int


class NotPrepared(Exception):
    """TFDS holds no prepared copy of a data set; the message says how to prepare one."""


def tfds_source(tfds_name: str, data_dir: str | None, test_split: str) -> Source:
    """TFDS splits as (uint8 image, label) datasets, read in a fixed order.

    Raises:
        NotPrepared: the data set is not prepared in `data_dir` (nothing is
            downloaded).
    """
    builder = tfds.builder(tfds_name, data_dir=data_dir)
    try:
        train = builder.as_dataset(split="train", as_supervised=True, shuffle_files=False)
        test = builder.as_dataset(split=test_split, as_supervised=True, shuffle_files=False)
    except AssertionError as error:  # TFDS's "could not find data in <data_dir>"
        raise NotPrepared(_not_prepared_message(tfds_name, builder)) from error
    return Source(train, test, builder.info.features["label"].num_classes)


def _not_prepared_message(tfds_name: str, builder: tfds.core.DatasetBuilder) -> str:
    root = builder.data_dir_root
    return (
        f"TFDS data set '{tfds_name}' is not prepared in data_dir {root} (looked for "
        f"{builder.data_dir}), and cb_keras never downloads. On a machine with internet "
        f"access run\n    tfds build {tfds_name} --data_dir=/some/dir\n(or "
        f"tfds.load('{tfds_name}', data_dir='/some/dir', download=True)), then copy "
        f"/some/dir/{builder.name}/ into {root}/ on this machine, or pass "
        "data_dir=... / set TFDS_DATA_DIR to where it is. To try cb_keras without "
        "any download, use the data set 'digits'.")


def arrays_source(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
                  y_test: np.ndarray) -> Source:
    """NumPy splits as datasets of (image, label) examples."""
    return Source(tf.data.Dataset.from_tensor_slices((x_train, y_train)),
                  tf.data.Dataset.from_tensor_slices((x_test, y_test)),
                  num_classes=int(y_train.max()) + 1)


def cardinality(dataset: tf.data.Dataset) -> int:
    """Number of examples of an unbatched split (TFDS and tensors know it)."""
    return int(dataset.cardinality())


def training_batches(split: tf.data.Dataset, steps: tuple[Step, ...],
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


def in_order_batches(split: tf.data.Dataset, steps: tuple[Step, ...],
                     input_shape: tuple[int, int, int], batch_size: int,
                     drop_remainder: bool) -> tf.data.Dataset:
    """The whole split in order, preprocessed by the deterministic `steps`, in batches
    (the last one smaller, or dropped with `drop_remainder`)."""
    return (_unseeded(split, steps, input_shape).batch(batch_size, drop_remainder=drop_remainder)
            .prefetch(tf.data.AUTOTUNE))


def sample(split: tf.data.Dataset, chosen: np.ndarray, steps: tuple[Step, ...],
           input_shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The examples of `split` that the boolean mask `chosen` picks among its first ones.

    Kept in split order and preprocessed by the deterministic `steps`:
    float32 ``(N, H, W, C)`` images and int32 ``(N,)`` labels, N the count of
    True entries.
    """
    samples = int(np.count_nonzero(chosen))
    chosen = tf.constant(chosen)
    pool = len(chosen)
    picked = (split.take(pool).enumerate()
              .filter(lambda index, example: chosen[index])
              .map(lambda index, example: example))
    x, y = next(iter(_unseeded(picked, steps, input_shape).batch(samples)))
    return x.numpy(), y.numpy()


def _unseeded(dataset: tf.data.Dataset, steps: tuple[Step, ...],
              input_shape: tuple[int, int, int]) -> tf.data.Dataset:
    """Apply the deterministic (test) preprocessing `steps` to (image, label) examples."""
    no_seed = tf.zeros([2], tf.int64)
    return dataset.map(
        lambda image, label: _preprocess_seeded(steps, input_shape, (image, label), no_seed),
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
