"""FGSM-PGI: the harness, the analytic steps, the buffers, ids and resets.

The analytic test re-derives the reference's loop (jiaxiaojunQAQ/FGSM-PGI
FGSM_MEP.py) in NumPy on a linear model z = x·W + b, where the input
gradient of each example's smoothed cross-entropy is
`(softmax(z) − ỹ) Wᵀ` (the smoothed targets sum to 1), over two epochs
whose second visits the examples in another order, so that the second
epoch starts from the priors and momenta the first stored, found by id.
"""

import functools
import json
import os
import signal
import tempfile

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import flags
from absl.testing import parameterized

from tests import cli_fixtures
from tests import data_fixtures
from tests import fault_fixtures
from tests import harness
from tests import methods_keras_test
from tfadv import attacks
from tfadv import callbacks
from tfadv import data
from tfadv import experiment
from tfadv import methods
from tfadv import models
from tfadv import seeds
from tfadv.data import example_ids
from tfadv.methods import fgsm_pgi

EPS = 0.1
N = 8


def setUpModule():
    # train.main reads absl flags; the command-line tests set them.
    flags.FLAGS.mark_as_parsed()


# The two epochs' orders of the analytic test: with 2 replicas and
# batches of 4, examples 0 and 1 are on replica 0 in the first epoch and
# on replica 1 in the second (and 2, 3 the other way round).
ORDERS = ([0, 1, 2, 3, 4, 5, 6, 7], [5, 2, 7, 0, 3, 6, 1, 4])


def make_pgi(classifier, **kwargs):
    kwargs = {"epsilon": EPS, "num_examples": N, "seed": 1, **kwargs}
    return methods.FGSMPGI(classifier, **kwargs)


def with_ids(x, ids=None):
    return example_ids.attach(x, np.arange(len(x)) if ids is None else ids)


def numpy_pgi(w, b, x, y, prior, momentum, *, batches, settings, ep=False):
    """The reference's minibatches in order; `batches` are lists of ids.

    `ep=True` stores the trained perturbation as the prior instead (the
    EP variant), which the method must NOT match.

    Returns the weights and the buffers after them (float64).
    """
    eps, alpha, lam, mu, factor, lr, wd = (
        settings[k] for k in ("eps", "alpha", "lam", "mu", "factor", "lr", "wd")
    )
    w, b = w.astype(np.float64), b.astype(np.float64)
    prior, momentum = prior.astype(np.float64), momentum.astype(np.float64)
    c = w.shape[1]
    onehot = harness.onehot(y, c)
    smooth = factor * onehot + (1 - factor) / (c - 1) * (1 - onehot)
    for ids in batches:
        xb, tb = x[ids].astype(np.float64), smooth[ids]
        n = len(ids)
        start = harness.project(xb, xb + prior[ids], eps)  # clipped [X]
        z0 = start @ w + b
        g = (harness.softmax(z0) - tb) @ w.T
        m = g / np.abs(g).sum() + mu * momentum[ids]
        next_prior = harness.project(xb, start + alpha * np.sign(m), eps) - xb
        x_adv = harness.project(xb, start + alpha * np.sign(g), eps)
        z = x_adv @ w + b
        # L = mean_b LS-CE(z) + λ·mean_{b,c} (z − z0)², through z and z0.
        gap = 2 * lam * (z - z0) / (n * c)
        dz = (harness.softmax(z) - tb) / n + gap
        gw = x_adv.T @ dz - start.T @ gap + wd * w
        gb = dz.sum(0) - gap.sum(0) + wd * b
        w, b = w - lr * gw, b - lr * gb
        prior[ids], momentum[ids] = next_prior, m
        if ep:
            prior[ids] = x_adv - xb
    return w, b, prior, momentum


def fit_linear_pgi(w, b, x, y, *, strategy, settings, orders=ORDERS):
    """FGSM-PGI on z = x·W + b over `orders`, as one epoch of batches of 4.

    Returns the trainer, the buffers it started from, and [W, b].
    """
    with strategy.scope():
        classifier = methods_keras_test.linear_classifier(w, b)
        method = methods.FGSMPGI(
            classifier,
            train_attack=attacks.ProjectedGradient(
                epsilon=settings["eps"],
                step_size=settings["alpha"],
                num_steps=1,
                start="none",
            ),
            num_examples=len(x),
            mse_weight=settings["lam"],
            momentum_decay=settings["mu"],
            label_smoothing_factor=settings["factor"],
            weight_decay=settings["wd"],
            seed=3,
        )
        method.compile(optimizer=keras.optimizers.SGD(settings["lr"]))
    order = np.concatenate(orders)
    ds = tf.data.Dataset.from_tensor_slices(
        (with_ids(x[order], order), y[order])
    ).batch(4)
    # fit runs the method's epoch hook first (epoch 0 resets the buffers):
    # the re-derivation starts from what the first step reads.
    start = BuffersAtEpochBegin(method)
    method.fit(ds, epochs=1, verbose=0, shuffle=False, callbacks=[start])
    return method, start.buffers, [v.numpy() for v in classifier.weights]


class BuffersAtEpochBegin(keras.callbacks.Callback):
    def __init__(self, method):
        super().__init__()
        self.method = method

    def on_epoch_begin(self, epoch, logs=None):
        self.buffers = (
            self.method.prior.numpy().copy(),
            self.method.momentum.numpy().copy(),
        )


SETTINGS = {
    "reference": dict(
        eps=0.1, alpha=0.1, lam=10.0, mu=0.3, factor=0.6, lr=0.2, wd=0.0
    ),
    "no_mse_decay": dict(
        eps=0.1, alpha=0.1, lam=0.0, mu=0.3, factor=0.6, lr=0.5, wd=0.01
    ),
    "small_step": dict(
        eps=0.1, alpha=0.04, lam=2.0, mu=0.9, factor=1.0, lr=0.5, wd=0.0
    ),
}


class AnalyticTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.product(
        strategy=["default", "mirrored"], setting=list(SETTINGS)
    )
    def test_two_epochs_on_a_linear_model(self, strategy, setting):
        settings = SETTINGS[setting]
        w, b, x, y = harness.linear_problem(seed=4)
        method, (prior, momentum), got = fit_linear_pgi(
            w,
            b,
            x,
            y,
            strategy=harness.strategy(strategy),
            settings=settings,
        )
        batches = [order[i : i + 4] for order in ORDERS for i in (0, 4)]
        want_w, want_b, want_prior, want_momentum = numpy_pgi(
            w, b, x, y, prior, momentum, batches=batches, settings=settings
        )
        self.assertAllClose(got[0], want_w, atol=1e-5)
        self.assertAllClose(got[1], want_b, atol=1e-5)
        self.assertGreater(np.abs(want_w - w).max(), 1e-2)
        for variable, want in (
            (method.prior, want_prior),
            (method.momentum, want_momentum),
        ):
            copies = harness.replica_buffers(variable)
            self.assertLen(copies, 2 if strategy == "mirrored" else 1)
            for copy in copies:  # every replica holds every row
                self.assertAllClose(copy, want, atol=1e-6)
        # The buffers really moved, and the priors stay in the ε-box.
        self.assertGreater(np.abs(want_momentum).max(), 1e-3)
        self.assertNotAllClose(want_prior, prior)
        self.assertLessEqual(np.abs(want_prior).max(), settings["eps"] + 1e-6)
        if setting != "small_step":
            return
        # The stored prior steps along the momentum, not the gradient: with
        # a large decay their signs differ on some pixels.
        _, _, ep_prior, _ = numpy_pgi(
            w,
            b,
            x,
            y,
            prior,
            momentum,
            batches=batches,
            settings=settings,
            ep=True,
        )
        self.assertGreater(np.abs(ep_prior - want_prior).max(), 1e-2)

    def test_a_weighted_batch_trains_as_its_weighted_part(self):
        w, b, x, y = harness.linear_problem(seed=5)
        weights = np.array([2.0] * 4 + [0.0] * 4, "float32")

        def fit(inputs, labels, sample_weight=None):
            classifier = methods_keras_test.linear_classifier(w, b)
            method = make_pgi(classifier, seed=3)
            method.compile(optimizer=keras.optimizers.SGD(0.5))
            method.fit(
                inputs,
                labels,
                sample_weight=sample_weight,
                batch_size=len(labels),
                epochs=1,
                verbose=0,
                shuffle=False,
            )
            return [v.numpy() for v in classifier.weights]

        got = fit(with_ids(x), y, weights)
        want = fit(with_ids(x[:4]), y[:4])
        for g, h in zip(got, want, strict=True):
            self.assertAllClose(g, h, atol=1e-5)
        self.assertNotAllClose(got[0], fit(with_ids(x), y)[0])

    @parameterized.parameters("default", "mirrored")
    def test_zero_gradient_keeps_the_decayed_momentum(self, strategy):
        # W = 0: g = 0 everywhere; m = μ·M instead of a division by zero.
        settings = SETTINGS["reference"]
        w, b, x, y = harness.linear_problem(seed=4)
        w = np.zeros_like(w)
        method, (prior, momentum), got = fit_linear_pgi(
            w,
            b,
            x,
            y,
            strategy=harness.strategy(strategy),
            settings=dict(settings, lr=0.0),
        )
        self.assertAllEqual(method.momentum.numpy(), np.zeros_like(momentum))
        self.assertTrue(np.all(np.isfinite(method.prior.numpy())))
        for value in got:
            self.assertTrue(np.all(np.isfinite(value)))


class HarnessTest(tf.test.TestCase):
    # About 20 s on the shared 2-core CPU (eager, graph and XLA runs and
    # the subclassed classifier); the fast tier keeps the graph step, the
    # round trip and the XLA step below.
    @pytest.mark.slow
    def test_harness(self):
        harness.run_method_test(
            self,
            lambda c: make_pgi(c, weight_decay=5e-4),
            subclassed="built",
        )

    def test_graph_step_and_round_trip(self):
        x, y = harness.tiny_data()
        method = make_pgi(harness.tiny_classifier(), weight_decay=5e-4)
        method.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
        harness.check_one_epoch(self, method, x, y)
        loaded = harness.check_round_trip(self, method, x, y)
        for name in (
            "num_examples",
            "mse_weight",
            "momentum_decay",
            "reset_period",
            "label_smoothing_factor",
        ):
            self.assertEqual(getattr(loaded, name), getattr(method, name))

    def test_xla_step(self):
        x, y = harness.tiny_data()
        method = make_pgi(harness.tiny_classifier())
        method.compile(optimizer=keras.optimizers.SGD(0.1), jit_compile=True)
        prior = method.prior.numpy().copy()
        history = method.fit(
            with_ids(x), y, batch_size=harness.BATCH, epochs=1, verbose=0
        ).history
        for name, values in history.items():
            self.assertTrue(np.isfinite(values[-1]), name)
        self.assertNotAllClose(prior, method.prior.numpy())

    def test_mixed_float16_trains(self):
        keras.mixed_precision.set_dtype_policy("mixed_float16")
        try:
            classifier = harness.tiny_classifier()
        finally:
            keras.mixed_precision.set_dtype_policy("float32")
        method = make_pgi(classifier)
        method.compile(
            optimizer=keras.mixed_precision.LossScaleOptimizer(
                keras.optimizers.SGD(0.05, momentum=0.9)
            )
        )
        x, y = harness.tiny_data()
        history = method.fit(
            with_ids(x), y, batch_size=harness.BATCH, epochs=1, verbose=0
        ).history
        self.assertTrue(np.isfinite(history["loss"][-1]), history)
        self.assertEqual(method.prior.dtype, "float32")
        self.assertGreater(np.abs(method.momentum.numpy()).max(), 0.0)

    def test_validation_takes_images_with_or_without_ids(self):
        x, y = harness.tiny_data()
        method = make_pgi(harness.tiny_classifier())
        method.compile(optimizer=keras.optimizers.SGD(0.1))
        plain = method.evaluate(x, y, verbose=0, return_dict=True)
        tagged = method.evaluate(with_ids(x), y, verbose=0, return_dict=True)
        self.assertEqual(plain, tagged)
        self.assertAllClose(method.predict(with_ids(x), verbose=0), method(x))


class Recorder(keras.callbacks.Callback):
    """The buffers as the epoch starts (after the trainer's hooks)."""

    def __init__(self, method):
        super().__init__()
        self.method = method
        self.seen = []

    def on_epoch_begin(self, epoch, logs=None):
        self.seen.append(
            (self.method.prior.numpy().copy(), self.method.momentum.numpy())
        )


class ResetTest(tf.test.TestCase):
    def test_buffers_reset_at_multiples_of_the_period(self):
        x, y = harness.tiny_data()
        method = make_pgi(harness.tiny_classifier(), reset_period=2)
        method.compile(optimizer=keras.optimizers.SGD(0.1))
        recorder = Recorder(method)
        method.fit(
            with_ids(x),
            y,
            batch_size=harness.BATCH,
            epochs=3,
            verbose=0,
            callbacks=[*method.callbacks(), recorder],
        )
        (p0, m0), (p1, m1), (p2, m2) = recorder.seen
        for prior in (p0, p2):  # epochs 0 and 2: random ±ε corners
            self.assertAllClose(np.abs(prior), np.full_like(prior, EPS))
            self.assertBetween((prior > 0).mean(), 0.3, 0.7)
        self.assertNotAllClose(p0, p2)  # fresh signs
        self.assertAllEqual(m0, np.zeros_like(m0))
        self.assertAllEqual(m2, np.zeros_like(m2))
        # Epoch 1 starts from what epoch 0 stored.
        self.assertGreater(np.abs(m1).max(), 0.0)
        self.assertLess(np.abs(p1).min(), EPS - 1e-3)

    def test_a_smaller_step_resets_to_its_own_corners(self):
        method = make_pgi(
            harness.tiny_classifier(),
            epsilon=None,
            train_attack=attacks.ProjectedGradient(
                epsilon=EPS, step_size=0.03, num_steps=1, start="none"
            ),
        )
        self.assertAllClose(
            np.abs(method.prior.numpy()),
            np.full(method.prior.shape, 0.03),
        )


class Interrupt(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 2:
            raise RuntimeError("interrupted")


class ResumeTest(tf.test.TestCase):
    def _fit(self, callbacks):
        x, y = harness.tiny_data()
        method = make_pgi(harness.tiny_classifier(), reset_period=2)
        method.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
        method.fit(
            with_ids(x),
            y,
            batch_size=harness.BATCH,
            epochs=3,
            verbose=0,
            shuffle=False,
            callbacks=[*method.callbacks(), *callbacks],
        )
        return method

    def test_a_resumed_run_equals_an_uninterrupted_one(self):
        want = self._fit([])
        backup = os.path.join(self.get_temp_dir(), "backup")
        with self.assertRaisesRegex(RuntimeError, "interrupted"):
            self._fit([keras.callbacks.BackupAndRestore(backup), Interrupt()])
        got = self._fit([keras.callbacks.BackupAndRestore(backup)])
        # The interrupted epoch (2) resets: the draw comes from the
        # restored seed state, so the resumed buffers are the same.
        for a, b in zip(want.variables, got.variables, strict=True):
            self.assertAllClose(a.numpy(), b.numpy(), atol=1e-6, msg=a.path)
        self.assertGreater(np.abs(got.momentum.numpy()).max(), 0.0)


class IdsTest(tf.test.TestCase, parameterized.TestCase):
    def test_a_batch_without_ids_is_refused(self):
        x, y = harness.tiny_data()
        method = make_pgi(harness.tiny_classifier())
        method.compile(optimizer=keras.optimizers.SGD(0.1))
        with self.assertRaisesRegex(
            ValueError,
            r"FGSMPGI keeps state per training example.*'example_id'.*"
            r"got images without ids.*example_ids=True",
        ):
            method.fit(x, y, batch_size=harness.BATCH, epochs=1, verbose=0)
        with self.assertRaisesRegex(ValueError, r"keys \['ids', 'image'\]"):
            method.fit(
                {"image": x, "ids": np.arange(len(x))},
                y,
                batch_size=harness.BATCH,
                epochs=1,
                verbose=0,
            )
        self.assertAllEqual(method.minibatches.numpy(), 0)

    def test_ids_out_of_range_fail_the_step(self):
        x, y = harness.tiny_data()
        method = make_pgi(harness.tiny_classifier())
        method.compile(optimizer=keras.optimizers.SGD(0.1))
        with self.assertRaisesRegex(
            tf.errors.InvalidArgumentError, r"keeps 8 rows.*id >= 8"
        ):
            method.fit(
                with_ids(x, np.arange(len(x)) + 4),
                y,
                batch_size=harness.BATCH,
                epochs=1,
                verbose=0,
            )

    def test_float_ids_are_refused(self):
        x, y = harness.tiny_data()
        method = make_pgi(harness.tiny_classifier())
        method.compile(optimizer=keras.optimizers.SGD(0.1))
        with self.assertRaisesRegex(ValueError, "ids of type float"):
            method.fit(
                with_ids(x, np.arange(len(x), dtype="float32")),
                y,
                batch_size=harness.BATCH,
                epochs=1,
                verbose=0,
            )

    def test_add_example_ids_enumerates_before_shuffling(self):
        x, y = harness.tiny_data()
        ds = data.add_example_ids(tf.data.Dataset.from_tensor_slices((x, y)))
        ds = ds.shuffle(8, seed=0).batch(4)
        for inputs, labels in ds:
            ids = inputs[example_ids.EXAMPLE_ID].numpy()
            self.assertAllEqual(inputs[example_ids.IMAGE], x[ids])
            self.assertAllEqual(labels, y[ids])
        example_ids.require(ds, who="test")
        with self.assertRaisesRegex(ValueError, "test keeps state"):
            example_ids.require(
                tf.data.Dataset.from_tensor_slices((x, y)), who="test"
            )
        with self.assertRaisesRegex(ValueError, r"\(image, label\)"):
            data.add_example_ids(tf.data.Dataset.from_tensor_slices(x))


class ArgumentsTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters(8 / 255, 0.1)
    def test_reference_defaults(self, epsilon):
        method = methods.FGSMPGI(
            harness.tiny_classifier(), epsilon=epsilon, num_examples=N
        )
        attack = method.train_attack
        self.assertIsInstance(attack, attacks.ProjectedGradient)
        self.assertNear(attack.step_size, epsilon, 1e-9)
        self.assertEqual((attack.num_steps, attack.start), (1, "none"))
        self.assertEqual(method.mse_weight, 10.0)
        self.assertEqual(method.momentum_decay, 0.3)
        self.assertEqual(method.reset_period, 40)
        self.assertEqual(method.label_smoothing_factor, 0.6)
        self.assertTrue(method.attack_training_mode)
        self.assertTrue(method.uses_example_ids)
        self.assertEqual(method.prior.shape, (N, *harness.INPUT_SHAPE))
        self.assertEqual(method.momentum.shape, (N, *harness.INPUT_SHAPE))

    def test_smoothed_targets_are_the_references(self):
        targets = fgsm_pgi.smoothed_targets(tf.constant([2, 0]), 10, 0.6)
        self.assertAllClose(targets[0, 2], 0.6)
        self.assertAllClose(targets[0, 0], 0.4 / 9)
        self.assertAllClose(tf.reduce_sum(targets, -1), [1.0, 1.0])

    def test_bad_arguments(self):
        classifier = harness.tiny_classifier()
        with self.assertRaisesRegex(ValueError, "needs its training budget"):
            methods.FGSMPGI(classifier, num_examples=N)
        with self.assertRaisesRegex(
            ValueError, r"give num_examples=.*training set.*1\.2 GB"
        ):
            methods.FGSMPGI(classifier, epsilon=EPS)
        bad = (
            ({"num_examples": 0}, "num_examples"),
            ({"mse_weight": -1.0}, "mse_weight"),
            ({"momentum_decay": -0.1}, "momentum_decay"),
            ({"reset_period": 0}, "reset_period"),
            ({"label_smoothing_factor": 0.0}, r"label_smoothing_factor.*0\.6"),
            ({"label_smoothing_factor": 1.5}, "label_smoothing_factor"),
        )
        for kwargs, message in bad:
            with self.assertRaisesRegex(ValueError, message):
                make_pgi(classifier, **kwargs)
        for attack in (
            harness.pgd(num_steps=2, start="none"),
            harness.pgd(num_steps=1, start="uniform"),
            harness.pgd(num_steps=1, start="none", restarts=2),
            harness.pgd(num_steps=1, start="none", objective="margin"),
            harness.pgd(num_steps=1, start="none", norm="l2"),
        ):
            with self.assertRaisesRegex(ValueError, "num_steps=1, restarts"):
                make_pgi(classifier, epsilon=None, train_attack=attack)
        with self.assertRaisesRegex(ValueError, "fully defined input shape"):
            make_pgi(harness.subclassed_classifier())


class TinyPGI(methods.FGSMPGI):
    """FGSMPGI at ε = 0.1, as `run` builds it: (classifier, eval_attack)."""

    def __init__(self, classifier, **kwargs):
        super().__init__(classifier, epsilon=EPS, **kwargs)


def build(dataset_fn):
    return experiment.build(
        strategy=tf.distribute.get_strategy(),
        dataset_fn=dataset_fn,
        data_dir=None,
        model_fn=functools.partial(
            models.small_cnn, filters=(4, 8), dense_units=16
        ),
        input_layers=(),
        method_cls=TinyPGI,
        eval_attack=None,
        optimizer_cls=keras.optimizers.SGD,
        learning_rate=0.05,
        epochs=1,
        epsilon=EPS,
        jit_compile=False,
        steps_per_execution=1,
        mixed_precision=None,
        seeds=seeds.RunSeeds.of(0, dataset_fn=dataset_fn, method_cls=TinyPGI),
    )


class ExperimentTest(data_fixtures.TinyDatasetTestCase):
    """`tfadv.train`'s build on the tiny IDX data (pixels = example index)."""

    def _datasets(self, *, data_dir=None, example_ids=False):
        del data_dir
        return data.make_datasets(
            name=self.tmp,
            batch_size=10,
            validation_examples=0,
            example_ids=example_ids,
        )

    def test_the_run_gives_ids_and_the_training_set_size(self):
        built = build(self._datasets)
        self.assertEqual(built.method.num_examples, data_fixtures.NUM_TRAIN)
        seen = []
        for inputs, labels in built.datasets.train:
            ids = inputs[example_ids.EXAMPLE_ID].numpy()
            pixels = inputs[example_ids.IMAGE].numpy()[:, 0, 0, 0]
            # Each id is the example's row: its pixels and label.
            self.assertAllEqual(np.round(pixels * 255), ids)
            self.assertAllEqual(labels, ids % 10)
            seen.extend(ids)
        self.assertCountEqual(seen, range(data_fixtures.NUM_TRAIN))
        self.assertNotEqual(seen, sorted(seen))  # shuffled, ids kept
        self.assertFalse(
            example_ids.carries_ids(built.datasets.test.element_spec[0])
        )

    def test_data_without_ids_is_refused_before_training(self):
        def plain(*, data_dir=None, example_ids=False):
            del example_ids  # a dataset_fn that ignores the request
            return self._datasets(data_dir=data_dir)

        with self.assertRaisesRegex(
            ValueError, r"TinyPGI keeps state per training example"
        ):
            build(plain)

    def test_the_overfitting_guard_takes_the_images_of_a_batch(self):
        built = build(self._datasets)
        guard = callbacks.co_guard(
            datasets=built.datasets, logdir=None, attack=harness.pgd()
        )
        self.assertEqual(guard.images.shape, (10, 6, 6, 1))
        self.assertEqual(guard.labels.shape, (10,))

    def test_a_bad_example_ids_flag_is_refused(self):
        with self.assertRaisesRegex(ValueError, "example_ids='yes'"):
            data.make_datasets(name=self.tmp, example_ids="yes")


class RefusalTest(tf.test.TestCase, parameterized.TestCase):
    """Each refusal is one paragraph, before any work (the catalogue)."""

    @parameterized.named_parameters(
        ("reset_period", "FGSMPGI.reset_period = 0", "reset_period"),
        ("smoothing", "FGSMPGI.label_smoothing_factor = 0.0", "0.6"),
        (
            "two_step_attack",
            "train/ProjectedGradient.num_steps = 2",
            "num_steps=1, restarts=1",
        ),
    )
    def test_the_command_line_refuses(self, binding, pattern):
        root = tempfile.mkdtemp()
        logdir = os.path.join(root, "run")
        with self.assertRaises(SystemExit) as cm:
            cli_fixtures.run_cli(
                logdir,
                "fgsm_pgi.gin",
                "testing/tiny.gin",
                bindings=[binding],
            )
        message = str(cm.exception.code)
        self.assertStartsWith(message, "tfadv.train: error: FGSMPGI")
        self.assertNotIn("\n", message)
        self.assertRegex(message, pattern)
        self.assertFalse(os.path.exists(logdir))

    def test_library_refusals_are_one_paragraph(self):
        x, y = harness.tiny_data()
        method = make_pgi(harness.tiny_classifier())
        method.compile(optimizer=keras.optimizers.SGD(0.1))
        refusals = []
        for call in (
            lambda: methods.FGSMPGI(harness.tiny_classifier(), epsilon=EPS),
            lambda: method.fit(x, y, batch_size=4, epochs=1, verbose=0),
        ):
            with self.assertRaises(ValueError) as cm:
                call()
            refusals.append(str(cm.exception))
        for message in refusals:
            self.assertNotIn("\n", message)
            self.assertIn("FGSMPGI", message)


def _final(logdir):
    model = keras.saving.load_model(os.path.join(logdir, "model.keras"))
    with open(os.path.join(logdir, "results.json")) as f:
        history = json.load(f)["history"]
    return model.get_weights(), history["loss"], history["adv_accuracy"]


# About 70 s: three tfadv.train processes.
@pytest.mark.slow
class KilledRunTest(tf.test.TestCase):
    def test_a_killed_run_resumes_to_the_uninterrupted_result(self):
        # Killed in epoch 1; epoch 2 resets the buffers after the resume.
        flags = (
            "--gin_file=fgsm_pgi.gin",
            "--gin_file=testing/tiny.gin",
            "--gin_bindings=run.epochs = 3",
            "--gin_bindings=RESET_PERIOD = 2",
        )
        root = tempfile.mkdtemp()
        reference = os.path.join(root, "uninterrupted")
        done = fault_fixtures.run_train("none", reference, *flags)
        self.assertEqual(done.returncode, 0, done.stderr[-3000:])
        logdir = os.path.join(root, "killed")
        killed = fault_fixtures.run_train("batch:1:1", logdir, *flags)
        self.assertEqual(
            killed.returncode, -signal.SIGKILL, killed.stderr[-3000:]
        )
        resumed = fault_fixtures.run_train("none", logdir, *flags)
        self.assertEqual(resumed.returncode, 0, resumed.stderr[-3000:])
        want, got = _final(reference), _final(logdir)
        for a, b in zip(want[0], got[0], strict=True):
            np.testing.assert_array_equal(a, b)
        self.assertEqual(want[1:], got[1:])
        self.assertLen(got[1], 3)
