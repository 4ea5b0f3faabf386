"""N-FGSM: the shared harness, the analytic step, its default perturbation."""

import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from tests import harness
from tfadv import attacks
from tfadv import methods


class FixedNoiseFGSM(attacks.NoiseFGSM):
    """N-FGSM's perturbation from a deterministic "noise" of up to kε.

    The same start on every replica and call (the seed is not used), so
    the one-step test can follow it in NumPy.
    """

    def __call__(self, model, x, y, *, seed=None, training=False, x_init=None):
        del x_init
        scale = self.noise_factor * self.epsilon
        start = x + harness.fixed_start(x, scale)
        return super().__call__(
            model, x, y, seed=seed, training=training, x_init=start
        )


def numpy_n_fgsm_step(w, b, x, y, *, eps, k, alpha, lr, wd):
    """The reference's loop (pdejorge/N-FGSM train.py) on z = x·W + b."""
    targets = harness.onehot(y, w.shape[1])
    start = np.clip(x + k * eps * np.sin(37.0 * x + 1.0), 0.0, 1.0)
    grad_x = (harness.softmax(start @ w + b) - targets) @ w.T
    delta = np.clip(start + alpha * np.sign(grad_x), 0.0, 1.0) - x
    # No projection onto the ε-ball: the examples reach (k + 1)ε.
    x_adv = x + delta
    n = len(x)
    p = harness.softmax(x_adv @ w + b)
    gw = x_adv.T @ (p - targets) / n
    gb = (p - targets).mean(0)
    return w - lr * (gw + wd * w), b - lr * (gb + wd * b), delta


class NFGSMTest(tf.test.TestCase, parameterized.TestCase):
    def test_harness(self):
        harness.run_method_test(
            self, lambda c: methods.NFGSM(c, epsilon=0.1, weight_decay=5e-4)
        )

    @parameterized.product(strategy=["default", "mirrored"], wd=[0.0, 0.01])
    def test_step_on_linear_model(self, strategy, wd):
        w, b, x, y = harness.linear_problem(seed=3)
        eps, lr = 0.1, 0.5
        _, (got_w, got_b) = harness.fit_linear(
            lambda c: methods.NFGSM(
                c, train_attack=FixedNoiseFGSM(epsilon=eps), weight_decay=wd
            ),
            w,
            b,
            x,
            y,
            lr=lr,
            strategy=harness.strategy(strategy),
        )
        want_w, want_b, delta = numpy_n_fgsm_step(
            w, b, x, y, eps=eps, k=2.0, alpha=eps, lr=lr, wd=wd
        )
        self.assertAllClose(got_w, want_w, atol=1e-5)
        self.assertAllClose(got_b, want_b, atol=1e-5)
        self.assertGreater(np.abs(want_w - w).max(), 1e-3)
        # The step trained outside the ε-ball, within 3ε.
        self.assertGreater(np.abs(delta).max(), 1.5 * eps)
        self.assertLessEqual(np.abs(delta).max(), 3 * eps + 1e-6)

    def test_the_perturbation_leaves_the_ball(self):
        method = methods.NFGSM(harness.tiny_classifier(), epsilon=0.1, seed=2)
        x, y = harness.tiny_data()
        x = np.clip(x, 0.3, 0.7)  # away from the box: nothing is clipped
        x_adv = method.perturb(tf.constant(x), tf.constant(y)).numpy()
        reach = np.abs(x_adv - x).max()
        self.assertGreater(reach, 0.2)
        self.assertLessEqual(reach, 0.3 + 1e-6)
        self.assertAllInRange(x_adv, 0.0, 1.0)

    # The paper's budget, given: tfadv has no default for it.
    @parameterized.parameters(8 / 255, 0.1)
    def test_default_perturbation(self, epsilon):
        method = methods.NFGSM(harness.tiny_classifier(), epsilon=epsilon)
        attack = method.train_attack
        self.assertIsInstance(attack, attacks.NoiseFGSM)
        self.assertNear(method.epsilon, epsilon, 1e-9)
        self.assertNear(attack.noise_factor, 2.0, 1e-9)
        self.assertNear(attack.step_size, epsilon, 1e-9)
        self.assertIsNone(attack.clip_factor)
        self.assertNear(attack.reach, 3 * epsilon, 1e-9)
        self.assertTrue(method.attack_training_mode)
        self.assertNear(methods.NFGSM.paper_epsilon, 8 / 255, 1e-9)

    def test_the_perturbation_is_refused_for_evaluation(self):
        with self.assertRaisesRegex(ValueError, "NoiseFGSM|training"):
            methods.NFGSM(
                harness.tiny_classifier(),
                epsilon=0.1,
                eval_attack=attacks.NoiseFGSM(epsilon=0.1),
            )

    def test_bad_arguments(self):
        classifier = harness.tiny_classifier()
        with self.assertRaisesRegex(ValueError, "needs its training budget"):
            methods.NFGSM(classifier)
        with self.assertRaisesRegex(ValueError, "epsilon.*2.0"):
            methods.NFGSM(classifier, epsilon=2.0)
        with self.assertRaisesRegex(ValueError, r"epsilon=0\.1.*0\.2"):
            methods.NFGSM(
                classifier,
                epsilon=0.1,
                train_attack=attacks.NoiseFGSM(epsilon=0.2),
            )
