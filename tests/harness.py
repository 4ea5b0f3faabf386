"""Shared fixtures and NumPy references of the method and attack tests.

`run_method_test(self, make_method)` is the shared test every training
method passes (keras-hub run_task_test). It trains a tiny classifier with
the method for a few steps in eager mode, as a graph, and with XLA, and
checks:
- the logs are exactly the method's documented metric names, all finite;
- eager and graph steps give the same logs and weights;
- the classifier's weights changed, and variables the method must not
  train (non-trainable ones other than BatchNorm statistics and the
  method's `mutable_state_paths`) did not;
- the method's `minibatches` counter equals the training steps run;
- validation (`evaluate`) reports clean and robust accuracy;
- the classifier saves to `.keras` and reloads with plain Keras;
- the trainer is built before `fit` (the graph run has a
  `BackupAndRestore` callback, which needs it built);
- the whole trainer round-trips through `.keras` (`trainer.save`, then
  `keras.saving.load_model`): the same class, weights, seed state and
  optimizer variables, exactly; one more step of `fit` on both gives the
  same logs and weights;
- the same checks pass with a subclassed `keras.Model` classifier, or, for
  methods that split the classifier (YOPO), it is refused clearly.
A method whose batches carry example ids (`uses_example_ids`, FGSM-PGI)
gets each row's index as its id (`training_inputs`).

The rest of this module: the models and data of the attack tests, the
linear and two-layer problems of the analytic tests, strategies by name,
an attack with a deterministic start, and NumPy references of the
methods (docs/algorithms.md §1.3 and §6).
"""

import os
import tempfile

import keras
import numpy as np
import tensorflow as tf

from tfadv import attacks
from tfadv.attacks import objectives
from tfadv.data import example_ids

INPUT_SHAPE = (8, 8, 3)
NUM_CLASSES = 3
BATCH = 4


# The tiny classifier of the shared method test.


def tiny_classifier(seed: int = 0) -> keras.Model:
    """A tiny conv net with BatchNorm and a declared first layer."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(INPUT_SHAPE)
    h = keras.layers.Conv2D(4, 3, padding="same", name="conv0")(inputs)
    h = keras.layers.ReLU(name="first_layer")(h)
    h = keras.layers.Conv2D(6, 3, strides=2, name="conv1")(h)
    h = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5)(h)
    h = keras.layers.ReLU()(h)
    h = keras.layers.Flatten()(h)
    outputs = keras.layers.Dense(NUM_CLASSES)(h)
    return keras.Model(inputs, outputs, name="tiny")


@keras.saving.register_keras_serializable(package="tfadv_tests")
class SubclassedTiny(keras.Model):
    """The tiny classifier's architecture as a subclassed model."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.conv0 = keras.layers.Conv2D(4, 3, padding="same")
        self.relu0 = keras.layers.ReLU()
        self.conv1 = keras.layers.Conv2D(6, 3, strides=2)
        self.norm = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5)
        self.relu1 = keras.layers.ReLU()
        self.flatten = keras.layers.Flatten()
        self.logits = keras.layers.Dense(NUM_CLASSES)

    def call(self, inputs, training=False):
        h = self.relu0(self.conv0(inputs))
        h = self.norm(self.conv1(h), training=training)
        return self.logits(self.flatten(self.relu1(h)))


def subclassed_classifier(seed: int = 0, *, built: bool = False):
    """A `SubclassedTiny`, unbuilt or built by a call on a batch."""
    keras.utils.set_random_seed(seed)
    model = SubclassedTiny(name="sub")
    if built:
        model(np.zeros((1, *INPUT_SHAPE), "float32"))
    return model


def tiny_data(num: int = 2 * BATCH, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(num, *INPUT_SHAPE)).astype("float32")
    y = rng.integers(0, NUM_CLASSES, size=num).astype("int32")
    return x, y


def training_inputs(method, x):
    """`x`, with its rows' indices as example ids if the method needs them."""
    if not method.uses_example_ids:
        return x
    return example_ids.attach(x, np.arange(len(x)))


def eval_attack() -> attacks.Attack:
    return attacks.ProjectedGradient(
        epsilon=0.1, step_size=0.05, num_steps=3, name="pgd3"
    )


def pgd(num_steps=3, start="uniform", eps=0.1, **kwargs):
    """PGD-k with steps of eps / 2."""
    return attacks.ProjectedGradient(
        epsilon=eps,
        step_size=eps / 2,
        num_steps=num_steps,
        start=start,
        **kwargs,
    )


def _fit_once(make_method, mode, x, y, steps, classifier=None, callbacks=()):
    if classifier is None:
        classifier = tiny_classifier()
    method = make_method(classifier)
    method.compile(
        optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
        run_eagerly=mode == "eager",
        jit_compile=mode == "xla",
    )
    before = {v.path: v.numpy().copy() for v in method.variables}
    # The step's own logs: the epoch's also hold what the method's epoch
    # hooks add (a controller's, GAAT's), which fit runs by itself.
    step_logs = LastBatchLogs()
    method.fit(
        training_inputs(method, x),
        y,
        batch_size=BATCH,
        epochs=1,
        steps_per_epoch=steps,
        verbose=0,
        shuffle=False,
        callbacks=[*callbacks, step_logs],
    )
    # The method's classifier: make_method may have wrapped the one given.
    return method, method.classifier, before, step_logs.logs


class LastBatchLogs(keras.callbacks.Callback):
    """The logs of the last training step."""

    def on_train_batch_end(self, batch, logs=None):
        self.logs = {k: float(v) for k, v in (logs or {}).items()}


def run_method_test(
    test_case: tf.test.TestCase,
    make_method,
    *,
    steps: int = 1,
    compare_xla: bool = True,
    subclassed: str | None = "unbuilt",
):
    """Runs the shared checks for `make_method(classifier) -> trainer`.

    Args:
        test_case: the calling test.
        make_method: `classifier -> trainer`.
        steps: training steps per run.
        compare_xla: check the XLA run's logs too.
        subclassed: the subclassed-classifier check: "unbuilt" (a
            `SubclassedTiny` never called, built by the first step),
            "built" (called once first: for methods that need the input
            shape at construction), "refused" (the method must refuse it
            with a clear error: methods that split the classifier), or
            None (skip: `make_method` rebuilds the classifier).
    """
    x, y = tiny_data(BATCH * steps)
    runs = {}
    for mode in ("eager", "graph", "xla"):
        callbacks = ()
        if mode == "graph":
            # BackupAndRestore refuses a trainer that is not built yet.
            backup = tempfile.mkdtemp(prefix="backup")
            callbacks = (keras.callbacks.BackupAndRestore(backup),)
        runs[mode] = _fit_once(
            make_method, mode, x, y, steps, callbacks=callbacks
        )
    method, classifier, before, logs = runs["graph"]
    _check_fitted(test_case, *runs["graph"], minibatches=steps)

    # Documented metric names, all finite.
    test_case.assertCountEqual(logs, method.train_metric_names)
    for name, value in logs.items():
        test_case.assertTrue(np.isfinite(value), f"{name} = {value}")

    # Eager and graph agree (same seeds, same data).
    eager_method, _, _, eager_logs = runs["eager"]
    for name in logs:
        test_case.assertAllClose(
            eager_logs[name], logs[name], rtol=1e-4, atol=1e-4, msg=name
        )
    for a, b in zip(
        eager_method.classifier.weights, classifier.weights, strict=True
    ):
        test_case.assertAllClose(a, b, rtol=1e-4, atol=1e-4, msg=a.path)
    if compare_xla:
        # XLA reorders float sums; PGD's signs then differ on a few pixels.
        xla_logs = runs["xla"][3]
        test_case.assertCountEqual(xla_logs, logs)
        for name in logs:
            test_case.assertTrue(np.isfinite(xla_logs[name]), name)

    # One minibatch counted per training step, in every mode.
    for mode, run in runs.items():
        test_case.assertEqual(
            int(keras.ops.convert_to_numpy(run[0].minibatches)),
            steps,
            msg=f"minibatches ({mode})",
        )

    _check_validation(test_case, method, x, y)

    # The bare classifier round-trips through .keras with plain Keras.
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.keras")
        classifier.save(path)
        loaded = keras.saving.load_model(path)
        test_case.assertAllClose(
            loaded(x, training=False), classifier(x, training=False)
        )

    check_round_trip(test_case, method, x, y)
    if subclassed is not None:
        _check_subclassed(test_case, make_method, subclassed, x, y, steps)
    return method, logs


def _check_fitted(test_case, method, classifier, before, logs, *, minibatches):
    """The logs are the documented ones; the classifier trained; frozen
    state did not move."""
    test_case.assertCountEqual(logs, method.train_metric_names)
    for name, value in logs.items():
        test_case.assertTrue(np.isfinite(value), f"{name} = {value}")
    test_case.assertEqual(
        int(keras.ops.convert_to_numpy(method.minibatches)),
        minibatches,
        msg="minibatches",
    )
    changed = [
        v.path
        for v in classifier.trainable_variables
        if not np.allclose(before[v.path], v.numpy())
    ]
    test_case.assertNotEmpty(changed, "no classifier weight changed")
    kernels = [v for v in classifier.trainable_variables if "kernel" in v.path]
    for v in kernels:
        test_case.assertNotAllClose(before[v.path], v.numpy(), msg=v.path)
    bn_stats = ("moving_mean", "moving_variance")
    mutable = tuple(method.mutable_state_paths)
    test_case.assertIn("minibatches", mutable)
    for v in method.non_trainable_variables:
        if any(s in v.path for s in bn_stats) or "seed" in v.path:
            continue
        if any(p in v.path for p in mutable):
            continue
        if v.path.split("/")[-1] in method.traced_step_counts:
            continue  # set between epochs by the epoch hooks fit runs
        if "iteration" in v.path or "optimizer" in v.path:
            continue
        test_case.assertAllEqual(before[v.path], v.numpy(), msg=v.path)


def _check_validation(test_case, method, x, y):
    """Robust validation through test_step."""
    method.eval_attack = eval_attack()
    val = method.evaluate(x, y, batch_size=BATCH, verbose=0, return_dict=True)
    test_case.assertCountEqual(val, method.test_metric_names)
    test_case.assertBetween(val["robust_accuracy"], 0.0, 1.0)
    test_case.assertLessEqual(val["robust_accuracy"], val["clean_accuracy"])


def _state(method):
    """Every variable of the trainer and its optimizer, in order."""
    return [v.numpy() for v in [*method.variables, *method.optimizer.variables]]


def check_one_epoch(test_case, method, x, y):
    """A compiled method fits one epoch of (x, y): its documented logs,
    finite, and every trainable weight of the classifier moved."""
    before = [w.numpy() for w in method.classifier.trainable_weights]
    history = method.fit(
        training_inputs(method, x), y, batch_size=BATCH, epochs=1, verbose=0
    ).history
    test_case.assertCountEqual(history, method.train_metric_names)
    for name, values in history.items():
        test_case.assertTrue(np.isfinite(values[-1]), name)
    for want, got in zip(
        before, method.classifier.trainable_weights, strict=True
    ):
        test_case.assertNotAllClose(want, got.numpy())
    return history


def check_round_trip(test_case, method, x, y):
    """`method.save` then `load_model`: the same trainer, the same step.

    `method` is put back in its state before the extra step afterwards
    (from its saved weights), so callers' checks of it still hold.

    Returns:
        The loaded trainer, after its extra step.
    """
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trainer.keras")
        method.save(path)
        loaded = keras.saving.load_model(path)
        backup = os.path.join(tmp, "before.weights.h5")
        method.save_weights(backup)
        saved = _state(method)
        _compare_next_step(test_case, method, loaded, x, y)
        method.load_weights(backup)
    for want, got in zip(saved, _state(method), strict=True):
        test_case.assertAllEqual(want, got)
    return loaded


def _compare_next_step(test_case, method, loaded, x, y):
    """The loaded trainer is the saved one, and steps as it does."""
    test_case.assertIs(type(loaded), type(method))
    test_case.assertEqual(
        loaded.get_config().keys(), method.get_config().keys()
    )
    test_case.assertEqual(
        [v.shape for v in loaded.variables], [v.shape for v in method.variables]
    )
    for want, got in zip(_state(method), _state(loaded), strict=True):
        test_case.assertAllEqual(want, got)
    test_case.assertEqual(repr(loaded.train_attack), repr(method.train_attack))
    test_case.assertEqual(repr(loaded.eval_attack), repr(method.eval_attack))
    # One more step on each: the same random draws, the same update.
    results = []
    for trainer in (method, loaded):
        history = trainer.fit(
            training_inputs(trainer, x[:BATCH]),
            y[:BATCH],
            batch_size=BATCH,
            epochs=1,
            verbose=0,
            shuffle=False,
            callbacks=trainer.callbacks(),
        )
        results.append({k: v[-1] for k, v in history.history.items()})
    test_case.assertEqual(results[0].keys(), results[1].keys())
    for name in results[0]:
        test_case.assertAllClose(
            results[0][name], results[1][name], rtol=1e-6, atol=1e-6, msg=name
        )
    for want, got in zip(_state(method), _state(loaded), strict=True):
        test_case.assertAllClose(want, got, rtol=1e-6, atol=1e-6)


def _check_subclassed(test_case, make_method, kind, x, y, steps):
    """The method with a subclassed classifier (or its clear refusal)."""
    classifier = subclassed_classifier(built=kind != "unbuilt")
    if kind == "refused":
        with test_case.assertRaisesRegex(
            ValueError, "functional or Sequential"
        ):
            make_method(classifier)
        return
    method, classifier, before, logs = _fit_once(
        make_method, "graph", x, y, steps, classifier=classifier
    )
    test_case.assertEqual(method.num_classes, NUM_CLASSES)
    test_case.assertTrue(method.built)
    minibatches = steps
    if kind == "unbuilt":
        # The first step built the classifier: check the next steps.
        before = {v.path: v.numpy().copy() for v in method.variables}
        step_logs = LastBatchLogs()
        method.fit(
            training_inputs(method, x),
            y,
            batch_size=BATCH,
            epochs=1,
            verbose=0,
            shuffle=False,
            callbacks=[step_logs],
        )
        logs = step_logs.logs
        minibatches += steps
    _check_fitted(
        test_case, method, classifier, before, logs, minibatches=minibatches
    )
    _check_validation(test_case, method, x, y)


# Strategies.


def mirrored() -> tf.distribute.MirroredStrategy:
    """A 2-replica MirroredStrategy on the two logical CPUs of conftest."""
    devices = [d.name for d in tf.config.list_logical_devices("CPU")][:2]
    assert len(devices) == 2, "conftest must split the CPU in two"
    return tf.distribute.MirroredStrategy(
        devices, cross_device_ops=tf.distribute.ReductionToOneDevice()
    )


def strategy(name: str) -> tf.distribute.Strategy:
    """ "mirrored" (2 replicas) or "default" (the current strategy)."""
    if name == "mirrored":
        return mirrored()
    return tf.distribute.get_strategy()


def iterations(method) -> int:
    """The optimizer's update count, as a Python int."""
    return int(keras.ops.convert_to_numpy(method.optimizer.iterations))


def short_name(variable) -> str:
    """`layer/variable` of a variable's path."""
    return "/".join(variable.path.split("/")[-2:])


# An attack whose start is deterministic and the same on every replica.


def fixed_start(x, scale):
    """A deterministic perturbation in [-scale, scale].

    It leaves the image box where x = 0 (for scale > 0).
    """
    return scale * tf.sin(37.0 * x + 1.0)


class FixedStartPGD(attacks.ProjectedGradient):
    """ProjectedGradient starting at `x + start_fn(x)`, not projected.

    Like the Gaussian start, the first gradient is taken at the unprojected
    point (YOPO reads it through `initial_point(..., into_box=False)`,
    PGD's loop projects at its first step). The seed is not used, so every
    replica and every call starts at the same point.
    """

    def __init__(self, *, start_fn, **kwargs):
        super().__init__(**kwargs)
        self.start_fn = start_fn

    def get_config(self):
        return {**super().get_config(), "start_fn": self.start_fn}

    def initial_point(self, x, seed, *, into_box=True):
        del seed, into_box
        return x + tf.cast(self.start_fn(x), x.dtype)


def yopo_attack(eps=0.1, sigma=0.02, n=3, **kwargs):
    """YOPO's perturbation settings as a training attack: ε, σ and n."""
    return attacks.ProjectedGradient(
        epsilon=eps, step_size=sigma, num_steps=n, **kwargs
    )


def trades_yopo_attack(eps=0.1, sigma=0.02, n=3, **kwargs):
    """TRADES-YOPO's: the KL objective and a Gaussian start."""
    kwargs = {"start": "gaussian", "start_stddev": 0.001, **kwargs}
    return yopo_attack(eps, sigma, n, objective="kl", **kwargs)


def conv_classifier(linear_first_layer, batch_norm=True) -> keras.Model:
    """A conv net on INPUT_SHAPE whose layer 0 is affine or has a ReLU."""
    keras.utils.set_random_seed(3)
    inputs = keras.Input(INPUT_SHAPE)
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
    outputs = keras.layers.Dense(NUM_CLASSES)(h)
    return keras.Model(inputs, outputs)


# The models and data of the attack tests.


def linear_model(in_dim=2, num_classes=3, seed=0) -> keras.Model:
    rng = np.random.default_rng(seed)
    model = keras.Sequential(
        [keras.Input((in_dim,)), keras.layers.Dense(num_classes)]
    )
    model.layers[0].set_weights(
        [
            rng.normal(size=(in_dim, num_classes)).astype("float32"),
            rng.normal(size=(num_classes,)).astype("float32"),
        ]
    )
    return model


def bn_model() -> keras.Model:
    return keras.Sequential(
        [
            keras.Input((6, 6, 1)),
            keras.layers.Conv2D(4, 3),
            keras.layers.BatchNormalization(momentum=0.9),
            keras.layers.ReLU(),
            keras.layers.Flatten(),
            keras.layers.Dropout(0.5),
            keras.layers.Dense(3),
        ]
    )


def attack_data(shape=(16, 6, 6, 1), num_classes=3, seed=1):
    """Images with some pixels on the box edges, where clipping matters."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=shape).astype("float32")
    x[..., 0] = 0.0
    x.flat[1::7] = 1.0
    y = rng.integers(0, num_classes, size=shape[0]).astype("int32")
    return tf.constant(x), tf.constant(y)


def mean_ce(model, x, y) -> float:
    return float(tf.reduce_mean(objectives.cross_entropy(model(x), y)))


# The linear problem of the analytic one-step tests: z = x·W + b.


def linear_problem(seed=0, n=8, d=5, c=3):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(d, c)).astype("float32")
    b = rng.normal(size=(c,)).astype("float32")
    x = rng.uniform(size=(n, d)).astype("float32")
    x[:, 0] = 0.0  # on the box edge: the [0, 1] clip is exercised
    x[:, 1] = 0.98
    y = rng.integers(0, c, size=n).astype("int32")
    return w, b, x, y


def fit_linear(
    method_fn, w, b, x, y, *, lr, strategy, batch=None, callbacks=None
):
    """One epoch of SGD on a linear classifier; returns (method, [W, b]).

    `lr` is a float or a learning-rate schedule.
    """
    with strategy.scope():
        classifier = keras.Sequential(
            [keras.Input((w.shape[0],)), keras.layers.Dense(w.shape[1])]
        )
        classifier.layers[0].set_weights([w, b])
        method = method_fn(classifier)
        method.compile(optimizer=keras.optimizers.SGD(lr))
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch or len(x))
    method.fit(ds, epochs=1, verbose=0, shuffle=False, callbacks=callbacks)
    return method, [v.numpy() for v in classifier.layers[0].weights]


# The two-layer problem of the YOPO tests: x -> f0 = Dense(h) [+ ReLU]
# ("first_layer") -> Dense(c) logits.


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
    """One SGD step on one batch; returns (method, classifier weights)."""
    with strategy.scope():
        classifier = classifier_fn()
        method = method_fn(classifier)
        method.compile(optimizer=keras.optimizers.SGD(lr))
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(len(x))
    method.fit(ds, epochs=1, verbose=0)
    return method, [v.numpy() for v in classifier.weights]


# NumPy references.


def softmax(z):
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def ce(z, y):
    """Per-example cross-entropy of integer labels `y` under logits `z`."""
    return -log_softmax(z)[np.arange(len(y)), y]


def kl(z_clean, z_adv):
    """Per-example KL(softmax(z_clean) ‖ softmax(z_adv))."""
    log_p, log_q = log_softmax(z_clean), log_softmax(z_adv)
    return (np.exp(log_p) * (log_p - log_q)).sum(-1)


def project(x, x_adv, eps):
    """The L-inf projection: the ε-box first, then the image box."""
    return np.clip(np.clip(x_adv - x, -eps, eps) + x, 0.0, 1.0)


def onehot(y, c):
    return np.eye(c)[y]


def numeric_grad(loss, w, b, h=1e-6):
    """Central differences of loss(w, b) in float64."""
    w, b = w.astype(np.float64), b.astype(np.float64)
    gw, gb = np.zeros_like(w), np.zeros_like(b)
    for i in np.ndindex(w.shape):
        up, down = w.copy(), w.copy()
        up[i] += h
        down[i] -= h
        gw[i] = (loss(up, b) - loss(down, b)) / (2 * h)
    for i in np.ndindex(b.shape):
        up, down = b.copy(), b.copy()
        up[i] += h
        down[i] -= h
        gb[i] = (loss(w, up) - loss(w, down)) / (2 * h)
    return gw, gb


def numpy_pgd_at_step(w, b, x, y, *, eps, step, k, lr, wd, clean_weight):
    """PGD-k from x (no random start), then one SGD step of PGD-AT."""
    targets = onehot(y, w.shape[1])
    x_adv = x.copy()
    for _ in range(k):
        p = softmax(x_adv @ w + b)
        grad_x = (p - targets) @ w.T  # d(sum CE)/dx
        x_adv = project(x, x_adv + step * np.sign(grad_x), eps)
    n = len(x)

    def ce_grads(inputs):
        p = softmax(inputs @ w + b)
        return inputs.T @ (p - targets) / n, (p - targets).mean(0)

    gw, gb = ce_grads(x_adv)
    gw, gb = (1 - clean_weight) * gw, (1 - clean_weight) * gb
    if clean_weight:
        cw, cb = ce_grads(x)
        gw, gb = gw + clean_weight * cw, gb + clean_weight * cb
    return w - lr * (gw + wd * w), b - lr * (gb + wd * b)


def numpy_trades_step(w, b, x, y, x0, *, eps, step, k, beta, lr, wd):
    """The KL attack from `x0`, then one SGD step of TRADES."""
    p = softmax(x @ w + b)
    x_adv = x0.copy()
    for _ in range(k):
        q = softmax(x_adv @ w + b)
        grad_x = (q - p) @ w.T  # d(sum KL(p || q))/dx'
        x_adv = project(x, x_adv + step * np.sign(grad_x), eps)

    def loss(w, b):
        z, z_adv = x @ w + b, x_adv @ w + b
        return ce(z, y).mean() + beta * kl(z, z_adv).mean()

    gw, gb = numeric_grad(loss, w, b)
    return w - lr * (gw + wd * w), b - lr * (gb + wd * b)


def numpy_mart_step(w, b, x, y, *, eps, step, k, beta, lr, wd):
    """PGD-k on the CE from x, then one SGD step of MART."""
    targets = onehot(y, w.shape[1])
    x_adv = x.copy()
    for _ in range(k):
        p_adv = softmax(x_adv @ w + b)
        grad_x = (p_adv - targets) @ w.T  # d(sum CE)/dx'
        x_adv = project(x, x_adv + step * np.sign(grad_x), eps)

    def loss(w, b):
        z, z_adv = x @ w + b, x_adv @ w + b
        p, p_adv = softmax(z), softmax(z_adv)
        top_wrong = np.where(targets > 0, -np.inf, p_adv).max(-1)
        boost = -np.log(1.0001 - top_wrong + 1e-12)
        true_prob = (p * targets).sum(-1)
        robust = kl(z, z_adv) * (1.0000001 - true_prob)
        return ce(z_adv, y).mean() + boost.mean() + beta * robust.mean()

    gw, gb = numeric_grad(loss, w, b)
    return w - lr * (gw + wd * w), b - lr * (gb + wd * b)


def numpy_free_at(
    w, b, x, y, *, eps, step, replays, lr, wd, batch, replicas, rows
):
    """Free-AT over all minibatches; one perturbation buffer per replica.

    `lr` is a float, or a function of the minibatch index (0-based) that
    gives the rate of all the replays of that minibatch.
    """
    rate = lr if callable(lr) else (lambda _: lr)
    w, b = w.astype(np.float64), b.astype(np.float64)
    buffers = [np.zeros((rows, x.shape[1])) for _ in range(replicas)]
    targets = onehot(y, w.shape[1])
    for minibatch, start in enumerate(range(0, len(x), batch)):
        xb, tb = x[start : start + batch], targets[start : start + batch]
        shard = len(xb) // replicas  # replica r gets rows r*shard, ...
        delta = np.concatenate([buf[:shard] for buf in buffers])
        delta = project(xb, xb + delta, eps) - xb
        for _ in range(replays):
            g = (softmax((xb + delta) @ w + b) - tb) / len(xb)
            grad_w = (xb + delta).T @ g + wd * w
            grad_b = g.sum(0) + wd * b
            grad_delta = g @ w.T
            lr_now = rate(minibatch)
            w, b = w - lr_now * grad_w, b - lr_now * grad_b
            delta = project(xb, xb + delta + step * np.sign(grad_delta), eps)
            delta = delta - xb
        for r, buf in enumerate(buffers):
            buf[:shard] = delta[r * shard : (r + 1) * shard]
    return w, b, buffers


def replica_buffers(variable):
    """The per-replica values of an ON_READ variable (one on one device)."""
    value = variable.value
    if hasattr(value, "values"):
        return [v.numpy() for v in value.values]
    return [value.numpy()]


def numpy_yopo_gradients(
    weights, x, y, eta, *, eps, sigma, m, n, relu, first_layer_grad
):
    """YOPO-m-n's summed gradients (docs/algorithms.md §1.3) on the
    two-layer problem; returns ([gW0, gb0, gW1, gb1], eta, last loss).

    Layer 0's bias always gets the full-backprop term, as in the reference
    code (§1.6 P1); "hamiltonian_only" drops it for the kernel only.
    """
    w0, b0, w1, b1 = [w.astype(np.float64) for w in weights]
    targets = onehot(y, w1.shape[1])
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
        p = softmax(z @ w1 + b1)
        loss = -np.log(p[np.arange(batch), y]).mean()
        dlogits = (p - targets) / batch
        g1 += z.T @ dlogits
        gb1 += dlogits.sum(0)
        costate = dlogits @ w1.T  # dL/dz
        if first_layer_grad == "reference":
            g0 += u.astype(np.float64).T @ (costate * act)
        gb0 += (costate * act).sum(0)  # the bias: full backprop always
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


def event_tensors(log_dir):
    """Tag -> [(step, value)] of every tensor summary under `log_dir`."""
    found = {}
    for name in sorted(os.listdir(log_dir)):
        if "tfevents" not in name:
            continue
        path = os.path.join(log_dir, name)
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                found.setdefault(value.tag, []).append((event.step, value))
    return found
