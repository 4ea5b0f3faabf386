"""FAB-T: the targeted Fast Adaptive Boundary attack of AutoAttack."""

import math

import gin
import numpy as np
import tensorflow as tf

from tfadv import validation
from tfadv.attacks import base
from tfadv.attacks import threat_models

# The reference's sentinel for "no adversarial iterate yet"; a run found
# one iff its best norm fell below it.
NOT_FOUND = 1e10
# The floor under both step lengths before they set alpha.
_LENGTH_FLOOR = 1e-8
# Breakpoints of the L2 projection are clamped to +-this.
_FAR = 1e12
# Coordinates of w at most this large (in magnitude) are ignored by L2.
_TINY = 1e-8


def _bisect(test, size: int, rows) -> tf.Tensor:
    """Per row, the segment index the reference's bisection ends on.

    Starts from lo = 0, hi = size - 1 and runs ceil(log2 size) static
    halvings: at mid = (lo + hi) // 2, `test(mid)` (a [rows] bool) true
    moves lo to mid, false moves hi to mid.
    """
    if size is None:
        raise ValueError("FAB's projections need rows of static length.")
    lo = tf.zeros([rows], tf.int32)
    hi = tf.fill([rows], size - 1)
    for _ in range(math.ceil(math.log2(size)) if size > 1 else 0):
        mid = (lo + hi) // 2
        up = test(mid)
        lo, hi = tf.where(up, mid, lo), tf.where(up, hi, mid)
    return lo


def _pick(t, index):
    """t[row, index[row]] for a [N, M] tensor and a [N] index."""
    return tf.gather(t, index[:, None], batch_dims=1)[:, 0]


def _safe_divide(num, den):
    # Rows whose denominator is 0 are never the selected case; keep them
    # finite so that tf.where does not see inf or NaN.
    return num / tf.where(tf.equal(den, 0), tf.ones_like(den), den)


def _in_float64(project):
    """Runs a projection in float64 and returns the input's dtype.

    Near the boundary the step is a small difference of sums over every
    pixel (`b - w . u`, and the mass of the coordinates still free): in
    float32 it loses most of its digits, the step stops short of the plane
    and FAB's iterate can stay stuck far from the minimal distance. In
    float64 the projection of float32 rows is exact to float32's own
    precision; it is a small part of a FAB step (one sort per row).
    """

    def projected(points, w, b):
        dtype = points.dtype
        wide = (tf.cast(t, tf.float64) for t in (points, w, b))
        return tf.cast(project(*wide), dtype)

    projected.__name__ = project.__name__
    projected.__doc__ = project.__doc__
    return projected


@_in_float64
def project_linf(points: tf.Tensor, w: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    """The smallest L-inf step onto a hyperplane inside the box [0, 1].

    For each row u of `points` ([N, D]) returns the delta of minimal
    L-inf norm with `w . (u + delta) = b` and `u + delta` in [0, 1]^D; a
    row that cannot reach the plane gets the box corner that moves `w . z`
    furthest toward it. The exact sort-and-bisect algorithm of FAB
    (fra31/auto-attack: fab_projections.py, `projection_linf`), with
    every case computed for every row and chosen by `tf.where`. Computed
    in float64 whatever the input's dtype (see `_in_float64`).
    """
    rows, dims = tf.shape(points)[0], points.shape[1]
    u = points
    # Orient the plane so that w . z must decrease (gap <= 0).
    side = tf.where(tf.reduce_sum(w * u, 1) - b >= 0, 1.0, -1.0)
    side = tf.cast(side, u.dtype)
    w, b = w * side[:, None], b * side
    up = tf.cast(w < 0, u.dtype)  # these coordinates move toward 1
    active = tf.cast(tf.not_equal(w, 0), u.dtype)
    corner = (up - u) * active  # the full move to the far face
    room = up - u * (2 * up - 1)
    order = tf.reverse(tf.argsort(room, axis=1), [1])  # roomiest first
    gap = b - tf.reduce_sum(w * u, 1)
    reach = tf.reduce_sum(w * corner, 1)
    w_sorted = tf.gather(w, order, batch_dims=1)
    room_sorted = tf.gather(room, order, batch_dims=1)
    slope = tf.cumsum(tf.abs(w_sorted), 1)
    # What the coordinates after k add at their faces, summed from the end:
    # the reference's `reach` minus the cumulative sum up to k subtracts
    # two sums of the size of `reach` to find a small remainder.
    value = tf.cumsum(
        w_sorted * tf.gather(corner, order, batch_dims=1),
        1,
        exclusive=True,
        reverse=True,
    )
    # No face is hit before the plane: one step of lambda on every
    # coordinate. Otherwise, if the box reaches the plane, bisect for the
    # segment where the plane is crossed.
    no_face = gap - (value[:, -1] - slope[:, -1] * room_sorted[:, -1]) > 0
    reachable = (gap - reach > 0) & ~no_face
    lo = _bisect(
        lambda k: (
            gap - (_pick(value, k) - _pick(slope, k) * _pick(room_sorted, k))
            > 0
        ),
        dims,
        rows,
    )
    lam = tf.maximum(_safe_divide(gap - value[:, -1], -slope[:, -1]), 0)
    delta_no_face = (2 * up - 1) * lam[:, None]
    lam = tf.maximum(_safe_divide(gap - _pick(value, lo), -_pick(slope, lo)), 0)
    lam = lam[:, None]
    delta_faces = tf.minimum(lam, corner) * up
    delta_faces += tf.maximum(-lam, corner) * (1 - up)
    delta = tf.where(
        no_face[:, None],
        delta_no_face,
        tf.where(reachable[:, None], delta_faces, corner),
    )
    return delta * active


@_in_float64
def project_l2(points: tf.Tensor, w: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    """The smallest L2 step onto a hyperplane inside the box [0, 1].

    As `project_linf`, in the L2 norm: the step is `clip(-a w, -u, 1 - u)`
    for the smallest a >= 0 that reaches the plane, found by sorting the
    coordinates' saturation points and bisecting
    (fra31/auto-attack: fab_projections.py, `projection_l2`). Computed in
    float64 whatever the input's dtype.
    """
    rows, dims = tf.shape(points)[0], points.shape[1]
    u, dtype = points, points.dtype
    gap = tf.reduce_sum(w * u, 1) - b
    side = tf.cast(tf.where(gap >= 0, 1.0, -1.0), dtype)
    w, gap = w * side[:, None], gap * side
    tiny = tf.abs(w) < _TINY
    w_safe = tf.where(tiny, tf.ones_like(w), w)
    far = tf.constant(_FAR, dtype)
    # Where each coordinate saturates along -a w; ignored ones never do.
    breaks = tf.maximum(u / w_safe, (u - 1) / w_safe)
    breaks = tf.clip_by_value(breaks, -far, far)
    breaks = tf.where(tiny | tf.equal(breaks, -far), far, breaks)
    order = tf.argsort(breaks, axis=1)
    b_sorted = tf.gather(breaks, order, batch_dims=1)
    b_next = tf.concat([b_sorted[:, 1:], tf.zeros_like(b_sorted[:, :1])], 1)
    b_sorted = tf.where(tf.equal(b_sorted, far), tf.zeros_like(far), b_sorted)
    b_next = tf.where(tf.equal(b_next, far), tf.zeros_like(far), b_next)
    w2_sorted = tf.gather(tf.square(w), order, batch_dims=1)
    total = tf.reduce_sum(w2_sorted, 1, keepdims=True)
    # The mass still unsaturated, summed from the end (the reference's
    # `total - cumsum` loses a small remainder in float32).
    free = tf.cumsum(w2_sorted, 1, exclusive=True, reverse=True)
    saturated = -(breaks * w) * tf.cast(~tiny, dtype)
    first = -total * b_sorted[:, :1]
    change = tf.concat(
        [first, tf.cumsum((-b_next + b_sorted) * free, 1) + first], 1
    )
    before_first = change[:, 0] + gap < 0
    short = tf.reduce_sum(saturated * w, 1) + gap > 0
    lo = _bisect(lambda k: _pick(change, k) + gap > 0, dims, rows)
    a_free = _safe_divide(gap, total[:, 0])
    free_lo = _pick(free, lo)
    a = _safe_divide(_pick(change, lo) + gap, free_lo) + _pick(b_sorted, lo)
    a = tf.where(tf.equal(free_lo, 0), tf.zeros_like(a), a)[:, None]
    delta_mid = tf.where(a > breaks, saturated, -a * w)
    delta = tf.where(
        before_first[:, None],
        -a_free[:, None] * w,
        tf.where((before_first | short)[:, None], saturated, delta_mid),
    )
    return delta * tf.cast(~tiny, dtype)


PROJECTIONS = {"linf": project_linf, "l2": project_l2}


def flat_norm(delta: tf.Tensor, norm: str) -> tf.Tensor:
    """Per-row L-inf or L2 norm of a [N, D] tensor."""
    if norm == "linf":
        return tf.reduce_max(tf.abs(delta), 1)
    return tf.sqrt(tf.reduce_sum(tf.square(delta), 1))


def boundary_step(
    x: tf.Tensor,
    x0: tf.Tensor,
    w: tf.Tensor,
    b: tf.Tensor,
    *,
    norm: str,
    alpha_max: float,
    eta: float,
) -> tf.Tensor:
    """One FAB step toward the hyperplane `w . z = b`, on [B, D] rows.

    Both the current point `x` and the original `x0` are projected onto the
    plane (one call on the stacked rows); the step mixes the two overshot
    projections, `(1 - alpha)(x + eta d_x) + alpha (x0 + eta d_x0)`, with
    `alpha = min(|d_x| / (|d_x| + |d_x0|), alpha_max)`, and clips to [0, 1].
    """
    batch = tf.shape(x)[0]
    deltas = PROJECTIONS[norm](
        tf.concat([x, x0], 0), tf.concat([w, w], 0), tf.concat([b, b], 0)
    )
    lengths = tf.maximum(flat_norm(deltas, norm), _LENGTH_FLOOR)
    d_x, d_x0 = deltas[:batch], deltas[batch:]
    l_x, l_x0 = lengths[:batch], lengths[batch:]
    alpha = tf.minimum(tf.maximum(l_x / (l_x + l_x0), 0), alpha_max)
    alpha = alpha[:, None]
    mixed = (x + eta * d_x) * (1 - alpha) + (x0 + d_x0 * eta) * alpha
    return tf.clip_by_value(mixed, 0, 1)


@gin.register
class FABTargeted(base.Attack):
    """FAB-T (Croce & Hein, ICML 2020), as AutoAttack's standard suite runs it.

    A minimum-norm attack: for each correctly classified x0 and each target
    t (the classes ranked 2nd, 3rd, ... by the clean logits), `num_steps`
    iterations walk toward the boundary between y and t. Each linearises
    g = z_t - z_y at the iterate x, projects both x and x0 onto the plane
    `{z : g(x) + grad g(x) . (z - x) = 0}` inside [0, 1] (exact L-inf or L2
    projections, `project_linf`, `project_l2`) and moves to

        x <- clip((1 - a)(x + eta d_x) + a (x0 + eta d_x0)),
        a = min(|d_x| / (|d_x| + |d_x0|), alpha_max)

    (`boundary_step`). When the new x is misclassified (any wrong class),
    it is kept if it is the closest to x0 so far, and x is pulled back to
    `x0 + beta (x - x0)`. The iterates are not confined to the epsilon
    ball: after each target's run a point counts as broken if its closest
    misclassified iterate has norm <= epsilon, and later targets skip it.
    The output is that iterate for broken points and x0 for the others
    (`minimum_norm` gives the closest point over all targets instead).

    Standard settings (fra31/auto-attack: autoattack.py, fab_base.py): 9
    targets, 100 iterations, 1 restart (so the start is x0 itself and the
    attack is deterministic), alpha_max 0.1, eta 1.05, beta 0.9. Restarts
    after the first start at a random point at distance epsilon / 2, as in
    the reference. docs/algorithms.md §7.6 describes the port.

    Differences from fra31/auto-attack: runs keep the whole batch and mask
    the rows already broken or misclassified (their work is wasted, not
    their results), so the attack compiles with fixed shapes and under
    XLA; with fewer than `num_targets + 1` classes every other class is a
    target (the reference fails). A caller's `x_init` (clipped to [0, 1])
    replaces the start of every run.

    Example:
        fab_t = FABTargeted(epsilon=0.1)                  # L-inf
        fab_t_l2 = FABTargeted(epsilon=0.5, norm="l2")
        x_adv = fab_t(classifier, x, y)
        x_min, norms = fab_t.minimum_norm(classifier, x, y)

    Args:
        epsilon: radius of the threat model in pixel units, in [0, 1].
        num_steps: iterations per target (AutoAttack: 100).
        num_targets: how many target classes to try (AutoAttack: 9).
        norm: "linf" or "l2".
        restarts: runs per target (AutoAttack's FAB-T: 1).
        alpha_max: the largest weight of the step from x0 (0.1).
        eta: overshoot past the plane (1.05).
        beta: the backward step after a success (0.9).
        name: the report name; defaults to "fab_t".
    """

    # A target class besides the true one.
    min_classes = 2

    def __init__(
        self,
        *,
        epsilon: float,
        num_steps: int = 100,
        num_targets: int = 9,
        norm: str = "linf",
        restarts: int = 1,
        alpha_max: float = 0.1,
        eta: float = 1.05,
        beta: float = 0.9,
        name: str = "fab_t",
    ):
        self.threat_model = threat_models.get(norm, epsilon)
        self.num_steps = validation.count("num_steps", num_steps, minimum=1)
        self.num_targets = validation.count(
            "num_targets", num_targets, minimum=1
        )
        self.restarts = validation.count("restarts", restarts, minimum=1)
        self.alpha_max = validation.in_interval("alpha_max", alpha_max, 0, 1)
        self.eta = validation.non_negative("eta", eta)
        self.beta = validation.in_interval("beta", beta, 0, 1)
        self.name = name

    def get_config(self):
        return {
            "epsilon": self.threat_model.epsilon,
            "num_steps": self.num_steps,
            "num_targets": self.num_targets,
            "norm": self.threat_model.norm,
            "restarts": self.restarts,
            "alpha_max": self.alpha_max,
            "eta": self.eta,
            "beta": self.beta,
            "name": self.name,
        }

    def __repr__(self):
        return (
            f"FABTargeted(name={self.name!r}, {self.threat_model}, "
            f"num_steps={self.num_steps}, num_targets={self.num_targets}, "
            f"restarts={self.restarts})"
        )

    def __call__(self, model, x, y, *, seed=None, training=False, x_init=None):
        x_adv, _ = self._search(
            model, x, y, seed, training, x_init, within_epsilon=True
        )
        return x_adv

    def minimum_norm(
        self,
        model,
        x: tf.Tensor,
        y: tf.Tensor,
        *,
        seed: base.Seed = None,
        training: bool = False,
        x_init: tf.Tensor | None = None,
    ) -> tuple[tf.Tensor, tf.Tensor]:
        """The closest misclassified point found over every target.

        Every target (and restart) runs on every correctly classified
        input, whatever epsilon.

        Returns:
            `(x_min, norms)`: the closest misclassified iterate and its
            distance to `x` in the attack's norm; `x` itself and inf where
            none was found (and for inputs misclassified already, with
            norm 0).
        """
        return self._search(
            model, x, y, seed, training, x_init, within_epsilon=False
        )

    def _search(self, model, x, y, seed, training, x_init, within_epsilon):
        x = tf.convert_to_tensor(x)
        if None in x.shape[1:]:
            raise ValueError(
                f"FAB-T needs inputs of static shape; got shape {x.shape}."
            )
        y = tf.cast(tf.stop_gradient(tf.convert_to_tensor(y)), tf.int32)
        seed = base.as_seed(seed)
        norm = self.threat_model.norm
        # The reference works in float32; float64 inputs stay float64.
        dtype = tf.float64 if x.dtype == tf.float64 else tf.float32
        shape = tf.shape(x)
        batch = shape[0]
        dims = int(np.prod(x.shape[1:]))
        x0 = tf.reshape(tf.cast(tf.stop_gradient(x), dtype), [batch, dims])
        eps = tf.cast(self.threat_model.epsilon, dtype)

        def logits_of(flat):
            image = tf.cast(tf.reshape(flat, shape), x.dtype)
            return tf.cast(model(image, training=training), dtype)

        def wrong(logits):
            return tf.not_equal(tf.argmax(logits, -1, output_type=tf.int32), y)

        clean_logits = tf.cast(model(x, training=False), dtype)
        num_classes = clean_logits.shape[-1]
        if num_classes is None or num_classes < 2:
            raise ValueError(
                f"FAB-T needs a model with at least 2 classes and a static "
                f"number of them; this one has {num_classes}."
            )
        num_targets = min(self.num_targets, num_classes - 1)
        ranked = tf.argsort(
            clean_logits, axis=-1, direction="DESCENDING", stable=True
        )
        correct = ~wrong(clean_logits)
        start = None
        if x_init is not None:
            start = tf.reshape(tf.cast(x_init, dtype), [batch, dims])
            start = tf.clip_by_value(start, 0, 1)

        def run_start(run):
            if start is not None:
                return start
            if self.restarts == 1:
                return x0
            # Later restarts start at distance epsilon / 2 (the reference).
            run_seed = tf.random.experimental.stateless_fold_in(seed, run)
            if norm == "linf":
                v = tf.random.stateless_uniform(
                    tf.shape(x0), run_seed, -1, 1, dtype=dtype
                )
            else:
                v = tf.random.stateless_normal(
                    tf.shape(x0), run_seed, dtype=dtype
                )
            moved = x0 + eps * v / flat_norm(v, norm)[:, None] * 0.5
            moved = tf.clip_by_value(moved, 0, 1)
            return tf.where(run % self.restarts > 0, moved, x0)

        def run_body(run, x_out, norms, active):
            target = tf.gather(ranked, 1 + run // self.restarts, axis=1)
            best, best_norm = self._run(
                logits_of, wrong, x0, run_start(run), y, target
            )
            candidate = tf.where((best_norm < NOT_FOUND)[:, None], best, x0)
            dist = flat_norm(candidate - x0, norm)
            broken = active & wrong(logits_of(candidate))
            if within_epsilon:
                take = broken & ~(dist > eps)
                active &= ~take
            else:
                take = broken & (dist < norms)
            x_out = tf.where(take[:, None], candidate, x_out)
            return run + 1, x_out, tf.where(take, dist, norms), active

        num_runs = num_targets * self.restarts
        _, x_out, norms, _ = tf.while_loop(
            lambda run, *state: (run < num_runs) & tf.reduce_any(state[-1]),
            run_body,
            (
                tf.constant(0),
                x0,
                tf.where(
                    correct,
                    tf.fill([batch], tf.cast(np.inf, dtype)),
                    tf.zeros([batch], dtype),
                ),
                correct,
            ),
            maximum_iterations=num_runs,
        )
        x_out = tf.cast(tf.reshape(x_out, shape), x.dtype)
        # Inputs left alone come back bit for bit.
        moved = tf.reshape(
            tf.math.is_finite(norms) & correct,
            [-1] + [1] * (len(x.shape) - 1),
        )
        x_out = tf.stop_gradient(tf.where(moved, x_out, x))
        return x_out, tf.stop_gradient(norms)

    def _run(self, logits_of, wrong, x0, x_start, y, target):
        """One run toward `target`: (closest misclassified iterate, norm)."""
        norm = self.threat_model.norm

        def step(i, x, best, best_norm):
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(x)
                logits = logits_of(x)
                # g = z_t - z_y, summed over rows: one backward pass gives
                # every row's gradient.
                g = -(
                    tf.gather(logits, y[:, None], batch_dims=1)[:, 0]
                    - tf.gather(logits, target[:, None], batch_dims=1)[:, 0]
                )
                total = tf.reduce_sum(g)
            w = tape.gradient(
                total, x, unconnected_gradients=tf.UnconnectedGradients.ZERO
            )
            b = -g + tf.reduce_sum(w * x, 1)
            x = boundary_step(
                x, x0, w, b, norm=norm, alpha_max=self.alpha_max, eta=self.eta
            )
            adv = wrong(logits_of(x))
            dist = flat_norm(x - x0, norm)
            closer = adv & (dist < best_norm)
            best = tf.where(closer[:, None], x, best)
            best_norm = tf.where(closer, dist, best_norm)
            x = tf.where(adv[:, None], x0 + (x - x0) * self.beta, x)
            return i + 1, x, best, best_norm

        _, _, best, best_norm = tf.while_loop(
            lambda i, *_: i < self.num_steps,
            step,
            (
                tf.constant(0),
                x_start,
                x0,
                tf.fill(tf.shape(x0)[:1], tf.cast(NOT_FOUND, x0.dtype)),
            ),
            maximum_iterations=self.num_steps,
        )
        return best, best_norm
