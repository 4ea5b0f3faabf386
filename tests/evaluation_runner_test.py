"""The batch loop that runs a suite (evaluation.runner)."""

import ast
import inspect
import os

import keras
import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from tests import evaluation_fixtures as fx
from tfadv import attacks
from tfadv import evaluation
from tfadv.evaluation import runner


def sum_model():
    """z_1 - z_0 = sum(x) - 2, for points of 4 pixels."""
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.set_weights(
        [np.stack([np.zeros(4), np.ones(4)], 1), np.array([0.0, -2.0])]
    )
    return model


class RunnerTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters(False, True)
    def test_suite_is_per_example_minimum(self, sequential):
        # z_1 - z_0 = sum(x) - 2: shifting every pixel up breaks class-0
        # points near the boundary, shifting down breaks class-1 ones, so
        # each attack breaks points the other leaves robust.
        model = sum_model()
        x, y = fx.interior_data(model, (4,), n=48)
        up, down = fx.Shift(0.05, +1, "up"), fx.Shift(0.05, -1, "down")
        result = evaluation.evaluate_suite(
            model,
            fx.as_dataset(x, y, batch=16),
            suite=[up, down],
            epsilon=0.05,
            sequential=sequential,
            per_example=True,
        )
        robust = {
            n: np.array(r) for n, r in result["per_example"]["robust"].items()
        }
        worst = robust["up"] & robust["down"]
        acc = result["robust_accuracy"]
        self.assertEqual(result["suite"], "up,down")
        self.assertAlmostEqual(result["suite_robust_accuracy"], worst.mean())
        self.assertAlmostEqual(acc["worst_case"], worst.mean())
        self.assertEqual(result["num_examples"], 48)
        self.assertEqual(result["clean_accuracy"], 1.0)
        if sequential:
            # "down" ran on the points "up" left robust; cumulative numbers.
            self.assertEqual(result["mode"], "sequential")
            self.assertAlmostEqual(acc["down"], worst.mean())
            self.assertGreater(acc["up"], acc["down"])
        else:
            self.assertLess(worst.mean(), min(acc["up"], acc["down"]))
            self.assertGreater(worst.mean(), 0.2)

    def test_run_suite_follows_the_suite(self):
        # run_suite takes the attacks and the mode from the Suite and adds
        # its name; evaluate_suite is make_suite then run_suite.
        model = sum_model()
        x, y = fx.interior_data(model, (4,), n=32)
        data = fx.as_dataset(x, y, batch=16)
        up, down = fx.Shift(0.05, +1, "up"), fx.Shift(0.05, -1, "down")
        suite = evaluation.Suite("shifts", {"up": up, "down": down}, True)
        result = evaluation.run_suite(
            model, data, suite, masking_checks=False, per_example=True
        )
        self.assertEqual(result["suite"], "shifts")
        self.assertEqual(result["mode"], "sequential")
        self.assertNotIn("gradient_masking", result)
        self.assertIn(
            "gradient-masking checks: not run",
            evaluation.format_report(result),
        )
        same = evaluation.evaluate_suite(
            model,
            data,
            suite=[up, down],
            epsilon=0.05,
            sequential=True,
            masking_checks=False,
            per_example=True,
        )
        self.assertEqual(same["suite"], "up,down")
        self.assertEqual(same["robust_accuracy"], result["robust_accuracy"])
        self.assertEqual(same["per_example"], result["per_example"])

    def test_apgd_t_needs_four_classes(self):
        model = fx.linear_model((4,), 3)
        x, y = fx.interior_data(model, (4,), n=4)
        with self.assertRaisesRegex(ValueError, "apgd_t .*4 classes"):
            evaluation.evaluate_suite(
                model, fx.as_dataset(x, y), suite="standard", epsilon=0.1
            )


class OptionsTest(tf.test.TestCase):
    def test_one_options_object_or_the_old_keywords(self):
        model = sum_model()
        x, y = fx.interior_data(model, (4,), n=16)
        data = fx.as_dataset(x, y, batch=8)
        up, down = fx.Shift(0.05, +1, "up"), fx.Shift(0.05, -1, "down")
        suite = evaluation.Suite("shifts", {"up": up, "down": down}, False)
        options = evaluation.EvalOptions(masking_checks=False, per_example=True)
        by_object = evaluation.run_suite(model, data, suite, options=options)
        by_keywords = evaluation.run_suite(
            model, data, suite, masking_checks=False, per_example=True
        )
        self.assertNotIn("gradient_masking", by_object)
        self.assertEqual(by_object["per_example"], by_keywords["per_example"])
        # A keyword replaces the options' field.
        overridden = evaluation.run_suite(
            model, data, suite, options=options, per_example=False
        )
        self.assertNotIn("per_example", overridden)

    def test_bad_options_are_refused_with_what_is_accepted(self):
        for kwargs, pattern in (
            ({"seed": 1.5}, r"EvalOptions\.seed must be an integer; got 1\.5"),
            ({"seed": True}, "EvalOptions.seed must be an integer"),
            (
                {"false_alarm_rate": 0.0},
                r"false_alarm_rate must be in \(0, 0\.5\); got 0\.0",
            ),
            ({"miss_rate": 1.0}, r"miss_rate must be in \[0, 1\); got 1\.0"),
            ({"jit_compile": "yes"}, "jit_compile must be True or False"),
            ({"log_findings": 1}, "log_findings must be True or False"),
        ):
            with self.assertRaisesRegex(ValueError, pattern):
                evaluation.EvalOptions(**kwargs)
        model = sum_model()
        x, y = fx.interior_data(model, (4,), n=4)
        data = fx.as_dataset(x, y)
        with self.assertRaisesRegex(
            ValueError,
            "evaluate_suite got the unknown keyword argument 'jit_compil'; "
            "the evaluation options are seed, masking_checks, "
            "false_alarm_rate, miss_rate, ",
        ):
            evaluation.evaluate_suite(
                model, data, suite="pgd5", epsilon=0.1, jit_compil=True
            )
        with self.assertRaisesRegex(
            ValueError, "tolerance= is gone: .*false_alarm_rate"
        ):
            evaluation.evaluate_suite(
                model, data, suite="pgd5", epsilon=0.1, tolerance=0.002
            )
        with self.assertRaisesRegex(TypeError, "must be an evaluation"):
            evaluation.evaluate_suite(
                model, data, suite="pgd5", epsilon=0.1, options={"seed": 1}
            )


class AttackDeclarationsTest(tf.test.TestCase):
    def test_attacks_say_how_many_classes_they_need(self):
        def make(name):
            return evaluation.make_attack(name, epsilon=0.1)

        self.assertEqual(make("apgd_t").min_classes, 4)
        self.assertEqual(make("fab_t").min_classes, 2)
        self.assertEqual(make("pgd20").min_classes, 1)
        self.assertEqual(make("square").min_classes, 1)
        wrapped = attacks.BPDA(
            attacks.EOT(make("apgd_t"), num_samples=2), layers="q"
        )
        self.assertEqual(wrapped.min_classes, 4)
        # The runner refuses before any attack runs, by the declaration.
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
        x = tf.zeros([2, 4])
        data = fx.as_dataset(x, tf.zeros([2], tf.int32))
        with self.assertRaisesRegex(
            ValueError, "fab_t needs a classifier with at least 2 classes"
        ):
            evaluation.evaluate_suite(model, data, suite="fab_t", epsilon=0.1)

    def test_bpda_prepares_its_copy_before_any_call(self):
        model = fx.linear_model((4,), 3, quantize=8)
        bpda = attacks.BPDA(
            evaluation.make_attack("pgd5", epsilon=0.1), layers="quantize"
        )
        bpda.prepare(model)
        self.assertLen(bpda._surrogates, 1)
        self.assertIs(bpda.surrogate(model), bpda.surrogate(model))
        with self.assertRaisesRegex(ValueError, "no layer matching"):
            attacks.BPDA(bpda.attack, layers="nope").prepare(model)
        # Through EOT as well: the wrapper prepares its inner attack.
        outer = attacks.EOT(bpda, num_samples=2)
        with self.assertRaisesRegex(TypeError, "BPDA needs the Keras"):
            outer.prepare(object())

    def test_the_runner_asks_no_attack_class(self):
        # `grep -n isinstance tfadv/evaluation/runner.py` names no attack
        # class, and the runner imports no concrete attack module.
        source = inspect.getsource(runner)
        tree = ast.parse(source)
        words = ("attack", "Attack", "apgd", "APGD", "fab", "FAB", "pgd")
        words += ("ProjectedGradient", "square", "Square", "BPDA", "EOT")
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and getattr(node.func, "id", None) == "isinstance"
            ):
                classes = ast.unparse(node.args[1])
                for word in words:
                    self.assertNotIn(word, classes, ast.unparse(node))
        modules = {
            f"{n.module}.{a.name}"
            for n in ast.walk(tree)
            if isinstance(n, ast.ImportFrom)
            for a in n.names
        }
        for concrete in ("apgd", "fab", "pgd", "square"):
            self.assertNotIn(f"tfadv.attacks.{concrete}", modules)


class SmallFunctionsTest(tf.test.TestCase):
    def test_no_function_of_the_evaluation_is_over_80_lines(self):
        folder = os.path.dirname(evaluation.__file__)
        for name in sorted(os.listdir(folder)):
            if not name.endswith(".py"):
                continue
            with open(os.path.join(folder, name)) as f:
                tree = ast.parse(f.read())
            for node in ast.walk(tree):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    length = node.end_lineno - node.lineno + 1
                    self.assertLessEqual(length, 80, f"{name}: {node.name}")
