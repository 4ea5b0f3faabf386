"""tfadv.methods.controllers: M+, DEAT-d, DEAT-p, and their attachment.

Scripted M values reproduce the replay schedule of DEAT's reference
training log (docs/algorithms.md §2.2); the rule's order, strictness and
cap; bad input; M+ driving the attack steps of PGD-AT, TRADES and MART.
"""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from absl import flags
from absl.testing import parameterized

from tests import harness
from tfadv import attacks
from tfadv import experiment
from tfadv import methods
from tfadv import run_folder
from tfadv import train
from tfadv.methods import controllers

# r in each of the 50 epochs of TrustAI/DEAT's mdeat_out/output_pre.log.
REFERENCE_LOG = (
    [1] + [2] * 2 + [3] * 5 + [4] * 19 + [5] * 2 + [6] * 13 + [7] * 2 + [8] * 6
)
# The four Table-1 runs' logged M and step counts (its "source" says where
# they were read and how the counts follow from the epoch times).
TABLE1 = os.path.join(os.path.dirname(__file__), "data", "deat_table1.json")


class Driven:
    """What a trainer does with a controller: it keeps and sets the count."""

    def __init__(self, controller, max_steps=8, epsilon=8.0, step_floor=10.0):
        controller.create_state(
            controller.max_steps or max_steps,
            epsilon=epsilon,
            step_floor=step_floor,
        )
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
        driven = Driven(
            controllers.AccuracyTrigger(
                threshold=0.4, max_steps=3, metric="adv_accuracy"
            )
        )
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


def magnitude_at_x(controller, strategy):
    """M after one epoch of PGDAT from no start at lr 0, and ‖∇ₓ mean CE‖₁.

    Returns:
        `(the controller's M, ‖∇ₓ mean CE(xW + b, y)‖₁ at x in NumPy)`.
    """
    w, b, x, y = harness.linear_problem(seed=8)
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
    return controller.magnitude, want


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

    def test_last_attack_step_needs_a_projected_gradient(self):
        bs = attacks.BackwardSmoothingAttack(epsilon=0.1)
        with self.assertRaisesRegex(ValueError, "last_attack_step.*measure"):
            methods.TRADES(
                harness.tiny_classifier(),
                train_attack=bs,
                step_controller=controllers.MPlus(measure="last_attack_step"),
            )
        with self.assertRaisesRegex(ValueError, "one restart"):
            methods.PGDAT(
                harness.tiny_classifier(),
                train_attack=harness.pgd(restarts=2),
                step_controller=controllers.MPlus(measure="last_attack_step"),
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
        controller = controllers.MPlus(max_steps=3, initial_steps=0)
        got, want = magnitude_at_x(controller, strategy)
        self.assertAllClose(got, want, rtol=1e-5)


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


def replay_log(run, *, forced_growth):
    """The counts MPlus gives a logged run's M sequence, epoch by epoch."""
    controller = controllers.MPlus(
        gamma=run["gamma"],
        max_steps=run["max_steps"],
        initial_steps=run["initial_steps"],
        forced_growth=forced_growth,
    )
    driven = Driven(
        controller, epsilon=run["epsilon"], step_floor=run["step_floor"]
    )
    used = []
    for epoch, magnitude in enumerate(run["magnitudes"]):
        driven.begin(epoch)
        controller.observe(tf.constant(magnitude, tf.float32))
        used.append(driven.end(epoch, {})["mplus/steps"])
    return used


class Table1Test(tf.test.TestCase, parameterized.TestCase):
    """The runs behind DEAT's Table 1, replayed from their logs."""

    @parameterized.parameters("mdeat", "mpgd", "mtrades", "mmart")
    def test_the_logged_schedule_is_reproduced_exactly(self, name):
        with open(TABLE1) as f:
            run = json.load(f)["runs"][name]
        # The transcribed counts follow the epoch times.
        seconds = np.array(run["seconds"])
        steps = np.array(run["steps"]) - run["steps"][0]
        unit = seconds[1] - seconds[0]
        self.assertLess(
            np.max(np.abs(seconds - seconds[0] - steps * unit)), 3.5
        )
        self.assertEqual(
            replay_log(run, forced_growth=run["forced_growth"]), run["steps"]
        )

    def test_without_forced_growth_mplus_pgd_and_mart_do_not_match(self):
        with open(TABLE1) as f:
            runs = json.load(f)["runs"]
        for name, mean in (("mpgd", 0.98), ("mmart", 1.92)):
            used = replay_log(runs[name], forced_growth=False)
            self.assertNotEqual(used, runs[name]["steps"])
            self.assertAllClose(np.mean(used), mean)
        # M+DEAT's step floor (10/255) is above ε (8/255): never forced.
        self.assertEqual(
            replay_log(runs["mdeat"], forced_growth=True),
            runs["mdeat"]["steps"],
        )

    def test_forced_growth_is_bounded_by_the_cap(self):
        controller = controllers.MPlus(
            max_steps=3, initial_steps=0, forced_growth=True
        )
        driven = Driven(controller, epsilon=8.0, step_floor=1.0)
        used = []
        for epoch in range(6):
            driven.begin(epoch)
            used.append(driven.end(epoch, {})["mplus/steps"])
        # +1 after epoch 0, none after epoch 1 (threshold), then forced.
        self.assertEqual(used, [0, 1, 1, 2, 3, 3])

    def test_step_rules(self):
        fixed = Driven(
            controllers.MPlus(step_rule="fixed"), epsilon=0.1, step_floor=0.02
        ).controller
        self.assertAllClose(fixed.step_size(1), 0.02)
        self.assertAllClose(fixed.step_size(2), 0.02)
        largest = Driven(
            controllers.MPlus(), epsilon=0.1, step_floor=0.02
        ).controller
        self.assertAllClose(largest.step_size(2), 0.05)
        with self.assertRaisesRegex(ValueError, "step_rule.*'max'"):
            controllers.MPlus(step_rule="largest")
        with self.assertRaisesRegex(ValueError, "measure.*'update'"):
            controllers.MPlus(measure="attack")
        with self.assertRaisesRegex(ValueError, "forced_growth.*'yes'"):
            controllers.MPlus(forced_growth="yes")


class MeasuredAtTheAttackTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters("default", "mirrored")
    def test_magnitude_is_the_last_attack_steps_gradient(self, strategy):
        # One step from no start: the last (only) step starts at x, so M
        # is ‖∇ₓ mean CE‖₁ at x, whatever the update does afterwards.
        controller = controllers.MPlus(
            max_steps=3, initial_steps=1, measure="last_attack_step"
        )
        got, want = magnitude_at_x(controller, strategy)
        self.assertAllClose(got, want, rtol=1e-5)

    def test_zero_steps_measure_nothing(self):
        w, b, x, y = harness.linear_problem(seed=8)
        controller = controllers.MPlus(
            max_steps=3, initial_steps=0, measure="last_attack_step"
        )
        harness.fit_linear(
            lambda c: methods.PGDAT(
                c,
                train_attack=harness.pgd(num_steps=3),
                step_controller=controller,
            ),
            w,
            b,
            x,
            y,
            lr=0.1,
            strategy=harness.strategy("default"),
        )
        self.assertAllClose(controller.magnitude, 0.0)


class LastReplayAccuracyTest(tf.test.TestCase):
    def test_deat_p_compares_the_last_replays_accuracy(self):
        w, b, x, y = harness.linear_problem(seed=2)
        trigger = controllers.AccuracyTrigger(threshold=0.0, initial_steps=2)
        method, _ = harness.fit_linear(
            lambda c: methods.DEAT(
                c,
                train_attack=harness.pgd(num_steps=3),
                step_controller=trigger,
            ),
            w,
            b,
            x,
            y,
            lr=0.0,
            strategy=harness.strategy("default"),
        )
        # lr = 0: the last replay's examples are x + δ after one step of
        # the replay from a known start; its accuracy is what was counted.
        self.assertAllClose(trigger.seen, len(x))
        correct = float(trigger.correct.numpy())
        self.assertEqual(correct, round(correct))
        self.assertBetween(correct, 0.0, len(x))
        logs = {}
        hooks = method.callbacks()[0]
        hooks.on_epoch_end(1, logs)
        self.assertAllClose(logs["accuracy_trigger/accuracy"], correct / len(x))


class ShippedMPlusGinTest(tf.test.TestCase):
    @pytest.mark.slow
    def test_mplus_pgd_gin_grows_k_as_the_forced_rule_says(self):
        # ε / α = 0.1 / 0.025 = 4: forced growth after epochs 0, 2, 3, 4.
        flags.FLAGS.mark_as_parsed()
        logdir = os.path.join(self.create_tempdir().full_path, "run")
        train.parse_gin(
            ["mplus_pgd.gin", "testing/tiny.gin"],
            ["run.epochs = 5", "make_datasets.train_examples = 128"],
        )
        experiment.run(logdir=logdir)
        with open(os.path.join(logdir, run_folder.RESULTS_FILE)) as f:
            history = json.load(f)["history"]
        self.assertEqual(history["mplus/steps"], [0, 1, 1, 2, 3])
        # M comes from the attack's last step: none at 0 steps.
        self.assertEqual(history["mplus/magnitude"][0], 0.0)
        self.assertGreater(history["mplus/magnitude"][1], 0.0)
