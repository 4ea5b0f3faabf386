"""Slow tier: real training on the real Fashion-MNIST, every config run.

Run with `pytest --run_slow` (CI does).
"""

import json
import os

import keras
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import flags
from absl.testing import parameterized

from tests import train_test
from tfadv import attacks
from tfadv import data
from tfadv import evaluation
from tfadv import methods
from tfadv import models


def setUpModule():
    flags.FLAGS.mark_as_parsed()


def _fashion_mnist_or_skip(**kw):
    try:
        return data.make_datasets(**kw)
    except data.DataNotFoundError as e:
        pytest.skip(f"Fashion-MNIST is not installed here: {e}")


@pytest.mark.slow
class PGDATLearnsRobustnessTest(tf.test.TestCase):
    def test_pgd_at_is_robust_where_standard_training_is_not(self):
        ds = _fashion_mnist_or_skip(
            train_examples=10000, validation_examples=0, eval_examples=500
        )
        eps = 0.1
        pgd10 = attacks.ProjectedGradient(
            epsilon=eps, step_size=0.025, num_steps=10
        )
        pgd20 = attacks.ProjectedGradient(
            epsilon=eps, step_size=0.01, num_steps=20, name="pgd20"
        )
        scores = {}
        for name, make in (
            ("standard", methods.Standard),
            ("pgd_at", lambda c: methods.PGDAT(c, train_attack=pgd10)),
        ):
            keras.utils.set_random_seed(0)
            classifier = models.small_cnn(mean=ds.info.mean, std=ds.info.std)
            trainer = make(classifier)
            trainer.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
            trainer.fit(ds.train, epochs=2, verbose=0)
            scores[name] = evaluation.evaluate_robustness(
                classifier, ds.test, [pgd20]
            )
        # Both learn the task...
        self.assertGreater(scores["standard"]["clean_accuracy"], 0.8)
        self.assertGreater(scores["pgd_at"]["clean_accuracy"], 0.65)
        # ...the attack breaks the standard model, not the PGD-AT one (on
        # 10k examples x 2 epochs PGD-AT reached about 0.6 when written).
        self.assertLess(scores["standard"]["robust_accuracy"]["pgd20"], 0.25)
        self.assertGreater(scores["pgd_at"]["robust_accuracy"]["pgd20"], 0.5)


@pytest.mark.slow
class EveryConfigTrainsTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters(*train_test.SHIPPED)
    def test_config_trains_with_tiny(self, gin_file):
        logdir = os.path.join(self.create_tempdir().full_path, "run")
        # CIFAR, MNIST and SVHN configs read tfds mock data (no network).
        with tfds.testing.mock_data(num_examples=300):
            train_test.run_cli(logdir, gin_file, "testing/tiny.gin")
        with open(os.path.join(logdir, "results.json")) as f:
            results = json.load(f)
        self.assertGreaterEqual(results["epochs"], 1)
        self.assertBetween(results["clean_accuracy"], 0.0, 1.0)
        for value in results["robust_accuracy"].values():
            self.assertBetween(value, 0.0, 1.0)
        keras.saving.load_model(os.path.join(logdir, "model.keras"))
