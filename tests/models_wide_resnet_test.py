"""tfadv.models.wide_resnet: the TRADES/MART WideResNet."""

import gin
import keras
import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from tests import models_fixtures as fx
from tfadv import models

BuilderContractTest = fx.builder_contract_test(
    ("wide_resnet", "wide_resnet_dropout")
)


class ParameterCountTest(tf.test.TestCase):
    @staticmethod
    def _trainable(model):
        return sum(int(np.prod(w.shape)) for w in model.trainable_weights)

    def test_wide_resnet_34_10_matches_pytorch(self):
        # TRADES' WideResNet(depth=34, widen_factor=10), as reported by
        # sum(p.numel() for p in model.parameters()).
        model = models.wide_resnet()
        self.assertEqual(self._trainable(model), 46160474)
        convs = [
            layer
            for layer in model.layers
            if isinstance(layer, keras.layers.Conv2D)
        ]
        # 1 stem + 3 groups x 5 blocks x 2 convs + 3 shortcuts.
        self.assertLen(convs, 1 + 3 * 5 * 2 + 3)


class ValidationTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters(
        (models.wide_resnet, dict(depth=33), "depth=33"),
        (models.wide_resnet, dict(depth=4), "depth=4"),
        (models.wide_resnet, dict(depth=10, width=0), "width=0"),
        (models.wide_resnet, dict(depth=10, dropout=1.0), "dropout=1.0"),
    )
    def test_bad_arguments(self, builder, kwargs, message):
        with self.assertRaisesRegex(ValueError, message):
            builder(**kwargs)


class GinTest(tf.test.TestCase):
    def test_gin_binding(self):
        self.assertIsNotNone(gin.get_configurable("wide_resnet"))
