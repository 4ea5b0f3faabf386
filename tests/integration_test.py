"""Slow tier: real training on the real Fashion-MNIST, end to end.

Run with `pytest --run_slow` (CI does). Every shipped gin file's tiny
training run is in gin_configs_test.py.
"""

import keras
import pytest
import tensorflow as tf

from tfadv import attacks
from tfadv import data
from tfadv import evaluation
from tfadv import methods
from tfadv import models


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
