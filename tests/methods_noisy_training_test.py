"""tfadv.methods.NoisyTraining and soft_quantization.gin end to end.

The harness; the noise (law, scale, fresh per example and step, clipped);
no attack runs during training; one SGD step with the ℓ1 input-gradient
penalty on a linear model against NumPy, on one device and under a
2-replica MirroredStrategy; the masking declaration; the shipped config
trained through the command line and evaluated by `tfadv.evaluate`, both
with PGD through the layer, PGD through BPDA, Square and their minimum.
"""

import contextlib
import io
import json
import os
from unittest import mock

import gin
import keras
import numpy as np
import tensorflow as tf
from absl import flags
from absl.testing import flagsaver
from absl.testing import parameterized

from tests import cli_fixtures
from tests import harness
from tfadv import evaluate
from tfadv import layers
from tfadv import methods
from tfadv import models
from tfadv.attacks import base as attack_base


def setUpModule():
    flags.FLAGS.mark_as_parsed()


class HarnessTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.named_parameters(
        ("gaussian", dict()),
        ("uniform", dict(noise="uniform", noise_scale=0.2)),
        ("penalty", dict(gradient_penalty=0.1, weight_decay=5e-4)),
    )
    def test_noisy_training(self, kwargs):
        harness.run_method_test(
            self, lambda c: methods.NoisyTraining(c, **kwargs)
        )

    def test_with_a_soft_quantization_input_layer(self):
        def make(classifier):
            model = models.prepend_layers(
                classifier, [layers.SoftQuantization(name="sq")]
            )
            return methods.NoisyTraining(model)

        # prepend_layers rebuilds a functional classifier only.
        method, _ = harness.run_method_test(self, make, subclassed=None)
        self.assertEqual(method.masking_layers(), ["sq"])


def all_attack_classes():
    found, todo = set(), [attack_base.Attack]
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            if sub not in found:
                found.add(sub)
                todo.append(sub)
    return found


class NoiseTest(tf.test.TestCase):
    def test_no_attack_runs_during_training(self):
        calls = []
        patches = []
        for cls in all_attack_classes():
            if "__call__" in vars(cls):
                original = vars(cls)["__call__"]

                def counted(self, *args, _original=original, **kwargs):
                    calls.append(type(self).__name__)
                    return _original(self, *args, **kwargs)

                patches.append(mock.patch.object(cls, "__call__", counted))
        self.assertNotEmpty(patches)
        x, y = harness.tiny_data()
        with contextlib.ExitStack() as stack:
            for patch in patches:
                stack.enter_context(patch)
            # The counting works: a PGD call is seen.
            harness.pgd()(harness.tiny_classifier(), x[:2], y[:2], seed=0)
            self.assertEqual(calls, ["ProjectedGradient"])
            calls.clear()
            method = methods.NoisyTraining(
                harness.tiny_classifier(), gradient_penalty=0.1
            )
            method.compile(optimizer=keras.optimizers.SGD(0.1))
            method.fit(x, y, batch_size=harness.BATCH, epochs=2, verbose=0)
        self.assertEqual(calls, [])

    def test_gaussian_and_uniform_noise(self):
        x = tf.fill((64, 8, 8, 1), 0.5)
        y = tf.zeros((64,), tf.int32)
        gaussian = methods.NoisyTraining(
            harness.tiny_classifier(), noise_scale=0.1, seed=1
        )
        first, second = gaussian.perturb(x, y), gaussian.perturb(x, y)
        noise = (first - x).numpy()
        self.assertAllClose(noise.std(), 0.1, rtol=0.05)
        self.assertAllClose(noise.mean(), 0.0, atol=0.01)
        # Fresh per example and per step.
        self.assertNotAllClose(noise[0], noise[1])
        self.assertNotAllClose(first, second)
        uniform = methods.NoisyTraining(
            harness.tiny_classifier(), noise="uniform", noise_scale=0.2
        )
        noise = (uniform.perturb(x, y) - x).numpy()
        self.assertAllInRange(noise, -0.2, 0.2)
        self.assertAllClose(noise.std(), 0.2 / np.sqrt(3), rtol=0.05)
        # Clipped to the image box.
        edge = gaussian.perturb(tf.zeros_like(x), y).numpy()
        self.assertAllInRange(edge, 0.0, 1.0)
        self.assertGreater(np.mean(edge == 0.0), 0.4)

    def test_bad_arguments(self):
        classifier = harness.tiny_classifier()
        pgd = harness.pgd()
        cases = [
            (dict(noise="laplace"), "noise must be one of"),
            (dict(noise_scale=0.0), r"noise_scale must be in \(0, 1\]"),
            (dict(noise_scale=2.0), r"noise_scale must be in \(0, 1\]"),
            (dict(gradient_penalty=-1.0), "gradient_penalty must be"),
            (dict(train_attack=pgd), "takes no train_attack"),
            (dict(epsilon=0.1), "takes no epsilon"),
        ]
        for kwargs, message in cases:
            with self.assertRaisesRegex(ValueError, message, msg=kwargs):
                methods.NoisyTraining(classifier, **kwargs)

    def test_masking_layers_declared(self):
        plain = methods.NoisyTraining(harness.tiny_classifier())
        self.assertEqual(plain.masking_layers(), [])
        # Any method with such a layer declares it (PGD-AT too).
        model = models.prepend_layers(
            harness.tiny_classifier(), [layers.SoftQuantization(name="sq")]
        )
        pgd_at = methods.PGDAT(model, epsilon=0.1)
        self.assertEqual(pgd_at.masking_layers(), ["sq"])


class FixedNoise(methods.NoisyTraining):
    """A deterministic elementwise "noise", the same on every replica."""

    def perturb(self, x, y):
        return tf.clip_by_value(x + 0.05 * tf.sin(37.0 * x), 0.0, 1.0)


def numpy_noisy_step(w, b, x, y, *, penalty, lr):
    x_noisy = np.clip(x + 0.05 * np.sin(37.0 * x), 0.0, 1.0)
    c = w.shape[1]

    def loss(w, b):
        z = x_noisy @ w + b
        # ∇ₓ CE of a linear model: W (softmax(z) - onehot(y)).
        input_grad = (harness.softmax(z) - harness.onehot(y, c)) @ w.T
        l1 = np.abs(input_grad).sum(-1)
        return (harness.ce(z, y) + penalty * l1).mean()

    gw, gb = harness.numeric_grad(loss, w, b)
    return w - lr * gw, b - lr * gb


class AnalyticStepTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.product(strategy=["default", "mirrored"], penalty=[0.0, 0.5])
    def test_one_step_on_linear_model(self, strategy, penalty):
        w, b, x, y = harness.linear_problem(seed=4)
        lr = 0.3
        _, (got_w, got_b) = harness.fit_linear(
            lambda c: FixedNoise(c, gradient_penalty=penalty),
            w,
            b,
            x,
            y,
            lr=lr,
            strategy=harness.strategy(strategy),
        )
        want_w, want_b = numpy_noisy_step(w, b, x, y, penalty=penalty, lr=lr)
        self.assertAllClose(got_w, want_w, atol=1e-5)
        self.assertAllClose(got_b, want_b, atol=1e-5)
        if penalty:  # the penalty changes the update
            plain_w, _ = numpy_noisy_step(w, b, x, y, penalty=0.0, lr=lr)
            self.assertNotAllClose(got_w, plain_w, atol=1e-4)


class SoftQuantizationConfigTest(tf.test.TestCase):
    def test_trains_and_evaluates_with_bpda_and_square(self):
        logdir = os.path.join(self.create_tempdir().full_path, "run")
        cli_fixtures.run_cli(
            logdir, "soft_quantization.gin", "testing/tiny.gin"
        )
        with open(os.path.join(logdir, "results.json")) as f:
            results = json.load(f)
        self.assertEqual(results["method"], "NoisyTraining")
        self.assertEqual(results["masking_layers"], ["soft_quantization"])
        robust = results["robust_accuracy"]
        self.assertCountEqual(
            robust, ["pgd20", "bpda_pgd20", "square", "worst_case"]
        )
        self.assertIn("BPDA(", results["eval_attacks"]["bpda_pgd20"])
        self.assertEqual(results["suite_robust_accuracy"], robust["worst_case"])
        for name in ("pgd20", "bpda_pgd20", "square"):
            self.assertLessEqual(robust["worst_case"], robust[name])
        self.assertIn(
            "approximation_beats_true_gradient",
            results["gradient_masking"]["checks"],
        )
        # The model loads with plain Keras once tfadv.layers is imported.
        model = keras.saving.load_model(os.path.join(logdir, "model.keras"))
        self.assertIsInstance(model.layers[1], layers.SoftQuantization)
        # tfadv.evaluate finds the layer in the saved model by itself.
        gin.clear_config()
        out = io.StringIO()
        with (
            flagsaver.flagsaver(model=logdir, suite="pgd5"),
            contextlib.redirect_stdout(out),
        ):
            evaluate.main(["tfadv.evaluate"])
        with open(os.path.join(logdir, "eval.json")) as f:
            evaluated = json.load(f)
        self.assertCountEqual(
            evaluated["robust_accuracy"],
            ["pgd5", "bpda_pgd20", "square", "worst_case"],
        )
        self.assertIn("bpda_pgd20", out.getvalue())
        self.assertEqual(evaluated["suite"], "pgd5+masking")
