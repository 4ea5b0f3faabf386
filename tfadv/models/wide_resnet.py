"""Wide ResNet (WRN-depth-width) for CIFAR-sized images."""

from __future__ import annotations

from collections.abc import Sequence

import gin
import keras

from tfadv.models import common
from tfadv.models import resnet


def _wide_block(x, *, filters: int, strides: int, dropout: float, name: str):
    """BasicBlock of `yaodongyu/TRADES: models/wideresnet.py`."""
    in_filters = x.shape[-1]
    out = common.batch_norm(name=f"{name}_bn1")(x)
    out = keras.layers.ReLU(name=f"{name}_relu1")(out)
    if in_filters != filters:
        # As in the reference, the projection shortcut sees the
        # pre-activated input while the identity shortcut sees the raw one.
        shortcut = resnet.conv1x1(
            out,
            filters=filters,
            strides=strides,
            kernel_initializer=common.he_normal_initializer(mode="fan_out"),
            name=f"{name}_shortcut",
        )
    elif strides != 1:
        # Unreachable with the standard widths; the reference would fail.
        raise ValueError(
            f"Block {name} keeps {filters} channels but has stride {strides}."
        )
    else:
        shortcut = x
    out = resnet.conv3x3(
        out,
        filters=filters,
        strides=strides,
        kernel_initializer=common.he_normal_initializer(mode="fan_out"),
        name=f"{name}_conv1",
    )
    out = common.batch_norm(name=f"{name}_bn2")(out)
    out = keras.layers.ReLU(name=f"{name}_relu2")(out)
    if dropout > 0:
        out = keras.layers.Dropout(dropout, name=f"{name}_dropout")(out)
    out = resnet.conv3x3(
        out,
        filters=filters,
        strides=1,
        kernel_initializer=common.he_normal_initializer(mode="fan_out"),
        name=f"{name}_conv2",
    )
    return keras.layers.Add(name=f"{name}_add")([shortcut, out])


@gin.register(module="tfadv.models")
def wide_resnet(
    *,
    depth: int = 34,
    width: int = 10,
    input_shape: Sequence[int] = (32, 32, 3),
    num_classes: int = 10,
    mean: common.ChannelStats = None,
    std: common.ChannelStats = None,
    dropout: float = 0.0,
    base_width: int = 16,
    name: str = "wide_resnet",
) -> keras.Model:
    """Builds a Wide ResNet (Zagoruyko & Komodakis 2016), WRN-34-10 default.

    Architecture (`yaodongyu/TRADES: models/wideresnet.py`, also
    `a1600012888/YOPO-You-Only-Propagate-Once:
    lib/base_model/wide_resnet.py`): normalize -> Conv3x3(16, no bias)
    ["first_layer"] -> 3 groups of `(depth - 4) / 6` pre-activation basic
    blocks with `16 * width`, `32 * width`, `64 * width` filters (16 is
    `base_width`, which narrows the network below `width=1`) and strides
    1, 2, 2 -> BN -> ReLU -> global average pool -> Dense(num_classes).
    Dropout, when positive, sits between the two convs of each block. The
    unused `sub_block1` of the YOPO copy is not built. WRN-34-10 has
    46,160,474 trainable parameters.

    YOPO's layer 0 is the first conv alone. Initialisation follows TRADES:
    convs `normal(0, sqrt(2 / (k * k * c_out)))`, BN scale 1 and offset 0,
    the logits layer PyTorch's default kernel and a zero bias. BatchNorm
    uses momentum 0.9 and epsilon 1e-5.

    Example:
    ```python
    model = tfadv.models.wide_resnet(depth=34, width=10)
    ```

    Args:
        depth: Total depth; `(depth - 4)` must be a positive multiple of 6.
        width: Widening factor.
        input_shape: Shape of one image, `(height, width, channels)`.
        num_classes: Number of logits.
        mean: Per-channel mean for the in-model normalisation (None: 0).
        std: Per-channel std for the in-model normalisation (None: 1).
        dropout: Dropout rate inside each block.
        base_width: Filters of the stem conv and, times `width`, of the
            first group (16, the paper's, is the default); the groups have
            `base_width * width` times 1, 2 and 4 filters. `width` is the
            widening factor of the name (WRN-34-10); `base_width` narrows
            the network below `width=1`.
        name: Name of the model.

    Returns:
        A functional `keras.Model` mapping images in [0, 1] to logits.

    Raises:
        ValueError: If an argument is out of range.
    """
    if (
        not isinstance(depth, int)
        or isinstance(depth, bool)
        or depth < 10
        or (depth - 4) % 6 != 0
    ):
        raise ValueError(
            f"Received depth={depth!r}. A Wide ResNet has depth = 6 * n + 4 "
            "with n >= 1 blocks per group, e.g. 10, 16, 22, 28, 34 or 40."
        )
    width = common.check_positive_int("width", width)
    base_width = common.check_positive_int("base_width", base_width)
    height, img_width, channels = common.check_input_shape(input_shape)
    num_classes = common.check_num_classes(num_classes)
    dropout = common.check_rate("dropout", dropout)
    blocks_per_group = (depth - 4) // 6

    inputs = keras.Input(shape=(height, img_width, channels), name="image")
    x = common.normalization(mean=mean, std=std, num_channels=channels)(inputs)
    x = resnet.conv3x3(
        x,
        filters=base_width,
        strides=1,
        kernel_initializer=common.he_normal_initializer(mode="fan_out"),
        name=common.FIRST_LAYER,
    )
    for group, (filters, strides) in enumerate(
        zip(
            (
                base_width * width,
                2 * base_width * width,
                4 * base_width * width,
            ),
            (1, 2, 2),
            strict=True,
        ),
        start=1,
    ):
        for block in range(1, blocks_per_group + 1):
            x = _wide_block(
                x,
                filters=filters,
                strides=strides if block == 1 else 1,
                dropout=dropout,
                name=f"group{group}_block{block}",
            )
    x = common.batch_norm(name="final_bn")(x)
    x = keras.layers.ReLU(name="final_relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    logits = keras.layers.Dense(
        num_classes,
        kernel_initializer=common.torch_default_kernel_initializer(),
        bias_initializer="zeros",
        dtype="float32",
        name=common.LOGITS_LAYER,
    )(x)
    return keras.Model(inputs, logits, name=name)
