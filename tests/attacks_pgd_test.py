"""ProjectedGradient: the invariants of the attack core (the cleverhans
checklist), its starts, `trades_attack`, and bad arguments."""

import itertools

import keras
import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from tests import harness
from tfadv import attacks
from tfadv.attacks import base
from tfadv.attacks import objectives
from tfadv.attacks import pgd

GRID = list(
    itertools.product(
        ["linf", "l2"], ["uniform", "gaussian", "none"], [1, 5], [1, 3]
    )
)


class AttackInvariantsTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters(*GRID)
    def test_output_inside_ball_and_box(self, norm, start, steps, rs):
        model = harness.bn_model()
        x, y = harness.attack_data()
        eps = 0.1 if norm == "linf" else 0.5
        attack = attacks.ProjectedGradient(
            epsilon=eps,
            step_size=eps / 2,
            num_steps=steps,
            norm=norm,
            start=start,
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
        model = harness.bn_model()
        x, y = harness.attack_data()
        attack = attacks.ProjectedGradient(
            epsilon=0.0, step_size=0.1, num_steps=5, norm=norm, restarts=2
        )
        self.assertAllClose(attack(model, x, y, seed=1), x, atol=0, rtol=0)

    def test_zero_steps_without_random_start_returns_input(self):
        model = harness.bn_model()
        x, y = harness.attack_data()
        attack = attacks.ProjectedGradient(
            epsilon=0.1, step_size=0.1, num_steps=1, start="none"
        ).start_only()
        self.assertEqual(attack.num_steps, 0)
        self.assertAllEqual(attack(model, x, y), x)

    def test_zero_steps_are_refused_at_construction(self):
        with self.assertRaisesRegex(
            ValueError, r"num_steps.*start_only\(\).*>= 1; got 0"
        ):
            attacks.ProjectedGradient(epsilon=0.1, step_size=0.1, num_steps=0)
        with self.assertRaisesRegex(ValueError, "num_steps"):
            harness.pgd(num_steps=3).replace(num_steps=0)

    def test_start_only_keeps_the_settings_and_cannot_be_replaced(self):
        attack = harness.pgd(num_steps=3, start="gaussian", name="mine")
        start = attack.start_only()
        self.assertIsInstance(start, attacks.ProjectedGradient)
        self.assertEqual(attack.num_steps, 3)
        self.assertEqual(start.name, "mine")
        self.assertEqual(
            {**start.get_config(), "num_steps": 3}, attack.get_config()
        )
        with self.assertRaisesRegex(ValueError, "num_steps"):
            start.replace()

    @parameterized.parameters("linf", "l2")
    def test_loss_rises_on_fixed_linear_model(self, norm):
        model = harness.linear_model(in_dim=2)
        x, y = harness.attack_data(shape=(64, 2))
        eps = 0.05
        for steps in (1, 10):
            attack = attacks.ProjectedGradient(
                epsilon=eps,
                step_size=eps / 4 if steps > 1 else eps,
                num_steps=steps,
                norm=norm,
                start="none",
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
        model = harness.linear_model(in_dim=2, num_classes=2)
        w, _ = model.layers[0].get_weights()
        x = tf.fill([4, 2], 0.5)
        y = tf.zeros([4], tf.int32)
        attack = attacks.ProjectedGradient(
            epsilon=0.1,
            step_size=0.1,
            num_steps=1,
            objective="margin",
            start="none",
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
        x, y = harness.attack_data(shape=(256, 8))
        eps = 0.2
        fgsm = attacks.ProjectedGradient(
            epsilon=eps, step_size=eps, num_steps=1, start="none"
        )
        pgd20 = attacks.ProjectedGradient(
            epsilon=eps, step_size=eps / 4, num_steps=20, start="none"
        )
        fgsm_loss = harness.mean_ce(model, fgsm(model, x, y), y)
        pgd_loss = harness.mean_ce(model, pgd20(model, x, y), y)
        self.assertGreaterEqual(pgd_loss, fgsm_loss - 1e-6)
        self.assertGreater(fgsm_loss, harness.mean_ce(model, x, y))

    def test_restarts_keep_per_example_worst_case(self):
        model = harness.bn_model()
        x, y = harness.attack_data()
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

    def test_no_gradient_flows_out(self):
        model = harness.linear_model(in_dim=2)
        x, y = harness.attack_data(shape=(8, 2))
        attack = attacks.ProjectedGradient(
            epsilon=0.1, step_size=0.05, num_steps=3
        )
        with tf.GradientTape() as tape:
            tape.watch(x)
            x_adv = attack(model, x, y, seed=0)
            out = tf.reduce_sum(x_adv)
        self.assertIsNone(tape.gradient(out, x))

    def test_weights_and_bn_statistics_untouched(self):
        model = harness.bn_model()
        x, y = harness.attack_data()
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
        model = harness.bn_model()
        x, y = harness.attack_data()
        bn = model.layers[1]
        before = bn.moving_mean.numpy().copy()
        attacks.ProjectedGradient(epsilon=0.1, step_size=0.05, num_steps=3)(
            model, x, y, seed=0, training=True
        )
        self.assertNotAllClose(before, bn.moving_mean.numpy())

    def test_works_inside_xla(self):
        model = harness.bn_model()
        x, y = harness.attack_data()
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
            harness.mean_ce(model, compiled, y),
            harness.mean_ce(model, eager, y),
            rtol=0.02,
        )

    def test_non_differentiable_model_gives_zero_step_not_crash(self):
        inputs = keras.Input((4,))
        rounded = keras.layers.Lambda(lambda t: tf.round(t * 4.0) / 4.0)(inputs)
        model = keras.Model(inputs, keras.layers.Dense(3)(rounded))
        x, y = harness.attack_data(shape=(8, 4))
        attack = attacks.ProjectedGradient(
            epsilon=0.1, step_size=0.05, num_steps=3, start="none"
        )
        # No gradient reaches the input: every step stays where it is.
        self.assertAllEqual(attack(model, x, y), x)


class StartTest(tf.test.TestCase, parameterized.TestCase):
    def test_uniform_start_is_the_threat_models_random_init(self):
        x, _ = harness.attack_data()
        attack = harness.pgd(start="uniform")
        seed = base.as_seed(4)
        self.assertAllEqual(
            attack.initial_point(x, seed),
            attack.threat_model.random_init(x, seed),
        )
        # into_box=False: the unprojected sample (YOPO's start).
        self.assertAllEqual(
            attack.initial_point(x, seed, into_box=False),
            attack.threat_model.sample(x, seed),
        )
        self.assertNotAllClose(attack.initial_point(x, seed), x)

    def test_gaussian_start_is_not_projected(self):
        x, _ = harness.attack_data()
        attack = attacks.ProjectedGradient(
            epsilon=0.1,
            step_size=0.05,
            num_steps=1,
            start="gaussian",
            start_stddev=0.5,
        )
        seed = base.as_seed(3)
        start = attack.initial_point(x, seed).numpy()
        want = x + 0.5 * tf.random.stateless_normal(tf.shape(x), seed)
        self.assertAllClose(start, want)
        # Outside the ball and the box: the start itself is not projected
        # (x has pixels at 0 and 1).
        self.assertGreater(np.abs(start - x).max(), 0.1)
        self.assertLess(start.min(), 0.0)
        self.assertGreater(start.max(), 1.0)
        # The same for either into_box (only the uniform start uses it).
        self.assertAllEqual(
            attack.initial_point(x, seed, into_box=False), start
        )

    def test_gaussian_start_with_zero_steps_returns_projected_start(self):
        model = harness.bn_model()
        x, y = harness.attack_data()
        attack = attacks.ProjectedGradient(
            epsilon=0.1,
            step_size=0.05,
            num_steps=1,
            start="gaussian",
            start_stddev=0.5,
        ).start_only()
        seed = base.as_seed(3)
        start = attack.initial_point(x, seed)
        got = attack(model, x, y, seed=seed)
        self.assertAllClose(got, harness.project(x, start.numpy(), 0.1))
        self.assertAllInRange(got, 0.0, 1.0)
        self.assertAllLessEqual(tf.abs(got - x), 0.1 + 1e-6)
        self.assertGreater(float(tf.reduce_max(tf.abs(got - x))), 0.09)

    def test_gaussian_start_with_zero_stddev_is_x(self):
        model = harness.bn_model()
        x, y = harness.attack_data()
        attack = attacks.ProjectedGradient(
            epsilon=0.1,
            step_size=0.05,
            num_steps=1,
            start="gaussian",
            start_stddev=0.0,
        ).start_only()
        self.assertAllEqual(attack.initial_point(x, base.as_seed(1)), x)
        self.assertAllEqual(attack(model, x, y, seed=1), x)

    def test_first_gradient_is_taken_at_the_unprojected_gaussian_start(self):
        # One step on a linear model: the signed gradient at the
        # unprojected start, then one projection (the TRADES reference).
        model = harness.linear_model(in_dim=5)
        w, b = model.layers[0].get_weights()
        _, _, x, y = harness.linear_problem()
        attack = attacks.ProjectedGradient(
            epsilon=0.1,
            step_size=0.03,
            num_steps=1,
            objective="kl",
            start="gaussian",
            start_stddev=0.05,
        )
        seed = base.as_seed(2)
        start = attack.initial_point(tf.constant(x), seed).numpy()
        p = harness.softmax(x @ w + b)
        got = attack(model, x, p, seed=seed)
        grad = (harness.softmax(start @ w + b) - p) @ w.T
        want = harness.project(x, start + 0.03 * np.sign(grad), 0.1)
        self.assertAllClose(got, want, atol=1e-6)

    def test_start_point_replaces_random_start(self):
        # The `x_init` keyword (a caller's start, unprojected).
        w, b, x, y = harness.linear_problem()
        model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3)])
        model.layers[0].set_weights([w, b])
        start = x + 0.05 * np.cos(50.0 * x)  # partly outside [0, 1]
        attack = harness.pgd(num_steps=3, start="uniform")
        a = attack(model, x, y, seed=1, x_init=start)
        b_ = attack(model, x, y, seed=2, x_init=start)
        self.assertAllClose(a, b_)  # no random start: seeds do not matter
        self.assertLessEqual(np.abs(a - x).max(), 0.1 + 1e-6)
        self.assertBetween(float(np.min(a)), 0.0, 1.0)
        self.assertBetween(float(np.max(a)), 0.0, 1.0)
        zero = harness.pgd(num_steps=1, start="none").start_only()
        self.assertAllClose(
            zero(model, x, y, x_init=start),
            np.clip(np.clip(start - x, -0.1, 0.1) + x, 0.0, 1.0),
        )

    def test_x_init_replaces_every_start(self):
        model = harness.linear_model(in_dim=5)
        _, _, x, y = harness.linear_problem()
        start = x + 0.05 * np.cos(50.0 * x)
        for kind in pgd.STARTS:
            attack = harness.pgd(num_steps=1, start=kind).start_only()
            self.assertAllClose(
                attack(model, x, y, seed=1, x_init=start),
                harness.project(x, start, 0.1),
                msg=kind,
            )


class TradesAttackTest(tf.test.TestCase):
    def test_the_references_settings_at_their_budget(self):
        attack = pgd.trades_attack(0.031)
        self.assertNear(attack.epsilon, 0.031, 1e-9)
        self.assertNear(attack.step_size, 0.007, 1e-9)
        self.assertEqual(attack.num_steps, 10)
        self.assertEqual(attack.start, "gaussian")
        self.assertNear(attack.start_stddev, 0.001, 1e-12)
        self.assertIs(attack.objective, objectives.kl_to_clean)
        self.assertEqual(attack.restarts, 1)

    def test_step_scales_with_epsilon(self):
        attack = pgd.trades_attack(
            0.1, objective="cross_entropy", num_steps=4, name="mart"
        )
        self.assertNear(attack.step_size, 0.007 / 0.031 * 0.1, 1e-9)
        self.assertEqual(attack.num_steps, 4)
        self.assertIs(attack.objective, objectives.cross_entropy)
        self.assertEqual(attack.name, "mart")


class ReplaceTest(tf.test.TestCase):
    def test_replace_changes_only_the_given_settings(self):
        attack = attacks.ProjectedGradient(
            epsilon=0.1,
            step_size=0.02,
            num_steps=10,
            norm="l2",
            objective="margin",
            start="gaussian",
            start_stddev=0.01,
            restarts=2,
        )
        copy = attack.replace(num_steps=5, start="none")
        self.assertIsInstance(copy, attacks.ProjectedGradient)
        self.assertIsNot(copy, attack)
        want = {**attack.get_config(), "num_steps": 5, "start": "none"}
        self.assertEqual(copy.get_config(), want)
        # The original is untouched.
        self.assertEqual(attack.num_steps, 10)
        self.assertEqual(attack.start, "gaussian")

    def test_derived_name_is_derived_again_given_name_is_kept(self):
        attack = attacks.ProjectedGradient(
            epsilon=0.1, step_size=0.02, num_steps=10
        )
        self.assertEqual(attack.name, "pgd10")
        self.assertEqual(attack.replace(num_steps=1).name, "fgsm")
        self.assertEqual(attack.replace(num_steps=20).name, "pgd20")
        named = attack.replace(name="train")
        self.assertEqual(named.replace(num_steps=3).name, "train")
        self.assertEqual(named.replace(name=None).name, "pgd10")

    def test_replace_refuses_unknown_settings(self):
        attack = harness.pgd()
        with self.assertRaisesRegex(TypeError, "random_start"):
            attack.replace(random_start=False)

    def test_replace_validates_the_new_settings(self):
        with self.assertRaisesRegex(ValueError, "num_steps.*-2"):
            harness.pgd().replace(num_steps=-2)


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

    def test_bad_start(self):
        with self.assertRaisesRegex(ValueError, "start.*'random'"):
            attacks.ProjectedGradient(
                epsilon=0.1, step_size=0.1, num_steps=1, start="random"
            )
        with self.assertRaisesRegex(ValueError, "start_stddev.*-0.1"):
            attacks.ProjectedGradient(
                epsilon=0.1,
                step_size=0.1,
                num_steps=1,
                start="gaussian",
                start_stddev=-0.1,
            )
        with self.assertRaises(TypeError):
            attacks.ProjectedGradient(
                epsilon=0.1, step_size=0.1, num_steps=1, random_start=True
            )


class ReferenceOptionsTest(tf.test.TestCase):
    """Options that reproduce particular reference scripts."""

    def test_unclipped_uniform_start_takes_the_first_gradient_outside(self):
        # FGSM from x + U(-ε, ε), not clipped before the gradient (the
        # Fast-AT reference), on a linear model against NumPy.
        w, b, x, y = harness.linear_problem(seed=5)
        model = harness.linear_model(in_dim=x.shape[1])
        model.layers[0].set_weights([w, b])
        eps = 0.1
        for clip_start in (True, False):
            attack = attacks.ProjectedGradient(
                epsilon=eps, step_size=eps, num_steps=1, clip_start=clip_start
            )
            got = attack(model, x, y, seed=3)
            start = attack.threat_model.sample(
                tf.constant(x), base.as_seed(3)
            ).numpy()
            if clip_start:
                start = np.clip(start, 0.0, 1.0)
            grad = (
                harness.softmax(start @ w + b) - harness.onehot(y, w.shape[1])
            ) @ w.T
            want = harness.project(x, start + eps * np.sign(grad), eps)
            self.assertAllClose(got, want, atol=1e-6)
            self.assertAllInRange(got, 0.0, 1.0)
        self.assertFalse(attack.get_config()["clip_start"])

    def test_recomputed_target_is_the_clean_distribution_each_step(self):
        model = harness.bn_model()
        x, y = harness.attack_data()
        clean = tf.nn.softmax(model(x, training=False))
        once = attacks.ProjectedGradient(
            epsilon=0.1, step_size=0.02, num_steps=3, objective="kl"
        )
        every = once.replace(recompute_target=True)
        # In inference mode the clean forward is the same at every step.
        self.assertAllClose(
            once(model, x, clean, seed=1),
            every(model, x, tf.zeros_like(clean), seed=1),
        )
        with self.assertRaisesRegex(ValueError, "recompute_target"):
            attacks.ProjectedGradient(
                epsilon=0.1, step_size=0.02, num_steps=3, recompute_target=True
            )

    def test_last_step_gradient(self):
        w, b, x, y = harness.linear_problem(seed=6)
        model = harness.linear_model(in_dim=x.shape[1])
        model.layers[0].set_weights([w, b])
        attack = attacks.ProjectedGradient(
            epsilon=0.1, step_size=0.03, num_steps=3, start="none"
        )
        x_adv, grad = attack.ascend_with_gradient(model, x, y, seed=0)
        self.assertAllClose(x_adv, attack(model, x, y, seed=0))
        # The gradient at the point the third step started from.
        point = x
        for _ in range(2):
            g = (
                harness.softmax(point @ w + b) - harness.onehot(y, w.shape[1])
            ) @ w.T
            point = harness.project(x, point + 0.03 * np.sign(g), 0.1)
        want = (
            (harness.softmax(point @ w + b) - harness.onehot(y, w.shape[1]))
            @ w.T
            / len(x)
        )
        self.assertAllClose(grad, want, atol=1e-6)
        _, none = attack.start_only().ascend_with_gradient(model, x, y)
        self.assertAllClose(none, np.zeros_like(x))
        with self.assertRaisesRegex(ValueError, "restarts=2"):
            attack.replace(restarts=2).ascend_with_gradient(model, x, y)
