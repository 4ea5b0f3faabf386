"""ResNet-18 for CIFAR-sized images: pre-activation and standard."""

from __future__ import annotations

from collections.abc import Sequence

import gin
import keras

from tfadv.models import common


def conv3x3(x, *, filters: int, strides: int, kernel_initializer, name: str):
    """Applies a bias-free 3x3 conv with PyTorch's symmetric padding of 1.

    Keras "same" padding with stride 2 pads only the bottom/right side,
    which samples other pixels than PyTorch's `padding=1`; explicit
    zero-padding plus a "valid" conv matches PyTorch exactly, so weights
    ported from the reference models give the same outputs.

    Args:
        x: Input tensor (NHWC).
        filters: Number of output channels.
        strides: Stride (1 or 2).
        kernel_initializer: Initialiser of the kernel.
        name: Name of the conv layer.

    Returns:
        The output tensor.
    """
    if strides == 1:
        padding = "same"
    else:
        x = keras.layers.ZeroPadding2D(1, name=f"{name}_pad")(x)
        padding = "valid"
    return keras.layers.Conv2D(
        filters,
        3,
        strides=strides,
        padding=padding,
        use_bias=False,
        kernel_initializer=kernel_initializer,
        name=name,
    )(x)


def conv1x1(x, *, filters: int, strides: int, kernel_initializer, name: str):
    """Applies a bias-free 1x1 (shortcut) conv.

    Args:
        x: Input tensor (NHWC).
        filters: Number of output channels.
        strides: Stride.
        kernel_initializer: Initialiser of the kernel.
        name: Name of the conv layer.

    Returns:
        The output tensor.
    """
    return keras.layers.Conv2D(
        filters,
        1,
        strides=strides,
        padding="valid",
        use_bias=False,
        kernel_initializer=kernel_initializer,
        name=name,
    )(x)


def _preact_block(x, *, filters: int, strides: int, name: str):
    """PreActBlock of `locuslab/fast_adversarial: preact_resnet.py`."""
    in_filters = x.shape[-1]
    out = common.batch_norm(name=f"{name}_bn1")(x)
    out = keras.layers.ReLU(name=f"{name}_relu1")(out)
    if strides != 1 or in_filters != filters:
        # The projection shortcut sees the pre-activated input.
        shortcut = conv1x1(
            out,
            filters=filters,
            strides=strides,
            kernel_initializer=common.torch_default_kernel_initializer(),
            name=f"{name}_shortcut",
        )
    else:
        shortcut = x
    out = conv3x3(
        out,
        filters=filters,
        strides=strides,
        kernel_initializer=common.torch_default_kernel_initializer(),
        name=f"{name}_conv1",
    )
    out = common.batch_norm(name=f"{name}_bn2")(out)
    out = keras.layers.ReLU(name=f"{name}_relu2")(out)
    out = conv3x3(
        out,
        filters=filters,
        strides=1,
        kernel_initializer=common.torch_default_kernel_initializer(),
        name=f"{name}_conv2",
    )
    return keras.layers.Add(name=f"{name}_add")([out, shortcut])


@gin.register(module="tfadv.models")
def preact_resnet18(
    *,
    input_shape: Sequence[int] = (32, 32, 3),
    num_classes: int = 10,
    mean: common.ChannelStats = None,
    std: common.ChannelStats = None,
    width: int = 64,
    name: str = "preact_resnet18",
) -> keras.Model:
    """Builds PreAct-ResNet-18 (He et al. 2016) as used by fast AT papers.

    Architecture (`locuslab/fast_adversarial: CIFAR10/preact_resnet.py`,
    the YOPO `pre-res18` experiments): normalize -> Conv3x3(64, no bias)
    ["first_layer"] -> 4 stages of 2 PreActBlocks with 64, 128, 256, 512
    filters (`width` times 1, 2, 4, 8) and strides 1, 2, 2, 2 -> BN ->
    ReLU -> global average pool -> Dense(num_classes). A PreActBlock computes
    `conv(relu(bn(conv(relu(bn(x)))))) + shortcut`, the shortcut being `x`
    or a 1x1 conv of `relu(bn(x))` when the shape changes. On 32x32x3
    inputs with 10 classes it has 11,172,170 trainable parameters
    (11,171,146 without the final BN of fast_adversarial's variant).

    YOPO's layer 0 is the first conv alone (affine); the first block's
    BN + ReLU belong to the rest. Initialisation follows PyTorch's defaults,
    as the reference does; BatchNorm uses momentum 0.9 and epsilon 1e-5.

    Example:
    ```python
    model = tfadv.models.preact_resnet18(
        mean=(0.4914, 0.4822, 0.4465), std=(0.2471, 0.2435, 0.2616))
    ```

    Args:
        input_shape: Shape of one image, `(height, width, channels)`.
        num_classes: Number of logits.
        mean: Per-channel mean for the in-model normalisation (None: 0).
        std: Per-channel std for the in-model normalisation (None: 1).
        width: Base width: the first conv and the first stage have `width`
            filters, the later stages 2, 4 and 8 times as many (64, the
            paper's, is the default; 16 makes a narrow ResNet with about
            1/16 of the parameters and FLOPs).
        name: Name of the model.

    Returns:
        A functional `keras.Model` mapping images in [0, 1] to logits.

    Raises:
        ValueError: If an argument is out of range.
    """
    return _resnet18(
        _preact_block,
        input_shape=input_shape,
        num_classes=num_classes,
        mean=mean,
        std=std,
        width=width,
        name=name,
        preactivation=True,
    )


def _basic_block(x, *, filters: int, strides: int, name: str):
    """BasicBlock of the CIFAR ResNet-18 (post-activation)."""
    in_filters = x.shape[-1]
    out = conv3x3(
        x,
        filters=filters,
        strides=strides,
        kernel_initializer=common.torch_default_kernel_initializer(),
        name=f"{name}_conv1",
    )
    out = common.batch_norm(name=f"{name}_bn1")(out)
    out = keras.layers.ReLU(name=f"{name}_relu1")(out)
    out = conv3x3(
        out,
        filters=filters,
        strides=1,
        kernel_initializer=common.torch_default_kernel_initializer(),
        name=f"{name}_conv2",
    )
    out = common.batch_norm(name=f"{name}_bn2")(out)
    shortcut = x
    if strides != 1 or in_filters != filters:
        shortcut = conv1x1(
            x,
            filters=filters,
            strides=strides,
            kernel_initializer=common.torch_default_kernel_initializer(),
            name=f"{name}_shortcut",
        )
        shortcut = common.batch_norm(name=f"{name}_shortcut_bn")(shortcut)
    out = keras.layers.Add(name=f"{name}_add")([out, shortcut])
    return keras.layers.ReLU(name=f"{name}_relu2")(out)


@gin.register(module="tfadv.models")
def resnet18(
    *,
    input_shape: Sequence[int] = (32, 32, 3),
    num_classes: int = 10,
    mean: common.ChannelStats = None,
    std: common.ChannelStats = None,
    width: int = 64,
    name: str = "resnet18",
) -> keras.Model:
    """Builds the standard (post-activation) CIFAR ResNet-18.

    The ResNet-18 of Backward Smoothing's CIFAR-10 runs
    (`jinghuichen/BackwardSmoothing`, the common CIFAR variant of He et al.
    2016): normalize -> Conv3x3(64, no bias) ["first_layer"] -> BN -> ReLU
    -> 4 stages of 2 BasicBlocks with 64, 128, 256, 512 filters and strides
    1, 2, 2, 2 (`width` times 1, 2, 4, 8) -> global average pool ->
    Dense(num_classes). A BasicBlock
    computes `relu(bn(conv(relu(bn(conv(x))))) + shortcut)`, the shortcut
    being `x` or `bn(conv1x1(x))` when the shape changes. On 32x32x3 inputs
    with 10 classes it has 11,173,962 trainable parameters. PyTorch's
    default initialisation; BatchNorm momentum 0.9, epsilon 1e-5.

    Args:
        input_shape: Shape of one image, `(height, width, channels)`.
        num_classes: Number of logits.
        mean: Per-channel mean for the in-model normalisation (None: 0).
        std: Per-channel std for the in-model normalisation (None: 1).
        width: Base width: the first conv and the first stage have `width`
            filters, the later stages 2, 4 and 8 times as many (64, the
            paper's, is the default; 16 makes a narrow ResNet with about
            1/16 of the parameters and FLOPs).
        name: Name of the model.

    Returns:
        A functional `keras.Model` mapping images in [0, 1] to logits.

    Raises:
        ValueError: If an argument is out of range.
    """
    return _resnet18(
        _basic_block,
        input_shape=input_shape,
        num_classes=num_classes,
        mean=mean,
        std=std,
        width=width,
        name=name,
        preactivation=False,
    )


def _resnet18(
    block, *, input_shape, num_classes, mean, std, width, name, preactivation
):
    """The CIFAR ResNet-18 skeleton around `block`.

    normalize -> Conv3x3(w) ["first_layer"] -> (BN -> ReLU for the
    standard ResNet) -> 4 stages of 2 blocks (w, 2w, 4w, 8w filters,
    strides 1, 2, 2, 2; w = `width`, 64 in the paper) -> (BN -> ReLU for
    the pre-activation ResNet) -> global average pool -> Dense(num_classes).
    """
    height, img_width, channels = common.check_input_shape(input_shape)
    num_classes = common.check_num_classes(num_classes)
    width = common.check_positive_int("width", width)

    inputs = keras.Input(shape=(height, img_width, channels), name="image")
    x = common.normalization(mean=mean, std=std, num_channels=channels)(inputs)
    x = conv3x3(
        x,
        filters=width,
        strides=1,
        kernel_initializer=common.torch_default_kernel_initializer(),
        name=common.FIRST_LAYER,
    )
    if not preactivation:
        x = common.batch_norm(name="stem_bn")(x)
        x = keras.layers.ReLU(name="stem_relu")(x)
    for stage, (filters, strides) in enumerate(
        zip(
            (width, 2 * width, 4 * width, 8 * width), (1, 2, 2, 2), strict=True
        ),
        start=1,
    ):
        for index in range(1, 3):
            x = block(
                x,
                filters=filters,
                strides=strides if index == 1 else 1,
                name=f"stage{stage}_block{index}",
            )
    if preactivation:
        x = common.batch_norm(name="final_bn")(x)
        x = keras.layers.ReLU(name="final_relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    logits = keras.layers.Dense(
        num_classes,
        kernel_initializer=common.torch_default_kernel_initializer(),
        bias_initializer=common.torch_default_bias_initializer(x.shape[-1]),
        dtype="float32",
        name=common.LOGITS_LAYER,
    )(x)
    return keras.Model(inputs, logits, name=name)
