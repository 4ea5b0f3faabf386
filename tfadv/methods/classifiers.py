"""What a trainer reads from, and checks about, the classifier it wraps.

The classifier maps [0, 1] images to logits, one per class: a functional,
Sequential or subclassed `keras.Model`. `check_outputs` refuses a
probability output (a final softmax) or an output that is not
`(batch, num_classes)`; `image_shape`, `normalization_std` and
`per_replica_buffer` serve methods that keep state of the input's shape.
"""

import keras
import numpy as np
import tensorflow as tf

from tfadv.models import common


def image_shape(classifier: keras.Model) -> tuple | None:
    """The classifier's input shape without the batch axis, if known.

    From `input_shape` (functional and Sequential models) or, for a built
    subclassed model, from the shape it was built with; None otherwise.
    """
    try:
        shape = classifier.input_shape
    except (AttributeError, ValueError):
        shape = None
    if shape is None:
        build_config = classifier.get_build_config() or {}
        shape = build_config.get("input_shape")
    if shape is None or not isinstance(shape, (tuple, list)) or not shape:
        return None
    if isinstance(shape[0], (tuple, list)):
        return None  # several inputs
    return tuple(shape[1:])


def defined_image_shape(classifier: keras.Model, *, method: str, what: str):
    """The fully defined input shape a method's buffer needs.

    Args:
        classifier: the wrapped classifier.
        method: the method's name, for the error.
        what: what the method keeps of the input's shape (e.g. "a
            perturbation"), for the error.

    Raises:
        ValueError: the shape is unknown or has an undefined axis.
    """
    shape = image_shape(classifier)
    if shape is None or any(d is None for d in shape):
        raise ValueError(
            f"{method} keeps {what} of the input's shape, so the classifier "
            f"needs a fully defined input shape; got {shape}. Give a "
            "functional model a fully defined keras.Input, or call a "
            "subclassed one on a batch of images before building the "
            "trainer."
        )
    return shape


def per_replica_buffer(shape, dtype: str, name: str) -> keras.Variable:
    """A zero variable with one copy per replica, never synchronised.

    Each replica reads and writes its own copy inside the step (no
    cross-replica merge); a read outside the step (saving, an epoch hook)
    takes the first replica's, and a restore writes it to every replica.
    """
    return keras.Variable(
        initializer="zeros",
        shape=shape,
        dtype=dtype,
        trainable=False,
        synchronization="on_read",
        aggregation="only_first_replica",
        name=name,
    )


def normalization_std(classifier: keras.Model):
    """The std of the classifier's normalisation layer (1 without one).

    tfadv's builders normalise with a `keras.layers.Normalization` named
    `models.NORMALIZE_LAYER`; its std turns a pixel-space gradient into
    the gradient with respect to the normalised input.
    """
    try:
        layer = classifier.get_layer(common.NORMALIZE_LAYER)
    except ValueError:
        return 1.0
    variance = getattr(layer, "input_variance", None)
    if not isinstance(layer, keras.layers.Normalization) or variance is None:
        return 1.0
    return tf.sqrt(tf.cast(tf.reshape(variance, [-1]), tf.float32))


def probability_activation(model) -> str | None:
    """The name of a final softmax or sigmoid of a layered model, if any."""
    layer = model
    # Descend into nested models through their last layer.
    while isinstance(layer, keras.Model):
        inner = getattr(layer, "layers", None)
        if not inner:
            return None
        layer = inner[-1]
    if isinstance(layer, keras.layers.Softmax):
        return "softmax"
    activation = getattr(layer, "activation", None)
    name = getattr(activation, "__name__", "")
    if name in ("softmax", "sigmoid"):
        return name
    return None


def inspect(classifier, shape: tuple | None, *, method: str) -> int | None:
    """Checks that the classifier outputs logits; their number if known.

    Eagerly, one inference forward on two fixed images in [0, 1] builds
    the classifier if needed and shows its outputs; in a trace only the
    static output shape is checked.

    Args:
        classifier: the wrapped classifier.
        shape: the input shape without the batch axis, when the classifier
            does not know it.
        method: the method's name, for the errors.

    Returns:
        The number of classes, or None when it is not known yet.

    Raises:
        ValueError: the output is not `(batch, num_classes)` logits with
            num_classes >= 2 (e.g. softmax probabilities).
    """
    activation = probability_activation(classifier)
    if activation is not None:
        raise ValueError(
            f"{method} trains a classifier that outputs logits (one "
            "unnormalised score per class), but this classifier's last "
            f"layer applies a {activation} activation, so its outputs are "
            "probabilities. Remove that activation (e.g. Dense(num_classes) "
            f"instead of Dense(num_classes, activation='{activation}')): "
            "the losses and attacks apply the softmax themselves."
        )
    if shape is None:
        shape = image_shape(classifier)
    known = shape is not None and all(d is not None for d in shape)
    if known and tf.executing_eagerly():
        size = 2 * int(np.prod(shape))
        images = np.linspace(0.0, 1.0, size, dtype="float32")
        outputs = classifier(
            tf.constant(images.reshape((2, *shape))), training=False
        )
        return check_outputs(outputs, method=method)
    try:
        output_shape = classifier.output_shape
    except (AttributeError, ValueError):
        return None  # known once the classifier runs
    return check_outputs(keras.KerasTensor(output_shape), method=method)


def check_outputs(outputs, *, method: str) -> int | None:
    """Refuses outputs that are not logits; their number if known."""
    accepted = (
        "logits, one per class: a single (batch, num_classes) tensor of "
        "unnormalised scores, with num_classes >= 2"
    )
    if not hasattr(outputs, "shape") or not hasattr(outputs, "dtype"):
        raise ValueError(
            f"{method} trains a classifier that outputs {accepted}; this "
            f"one outputs a {type(outputs).__name__}."
        )
    shape = tuple(outputs.shape)
    if len(shape) != 2:
        raise ValueError(
            f"{method} trains a classifier that outputs {accepted}; this "
            f"one outputs shape {shape}."
        )
    classes = shape[-1]
    if classes is not None and classes < 2:
        raise ValueError(
            f"{method} trains a classifier that outputs {accepted}; this "
            f"one outputs {classes} value per example. For two classes use "
            "two logits (Dense(2)), not one sigmoid output."
        )
    if isinstance(outputs, (tf.Tensor, np.ndarray)) and tf.executing_eagerly():
        values = np.asarray(outputs, dtype="float64")
        in_unit = values.min() >= 0.0 and values.max() <= 1.0
        sums_to_one = np.allclose(values.sum(-1), 1.0, atol=1e-3)
        if in_unit and sums_to_one:
            raise ValueError(
                f"{method} trains a classifier that outputs {accepted}; "
                "this one's outputs look like probabilities (every row is "
                "in [0, 1] and sums to 1, as after a softmax). Remove the "
                "final softmax: the losses and attacks apply it themselves."
            )
    return None if classes is None else int(classes)


def require_classes(num_classes, x, trainer) -> None:
    """Refuses a classifier whose number of classes a batch did not show."""
    if num_classes is None:
        raise ValueError(
            f"{type(trainer).__name__} could not find how many classes its "
            "classifier outputs; build it on a batch of fully defined shape "
            f"first (got images of shape {tuple(x.shape)})."
        )


class ExportsClassifier:
    """Makes a trainer's `export` the classifier's serving function.

    A trainer adds nothing to inference (its `call` is the classifier's),
    so what a user serves is the classifier: images in [0, 1] to logits,
    loadable without tfadv.
    """

    def export(
        self,
        filepath,
        format="tf_saved_model",
        verbose=None,
        input_signature=None,
        **kwargs,
    ):
        """Exports `self.classifier`, as `keras.Model.export` does."""
        return self.classifier.export(
            filepath,
            format=format,
            verbose=verbose,
            input_signature=input_signature,
            **kwargs,
        )
