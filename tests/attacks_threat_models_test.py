"""Threat models: projection, steps, the random start and distances."""

import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from tests import harness
from tfadv.attacks import base
from tfadv.attacks import threat_models

EPS = {"linf": 0.1, "l2": 0.5}


class ThreatModelTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters("linf", "l2")
    def test_sample_is_in_the_ball_and_not_clipped_to_the_box(self, norm):
        tm = threat_models.get(norm, EPS[norm])
        x = tf.zeros([64, 6, 6, 1])
        point = tm.sample(x, base.as_seed(1))
        self.assertAllLessEqual(tm.distance(x, point), EPS[norm] + 1e-6)
        # x = 0: about half of the point is below the image box.
        self.assertLess(float(tf.reduce_min(point)), 0.0)
        # The same seed, the same point; another seed, another point.
        self.assertAllEqual(point, tm.sample(x, base.as_seed(1)))
        self.assertNotAllClose(point, tm.sample(x, base.as_seed(2)))

    def test_linf_sample_is_uniform_in_the_box(self):
        tm = threat_models.get("linf", 0.1)
        x = tf.fill([64, 6, 6, 1], 0.5)
        delta = (tm.sample(x, base.as_seed(3)) - x).numpy()
        self.assertAllInRange(delta, -0.1, 0.1)
        self.assertLess(delta.min(), -0.09)
        self.assertGreater(delta.max(), 0.09)
        self.assertNear(delta.mean(), 0.0, 0.01)

    @parameterized.parameters("linf", "l2")
    def test_random_init_is_the_projected_sample(self, norm):
        tm = threat_models.get(norm, EPS[norm])
        x, _ = harness.attack_data()
        seed = base.as_seed(5)
        got = tm.random_init(x, seed)
        self.assertAllEqual(got, tm.project(x, tm.sample(x, seed)))
        self.assertAllInRange(got, 0.0, 1.0)
        self.assertAllLessEqual(tm.distance(x, got), EPS[norm] + 1e-6)

    @parameterized.parameters("linf", "l2")
    def test_project_lands_in_ball_and_box_and_is_idempotent(self, norm):
        tm = threat_models.get(norm, EPS[norm])
        x, _ = harness.attack_data()
        far = x + tf.random.stateless_normal(tf.shape(x), [0, 1])
        once = tm.project(x, far)
        self.assertAllInRange(once, 0.0, 1.0)
        self.assertAllLessEqual(tm.distance(x, once), EPS[norm] + 1e-5)
        self.assertAllClose(tm.project(x, once), once, atol=1e-6)

    def test_linf_projection_clips_the_ball_before_the_box(self):
        tm = threat_models.get("linf", 0.1)
        x = np.array([[0.05, 0.5, 0.95]], "float32")
        x_adv = np.array([[-0.5, 0.9, 1.02]], "float32")
        self.assertAllClose(
            tm.project(x, x_adv), harness.project(x, x_adv, 0.1)
        )

    def test_steps(self):
        x = tf.constant([[0.5, 0.5]])
        grad = tf.constant([[3.0, -4.0]])
        linf = threat_models.get("linf", 0.1)
        self.assertAllClose(linf.step(x, grad, 0.1), [[0.6, 0.4]])
        l2 = threat_models.get("l2", 0.1)
        self.assertAllClose(l2.step(x, grad, 0.5), [[0.8, 0.1]])

    def test_distances(self):
        x = tf.zeros([2, 2])
        x_adv = tf.constant([[0.3, -0.4], [0.0, 0.1]])
        self.assertAllClose(
            threat_models.get("linf", 0.5).distance(x, x_adv), [0.4, 0.1]
        )
        self.assertAllClose(
            threat_models.get("l2", 0.5).distance(x, x_adv), [0.5, 0.1]
        )

    def test_bad_arguments(self):
        with self.assertRaisesRegex(ValueError, "norm.*'l3'.*accepted"):
            threat_models.get("l3", 0.1)
        with self.assertRaisesRegex(ValueError, "epsilon.*1.5"):
            threat_models.get("linf", 1.5)
