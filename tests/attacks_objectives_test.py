"""The per-example objectives attacks maximise, and the training KL."""

import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from tests import harness
from tfadv.attacks import objectives


class ObjectivesTest(tf.test.TestCase, parameterized.TestCase):
    def test_kl_objective_is_zero_at_clean_point_and_positive_elsewhere(self):
        logits = tf.constant([[1.0, 2.0, -1.0], [0.0, 0.0, 0.0]])
        p = tf.nn.softmax(logits)
        self.assertAllClose(objectives.kl_to_clean(logits, p), [0.0, 0.0])
        other = tf.constant([[2.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
        self.assertAllGreater(objectives.kl_to_clean(other, p), 0.0)

    def test_margin_masks_true_class_with_minus_infinity(self):
        logits = tf.constant([[-1.0, -3.0, -2.0]])
        # All other logits negative: max over j != 0 is -2, margin -2 - -1.
        self.assertAllClose(objectives.margin(logits, tf.constant([0])), [-1.0])

    def test_cross_entropy_matches_numpy(self):
        rng = np.random.default_rng(0)
        z = rng.normal(size=(6, 4)).astype("float32")
        y = rng.integers(0, 4, size=6).astype("int32")
        self.assertAllClose(
            objectives.cross_entropy(z, y), harness.ce(z, y), atol=1e-6
        )

    def test_kl_divergence_matches_numpy_and_the_attack_objective(self):
        rng = np.random.default_rng(1)
        clean = rng.normal(size=(6, 4)).astype("float32")
        adv = rng.normal(size=(6, 4)).astype("float32")
        got = objectives.kl_divergence(clean, adv)
        self.assertAllClose(got, harness.kl(clean, adv), atol=1e-6)
        self.assertAllClose(
            got,
            objectives.kl_to_clean(adv, tf.nn.softmax(clean)),
            atol=1e-6,
        )
        self.assertAllClose(objectives.kl_divergence(clean, clean), [0.0] * 6)

    def test_kl_divergence_has_gradients_through_both_arguments(self):
        rng = np.random.default_rng(2)
        clean = tf.constant(rng.normal(size=(3, 4)).astype("float32"))
        adv = tf.constant(rng.normal(size=(3, 4)).astype("float32"))
        with tf.GradientTape() as tape:
            tape.watch([clean, adv])
            total = tf.reduce_sum(objectives.kl_divergence(clean, adv))
        g_clean, g_adv = tape.gradient(total, [clean, adv])
        # d/d adv of Σ KL(p ‖ q) is q - p; the clean side is not detached.
        p, q = harness.softmax(clean.numpy()), harness.softmax(adv.numpy())
        self.assertAllClose(g_adv, q - p, atol=1e-6)
        self.assertGreater(float(tf.reduce_max(tf.abs(g_clean))), 1e-3)

    def test_target_kinds(self):
        self.assertEqual(
            objectives.target_kind(objectives.kl_to_clean), "clean_probs"
        )
        for name in ("cross_entropy", "margin", "dlr"):
            self.assertEqual(
                objectives.target_kind(objectives.get(name)), "labels"
            )
        self.assertEqual(objectives.target_kind(lambda z, y: z), "labels")

    def test_names_and_lookup(self):
        for name, fn in objectives.OBJECTIVES.items():
            self.assertIs(objectives.get(name), fn)
            self.assertEqual(objectives.name_of(fn), name)

        def custom(logits, labels):
            return logits[:, 0]

        self.assertIs(objectives.get(custom), custom)
        self.assertIs(objectives.name_of(custom), custom)
        with self.assertRaisesRegex(ValueError, "objective.*'hinge'"):
            objectives.get("hinge")

    def test_objectives_are_float32_under_float16_logits(self):
        logits = tf.constant([[1.0, 2.0, -1.0]], tf.float16)
        for name in ("cross_entropy", "margin", "dlr"):
            out = objectives.get(name)(logits, tf.constant([1]))
            self.assertEqual(out.dtype, tf.float32, msg=name)
