"""TRADES-YOPO: the harness, the perturbation against KL-PGD, the update
against NumPy (docs/algorithms.md §1.4), and its settings."""

import keras
import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from tests import harness
from tfadv import attacks
from tfadv import methods
from tfadv.attacks import objectives

EPS = 0.1


def trades_yopo(classifier, *, sigma=0.02, n=3, m=2, **kwargs):
    return methods.TRADESYOPO(
        classifier,
        m=m,
        train_attack=harness.trades_yopo_attack(EPS, sigma, n),
        **kwargs,
    )


def fixed_start_trades_yopo(classifier, *, start_fn, sigma, n, m, **kwargs):
    attack = harness.FixedStartPGD(
        start_fn=start_fn,
        epsilon=EPS,
        step_size=sigma,
        num_steps=n,
        objective="kl",
    )
    return methods.TRADESYOPO(classifier, m=m, train_attack=attack, **kwargs)


def small_start(x):
    return harness.fixed_start(x, 0.01)


class TRADESYOPOTest(tf.test.TestCase, parameterized.TestCase):
    def test_harness(self):
        harness.run_method_test(
            self,
            lambda c: trades_yopo(c, weight_decay=5e-4),
            subclassed="refused",
        )

    def test_one_inner_step_is_kl_pgd_on_the_whole_network(self):
        x, y = harness.tiny_data()
        classifier = harness.tiny_classifier()

        # Far enough from x that the KL gradient is not tiny, and inside
        # the image box, where clip(x + eta) is x + eta (see P3).
        def in_box_start(x):
            return (
                tf.clip_by_value(x + harness.fixed_start(x, EPS), 0.0, 1.0) - x
            )

        method = fixed_start_trades_yopo(
            classifier, start_fn=in_box_start, sigma=0.02, m=3, n=1
        )
        x_adv = method.perturb(tf.constant(x), tf.constant(y))
        # By hand: eval mode, the summed KL's input gradient of the whole
        # network, from the same start.
        q = tf.nn.softmax(classifier(x, training=False))
        eta = method.initial_perturbation(tf.constant(x))
        self.assertAllClose(eta, in_box_start(tf.constant(x)))
        for _ in range(3):
            with tf.GradientTape() as tape:
                tape.watch(eta)
                kl = tf.reduce_sum(
                    objectives.kl_to_clean(classifier(x + eta), q)
                )
            eta = eta + 0.02 * tf.sign(tape.gradient(kl, eta))
            eta = tf.clip_by_value(eta, -EPS, EPS)
            eta = tf.clip_by_value(x + eta, 0.0, 1.0) - x
        self.assertAllClose(x_adv, x + eta, atol=1e-6)
        self.assertGreater(np.abs(eta.numpy()).max(), 0.05)

    @parameterized.parameters("default", "mirrored")
    def test_trades_update_matches_numpy(self, strategy):
        weights, x, y = harness.dense_problem(seed=4)
        lr, beta = 0.5, 1.5

        def make(c):
            return fixed_start_trades_yopo(
                c, start_fn=small_start, sigma=0.03, m=2, n=2, beta=beta
            )

        probe = make(harness.dense_classifier(weights, relu=True))
        x_adv = probe.perturb(tf.constant(x), tf.constant(y)).numpy()
        self.assertGreater(np.abs(x_adv - x).max(), 0.05)
        _, got = harness.fit_one_step(
            make,
            lambda: harness.dense_classifier(weights, relu=True),
            x,
            y,
            lr=lr,
            strategy=harness.strategy(strategy),
        )
        # By hand: CE(z_c) + beta·mean KL(p_c ‖ p_a), through both branches.
        w0, b0, w1, b1 = [w.astype(np.float64) for w in weights]
        a_c, a_a = x @ w0 + b0, x_adv @ w0 + b0
        h_c, h_a = np.maximum(a_c, 0), np.maximum(a_a, 0)
        p = harness.softmax(h_c @ w1 + b1)
        q = harness.softmax(h_a @ w1 + b1)
        log_ratio = np.log(p) - np.log(q)
        kl = (p * log_ratio).sum(-1, keepdims=True)
        targets = harness.onehot(y, w1.shape[1])
        dz_c = (p - targets + beta * p * (log_ratio - kl)) / len(x)
        dz_a = beta * (q - p) / len(x)
        dh_c = (dz_c @ w1.T) * (a_c > 0)
        dh_a = (dz_a @ w1.T) * (a_a > 0)
        grads = [
            x.T @ dh_c + x_adv.T @ dh_a,
            dh_c.sum(0) + dh_a.sum(0),
            h_c.T @ dz_c + h_a.T @ dz_a,
            dz_c.sum(0) + dz_a.sum(0),
        ]
        for i, name in enumerate(["W0", "b0", "W1", "b1"]):
            want = weights[i] - lr * grads[i]
            self.assertAllClose(got[i], want, atol=1e-5, msg=name)
            self.assertGreater(np.abs(want - weights[i]).max(), 1e-3)

    def test_mirrored_update_equals_one_device_on_a_conv_net(self):
        # No BatchNorm: its batch statistics are per replica.
        x, y = harness.tiny_data(8)
        weights = {}
        for name in ("default", "mirrored"):
            _, weights[name] = harness.fit_one_step(
                lambda c: fixed_start_trades_yopo(
                    c,
                    start_fn=small_start,
                    sigma=0.02,
                    m=2,
                    n=3,
                    weight_decay=5e-4,
                ),
                lambda: harness.conv_classifier(False, batch_norm=False),
                x,
                y,
                lr=0.5,
                strategy=harness.strategy(name),
            )
        for a, b in zip(weights["default"], weights["mirrored"], strict=True):
            self.assertAllClose(a, b, atol=1e-5)

    def test_one_update_per_minibatch(self):
        # Gaussian starts on, under MirroredStrategy.
        x, y = harness.tiny_data(3 * harness.BATCH)
        with harness.mirrored().scope():
            method = trades_yopo(harness.tiny_classifier(), m=3, n=2)
            method.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
        method.fit(x, y, batch_size=harness.BATCH, epochs=1, verbose=0)
        self.assertEqual(harness.iterations(method), 3)
        self.assertEqual(int(method.minibatches.numpy()), 3)

    def test_gaussian_start_is_not_clipped(self):
        method = methods.TRADESYOPO(
            harness.tiny_classifier(),
            train_attack=harness.trades_yopo_attack(start_stddev=0.05),
        )
        x = np.zeros((16, *harness.INPUT_SHAPE), "float32")
        eta = method.initial_perturbation(tf.constant(x)).numpy()
        self.assertLess(eta.min(), -0.1)  # beyond the box (and ε)
        self.assertNear(eta.std(), 0.05, 0.005)


class SettingsTest(tf.test.TestCase, parameterized.TestCase):
    # The paper's budget, given: tfadv has no default for it.
    @parameterized.parameters((0.031, 0.031), (0.1, 0.1))
    def test_default_attack(self, epsilon, want_epsilon):
        method = methods.TRADESYOPO(harness.tiny_classifier(), epsilon=epsilon)
        attack = method.train_attack
        self.assertNear(method.epsilon, want_epsilon, 1e-9)
        self.assertNear(method.sigma, 0.007 / 0.031 * want_epsilon, 1e-9)
        self.assertEqual(method.n, 4)
        self.assertEqual(method.m, 3)
        self.assertEqual(method.beta, 1.0)
        self.assertEqual(attack.start, "gaussian")
        self.assertNear(attack.start_stddev, 0.001, 1e-12)
        self.assertIs(attack.objective, objectives.kl_to_clean)
        self.assertFalse(method.attack_training_mode)

    def test_model_without_the_split_layer(self):
        model = keras.Sequential(
            [keras.Input((5,)), keras.layers.Dense(4), keras.layers.Dense(3)]
        )
        with self.assertRaisesRegex(
            ValueError, r"no layer named 'first_layer'.*first_layer_name="
        ):
            trades_yopo(model)

    @parameterized.parameters(
        ({"m": 0}, "m"),
        ({"n": 1.5}, "num_steps.*1.5"),
        ({"sigma": 0}, r"sigma \(train_attack.step_size"),
        ({"beta": -1.0}, "beta"),
        ({"start_stddev": -0.1}, "start_stddev.*-0.1"),
    )
    def test_bad_trades_yopo_arguments(self, kwargs, message):
        kwargs = dict(kwargs)
        attack_kwargs = {
            k: kwargs.pop(k)
            for k in ("sigma", "n", "start_stddev")
            if k in kwargs
        }
        with self.assertRaisesRegex(ValueError, message):
            methods.TRADESYOPO(
                harness.tiny_classifier(),
                train_attack=harness.trades_yopo_attack(EPS, **attack_kwargs),
                **kwargs,
            )

    def test_the_attack_must_be_on_the_kl(self):
        with self.assertRaisesRegex(ValueError, "'kl'"):
            methods.TRADESYOPO(
                harness.tiny_classifier(),
                train_attack=harness.yopo_attack(EPS),
            )
        with self.assertRaisesRegex(TypeError, "ProjectedGradient"):
            methods.TRADESYOPO(
                harness.tiny_classifier(),
                train_attack=attacks.APGD(epsilon=EPS, objective="dlr"),
            )
