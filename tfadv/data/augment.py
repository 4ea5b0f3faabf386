"""Data augmentation on batches: random crop with zero padding, and flip.

This is the standard CIFAR augmentation of the adversarial-training
references (`transforms.RandomCrop(32, padding=4)` followed by
`transforms.RandomHorizontalFlip()`): pad each image with `pad` zeros on
every side, cut a random window of the original size, and mirror it left to
right with probability 1/2. Every example in a batch gets its own offsets
and flip.

Randomness is stateless: the same `seed` gives the same output, so a
`tf.data` pipeline that draws one seed per batch from a seeded
`tf.data.Dataset.random` is reproducible.
"""

import gin
import tensorflow as tf


@gin.register
def random_crop_flip(
    images: tf.Tensor,
    *,
    seed: tf.Tensor,
    pad: int = 4,
    flip: bool = True,
) -> tf.Tensor:
    """Randomly crops (zero padding) and horizontally flips a batch.

    Args:
        images: [B, H, W, C] images, any dtype (floats in [0, 1] stay in
            [0, 1]; padding adds zeros).
        seed: shape [2] integer seed for the stateless random ops.
        pad: zeros added on each side before cropping (pixels). 0 disables
            the crop.
        flip: whether to mirror each example left-right with probability
            1/2.

    Returns:
        Augmented images with the shape and dtype of `images`.

    Raises:
        ValueError: `pad` is negative.
    """
    if pad < 0:
        raise ValueError(f"pad={pad}; expected an integer >= 0 (pixels).")
    images = tf.convert_to_tensor(images)
    crop_seed, flip_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, num=2)
    )
    batch = tf.shape(images)[0]
    height = tf.shape(images)[1]
    width = tf.shape(images)[2]
    if pad > 0:
        padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
        # Per-example offsets in [0, 2 * pad], drawn jointly for rows and
        # columns, then an exact integer crop by two batched gathers.
        offsets = tf.random.stateless_uniform(
            [batch, 2], seed=crop_seed, maxval=2 * pad + 1, dtype=tf.int32
        )
        rows = offsets[:, :1] + tf.range(height)[tf.newaxis]
        cols = offsets[:, 1:] + tf.range(width)[tf.newaxis]
        images = tf.gather(padded, rows, axis=1, batch_dims=1)
        images = tf.gather(images, cols, axis=2, batch_dims=1)
    if flip:
        coin = tf.random.stateless_uniform([batch], seed=flip_seed)
        mirrored = tf.reverse(images, axis=[2])
        images = tf.where(coin[:, None, None, None] < 0.5, mirrored, images)
    return images
