"""YOPO: the harness, and tests that pin the algorithm.

The analytic tests follow docs/algorithms.md §1.3 in NumPy on a two-layer
dense model (first layer `Dense` with or without ReLU): the costate, the
inner signed steps through layer 0 with the clip of P3, the Hamiltonian
term of the first layer, the summed gradients and the one SGD update,
under the default strategy and a 2-replica MirroredStrategy.
"""

import keras
import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from tests import harness
from tfadv import attacks
from tfadv import methods

EPS = 0.1
NAMES = ["W0", "b0", "W1", "b1"]


def yopo(classifier, *, sigma=0.02, n=3, m=2, start="uniform", **kwargs):
    return methods.YOPO(
        classifier,
        m=m,
        train_attack=harness.yopo_attack(EPS, sigma, n, start=start),
        **kwargs,
    )


def fixed_start_yopo(classifier, *, sigma, n, m, **kwargs):
    """YOPO from the deterministic start η0 = fixed_start(x, EPS)."""
    attack = harness.FixedStartPGD(
        start_fn=lambda x: harness.fixed_start(x, EPS),
        epsilon=EPS,
        step_size=sigma,
        num_steps=n,
    )
    return methods.YOPO(classifier, m=m, train_attack=attack, **kwargs)


def start_of(x):
    return harness.fixed_start(tf.constant(x), EPS).numpy()


class HarnessTest(tf.test.TestCase, parameterized.TestCase):
    def test_yopo(self):
        harness.run_method_test(
            self,
            lambda c: yopo(
                c,
                weight_decay=5e-4,
                first_layer_lr=0.05,
                first_layer_lr_boundaries=[1],
            ),
            subclassed="refused",
        )

    def test_yopo_hamiltonian_only_one_inner_step(self):
        harness.run_method_test(
            self,
            lambda c: yopo(c, n=1, first_layer_grad="hamiltonian_only"),
            subclassed="refused",
        )


class AnalyticTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.product(
        relu=[False, True], first_layer_grad=["reference", "hamiltonian_only"]
    )
    def test_accumulated_gradients_match_numpy(self, relu, first_layer_grad):
        weights, x, y = harness.dense_problem()
        kw = {"eps": EPS, "sigma": 0.03, "m": 2, "n": 3}
        method = fixed_start_yopo(
            harness.dense_classifier(weights, relu),
            sigma=kw["sigma"],
            m=kw["m"],
            n=kw["n"],
            first_layer_grad=first_layer_grad,
        )
        got = method.compute_gradients(x, y)
        eta0 = start_of(x)
        # The start leaves the image box (P3), which the test relies on.
        self.assertLess((x + eta0).min(), 0.0)
        want, want_eta, want_loss = harness.numpy_yopo_gradients(
            weights,
            x,
            y,
            eta0,
            relu=relu,
            first_layer_grad=first_layer_grad,
            **kw,
        )
        self.assertEqual(
            [harness.short_name(v) for v in got.variables],
            [
                "first_layer/kernel",
                "first_layer/bias",
                "logits/kernel",
                "logits/bias",
            ],
        )
        for g, w, name in zip(got.gradients, want, NAMES, strict=True):
            self.assertAllClose(g, w, atol=1e-5, msg=name)
        self.assertAllClose(got.eta, want_eta, atol=1e-6)
        self.assertAllClose(got.loss, want_loss, atol=1e-5)
        # The inner loop moved eta, and x + eta is in the threat set.
        self.assertGreater(np.abs(want_eta - eta0).max(), 0.05)
        self.assertAllInRange(got.eta, -EPS - 1e-6, EPS + 1e-6)
        self.assertAllInRange(x + got.eta.numpy(), -1e-6, 1 + 1e-6)

    @parameterized.parameters(False, True)
    def test_only_the_first_layer_kernel_drops_the_backprop_term(self, relu):
        weights, x, y = harness.dense_problem(seed=1)
        grads = {}
        for variant in ("reference", "hamiltonian_only"):
            method = fixed_start_yopo(
                harness.dense_classifier(weights, relu),
                sigma=0.03,
                m=2,
                n=2,
                first_layer_grad=variant,
            )
            grads[variant] = method.compute_gradients(x, y).gradients
        # The rest of the network: the same, full-backprop gradients.
        for a, b in zip(
            grads["reference"][2:], grads["hamiltonian_only"][2:], strict=True
        ):
            self.assertAllClose(a, b, atol=1e-6)
        # Layer 0's kernel: "reference" adds the full-backprop term on top
        # of the Hamiltonian one (docs/algorithms.md §1.6 P1), here
        # computed by hand; its bias keeps the full-backprop term under
        # both variants, as the reference code does.
        eta0 = start_of(x)
        refs = {
            variant: harness.numpy_yopo_gradients(
                weights,
                x,
                y,
                eta0,
                eps=EPS,
                sigma=0.03,
                m=2,
                n=2,
                relu=relu,
                first_layer_grad=variant,
            )[0]
            for variant in ("reference", "hamiltonian_only")
        }
        kernel_diff = grads["reference"][0] - grads["hamiltonian_only"][0]
        self.assertAllClose(
            kernel_diff,
            refs["reference"][0] - refs["hamiltonian_only"][0],
            atol=1e-5,
        )
        self.assertGreater(np.abs(kernel_diff).max(), 1e-3)
        bias_diff = grads["reference"][1] - grads["hamiltonian_only"][1]
        self.assertAllClose(bias_diff, np.zeros_like(bias_diff), atol=1e-6)
        self.assertAllClose(
            grads["hamiltonian_only"][1], refs["hamiltonian_only"][1], atol=1e-5
        )

    def test_hamiltonian_only_kernel_gradient_is_the_hamiltonian_sum(self):
        # By hand: Σ_j J_θ0ᵀ G_j at the end of each inner loop, and for the
        # bias also Σ_j ∇_b0 L at its start (one outer iteration, m = 1).
        weights, x, y = harness.dense_problem(seed=3)
        method = fixed_start_yopo(
            harness.dense_classifier(weights, relu=False),
            sigma=0.03,
            m=1,
            n=2,
            first_layer_grad="hamiltonian_only",
        )
        got = method.compute_gradients(x, y)
        w0, b0, w1, b1 = [w.astype(np.float64) for w in weights]
        eta0 = start_of(x)
        p = harness.softmax((x + eta0) @ w0 @ w1 + b0 @ w1 + b1)
        costate = (p - harness.onehot(y, 3)) / len(x) @ w1.T
        u = np.clip(x + got.eta.numpy(), 0.0, 1.0)
        self.assertAllClose(got.gradients[0], u.T @ costate, atol=1e-5)
        self.assertAllClose(got.gradients[1], 2 * costate.sum(0), atol=1e-5)

    @parameterized.parameters(
        ("default", "reference", None),
        ("default", "hamiltonian_only", 0.1),
        ("mirrored", "reference", 0.1),
        ("mirrored", "hamiltonian_only", None),
    )
    def test_one_sgd_step_matches_numpy(
        self, strategy, first_layer_grad, first_layer_lr
    ):
        weights, x, y = harness.dense_problem(seed=2)
        lr, wd = 0.5, 0.01
        method, got = harness.fit_one_step(
            lambda c: fixed_start_yopo(
                c,
                sigma=0.03,
                m=2,
                n=3,
                first_layer_grad=first_layer_grad,
                weight_decay=wd,
                first_layer_lr=first_layer_lr,
            ),
            lambda: harness.dense_classifier(weights, relu=True),
            x,
            y,
            lr=lr,
            strategy=harness.strategy(strategy),
        )
        grads, _, _ = harness.numpy_yopo_gradients(
            weights,
            x,
            y,
            start_of(x),
            eps=EPS,
            sigma=0.03,
            m=2,
            n=3,
            relu=True,
            first_layer_grad=first_layer_grad,
        )
        lr0 = lr if first_layer_lr is None else first_layer_lr
        rates = [lr0, lr0, lr, lr]
        for i, name in enumerate(NAMES):
            want = weights[i] - rates[i] * (grads[i] + wd * weights[i])
            self.assertAllClose(got[i], want, atol=1e-5, msg=name)
            self.assertGreater(np.abs(want - weights[i]).max(), 1e-3)
        self.assertEqual(harness.iterations(method), 1)
        self.assertEqual(int(method.minibatches.numpy()), 1)


class InnerLoopTest(tf.test.TestCase, parameterized.TestCase):
    def _run(self, linear_first_layer, n, sigma):
        x, y = harness.tiny_data()
        method = yopo(
            harness.conv_classifier(linear_first_layer),
            m=3,
            n=n,
            sigma=sigma,
            start="none",
        )
        return method.compute_gradients(x, y)

    def test_linear_first_layer_n_steps_equal_one_step_of_n_sigma(self):
        # docs/algorithms.md §1.6 P5: with an affine layer 0, J_f0ᵀ G does
        # not depend on eta, so n steps of sigma are one step of n·sigma.
        many = self._run(linear_first_layer=True, n=4, sigma=0.01)
        one = self._run(linear_first_layer=True, n=1, sigma=0.04)
        self.assertAllClose(many.eta, one.eta, atol=1e-6)
        for a, b in zip(many.gradients, one.gradients, strict=True):
            self.assertAllClose(a, b, atol=1e-5)
        self.assertGreater(np.abs(many.eta.numpy()).max(), 0.05)

    def test_nonlinear_first_layer_is_not_degenerate(self):
        many = self._run(linear_first_layer=False, n=4, sigma=0.01)
        one = self._run(linear_first_layer=False, n=1, sigma=0.04)
        self.assertNotAllClose(many.eta, one.eta, atol=1e-3)

    def test_one_inner_step_is_a_pgd_step_on_the_whole_network(self):
        # With n = 1 and x + eta in [0, 1], J_f0ᵀ G is the input gradient of
        # the whole network (chain rule through the frozen costate), so
        # YOPO-m-1 moves eta exactly as PGD-m (same step, training mode).
        x, y = harness.tiny_data()
        classifier = harness.conv_classifier(linear_first_layer=False)
        method = yopo(classifier, m=3, n=1, sigma=0.02, start="none")
        eta = method.compute_gradients(x, y).eta
        pgd = attacks.ProjectedGradient(
            epsilon=EPS, step_size=0.02, num_steps=3, start="none"
        )
        x_adv = pgd(classifier, x, y, training=True)
        self.assertAllClose(x + eta, x_adv, atol=1e-6)
        self.assertGreater(np.abs(eta.numpy()).max(), 0.05)

    def test_random_start_is_uniform_and_not_clipped(self):
        method = yopo(harness.tiny_classifier())
        x = np.zeros((64, *harness.INPUT_SHAPE), "float32")
        eta = method.initial_perturbation(tf.constant(x)).numpy()
        self.assertAllInRange(eta, -EPS, EPS)
        # Not projected into the image box at the start (P3).
        self.assertLess(eta.min(), -0.09)
        self.assertGreater(eta.max(), 0.09)
        self.assertNear(eta.mean(), 0.0, 0.01)

    def test_no_start_is_a_zero_perturbation(self):
        method = yopo(harness.tiny_classifier(), start="none")
        x, _ = harness.tiny_data()
        self.assertAllEqual(
            method.initial_perturbation(tf.constant(x)), np.zeros_like(x)
        )

    def test_mirrored_update_equals_one_device_on_a_conv_net(self):
        # No BatchNorm: its batch statistics are per replica.
        x, y = harness.tiny_data(8)
        weights = {}
        for name in ("default", "mirrored"):
            _, weights[name] = harness.fit_one_step(
                lambda c: fixed_start_yopo(
                    c, sigma=0.02, m=2, n=3, weight_decay=5e-4
                ),
                lambda: harness.conv_classifier(False, batch_norm=False),
                x,
                y,
                lr=0.5,
                strategy=harness.strategy(name),
            )
        for a, b in zip(weights["default"], weights["mirrored"], strict=True):
            self.assertAllClose(a, b, atol=1e-5)


class OptimizerTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters(
        ({}, "mirrored"),
        ({"first_layer_lr": 0.01}, "default"),
    )
    def test_one_update_per_minibatch(self, kwargs, strategy):
        # Random starts on, and under MirroredStrategy for one of them.
        x, y = harness.tiny_data(3 * harness.BATCH)
        with harness.strategy(strategy).scope():
            method = yopo(harness.tiny_classifier(), m=3, n=2, **kwargs)
            method.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
        method.fit(x, y, batch_size=harness.BATCH, epochs=1, verbose=0)
        self.assertEqual(harness.iterations(method), 3)
        self.assertEqual(int(method.minibatches.numpy()), 3)


class SettingsTest(tf.test.TestCase, parameterized.TestCase):
    # The paper's budget, given: tfadv has no default for it.
    @parameterized.parameters((8 / 255, 8 / 255), (0.1, 0.1))
    def test_default_attack(self, epsilon, want_epsilon):
        method = methods.YOPO(harness.tiny_classifier(), epsilon=epsilon)
        self.assertNear(method.epsilon, want_epsilon, 1e-9)
        self.assertNear(method.sigma, want_epsilon / 4, 1e-9)
        self.assertEqual(method.n, 3)
        self.assertEqual(method.m, 5)
        self.assertEqual(method.train_attack.start, "uniform")
        self.assertTrue(method.attack_training_mode)
        self.assertEqual(method.first_layer_grad, "reference")
        self.assertIsNone(method.first_layer_learning_rate)

    def test_sigma_and_n_come_from_the_attack(self):
        method = yopo(harness.tiny_classifier(), sigma=0.03, n=4)
        self.assertEqual(method.sigma, 0.03)
        self.assertEqual(method.n, 4)
        with self.assertRaises(AttributeError):
            method.n = 2
        with self.assertRaises(AttributeError):
            method.sigma = 0.1


class BadInputTest(tf.test.TestCase, parameterized.TestCase):
    def test_model_without_the_split_layer(self):
        model = keras.Sequential(
            [keras.Input((5,)), keras.layers.Dense(4), keras.layers.Dense(3)]
        )
        with self.assertRaisesRegex(
            ValueError, r"no layer named 'first_layer'.*first_layer_name="
        ):
            yopo(model)

    def test_subclassed_model(self):
        class Net(keras.Model):
            def __init__(self):
                super().__init__()
                self.dense = keras.layers.Dense(3)

            def call(self, x):
                return self.dense(x)

        with self.assertRaisesRegex(ValueError, "first_layer_name"):
            yopo(Net())

    def test_a_named_layer_of_a_users_model(self):
        weights, _, _ = harness.dense_problem()
        model = harness.dense_classifier(
            weights, relu=True, first_layer_name="stem"
        )
        with self.assertRaisesRegex(ValueError, "first_layer_name"):
            yopo(model)
        method = yopo(model, first_layer_name="stem")
        self.assertEqual(
            [harness.short_name(v) for v in method.layer0.trainable_variables],
            ["stem/kernel", "stem/bias"],
        )

    @parameterized.parameters(
        ({"m": 0}, "m"),
        ({"m": 2.0}, "m"),
        ({"m": True}, "m"),
        # The attack refuses 0 steps itself (YOPO's own guard: below).
        ({"n": 0}, r"num_steps.*>= 1; got 0"),
        ({"n": -3}, "num_steps.*-3"),
        ({"sigma": 0.0}, r"sigma \(train_attack.step_size"),
        ({"sigma": -0.01}, "step_size.*-0.01"),
        ({"sigma": "big"}, "step_size.*'big'"),
        ({"sigma": float("nan")}, "step_size.*nan"),
        ({"epsilon": 0.0}, "epsilon"),
        ({"epsilon": 2.0}, "epsilon"),
        ({"first_layer_grad": "pure"}, "first_layer_grad"),
        ({"first_layer_lr_boundaries": [5]}, "first_layer_lr"),
        (
            {"first_layer_lr": 0.1, "first_layer_lr_boundaries": [0]},
            "first_layer_lr_boundaries",
        ),
        ({"first_layer_lr": -0.1}, "first_layer_lr"),
    )
    def test_bad_yopo_arguments(self, kwargs, message):
        kwargs = dict(kwargs)
        settings = {"epsilon": EPS, "sigma": 0.01, "n": 3}
        attack_kwargs = {k: kwargs.pop(k, v) for k, v in settings.items()}
        with self.assertRaisesRegex(ValueError, message):
            eps = attack_kwargs.pop("epsilon")
            methods.YOPO(
                harness.tiny_classifier(),
                train_attack=harness.yopo_attack(eps, **attack_kwargs),
                **kwargs,
            )

    def test_an_attack_of_no_step_is_refused(self):
        attack = harness.yopo_attack(EPS, 0.01, 1).start_only()
        with self.assertRaisesRegex(ValueError, r"n \(train_attack.num_steps"):
            methods.YOPO(harness.tiny_classifier(), train_attack=attack)

    def test_the_attack_must_suit_yopo(self):
        classifier = harness.tiny_classifier()
        with self.assertRaisesRegex(ValueError, "'cross_entropy'"):
            methods.YOPO(
                classifier, train_attack=harness.yopo_attack(objective="kl")
            )
        with self.assertRaisesRegex(ValueError, "restarts=1"):
            methods.YOPO(
                classifier, train_attack=harness.yopo_attack(restarts=2)
            )
        with self.assertRaisesRegex(ValueError, "use_predicted_labels"):
            methods.YOPO(
                classifier,
                train_attack=harness.yopo_attack(use_predicted_labels=True),
            )
        with self.assertRaisesRegex(TypeError, "ProjectedGradient"):
            methods.YOPO(classifier, train_attack=attacks.APGD(epsilon=EPS))
        with self.assertRaisesRegex(ValueError, "epsilon=0.2.*0.1"):
            methods.YOPO(
                classifier, train_attack=harness.yopo_attack(), epsilon=0.2
            )
