"""tfadv.data.augment: the seeded random crop and flip."""

import numpy as np
import tensorflow as tf

from tests import data_fixtures as fx
from tfadv import data


class RandomCropFlipTest(fx.DataTestCase):
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


if __name__ == "__main__":
    tf.test.main()
