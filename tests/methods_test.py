"""Standard and PGD-AT: the shared harness, the analytic step, bad input."""

import keras
import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from tests import harness
from tfadv import attacks
from tfadv import methods


def pgd(num_steps=3, random_start=True, eps=0.1):
    return attacks.ProjectedGradient(
        epsilon=eps,
        step_size=eps / 2,
        num_steps=num_steps,
        random_start=random_start,
    )


class HarnessTest(tf.test.TestCase, parameterized.TestCase):
    def test_standard(self):
        harness.run_method_test(self, lambda c: methods.Standard(c))

    @parameterized.parameters(0.0, 0.5)
    def test_pgd_at(self, clean_weight):
        harness.run_method_test(
            self,
            lambda c: methods.PGDAT(
                c, train_attack=pgd(), clean_weight=clean_weight
            ),
        )

    def test_pgd_at_eval_mode_attack_and_weight_decay(self):
        harness.run_method_test(
            self,
            lambda c: methods.PGDAT(
                c,
                train_attack=pgd(),
                attack_training_mode=False,
                weight_decay=5e-4,
            ),
        )


class MixedPrecisionTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters(0.0, 5e-4)
    def test_pgd_at_trains_under_mixed_float16(self, weight_decay):
        keras.mixed_precision.set_dtype_policy("mixed_float16")
        classifier = harness.tiny_classifier()
        method = methods.PGDAT(
            classifier, train_attack=pgd(), weight_decay=weight_decay
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


# The analytic check (NSL multi-device test): a linear classifier, PGD-k
# without random start, one SGD step, expected weights computed in NumPy.


def _softmax(z):
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def numpy_pgd_at_step(w, b, x, y, *, eps, step, k, lr, wd, clean_weight):
    onehot = np.eye(w.shape[1])[y]
    x_adv = x.copy()
    for _ in range(k):
        p = _softmax(x_adv @ w + b)
        grad_x = (p - onehot) @ w.T  # d(sum CE)/dx
        x_adv = x_adv + step * np.sign(grad_x)
        x_adv = np.clip(np.clip(x_adv - x, -eps, eps) + x, 0.0, 1.0)
    n = len(x)

    def ce_grads(inputs):
        p = _softmax(inputs @ w + b)
        return inputs.T @ (p - onehot) / n, (p - onehot).mean(0)

    gw, gb = ce_grads(x_adv)
    gw, gb = (1 - clean_weight) * gw, (1 - clean_weight) * gb
    if clean_weight:
        cw, cb = ce_grads(x)
        gw, gb = gw + clean_weight * cw, gb + clean_weight * cb
    return w - lr * (gw + wd * w), b - lr * (gb + wd * b)


def linear_problem(seed=0, n=8, d=5, c=3):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(d, c)).astype("float32")
    b = rng.normal(size=(c,)).astype("float32")
    x = rng.uniform(size=(n, d)).astype("float32")
    x[:, 0] = 0.0  # on the box edge: the [0, 1] clip is exercised
    x[:, 1] = 0.98
    y = rng.integers(0, c, size=n).astype("int32")
    return w, b, x, y


def fit_linear(method_fn, w, b, x, y, *, lr, strategy, batch=None):
    """One epoch of SGD on a linear classifier; returns (method, [W, b])."""
    with strategy.scope():
        classifier = keras.Sequential(
            [keras.Input((w.shape[0],)), keras.layers.Dense(w.shape[1])]
        )
        classifier.layers[0].set_weights([w, b])
        method = method_fn(classifier)
        method.compile(optimizer=keras.optimizers.SGD(lr))
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch or len(x))
    method.fit(ds, epochs=1, verbose=0, shuffle=False)
    return method, [v.numpy() for v in classifier.layers[0].weights]


def mirrored():
    devices = [d.name for d in tf.config.list_logical_devices("CPU")][:2]
    assert len(devices) == 2, "conftest must split the CPU in two"
    return tf.distribute.MirroredStrategy(
        devices, cross_device_ops=tf.distribute.ReductionToOneDevice()
    )


class AnalyticStepTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.product(
        strategy=["default", "mirrored"],
        clean_weight=[0.0, 0.5],
        wd=[0.0, 0.01],
    )
    def test_one_pgd_at_step_on_linear_model(self, strategy, clean_weight, wd):
        w, b, x, y = linear_problem()
        eps, step, k, lr = 0.1, 0.04, 4, 0.5
        strategy = (
            mirrored()
            if strategy == "mirrored"
            else tf.distribute.get_strategy()
        )
        _, (got_w, got_b) = fit_linear(
            lambda c: methods.PGDAT(
                c,
                train_attack=attacks.ProjectedGradient(
                    epsilon=eps, step_size=step, num_steps=k, random_start=False
                ),
                clean_weight=clean_weight,
                weight_decay=wd,
            ),
            w,
            b,
            x,
            y,
            lr=lr,
            strategy=strategy,
        )
        want_w, want_b = numpy_pgd_at_step(
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

    @parameterized.parameters("default", "mirrored")
    def test_one_standard_step_on_linear_model(self, strategy):
        w, b, x, y = linear_problem(seed=1)
        strategy = (
            mirrored()
            if strategy == "mirrored"
            else tf.distribute.get_strategy()
        )
        _, (got_w, got_b) = fit_linear(
            methods.Standard, w, b, x, y, lr=0.3, strategy=strategy
        )
        want_w, want_b = numpy_pgd_at_step(
            w,
            b,
            x,
            y,
            eps=0.0,
            step=0.0,
            k=0,
            lr=0.3,
            wd=0.0,
            clean_weight=0.0,
        )
        self.assertAllClose(got_w, want_w, atol=1e-5)
        self.assertAllClose(got_b, want_b, atol=1e-5)


class BadInputTest(tf.test.TestCase):
    def _method(self):
        return methods.PGDAT(harness.tiny_classifier(), train_attack=pgd())

    def test_images_outside_unit_box(self):
        method = self._method()
        method.compile(optimizer="sgd")
        x, y = harness.tiny_data()
        with self.assertRaisesRegex(
            tf.errors.InvalidArgumentError, r"\[0, 1\]"
        ):
            method.fit(x * 255.0, y, batch_size=4, verbose=0)

    def test_nan_images(self):
        method = self._method()
        method.compile(optimizer="sgd")
        x, y = harness.tiny_data()
        x[0, 0, 0, 0] = np.nan
        with self.assertRaisesRegex(tf.errors.InvalidArgumentError, "NaN"):
            method.fit(x, y, batch_size=4, verbose=0)

    def test_labels_out_of_range(self):
        method = self._method()
        method.compile(optimizer="sgd")
        x, y = harness.tiny_data()
        y[1] = harness.NUM_CLASSES
        with self.assertRaisesRegex(
            tf.errors.InvalidArgumentError, "num_classes"
        ):
            method.fit(x, y, batch_size=4, verbose=0)

    def test_bad_constructor_arguments(self):
        classifier = harness.tiny_classifier()
        with self.assertRaisesRegex(TypeError, "train_attack"):
            methods.PGDAT(classifier, train_attack="pgd")
        with self.assertRaisesRegex(ValueError, "clean_weight"):
            methods.PGDAT(classifier, train_attack=pgd(), clean_weight=2.0)
        with self.assertRaisesRegex(ValueError, "weight_decay"):
            methods.PGDAT(classifier, train_attack=pgd(), weight_decay=-1)
        with self.assertRaisesRegex(TypeError, "classifier"):
            methods.Standard("not a model")
