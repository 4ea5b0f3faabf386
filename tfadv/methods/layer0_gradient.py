"""Layer 0's input gradient, the inner step of YOPO and TRADES-YOPO.

YOPO's inner loop needs, m·n times per minibatch, the vector-Jacobian
product `J_f0(u)ᵀ G` of layer 0 at `u = clip(x + η, 0, 1)` with a frozen
costate `G`, masked where `x + η` left [0, 1]. A `GradientTape` over layer
0 gets it through TensorFlow's gradient of a convolution with respect to
its input (`Conv2DBackpropInput`; on a CPU, with XLA's own version slower
still). When layer 0 is one of the shapes the tfadv builders make,

    [Normalization] -> Conv2D (bias or not, activation None or ReLU)
    -> [ReLU]

(channels last, no dilation, no groups, float32), the same product is
written out here:

- the normalisation contributes a division by its per-channel std (as
  `keras.layers.Normalization` computes it, `max(√variance, ε)`), the bias
  nothing, a ReLU the mask of positive pre-activations (TF's `ReluGrad` on
  the forward output, `relu(a) > 0` exactly where `a > 0`), the clip the mask
  `0 ≤ x + η ≤ 1` (where TF's gradient of `clip_by_value` passes);
- the convolution's input gradient is one of `FORMULATIONS`, each exact
  to float rounding: "transpose" (`tf.nn.conv2d_transpose`, any stride),
  "flipped" (a forward convolution of the zero-padded costate with the
  spatially flipped, in/out-swapped kernel; stride 1) and "shifted" (one
  matmul of the costate with the kernel, then the sum of kh·kw shifted
  planes; stride 1);
- without a ReLU, layer 0 is affine and its input gradient does not
  depend on η: it is computed once per costate, and each inner step only
  applies the clip mask (docs/algorithms.md §1.6 P5).

Any other layer 0 (dense layers, prepended input layers, mixed precision,
a dilated conv) keeps the tape. `tools/layer0_gradient.py` times the
formulations; docs/benchmarks/layer0_gradient holds its table, from which
"auto" was chosen.
"""

from collections.abc import Callable
from typing import NamedTuple

import keras
import tensorflow as tf

FORMULATIONS = ("transpose", "flipped", "shifted")
# What YOPO's `layer0_gradient=` accepts: "tape" records layer 0 on a
# GradientTape; "auto" takes the measured fastest exact formulation that
# layer 0 allows, or the tape.
CHOICES = ("auto", "tape", *FORMULATIONS)


class ConvLayer0(NamedTuple):
    """Layer 0 read as normalisation, convolution and ReLU.

    Attributes:
        conv: the `keras.layers.Conv2D`.
        normalization: the `keras.layers.Normalization` before it, or None.
        relu: whether a ReLU (the conv's activation or a layer) follows.
    """

    conv: keras.layers.Conv2D
    normalization: keras.layers.Normalization | None
    relu: bool

    @property
    def stride_one(self) -> bool:
        """Whether the convolution has stride 1 in both directions."""
        return tuple(self.conv.strides) == (1, 1)


def _is_plain_relu(layer) -> bool:
    return (
        isinstance(layer, keras.layers.ReLU)
        and layer.max_value is None
        and float(layer.negative_slope) == 0.0
        and float(layer.threshold) == 0.0
    )


def _activation_kind(activation):
    if activation in (None, keras.activations.linear):
        return "linear"
    if activation is keras.activations.relu:
        return "relu"
    return None


def analyse(layer0: keras.Model) -> tuple[ConvLayer0 | None, str]:
    """Reads layer 0 as `[Normalization] -> Conv2D -> [ReLU]`, if it is one.

    Args:
        layer0: YOPO's `f0`, a functional model from the classifier's input
            to the first layer's output.

    Returns:
        `(structure, "")`, or `(None, reason)` when layer 0 is something
        else (the reason says what).
    """
    layers = [
        layer
        for layer in getattr(layer0, "layers", [])
        if not isinstance(layer, keras.layers.InputLayer)
    ]
    names = [type(layer).__name__ for layer in layers]
    normalization = None
    if layers and isinstance(layers[0], keras.layers.Normalization):
        normalization = layers.pop(0)
        if normalization.invert or normalization.mean is None:
            return None, "its Normalization inverts or has no statistics"
        per_channel = tuple(normalization.axis) in ((-1,), (3,))
        if not per_channel and int(tf.size(normalization.variance)) != 1:
            return None, "its Normalization is not per channel"
    relu = False
    if len(layers) == 2 and _is_plain_relu(layers[1]):
        relu = True
        layers.pop()
    if len(layers) != 1 or type(layers[0]) is not keras.layers.Conv2D:
        return None, (
            f"its layers {names} are not [Normalization] -> Conv2D -> [ReLU]"
        )
    conv = layers[0]
    activation = _activation_kind(conv.activation)
    if activation is None or (activation == "relu" and relu):
        return None, "its Conv2D's activation is neither None nor one ReLU"
    if conv.data_format != "channels_last":
        return None, "its Conv2D is channels_first"
    if tuple(conv.dilation_rate) != (1, 1) or conv.groups != 1:
        return None, "its Conv2D is dilated or grouped"
    dtypes = {conv.compute_dtype, conv.variable_dtype}
    if normalization is not None:
        dtypes.add(normalization.compute_dtype)
    if dtypes != {"float32"}:
        return None, f"it computes in {sorted(dtypes)}, not float32"
    return ConvLayer0(conv, normalization, relu or activation == "relu"), ""


def resolve(choice: str, structure: ConvLayer0 | None) -> str:
    """The formulation (or "tape") that `choice` means for this layer 0.

    "auto" is the fastest exact formulation of the committed measurement
    (docs/benchmarks/layer0_gradient): "shifted" for a stride-1 conv,
    "transpose" for a strided one, the tape for anything else.

    Args:
        choice: one of `CHOICES` (already validated).
        structure: `analyse`'s result, None where layer 0 is not a conv.

    Returns:
        "tape" or one of `FORMULATIONS`.
    """
    if choice == "tape" or structure is None:
        return "tape"
    if choice == "auto":
        return "shifted" if structure.stride_one else "transpose"
    return choice


def unsupported(choice: str, structure: ConvLayer0 | None, reason: str):
    """Why `choice` cannot compute this layer 0's gradient ("" if it can)."""
    if choice in ("auto", "tape"):
        return ""
    if structure is None:
        return (
            f"layer0_gradient={choice!r} writes out the input gradient of a "
            f"conv layer 0, and this layer 0 is not one: {reason}. Use "
            "'auto' (which keeps the tape for it) or 'tape'."
        )
    if choice != "transpose" and not structure.stride_one:
        return (
            f"layer0_gradient={choice!r} handles stride-1 convs; this layer "
            f"0's conv has strides {tuple(structure.conv.strides)} (use "
            "'transpose', 'auto' or 'tape')."
        )
    return ""


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF's 'same' padding: (before, after), the extra pixel after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _paddings(conv, height: int, width: int):
    kh, kw = conv.kernel_size
    if conv.padding == "valid":
        return (0, 0), (0, 0)
    sh, sw = conv.strides
    return _same_padding(height, kh, sh), _same_padding(width, kw, sw)


def conv_input_vjp(
    costate: tf.Tensor,
    kernel: tf.Tensor,
    *,
    input_shape,
    strides: tuple[int, int],
    padding: str,
    formulation: str,
) -> tf.Tensor:
    """`J_conv(x)ᵀ G`: the gradient of `Σ G ⊙ conv(x, kernel)` w.r.t. x.

    Args:
        costate: `G`, shaped as the conv's output `[B, Ho, Wo, c_out]`.
        kernel: `[kh, kw, c_in, c_out]`.
        input_shape: `x`'s shape `[B, H, W, c_in]`, a list with H, W and
            c_in Python ints (B may be a scalar tensor).
        strides: the conv's strides (1, 1 for all but "transpose").
        padding: "same" or "valid", as Keras's Conv2D.
        formulation: one of `FORMULATIONS`.

    Returns:
        A tensor of `input_shape`.
    """
    if formulation == "transpose":
        return tf.nn.conv2d_transpose(
            costate,
            kernel,
            tf.stack(input_shape),
            strides=list(strides),
            padding=padding.upper(),
        )
    kh, kw, c_in, c_out = kernel.shape
    height, width = int(input_shape[1]), int(input_shape[2])
    if padding == "valid":
        (top, bottom), (left, right) = (0, 0), (0, 0)
    else:
        (top, bottom) = _same_padding(height, kh, 1)
        (left, right) = _same_padding(width, kw, 1)
    if formulation == "flipped":
        # conv_transpose(G, W) = conv(pad(G), W flipped in space, in and
        # out channels swapped), padded so every input pixel sees the kh x kw
        # outputs it fed.
        padded = tf.pad(
            costate,
            [[0, 0], [kh - 1 - top, kh - 1 - bottom]]
            + [[kw - 1 - left, kw - 1 - right], [0, 0]],
        )
        flipped = tf.transpose(tf.reverse(kernel, [0, 1]), [0, 1, 3, 2])
        return tf.nn.conv2d(padded, flipped, 1, "VALID")
    if formulation != "shifted":
        raise ValueError(
            f"Received formulation={formulation!r}. Expected one of "
            f"{FORMULATIONS}."
        )
    # h[(di, dj, c), b, o, p] = Σ_k W[di, dj, c, k] G[b, o, p, k]: one
    # matmul whose rows are whole contiguous planes; then input pixel
    # (i, j) sums h[(di, dj)] at output (i + top - di, j + left - dj).
    out_h, out_w = costate.shape[1], costate.shape[2]
    planes = tf.matmul(
        tf.reshape(kernel, [kh * kw * c_in, c_out]),
        tf.reshape(costate, [-1, c_out]),
        transpose_b=True,
    )
    planes = tf.reshape(planes, [kh * kw, c_in, -1, out_h, out_w])
    planes = tf.pad(
        planes, [[0, 0], [0, 0], [0, 0], [kh - 1, kh - 1], [kw - 1, kw - 1]]
    )
    terms = []
    for di in range(kh):
        for dj in range(kw):
            row = top - di + kh - 1
            col = left - dj + kw - 1
            plane = planes[di * kw + dj]
            terms.append(plane[:, :, row : row + height, col : col + width])
    total = tf.add_n(terms)  # [c_in, B, H, W]
    if c_in == 1:
        return tf.reshape(total, [-1, height, width, 1])
    return tf.transpose(total, [1, 2, 3, 0])


def _input_scale(normalization):
    """`1 / std` of the normalisation, as Keras divides by it."""
    variance = tf.convert_to_tensor(normalization.variance, tf.float32)
    std = tf.maximum(tf.sqrt(variance), keras.config.epsilon())
    return tf.reshape(1.0 / std, [-1])


def bind(
    structure: ConvLayer0,
    formulation: str,
    layer0: keras.Model,
    x: tf.Tensor,
    costate: tf.Tensor,
    *,
    training: bool,
) -> Callable[[tf.Tensor], tf.Tensor]:
    """The inner step's gradient `η ↦ ∇_η Σ⟨G, f0(clip(x + η, 0, 1))⟩`.

    Args:
        structure: `analyse`'s reading of `layer0`.
        formulation: one of `FORMULATIONS`.
        layer0: `f0`, called for the ReLU's mask.
        x: clean images in [0, 1].
        costate: `G`, frozen, shaped as layer 0's output.
        training: the mode layer 0 is called in (no effect on a conv).

    Returns:
        A function of η giving the gradient, shaped like `x` (float32).
    """
    conv = structure.conv
    kernel = tf.convert_to_tensor(conv.kernel, tf.float32)
    costate = tf.cast(tf.stop_gradient(costate), tf.float32)
    scale = None
    if structure.normalization is not None:
        scale = _input_scale(structure.normalization)

    def backward(g):
        grad = conv_input_vjp(
            g,
            kernel,
            input_shape=[tf.shape(x)[0], *x.shape[1:]],
            strides=tuple(conv.strides),
            padding=conv.padding,
            formulation=formulation,
        )
        return grad if scale is None else grad * scale

    def in_box(u):
        return tf.logical_and(u >= 0.0, u <= 1.0)

    if not structure.relu:
        # Affine layer 0: the same back-projection at every η.
        projected = backward(costate)

        def affine_gradient(eta):
            u = x + eta
            return tf.where(in_box(u), projected, tf.zeros_like(projected))

        return affine_gradient

    def relu_gradient(eta):
        u = x + eta
        z = layer0(tf.clip_by_value(u, 0.0, 1.0), training=training)
        # ReLU's own gradient kernel: G where z > 0 (z = relu(a) > 0 exactly
        # where a > 0), one pass over the costate without a boolean mask.
        grad = backward(tf.raw_ops.ReluGrad(gradients=costate, features=z))
        return tf.where(in_box(u), grad, tf.zeros_like(grad))

    return relu_gradient
