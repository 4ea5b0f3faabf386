"""Invariants of the attack core (the cleverhans checklist)."""

import itertools

import keras
import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from tfadv import attacks
from tfadv.attacks import base
from tfadv.attacks import objectives


def linear_model(in_dim=2, num_classes=3, seed=0):
    rng = np.random.default_rng(seed)
    model = keras.Sequential(
        [keras.Input((in_dim,)), keras.layers.Dense(num_classes)]
    )
    model.layers[0].set_weights(
        [
            rng.normal(size=(in_dim, num_classes)).astype("float32"),
            rng.normal(size=(num_classes,)).astype("float32"),
        ]
    )
    return model


def bn_model():
    return keras.Sequential(
        [
            keras.Input((6, 6, 1)),
            keras.layers.Conv2D(4, 3),
            keras.layers.BatchNormalization(momentum=0.9),
            keras.layers.ReLU(),
            keras.layers.Flatten(),
            keras.layers.Dropout(0.5),
            keras.layers.Dense(3),
        ]
    )


def data(shape=(16, 6, 6, 1), num_classes=3, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=shape).astype("float32")
    # Put some pixels on the box edges, where clipping matters.
    x[..., 0] = 0.0
    x.flat[1::7] = 1.0
    y = rng.integers(0, num_classes, size=shape[0]).astype("int32")
    return tf.constant(x), tf.constant(y)


def mean_ce(model, x, y):
    return float(tf.reduce_mean(objectives.cross_entropy(model(x), y)))


GRID = list(itertools.product(["linf", "l2"], [True, False], [1, 5], [1, 3]))


class AttackInvariantsTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters(*GRID)
    def test_output_inside_ball_and_box(self, norm, random_start, steps, rs):
        model = bn_model()
        x, y = data()
        eps = 0.1 if norm == "linf" else 0.5
        attack = attacks.ProjectedGradient(
            epsilon=eps,
            step_size=eps / 2,
            num_steps=steps,
            norm=norm,
            random_start=random_start,
            restarts=rs,
        )
        x_adv = attack(model, x, y, seed=3)
        self.assertEqual(x_adv.shape, x.shape)
        self.assertEqual(x_adv.dtype, x.dtype)
        dist = attack.threat_model.distance(x, x_adv)
        self.assertAllLessEqual(dist, eps + 1e-5)
        self.assertAllGreaterEqual(x_adv, 0.0)
        self.assertAllLessEqual(x_adv, 1.0)
        # The attack must have moved something.
        self.assertGreater(float(tf.reduce_max(dist)), 0.0)

    @parameterized.parameters("linf", "l2")
    def test_zero_epsilon_returns_input(self, norm):
        model = bn_model()
        x, y = data()
        attack = attacks.ProjectedGradient(
            epsilon=0.0, step_size=0.1, num_steps=5, norm=norm, restarts=2
        )
        self.assertAllClose(attack(model, x, y, seed=1), x, atol=0, rtol=0)

    def test_zero_steps_without_random_start_returns_input(self):
        model = bn_model()
        x, y = data()
        attack = attacks.ProjectedGradient(
            epsilon=0.1, step_size=0.1, num_steps=0, random_start=False
        )
        self.assertAllEqual(attack(model, x, y), x)

    @parameterized.parameters("linf", "l2")
    def test_loss_rises_on_fixed_linear_model(self, norm):
        model = linear_model(in_dim=2)
        x, y = data(shape=(64, 2))
        eps = 0.05
        for steps in (1, 10):
            attack = attacks.ProjectedGradient(
                epsilon=eps,
                step_size=eps / 4 if steps > 1 else eps,
                num_steps=steps,
                norm=norm,
                random_start=False,
            )
            x_adv = attack(model, x, y)
            before = objectives.cross_entropy(model(x), y)
            after = objectives.cross_entropy(model(x_adv), y)
            # Per example: the loss never falls (it is convex along the
            # ascent direction of a linear model).
            self.assertAllGreaterEqual(after - before, -1e-6)
            self.assertGreater(float(tf.reduce_mean(after - before)), 0.0)

    def test_fgsm_is_the_analytic_worst_case_of_a_linear_margin(self):
        # For z = Wx + b and the margin objective between two classes, the
        # L-inf worst case inside the box-free ball is x + eps*sign(w1 - w0).
        model = linear_model(in_dim=2, num_classes=2)
        w, _ = model.layers[0].get_weights()
        x = tf.fill([4, 2], 0.5)
        y = tf.zeros([4], tf.int32)
        attack = attacks.ProjectedGradient(
            epsilon=0.1,
            step_size=0.1,
            num_steps=1,
            objective="margin",
            random_start=False,
        )
        expected = 0.5 + 0.1 * np.sign(w[:, 1] - w[:, 0])
        self.assertAllClose(attack(model, x, y), np.tile(expected, (4, 1)))

    def test_pgd_at_least_as_strong_as_fgsm(self):
        keras.utils.set_random_seed(0)
        model = keras.Sequential(
            [
                keras.Input((8,)),
                keras.layers.Dense(32, activation="tanh"),
                keras.layers.Dense(3),
            ]
        )
        x, y = data(shape=(256, 8))
        eps = 0.2
        fgsm = attacks.ProjectedGradient(
            epsilon=eps, step_size=eps, num_steps=1, random_start=False
        )
        pgd = attacks.ProjectedGradient(
            epsilon=eps, step_size=eps / 4, num_steps=20, random_start=False
        )
        fgsm_loss = mean_ce(model, fgsm(model, x, y), y)
        pgd_loss = mean_ce(model, pgd(model, x, y), y)
        self.assertGreaterEqual(pgd_loss, fgsm_loss - 1e-6)
        self.assertGreater(fgsm_loss, mean_ce(model, x, y))

    def test_restarts_keep_per_example_worst_case(self):
        model = bn_model()
        x, y = data()
        single = [
            attacks.ProjectedGradient(
                epsilon=0.3, step_size=0.1, num_steps=2, restarts=1
            )(model, x, y, seed=s)
            for s in base.split_seed(base.as_seed(7), 3)
        ]
        best = attacks.ProjectedGradient(
            epsilon=0.3, step_size=0.1, num_steps=2, restarts=3
        )(model, x, y, seed=7)
        losses = tf.stack(
            [objectives.cross_entropy(model(s), y) for s in single]
        )
        wrong = tf.stack(
            [tf.argmax(model(s), -1, output_type=tf.int32) != y for s in single]
        )
        best_loss = objectives.cross_entropy(model(best), y)
        best_wrong = tf.argmax(model(best), -1, output_type=tf.int32) != y
        # Misclassified whenever any restart misclassified...
        self.assertAllEqual(best_wrong, tf.reduce_any(wrong, 0))
        # ...and among correct ones, the highest loss was kept.
        correct_everywhere = ~tf.reduce_any(wrong, 0)
        self.assertAllClose(
            tf.boolean_mask(best_loss, correct_everywhere),
            tf.boolean_mask(tf.reduce_max(losses, 0), correct_everywhere),
            atol=1e-5,
        )

    def test_same_seed_same_output(self):
        model = bn_model()
        x, y = data()
        attack = attacks.ProjectedGradient(
            epsilon=0.1, step_size=0.05, num_steps=3, restarts=2
        )
        a = attack(model, x, y, seed=5)
        self.assertAllEqual(a, attack(model, x, y, seed=5))
        self.assertNotAllClose(a, attack(model, x, y, seed=6))
        gen_a = keras.random.SeedGenerator(11)
        gen_b = keras.random.SeedGenerator(11)
        self.assertAllEqual(
            attack(model, x, y, seed=gen_a), attack(model, x, y, seed=gen_b)
        )

    def test_no_gradient_flows_out(self):
        model = linear_model(in_dim=2)
        x, y = data(shape=(8, 2))
        attack = attacks.ProjectedGradient(
            epsilon=0.1, step_size=0.05, num_steps=3
        )
        with tf.GradientTape() as tape:
            tape.watch(x)
            x_adv = attack(model, x, y, seed=0)
            out = tf.reduce_sum(x_adv)
        self.assertIsNone(tape.gradient(out, x))

    def test_weights_and_bn_statistics_untouched(self):
        model = bn_model()
        x, y = data()
        model(x, training=False)
        before = [v.numpy().copy() for v in model.variables]
        attack = attacks.ProjectedGradient(
            epsilon=0.1, step_size=0.05, num_steps=3, restarts=2
        )
        attack(model, x, y, seed=0)
        tf.function(lambda: attack(model, x, y, seed=1))()
        for b, v in zip(before, model.variables, strict=True):
            self.assertAllEqual(b, v.numpy())
        # No variables were created by the attack.
        self.assertLen(model.variables, len(before))

    def test_training_mode_updates_bn_statistics(self):
        model = bn_model()
        x, y = data()
        bn = model.layers[1]
        before = bn.moving_mean.numpy().copy()
        attacks.ProjectedGradient(epsilon=0.1, step_size=0.05, num_steps=3)(
            model, x, y, seed=0, training=True
        )
        self.assertNotAllClose(before, bn.moving_mean.numpy())

    def test_works_inside_xla(self):
        model = bn_model()
        x, y = data()
        attack = attacks.ProjectedGradient(
            epsilon=0.1, step_size=0.05, num_steps=4
        )
        eager = attack(model, x, y, seed=2)
        compiled = tf.function(
            lambda x, y: attack(model, x, y, seed=2), jit_compile=True
        )(x, y)
        # XLA reorders float sums, so signs of near-zero gradients may flip;
        # the output must still be a valid, equally strong attack.
        self.assertAllLessEqual(tf.abs(compiled - x), 0.1 + 1e-5)
        self.assertAllInRange(compiled, 0.0, 1.0)
        self.assertAllClose(
            mean_ce(model, compiled, y), mean_ce(model, eager, y), rtol=0.02
        )

    def test_non_differentiable_model_gives_zero_step_not_crash(self):
        inputs = keras.Input((4,))
        rounded = keras.layers.Lambda(lambda t: tf.round(t * 4.0) / 4.0)(inputs)
        model = keras.Model(inputs, keras.layers.Dense(3)(rounded))
        x, y = data(shape=(8, 4))
        attack = attacks.ProjectedGradient(
            epsilon=0.1, step_size=0.05, num_steps=3, random_start=False
        )
        # No gradient reaches the input: every step stays where it is.
        self.assertAllEqual(attack(model, x, y), x)

    def test_kl_objective_is_zero_at_clean_point_and_positive_elsewhere(self):
        logits = tf.constant([[1.0, 2.0, -1.0], [0.0, 0.0, 0.0]])
        p = tf.nn.softmax(logits)
        self.assertAllClose(objectives.kl_to_clean(logits, p), [0.0, 0.0])
        other = tf.constant([[2.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
        self.assertAllGreater(objectives.kl_to_clean(other, p), 0.0)

    def test_margin_masks_true_class_with_minus_infinity(self):
        logits = tf.constant([[-1.0, -3.0, -2.0]])
        # All other logits negative: max over j != 0 is -2, margin -2 - -1.
        self.assertAllClose(objectives.margin(logits, tf.constant([0])), [-1.0])


class AttackValidationTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters(-0.1, 1.5, float("nan"), "big")
    def test_bad_epsilon(self, eps):
        with self.assertRaisesRegex(ValueError, "epsilon"):
            attacks.ProjectedGradient(epsilon=eps, step_size=0.1, num_steps=1)

    def test_bad_counts_and_names(self):
        with self.assertRaisesRegex(ValueError, "num_steps.*-1"):
            attacks.ProjectedGradient(epsilon=0.1, step_size=0.1, num_steps=-1)
        with self.assertRaisesRegex(ValueError, "restarts"):
            attacks.ProjectedGradient(
                epsilon=0.1, step_size=0.1, num_steps=1, restarts=0
            )
        with self.assertRaisesRegex(ValueError, "step_size"):
            attacks.ProjectedGradient(epsilon=0.1, step_size=-1, num_steps=1)
        with self.assertRaisesRegex(ValueError, "norm.*'l3'.*accepted"):
            attacks.ProjectedGradient(
                epsilon=0.1, step_size=0.1, num_steps=1, norm="l3"
            )
        with self.assertRaisesRegex(ValueError, "objective.*'hinge'"):
            attacks.ProjectedGradient(
                epsilon=0.1, step_size=0.1, num_steps=1, objective="hinge"
            )
