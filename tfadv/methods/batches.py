"""A training batch as a method sees it: unpacked, cast, checked, weighted.

`AdversarialTrainer.prepare_batch` calls `unpack`; no method overrides
what is here. Images must be floating point in [0, 1]; labels are integer
class indices of shape `(batch,)` or `(batch, 1)`, or one-hot rows of
width num_classes (converted by argmax). The batch's sample weights
(`fit`'s `sample_weight` or `class_weight`) are kept in a thread-local
`BatchState` for the step's losses (`WeightedCrossEntropy`,
`AdversarialTrainer.replica_mean`).

Values are checked twice: eagerly, once per `fit`, on the first batch
(`FirstBatchCheck`, a `ValueError` paragraph before any weight moves,
with `jit_compile` too), and inside every step without `jit_compile`
(`assert_valid`, graph assertions, which XLA would drop).
"""

import inspect
import re
import threading

import keras
import numpy as np
import tensorflow as tf

from tfadv.attacks import base as attack_base


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


def sum_replicas(value):
    """`value` (a tensor or a structure of them) summed over the replicas.

    Inside a replica context with more than one replica, an all-reduce;
    otherwise `value` itself.
    """
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return value
    return context.all_reduce(tf.distribute.ReduceOp.SUM, value)


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


class FirstBatchCheck:
    """`fit` checks the first batch's values eagerly, then trains.

    The in-step checks (`assert_valid`) are graph assertions: under
    `jit_compile` XLA drops them, and without it a bad batch stops `fit`
    with the message inside a long `InvalidArgumentError: Graph execution
    error`. So, once per `fit` call and with `jit_compile` or not, the
    first batch of the training data (and of `validation_data`) is read
    and checked eagerly (`check_batch`, which also tries `compile`'s
    metrics on its labels), raising one `ValueError` paragraph before any
    weight moves. Arrays and tensors are checked whole; a
    `tf.data.Dataset` or `keras.utils.PyDataset` by its first batch; a
    Python generator, which reading would consume, is left to the in-step
    checks. Skipped when the trainer's `check_inputs` is False.
    """

    def fit(self, *args, **kwargs):
        if getattr(self, "check_inputs", False):
            given = (
                inspect.signature(keras.Model.fit)
                .bind(self, *args, **kwargs)
                .arguments
            )
            for (data, what), where in (
                (
                    _first_batch(
                        given.get("x"),
                        given.get("y"),
                        given.get("sample_weight"),
                    ),
                    "training",
                ),
                (_first_batch(given.get("validation_data")), "validation"),
            ):
                if data is not None:
                    check_batch(self, data, where=what.format(where))
            _check_class_weight(given.get("class_weight"), self)
        return super().fit(*args, **kwargs)


def _first_batch(x, y=None, sample_weight=None):
    """`(data, what)`: what `fit` reads first from `x`, or `(None, "")`.

    Arrays are checked whole, a dataset by its first batch; a generator
    not at all (reading it would consume it). `what` names the part
    checked, with a slot for "training" or "validation".
    """
    if isinstance(x, tf.data.Dataset):
        for batch in x.take(1):
            return batch, "first {} batch"
        return None, ""
    if isinstance(x, keras.utils.PyDataset):
        return x[0], "first {} batch"
    if isinstance(x, (tuple, list)) and y is None:
        return tuple(x), "{} data"  # validation_data=(images, labels[, w])
    if y is not None and isinstance(x, (np.ndarray, tf.Tensor)):
        data = (x, y) if sample_weight is None else (x, y, sample_weight)
        return data, "{} data"
    return None, ""


def check_batch(trainer, data, *, where: str = "training batch") -> None:
    """Refuses a batch with bad values, eagerly, in one paragraph.

    Checks finite images in [0, 1], whole-number labels in
    [0, num_classes) (or one-hot rows), finite, non-negative sample
    weights and `compile`'s metrics on these labels; builds and checks an
    unbuilt classifier first.

    Raises:
        TypeError: images not floating point, labels not numbers.
        ValueError: naming the bad values and what is accepted.
    """
    method = type(trainer).__name__
    who = f"{method}'s {where}"
    x, y, weights = keras.utils.unpack_x_y_sample_weight(data)
    if isinstance(x, dict):  # images with example ids (FGSM-PGI)
        if "image" not in x:
            return  # several inputs: the step checks them
        x = x["image"]
    x, y, weights = unpack((x, y, weights), method=method)
    # An unbuilt classifier is built here, under the trainer's strategy,
    # as the step would have built it.
    with trainer.distribute_strategy.scope():
        trainer._ensure_classifier_checked(x)
    attack_base.check_images(x, who=who)
    classes = trainer.num_classes
    y = tf.convert_to_tensor(y)
    indices = labels(y, num_classes=classes, check=False, method=method)
    _check_labels(y.numpy(), classes, who)
    if weights is not None:
        _check_weights(weights.numpy(), who)
    _check_metrics(trainer, indices, classes)


def _check_metrics(trainer, y, classes: int) -> None:
    """Refuses a `compile` metric that fails on (labels, logits).

    Each metric is tried on the batch's labels and zero logits without
    touching its state (`stateless_update_state`), so a metric of another
    kind of target (e.g. "mse" on one-hot rows) is refused here rather
    than failing inside the first step.
    """
    logits = tf.zeros((y.shape[0], classes))
    for group in trainer.user_metrics.values():
        for metric in group:
            try:
                metric.stateless_update_state(
                    [v.value for v in metric.variables], y, logits
                )
            except (ValueError, TypeError, tf.errors.OpError) as e:
                reason = re.sub(r"\{\{.*?\}\}\s*", "", str(e))
                reason = reason.strip().split("\n")[0]
                name = metric.name.split("_", 1)[1]  # without "clean_"
                raise ValueError(
                    f"{type(trainer).__name__} computes compile's metrics "
                    "on integer labels of shape (batch,) and logits of shape "
                    f"(batch, {classes}); the metric {name!r} fails "
                    f"on them ({reason}). Give metrics of class indices "
                    "and logits, e.g. keras.metrics."
                    "SparseTopKCategoricalAccuracy(k=5, name='top5'), not "
                    "ones of one-hot targets or probabilities such as 'mse'."
                ) from None
            break  # the copies of one metric for each prefix are alike


def _check_labels(y: np.ndarray, classes: int, who: str) -> None:
    accepted = (
        f"integer class indices in [0, {classes}) (the classifier outputs "
        f"{classes} logits, one per class) or one-hot rows"
    )
    if y.ndim == 2 and y.shape[-1] == classes and classes != 1:
        one_hot = np.isin(y, (0, 1)).all() and (y.sum(-1) == 1).all()
        if not one_hot:
            raise ValueError(
                f"{who} has label rows of width {classes} that are not "
                "one-hot (a single 1 per row, 0 elsewhere; soft labels "
                "such as label smoothing are not accepted: the method's "
                f"losses take class indices). Give {accepted}."
            )
        return
    y = y.reshape(-1)
    if y.dtype.kind == "f":
        fractional = y[y != np.round(y)]
        if fractional.size:
            raise ValueError(
                f"{who} has labels with a fractional part "
                f"({fractional[0]:g}), which would be truncated to another "
                "class; labels must be whole-number class indices. Give "
                f"{accepted}."
            )
    bad = y[(y < 0) | (y >= classes)]
    if bad.size:
        shown = [int(v) for v in np.unique(bad)[:5]]  # whole numbers here
        raise ValueError(
            f"{who} has labels {shown} outside "
            f"[0, num_classes) = [0, {classes}): the classifier outputs "
            f"{classes} logits, "
            "one per class. Give the classifier one output per class of "
            f"the data, or labels in [0, {classes})."
        )


def _check_weights(weights: np.ndarray, who: str) -> None:
    low = float(weights.min()) if weights.size else 0.0
    if not np.isfinite(weights).all() or low < 0:
        shown = low if np.isfinite(low) else "a non-finite value"
        raise ValueError(
            f"{who} has sample weights down to {shown}; weights must be "
            "finite and >= 0 (a negative weight turns the example's loss "
            "negative, so training would ascend it, making the model "
            "worse on that example; 0 leaves an example out). Give "
            "non-negative sample_weight values."
        )


def _check_class_weight(class_weight, trainer) -> None:
    if not class_weight:
        return
    bad = {
        k: v
        for k, v in dict(class_weight).items()
        if not (np.isfinite(float(v)) and float(v) >= 0)
    }
    if bad:
        raise ValueError(
            f"{type(trainer).__name__} got class_weight {bad}: class "
            "weights must be finite and >= 0 (a negative weight turns the "
            "class's loss negative, so training would ascend it). Give "
            "non-negative class_weight values."
        )
