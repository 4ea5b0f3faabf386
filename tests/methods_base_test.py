"""The method contract of `tfadv.methods.base.AdversarialTrainer`.

The training attack and its budget, the epoch hooks and `callbacks()`, step
counts that change between epochs (and really change the traced step), the
minibatch counter and `PerMinibatch`, the input gradient of the update's own
backward pass, and the README's "Writing a new method" example.
"""

import os
import re

import keras
import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from tests import harness
from tfadv import attacks
from tfadv import methods
from tfadv import schedules
from tfadv.methods import base

README = os.path.join(os.path.dirname(os.path.dirname(__file__)), "README.md")

# Every method with a training attack, and its paper's budget.
WITH_ATTACK = {
    methods.PGDAT: 8 / 255,
    methods.FGSMRS: 8 / 255,
    methods.NFGSM: 8 / 255,
    methods.GradAlign: 8 / 255,
    methods.FGSMPGI: 8 / 255,
    methods.FreeAT: 8 / 255,
    methods.TRADES: 0.031,
    methods.MART: 0.031,
    methods.YOPO: 8 / 255,
    methods.TRADESYOPO: 0.031,
}
# What a method requires besides its budget (GradAlign's λ has no default,
# FGSM-PGI's buffers need the training set's size).
REQUIRED = {
    methods.GradAlign: {"align_weight": 0.2},
    methods.FGSMPGI: {"num_examples": 2 * harness.BATCH},
}


def pgd(eps=0.1, steps=3, **kwargs):
    return attacks.ProjectedGradient(
        epsilon=eps, step_size=eps / 2, num_steps=steps, **kwargs
    )


class CountProbe(methods.Standard):
    """Standard training that reports the count its step was traced with."""

    def __init__(self, classifier, **kwargs):
        super().__init__(classifier, **kwargs)
        self.add_step_count("probe", 1)
        self.plan = {}

    def on_epoch_begin(self, epoch):
        if epoch in self.plan:
            self.set_step_count("probe", self.plan[epoch])

    def minibatch_update(self, x, y):
        logs = super().minibatch_update(x, y)
        return {**logs, "traced_count": tf.constant(self.step_count("probe"))}


class TrainAttackTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters(*WITH_ATTACK.items())
    def test_paper_default_at_the_paper_budget(self, cls, budget):
        # The budget is dataset-specific, so it is required, never a
        # default: the error names the paper's.
        with self.assertRaisesRegex(
            ValueError, rf"needs its training budget.*{budget:.4g}"
        ):
            cls(harness.tiny_classifier())
        self.assertAllClose(cls.paper_epsilon, budget)
        method = cls(
            harness.tiny_classifier(), epsilon=budget, **REQUIRED.get(cls, {})
        )
        self.assertIsInstance(method.train_attack, attacks.Attack)
        self.assertAllClose(method.epsilon, budget)
        self.assertIs(method.threat_model, method.train_attack.threat_model)

    @parameterized.parameters(*WITH_ATTACK)
    def test_default_attack_scales_to_epsilon(self, cls):
        method = cls(
            harness.tiny_classifier(), epsilon=0.1, **REQUIRED.get(cls, {})
        )
        self.assertAllClose(method.epsilon, 0.1)
        self.assertAllClose(method.train_attack.epsilon, 0.1)

    @parameterized.parameters(*WITH_ATTACK)
    def test_epsilon_and_attack_must_agree(self, cls):
        objective = "kl" if cls is methods.TRADESYOPO else "cross_entropy"
        attack = pgd(eps=0.3, objective=objective)
        if cls is methods.FGSMPGI:  # one step from the prior
            attack = pgd(eps=0.3, steps=1, start="none")
        with self.assertRaisesRegex(ValueError, r"epsilon=0\.1.*0\.3"):
            cls(harness.tiny_classifier(), epsilon=0.1, train_attack=attack)
        # The same budget twice is fine.
        method = cls(
            harness.tiny_classifier(),
            epsilon=0.3,
            train_attack=attack,
            **REQUIRED.get(cls, {}),
        )
        self.assertIs(method.train_attack, attack)

    def test_any_attack_for_template_methods(self):
        apgd = attacks.APGD(epsilon=0.1, num_steps=3)
        method = methods.TRADES(harness.tiny_classifier(), train_attack=apgd)
        self.assertIs(method.train_attack, apgd)
        # An attack on the labels gets the labels as its target.
        y = tf.constant([0, 1, 2, 0])
        x = tf.zeros((4, *harness.INPUT_SHAPE))
        self.assertIs(method.attack_target(x, y), y)

    def test_kl_attack_gets_the_clean_distribution(self):
        classifier = harness.tiny_classifier()
        method = methods.TRADES(classifier, epsilon=0.1)
        x, y = harness.tiny_data(4)
        target = method.attack_target(x, y)
        self.assertAllClose(
            target, tf.nn.softmax(classifier(x, training=False))
        )

    @parameterized.parameters(methods.FreeAT, methods.YOPO)
    def test_fused_methods_need_projected_gradient(self, cls):
        with self.assertRaisesRegex(TypeError, "ProjectedGradient"):
            cls(
                harness.tiny_classifier(),
                train_attack=attacks.APGD(epsilon=0.1, num_steps=3),
            )

    def test_yopo_costate_objective_is_checked(self):
        with self.assertRaisesRegex(ValueError, "costate.*cross_entropy"):
            methods.YOPO(
                harness.tiny_classifier(),
                train_attack=pgd(objective="margin"),
            )

    def test_standard_refuses_an_unused_budget(self):
        with self.assertRaisesRegex(ValueError, "without an attack"):
            methods.Standard(harness.tiny_classifier(), epsilon=0.1)
        method = methods.Standard(harness.tiny_classifier())
        self.assertIsNone(method.epsilon)
        self.assertIsNone(method.train_attack)

    def test_a_non_attack_is_refused(self):
        with self.assertRaisesRegex(TypeError, "train_attack"):
            methods.PGDAT(harness.tiny_classifier(), train_attack="pgd")


class HooksTest(tf.test.TestCase):
    def test_callbacks_are_stable_and_start_with_the_hook_caller(self):
        method = methods.PGDAT(harness.tiny_classifier(), epsilon=0.1)
        first, second = method.callbacks(), method.callbacks()
        self.assertIsInstance(first[0], base.EpochHooks)
        self.assertEqual([id(c) for c in first], [id(c) for c in second])
        self.assertEqual(method.results_info(), {})

    def test_on_epoch_end_values_reach_the_history(self):
        class Reporter(methods.Standard):
            def on_epoch_end(self, epoch, logs=None):
                return {"epoch_squared": float(epoch**2)}

        method = Reporter(harness.tiny_classifier())
        method.compile(optimizer=keras.optimizers.SGD(0.1))
        x, y = harness.tiny_data()
        history = method.fit(
            x,
            y,
            batch_size=harness.BATCH,
            epochs=3,
            verbose=0,
            callbacks=method.callbacks(),
        )
        self.assertEqual(history.history["epoch_squared"], [0.0, 1.0, 4.0])


class CountingHooks(methods.Standard):
    """Counts its epoch hooks and reports the count in the epoch's logs."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.begins = 0

    def on_epoch_begin(self, epoch):
        self.begins += 1

    def on_epoch_end(self, epoch, logs=None):
        return {"begins": float(self.begins)}


class LogsSeen(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seen = []

    def on_epoch_end(self, epoch, logs=None):
        self.seen.append(logs.get("begins"))


def _plain_fit(method, epochs=2, **kwargs):
    method.compile(optimizer=keras.optimizers.SGD(0.1))
    x, y = harness.tiny_data()
    return method.fit(
        x, y, batch_size=harness.BATCH, epochs=epochs, verbose=0, **kwargs
    )


def _with_hooks(name):
    """A trainer whose behaviour depends on its epoch hooks, and its log."""
    classifier = harness.tiny_classifier()
    if name == "deat":
        return methods.DEAT(
            classifier, train_attack=harness.pgd(num_steps=3)
        ), "mplus/steps"
    if name == "mplus":
        controller = methods.controllers.MPlus(initial_steps=0)
        return methods.PGDAT(
            classifier, epsilon=0.1, step_controller=controller
        ), "mplus/steps"
    if name == "linear":
        controller = methods.controllers.LinearGrowth(every=1, max_steps=3)
        return methods.DEAT(
            classifier,
            train_attack=harness.pgd(num_steps=3),
            step_controller=controller,
        ), "linear/steps"
    if name == "yopo":
        return methods.YOPO(
            classifier,
            m=2,
            train_attack=harness.yopo_attack(0.1, 0.02, 3),
            first_layer_lr=0.2,
            first_layer_lr_boundaries=[1],
        ), "first_layer_learning_rate"
    return methods.GAAT(classifier, epsilon=0.1), "gaat/remainder"


class PlainFitTest(tf.test.TestCase, parameterized.TestCase):
    """A plain `fit` runs the method's callbacks, once, as Keras users call
    it: without a `callbacks` argument, with their own, or with both."""

    def test_hooks_run_once_however_fit_is_called(self):
        method = CountingHooks(harness.tiny_classifier())
        history = _plain_fit(method)
        self.assertEqual(history.history["begins"], [1.0, 2.0])
        history = _plain_fit(method, callbacks=method.callbacks())
        self.assertEqual(history.history["begins"], [3.0, 4.0])
        seen = LogsSeen()
        both = [seen, *method.callbacks()]
        history = _plain_fit(method, callbacks=both)
        self.assertEqual(history.history["begins"], [5.0, 6.0])
        # An order the user chose is kept: theirs ran before the hooks.
        self.assertEqual(seen.seen, [None, None])
        seen = LogsSeen()
        _plain_fit(method, callbacks=keras.callbacks.CallbackList([seen]))
        self.assertEqual(seen.seen, [7.0, 8.0])

    def test_the_method_hooks_run_before_the_users_callbacks(self):
        method = CountingHooks(harness.tiny_classifier())
        seen = LogsSeen()
        _plain_fit(method, callbacks=(seen,))
        # The user's callback read what the method's hook added.
        self.assertEqual(seen.seen, [1.0, 2.0])

    @parameterized.parameters("deat", "mplus", "linear", "yopo", "gaat")
    def test_plain_fit_equals_fit_with_the_callbacks(self, name):
        plain, log = _with_hooks(name)
        explicit, _ = _with_hooks(name)
        plain_history = _plain_fit(plain, epochs=3, shuffle=False)
        explicit_history = _plain_fit(
            explicit, epochs=3, shuffle=False, callbacks=explicit.callbacks()
        )
        self.assertIn(log, plain_history.history)
        self.assertEqual(
            plain_history.history[log], explicit_history.history[log]
        )
        for a, b in zip(plain.weights, explicit.weights, strict=True):
            self.assertAllClose(a, b, msg=a.path)

    def test_linear_growth_grows_under_a_plain_fit(self):
        method, log = _with_hooks("linear")
        history = _plain_fit(method, epochs=4, shuffle=False)
        self.assertEqual(history.history[log], [1, 2, 3, 3])


class StepCountTest(tf.test.TestCase):
    def _fit(self, method, epochs, **compile_kwargs):
        method.compile(optimizer=keras.optimizers.SGD(0.1), **compile_kwargs)
        x, y = harness.tiny_data()
        return method.fit(
            x,
            y,
            batch_size=harness.BATCH,
            epochs=epochs,
            verbose=0,
            callbacks=method.callbacks(),
        )

    def test_a_changed_count_changes_the_traced_step(self):
        method = CountProbe(harness.tiny_classifier())
        method.plan = {1: 3, 3: 2}
        history = self._fit(method, 4)
        self.assertEqual(history.history["traced_count"], [1, 3, 3, 2])

    def test_an_unchanged_count_does_not_retrace(self):
        method = CountProbe(harness.tiny_classifier())
        self._fit(method, 1)
        function = method.train_function
        self.assertFalse(method.retrace_if_counts_changed())
        self.assertIs(method.train_function, function)
        method.set_step_count("probe", 5)
        self.assertTrue(method.retrace_if_counts_changed())
        self.assertIsNot(method.train_function, function)

    def test_eager_steps_read_the_count_every_time(self):
        method = CountProbe(harness.tiny_classifier())
        method.plan = {1: 4}
        history = self._fit(method, 2, run_eagerly=True)
        self.assertEqual(history.history["traced_count"], [1, 4])

    def test_count_is_checkpointed(self):
        method = CountProbe(harness.tiny_classifier())
        method.plan = {0: 7}
        self._fit(method, 1)
        path = os.path.join(self.get_temp_dir(), "probe.weights.h5")
        method.save_weights(path)
        restored = CountProbe(harness.tiny_classifier())
        restored.build((None, *harness.INPUT_SHAPE))
        restored.load_weights(path)
        self.assertEqual(restored.step_count("probe"), 7)

    def test_bad_count_is_refused(self):
        method = CountProbe(harness.tiny_classifier())
        with self.assertRaisesRegex(ValueError, "probe"):
            method.set_step_count("probe", -1)


class MinibatchCounterTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters("default", "mirrored")
    def test_counts_minibatches_not_updates(self, strategy):
        strategy = harness.strategy(strategy)
        replays = 3
        with strategy.scope():
            method = methods.FreeAT(
                harness.tiny_classifier(),
                train_attack=pgd(steps=replays, start="none"),
                batch_size=harness.BATCH,
            )
            schedule = schedules.PerMinibatch(
                schedules.PiecewiseLinear([0, 10], [0.0, 1.0])
            )
            method.compile(optimizer=keras.optimizers.SGD(schedule))
        self.assertIs(schedule.counter, method.minibatches)
        x, y = harness.tiny_data(3 * harness.BATCH)
        method.fit(x, y, batch_size=harness.BATCH, epochs=1, verbose=0)
        self.assertEqual(int(method.minibatches.numpy()), 3)
        self.assertEqual(int(method.optimizer.iterations.numpy()), 9)
        # The rate of the next minibatch: the schedule at minibatch 3.
        self.assertAllClose(method.optimizer.learning_rate, 0.3)

    def test_unbound_per_minibatch_schedule_is_refused(self):
        schedule = schedules.PerMinibatch(0.1)
        with self.assertRaisesRegex(ValueError, "minibatch counter"):
            schedule(0)


class InputGradientTest(tf.test.TestCase):
    def test_input_gradient_of_the_update_backward(self):
        w, b, x, y = harness.linear_problem(seed=7)
        grads = {}

        class Probe(methods.Standard):
            def minibatch_update(self, x, y):
                with tf.GradientTape() as tape:
                    tape.watch(x)
                    logits = self.classifier(x, training=True)
                    loss = self.cross_entropy(y, logits)
                    scaled = self.scale_loss(loss)
                _, grads["x"] = self.apply_gradients(tape, scaled, inputs=x)
                return {"loss": loss}

        classifier = keras.Sequential(
            [keras.Input((w.shape[0],)), keras.layers.Dense(w.shape[1])]
        )
        classifier.layers[0].set_weights([w, b])
        method = Probe(classifier)
        method.compile(optimizer=keras.optimizers.SGD(0.0), run_eagerly=True)
        method.fit(x, y, batch_size=len(x), epochs=1, verbose=0, shuffle=False)
        p = harness.softmax(x @ w + b)
        want = (p - np.eye(w.shape[1])[y]) @ w.T / len(x)
        self.assertAllClose(grads["x"], want, atol=1e-6)


class ReadmeExampleTest(tf.test.TestCase):
    def test_writing_a_new_method_example_runs(self):
        with open(README) as f:
            text = f.read()
        section = text[text.index("### Writing a new method") :]
        code = re.search(r"```python\n(.*?)```", section, re.S)[1]
        rng = np.random.default_rng(0)
        images = rng.uniform(size=(64, 28, 28, 1)).astype("float32")
        labels = rng.integers(0, 10, size=64).astype("int32")
        train_ds = tf.data.Dataset.from_tensor_slices((images, labels))
        namespace = {
            "__name__": "readme_example",
            "train_ds": train_ds.batch(32),
        }
        exec(compile(code, "README.md", "exec"), namespace)
        history = namespace["history"].history
        self.assertEqual(history["curriculum_steps"], [1, 2, 3])
        trainer = namespace["trainer"]
        self.assertEqual(trainer.traced_step_counts["curriculum_steps"], 3)
        self.assertEqual(int(trainer.minibatches.numpy()), 6)
