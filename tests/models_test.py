"""Tests for tfadv.models: builders, normalisation, YOPO split, saving."""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import gin  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl.testing import parameterized  # noqa: E402

from tfadv import models  # noqa: E402

MEAN = (0.1, 0.2, 0.3)
STD = (0.5, 0.25, 2.0)

# name -> (builder kwargs, layers making up f0 in order, has dropout).
# Tiny inputs keep the whole file fast on two CPU cores.
CONFIGS = {
    "small_cnn": (
        models.small_cnn,
        dict(
            input_shape=(8, 8, 3),
            num_classes=5,
            mean=MEAN,
            std=STD,
            filters=(4, 8),
            dense_units=16,
        ),
        ("normalize", "conv1", "first_layer"),
        False,
    ),
    "mnist_small_cnn": (
        models.mnist_small_cnn,
        dict(input_shape=(16, 16, 1), num_classes=10, mean=0.13, std=0.31),
        ("normalize", "conv1", "first_layer"),
        True,
    ),
    "preact_resnet18": (
        models.preact_resnet18,
        dict(input_shape=(8, 8, 3), num_classes=4, mean=MEAN, std=STD),
        ("normalize", "first_layer"),
        False,
    ),
    "wide_resnet": (
        models.wide_resnet,
        dict(
            depth=10,
            width=1,
            input_shape=(8, 8, 3),
            num_classes=3,
            mean=MEAN,
            std=STD,
        ),
        ("normalize", "first_layer"),
        False,
    ),
    "wide_resnet_dropout": (
        models.wide_resnet,
        dict(
            depth=10,
            width=2,
            input_shape=(8, 8, 3),
            num_classes=3,
            dropout=0.3,
        ),
        ("normalize", "first_layer"),
        True,
    ),
}
ALL = [(name,) for name in CONFIGS]


def _build(name):
    builder, kwargs, f0_layers, has_dropout = CONFIGS[name]
    model = builder(**kwargs)
    _randomize(model, seed=1)
    return model, kwargs, f0_layers, has_dropout


def _randomize(model, seed):
    # Non-trivial weights and BN statistics (mnist_small_cnn's logits layer
    # is zero-initialised, which would make output comparisons vacuous).
    rng = np.random.default_rng(seed)
    for w in model.weights:
        if "moving_variance" in w.path:
            value = rng.uniform(0.5, 1.5, w.shape)
        else:
            value = rng.normal(0.0, 0.2, w.shape)
        w.assign(value.astype(w.dtype))


def _images(kwargs, batch=2, seed=0):
    shape = (batch, *kwargs["input_shape"])
    return np.random.default_rng(seed).uniform(size=shape).astype("float32")


def _expand(value, channels, default):
    if value is None:
        return np.full((channels,), default, np.float32)
    return np.broadcast_to(np.asarray(value, np.float32), (channels,))


class BuildersTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters(*ALL)
    def test_logits_shape_and_finite(self, name):
        model, kwargs, _, _ = _build(name)
        x = _images(kwargs, batch=3)
        for training in (False, True):
            logits = model(x, training=training)
            self.assertEqual(tuple(logits.shape), (3, kwargs["num_classes"]))
            self.assertEqual(logits.dtype, tf.float32)
            self.assertTrue(np.all(np.isfinite(logits)))

    @parameterized.parameters(*ALL)
    def test_normalize_layer(self, name):
        model, kwargs, _, _ = _build(name)
        channels = kwargs["input_shape"][-1]
        mean = _expand(kwargs.get("mean"), channels, 0.0)
        std = _expand(kwargs.get("std"), channels, 1.0)
        values = np.linspace(0.0, 1.0, channels + 2)[1:-1].astype("float32")
        x = np.ones((1, *kwargs["input_shape"]), np.float32) * values
        layer = model.get_layer(models.NORMALIZE_LAYER)
        self.assertIsInstance(layer, keras.layers.Normalization)
        # It is the first op after the input.
        self.assertIs(layer.input, model.inputs[0])
        expected = np.ones_like(x) * (values - mean) / std
        self.assertAllClose(layer(x), expected, atol=1e-6)
        self.assertEmpty(layer.weights)

    @parameterized.parameters(*ALL)
    def test_first_layer(self, name):
        model, _, f0_layers, _ = _build(name)
        layer = model.get_layer(models.FIRST_LAYER)
        if len(f0_layers) == 3:
            self.assertIsInstance(layer, keras.layers.ReLU)
            self.assertTrue(model.get_layer("conv1").use_bias)
        else:
            self.assertIsInstance(layer, keras.layers.Conv2D)
            self.assertFalse(layer.use_bias)
            self.assertEqual(layer.kernel_size, (3, 3))

    @parameterized.parameters(*ALL)
    def test_split_composes_to_model(self, name):
        model, kwargs, f0_layers, has_dropout = _build(name)
        x = _images(kwargs, batch=4, seed=3)
        f0, rest = models.split_at_first_layer(model)
        z = f0(x, training=False)
        self.assertAllClose(
            rest(z, training=False), model(x, training=False), atol=1e-5
        )
        # f0 is exactly normalize -> [conv1 ->] first_layer.
        expected_z = x
        for layer_name in f0_layers:
            expected_z = model.get_layer(layer_name)(expected_z)
        self.assertAllClose(z, expected_z, atol=1e-5)
        probe = keras.Model(
            model.inputs[0], model.get_layer(models.FIRST_LAYER).output
        )
        self.assertAllClose(z, probe(x), atol=1e-6)
        self.assertEqual(tuple(rest.inputs[0].shape[1:]), tuple(z.shape[1:]))
        if not has_dropout:
            # Batch statistics make training mode deterministic too.
            self.assertAllClose(
                rest(f0(x, training=True), training=True),
                model(x, training=True),
                atol=1e-4,
            )

    @parameterized.parameters(*ALL)
    def test_split_shares_all_variables_once(self, name):
        model, _, f0_layers, _ = _build(name)
        f0, rest = models.split_at_first_layer(model)
        f0_ids = [id(v) for v in f0.weights]
        rest_ids = [id(v) for v in rest.weights]
        model_ids = [id(v) for v in model.weights]
        self.assertEmpty(set(f0_ids) & set(rest_ids))
        self.assertLen(set(f0_ids + rest_ids), len(f0_ids) + len(rest_ids))
        self.assertCountEqual(f0_ids + rest_ids, model_ids)
        self.assertCountEqual(
            [id(v) for v in f0.trainable_weights]
            + [id(v) for v in rest.trainable_weights],
            [id(v) for v in model.trainable_weights],
        )
        layer0_ids = [
            id(v)
            for layer_name in f0_layers
            for v in model.get_layer(layer_name).weights
        ]
        self.assertCountEqual(f0_ids, layer0_ids)

    @parameterized.parameters(*ALL)
    def test_save_and_load(self, name):
        model, kwargs, _, _ = _build(name)
        x = _images(kwargs, batch=2, seed=5)
        path = os.path.join(self.get_temp_dir(), f"{name}.keras")
        model.save(path)
        loaded = keras.saving.load_model(path)  # safe_mode=True by default
        self.assertAllClose(
            loaded(x, training=False), model(x, training=False), atol=1e-6
        )
        f0, rest = models.split_at_first_layer(loaded)
        self.assertAllClose(rest(f0(x)), model(x), atol=1e-5)

    @parameterized.parameters(*ALL)
    def test_batch_norm_settings(self, name):
        model, _, _, _ = _build(name)
        bns = [
            layer
            for layer in model.layers
            if isinstance(layer, keras.layers.BatchNormalization)
        ]
        if name.startswith(("small_cnn", "mnist")):
            self.assertEmpty(bns)
        else:
            self.assertNotEmpty(bns)
        for bn in bns:
            self.assertAllClose(bn.momentum, 0.9)
            self.assertAllClose(bn.epsilon, 1e-5)

    def test_identity_normalization_by_default(self):
        model = models.small_cnn(
            input_shape=(8, 8, 3), filters=(4, 8), dense_units=16
        )
        x = _images(dict(input_shape=(8, 8, 3)))
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
        x = _images(dict(input_shape=(28, 28, 1)))
        # The reference zero-initialises the logits layer.
        self.assertAllClose(model(x), np.zeros((2, 10)))
        dropout = model.get_layer("dropout")
        self.assertAllClose(dropout.rate, 0.5)
        self.assertEqual(model.get_layer("conv1").padding, "valid")

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


class ParameterCountTest(tf.test.TestCase, parameterized.TestCase):
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
        model, kwargs, _, _ = _build("preact_resnet18")
        x = _images(kwargs)
        models.split_at_first_layer(model)
        f0, rest = models.split_at_first_layer(model)
        self.assertAllClose(rest(f0(x)), model(x), atol=1e-5)
        path = os.path.join(self.get_temp_dir(), "after_split.keras")
        model.save(path)
        loaded = keras.saving.load_model(path)
        self.assertAllClose(loaded(x), model(x), atol=1e-6)


class ValidationTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters(
        (models.wide_resnet, dict(depth=33), "depth=33"),
        (models.wide_resnet, dict(depth=4), "depth=4"),
        (models.wide_resnet, dict(depth=10, width=0), "width=0"),
        (models.wide_resnet, dict(depth=10, dropout=1.0), "dropout=1.0"),
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
        (models.preact_resnet18, dict(num_classes=0), "num_classes"),
        (models.preact_resnet18, dict(input_shape=(0, 8, 3)), "input_shape"),
    )
    def test_bad_arguments(self, builder, kwargs, message):
        with self.assertRaisesRegex(ValueError, message):
            builder(**kwargs)


class IntegrationTest(tf.test.TestCase):
    def setUp(self):
        super().setUp()
        gin.clear_config()

    def tearDown(self):
        gin.clear_config()
        super().tearDown()

    def test_gin_binding(self):
        gin.parse_config("tfadv.models.small_cnn.num_classes = 3")
        builder = gin.get_configurable("tfadv.models.small_cnn")
        model = builder(input_shape=(8, 8, 1), filters=(2, 2), dense_units=4)
        self.assertEqual(model.output.shape[-1], 3)
        self.assertIsNotNone(gin.get_configurable("preact_resnet18"))
        self.assertIsNotNone(gin.get_configurable("wide_resnet"))
        self.assertIsNotNone(gin.get_configurable("mnist_small_cnn"))

    def test_mixed_precision_logits_are_float32(self):
        policy = keras.config.dtype_policy()
        keras.config.set_dtype_policy("mixed_bfloat16")
        try:
            model = models.small_cnn(
                input_shape=(8, 8, 3), filters=(4, 8), dense_units=16
            )
        finally:
            keras.config.set_dtype_policy(policy)
        logits = model(_images(dict(input_shape=(8, 8, 3))))
        self.assertEqual(logits.dtype, tf.float32)
        self.assertEqual(model.get_layer("conv1").compute_dtype, "bfloat16")

    def test_gradient_reaches_input_through_split(self):
        model, kwargs, _, _ = _build("small_cnn")
        f0, rest = models.split_at_first_layer(model)
        x = tf.constant(_images(kwargs))
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
        x = tf.constant(_images(dict(input_shape=(8, 8, 3)), batch=4))

        def step(images):
            return rest(f0(images, training=True), training=True)

        per_replica = strategy.run(step, args=(x,))
        for value in strategy.experimental_local_results(per_replica):
            self.assertAllClose(value, model(x), atol=1e-5)
