"""The batch loop that runs a suite (evaluation.runner)."""

import keras
import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from tests import evaluation_fixtures as fx
from tfadv import evaluation


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
