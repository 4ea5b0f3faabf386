"""Robust accuracy at several budgets (evaluation.curves)."""

import os

import numpy as np
import tensorflow as tf
from absl import flags

from tests import evaluation_fixtures as fx
from tfadv import evaluation

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def setUpModule():
    flags.FLAGS.mark_as_parsed()


def assert_png(test, path):
    with open(path, "rb") as f:
        content = f.read()
    test.assertEqual(content[:8], PNG_MAGIC)
    test.assertGreater(len(content), 5000)


class CheckEpsilonsTest(tf.test.TestCase):
    def test_sorts_and_converts(self):
        self.assertEqual(
            evaluation.check_epsilons(["0.1", 0.02, "0.05"]), [0.02, 0.05, 0.1]
        )

    def test_bad_lists(self):
        for values, pattern in (
            (["0.1"], "at least two budgets"),
            ([], "at least two budgets"),
            (["0.1", "abc"], "'abc' is not a number"),
            (["0.1", "1.5"], r"must be in \(0, 1\]; got 1\.5"),
            (["0", "0.1"], r"must be in \(0, 1\]; got 0\.0"),
            (["0.1", "0.05", "0.1"], "lists the budget 0.1 twice"),
        ):
            with (
                self.subTest(values=values),
                self.assertRaisesRegex(ValueError, pattern),
            ):
                evaluation.check_epsilons(values, name="--epsilons")


class RobustnessCurveTest(tf.test.TestCase):
    def test_curve_of_a_linear_model(self):
        model = fx.linear_model((4, 4, 1), 3)
        x, y = fx.interior_data(model, (4, 4, 1), n=64)
        data = fx.as_dataset(x, y)

        def run_at(epsilon):
            return evaluation.evaluate_suite(
                model,
                data,
                suite="pgd10,square50",
                epsilon=epsilon,
                per_example=True,
            )

        curve = evaluation.robustness_curve(run_at, [0.02, 0.1])
        self.assertEqual(curve["epsilons"], [0.02, 0.1])
        self.assertEqual(curve["norm"], "linf")
        self.assertEqual(curve["suite"], "pgd10,square50")
        self.assertEqual(curve["num_examples"], 64)
        self.assertEqual(curve["clean_accuracy"], 1.0)
        self.assertEqual(list(curve["attacks"]), ["pgd10", "square50"])
        for values in curve["attacks"].values():
            self.assertLen(values, 2)
        worst = curve["worst_case"]
        self.assertLen(worst, 2)
        self.assertGreaterEqual(worst[0], worst[1])
        self.assertLess(worst[1], 1.0)
        # The worst case is the per-example minimum, so never above any
        # attack, and at the first budget it is the suite's own number.
        for i in range(2):
            for values in curve["attacks"].values():
                self.assertLessEqual(worst[i], values[i])
        self.assertEqual(worst[0], curve["suite_robust_accuracy"][0])
        self.assertEqual([r["epsilon"] for r in curve["results"]], [0.02, 0.1])
        self.assertNotIn("per_example", curve["results"][0])
        self.assertLen(curve["gradient_masking"], 2)
        text = evaluation.format_curve(curve)
        self.assertIn("worst_case", text)
        self.assertIn("0.02", text)
        path = os.path.join(self.create_tempdir().full_path, "curve.png")
        evaluation.plot_curve(curve, path, title="linear (linf)")
        assert_png(self, path)

    def test_worst_case_carries_smaller_budgets(self):
        # A point broken at a smaller budget is broken at every larger one,
        # even if the attack at the larger budget missed it.
        results = {
            0.1: [True, True, True, True],
            0.2: [False, True, True, True],
            0.3: [True, True, False, False],
        }

        def run_at(epsilon):
            robust = results[epsilon]
            return {
                "epsilon": epsilon,
                "norm": "l2",
                "suite": "fake",
                "clean_accuracy": 1.0,
                "num_examples": 4,
                "robust_accuracy": {"a": float(np.mean(robust))},
                "suite_robust_accuracy": float(np.mean(robust)),
                "per_example": {"clean": [True] * 4, "robust": {"a": robust}},
            }

        curve = evaluation.robustness_curve(run_at, [0.1, 0.2, 0.3])
        self.assertEqual(curve["attacks"]["a"], [1.0, 0.75, 0.5])
        self.assertEqual(curve["worst_case"], [1.0, 0.75, 0.25])
        self.assertEqual(curve["inconsistent_points"], 1)
        self.assertIn(
            "1 times a point survived", evaluation.format_curve(curve)
        )

    def test_attacks_with_fixed_budgets_are_refused(self):
        model = fx.linear_model((8,), 3)
        x, y = fx.interior_data(model, (8,), n=8)

        def run_at(epsilon):
            del epsilon
            return evaluation.evaluate_suite(
                model,
                fx.as_dataset(x, y),
                suite=[fx.Shift(0.05, 1, "up")],
                epsilon=0.05,
                per_example=True,
            )

        with self.assertRaisesRegex(ValueError, "needs named attacks"):
            evaluation.robustness_curve(run_at, [0.02, 0.1])
