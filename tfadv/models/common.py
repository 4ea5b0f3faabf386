"""Pieces shared by the classifier builders.

Every builder in `tfadv.models` returns a functional `keras.Model` that
takes float32 images in [0, 1] pixel space and returns logits. The
builders share three conventions that the rest of tfadv relies on:

- The first operation is a `keras.layers.Normalization` layer named
  `NORMALIZE_LAYER` ("normalize") computing `(x - mean) / std` per channel,
  so attacks and epsilons stay in pixel units.
- The layer whose output is the YOPO split point `z = f0(x)` is named
  `FIRST_LAYER` ("first_layer"), and no skip connection crosses it, so
  `split_at_first_layer` can cut the model into `f0` and `rest` with
  `rest(f0(x)) == model(x)`.
- BatchNorm uses `momentum=0.9, epsilon=1e-5`, the Keras equivalents of
  PyTorch's defaults (docs/algorithms.md §0.3, rule 3).

Builders are also given PyTorch-style weight initialisers where the
reference code relies on them, so that training curves are comparable with
the reference implementations.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import keras

FIRST_LAYER = "first_layer"
NORMALIZE_LAYER = "normalize"
LOGITS_LAYER = "logits"

# PyTorch BatchNorm2d uses momentum 0.1 on the *new* batch statistic, which
# is Keras momentum 0.9 on the *old* moving statistic; PyTorch eps is 1e-5.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5

ChannelStats = float | Sequence[float] | None


def check_input_shape(input_shape: Sequence[int]) -> tuple[int, int, int]:
    """Validates an image shape `(height, width, channels)`.

    Args:
        input_shape: Shape of one image, without the batch dimension.

    Returns:
        The shape as a tuple of three Python ints.

    Raises:
        ValueError: If the shape is not of rank 3 or has a non-positive or
            unknown dimension.
    """
    try:
        shape = tuple(input_shape)
    except TypeError:
        shape = None
    if (
        shape is None
        or len(shape) != 3
        or not all(_is_positive_int(d) for d in shape)
    ):
        raise ValueError(
            f"Received input_shape={input_shape!r}. Expected the shape of one "
            "image without the batch dimension, as three positive ints "
            "(height, width, channels), e.g. (28, 28, 1) or (32, 32, 3)."
        )
    return tuple(int(d) for d in shape)


def _is_positive_int(value) -> bool:
    return (
        isinstance(value, numbers.Integral)
        and not isinstance(value, bool)
        and value > 0
    )


def check_num_classes(num_classes: int) -> int:
    """Validates the number of classes.

    Args:
        num_classes: Number of output logits.

    Returns:
        `num_classes`.

    Raises:
        ValueError: If `num_classes` is not an int of at least 2.
    """
    if not _is_positive_int(num_classes) or num_classes < 2:
        raise ValueError(
            f"Received num_classes={num_classes!r}. Expected an int >= 2."
        )
    return int(num_classes)


def check_positive_int(name: str, value: int) -> int:
    """Checks that a value is a positive int.

    Args:
        name: Argument name, used in the error message.
        value: The value.

    Returns:
        `value` as a Python int.

    Raises:
        ValueError: If `value` is not a positive int.
    """
    if not _is_positive_int(value):
        raise ValueError(f"Received {name}={value!r}. Expected a positive int.")
    return int(value)


def check_positive_ints(name: str, values: Sequence[int]) -> tuple[int, ...]:
    """Checks that a sequence holds only positive ints.

    Args:
        name: Argument name, used in the error message.
        values: A non-empty sequence of ints.

    Returns:
        The values as a tuple of Python ints.

    Raises:
        ValueError: If `values` is empty or any value is not a positive int.
    """
    try:
        flat = tuple(values)
    except TypeError:
        flat = ()
    if not flat or not all(_is_positive_int(v) for v in flat):
        raise ValueError(
            f"Received {name}={values!r}. Expected a sequence of positive ints."
        )
    return tuple(int(v) for v in flat)


def check_rate(name: str, rate: float) -> float:
    """Checks that a dropout rate lies in [0, 1).

    Args:
        name: Argument name, used in the error message.
        rate: The rate.

    Returns:
        `rate` as a Python float.

    Raises:
        ValueError: If `rate` is not a number in [0, 1).
    """
    if (
        not isinstance(rate, numbers.Real)
        or isinstance(rate, bool)
        or not 0.0 <= rate < 1.0
    ):
        raise ValueError(
            f"Received {name}={rate!r}. Expected a float in [0, 1)."
        )
    return float(rate)


def _channel_values(
    name: str, value: ChannelStats, default: float, num_channels: int
) -> list[float]:
    """Expands a per-channel statistic to a list of `num_channels` floats."""
    if value is None:
        return [float(default)] * num_channels
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return [float(value)] * num_channels
    try:
        values = [float(v) for v in value]
    except (TypeError, ValueError):
        values = None
    if values is None or len(values) not in (1, num_channels):
        raise ValueError(
            f"Received {name}={value!r}. Expected None, a float, or a "
            f"sequence of {num_channels} floats (one per channel of the "
            "input image)."
        )
    if len(values) == 1:
        values = values * num_channels
    return values


def normalization(
    *,
    mean: ChannelStats,
    std: ChannelStats,
    num_channels: int,
    name: str = NORMALIZE_LAYER,
) -> keras.layers.Normalization:
    """Builds the in-model per-channel normalisation `(x - mean) / std`.

    The built-in `keras.layers.Normalization` is used with fixed statistics,
    so a saved model reloads with `keras.saving.load_model` in safe mode
    and without custom objects. The layer holds no variables.

    Args:
        mean: Per-channel mean in pixel units: a float, a sequence with one
            value per channel, or None for 0.
        std: Per-channel standard deviation in pixel units: a positive
            float, a sequence of them, or None for 1.
        num_channels: Number of channels of the input image.
        name: Name of the layer.

    Returns:
        An unbuilt `keras.layers.Normalization` layer.

    Raises:
        ValueError: If `mean` or `std` has the wrong length, or `std` is not
            positive.
    """
    means = _channel_values("mean", mean, 0.0, num_channels)
    stds = _channel_values("std", std, 1.0, num_channels)
    if not all(math.isfinite(m) for m in means):
        raise ValueError(f"Received mean={mean!r}. Expected finite values.")
    if not all(math.isfinite(s) and s > 0 for s in stds):
        raise ValueError(
            f"Received std={std!r}. Expected positive finite values."
        )
    return keras.layers.Normalization(
        axis=-1,
        mean=means,
        variance=[s * s for s in stds],
        name=name,
    )


def batch_norm(*, name: str) -> keras.layers.BatchNormalization:
    """Builds a BatchNorm layer with PyTorch-equivalent settings.

    Args:
        name: Name of the layer.

    Returns:
        A `keras.layers.BatchNormalization` with `momentum=0.9` and
        `epsilon=1e-5`.
    """
    return keras.layers.BatchNormalization(
        momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=name
    )


def torch_default_kernel_initializer() -> keras.initializers.Initializer:
    """Returns PyTorch's default `Conv2d`/`Linear` weight initialiser.

    PyTorch uses `kaiming_uniform_(a=sqrt(5))`, i.e. U(-b, b) with
    `b = 1 / sqrt(fan_in)`. A fresh instance is returned on every call
    because an unseeded Keras initialiser yields the same values each time
    it is called.

    Returns:
        A `keras.initializers.VarianceScaling` instance.
    """
    return keras.initializers.VarianceScaling(
        scale=1.0 / 3.0, mode="fan_in", distribution="uniform"
    )


def torch_default_bias_initializer(
    fan_in: int,
) -> keras.initializers.Initializer:
    """Returns PyTorch's default bias initialiser, U(-b, b), b = fan_in**-0.5.

    Args:
        fan_in: Number of inputs of the layer (for a conv, `k * k * c_in`).

    Returns:
        A `keras.initializers.RandomUniform` instance.
    """
    bound = 1.0 / math.sqrt(fan_in)
    return keras.initializers.RandomUniform(minval=-bound, maxval=bound)


def he_normal_initializer(*, mode: str) -> keras.initializers.Initializer:
    """Returns PyTorch's `kaiming_normal_` (ReLU gain, untruncated normal).

    Args:
        mode: "fan_in" (PyTorch's default, used by the TRADES SmallCNN) or
            "fan_out" (`normal(0, sqrt(2 / (k * k * c_out)))`, used by the
            TRADES WideResNet).

    Returns:
        A `keras.initializers.VarianceScaling` instance.
    """
    return keras.initializers.VarianceScaling(
        scale=2.0, mode=mode, distribution="untruncated_normal"
    )


def _missing_layer_error(model_name: str, layer_name: str, why: str):
    return ValueError(
        f"Cannot split model '{model_name}' at layer '{layer_name}': {why} "
        f"Splitting (as YOPO does) needs a functional or Sequential Keras "
        f"model with a layer named '{layer_name}' whose output is the split "
        "point z = f0(x), with no skip connection crossing it. The "
        "tfadv.models builders name that layer "
        f"'{FIRST_LAYER}'; for your own model, name the layer "
        f"'{FIRST_LAYER}', or pass layer_name= with the name of the layer "
        "to split at."
    )


def split_at_first_layer(
    model: keras.Model, layer_name: str = FIRST_LAYER
) -> tuple[keras.Model, keras.Model]:
    """Splits a classifier into `f0` (up to the first layer) and `rest`.

    `f0 = keras.Model(model.inputs, z)` where `z` is the output of the layer
    named `layer_name`, and `rest` maps `z` to the logits, so that
    `rest(f0(x)) == model(x)` in both training and inference mode. Both
    halves reuse the layers of `model`, so their weights are shared with it
    and `f0.weights + rest.weights` are exactly `model.weights`.

    `rest` is built with Keras's support for functional models whose inputs
    are intermediate tensors: the graph from `z` to the outputs is walked
    and each node re-applied on a fresh `keras.Input` of `z`'s shape, which
    works for residual graphs. Any dependence of the part after `z` on a
    tensor computed before `z` (a skip connection crossing the split point)
    is rejected.

    Example:
    ```python
    model = tfadv.models.preact_resnet18()
    layer0, rest = tfadv.models.split_at_first_layer(model)
    z = layer0(x, training=True)
    logits = rest(z, training=True)
    ```

    Args:
        model: A functional or Sequential `keras.Model` with one input and
            one output.
        layer_name: Name of the layer whose output is the split point.

    Returns:
        A pair `(f0, rest)` of functional `keras.Model`s.

    Raises:
        ValueError: If the model is not functional or Sequential, has no
            layer named `layer_name`, that layer was not called exactly once
            with one output, or a connection crosses the split point.
    """
    model_name = getattr(model, "name", repr(model))
    try:
        inputs = model.inputs
        outputs = model.outputs
    except AttributeError:
        inputs = outputs = None
    if not isinstance(model, keras.Model) or not inputs or not outputs:
        raise _missing_layer_error(
            model_name,
            layer_name,
            f"the model (a {type(model).__name__}) is not a built functional "
            "or Sequential model, so its graph cannot be cut.",
        )
    if len(inputs) != 1 or len(outputs) != 1:
        raise ValueError(
            f"Cannot split model '{model_name}': it has {len(inputs)} inputs "
            f"and {len(outputs)} outputs. Expected a classifier with one "
            "image input and one logits output."
        )
    layer_names = [layer.name for layer in model.layers]
    if layer_name not in layer_names:
        raise _missing_layer_error(
            model_name,
            layer_name,
            f"it has no layer named '{layer_name}' (its layers are "
            f"{layer_names}).",
        )
    layer = model.get_layer(layer_name)
    # Node 0 is the call made when the model was built; later calls (for
    # example by an earlier split) append further nodes.
    nodes = getattr(layer, "_inbound_nodes", None) or []
    if not nodes or len(nodes[0].output_tensors) != 1:
        raise _missing_layer_error(
            model_name,
            layer_name,
            f"layer '{layer_name}' was never called in the model or has "
            "more than one output.",
        )
    z = nodes[0].output_tensors[0]
    try:
        f0 = keras.Model(inputs[0], z, name=f"{model_name}_{layer_name}")
    except ValueError as e:
        raise _missing_layer_error(
            model_name,
            layer_name,
            f"the output of layer '{layer_name}' is not computed from the "
            f"model's input ({e}).",
        ) from e
    try:
        rest = keras.Model(z, outputs[0], name=f"{model_name}_rest")
    except ValueError as e:
        raise ValueError(
            f"Cannot split model '{model_name}' at layer '{layer_name}': the "
            f"layers after '{layer_name}' use a tensor computed before it (a "
            "skip connection or second input crosses the split point), so "
            f"the output is not a function of '{layer_name}''s output alone. "
            "Move the split point to a layer that every path from the input "
            f"goes through, or pass layer_name= for such a layer. ({e})"
        ) from e
    return f0, rest
