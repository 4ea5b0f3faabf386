"""tfadv.attacks.perturbations: training perturbations and where they go.

N-FGSM's perturbation against a NumPy re-derivation of the reference's
loop on a linear model; its reach (beyond ε, within (k + 1)·ε, within the
image box); the reference's optional clip; seeds; it trains a method
(whose ε stays the defended budget) and is refused wherever robustness is
measured: a trainer's `eval_attack`, `evaluate_robustness`, and inside a
wrapper.
"""

import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from tests import harness
from tfadv import attacks
from tfadv import evaluation
from tfadv import methods
from tfadv.attacks import base

EPS = 0.1


def numpy_noise_fgsm(w, b, x, y, eta, *, alpha, clip=None):
    """The reference's N-FGSM loop (pdejorge/N-FGSM train.py) in NumPy."""
    eta = np.clip(x + eta, 0.0, 1.0) - x
    start = x + eta
    grad = (
        harness.softmax(start @ w + b) - harness.onehot(y, w.shape[1])
    ) @ w.T
    delta = np.clip(start + alpha * np.sign(grad), 0.0, 1.0) - x
    if clip is not None:
        delta = np.clip(delta, -clip, clip)
    return x + delta


class NoiseFGSMTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters((None, 0.1), (None, 0.05), (1.5, 0.1))
    def test_matches_the_reference_on_a_linear_model(self, clip, alpha):
        w, b, x, y = harness.linear_problem(seed=3)
        rng = np.random.default_rng(4)
        eta = rng.uniform(-2 * EPS, 2 * EPS, size=x.shape).astype("float32")
        model = harness.linear_model(in_dim=x.shape[1])
        model.layers[0].set_weights([w, b])
        attack = attacks.NoiseFGSM(
            epsilon=EPS, step_size=alpha, clip_factor=clip
        )
        got = attack(model, x, y, seed=0, x_init=x + eta)
        want = numpy_noise_fgsm(
            w,
            b,
            x,
            y,
            eta,
            alpha=alpha,
            clip=None if clip is None else clip * EPS,
        )
        self.assertAllClose(got, want, atol=1e-6)

    def test_reach_is_beyond_the_ball_and_inside_three_epsilon(self):
        model = harness.bn_model()
        x, y = harness.attack_data(shape=(64, 6, 6, 1))
        x = 0.2 + 0.6 * x  # away from the box edges
        attack = attacks.NoiseFGSM(epsilon=EPS)
        self.assertAllClose(attack.reach, 3 * EPS)
        with tf.GradientTape() as tape:
            tape.watch(x)
            x_adv = attack(model, x, y, seed=1)
        self.assertIsNone(tape.gradient(tf.reduce_sum(x_adv), x))
        delta = np.abs(x_adv.numpy() - x.numpy())
        self.assertLessEqual(delta.max(), attack.reach + 1e-6)
        # The perturbation leaves the ε-ball: that is the method.
        self.assertGreater(delta.max(), 2 * EPS)
        self.assertGreater((delta > EPS + 1e-6).mean(), 0.2)
        self.assertAllInRange(x_adv, 0.0, 1.0)
        self.assertAllEqual(x_adv, attack(model, x, y, seed=1))
        self.assertNotAllClose(x_adv, attack(model, x, y, seed=2))

    def test_clip_factor_bounds_the_reach(self):
        model = harness.bn_model()
        x, y = harness.attack_data(shape=(32, 6, 6, 1))
        attack = attacks.NoiseFGSM(epsilon=EPS, clip_factor=1.0)
        self.assertAllClose(attack.reach, EPS)
        x_adv = attack(model, x, y, seed=1)
        self.assertAllLessEqual(np.abs(x_adv - x), EPS + 1e-6)

    def test_bad_arguments(self):
        with self.assertRaisesRegex(ValueError, "noise_factor.*-1"):
            attacks.NoiseFGSM(epsilon=EPS, noise_factor=-1.0)
        with self.assertRaisesRegex(ValueError, "clip_factor.*0"):
            attacks.NoiseFGSM(epsilon=EPS, clip_factor=0.0)
        with self.assertRaisesRegex(ValueError, "step_size"):
            attacks.NoiseFGSM(epsilon=EPS, step_size=0.0)


class WhereItGoesTest(tf.test.TestCase):
    def test_trains_a_method_at_the_defended_budget(self):
        perturbation = attacks.NoiseFGSM(epsilon=EPS)
        method = methods.FGSMRS(
            harness.tiny_classifier(), train_attack=perturbation
        )
        self.assertAllClose(method.epsilon, EPS)
        method.compile(optimizer="sgd")
        x, y = harness.tiny_data()
        logs = method.fit(x, y, batch_size=harness.BATCH, verbose=0)
        self.assertTrue(np.isfinite(logs.history["loss"][0]))

    def test_refused_as_a_trainers_eval_attack(self):
        with self.assertRaisesRegex(
            ValueError, r"PGDAT.eval_attack must be an evaluation attack.*0.3"
        ):
            methods.PGDAT(
                harness.tiny_classifier(),
                epsilon=EPS,
                eval_attack=attacks.NoiseFGSM(epsilon=EPS),
            )

    def test_refused_by_the_evaluation(self):
        model = harness.bn_model()
        x, y = harness.attack_data()
        data = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
        for attack in (
            attacks.NoiseFGSM(epsilon=EPS),
            attacks.EOT(attacks.NoiseFGSM(epsilon=EPS), num_samples=2),
        ):
            with self.assertRaisesRegex(ValueError, "training perturbation"):
                evaluation.evaluate_robustness(model, data, [attack])

    def test_only_perturbations_are_training_only(self):
        classes = _attack_classes()
        self.assertIn(attacks.NoiseFGSM, classes)
        for cls in classes:
            is_perturbation = issubclass(cls, attacks.TrainingPerturbation)
            self.assertEqual(cls.training_only, is_perturbation, cls)


def _attack_classes():
    found, todo = set(), [base.Attack]
    while todo:
        for sub in todo.pop().__subclasses__():
            if sub not in found and sub.__module__.startswith("tfadv."):
                found.add(sub)
                todo.append(sub)
    return found
