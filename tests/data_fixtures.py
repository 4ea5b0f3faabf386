"""Shared by the tfadv.data tests: tiny IDX datasets and a base class.

Not a test module. Each tiny image is filled with its own index, so the
order of a pipeline can be read back from the pixels (`ids`).
"""

import gzip
import os
import tempfile
from unittest import mock

import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from tfadv.data import sources

FASHION_DIR = "/usr/share/datasets/fashion-mnist"

# Tiny IDX dataset: each image is filled with its own index, so the order
# of a pipeline can be read back from the pixels.
NUM_TRAIN = 50
NUM_TEST = 23
SIDE = 6


def write_idx(path, array, *, magic=None):
    array = np.asarray(array, np.uint8)
    if magic is None:
        magic = 0x0800 | array.ndim
    header = np.array([magic, *array.shape], ">u4").tobytes()
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + array.tobytes())


def tiny_arrays(num, *, offset=0):
    ids = np.arange(offset, offset + num)
    images = np.broadcast_to(
        ids[:, None, None] % 256, (num, SIDE, SIDE)
    ).astype(np.uint8)
    labels = (ids % 10).astype(np.uint8)
    return images, labels


def write_tiny_dataset(directory, *, gz=True):
    os.makedirs(directory, exist_ok=True)
    suffix = ".gz" if gz else ""
    for prefix, num, offset in (
        ("train", NUM_TRAIN, 0),
        ("t10k", NUM_TEST, 100),
    ):
        images, labels = tiny_arrays(num, offset=offset)
        write_idx(
            os.path.join(directory, f"{prefix}-images-idx3-ubyte{suffix}"),
            images,
        )
        write_idx(
            os.path.join(directory, f"{prefix}-labels-idx1-ubyte{suffix}"),
            labels,
        )


def ids(dataset):
    """Example indices of every batch, read back from the pixels."""
    batches = []
    for images, _ in dataset:
        batches.append(np.round(images.numpy()[:, 0, 0, 0] * 255).astype(int))
    return batches


class DataTestCase(tf.test.TestCase, parameterized.TestCase):
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


class TinyDatasetTestCase(DataTestCase):
    """A test case with the tiny IDX dataset written to `self.tmp`."""

    def setUp(self):
        super().setUp()
        self.tmp = self.make_tmp()
        write_tiny_dataset(self.tmp)
        self.test_images, self.test_labels = tiny_arrays(NUM_TEST, offset=100)
