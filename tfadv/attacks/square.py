"""Square Attack: a gradient-free, score-based random search (L-inf, L2)."""

import math

import gin
import numpy as np
import tensorflow as tf

from tfadv import validation
from tfadv.attacks import base
from tfadv.attacks import objectives
from tfadv.attacks import threat_models

# Positions on AutoAttack's 10,000-query scale after which the square's
# area halves again (its `p_selection`): p = p_init / 2^k once the position
# is strictly greater than the k-th of these.
_P_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def halving_iterations(
    num_queries: int, rescale_schedule: bool = True
) -> tuple[int, ...]:
    """The iterations (counted from 0) at which the square's area halves.

    Iteration i sits at position i of the schedule, or, with
    `rescale_schedule`, at `int(i / num_queries * 10000)` (float64, as
    fra31/auto-attack computes it). p halves once the position exceeds
    10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000. Without rescaling
    (AutoAttack's standard suite) the halvings fall at iterations 11, 51,
    201, 501, 1001, 2001, 4001, 6001 and 8001, whatever the budget; with
    it they are spread over `num_queries` (5000 queries: 6, 26, 101, ...).

    Returns:
        The halving iterations below `num_queries`, in increasing order.
    """
    iterations = np.arange(num_queries)
    position = iterations
    if rescale_schedule:
        position = (iterations / num_queries * 10000.0).astype(np.int64)
    return tuple(
        int(np.argmax(position > t)) for t in _P_HALVINGS if position[-1] > t
    )


def _side(p: float, height: int, width: int, channels: int, norm: str):
    """The square's side for fraction p, as the reference rounds it."""
    # (p * n_features) / channels, in this order, as the reference does.
    side = int(round(math.sqrt(p * (channels * height * width) / channels)))
    if norm == "linf":
        side = max(side, 1)
    else:  # L2: odd, at least 3
        side = max(side, 3)
        side += 1 - side % 2
    return min(side, min(height, width))


def _rectangles(rows: int, cols: int) -> np.ndarray:
    """Nested rectangles around the centre, weighted 1/(k+1)^2, unit norm."""
    out = np.zeros([rows, cols])
    top, left = rows // 2, cols // 2
    for k in range(max(rows // 2 + 1, cols // 2 + 1)):
        out[max(top - k, 0) : top + k + 1, max(left - k, 0) : left + k + 1] += (
            1.0 / (k + 1) ** 2
        )
    norm = np.sqrt(np.sum(out**2))
    return out / norm if norm > 0 else out


def l2_patch(side: int) -> np.ndarray:
    """The L2 Square update pattern: +rectangles over -rectangles, unit norm.

    The top `side // 2` rows hold one set of nested rectangles and the rest
    the same pattern negated (the authors' `eta`); the attack transposes it
    with probability 1/2.
    """
    patch = np.zeros([side, side])
    patch[: side // 2] = _rectangles(side // 2, side)
    patch[side // 2 :] = -_rectangles(side - side // 2, side)
    return patch / np.sqrt(np.sum(patch**2))


def _spatial_norm(t):
    """L2 norm over height and width, per example and channel."""
    return tf.sqrt(tf.reduce_sum(tf.square(t), axis=[1, 2], keepdims=True))


def _image_norm(t):
    return tf.sqrt(tf.reduce_sum(tf.square(t), axis=[1, 2, 3], keepdims=True))


@gin.register
class Square(base.Attack):
    """Square Attack (Andriushchenko et al., ECCV 2020), L-inf and L2.

    A random search that uses only the model's outputs, so gradient masking
    cannot stop it; AutoAttack runs it last to catch models whose gradients
    mislead the other attacks. Each query proposes a change inside a random
    square window; a proposal is kept when it lowers the margin
    `z_y - max_{j != y} z_j`, and an example stops once misclassified. The
    window covers a fraction `p` of the image, starting at `p_init` and
    halving at the iterations `halving_iterations` gives.

    - L-inf: the start is vertical stripes of +-epsilon; a proposal sets the
      window (one sign per channel) to the opposite vertex of the ball.
    - L2: the start is a grid of square patterns (`l2_patch`, random sign
      per channel) scaled to norm epsilon; a proposal moves the mass of a
      second window into the first, adds a fresh pattern there and rescales
      the perturbation to norm epsilon, as the authors' L2 version does.

    `rescale_schedule=True` (the class default, as AutoAttack's
    `SquareAttack` class) spreads the halvings over `num_queries`;
    AutoAttack's standard suite turns it off (`resc_schedule=False`), so the
    halvings fall at iterations 11, 51, 201, ... as for a 10,000-query run.

    Differences from fra31/auto-attack: window positions, signs and the
    pattern's transposition are drawn per example (as in the authors'
    original code; AutoAttack draws one window per batch), a position may
    touch the last row/column, and the loop runs on the whole batch until
    every example is misclassified or the budget is spent. Images are NHWC
    (rank 4). A caller's `x_init` (projected) replaces the start.

    Example:
        square = Square(epsilon=0.1, num_queries=5000)
        square_l2 = Square(epsilon=0.5, norm="l2", rescale_schedule=False)
        x_adv = square(classifier, x, y, seed=0)

    Args:
        epsilon: radius in pixel units, in [0, 1].
        num_queries: the query budget per example (AutoAttack: 5000).
        p_init: initial fraction of the image a square covers (0.8).
        norm: "linf" or "l2".
        rescale_schedule: spread the halvings of p over `num_queries`
            (True) or keep them at 10,000-query iterations (False, as
            AutoAttack's standard suite runs it).
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
        rescale_schedule: bool = True,
        name: str = "square",
    ):
        self.threat_model = threat_models.get(norm, epsilon)
        self.num_queries = validation.count(
            "num_queries", num_queries, minimum=1
        )
        self.p_init = validation.non_negative("p_init", p_init)
        if not 0.0 < self.p_init <= 1.0:
            raise ValueError(f"p_init must be in (0, 1]; got {p_init!r}.")
        self.rescale_schedule = bool(
            validation.choice(
                "rescale_schedule", rescale_schedule, (True, False)
            )
        )
        self.name = name

    def get_config(self):
        return {
            "epsilon": self.threat_model.epsilon,
            "num_queries": self.num_queries,
            "p_init": self.p_init,
            "norm": self.threat_model.norm,
            "rescale_schedule": self.rescale_schedule,
            "name": self.name,
        }

    def __repr__(self):
        return (
            f"Square(name={self.name!r}, {self.threat_model}, "
            f"num_queries={self.num_queries}, p_init={self.p_init}, "
            f"rescale_schedule={self.rescale_schedule})"
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
        norm = self.threat_model.norm
        batch = tf.shape(x)[0]
        seed = base.as_seed(seed)
        init_seed, loop_seed = base.split_seed(seed, 2)

        # The schedule in Python: phase k (k halvings so far) has its side.
        halvings = tf.constant(
            halving_iterations(self.num_queries, self.rescale_schedule),
            tf.int32,
        )
        sides = [
            _side(self.p_init / 2**k, height, width, channels, norm)
            for k in range(len(_P_HALVINGS) + 1)
        ]
        if norm == "linf":
            start, propose = self._linf(x, batch)
        else:
            start, propose = self._l2(x, batch, sides)

        def margin(x_adv):
            # Positive when misclassified (the objective the search raises).
            return objectives.margin(model(x_adv, training=training), y)

        if x_init is None:
            x_init = start(init_seed)
        x_best = self.threat_model.project(x, tf.cast(x_init, x.dtype))
        best = margin(x_best)
        # Inputs misclassified before the attack stay as they are.
        clean = margin(x)
        clean_wrong = clean > 0
        x_best = tf.where(_per_example(clean_wrong), x, x_best)
        best = tf.where(clean_wrong, clean, best)
        sides = tf.constant(sides, tf.int32)

        def body(i, x_best, best):
            phase = tf.reduce_sum(tf.cast(i >= halvings, tf.int32))
            side = tf.gather(sides, phase)
            draw_seed = tf.random.experimental.stateless_fold_in(loop_seed, i)
            proposal = propose(x_best, side, phase, draw_seed)
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

    def _linf(self, x, batch):
        """The L-inf start (stripes) and proposal (a flipped window)."""
        _, height, width, channels = x.shape
        eps = tf.cast(self.threat_model.epsilon, x.dtype)

        def start(seed):
            stripes = _signs(tf.stack([batch, 1, width, channels]), seed, x)
            return x + eps * stripes

        def propose(x_best, side, phase, seed):
            del phase
            s_top, s_left, s_sign = base.split_seed(seed, 3)
            top, left = _corner(batch, height, width, side, s_top, s_left)
            window = _window(x, top, left, side)
            flip = _signs(tf.stack([batch, 1, 1, channels]), s_sign, x)
            return x_best + window * 2 * eps * flip

        return start, propose

    def _l2(self, x, batch, sides):
        """The L2 start (a grid of patterns) and proposal (window moves)."""
        _, height, width, channels = x.shape
        eps = tf.cast(self.threat_model.epsilon, x.dtype)

        # The start: `l2_patch(s)` on a grid of s x s blocks, s = height // 5
        # (at least 1), the grid centred by the reference's offset.
        side = max(height // 5, 1)
        offset = (height - 5 * side) // 2
        patch = l2_patch(side)
        plain, flipped = [], []
        for top in range(offset, offset + (height // side) * side, side):
            for left in range(offset, offset + (width // side) * side, side):
                for pattern, out in ((patch, plain), (patch.T, flipped)):
                    block = np.zeros([height, width])
                    rows = min(side, height - top)
                    cols = min(side, width - left)
                    if rows > 0 and cols > 0:
                        block[top : top + rows, left : left + cols] = pattern[
                            :rows, :cols
                        ]
                    out.append(block)
        blocks = len(plain)
        plain = tf.constant(np.stack(plain), x.dtype)  # [K, H, W]
        flipped = tf.constant(np.stack(flipped), x.dtype)

        def start(seed):
            s_sign, s_flip = base.split_seed(seed, 2)
            flip = tf.random.stateless_uniform(
                tf.stack([batch, blocks, 1, 1]), s_flip
            )
            patterns = tf.where(flip > 0.5, flipped, plain)  # [B, K, H, W]
            signs = _signs(tf.stack([batch, blocks, channels]), s_sign, x)
            delta = tf.einsum("bkhw,bkc->bhwc", patterns, signs)
            return x + delta / (_image_norm(delta) + 1e-12) * eps

        # One pattern per phase of the schedule, zero-padded to the largest.
        largest = max(sides)
        table = np.zeros([len(sides), largest, largest])
        for k, s in enumerate(sides):
            table[k, :s, :s] = l2_patch(s)
        table = tf.constant(table, x.dtype)
        rows = tf.reshape(tf.range(height), [1, height])
        cols = tf.reshape(tf.range(width), [1, width])

        def propose(x_best, side, phase, seed):
            seeds = base.split_seed(seed, 6)
            s_top, s_left, s_top2, s_left2, s_sign, s_flip = seeds
            top, left = _corner(batch, height, width, side, s_top, s_left)
            top2, left2 = _corner(batch, height, width, side, s_top2, s_left2)
            new_window = _window(x, top, left, side)
            old_window = _window(x, top2, left2, side)
            both = tf.maximum(new_window, old_window)
            # The phase's pattern, transposed for half the examples, placed
            # at each example's window: one-hot rows/columns pick it out.
            pattern = tf.gather(table, phase)
            flip = tf.random.stateless_uniform([batch, 1, 1], s_flip)
            pattern = tf.where(flip > 0.5, tf.transpose(pattern), pattern)
            row_hot = tf.one_hot(rows - tf.reshape(top, [-1, 1]), largest)
            col_hot = tf.one_hot(cols - tf.reshape(left, [-1, 1]), largest)
            placed = tf.einsum(
                "bhs,bst,bwt->bhw",
                tf.cast(row_hot, x.dtype),
                pattern,
                tf.cast(col_hot, x.dtype),
            )[..., None]
            signs = _signs(tf.stack([batch, 1, 1, channels]), s_sign, x)

            delta = x_best - x
            # Budget of the new window: what the moved windows held plus
            # what the whole perturbation has left below epsilon, spread
            # over the channels.
            room = tf.maximum(tf.square(eps) - tf.square(_image_norm(delta)), 0)
            budget = tf.sqrt(
                room / channels + tf.square(_spatial_norm(delta * both))
            )
            kept = delta * new_window
            update = placed * signs + kept / (1e-12 + _spatial_norm(kept))
            update = update / (1e-12 + _spatial_norm(update)) * budget
            delta = delta * (1 - both) + update * new_window
            return x + delta / (_image_norm(delta) + 1e-12) * eps

        return start, propose


def _signs(shape, seed, x):
    """Random +-1 of `x`'s dtype."""
    bits = tf.random.stateless_uniform(shape, seed, 0, 2, dtype=tf.int32)
    return tf.cast(2 * bits - 1, x.dtype)


def _corner(batch, height, width, side, s_top, s_left):
    """Per-example top-left corners of a side x side window, [B] each."""
    top = tf.random.stateless_uniform(
        [batch], s_top, 0, height - side + 1, dtype=tf.int32
    )
    left = tf.random.stateless_uniform(
        [batch], s_left, 0, width - side + 1, dtype=tf.int32
    )
    return top, left


def _window(x, top, left, side):
    """A [B, H, W, 1] mask of the side x side windows at (top, left)."""
    _, height, width, _ = x.shape
    top, left = tf.reshape(top, [-1, 1, 1, 1]), tf.reshape(left, [-1, 1, 1, 1])
    rows = tf.reshape(tf.range(height), [1, height, 1, 1])
    cols = tf.reshape(tf.range(width), [1, 1, width, 1])
    window = (
        (rows >= top)
        & (rows < top + side)
        & (cols >= left)
        & (cols < left + side)
    )
    return tf.cast(window, x.dtype)


def _per_example(mask):
    return tf.reshape(mask, [-1, 1, 1, 1])
