"""The `python -m tfadv.evaluate` command (tfadv/evaluate.py)."""

import contextlib
import gzip
import io
import json
import os
import shutil
import tempfile
from unittest import mock

import gin
import numpy as np
import tensorflow as tf
from absl import flags
from absl.testing import flagsaver

from tests import evaluation_fixtures as fx
from tfadv import evaluate


def setUpModule():
    flags.FLAGS.mark_as_parsed()


def write_idx(folder, prefix, images, labels):
    os.makedirs(folder, exist_ok=True)
    n, h, w = images.shape
    header = np.array([2051, n, h, w], ">i4").tobytes()
    with gzip.open(f"{folder}/{prefix}-images-idx3-ubyte.gz", "wb") as f:
        f.write(header + images.astype(np.uint8).tobytes())
    header = np.array([2049, n], ">i4").tobytes()
    with gzip.open(f"{folder}/{prefix}-labels-idx1-ubyte.gz", "wb") as f:
        f.write(header + labels.astype(np.uint8).tobytes())


class _RunFolderTestCase(tf.test.TestCase):
    """A tiny run folder (a linear model on 8x8 IDX digits) and helpers."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        root = cls.root = tempfile.mkdtemp()
        rng = np.random.default_rng(0)
        data_dir = os.path.join(root, "tinydigits")
        for prefix, n in (("train", 64), ("t10k", 32)):
            images = rng.integers(0, 256, size=(n, 8, 8))
            write_idx(data_dir, prefix, images, np.arange(n) % 10)
        cls.run_dir = os.path.join(root, "run")
        os.makedirs(cls.run_dir, exist_ok=True)
        model = fx.linear_model((8, 8, 1), 10)
        model.save(os.path.join(cls.run_dir, "model.keras"))
        results = {"dataset": data_dir, "epsilon": 0.05, "num_eval_examples": 8}
        with open(os.path.join(cls.run_dir, "results.json"), "w") as f:
            json.dump(results, f)

    def main(self, **flag_values):
        gin.clear_config()  # each command line starts from a fresh process
        with flagsaver.flagsaver(**flag_values):
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                evaluate.main(["tfadv.evaluate"])
        return out.getvalue()

    def assert_error(self, pattern, **flag_values):
        target = "tfadv.evaluation.runner.evaluate_robustness"
        with (
            mock.patch(target) as attack_run,
            self.assertRaises(SystemExit) as cm,
        ):
            self.main(**flag_values)
        self.assertRegex(str(cm.exception.code), "tfadv.evaluate: error: ")
        self.assertRegex(str(cm.exception.code), pattern)
        attack_run.assert_not_called()  # nothing was attacked


class EvaluateCommandTest(_RunFolderTestCase):
    def test_bad_flags(self):
        run = self.run_dir
        self.assert_error("give a run folder", model=None)
        self.assert_error("does not exist", model=f"{self.root}/none.keras")
        self.assert_error("does not exist", model=self.root)
        self.assert_error(
            "Unknown attack name 'pgd2o'", model=run, suite="pgd2o"
        )
        self.assert_error(
            r"epsilon must be in \(0, 1\]", model=run, epsilon=0.0
        )
        self.assert_error(r"got 1\.5", model=run, epsilon=1.5)
        self.assert_error("num_examples must be", model=run, num_examples=0)
        self.assert_error("batch_size must be", model=run, batch_size=0)
        self.assert_error("No such|nope", model=run, gin_bindings=["nope.x=1"])
        # An output that cannot be written is refused before any attack.
        self.assert_error(
            "does not exist; create it",
            model=run,
            output=f"{self.root}/no/such/folder/eval.json",
        )

    def test_end_to_end_never_overwrites(self):
        run = self.run_dir
        out = self.main(model=run, suite="quick", num_examples=16)
        self.assertIn("pgd20", out)
        self.assertIn("gradient-masking checks", out)
        with open(os.path.join(run, "eval.json")) as f:
            result = json.load(f)
        self.assertEqual(result["num_examples"], 16)
        self.assertEqual(result["suite"], "quick")
        self.assertEqual(result["epsilon"], 0.05)
        self.assertIn("pgd20", result["robust_accuracy"])
        self.assertIn("possible", result["gradient_masking"])
        self.assertGreater(result["seconds"], 0.0)
        self.assertEqual(
            result["provenance"]["tensorflow_version"], tf.__version__
        )
        # A second run goes beside it, named after the suite; gin sets it.
        self.main(model=run, gin_bindings=["evaluate_suite.suite = 'cw5'"])
        with open(os.path.join(run, "eval-cw5.json")) as f:
            self.assertEqual(json.load(f)["num_examples"], 8)
        self.assert_error("never overwrites", model=run, suite="cw5")


class EvaluateLogTest(_RunFolderTestCase):
    def test_each_finding_is_said_once_and_no_training_data_is_logged(self):
        # A saturated softmax (logits scaled by 1e4): every correct point
        # has an all-zero cross-entropy input gradient. The table says so
        # once; neither the checks' log nor the data's log repeats it, and
        # the data is logged as what it is, test examples only.
        run = os.path.join(self.create_tempdir().full_path, "saturated")
        os.makedirs(run)
        shutil.copy(os.path.join(self.run_dir, "results.json"), run)
        model = fx.linear_model((8, 8, 1), 10)
        weights, bias = model.layers[-1].get_weights()
        model.layers[-1].set_weights([weights * 1e4, bias])
        model.save(os.path.join(run, "model.keras"))
        with self.assertLogs(level="INFO") as logs:
            out = self.main(model=run, suite="pgd5")
        said = out + "\n".join(logs.output)
        self.assertEqual(said.count("all-zero cross-entropy"), 1, said)
        self.assertIn("  warning: ", out)
        self.assertNotIn("train examples", said)
        self.assertIn(
            "8 test examples (for evaluation only: no training pipeline)",
            said,
        )
        with open(os.path.join(run, "eval.json")) as f:
            report = json.load(f)["gradient_masking"]
        self.assertTrue(report["checks"]["zero_gradient_points"]["warned"])
        self.assertLen(report["warnings"], 1)


class NormAndCurveTest(_RunFolderTestCase):
    """--norm and --epsilons."""

    def output(self, name):
        return os.path.join(self.create_tempdir().full_path, name)

    def test_l2(self):
        output = self.output("l2.json")
        out = self.main(
            model=self.run_dir,
            suite="pgd10,square100",
            norm="l2",
            epsilon=0.5,
            output=output,
        )
        self.assertIn("l2 epsilon 0.5", out)
        with open(output) as f:
            result = json.load(f)
        self.assertEqual(result["norm"], "l2")
        for description in result["attacks"].values():
            self.assertIn("L2ThreatModel(epsilon=0.5)", description)
        self.assertNotIn("curve", result)
        self.assertFalse(os.path.exists(evaluate.plot_path(output)))
        # A run trained in L2 says so in its results.json: the default.
        l2_run = os.path.join(self.create_tempdir().full_path, "l2run")
        os.makedirs(l2_run)
        shutil.copy(os.path.join(self.run_dir, "model.keras"), l2_run)
        with open(os.path.join(self.run_dir, "results.json")) as f:
            results = {**json.load(f), "norm": "l2", "epsilon": 0.5}
        with open(os.path.join(l2_run, "results.json"), "w") as f:
            json.dump(results, f)
        out = self.main(model=l2_run, suite="pgd5")
        self.assertIn("l2 epsilon 0.5", out)

    def test_bad_norm_and_epsilons(self):
        run = self.run_dir
        self.assert_error(
            r"--norm must be one of \['linf', 'l2'\]; got 'l3'",
            model=run,
            norm="l3",
        )
        # The run's epsilon is an L-inf radius: another norm needs its own.
        self.assert_error(
            "evaluated in linf at epsilon 0.05, a radius that means nothing "
            "in l2; pass --epsilon",
            model=run,
            norm="l2",
        )
        self.assert_error("at least two budgets", model=run, epsilons=["0.1"])
        self.assert_error(
            r"--epsilons value must be in \(0, 1\]; got 1\.5",
            model=run,
            epsilons=["0.1", "1.5"],
        )
        self.assert_error(
            "'x' is not a number", model=run, epsilons=["0.1", "x"]
        )
        self.assert_error(
            "lists the budget 0.1 twice",
            model=run,
            epsilons=["0.1", "0.1"],
        )
        self.assert_error(
            "needs named attacks",
            model=run,
            epsilons=["0.01", "0.1"],
            gin_bindings=[
                "evaluate_suite.suite = [@ProjectedGradient()]",
                "ProjectedGradient.epsilon = 0.1",
                "ProjectedGradient.step_size = 0.1",
                "ProjectedGradient.num_steps = 1",
            ],
        )
        # The plot's file is never overwritten either.
        output = self.output("taken.json")
        with open(evaluate.plot_path(output), "w") as f:
            f.write("mine")
        self.assert_error(
            "taken.png exist",
            model=run,
            epsilons=["0.01", "0.1"],
            output=output,
        )

    def test_robustness_curve(self):
        output = self.output("curve.json")
        out = self.main(
            model=self.run_dir,
            suite="pgd10,square100",
            epsilons=["0.2", "0.02"],
            num_examples=16,
            output=output,
        )
        self.assertIn("robustness curve (linf", out)
        with open(output) as f:
            result = json.load(f)
        # The headline numbers are at the run's epsilon (0.05), not in the
        # list, so it ran as well.
        self.assertEqual(result["epsilon"], 0.05)
        curve = result["curve"]
        self.assertEqual(curve["epsilons"], [0.02, 0.2])
        self.assertEqual(curve["norm"], "linf")
        self.assertEqual(list(curve["attacks"]), ["pgd10", "square100"])
        for values in [*curve["attacks"].values(), curve["worst_case"]]:
            self.assertLen(values, 2)
            for value in values:
                self.assertBetween(value, 0.0, 1.0)
        worst = curve["worst_case"]
        self.assertEqual(worst, sorted(worst, reverse=True))
        self.assertLess(worst[1], worst[0])
        self.assertEqual([r["epsilon"] for r in curve["results"]], [0.02, 0.2])
        picture = evaluate.plot_path(output)
        self.assertEqual(picture, output[: -len(".json")] + ".png")
        with open(picture, "rb") as f:
            content = f.read()
        self.assertEqual(content[:8], b"\x89PNG\r\n\x1a\n")
        self.assertGreater(len(content), 5000)
        self.assertIn(f"wrote {picture}", out)
