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


class WidthTest(tf.test.TestCase, parameterized.TestCase):
    @staticmethod
    def _trainable(model):
        return sum(int(np.prod(w.shape)) for w in model.trainable_weights)

    @staticmethod
    def _expected(depth, width, base_width, channels=3, classes=10):
        """Trainable parameters of WRN-depth-width at `base_width`."""
        n = (depth - 4) // 6
        total = 9 * channels * base_width
        c_in = base_width
        for c_out in (base_width * width * f for f in (1, 2, 4)):
            for block in range(n):
                total += 2 * c_in + 9 * c_in * c_out
                total += 2 * c_out + 9 * c_out * c_out
                if block == 0 and c_in != c_out:
                    total += c_in * c_out
                c_in = c_out
        return total + 2 * c_in + c_in * classes + classes

    @parameterized.parameters((16, 2, 4), (16, 1, 8), (10, 4, 16))
    def test_parameter_count_follows_the_widths(self, depth, width, base):
        model = models.wide_resnet(depth=depth, width=width, base_width=base)
        self.assertEqual(
            self._trainable(model), self._expected(depth, width, base)
        )
        self.assertEqual(model.get_layer(models.FIRST_LAYER).filters, base)

    def test_defaults_are_the_paper_widths(self):
        self.assertEqual(self._expected(34, 10, 16), 46160474)
        default = models.wide_resnet(depth=10, width=2)
        explicit = models.wide_resnet(depth=10, width=2, base_width=16)
        self.assertEqual(default.get_config(), explicit.get_config())

    def test_base_width_from_gin(self):
        gin.parse_config("tfadv.models.wide_resnet.base_width = 4")
        model = gin.get_configurable("wide_resnet")(depth=10, width=1)
        self.assertEqual(model.get_layer("group3_block1_conv2").filters, 16)


class ValidationTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters(
        (models.wide_resnet, dict(depth=33), "depth=33"),
        (models.wide_resnet, dict(depth=4), "depth=4"),
        (models.wide_resnet, dict(depth=10, width=0), "width=0"),
        (models.wide_resnet, dict(depth=10, base_width=0), "base_width=0"),
        (models.wide_resnet, dict(depth=10, dropout=1.0), "dropout=1.0"),
    )
    def test_bad_arguments(self, builder, kwargs, message):
        with self.assertRaisesRegex(ValueError, message):
            builder(**kwargs)


class GinTest(tf.test.TestCase):
    def test_gin_binding(self):
        self.assertIsNotNone(gin.get_configurable("wide_resnet"))
