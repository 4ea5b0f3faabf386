"""FGSM-RS, Free-AT, TRADES, MART and the catastrophic-overfitting guard.

Each method passes the shared harness; the analytic one-step checks on a
linear model (expected weights, and Free-AT's perturbation, computed in
NumPy) run on one device and under a 2-replica MirroredStrategy.
"""

import json
import os
import types

import keras
import numpy as np
import tensorflow as tf
from absl import flags
from absl.testing import parameterized

from tests import harness
from tests import methods_test
from tfadv import attacks
from tfadv import callbacks
from tfadv import experiment
from tfadv import methods
from tfadv import schedules
from tfadv import train


def setUpModule():
    # tf.test.TestCase.create_tempdir reads absl flags.
    flags.FLAGS.mark_as_parsed()


def _strategy(name):
    if name == "mirrored":
        return methods_test.mirrored()
    return tf.distribute.get_strategy()


class HarnessTest(tf.test.TestCase, parameterized.TestCase):
    def test_fgsm_rs(self):
        harness.run_method_test(
            self, lambda c: methods.FGSMRS(c, epsilon=0.1, weight_decay=5e-4)
        )

    def test_free_at(self):
        method, _ = harness.run_method_test(
            self,
            lambda c: methods.FreeAT(
                c, epsilon=0.1, replays=3, batch_size=harness.BATCH
            ),
        )
        self.assertNotIn(
            method.delta.path, [v.path for v in method.trainable_variables]
        )
        # Three replays: three optimizer updates for one minibatch.
        self.assertEqual(method.optimizer.iterations.numpy(), 3)

    def test_trades(self):
        harness.run_method_test(
            self,
            lambda c: methods.TRADES(
                c, epsilon=0.1, step_size=0.03, num_steps=3
            ),
        )

    def test_mart(self):
        harness.run_method_test(
            self,
            lambda c: methods.MART(
                c,
                epsilon=0.1,
                step_size=0.03,
                num_steps=3,
                weight_decay=5e-4,
            ),
        )


# NumPy references on the linear model z = x·W + b (methods_test's
# problem: some pixels sit on the edges of the image box).


def _project(x, x_adv, eps):
    return np.clip(np.clip(x_adv - x, -eps, eps) + x, 0.0, 1.0)


def _onehot(y, c):
    return np.eye(c)[y]


def _log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _numeric_grad(loss, w, b, h=1e-6):
    """Central differences of loss(w, b) in float64."""
    w, b = w.astype(np.float64), b.astype(np.float64)
    gw, gb = np.zeros_like(w), np.zeros_like(b)
    for i in np.ndindex(w.shape):
        up, down = w.copy(), w.copy()
        up[i] += h
        down[i] -= h
        gw[i] = (loss(up, b) - loss(down, b)) / (2 * h)
    for i in np.ndindex(b.shape):
        up, down = b.copy(), b.copy()
        up[i] += h
        down[i] -= h
        gb[i] = (loss(w, up) - loss(w, down)) / (2 * h)
    return gw, gb


def _kl(z_clean, z_adv):
    log_p, log_q = _log_softmax(z_clean), _log_softmax(z_adv)
    return (np.exp(log_p) * (log_p - log_q)).sum(-1)


def _ce(z, y):
    return -_log_softmax(z)[np.arange(len(y)), y]


def numpy_trades_step(w, b, x, y, x0, *, eps, step, k, beta, lr, wd):
    p = methods_test._softmax(x @ w + b)
    x_adv = x0.copy()
    for _ in range(k):
        q = methods_test._softmax(x_adv @ w + b)
        grad_x = (q - p) @ w.T  # d(sum KL(p || q))/dx'
        x_adv = _project(x, x_adv + step * np.sign(grad_x), eps)

    def loss(w, b):
        z, z_adv = x @ w + b, x_adv @ w + b
        return _ce(z, y).mean() + beta * _kl(z, z_adv).mean()

    gw, gb = _numeric_grad(loss, w, b)
    return w - lr * (gw + wd * w), b - lr * (gb + wd * b)


def numpy_mart_step(w, b, x, y, *, eps, step, k, beta, lr, wd):
    onehot = _onehot(y, w.shape[1])
    x_adv = x.copy()
    for _ in range(k):
        p_adv = methods_test._softmax(x_adv @ w + b)
        grad_x = (p_adv - onehot) @ w.T  # d(sum CE)/dx'
        x_adv = _project(x, x_adv + step * np.sign(grad_x), eps)

    def loss(w, b):
        z, z_adv = x @ w + b, x_adv @ w + b
        p, p_adv = methods_test._softmax(z), methods_test._softmax(z_adv)
        top_wrong = np.where(onehot > 0, -np.inf, p_adv).max(-1)
        boost = -np.log(1.0001 - top_wrong + 1e-12)
        true_prob = (p * onehot).sum(-1)
        robust = _kl(z, z_adv) * (1.0000001 - true_prob)
        return _ce(z_adv, y).mean() + boost.mean() + beta * robust.mean()

    gw, gb = _numeric_grad(loss, w, b)
    return w - lr * (gw + wd * w), b - lr * (gb + wd * b)


def numpy_free_at(
    w, b, x, y, *, eps, step, replays, lr, wd, batch, replicas, rows
):
    """Free-AT over all minibatches; one perturbation buffer per replica."""
    w, b = w.astype(np.float64), b.astype(np.float64)
    buffers = [np.zeros((rows, x.shape[1])) for _ in range(replicas)]
    onehot = _onehot(y, w.shape[1])
    for start in range(0, len(x), batch):
        xb, tb = x[start : start + batch], onehot[start : start + batch]
        shard = len(xb) // replicas  # replica r gets rows r*shard, ...
        delta = np.concatenate([buf[:shard] for buf in buffers])
        delta = _project(xb, xb + delta, eps) - xb
        for _ in range(replays):
            g = (methods_test._softmax((xb + delta) @ w + b) - tb) / len(xb)
            grad_w = (xb + delta).T @ g + wd * w
            grad_b = g.sum(0) + wd * b
            grad_delta = g @ w.T
            w, b = w - lr * grad_w, b - lr * grad_b
            delta = _project(xb, xb + delta + step * np.sign(grad_delta), eps)
            delta = delta - xb
        for r, buf in enumerate(buffers):
            buf[:shard] = delta[r * shard : (r + 1) * shard]
    return w, b, buffers


def replica_buffers(variable):
    """The per-replica values of an ON_READ variable (one on one device)."""
    value = variable.value
    if hasattr(value, "values"):
        return [v.numpy() for v in value.values]
    return [value.numpy()]


class AnalyticStepTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.product(strategy=["default", "mirrored"], wd=[0.0, 0.01])
    def test_fgsm_step_on_linear_model(self, strategy, wd):
        w, b, x, y = methods_test.linear_problem()
        eps, lr = 0.1, 0.5
        _, (got_w, got_b) = methods_test.fit_linear(
            lambda c: methods.FGSMRS(
                c, epsilon=eps, random_start=False, weight_decay=wd
            ),
            w,
            b,
            x,
            y,
            lr=lr,
            strategy=_strategy(strategy),
        )
        want_w, want_b = methods_test.numpy_pgd_at_step(
            w,
            b,
            x,
            y,
            eps=eps,
            step=1.25 * eps,
            k=1,
            lr=lr,
            wd=wd,
            clean_weight=0.0,
        )
        self.assertAllClose(got_w, want_w, atol=1e-5)
        self.assertAllClose(got_b, want_b, atol=1e-5)
        self.assertGreater(np.abs(want_w - w).max(), 1e-3)

    @parameterized.product(strategy=["default", "mirrored"], wd=[0.0, 0.01])
    def test_trades_step_on_linear_model(self, strategy, wd):
        w, b, x, y = methods_test.linear_problem(seed=2)
        eps, step, k, beta, lr = 0.1, 0.03, 4, 6.0, 0.5

        class FixedStart(methods.TRADES):
            # A deterministic start in place of x + 0.001·N(0, I).
            def initial_point(self, x):
                return x + 0.02 * tf.cos(100.0 * x)

        _, (got_w, got_b) = methods_test.fit_linear(
            lambda c: FixedStart(
                c,
                epsilon=eps,
                step_size=step,
                num_steps=k,
                beta=beta,
                weight_decay=wd,
            ),
            w,
            b,
            x,
            y,
            lr=lr,
            strategy=_strategy(strategy),
        )
        x0 = x + 0.02 * np.cos(100.0 * x)
        want_w, want_b = numpy_trades_step(
            w, b, x, y, x0, eps=eps, step=step, k=k, beta=beta, lr=lr, wd=wd
        )
        self.assertAllClose(got_w, want_w, atol=1e-5)
        self.assertAllClose(got_b, want_b, atol=1e-5)
        self.assertGreater(np.abs(want_w - w).max(), 1e-3)

    @parameterized.product(strategy=["default", "mirrored"], wd=[0.0, 0.01])
    def test_mart_step_on_linear_model(self, strategy, wd):
        w, b, x, y = methods_test.linear_problem(seed=3)
        eps, step, k, beta, lr = 0.1, 0.03, 4, 6.0, 0.5
        _, (got_w, got_b) = methods_test.fit_linear(
            lambda c: methods.MART(
                c,
                epsilon=eps,
                step_size=step,
                num_steps=k,
                beta=beta,
                init_stddev=0.0,
                weight_decay=wd,
            ),
            w,
            b,
            x,
            y,
            lr=lr,
            strategy=_strategy(strategy),
        )
        want_w, want_b = numpy_mart_step(
            w, b, x, y, eps=eps, step=step, k=k, beta=beta, lr=lr, wd=wd
        )
        self.assertAllClose(got_w, want_w, atol=1e-5)
        self.assertAllClose(got_b, want_b, atol=1e-5)
        self.assertGreater(np.abs(want_w - w).max(), 1e-3)

    @parameterized.product(
        strategy=["default", "mirrored"], num_examples=[8, 20]
    )
    def test_free_at_replays_on_linear_model(self, strategy, num_examples):
        # 8 examples: one minibatch. 20: minibatches of 8, 8 and a last,
        # smaller one of 4, so the perturbation carries over twice and the
        # last batch uses only the first rows.
        w, b, x, y = methods_test.linear_problem(seed=4, n=num_examples)
        eps, replays, lr, wd, batch = 0.1, 3, 0.5, 0.01, 8
        strategy = _strategy(strategy)
        replicas = strategy.num_replicas_in_sync
        method, (got_w, got_b) = methods_test.fit_linear(
            lambda c: methods.FreeAT(
                c,
                epsilon=eps,
                replays=replays,
                batch_size=batch,
                weight_decay=wd,
            ),
            w,
            b,
            x,
            y,
            lr=lr,
            strategy=strategy,
            batch=batch,
        )
        want_w, want_b, want_buffers = numpy_free_at(
            w,
            b,
            x,
            y,
            eps=eps,
            step=eps,
            replays=replays,
            lr=lr,
            wd=wd,
            batch=batch,
            replicas=replicas,
            rows=batch // replicas,
        )
        self.assertAllClose(got_w, want_w, atol=1e-5)
        self.assertAllClose(got_b, want_b, atol=1e-5)
        got_buffers = replica_buffers(method.delta)
        self.assertLen(got_buffers, replicas)
        for got, want in zip(got_buffers, want_buffers, strict=True):
            self.assertAllClose(got, want, atol=1e-6)
        # The perturbation moved, within the budget.
        self.assertGreater(np.abs(want_buffers[0]).max(), 0.05)
        self.assertLessEqual(np.abs(np.stack(got_buffers)).max(), eps + 1e-6)
        minibatches = -(-num_examples // batch)
        self.assertEqual(
            method.optimizer.iterations.numpy(), replays * minibatches
        )
        if replicas == 2:
            # Each replica keeps its own rows (its own examples).
            self.assertNotAllClose(got_buffers[0], got_buffers[1])

    def test_free_at_perturbation_carries_over(self):
        # Two identical minibatches: the second starts from the first's
        # perturbation, so a fresh start from zero gives another result.
        w, b, x, y = methods_test.linear_problem(seed=5)
        x2, y2 = np.concatenate([x, x]), np.concatenate([y, y])
        # Steps of 0.03: two replays reach 0.06, four reach the budget.
        kwargs = dict(epsilon=0.1, replays=2, step_size=0.03, batch_size=8)
        strategy = tf.distribute.get_strategy()
        one, _ = methods_test.fit_linear(
            lambda c: methods.FreeAT(c, **kwargs),
            w,
            b,
            x,
            y,
            lr=0.0,
            strategy=strategy,
        )
        two, _ = methods_test.fit_linear(
            lambda c: methods.FreeAT(c, **kwargs),
            w,
            b,
            x2,
            y2,
            lr=0.0,
            strategy=strategy,
            batch=8,
        )
        # lr = 0: the weights stay, so only the carried-over δ differs.
        first = one.delta.numpy()
        second = two.delta.numpy()
        self.assertNotAllClose(first, second)
        want = numpy_free_at(
            w,
            b,
            x2,
            y2,
            eps=0.1,
            step=0.03,
            replays=2,
            lr=0.0,
            wd=0.0,
            batch=8,
            replicas=1,
            rows=8,
        )[2][0]
        self.assertAllClose(second, want, atol=1e-6)
        self.assertGreater(np.abs(second).max(), np.abs(first).max() + 0.02)


class PerMinibatchScheduleTest(tf.test.TestCase):
    def test_counts_minibatches(self):
        inner = schedules.PiecewiseLinear([0, 10], [0.0, 1.0])
        schedule = schedules.PerMinibatch(inner, replays=4)
        for step in range(12):
            self.assertAllClose(schedule(step), inner(step // 4))

    def test_builder_and_serialization(self):
        schedule = schedules.per_minibatch(
            steps_per_epoch=10,
            epochs=2,
            schedule=schedules.cyclic,
            replays=3,
        )
        cyclic = schedules.cyclic(steps_per_epoch=10, epochs=2)
        self.assertAllClose(schedule(31), cyclic(10))  # the peak
        restored = keras.optimizers.schedules.deserialize(
            keras.optimizers.schedules.serialize(schedule)
        )
        for step in (0, 7, 31, 59):
            self.assertAllClose(restored(step), schedule(step))

    def test_constant_rate(self):
        schedule = schedules.per_minibatch(
            steps_per_epoch=10,
            epochs=2,
            schedule=schedules.constant,
            replays=3,
        )
        self.assertAllClose(schedule(5), 0.01)


# The catastrophic-overfitting guard.


def _separable_problem(n=32, d=5, c=3, seed=0):
    """A linear classifier that is right on every point, with margin."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(d, c)).astype("float32")
    b = np.zeros(c, "float32")
    x = rng.uniform(size=(n, d)).astype("float32")
    z = x @ w
    keep = np.sort(z, -1)[:, -1] - np.sort(z, -1)[:, -2] > 0.2
    return w, b, x[keep], z[keep].argmax(-1).astype("int32")


class _Scramble(keras.callbacks.Callback):
    """Negates the classifier's weights at the end of epoch `epoch`."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            classifier = self.model.classifier
            classifier.set_weights([-v for v in classifier.get_weights()])


class _Scripted(callbacks.CatastrophicOverfittingStop):
    """The guard with robust accuracies read from a script."""

    def __init__(self, script, **kwargs):
        x, y = np.zeros((2, 5), "float32"), np.zeros(2, "int32")
        super().__init__(x, y, lambda *a, **k: None, **kwargs)
        self.script = list(script)

    def robust_accuracy(self):
        return self.script[len(self.history)]


class CatastrophicOverfittingStopTest(tf.test.TestCase, parameterized.TestCase):
    def _drive(self, guard, epochs):
        """Runs the guard's hooks; the weights record the epoch."""
        model = methods.Standard(
            keras.Sequential([keras.Input((5,)), keras.layers.Dense(3)])
        )
        model.stop_training = False  # as fit() sets it
        guard.set_model(model)
        guard.on_train_begin()
        for epoch in range(epochs):
            model.classifier.set_weights(
                [np.full_like(v, epoch) for v in model.classifier.get_weights()]
            )
            guard.on_epoch_end(epoch)
            if model.stop_training:
                break
        return model

    @parameterized.parameters(
        # compare_to, script, stopped at, restored epoch
        ("previous", [0.5, 0.6, 0.45, 0.2, 0.9], 3, 2),
        ("previous", [0.5, 0.6, 0.45, 0.38, 0.3], None, None),
        ("best", [0.5, 0.6, 0.45, 0.38, 0.9], 3, 1),
        ("best", [0.5, 0.6, 0.41, 0.5, 0.45], None, None),
    )
    def test_rule(self, compare_to, script, stopped_at, restored):
        guard = _Scripted(script, compare_to=compare_to)
        model = self._drive(guard, len(script))
        info = guard.results_info()["catastrophic_overfitting"]
        self.assertEqual(info["stopped"], stopped_at is not None)
        self.assertEqual(info["epoch"], stopped_at)
        self.assertEqual(info["restored_epoch"], restored)
        if stopped_at is None:
            self.assertEqual(info["robust_accuracy_history"], script)
            return
        self.assertEqual(
            info["robust_accuracy_history"], script[: stopped_at + 1]
        )
        self.assertTrue(model.stop_training)
        for v in model.classifier.get_weights():
            self.assertAllEqual(v, np.full_like(v, restored))

    def test_stops_a_collapsing_run_and_restores_weights(self):
        w, b, x, y = _separable_problem()
        classifier = keras.Sequential(
            [keras.Input((5,)), keras.layers.Dense(3)]
        )
        classifier.layers[0].set_weights([w, b])
        method = methods.Standard(classifier)
        method.compile(optimizer=keras.optimizers.SGD(0.0))  # weights stay
        guard = callbacks.co_guard(
            datasets=types.SimpleNamespace(
                train=tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
            ),
            logdir=self.create_tempdir().full_path,
            attack=attacks.ProjectedGradient(
                epsilon=0.01, step_size=0.005, num_steps=5
            ),
        )
        self.assertEqual(guard.images.shape[0], 16)  # the first batch
        with self.assertLogs(level="WARNING") as logs:
            history = method.fit(
                x,
                y,
                batch_size=8,
                epochs=6,
                verbose=0,
                callbacks=[_Scramble(epoch=2), guard],
            )
        self.assertTrue(
            any(
                "Catastrophic overfitting at epoch 2" in m for m in logs.output
            ),
            logs.output,
        )
        self.assertLen(history.history["loss"], 3)  # stopped after epoch 2
        info = guard.results_info()["catastrophic_overfitting"]
        self.assertTrue(info["stopped"])
        self.assertEqual(info["epoch"], 2)
        self.assertEqual(info["restored_epoch"], 1)
        self.assertEqual(info["robust_accuracy_history"][:2], [1.0, 1.0])
        self.assertLess(info["robust_accuracy_history"][2], 0.5)
        got_w, got_b = classifier.layers[0].get_weights()
        self.assertAllClose(got_w, w)
        self.assertAllClose(got_b, b)
        json.dumps(guard.results_info())  # results.json can hold it

    def test_bad_arguments(self):
        x, y = np.zeros((2, 5), "float32"), np.zeros(2, "int32")
        attack = methods_test.pgd()
        for threshold in (0.0, 1.5, -0.2, "x"):
            with self.assertRaisesRegex(ValueError, f"threshold.*{threshold}"):
                callbacks.CatastrophicOverfittingStop(
                    x, y, attack, threshold=threshold
                )
        with self.assertRaisesRegex(ValueError, "compare_to.*'worst'"):
            callbacks.CatastrophicOverfittingStop(
                x, y, attack, compare_to="worst"
            )
        with self.assertRaisesRegex(TypeError, "attack"):
            callbacks.CatastrophicOverfittingStop(x, y, "pgd")


class BadArgumentsTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters(
        (methods.FGSMRS, {"step_size": -0.1}, "step_size.*-0.1"),
        (methods.FGSMRS, {"epsilon": 2.0}, "epsilon.*2.0"),
        (methods.FreeAT, {"replays": 0}, "replays.*0"),
        (methods.FreeAT, {"replays": 2.5}, "replays.*2.5"),
        (methods.FreeAT, {"batch_size": 0}, "batch_size.*0"),
        (methods.FreeAT, {"step_size": -1.0}, "step_size.*-1.0"),
        (methods.FreeAT, {"epsilon": -0.1}, "epsilon.*-0.1"),
        (methods.FreeAT, {"attack_training_mode": False}, "training-mode"),
        (methods.TRADES, {"beta": -1.0}, "beta.*-1.0"),
        (methods.TRADES, {"init_stddev": -0.5}, "init_stddev.*-0.5"),
        (methods.TRADES, {"num_steps": -1}, "num_steps.*-1"),
        (methods.TRADES, {"epsilon": 1.5}, "epsilon.*1.5"),
        (methods.MART, {"beta": -6.0}, "beta.*-6.0"),
        (methods.MART, {"step_size": -0.007}, "step_size.*-0.007"),
        (methods.MART, {"init_stddev": -1e-3}, "init_stddev.*-0.001"),
    )
    def test_bad_constructor_argument(self, cls, kwargs, pattern):
        with self.assertRaisesRegex(ValueError, pattern):
            cls(harness.tiny_classifier(), **kwargs)

    def test_bad_schedule_replays(self):
        for replays in (0, -1, 1.5):
            with self.assertRaisesRegex(ValueError, f"replays.*{replays}"):
                schedules.PerMinibatch(0.1, replays)

    def test_free_at_batch_larger_than_buffer(self):
        method = methods.FreeAT(harness.tiny_classifier(), batch_size=2)
        method.compile(optimizer="sgd")
        x, y = harness.tiny_data()
        ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(
            4, drop_remainder=True
        )
        with self.assertRaisesRegex(ValueError, "batch_size=2"):
            method.fit(ds, verbose=0, shuffle=False)

    def test_free_at_needs_a_defined_input_shape(self):
        inputs = keras.Input((None, None, 3))
        outputs = keras.layers.Dense(3)(
            keras.layers.GlobalAveragePooling2D()(inputs)
        )
        with self.assertRaisesRegex(ValueError, "input shape"):
            methods.FreeAT(keras.Model(inputs, outputs))


class GinConfigTest(tf.test.TestCase, parameterized.TestCase):
    """Each shipped config trains a few steps with testing/tiny.gin."""

    @parameterized.parameters(
        ("fgsm_rs.gin", "FGSMRS"),
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
        with open(os.path.join(logdir, "results.json")) as f:
            written = json.load(f)
        if gin_file == "fgsm_rs.gin":
            guard = written["catastrophic_overfitting"]
            self.assertFalse(guard["stopped"])
            self.assertLen(guard["robust_accuracy_history"], 1)

    @parameterized.parameters(
        "experiments/cifar10_fgsm_rs.gin",
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


class ProjectedGradientStartTest(tf.test.TestCase):
    """The `x_init` start point TRADES and MART pass to ProjectedGradient."""

    def test_start_point_replaces_random_start(self):
        w, b, x, y = methods_test.linear_problem()
        model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3)])
        model.layers[0].set_weights([w, b])
        start = x + 0.05 * np.cos(50.0 * x)  # partly outside [0, 1]
        pgd = methods_test.pgd(num_steps=3, random_start=True)
        a = pgd(model, x, y, seed=1, x_init=start)
        b_ = pgd(model, x, y, seed=2, x_init=start)
        self.assertAllClose(a, b_)  # no random start: seeds do not matter
        self.assertLessEqual(np.abs(a - x).max(), 0.1 + 1e-6)
        self.assertBetween(float(np.min(a)), 0.0, 1.0)
        self.assertBetween(float(np.max(a)), 0.0, 1.0)
        zero = methods_test.pgd(num_steps=0, random_start=False)
        self.assertAllClose(
            zero(model, x, y, x_init=start),
            np.clip(np.clip(start - x, -0.1, 0.1) + x, 0.0, 1.0),
        )
