"""The evaluation's attacks, name grammar and suites (evaluation.suites)."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl.testing import parameterized

from tests import evaluation_fixtures as fx
from tfadv import attacks
from tfadv import evaluation
from tfadv import layers
from tfadv.attacks import objectives
from tfadv.evaluation import suites


class AnalyticWorstCaseTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters("pgd20", "cw20x2", "apgd_ce20")
    def test_reaches_linear_worst_case(self, name):
        # Binary linear model, L-inf, points far from the box: the worst
        # margin is z_y - z_o - eps * ||w_y - w_o||_1, reached at the vertex
        # x + eps * sign(w_o - w_y). Points that stay robust are checked.
        eps, classes = 0.05, 2
        model = fx.linear_model((8,), classes)
        x, y = fx.interior_data(model, (8,), n=128)
        w = model.layers[-1].get_weights()[0]
        logits = model(x).numpy()
        yn = y.numpy()
        worst = np.full(len(yn), np.inf)
        for o in range(classes):
            dw = np.abs(w[:, yn] - w[:, [o]]).sum(0)
            value = logits[np.arange(len(yn)), yn] - logits[:, o] - eps * dw
            worst = np.where(o == yn, worst, np.minimum(worst, value))
        keep = worst > 0.05
        self.assertGreater(keep.sum(), 20)
        attack = evaluation.make_attack(name, epsilon=eps)
        x_adv = fx.run_attack(attack, model, x, y)
        reached = fx.margin_of_true(model(x_adv), y)
        self.assertAllClose(reached[keep], worst[keep], atol=1e-4)
        # The others are misclassified (their worst case is negative).
        self.assertAllLessEqual(reached[worst < -0.05], 0.0)


class AttackBehaviourTest(tf.test.TestCase, parameterized.TestCase):
    def test_square_breaks_an_undefended_model(self):
        model = fx.linear_model((8, 8, 1), 10)
        x, y = fx.interior_data(model, (8, 8, 1))
        # At this epsilon every point is breakable (analytically).
        square = attacks.Square(epsilon=0.1, num_queries=200)
        x_adv = fx.run_attack(square, model, x, y)
        self.assertEqual(fx.accuracy(model, x, y), 1.0)
        self.assertLess(fx.accuracy(model, x_adv, y), 0.1)
        self.assertAllLessEqual(tf.abs(x_adv - x), 0.1 + 1e-6)

    def test_dlr_values_and_invariance(self):
        logits = tf.constant([[3.0, 1.0, 0.0, -1.0]])
        self.assertAllClose(objectives.dlr(logits, [0]), [-2.0 / 3.0])
        self.assertAllClose(objectives.dlr(logits, [1]), [2.0 / 3.0])
        self.assertAllClose(
            objectives.dlr(2.5 * logits + 7.0, [2]), objectives.dlr(logits, [2])
        )
        self.assertAllClose(
            objectives.targeted_dlr(logits, [0], [2]), [-3.0 / 3.5]
        )
        with self.assertRaisesRegex(ValueError, "at least 4 classes"):
            objectives.targeted_dlr(logits[:, :3], [0], [1])
        with self.assertRaisesRegex(ValueError, "at least 3 classes"):
            objectives.dlr(logits[:, :2], [0])

    def test_apgd_t_finds_every_breakable_point_of_a_linear_model(self):
        # With 9 targets APGD-T tries every other class of a 10-class
        # linear model, so it breaks exactly the points whose analytic
        # worst case (over all classes) is negative.
        eps, model = 0.06, fx.linear_model((16,), 10)
        x, y = fx.interior_data(model, (16,), n=64)
        w = model.layers[-1].get_weights()[0]
        logits, yn = model(x).numpy(), y.numpy()
        dw = np.abs(w[:, yn][:, :, None] - w[:, None, :]).sum(0)  # [B, C]
        gap = logits[np.arange(64), yn][:, None] - logits - eps * dw
        gap[np.arange(64), yn] = np.inf
        breakable = gap.min(1) < 0
        self.assertBetween(breakable.mean(), 0.2, 0.9)
        apgd_t = attacks.APGDTargeted(epsilon=eps, num_steps=30)
        x_adv = fx.run_attack(apgd_t, model, x, y)
        pred = tf.argmax(model(x_adv), -1).numpy()
        self.assertAllEqual(pred != yn, breakable)

    def test_apgd_t_needs_four_classes(self):
        # The suite-level check is in evaluation_runner_test.
        model = fx.linear_model((4,), 3)
        x, y = fx.interior_data(model, (4,), n=4)
        with self.assertRaisesRegex(ValueError, "at least 4 classes"):
            attacks.APGDTargeted(epsilon=0.1, num_steps=2)(model, x, y)


def invariant_attacks():
    pgd3 = attacks.ProjectedGradient(epsilon=0.1, step_size=0.04, num_steps=3)
    return {
        "apgd_ce": attacks.APGD(epsilon=0.1, num_steps=5, restarts=2),
        "apgd_dlr_l2": attacks.APGD(
            epsilon=0.5, num_steps=5, norm="l2", objective="dlr"
        ),
        "apgd_t": attacks.APGDTargeted(epsilon=0.1, num_steps=4, num_targets=2),
        "square": attacks.Square(epsilon=0.1, num_queries=20),
        "square_l2": attacks.Square(epsilon=0.5, num_queries=20, norm="l2"),
        "bpda": attacks.BPDA(pgd3, layers="pre"),
        "eot": attacks.EOT(
            pgd3, num_samples=3, transform=attacks.GaussianNoise(0.05)
        ),
    }


class EvaluationAttackInvariantsTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters(*invariant_attacks())
    def test_invariants(self, name):
        attack = invariant_attacks()[name]
        model = fx.bn_model()
        rng = np.random.default_rng(1)
        x = rng.uniform(size=(16, 6, 6, 1)).astype("float32")
        x[..., 0] = 0.0  # on the box edge, where clipping matters
        x, y = tf.constant(x), tf.constant(rng.integers(0, 5, 16), tf.int32)
        model(x)
        before = [v.numpy().copy() for v in model.variables]
        compiled = tf.function(lambda x, y, s: attack(model, x, y, seed=s))
        seed = tf.constant([3, 0])
        with tf.GradientTape() as tape:
            tape.watch(x)
            x_adv = compiled(x, y, seed)
        self.assertIsNone(tape.gradient(tf.reduce_sum(x_adv), x))
        self.assertEqual(x_adv.shape, x.shape)
        self.assertEqual(x_adv.dtype, x.dtype)
        dist = attack.threat_model.distance(x, x_adv)
        self.assertAllLessEqual(dist, attack.epsilon + 1e-5)
        self.assertGreater(float(tf.reduce_max(dist)), 0.0)
        self.assertAllInRange(x_adv, 0.0, 1.0)
        self.assertAllEqual(x_adv, compiled(x, y, seed))
        self.assertNotAllClose(x_adv, compiled(x, y, tf.constant([4, 0])))
        self.assertLen(model.variables, len(before))
        for b, v in zip(before, model.variables, strict=True):
            self.assertAllEqual(b, v.numpy())

    @parameterized.parameters("apgd_t", "square", "eot")
    def test_runs_under_xla(self, name):
        attack = invariant_attacks()[name]
        model = fx.bn_model()
        x, y = fx.interior_data(model, (6, 6, 1), n=8)
        fn = tf.function(
            lambda x, y: attack(model, x, y, seed=1), jit_compile=True
        )
        x_adv = fn(x, y)
        self.assertAllLessEqual(tf.abs(x_adv - x), attack.epsilon + 1e-5)
        self.assertAllInRange(x_adv, 0.0, 1.0)


class SuiteTest(tf.test.TestCase, parameterized.TestCase):
    def test_names_and_suites(self):
        suite = evaluation.make_suite(
            "pgd50x10,cw50,apgd_t,square1000", epsilon=0.1
        )
        pgd = suite.attacks["pgd50x10"]
        self.assertEqual((pgd.num_steps, pgd.restarts), (50, 10))
        self.assertAlmostEqual(pgd.step_size, 0.01)
        self.assertIs(suite.attacks["cw50"].objective, objectives.margin)
        self.assertEqual(suite.attacks["square1000"].num_queries, 1000)
        self.assertFalse(suite.sequential)
        standard = evaluation.make_suite("standard", epsilon=0.1)
        self.assertEqual(
            list(standard.attacks), ["apgd_ce", "apgd_t", "fab_t", "square"]
        )
        self.assertTrue(standard.sequential)
        quick = evaluation.make_suite("quick", epsilon=0.1).attacks["pgd20"]
        self.assertAlmostEqual(quick.step_size, 0.01)
        for bad in ("pgd", "pgd0", "apgd_x", "quick,square", "pgd20,pgd20"):
            with self.assertRaisesRegex(ValueError, "attack name|twice"):
                evaluation.make_suite(bad, epsilon=0.1)

    @parameterized.parameters(("linf", 8 / 255), ("l2", 0.5))
    def test_standard_is_autoattacks_standard_version(self, norm, eps):
        # AutoAttack's standard settings, each attack in the given norm.
        suite = evaluation.make_suite("standard", epsilon=eps, norm=norm)
        apgd_ce, apgd_t, fab_t, sq = suite.attacks.values()
        self.assertEqual((apgd_ce.num_steps, apgd_ce.restarts), (100, 1))
        self.assertIs(apgd_ce.objective, objectives.cross_entropy)
        self.assertEqual((apgd_t.num_steps, apgd_t.num_targets), (100, 9))
        self.assertIsInstance(fab_t, attacks.FABTargeted)
        self.assertEqual(
            (fab_t.num_steps, fab_t.num_targets, fab_t.restarts), (100, 9, 1)
        )
        self.assertEqual(
            (fab_t.alpha_max, fab_t.eta, fab_t.beta), (0.1, 1.05, 0.9)
        )
        self.assertEqual((sq.num_queries, sq.p_init), (5000, 0.8))
        self.assertFalse(sq.rescale_schedule)
        for attack in suite.attacks.values():
            self.assertEqual(attack.threat_model.norm, norm)
            self.assertAlmostEqual(attack.epsilon, eps)
        # The name alone keeps Square's class default.
        named = evaluation.make_suite("fab_t20,square", epsilon=eps, norm=norm)
        self.assertTrue(named.attacks["square"].rescale_schedule)
        self.assertEqual(named.attacks["fab_t20"].num_steps, 20)
        self.assertEqual(named.attacks["fab_t20"].name, "fab_t20")

    def test_starts(self):
        # FGSM starts at x; the named PGD attacks start uniformly at random.
        fgsm = evaluation.make_attack("fgsm", epsilon=0.1)
        self.assertEqual((fgsm.num_steps, fgsm.start), (1, "none"))
        self.assertAlmostEqual(fgsm.step_size, 0.1)
        self.assertEqual(
            evaluation.make_attack("pgd5", epsilon=0.1).start, "uniform"
        )
        self.assertAlmostEqual(evaluation.pgd_step_size(0.1, 5), 0.05)

    def test_bpda_layers_wrap_gradient_attacks_only(self):
        suite = evaluation.make_suite(
            "pgd5,square10", epsilon=0.1, bpda_layers=["quantize"]
        )
        self.assertIsInstance(suite.attacks["pgd5"], attacks.BPDA)
        self.assertEqual(suite.attacks["pgd5"].layers, ("quantize",))
        self.assertIsInstance(suite.attacks["square10"], attacks.Square)

    def test_weaker_control(self):
        # A quarter of the steps; APGD counts at most 20 (so pgd5).
        control = suites.weaker_control(
            evaluation.make_attack("cw20", epsilon=0.1)
        )
        self.assertIsInstance(control, attacks.ProjectedGradient)
        self.assertEqual((control.name, control.num_steps), ("pgd5", 5))
        self.assertIs(control.objective, objectives.margin)
        self.assertAlmostEqual(control.step_size, 0.05)
        control = suites.weaker_control(
            evaluation.make_attack("apgd_dlr", epsilon=0.1, norm="l2")
        )
        self.assertIsInstance(control, attacks.ProjectedGradient)
        self.assertEqual((control.name, control.num_steps), ("pgd5", 5))
        self.assertIs(control.objective, objectives.cross_entropy)
        self.assertEqual(control.threat_model.norm, "l2")
        for name in ("pgd3", "square", "fgsm", "fab_t"):
            attack = evaluation.make_attack(name, epsilon=0.1)
            self.assertIsNone(suites.weaker_control(attack))


@pytest.mark.slow
class StandardSuiteRunTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters(("linf", 0.02), ("l2", 0.2))
    def test_standard_suite_runs_in_both_norms(self, norm, eps):
        # The whole standard suite at its real settings, through the runner:
        # the numbers only fall along the suite, and every attack ran.
        model = fx.linear_model((6, 6, 1), 10)
        x, y = fx.interior_data(model, (6, 6, 1), n=16)
        result = evaluation.evaluate_suite(
            model,
            fx.as_dataset(x, y, batch=16),
            suite="standard",
            epsilon=eps,
            norm=norm,
            masking_checks=False,
        )
        acc = result["robust_accuracy"]
        names = ["apgd_ce", "apgd_t", "fab_t", "square"]
        self.assertEqual(list(acc), [*names, "worst_case"])
        values = [acc[n] for n in names]
        self.assertEqual(values, sorted(values, reverse=True))
        self.assertLess(values[-1], 1.0)
        self.assertEqual(result["norm"], norm)


class WithMaskingAttacksTest(tf.test.TestCase):
    def test_adds_true_bpda_and_gradient_free_attacks(self):
        quick = evaluation.make_suite("quick", epsilon=0.1)
        suite = evaluation.with_masking_attacks(quick, ["sq"], epsilon=0.1)
        self.assertEqual(list(suite.attacks), ["pgd20", "bpda_pgd20", "square"])
        self.assertEqual(suite.name, "quick+masking")
        self.assertFalse(suite.sequential)
        bpda = suite.attacks["bpda_pgd20"]
        self.assertIsInstance(bpda, attacks.BPDA)
        self.assertEqual(bpda.layers, ("sq",))
        self.assertTrue(suites.through_bpda(bpda))
        self.assertFalse(suites.through_bpda(suite.attacks["pgd20"]))
        self.assertFalse(suite.attacks["square"].uses_gradients)
        self.assertAllClose(bpda.epsilon, 0.1)

    def test_adds_only_what_is_missing_and_keeps_the_mode(self):
        standard = evaluation.make_suite("standard", epsilon=0.1)
        suite = evaluation.with_masking_attacks(standard, ["sq"], epsilon=0.1)
        self.assertEqual(
            list(suite.attacks),
            ["apgd_ce", "apgd_t", "fab_t", "square", "bpda_pgd20"],
        )
        self.assertTrue(suite.sequential)
        # Gradient attacks already through BPDA: the true-layer PGD is
        # added under a name of its own.
        through = evaluation.make_suite(
            "pgd20,square", epsilon=0.1, bpda_layers=["sq"]
        )
        suite = evaluation.with_masking_attacks(through, ["sq"], epsilon=0.1)
        self.assertEqual(list(suite.attacks), ["pgd20", "square", "pgd20_"])
        self.assertFalse(suites.through_bpda(suite.attacks["pgd20_"]))
        self.assertEqual(suite.attacks["pgd20_"].name, "pgd20_")

    def test_no_masking_layers_leaves_the_suite_alone(self):
        quick = evaluation.make_suite("quick", epsilon=0.1)
        self.assertIs(
            evaluation.with_masking_attacks(quick, [], epsilon=0.1), quick
        )
        with self.assertRaisesRegex(ValueError, "must be layer names"):
            evaluation.with_masking_attacks(quick, [3], epsilon=0.1)

    def test_evaluate_suite_finds_the_layers_in_the_model(self):
        # A steep quantiser and pixels 0.05-0.08 from its threshold: the
        # true gradient is exactly 0 (the sigmoid saturates), but an epsilon
        # of 0.1 crosses the threshold.
        model = keras.Sequential(
            [
                keras.Input((4, 4, 1)),
                layers.SoftQuantization(temperature=2000.0, name="sq"),
                keras.layers.Flatten(),
                keras.layers.Dense(2),
            ]
        )
        rng = np.random.default_rng(0)
        side = rng.choice([-1.0, 1.0], size=(32, 4, 4, 1))
        x = (0.5 + side * rng.uniform(0.05, 0.08, size=side.shape)).astype(
            "float32"
        )
        y = np.argmax(model(x), -1).astype("int32")
        data = fx.as_dataset(x, y)
        found = evaluation.evaluate_suite(
            model, data, suite="pgd5,square100", epsilon=0.1
        )
        self.assertCountEqual(
            found["robust_accuracy"],
            ["pgd5", "square100", "bpda_pgd20", "worst_case"],
        )
        self.assertEqual(found["suite"], "pgd5,square100+masking")
        # The masked model: BPDA breaks what PGD through the layer cannot.
        self.assertGreater(found["robust_accuracy"]["pgd5"], 0.6)
        self.assertLess(found["robust_accuracy"]["bpda_pgd20"], 0.3)
        checks = found["gradient_masking"]["checks"]
        check = checks["approximation_beats_true_gradient"]
        self.assertTrue(check["flagged"])
        self.assertIn(
            "backward pass approximated",
            " ".join(found["gradient_masking"]["messages"]),
        )
        none = evaluation.evaluate_suite(
            model, data, suite="pgd5", epsilon=0.1, masking_layers=()
        )
        self.assertEqual(list(none["robust_accuracy"]), ["pgd5"])
