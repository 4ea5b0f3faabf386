"""Shared by the tfadv.models tests: the builders' configs and contract.

Not a test module. `CONFIGS` holds every builder at a tiny size;
`builder_contract_test(names)` makes the test case every builder passes
(the conventions of `tfadv.models.common`: float32 logits, the
"normalize" layer first, "first_layer" as the split point with
`split_at_first_layer` composing back to the model, saving, BatchNorm
settings). Each builder's test file instantiates it for its builders.
"""

import os

import keras
import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from tfadv import models

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
    "resnet18": (
        models.resnet18,
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


def build(name):
    builder, kwargs, f0_layers, has_dropout = CONFIGS[name]
    model = builder(**kwargs)
    randomize(model, seed=1)
    return model, kwargs, f0_layers, has_dropout


def randomize(model, seed):
    # Non-trivial weights and BN statistics (mnist_small_cnn's logits layer
    # is zero-initialised, which would make output comparisons vacuous).
    rng = np.random.default_rng(seed)
    for w in model.weights:
        if "moving_variance" in w.path:
            value = rng.uniform(0.5, 1.5, w.shape)
        else:
            value = rng.normal(0.0, 0.2, w.shape)
        w.assign(value.astype(w.dtype))


def images(kwargs, batch=2, seed=0):
    shape = (batch, *kwargs["input_shape"])
    return np.random.default_rng(seed).uniform(size=shape).astype("float32")


def expand(value, channels, default):
    if value is None:
        return np.full((channels,), default, np.float32)
    return np.broadcast_to(np.asarray(value, np.float32), (channels,))


def builder_contract_test(names):
    """A test case running the shared checks on the builders `names`."""
    params = [(name,) for name in names]

    class BuilderContractTest(tf.test.TestCase, parameterized.TestCase):
        @parameterized.parameters(*params)
        def test_logits_shape_and_finite(self, name):
            model, kwargs, _, _ = build(name)
            x = images(kwargs, batch=3)
            for training in (False, True):
                logits = model(x, training=training)
                self.assertEqual(
                    tuple(logits.shape), (3, kwargs["num_classes"])
                )
                self.assertEqual(logits.dtype, tf.float32)
                self.assertTrue(np.all(np.isfinite(logits)))

        @parameterized.parameters(*params)
        def test_normalize_layer(self, name):
            model, kwargs, _, _ = build(name)
            channels = kwargs["input_shape"][-1]
            mean = expand(kwargs.get("mean"), channels, 0.0)
            std = expand(kwargs.get("std"), channels, 1.0)
            values = np.linspace(0.0, 1.0, channels + 2)[1:-1].astype("float32")
            x = np.ones((1, *kwargs["input_shape"]), np.float32) * values
            layer = model.get_layer(models.NORMALIZE_LAYER)
            self.assertIsInstance(layer, keras.layers.Normalization)
            # It is the first op after the input.
            self.assertIs(layer.input, model.inputs[0])
            expected = np.ones_like(x) * (values - mean) / std
            self.assertAllClose(layer(x), expected, atol=1e-6)
            self.assertEmpty(layer.weights)

        @parameterized.parameters(*params)
        def test_first_layer(self, name):
            model, _, f0_layers, _ = build(name)
            layer = model.get_layer(models.FIRST_LAYER)
            if len(f0_layers) == 3:
                self.assertIsInstance(layer, keras.layers.ReLU)
                self.assertTrue(model.get_layer("conv1").use_bias)
            else:
                self.assertIsInstance(layer, keras.layers.Conv2D)
                self.assertFalse(layer.use_bias)
                self.assertEqual(layer.kernel_size, (3, 3))

        @parameterized.parameters(*params)
        def test_split_composes_to_model(self, name):
            model, kwargs, f0_layers, has_dropout = build(name)
            x = images(kwargs, batch=4, seed=3)
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
            self.assertEqual(
                tuple(rest.inputs[0].shape[1:]), tuple(z.shape[1:])
            )
            if not has_dropout:
                # Batch statistics make training mode deterministic too.
                self.assertAllClose(
                    rest(f0(x, training=True), training=True),
                    model(x, training=True),
                    atol=1e-4,
                )

        @parameterized.parameters(*params)
        def test_split_shares_all_variables_once(self, name):
            model, _, f0_layers, _ = build(name)
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

        @parameterized.parameters(*params)
        def test_save_and_load(self, name):
            model, kwargs, _, _ = build(name)
            x = images(kwargs, batch=2, seed=5)
            path = os.path.join(self.get_temp_dir(), f"{name}.keras")
            model.save(path)
            loaded = keras.saving.load_model(path)  # safe_mode=True by default
            self.assertAllClose(
                loaded(x, training=False), model(x, training=False), atol=1e-6
            )
            f0, rest = models.split_at_first_layer(loaded)
            self.assertAllClose(rest(f0(x)), model(x), atol=1e-5)

        @parameterized.parameters(*params)
        def test_batch_norm_settings(self, name):
            model, _, _, _ = build(name)
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

    return BuilderContractTest
