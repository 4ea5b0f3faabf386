"""tfadv.methods.backward_smoothing, and its baselines by gin.

The harness; one SGD step on a linear model against NumPy on one device and
under a 2-replica MirroredStrategy; the passes per minibatch that
docs/algorithms.md §3.4 counts (against TRADES-10); Fast-TRADES and Fast-AT
from the same pieces through their gin files.
"""

import gin
import keras
import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from tests import attacks_backward_smoothing_test as bs_test
from tests import harness
from tfadv import attacks
from tfadv import methods
from tfadv import train


class HarnessTest(tf.test.TestCase):
    def test_backward_smoothing(self):
        harness.run_method_test(
            self,
            lambda c: methods.BackwardSmoothing(
                c, epsilon=0.1, weight_decay=5e-4
            ),
        )

    def test_defaults_are_the_documented_setting(self):
        method = methods.BackwardSmoothing(
            harness.tiny_classifier(), epsilon=0.031
        )
        attack = method.train_attack
        self.assertIsInstance(attack, attacks.BackwardSmoothingAttack)
        self.assertAllClose(method.epsilon, 0.031)
        self.assertAllClose(attack.step_size, 0.031)
        self.assertEqual((attack.num_steps, attack.gamma), (1, 1.0))
        self.assertEqual(method.beta, 10.0)
        self.assertFalse(method.attack_training_mode)


def numpy_backward_smoothing_step(w, b, x, y, *, eps, alpha, k, beta, lr, wd):
    x_adv = bs_test.numpy_backward_smoothing(
        w, b, x, eps=eps, alpha=alpha, k=k, gamma=1.0
    )

    def loss(w, b):
        z, z_adv = x @ w + b, x_adv @ w + b
        return harness.ce(z, y).mean() + beta * harness.kl(z, z_adv).mean()

    gw, gb = harness.numeric_grad(loss, w, b)
    return w - lr * (gw + wd * w), b - lr * (gb + wd * b)


class AnalyticStepTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.product(strategy=["default", "mirrored"], wd=[0.0, 0.01])
    def test_one_step_on_linear_model(self, strategy, wd):
        w, b, x, y = harness.linear_problem(seed=6)
        eps, alpha, k, beta, lr = 0.1, 0.05, 1, 10.0, 0.2
        _, (got_w, got_b) = harness.fit_linear(
            lambda c: methods.BackwardSmoothing(
                c,
                train_attack=bs_test.FixedTarget(
                    epsilon=eps, step_size=alpha, num_steps=k
                ),
                beta=beta,
                weight_decay=wd,
            ),
            w,
            b,
            x,
            y,
            lr=lr,
            strategy=harness.strategy(strategy),
        )
        want_w, want_b = numpy_backward_smoothing_step(
            w, b, x, y, eps=eps, alpha=alpha, k=k, beta=beta, lr=lr, wd=wd
        )
        self.assertAllClose(got_w, want_w, atol=1e-5)
        self.assertAllClose(got_b, want_b, atol=1e-5)
        self.assertGreater(np.abs(want_w - w).max(), 1e-3)


class Counter(keras.layers.Layer):
    """Identity that counts forward calls and backward passes (eagerly)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.forward = 0
        self.backward = 0

    def call(self, x):
        self.forward += 1

        @tf.custom_gradient
        def identity(t):
            def grad(upstream):
                self.backward += 1
                return upstream

            return tf.identity(t), grad

        return identity(x)


class PassCountTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.named_parameters(
        # 1 clean forward, the init and K = 1 steps (F + B each), the
        # update's 2 forwards and a backward through each of them.
        ("backward_smoothing", methods.BackwardSmoothing, {}, 5, 4),
        # TRADES-10: the clean distribution once, 10 steps, the update.
        ("trades_10", methods.TRADES, {}, 13, 12),
    )
    def test_passes_per_minibatch(self, cls, kwargs, forwards, backwards):
        counter = Counter()
        classifier = keras.Sequential(
            # After the weights, so the update's backward passes through it.
            [keras.Input((5,)), keras.layers.Dense(3), counter]
        )
        method = cls(classifier, epsilon=0.1, **kwargs)
        method.compile(optimizer=keras.optimizers.SGD(0.1), run_eagerly=True)
        counter.forward = counter.backward = 0
        x = np.random.default_rng(0).uniform(size=(8, 5)).astype("float32")
        y = np.arange(8) % 3
        method.fit(x, y, batch_size=8, epochs=1, verbose=0)
        self.assertEqual(counter.forward, forwards)
        self.assertEqual(counter.backward, backwards)


class BaselinesByGinTest(tf.test.TestCase):
    def _method(self, gin_file):
        train.parse_gin([gin_file], [])
        cls = gin.query_parameter("run.method_cls").selector
        self.assertIn(cls, ("TRADES", "PGDAT"))
        method_cls = {"TRADES": methods.TRADES, "PGDAT": methods.PGDAT}[cls]
        return gin.get_configurable(method_cls)(harness.tiny_classifier())

    def test_fast_trades_is_trades_with_a_uniform_one_step_attack(self):
        method = self._method("fast_trades.gin")
        attack = method.train_attack
        self.assertIsInstance(method, methods.TRADES)
        self.assertEqual((attack.start, attack.num_steps), ("uniform", 1))
        self.assertAllClose(attack.step_size, method.epsilon)
        self.assertEqual(attack.objective.__name__, "kl_to_clean")
        self.assertFalse(method.attack_training_mode)

    def test_fast_at_is_pgd_at_with_one_step_of_epsilon_in_eval_mode(self):
        method = self._method("fast_at.gin")
        attack = method.train_attack
        self.assertIsInstance(method, methods.PGDAT)
        self.assertEqual((attack.start, attack.num_steps), ("uniform", 1))
        self.assertAllClose(attack.step_size, method.epsilon)
        self.assertFalse(method.attack_training_mode)
