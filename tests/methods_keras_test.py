"""Trainers as Keras citizens.

Saving whole trainers (in a fresh process too, and through
`ModelCheckpoint`), `BackupAndRestore` resuming where it stopped,
`compile`'s metrics and refused loss, sample and class weights, the label
forms, the classifier checks, the required training budget and `summary`.
The per-method round trip, the built-before-fit check and the subclassed
classifier are in the shared harness (`tests/harness.py`).
"""

import io
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from tests import harness
from tfadv import attacks
from tfadv import methods
from tfadv.methods import controllers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EPS = 0.1


def sgd():
    return keras.optimizers.SGD(0.1, momentum=0.9)


def weights_of(method):
    return [v.numpy() for v in method.classifier.weights]


# Every method with a training attack, and its paper's budget.
WITH_ATTACK = {
    methods.PGDAT: 8 / 255,
    methods.FGSMRS: 8 / 255,
    methods.NFGSM: 8 / 255,
    methods.GradAlign: 8 / 255,
    methods.FGSMPGI: 8 / 255,
    methods.FreeAT: 8 / 255,
    methods.DEAT: 8 / 255,
    methods.YOPO: 8 / 255,
    methods.TRADES: 0.031,
    methods.MART: 0.031,
    methods.BackwardSmoothing: 0.031,
    methods.TRADESYOPO: 0.031,
    methods.GAAT: None,
}
# What a method requires besides its budget (GradAlign's λ has no default,
# FGSM-PGI's buffers need the training set's size).
REQUIRED = {
    methods.GradAlign: {"align_weight": 0.2},
    methods.FGSMPGI: {"num_examples": 2 * harness.BATCH},
}


class SavingTest(tf.test.TestCase):
    def _trained(self):
        method = methods.PGDAT(
            harness.tiny_classifier(),
            train_attack=harness.pgd(num_steps=3),
            eval_attack=harness.eval_attack(),
            step_controller=controllers.MPlus(max_steps=3, initial_steps=0),
            seed=4,
        )
        method.compile(
            optimizer=sgd(),
            metrics=[
                keras.metrics.SparseTopKCategoricalAccuracy(k=2, name="top2")
            ],
        )
        x, y = harness.tiny_data()
        method.fit(
            x,
            y,
            batch_size=harness.BATCH,
            epochs=2,
            verbose=0,
            callbacks=method.callbacks(),
        )
        return method, x, y

    def test_loads_in_a_fresh_process_with_only_tfadv_imported(self):
        method, x, y = self._trained()
        tmp = self.get_temp_dir()
        path = os.path.join(tmp, "trainer.keras")
        method.save(path)
        np.savez(os.path.join(tmp, "data.npz"), x=x, y=y)
        script = textwrap.dedent(
            """
            import os, sys
            os.environ["KERAS_BACKEND"] = "tensorflow"
            import keras
            import numpy as np
            import tfadv
            tmp = sys.argv[1]
            path = os.path.join(tmp, "trainer.keras")
            trainer = keras.saving.load_model(path)
            data = np.load(os.path.join(tmp, "data.npz"))
            history = trainer.fit(
                data["x"], data["y"], batch_size=4, epochs=1, verbose=0,
                shuffle=False, callbacks=trainer.callbacks())
            np.savez(
                os.path.join(tmp, "after.npz"),
                *[v.numpy() for v in trainer.classifier.weights],
                steps=trainer.step_count("attack_steps"),
                top2=history.history["adv_top2"][-1])
            print(type(trainer).__name__, trainer.train_attack.name)
            """
        )
        env = {**os.environ, "PYTHONPATH": REPO, "CUDA_VISIBLE_DEVICES": ""}
        done = subprocess.run(
            [sys.executable, "-c", script, tmp],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        self.assertEqual(done.returncode, 0, done.stderr[-3000:])
        self.assertIn("PGDAT pgd3", done.stdout)
        history = method.fit(
            x,
            y,
            batch_size=harness.BATCH,
            epochs=1,
            verbose=0,
            shuffle=False,
            callbacks=method.callbacks(),
        )
        after = np.load(os.path.join(tmp, "after.npz"))
        self.assertEqual(int(after["steps"]), method.step_count("attack_steps"))
        self.assertAllClose(
            after["top2"], history.history["adv_top2"][-1], atol=1e-6
        )
        for i, want in enumerate(weights_of(method)):
            self.assertAllClose(after[f"arr_{i}"], want, atol=1e-6, rtol=1e-6)

    def test_model_checkpoint_writes_a_loadable_trainer(self):
        method = methods.TRADES(
            harness.tiny_classifier(), train_attack=harness.pgd(objective="kl")
        )
        method.compile(optimizer=sgd())
        x, y = harness.tiny_data()
        path = os.path.join(self.get_temp_dir(), "checkpoint.keras")
        method.fit(
            x,
            y,
            batch_size=harness.BATCH,
            epochs=1,
            verbose=0,
            callbacks=[keras.callbacks.ModelCheckpoint(path)],
        )
        loaded = keras.saving.load_model(path)
        self.assertIsInstance(loaded, methods.TRADES)
        self.assertEqual(loaded.beta, method.beta)
        for want, got in zip(
            weights_of(method), weights_of(loaded), strict=True
        ):
            self.assertAllEqual(want, got)
        self.assertEqual(
            int(loaded.optimizer.iterations.numpy()),
            int(method.optimizer.iterations.numpy()),
        )

    def test_a_method_defined_elsewhere_is_registered_under_its_module(self):
        class Elsewhere(methods.Standard):
            pass

        self.assertEqual(
            keras.saving.get_registered_name(Elsewhere),
            f"{__name__}>Elsewhere",
        )
        self.assertEqual(
            keras.saving.get_registered_name(methods.PGDAT), "tfadv>PGDAT"
        )


class ExportTest(tf.test.TestCase):
    def test_a_trainer_exports_its_classifier_for_serving(self):
        method, x, _ = SavingTest()._trained()
        path = os.path.join(self.get_temp_dir(), "served")
        method.export(path, verbose=False)
        served = tf.saved_model.load(path)
        expected = method.classifier(x, training=False)
        self.assertAllClose(served.serve(x), expected, atol=1e-6)
        # The same function a plain Keras layer serves, without tfadv.
        layer = keras.layers.TFSMLayer(path, call_endpoint="serve")
        self.assertAllClose(layer(x), expected, atol=1e-6)


class MonitorTest(tf.test.TestCase):
    def _fit(self, method, callback):
        method.compile(optimizer=sgd())
        x, y = harness.tiny_data()
        return method.fit(
            x,
            y,
            batch_size=harness.BATCH,
            epochs=2,
            verbose=0,
            validation_data=(x, y),
            callbacks=[callback],
        )

    def test_a_robust_monitor_without_an_eval_attack_is_refused(self):
        method = methods.PGDAT(harness.tiny_classifier(), epsilon=EPS)
        before = weights_of(method)
        stop = keras.callbacks.EarlyStopping(
            monitor="val_robust_accuracy", mode="max"
        )
        with self.assertRaisesRegex(
            ValueError,
            r"EarlyStopping monitors 'val_robust_accuracy'.*no eval_attack",
        ):
            self._fit(method, stop)
        for a, b in zip(before, weights_of(method), strict=True):
            self.assertAllEqual(a, b)

    def test_a_robust_monitor_with_an_eval_attack_trains(self):
        method = methods.PGDAT(
            harness.tiny_classifier(),
            epsilon=EPS,
            eval_attack=harness.eval_attack(),
        )
        stop = keras.callbacks.EarlyStopping(
            monitor="val_robust_accuracy", mode="max"
        )
        history = self._fit(method, stop)
        self.assertLen(history.history["val_robust_accuracy"], 2)


class Interrupt(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 1:
            raise RuntimeError("interrupted")


def free_at(classifier):
    return methods.FreeAT(
        classifier,
        train_attack=harness.pgd(num_steps=2, start="none"),
        batch_size=harness.BATCH,
        seed=1,
    )


# Seeded, so that every run draws the same random starts.
BACKUP_METHODS = {
    "pgd_at": lambda c: methods.PGDAT(c, train_attack=harness.pgd(), seed=1),
    "n_fgsm": lambda c: methods.NFGSM(c, epsilon=EPS, seed=1),
    "grad_align": lambda c: methods.GradAlign(
        c, epsilon=EPS, align_weight=0.2, seed=1
    ),
    "fgsm_pgi": lambda c: methods.FGSMPGI(
        c, epsilon=EPS, num_examples=2 * harness.BATCH, reset_period=2, seed=1
    ),
    "free_at": free_at,
    "yopo": lambda c: methods.YOPO(
        c,
        m=2,
        train_attack=harness.yopo_attack(n=2),
        first_layer_lr=0.05,
        first_layer_lr_boundaries=[1],
        seed=1,
    ),
    "deat": lambda c: methods.DEAT(
        c,
        epsilon=EPS,
        step_controller=controllers.LinearGrowth(every=1, max_steps=8),
        seed=1,
    ),
    "gaat": lambda c: methods.GAAT(
        c, train_attack=harness.pgd(), tau=1e-9, monitor_size=2, seed=1
    ),
    "mplus_trades": lambda c: methods.TRADES(
        c,
        train_attack=harness.pgd(objective="kl"),
        step_controller=controllers.MPlus(max_steps=3, initial_steps=0),
        seed=1,
    ),
}


class BackupAndRestoreTest(tf.test.TestCase, parameterized.TestCase):
    def _fit(self, make, classifier, callbacks, epochs=2):
        method = make(classifier)
        method.compile(optimizer=sgd())
        x, y = harness.tiny_data()
        method.fit(
            harness.training_inputs(method, x),
            y,
            batch_size=harness.BATCH,
            epochs=epochs,
            verbose=0,
            shuffle=False,
            callbacks=[*method.callbacks(), *callbacks],
        )
        return method

    @parameterized.named_parameters(
        *[(name, name, False) for name in BACKUP_METHODS],
        ("pgd_at_subclassed", "pgd_at", True),
    )
    def test_an_interrupted_run_resumes_where_it_stopped(self, name, sub):
        make = BACKUP_METHODS[name]

        def classifier():
            if sub:
                return harness.subclassed_classifier(built=True)
            return harness.tiny_classifier()

        want = self._fit(make, classifier(), [])
        backup = os.path.join(self.get_temp_dir(), name)
        with self.assertRaisesRegex(RuntimeError, "interrupted"):
            self._fit(
                make,
                classifier(),
                [keras.callbacks.BackupAndRestore(backup), Interrupt()],
            )
        got = self._fit(
            make, classifier(), [keras.callbacks.BackupAndRestore(backup)]
        )
        self.assertEqual(
            int(got.minibatches.numpy()), int(want.minibatches.numpy())
        )
        for a, b in zip(weights_of(want), weights_of(got), strict=True):
            self.assertAllClose(a, b, atol=1e-5, rtol=1e-5)
        if name == "yopo":
            self.assertAllClose(
                got.first_layer_learning_rate, want.first_layer_learning_rate
            )


class CompileTest(tf.test.TestCase):
    def test_a_loss_is_refused(self):
        method = methods.PGDAT(
            harness.tiny_classifier(), train_attack=harness.pgd()
        )
        for kwargs in (
            {"loss": "sparse_categorical_crossentropy"},
            {"loss_weights": [1.0]},
        ):
            with self.assertRaisesRegex(
                ValueError, "PGDAT defines its own training loss.*refused"
            ):
                method.compile(optimizer=sgd(), **kwargs)

    def test_user_metrics_on_clean_adversarial_and_robust_logits(self):
        method = methods.PGDAT(
            harness.tiny_classifier(),
            train_attack=harness.pgd(),
            eval_attack=harness.eval_attack(),
        )
        method.compile(
            optimizer=sgd(),
            metrics=[
                "accuracy",
                "sparse_categorical_crossentropy",
                keras.metrics.SparseTopKCategoricalAccuracy(k=3, name="top3"),
            ],
            weighted_metrics=[
                keras.metrics.SparseCategoricalAccuracy(name="weighted_acc")
            ],
        )
        x, y = harness.tiny_data()
        history = method.fit(
            x, y, batch_size=harness.BATCH, epochs=1, verbose=0
        ).history
        names = ["crossentropy", "top3", "weighted_acc"]
        self.assertCountEqual(
            history,
            [
                "loss",
                "clean_accuracy",
                "adv_accuracy",
                *[f"clean_{n}" for n in names],
                *[f"adv_{n}" for n in names],
            ],
        )
        # Top-3 of 3 classes is always right; unit weights change nothing.
        self.assertEqual(history["adv_top3"], [1.0])
        self.assertEqual(history["adv_weighted_acc"], history["adv_accuracy"])
        logs = method.evaluate(
            x, y, batch_size=harness.BATCH, verbose=0, return_dict=True
        )
        self.assertCountEqual(
            logs,
            [
                "loss",
                "clean_accuracy",
                "robust_accuracy",
                *[f"clean_{n}" for n in names],
                *[f"robust_{n}" for n in names],
            ],
        )
        self.assertAllClose(
            logs["robust_weighted_acc"], logs["robust_accuracy"]
        )
        # The clean cross-entropy in inference mode is the validation loss.
        self.assertAllClose(logs["clean_crossentropy"], logs["loss"])

    def test_standard_clean_crossentropy_is_its_loss(self):
        method = methods.Standard(harness.tiny_classifier())
        method.compile(optimizer=keras.optimizers.SGD(0.0), metrics=["ce"])
        x, y = harness.tiny_data()
        history = method.fit(
            x, y, batch_size=len(x), epochs=1, verbose=0
        ).history
        self.assertAllClose(history["clean_crossentropy"], history["loss"])

    def test_clashing_or_structured_metrics_are_refused(self):
        method = methods.Standard(harness.tiny_classifier())
        with self.assertRaisesRegex(ValueError, "two values named"):
            method.compile(
                optimizer=sgd(),
                metrics=[keras.metrics.SparseCategoricalAccuracy("accuracy")],
            )
        with self.assertRaisesRegex(ValueError, "one list of metrics"):
            method.compile(optimizer=sgd(), metrics={"out": ["accuracy"]})
        with self.assertRaisesRegex(ValueError, "unknown metric"):
            method.compile(optimizer=sgd(), metrics=["no_such_metric"])


def linear_classifier(w, b):
    classifier = keras.Sequential(
        [keras.Input((w.shape[0],)), keras.layers.Dense(w.shape[1])]
    )
    classifier.layers[0].set_weights([w, b])
    return classifier


def fit_batch(method_fn, classifier, x, y, sample_weight=None, **fit_kwargs):
    """One SGD step on one batch; returns the classifier's weights."""
    method = method_fn(classifier)
    method.compile(optimizer=keras.optimizers.SGD(0.5))
    method.fit(
        x,
        y,
        sample_weight=sample_weight,
        batch_size=len(x),
        epochs=1,
        verbose=0,
        shuffle=False,
        **fit_kwargs,
    )
    return [v.numpy() for v in classifier.weights]


def none_start(**kwargs):
    """A deterministic training attack: no random start."""
    kwargs = {"start": "none", **kwargs}
    return harness.pgd(num_steps=2, **kwargs)


def kl_fixed_start(num_steps=2, step_size=0.05):
    """A deterministic KL attack from a fixed point off the clean one.

    At x' = x the KL's gradient is zero but for rounding, and signed steps
    of rounding noise differ between a batch and its half (they did on one
    CPU and not on another): the fixed start makes the first gradient real.
    """
    return harness.FixedStartPGD(
        start_fn=lambda x: harness.fixed_start(x, 0.02),
        epsilon=EPS,
        step_size=step_size,
        num_steps=num_steps,
        objective="kl",
    )


# Methods whose step is deterministic on the linear problem, so a batch
# weighted (2, 2, 2, 2, 0, 0, 0, 0) trains exactly as its first half.
DETERMINISTIC = {
    "standard": lambda c: methods.Standard(c),
    "pgd_at": lambda c: methods.PGDAT(
        c, train_attack=none_start(), clean_weight=0.3, weight_decay=0.01
    ),
    "fgsm_rs": lambda c: methods.FGSMRS(c, train_attack=none_start()),
    # No noise (k = 0): one step of ε from x, not projected back.
    "n_fgsm": lambda c: methods.NFGSM(
        c, train_attack=attacks.NoiseFGSM(epsilon=EPS, noise_factor=0.0)
    ),
    "free_at": lambda c: methods.FreeAT(
        c, train_attack=none_start(), batch_size=8
    ),
    "deat": lambda c: methods.DEAT(
        c,
        train_attack=none_start(),
        step_controller=controllers.LinearGrowth(every=1, max_steps=2),
    ),
    "trades": lambda c: methods.TRADES(c, train_attack=kl_fixed_start()),
    "mart": lambda c: methods.MART(c, train_attack=none_start()),
    "backward_smoothing": lambda c: methods.BackwardSmoothing(
        c,
        # γ = 0 and no TRADES step: the initialisation step is exactly 0
        # (KL steps from x itself would sign rounding noise).
        train_attack=attacks.BackwardSmoothingAttack(
            epsilon=EPS, gamma=0.0, num_steps=0
        ),
    ),
    "gaat_order_1": lambda c: methods.GAAT(c, train_attack=none_start()),
    "gaat_exact": lambda c: methods.GAAT(
        c, train_attack=none_start(), initial_phase="exact"
    ),
    "noisy_training_penalty": lambda c: methods.NoisyTraining(
        c, noise_scale=1e-9, gradient_penalty=0.1
    ),
}


class SampleWeightTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.named_parameters(*DETERMINISTIC.items())
    def test_a_weighted_batch_trains_as_its_weighted_part(self, method_fn):
        w, b, x, y = harness.linear_problem(seed=5)
        weights = np.array([2.0] * 4 + [0.0] * 4, "float32")
        got = fit_batch(method_fn, linear_classifier(w, b), x, y, weights)
        want = fit_batch(method_fn, linear_classifier(w, b), x[:4], y[:4])
        unweighted = fit_batch(method_fn, linear_classifier(w, b), x, y)
        for g, h in zip(got, want, strict=True):
            self.assertAllClose(g, h, atol=1e-5)
        self.assertNotAllClose(got[0], unweighted[0])

    @parameterized.named_parameters(
        ("yopo", methods.YOPO, "cross_entropy"),
        ("trades_yopo", methods.TRADESYOPO, "kl"),
    )
    def test_yopo_weighs_its_loss(self, cls, objective):
        weights, x, y = harness.dense_problem(seed=2)

        def method_fn(c):
            if objective == "kl":  # see kl_fixed_start
                attack = kl_fixed_start(step_size=0.02)
            else:
                attack = harness.yopo_attack(
                    n=2, start="none", objective=objective
                )
            return cls(c, m=2, train_attack=attack)

        sw = np.array([2.0] * 4 + [0.0] * 4, "float32")
        got = fit_batch(
            method_fn, harness.dense_classifier(weights, True), x, y, sw
        )
        want = fit_batch(
            method_fn, harness.dense_classifier(weights, True), x[:4], y[:4]
        )
        for g, h in zip(got, want, strict=True):
            self.assertAllClose(g, h, atol=1e-5)

    def test_sample_and_class_weights_match_plain_keras(self):
        w, b, x, y = harness.linear_problem(seed=6)
        class_weight = {0: 0.5, 1: 2.0, 2: 1.5}
        sample_weight = np.linspace(0.2, 2.0, len(x)).astype("float32")
        for kwargs in (
            {"sample_weight": sample_weight},
            {"class_weight": class_weight},
        ):
            plain = linear_classifier(w, b)
            plain.compile(
                optimizer=keras.optimizers.SGD(0.5),
                loss=keras.losses.SparseCategoricalCrossentropy(
                    from_logits=True
                ),
            )
            plain.fit(x, y, batch_size=len(x), epochs=1, verbose=0, **kwargs)
            got = fit_batch(
                methods.Standard, linear_classifier(w, b), x, y, **kwargs
            )
            for g, h in zip(got, plain.get_weights(), strict=True):
                self.assertAllClose(g, h, atol=1e-6)

    def test_weights_under_a_mirrored_strategy(self):
        w, b, x, y = harness.linear_problem(seed=5)
        sw = np.array([2.0] * 4 + [0.0] * 4, "float32")
        method_fn = DETERMINISTIC["trades"]
        with harness.mirrored().scope():
            classifier = linear_classifier(w, b)
            got = fit_batch(method_fn, classifier, x, y, sw)
        want = fit_batch(method_fn, linear_classifier(w, b), x[:4], y[:4])
        for g, h in zip(got, want, strict=True):
            self.assertAllClose(g, h, atol=1e-5)

    def test_a_matrix_of_weights_is_refused(self):
        x, y = harness.tiny_data()
        method = methods.Standard(harness.tiny_classifier())
        method.compile(optimizer=sgd())
        with self.assertRaisesRegex(ValueError, r"sample_weight.*\(batch,\)"):
            method.fit(
                x, y, sample_weight=np.ones((len(x), 3)), epochs=1, verbose=0
            )


class LabelTest(tf.test.TestCase, parameterized.TestCase):
    def _fit(self, labels, **kwargs):
        w, b, x, _ = harness.linear_problem(seed=7)
        return fit_batch(
            lambda c: methods.PGDAT(c, train_attack=none_start(), **kwargs),
            linear_classifier(w, b),
            x,
            labels,
        )

    def test_one_hot_and_whole_float_labels_train_as_integer_labels(self):
        _, _, _, y = harness.linear_problem(seed=7)
        want = self._fit(y)
        for labels in (
            np.eye(3, dtype="float32")[y],
            np.eye(3, dtype="int32")[y],
            y.astype("float32"),
            y[:, None],
        ):
            for a, b in zip(self._fit(labels), want, strict=True):
                self.assertAllClose(a, b, atol=1e-6)

    @parameterized.named_parameters(
        ("fractional", lambda y: y + 0.7, "whole-number"),
        ("soft", lambda y: np.full((len(y), 3), 1 / 3), "single 1 per row"),
        ("two_ones", lambda y: np.ones((len(y), 3)), "single 1 per row"),
        ("out_of_range", lambda y: y + 3, r"outputs 3 logits"),
        ("negative", lambda y: y - 3, r"\[0, num_classes\)"),
    )
    def test_bad_label_values_fail_the_step(self, make, message):
        _, _, _, y = harness.linear_problem(seed=7)
        labels = make(y.astype("float32"))
        # fit checks the labels eagerly first (one ValueError paragraph);
        # the same values in a later batch fail the step's assertion.
        with self.assertRaisesRegex(ValueError, message):
            self._fit(labels)
        w, b, x, _ = harness.linear_problem(seed=7)
        trainer = methods.PGDAT(
            linear_classifier(w, b), train_attack=none_start()
        )
        trainer.compile(optimizer=keras.optimizers.SGD(0.1))
        good = np.eye(3, dtype="float32")[y] if labels.ndim == 2 else y
        dataset = tf.data.Dataset.from_tensor_slices(
            (np.stack([x, x]), np.stack([good.astype("float32"), labels]))
        )
        with self.assertRaisesRegex(tf.errors.InvalidArgumentError, message):
            trainer.fit(dataset, epochs=1, verbose=0, shuffle=False)

    def test_labels_of_the_wrong_shape_are_refused(self):
        _, _, _, y = harness.linear_problem(seed=7)
        with self.assertRaisesRegex(ValueError, r"one-hot rows of shape"):
            self._fit(np.eye(5, dtype="float32")[y])
        with self.assertRaisesRegex(ValueError, r"one-hot rows of shape"):
            self._fit(y.reshape(-1, 1, 1))


class FinalSoftmax(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(harness.NUM_CLASSES)

    def call(self, x, training=False):
        return tf.nn.softmax(self.dense(keras.layers.Flatten()(x)))


def make_any(cls, classifier):
    """`cls` on `classifier` with a budget when it takes one."""
    if cls in (methods.Standard, methods.NoisyTraining):
        return cls(classifier)
    return cls(classifier, epsilon=EPS, **REQUIRED.get(cls, {}))


ALL_METHODS = [methods.Standard, methods.NoisyTraining, *WITH_ATTACK]


class ClassifierTest(tf.test.TestCase, parameterized.TestCase):
    def _model(self, activation=None, units=harness.NUM_CLASSES):
        inputs = keras.Input(harness.INPUT_SHAPE)
        h = keras.layers.Conv2D(4, 3, name="first_layer")(inputs)
        h = keras.layers.Flatten()(h)
        outputs = keras.layers.Dense(units, activation=activation)(h)
        return keras.Model(inputs, outputs)

    @parameterized.parameters(*ALL_METHODS)
    def test_a_softmax_output_is_refused(self, cls):
        with self.assertRaisesRegex(
            ValueError, "outputs logits.*softmax activation.*Remove"
        ):
            make_any(cls, self._model("softmax"))

    def test_probabilities_of_a_subclassed_model_are_refused(self):
        model = FinalSoftmax()
        model(np.zeros((1, *harness.INPUT_SHAPE), "float32"))
        with self.assertRaisesRegex(ValueError, "look like probabilities"):
            methods.PGDAT(model, epsilon=EPS)
        # Unbuilt: refused at the first step.
        method = methods.PGDAT(FinalSoftmax(), epsilon=EPS)
        method.compile(optimizer=sgd())
        x, y = harness.tiny_data()
        with self.assertRaisesRegex(ValueError, "look like probabilities"):
            method.fit(x, y, batch_size=harness.BATCH, epochs=1, verbose=0)

    def test_outputs_that_are_not_one_logit_per_class_are_refused(self):
        with self.assertRaisesRegex(ValueError, "1 value per example.*two"):
            methods.PGDAT(self._model(units=1), epsilon=EPS)
        inputs = keras.Input(harness.INPUT_SHAPE)
        spatial = keras.Model(inputs, keras.layers.Conv2D(3, 1)(inputs))
        with self.assertRaisesRegex(ValueError, r"shape \(2, 8, 8, 3\)"):
            methods.Standard(spatial)

    def test_a_subclassed_classifier_trains_as_the_functional_one(self):
        functional = harness.tiny_classifier()
        subclassed = harness.subclassed_classifier(built=True)
        subclassed.set_weights(functional.get_weights())
        x, y = harness.tiny_data()
        got = fit_batch(
            lambda c: methods.PGDAT(c, train_attack=none_start(eps=EPS)),
            subclassed,
            x,
            y,
        )
        want = fit_batch(
            lambda c: methods.PGDAT(c, train_attack=none_start(eps=EPS)),
            functional,
            x,
            y,
        )
        for a, b in zip(got, want, strict=True):
            self.assertAllClose(a, b, atol=1e-5)

    def test_an_unbuilt_subclassed_classifier_under_mirrored(self):
        x, y = harness.tiny_data()
        with harness.mirrored().scope():
            method = methods.PGDAT(
                harness.subclassed_classifier(), train_attack=harness.pgd()
            )
            method.compile(optimizer=sgd())
        self.assertFalse(method.built)
        history = method.fit(
            x, y, batch_size=harness.BATCH, epochs=1, verbose=0
        ).history
        self.assertEqual(method.num_classes, harness.NUM_CLASSES)
        self.assertTrue(np.isfinite(history["loss"][0]))

    def test_built_at_construction_when_the_classifier_is(self):
        self.assertTrue(
            methods.Standard(harness.subclassed_classifier(built=True)).built
        )
        self.assertFalse(
            methods.Standard(harness.subclassed_classifier()).built
        )

    def test_yopo_summary_counts_each_weight_once(self):
        classifier = harness.tiny_classifier()
        method = methods.YOPO(classifier, train_attack=harness.yopo_attack())
        self.assertEqual([layer.name for layer in method.layers], ["tiny"])
        out = io.StringIO()
        method.summary(print_fn=lambda line, **_: out.write(line + "\n"))
        self.assertEqual(out.getvalue().count("Functional"), 1)
        # The classifier's weights once, and the minibatch counter.
        self.assertEqual(method.count_params(), classifier.count_params() + 1)


class BudgetTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters(*WITH_ATTACK.items())
    def test_a_training_budget_is_required(self, cls, paper):
        message = rf"{cls.__name__} needs its training budget: give epsilon="
        if paper is not None:
            message += rf".*paper trains at {paper:.4g}"
        with self.assertRaisesRegex(ValueError, message):
            cls(harness.tiny_classifier())
        self.assertAllClose(
            make_any(cls, harness.tiny_classifier()).epsilon, EPS
        )

    @parameterized.parameters(methods.Standard, methods.NoisyTraining)
    def test_methods_without_an_attack_need_none(self, cls):
        self.assertIsNone(cls(harness.tiny_classifier()).epsilon)
