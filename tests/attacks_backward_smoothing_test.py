"""tfadv.attacks.backward_smoothing: the Backward Smoothing attack.

NumPy references on the linear-softmax model `z = x·W + b`, whose input
Jacobian is `Wᵀ`, so the initialisation's direction is the sign of
`(p − q)·Wᵀ` (docs/algorithms.md §3.2).
"""

import keras
import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from tests import harness
from tfadv import attacks


def linear(w, b):
    model = keras.Sequential(
        [keras.Input((w.shape[0],)), keras.layers.Dense(w.shape[1])]
    )
    model.layers[0].set_weights([w, b])
    return model


class FixedTarget(attacks.BackwardSmoothingAttack):
    """The smoothed target `softmax(z0 + γ·u)` with a known `u` in [−1, 1].

    `u` is a function of each example's own logits, so it is the same on
    one device and on every replica.
    """

    def smoothed_target(self, clean_logits, seed):
        del seed
        clean_logits = tf.cast(clean_logits, tf.float32)
        return tf.nn.softmax(
            clean_logits + self.gamma * fixed_noise(clean_logits)
        )


def fixed_noise(logits):
    return (
        np.sin(5.0 * logits + 1.0)
        if isinstance(logits, np.ndarray)
        else tf.sin(5.0 * logits + 1.0)
    )


def numpy_backward_smoothing(w, b, x, *, eps, alpha, k, gamma):
    """The reference's attack: init towards q, then K TRADES steps."""
    z0 = x @ w + b
    p = harness.softmax(z0)
    q = harness.softmax(z0 + gamma * fixed_noise(z0))
    # ∇ KL(q ‖ softmax(f(x'))) at x' = x is (p − q)·Wᵀ; descend it.
    x_adv = harness.project(x, x - alpha * np.sign((p - q) @ w.T), eps)
    for _ in range(k):
        q_adv = harness.softmax(x_adv @ w + b)
        grad = (q_adv - p) @ w.T  # ∇ KL(p ‖ softmax(f(x'))), ascend it
        x_adv = harness.project(x, x_adv + alpha * np.sign(grad), eps)
    return x_adv


class InitialisationTest(tf.test.TestCase):
    def test_direction_is_the_sign_of_jacobian_times_p_minus_q(self):
        w, b, x, _ = harness.linear_problem(seed=3)
        model = linear(w, b)
        attack = attacks.BackwardSmoothingAttack(epsilon=0.1, step_size=0.05)
        rng = np.random.default_rng(0)
        q = harness.softmax(rng.normal(size=(len(x), w.shape[1])))
        p = harness.softmax(x @ w + b)
        got = attack.initialise(
            model,
            tf.constant(x),
            tf.constant(p, tf.float32),
            tf.constant(q, tf.float32),
            training=False,
            x_init=None,
        )
        direction = np.sign((p - q) @ w.T)
        self.assertGreater(np.abs(direction).sum(), 0)
        want = harness.project(x, x - 0.05 * direction, 0.1)
        self.assertAllClose(got, want, atol=1e-6)
        # The sign matters: the opposite step is FGSM-like, away from q.
        self.assertNotAllClose(
            got, harness.project(x, x + 0.05 * direction, 0.1)
        )

    def test_zero_gamma_gives_a_zero_initialisation_step(self):
        classifier = harness.tiny_classifier()
        x, y = harness.tiny_data()
        attack = attacks.BackwardSmoothingAttack(
            epsilon=0.1, num_steps=0, gamma=0.0
        )
        for seed in range(3):
            self.assertAllEqual(attack(classifier, x, y, seed=seed), x)
        moved = attacks.BackwardSmoothingAttack(epsilon=0.1, num_steps=0)
        self.assertGreater(
            np.abs(moved(classifier, x, y, seed=0) - x).max(), 0.05
        )

    def test_logit_noise_is_uniform_and_fresh_per_seed(self):
        attack = attacks.BackwardSmoothingAttack(epsilon=0.1, gamma=2.0)
        logits = tf.zeros((512, 4))
        seed = tf.constant([1, 2], tf.int32)
        target = attack.smoothed_target(logits, seed)
        again = attack.smoothed_target(logits, seed)
        other = attack.smoothed_target(logits, tf.constant([1, 3], tf.int32))
        self.assertAllEqual(target, again)
        self.assertNotAllClose(target, other)
        # softmax(γ·u) with u in [−1, 1]: log-ratios lie within 2γ.
        log_ratio = np.log(target.numpy()) - np.log(target.numpy()[:, :1])
        self.assertLessEqual(np.abs(log_ratio).max(), 4.0 + 1e-5)
        self.assertGreater(np.abs(log_ratio).max(), 3.0)


class AttackTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters(0, 1, 3)
    def test_matches_numpy_reference(self, k):
        w, b, x, y = harness.linear_problem(seed=4)
        attack = FixedTarget(epsilon=0.1, step_size=0.04, num_steps=k)
        got = attack(linear(w, b), x, y, seed=0)
        want = numpy_backward_smoothing(
            w, b, x, eps=0.1, alpha=0.04, k=k, gamma=1.0
        )
        self.assertAllClose(got, want, atol=1e-6)

    def test_trades_steps_ascend_kl_clean_to_adversarial(self):
        # KL(p ‖ p') rises over the TRADES steps, p the clean distribution.
        w, b, x, y = harness.linear_problem(seed=5)
        model = linear(w, b)

        def kl_to_clean(x_adv):
            return harness.kl(x @ w + b, np.asarray(x_adv) @ w + b).mean()

        start = FixedTarget(epsilon=0.1, step_size=0.02, num_steps=0)
        stepped = FixedTarget(epsilon=0.1, step_size=0.02, num_steps=4)
        self.assertGreater(
            kl_to_clean(stepped(model, x, y, seed=0)),
            kl_to_clean(start(model, x, y, seed=0)),
        )

    def test_inside_ball_and_box_without_gradient(self):
        classifier = harness.tiny_classifier()
        x, y = harness.tiny_data()
        x = tf.constant(x)
        attack = attacks.BackwardSmoothingAttack(epsilon=0.1, num_steps=2)
        with tf.GradientTape() as tape:
            tape.watch(x)
            x_adv = attack(classifier, x, y, seed=1)
        self.assertIsNone(tape.gradient(x_adv, x))
        self.assertLessEqual(np.abs(x_adv - x).max(), 0.1 + 1e-6)
        self.assertBetween(float(tf.reduce_min(x_adv)), 0.0, 1.0)
        self.assertBetween(float(tf.reduce_max(x_adv)), 0.0, 1.0)
        self.assertAllEqual(attack(classifier, x, y, seed=1), x_adv)

    def test_defaults_config_and_replace(self):
        attack = attacks.BackwardSmoothingAttack(epsilon=0.031)
        self.assertAllClose(attack.step_size, 0.031)  # α = ε
        self.assertEqual(attack.num_steps, 1)
        self.assertEqual(attack.gamma, 1.0)
        self.assertEqual(attack.name, "backward_smoothing")
        copy = attack.replace(num_steps=3, gamma=0.5)
        self.assertEqual((copy.num_steps, copy.gamma), (3, 0.5))
        self.assertEqual(copy.get_config()["epsilon"], 0.031)

    def test_bad_arguments(self):
        with self.assertRaisesRegex(ValueError, "gamma"):
            attacks.BackwardSmoothingAttack(epsilon=0.1, gamma=-1.0)
        with self.assertRaisesRegex(ValueError, "num_steps"):
            attacks.BackwardSmoothingAttack(epsilon=0.1, num_steps=-1)
        with self.assertRaisesRegex(ValueError, "epsilon"):
            attacks.BackwardSmoothingAttack(epsilon=2.0)
