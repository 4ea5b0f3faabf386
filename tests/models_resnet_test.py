"""tfadv.models.resnet: the pre-activation and the standard ResNet-18."""

import gin
import keras
import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from tests import models_fixtures as fx
from tfadv import models

BuilderContractTest = fx.builder_contract_test(("preact_resnet18", "resnet18"))


class PreActResNet18Test(tf.test.TestCase, parameterized.TestCase):
    def test_strided_conv_matches_pytorch_padding(self):
        # A 3x3 stride-2 conv with symmetric padding 1 on an 8x8 input: the
        # output pixel (0, 0) sees input rows/cols -1..1 (PyTorch), not 0..2.
        model = models.preact_resnet18(input_shape=(8, 8, 3))
        conv = model.get_layer("stage2_block1_conv1")
        self.assertEqual(conv.strides, (2, 2))
        self.assertEqual(conv.padding, "valid")
        self.assertIsInstance(
            model.get_layer("stage2_block1_conv1_pad"),
            keras.layers.ZeroPadding2D,
        )
        self.assertEqual(tuple(conv.output.shape[1:3]), (4, 4))


class ParameterCountTest(tf.test.TestCase):
    @staticmethod
    def _trainable(model):
        return sum(int(np.prod(w.shape)) for w in model.trainable_weights)

    def test_preact_resnet18_matches_pytorch(self):
        def conv(k, c_in, c_out):
            return k * k * c_in * c_out

        def bn(c):
            return 2 * c  # gamma and beta; moving stats are buffers

        expected = conv(3, 3, 64)
        c_in = 64
        for c_out, stride in zip(
            (64, 128, 256, 512), (1, 2, 2, 2), strict=True
        ):
            for block in range(2):
                s = stride if block == 0 else 1
                expected += bn(c_in) + conv(3, c_in, c_out)
                expected += bn(c_out) + conv(3, c_out, c_out)
                if s != 1 or c_in != c_out:
                    expected += conv(1, c_in, c_out)
                c_in = c_out
        expected += bn(512) + 512 * 10 + 10
        # fast_adversarial's PreActResNet18 (with its final BN): ~11.17M.
        self.assertEqual(expected, 11172170)
        model = models.preact_resnet18()
        self.assertEqual(self._trainable(model), expected)

    def test_resnet18_matches_pytorch(self):
        def conv(k, c_in, c_out):
            return k * k * c_in * c_out

        def bn(c):
            return 2 * c

        # The stem: conv + BN; then BasicBlocks (conv-BN-conv-BN, and a
        # 1x1 conv + BN shortcut where the shape changes); then the head.
        expected = conv(3, 3, 64) + bn(64)
        c_in = 64
        for c_out, stride in zip(
            (64, 128, 256, 512), (1, 2, 2, 2), strict=True
        ):
            for block in range(2):
                s = stride if block == 0 else 1
                expected += conv(3, c_in, c_out) + bn(c_out)
                expected += conv(3, c_out, c_out) + bn(c_out)
                if s != 1 or c_in != c_out:
                    expected += conv(1, c_in, c_out) + bn(c_out)
                c_in = c_out
        expected += 512 * 10 + 10
        # kuangliu/pytorch-cifar's ResNet18, which Backward Smoothing uses.
        self.assertEqual(expected, 11173962)
        self.assertEqual(self._trainable(models.resnet18()), expected)


def _preact_resnet18_parameters(width, channels=3, classes=10):
    """PreAct-ResNet-18's trainable parameters at base width `width`."""

    def conv(k, c_in, c_out):
        return k * k * c_in * c_out

    expected = conv(3, channels, width)
    c_in = width
    for c_out, stride in zip(
        (width, 2 * width, 4 * width, 8 * width), (1, 2, 2, 2), strict=True
    ):
        for block in range(2):
            s = stride if block == 0 else 1
            expected += 2 * c_in + conv(3, c_in, c_out)
            expected += 2 * c_out + conv(3, c_out, c_out)
            if s != 1 or c_in != c_out:
                expected += conv(1, c_in, c_out)
            c_in = c_out
    return expected + 2 * c_in + c_in * classes + classes


class WidthTest(tf.test.TestCase, parameterized.TestCase):
    @staticmethod
    def _trainable(model):
        return sum(int(np.prod(w.shape)) for w in model.trainable_weights)

    @parameterized.parameters(8, 16, 32, 64)
    def test_parameter_count_follows_the_width(self, width):
        model = models.preact_resnet18(input_shape=(28, 28, 1), width=width)
        self.assertEqual(
            self._trainable(model), _preact_resnet18_parameters(width, 1)
        )
        self.assertEqual(model.get_layer(models.FIRST_LAYER).filters, width)

    def test_halving_the_width_quarters_the_block_convs(self):
        def block_convs(model):
            return sum(
                int(np.prod(layer.kernel.shape))
                for layer in model.layers
                if isinstance(layer, keras.layers.Conv2D)
                and layer.name.startswith("stage")
            )

        wide = models.preact_resnet18(width=32)
        narrow = models.preact_resnet18(width=16)
        self.assertEqual(block_convs(wide), 4 * block_convs(narrow))
        self.assertEqual(_preact_resnet18_parameters(64), 11172170)

    @parameterized.parameters("preact_resnet18", "resnet18")
    def test_default_width_builds_the_same_model(self, builder):
        build = getattr(models, builder)
        default, explicit = build(), build(width=64)
        self.assertEqual(
            [(w.path, tuple(w.shape)) for w in default.weights],
            [(w.path, tuple(w.shape)) for w in explicit.weights],
        )
        self.assertEqual(default.get_config(), explicit.get_config())

    def test_resnet18_width(self):
        model = models.resnet18(width=16)
        self.assertEqual(model.get_layer("stage4_block2_conv2").filters, 128)

    def test_width_from_gin(self):
        gin.parse_config("tfadv.models.preact_resnet18.width = 8")
        model = gin.get_configurable("preact_resnet18")(input_shape=(28, 28, 1))
        self.assertEqual(model.get_layer(models.FIRST_LAYER).filters, 8)
        self.assertEqual(model.get_layer("stage4_block2_conv2").filters, 64)


class ValidationTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters(
        (models.preact_resnet18, dict(num_classes=0), "num_classes"),
        (models.preact_resnet18, dict(input_shape=(0, 8, 3)), "input_shape"),
        (models.preact_resnet18, dict(width=0), "width"),
        (models.resnet18, dict(width=2.5), "width"),
    )
    def test_bad_arguments(self, builder, kwargs, message):
        with self.assertRaisesRegex(ValueError, message):
            builder(**kwargs)


class GinTest(tf.test.TestCase):
    def test_gin_binding(self):
        self.assertIsNotNone(gin.get_configurable("preact_resnet18"))
