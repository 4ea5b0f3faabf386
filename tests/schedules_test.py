"""Learning-rate schedules: PerMinibatch and the epoch boundaries of
piecewise_constant."""

import keras
import tensorflow as tf
from absl.testing import parameterized

from tests import harness
from tfadv import methods
from tfadv import schedules


def counter(value=0):
    return tf.Variable(value, dtype=tf.int64, trainable=False)


class PerMinibatchTest(tf.test.TestCase, parameterized.TestCase):
    def test_reads_the_counter_not_the_step(self):
        inner = schedules.PiecewiseLinear([0, 10], [0.0, 1.0])
        schedule = schedules.PerMinibatch(inner)
        minibatches = counter()
        schedule.bind(minibatches)
        for minibatch in range(12):
            minibatches.assign(minibatch)
            for step in (0, minibatch, 4 * minibatch + 3, 1000):
                self.assertAllClose(schedule(step), inner(minibatch))

    def test_unbound_schedule_refuses_to_run(self):
        schedule = schedules.PerMinibatch(0.1)
        with self.assertRaisesRegex(ValueError, "minibatch counter"):
            schedule(0)

    def test_builder_and_serialization(self):
        schedule = schedules.per_minibatch(
            steps_per_epoch=10, epochs=2, schedule=schedules.cyclic
        )
        self.assertIsInstance(schedule, schedules.PerMinibatch)
        minibatches = counter(10)
        schedule.bind(minibatches)
        cyclic = schedules.cyclic(steps_per_epoch=10, epochs=2)
        self.assertAllClose(schedule(31), cyclic(10))  # the peak
        restored = keras.optimizers.schedules.deserialize(
            keras.optimizers.schedules.serialize(schedule)
        )
        self.assertIsInstance(restored, schedules.PerMinibatch)
        # The counter is not serialized: a restored schedule is bound again
        # (by the trainer's compile).
        with self.assertRaisesRegex(ValueError, "minibatch counter"):
            restored(0)
        restored.bind(minibatches)
        for minibatch in (0, 7, 13, 19):
            minibatches.assign(minibatch)
            self.assertAllClose(restored(5), schedule(5))
            self.assertAllClose(restored(5), cyclic(minibatch))

    def test_constant_rate(self):
        schedule = schedules.per_minibatch(
            steps_per_epoch=10, epochs=2, schedule=schedules.constant
        )
        schedule.bind(counter(3))
        self.assertAllClose(schedule(5), 0.01)

    @parameterized.parameters("float32", "mixed_float16")
    def test_compile_binds_the_trainers_counter(self, policy):
        keras.mixed_precision.set_dtype_policy(policy)
        schedule = schedules.PerMinibatch(
            schedules.PiecewiseLinear([0, 4], [0.0, 0.4])
        )
        method = methods.Standard(harness.tiny_classifier())
        method.compile(optimizer=keras.optimizers.SGD(schedule))
        if policy == "mixed_float16":
            self.assertIsInstance(
                method.optimizer, keras.optimizers.LossScaleOptimizer
            )
        self.assertIs(schedule.counter, method.minibatches)
        x, y = harness.tiny_data(3 * harness.BATCH)
        method.fit(x, y, batch_size=harness.BATCH, verbose=0)
        self.assertEqual(int(method.minibatches.numpy()), 3)
        self.assertAllClose(schedule(0), 0.3)


class PiecewiseConstantTest(tf.test.TestCase):
    def test_switches_at_the_first_minibatch_of_a_boundary_epoch(self):
        lr = schedules.piecewise_constant(
            steps_per_epoch=10, epochs=4, base_lr=0.1, boundaries=[2]
        )
        # Optimizer step s is the (s + 1)-th update; step 20 is the first
        # minibatch of epoch 2 (0-based).
        self.assertAllClose(float(lr(19)), 0.1)
        self.assertAllClose(float(lr(20)), 0.1 * 0.1)

    def test_several_and_fractional_boundaries(self):
        lr = schedules.piecewise_constant(
            steps_per_epoch=10,
            epochs=5,
            base_lr=0.2,
            boundaries=[1.5, 3],
            factor=0.5,
        )
        got = [float(lr(s)) for s in (0, 14, 15, 29, 30, 49)]
        self.assertAllClose(got, [0.2, 0.2, 0.1, 0.1, 0.05, 0.05])

    def test_without_boundaries_a_constant(self):
        lr = schedules.piecewise_constant(
            steps_per_epoch=10, epochs=1, base_lr=0.3
        )
        self.assertEqual(lr, 0.3)

    def test_the_rate_of_each_epoch_in_training(self):
        # Two minibatches per epoch, the rate halves from epoch 1: the rate
        # each update uses, read before each minibatch of a real fit.
        lr = schedules.piecewise_constant(
            steps_per_epoch=2,
            epochs=2,
            base_lr=0.4,
            boundaries=[1],
            factor=0.5,
        )
        rates = []

        class Log(keras.callbacks.Callback):
            def on_train_batch_begin(self, batch, logs=None):
                rates.append(float(self.model.optimizer.learning_rate))

        method = methods.Standard(harness.tiny_classifier())
        method.compile(optimizer=keras.optimizers.SGD(lr))
        x, y = harness.tiny_data(2 * harness.BATCH)
        method.fit(
            x,
            y,
            batch_size=harness.BATCH,
            epochs=2,
            verbose=0,
            callbacks=[Log()],
        )
        self.assertAllClose(rates, [0.4, 0.4, 0.2, 0.2])


class CyclicTest(tf.test.TestCase):
    def test_cyclic_is_triangular(self):
        lr = schedules.cyclic(
            steps_per_epoch=10, epochs=4, max_lr=0.2, peak_fraction=0.5
        )
        self.assertAllClose(
            [float(lr(s)) for s in (0, 10, 20, 30, 40, 50)],
            [0.0, 0.1, 0.2, 0.1, 0.0, 0.0],
        )
        restored = schedules.PiecewiseLinear.from_config(lr.get_config())
        self.assertAllClose(float(restored(15)), float(lr(15)))

    def test_bad_schedule_arguments(self):
        with self.assertRaisesRegex(ValueError, "peak_fraction"):
            schedules.cyclic(steps_per_epoch=1, epochs=1, peak_fraction=1.0)
        with self.assertRaisesRegex(ValueError, "boundaries"):
            schedules.piecewise_constant(
                steps_per_epoch=1, epochs=1, boundaries=[-1]
            )
