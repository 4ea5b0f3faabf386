"""A training batch as a method sees it: unpacked, cast, checked, weighted.

`AdversarialTrainer.prepare_batch` calls `unpack`; no method overrides
what is here. Images must be floating point in [0, 1]; labels are integer
class indices of shape `(batch,)` or `(batch, 1)`, or one-hot rows of
width num_classes (converted by argmax). The batch's sample weights
(`fit`'s `sample_weight` or `class_weight`) are kept in a thread-local
`BatchState` for the step's losses (`WeightedCrossEntropy`,
`AdversarialTrainer.replica_mean`).
"""

import threading

import keras
import tensorflow as tf


class BatchState(threading.local):
    """The batch a step is working on, per thread.

    MirroredStrategy traces each replica's step in a thread of its own, so
    what the step sets for its batch (the sample weights) is thread-local.
    """

    sample_weight = None


class WeightedCrossEntropy(keras.losses.SparseCategoricalCrossentropy):
    """Cross-entropy on logits, weighted by the step's sample weights.

    A `keras.losses.SparseCategoricalCrossentropy(from_logits=True)` whose
    `sample_weight` defaults to the weights of the batch the trainer's step
    is working on, so every method's `self.cross_entropy(y, logits)`
    honours `fit(sample_weight=...)` and `class_weight=` without passing
    them around. The reduction is Keras's: the batch mean of `w_i · CE_i`,
    divided by the replicas.

    Args:
        state: the trainer's `BatchState`.
    """

    def __init__(self, state: BatchState, **kwargs):
        super().__init__(from_logits=True, **kwargs)
        self._state = state

    def __call__(self, y_true, y_pred, sample_weight=None):
        if sample_weight is None:
            sample_weight = self._state.sample_weight
        return super().__call__(y_true, y_pred, sample_weight=sample_weight)


def num_replicas() -> int:
    """Replicas in the current strategy (1 outside any strategy)."""
    return tf.distribute.get_strategy().num_replicas_in_sync


def unpack(data, *, method: str):
    """`(x, y, sample_weight)` of a batch, images cast to a tensor.

    Raises:
        TypeError: images that are not floating point.
        ValueError: no labels.
    """
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    if y is None:
        raise ValueError(
            f"{method} trains on labelled batches: (images, labels) or "
            "(images, labels, sample_weight); got images only."
        )
    x = tf.convert_to_tensor(x)
    if not x.dtype.is_floating:
        raise TypeError(
            f"Images must be floating point in [0, 1]; got {x.dtype}. "
            "Divide uint8 images by 255 in the input pipeline."
        )
    weights = sample_weights(sample_weight, method=method)
    return x, tf.convert_to_tensor(y), weights


def labels(y, *, num_classes: int, check: bool, method: str) -> tf.Tensor:
    """Integer labels of shape `(batch,)`, from indices or one-hot rows.

    With `check`, fractional float labels and rows that are not one-hot
    fail the step with a clear message.

    Raises:
        TypeError: labels that are not numbers.
        ValueError: labels of a shape that fits neither form.
    """
    accepted = (
        "integer class indices of shape (batch,) or (batch, 1), or "
        f"one-hot rows of shape (batch, {num_classes}) (the classifier "
        f"outputs {num_classes} logits)"
    )
    if not (y.dtype.is_integer or y.dtype.is_floating or y.dtype.is_bool):
        raise TypeError(
            f"{method} takes labels as {accepted}; got {y.dtype.name} labels."
        )
    rank = y.shape.rank
    width = y.shape[-1] if rank else None
    if rank == 2 and width != 1:
        if width != num_classes:
            raise ValueError(
                f"{method} takes labels as {accepted}; got labels of "
                f"shape {tuple(y.shape)}, whose width is not the number of "
                "classes."
            )
        y = tf.cast(y, tf.float32)
        if check:
            y = _assert_one_hot(y)
        return tf.argmax(y, axis=-1, output_type=tf.int32)
    if rank is not None and rank > 2:
        raise ValueError(
            f"{method} takes labels as {accepted}; got labels of shape "
            f"{tuple(y.shape)}."
        )
    y = tf.reshape(y, [-1])
    if y.dtype.is_floating and check:
        whole = tf.debugging.assert_equal(
            y,
            tf.round(y),
            message="Labels must be whole-number class indices; a float "
            "label has a fractional part (e.g. 2.7), which would be "
            "truncated to another class. Give integer labels (or one-hot "
            "rows).",
        )
        with tf.control_dependencies([whole]):
            y = tf.identity(y)
    return tf.cast(y, tf.int32)


def assert_valid(x, y, *, num_classes: int):
    """`(x, y)` after asserting finite images in [0, 1], labels in range."""
    classes = num_classes
    checks = [
        tf.debugging.assert_all_finite(
            x, "Images contain NaN or inf; they must be finite in [0, 1]."
        ),
        tf.debugging.assert_greater_equal(
            tf.reduce_min(x),
            tf.constant(0.0, x.dtype),
            message="Images must lie in [0, 1] (pixel space); the minimum "
            "is below 0. Normalisation belongs inside the model.",
        ),
        tf.debugging.assert_less_equal(
            tf.reduce_max(x),
            tf.constant(1.0, x.dtype),
            message="Images must lie in [0, 1] (pixel space); the maximum "
            "is above 1. Divide by 255 in the input pipeline.",
        ),
        tf.debugging.assert_non_negative(
            y, message="Labels must be in [0, num_classes); got < 0."
        ),
        tf.debugging.assert_less(
            y,
            classes,
            message=f"Labels must be in [0, num_classes) = [0, {classes}) "
            f"for this classifier, which outputs {classes} logits (one per "
            f"class); got a label >= {classes}. The data has more classes "
            "than the classifier has outputs: give the classifier one "
            "output per class.",
        ),
    ]
    with tf.control_dependencies(checks):
        return tf.identity(x), tf.identity(y)


def _assert_one_hot(y):
    """`y` after asserting that its rows are one-hot."""
    binary = tf.reduce_all((y == 0.0) | (y == 1.0))
    single = tf.reduce_all(tf.reduce_sum(y, -1) == 1.0)
    check = tf.debugging.Assert(
        binary & single,
        [
            "One-hot labels must have a single 1 per row and 0 elsewhere "
            "(soft labels, e.g. label smoothing, are not accepted: the "
            "method's losses take class indices)."
        ],
    )
    with tf.control_dependencies([check]):
        return tf.identity(y)


def sample_weights(sample_weight, *, method: str):
    """Per-example float32 weights of shape (batch,), or None."""
    if sample_weight is None:
        return None
    weights = tf.cast(tf.convert_to_tensor(sample_weight), tf.float32)
    shape = weights.shape
    if shape.rank is not None and (
        shape.rank > 2 or (shape.rank == 2 and shape[-1] not in (1, None))
    ):
        raise ValueError(
            f"{method} weighs each example's loss by one number, so "
            "sample_weight must have shape (batch,) or (batch, 1); got "
            f"shape {tuple(shape)}."
        )
    return tf.reshape(weights, [-1])
