"""Taylor expansions of per-example losses around the clean input.

The math GAAT's surrogate (and its exactness guard) is made of, kept apart
from the method so that any method can expand its loss: `input_derivatives`
(the input gradient, recorded for double backpropagation, and a
Hessian-vector product by forward-over-backward), `taylor_expansion` (the
order-1 or order-2 partial sum per example), `steepest_ascent_delta` (the
point of the threat set that maximises the linear term) and
`relative_remainder` (how far the partial sum is from the true loss).
NoisyTraining's gradient penalty uses `input_derivatives` too.
"""

import typing

import tensorflow as tf

from tfadv import validation

ORDERS = (1, 2)


class TaylorTerms(typing.NamedTuple):
    """The terms of a Taylor expansion of per-example losses around `x`.

    Every field but `delta` and `aux` has one value per example (float32).

    Attributes:
        loss: `ℓ(x)`.
        gradient: `∇ₓℓ(x)`, shaped like `x` (float32).
        delta: the perturbation δ, held constant (no gradient flows into
            it), shaped like `x` (float32).
        linear: `δᵀ∇ₓℓ(x)`.
        quadratic: `½ δᵀ∇²ₓℓ(x) δ`; zeros for an order-1 expansion.
        aux: what the loss function returned besides the losses.
    """

    loss: tf.Tensor
    gradient: tf.Tensor
    delta: tf.Tensor
    linear: tf.Tensor
    quadratic: tf.Tensor
    aux: typing.Any

    @property
    def surrogate(self) -> tf.Tensor:
        """The partial sum `L_K(δ)`: the approximation of `ℓ(x + δ)`."""
        return self.loss + self.linear + self.quadratic


def _per_example_dot(a, b):
    axes = list(range(1, len(a.shape)))
    return tf.reduce_sum(a * b, axis=axes)


def input_derivatives(loss_fn, x, *, tangent=None):
    """The losses at `x`, their input gradient and a Hessian-vector product.

    The gradient is that of the summed losses, recorded on a tape, so an
    enclosing `GradientTape` differentiates it with respect to the weights
    (double backpropagation). With a `tangent` v, `∇²ₓ(Σℓ) v` is
    forward-over-backward: a `ForwardAccumulator` with tangent v around
    that backward pass; its `jvp` is recorded by an enclosing tape too.

    Summing before differentiating gives each example its own loss's
    gradient, unless the loss couples the examples (BatchNorm in training
    mode); the derivatives are then those of the batch's summed loss.

    Args:
        loss_fn: `x -> (per-example losses, aux)`.
        x: a float tensor of examples.
        tangent: v, shaped like `x`, or None for no Hessian term.

    Returns:
        `(losses, aux, gradient, hessian_tangent)`: the float32 losses,
        what `loss_fn` returned besides, the gradient (shaped like `x`) and
        `∇²ₓ(Σℓ) v` (None without a tangent).
    """
    x = tf.convert_to_tensor(x)

    def losses_and_gradient():
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(x)
            losses, aux = loss_fn(x)
            losses = tf.cast(losses, tf.float32)
            total = tf.reduce_sum(losses)
        gradient = tape.gradient(
            total, x, unconnected_gradients=tf.UnconnectedGradients.ZERO
        )
        return losses, aux, gradient

    if tangent is None:
        return (*losses_and_gradient(), None)
    tangent = tf.stop_gradient(tf.cast(tangent, x.dtype))
    with tf.autodiff.ForwardAccumulator(x, tangent) as accumulator:
        losses, aux, gradient = losses_and_gradient()
    hessian_tangent = accumulator.jvp(
        gradient, unconnected_gradients=tf.UnconnectedGradients.ZERO
    )
    return losses, aux, gradient, hessian_tangent


def taylor_expansion(
    loss_fn, x, *, order: int, delta=None, direction=None
) -> TaylorTerms:
    """The order-1 or order-2 Taylor expansion of `loss_fn` around `x`.

    `ℓ(x + δ) ≈ ℓ(x) + δᵀ∇ₓℓ(x) [+ ½ δᵀ∇²ₓℓ(x) δ]`, per example, from
    `input_derivatives`: an enclosing `GradientTape` differentiates every
    term with respect to the weights, with δ held constant.

    Args:
        loss_fn: `x -> (per-example losses, aux)`.
        x: the expansion point, a float tensor of examples.
        order: 1 or 2.
        delta: the perturbation, or None to derive it from the gradient
            with `direction` (order 1 only: the order-2 term needs δ
            before the forward pass).
        direction: `gradient -> delta`, used when `delta` is None.

    Returns:
        The `TaylorTerms`.

    Raises:
        ValueError: a bad order, or no δ for an order-2 expansion.
    """
    validation.choice("order", order, ORDERS)
    if delta is None and (order == 2 or direction is None):
        raise ValueError(
            "taylor_expansion needs delta for order 2 (the Hessian-vector "
            "product takes it as the forward tangent) and delta or "
            "direction for order 1."
        )
    losses, aux, grad, hessian_delta = input_derivatives(
        loss_fn, x, tangent=delta if order == 2 else None
    )
    grad = tf.cast(grad, tf.float32)
    if delta is None:
        delta = direction(grad)
    delta = tf.stop_gradient(tf.cast(delta, tf.float32))
    linear = _per_example_dot(delta, grad)
    if hessian_delta is None:
        quadratic = tf.zeros_like(linear)
    else:
        hessian_delta = tf.cast(hessian_delta, tf.float32)
        quadratic = 0.5 * _per_example_dot(delta, hessian_delta)
    return TaylorTerms(losses, grad, delta, linear, quadratic, aux)


def steepest_ascent_delta(threat_model, x, gradient) -> tf.Tensor:
    """The δ of the threat set that most increases `δᵀ gradient`.

    One step of size ε along the threat model's steepest-ascent direction
    (`ε·sign(g)` for L-inf), then projected so that `x + δ` stays in
    [0, 1]. Away from the box edges the linear term is then `ε‖g‖₁`.
    """
    x = tf.convert_to_tensor(x)
    moved = threat_model.step(
        x, tf.cast(gradient, x.dtype), threat_model.epsilon
    )
    return threat_model.project(x, moved) - x


def relative_remainder(true_losses, surrogate) -> float:
    """`|mean ℓ(x + δ) − mean L_K(δ)| / mean ℓ(x + δ)`, as a float."""
    true_mean = float(tf.reduce_mean(tf.cast(true_losses, tf.float32)))
    surrogate_mean = float(tf.reduce_mean(tf.cast(surrogate, tf.float32)))
    return abs(true_mean - surrogate_mean) / max(abs(true_mean), 1e-12)
