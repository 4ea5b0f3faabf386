"""Mixed precision and XLA: every method trains, perturbations stay float32.

Also the float16 underflow of TRADES' first attack gradient: at the start
x + 0.001·N the KL objective is about 1e-7, whose input gradient partly
underflows in float16 unless the attack scales the objective first
(`tfadv.attacks.base.for_gradient`).
"""

from unittest import mock

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl.testing import parameterized

import tfadv
from tests import harness
from tests.methods_keras_test import ALL_METHODS
from tests.methods_keras_test import make_any
from tfadv.attacks import base as attack_base

EPS = 0.1


def _small_cnn(policy):
    keras.mixed_precision.set_dtype_policy(policy)
    try:
        keras.utils.set_random_seed(1)
        return tfadv.models.small_cnn(input_shape=(28, 28, 1), num_classes=10)
    finally:
        keras.mixed_precision.set_dtype_policy("float32")


class Float16UnderflowTest(tf.test.TestCase):
    def test_the_first_trades_step_keeps_float32s_signs(self):
        rng = np.random.default_rng(0)
        x = rng.uniform(0.25, 0.75, size=(128, 28, 28, 1)).astype("float32")
        start = x + 0.001 * rng.standard_normal(x.shape).astype("float32")
        exact, half = _small_cnn("float32"), _small_cnn("mixed_float16")
        half.set_weights(exact.get_weights())
        self.assertEqual(half.compute_dtype, "float16")
        # One TRADES step from the caller's start: far from the box and the
        # ball's edge, so the move is step_size times the gradient's sign.
        attack = tfadv.attacks.ProjectedGradient(
            epsilon=EPS,
            step_size=0.01,
            num_steps=1,
            objective="kl",
            start="none",
        )

        def signs(model):
            clean = tf.nn.softmax(tf.cast(model(x), tf.float32))
            moved = attack(model, x, clean, seed=0, x_init=start)
            self.assertEqual(moved.dtype, tf.float32)
            return np.round((moved.numpy() - start) / 0.01)

        want = signs(exact)
        self.assertEqual(np.mean(want == 0), 0.0)
        got = signs(half)
        with mock.patch.object(
            attack_base, "for_gradient", lambda total, per_example: total
        ):
            unscaled = signs(half)
        # Without the scale, float16 loses a good part of the gradient.
        self.assertGreater(np.mean(unscaled == 0), 0.01)
        self.assertLess(np.mean(got == 0), 0.001)
        self.assertGreater(np.mean(got == want), 0.85)
        self.assertGreater(np.mean(got == want), np.mean(unscaled == want))

    def test_the_scale_is_a_power_of_two_outside_the_gradient(self):
        per_example = tf.constant([1e-7, 3e-7])
        x = tf.constant(2.0)
        with tf.GradientTape() as tape:
            tape.watch(x)
            total = attack_base.for_gradient(
                x * tf.reduce_sum(per_example), per_example
            )
        scale = float(total) / float(2.0 * tf.reduce_sum(per_example))
        self.assertEqual(np.log2(scale), np.round(np.log2(scale)))
        self.assertBetween(scale * 2e-7, 0.5, 2.0)  # mean brought near 1
        self.assertAllClose(tape.gradient(total, x), scale * 4e-7)
        # Objectives of order 1 and above are left alone.
        self.assertAllEqual(
            attack_base.for_gradient(tf.constant(5.0), tf.constant([5.0])), 5.0
        )


def _fit_two_steps(cls, policy, jit_compile):
    keras.mixed_precision.set_dtype_policy(policy)
    try:
        method = make_any(cls, harness.tiny_classifier())
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    optimizer = keras.optimizers.SGD(0.05, momentum=0.9)
    if policy == "mixed_float16":
        optimizer = keras.mixed_precision.LossScaleOptimizer(optimizer)
    method.compile(optimizer=optimizer, jit_compile=jit_compile)
    perturbed = []
    perturb = type(method).perturb

    def recording(self, x, y):
        x_adv = perturb(self, x, y)
        perturbed.append(None if x_adv is None else x_adv.dtype)
        return x_adv

    x, y = harness.tiny_data()
    before = [w.numpy() for w in method.classifier.trainable_weights]
    with mock.patch.object(type(method), "perturb", recording):
        history = method.fit(
            harness.training_inputs(method, x),
            y,
            batch_size=harness.BATCH,
            epochs=1,
            verbose=0,
        )
    return method, before, history.history, perturbed


@pytest.mark.slow
class PrecisionAndXLATest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.product(
        cls=ALL_METHODS,
        setting=(
            ("mixed_bfloat16", False),
            ("float32", True),
            ("mixed_bfloat16", True),
        ),
    )
    def test_every_method_trains(self, cls, setting):
        policy, jit_compile = setting
        method, before, logs, perturbed = _fit_two_steps(
            cls, policy, jit_compile
        )
        self.assertTrue(np.isfinite(logs["loss"][-1]), logs)
        after = method.classifier.trainable_weights
        self.assertTrue(
            any(
                not np.array_equal(a, b.numpy())
                for a, b in zip(before, after, strict=True)
            )
        )
        for weight in after:
            self.assertEqual(weight.dtype, "float32")  # the master copy
        # Perturbations are made and kept in float32, the images' type.
        for dtype in perturbed:
            if dtype is not None:
                self.assertEqual(dtype, tf.float32)

    @parameterized.parameters(
        tfadv.methods.PGDAT, tfadv.methods.TRADES, tfadv.methods.MART
    )
    def test_float16_methods_train(self, cls):
        method, _, logs, perturbed = _fit_two_steps(cls, "mixed_float16", False)
        self.assertTrue(np.isfinite(logs["loss"][-1]), logs)
        self.assertEqual(set(perturbed), {tf.float32})
