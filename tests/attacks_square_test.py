"""Square (attacks.square): the schedule of p, the L2 version, invariants."""

import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from tests import evaluation_fixtures as fx
from tfadv import attacks
from tfadv.attacks import objectives
from tfadv.attacks import square


class ScheduleTest(tf.test.TestCase):
    def test_halvings_without_rescaling(self):
        # p_selection: p_init / 2^k once the iteration (from 0) exceeds the
        # k-th of 10, 50, 200, ..., 8000, whatever the budget.
        self.assertEqual(
            square.halving_iterations(10000, rescale_schedule=False),
            (11, 51, 201, 501, 1001, 2001, 4001, 6001, 8001),
        )
        self.assertEqual(
            square.halving_iterations(5000, rescale_schedule=False),
            (11, 51, 201, 501, 1001, 2001, 4001),
        )
        self.assertEqual(square.halving_iterations(11, False), ())
        self.assertEqual(square.halving_iterations(12, False), (11,))

    def test_halvings_rescaled_to_the_budget(self):
        # Iteration i sits at int(i / q * 10000): with 5000 queries it is
        # 2i, so 2i > 10 from i = 6, 2i > 50 from 26, ...
        self.assertEqual(
            square.halving_iterations(5000),
            (6, 26, 101, 251, 501, 1001, 2001, 3001, 4001),
        )
        # 1000 queries: 10i > 10 from i = 2, 10i > 50 from 6, ...
        self.assertEqual(
            square.halving_iterations(1000),
            (2, 6, 21, 51, 101, 201, 401, 601, 801),
        )
        # At 10,000 queries the two schedules agree.
        self.assertEqual(
            square.halving_iterations(10000),
            square.halving_iterations(10000, rescale_schedule=False),
        )

    def test_suites_and_class_defaults(self):
        self.assertTrue(attacks.Square(epsilon=0.1).rescale_schedule)
        name_only = attacks.Square(epsilon=0.1, rescale_schedule=False)
        self.assertFalse(name_only.get_config()["rescale_schedule"])
        self.assertIn("rescale_schedule=False", repr(name_only))
        with self.assertRaisesRegex(ValueError, "rescale_schedule"):
            attacks.Square(epsilon=0.1, rescale_schedule="no")

    def test_schedule_changes_the_search(self):
        # Same seed, same draws: only the window sizes differ.
        model = fx.linear_model((8, 8, 1), 10)
        x, y = fx.interior_data(model, (8, 8, 1), n=8)
        runs = [
            fx.run_attack(
                attacks.Square(
                    epsilon=0.02, num_queries=40, rescale_schedule=rescale
                ),
                model,
                x,
                y,
            )
            for rescale in (True, False)
        ]
        self.assertNotAllClose(runs[0], runs[1])


class L2PatchTest(tf.test.TestCase):
    def test_patch_shape_and_norm(self):
        for side in (1, 3, 5, 8, 11):
            patch = square.l2_patch(side)
            self.assertEqual(patch.shape, (side, side))
            self.assertNear(np.sqrt(np.sum(patch**2)), 1.0, 1e-12)
        patch = square.l2_patch(5)
        # Positive over the top half (2 rows), negative below, peaked at
        # the centre of each half.
        self.assertTrue((patch[:2] > 0).all() and (patch[2:] < 0).all())
        self.assertEqual(
            np.argmax(patch[:2]), np.ravel_multi_index((1, 2), (2, 5))
        )
        self.assertEqual(
            np.argmin(patch[2:]), np.ravel_multi_index((1, 2), (3, 5))
        )
        # Symmetric left to right.
        self.assertAllClose(patch, patch[:, ::-1])


def margin(model, x, y):
    return objectives.margin(model(x), y).numpy()


class SquareL2Test(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters(True, False)
    def test_inside_ball_and_box(self, rescale):
        model = fx.bn_model()
        rng = np.random.default_rng(0)
        x = rng.uniform(size=(16, 6, 6, 1)).astype("float32")
        x[:, 0] = 0.0  # a row on the box edge
        x[:, -1] = 1.0
        x = tf.constant(x)
        y = tf.argmax(model(x), -1, output_type=tf.int32)
        attack = attacks.Square(
            epsilon=0.5, num_queries=30, norm="l2", rescale_schedule=rescale
        )
        fn = tf.function(lambda x, y, s: attack(model, x, y, seed=s))
        x_adv = fn(x, y, tf.constant([1, 0]))
        self.assertEqual((x_adv.shape, x_adv.dtype), (x.shape, x.dtype))
        dist = attack.threat_model.distance(x, x_adv)
        self.assertAllLessEqual(dist, 0.5 + 1e-5)
        self.assertGreater(float(tf.reduce_max(dist)), 0.4)
        self.assertAllInRange(x_adv, 0.0, 1.0)
        self.assertAllEqual(x_adv, fn(x, y, tf.constant([1, 0])))
        self.assertNotAllClose(x_adv, fn(x, y, tf.constant([2, 0])))
        # Keras traces train_step with AutoGraph off.
        plain = tf.function(
            lambda x, y, s: attack(model, x, y, seed=s), autograph=False
        )
        self.assertAllEqual(x_adv, plain(x, y, tf.constant([1, 0])))

    @parameterized.parameters("linf", "l2")
    def test_margin_never_falls(self, norm):
        # Without rescaling the schedule does not depend on the budget, so
        # a longer run extends a shorter one: per example, the margin
        # z_max_other - z_y of the output only rises with the queries (the
        # start itself may be below the clean margin).
        model = fx.linear_model((8, 8, 1), 10)
        x, y = fx.interior_data(model, (8, 8, 1), n=32)
        eps = 0.03 if norm == "linf" else 0.3
        margins = []
        for queries in (1, 10, 40, 160):
            attack = attacks.Square(
                epsilon=eps,
                num_queries=queries,
                norm=norm,
                rescale_schedule=False,
            )
            margins.append(margin(model, fx.run_attack(attack, model, x, y), y))
        steps = np.diff(np.stack(margins), axis=0)
        self.assertAllGreaterEqual(steps, -1e-6)
        self.assertGreater(float(steps.sum()), 0.0)
        self.assertBetween(float((margins[-1] > 0).mean()), 0.05, 0.95)

    def test_breaks_a_linear_model(self):
        model = fx.linear_model((8, 8, 1), 10)
        x, y = fx.interior_data(model, (8, 8, 1))
        attack = attacks.Square(epsilon=1.0, num_queries=300, norm="l2")
        x_adv = fx.run_attack(attack, model, x, y)
        self.assertEqual(fx.accuracy(model, x, y), 1.0)
        self.assertLess(fx.accuracy(model, x_adv, y), 0.1)
        dist = attack.threat_model.distance(x, x_adv)
        self.assertAllLessEqual(dist, 1.0 + 1e-5)

    def test_start_is_the_pattern_grid_at_norm_epsilon(self):
        # A constant model: no proposal ever raises the margin, so the
        # output is the start, the grid of patterns scaled to norm epsilon.
        model = fx.linear_model((10, 10, 2), 2)
        model.layers[-1].set_weights([np.zeros((200, 2)), np.zeros(2)])
        x = tf.fill([4, 10, 10, 2], 0.5)
        y = tf.zeros([4], tf.int32)
        attack = attacks.Square(epsilon=0.2, num_queries=5, norm="l2")
        delta = (fx.run_attack(attack, model, x, y) - x).numpy()
        self.assertAllClose(
            np.sqrt((delta**2).sum((1, 2, 3))), [0.2] * 4, atol=1e-5
        )
        # 2 x 2 blocks on a 5 x 5 grid: each is the 2 x 2 pattern or its
        # transpose, times a sign per channel, all of one scale.
        patch = np.abs(square.l2_patch(2))
        scale = np.abs(delta).max() / patch.max()
        for top in range(0, 10, 2):
            for left in range(0, 10, 2):
                block = np.abs(delta[:, top : top + 2, left : left + 2])
                for b in range(4):
                    for c in range(2):
                        found = block[b, :, :, c] / scale
                        self.assertTrue(
                            np.allclose(found, patch, atol=1e-5)
                            or np.allclose(found, patch.T, atol=1e-5)
                        )

    def test_runs_under_xla(self):
        model = fx.bn_model()
        x, y = fx.interior_data(model, (6, 6, 1), n=8)
        attack = attacks.Square(epsilon=0.5, num_queries=20, norm="l2")
        fn = tf.function(
            lambda x, y: attack(model, x, y, seed=1), jit_compile=True
        )
        x_adv = fn(x, y)
        dist = attack.threat_model.distance(x, x_adv)
        self.assertAllLessEqual(dist, 0.5 + 1e-5)
        self.assertAllInRange(x_adv, 0.0, 1.0)

    def test_x_init_replaces_the_start(self):
        model = fx.linear_model((6, 6, 1), 10)
        x, y = fx.interior_data(model, (6, 6, 1), n=4)
        far = tf.clip_by_value(x + 0.5, 0.0, 1.0)
        attack = attacks.Square(epsilon=0.3, num_queries=1, norm="l2")
        got = fx.run_attack(attack, model, x, y)  # the pattern start
        with_init = tf.function(
            lambda x, y: attack(model, x, y, seed=0, x_init=far)
        )(x, y)
        self.assertNotAllClose(got, with_init)
        self.assertAllLessEqual(
            attack.threat_model.distance(x, with_init), 0.3 + 1e-5
        )
