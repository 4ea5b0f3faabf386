"""tfadv.data.sources: IDX files, the places tried, tfds, array checks."""

import os
import tempfile
from unittest import mock

import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from tests import data_fixtures as fx
from tfadv import data
from tfadv.data import sources


class IDXTest(fx.DataTestCase):
    @parameterized.parameters(True, False)
    def test_round_trip(self, gz):
        tmp = self.make_tmp()
        fx.write_tiny_dataset(tmp, gz=gz)
        for split, offset, num in (
            ("train", 0, fx.NUM_TRAIN),
            ("test", 100, fx.NUM_TEST),
        ):
            images, labels = sources.read_idx_directory(tmp, split)
            want_images, want_labels = fx.tiny_arrays(num, offset=offset)
            self.assertEqual(images.dtype, np.uint8)
            self.assertEqual(labels.dtype, np.int64)
            np.testing.assert_array_equal(images, want_images[..., None])
            np.testing.assert_array_equal(labels, want_labels)

    def test_read_idx_random_content(self):
        path = os.path.join(self.make_tmp(), "x.gz")
        array = np.random.default_rng(0).integers(0, 256, (3, 4, 5))
        fx.write_idx(path, array)
        np.testing.assert_array_equal(
            data.read_idx(path, expected_magic=2051), array
        )

    def test_bad_magic(self):
        path = os.path.join(self.make_tmp(), "bad")
        fx.write_idx(path, np.zeros((2, 3, 3)), magic=2052)
        with self.assertRaisesRegex(data.IDXFormatError, "2052.*2051"):
            data.read_idx(path, expected_magic=2051)
        # A label file where images are expected is refused too.
        fx.write_idx(path, np.zeros(4))
        with self.assertRaisesRegex(ValueError, "magic number 2049"):
            data.read_idx(path, expected_magic=2051)

    def test_truncated(self):
        path = os.path.join(self.make_tmp(), "short")
        fx.write_idx(path, np.zeros((2, 3, 3)))
        with open(path, "rb") as f:
            content = f.read()
        with open(path, "wb") as f:
            f.write(content[:-1])
        with self.assertRaisesRegex(data.IDXFormatError, "17 bytes"):
            data.read_idx(path, expected_magic=2051)

    def test_malformed_directory_reports_reason(self):
        tmp = self.make_tmp()
        fx.write_tiny_dataset(tmp, gz=False)
        fx.write_idx(
            os.path.join(tmp, "train-images-idx3-ubyte"),
            np.zeros((2, 3, 3)),
            magic=1234,
        )
        with self.assertRaisesRegex(data.DataNotFoundError, "magic number"):
            data.make_datasets(name=tmp, batch_size=4)


class DataDirTest(fx.TinyDatasetTestCase):
    def test_data_dir_argument_and_subfolder(self):
        root = self.make_tmp()
        fx.write_tiny_dataset(os.path.join(root, "fashion_mnist"), gz=False)
        ds = data.make_datasets(
            name="fashion_mnist", data_dir=root, batch_size=8
        )
        self.assertEqual(ds.info.name, "fashion_mnist")
        self.assertEqual(ds.info.num_train, fx.NUM_TRAIN)
        self.assertIn(os.path.join(root, "fashion_mnist"), ds.info.source)

    def test_env_var_honoured(self):
        with mock.patch.dict(os.environ, {sources.DATA_DIR_ENV_VAR: self.tmp}):
            ds = data.make_datasets(name="fashion_mnist", batch_size=8)
            images, labels, source = data.load_arrays("mnist", "test")
        self.assertEqual(ds.info.num_train, fx.NUM_TRAIN)
        self.assertEqual(ds.info.source, f"IDX files in {self.tmp}")
        self.assertEqual(source, f"IDX files in {self.tmp}")
        np.testing.assert_array_equal(images, self.test_images[..., None])
        np.testing.assert_array_equal(labels, self.test_labels)

    def test_data_dir_argument_wins_over_env_var(self):
        other = self.make_tmp()
        with mock.patch.dict(os.environ, {sources.DATA_DIR_ENV_VAR: other}):
            _, _, source = data.load_arrays("mnist", "train", data_dir=self.tmp)
        self.assertEqual(source, f"IDX files in {self.tmp}")


class TFDSTest(fx.DataTestCase):
    def setUp(self):
        super().setUp()
        import tensorflow_datasets as tfds

        self.tfds = tfds

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


class CheckArraysTest(fx.DataTestCase):
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


if __name__ == "__main__":
    tf.test.main()
