"""tfadv.models.common: split_at_first_layer and the shared pieces."""

import os

import keras
import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from tests import models_fixtures as fx
from tfadv import models


class SplitErrorsTest(tf.test.TestCase, parameterized.TestCase):
    def test_model_without_first_layer(self):
        inputs = keras.Input((4,))
        outputs = keras.layers.Dense(2)(keras.layers.Dense(3)(inputs))
        model = keras.Model(inputs, outputs, name="plain")
        with self.assertRaisesRegex(ValueError, "first_layer.*layer_name="):
            models.split_at_first_layer(model)

    def test_subclassed_model(self):
        class Subclassed(keras.Model):
            def __init__(self):
                super().__init__()
                self.dense = keras.layers.Dense(2, name="first_layer")

            def call(self, x):
                return self.dense(x)

        model = Subclassed()
        model(np.zeros((1, 3), np.float32))
        with self.assertRaisesRegex(ValueError, "functional or Sequential"):
            models.split_at_first_layer(model)

    def test_skip_connection_across_split(self):
        inputs = keras.Input((4,))
        h = keras.layers.Dense(4, name="stem")(inputs)
        z = keras.layers.Dense(4, name="first_layer")(h)
        out = keras.layers.Add()([keras.layers.Dense(4)(z), h])
        model = keras.Model(inputs, out)
        with self.assertRaisesRegex(ValueError, "crosses the split point"):
            models.split_at_first_layer(model)

    def test_custom_layer_name_on_sequential(self):
        model = keras.Sequential(
            [
                keras.Input((5,)),
                keras.layers.Dense(4, name="stem"),
                keras.layers.Dense(3, name="head"),
            ]
        )
        with self.assertRaisesRegex(ValueError, "'first_layer'"):
            models.split_at_first_layer(model)
        f0, rest = models.split_at_first_layer(model, layer_name="stem")
        x = np.random.default_rng(0).normal(size=(2, 5)).astype("float32")
        self.assertAllClose(rest(f0(x)), model(x), atol=1e-6)

    def test_split_twice_and_save_after_split(self):
        model, kwargs, _, _ = fx.build("preact_resnet18")
        x = fx.images(kwargs)
        models.split_at_first_layer(model)
        f0, rest = models.split_at_first_layer(model)
        self.assertAllClose(rest(f0(x)), model(x), atol=1e-5)
        path = os.path.join(self.get_temp_dir(), "after_split.keras")
        model.save(path)
        loaded = keras.saving.load_model(path)
        self.assertAllClose(loaded(x), model(x), atol=1e-6)


class SplitTest(tf.test.TestCase, parameterized.TestCase):
    def test_gradient_reaches_input_through_split(self):
        model, kwargs, _, _ = fx.build("small_cnn")
        f0, rest = models.split_at_first_layer(model)
        x = tf.constant(fx.images(kwargs))
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(x)
            z = f0(x)
            full = tf.reduce_sum(model(x))
            split = tf.reduce_sum(rest(z))
        self.assertAllClose(
            tape.gradient(split, x), tape.gradient(full, x), atol=1e-5
        )

    def test_split_under_mirrored_strategy(self):
        devices = tf.config.list_logical_devices("CPU")
        if len(devices) < 2:
            self.skipTest("needs 2 logical CPUs (set up by conftest.py)")
        strategy = tf.distribute.MirroredStrategy([d.name for d in devices[:2]])
        with strategy.scope():
            model = models.small_cnn(
                input_shape=(8, 8, 3), filters=(4, 8), dense_units=16
            )
            f0, rest = models.split_at_first_layer(model)
        self.assertCountEqual(
            [id(v) for v in f0.weights + rest.weights],
            [id(v) for v in model.weights],
        )
        x = tf.constant(fx.images(dict(input_shape=(8, 8, 3)), batch=4))

        def step(images):
            return rest(f0(images, training=True), training=True)

        per_replica = strategy.run(step, args=(x,))
        for value in strategy.experimental_local_results(per_replica):
            self.assertAllClose(value, model(x), atol=1e-5)
