"""A learning rate of its own for some variables (tfadv/methods/layer_lr.py),
and YOPO's first-layer rate built on it (docs/algorithms.md §1.6 P7)."""

import keras
import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from tests import harness
from tfadv import methods
from tfadv.methods import layer_lr


def yopo(classifier, **kwargs):
    return methods.YOPO(
        classifier,
        m=2,
        train_attack=harness.yopo_attack(0.1, 0.02, 3),
        **kwargs,
    )


class LayerLearningRateTest(tf.test.TestCase, parameterized.TestCase):
    def _rate(self, **kwargs):
        owner = methods.Standard(harness.tiny_classifier())
        return owner, layer_lr.LayerLearningRate(owner, **kwargs)

    def test_rate_at_each_epoch(self):
        _, rate = self._rate(initial=0.2, boundaries=[1, 2.5], factor=0.5)
        got = [rate.rate_at(e) for e in range(5)]
        self.assertAllClose(got, [0.2, 0.1, 0.1, 0.05, 0.05])

    def test_the_variable_is_the_owners_and_set_per_epoch(self):
        owner, rate = self._rate(initial=0.2, boundaries=[1], name="lr0")
        self.assertIn(rate.variable.path, [v.path for v in owner.variables])
        self.assertAllClose(rate.variable.numpy(), 0.2)
        rate.on_epoch_begin(3)
        self.assertAllClose(rate.variable.numpy(), 0.02)
        self.assertEqual(rate.log(), {"lr0": rate.variable.numpy()})

    def test_scale_multiplies_by_the_rate_over_lr(self):
        _, rate = self._rate(initial=0.05)
        grads = [tf.ones([2]), None]
        optimizer = keras.optimizers.SGD(0.5)
        scaled = rate.scale(grads, optimizer)
        self.assertAllClose(scaled[0], [0.1, 0.1])
        self.assertIsNone(scaled[1])
        # Where the main rate is 0, these variables do not move either.
        zero = rate.scale(grads, keras.optimizers.SGD(0.0))
        self.assertAllClose(zero[0], [0.0, 0.0])

    def test_check_optimizer(self):
        check = layer_lr.LayerLearningRate.check_optimizer
        check(keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True), "X")
        check(
            keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.1)),
            "X",
        )
        with self.assertRaisesRegex(ValueError, "Adam"):
            check(keras.optimizers.Adam(), "X")
        with self.assertRaisesRegex(ValueError, "clipvalue"):
            check(keras.optimizers.SGD(clipvalue=1.0), "X")

    def test_bad_arguments(self):
        with self.assertRaisesRegex(ValueError, "rate0.*-1"):
            self._rate(initial=-1, arg_prefix="rate0")
        with self.assertRaisesRegex(ValueError, "boundaries.*0.0"):
            self._rate(initial=0.1, boundaries=[0])


class FirstLayerRateTest(tf.test.TestCase):
    def test_first_layer_schedule_from_epoch_hooks(self):
        x, y = harness.tiny_data()
        method = yopo(
            harness.tiny_classifier(),
            first_layer_lr=0.2,
            first_layer_lr_boundaries=[1, 2],
            first_layer_lr_factor=0.5,
        )
        method.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
        history = method.fit(
            x,
            y,
            batch_size=harness.BATCH,
            epochs=3,
            verbose=0,
            callbacks=method.callbacks(),
        )
        self.assertAllClose(
            history.history["first_layer_learning_rate"], [0.2, 0.1, 0.05]
        )
        # The variable is part of the method's checkpointed state.
        self.assertIn(
            method.first_layer_learning_rate.path,
            [v.path for v in method.variables],
        )

    def test_first_layer_lr_under_mirrored_strategy(self):
        with harness.mirrored().scope():
            method = yopo(
                harness.tiny_classifier(),
                first_layer_lr=0.2,
                first_layer_lr_boundaries=[3],
            )
        method.on_epoch_begin(3)
        self.assertAllClose(
            method.on_epoch_end(3)["first_layer_learning_rate"], 0.02
        )
        self.assertAllClose(method.first_layer_learning_rate.numpy(), 0.02)

    def test_only_the_first_layer_moves_at_its_own_rate(self):
        # Main rate 0.2, layer 0's rate 0: layer 0 stays, the rest moves.
        x, y = harness.tiny_data()
        classifier = harness.tiny_classifier()
        method = yopo(classifier, first_layer_lr=0.0)
        method.compile(optimizer=keras.optimizers.SGD(0.2))
        first = [v.path for v in method.layer0.trainable_variables]
        self.assertNotEmpty(first)
        before = {v.path: v.numpy().copy() for v in classifier.weights}
        method.fit(x, y, batch_size=harness.BATCH, verbose=0)
        for v in classifier.trainable_variables:
            moved = not np.allclose(before[v.path], v.numpy())
            self.assertEqual(moved, v.path not in first, msg=v.path)

    def test_first_layer_lr_needs_plain_sgd(self):
        method = yopo(harness.tiny_classifier(), first_layer_lr=0.01)
        with self.assertRaisesRegex(ValueError, "Adam"):
            method.compile(optimizer=keras.optimizers.Adam())
        with self.assertRaisesRegex(ValueError, "clipnorm"):
            method.compile(optimizer=keras.optimizers.SGD(clipnorm=1.0))
        with self.assertRaisesRegex(ValueError, "weight_decay"):
            method.compile(optimizer=keras.optimizers.SGD(weight_decay=1e-4))
        # Without a first-layer rate, any optimizer will do.
        yopo(harness.tiny_classifier()).compile(optimizer="adam")
