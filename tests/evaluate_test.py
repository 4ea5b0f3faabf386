"""The `python -m tfadv.evaluate` command (tfadv/evaluate.py)."""

import contextlib
import gzip
import io
import json
import os
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


class EvaluateCommandTest(tf.test.TestCase):
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
        # A second run goes beside it, named after the suite; gin sets it.
        self.main(model=run, gin_bindings=["evaluate_suite.suite = 'cw5'"])
        with open(os.path.join(run, "eval-cw5.json")) as f:
            self.assertEqual(json.load(f)["num_examples"], 8)
        self.assert_error("never overwrites", model=run, suite="cw5")
