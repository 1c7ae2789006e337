"""Data sets: the real loading code on TFDS mock examples, digits, the sample."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from cb_keras import data

MOCK_EXAMPLES = 70  # two full batches of 32 and a remainder of 6
BATCH = 32
SHAPES = {"mnist": (28, 28, 1), "cifar10": (32, 32, 3), "svhn_cropped": (32, 32, 3),
          "imagenette": (128, 128, 3)}
TFDS_NAMES = {"mnist": "mnist", "cifar10": "cifar10", "svhn_cropped": "svhn_cropped",
              "imagenette": "imagenette/160px-v2"}
TEST_SPLITS = {"imagenette": "validation"}


@pytest.fixture
def mock_tfds():
    with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
        yield


def _raw_images(name):
    """The unprocessed mock images of the test split, in order."""
    ds = tfds.load(TFDS_NAMES[name], split=TEST_SPLITS.get(name, "test"), as_supervised=True)
    return [image for image, _ in ds]


def _expected_test_image(name, raw):
    image = tf.image.convert_image_dtype(raw, tf.float32)
    if name == "imagenette":
        image = tf.image.resize_with_pad(image, 128, 128)
    if name != "mnist":
        image = tf.image.per_image_standardization(image)
    return image.numpy()


def _stack(dataset):
    images, labels = zip(*[(x.numpy(), y.numpy()) for x, y in dataset])
    return np.concatenate(images), np.concatenate(labels)


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_tfds_data_sets_load_with_the_papers_shapes(mock_tfds, name):
    train, test, info = data.load(name, batch_size=BATCH, shuffle_seed=0)
    assert info == data.DataInfo(name, 10, SHAPES[name], MOCK_EXAMPLES, MOCK_EXAMPLES)
    assert train.element_spec == (
        tf.TensorSpec((BATCH, *SHAPES[name]), tf.float32), tf.TensorSpec((BATCH,), tf.int32))
    assert [int(y.shape[0]) for _, y in train] == [BATCH, BATCH]  # remainder dropped
    assert [int(y.shape[0]) for _, y in test] == [BATCH, BATCH, MOCK_EXAMPLES - 2 * BATCH]
    for _, y in train:
        assert np.all((y.numpy() >= 0) & (y.numpy() < info.num_classes))


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_test_split_is_preprocessed_exactly(mock_tfds, name):
    _, test, _ = data.load(name, batch_size=BATCH)
    images, _ = _stack(test)
    expected = np.stack([_expected_test_image(name, raw) for raw in _raw_images(name)])
    np.testing.assert_allclose(images, expected, rtol=1e-5, atol=1e-5)


def _per_image(images, fn):
    return fn(images.reshape(len(images), -1), axis=1)


def test_augmentation_keeps_the_papers_order(mock_tfds):
    # mnist: convert, zoom, crop, brightness: [0, 1] moved by at most 0.25.
    mnist, _ = _stack(data.load("mnist", batch_size=BATCH, shuffle_seed=0)[0])
    assert mnist.min() >= -0.25 and mnist.max() <= 1.25
    # svhn and imagenette standardise last, then shift the brightness: every
    # image has standard deviation 1 and a mean in [-0.25, 0.25], not all 0.
    for name in ("svhn_cropped", "imagenette"):
        images, _ = _stack(data.load(name, batch_size=BATCH, shuffle_seed=0)[0])
        np.testing.assert_allclose(_per_image(images, np.std), 1.0, rtol=1e-3)
        means = _per_image(images, np.mean)
        assert np.all(np.abs(means) <= 0.25 + 1e-4) and np.std(means) > 0.05
    # cifar10 standardises before zoom and crop, so the std is no longer exactly 1.
    cifar, _ = _stack(data.load("cifar10", batch_size=BATCH, shuffle_seed=0)[0])
    assert np.abs(_per_image(cifar, np.std) - 1.0).max() > 1e-3


def test_augment_false_preprocesses_train_like_test(mock_tfds):
    train, test, _ = data.load("cifar10", batch_size=10, augment=False, shuffle_seed=0)
    train_images, _ = _stack(train)
    test_images, _ = _stack(test)
    # Same examples (the mock yields the same ones in both splits), shuffled.
    np.testing.assert_allclose(np.sort(train_images.sum(axis=(1, 2, 3))),
                               np.sort(test_images.sum(axis=(1, 2, 3))), rtol=1e-4, atol=1e-3)


def test_imagenette_accepts_another_tfds_config(mock_tfds):
    _, _, info = data.load("imagenette/full-size-v2", batch_size=BATCH)
    assert info.name == "imagenette/full-size-v2" and info.input_shape == (128, 128, 3)


def test_shuffle_seed_makes_training_reproducible_and_reshuffles_each_epoch():
    batch = 479  # 1437 = 3 * 479: every epoch holds all training examples
    first, _, _ = data.load("digits", batch_size=batch, shuffle_seed=7)
    again, _, _ = data.load("digits", batch_size=batch, shuffle_seed=7)
    epoch1_x, epoch1_y = _stack(first)
    epoch2_x, epoch2_y = _stack(first)
    np.testing.assert_array_equal(_stack(again)[0], epoch1_x)
    assert not np.array_equal(epoch1_y, epoch2_y)  # new order
    assert not np.allclose(np.sort(epoch1_x.ravel()), np.sort(epoch2_x.ravel()))  # new augmentation
    plain, _, _ = data.load("digits", batch_size=batch, augment=False, shuffle_seed=7)
    plain1, plain2 = _stack(plain)[0], _stack(plain)[0]
    np.testing.assert_array_equal(np.sort(plain1.ravel()), np.sort(plain2.ravel()))


def test_digits_needs_no_download_and_splits_stratified():
    train, test, info = data.load("digits", batch_size=32)
    assert info == data.DataInfo("digits", 10, (8, 8, 1), 1437, 360)
    assert sum(1 for _ in train) == 1437 // 32
    test_x, test_y = _stack(test)
    assert test_x.shape == (360, 8, 8, 1) and test_x.dtype == np.float32
    assert test_x.min() == 0.0 and test_x.max() == 1.0
    assert np.all(np.abs(np.bincount(test_y, minlength=10) - 36) <= 1)
    train_x, _ = _stack(train)
    assert train_x.min() == 0.0 and train_x.max() == 1.0  # shifts only: no resampling


def test_digits_augmentation_shifts_by_at_most_one_pixel():
    image = np.zeros((8, 8, 1), np.float32)
    image[3, 4] = 1.0
    shifted = {tuple(np.argwhere(data.crop(8)(data.zero_pad(10)(image, None), seed)[..., 0]
                                 .numpy())[0])
               for seed in tf.random.split(tf.constant([1, 2]), 60)}
    assert shifted == {(3 + dy, 4 + dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)}


def test_measurement_sample_is_deterministic_and_unaugmented():
    x, y = data.measurement_sample("digits", 100)
    tf.random.set_seed(12)  # the global seed does not change the sample
    try:
        x_again, y_again = data.measurement_sample("digits", 100)
    finally:
        tf.random.set_seed(None)
    np.testing.assert_array_equal(x, x_again)
    np.testing.assert_array_equal(y, y_again)
    assert x.shape == (100, 8, 8, 1) and x.dtype == np.float32 and y.dtype == np.int32
    assert x.min() == 0.0 and x.max() == 1.0 and len(np.unique(y)) == 10
    x_other, _ = data.measurement_sample("digits", 100, seed=1)
    assert not np.array_equal(x, x_other)
    # Drawn from the training split, never the test split.
    train_x, _ = _stack(data.load("digits", batch_size=1437, augment=False)[0])
    test_x, _ = _stack(data.load("digits", batch_size=360)[1])
    train_rows = {row.tobytes() for row in train_x}
    only_in_test = [row for row in test_x if row.tobytes() not in train_rows]
    assert all(row.tobytes() in train_rows for row in x)
    assert only_in_test


def test_measurement_sample_of_a_tfds_data_set(mock_tfds):
    x, y = data.measurement_sample("cifar10", 16)
    assert x.shape == (16, 32, 32, 3) and y.shape == (16,)
    np.testing.assert_allclose(_per_image(x, np.mean), 0.0, atol=1e-4)
    np.testing.assert_array_equal(data.measurement_sample("cifar10", 16)[0], x)


@pytest.mark.parametrize("samples", [0, 1438, 2.0])
def test_measurement_sample_rejects_bad_sizes(samples):
    with pytest.raises(ValueError, match="samples"):
        data.measurement_sample("digits", samples)


@pytest.mark.parametrize("name", ["mnist", "imagenette"])
def test_unprepared_tfds_data_set_fails_fast_without_downloading(tmp_path, monkeypatch, name):
    def no_download(*args, **kwargs):
        raise AssertionError("cb_keras must never try to download")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", no_download)
    for call in (lambda: data.load(name, batch_size=BATCH, data_dir=str(tmp_path)),
                 lambda: data.measurement_sample(name, 8, data_dir=str(tmp_path))):
        with pytest.raises(data.DatasetNotPreparedError) as error:
            call()
        message = str(error.value)
        assert TFDS_NAMES[name] in message and str(tmp_path) in message
        assert f"tfds build {TFDS_NAMES[name]}" in message and "copy" in message


@pytest.mark.parametrize("name", ["imagenet", "mnist/extra", "cifar100", ""])
def test_unknown_data_set_lists_the_supported_ones(name):
    with pytest.raises(ValueError, match="supported: .*'mnist'.*'digits'"):
        data.load(name, batch_size=BATCH)


@pytest.mark.parametrize("batch_size, message", [(0, "positive"), (True, "positive"),
                                                 (1500, "fewer than batch_size")])
def test_bad_batch_sizes(batch_size, message):
    with pytest.raises(ValueError, match=message):
        data.load("digits", batch_size=batch_size)
