"""YOPO and TRADES-YOPO: the harness, and tests that pin the algorithm.

The analytic tests follow ALGORITHMS.md §1.3 in NumPy on a two-layer dense
model (first layer `Dense` with or without ReLU): the costate, the inner
signed steps through layer 0 with the clip of P3, the Hamiltonian term of
the first layer, the summed gradients and the one SGD update, under the
default strategy and a 2-replica MirroredStrategy.
"""

import keras
import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from tests import harness
from tfadv import attacks
from tfadv import callbacks
from tfadv import methods
from tfadv.attacks import objectives

EPS = 0.1


def _start(x, eps):
    """A deterministic start in [-eps, eps] that leaves the box at x = 0."""
    return eps * tf.sin(37.0 * x + 1.0)


class FixedStartYOPO(methods.YOPO):
    """YOPO with a deterministic start, identical on every replica."""

    def initial_perturbation(self, x):
        return _start(x, self.epsilon)


class FixedStartTRADESYOPO(methods.TRADESYOPO):
    start_scale = 0.01

    def initial_perturbation(self, x):
        return _start(x, self.start_scale)


def _iterations(method):
    return int(keras.ops.convert_to_numpy(method.optimizer.iterations))


def _short(variable):
    return "/".join(variable.path.split("/")[-2:])


def mirrored():
    devices = [d.name for d in tf.config.list_logical_devices("CPU")][:2]
    assert len(devices) == 2, "conftest must split the CPU in two"
    return tf.distribute.MirroredStrategy(
        devices, cross_device_ops=tf.distribute.ReductionToOneDevice()
    )


def get_strategy(name):
    if name == "mirrored":
        return mirrored()
    return tf.distribute.get_strategy()


def yopo(classifier, **kwargs):
    kwargs = {"epsilon": EPS, "sigma": 0.02, "m": 2, "n": 3, **kwargs}
    return methods.YOPO(classifier, **kwargs)


def trades_yopo(classifier, **kwargs):
    kwargs = {"epsilon": EPS, "sigma": 0.02, "m": 2, "n": 3, **kwargs}
    return methods.TRADESYOPO(classifier, **kwargs)


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
        )

    def test_yopo_hamiltonian_only_one_inner_step(self):
        harness.run_method_test(
            self, lambda c: yopo(c, n=1, first_layer_grad="hamiltonian_only")
        )

    def test_trades_yopo(self):
        harness.run_method_test(
            self, lambda c: trades_yopo(c, weight_decay=5e-4)
        )


# NumPy reference of ALGORITHMS.md §1.3 on x -> f0 = Dense(h) [+ ReLU]
# ("first_layer") -> Dense(c) logits.


def _softmax(z):
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def numpy_yopo_gradients(
    weights, x, y, eta, *, eps, sigma, m, n, relu, first_layer_grad
):
    w0, b0, w1, b1 = [w.astype(np.float64) for w in weights]
    onehot = np.eye(w1.shape[1])[y]
    batch = len(x)
    # Elementwise work on eta stays in float32, as in TF, so that points on
    # the box edge are classified identically.
    x = x.astype(np.float32)
    eta = np.asarray(eta, np.float32)
    eps, sigma = np.float32(eps), np.float32(sigma)

    def f0(u):
        a = u.astype(np.float64) @ w0 + b0
        if relu:
            return np.maximum(a, 0.0), (a > 0).astype(np.float64)
        return a, np.ones_like(a)

    g0, gb0 = np.zeros_like(w0), np.zeros_like(b0)
    g1, gb1 = np.zeros_like(w1), np.zeros_like(b1)
    for _ in range(m):
        u = x + eta  # not clipped (P3)
        z, act = f0(u)
        p = _softmax(z @ w1 + b1)
        loss = -np.log(p[np.arange(batch), y]).mean()
        dlogits = (p - onehot) / batch
        g1 += z.T @ dlogits
        gb1 += dlogits.sum(0)
        costate = dlogits @ w1.T  # dL/dz
        if first_layer_grad == "reference":
            g0 += u.astype(np.float64).T @ (costate * act)
            gb0 += (costate * act).sum(0)
        for _ in range(n):
            u = x + eta
            inside = ((u >= 0) & (u <= 1)).astype(np.float64)
            _, act_s = f0(np.clip(u, 0, 1))
            grad = ((costate * act_s) @ w0.T) * inside
            eta = eta + sigma * np.sign(grad).astype(np.float32)
            eta = np.clip(eta, -eps, eps)
            eta = np.clip(x + eta, 0, 1) - x
        u = np.clip(x + eta, 0, 1)
        _, act_h = f0(u)
        g0 += u.astype(np.float64).T @ (costate * act_h)  # Hamiltonian
        gb0 += (costate * act_h).sum(0)
    return [g0, gb0, g1, gb1], eta, loss


def dense_problem(seed=0, n=8, d=5, h=4, c=3):
    rng = np.random.default_rng(seed)
    weights = [
        rng.normal(size=(d, h)).astype("float32"),
        rng.normal(size=(h,)).astype("float32") * 0.3,
        rng.normal(size=(h, c)).astype("float32"),
        rng.normal(size=(c,)).astype("float32"),
    ]
    x = rng.uniform(size=(n, d)).astype("float32")
    x[:, 0] = 0.0  # on the box edge: the start leaves the box here (P3)
    x[:, 1] = 0.98
    y = rng.integers(0, c, size=n).astype("int32")
    return weights, x, y


def dense_classifier(weights, relu, first_layer_name="first_layer"):
    d, h = weights[0].shape
    model = keras.Sequential(
        [
            keras.Input((d,)),
            keras.layers.Dense(
                h, activation="relu" if relu else None, name=first_layer_name
            ),
            keras.layers.Dense(weights[2].shape[1], name="logits"),
        ]
    )
    model.set_weights(weights)
    return model


def fit_one_step(method_fn, classifier_fn, x, y, *, lr, strategy):
    with strategy.scope():
        classifier = classifier_fn()
        method = method_fn(classifier)
        method.compile(optimizer=keras.optimizers.SGD(lr))
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(len(x))
    method.fit(ds, epochs=1, verbose=0)
    return method, [v.numpy() for v in classifier.weights]


class AnalyticTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.product(
        relu=[False, True], first_layer_grad=["reference", "hamiltonian_only"]
    )
    def test_accumulated_gradients_match_numpy(self, relu, first_layer_grad):
        weights, x, y = dense_problem()
        kw = {"eps": EPS, "sigma": 0.03, "m": 2, "n": 3}
        method = FixedStartYOPO(
            dense_classifier(weights, relu),
            epsilon=kw["eps"],
            sigma=kw["sigma"],
            m=kw["m"],
            n=kw["n"],
            first_layer_grad=first_layer_grad,
        )
        got = method.compute_gradients(x, y)
        eta0 = _start(tf.constant(x), EPS).numpy()
        # The start leaves the image box (P3), which the test relies on.
        self.assertLess((x + eta0).min(), 0.0)
        want, want_eta, want_loss = numpy_yopo_gradients(
            weights,
            x,
            y,
            eta0,
            relu=relu,
            first_layer_grad=first_layer_grad,
            **kw,
        )
        self.assertEqual(
            [_short(v) for v in got.variables],
            [
                "first_layer/kernel",
                "first_layer/bias",
                "logits/kernel",
                "logits/bias",
            ],
        )
        for g, w, name in zip(
            got.gradients, want, ["W0", "b0", "W1", "b1"], strict=True
        ):
            self.assertAllClose(g, w, atol=1e-5, msg=name)
        self.assertAllClose(got.eta, want_eta, atol=1e-6)
        self.assertAllClose(got.loss, want_loss, atol=1e-5)
        # The inner loop moved eta, and x + eta is in the threat set.
        self.assertGreater(np.abs(want_eta - eta0).max(), 0.05)
        self.assertAllInRange(got.eta, -EPS - 1e-6, EPS + 1e-6)
        self.assertAllInRange(x + got.eta.numpy(), -1e-6, 1 + 1e-6)

    @parameterized.parameters(False, True)
    def test_only_the_first_layer_gets_the_hamiltonian_term(self, relu):
        weights, x, y = dense_problem(seed=1)
        grads = {}
        for variant in ("reference", "hamiltonian_only"):
            method = FixedStartYOPO(
                dense_classifier(weights, relu),
                epsilon=EPS,
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
        # Layer 0: "reference" adds the full-backprop term on top of the
        # Hamiltonian one (ALGORITHMS.md §1.6 P1), here computed by hand.
        eta0 = _start(tf.constant(x), EPS).numpy()
        backprop, _, _ = numpy_yopo_gradients(
            weights,
            x,
            y,
            eta0,
            eps=EPS,
            sigma=0.03,
            m=2,
            n=2,
            relu=relu,
            first_layer_grad="reference",
        )
        ham_only, _, _ = numpy_yopo_gradients(
            weights,
            x,
            y,
            eta0,
            eps=EPS,
            sigma=0.03,
            m=2,
            n=2,
            relu=relu,
            first_layer_grad="hamiltonian_only",
        )
        for i in range(2):
            diff = grads["reference"][i] - grads["hamiltonian_only"][i]
            self.assertAllClose(diff, backprop[i] - ham_only[i], atol=1e-5)
            self.assertGreater(np.abs(diff).max(), 1e-3)

    @parameterized.parameters(
        ("default", "reference", None),
        ("default", "hamiltonian_only", 0.1),
        ("mirrored", "reference", 0.1),
        ("mirrored", "hamiltonian_only", None),
    )
    def test_one_sgd_step_matches_numpy(
        self, strategy, first_layer_grad, first_layer_lr
    ):
        weights, x, y = dense_problem(seed=2)
        lr, wd = 0.5, 0.01
        method, got = fit_one_step(
            lambda c: FixedStartYOPO(
                c,
                epsilon=EPS,
                sigma=0.03,
                m=2,
                n=3,
                first_layer_grad=first_layer_grad,
                weight_decay=wd,
                first_layer_lr=first_layer_lr,
            ),
            lambda: dense_classifier(weights, relu=True),
            x,
            y,
            lr=lr,
            strategy=get_strategy(strategy),
        )
        eta0 = _start(tf.constant(x), EPS).numpy()
        grads, _, _ = numpy_yopo_gradients(
            weights,
            x,
            y,
            eta0,
            eps=EPS,
            sigma=0.03,
            m=2,
            n=3,
            relu=True,
            first_layer_grad=first_layer_grad,
        )
        lr0 = lr if first_layer_lr is None else first_layer_lr
        rates = [lr0, lr0, lr, lr]
        for i, name in enumerate(["W0", "b0", "W1", "b1"]):
            want = weights[i] - rates[i] * (grads[i] + wd * weights[i])
            self.assertAllClose(got[i], want, atol=1e-5, msg=name)
            self.assertGreater(np.abs(want - weights[i]).max(), 1e-3)
        self.assertEqual(_iterations(method), 1)


class InnerLoopTest(tf.test.TestCase, parameterized.TestCase):
    def _conv_classifier(self, linear_first_layer, batch_norm=True):
        keras.utils.set_random_seed(3)
        inputs = keras.Input(harness.INPUT_SHAPE)
        h = keras.layers.Conv2D(
            4,
            3,
            padding="same",
            activation=None if linear_first_layer else "relu",
            name="first_layer",
        )(inputs)
        h = keras.layers.ReLU()(h)
        h = keras.layers.Conv2D(6, 3, strides=2)(h)
        if batch_norm:
            h = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5)(h)
        h = keras.layers.ReLU()(h)
        h = keras.layers.Flatten()(h)
        outputs = keras.layers.Dense(harness.NUM_CLASSES)(h)
        return keras.Model(inputs, outputs)

    def _run(self, linear_first_layer, n, sigma):
        x, y = harness.tiny_data()
        method = yopo(
            self._conv_classifier(linear_first_layer),
            m=3,
            n=n,
            sigma=sigma,
            random_start=False,
        )
        return method.compute_gradients(x, y)

    def test_linear_first_layer_n_steps_equal_one_step_of_n_sigma(self):
        # ALGORITHMS.md §1.6 P5: with an affine layer 0, J_f0ᵀ G does not
        # depend on eta, so n steps of sigma are one step of n·sigma.
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
        classifier = self._conv_classifier(linear_first_layer=False)
        method = yopo(classifier, m=3, n=1, sigma=0.02, random_start=False)
        eta = method.compute_gradients(x, y).eta
        pgd = attacks.ProjectedGradient(
            epsilon=EPS, step_size=0.02, num_steps=3, random_start=False
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

    @parameterized.parameters(FixedStartYOPO, FixedStartTRADESYOPO)
    def test_mirrored_update_equals_one_device_on_a_conv_net(self, cls):
        # No BatchNorm: its batch statistics are per replica.
        x, y = harness.tiny_data(8)
        weights = {}
        for name in ("default", "mirrored"):
            _, weights[name] = fit_one_step(
                lambda c: cls(
                    c, epsilon=EPS, sigma=0.02, m=2, n=3, weight_decay=5e-4
                ),
                lambda: self._conv_classifier(False, batch_norm=False),
                x,
                y,
                lr=0.5,
                strategy=get_strategy(name),
            )
        for a, b in zip(weights["default"], weights["mirrored"], strict=True):
            self.assertAllClose(a, b, atol=1e-5)


class TRADESYOPOTest(tf.test.TestCase, parameterized.TestCase):
    def test_one_inner_step_is_kl_pgd_on_the_whole_network(self):
        x, y = harness.tiny_data()
        classifier = harness.tiny_classifier()

        class InBoxStart(methods.TRADESYOPO):
            # Far enough from x that the KL gradient is not tiny, and inside
            # the image box, where clip(x + eta) is x + eta (see P3).
            def initial_perturbation(self, x):
                return tf.clip_by_value(x + _start(x, EPS), 0.0, 1.0) - x

        method = InBoxStart(classifier, epsilon=EPS, sigma=0.02, m=3, n=1)
        x_adv = method.perturb(tf.constant(x), tf.constant(y))
        # By hand: eval mode, the summed KL's input gradient of the whole
        # network, from the same start.
        q = tf.nn.softmax(classifier(x, training=False))
        eta = method.initial_perturbation(tf.constant(x))
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
        weights, x, y = dense_problem(seed=4)
        lr, beta = 0.5, 1.5

        def make(c):
            return FixedStartTRADESYOPO(
                c, epsilon=EPS, sigma=0.03, m=2, n=2, beta=beta
            )

        probe = make(dense_classifier(weights, relu=True))
        x_adv = probe.perturb(tf.constant(x), tf.constant(y)).numpy()
        self.assertGreater(np.abs(x_adv - x).max(), 0.05)
        _, got = fit_one_step(
            make,
            lambda: dense_classifier(weights, relu=True),
            x,
            y,
            lr=lr,
            strategy=get_strategy(strategy),
        )
        # By hand: CE(z_c) + beta·mean KL(p_c ‖ p_a), through both branches.
        w0, b0, w1, b1 = [w.astype(np.float64) for w in weights]
        a_c, a_a = x @ w0 + b0, x_adv @ w0 + b0
        h_c, h_a = np.maximum(a_c, 0), np.maximum(a_a, 0)
        p, q = _softmax(h_c @ w1 + b1), _softmax(h_a @ w1 + b1)
        log_ratio = np.log(p) - np.log(q)
        kl = (p * log_ratio).sum(-1, keepdims=True)
        onehot = np.eye(w1.shape[1])[y]
        dz_c = (p - onehot + beta * p * (log_ratio - kl)) / len(x)
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


class OptimizerTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters(
        (methods.YOPO, {}, "mirrored"),
        (methods.YOPO, {"first_layer_lr": 0.01}, "default"),
        (methods.TRADESYOPO, {}, "mirrored"),
    )
    def test_one_update_per_minibatch(self, cls, kwargs, strategy):
        # Random starts on, and under MirroredStrategy for two of them.
        x, y = harness.tiny_data(3 * harness.BATCH)
        with get_strategy(strategy).scope():
            method = cls(
                harness.tiny_classifier(),
                epsilon=EPS,
                sigma=0.02,
                m=3,
                n=2,
                **kwargs,
            )
            method.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
        method.fit(x, y, batch_size=harness.BATCH, epochs=1, verbose=0)
        self.assertEqual(_iterations(method), 3)

    def test_first_layer_schedule_from_epoch_hooks(self):
        x, y = harness.tiny_data()
        method = yopo(
            harness.tiny_classifier(),
            first_layer_lr=0.2,
            first_layer_lr_boundaries=[1, 2],
            first_layer_lr_factor=0.5,
        )
        method.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
        history = method.fit(
            x,
            y,
            batch_size=harness.BATCH,
            epochs=3,
            verbose=0,
            callbacks=[callbacks.MethodEpochHooks()],
        )
        self.assertAllClose(
            history.history["first_layer_learning_rate"], [0.2, 0.1, 0.05]
        )
        # The variable is part of the method's checkpointed state.
        self.assertIn(
            method.first_layer_learning_rate.path,
            [v.path for v in method.variables],
        )

    def test_first_layer_lr_under_mirrored_strategy(self):
        with mirrored().scope():
            method = yopo(
                harness.tiny_classifier(),
                first_layer_lr=0.2,
                first_layer_lr_boundaries=[3],
            )
        method.on_epoch_begin(3)
        self.assertAllClose(
            method.on_epoch_end(3)["first_layer_learning_rate"], 0.02
        )

    def test_first_layer_lr_needs_plain_sgd(self):
        method = yopo(harness.tiny_classifier(), first_layer_lr=0.01)
        with self.assertRaisesRegex(ValueError, "Adam"):
            method.compile(optimizer=keras.optimizers.Adam())
        with self.assertRaisesRegex(ValueError, "clipnorm"):
            method.compile(optimizer=keras.optimizers.SGD(clipnorm=1.0))
        with self.assertRaisesRegex(ValueError, "weight_decay"):
            method.compile(optimizer=keras.optimizers.SGD(weight_decay=1e-4))
        # Without a first-layer rate, any optimizer will do.
        yopo(harness.tiny_classifier()).compile(optimizer="adam")


class BadInputTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters(methods.YOPO, methods.TRADESYOPO)
    def test_model_without_the_split_layer(self, cls):
        model = keras.Sequential(
            [keras.Input((5,)), keras.layers.Dense(4), keras.layers.Dense(3)]
        )
        with self.assertRaisesRegex(
            ValueError, r"no layer named 'first_layer'.*first_layer_name="
        ):
            cls(model, epsilon=EPS, sigma=0.01)

    def test_subclassed_model(self):
        class Net(keras.Model):
            def __init__(self):
                super().__init__()
                self.dense = keras.layers.Dense(3)

            def call(self, x):
                return self.dense(x)

        with self.assertRaisesRegex(ValueError, "first_layer_name"):
            methods.YOPO(Net(), epsilon=EPS, sigma=0.01)

    def test_a_named_layer_of_a_users_model(self):
        weights, x, y = dense_problem()
        model = dense_classifier(weights, relu=True, first_layer_name="stem")
        with self.assertRaisesRegex(ValueError, "first_layer_name"):
            methods.YOPO(model, epsilon=EPS, sigma=0.01)
        method = methods.YOPO(
            model, epsilon=EPS, sigma=0.01, first_layer_name="stem"
        )
        self.assertEqual(
            [_short(v) for v in method.layer0.trainable_variables],
            ["stem/kernel", "stem/bias"],
        )

    @parameterized.parameters(
        ({"m": 0}, "m"),
        ({"m": 2.0}, "m"),
        ({"m": True}, "m"),
        ({"n": 0}, "n"),
        ({"n": -3}, "n"),
        ({"sigma": 0.0}, "sigma"),
        ({"sigma": -0.01}, "sigma"),
        ({"sigma": "big"}, "sigma"),
        ({"sigma": float("nan")}, "sigma"),
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
        kwargs = {"epsilon": EPS, "sigma": 0.01, **kwargs}
        with self.assertRaisesRegex(ValueError, message):
            methods.YOPO(harness.tiny_classifier(), **kwargs)

    @parameterized.parameters(
        ({"m": 0}, "m"),
        ({"n": 1.5}, "n"),
        ({"sigma": 0}, "sigma"),
        ({"beta": -1.0}, "beta"),
        ({"init_std": -0.1}, "init_std"),
    )
    def test_bad_trades_yopo_arguments(self, kwargs, message):
        kwargs = {"epsilon": EPS, "sigma": 0.01, **kwargs}
        with self.assertRaisesRegex(ValueError, message):
            methods.TRADESYOPO(harness.tiny_classifier(), **kwargs)
