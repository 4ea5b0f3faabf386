"""tfadv.layers.SoftQuantization: the formula, its limit, BPDA, saving."""

import os
import subprocess
import sys
import tempfile
import textwrap

import keras
import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from tfadv import attacks
from tfadv import layers


def numpy_soft_quantization(x, thresholds, temperature):
    steps = 1 / (1 + np.exp(-temperature * (x[..., None] - thresholds)))
    return steps.mean(-1)


def hard_staircase(x, thresholds):
    return (x[..., None] > thresholds).mean(-1)


class FormulaTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters(2, 3, 8)
    def test_matches_numpy_and_stays_in_the_unit_interval(self, levels):
        x = np.linspace(0.0, 1.0, 201, dtype="float32")
        layer = layers.SoftQuantization(levels=levels, temperature=20.0)
        thresholds = (np.arange(1, levels) - 0.5) / (levels - 1)
        self.assertAllClose(layer.initial_thresholds(), thresholds)
        got = layer(x[:, None]).numpy()[:, 0]
        self.assertAllClose(
            got, numpy_soft_quantization(x, thresholds, 20.0), atol=1e-6
        )
        self.assertAllInRange(got, 0.0, 1.0)
        self.assertAllGreaterEqual(np.diff(got), 0.0)  # monotone

    @parameterized.parameters(2, 3, 8)
    def test_tends_to_the_hard_staircase(self, levels):
        # Away from the thresholds (by d), each sigmoid is within
        # sigmoid(-T d) of its step, so the error shrinks with T.
        x = np.linspace(0.0, 1.0, 1001, dtype="float32")
        layer = layers.SoftQuantization(levels=levels)
        thresholds = layer.initial_thresholds()
        d = 0.02
        far = np.min(np.abs(x[:, None] - thresholds), axis=1) >= d
        hard = hard_staircase(x, thresholds)
        errors = []
        for t in (5.0, 20.0, 80.0, 320.0, 2000.0):
            sq = layers.SoftQuantization(levels=levels, temperature=t)
            got = sq(x[:, None]).numpy()[:, 0]
            error = np.max(np.abs(got - hard)[far])
            self.assertLessEqual(error, 1 / (1 + np.exp(t * d)) + 1e-6)
            errors.append(error)
        self.assertAllGreater(-np.diff(errors), 0.0)
        self.assertLess(errors[-1], 1e-6)
        # The hard staircase takes the k levels 0, 1/(k-1), ..., 1.
        self.assertAllClose(
            np.unique(hard), np.arange(levels) / (levels - 1), atol=1e-7
        )

    def test_input_gradient_vanishes_away_from_the_thresholds(self):
        # What masks gradients: dSQ/dx = T s(1 - s) at the threshold, about
        # T e^{-T d} at distance d.
        sq = layers.SoftQuantization(levels=2, temperature=20.0)
        x = tf.constant([[0.5], [0.1], [0.95]])
        with tf.GradientTape() as tape:
            tape.watch(x)
            out = sq(x)
        grad = tape.gradient(out, x).numpy()[:, 0]
        self.assertAllClose(grad[0], 20.0 / 4, rtol=1e-5)
        self.assertAllLess(grad[1:], 20.0 * np.exp(-20.0 * 0.4) * 1.01)

    def test_given_and_trainable_thresholds(self):
        x = tf.constant([[0.1], [0.35], [0.9]])
        frozen = layers.SoftQuantization(levels=3, thresholds=[0.2, 0.6])
        frozen(x)
        self.assertEmpty(frozen.trainable_weights)
        self.assertAllClose(frozen.threshold, [0.2, 0.6])
        trained = layers.SoftQuantization(
            levels=3, thresholds=[0.2, 0.6], trainable=True
        )
        with tf.GradientTape() as tape:
            out = tf.reduce_sum(trained(x))
        self.assertLen(trained.trainable_weights, 1)
        grad = tape.gradient(out, trained.trainable_weights[0])
        self.assertAllLess(grad.numpy(), 0.0)  # higher thresholds, lower SQ

    @parameterized.named_parameters(
        ("one_level", dict(levels=1), "levels must be an integer >= 2"),
        ("float_levels", dict(levels=2.5), "levels must be an integer"),
        ("zero_t", dict(temperature=0.0), r"temperature must be in \(0, inf"),
        ("neg_t", dict(temperature=-1.0), "temperature must be in"),
        ("name", dict(thresholds="linear"), "'uniform' or a list"),
        ("count", dict(levels=3, thresholds=[0.5]), "2 strictly increasing"),
        ("order", dict(levels=3, thresholds=[0.6, 0.2]), "increasing"),
        ("range", dict(levels=2, thresholds=[1.0]), r"in \(0, 1\)"),
    )
    def test_bad_arguments(self, kwargs, message):
        with self.assertRaisesRegex(ValueError, message):
            layers.SoftQuantization(**kwargs)


def sq_model(temperature=50.0):
    keras.utils.set_random_seed(3)
    return keras.Sequential(
        [
            keras.Input((6,)),
            layers.SoftQuantization(temperature=temperature, name="sq"),
            keras.layers.Dense(4, activation="tanh"),
            keras.layers.Dense(3),
        ]
    )


class BPDATest(tf.test.TestCase):
    def test_forward_is_the_layer_backward_is_the_identity(self):
        model = sq_model()
        pgd = attacks.ProjectedGradient(
            epsilon=0.1, step_size=0.01, num_steps=2
        )
        surrogate = attacks.BPDA(pgd, layers="sq").surrogate(model)
        x = tf.constant(
            np.random.default_rng(0).uniform(size=(5, 6)), "float32"
        )
        self.assertAllClose(surrogate(x), model(x))
        # Backward: the gradient of the layers after SQ, at SQ(x), as if
        # SQ were the identity.
        v = tf.constant(np.random.default_rng(1).normal(size=(5, 3)), "float32")
        with tf.GradientTape() as tape:
            tape.watch(x)
            through_bpda = tf.reduce_sum(surrogate(x) * v)
        got = tape.gradient(through_bpda, x)
        quantized = model.layers[0](x)
        with tf.GradientTape() as tape:
            tape.watch(quantized)
            rest = model.layers[2](model.layers[1](quantized))
            want = tape.gradient(tf.reduce_sum(rest * v), quantized)
        self.assertAllClose(got, want, atol=1e-6)
        # Through the true layer the gradient is far smaller (masked).
        with tf.GradientTape() as tape:
            tape.watch(x)
            true = tf.reduce_sum(model(x) * v)
        masked = tape.gradient(true, x)
        self.assertNotAllClose(masked, got)


_LOAD = """
import sys
import numpy as np
import keras
{imports}
model = keras.saving.load_model(sys.argv[1])
x = np.load(sys.argv[2])
np.save(sys.argv[3], keras.ops.convert_to_numpy(model(x)))
"""


class SavingTest(tf.test.TestCase):
    def test_config_round_trip(self):
        layer = layers.SoftQuantization(
            levels=3, temperature=7.5, thresholds=[0.25, 0.7], name="q"
        )
        clone = layers.SoftQuantization.from_config(layer.get_config())
        self.assertEqual(
            (clone.levels, clone.temperature, clone.thresholds, clone.name),
            (3, 7.5, (0.25, 0.7), "q"),
        )
        self.assertFalse(clone.trainable)

    def test_model_loads_in_a_fresh_process_after_importing_tfadv_layers(
        self,
    ):
        tmp = tempfile.mkdtemp()
        model = sq_model()
        path = os.path.join(tmp, "model.keras")
        model.save(path)
        x = np.random.default_rng(0).uniform(size=(4, 6)).astype("float32")
        np.save(os.path.join(tmp, "x.npy"), x)

        def load(imports):
            script = os.path.join(tmp, "load.py")
            with open(script, "w") as f:
                f.write(textwrap.dedent(_LOAD.format(imports=imports)))
            out = os.path.join(tmp, "out.npy")
            proc = subprocess.run(
                [sys.executable, script, path, f"{tmp}/x.npy", out],
                capture_output=True,
                text=True,
                env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
            )
            return proc, out

        proc, out = load("import tfadv.layers")
        self.assertEqual(proc.returncode, 0, proc.stderr[-2000:])
        self.assertAllClose(np.load(out), model(x), atol=1e-6)
        # Without the import Keras cannot find the class: the documented
        # requirement is real.
        proc, _ = load("")
        self.assertNotEqual(proc.returncode, 0)
        self.assertIn("SoftQuantization", proc.stderr)
