"""Square Attack: a gradient-free, score-based random search (L-inf)."""

import gin
import tensorflow as tf

from tfadv import validation
from tfadv.attacks import base
from tfadv.attacks import objectives
from tfadv.attacks import threat_models

# Iterations (on a 10,000-query scale) after which the square's area halves
# again: AutoAttack's `p_selection` with `rescale_schedule=True`.
_P_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def square_fraction(i: tf.Tensor, num_queries: int, p_init: float):
    """The fraction of the image a square covers at iteration `i`."""
    scaled = tf.floor(tf.cast(i, tf.float32) / num_queries * 10000.0)
    halvings = tf.add_n([tf.cast(scaled > t, tf.float32) for t in _P_HALVINGS])
    return p_init / tf.pow(2.0, halvings)


@gin.register
class Square(base.Attack):
    """Square Attack (Andriushchenko et al., ECCV 2020), L-inf version.

    A random search that uses only the model's outputs, so gradient masking
    cannot stop it; AutoAttack runs it last to catch models whose gradients
    mislead the other attacks. It starts from vertical stripes of +-epsilon
    and then, once per query, proposes to set a random square window (the
    same sign over the window, drawn per channel) to the opposite vertex of
    the ball. A proposal is kept when it lowers the margin
    `z_y - max_{j != y} z_j`; an example stops once misclassified. The
    square covers a fraction `p` of the image, starting at `p_init` and
    halving on AutoAttack's schedule (rescaled to `num_queries`).

    Differences from fra31/auto-attack: window positions and signs are drawn
    per example (as in the authors' original code; AutoAttack draws one
    window per batch), a position may touch the last row/column, and the
    loop runs on the whole batch until every example is misclassified or
    the budget is spent. Images are NHWC (rank 4); L2 is not provided.
    A caller's `x_init` (projected) replaces the stripes as the start.

    Example:
        square = Square(epsilon=0.1, num_queries=5000)
        x_adv = square(classifier, x, y, seed=0)

    Args:
        epsilon: L-inf radius in pixel units, in [0, 1].
        num_queries: the query budget per example (AutoAttack: 5000).
        p_init: initial fraction of the image a square covers (0.8).
        norm: only "linf".
        name: the report name; defaults to "square".
    """

    uses_gradients = False

    def __init__(
        self,
        *,
        epsilon: float,
        num_queries: int = 5000,
        p_init: float = 0.8,
        norm: str = "linf",
        name: str = "square",
    ):
        if norm != "linf":
            raise ValueError(
                f"Square is implemented for the L-inf threat model only; got "
                f"norm={norm!r}."
            )
        self.threat_model = threat_models.get(norm, epsilon)
        self.num_queries = validation.count(
            "num_queries", num_queries, minimum=1
        )
        self.p_init = validation.non_negative("p_init", p_init)
        if not 0.0 < self.p_init <= 1.0:
            raise ValueError(f"p_init must be in (0, 1]; got {p_init!r}.")
        self.name = name

    def get_config(self):
        return {
            "epsilon": self.threat_model.epsilon,
            "num_queries": self.num_queries,
            "p_init": self.p_init,
            "norm": self.threat_model.norm,
            "name": self.name,
        }

    def __repr__(self):
        return (
            f"Square(name={self.name!r}, {self.threat_model}, "
            f"num_queries={self.num_queries}, p_init={self.p_init})"
        )

    def __call__(self, model, x, y, *, seed=None, training=False, x_init=None):
        x = tf.convert_to_tensor(x)
        if len(x.shape) != 4 or None in x.shape[1:]:
            raise ValueError(
                "Square needs images of static shape [B, H, W, C]; got "
                f"shape {x.shape}."
            )
        y = tf.cast(tf.stop_gradient(tf.convert_to_tensor(y)), tf.int32)
        _, height, width, channels = x.shape
        eps = tf.cast(self.threat_model.epsilon, x.dtype)
        batch = tf.shape(x)[0]
        seed = base.as_seed(seed)
        stripe_seed, loop_seed = base.split_seed(seed, 2)

        def margin(x_adv):
            # Positive when misclassified (the objective the search raises).
            return objectives.margin(model(x_adv, training=training), y)

        def signs(shape, seed):
            bits = tf.random.stateless_uniform(
                shape, seed, 0, 2, dtype=tf.int32
            )
            return tf.cast(2 * bits - 1, x.dtype)

        if x_init is None:
            stripes = signs(tf.stack([batch, 1, width, channels]), stripe_seed)
            x_init = x + eps * stripes
        x_best = self.threat_model.project(x, tf.cast(x_init, x.dtype))
        best = margin(x_best)
        # Inputs misclassified before the attack stay as they are.
        clean = margin(x)
        clean_wrong = clean > 0
        x_best = tf.where(_per_example(clean_wrong), x, x_best)
        best = tf.where(clean_wrong, clean, best)
        rows = tf.reshape(tf.range(height), [1, height, 1, 1])
        cols = tf.reshape(tf.range(width), [1, 1, width, 1])
        shortest = min(height, width)

        def body(i, x_best, best):
            p = square_fraction(i, self.num_queries, self.p_init)
            side = tf.cast(tf.round(tf.sqrt(p * height * width)), tf.int32)
            side = tf.clip_by_value(side, 1, shortest)
            s_top, s_left, s_sign = base.split_seed(
                tf.random.experimental.stateless_fold_in(loop_seed, i), 3
            )
            top = tf.random.stateless_uniform(
                [batch, 1, 1, 1], s_top, 0, height - side + 1, dtype=tf.int32
            )
            left = tf.random.stateless_uniform(
                [batch, 1, 1, 1], s_left, 0, width - side + 1, dtype=tf.int32
            )
            window = (
                (rows >= top)
                & (rows < top + side)
                & (cols >= left)
                & (cols < left + side)
            )
            flip = 2 * eps * signs(tf.stack([batch, 1, 1, channels]), s_sign)
            proposal = x_best + tf.cast(window, x.dtype) * flip
            proposal = self.threat_model.project(x, proposal)
            value = margin(proposal)
            take = (best <= 0) & (value > best)
            x_best = tf.where(_per_example(take), proposal, x_best)
            return i + 1, x_best, tf.where(take, value, best)

        _, x_best, _ = tf.while_loop(
            lambda i, _, best: (
                (i < self.num_queries) & tf.reduce_any(best <= 0)
            ),
            body,
            (tf.constant(0), x_best, best),
            maximum_iterations=self.num_queries,
        )
        return tf.stop_gradient(x_best)


def _per_example(mask):
    return tf.reshape(mask, [-1, 1, 1, 1])
