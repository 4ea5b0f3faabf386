"""The shared test every training method passes (keras-hub run_task_test).

`run_method_test(self, make_method)` trains a tiny classifier with the method
for one step in eager mode, as a graph, and with XLA, and checks:
- the logs are exactly the method's documented metric names, all finite;
- eager and graph steps give the same logs and weights;
- the classifier's weights changed, and variables the method must not
  train (non-trainable ones other than BatchNorm statistics) did not;
- validation (`evaluate`) reports clean and robust accuracy;
- the classifier saves to `.keras` and reloads with plain Keras.
"""

import os
import tempfile

import keras
import numpy as np
import tensorflow as tf

from tfadv import attacks

INPUT_SHAPE = (8, 8, 3)
NUM_CLASSES = 3
BATCH = 4


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


def tiny_data(num: int = 2 * BATCH, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(num, *INPUT_SHAPE)).astype("float32")
    y = rng.integers(0, NUM_CLASSES, size=num).astype("int32")
    return x, y


def eval_attack() -> attacks.Attack:
    return attacks.ProjectedGradient(
        epsilon=0.1, step_size=0.05, num_steps=3, name="pgd3"
    )


def _fit_once(make_method, mode, x, y, steps):
    classifier = tiny_classifier()
    method = make_method(classifier)
    method.compile(
        optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
        run_eagerly=mode == "eager",
        jit_compile=mode == "xla",
    )
    before = {v.path: v.numpy().copy() for v in method.variables}
    history = method.fit(
        x,
        y,
        batch_size=BATCH,
        epochs=1,
        steps_per_epoch=steps,
        verbose=0,
        shuffle=False,
    )
    logs = {k: v[-1] for k, v in history.history.items()}
    return method, classifier, before, logs


def run_method_test(
    test_case: tf.test.TestCase,
    make_method,
    *,
    steps: int = 1,
    compare_xla: bool = True,
):
    """Runs the shared checks for `make_method(classifier) -> trainer`."""
    x, y = tiny_data(BATCH * steps)
    runs = {}
    for mode in ("eager", "graph", "xla"):
        runs[mode] = _fit_once(make_method, mode, x, y, steps)
    method, classifier, before, logs = runs["graph"]

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

    # The classifier trained; frozen state did not move.
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
    for v in method.non_trainable_variables:
        if any(s in v.path for s in bn_stats) or "seed" in v.path:
            continue
        if getattr(method, "mutable_state_paths", None) and any(
            p in v.path for p in method.mutable_state_paths
        ):
            continue
        if "iteration" in v.path or "optimizer" in v.path:
            continue
        test_case.assertAllEqual(before[v.path], v.numpy(), msg=v.path)

    # Robust validation through test_step.
    method.eval_attack = eval_attack()
    val = method.evaluate(x, y, batch_size=BATCH, verbose=0, return_dict=True)
    test_case.assertCountEqual(val, method.test_metric_names)
    test_case.assertBetween(val["robust_accuracy"], 0.0, 1.0)
    test_case.assertLessEqual(val["robust_accuracy"], val["clean_accuracy"])

    # The bare classifier round-trips through .keras with plain Keras.
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.keras")
        classifier.save(path)
        loaded = keras.saving.load_model(path)
        test_case.assertAllClose(
            loaded(x, training=False), classifier(x, training=False)
        )
    return method, logs
