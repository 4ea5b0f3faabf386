"""Standard training: the shared harness and the analytic step."""

import tensorflow as tf
from absl.testing import parameterized

from tests import harness
from tfadv import methods


class StandardTest(tf.test.TestCase, parameterized.TestCase):
    def test_harness(self):
        harness.run_method_test(self, lambda c: methods.Standard(c))

    @parameterized.parameters("default", "mirrored")
    def test_one_standard_step_on_linear_model(self, strategy):
        w, b, x, y = harness.linear_problem(seed=1)
        _, (got_w, got_b) = harness.fit_linear(
            methods.Standard,
            w,
            b,
            x,
            y,
            lr=0.3,
            strategy=harness.strategy(strategy),
        )
        want_w, want_b = harness.numpy_pgd_at_step(
            w,
            b,
            x,
            y,
            eps=0.0,
            step=0.0,
            k=0,
            lr=0.3,
            wd=0.0,
            clean_weight=0.0,
        )
        self.assertAllClose(got_w, want_w, atol=1e-5)
        self.assertAllClose(got_b, want_b, atol=1e-5)

    def test_trains_without_an_attack(self):
        method = methods.Standard(harness.tiny_classifier())
        self.assertIsNone(method.train_attack)
        self.assertIsNone(method.epsilon)
        self.assertIsNone(method.threat_model)
        self.assertCountEqual(
            method.train_metric_names, ["loss", "clean_accuracy"]
        )
        # A budget would not be used: refused, with the way out.
        with self.assertRaisesRegex(ValueError, "eval_attack"):
            methods.Standard(harness.tiny_classifier(), epsilon=0.1)

    def test_bad_classifier(self):
        with self.assertRaisesRegex(TypeError, "classifier"):
            methods.Standard("not a model")
