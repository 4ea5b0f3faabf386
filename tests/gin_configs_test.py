"""The shipped gin files: each parses with testing/tiny.gin and builds.

Fast tier: every runnable file (gin_configs/*.gin and experiments/) parses
strictly stacked with testing/tiny.gin and builds everything with
`dry_run`; every fragment (data/, eval/, testing/) stacks on a method
file. Slow tier (`--run_slow`): each runnable file trains through the
command line and writes a loadable run folder; each method file (on
Fashion-MNIST) trains three tiny epochs and must have learned. Datasets not on
this machine (CIFAR, MNIST, SVHN) come from tfds's mock data; Fashion-MNIST
is read from its local copy.
"""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import flags
from absl.testing import parameterized

from tests import cli_fixtures
from tfadv import experiment
from tfadv import run_folder
from tfadv import train

SHIPPED = cli_fixtures.SHIPPED
FRAGMENTS = cli_fixtures.FRAGMENTS


def _named(gin_files):
    """(test name, gin file) pairs: "experiments/x.gin" -> "experiments_x"."""
    return [(f[: -len(".gin")].replace("/", "_"), f) for f in gin_files]


def setUpModule():
    flags.FLAGS.mark_as_parsed()


class GinConfigsTest(tf.test.TestCase, parameterized.TestCase):
    def test_shipped_configs_found(self):
        self.assertIn("pgd_at.gin", SHIPPED)
        self.assertIn("standard.gin", SHIPPED)
        self.assertIn("experiments/cifar10_trades.gin", SHIPPED)
        self.assertIn("testing/tiny.gin", FRAGMENTS)
        self.assertCountEqual(SHIPPED + FRAGMENTS, cli_fixtures.ALL_GIN_FILES)

    @parameterized.named_parameters(*_named(SHIPPED))
    def test_parses_and_builds_with_tiny(self, gin_file):
        train.parse_gin([gin_file, "testing/tiny.gin"], [])
        logdir = os.path.join(self.create_tempdir().full_path, "run")
        with tfds.testing.mock_data(num_examples=300):
            result = experiment.run(logdir=logdir, dry_run=True)
        self.assertEqual(result, {})
        self.assertFalse(os.path.exists(logdir))

    @parameterized.named_parameters(*_named(FRAGMENTS))
    def test_fragment_stacks_on_a_method_file(self, fragment):
        train.parse_gin(["pgd_at.gin", fragment, "testing/tiny.gin"], [])
        logdir = os.path.join(self.create_tempdir().full_path, "run")
        with tfds.testing.mock_data(num_examples=300):
            result = experiment.run(logdir=logdir, dry_run=True)
        self.assertEqual(result, {})


# Epochs of testing/tiny.gin in which every method file on Fashion-MNIST
# (real data) must learn: clean accuracy well above chance (0.1), and more
# than one class predicted (a collapsed model predicts one). Measured on
# this machine, every method file ended between 0.30 and 0.63.
LEARNS_IN_EPOCHS = 3
LEARNED_CLEAN_ACCURACY = 0.2


@pytest.mark.slow
class EveryConfigTrainsTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.named_parameters(*_named(SHIPPED))
    def test_config_trains_with_tiny(self, gin_file):
        logdir = os.path.join(self.create_tempdir().full_path, "run")
        # Method files (Fashion-MNIST) train long enough to have learned;
        # CIFAR, MNIST and SVHN configs read tfds mock data (no network),
        # where there is nothing to learn, for one epoch.
        learns = "/" not in gin_file
        bindings = [f"run.epochs = {LEARNS_IN_EPOCHS}"] if learns else []
        with tfds.testing.mock_data(num_examples=300):
            cli_fixtures.run_cli(
                logdir, gin_file, "testing/tiny.gin", bindings=bindings
            )
        with open(os.path.join(logdir, "results.json")) as f:
            results = json.load(f)
        self.assertGreaterEqual(results["epochs"], 1)
        self.assertBetween(results["clean_accuracy"], 0.0, 1.0)
        for value in results["robust_accuracy"].values():
            self.assertBetween(value, 0.0, 1.0)
        keras.saving.load_model(os.path.join(logdir, "model.keras"))
        if learns:
            self.assertGreaterEqual(
                results["clean_accuracy"], LEARNED_CLEAN_ACCURACY
            )
            self.assertGreater(results["predicted_classes"], 1)


class MethodConfigTest(tf.test.TestCase, parameterized.TestCase):
    """Each shipped config trains a few steps with testing/tiny.gin."""

    @parameterized.parameters(
        ("fgsm_rs.gin", "FGSMRS"),
        ("n_fgsm.gin", "NFGSM"),
        ("grad_align.gin", "GradAlign"),
        ("fgsm_pgi.gin", "FGSMPGI"),
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
        "experiments/cifar10_n_fgsm.gin",
        "experiments/cifar10_grad_align.gin",
        "experiments/cifar10_fgsm_pgi.gin",
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
