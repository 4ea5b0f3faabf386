"""tfadv.layers.masking_layer_names: the layers that declare masking."""

import keras
import tensorflow as tf

from tests import evaluation_fixtures as fx
from tfadv import layers


class MaskingLayerNamesTest(tf.test.TestCase):
    def test_finds_declared_layers_nested_ones_included(self):
        inner = keras.Sequential(
            [
                keras.Input((4,)),
                layers.SoftQuantization(name="inner_sq"),
                keras.layers.Dense(3),
            ],
            name="inner",
        )
        outer = keras.Sequential(
            [keras.Input((4,)), layers.SoftQuantization(name="sq"), inner]
        )
        self.assertEqual(layers.masking_layer_names(outer), ["sq", "inner_sq"])
        self.assertEqual(layers.masking_layer_names(inner), ["inner_sq"])

    def test_a_layer_opts_in_by_its_attribute(self):
        # The evaluation's hard quantiser does not declare itself; a user's
        # layer does with `masks_gradients = True`.
        model = fx.linear_model((4,), 3, quantize=8)
        self.assertEqual(layers.masking_layer_names(model), [])

        class Declared(fx.Quantize):
            masks_gradients = True

        model = keras.Sequential(
            [keras.Input((4,)), Declared(name="q"), keras.layers.Dense(3)]
        )
        self.assertEqual(layers.masking_layer_names(model), ["q"])
