"""FAB-T (attacks.fab): projections, the closed form on a linear model,
agreement with a NumPy port of the reference, invariants, the runner."""

import keras
import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from tests import evaluation_fixtures as fx
from tfadv import attacks
from tfadv import evaluation
from tfadv.attacks import fab

# AutoAttack's standard settings.
ETA, BETA, ALPHA_MAX = 1.05, 0.9, 0.1


# A NumPy port of the reference (fra31/auto-attack: fab_base.py,
# fab_projections.py), written from its description: rows are split into
# cases with boolean masks and only the points still to attack are run.


def np_project_linf(u, w, b):
    """The reference's sort-and-bisect L-inf projection, case by case."""
    flip = np.where((w * u).sum(1) - b >= 0, 1.0, -1.0)
    w, b = w * flip[:, None], b * flip
    up = (w < 0).astype(u.dtype)
    delta = (up - u) * (w != 0)
    room = up - u * (2 * up - 1)
    ascending = np.argsort(room, axis=1)
    gap = b - (w * u).sum(1)
    reach = (w * delta).sum(1)
    desc = ascending[:, ::-1]
    w_desc = np.take_along_axis(w, desc, 1)
    slope = np.cumsum(np.abs(w_desc), 1)
    value = np.cumsum(-w_desc * np.take_along_axis(delta, desc, 1), 1)
    value += reach[:, None]
    room_desc = np.take_along_axis(room, desc, 1)
    no_face = gap - (value[:, -1] - slope[:, -1] * room_desc[:, -1]) > 0
    faces = (gap - reach > 0) & ~no_face
    if no_face.any():
        lam = np.maximum(
            (gap[no_face] - value[no_face, -1]) / -slope[no_face, -1], 0
        )
        delta[no_face] = (2 * up[no_face] - 1) * lam[:, None]
    if faces.any():
        rows = np.flatnonzero(faces)
        lo = np.zeros(rows.size, int)
        hi = np.full(rows.size, u.shape[1] - 1)
        for _ in range(int(np.ceil(np.log2(u.shape[1])))):
            mid = (lo + hi) // 2
            at = value[rows, mid] - slope[rows, mid] * room_desc[rows, mid]
            above = gap[rows] - at > 0
            lo, hi = np.where(above, mid, lo), np.where(above, hi, mid)
        lam = np.maximum((gap[rows] - value[rows, lo]) / -slope[rows, lo], 0)
        lam = lam[:, None]
        d = delta[rows]
        delta[rows] = np.minimum(lam, d) * up[rows] + np.maximum(-lam, d) * (
            1 - up[rows]
        )
    return delta * (w != 0)


def np_project_l2(u, w, b):
    """The reference's L2 projection, case by case."""
    gap = (w * u).sum(1) - b
    flip = np.where(gap >= 0, 1.0, -1.0)
    w, gap = w * flip[:, None], gap * flip
    tiny = np.abs(w) < 1e-8
    with np.errstate(divide="ignore", invalid="ignore"):
        breaks = np.maximum(u / w, (u - 1) / w)
    breaks = np.clip(breaks, -1e12, 1e12).astype(u.dtype)
    breaks[tiny] = 1e12
    breaks[breaks == np.asarray(-1e12, u.dtype)] *= -1
    order = np.argsort(breaks, axis=1)
    b_sorted = np.take_along_axis(breaks, order, 1)
    b_next = np.concatenate([b_sorted[:, 1:], 0 * b_sorted[:, :1]], 1)
    b_sorted[b_sorted == np.asarray(1e12, u.dtype)] = 0
    b_next[b_next == np.asarray(1e12, u.dtype)] = 0
    w2 = np.take_along_axis(w**2, order, 1)
    total = w2.sum(1, keepdims=True)
    free = total - np.cumsum(w2, 1)
    delta = -(breaks * w) * ~tiny
    first = -total * b_sorted[:, :1]
    change = np.concatenate(
        [first, np.cumsum((-b_next + b_sorted) * free, 1) + first], 1
    )
    before = change[:, 0] + gap < 0
    short = (delta * w).sum(1) + gap > 0
    middle = ~(before | short)
    rows = np.flatnonzero(middle)
    lo = np.zeros(rows.size, int)
    hi = np.full(rows.size, u.shape[1] - 1)
    for _ in range(int(np.ceil(np.log2(u.shape[1])))):
        mid = (lo + hi) // 2
        above = change[rows, mid] + gap[rows] > 0
        lo, hi = np.where(above, mid, lo), np.where(above, hi, mid)
    if before.any():
        delta[before] = -(gap[before] / total[before, 0])[:, None] * w[before]
    if rows.size:
        with np.errstate(divide="ignore", invalid="ignore"):
            a = (change[rows, lo] + gap[rows]) / free[rows, lo]
        a = a + b_sorted[rows, lo]
        a[free[rows, lo] == 0] = 0
        sat = (a[:, None] > breaks[rows]).astype(u.dtype)
        delta[rows] = delta[rows] * sat - a[:, None] * w[rows] * (1 - sat)
    return delta * ~tiny


NP_PROJECTIONS = {"linf": np_project_linf, "l2": np_project_l2}


def np_norm(d, norm):
    return np.abs(d).max(1) if norm == "linf" else np.sqrt((d**2).sum(1))


def np_step(x, x0, w, b, norm):
    """One reference step from the current x and the original x0."""
    n = len(x)
    d = NP_PROJECTIONS[norm](
        np.concatenate([x, x0]), np.concatenate([w, w]), np.concatenate([b, b])
    )
    lengths = np.maximum(np_norm(d, norm), 1e-8)
    alpha = np.minimum(
        np.maximum(lengths[:n] / (lengths[:n] + lengths[n:]), 0), ALPHA_MAX
    )[:, None]
    mixed = (x + ETA * d[:n]) * (1 - alpha) + (x0 + d[n:] * ETA) * alpha
    return np.clip(mixed, 0, 1)


class MLP:
    """A NumPy twin of `mlp()`: logits and the gradient of z_t - z_y."""

    def __init__(self, model):
        self.w1, self.b1, self.w2, self.b2 = [
            v.astype(np.float64) for v in model.get_weights()
        ]

    def logits(self, x):
        return np.maximum(x @ self.w1 + self.b1, 0) @ self.w2 + self.b2

    def diff_and_grad(self, x, y, t):
        hidden = x @ self.w1 + self.b1
        z = np.maximum(hidden, 0) @ self.w2 + self.b2
        rows = np.arange(len(x))
        g = -(z[rows, y] - z[rows, t])
        back = (self.w2[:, t] - self.w2[:, y]).T * (hidden > 0)
        return g, back @ self.w1.T


def np_fab_run(net, x, y, target, norm, num_steps):
    """One run of the reference on the points it classifies correctly."""
    out = x.copy()
    keep = net.logits(x).argmax(1) == y
    if not keep.any():
        return out
    x0, la, t = x[keep], y[keep], target[keep]
    xs = x0.copy()
    best, best_norm = x0.copy(), np.full(len(x0), 1e10)
    for _ in range(num_steps):
        g, w = net.diff_and_grad(xs, la, t)
        b = -g + (w * xs).sum(1)
        xs = np_step(xs, x0, w, b, norm)
        adv = net.logits(xs).argmax(1) != la
        if adv.any():
            dist = np_norm(xs[adv] - x0[adv], norm)
            idx = np.flatnonzero(adv)
            closer = dist < best_norm[idx]
            best[idx[closer]] = xs[idx[closer]]
            best_norm[idx[closer]] = dist[closer]
            xs[adv] = x0[adv] + (xs[adv] - x0[adv]) * BETA
    found = best_norm < 1e10
    out[np.flatnonzero(keep)[found]] = best[found]
    return out


def np_fab_targeted(net, x, y, eps, norm, num_steps=100, num_targets=9):
    """The reference's target loop: ranks 2, 3, ... on the points left."""
    adv = x.copy()
    robust = net.logits(x).argmax(1) == y
    for rank in range(2, num_targets + 2):
        idx = np.flatnonzero(robust)
        if not idx.size:
            continue
        xs, ys = x[idx], y[idx]
        target = np.argsort(net.logits(xs), 1)[:, -rank]
        out = np_fab_run(net, xs, ys, target, norm, num_steps)
        still = (net.logits(out).argmax(1) == ys) | (
            np_norm(out - xs, norm) > eps
        )
        robust[idx[~still]] = False
        adv[idx[~still]] = out[~still]
    return adv, robust


# Independent solvers of the projection problem, by bisection.


def exact_projection(u, w, h, norm):
    """min |delta| with w.(u + delta) = h, u + delta in [0, 1] (or None)."""
    w = w.astype(np.float64) * (np.abs(w) >= (1e-8 if norm == "l2" else 0))
    gap = h - w @ u
    if gap > 0:  # orient: w.z must decrease
        w, gap = -w, -gap
    lower, upper = -u, 1 - u

    def move(s):  # the optimal delta at budget s and the w.delta it gives
        if norm == "linf":
            d = np.clip(-np.sign(w) * s, lower, upper)
        else:
            d = np.clip(-w * s, lower, upper)
        return d, w @ d

    hi = 1.0 if norm == "linf" else 1e12
    if move(hi)[1] > gap + 1e-12:
        return None  # unreachable
    lo = 0.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if move(mid)[1] > gap else (lo, mid)
    return move(hi)[0]


def random_rows(rng, n, dims):
    """Rows with zeros in w, pixels on the faces, both sides of the plane."""
    u = rng.uniform(size=(n, dims))
    u[rng.uniform(size=u.shape) < 0.2] = 0.0
    u[rng.uniform(size=u.shape) < 0.2] = 1.0
    w = rng.normal(size=(n, dims))
    w[rng.uniform(size=w.shape) < 0.2] = 0.0
    h = (w * u).sum(1) + rng.normal(scale=2.0, size=n)
    return u, w, h


def mlp(dtype="float32", dims=20, classes=10, seed=0, hidden=16):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((dims,), dtype=dtype),
            keras.layers.Dense(hidden, activation="relu", dtype=dtype),
            keras.layers.Dense(classes, dtype=dtype),
        ]
    )


def linear(w, b, dtype="float32"):
    model = keras.Sequential(
        [
            keras.Input((w.shape[0],), dtype=dtype),
            keras.layers.Dense(w.shape[1], dtype=dtype),
        ]
    )
    model.set_weights([w.astype(dtype), b.astype(dtype)])
    return model


def compiled(attack, model, x, y, **kwargs):
    """`attack(model, x, y)` traced, as the evaluation runs it."""
    return tf.function(lambda x: attack(model, x, y, **kwargs))(x)


def compiled_minimum_norm(attack, model, x, y):
    return tf.function(lambda x: attack.minimum_norm(model, x, y))(x)


def rho(eta=ETA, beta=BETA, alpha_max=ALPHA_MAX):
    """Where FAB lands on a linear boundary, in units of the nearest point.

    Step 1 lands on x0 + eta d* (d* the minimum-norm point); the backward
    step takes it to x0 + beta eta d*. Step 2 projects x (residual
    (1 - beta eta) d*) and x0 (d*): alpha = (1 - beta eta) / (2 - beta
    eta) and the iterate is x0 + (eta - (eta - 1) beta eta (1 - alpha)) d*,
    closer than step 1; later iterates never beat it.
    """
    alpha = min((1 - beta * eta) / (2 - beta * eta), alpha_max)
    return eta - (eta - 1) * beta * eta * (1 - alpha)


class ProjectionTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.product(norm=["linf", "l2"], dtype=["float64", "float32"])
    def test_projection_is_exact(self, norm, dtype):
        rng = np.random.default_rng(0)
        u, w, h = random_rows(rng, 200, 12)
        got = fab.PROJECTIONS[norm](
            tf.constant(u, dtype), tf.constant(w, dtype), tf.constant(h, dtype)
        ).numpy()
        tol = 1e-6 if dtype == "float64" else 1e-4
        reachable = 0
        for i in range(len(u)):
            want = exact_projection(u[i], w[i], h[i], norm)
            z = u[i] + got[i]
            self.assertAllInRange(z, -1e-6, 1 + 1e-6)
            if want is None:
                continue
            reachable += 1
            self.assertNear(
                np_norm(got[i : i + 1], norm)[0],
                np_norm(want[None], norm)[0],
                tol,
            )
            self.assertNear(float(w[i] @ z), h[i], tol * 10)
        self.assertBetween(reachable, 100, 199)  # both kinds of rows

    @parameterized.parameters("linf", "l2")
    def test_unreachable_rows_get_the_corner(self, norm):
        u = np.full((1, 4), 0.5)
        w = np.array([[1.0, -2.0, 0.0, 0.5]])
        h = np.array([w[0] @ u[0] + 100.0])  # far beyond the box
        got = fab.PROJECTIONS[norm](
            tf.constant(u), tf.constant(w), tf.constant(h)
        ).numpy()
        self.assertAllClose(got, [[0.5, -0.5, 0.0, 0.5]])

    @parameterized.parameters("linf", "l2")
    def test_same_as_the_reference_port(self, norm):
        rng = np.random.default_rng(1)
        u, w, h = random_rows(rng, 300, 16)
        got = fab.PROJECTIONS[norm](
            tf.constant(u), tf.constant(w), tf.constant(h)
        )
        self.assertAllClose(got, NP_PROJECTIONS[norm](u, w, h), atol=1e-12)
        # -g gives the same plane: the projection does not change.
        negated = fab.PROJECTIONS[norm](
            tf.constant(u), tf.constant(-w), tf.constant(-h)
        )
        self.assertAllClose(negated, got, atol=1e-12)


def near_plane_rows(rng, n, dims, norm):
    """float32 rows 1e-6 to 1e-4 from the plane, as FAB's iterate nears it.

    784 pixels, half of them 0 (a Fashion-MNIST-like image): `w . u` and
    the mass of the free coordinates are sums over every pixel, far larger
    than the gap the step must close.
    """
    u = rng.uniform(size=(n, dims))
    u[rng.uniform(size=u.shape) < 0.5] = 0.0
    w = rng.normal(scale=0.01 if norm == "linf" else 0.05, size=(n, dims))
    u, w = u.astype(np.float32), w.astype(np.float32)
    gap = 10.0 ** rng.uniform(-6, -4, size=n)
    h = ((w.astype(np.float64) * u).sum(1) - gap).astype(np.float32)
    return u, w, h


class Float32PrecisionTest(tf.test.TestCase, parameterized.TestCase):
    """float32 inputs get the float64 answer (the projection runs in it)."""

    @parameterized.parameters("linf", "l2")
    def test_a_step_near_the_plane_matches_float64(self, norm):
        # Summed in float32, the step here was off by up to 200 % (L-inf)
        # and 9 % (L2) of its length, and stopped short of the plane.
        u, w, h = near_plane_rows(np.random.default_rng(0), 32, 784, norm)
        got = fab.PROJECTIONS[norm](
            tf.constant(u), tf.constant(w), tf.constant(h)
        ).numpy()
        self.assertEqual(got.dtype, np.float32)
        u64, w64, h64 = (a.astype(np.float64) for a in (u, w, h))
        for i in range(len(u)):
            want = exact_projection(u64[i], w64[i], h64[i], norm)
            length = np_norm(want[None], norm)[0]
            self.assertNear(
                np_norm(got[i : i + 1].astype(np.float64), norm)[0],
                length,
                1e-4 * length,
            )
            gap = abs(w64[i] @ u64[i] - h64[i])
            reached = w64[i] @ (u64[i] + got[i]) - h64[i]
            self.assertLess(abs(reached), 1e-3 * gap)

    def test_minimal_distances_match_the_float64_reference(self):
        # A 784-64-10 MLP in float32: FAB-T's closest point against the
        # second class, 100 iterations, as the float64 NumPy port of the
        # reference finds it. With the projection in float32 one point of
        # the 64 stayed 2e-4 away from it.
        model = mlp("float32", dims=784, hidden=64)
        net = MLP(model)
        rng = np.random.default_rng(0)
        x = rng.uniform(size=(64, 784))
        x[rng.uniform(size=x.shape) < 0.5] = 0.0
        x = x.astype(np.float32).astype(np.float64)
        y = net.logits(x).argmax(1).astype(np.int32)
        target = np.argsort(net.logits(x), 1)[:, -2]
        want = np_norm(np_fab_run(net, x, y, target, "linf", 100) - x, "linf")
        attack = attacks.FABTargeted(epsilon=1.0, num_targets=1)
        _, norms = compiled_minimum_norm(
            attack, model, tf.constant(x, tf.float32), y
        )
        self.assertAllClose(norms, want, atol=1e-5, rtol=0)


class StepTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.product(norm=["linf", "l2"], dtype=["float64", "float32"])
    def test_one_step_equals_the_reference_step(self, norm, dtype):
        rng = np.random.default_rng(2)
        x0, w, h = random_rows(rng, 64, 20)
        x = np.clip(x0 + rng.normal(scale=0.1, size=x0.shape), 0, 1)
        x, x0, w, h = (a.astype(dtype) for a in (x, x0, w, h))
        got = fab.boundary_step(
            *(tf.constant(a) for a in (x, x0, w, h)),
            norm=norm,
            alpha_max=ALPHA_MAX,
            eta=ETA,
        )
        tol = 1e-12 if dtype == "float64" else 1e-5
        self.assertAllClose(got, np_step(x, x0, w, h, norm), atol=tol)


class LinearClosedFormTest(tf.test.TestCase, parameterized.TestCase):
    def problem(self, norm, dims=64, n=8, seed=3):
        # Class 0 against class 1; the others are 1e3 below, out of reach.
        # x0 in [0.3, 0.7], so the overshot nearest point hits no face.
        rng = np.random.default_rng(seed)
        x = rng.uniform(0.3, 0.7, size=(n, dims))
        w = rng.normal(size=(dims, 10))
        dw = w[:, 1] - w[:, 0]
        dual = np.abs(dw).sum() if norm == "linf" else np.linalg.norm(dw)
        bias = np.full(10, -1e3)
        bias[0] = 0.0
        bias[1] = (x @ -dw).min() - 0.02 * dual  # margins >= 0.02 |dw|
        distance = (x @ -dw - bias[1]) / dual
        if norm == "linf":
            delta = -np.sign(-dw)[None] * distance[:, None]
        else:
            delta = (dw / np.linalg.norm(dw))[None] * distance[:, None]
        self.assertAllInRange(x + ETA * delta, 0.01, 0.99)
        return w, bias, x, np.zeros(n, np.int32), delta

    @parameterized.product(norm=["linf", "l2"], dtype=["float32", "float64"])
    def test_lands_on_rho_times_the_nearest_point(self, norm, dtype):
        self.assertNear(rho(), 1.0052133, 1e-7)
        w, bias, x, y, delta = self.problem(norm)
        model = linear(w, bias, dtype)
        x = tf.constant(x, dtype)
        scale = np_norm(delta, norm)[:, None]
        tight = 1e-10 if dtype == "float64" else 1e-4
        # Iteration 1 lands on x0 + eta d*, iteration 2 on x0 + rho d*.
        one = attacks.FABTargeted(epsilon=1.0, num_steps=1, norm=norm)
        got = (compiled(one, model, x, y) - x).numpy()
        self.assertAllClose(got / scale, ETA * delta / scale, atol=tight)
        full = attacks.FABTargeted(epsilon=1.0, norm=norm)
        got = (compiled(full, model, x, y) - x).numpy()
        loose = 1e-10 if dtype == "float64" else 1e-3
        self.assertAllClose(got / scale, rho() * delta / scale, atol=loose)

    @parameterized.parameters("linf", "l2")
    def test_every_target_finds_the_nearest_class(self, norm):
        # Random W and biases, half the pixels on the faces, 9 targets: the
        # closest point over all targets is within 1 % above the exact
        # minimal distance lambda*; a point is broken iff epsilon >=
        # lambda* (away from the 1 % band).
        rng = np.random.default_rng(4)
        dims, n = 16, 16
        w = rng.normal(size=(dims, 10))
        bias = rng.normal(scale=0.5, size=10)
        x = rng.uniform(size=(n, dims))
        x[:, ::2] = rng.integers(0, 2, size=(n, dims // 2))
        model = linear(w, bias, "float64")
        y = np.argmax(x @ w + bias, 1).astype(np.int32)
        exact = np.full(n, np.inf)
        for i in range(n):
            for t in range(10):
                if t == y[i]:
                    continue
                d = exact_projection(
                    x[i], w[:, t] - w[:, y[i]], bias[y[i]] - bias[t], norm
                )
                if d is not None:
                    exact[i] = min(exact[i], np_norm(d[None], norm)[0])
        self.assertTrue(np.isfinite(exact).all())
        attack = attacks.FABTargeted(epsilon=1.0, norm=norm)
        x_min, norms = compiled_minimum_norm(attack, model, tf.constant(x), y)
        self.assertAllGreaterEqual(norms - exact, -1e-9)
        self.assertAllLessEqual(norms / exact, 1.01)
        self.assertAllClose(np_norm(x_min.numpy() - x, norm), norms)
        self.assertAllEqual(np.argmax(model(x_min), 1) != y, [True] * n)
        eps = float(np.median(exact))
        x_adv = compiled(attack.replace(epsilon=eps), model, tf.constant(x), y)
        broken = np.argmax(model(x_adv), 1) != y
        clear = (exact > eps) | (exact * 1.01 < eps)
        self.assertGreater(clear.sum(), n // 2)
        self.assertAllEqual(broken[clear], (exact <= eps)[clear])


class ReferenceAgreementTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.product(norm=["linf", "l2"], dtype=["float64", "float32"])
    def test_matches_the_numpy_port(self, norm, dtype):
        model = mlp(dtype)
        net = MLP(model)
        rng = np.random.default_rng(5)
        x = rng.uniform(size=(16, 20))
        y = net.logits(x).argmax(1).astype(np.int32)
        y[:3] = (y[:3] + 1) % 10  # misclassified: never attacked
        # A budget that breaks some points at rank 2 and some later.
        eps = 0.06 if norm == "linf" else 0.25
        want, robust = np_fab_targeted(net, x, y, eps, norm)
        attack = attacks.FABTargeted(epsilon=eps, norm=norm)
        got = fx.run_attack(attack, model, tf.constant(x, dtype), y).numpy()
        got_robust = np.argmax(model(got), 1) == y
        self.assertAllEqual(got[:3], x[:3].astype(dtype))
        self.assertBetween(robust[3:].mean(), 0.1, 0.9)
        if dtype == "float64":
            self.assertAllEqual(got_robust, robust)
            self.assertAllClose(got, want, atol=1e-9)
        else:
            # float32 trajectories may part where a near-tie flips; the
            # flags agree for points clearly away from epsilon.
            _, norms = compiled_minimum_norm(
                attack, model, tf.constant(x, dtype), y
            )
            clear = np.abs(norms.numpy() / eps - 1) > 0.01
            self.assertAllEqual(got_robust[clear], robust[clear])

    def test_targets_are_the_clean_ranks(self):
        # A point broken at rank 2 keeps rank 2's result even when rank 3
        # would be closer; minimum_norm takes the closest over all ranks.
        # z_0 = 0, z_1 = x_1 - 0.3, z_2 = 0.1 x_2 - 0.09: class 2 ranks
        # second at x = (0.1, 0.5) but its boundary is 0.4 away, class 1's
        # 0.2.
        w = np.zeros((2, 10))
        w[:, 1], w[:, 2] = [1.0, 0.0], [0.0, 0.1]
        bias = np.full(10, -1e3)
        bias[:3] = [0.0, -0.3, -0.09]
        model = linear(w, bias, "float64")
        x = tf.constant([[0.1, 0.5]], tf.float64)
        y = np.zeros(1, np.int32)
        attack = attacks.FABTargeted(epsilon=1.0, norm="l2")
        x_adv = compiled(attack, model, x, y)
        self.assertEqual(int(np.argmax(model(x_adv), 1)[0]), 2)
        x_min, norms = compiled_minimum_norm(attack, model, x, y)
        self.assertEqual(int(np.argmax(model(x_min), 1)[0]), 1)
        self.assertBetween(float(norms[0]), 0.2, 0.2 * 1.01)
        self.assertLess(float(norms[0]), np_norm((x_adv - x).numpy(), "l2")[0])


class InvariantsTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters(("linf", 0.1), ("l2", 0.5))
    def test_invariants(self, norm, eps):
        model = fx.bn_model()
        rng = np.random.default_rng(1)
        x = rng.uniform(size=(16, 6, 6, 1)).astype("float32")
        x[:, 0] = 0.0  # a row on the box edge
        x = tf.constant(x)
        y = tf.argmax(model(x), -1, output_type=tf.int32)
        y = tf.tensor_scatter_nd_update(y, [[0]], [(y[0] + 1) % 5])
        before = [v.numpy().copy() for v in model.variables]
        attack = attacks.FABTargeted(epsilon=eps, num_steps=10, norm=norm)
        compiled = tf.function(lambda x, y: attack(model, x, y, seed=3))
        with tf.GradientTape() as tape:
            tape.watch(x)
            x_adv = compiled(x, y)
        self.assertIsNone(tape.gradient(tf.reduce_sum(x_adv), x))
        self.assertEqual((x_adv.shape, x_adv.dtype), (x.shape, x.dtype))
        dist = attack.threat_model.distance(x, x_adv)
        self.assertAllLessEqual(dist, eps + 1e-5)
        self.assertAllInRange(x_adv, 0.0, 1.0)
        wrong = (np.argmax(model(x_adv), -1) != y).numpy()
        # Moved points are misclassified; the others are x bit for bit,
        # and so is the point misclassified from the start.
        moved = dist.numpy() > 0
        self.assertGreater(moved.sum(), 0)
        self.assertTrue(wrong[moved].all())
        self.assertAllEqual(x_adv[0], x[0])
        self.assertAllEqual(x_adv.numpy()[~moved], x.numpy()[~moved])
        self.assertAllEqual(x_adv, compiled(x, y))  # deterministic
        # Keras traces train_step with AutoGraph off.
        plain = tf.function(lambda x, y: attack(model, x, y), autograph=False)
        self.assertAllEqual(x_adv, plain(x, y))
        self.assertLen(model.variables, len(before))
        for b, v in zip(before, model.variables, strict=True):
            self.assertAllEqual(b, v.numpy())

    def test_zero_epsilon_returns_input(self):
        model = fx.linear_model((6,), 10)
        x, y = fx.interior_data(model, (6,), n=8)
        attack = attacks.FABTargeted(epsilon=0.0, num_steps=5, num_targets=2)
        self.assertAllEqual(compiled(attack, model, x, y), x)

    def test_breaks_an_undefended_model_under_xla(self):
        model = fx.linear_model((6, 6, 1), 10)
        x, y = fx.interior_data(model, (6, 6, 1), n=16)
        attack = attacks.FABTargeted(epsilon=0.1, num_steps=20)
        fn = tf.function(
            lambda x, y: attack(model, x, y, seed=1), jit_compile=True
        )
        x_adv = fn(x, y)
        self.assertAllLessEqual(tf.abs(x_adv - x), 0.1 + 1e-5)
        self.assertAllInRange(x_adv, 0.0, 1.0)
        self.assertLess(fx.accuracy(model, x_adv, y), 0.1)

    def test_restarts_start_at_random_points(self):
        # z_1 = relu(sum(x) - 2.05) - 0.01 against z_0 = 0: at x0 = 0.5
        # the ReLU is off, the gradient is 0 and a start at x0 never moves.
        # Restarts after the first start epsilon / 2 away, where the ReLU
        # may be on, and then reach the boundary (sum(x) = 2.06).
        model = keras.Sequential(
            [
                keras.Input((4,)),
                keras.layers.Dense(1, activation="relu"),
                keras.layers.Dense(2),
            ]
        )
        model.set_weights(
            [
                np.ones((4, 1)),
                np.array([-2.05]),
                np.array([[0.0, 1.0]]),
                np.array([0.0, -0.01]),
            ]
        )
        x = tf.fill([16, 4], 0.5)
        y = tf.zeros([16], tf.int32)
        one = attacks.FABTargeted(epsilon=0.4, num_steps=5)
        self.assertAllEqual(compiled(one, model, x, y), x)
        five = one.replace(restarts=5)
        runs = [compiled(five, model, x, y, seed=s) for s in (0, 1)]
        for x_adv in runs:
            self.assertLess(fx.accuracy(model, x_adv, y), 0.5)
            self.assertAllLessEqual(tf.abs(x_adv - x), 0.4 + 1e-6)
        self.assertNotAllClose(runs[0], runs[1])

    def test_x_init_replaces_the_start(self):
        # Starting on the far side of a linear boundary: the first step
        # projects from there, so the output differs from the x0 start.
        model = fx.linear_model((6,), 10)
        x, y = fx.interior_data(model, (6,), n=8)
        attack = attacks.FABTargeted(epsilon=1.0, num_steps=1, num_targets=1)
        start = tf.clip_by_value(x + 0.3, 0, 1)
        self.assertNotAllClose(
            compiled(attack, model, x, y, x_init=start),
            compiled(attack, model, x, y),
        )


class ConfigTest(tf.test.TestCase):
    def test_settings_config_and_replace(self):
        attack = attacks.FABTargeted(epsilon=0.1)
        self.assertEqual(
            attack.get_config(),
            {
                "epsilon": 0.1,
                "num_steps": 100,
                "num_targets": 9,
                "norm": "linf",
                "restarts": 1,
                "alpha_max": 0.1,
                "eta": 1.05,
                "beta": 0.9,
                "name": "fab_t",
            },
        )
        self.assertTrue(attack.uses_gradients)
        copy = attack.replace(norm="l2", num_steps=5)
        self.assertEqual(copy.threat_model.norm, "l2")
        self.assertEqual((copy.num_steps, copy.name), (5, "fab_t"))
        self.assertIn("fab_t", repr(copy))

    def test_bad_settings(self):
        for bad, pattern in (
            ({"num_steps": 0}, "num_steps"),
            ({"num_targets": 0}, "num_targets"),
            ({"restarts": 0}, "restarts"),
            ({"alpha_max": 1.5}, "alpha_max"),
            ({"beta": -0.1}, "beta"),
            ({"eta": -1.0}, "eta"),
            ({"norm": "l1"}, "norm"),
            ({"epsilon": 2.0}, "epsilon"),
        ):
            with self.assertRaisesRegex(ValueError, pattern):
                attacks.FABTargeted(**{"epsilon": 0.1, **bad})

    def test_few_classes_use_every_other_class(self):
        model = fx.linear_model((4,), 3)
        x, y = fx.interior_data(model, (4,), n=8)
        attack = attacks.FABTargeted(epsilon=1.0, num_steps=5)
        x_adv = compiled(attack, model, x, y)
        self.assertLess(fx.accuracy(model, x_adv, y), 0.5)
        one = fx.linear_model((4,), 1)
        with self.assertRaisesRegex(ValueError, "at least 2 classes"):
            attacks.FABTargeted(epsilon=0.1)(one, x, tf.zeros([8], tf.int32))


class RunnerTest(tf.test.TestCase):
    def test_evaluation_runner_counts_what_the_attack_breaks(self):
        model = fx.linear_model((6, 6, 1), 10)
        x, y = fx.interior_data(model, (6, 6, 1), n=32)
        attack = attacks.FABTargeted(epsilon=0.03, num_steps=10)
        result = evaluation.evaluate_suite(
            model,
            fx.as_dataset(x, y, batch=16),
            suite=[attack],
            epsilon=0.03,
            masking_checks=False,
        )
        direct = fx.accuracy(model, fx.run_attack(attack, model, x, y), y)
        self.assertAlmostEqual(result["robust_accuracy"]["fab_t"], direct)
        self.assertBetween(direct, 0.05, 0.95)
