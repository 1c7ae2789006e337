"""The in-memory data sets (digits, mnist5k) as NumPy batches, for every Keras backend.

`cb_keras.paper.data` uses this pipeline wherever Keras does not run on
TensorFlow. It has the preprocessing and augmentation of `cb_keras.paper.data`'s
table, written in NumPy (``pad(n)``, TensorFlow's ``resize_with_pad`` of a
square image, is the same bilinear zoom with half-pixel centres), and the
same seed semantics: ``shuffle_seed`` seeds the shuffle order (a shuffle
buffer of ``shuffle_buffer`` examples, as ``tf.data`` shuffles) and the
augmentation, both new every epoch; None draws fresh seeds. The random
numbers differ from TensorFlow's. The measurement sample (no augmentation)
is the same array as on TensorFlow.

Training batches are a `keras.utils.PyDataset`: `fit` on any backend reads
it, and its `on_epoch_end` moves to the next epoch's order and augmentation.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np

BRIGHTNESS_DELTA = 0.25

# (images (n, H, W, C), rng) -> images; every step works on a batch.
Step = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def convert(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """uint8 [0, 255] -> float32 [0, 1] (times float32(1/255), as TensorFlow); floats pass."""
    del rng
    if images.dtype == np.uint8:
        return images.astype(np.float32) * np.float32(1 / 255)
    return images


def pad(size: int) -> Step:
    """Bilinear zoom of square images to size x size (``tf.image.resize_with_pad``)."""
    def step(images, rng):
        del rng
        return _bilinear(_bilinear(images, size, axis=1), size, axis=2)
    return step


def _bilinear(images: np.ndarray, size: int, axis: int) -> np.ndarray:
    """Linear interpolation along `axis` to `size` samples, half-pixel centres, edges clamped."""
    length = images.shape[axis]
    source = np.clip((np.arange(size) + 0.5) * (length / size) - 0.5, 0, length - 1)
    low = np.floor(source).astype(int)
    high = np.minimum(low + 1, length - 1)
    weight = (source - low).astype(np.float32).reshape(
        [-1 if a == axis else 1 for a in range(images.ndim)])
    first, second = np.take(images, low, axis=axis), np.take(images, high, axis=axis)
    return (first + (second - first) * weight).astype(np.float32)


def zero_pad(size: int) -> Step:
    """Centre each image on a size x size canvas of zeros (no resampling)."""
    def step(images, rng):
        del rng
        before = (size - images.shape[1]) // 2
        after = size - images.shape[1] - before
        return np.pad(images, ((0, 0), (before, after), (before, after), (0, 0)))
    return step


def crop(size: int) -> Step:
    """A random size x size crop of each image, all channels."""
    def step(images, rng):
        n, height, width = images.shape[:3]
        rows = rng.integers(0, height - size + 1, n)
        columns = rng.integers(0, width - size + 1, n)
        return np.stack([image[r:r + size, c:c + size]
                         for image, r, c in zip(images, rows, columns)])
    return step


def bright(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Add one random delta in [-0.25, 0.25) to every pixel of each image."""
    delta = rng.uniform(-BRIGHTNESS_DELTA, BRIGHTNESS_DELTA, (len(images), 1, 1, 1))
    return (images + delta.astype(np.float32)).astype(np.float32)


_MNIST = ((convert, pad(32), crop(28), bright), (convert,))
# name -> (training augmentation, test preprocessing), as `cb_keras.paper.data`'s table.
RECIPES: dict[str, tuple[tuple[Step, ...], tuple[Step, ...]]] = {
    "digits": ((zero_pad(10), crop(8)), ()),
    "mnist5k": _MNIST,
}


def preprocess(images: np.ndarray, steps: tuple[Step, ...],
               rng: np.random.Generator | None = None) -> np.ndarray:
    """`steps` applied to a batch of images, then float32."""
    for step in steps:
        images = step(images, rng)
    return np.asarray(images, np.float32)


def shuffled_order(size: int, buffer: int, rng: np.random.Generator) -> np.ndarray:
    """The order in which a shuffle buffer of `buffer` examples emits `size` examples.

    As ``tf.data.Dataset.shuffle``: fill the buffer, emit a random slot and
    refill it with the next example; at the end, emit the rest at random.
    A buffer of at least `size` gives a uniform permutation.
    """
    if buffer >= size:
        return rng.permutation(size)
    pool = list(range(buffer))
    order = []
    for incoming in range(buffer, size):
        slot = int(rng.integers(len(pool)))
        order.append(pool[slot])
        pool[slot] = incoming
    return np.concatenate([np.asarray(order, int), rng.permutation(np.asarray(pool, int))])


class TrainingBatches(keras.utils.PyDataset):
    """Shuffled, augmented ``(images, labels)`` batches, new every epoch; the remainder dropped.

    Batch i of epoch e depends only on (seed, e, i), so the batches are the
    same whatever order or worker reads them.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, steps: tuple[Step, ...],
                 batch_size: int, seed: int | None, buffer: int):
        super().__init__()
        self.images, self.labels, self.steps = images, labels.astype(np.int32), steps
        self.batch_size, self.buffer = batch_size, buffer
        self.seed = np.random.SeedSequence().entropy if seed is None else int(seed)
        self.epoch = 0
        self._order = self._epoch_order()

    def _epoch_order(self) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.epoch, 0])
        return shuffled_order(len(self.labels), self.buffer, rng)

    def __len__(self) -> int:
        return len(self.labels) // self.batch_size

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} of {len(self)}")
        chosen = self._order[index * self.batch_size:(index + 1) * self.batch_size]
        rng = np.random.default_rng([self.seed, self.epoch, 1, index])
        return preprocess(self.images[chosen], self.steps, rng), self.labels[chosen]

    def on_epoch_end(self) -> None:
        self.epoch += 1
        self._order = self._epoch_order()


class InOrderBatches(keras.utils.PyDataset):
    """The whole split in order, preprocessed, in batches (the last possibly smaller)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, steps: tuple[Step, ...],
                 batch_size: int):
        super().__init__()
        self.images = preprocess(images, steps)
        self.labels = labels.astype(np.int32)
        self.batch_size = batch_size

    def __len__(self) -> int:
        return -(-len(self.labels) // self.batch_size)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} of {len(self)}")
        part = slice(index * self.batch_size, (index + 1) * self.batch_size)
        return self.images[part], self.labels[part]
