"""The L2 threat model end to end: training, final suite, tfadv.evaluate."""

import contextlib
import io
import json
import os

import gin
import tensorflow as tf
from absl import flags
from absl.testing import flagsaver

from tests import cli_fixtures
from tfadv import attacks
from tfadv import evaluate
from tfadv import evaluation


def setUpModule():
    flags.FLAGS.mark_as_parsed()


def check(**overrides):
    return cli_fixtures.check_config(**{"epsilon": 0.5, **overrides})


class RunNormTest(tf.test.TestCase):
    def test_named_final_attacks_take_the_runs_norm(self):
        _, suite = check(norm="l2", final_suite="pgd20,square")
        for attack in suite.attacks.values():
            self.assertEqual(attack.threat_model.norm, "l2")
        _, suite = check(final_suite="standard", norm="l2")
        self.assertEqual(
            {a.threat_model.norm for a in suite.attacks.values()}, {"l2"}
        )
        _, suite = check()
        self.assertEqual(suite.attacks["pgd20"].threat_model.norm, "linf")

    def test_the_budget_range_depends_on_the_norm(self):
        # An L2 radius may exceed 1 (a 28x28 box is 28 wide in L2); an
        # L-infinity budget above 1 is meaningless and refused.
        epsilon, _ = check(norm="l2", epsilon=1.5)
        self.assertEqual(epsilon, 1.5)
        self.assertEqual(
            attacks.ProjectedGradient(
                epsilon=3.0, step_size=0.3, num_steps=1, norm="l2"
            ).epsilon,
            3.0,
        )
        with self.assertRaisesRegex(
            ValueError, r"epsilon must be in \(0, 1\]; got 1.5"
        ):
            check(norm="linf", epsilon=1.5)
        for bad in (0.0, -1.0, float("inf"), float("nan")):
            with self.assertRaisesRegex(
                ValueError, r"epsilon must be in \(0, inf\).*L2 radius"
            ):
                check(norm="l2", epsilon=bad)
        self.assertEqual(
            evaluation.check_epsilons(["2.0", 0.5], norm="l2"), [0.5, 2.0]
        )
        with self.assertRaisesRegex(ValueError, r"in \(0, 1\]"):
            evaluation.check_epsilons([0.5, 2.0])

    def test_bad_norm_and_a_mismatch(self):
        with self.assertRaisesRegex(
            ValueError, r"run.norm must be one of \['linf', 'l2'\]; got 'l1'"
        ):
            check(norm="l1")
        linf = attacks.ProjectedGradient(
            epsilon=0.5, step_size=0.1, num_steps=2, name="mine"
        )
        with self.assertLogs(level="WARNING") as logs:
            check(norm="l2", eval_attack=linf)
        self.assertIn("'mine' works in linf", " ".join(logs.output))


class L2RunTest(tf.test.TestCase):
    def test_tiny_l2_run_reports_l2_attacks(self):
        logdir = os.path.join(self.create_tempdir().full_path, "run")
        cli_fixtures.run_cli(logdir, "pgd_at_l2.gin", "testing/tiny.gin")
        with open(os.path.join(logdir, "results.json")) as f:
            results = json.load(f)
        self.assertEqual(results["method"], "PGDAT")
        self.assertEqual(results["norm"], "l2")
        self.assertEqual(results["epsilon"], 1.5)
        self.assertEqual(list(results["robust_accuracy"]), ["pgd20"])
        self.assertIn(
            "L2ThreatModel(epsilon=1.5)", results["eval_attacks"]["pgd20"]
        )
        self.assertIn("randomized_model", results["gradient_masking"]["checks"])
        with open(os.path.join(logdir, "config.operative.gin")) as f:
            operative = f.read()
        self.assertIn("NORM = 'l2'", operative)
        for scope in ("train", "eval"):
            self.assertIn(f"{scope}/ProjectedGradient.norm = %NORM", operative)
        self.assertIn("run.norm = %NORM", operative)
        # tfadv.evaluate takes the norm from results.json.
        gin.clear_config()
        out = io.StringIO()
        with (
            flagsaver.flagsaver(model=logdir, suite="pgd5"),
            contextlib.redirect_stdout(out),
        ):
            evaluate.main(["tfadv.evaluate"])
        self.assertIn("l2 epsilon 1.5,", out.getvalue())
        with open(os.path.join(logdir, "eval.json")) as f:
            self.assertEqual(json.load(f)["norm"], "l2")
