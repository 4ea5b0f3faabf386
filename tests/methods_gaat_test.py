"""tfadv.methods.gaat: the Taylor surrogate, its guard, and the method.

The shared harness in both phases (the expansion itself is tested in
`methods_taylor_test.py`); one SGD step of the surrogate on a linear model
against NumPy, on one device and under a 2-replica MirroredStrategy; the
guard's remainder against NumPy, its switches, its logs and results, and
the phase and monitor batch through a checkpoint; bad arguments; gaat.gin
end to end.
"""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import flags
from absl.testing import parameterized

from tests import harness
from tests.methods_taylor_test import linear_grad
from tests.methods_taylor_test import linear_quadratic
from tfadv import attacks
from tfadv import experiment
from tfadv import methods
from tfadv import run_folder
from tfadv import train
from tfadv.methods import gaat

EPS = 0.1


def setUpModule():
    flags.FLAGS.mark_as_parsed()  # create_tempdir reads --test_tmpdir.


class CountingPGD(attacks.ProjectedGradient):
    """ProjectedGradient that counts its training-mode calls.

    The exact phase attacks in training mode; the guard in inference mode.
    In a compiled step a call happens when the step is traced.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.training_calls = 0

    def __call__(self, model, x, y, *, training=False, **kwargs):
        if training:
            self.training_calls += 1
        return super().__call__(model, x, y, training=training, **kwargs)


def counting_pgd(start="uniform"):
    return CountingPGD(epsilon=EPS, step_size=EPS / 2, num_steps=3, start=start)


class HarnessTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.named_parameters(
        ("order_1", {"order": 1}),
        ("order_2", {"order": 2, "weight_decay": 5e-4}),
        ("exact_phase", {"initial_phase": "exact"}),
    )
    def test_gaat(self, kwargs):
        method, _ = harness.run_method_test(
            self,
            lambda c: methods.GAAT(c, train_attack=harness.pgd(), **kwargs),
            subclassed="built",
        )
        # The step filled the monitor batch, in every phase.
        self.assertEqual(int(method.monitor_count.numpy()), harness.BATCH)

    def test_order_1_with_an_fgsm_rs_perturbation(self):
        fgsm_rs = attacks.ProjectedGradient(
            epsilon=EPS, step_size=1.25 * EPS, num_steps=1
        )
        harness.run_method_test(
            self,
            lambda c: methods.GAAT(
                c, train_attack=harness.pgd(), perturbation_attack=fgsm_rs
            ),
            compare_xla=False,
            subclassed="built",
        )


def numpy_gaat_step(w, b, x, y, delta, *, order, lr, wd):
    """One SGD step on mean[CE + δᵀ∇ₓCE (+ ½δᵀHδ)], δ held constant."""

    def loss(w, b):
        value = harness.ce(x @ w + b, y)
        value = value + (delta * linear_grad(w, b, x, y)).sum(-1)
        if order == 2:
            value = value + linear_quadratic(w, b, x, delta)
        return value.mean()

    gw, gb = harness.numeric_grad(loss, w, b)
    return w - lr * (gw + wd * w), b - lr * (gb + wd * b), loss(w, b)


class AnalyticStepTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.product(strategy=["default", "mirrored"], order=[1, 2])
    def test_one_surrogate_step_on_linear_model(self, strategy, order):
        w, b, x, y = harness.linear_problem(seed=4)
        lr, wd = 0.5, 0.01
        method, (got_w, got_b) = harness.fit_linear(
            lambda c: methods.GAAT(
                c, epsilon=EPS, order=order, weight_decay=wd
            ),
            w,
            b,
            x,
            y,
            lr=lr,
            strategy=harness.strategy(strategy),
        )
        # Both orders' default δ: ε·sign(∇ₓCE) at the initial weights.
        grad = linear_grad(w, b, x, y)
        delta = harness.project(x, x + EPS * np.sign(grad), EPS) - x
        want_w, want_b, want_loss = numpy_gaat_step(
            w, b, x, y, delta, order=order, lr=lr, wd=wd
        )
        self.assertAllClose(got_w, want_w, atol=1e-5)
        self.assertAllClose(got_b, want_b, atol=1e-5)
        self.assertGreater(np.abs(want_w - w).max(), 1e-3)
        self.assertNear(
            float(method.trackers["loss"].result()), want_loss, 1e-5
        )
        if order == 2:
            # The Hessian term changes the step measurably.
            first_w, _, _ = numpy_gaat_step(
                w, b, x, y, delta, order=1, lr=lr, wd=wd
            )
            self.assertGreater(np.abs(want_w - first_w).max(), 1e-4)

    @parameterized.parameters("default", "mirrored")
    def test_one_step_with_a_perturbation_attack(self, strategy):
        w, b, x, y = harness.linear_problem(seed=5)
        lr, scale, alpha = 0.5, 0.04, 0.08

        def start_fn(u):
            return harness.fixed_start(u, scale)

        attack = harness.FixedStartPGD(
            start_fn=start_fn, epsilon=EPS, step_size=alpha, num_steps=1
        )
        _, (got_w, got_b) = harness.fit_linear(
            lambda c: methods.GAAT(
                c, epsilon=EPS, order=1, perturbation_attack=attack
            ),
            w,
            b,
            x,
            y,
            lr=lr,
            strategy=harness.strategy(strategy),
        )
        x0 = x + start_fn(tf.constant(x)).numpy()
        step = alpha * np.sign(linear_grad(w, b, x0, y))
        delta = harness.project(x, x0 + step, EPS) - x
        want_w, want_b, _ = numpy_gaat_step(
            w, b, x, y, delta, order=1, lr=lr, wd=0.0
        )
        self.assertAllClose(got_w, want_w, atol=1e-5)
        self.assertAllClose(got_b, want_b, atol=1e-5)


def linear_trainer(w, b, **kwargs):
    classifier = keras.Sequential(
        [keras.Input((w.shape[0],)), keras.layers.Dense(w.shape[1])]
    )
    classifier.layers[0].set_weights([w, b])
    return methods.GAAT(classifier, **kwargs)


class GuardTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters(1, 2)
    def test_remainder_against_numpy(self, order):
        w, b, x, y = harness.linear_problem(seed=7)
        k, step = 4, 0.04
        method = linear_trainer(
            w,
            b,
            order=order,
            monitor_size=16,  # more rows than the batch: padded
            train_attack=attacks.ProjectedGradient(
                epsilon=EPS, step_size=step, num_steps=k, start="none"
            ),
        )
        method.compile(optimizer=keras.optimizers.SGD(0.0))
        method.fit(x, y, batch_size=len(x), verbose=0, shuffle=False)
        self.assertEqual(int(method.monitor_count.numpy()), len(x))
        self.assertAllClose(method.monitor_images.numpy()[: len(x)], x)
        self.assertAllEqual(method.monitor_labels.numpy()[: len(x)], y)
        x_adv = x.copy()
        for _ in range(k):
            moved = x_adv + step * np.sign(linear_grad(w, b, x_adv, y))
            x_adv = harness.project(x, moved, EPS)
        delta = x_adv - x
        true = harness.ce(x_adv @ w + b, y).mean()
        surrogate = harness.ce(x @ w + b, y) + (
            delta * linear_grad(w, b, x, y)
        ).sum(-1)
        if order == 2:
            surrogate = surrogate + linear_quadratic(w, b, x, delta)
        want = abs(true - surrogate.mean()) / true
        self.assertGreater(want, 1e-4)
        self.assertNear(method.taylor_remainder(), want, 1e-5)

    def test_phase_follows_the_remainder_and_is_logged(self):
        pgd = counting_pgd()
        x, y = harness.tiny_data()
        method = methods.GAAT(
            harness.tiny_classifier(), train_attack=pgd, tau=0.1
        )
        method.compile(optimizer=keras.optimizers.SGD(0.05))
        remainders = iter([0.5, 0.01, 0.5])
        method.taylor_remainder = lambda: next(remainders)
        calls = []
        record = keras.callbacks.LambdaCallback(
            on_epoch_end=lambda epoch, logs: calls.append(pgd.training_calls)
        )
        history = method.fit(
            x,
            y,
            batch_size=harness.BATCH,
            epochs=3,
            verbose=0,
            callbacks=[*method.callbacks(), record],
        )
        logs = history.history
        self.assertEqual(logs[gaat.PHASE_LOG], [0, 1, 0])
        self.assertAllClose(logs[gaat.REMAINDER_LOG], [0.5, 0.01, 0.5])
        for name in method.train_metric_names:
            self.assertTrue(np.all(np.isfinite(logs[name])), name)
        # Epoch 1's retraced step ran the exact PGD; epochs 0 and 2 not.
        self.assertEqual(calls[0], 0)
        self.assertGreater(calls[1], 0)
        self.assertEqual(calls[2], calls[1])
        self.assertEqual(method.phase, "exact")
        info = method.results_info()["gaat"]
        self.assertEqual(info["phases"], ["surrogate", "exact", "surrogate"])
        self.assertEqual(info["remainders"], [0.5, 0.01, 0.5])
        self.assertAlmostEqual(info["surrogate_epoch_fraction"], 2 / 3)
        self.assertEqual((info["order"], info["tau"]), (1, 0.1))
        self.assertEqual(info["next_phase"], "exact")

    @parameterized.parameters("default", "mirrored")
    def test_measured_remainder_above_a_tiny_tau_switches(self, strategy):
        w, b, x, y = harness.linear_problem(seed=8)
        method, _ = harness.fit_linear(
            lambda c: methods.GAAT(c, epsilon=EPS, tau=1e-9),
            w,
            b,
            x,
            y,
            lr=0.1,
            strategy=harness.strategy(strategy),
            batch=4,
            callbacks=None,
        )
        # fit runs the method's guard by itself: the remainder measured on
        # the monitor batch is above τ, so the next epoch is exact.
        self.assertEqual(method.phase, "exact")
        self.assertGreater(method.taylor_remainder(), 1e-9)
        self.assertEqual(method.results_info()["gaat"]["phases"], ["surrogate"])
        # Each replica keeps the first rows of its share of batch 0.
        buffers = harness.replica_buffers(method.monitor_images)
        rows = 4 // len(buffers)
        for r, buffer in enumerate(buffers):
            self.assertAllClose(
                buffer[:rows], x[r * rows : (r + 1) * rows], msg=f"{r}"
            )

    def test_monitor_is_the_first_minibatch_and_stays(self):
        x, y = harness.tiny_data(3 * harness.BATCH)
        method = methods.GAAT(
            harness.tiny_classifier(), epsilon=EPS, monitor_size=3
        )
        method.compile(optimizer=keras.optimizers.SGD(0.05))
        method.fit(
            x,
            y,
            batch_size=harness.BATCH,
            epochs=2,
            verbose=0,
            shuffle=False,
            callbacks=method.callbacks(),
        )
        self.assertEqual(int(method.monitor_count.numpy()), 3)
        self.assertAllClose(method.monitor_images.numpy(), x[:3])
        self.assertAllEqual(method.monitor_labels.numpy(), y[:3])

    def test_phase_and_monitor_survive_a_resume(self):
        logdir = self.create_tempdir().full_path
        x, y = harness.tiny_data(2 * harness.BATCH)

        def trainer():
            pgd = counting_pgd()
            method = methods.GAAT(
                harness.tiny_classifier(seed=1), train_attack=pgd, tau=1e-9
            )
            method.compile(optimizer=keras.optimizers.SGD(0.05))
            return method, pgd

        def fit(method, epochs, phases):
            record = keras.callbacks.LambdaCallback(
                on_epoch_begin=lambda epoch, logs: phases.append(
                    method.step_count(gaat.PHASE)
                )
            )
            return method.fit(
                x,
                y,
                batch_size=harness.BATCH,
                epochs=epochs,
                verbose=0,
                shuffle=False,
                callbacks=[
                    *method.callbacks(),
                    record,
                    run_folder.ResumableCheckpoint(logdir),
                ],
            )

        first, first_pgd = trainer()
        first_phases = []
        fit(first, 1, first_phases)
        self.assertEqual(first_phases, [0])
        self.assertEqual(first_pgd.training_calls, 0)
        self.assertEqual(first.phase, "exact")

        # A fresh trainer resumes at epoch 1 from the checkpoint.
        second, second_pgd = trainer()
        self.assertEqual(second.phase, "surrogate")
        second_phases = []
        history = fit(second, 2, second_phases)
        self.assertEqual(second_phases, [1])
        self.assertEqual(history.history[gaat.PHASE_LOG], [1])
        self.assertGreater(second_pgd.training_calls, 0)
        self.assertAllClose(
            second.monitor_images.numpy(), first.monitor_images.numpy()
        )
        self.assertEqual(int(second.monitor_count.numpy()), harness.BATCH)

    def test_save_and_load_weights_carry_the_phase(self):
        x, y = harness.tiny_data()
        first = methods.GAAT(
            harness.tiny_classifier(), epsilon=EPS, initial_phase="exact"
        )
        first.compile(optimizer=keras.optimizers.SGD(0.05))
        first.fit(x, y, batch_size=harness.BATCH, verbose=0)
        # The guard ran after the epoch (fit runs it): save the exact phase.
        first.set_step_count(gaat.PHASE, 1)
        path = os.path.join(self.create_tempdir(), "gaat.weights.h5")
        first.save_weights(path)
        second = methods.GAAT(harness.tiny_classifier(seed=2), epsilon=EPS)
        second.compile(optimizer=keras.optimizers.SGD(0.05))
        self.assertEqual(second.step_count(gaat.PHASE), 0)
        second.load_weights(path)
        self.assertEqual(second.step_count(gaat.PHASE), 1)
        self.assertAllClose(
            second.monitor_images.numpy(), first.monitor_images.numpy()
        )


class ArgumentsTest(tf.test.TestCase, parameterized.TestCase):
    def test_defaults(self):
        method = methods.GAAT(harness.tiny_classifier(), epsilon=8 / 255)
        attack = method.train_attack
        # PGDAT's default attack: PGD-7, steps of ε/4, at 8/255.
        self.assertIsInstance(attack, attacks.ProjectedGradient)
        self.assertNear(method.epsilon, 8 / 255, 1e-9)
        self.assertNear(attack.step_size, 2 / 255, 1e-9)
        self.assertEqual((attack.num_steps, attack.start), (7, "uniform"))
        self.assertTrue(method.attack_training_mode)
        self.assertEqual((method.order, method.tau), (1, 0.1))
        self.assertIsNone(method.perturbation_attack)
        self.assertEqual(method.phase, "surrogate")
        self.assertEqual(method.monitor_size, 128)
        self.assertEqual(
            tuple(method.monitor_images.shape), (128, *harness.INPUT_SHAPE)
        )

    def test_initial_phase_exact(self):
        method = methods.GAAT(
            harness.tiny_classifier(), epsilon=EPS, initial_phase="exact"
        )
        self.assertEqual(method.step_count(gaat.PHASE), 1)

    def test_config_holds_every_argument(self):
        fgsm_rs = attacks.ProjectedGradient(
            epsilon=EPS, step_size=1.25 * EPS, num_steps=1
        )
        method = methods.GAAT(
            harness.tiny_classifier(),
            train_attack=harness.pgd(),
            order=2,
            tau=0.2,
            perturbation_attack=fgsm_rs,
            initial_phase="exact",
            monitor_size=16,
            guard_seed=3,
            weight_decay=1e-4,
        )
        config = method.get_config()
        self.assertEqual(config["order"], 2)
        self.assertEqual(config["tau"], 0.2)
        self.assertEqual(
            config["perturbation_attack"]["config"]["step_size"], 1.25 * EPS
        )
        self.assertEqual(config["initial_phase"], "exact")
        self.assertEqual(config["monitor_size"], 16)
        self.assertEqual(config["guard_seed"], 3)
        self.assertEqual(config["weight_decay"], 1e-4)
        self.assertEqual(
            config["train_attack"]["class_name"], "ProjectedGradient"
        )

    @parameterized.named_parameters(
        ("order_3", {"order": 3}, "order must be one of"),
        ("order_0", {"order": 0}, "order must be an integer >= 1"),
        ("order_float", {"order": 1.0}, "order must be an integer"),
        ("order_bool", {"order": True}, "order must be an integer"),
        ("tau_zero", {"tau": 0.0}, r"tau must be in \(0, inf\]"),
        ("tau_negative", {"tau": -0.1}, r"tau must be in \(0, inf\]"),
        ("tau_nan", {"tau": float("nan")}, "tau must be in"),
        ("tau_text", {"tau": "big"}, "tau must be in"),
        ("phase", {"initial_phase": "pgd"}, "initial_phase must be one"),
        ("monitor", {"monitor_size": 0}, "monitor_size must be an integer"),
        ("seed", {"guard_seed": -1}, "guard_seed must be an integer"),
    )
    def test_bad_argument(self, kwargs, message):
        with self.assertRaisesRegex(ValueError, message):
            methods.GAAT(harness.tiny_classifier(), epsilon=EPS, **kwargs)

    def test_bad_perturbation_attack(self):
        classifier = harness.tiny_classifier()
        with self.assertRaisesRegex(TypeError, "perturbation_attack"):
            methods.GAAT(classifier, epsilon=EPS, perturbation_attack="fgsm")
        other_budget = attacks.ProjectedGradient(
            epsilon=0.2, step_size=0.2, num_steps=1
        )
        with self.assertRaisesRegex(ValueError, "same budget"):
            methods.GAAT(
                classifier, epsilon=EPS, perturbation_attack=other_budget
            )


class MixedPrecisionTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters(1, 2)
    def test_surrogate_trains_under_mixed_float16(self, order):
        keras.mixed_precision.set_dtype_policy("mixed_float16")
        classifier = harness.tiny_classifier()
        method = methods.GAAT(
            classifier, epsilon=EPS, order=order, weight_decay=5e-4
        )
        method.compile(optimizer=keras.optimizers.SGD(0.1))
        self.assertIsInstance(
            method.optimizer, keras.optimizers.LossScaleOptimizer
        )
        before = [v.numpy().copy() for v in classifier.trainable_variables]
        x, y = harness.tiny_data()
        history = method.fit(
            x,
            y,
            batch_size=harness.BATCH,
            verbose=0,
            callbacks=method.callbacks(),
        )
        for name in (*method.train_metric_names, gaat.REMAINDER_LOG):
            self.assertTrue(np.isfinite(history.history[name][-1]), name)
        changed = [
            not np.allclose(b, v.numpy())
            for b, v in zip(before, classifier.trainable_variables, strict=True)
        ]
        self.assertTrue(any(changed))


@pytest.mark.slow
class GinTest(tf.test.TestCase):
    def test_gaat_gin_trains_with_tiny(self):
        logdir = os.path.join(self.create_tempdir().full_path, "run")
        train.parse_gin(["gaat.gin", "testing/tiny.gin"], ["run.epochs = 2"])
        results = experiment.run(logdir=logdir)
        self.assertEqual(results["method"], "GAAT")
        with open(os.path.join(logdir, run_folder.RESULTS_FILE)) as f:
            written = json.load(f)
        info = written["gaat"]
        self.assertEqual((info["order"], info["tau"]), (1, 0.1))
        self.assertLen(info["phases"], 2)
        self.assertLen(written["history"][gaat.REMAINDER_LOG], 2)
        self.assertLen(written["history"][gaat.PHASE_LOG], 2)
        self.assertEqual(written["history"][gaat.PHASE_LOG][0], 0)
