"""Tests for tfadv.data: sources, IDX files, pipelines and augmentation."""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import gzip
import tempfile
from unittest import mock

import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from tfadv import data
from tfadv.data import augment
from tfadv.data import datasets
from tfadv.data import sources

FASHION_DIR = "/usr/share/datasets/fashion-mnist"

# Tiny IDX dataset: each image is filled with its own index, so the order
# of a pipeline can be read back from the pixels.
_NUM_TRAIN = 50
_NUM_TEST = 23
_SIDE = 6


def _write_idx(path, array, *, magic=None):
    array = np.asarray(array, np.uint8)
    if magic is None:
        magic = 0x0800 | array.ndim
    header = np.array([magic, *array.shape], ">u4").tobytes()
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + array.tobytes())


def _tiny_arrays(num, *, offset=0):
    ids = np.arange(offset, offset + num)
    images = np.broadcast_to(
        ids[:, None, None] % 256, (num, _SIDE, _SIDE)
    ).astype(np.uint8)
    labels = (ids % 10).astype(np.uint8)
    return images, labels


def _write_tiny_dataset(directory, *, gz=True):
    os.makedirs(directory, exist_ok=True)
    suffix = ".gz" if gz else ""
    for prefix, num, offset in (
        ("train", _NUM_TRAIN, 0),
        ("t10k", _NUM_TEST, 100),
    ):
        images, labels = _tiny_arrays(num, offset=offset)
        _write_idx(
            os.path.join(directory, f"{prefix}-images-idx3-ubyte{suffix}"),
            images,
        )
        _write_idx(
            os.path.join(directory, f"{prefix}-labels-idx1-ubyte{suffix}"),
            labels,
        )


def _ids(dataset):
    """Example indices of every batch, read back from the pixels."""
    batches = []
    for images, _ in dataset:
        batches.append(np.round(images.numpy()[:, 0, 0, 0] * 255).astype(int))
    return batches


class _TestCase(tf.test.TestCase, parameterized.TestCase):
    def setUp(self):
        super().setUp()
        # Tests must not see the caller's data directory.
        patcher = mock.patch.dict(os.environ)
        patcher.start()
        self.addCleanup(patcher.stop)
        os.environ.pop(sources.DATA_DIR_ENV_VAR, None)

    def make_tmp(self):
        # Not `create_tempdir`: it needs absl flags parsed, which plain
        # pytest does not do.
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        return tmp.name


class IDXTest(_TestCase):
    @parameterized.parameters(True, False)
    def test_round_trip(self, gz):
        tmp = self.make_tmp()
        _write_tiny_dataset(tmp, gz=gz)
        for split, offset, num in (
            ("train", 0, _NUM_TRAIN),
            ("test", 100, _NUM_TEST),
        ):
            images, labels = sources.read_idx_directory(tmp, split)
            want_images, want_labels = _tiny_arrays(num, offset=offset)
            self.assertEqual(images.dtype, np.uint8)
            self.assertEqual(labels.dtype, np.int64)
            np.testing.assert_array_equal(images, want_images[..., None])
            np.testing.assert_array_equal(labels, want_labels)

    def test_read_idx_random_content(self):
        path = os.path.join(self.make_tmp(), "x.gz")
        array = np.random.default_rng(0).integers(0, 256, (3, 4, 5))
        _write_idx(path, array)
        np.testing.assert_array_equal(
            data.read_idx(path, expected_magic=2051), array
        )

    def test_bad_magic(self):
        path = os.path.join(self.make_tmp(), "bad")
        _write_idx(path, np.zeros((2, 3, 3)), magic=2052)
        with self.assertRaisesRegex(data.IDXFormatError, "2052.*2051"):
            data.read_idx(path, expected_magic=2051)
        # A label file where images are expected is refused too.
        _write_idx(path, np.zeros(4))
        with self.assertRaisesRegex(ValueError, "magic number 2049"):
            data.read_idx(path, expected_magic=2051)

    def test_truncated(self):
        path = os.path.join(self.make_tmp(), "short")
        _write_idx(path, np.zeros((2, 3, 3)))
        with open(path, "rb") as f:
            content = f.read()
        with open(path, "wb") as f:
            f.write(content[:-1])
        with self.assertRaisesRegex(data.IDXFormatError, "17 bytes"):
            data.read_idx(path, expected_magic=2051)

    def test_malformed_directory_reports_reason(self):
        tmp = self.make_tmp()
        _write_tiny_dataset(tmp, gz=False)
        _write_idx(
            os.path.join(tmp, "train-images-idx3-ubyte"),
            np.zeros((2, 3, 3)),
            magic=1234,
        )
        with self.assertRaisesRegex(data.DataNotFoundError, "magic number"):
            data.make_datasets(name=tmp, batch_size=4)


class MakeDatasetsIDXTest(_TestCase):
    def setUp(self):
        super().setUp()
        self.tmp = self.make_tmp()
        _write_tiny_dataset(self.tmp)
        self.test_images, self.test_labels = _tiny_arrays(_NUM_TEST, offset=100)

    def test_directory_name(self):
        ds = data.make_datasets(
            name=self.tmp, batch_size=8, validation_examples=10
        )
        self.assertEqual(ds.info.name, os.path.basename(self.tmp))
        self.assertEqual(ds.info.num_classes, 10)
        self.assertEqual(ds.info.image_shape, (_SIDE, _SIDE, 1))
        self.assertEqual(ds.info.num_train, _NUM_TRAIN)
        self.assertEqual(ds.info.num_test, _NUM_TEST)
        self.assertIn(self.tmp, ds.info.source)
        self.assertEqual(ds.steps_per_epoch, _NUM_TRAIN // 8)
        batches = list(ds.train)
        self.assertLen(batches, _NUM_TRAIN // 8)  # Remainder dropped.
        for images, labels in batches:
            self.assertEqual(images.dtype, tf.float32)
            self.assertEqual(labels.dtype, tf.int32)
            self.assertEqual(images.shape, (8, _SIDE, _SIDE, 1))
            self.assertEqual(labels.shape, (8,))
            self.assertAllInRange(images, 0.0, 1.0)
            # Labels still belong to their images after shuffling.
            ids = np.round(images.numpy()[:, 0, 0, 0] * 255).astype(int)
            self.assertAllEqual(labels, ids % 10)
        self.assertEqual(ds.train.element_spec[0].shape[0], 8)

    def test_eval_pipelines_are_first_examples_in_order(self):
        ds = data.make_datasets(
            name=self.tmp,
            batch_size=8,
            eval_batch_size=5,
            validation_examples=12,
            eval_examples=17,
        )
        for pipeline, num in ((ds.validation, 12), (ds.test, 17)):
            batches = list(pipeline)
            self.assertEqual([len(b[1]) for b in batches][-1], num % 5)
            images = np.concatenate([b[0].numpy() for b in batches])
            labels = np.concatenate([b[1].numpy() for b in batches])
            self.assertAllClose(
                images, self.test_images[:num, ..., None] / 255.0
            )
            self.assertAllEqual(labels, self.test_labels[:num])
            # Stable across iterations.
            self.assertAllEqual(
                np.concatenate(_ids(pipeline)), np.concatenate(_ids(pipeline))
            )
        self.assertEqual(ds.info.num_test, 17)

    def test_no_validation(self):
        ds = data.make_datasets(
            name=self.tmp, batch_size=8, validation_examples=0
        )
        self.assertIsNone(ds.validation)

    def test_train_examples_subset_and_stats(self):
        ds = data.make_datasets(name=self.tmp, batch_size=4, train_examples=20)
        self.assertEqual(ds.info.num_train, 20)
        self.assertEqual(ds.steps_per_epoch, 5)
        ids = np.concatenate(_ids(ds.train))
        self.assertCountEqual(ids, range(20))
        pixels = np.arange(20) / 255.0
        self.assertAllClose(ds.info.mean, [pixels.mean()])
        self.assertAllClose(ds.info.std, [pixels.std()])

    def test_seeded_shuffling(self):
        def first_epoch(seed):
            ds = data.make_datasets(
                name=self.tmp, batch_size=8, shuffle_seed=seed
            )
            return np.concatenate(_ids(ds.train))

        same = first_epoch(3)
        self.assertAllEqual(same, first_epoch(3))
        self.assertNotAllEqual(same, first_epoch(4))
        self.assertNotAllEqual(same, np.arange(len(same)))
        self.assertLen(set(same), len(same))

    def test_reshuffles_each_epoch(self):
        ds = data.make_datasets(name=self.tmp, batch_size=8)
        epoch1 = np.concatenate(_ids(ds.train))
        epoch2 = np.concatenate(_ids(ds.train))
        self.assertNotAllEqual(epoch1, epoch2)

    def test_data_dir_argument_and_subfolder(self):
        root = self.make_tmp()
        _write_tiny_dataset(os.path.join(root, "fashion_mnist"), gz=False)
        ds = data.make_datasets(
            name="fashion_mnist", data_dir=root, batch_size=8
        )
        self.assertEqual(ds.info.name, "fashion_mnist")
        self.assertEqual(ds.info.num_train, _NUM_TRAIN)
        self.assertIn(os.path.join(root, "fashion_mnist"), ds.info.source)

    def test_env_var_honoured(self):
        with mock.patch.dict(os.environ, {sources.DATA_DIR_ENV_VAR: self.tmp}):
            ds = data.make_datasets(name="fashion_mnist", batch_size=8)
            images, labels, source = data.load_arrays("mnist", "test")
        self.assertEqual(ds.info.num_train, _NUM_TRAIN)
        self.assertEqual(ds.info.source, f"IDX files in {self.tmp}")
        self.assertEqual(source, f"IDX files in {self.tmp}")
        np.testing.assert_array_equal(images, self.test_images[..., None])
        np.testing.assert_array_equal(labels, self.test_labels)

    def test_data_dir_argument_wins_over_env_var(self):
        other = self.make_tmp()
        with mock.patch.dict(os.environ, {sources.DATA_DIR_ENV_VAR: other}):
            _, _, source = data.load_arrays("mnist", "train", data_dir=self.tmp)
        self.assertEqual(source, f"IDX files in {self.tmp}")

    def test_mnist_family_has_ten_classes(self):
        root = self.make_tmp()
        images, labels = _tiny_arrays(8)
        for prefix in ("train", "t10k"):
            _write_idx(f"{root}/{prefix}-images-idx3-ubyte", images)
            _write_idx(f"{root}/{prefix}-labels-idx1-ubyte", labels % 3)
        ds = data.make_datasets(name="mnist", data_dir=root, batch_size=4)
        self.assertEqual(ds.info.num_classes, 10)
        ds = data.make_datasets(name=root, batch_size=4)
        self.assertEqual(ds.info.num_classes, 3)

    def test_forced_augmentation_keeps_range(self):
        ds = data.make_datasets(
            name=self.tmp, batch_size=8, augment=True, shuffle_seed=1
        )
        plain = data.make_datasets(
            name=self.tmp, batch_size=8, augment=False, shuffle_seed=1
        )
        (x_aug, y_aug), (x, y) = next(iter(ds.train)), next(iter(plain.train))
        self.assertAllEqual(y_aug, y)  # Same shuffle order.
        self.assertAllInRange(x_aug, 0.0, 1.0)
        self.assertEqual(x_aug.shape, x.shape)
        self.assertNotAllClose(x_aug, x)

    @parameterized.named_parameters(
        ("batch_size_zero", {"batch_size": 0}, "batch_size=0"),
        ("batch_size_negative", {"batch_size": -2}, "batch_size=-2"),
        ("train_examples_zero", {"train_examples": 0}, "train_examples=0"),
        ("eval_examples_negative", {"eval_examples": -1}, "eval_examples"),
        ("validation_negative", {"validation_examples": -1}, "validation"),
        ("batch_too_large", {"batch_size": 64}, "batch_size=64 exceeds"),
    )
    def test_bad_arguments(self, kwargs, pattern):
        with self.assertRaisesRegex(ValueError, pattern):
            data.make_datasets(name=self.tmp, **kwargs)


class RealFashionMNISTTest(_TestCase):
    def test_loads_debian_copy(self):
        if not os.path.isdir(FASHION_DIR):
            self.skipTest(
                f"{FASHION_DIR} is absent; `apt-get install "
                "dataset-fashion-mnist` provides it."
            )
        ds = data.make_datasets(batch_size=1000, validation_examples=0)
        info = ds.info
        self.assertEqual(info.name, "fashion_mnist")
        self.assertEqual((info.num_train, info.num_test), (60000, 10000))
        self.assertEqual(info.num_classes, 10)
        self.assertEqual(info.image_shape, (28, 28, 1))
        self.assertIn(FASHION_DIR, info.source)
        self.assertAllClose(info.mean, [0.2860], atol=1e-3)
        self.assertAllClose(info.std, [0.3530], atol=1e-3)
        images, labels = next(iter(ds.test))
        self.assertAllInRange(images, 0.0, 1.0)
        self.assertAllInRange(labels, 0, 9)


class TFDSTest(_TestCase):
    def setUp(self):
        super().setUp()
        import tensorflow_datasets as tfds

        self.tfds = tfds

    def test_mock_cifar10_augmented(self):
        with self.tfds.testing.mock_data(num_examples=20):
            ds = data.make_datasets(
                name="cifar10", batch_size=8, validation_examples=6
            )
            plain = data.make_datasets(
                name="cifar10", batch_size=8, augment=False
            )
        self.assertEqual(ds.info.num_classes, 10)
        self.assertEqual(ds.info.image_shape, (32, 32, 3))
        self.assertLen(ds.info.mean, 3)
        self.assertIn("tensorflow-datasets", ds.info.source)
        self.assertEqual(ds.steps_per_epoch, 2)
        (x_aug, y_aug), (x, y) = next(iter(ds.train)), next(iter(plain.train))
        self.assertEqual(x_aug.shape, (8, 32, 32, 3))
        self.assertEqual(x_aug.dtype, tf.float32)
        self.assertAllInRange(x_aug, 0.0, 1.0)
        self.assertAllEqual(y_aug, y)
        self.assertNotAllClose(x_aug, x)
        self.assertEqual(sum(len(b[1]) for b in ds.validation), 6)

    def test_svhn_auto_augment_has_no_flip(self):
        calls = []
        original = augment.random_crop_flip

        def spy(images, **kwargs):
            calls.append(kwargs)
            return original(images, **kwargs)

        with (
            self.tfds.testing.mock_data(num_examples=8),
            mock.patch.object(augment, "random_crop_flip", spy),
        ):
            data.make_datasets(name="svhn_cropped", batch_size=4)
            data.make_datasets(name="cifar100", batch_size=4)
        self.assertEqual([c["flip"] for c in calls], [False, True])
        self.assertEqual([c["pad"] for c in calls], [4, 4])

    def test_prepared_tfds_directory(self):
        tmp = self.make_tmp()
        rng = np.random.default_rng(0)
        arrays = {
            "train": (rng.integers(0, 256, (12, 4, 4, 3)), np.arange(12) % 5),
            "test": (rng.integers(0, 256, (6, 4, 4, 3)), np.arange(6) % 5),
        }
        info = mock.Mock()
        info.features = {"label": mock.Mock(num_classes=7)}

        def fake_load(name, *, split, data_dir, download, **kwargs):
            self.assertEqual((name, data_dir, download), ("toy", tmp, False))
            x, y = arrays[split]
            dataset = tf.data.Dataset.from_tensor_slices(
                (x.astype(np.uint8), y)
            )
            return dataset, info

        with mock.patch.object(self.tfds, "load", side_effect=fake_load):
            ds = data.make_datasets(name="toy", data_dir=tmp, batch_size=4)
        self.assertEqual(ds.info.num_classes, 7)
        self.assertIn(tmp, ds.info.source)
        images = np.concatenate([b[0].numpy() for b in ds.test])
        self.assertAllClose(images, arrays["test"][0] / 255.0)

    def test_unknown_name_lists_places_tried(self):
        with (
            mock.patch.object(
                self.tfds, "load", side_effect=RuntimeError("no network")
            ),
            self.assertRaises(data.UnknownDatasetError) as cm,
        ):
            data.make_datasets(
                name="no_such_dataset", data_dir=tempfile.gettempdir()
            )
        message = str(cm.exception)
        self.assertIsInstance(cm.exception, ValueError)
        self.assertIsInstance(cm.exception, FileNotFoundError)
        self.assertIn("'no_such_dataset'", message)
        self.assertIn("fashion_mnist, mnist, cifar10", message)
        self.assertIn(f"IDX files in {tempfile.gettempdir()}", message)
        self.assertIn("no network", message)
        self.assertIn("TFADV_DATA_DIR", message)

    def test_missing_known_dataset_lists_places_tried(self):
        empty = self.make_tmp()
        with (
            mock.patch.dict(sources.WELL_KNOWN_DIRS, {"mnist": (empty,)}),
            mock.patch.object(
                self.tfds, "load", side_effect=OSError("offline")
            ),
            self.assertRaises(data.DataNotFoundError) as cm,
        ):
            data.load_arrays("mnist", "train")
        self.assertNotIsInstance(cm.exception, data.UnknownDatasetError)
        message = str(cm.exception)
        self.assertIn(f"IDX files in {empty}", message)
        self.assertIn("no train-images-idx3-ubyte", message)
        self.assertIn("tensorflow-datasets (download allowed)", message)
        self.assertIn("OSError: offline", message)
        self.assertIn("apt-get install dataset-fashion-mnist", message)

    def test_missing_directory_name(self):
        missing = os.path.join(self.make_tmp(), "nope")
        with self.assertRaisesRegex(data.DataNotFoundError, "does not exist"):
            data.make_datasets(name=missing)


class CheckArraysTest(_TestCase):
    def test_valid(self):
        images = np.zeros((3, 2, 2, 1), np.uint8) + 255
        data.check_arrays(images, np.array([0, 1, 2]), 3)
        data.check_arrays(images / 255.0, np.array([0, 1, 2]), 3)

    @parameterized.named_parameters(
        ("label_high", np.zeros((2, 2, 2, 1)), [0, 10], 10, "Label 10"),
        ("label_negative", np.zeros((2, 2, 2, 1)), [-1, 0], 10, "Label -1"),
        ("float_labels", np.zeros((2, 2, 2, 1)), [0.0, 1.0], 10, "dtype"),
        ("above_one", np.full((2, 2, 2, 1), 1.5), [0, 1], 10, "1.5"),
        ("below_zero", np.full((2, 2, 2, 1), -0.1), [0, 1], 10, "-0.1"),
        ("nan", np.full((2, 2, 2, 1), np.nan), [0, 1], 10, "nan"),
        ("inf", np.full((2, 2, 2, 1), np.inf), [0, 1], 10, "inf"),
        ("rank", np.zeros((2, 2, 2)), [0, 1], 10, "rank 3"),
        ("length", np.zeros((3, 2, 2, 1)), [0, 1], 10, "3 images but 2"),
        ("int_images", np.zeros((2, 2, 2, 1), np.int32), [0, 1], 10, "int32"),
    )
    def test_invalid(self, images, labels, num_classes, pattern):
        with self.assertRaisesRegex(ValueError, pattern):
            data.check_arrays(images, np.array(labels), num_classes)


class RandomCropFlipTest(_TestCase):
    def setUp(self):
        super().setUp()
        rng = np.random.default_rng(0)
        self.images = rng.uniform(size=(6, 8, 8, 2)).astype(np.float32)
        self.seed = tf.constant([1, 2], tf.int64)

    def test_deterministic_and_seed_dependent(self):
        out = data.random_crop_flip(self.images, seed=self.seed)
        self.assertAllEqual(
            out, data.random_crop_flip(self.images, seed=self.seed)
        )
        self.assertNotAllEqual(
            out, data.random_crop_flip(self.images, seed=[3, 4])
        )
        self.assertEqual(out.shape, self.images.shape)
        self.assertEqual(out.dtype, tf.float32)
        self.assertAllInRange(out, 0.0, 1.0)

    def test_flip_only(self):
        out = data.random_crop_flip(self.images, seed=self.seed, pad=0)
        flipped = 0
        for x, y in zip(self.images, out.numpy(), strict=True):
            if np.array_equal(y, x[:, ::-1]):
                flipped += 1
            else:
                self.assertAllEqual(y, x)
        self.assertBetween(flipped, 1, len(self.images) - 1)

    def test_crop_is_a_window_of_the_zero_padded_image(self):
        pad = 2
        out = data.random_crop_flip(
            self.images, seed=self.seed, pad=pad, flip=False
        ).numpy()
        padded = np.pad(self.images, [(0, 0), (pad, pad), (pad, pad), (0, 0)])
        offsets = []
        for x, y in zip(padded, out, strict=True):
            matches = [
                (i, j)
                for i in range(2 * pad + 1)
                for j in range(2 * pad + 1)
                if np.array_equal(x[i : i + 8, j : j + 8], y)
            ]
            self.assertLen(matches, 1)
            offsets.append(matches[0])
        self.assertGreater(len(set(offsets)), 1)

    def test_negative_pad(self):
        with self.assertRaisesRegex(ValueError, "pad=-1"):
            data.random_crop_flip(self.images, seed=self.seed, pad=-1)


class ChannelStatsTest(_TestCase):
    def test_matches_numpy(self):
        rng = np.random.default_rng(1)
        images = rng.integers(0, 256, (10000, 3, 3, 3)).astype(np.uint8)
        mean, std = datasets.channel_stats(images)
        want = images.astype(np.float64) / 255
        self.assertAllClose(mean, want.mean(axis=(0, 1, 2)), atol=1e-6)
        self.assertAllClose(std, want.std(axis=(0, 1, 2)), atol=1e-6)


if __name__ == "__main__":
    tf.test.main()
