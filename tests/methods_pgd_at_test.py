"""PGD-AT: the shared harness, the analytic step, its defaults, and the
base checks exercised through it (bad input, mixed precision, budget)."""

import keras
import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from tests import harness
from tfadv import attacks
from tfadv import methods


def linear_classifier(d=5, c=3):
    w, b, _, _ = harness.linear_problem(d=d, c=c)
    model = keras.Sequential([keras.Input((d,)), keras.layers.Dense(c)])
    model.layers[0].set_weights([w, b])
    return model


class HarnessTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters(0.0, 0.5)
    def test_pgd_at(self, clean_weight):
        harness.run_method_test(
            self,
            lambda c: methods.PGDAT(
                c, train_attack=harness.pgd(), clean_weight=clean_weight
            ),
        )

    def test_pgd_at_eval_mode_attack_and_weight_decay(self):
        harness.run_method_test(
            self,
            lambda c: methods.PGDAT(
                c,
                train_attack=harness.pgd(),
                attack_training_mode=False,
                weight_decay=5e-4,
            ),
        )


class AnalyticStepTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.product(
        strategy=["default", "mirrored"],
        clean_weight=[0.0, 0.5],
        wd=[0.0, 0.01],
    )
    def test_one_pgd_at_step_on_linear_model(self, strategy, clean_weight, wd):
        w, b, x, y = harness.linear_problem()
        eps, step, k, lr = 0.1, 0.04, 4, 0.5
        _, (got_w, got_b) = harness.fit_linear(
            lambda c: methods.PGDAT(
                c,
                train_attack=attacks.ProjectedGradient(
                    epsilon=eps, step_size=step, num_steps=k, start="none"
                ),
                clean_weight=clean_weight,
                weight_decay=wd,
            ),
            w,
            b,
            x,
            y,
            lr=lr,
            strategy=harness.strategy(strategy),
        )
        want_w, want_b = harness.numpy_pgd_at_step(
            w,
            b,
            x,
            y,
            eps=eps,
            step=step,
            k=k,
            lr=lr,
            wd=wd,
            clean_weight=clean_weight,
        )
        self.assertAllClose(got_w, want_w, atol=1e-5)
        self.assertAllClose(got_b, want_b, atol=1e-5)
        # The step did something measurable.
        self.assertGreater(np.abs(want_w - w).max(), 1e-3)


class DefaultsTest(tf.test.TestCase):
    def test_default_attack_is_madrys_pgd7(self):
        method = methods.PGDAT(harness.tiny_classifier(), epsilon=8 / 255)
        attack = method.train_attack
        self.assertIsInstance(attack, attacks.ProjectedGradient)
        self.assertNear(method.epsilon, 8 / 255, 1e-9)
        self.assertNear(attack.step_size, 2 / 255, 1e-9)
        self.assertEqual(attack.num_steps, 7)
        self.assertEqual(attack.start, "uniform")
        self.assertIs(method.threat_model, attack.threat_model)
        self.assertTrue(method.attack_training_mode)
        self.assertEqual(method.clean_weight, 0.0)

    def test_default_attack_at_a_given_epsilon(self):
        method = methods.PGDAT(harness.tiny_classifier(), epsilon=0.1)
        self.assertNear(method.train_attack.step_size, 0.025, 1e-9)
        self.assertEqual(method.train_attack.num_steps, 7)

    def test_a_training_budget_must_be_positive(self):
        classifier = harness.tiny_classifier()
        with self.assertRaisesRegex(ValueError, "epsilon"):
            methods.PGDAT(classifier, train_attack=harness.pgd(eps=0.0))
        with self.assertRaisesRegex(ValueError, "epsilon"):
            methods.PGDAT(classifier, epsilon=0.0)

    def test_config_holds_the_serialized_attacks(self):
        method = methods.PGDAT(
            harness.tiny_classifier(),
            train_attack=harness.pgd(),
            eval_attack=harness.eval_attack(),
            weight_decay=1e-4,
            seed=3,
        )
        config = method.get_config()
        self.assertEqual(
            config["train_attack"]["class_name"], "ProjectedGradient"
        )
        self.assertEqual(config["eval_attack"]["config"]["name"], "pgd3")
        self.assertEqual(config["weight_decay"], 1e-4)
        self.assertEqual(config["seed"], 3)

    def test_bad_clean_weight(self):
        classifier = harness.tiny_classifier()
        with self.assertRaisesRegex(ValueError, "clean_weight"):
            methods.PGDAT(
                classifier, train_attack=harness.pgd(), clean_weight=2.0
            )
        with self.assertRaisesRegex(ValueError, "weight_decay"):
            methods.PGDAT(
                classifier, train_attack=harness.pgd(), weight_decay=-1
            )


class BadInputTest(tf.test.TestCase):
    def _method(self):
        method = methods.PGDAT(
            harness.tiny_classifier(), train_attack=harness.pgd()
        )
        method.compile(optimizer="sgd")
        return method

    def test_images_outside_unit_box(self):
        method = self._method()
        x, y = harness.tiny_data()
        # Checked eagerly before the first step (fit's first-batch check).
        with self.assertRaisesRegex(
            ValueError, r", 254\.873\], outside \[0, 1\]"
        ):
            method.fit(x * 255.0, y, batch_size=4, verbose=0)

    def test_nan_images(self):
        method = self._method()
        x, y = harness.tiny_data()
        x[0, 0, 0, 0] = np.nan
        with self.assertRaisesRegex(ValueError, "NaN"):
            method.fit(x, y, batch_size=4, verbose=0)

    def test_labels_out_of_range(self):
        method = self._method()
        x, y = harness.tiny_data()
        y[1] = harness.NUM_CLASSES
        with self.assertRaisesRegex(ValueError, "num_classes"):
            method.fit(x, y, batch_size=4, verbose=0)

    def test_integer_images(self):
        method = self._method()
        x, y = harness.tiny_data()
        with self.assertRaisesRegex(TypeError, "255"):
            method.fit((x * 255).astype("uint8"), y, batch_size=4, verbose=0)

    def test_bad_constructor_arguments(self):
        classifier = harness.tiny_classifier()
        with self.assertRaisesRegex(TypeError, "train_attack"):
            methods.PGDAT(classifier, train_attack="pgd")
        with self.assertRaisesRegex(ValueError, "weight_decay"):
            methods.PGDAT(
                classifier, train_attack=harness.pgd(), weight_decay=-1
            )
        with self.assertRaisesRegex(TypeError, "classifier"):
            methods.Standard("not a model")


class _InputGradient(methods.Standard):
    """Keeps the input gradient of its update in a variable."""

    def __init__(self, classifier, batch, **kwargs):
        super().__init__(classifier, **kwargs)
        self.input_grad = self.add_weight(
            shape=(batch, classifier.input_shape[-1]),
            initializer="zeros",
            trainable=False,
            name="input_grad",
        )

    def minibatch_update(self, x, y):
        with tf.GradientTape() as tape:
            tape.watch(x)
            logits = self.classifier(x, training=True)
            loss = self.cross_entropy(y, logits)
            scaled = self.scale_loss(loss)
        grads, input_grad = self.apply_gradients(tape, scaled, inputs=x)
        self.input_grad.assign(tf.cast(input_grad, self.input_grad.dtype))
        self.update_metrics(loss, y, clean_logits=logits)
        return self.logs(self.train_metric_names)


class MixedPrecisionTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters(0.0, 5e-4)
    def test_pgd_at_trains_under_mixed_float16(self, weight_decay):
        keras.mixed_precision.set_dtype_policy("mixed_float16")
        classifier = harness.tiny_classifier()
        method = methods.PGDAT(
            classifier, train_attack=harness.pgd(), weight_decay=weight_decay
        )
        method.compile(optimizer=keras.optimizers.SGD(0.1))
        self.assertIsInstance(
            method.optimizer, keras.optimizers.LossScaleOptimizer
        )
        before = [v.numpy().copy() for v in classifier.trainable_variables]
        x, y = harness.tiny_data()
        history = method.fit(x, y, batch_size=harness.BATCH, verbose=0)
        self.assertTrue(np.isfinite(history.history["loss"][-1]))
        for b, v in zip(before, classifier.trainable_variables, strict=True):
            self.assertNotAllClose(b, v.numpy(), msg=v.path)

    @parameterized.parameters("float32", "mixed_float16")
    def test_input_gradient_has_the_loss_scale_removed(self, policy):
        keras.mixed_precision.set_dtype_policy(policy)
        w, b, x, y = harness.linear_problem()
        method = _InputGradient(linear_classifier(), batch=len(x))
        method.compile(optimizer=keras.optimizers.SGD(0.0))
        method.fit(x, y, batch_size=len(x), verbose=0, shuffle=False)
        # d mean CE / dx = (p - onehot) Wᵀ / n.
        p = harness.softmax(x @ w + b)
        want = (p - harness.onehot(y, 3)) @ w.T / len(x)
        tol = 1e-6 if policy == "float32" else 2e-3
        self.assertAllClose(method.input_grad.numpy(), want, atol=tol)
