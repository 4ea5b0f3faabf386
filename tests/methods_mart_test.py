"""MART: the shared harness, the analytic step, its default attack."""

import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from tests import harness
from tfadv import attacks
from tfadv import methods
from tfadv.attacks import objectives


def ce_attack(eps=0.1, step=0.03, k=3, **kwargs):
    kwargs = {"start": "gaussian", "start_stddev": 0.001, **kwargs}
    return attacks.ProjectedGradient(
        epsilon=eps,
        step_size=step,
        num_steps=k,
        objective="cross_entropy",
        **kwargs,
    )


class MARTTest(tf.test.TestCase, parameterized.TestCase):
    def test_harness(self):
        harness.run_method_test(
            self,
            lambda c: methods.MART(
                c, train_attack=ce_attack(), weight_decay=5e-4
            ),
        )

    @parameterized.product(strategy=["default", "mirrored"], wd=[0.0, 0.01])
    def test_mart_step_on_linear_model(self, strategy, wd):
        w, b, x, y = harness.linear_problem(seed=3)
        eps, step, k, beta, lr = 0.1, 0.03, 4, 6.0, 0.5
        _, (got_w, got_b) = harness.fit_linear(
            lambda c: methods.MART(
                c,
                # A Gaussian start of zero spread: PGD from x itself.
                train_attack=ce_attack(eps, step, k, start_stddev=0.0),
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
        want_w, want_b = harness.numpy_mart_step(
            w, b, x, y, eps=eps, step=step, k=k, beta=beta, lr=lr, wd=wd
        )
        self.assertAllClose(got_w, want_w, atol=1e-5)
        self.assertAllClose(got_b, want_b, atol=1e-5)
        self.assertGreater(np.abs(want_w - w).max(), 1e-3)

    # The paper's budget, given: tfadv has no default for it.
    @parameterized.parameters((0.031, 0.031), (0.1, 0.1))
    def test_default_attack(self, epsilon, want_epsilon):
        method = methods.MART(harness.tiny_classifier(), epsilon=epsilon)
        attack = method.train_attack
        self.assertNear(method.epsilon, want_epsilon, 1e-9)
        self.assertNear(attack.step_size, 0.007 / 0.031 * want_epsilon, 1e-9)
        self.assertEqual(attack.num_steps, 10)
        self.assertEqual(attack.start, "gaussian")
        self.assertNear(attack.start_stddev, 0.001, 1e-12)
        self.assertIs(attack.objective, objectives.cross_entropy)
        self.assertFalse(method.attack_training_mode)
        self.assertEqual(method.beta, 6.0)

    def test_bad_arguments(self):
        classifier = harness.tiny_classifier()
        with self.assertRaisesRegex(ValueError, "beta.*-6.0"):
            methods.MART(classifier, epsilon=0.031, beta=-6.0)
        with self.assertRaisesRegex(ValueError, "step_size.*-0.007"):
            methods.MART(classifier, train_attack=ce_attack(step=-0.007))
        with self.assertRaisesRegex(ValueError, "start_stddev.*-0.001"):
            methods.MART(classifier, train_attack=ce_attack(start_stddev=-1e-3))
