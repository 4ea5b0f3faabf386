"""Small convolutional classifiers for MNIST-like data."""

from __future__ import annotations

from collections.abc import Sequence

import gin
import keras

from tfadv.models import common


@gin.register(module="tfadv.models")
def small_cnn(
    *,
    input_shape: Sequence[int] = (28, 28, 1),
    num_classes: int = 10,
    mean: common.ChannelStats = None,
    std: common.ChannelStats = None,
    filters: Sequence[int] = (32, 64),
    dense_units: int = 128,
    name: str = "small_cnn",
) -> keras.Model:
    """Builds tfadv's fast two-conv CNN for tests and CPU benchmarks.

    Architecture: normalize -> Conv3x3(filters[0], same) -> ReLU
    ["first_layer"] -> MaxPool 2 -> Conv3x3(filters[1], same) -> ReLU ->
    MaxPool 2 -> Flatten -> Dense(dense_units) -> ReLU -> Dense(num_classes).
    There is no BatchNorm and no dropout, so it trains in seconds per epoch
    of Fashion-MNIST on two CPU cores. Layer 0 for YOPO is
    `f0(x) = ReLU(conv(normalize(x)))`. Weights use the Keras default
    initialisers; this model has no reference implementation to match.

    Example:
    ```python
    model = tfadv.models.small_cnn(input_shape=(8, 8, 3), filters=(4, 8),
                                   dense_units=16)
    logits = model(images)  # images: float32 in [0, 1]
    ```

    Args:
        input_shape: Shape of one image, `(height, width, channels)`; height
            and width must be at least 4.
        num_classes: Number of logits.
        mean: Per-channel mean for the in-model normalisation (None: 0).
        std: Per-channel std for the in-model normalisation (None: 1).
        filters: Number of filters of the two conv layers.
        dense_units: Width of the hidden dense layer.
        name: Name of the model.

    Returns:
        A functional `keras.Model` mapping images in [0, 1] to logits.

    Raises:
        ValueError: If an argument is out of range.
    """
    height, width, channels = common.check_input_shape(input_shape)
    num_classes = common.check_num_classes(num_classes)
    filters = common.check_positive_ints("filters", filters)
    if len(filters) != 2:
        raise ValueError(
            f"Received filters={filters!r}. Expected two positive ints, the "
            "filters of the two conv layers."
        )
    dense_units = common.check_positive_int("dense_units", dense_units)
    if min(height, width) < 4:
        raise ValueError(
            f"Received input_shape={tuple(input_shape)!r}. small_cnn pools "
            "twice by 2, so height and width must be at least 4."
        )
    filters1, filters2 = filters

    inputs = keras.Input(shape=(height, width, channels), name="image")
    x = common.normalization(mean=mean, std=std, num_channels=channels)(inputs)
    x = keras.layers.Conv2D(filters1, 3, padding="same", name="conv1")(x)
    x = keras.layers.ReLU(name=common.FIRST_LAYER)(x)
    x = keras.layers.MaxPooling2D(2, name="pool1")(x)
    x = keras.layers.Conv2D(filters2, 3, padding="same", name="conv2")(x)
    x = keras.layers.ReLU(name="relu2")(x)
    x = keras.layers.MaxPooling2D(2, name="pool2")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(dense_units, name="fc1")(x)
    x = keras.layers.ReLU(name="relu3")(x)
    # float32 logits even under a mixed-precision policy.
    logits = keras.layers.Dense(
        num_classes, dtype="float32", name=common.LOGITS_LAYER
    )(x)
    return keras.Model(inputs, logits, name=name)


@gin.register(module="tfadv.models")
def mnist_small_cnn(
    *,
    input_shape: Sequence[int] = (28, 28, 1),
    num_classes: int = 10,
    mean: common.ChannelStats = None,
    std: common.ChannelStats = None,
    dropout: float = 0.5,
    raw_pixels: bool = False,
    name: str = "mnist_small_cnn",
) -> keras.Model:
    """Builds the MNIST SmallCNN of TRADES and YOPO.

    Architecture (`yaodongyu/TRADES: models/small_cnn.py`,
    `a1600012888/YOPO-You-Only-Propagate-Once:
    experiments/MNIST/YOPO-5-10/network.py`): normalize -> Conv3x3(32,
    valid) -> ReLU ["first_layer"] -> Conv3x3(32) -> ReLU -> MaxPool 2 ->
    Conv3x3(64) -> ReLU -> Conv3x3(64) -> ReLU -> MaxPool 2 -> Flatten ->
    Dense(200) -> ReLU -> Dropout -> Dense(200) -> ReLU -> Dense(num_classes).
    On 28x28x1 inputs it has 312,202 parameters, as the reference.

    YOPO's layer 0 is `f0(x) = ReLU(conv1(x))`, the costate being taken at
    the ReLU output. Initialisation follows the reference: convs
    `kaiming_normal_` (fan-in) with zero bias, the two hidden dense layers
    PyTorch's default, and the logits layer all zeros, so an untrained model
    outputs zero logits (and zero input gradients).

    Example:
    ```python
    model = tfadv.models.mnist_small_cnn()
    logits = model(images, training=True)  # dropout active
    ```

    Args:
        input_shape: Shape of one image, `(height, width, channels)`; height
            and width must be at least 16.
        num_classes: Number of logits.
        mean: Per-channel mean for the in-model normalisation (None: 0).
        std: Per-channel std for the in-model normalisation (None: 1).
        dropout: Dropout rate after the first dense layer.
        raw_pixels: ignore `mean` and `std` and feed [0, 1] pixels to conv1
            as the reference does (the "normalize" layer stays, as the
            identity); the reference's learning rates were tuned for them.
        name: Name of the model.

    Returns:
        A functional `keras.Model` mapping images in [0, 1] to logits.

    Raises:
        ValueError: If an argument is out of range.
    """
    height, width, channels = common.check_input_shape(input_shape)
    num_classes = common.check_num_classes(num_classes)
    dropout = common.check_rate("dropout", dropout)
    if raw_pixels:
        mean = std = None
    if min(height, width) < 16:
        raise ValueError(
            f"Received input_shape={tuple(input_shape)!r}. mnist_small_cnn "
            "has four valid 3x3 convs and two 2x2 pools, so height and width "
            "must be at least 16."
        )

    def conv(x, filters, conv_name):
        return keras.layers.Conv2D(
            filters,
            3,
            padding="valid",
            kernel_initializer=common.he_normal_initializer(mode="fan_in"),
            bias_initializer="zeros",
            name=conv_name,
        )(x)

    def dense(x, units, dense_name):
        fan_in = x.shape[-1]
        return keras.layers.Dense(
            units,
            kernel_initializer=common.torch_default_kernel_initializer(),
            bias_initializer=common.torch_default_bias_initializer(fan_in),
            name=dense_name,
        )(x)

    inputs = keras.Input(shape=(height, width, channels), name="image")
    x = common.normalization(mean=mean, std=std, num_channels=channels)(inputs)
    x = conv(x, 32, "conv1")
    x = keras.layers.ReLU(name=common.FIRST_LAYER)(x)
    x = conv(x, 32, "conv2")
    x = keras.layers.ReLU(name="relu2")(x)
    x = keras.layers.MaxPooling2D(2, name="pool1")(x)
    x = conv(x, 64, "conv3")
    x = keras.layers.ReLU(name="relu3")(x)
    x = conv(x, 64, "conv4")
    x = keras.layers.ReLU(name="relu4")(x)
    x = keras.layers.MaxPooling2D(2, name="pool2")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = dense(x, 200, "fc1")
    x = keras.layers.ReLU(name="fc1_relu")(x)
    x = keras.layers.Dropout(dropout, name="dropout")(x)
    x = dense(x, 200, "fc2")
    x = keras.layers.ReLU(name="fc2_relu")(x)
    logits = keras.layers.Dense(
        num_classes,
        kernel_initializer="zeros",
        bias_initializer="zeros",
        dtype="float32",
        name=common.LOGITS_LAYER,
    )(x)
    return keras.Model(inputs, logits, name=name)
