"""tfadv.methods.taylor: Taylor expansions of per-example losses.

The expansion on a quadratic (exact at order 2), on a linear model against
NumPy, the Hessian-vector product against finite differences, and its
weight gradient; bad arguments. (GAAT's surrogate and guard are built on
these; `methods_gaat_test.py` tests the method.)
"""

import keras
import numpy as np
import tensorflow as tf

from tests import harness
from tfadv import attacks
from tfadv.methods import taylor

EPS = 0.1


def quadratic_problem(seed=0, n=5, d=4):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(d, d))
    a = (a + a.T).astype("float32")
    b = rng.normal(size=(d,)).astype("float32")
    x = rng.uniform(size=(n, d)).astype("float32")
    delta = rng.uniform(-EPS, EPS, size=(n, d)).astype("float32")

    def loss_fn(u):
        quad = 0.5 * tf.reduce_sum((u @ a) * u, axis=-1)
        return quad + tf.reduce_sum(u * b, axis=-1) + 1.0, None

    return a, x, delta, loss_fn


def linear_grad(w, b, x, y):
    """Per-example ∇ₓ CE(xW + b, y) = (p − onehot) Wᵀ."""
    p = harness.softmax(x @ w + b)
    return (p - harness.onehot(y, w.shape[1])) @ w.T


def linear_quadratic(w, b, x, delta):
    """½ δᵀ∇²ₓCE δ = ½ Var_p(δW) for logits linear in x."""
    p = harness.softmax(x @ w + b)
    s = delta @ w
    return 0.5 * ((p * s**2).sum(-1) - (p * s).sum(-1) ** 2)


def linear_loss_fn(classifier, y):
    def loss_fn(u):
        logits = classifier(u, training=False)
        return attacks.objectives.cross_entropy(logits, y), logits

    return loss_fn


def float64_loss_fn(model, y):
    # Cross-entropy in float64, so that finite differences are precise.
    def loss_fn(u):
        logits = model(u, training=False)
        return tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits), None

    return loss_fn


def smooth_model(seed=0, dtype="float64"):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((4,), dtype=dtype),
            keras.layers.Dense(5, activation="tanh", dtype=dtype),
            keras.layers.Dense(3, dtype=dtype),
        ]
    )


class TaylorExpansionTest(tf.test.TestCase):
    def test_order_2_is_exact_on_a_quadratic_and_order_1_is_not(self):
        a, x, delta, loss_fn = quadratic_problem()
        true = loss_fn(tf.constant(x + delta))[0]
        second = taylor.taylor_expansion(loss_fn, x, order=2, delta=delta)
        first = taylor.taylor_expansion(loss_fn, x, order=1, delta=delta)
        self.assertAllClose(second.surrogate, true, atol=1e-5)
        # Order 1 misses exactly the curvature term ½ δᵀAδ.
        curvature = 0.5 * np.einsum("ni,ij,nj->n", delta, a, delta)
        self.assertGreater(np.abs(curvature).min(), 1e-4)
        self.assertAllClose(true - first.surrogate, curvature, atol=1e-5)
        self.assertAllClose(second.quadratic, curvature, atol=1e-5)
        self.assertAllClose(first.quadratic, np.zeros(len(x)))
        self.assertLess(taylor.relative_remainder(true, second.surrogate), 1e-5)
        self.assertGreater(
            taylor.relative_remainder(true, first.surrogate), 1e-4
        )

    def test_order_1_default_delta_on_a_linear_model(self):
        w, b, x, y = harness.linear_problem()
        classifier = harness.linear_model(in_dim=5)
        classifier.layers[0].set_weights([w, b])
        threat = attacks.LinfThreatModel(EPS)
        terms = taylor.taylor_expansion(
            linear_loss_fn(classifier, y),
            x,
            order=1,
            direction=lambda g: taylor.steepest_ascent_delta(threat, x, g),
        )
        grad = linear_grad(w, b, x, y)
        delta = harness.project(x, x + EPS * np.sign(grad), EPS) - x
        want_linear = (delta * grad).sum(-1)
        self.assertAllClose(terms.gradient, grad, atol=1e-6)
        self.assertAllClose(terms.delta, delta, atol=1e-6)
        self.assertAllClose(terms.linear, want_linear, atol=1e-6)
        self.assertAllClose(
            terms.surrogate,
            harness.ce(x @ w + b, y) + want_linear,
            atol=1e-5,
        )
        # Away from the box edges the linear term is ε‖∇ₓℓ‖₁.
        inside = (x >= EPS) & (x <= 1 - EPS)
        self.assertTrue(inside.any() and not inside.all())
        self.assertAllClose(
            (terms.delta.numpy() * grad * inside).sum(-1),
            EPS * (np.abs(grad) * inside).sum(-1),
            atol=1e-6,
        )

    def test_order_2_on_a_linear_model(self):
        w, b, x, y = harness.linear_problem(seed=2)
        classifier = harness.linear_model(in_dim=5)
        classifier.layers[0].set_weights([w, b])
        delta = np.random.default_rng(3).uniform(-EPS, EPS, x.shape)
        terms = taylor.taylor_expansion(
            linear_loss_fn(classifier, y), x, order=2, delta=delta
        )
        self.assertAllClose(
            terms.quadratic, linear_quadratic(w, b, x, delta), atol=1e-6
        )

    def test_hessian_vector_product_matches_finite_differences(self):
        model = smooth_model()
        rng = np.random.default_rng(0)
        x = rng.uniform(size=(6, 4))
        v = rng.normal(size=(6, 4))
        y = tf.constant([0, 1, 2, 0, 1, 2])
        loss_fn = float64_loss_fn(model, y)
        _, _, _, hvp = taylor.input_derivatives(loss_fn, x, tangent=v)
        h = 1e-5
        up = taylor.input_derivatives(loss_fn, x + h * v)[2]
        down = taylor.input_derivatives(loss_fn, x - h * v)[2]
        want = (up - down) / (2 * h)
        self.assertGreater(np.abs(want).max(), 1e-2)
        self.assertAllClose(hvp, want, rtol=1e-6, atol=1e-8)

    def test_outer_tape_differentiates_the_hessian_term(self):
        # The weight gradient of Σ ½ δᵀHδ (through the jvp) against
        # central differences in the weights.
        model = smooth_model(seed=1)
        rng = np.random.default_rng(1)
        x = rng.uniform(size=(6, 4))
        delta = rng.uniform(-EPS, EPS, size=(6, 4))
        y = tf.constant([2, 1, 0, 0, 1, 2])
        loss_fn = float64_loss_fn(model, y)

        def quadratic():
            hvp = taylor.input_derivatives(loss_fn, x, tangent=delta)[3]
            return 0.5 * tf.reduce_sum(delta * hvp)

        with tf.GradientTape() as tape:
            value = quadratic()
        kernel = model.layers[0].kernel
        got = tape.gradient(value, kernel).numpy()
        start = kernel.numpy()
        want = np.zeros_like(start)
        h = 1e-6
        for i in np.ndindex(start.shape):
            values = []
            for sign in (1, -1):
                moved = start.copy()
                moved[i] += sign * h
                kernel.assign(moved)
                values.append(float(quadratic()))
            want[i] = (values[0] - values[1]) / (2 * h)
        kernel.assign(start)
        self.assertGreater(np.abs(want).max(), 1e-4)
        self.assertAllClose(got, want, rtol=1e-5, atol=1e-9)

    def test_order_2_needs_delta(self):
        _, x, _, loss_fn = quadratic_problem()
        with self.assertRaisesRegex(ValueError, "delta for order 2"):
            taylor.taylor_expansion(loss_fn, x, order=2, direction=tf.sign)
        with self.assertRaisesRegex(ValueError, "order must be one of"):
            taylor.taylor_expansion(loss_fn, x, order=3, delta=x)
