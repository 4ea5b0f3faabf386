"""Free-AT: the shared harness, the replays against NumPy, the carried-over
perturbation, the per-minibatch learning rate, and bad arguments."""

import keras
import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from tests import harness
from tfadv import attacks
from tfadv import methods
from tfadv import schedules


def free_attack(eps=0.1, replays=3, step=None):
    """Free-AT's settings: m replays of steps `step` (epsilon by default)."""
    return attacks.ProjectedGradient(
        epsilon=eps,
        step_size=eps if step is None else step,
        num_steps=replays,
        start="none",
    )


class _RateLog(keras.callbacks.Callback):
    """Records the learning rate and update count before each minibatch."""

    def __init__(self):
        super().__init__()
        self.rates, self.iterations = [], []

    def on_train_batch_begin(self, batch, logs=None):
        optimizer = self.model.optimizer
        self.rates.append(float(optimizer.learning_rate.numpy()))
        self.iterations.append(int(optimizer.iterations.numpy()))


class FreeATTest(tf.test.TestCase, parameterized.TestCase):
    def test_harness(self):
        method, _ = harness.run_method_test(
            self,
            lambda c: methods.FreeAT(
                c, train_attack=free_attack(), batch_size=harness.BATCH
            ),
            subclassed="built",
        )
        self.assertNotIn(
            method.delta.path, [v.path for v in method.trainable_variables]
        )
        self.assertIn("free_at_delta", method.mutable_state_paths)
        # Three replays: three optimizer updates for one minibatch.
        self.assertEqual(method.optimizer.iterations.numpy(), 3)
        self.assertEqual(method.minibatches.numpy(), 1)

    @parameterized.product(
        strategy=["default", "mirrored"], num_examples=[8, 20]
    )
    def test_free_at_replays_on_linear_model(self, strategy, num_examples):
        # 8 examples: one minibatch. 20: minibatches of 8, 8 and a last,
        # smaller one of 4, so the perturbation carries over twice and the
        # last batch uses only the first rows.
        w, b, x, y = harness.linear_problem(seed=4, n=num_examples)
        eps, replays, lr, wd, batch = 0.1, 3, 0.5, 0.01, 8
        strategy = harness.strategy(strategy)
        replicas = strategy.num_replicas_in_sync
        method, (got_w, got_b) = harness.fit_linear(
            lambda c: methods.FreeAT(
                c,
                train_attack=free_attack(eps, replays),
                batch_size=batch,
                weight_decay=wd,
            ),
            w,
            b,
            x,
            y,
            lr=lr,
            strategy=strategy,
            batch=batch,
        )
        want_w, want_b, want_buffers = harness.numpy_free_at(
            w,
            b,
            x,
            y,
            eps=eps,
            step=eps,
            replays=replays,
            lr=lr,
            wd=wd,
            batch=batch,
            replicas=replicas,
            rows=batch // replicas,
        )
        self.assertAllClose(got_w, want_w, atol=1e-5)
        self.assertAllClose(got_b, want_b, atol=1e-5)
        got_buffers = harness.replica_buffers(method.delta)
        self.assertLen(got_buffers, replicas)
        for got, want in zip(got_buffers, want_buffers, strict=True):
            self.assertAllClose(got, want, atol=1e-6)
        # The perturbation moved, within the budget.
        self.assertGreater(np.abs(want_buffers[0]).max(), 0.05)
        self.assertLessEqual(np.abs(np.stack(got_buffers)).max(), eps + 1e-6)
        minibatches = -(-num_examples // batch)
        self.assertEqual(
            method.optimizer.iterations.numpy(), replays * minibatches
        )
        self.assertEqual(method.minibatches.numpy(), minibatches)
        if replicas == 2:
            # Each replica keeps its own rows (its own examples).
            self.assertNotAllClose(got_buffers[0], got_buffers[1])

    def test_free_at_perturbation_carries_over(self):
        # Two identical minibatches: the second starts from the first's
        # perturbation, so a fresh start from zero gives another result.
        w, b, x, y = harness.linear_problem(seed=5)
        x2, y2 = np.concatenate([x, x]), np.concatenate([y, y])

        # Steps of 0.03: two replays reach 0.06, four reach the budget.
        def make(c):
            return methods.FreeAT(
                c,
                train_attack=free_attack(0.1, replays=2, step=0.03),
                batch_size=8,
            )

        strategy = tf.distribute.get_strategy()
        one, _ = harness.fit_linear(make, w, b, x, y, lr=0.0, strategy=strategy)
        two, _ = harness.fit_linear(
            make, w, b, x2, y2, lr=0.0, strategy=strategy, batch=8
        )
        # lr = 0: the weights stay, so only the carried-over δ differs.
        first = one.delta.numpy()
        second = two.delta.numpy()
        self.assertNotAllClose(first, second)
        want = harness.numpy_free_at(
            w,
            b,
            x2,
            y2,
            eps=0.1,
            step=0.03,
            replays=2,
            lr=0.0,
            wd=0.0,
            batch=8,
            replicas=1,
            rows=8,
        )[2][0]
        self.assertAllClose(second, want, atol=1e-6)
        self.assertGreater(np.abs(second).max(), np.abs(first).max() + 0.02)

    @parameterized.parameters("default", "mirrored")
    def test_per_minibatch_rate_is_the_same_for_every_replay(self, strategy):
        # 20 examples in minibatches of 8, 8, 4; 3 replays each. The rate
        # is inner(minibatch): 0.1, 0.3, 0.5 (not inner(update)).
        w, b, x, y = harness.linear_problem(seed=6, n=20)
        eps, replays, batch = 0.1, 3, 8
        inner = schedules.PiecewiseLinear([0, 2], [0.1, 0.5])
        strategy = harness.strategy(strategy)
        log = _RateLog()
        method, (got_w, got_b) = harness.fit_linear(
            lambda c: methods.FreeAT(
                c, train_attack=free_attack(eps, replays), batch_size=batch
            ),
            w,
            b,
            x,
            y,
            lr=schedules.PerMinibatch(inner),
            strategy=strategy,
            batch=batch,
            callbacks=[log],
        )
        self.assertAllClose(log.rates, [0.1, 0.3, 0.5])
        self.assertEqual(log.iterations, [0, 3, 6])
        self.assertEqual(method.minibatches.numpy(), 3)
        self.assertAllClose(float(method.optimizer.learning_rate), 0.5)
        kwargs = dict(
            eps=eps,
            step=eps,
            replays=replays,
            wd=0.0,
            batch=batch,
            replicas=strategy.num_replicas_in_sync,
            rows=batch // strategy.num_replicas_in_sync,
        )
        want_w, want_b, _ = harness.numpy_free_at(
            w, b, x, y, lr=lambda k: float(inner(k)), **kwargs
        )
        self.assertAllClose(got_w, want_w, atol=1e-5)
        self.assertAllClose(got_b, want_b, atol=1e-5)
        # A rate stepped per update would give other weights.
        updates = iter(range(3 * replays))
        per_update, _, _ = harness.numpy_free_at(
            w, b, x, y, lr=lambda k: float(inner(next(updates))), **kwargs
        )
        self.assertGreater(np.abs(per_update - want_w).max(), 1e-3)

    # The paper's budget, given: tfadv has no default for it.
    @parameterized.parameters((8 / 255, 8 / 255), (0.1, 0.1))
    def test_default_attack(self, epsilon, want_epsilon):
        method = methods.FreeAT(harness.tiny_classifier(), epsilon=epsilon)
        attack = method.train_attack
        self.assertNear(method.epsilon, want_epsilon, 1e-9)
        self.assertNear(attack.step_size, want_epsilon, 1e-9)
        self.assertEqual(attack.num_steps, 8)
        self.assertEqual(method.replays, 8)
        self.assertEqual(attack.start, "none")
        self.assertTrue(method.attack_training_mode)

    def test_replays_is_read_only(self):
        method = methods.FreeAT(
            harness.tiny_classifier(), train_attack=free_attack(replays=4)
        )
        self.assertEqual(method.replays, 4)
        with self.assertRaises(AttributeError):
            method.replays = 2


class BadArgumentsTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters(
        # An attack of no step (the attack refuses num_steps=0 itself).
        ({"train_attack": free_attack(replays=1).start_only()}, "replays.*0"),
        ({"batch_size": 0, "epsilon": 0.1}, "batch_size.*0"),
        ({"epsilon": -0.1}, "epsilon.*-0.1"),
        ({"attack_training_mode": False}, "training-mode"),
    )
    def test_bad_constructor_argument(self, kwargs, pattern):
        with self.assertRaisesRegex(ValueError, pattern):
            methods.FreeAT(harness.tiny_classifier(), **kwargs)

    def test_bad_replays_and_step(self):
        # The replays and the step are the training attack's settings.
        classifier = harness.tiny_classifier()
        with self.assertRaisesRegex(ValueError, "num_steps.*2.5"):
            methods.FreeAT(classifier, train_attack=free_attack(replays=2.5))
        with self.assertRaisesRegex(ValueError, "step_size.*-1.0"):
            methods.FreeAT(classifier, train_attack=free_attack(step=-1.0))

    def test_needs_a_projected_gradient(self):
        with self.assertRaisesRegex(TypeError, "ProjectedGradient"):
            methods.FreeAT(
                harness.tiny_classifier(),
                train_attack=attacks.APGD(epsilon=0.1),
            )

    def test_free_at_batch_larger_than_buffer(self):
        method = methods.FreeAT(
            harness.tiny_classifier(), epsilon=0.1, batch_size=2
        )
        method.compile(optimizer="sgd")
        x, y = harness.tiny_data()
        ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(
            4, drop_remainder=True
        )
        with self.assertRaisesRegex(ValueError, "batch_size=2"):
            method.fit(ds, verbose=0, shuffle=False)

    def test_free_at_needs_a_defined_input_shape(self):
        inputs = keras.Input((None, None, 3))
        outputs = keras.layers.Dense(3)(
            keras.layers.GlobalAveragePooling2D()(inputs)
        )
        with self.assertRaisesRegex(ValueError, "input shape"):
            methods.FreeAT(keras.Model(inputs, outputs), epsilon=0.1)
