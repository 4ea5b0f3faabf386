"""tfadv.methods.controllers: M+, DEAT-d, DEAT-p, and their attachment.

Scripted M values reproduce the replay schedule of DEAT's reference
training log (docs/algorithms.md §2.2); the rule's order, strictness and
cap; bad input; M+ driving the attack steps of PGD-AT, TRADES and MART.
"""

import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from tests import harness
from tfadv import attacks
from tfadv import methods
from tfadv.methods import controllers

# r in each of the 50 epochs of TrustAI/DEAT's mdeat_out/output_pre.log.
REFERENCE_LOG = (
    [1] + [2] * 2 + [3] * 5 + [4] * 19 + [5] * 2 + [6] * 13 + [7] * 2 + [8] * 6
)


class Driven:
    """What a trainer does with a controller: it keeps and sets the count."""

    def __init__(self, controller, max_steps=8):
        controller.create_state(controller.max_steps or max_steps)
        self.controller = controller
        self.steps = controller.initial_steps

    def begin(self, epoch):
        self.steps = self.controller.on_epoch_begin(epoch, self.steps)

    def end(self, epoch, logs=None):
        self.steps, values = self.controller.on_epoch_end(
            epoch, self.steps, logs
        )
        return values


def run_script(driven, magnitudes):
    """Feeds M_t to the controller; returns the count used in each epoch."""
    used, thresholds = [], []
    for epoch, magnitude in enumerate(magnitudes):
        driven.begin(epoch)
        driven.controller.observe(tf.constant(magnitude, tf.float32))
        logs = driven.end(epoch, {})
        used.append(logs["mplus/steps"])
        thresholds.append(logs["mplus/threshold"])
    return used, thresholds


class MPlusTest(tf.test.TestCase):
    def test_reproduces_the_reference_log(self):
        gamma = 1.01
        controller = controllers.MPlus(gamma=gamma, max_steps=8)
        driven = Driven(controller)
        # A rising M: just above the threshold in the epochs after which the
        # log shows r growing, just below it otherwise.
        grows_after = {
            t for t in range(49) if REFERENCE_LOG[t + 1] > REFERENCE_LOG[t]
        }
        self.assertEqual(grows_after, {0, 2, 7, 26, 28, 41, 43})
        magnitudes, threshold = [100.0, 100.0], gamma * 100.0
        for t in range(2, 50):
            rise = 1.001 if t in grows_after else 0.999
            magnitudes.append(threshold * rise)
            if t in grows_after:
                threshold = gamma * magnitudes[-1]
        used, thresholds = run_script(driven, magnitudes)
        self.assertEqual(used, REFERENCE_LOG)
        self.assertAllClose(np.mean(used), 4.9, atol=0.05)
        self.assertEqual(thresholds[0], 0.0)  # not set after epoch 0
        self.assertAllClose(thresholds[1], gamma * 100.0)
        self.assertAllClose(thresholds[-1], threshold)

    def test_order_strictness_and_cap(self):
        controller = controllers.MPlus(gamma=1.0, max_steps=3)
        driven = Driven(controller)
        # Epoch 0: forced +1 whatever M; epoch 1: only the threshold (10),
        # even with a huge M; epoch 2: M equal to it, no growth (strict);
        # epochs 3 and 4: growth; epoch 5: capped at 3.
        used, thresholds = run_script(
            driven, [1.0, 10.0, 10.0, 11.0, 12.0, 99.0]
        )
        self.assertEqual(used, [1, 2, 2, 2, 3, 3])
        self.assertEqual(driven.steps, 3)
        self.assertAllClose(thresholds, [0.0, 10.0, 10.0, 11.0, 11.0, 11.0])

    def test_magnitude_restarts_every_epoch(self):
        controller = controllers.MPlus()
        driven = Driven(controller)
        driven.begin(0)
        controller.observe(tf.constant(2.0))
        controller.observe(tf.constant(3.0))
        self.assertAllClose(controller.magnitude, 5.0)
        driven.begin(1)
        self.assertAllClose(controller.magnitude, 0.0)

    def test_bad_arguments(self):
        with self.assertRaisesRegex(ValueError, "max_steps.*0"):
            controllers.MPlus(max_steps=0)
        with self.assertRaisesRegex(ValueError, "gamma.*0"):
            controllers.MPlus(gamma=0.0)
        with self.assertRaisesRegex(ValueError, "gamma"):
            controllers.MPlus(gamma=-1.0)
        with self.assertRaisesRegex(ValueError, "initial_steps"):
            controllers.MPlus(max_steps=2, initial_steps=3)


class OtherRulesTest(tf.test.TestCase):
    def test_linear_growth_is_deat_d(self):
        driven = Driven(controllers.LinearGrowth(every=3, max_steps=5))
        used = []
        for epoch in range(16):
            driven.begin(epoch)
            used.append(driven.end(epoch)["linear/steps"])
        self.assertEqual(used, [1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4, 5, 5, 5, 5])

    def test_accuracy_trigger_is_deat_p(self):
        driven = Driven(controllers.AccuracyTrigger(threshold=0.4, max_steps=3))
        used = []
        for epoch, accuracy in enumerate([0.3, 0.41, 0.4, 0.5, 0.9, 0.9]):
            logs = driven.end(epoch, {"adv_accuracy": accuracy})
            used.append(logs["accuracy_trigger/steps"])
        self.assertEqual(used, [1, 1, 2, 2, 3, 3])
        with self.assertRaisesRegex(ValueError, "adv_accuracy"):
            driven.end(6, {"loss": 1.0})

    def test_controlled_step_size(self):
        self.assertAllClose(
            controllers.controlled_step_size(0.1, 2, 0.02), 0.05
        )
        self.assertAllClose(
            controllers.controlled_step_size(0.1, 8, 0.02), 0.02
        )
        self.assertAllClose(
            controllers.controlled_step_size(0.1, 0, 0.02), 0.02
        )


class AttachTest(tf.test.TestCase, parameterized.TestCase):
    def test_methods_without_a_step_count_refuse_a_controller(self):
        for make in (
            lambda c: methods.Standard(c, step_controller=controllers.MPlus()),
            lambda c: methods.YOPO(
                c, epsilon=0.1, step_controller=controllers.MPlus()
            ),
            lambda c: methods.FreeAT(
                c, epsilon=0.1, step_controller=controllers.MPlus()
            ),
        ):
            with self.assertRaisesRegex(ValueError, "no step count"):
                make(harness.tiny_classifier())

    def test_cap_must_be_the_attacks_steps(self):
        with self.assertRaisesRegex(ValueError, "max_steps=5.*7"):
            methods.PGDAT(
                harness.tiny_classifier(),
                epsilon=0.1,
                step_controller=controllers.MPlus(max_steps=5),
            )

    def test_attack_needs_steps_and_a_step_size(self):
        square = attacks.Square(epsilon=0.1, num_queries=10)
        with self.assertRaisesRegex(ValueError, "num_steps and step_size"):
            methods.PGDAT(
                harness.tiny_classifier(),
                train_attack=square,
                step_controller=controllers.MPlus(),
            )

    def test_one_controller_per_trainer(self):
        controller = controllers.MPlus(max_steps=7)
        methods.PGDAT(
            harness.tiny_classifier(), epsilon=0.1, step_controller=controller
        )
        with self.assertRaisesRegex(ValueError, "already drives"):
            methods.PGDAT(
                harness.tiny_classifier(),
                epsilon=0.1,
                step_controller=controller,
            )

    def test_a_non_controller_is_refused(self):
        with self.assertRaisesRegex(TypeError, "StepController"):
            methods.PGDAT(
                harness.tiny_classifier(), epsilon=0.1, step_controller=3
            )


class MPlusOnAttackStepsTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters(
        (methods.PGDAT, 7), (methods.TRADES, 10), (methods.MART, 10)
    )
    def test_harness(self, cls, steps):
        harness.run_method_test(
            self,
            lambda c: cls(
                c,
                epsilon=0.1,
                step_controller=controllers.MPlus(
                    max_steps=steps, initial_steps=0
                ),
            ),
        )

    def test_steps_and_step_size_follow_the_count(self):
        method = methods.PGDAT(
            harness.tiny_classifier(),
            train_attack=attacks.ProjectedGradient(
                epsilon=0.1, step_size=0.01, num_steps=7
            ),
            step_controller=controllers.MPlus(max_steps=7, initial_steps=0),
        )
        attack = method.current_train_attack()
        self.assertEqual(attack.num_steps, 0)
        method.set_step_count("attack_steps", 4)
        attack = method.current_train_attack()
        self.assertEqual(attack.num_steps, 4)
        self.assertAllClose(attack.step_size, 0.1 / 4)
        method.set_step_count("attack_steps", 7)
        self.assertAllClose(method.current_train_attack().step_size, 0.1 / 7)

    @parameterized.parameters("default", "mirrored")
    def test_magnitude_is_the_update_input_gradient(self, strategy):
        # k = 0 steps from no start: x_adv = x, and M is ‖∇ₓ mean CE‖₁.
        w, b, x, y = harness.linear_problem(seed=8)
        controller = controllers.MPlus(max_steps=3, initial_steps=0)
        harness.fit_linear(
            lambda c: methods.PGDAT(
                c,
                train_attack=harness.pgd(num_steps=3, start="none"),
                step_controller=controller,
            ),
            w,
            b,
            x,
            y,
            lr=0.0,
            strategy=harness.strategy(strategy),
        )
        p = harness.softmax(x @ w + b)
        want = np.abs((p - harness.onehot(y, w.shape[1])) @ w.T).sum() / len(x)
        self.assertAllClose(controller.magnitude, want, rtol=1e-5)


class OwnStateTest(tf.test.TestCase):
    """A controller owns its state and holds no reference to its trainer."""

    def test_cap_comes_from_the_training_attack(self):
        controller = controllers.MPlus(initial_steps=0)
        self.assertIsNone(controller.max_steps)
        methods.PGDAT(
            harness.tiny_classifier(),
            train_attack=harness.pgd(num_steps=5),
            step_controller=controller,
        )
        self.assertEqual(controller.max_steps, 5)
        deat = methods.DEAT(harness.tiny_classifier(), epsilon=0.1)
        self.assertEqual(deat.step_controller.max_steps, 8)
        self.assertEqual(
            controllers.LinearGrowth().get_config()["max_steps"], None
        )

    def test_state_is_the_controllers_own(self):
        controller = controllers.MPlus(initial_steps=0)
        trainer = methods.PGDAT(
            harness.tiny_classifier(), epsilon=0.1, step_controller=controller
        )
        self.assertEqual(
            sorted(v.path for v in controller.variables),
            ["mplus/magnitude", "mplus/threshold"],
        )
        self.assertIn("mplus/magnitude", trainer.mutable_state_paths)
        self.assertNotIn("mplus/threshold", trainer.mutable_state_paths)
        held = [
            value
            for value in vars(controller).values()
            if isinstance(value, methods.AdversarialTrainer)
        ]
        self.assertEqual(held, [])
        self.assertFalse(hasattr(trainer, "mplus_magnitude"))
        # The count is the trainer's, set from the controller's decision.
        self.assertEqual(trainer.step_count(methods.base.ATTACK_STEPS), 0)
        hooks = trainer.callbacks()[0]
        hooks.on_epoch_begin(0)
        logs = {}
        hooks.on_epoch_end(0, logs)
        self.assertEqual(logs["mplus/steps"], 0)
        self.assertEqual(trainer.step_count(methods.base.ATTACK_STEPS), 1)

    def test_state_is_saved_with_the_trainer(self):
        def make():
            return methods.PGDAT(
                harness.tiny_classifier(),
                epsilon=0.1,
                step_controller=controllers.MPlus(initial_steps=0),
            )

        trainer = make()
        trainer.step_controller.threshold.assign(3.5)
        trainer.step_controller.magnitude.assign(2.0)
        trainer.set_step_count(methods.base.ATTACK_STEPS, 4)
        path = self.get_temp_dir() + "/mplus.weights.h5"
        trainer.save_weights(path)
        restored = make()
        restored.load_weights(path)
        self.assertAllClose(restored.step_controller.threshold, 3.5)
        self.assertAllClose(restored.step_controller.magnitude, 2.0)
        self.assertEqual(restored.step_count(methods.base.ATTACK_STEPS), 4)
