"""tfadv.methods.layer0_gradient: YOPO's inner-step gradient, written out.

Every formulation must give the GradientTape's value to float rounding:
the convolution's input gradient alone (random shapes, strides, paddings,
1 and 3 input channels, odd and even kernels), layer 0's whole inner-step
gradient on the tfadv builders' first layers (normalisation, bias, ReLU,
the clip of x + η), and YOPO's and TRADES-YOPO's update ("auto" against
"tape", also under a 2-replica MirroredStrategy).
"""

import keras
import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from tests import harness
from tfadv import layers
from tfadv import methods
from tfadv import models
from tfadv.methods import layer0_gradient

EPS = 0.1


def tape_conv_vjp(costate, kernel, x, strides, padding):
    with tf.GradientTape() as tape:
        tape.watch(x)
        z = tf.nn.conv2d(x, kernel, strides, padding.upper())
    return tape.gradient(z, x, output_gradients=costate)


def _random(rng, shape, low=None):
    if low is None:
        return tf.constant(rng.normal(size=shape).astype("float32"))
    return tf.constant(rng.uniform(low, 1.0, size=shape).astype("float32"))


def _relative_error(a, b):
    return float(tf.reduce_max(tf.abs(a - b)) / tf.reduce_max(tf.abs(b)))


def _problem(model, seed=0, batch=3):
    """Images with pixels on the box edges, η leaving the box, a costate."""
    rng = np.random.default_rng(seed)
    shape = (batch, *model.input_shape[1:])
    x = rng.uniform(size=shape).astype("float32")
    x[x < 0.15] = 0.0
    x[x > 0.9] = 1.0
    eta = rng.uniform(-EPS, EPS, size=shape).astype("float32")
    return tf.constant(x), tf.constant(eta)


def _yopo(classifier, choice="auto", **kwargs):
    return methods.YOPO(
        classifier,
        m=2,
        train_attack=harness.yopo_attack(EPS, 0.02, 3),
        layer0_gradient=choice,
        **kwargs,
    )


def _strided_classifier(padding):
    keras.utils.set_random_seed(5)
    inputs = keras.Input((9, 9, 3))
    h = keras.layers.Normalization(mean=0.4, variance=0.09)(inputs)
    h = keras.layers.Conv2D(4, 3, strides=2, padding=padding)(h)
    h = keras.layers.ReLU(name="first_layer")(h)
    h = keras.layers.Flatten()(h)
    return keras.Model(inputs, keras.layers.Dense(3)(h))


def _builder(name):
    """tfadv's builders at small sizes, with non-trivial normalisation."""
    keras.utils.set_random_seed(1)
    if name == "small_cnn":
        return models.small_cnn(
            input_shape=(10, 10, 1), filters=(4, 4), mean=0.3, std=0.4
        )
    if name == "mnist_small_cnn":
        return models.mnist_small_cnn(mean=0.3, std=0.4)
    if name == "preact_resnet18":
        return models.preact_resnet18(
            input_shape=(8, 8, 3),
            width=4,
            mean=(0.4, 0.5, 0.45),
            std=(0.2, 0.25, 0.3),
        )
    if name == "conv_relu_activation":
        return harness.conv_classifier(linear_first_layer=False)
    return _strided_classifier(name.removeprefix("strided_"))


class ConvInputVJPTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.product(
        formulation=layer0_gradient.FORMULATIONS,
        padding=["same", "valid"],
        c_in=[1, 3],
        kernel=[3, 2, 5],
    )
    def test_equals_the_tape(self, formulation, padding, c_in, kernel):
        rng = np.random.default_rng(kernel * 10 + c_in)
        height, width = int(rng.integers(6, 12)), int(rng.integers(6, 12))
        x = _random(rng, (2, height, width, c_in), low=0.0)
        kernel_value = _random(rng, (kernel, kernel, c_in, 5))
        z = tf.nn.conv2d(x, kernel_value, 1, padding.upper())
        costate = _random(rng, z.shape)
        got = layer0_gradient.conv_input_vjp(
            costate,
            kernel_value,
            input_shape=[tf.shape(x)[0], height, width, c_in],
            strides=(1, 1),
            padding=padding,
            formulation=formulation,
        )
        want = tape_conv_vjp(costate, kernel_value, x, 1, padding)
        self.assertEqual(got.shape, x.shape)
        self.assertLess(_relative_error(got, want), 1e-5)

    @parameterized.product(padding=["same", "valid"], c_in=[1, 3])
    def test_strided_transpose_equals_the_tape(self, padding, c_in):
        rng = np.random.default_rng(c_in)
        x = _random(rng, (2, 11, 10, c_in), low=0.0)
        kernel_value = _random(rng, (3, 3, c_in, 4))
        z = tf.nn.conv2d(x, kernel_value, 2, padding.upper())
        costate = _random(rng, z.shape)
        got = layer0_gradient.conv_input_vjp(
            costate,
            kernel_value,
            input_shape=[2, 11, 10, c_in],
            strides=(2, 2),
            padding=padding,
            formulation="transpose",
        )
        want = tape_conv_vjp(costate, kernel_value, x, 2, padding)
        self.assertLess(_relative_error(got, want), 1e-5)

    def test_unknown_formulation(self):
        with self.assertRaisesRegex(ValueError, "'im2col'.*shifted"):
            layer0_gradient.conv_input_vjp(
                tf.zeros((1, 4, 4, 2)),
                tf.zeros((3, 3, 1, 2)),
                input_shape=[1, 4, 4, 1],
                strides=(1, 1),
                padding="same",
                formulation="im2col",
            )


class InnerStepGradientTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.product(
        name=[
            "small_cnn",
            "mnist_small_cnn",
            "preact_resnet18",
            "conv_relu_activation",
            "strided_same",
            "strided_valid",
        ],
    )
    def test_every_formulation_equals_the_tape(self, name):
        classifier = _builder(name)
        reference = _yopo(classifier, "tape")
        structure = reference._layer0_structure
        self.assertIsNotNone(structure)
        x, eta = _problem(classifier)
        z = reference.layer0(x + eta)
        costate = tf.constant(
            np.random.default_rng(7).normal(size=z.shape).astype("float32")
        )
        want = reference.hamiltonian_gradient(x, eta, costate, wrt_input=True)
        # The clip's mask matters: some x + η are outside [0, 1].
        outside = (x + eta < 0) | (x + eta > 1)
        self.assertTrue(np.any(outside))
        masked = tf.boolean_mask(want, outside)
        self.assertAllEqual(masked, tf.zeros_like(masked))
        choices = ["auto", "transpose"]
        if structure.stride_one:
            choices += ["flipped", "shifted"]
        for choice in choices:
            method = _yopo(classifier, choice)
            got = layer0_gradient.bind(
                structure,
                method.layer0_formulation,
                method.layer0,
                x,
                costate,
                training=True,
            )(eta)
            self.assertLess(_relative_error(got, want), 1e-5, msg=choice)

    @parameterized.parameters(
        ("small_cnn", "shifted", True),
        ("mnist_small_cnn", "shifted", True),
        ("preact_resnet18", "shifted", False),
        ("conv_relu_activation", "shifted", True),
        ("strided_same", "transpose", True),
    )
    def test_auto_reads_the_builders_layer0(self, name, formulation, relu):
        method = _yopo(_builder(name))
        self.assertEqual(method.layer0_formulation, formulation)
        self.assertEqual(method._layer0_structure.relu, relu)
        self.assertEqual(
            _yopo(_builder(name), "tape").layer0_formulation, "tape"
        )

    def test_other_layer0s_keep_the_tape(self):
        weights, _, _ = harness.dense_problem()
        dense = harness.dense_classifier(weights, relu=True)
        quantized = models.prepend_layers(
            _builder("small_cnn"), [layers.SoftQuantization]
        )
        keras.utils.set_random_seed(0)
        inputs = keras.Input((8, 8, 1))
        h = keras.layers.Conv2D(
            2, 3, dilation_rate=2, activation="relu", name="first_layer"
        )(inputs)
        dilated = keras.Model(
            inputs, keras.layers.Dense(3)(keras.layers.Flatten()(h))
        )
        inputs = keras.Input((6, 6, 1))
        h = keras.layers.Normalization(
            axis=1, mean=np.linspace(0.2, 0.5, 6), variance=np.ones(6)
        )(inputs)
        h = keras.layers.Conv2D(2, 3, name="first_layer")(h)
        per_row = keras.Model(
            inputs, keras.layers.Dense(3)(keras.layers.Flatten()(h))
        )
        for classifier, reason in (
            (per_row, "not per channel"),
            (dense, "Dense"),
            (quantized, "SoftQuantization"),
            (dilated, "dilated"),
        ):
            method = _yopo(classifier)
            self.assertEqual(method.layer0_formulation, "tape")
            structure, why = layer0_gradient.analyse(method.layer0)
            self.assertIsNone(structure)
            self.assertIn(reason, why)

    def test_mixed_precision_keeps_the_tape(self):
        policy = keras.config.dtype_policy()
        keras.config.set_dtype_policy("mixed_bfloat16")
        try:
            classifier = _builder("small_cnn")
        finally:
            keras.config.set_dtype_policy(policy)
        structure, why = layer0_gradient.analyse(_yopo(classifier).layer0)
        self.assertIsNone(structure)
        self.assertIn("bfloat16", why)


class UpdateTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters("mnist_small_cnn", "preact_resnet18")
    def test_yopo_gradients_do_not_change(self, name):
        x, _ = _problem(_builder(name), seed=2, batch=4)
        y = tf.constant([0, 1, 2, 1])
        results = {}
        for choice in ("tape", "auto"):
            classifier = _builder(name)
            if name == "mnist_small_cnn":
                # Its zero-initialised logits layer gives a zero costate.
                logits = classifier.get_layer(models.LOGITS_LAYER)
                logits.kernel.assign(
                    np.random.default_rng(4).normal(size=logits.kernel.shape)
                )
            method = harness.FixedStartPGD(
                start_fn=lambda x: harness.fixed_start(x, EPS),
                epsilon=EPS,
                step_size=0.02,
                num_steps=3,
            )
            trainer = methods.YOPO(
                classifier, m=2, train_attack=method, layer0_gradient=choice
            )
            keras.utils.set_random_seed(9)  # the dropout masks
            results[choice] = trainer.compute_gradients(x, y)
        self.assertAllClose(results["auto"].eta, results["tape"].eta, atol=1e-6)
        self.assertGreater(np.abs(results["tape"].eta.numpy()).max(), 0.05)
        for a, b in zip(
            results["auto"].gradients, results["tape"].gradients, strict=True
        ):
            self.assertAllClose(a, b, atol=1e-5, rtol=1e-4)

    def test_mirrored_auto_update_equals_the_tapes(self):
        x, y = harness.tiny_data(8)
        weights = {}
        for choice, strategy in (("tape", "default"), ("auto", "mirrored")):
            _, weights[choice] = harness.fit_one_step(
                lambda c, choice=choice: methods.YOPO(
                    c,
                    m=2,
                    train_attack=harness.FixedStartPGD(
                        start_fn=lambda x: harness.fixed_start(x, EPS),
                        epsilon=EPS,
                        step_size=0.02,
                        num_steps=3,
                    ),
                    weight_decay=5e-4,
                    layer0_gradient=choice,
                ),
                lambda: harness.conv_classifier(False, batch_norm=False),
                x,
                y,
                lr=0.5,
                strategy=harness.strategy(strategy),
            )
        for a, b in zip(weights["tape"], weights["auto"], strict=True):
            self.assertAllClose(a, b, atol=1e-5)

    def test_trades_yopo_perturbation_does_not_change(self):
        x, _ = _problem(_builder("small_cnn"), seed=3, batch=4)
        y = tf.constant([0, 1, 2, 1])
        x_adv = {}
        for choice in ("tape", "auto"):
            trainer = methods.TRADESYOPO(
                _builder("small_cnn"),
                m=2,
                train_attack=harness.trades_yopo_attack(EPS, 0.02, 3),
                layer0_gradient=choice,
                seed=1,
            )
            self.assertEqual(
                trainer.layer0_formulation,
                "tape" if choice == "tape" else "shifted",
            )
            x_adv[choice] = trainer.perturb(x, y)
        self.assertAllClose(x_adv["auto"], x_adv["tape"], atol=1e-6)
        self.assertGreater(np.abs((x_adv["tape"] - x).numpy()).max(), 0.05)


class ArgumentTest(tf.test.TestCase, parameterized.TestCase):
    def test_unknown_choice(self):
        with self.assertRaisesRegex(
            ValueError, "layer0_gradient must be one of.*'fast'"
        ):
            _yopo(_builder("small_cnn"), "fast")

    def test_a_formulation_needs_a_conv_layer0(self):
        weights, _, _ = harness.dense_problem()
        with self.assertRaisesRegex(
            ValueError, "layer0_gradient='shifted'.*not one.*Dense"
        ):
            _yopo(harness.dense_classifier(weights, relu=True), "shifted")

    @parameterized.parameters("flipped", "shifted")
    def test_stride_one_formulations_refuse_a_strided_conv(self, choice):
        with self.assertRaisesRegex(ValueError, r"stride-1.*\(2, 2\)"):
            _yopo(_builder("strided_same"), choice)

    def test_config_round_trip(self):
        method = _yopo(_builder("small_cnn"), "tape")
        self.assertEqual(method.get_config()["layer0_gradient"], "tape")
