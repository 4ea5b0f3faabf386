"""AWP: the perturbation, the step around it, replicas, precision, methods.

The perturbation is re-derived in NumPy on a two-layer dense model
(`v_l = γ·‖w_l‖·g_l / ‖g_l‖` per kernel, g the gradient of the method's
loss), and so is the whole step: the update's gradient at `w + v`, the
optimizer's step, then `v` removed (after the step by default, as
csdongxian/AWP's `AT_AWP/train_cifar10.py`, or before it). On a conv net
with BatchNorm and momentum, the weights after a step are those of the
same optimizer step taken by a plain trainer at `w + v`, minus `v`; the
ascent moves no BatchNorm statistic.
"""

from unittest import mock

import gin
import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import flags
from absl.testing import parameterized

from tests import harness
from tests.methods_keras_test import ALL_METHODS
from tests.methods_keras_test import EPS
from tests.methods_keras_test import REQUIRED
from tfadv import experiment
from tfadv import methods
from tfadv import recipes
from tfadv import train
from tfadv.methods import weight_perturbations
from tfadv.recipes import awp as awp_lib

AWP = recipes.AdversarialWeightPerturbation
# Methods whose update structure refuses a weight perturbation.
REFUSING = (methods.FreeAT, methods.DEAT, methods.YOPO, methods.FGSMPGI)


def setUpModule():
    flags.FLAGS.mark_as_parsed()


def make_with(cls, classifier, **kwargs):
    """`cls` on `classifier`, with the budget and arguments it requires."""
    if cls in (methods.Standard, methods.NoisyTraining):
        return cls(classifier, **kwargs)
    return cls(classifier, epsilon=EPS, **REQUIRED.get(cls, {}), **kwargs)


def fixed_attack(eps=EPS):
    """Examples `x + fixed_start(x)` projected: no weight dependence."""
    return harness.FixedStartPGD(
        start_fn=lambda x: harness.fixed_start(x, eps),
        epsilon=eps,
        step_size=eps / 2,
        num_steps=1,
    ).start_only()


def numpy_forward(weights, x):
    w0, b0, w1, b1 = weights
    a = x @ w0 + b0
    h = np.maximum(a, 0.0)
    return a, h, h @ w1 + b1


def numpy_grads(weights, x, y):
    """Gradients of the mean cross-entropy of the ReLU two-layer model."""
    w0, _, w1, _ = weights
    a, h, z = numpy_forward(weights, x)
    dz = (harness.softmax(z) - harness.onehot(y, z.shape[1])) / len(x)
    da = (dz @ w1.T) * (a > 0)
    return [x.T @ da, da.sum(0), h.T @ dz, dz.sum(0)]


def numpy_offsets(weights, x_adv, y, *, gamma, proxy_lr=0.01):
    """AWP's γ·v of every weight, zero for the biases (utils_awp.py)."""
    grads = numpy_grads(weights, x_adv, y)
    offsets = []
    for w, g in zip(weights, grads, strict=True):
        if w.ndim < 2:
            offsets.append(np.zeros_like(w))
            continue
        step = proxy_lr * g
        scale = np.linalg.norm(w) / (np.linalg.norm(step) + 1e-20)
        offsets.append(gamma * scale * step)
    return offsets


def numpy_awp_step(weights, x_adv, y, *, gamma, lr, wd, restore_before):
    """One SGD step of AT-AWP: ascent, perturb, update, restore."""
    offsets = numpy_offsets(weights, x_adv, y, gamma=gamma)
    moved = [w + o for w, o in zip(weights, offsets, strict=True)]
    grads = numpy_grads(moved, x_adv, y)
    out = []
    for w, m, g, o in zip(weights, moved, grads, offsets, strict=True):
        if restore_before:
            out.append(w - lr * (g + wd * w))
        else:
            out.append(m - lr * (g + wd * m) - o)
    return out


def dense_weights(seed=0):
    weights, x, y = harness.dense_problem(seed=seed, n=8)
    return [w.astype(np.float64) for w in weights], x, y


def dense_classifier(weights):
    return harness.dense_classifier(
        [w.astype("float32") for w in weights], relu=True
    )


def sgd(lr=0.1, momentum=0.9):
    return keras.optimizers.SGD(lr, momentum=momentum)


def fit(method, x, y, *, epochs=1, batch=harness.BATCH, callbacks=None):
    if callbacks is None:
        callbacks = method.callbacks()
    return method.fit(
        x,
        y,
        batch_size=batch,
        epochs=epochs,
        verbose=0,
        shuffle=False,
        callbacks=callbacks,
    ).history


class PerturbationTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters(0.01, 0.05)
    def test_offsets_equal_the_numpy_derivation(self, gamma):
        weights, x, y = dense_weights(seed=1)
        x_adv = np.clip(x + 0.05 * np.cos(11.0 * x), 0.0, 1.0)
        x_adv = x_adv.astype("float32")
        awp = AWP(gamma=gamma)
        method = methods.PGDAT(
            dense_classifier(weights), epsilon=EPS, weight_perturbation=awp
        )
        method.compile(optimizer=sgd())
        got = awp.offsets(
            method, lambda: method.compute_adversarial_loss(x, y, x_adv)[0]
        )
        want = numpy_offsets(weights, x_adv.astype(np.float64), y, gamma=gamma)
        variables = awp.variables_to_perturb(method)
        # The two kernels, not the biases.
        self.assertEqual(
            [v.path for v in variables],
            [
                v.path
                for v in method.classifier.trainable_variables
                if len(v.shape) == 2
            ],
        )
        self.assertLen(got, 2)
        for g, w, weight in zip(got, want[::2], weights[::2], strict=True):
            self.assertAllClose(g, w, rtol=1e-4, atol=1e-7)
            # Each kernel moves by γ·‖w‖ exactly.
            self.assertAllClose(
                np.linalg.norm(g), gamma * np.linalg.norm(weight), rtol=1e-5
            )

    def test_a_non_finite_ascent_gives_no_perturbation(self):
        weights, x, y = dense_weights()
        awp = AWP()
        method = methods.PGDAT(
            dense_classifier(weights), epsilon=EPS, weight_perturbation=awp
        )
        method.compile(optimizer=sgd())

        def overflowing():
            loss = method.compute_adversarial_loss(x, y, x)[0]
            return loss * tf.constant(np.inf, tf.float32)

        for offset in awp.offsets(method, overflowing):
            self.assertAllEqual(offset, np.zeros(offset.shape))

    def test_ascent_leaves_batchnorm_statistics_alone(self):
        method = methods.PGDAT(
            harness.tiny_classifier(), epsilon=EPS, weight_perturbation=AWP()
        )
        method.compile(optimizer=sgd())
        x, y = harness.tiny_data()
        before = [v.numpy() for v in method.classifier.non_trainable_variables]
        method.weight_perturbation.offsets(
            method, lambda: method.compute_adversarial_loss(x, y, x)[0]
        )
        after = [v.numpy() for v in method.classifier.non_trainable_variables]
        for a, b in zip(before, after, strict=True):
            self.assertAllEqual(a, b)
        # A training-mode call does move them (the check can fail).
        method.classifier(x, training=True)
        moved = method.classifier.non_trainable_variables[0].numpy()
        self.assertNotAllClose(moved, before[0])


class StepTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.product(
        strategy=["default", "mirrored"],
        wd=[0.0, 0.05],
        restore_before=[False, True],
    )
    def test_step_equals_the_numpy_derivation(
        self, strategy, wd, restore_before
    ):
        weights, x, y = dense_weights(seed=2)
        gamma, lr = 0.05, 0.5
        awp = AWP(gamma=gamma, restore_before_step=restore_before)
        method, got = harness.fit_one_step(
            lambda c: methods.PGDAT(
                c,
                train_attack=fixed_attack(),
                weight_decay=wd,
                weight_perturbation=awp,
            ),
            lambda: dense_classifier(weights),
            x,
            y,
            lr=lr,
            strategy=harness.strategy(strategy),
        )
        x_adv = harness.project(x, x + EPS * np.sin(37.0 * x + 1.0), EPS)
        want = numpy_awp_step(
            weights,
            x_adv,
            y,
            gamma=gamma,
            lr=lr,
            wd=wd,
            restore_before=restore_before,
        )
        for g, w in zip(got, want, strict=True):
            self.assertAllClose(g, w, rtol=1e-4, atol=2e-5)
        # The perturbation changed the step (the test can fail).
        plain = numpy_awp_step(
            weights, x_adv, y, gamma=1e-12, lr=lr, wd=wd, restore_before=True
        )
        self.assertGreater(np.abs(want[0] - plain[0]).max(), 1e-3)
        if strategy == "mirrored":
            # Every replica's copy of every weight is the same.
            for variable in method.classifier.weights:
                copies = harness.replica_buffers(variable)
                self.assertLen(copies, 2)
                self.assertAllEqual(copies[0], copies[1])

    def test_the_order_of_the_restore_meets_weight_decay_only(self):
        weights, x, y = dense_weights(seed=2)
        after, before = (
            numpy_awp_step(
                weights,
                x,
                y,
                gamma=0.05,
                lr=0.5,
                wd=0.05,
                restore_before=order,
            )
            for order in (False, True)
        )
        offsets = numpy_offsets(weights, x, y, gamma=0.05)
        # Restored after the step, the decay also shrinks v.
        for a, b, o in zip(after, before, offsets, strict=True):
            self.assertAllClose(b - a, 0.5 * 0.05 * o, atol=1e-9)

    @parameterized.parameters(False, True)
    def test_weights_are_the_optimizer_step_at_w_plus_v_minus_v(
        self, restore_before
    ):
        """A conv net with BatchNorm, momentum and coupled weight decay."""
        x, y = harness.tiny_data()
        lr, wd, momentum = 0.1, 0.01, 0.9
        awp = AWP(gamma=0.05, restore_before_step=restore_before)
        method = methods.PGDAT(
            harness.tiny_classifier(),
            train_attack=fixed_attack(),
            weight_decay=wd,
            weight_perturbation=awp,
        )
        method.compile(optimizer=sgd(lr, momentum))
        x_adv = method.perturb(x[:4], y[:4])
        perturbed = awp.variables_to_perturb(method)
        values = awp.offsets(
            method,
            lambda: method.compute_adversarial_loss(x[:4], y[:4], x_adv)[0],
        )
        # By position in classifier.weights (the plain trainer's classifier
        # has other layer names).
        paths = [v.path for v in method.classifier.weights]
        offsets = {
            paths.index(v.path): o.numpy()
            for v, o in zip(perturbed, values, strict=True)
        }
        start = [v.numpy() for v in method.classifier.weights]

        # The EMA's moment: what a callback sees after the train step.
        seen = []
        record = keras.callbacks.LambdaCallback(
            on_train_batch_end=lambda *_, **__: seen.append(
                [v.numpy() for v in method.classifier.weights]
            )
        )
        fit(method, x[:4], y[:4], callbacks=[*method.callbacks(), record])

        # The same optimizer step, taken by a plain trainer at w + v.
        plain = methods.PGDAT(
            harness.tiny_classifier(),
            train_attack=fixed_attack(),
            weight_decay=wd,
        )
        plain.classifier.set_weights(start)
        plain.compile(optimizer=sgd(lr, momentum))
        for index, offset in offsets.items():
            plain.classifier.weights[index].assign_add(offset)
        fit(plain, x[:4], y[:4])
        for index, (got, variable) in enumerate(
            zip(
                method.classifier.weights, plain.classifier.weights, strict=True
            )
        ):
            want = variable.numpy()
            offset = offsets.get(index)
            if offset is not None:
                want = want - offset
                if restore_before:
                    # The first momentum step is lr·(g + wd·w): at w, not
                    # at w + v.
                    want = want + lr * wd * offset
            self.assertAllClose(got, want, rtol=1e-5, atol=1e-6, msg=got.path)
        # BatchNorm's statistics (compared above with the plain step's)
        # moved once, by the update's forward only. The three kernels were
        # perturbed.
        self.assertLen(offsets, 3)
        # After the step, callbacks see the unperturbed weights.
        self.assertLen(seen, 1)
        for a, b in zip(seen[0], method.classifier.weights, strict=True):
            self.assertAllEqual(a, b.numpy())

    def test_two_replicas_equal_one_device(self):
        """Two steps of a conv net without BatchNorm (whose batch
        statistics differ per replica), at fixed starts."""
        x, y = harness.tiny_data(num=4 * harness.BATCH, seed=3)
        results = []
        for name in ("default", "mirrored"):
            with harness.strategy(name).scope():
                classifier = harness.conv_classifier(
                    linear_first_layer=True, batch_norm=False
                )
                method = methods.PGDAT(
                    classifier,
                    train_attack=fixed_attack(),
                    weight_decay=5e-4,
                    weight_perturbation=AWP(gamma=0.05),
                )
                method.compile(optimizer=sgd(0.05))
            fit(method, x, y, batch=2 * harness.BATCH)
            results.append([v.numpy() for v in classifier.weights])
        for a, b in zip(*results, strict=True):
            self.assertAllClose(a, b, rtol=1e-4, atol=1e-5)


class WarmupTest(tf.test.TestCase):
    def test_warmup_epochs_train_the_plain_method(self):
        x, y = harness.tiny_data()
        calls = []
        offsets = AWP.offsets

        def counting(self, trainer, loss_fn):
            calls.append(int(trainer.minibatches.numpy()))
            return offsets(self, trainer, loss_fn)

        def trained(perturbation, epochs):
            method = methods.PGDAT(
                harness.tiny_classifier(),
                train_attack=fixed_attack(),
                weight_perturbation=perturbation,
            )
            method.compile(optimizer=sgd(), run_eagerly=True)
            with mock.patch.object(AWP, "offsets", counting):
                fit(method, x, y, epochs=epochs)
            return method

        plain = trained(None, 1)
        warm = trained(AWP(warmup_epochs=1), 1)
        self.assertEqual(calls, [])
        self.assertEqual(warm.step_count(weight_perturbations.STEP_COUNT), 0)
        for a, b in zip(
            plain.classifier.weights, warm.classifier.weights, strict=True
        ):
            self.assertAllEqual(a.numpy(), b.numpy())
        # The second epoch (index 1) perturbs its two minibatches.
        warm = trained(AWP(warmup_epochs=1), 2)
        self.assertEqual(calls, [2, 3])
        self.assertEqual(warm.step_count(weight_perturbations.STEP_COUNT), 1)

    def test_the_compiled_step_is_retraced_when_warmup_ends(self):
        x, y = harness.tiny_data()
        method = methods.PGDAT(
            harness.tiny_classifier(),
            train_attack=fixed_attack(),
            weight_perturbation=AWP(warmup_epochs=1),
        )
        method.compile(optimizer=sgd())
        traced = []
        offsets = AWP.offsets

        def counting(self, trainer, loss_fn):
            traced.append(True)
            return offsets(self, trainer, loss_fn)

        with mock.patch.object(AWP, "offsets", counting):
            fit(method, x, y, epochs=1)
            self.assertEqual(traced, [])
            fit(method, x, y, epochs=1)
        # Epoch 0 of the second fit is epoch 0 again: still off. A fit
        # from epoch 1 (a resume) turns it on.
        self.assertEqual(traced, [])
        with mock.patch.object(AWP, "offsets", counting):
            method.fit(
                x,
                y,
                batch_size=harness.BATCH,
                initial_epoch=1,
                epochs=2,
                verbose=0,
                callbacks=method.callbacks(),
            )
        self.assertNotEmpty(traced)


class MethodsTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters(*ALL_METHODS)
    def test_every_method_trains_with_awp_or_refuses_it(self, cls):
        classifier = harness.tiny_classifier()
        awp = AWP(gamma=0.05)
        if cls in REFUSING:
            with self.assertRaisesRegex(
                ValueError,
                rf"^{cls.__name__} cannot take a weight perturbation "
                r"\(AdversarialWeightPerturbation\): [^\n]+$",
            ):
                make_with(cls, classifier, weight_perturbation=awp)
            return
        method = make_with(cls, classifier, weight_perturbation=awp)
        method.compile(optimizer=sgd(0.05))
        before = [v.numpy() for v in classifier.trainable_variables]
        calls = []
        offsets = AWP.offsets

        def counting(self, trainer, loss_fn):
            calls.append(True)
            return offsets(self, trainer, loss_fn)

        shifts = []
        shift = weight_perturbations._shift

        def recording(pairs, sign):
            shifts.append(sign)
            return shift(pairs, sign)

        x, y = harness.tiny_data()
        with (
            mock.patch.object(AWP, "offsets", counting),
            mock.patch.object(weight_perturbations, "_shift", recording),
        ):
            logs = fit(method, harness.training_inputs(method, x), y)
        self.assertNotEmpty(calls)  # traced into the step
        # Each trace moves the weights once and back once, in that order.
        self.assertEqual(shifts, [1.0, -1.0] * len(calls))
        self.assertTrue(np.isfinite(logs["loss"][-1]), logs)
        self.assertTrue(
            any(
                not np.allclose(a, b.numpy())
                for a, b in zip(
                    before, classifier.trainable_variables, strict=True
                )
            )
        )

    @pytest.mark.slow
    def test_the_shared_harness(self):
        harness.run_method_test(
            self,
            lambda c: methods.PGDAT(
                c,
                epsilon=EPS,
                weight_decay=5e-4,
                weight_perturbation=AWP(gamma=0.02),
            ),
        )

    def test_an_update_that_ignores_the_perturbation_fails(self):
        class Ignoring(methods.PGDAT):
            def minibatch_update(self, x, y):
                x_adv = self.perturb(x, y)
                with tf.GradientTape() as tape:
                    loss = self.compute_adversarial_loss(x, y, x_adv)[0]
                    scaled = self.scale_loss(loss)
                self.apply_gradients(tape, scaled)
                return self.step_logs(x, y, loss=loss)

        method = Ignoring(
            harness.tiny_classifier(), epsilon=EPS, weight_perturbation=AWP()
        )
        method.compile(optimizer=sgd())
        x, y = harness.tiny_data()
        with self.assertRaisesRegex(RuntimeError, "did not call perturb"):
            fit(method, x, y)


class PrecisionTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters("mixed_float16", "mixed_bfloat16")
    def test_mixed_precision_steps(self, policy):
        x, y = harness.tiny_data()
        runs = []
        for perturbation in (None, AWP(gamma=0.05)):
            keras.mixed_precision.set_dtype_policy(policy)
            try:
                method = methods.PGDAT(
                    harness.tiny_classifier(),
                    train_attack=fixed_attack(),
                    weight_perturbation=perturbation,
                )
            finally:
                keras.mixed_precision.set_dtype_policy("float32")
            optimizer = sgd(0.05)
            if policy == "mixed_float16":
                optimizer = keras.mixed_precision.LossScaleOptimizer(optimizer)
            method.compile(optimizer=optimizer)
            logs = fit(method, x, y)
            self.assertTrue(np.isfinite(logs["loss"][-1]), logs)
            for weight in method.classifier.trainable_weights:
                self.assertEqual(weight.dtype, "float32")
                self.assertTrue(np.all(np.isfinite(weight.numpy())))
            runs.append([w.numpy() for w in method.classifier.weights])
        # AWP changed the trained weights.
        self.assertTrue(
            any(
                not np.allclose(a, b, atol=1e-6)
                for a, b in zip(*runs, strict=True)
            )
        )

    @pytest.mark.slow
    def test_xla_step_equals_the_graph_step(self):
        x, y = harness.tiny_data()
        runs = []
        for jit_compile in (False, True):
            method = methods.TRADES(
                harness.tiny_classifier(),
                train_attack=fixed_attack(),
                weight_perturbation=AWP(gamma=5e-3),
            )
            method.compile(optimizer=sgd(0.05), jit_compile=jit_compile)
            logs = fit(method, x, y)
            self.assertTrue(np.isfinite(logs["loss"][-1]), logs)
            runs.append([w.numpy() for w in method.classifier.weights])
        for a, b in zip(*runs, strict=True):
            self.assertAllClose(a, b, rtol=1e-4, atol=1e-5)


class ArgumentsTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters(
        ({"gamma": 0.0}, r"gamma must be in \(0, inf\); got 0\.0.*0\.01"),
        ({"gamma": -1}, r"gamma must be in \(0, inf\); got -1"),
        ({"gamma": float("nan")}, r"gamma must be in \(0, inf\); got nan"),
        ({"gamma": "big"}, r"gamma must be in .*got 'big'"),
        ({"proxy_lr": 0}, r"proxy_lr must be in \(0, inf\); got 0"),
        ({"warmup_epochs": -1}, r"warmup_epochs .* >= 0; got -1"),
        ({"warmup_epochs": 1.5}, r"warmup_epochs .* >= 0; got 1\.5"),
        ({"warmup_epochs": True}, r"warmup_epochs .* >= 0; got True"),
        ({"restore_before_step": "yes"}, r"True or False; got 'yes'"),
    )
    def test_bad_values_are_refused(self, kwargs, pattern):
        with self.assertRaisesRegex(ValueError, pattern) as cm:
            AWP(**kwargs)
        self.assertNotIn("\n", str(cm.exception))

    def test_a_weight_perturbation_of_another_type_is_refused(self):
        with self.assertRaisesRegex(
            TypeError, r"PGDAT\.weight_perturbation must be .*got 'awp'"
        ):
            methods.PGDAT(
                harness.tiny_classifier(),
                epsilon=EPS,
                weight_perturbation="awp",
            )

    def test_defaults_are_the_at_references(self):
        awp = AWP()
        self.assertEqual(
            (awp.gamma, awp.proxy_lr, awp.warmup_epochs),
            (0.01, 0.01, 0),
        )
        self.assertFalse(awp.restore_before_step)
        self.assertEqual(awp_lib.NORM_GUARD, 1e-20)

    def test_round_trip_through_the_trainers_file(self):
        method = methods.TRADES(
            harness.tiny_classifier(),
            epsilon=EPS,
            weight_perturbation=AWP(gamma=5e-3, warmup_epochs=9),
        )
        method.compile(optimizer=sgd())
        x, y = harness.tiny_data()
        fit(method, x, y)
        loaded = harness.check_round_trip(self, method, x, y)
        self.assertEqual(
            repr(loaded.weight_perturbation), repr(method.weight_perturbation)
        )
        self.assertEqual(loaded.step_count(weight_perturbations.STEP_COUNT), 0)


class GinTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters(
        ("pgd_at.gin", "recipes/awp.gin", 0.01, 0),
        ("trades.gin", "recipes/awp_trades.gin", 5e-3, 9),
    )
    def test_recipe_files_reach_the_method(
        self, method_file, recipe, gamma, warmup
    ):
        train.parse_gin([method_file, recipe, "testing/tiny.gin"], [])
        built = []
        build = experiment.build

        def recording(**kwargs):
            built.append(build(**kwargs))
            return built[-1]

        logdir = self.create_tempdir().full_path
        with (
            mock.patch.object(experiment, "build", recording),
            tfds.testing.mock_data(num_examples=300),
        ):
            experiment.run(logdir=logdir, dry_run=True)
        awp = built[0].method.weight_perturbation
        self.assertIsInstance(awp, AWP)
        self.assertEqual((awp.gamma, awp.warmup_epochs), (gamma, warmup))
        gin.clear_config()

    @pytest.mark.slow
    def test_pgd_at_with_awp_trains_through_run(self):
        train.parse_gin(
            ["pgd_at.gin", "recipes/awp.gin", "testing/tiny.gin"],
            ["train/ProjectedGradient.num_steps = 2"],
        )
        logdir = self.create_tempdir().full_path + "/run"
        results = experiment.run(logdir=logdir, progress="none")
        self.assertEqual(results["method"], "PGDAT")
        self.assertTrue(np.isfinite(results["history"]["loss"][-1]))
