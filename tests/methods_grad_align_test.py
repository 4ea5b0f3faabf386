"""GradAlign: the harness, the analytic step, the cosine and its mask.

The one-step test re-derives the reference's loop
(tml-epfl/understanding-fast-adv-training train.py) in NumPy on a linear
model, where the input gradient of each example's cross-entropy is
`(softmax(z) − onehot(y)) Wᵀ`; the regulariser's weight gradient (through
g2, double backpropagation) is taken by central differences in float64.
"""

from unittest import mock

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl.testing import parameterized

from tests import harness
from tests import methods_keras_test
from tfadv import attacks
from tfadv import methods
from tfadv.attacks import base as attack_base
from tfadv.methods import grad_align

LAMBDA = 0.2


def noise(x, eps):
    """A deterministic η in [−ε, ε]; it leaves [0, 1] where x = 0."""
    return -eps * np.sin(37.0 * x + 1.0)


class FixedNoiseGradAlign(methods.GradAlign):
    """GradAlign whose η is `noise(x)`: the same on every replica."""

    def noisy_input(self, x):
        point = x + harness.fixed_start(x, -self.epsilon)
        if self.clip_noisy_input:
            point = tf.clip_by_value(point, 0.0, 1.0)
        return point


def numpy_cosine(g1, g2):
    """The reference's per-example cosine and its mask."""
    n1, n2 = np.linalg.norm(g1, axis=1), np.linalg.norm(g2, axis=1)
    keep = (n1 != 0) & (n2 != 0)
    cos = np.zeros(len(g1))
    cos[keep] = (g1[keep] / n1[keep, None] * g2[keep] / n2[keep, None]).sum(1)
    return cos, keep


def numpy_grad_align_step(w, b, x, y, *, eps, lam, lr, wd, clip_noise):
    """One minibatch of the reference's loop on z = x·W + b (zero init)."""
    targets = harness.onehot(y, w.shape[1])

    def input_grad(inputs, w, b):
        return (harness.softmax(inputs @ w + b) - targets) @ w.T

    g1 = input_grad(x, w, b)  # at x itself: the zero start
    # The reference's step 1.25ε, clipped to the ε-box, then to [0, 1].
    x_adv = harness.project(x, x + 1.25 * eps * np.sign(g1), eps)
    point = x + noise(x, eps)
    if clip_noise:
        point = np.clip(point, 0.0, 1.0)

    def loss(w, b):
        adv = harness.ce(x_adv @ w + b, y).mean()
        cos, keep = numpy_cosine(g1, input_grad(point, w, b))
        reg = lam * (1.0 - cos[keep].mean()) if keep.any() else 0.0
        return adv + reg

    gw, gb = harness.numeric_grad(loss, w, b)
    return w - lr * (gw + wd * w), b - lr * (gb + wd * b)


def make_grad_align(classifier):
    return methods.GradAlign(
        classifier, epsilon=0.1, align_weight=LAMBDA, weight_decay=5e-4
    )


# About 27 s on the shared 2-core CPU (eager, graph and XLA runs of the
# double backprop); the fast tier keeps a graph step and the round trip.
@pytest.mark.slow
class HarnessTest(tf.test.TestCase):
    def test_harness(self):
        harness.run_method_test(self, make_grad_align)


class GradAlignTest(tf.test.TestCase, parameterized.TestCase):
    def test_graph_step_and_round_trip(self):
        x, y = harness.tiny_data()
        method = make_grad_align(harness.tiny_classifier())
        method.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
        harness.check_one_epoch(self, method, x, y)
        harness.check_round_trip(self, method, x, y)

    def test_xla_step(self):
        # The nested tape and the masked cosine compile under XLA. (XLA
        # reorders float sums, so FGSM signs may differ from the graph
        # step's on a few pixels: no exact comparison, as in the harness.)
        x, y = harness.tiny_data()
        method = make_grad_align(harness.tiny_classifier())
        method.compile(optimizer=keras.optimizers.SGD(0.1), jit_compile=True)
        before = [w.numpy() for w in method.classifier.trainable_weights]
        history = method.fit(
            x, y, batch_size=harness.BATCH, epochs=1, verbose=0
        ).history
        for name, values in history.items():
            self.assertTrue(np.isfinite(values[-1]), name)
        after = method.classifier.trainable_weights
        for want, got in zip(before, after, strict=True):
            self.assertTrue(np.all(np.isfinite(got.numpy())), got.path)
            self.assertNotAllClose(want, got.numpy())

    @parameterized.product(
        strategy=["default", "mirrored"],
        setting=[(0.0, False, 0.0), (0.5, False, 0.01), (0.5, True, 0.0)],
    )
    def test_step_on_linear_model(self, strategy, setting):
        lam, clip_noise, wd = setting
        w, b, x, y = harness.linear_problem(seed=6)
        eps, lr = 0.1, 0.5
        _, (got_w, got_b) = harness.fit_linear(
            lambda c: FixedNoiseGradAlign(
                c,
                epsilon=eps,
                align_weight=lam,
                clip_noisy_input=clip_noise,
                weight_decay=wd,
            ),
            w,
            b,
            x,
            y,
            lr=lr,
            strategy=harness.strategy(strategy),
        )
        want_w, want_b = numpy_grad_align_step(
            w, b, x, y, eps=eps, lam=lam, lr=lr, wd=wd, clip_noise=clip_noise
        )
        self.assertAllClose(got_w, want_w, atol=1e-5)
        self.assertAllClose(got_b, want_b, atol=1e-5)
        if lam:  # the regulariser changes the update
            plain_w, _ = numpy_grad_align_step(
                w, b, x, y, eps=eps, lam=0.0, lr=lr, wd=wd, clip_noise=False
            )
            self.assertGreater(np.abs(got_w - plain_w).max(), 1e-3)
        # The noisy point leaves the box unless clipped (x = 0 there).
        point = x + noise(x, eps)
        self.assertLess(point.min(), -0.05)

    @parameterized.parameters("default", "mirrored")
    def test_zero_gradients_give_no_regulariser(self, strategy):
        # W = 0: every input gradient is exactly zero, every example is
        # dropped, and the regulariser is 0 (not the reference's NaN).
        w, b, x, y = harness.linear_problem(seed=6)
        w = np.zeros_like(w)
        _, got = harness.fit_linear(
            lambda c: FixedNoiseGradAlign(c, epsilon=0.1, align_weight=5.0),
            w,
            b,
            x,
            y,
            lr=0.5,
            strategy=harness.strategy(strategy),
        )
        want = numpy_grad_align_step(
            w, b, x, y, eps=0.1, lam=5.0, lr=0.5, wd=0.0, clip_noise=False
        )
        for g, h in zip(got, want, strict=True):
            self.assertTrue(np.all(np.isfinite(g)))
            self.assertAllClose(g, h, atol=1e-5)
        self.assertGreater(np.abs(got[0]).max(), 1e-3)

    def test_a_weighted_batch_trains_as_its_weighted_part(self):
        w, b, x, y = harness.linear_problem(seed=5)
        weights = np.array([2.0] * 4 + [0.0] * 4, "float32")

        def fit(x, y, sample_weight=None):
            return methods_keras_test.fit_batch(
                lambda c: FixedNoiseGradAlign(c, epsilon=0.1, align_weight=0.5),
                methods_keras_test.linear_classifier(w, b),
                x,
                y,
                sample_weight,
            )

        got = fit(x, y, weights)
        want = fit(x[:4], y[:4])
        for g, h in zip(got, want, strict=True):
            self.assertAllClose(g, h, atol=1e-5)
        self.assertNotAllClose(got[0], fit(x, y)[0])


def _tiny(policy):
    keras.mixed_precision.set_dtype_policy(policy)
    try:
        return harness.tiny_classifier()
    finally:
        keras.mixed_precision.set_dtype_policy("float32")


class MixedPrecisionTest(tf.test.TestCase):
    def test_mixed_float16_trains(self):
        method = methods.GradAlign(
            _tiny("mixed_float16"), epsilon=0.1, align_weight=1.0
        )
        optimizer = keras.mixed_precision.LossScaleOptimizer(
            keras.optimizers.SGD(0.05, momentum=0.9)
        )
        method.compile(optimizer=optimizer)
        x, y = harness.tiny_data()
        before = [w.numpy() for w in method.classifier.trainable_weights]
        history = method.fit(
            x, y, batch_size=harness.BATCH, epochs=1, verbose=0
        ).history
        self.assertTrue(np.isfinite(history["loss"][-1]), history)
        after = method.classifier.trainable_weights
        for weight in after:
            self.assertEqual(weight.dtype, "float32")  # the master copy
        self.assertTrue(
            any(
                not np.array_equal(a, b.numpy())
                for a, b in zip(before, after, strict=True)
            )
        )

    def test_the_float16_noisy_gradient_keeps_float32s_direction(self):
        exact, half = _tiny("float32"), _tiny("mixed_float16")
        half.set_weights(exact.get_weights())
        self.assertEqual(half.compute_dtype, "float16")
        x, y = harness.tiny_data(16)
        scaled = []
        for_gradient = attack_base.for_gradient

        def spy(total, per_example):
            scaled.append(tuple(per_example.shape))
            return for_gradient(total, per_example)

        def g2(model):
            method = methods.GradAlign(
                model, epsilon=0.1, align_weight=LAMBDA, seed=3
            )
            return method.noisy_gradient(tf.constant(x), tf.constant(y))

        want = g2(exact)
        with mock.patch.object(attack_base, "for_gradient", spy):
            got = g2(half)
        # The inner per-example losses were scaled (by a power of two).
        self.assertIn((16,), scaled)
        self.assertEqual(got.dtype, tf.float32)
        cosine, keep = grad_align.gradient_cosine(want, got)
        self.assertAllEqual(keep, [True] * 16)
        self.assertGreater(float(tf.reduce_min(cosine)), 0.99)


class CosineTest(tf.test.TestCase):
    def test_per_example_cosine_and_mask(self):
        rng = np.random.default_rng(0)
        g1 = rng.normal(size=(6, 2, 3, 2)).astype("float32")
        g2 = rng.normal(size=(6, 2, 3, 2)).astype("float32")
        g1[1] = 0.0
        g2[4] = 0.0
        g2[2] = -3.0 * g1[2]  # opposite: cosine -1
        cos, keep = grad_align.gradient_cosine(g1, g2)
        want_cos, want_keep = numpy_cosine(
            g1.reshape(6, -1).astype(np.float64), g2.reshape(6, -1)
        )
        self.assertAllEqual(keep, want_keep)
        self.assertAllEqual(keep, [True, False, True, True, False, True])
        self.assertAllClose(cos, want_cos, atol=1e-6)
        self.assertAllClose(cos[2], -1.0, atol=1e-6)
        # Tiny gradients (float16-sized) keep their direction.
        tiny, _ = grad_align.gradient_cosine(g1 * 1e-30, g2 * 1e-30)
        self.assertAllClose(tiny, want_cos, atol=1e-6)

    def test_gradient_is_finite_for_dropped_examples(self):
        g1 = tf.constant([[1.0, 2.0], [0.0, 0.0]])
        g2 = tf.Variable([[0.5, -1.0], [0.0, 0.0]])
        with tf.GradientTape() as tape:
            cos, keep = grad_align.gradient_cosine(g1, g2)
            total = tf.reduce_sum(cos)
        grad = tape.gradient(total, g2)
        self.assertAllEqual(keep, [True, False])
        self.assertTrue(np.all(np.isfinite(grad.numpy())))
        self.assertAllEqual(grad[1], [0.0, 0.0])

    def test_masked_mean_is_the_global_batchs_across_replicas(self):
        # Replica 0 drops one example, replica 1 none: the mean is over
        # the 7 kept examples of the global batch, as on one device.
        values = np.arange(8, dtype="float32") + 1.0
        keep = np.array([0, 1, 1, 1, 1, 1, 1, 1], bool)
        want = values[keep].mean()
        one = grad_align.masked_replica_mean(values, keep)
        self.assertAllClose(one, want)
        strategy = harness.mirrored()

        def shard(context):
            i = context.replica_id_in_sync_group
            return (
                tf.constant(values[4 * i : 4 * i + 4]),
                tf.constant(keep[4 * i : 4 * i + 4]),
            )

        parts = strategy.experimental_distribute_values_from_function(shard)
        shares = strategy.run(
            lambda part: grad_align.masked_replica_mean(*part), args=(parts,)
        )
        total = strategy.reduce(tf.distribute.ReduceOp.SUM, shares, axis=None)
        self.assertAllClose(total, want)
        # Nothing kept anywhere: 0.
        self.assertAllClose(
            grad_align.masked_replica_mean(values, np.zeros(8, bool)), 0.0
        )


class ArgumentsTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters(8 / 255, 0.1)
    def test_default_attack_is_fgsm_from_zero(self, epsilon):
        method = methods.GradAlign(
            harness.tiny_classifier(), epsilon=epsilon, align_weight=LAMBDA
        )
        attack = method.train_attack
        self.assertIsInstance(attack, attacks.ProjectedGradient)
        self.assertEqual(attack.start, "none")
        self.assertEqual(attack.num_steps, 1)
        self.assertNear(attack.step_size, 1.25 * epsilon, 1e-9)
        self.assertFalse(method.random_init)
        self.assertFalse(method.clip_noisy_input)
        self.assertTrue(method.attack_training_mode)
        randomised = methods.GradAlign(
            harness.tiny_classifier(),
            epsilon=epsilon,
            align_weight=LAMBDA,
            random_init=True,
        )
        self.assertEqual(randomised.train_attack.start, "uniform")
        self.assertTrue(randomised.random_init)

    def test_fgsm_from_zero_is_an_epsilon_step(self):
        method = methods.GradAlign(
            harness.tiny_classifier(), epsilon=0.1, align_weight=LAMBDA
        )
        x, y = harness.tiny_data()
        x = np.clip(x, 0.2, 0.8)
        x_adv, g1 = method.fgsm(tf.constant(x), tf.constant(y))
        delta = x_adv.numpy() - x
        self.assertAllClose(delta, 0.1 * np.sign(g1.numpy()), atol=1e-6)
        self.assertGreater(np.mean(np.abs(delta) > 0.099), 0.9)

    def test_a_multi_step_attack_continues_from_the_first_step(self):
        method = methods.GradAlign(
            harness.tiny_classifier(),
            train_attack=harness.pgd(num_steps=3, start="none"),
            align_weight=LAMBDA,
        )
        x, y = harness.tiny_data()
        x_adv, _ = method.fgsm(tf.constant(x), tf.constant(y))
        self.assertLessEqual(np.abs(x_adv.numpy() - x).max(), 0.1 + 1e-6)

    def test_bad_arguments(self):
        classifier = harness.tiny_classifier()
        with self.assertRaisesRegex(ValueError, "needs its training budget"):
            methods.GradAlign(classifier, align_weight=LAMBDA)
        with self.assertRaisesRegex(
            ValueError, r"align_weight=.*λ = 0\.2 at ε = 8/255"
        ):
            methods.GradAlign(classifier, epsilon=0.1)
        with self.assertRaisesRegex(ValueError, "align_weight"):
            methods.GradAlign(classifier, epsilon=0.1, align_weight=-1.0)
        with self.assertRaisesRegex(ValueError, "random_init"):
            methods.GradAlign(
                classifier,
                train_attack=harness.pgd(),
                align_weight=LAMBDA,
                random_init=True,
            )
        with self.assertRaisesRegex(ValueError, "restarts=1"):
            methods.GradAlign(
                classifier,
                train_attack=harness.pgd(restarts=2),
                align_weight=LAMBDA,
            )
        with self.assertRaisesRegex(TypeError, "ProjectedGradient"):
            methods.GradAlign(
                classifier,
                train_attack=attacks.NoiseFGSM(epsilon=0.1),
                align_weight=LAMBDA,
            )
