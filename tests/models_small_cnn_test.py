"""tfadv.models.small_cnn: small_cnn and the YOPO/TRADES mnist_small_cnn."""

import gin
import keras
import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from tests import harness
from tests import models_fixtures as fx
from tfadv import methods
from tfadv import models

BuilderContractTest = fx.builder_contract_test(("small_cnn", "mnist_small_cnn"))


class SmallCNNTest(tf.test.TestCase, parameterized.TestCase):
    def test_identity_normalization_by_default(self):
        model = models.small_cnn(
            input_shape=(8, 8, 3), filters=(4, 8), dense_units=16
        )
        x = fx.images(dict(input_shape=(8, 8, 3)))
        self.assertAllClose(model.get_layer("normalize")(x), x)

    def test_numpy_arguments(self):
        model = models.small_cnn(
            input_shape=np.array([8, 8, 3]),
            num_classes=np.int64(4),
            mean=np.float32(0.5),
            std=np.array([0.5, 0.5, 0.5], np.float32),
            filters=np.array([2, 2]),
            dense_units=np.int32(4),
        )
        self.assertEqual(tuple(model.output.shape), (None, 4))
        x = np.ones((1, 8, 8, 3), np.float32)
        self.assertAllClose(model.get_layer("normalize")(x), x)

    def test_mnist_small_cnn_reference_init(self):
        model = models.mnist_small_cnn()
        x = fx.images(dict(input_shape=(28, 28, 1)))
        # The reference zero-initialises the logits layer.
        self.assertAllClose(model(x), np.zeros((2, 10)))
        dropout = model.get_layer("dropout")
        self.assertAllClose(dropout.rate, 0.5)
        self.assertEqual(model.get_layer("conv1").padding, "valid")

    def test_mnist_small_cnn_raw_pixels_ignores_the_statistics(self):
        x = fx.images(dict(input_shape=(28, 28, 1)))
        raw = models.mnist_small_cnn(mean=0.3, std=0.4, raw_pixels=True)
        self.assertAllClose(raw.get_layer("normalize")(x), x)
        normalized = models.mnist_small_cnn(mean=0.3, std=0.4)
        self.assertAllClose(
            normalized.get_layer("normalize")(x), (x - 0.3) / 0.4, atol=1e-6
        )

    def test_mixed_precision_logits_are_float32(self):
        policy = keras.config.dtype_policy()
        keras.config.set_dtype_policy("mixed_bfloat16")
        try:
            model = models.small_cnn(
                input_shape=(8, 8, 3), filters=(4, 8), dense_units=16
            )
        finally:
            keras.config.set_dtype_policy(policy)
        logits = model(fx.images(dict(input_shape=(8, 8, 3))))
        self.assertEqual(logits.dtype, tf.float32)
        self.assertEqual(model.get_layer("conv1").compute_dtype, "bfloat16")


class ParameterCountTest(tf.test.TestCase):
    @staticmethod
    def _trainable(model):
        return sum(int(np.prod(w.shape)) for w in model.trainable_weights)

    def test_mnist_small_cnn_matches_pytorch(self):
        def conv(c_in, c_out):
            return 3 * 3 * c_in * c_out + c_out

        def fc(n_in, n_out):
            return n_in * n_out + n_out

        # 28 -> 26 -> 24 -> 12 -> 10 -> 8 -> 4: fc1 sees 64 * 4 * 4.
        expected = (
            conv(1, 32)
            + conv(32, 32)
            + conv(32, 64)
            + conv(64, 64)
            + fc(64 * 4 * 4, 200)
            + fc(200, 200)
            + fc(200, 10)
        )
        self.assertEqual(expected, 312202)
        model = models.mnist_small_cnn()
        self.assertEqual(self._trainable(model), expected)
        self.assertEqual(model.count_params(), expected)


class MNISTSmallCNNUnderYOPOTest(tf.test.TestCase):
    def test_layer0_is_conv1_and_relu_written_out(self):
        trainer = methods.YOPO(
            models.mnist_small_cnn(),
            m=1,
            train_attack=harness.yopo_attack(0.1, 0.01, 2),
        )
        structure = trainer._layer0_structure
        self.assertEqual(structure.conv.name, "conv1")
        self.assertEqual(structure.conv.padding, "valid")
        self.assertTrue(structure.relu)
        self.assertIsNotNone(structure.normalization)
        self.assertEqual(trainer.layer0_formulation, "shifted")
        self.assertEqual(tuple(trainer.layer0.output.shape), (None, 26, 26, 32))

    def test_trains_under_yopo(self):
        # The zero logits layer makes every gradient below it zero at the
        # first step (as in the reference); from the second step on, layer
        # 0 and the rest train too.
        keras.utils.set_random_seed(0)
        classifier = models.mnist_small_cnn(mean=0.29, std=0.35)
        trainer = methods.YOPO(
            classifier,
            m=2,
            train_attack=harness.yopo_attack(0.1, 0.01, 2),
            weight_decay=0.0,
        )
        trainer.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
        rng = np.random.default_rng(0)
        x = rng.uniform(size=(8, 28, 28, 1)).astype("float32")
        y = rng.integers(0, 10, size=8).astype("int32")
        before = {v.path: v.numpy() for v in classifier.trainable_variables}
        trainer.fit(x, y, batch_size=8, epochs=1, verbose=0)
        changed = {
            v.path
            for v in classifier.trainable_variables
            if not np.allclose(v.numpy(), before[v.path])
        }
        self.assertEqual(changed, {"logits/kernel", "logits/bias"})
        logs = trainer.fit(x, y, batch_size=8, epochs=1, verbose=0).history
        self.assertTrue(np.isfinite(logs["loss"][-1]))
        for path in ("conv1/kernel", "conv1/bias", "conv4/kernel"):
            variable = [
                v for v in classifier.trainable_variables if v.path == path
            ][0]
            self.assertNotAllClose(variable, before[path], msg=path)


class ValidationTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters(
        (models.small_cnn, dict(num_classes=1), "num_classes=1"),
        (models.small_cnn, dict(input_shape=(28, 28)), "input_shape"),
        (models.small_cnn, dict(input_shape=(2, 2, 1)), "at least 4"),
        (models.small_cnn, dict(filters=(4, 0)), "filters"),
        (models.small_cnn, dict(filters=(4,)), "filters"),
        (models.small_cnn, dict(dense_units=0), "dense_units"),
        (models.small_cnn, dict(dense_units=(16,)), "dense_units"),
        (models.small_cnn, dict(mean=(0.1, 0.2)), "mean"),
        (models.small_cnn, dict(std=0.0), "std"),
        (models.mnist_small_cnn, dict(input_shape=(8, 8, 1)), "16"),
        (models.mnist_small_cnn, dict(dropout=-0.1), "dropout"),
    )
    def test_bad_arguments(self, builder, kwargs, message):
        with self.assertRaisesRegex(ValueError, message):
            builder(**kwargs)


class GinTest(tf.test.TestCase):
    def test_gin_binding(self):
        gin.parse_config("tfadv.models.small_cnn.num_classes = 3")
        builder = gin.get_configurable("tfadv.models.small_cnn")
        model = builder(input_shape=(8, 8, 1), filters=(2, 2), dense_units=4)
        self.assertEqual(model.output.shape[-1], 3)
        self.assertIsNotNone(gin.get_configurable("mnist_small_cnn"))
