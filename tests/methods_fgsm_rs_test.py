"""FGSM-RS: the shared harness, the analytic step, its default attack."""

import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from tests import harness
from tfadv import attacks
from tfadv import methods


class FGSMRSTest(tf.test.TestCase, parameterized.TestCase):
    def test_harness(self):
        harness.run_method_test(
            self, lambda c: methods.FGSMRS(c, epsilon=0.1, weight_decay=5e-4)
        )

    @parameterized.product(strategy=["default", "mirrored"], wd=[0.0, 0.01])
    def test_fgsm_step_on_linear_model(self, strategy, wd):
        # The reference's step of 1.25 epsilon, without the random start.
        w, b, x, y = harness.linear_problem()
        eps, lr = 0.1, 0.5
        _, (got_w, got_b) = harness.fit_linear(
            lambda c: methods.FGSMRS(
                c,
                train_attack=attacks.ProjectedGradient(
                    epsilon=eps,
                    step_size=1.25 * eps,
                    num_steps=1,
                    start="none",
                ),
                weight_decay=wd,
            ),
            w,
            b,
            x,
            y,
            lr=lr,
            strategy=harness.strategy(strategy),
        )
        want_w, want_b = harness.numpy_pgd_at_step(
            w,
            b,
            x,
            y,
            eps=eps,
            step=1.25 * eps,
            k=1,
            lr=lr,
            wd=wd,
            clean_weight=0.0,
        )
        self.assertAllClose(got_w, want_w, atol=1e-5)
        self.assertAllClose(got_b, want_b, atol=1e-5)
        self.assertGreater(np.abs(want_w - w).max(), 1e-3)

    # The paper's budget, given: tfadv has no default for it.
    @parameterized.parameters((8 / 255, 8 / 255), (0.1, 0.1))
    def test_default_attack(self, epsilon, want_epsilon):
        method = methods.FGSMRS(harness.tiny_classifier(), epsilon=epsilon)
        attack = method.train_attack
        self.assertIsInstance(attack, attacks.ProjectedGradient)
        self.assertNear(method.epsilon, want_epsilon, 1e-9)
        self.assertNear(attack.step_size, 1.25 * want_epsilon, 1e-9)
        self.assertEqual(attack.num_steps, 1)
        self.assertEqual(attack.start, "uniform")
        self.assertTrue(method.attack_training_mode)

    def test_bad_arguments(self):
        classifier = harness.tiny_classifier()
        with self.assertRaisesRegex(ValueError, "step_size.*-0.1"):
            methods.FGSMRS(
                classifier,
                train_attack=attacks.ProjectedGradient(
                    epsilon=0.1, step_size=-0.1, num_steps=1
                ),
            )
        with self.assertRaisesRegex(ValueError, "epsilon.*2.0"):
            methods.FGSMRS(classifier, epsilon=2.0)
