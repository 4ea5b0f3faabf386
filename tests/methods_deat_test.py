"""tfadv.methods.deat: DEAT and M+DEAT.

The harness; r replays make r updates per minibatch and one schedule step,
and r really changes between epochs; the replays and M against NumPy on one
device and under a 2-replica MirroredStrategy; r, M and the threshold
survive a checkpoint and a resumed run; bad input.
"""

import os

import keras
import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from tests import harness
from tfadv import attacks
from tfadv import methods
from tfadv import schedules
from tfadv.methods import controllers


def fixed_start_attack(eps, alpha, r_max, scale=0.05):
    """DEAT's attack with a known start (the seed is not used)."""
    return harness.FixedStartPGD(
        epsilon=eps,
        step_size=alpha,
        num_steps=r_max,
        start_fn=lambda x: harness.fixed_start(x, scale),
    )


def numpy_deat_epoch(w, b, x, y, *, eps, alpha, replays, lr, batch, scale):
    """One epoch of DEAT with `replays` replays; returns (w, b, M)."""
    w, b = w.astype(np.float64), b.astype(np.float64)
    targets = harness.onehot(y, w.shape[1])
    step = max(eps / replays, alpha)
    magnitude = 0.0
    for start in range(0, len(x), batch):
        xb, tb = x[start : start + batch], targets[start : start + batch]
        # The fresh start of every minibatch, made feasible.
        start_point = xb + scale * np.sin(37.0 * xb + 1.0)
        delta = harness.project(xb, start_point, eps) - xb
        for _ in range(replays):
            g = (harness.softmax((xb + delta) @ w + b) - tb) / len(xb)
            grad_w, grad_b = (xb + delta).T @ g, g.sum(0)
            grad_delta = g @ w.T
            w, b = w - lr * grad_w, b - lr * grad_b
            moved = xb + delta + step * np.sign(grad_delta)
            delta = harness.project(xb, moved, eps) - xb
        magnitude += np.abs(grad_delta).sum()
    return w, b, magnitude


class HarnessTest(tf.test.TestCase):
    def test_deat(self):
        harness.run_method_test(
            self, lambda c: methods.DEAT(c, epsilon=0.1, weight_decay=5e-4)
        )

    def test_defaults_are_the_reference_setting(self):
        method = methods.DEAT(harness.tiny_classifier(), epsilon=8 / 255)
        attack, controller = method.train_attack, method.step_controller
        self.assertAllClose(method.epsilon, 8 / 255)
        self.assertAllClose(attack.step_size, 10 / 255)
        self.assertEqual((attack.num_steps, attack.start), (8, "uniform"))
        self.assertIsInstance(controller, controllers.MPlus)
        self.assertEqual((controller.gamma, controller.max_steps), (1.01, 8))
        self.assertEqual(method.replays, 1)
        self.assertTrue(method.attack_training_mode)


class ReplayScheduleTest(tf.test.TestCase):
    def test_r_replays_are_r_updates_and_one_schedule_step(self):
        method = methods.DEAT(
            harness.tiny_classifier(),
            train_attack=harness.pgd(num_steps=3),
            step_controller=controllers.LinearGrowth(every=1, max_steps=3),
        )
        schedule = schedules.PerMinibatch(
            schedules.PiecewiseLinear([0, 100], [0.0, 1.0])
        )
        method.compile(optimizer=keras.optimizers.SGD(schedule))
        x, y = harness.tiny_data(2 * harness.BATCH)
        history = method.fit(
            x,
            y,
            batch_size=harness.BATCH,
            epochs=4,
            verbose=0,
            callbacks=method.callbacks(),
            shuffle=False,
        )
        # r = 1, 2, 3, 3 over 2 minibatches per epoch.
        self.assertEqual(history.history["linear/steps"], [1, 2, 3, 3])
        self.assertEqual(int(method.optimizer.iterations.numpy()), 18)
        self.assertEqual(int(method.minibatches.numpy()), 8)
        # The schedule counted minibatches: the next rate is at minibatch 8.
        self.assertAllClose(method.optimizer.learning_rate, 0.08)


class AnalyticTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.product(strategy=["default", "mirrored"], replays=[1, 3])
    def test_epoch_matches_numpy(self, strategy, replays):
        # Two minibatches of 8; the controller holds r where it starts.
        w, b, x, y = harness.linear_problem(seed=9, n=16)
        eps, alpha, lr, scale = 0.1, 0.02, 0.5, 0.05
        controller = controllers.LinearGrowth(
            every=100, max_steps=4, initial_steps=replays
        )
        method, (got_w, got_b) = harness.fit_linear(
            lambda c: methods.DEAT(
                c,
                train_attack=fixed_start_attack(eps, alpha, 4, scale),
                step_controller=controller,
            ),
            w,
            b,
            x,
            y,
            lr=lr,
            strategy=harness.strategy(strategy),
            batch=8,
            callbacks=None,
        )
        want_w, want_b, _ = numpy_deat_epoch(
            w,
            b,
            x,
            y,
            eps=eps,
            alpha=alpha,
            replays=replays,
            lr=lr,
            batch=8,
            scale=scale,
        )
        self.assertAllClose(got_w, want_w, atol=1e-5)
        self.assertAllClose(got_b, want_b, atol=1e-5)
        self.assertEqual(int(method.optimizer.iterations.numpy()), 2 * replays)

    @parameterized.parameters("default", "mirrored")
    def test_magnitude_matches_numpy(self, strategy):
        w, b, x, y = harness.linear_problem(seed=10, n=16)
        eps, alpha, scale = 0.1, 0.02, 0.05
        controller = controllers.MPlus(max_steps=4, initial_steps=2)
        harness.fit_linear(
            lambda c: methods.DEAT(
                c,
                train_attack=fixed_start_attack(eps, alpha, 4, scale),
                step_controller=controller,
            ),
            w,
            b,
            x,
            y,
            lr=0.3,
            strategy=harness.strategy(strategy),
            batch=8,
        )
        _, _, want = numpy_deat_epoch(
            w,
            b,
            x,
            y,
            eps=eps,
            alpha=alpha,
            replays=2,
            lr=0.3,
            batch=8,
            scale=scale,
        )
        self.assertAllClose(controller.magnitude, want, rtol=1e-4)

    def test_magnitude_is_taken_wrt_the_normalised_input(self):
        # The same model with and without a normalisation of std s: the
        # gradient w.r.t. the normalised input is s times the pixel one.
        x, y = harness.tiny_data(4)

        def build(std):
            keras.utils.set_random_seed(4)
            inputs = keras.Input(harness.INPUT_SHAPE)
            h = keras.layers.Normalization(
                axis=-1,
                mean=[0.0] * 3,
                variance=[std**2] * 3,
                name="normalize",
            )(inputs)
            h = keras.layers.Flatten()(h)
            outputs = keras.layers.Dense(3, name="first_layer")(h)
            return keras.Model(inputs, outputs)

        magnitudes = []
        for std in (1.0, 0.5):
            model = build(std)
            if std != 1.0:
                # Undo the normalisation in the weights: same function of x.
                kernel, bias = model.get_layer("first_layer").get_weights()
                model.get_layer("first_layer").set_weights([kernel * std, bias])
            controller = controllers.MPlus(max_steps=2, initial_steps=1)
            method = methods.DEAT(
                model,
                train_attack=harness.pgd(num_steps=2, start="none"),
                step_controller=controller,
            )
            method.compile(optimizer=keras.optimizers.SGD(0.0))
            method.fit(x, y, batch_size=4, epochs=1, verbose=0, shuffle=False)
            magnitudes.append(float(controller.magnitude.numpy()))
        self.assertAllClose(magnitudes[1], 0.5 * magnitudes[0], rtol=1e-4)


class StateTest(tf.test.TestCase):
    def _method(self):
        return methods.DEAT(
            harness.tiny_classifier(),
            epsilon=0.1,
            step_controller=controllers.MPlus(gamma=0.5, max_steps=8),
            seed=1,
        )

    def _fit(self, method, epochs, callbacks=()):
        method.compile(optimizer=keras.optimizers.SGD(0.05))
        x, y = harness.tiny_data(2 * harness.BATCH)
        return method.fit(
            x,
            y,
            batch_size=harness.BATCH,
            epochs=epochs,
            verbose=0,
            shuffle=False,
            callbacks=[*method.callbacks(), *callbacks],
        )

    def test_state_survives_save_and_load(self):
        method = self._fit_and_get(3)
        path = os.path.join(self.get_temp_dir(), "deat.weights.h5")
        method.save_weights(path)
        restored = self._method()
        restored.load_weights(path)
        for name in ("replays",):
            self.assertEqual(restored.step_count(name), method.step_count(name))
        self.assertAllClose(
            restored.step_controller.threshold,
            method.step_controller.threshold,
        )
        self.assertAllClose(
            restored.step_controller.magnitude,
            method.step_controller.magnitude,
        )
        self.assertGreater(float(method.step_controller.threshold.numpy()), 0)

    def _fit_and_get(self, epochs):
        method = self._method()
        self._fit(method, epochs)
        return method

    def test_resumed_run_continues_from_the_checkpointed_state(self):
        class StopAfter(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                if epoch == 2:
                    raise RuntimeError("killed")

        class Probe(keras.callbacks.Callback):
            # After BackupAndRestore has restored the checkpoint.
            def on_train_begin(self, logs=None):
                trainer = self.model
                self.state = (
                    trainer.step_count("replays"),
                    float(trainer.step_controller.threshold.numpy()),
                )

        backup = keras.callbacks.BackupAndRestore(self.get_temp_dir())
        interrupted = self._method()
        with self.assertRaisesRegex(RuntimeError, "killed"):
            self._fit(interrupted, 5, [backup, StopAfter()])
        carried = (
            interrupted.step_count("replays"),
            float(interrupted.step_controller.threshold.numpy()),
        )
        self.assertGreater(carried[0], 1)
        self.assertGreater(carried[1], 0.0)
        probe = Probe()
        resumed = self._method()
        history = self._fit(resumed, 5, [backup, probe]).history
        self.assertEqual(probe.state[0], carried[0])
        self.assertAllClose(probe.state[1], carried[1])
        # Epochs 3 and 4 only, the first with the carried count.
        self.assertLen(history["mplus/steps"], 2)
        self.assertEqual(history["mplus/steps"][0], carried[0])


class BadInputTest(tf.test.TestCase):
    def test_bad_arguments(self):
        classifier = harness.tiny_classifier()
        with self.assertRaisesRegex(ValueError, "training-mode pass"):
            methods.DEAT(classifier, attack_training_mode=False)
        with self.assertRaisesRegex(ValueError, "at least once"):
            methods.DEAT(
                classifier,
                epsilon=0.1,
                step_controller=controllers.MPlus(initial_steps=0),
            )
        with self.assertRaisesRegex(ValueError, "max_steps=4.*8"):
            methods.DEAT(
                classifier,
                epsilon=0.1,
                step_controller=controllers.MPlus(max_steps=4),
            )
        with self.assertRaisesRegex(TypeError, "ProjectedGradient"):
            methods.DEAT(
                classifier, train_attack=attacks.APGD(epsilon=0.1, num_steps=2)
            )
