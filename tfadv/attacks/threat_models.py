"""Threat models: the set an attack may move an input within.

A threat model answers three questions for an attack loop, separately from
the loop itself (the split MadryLab/robustness uses): where may the input go
(`project`), how does one ascent step move it (`step`), and where does a
random start put it (`random_init`). Every method works in [0, 1] pixel
space; `project` always keeps the result inside the image box as well.
"""

import gin
import tensorflow as tf

from tfadv import validation


def _per_example_norm(t: tf.Tensor) -> tf.Tensor:
    """L2 norm of each example, shaped to broadcast against `t`."""
    axes = list(range(1, len(t.shape)))
    return tf.sqrt(tf.reduce_sum(tf.square(t), axis=axes, keepdims=True))


class ThreatModel:
    """Base class: a norm ball of radius `epsilon` intersected with [0, 1].

    Args:
        epsilon: radius of the ball in pixel units: in [0, 1] for
            L-infinity, any finite value >= 0 for L2.
    """

    norm = None

    def __init__(self, epsilon: float):
        self.epsilon = validation.epsilon(epsilon, norm=self.norm or "linf")

    def project(self, x: tf.Tensor, x_adv: tf.Tensor) -> tf.Tensor:
        """Returns the point of the threat set around `x` for `x_adv`."""
        raise NotImplementedError

    def step(
        self, x_adv: tf.Tensor, grad: tf.Tensor, step_size: float
    ) -> tf.Tensor:
        """Moves `x_adv` by `step_size` along the steepest-ascent direction."""
        raise NotImplementedError

    def sample(self, x: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        """A uniformly random point of the ball around `x`, not in [0, 1].

        The point is not clipped to the image box (YOPO's start,
        docs/algorithms.md §1.6 P3); `random_init` projects it.
        """
        raise NotImplementedError

    def random_init(self, x: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        """A random point of the ball around `x`, projected into [0, 1]."""
        return self.project(x, self.sample(x, seed))

    def distance(self, x: tf.Tensor, x_adv: tf.Tensor) -> tf.Tensor:
        """Per-example distance in this threat model's norm."""
        raise NotImplementedError

    def __repr__(self):
        return f"{type(self).__name__}(epsilon={self.epsilon})"


@gin.register
class LinfThreatModel(ThreatModel):
    """The L-infinity ball: every pixel moves by at most `epsilon`.

    The projection clips to the epsilon-box first and to the image box
    second, the order every reference implementation uses.
    """

    norm = "linf"

    def project(self, x, x_adv):
        eps = tf.cast(self.epsilon, x.dtype)
        delta = tf.clip_by_value(x_adv - x, -eps, eps)
        return tf.clip_by_value(x + delta, 0.0, 1.0)

    def step(self, x_adv, grad, step_size):
        return x_adv + tf.cast(step_size, x_adv.dtype) * tf.sign(grad)

    def sample(self, x, seed):
        delta = tf.random.stateless_uniform(
            tf.shape(x), seed, -self.epsilon, self.epsilon, dtype=x.dtype
        )
        return x + delta

    def distance(self, x, x_adv):
        axes = list(range(1, len(x.shape)))
        return tf.reduce_max(tf.abs(x_adv - x), axis=axes)


@gin.register
class L2ThreatModel(ThreatModel):
    """The L2 ball: the perturbation of each example has norm <= `epsilon`.

    Steps follow the normalised gradient. Clipping to the image box after the
    ball projection only shrinks each coordinate of the perturbation, so the
    result stays inside the ball.
    """

    norm = "l2"

    def project(self, x, x_adv):
        delta = x_adv - x
        norm = _per_example_norm(delta)
        eps = tf.cast(self.epsilon, x.dtype)
        factor = tf.minimum(1.0, eps / tf.maximum(norm, 1e-12))
        return tf.clip_by_value(x + delta * factor, 0.0, 1.0)

    def step(self, x_adv, grad, step_size):
        unit = grad / tf.maximum(_per_example_norm(grad), 1e-12)
        return x_adv + tf.cast(step_size, x_adv.dtype) * unit

    def sample(self, x, seed):
        # Uniform in the ball: Gaussian direction, radius eps * U^(1/d).
        seed_dir, seed_radius = tf.unstack(
            tf.random.experimental.stateless_split(seed, 2)
        )
        direction = tf.random.stateless_normal(
            tf.shape(x), seed_dir, dtype=x.dtype
        )
        direction /= tf.maximum(_per_example_norm(direction), 1e-12)
        dims = tf.cast(tf.reduce_prod(tf.shape(x)[1:]), x.dtype)
        radius_shape = tf.concat(
            [tf.shape(x)[:1], tf.ones([len(x.shape) - 1], tf.int32)], 0
        )
        u = tf.random.stateless_uniform(
            radius_shape, seed_radius, dtype=x.dtype
        )
        radius = self.epsilon * tf.pow(u, 1.0 / dims)
        return x + direction * radius

    def distance(self, x, x_adv):
        return tf.reshape(_per_example_norm(x_adv - x), [-1])


THREAT_MODELS = {"linf": LinfThreatModel, "l2": L2ThreatModel}


def get(norm: str, epsilon: float) -> ThreatModel:
    """Returns the threat model for `norm` ('linf' or 'l2')."""
    try:
        cls = THREAT_MODELS[norm]
    except KeyError:
        raise ValueError(
            f"Unknown norm {norm!r}; accepted: {sorted(THREAT_MODELS)}."
        ) from None
    return cls(epsilon)
