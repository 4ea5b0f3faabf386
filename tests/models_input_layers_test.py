"""tfadv.models.prepend_layers: input layers in front of any classifier."""

import keras
import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from tests import models_fixtures
from tfadv import layers
from tfadv import methods
from tfadv import models


def scale_layer():
    return keras.layers.Rescaling(0.5, offset=0.25, name="squeeze")


class Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(3)

    def call(self, x):
        return self.dense(keras.ops.reshape(x, (-1, 8 * 8)))


def sequential():
    return keras.Sequential(
        [keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(3)]
    )


def build(name):
    """Every builder of tfadv.models at its tiny test size, or a Sequential."""
    if name == "sequential":
        return sequential()
    builder, kwargs, _, _ = models_fixtures.CONFIGS[name]
    return builder(**kwargs)


NAMES = [*models_fixtures.CONFIGS, "sequential"]


class PrependLayersTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters(*NAMES)
    def test_layers_run_first_with_the_classifiers_weights(self, name):
        keras.utils.set_random_seed(0)
        classifier = build(name)
        model = models.prepend_layers(classifier, [scale_layer])
        shape = classifier.input_shape[1:]
        x = np.random.default_rng(0).uniform(size=(2, *shape))
        x = x.astype("float32")
        self.assertAllClose(model(x), classifier(0.5 * x + 0.25), atol=1e-5)
        self.assertEqual(model.count_params(), classifier.count_params())
        first = [
            layer
            for layer in model.layers
            if not isinstance(layer, keras.layers.InputLayer)
        ][0]
        self.assertEqual(first.name, "squeeze")
        want = {v.path: v.numpy() for v in classifier.weights}
        for v in model.weights:
            self.assertAllEqual(v.numpy(), want[v.path], msg=v.path)

    def test_functional_builders_stay_flat_for_yopo_and_normalisation(self):
        classifier = build("small_cnn")
        model = models.prepend_layers(
            classifier, [layers.SoftQuantization(name="sq")]
        )
        # The input layer comes before "normalize", at the top level.
        names = [layer.name for layer in model.layers]
        self.assertLess(names.index("sq"), names.index(models.NORMALIZE_LAYER))
        self.assertIn(models.FIRST_LAYER, names)
        f0, rest = models.split_at_first_layer(model)
        x = np.random.default_rng(1).uniform(size=(2, 8, 8, 3))
        x = x.astype("float32")
        self.assertAllClose(rest(f0(x)), model(x), atol=1e-5)
        # YOPO trains such a model.
        trainer = methods.YOPO(model, epsilon=0.1)
        self.assertIsNotNone(trainer.train_attack)

    def test_subclassed_model_is_nested(self):
        classifier = Subclassed()
        classifier(np.zeros((1, 8, 8, 1), "float32"))
        model = models.prepend_layers(
            classifier, [scale_layer()], input_shape=(8, 8, 1)
        )
        x = np.ones((2, 8, 8, 1), "float32")
        self.assertAllClose(model(x), classifier(0.5 * x + 0.25))

    def test_no_layers_returns_the_classifier(self):
        classifier = sequential()
        self.assertIs(models.prepend_layers(classifier, []), classifier)

    def test_errors(self):
        with self.assertRaisesRegex(TypeError, "needs a keras.Model"):
            models.prepend_layers(lambda x: x, [scale_layer()])
        with self.assertRaisesRegex(TypeError, "must be Keras layers"):
            models.prepend_layers(sequential(), ["sq"])
        with self.assertRaisesRegex(ValueError, "pass input_shape="):
            models.prepend_layers(Subclassed(), [scale_layer()])
