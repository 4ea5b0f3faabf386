"""The methods' shipped gin configs through `experiment.run`.

Moved from the old tests/baselines_test.py; to be merged into
tests/experiment_test.py by the owner of the experiment tests.
"""

import json
import os

import numpy as np
import tensorflow as tf
from absl import flags
from absl.testing import parameterized

from tfadv import experiment
from tfadv import run_folder
from tfadv import train


def setUpModule():
    # tf.test.TestCase.create_tempdir reads absl flags.
    flags.FLAGS.mark_as_parsed()


class GinConfigTest(tf.test.TestCase, parameterized.TestCase):
    """Each shipped config trains a few steps with testing/tiny.gin."""

    @parameterized.parameters(
        ("fgsm_rs.gin", "FGSMRS"),
        ("free_at.gin", "FreeAT"),
        ("trades.gin", "TRADES"),
        ("mart.gin", "MART"),
    )
    def test_trains_with_tiny(self, gin_file, method_name):
        logdir = os.path.join(self.create_tempdir().full_path, "run")
        train.parse_gin([gin_file, "testing/tiny.gin"], [])
        results = experiment.run(logdir=logdir)
        self.assertEqual(results["method"], method_name)
        self.assertTrue(np.isfinite(results["history"]["loss"][-1]))
        with open(os.path.join(logdir, run_folder.RESULTS_FILE)) as f:
            written = json.load(f)
        if gin_file == "fgsm_rs.gin":
            guard = written["catastrophic_overfitting"]
            self.assertFalse(guard["stopped"])
            self.assertLen(guard["robust_accuracy_history"], 1)

    @parameterized.parameters(
        "experiments/cifar10_fgsm_rs.gin",
        "experiments/cifar10_free_at.gin",
        "experiments/cifar10_trades.gin",
        "experiments/cifar10_mart.gin",
    )
    def test_cifar_experiment_parses(self, gin_file):
        # No CIFAR-10 offline: build everything on Fashion-MNIST with the
        # tiny model (tests/train_test.py builds them on mock CIFAR data).
        train.parse_gin(
            [gin_file, "testing/tiny.gin"],
            ["make_datasets.name = 'fashion_mnist'"],
        )
        self.assertEqual(
            experiment.run(
                logdir=self.create_tempdir().full_path, dry_run=True
            ),
            {},
        )
