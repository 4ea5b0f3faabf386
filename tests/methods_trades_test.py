"""TRADES: the shared harness, the analytic step, its default attack."""

import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from tests import harness
from tfadv import attacks
from tfadv import methods
from tfadv.attacks import objectives


def kl_attack(eps=0.1, step=0.03, k=3, **kwargs):
    kwargs = {"start": "gaussian", "start_stddev": 0.001, **kwargs}
    return attacks.ProjectedGradient(
        epsilon=eps, step_size=step, num_steps=k, objective="kl", **kwargs
    )


class TRADESTest(tf.test.TestCase, parameterized.TestCase):
    def test_harness(self):
        harness.run_method_test(
            self, lambda c: methods.TRADES(c, train_attack=kl_attack())
        )

    @parameterized.product(strategy=["default", "mirrored"], wd=[0.0, 0.01])
    def test_trades_step_on_linear_model(self, strategy, wd):
        w, b, x, y = harness.linear_problem(seed=2)
        eps, step, k, beta, lr = 0.1, 0.03, 4, 6.0, 0.5

        # A deterministic start in place of x + 0.001·N(0, I), unprojected
        # like it.
        def start(x):
            return 0.02 * tf.cos(100.0 * x)

        _, (got_w, got_b) = harness.fit_linear(
            lambda c: methods.TRADES(
                c,
                train_attack=harness.FixedStartPGD(
                    start_fn=start,
                    epsilon=eps,
                    step_size=step,
                    num_steps=k,
                    objective="kl",
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
        x0 = x + 0.02 * np.cos(100.0 * x)
        want_w, want_b = harness.numpy_trades_step(
            w, b, x, y, x0, eps=eps, step=step, k=k, beta=beta, lr=lr, wd=wd
        )
        self.assertAllClose(got_w, want_w, atol=1e-5)
        self.assertAllClose(got_b, want_b, atol=1e-5)
        self.assertGreater(np.abs(want_w - w).max(), 1e-3)

    # The paper's budget, given: tfadv has no default for it.
    @parameterized.parameters((0.031, 0.031), (0.1, 0.1))
    def test_default_attack(self, epsilon, want_epsilon):
        method = methods.TRADES(harness.tiny_classifier(), epsilon=epsilon)
        attack = method.train_attack
        self.assertNear(method.epsilon, want_epsilon, 1e-9)
        self.assertNear(attack.step_size, 0.007 / 0.031 * want_epsilon, 1e-9)
        self.assertEqual(attack.num_steps, 10)
        self.assertEqual(attack.start, "gaussian")
        self.assertNear(attack.start_stddev, 0.001, 1e-12)
        self.assertIs(attack.objective, objectives.kl_to_clean)
        self.assertFalse(method.attack_training_mode)
        self.assertEqual(method.beta, 6.0)

    def test_kl_attack_targets_the_clean_distribution(self):
        classifier = harness.tiny_classifier()
        x, y = harness.tiny_data()
        method = methods.TRADES(classifier, train_attack=kl_attack())
        self.assertAllClose(
            method.attack_target(x, y),
            tf.nn.softmax(classifier(x, training=False)),
        )
        # Another objective attacks the labels.
        labels = methods.TRADES(classifier, train_attack=harness.pgd())
        self.assertIs(labels.attack_target(x, y), y)

    def test_bad_arguments(self):
        classifier = harness.tiny_classifier()
        with self.assertRaisesRegex(ValueError, "beta.*-1.0"):
            methods.TRADES(classifier, epsilon=0.031, beta=-1.0)
        with self.assertRaisesRegex(ValueError, "start_stddev.*-0.5"):
            methods.TRADES(
                classifier, train_attack=kl_attack(start_stddev=-0.5)
            )
        with self.assertRaisesRegex(ValueError, "num_steps.*-1"):
            methods.TRADES(classifier, train_attack=kl_attack(k=-1))
        with self.assertRaisesRegex(ValueError, "epsilon.*1.5"):
            methods.TRADES(classifier, epsilon=1.5)
        with self.assertRaisesRegex(ValueError, "epsilon=0.2.*0.1"):
            methods.TRADES(classifier, train_attack=kl_attack(), epsilon=0.2)
