"""The evaluation attacks, suites, masking checks and `tfadv.evaluate` CLI."""

import contextlib
import gzip
import io
import json
import os
import tempfile
from unittest import mock

import gin
import keras
import numpy as np
import tensorflow as tf
from absl import flags
from absl.testing import flagsaver
from absl.testing import parameterized

from tfadv import attacks
from tfadv import evaluate
from tfadv import evaluation
from tfadv.attacks import objectives


def setUpModule():
    flags.FLAGS.mark_as_parsed()


class Quantize(keras.layers.Layer):
    """A hard quantiser, round(x * levels) / levels: zero gradient a.e."""

    def __init__(self, levels=8, **kwargs):
        super().__init__(**kwargs)
        self.levels = levels

    def call(self, x):
        return keras.ops.round(x * self.levels) / self.levels


def linear_model(shape=(8,), num_classes=2, quantize=None, seed=0):
    """z = W flatten(q(x)), fixed Gaussian weights, zero bias."""
    rng = np.random.default_rng(seed)
    layers = [keras.Input(shape)]
    if quantize:
        layers.append(Quantize(quantize, name="quantize"))
    layers += [keras.layers.Flatten(), keras.layers.Dense(num_classes)]
    model = keras.Sequential(layers)
    dims = int(np.prod(shape))
    model.layers[-1].set_weights(
        [
            rng.normal(size=(dims, num_classes)).astype("float32"),
            np.zeros(num_classes, "float32"),
        ]
    )
    return model


class Shift(attacks.Attack):
    """A test double: moves every pixel by `sign * epsilon`."""

    def __init__(self, epsilon, sign, name):
        self.threat_model = attacks.LinfThreatModel(epsilon)
        self.sign, self.name = sign, name

    def __call__(self, model, x, y, *, seed=None, training=False):
        moved = x + self.sign * self.threat_model.epsilon
        return tf.stop_gradient(self.threat_model.project(x, moved))


def bn_model(num_classes=5):
    return keras.Sequential(
        [
            keras.Input((6, 6, 1)),
            keras.layers.Rescaling(1.0, name="pre"),
            keras.layers.Conv2D(4, 3),
            keras.layers.BatchNormalization(momentum=0.9),
            keras.layers.ReLU(),
            keras.layers.Flatten(),
            keras.layers.Dropout(0.5),
            keras.layers.Dense(num_classes),
        ]
    )


def interior_data(model, shape, n=64, seed=1):
    """Points in [0.2, 0.8] labelled with the model's own prediction."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.2, 0.8, size=(n, *shape)).astype("float32")
    y = np.argmax(model(x).numpy(), -1).astype("int32")
    return tf.constant(x), tf.constant(y)


def run_attack(attack, model, x, y, seed=0):
    """Runs `attack` compiled, as the evaluation does (eager is slower)."""
    return tf.function(lambda x, y: attack(model, x, y, seed=seed))(x, y)


def accuracy(model, x, y):
    pred = tf.argmax(model(x), -1, output_type=tf.int32)
    return float(tf.reduce_mean(tf.cast(pred == y, tf.float32)))


def as_dataset(x, y, batch=32):
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch)


def margin_of_true(logits, y):
    return -objectives.margin(logits, y).numpy()


class AnalyticWorstCaseTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters("pgd20", "cw20x2", "apgd_ce20")
    def test_reaches_linear_worst_case(self, name):
        # Binary linear model, L-inf, points far from the box: the worst
        # margin is z_y - z_o - eps * ||w_y - w_o||_1, reached at the vertex
        # x + eps * sign(w_o - w_y). Points that stay robust are checked.
        eps, classes = 0.05, 2
        model = linear_model((8,), classes)
        x, y = interior_data(model, (8,), n=128)
        w = model.layers[-1].get_weights()[0]
        logits = model(x).numpy()
        yn = y.numpy()
        worst = np.full(len(yn), np.inf)
        for o in range(classes):
            dw = np.abs(w[:, yn] - w[:, [o]]).sum(0)
            value = logits[np.arange(len(yn)), yn] - logits[:, o] - eps * dw
            worst = np.where(o == yn, worst, np.minimum(worst, value))
        keep = worst > 0.05
        self.assertGreater(keep.sum(), 20)
        attack = evaluation.make_attack(name, epsilon=eps)
        x_adv = run_attack(attack, model, x, y)
        reached = margin_of_true(model(x_adv), y)
        self.assertAllClose(reached[keep], worst[keep], atol=1e-4)
        # The others are misclassified (their worst case is negative).
        self.assertAllLessEqual(reached[worst < -0.05], 0.0)


class AttackBehaviourTest(tf.test.TestCase, parameterized.TestCase):
    def test_square_breaks_an_undefended_model(self):
        model = linear_model((8, 8, 1), 10)
        x, y = interior_data(model, (8, 8, 1))
        # At this epsilon every point is breakable (analytically).
        square = attacks.Square(epsilon=0.1, num_queries=200)
        x_adv = run_attack(square, model, x, y)
        self.assertEqual(accuracy(model, x, y), 1.0)
        self.assertLess(accuracy(model, x_adv, y), 0.1)
        self.assertAllLessEqual(tf.abs(x_adv - x), 0.1 + 1e-6)

    def test_dlr_values_and_invariance(self):
        logits = tf.constant([[3.0, 1.0, 0.0, -1.0]])
        self.assertAllClose(objectives.dlr(logits, [0]), [-2.0 / 3.0])
        self.assertAllClose(objectives.dlr(logits, [1]), [2.0 / 3.0])
        self.assertAllClose(
            objectives.dlr(2.5 * logits + 7.0, [2]), objectives.dlr(logits, [2])
        )
        self.assertAllClose(
            objectives.targeted_dlr(logits, [0], [2]), [-3.0 / 3.5]
        )
        with self.assertRaisesRegex(ValueError, "at least 4 classes"):
            objectives.targeted_dlr(logits[:, :3], [0], [1])
        with self.assertRaisesRegex(ValueError, "at least 3 classes"):
            objectives.dlr(logits[:, :2], [0])

    def test_apgd_t_finds_every_breakable_point_of_a_linear_model(self):
        # With 9 targets APGD-T tries every other class of a 10-class
        # linear model, so it breaks exactly the points whose analytic
        # worst case (over all classes) is negative.
        eps, model = 0.06, linear_model((16,), 10)
        x, y = interior_data(model, (16,), n=64)
        w = model.layers[-1].get_weights()[0]
        logits, yn = model(x).numpy(), y.numpy()
        dw = np.abs(w[:, yn][:, :, None] - w[:, None, :]).sum(0)  # [B, C]
        gap = logits[np.arange(64), yn][:, None] - logits - eps * dw
        gap[np.arange(64), yn] = np.inf
        breakable = gap.min(1) < 0
        self.assertBetween(breakable.mean(), 0.2, 0.9)
        apgd_t = attacks.APGDTargeted(epsilon=eps, num_steps=30)
        x_adv = run_attack(apgd_t, model, x, y)
        pred = tf.argmax(model(x_adv), -1).numpy()
        self.assertAllEqual(pred != yn, breakable)

    def test_apgd_t_needs_four_classes(self):
        model = linear_model((4,), 3)
        x, y = interior_data(model, (4,), n=4)
        with self.assertRaisesRegex(ValueError, "at least 4 classes"):
            attacks.APGDTargeted(epsilon=0.1, num_steps=2)(model, x, y)
        with self.assertRaisesRegex(ValueError, "apgd_t .*4 classes"):
            evaluation.evaluate_suite(
                model, as_dataset(x, y), suite="standard", epsilon=0.1
            )


def invariant_attacks():
    pgd3 = attacks.ProjectedGradient(epsilon=0.1, step_size=0.04, num_steps=3)
    return {
        "apgd_ce": attacks.APGD(epsilon=0.1, num_steps=5, restarts=2),
        "apgd_dlr_l2": attacks.APGD(
            epsilon=0.5, num_steps=5, norm="l2", objective="dlr"
        ),
        "apgd_t": attacks.APGDTargeted(epsilon=0.1, num_steps=4, num_targets=2),
        "square": attacks.Square(epsilon=0.1, num_queries=20),
        "bpda": attacks.BPDA(pgd3, layers="pre"),
        "eot": attacks.EOT(
            pgd3, num_samples=3, transform=attacks.GaussianNoise(0.05)
        ),
    }


class EvaluationAttackInvariantsTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters(*invariant_attacks())
    def test_invariants(self, name):
        attack = invariant_attacks()[name]
        model = bn_model()
        rng = np.random.default_rng(1)
        x = rng.uniform(size=(16, 6, 6, 1)).astype("float32")
        x[..., 0] = 0.0  # on the box edge, where clipping matters
        x, y = tf.constant(x), tf.constant(rng.integers(0, 5, 16), tf.int32)
        model(x)
        before = [v.numpy().copy() for v in model.variables]
        compiled = tf.function(lambda x, y, s: attack(model, x, y, seed=s))
        seed = tf.constant([3, 0])
        with tf.GradientTape() as tape:
            tape.watch(x)
            x_adv = compiled(x, y, seed)
        self.assertIsNone(tape.gradient(tf.reduce_sum(x_adv), x))
        self.assertEqual(x_adv.shape, x.shape)
        self.assertEqual(x_adv.dtype, x.dtype)
        dist = attack.threat_model.distance(x, x_adv)
        self.assertAllLessEqual(dist, attack.epsilon + 1e-5)
        self.assertGreater(float(tf.reduce_max(dist)), 0.0)
        self.assertAllInRange(x_adv, 0.0, 1.0)
        self.assertAllEqual(x_adv, compiled(x, y, seed))
        self.assertNotAllClose(x_adv, compiled(x, y, tf.constant([4, 0])))
        self.assertLen(model.variables, len(before))
        for b, v in zip(before, model.variables, strict=True):
            self.assertAllEqual(b, v.numpy())

    @parameterized.parameters("apgd_t", "square", "eot")
    def test_runs_under_xla(self, name):
        attack = invariant_attacks()[name]
        model = bn_model()
        x, y = interior_data(model, (6, 6, 1), n=8)
        fn = tf.function(
            lambda x, y: attack(model, x, y, seed=1), jit_compile=True
        )
        x_adv = fn(x, y)
        self.assertAllLessEqual(tf.abs(x_adv - x), attack.epsilon + 1e-5)
        self.assertAllInRange(x_adv, 0.0, 1.0)


class SuiteTest(tf.test.TestCase, parameterized.TestCase):
    def test_names_and_suites(self):
        suite = evaluation.make_suite(
            "pgd50x10,cw50,apgd_t,square1000", epsilon=0.1
        )
        pgd = suite.attacks["pgd50x10"]
        self.assertEqual((pgd.num_steps, pgd.restarts), (50, 10))
        self.assertAlmostEqual(pgd.step_size, 0.01)
        self.assertIs(suite.attacks["cw50"].objective, objectives.margin)
        self.assertEqual(suite.attacks["square1000"].num_queries, 1000)
        self.assertFalse(suite.sequential)
        standard = evaluation.make_suite("standard", epsilon=0.1)
        self.assertEqual(
            list(standard.attacks), ["apgd_ce", "apgd_t", "square"]
        )
        self.assertTrue(standard.sequential)
        quick = evaluation.make_suite("quick", epsilon=0.1).attacks["pgd20"]
        self.assertAlmostEqual(quick.step_size, 0.01)
        for bad in ("pgd", "pgd0", "apgd_x", "quick,square", "pgd20,pgd20"):
            with self.assertRaisesRegex(ValueError, "attack name|twice"):
                evaluation.make_suite(bad, epsilon=0.1)

    @parameterized.parameters(False, True)
    def test_suite_is_per_example_minimum(self, sequential):
        # z_1 - z_0 = sum(x) - 2: shifting every pixel up breaks class-0
        # points near the boundary, shifting down breaks class-1 ones, so
        # each attack breaks points the other leaves robust.
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
        model.set_weights(
            [np.stack([np.zeros(4), np.ones(4)], 1), np.array([0.0, -2.0])]
        )
        x, y = interior_data(model, (4,), n=48)
        up, down = Shift(0.05, +1, "up"), Shift(0.05, -1, "down")
        result = evaluation.evaluate_suite(
            model,
            as_dataset(x, y, batch=16),
            suite=[up, down],
            epsilon=0.05,
            sequential=sequential,
            per_example=True,
        )
        robust = {
            n: np.array(r) for n, r in result["per_example"]["robust"].items()
        }
        worst = robust["up"] & robust["down"]
        acc = result["robust_accuracy"]
        self.assertEqual(result["suite"], "up,down")
        self.assertAlmostEqual(result["suite_robust_accuracy"], worst.mean())
        self.assertAlmostEqual(acc["worst_case"], worst.mean())
        self.assertEqual(result["num_examples"], 48)
        self.assertEqual(result["clean_accuracy"], 1.0)
        if sequential:
            # "down" ran on the points "up" left robust; cumulative numbers.
            self.assertEqual(result["mode"], "sequential")
            self.assertAlmostEqual(acc["down"], worst.mean())
            self.assertGreater(acc["up"], acc["down"])
        else:
            self.assertLess(worst.mean(), min(acc["up"], acc["down"]))
            self.assertGreater(worst.mean(), 0.2)

    def test_masked_model_flagged_and_bpda_recovers(self):
        model = linear_model((8, 8, 1), 3, quantize=8)
        x, y = interior_data(model, (8, 8, 1))
        data = as_dataset(x, y, batch=64)
        masked = evaluation.evaluate_suite(
            model, data, suite="pgd10,square100", epsilon=0.1
        )
        report = masked["gradient_masking"]
        self.assertTrue(report["possible"])
        self.assertTrue(report["checks"]["zero_gradients"]["flagged"])
        self.assertTrue(
            report["checks"]["gradient_free_beats_gradient"]["flagged"]
        )
        self.assertIn(
            "POSSIBLE GRADIENT MASKING", evaluation.format_report(masked)
        )
        self.assertGreater(masked["robust_accuracy"]["pgd10"], 0.8)
        bpda = evaluation.evaluate_suite(
            model, data, suite="pgd10", epsilon=0.1, bpda_layers=["quantize"]
        )
        self.assertLess(bpda["robust_accuracy"]["pgd10"], 0.3)
        self.assertTrue(bpda["gradient_masking"]["through_bpda"])
        with self.assertRaisesRegex(ValueError, "no layer matching"):
            evaluation.evaluate_suite(
                model, data, suite="pgd5", epsilon=0.1, bpda_layers=["nope"]
            )

    def test_strength_check_flags_rising_accuracy(self):
        # PGD-20 leaving more points robust than PGD-5 is flagged.
        clean = np.ones(100, bool)
        broken = {"pgd5": np.arange(100) < 50, "pgd20": np.arange(100) < 40}
        eps = 0.1
        suite = evaluation.make_suite("pgd5,pgd20", epsilon=eps).attacks
        report = evaluation.masking_report(
            suite,
            clean=clean,
            broken=broken,
            accuracy={"pgd5": 0.5, "pgd20": 0.6},
            sequential=False,
            extra={},
            zero_gradients=0,
            tolerance=0.002,
            zero_gradient_threshold=0.05,
        )
        self.assertTrue(report["possible"])
        self.assertIn("rises with attack strength", report["messages"][0])


def write_idx(folder, prefix, images, labels):
    os.makedirs(folder, exist_ok=True)
    n, h, w = images.shape
    header = np.array([2051, n, h, w], ">i4").tobytes()
    with gzip.open(f"{folder}/{prefix}-images-idx3-ubyte.gz", "wb") as f:
        f.write(header + images.astype(np.uint8).tobytes())
    header = np.array([2049, n], ">i4").tobytes()
    with gzip.open(f"{folder}/{prefix}-labels-idx1-ubyte.gz", "wb") as f:
        f.write(header + labels.astype(np.uint8).tobytes())


class EvaluateCommandTest(tf.test.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        root = cls.root = tempfile.mkdtemp()
        rng = np.random.default_rng(0)
        data_dir = os.path.join(root, "tinydigits")
        for prefix, n in (("train", 64), ("t10k", 32)):
            images = rng.integers(0, 256, size=(n, 8, 8))
            write_idx(data_dir, prefix, images, np.arange(n) % 10)
        cls.run_dir = os.path.join(root, "run")
        os.makedirs(cls.run_dir, exist_ok=True)
        model = linear_model((8, 8, 1), 10)
        model.save(os.path.join(cls.run_dir, "model.keras"))
        results = {"dataset": data_dir, "epsilon": 0.05, "num_eval_examples": 8}
        with open(os.path.join(cls.run_dir, "results.json"), "w") as f:
            json.dump(results, f)

    def main(self, **flag_values):
        gin.clear_config()  # each command line starts from a fresh process
        with flagsaver.flagsaver(**flag_values):
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                evaluate.main(["tfadv.evaluate"])
        return out.getvalue()

    def assert_error(self, pattern, **flag_values):
        target = "tfadv.evaluation.evaluate_robustness"
        with (
            mock.patch(target) as attack_run,
            self.assertRaises(SystemExit) as cm,
        ):
            self.main(**flag_values)
        self.assertRegex(str(cm.exception.code), "tfadv.evaluate: error: ")
        self.assertRegex(str(cm.exception.code), pattern)
        attack_run.assert_not_called()  # nothing was attacked

    def test_bad_flags(self):
        run = self.run_dir
        self.assert_error("give a run folder", model=None)
        self.assert_error("does not exist", model=f"{self.root}/none.keras")
        self.assert_error("does not exist", model=self.root)
        self.assert_error(
            "Unknown attack name 'pgd2o'", model=run, suite="pgd2o"
        )
        self.assert_error(
            r"epsilon must be in \(0, 1\]", model=run, epsilon=0.0
        )
        self.assert_error(r"got 1\.5", model=run, epsilon=1.5)
        self.assert_error("num_examples must be", model=run, num_examples=0)
        self.assert_error("No such|nope", model=run, gin_bindings=["nope.x=1"])

    def test_end_to_end_never_overwrites(self):
        run = self.run_dir
        out = self.main(model=run, suite="quick", num_examples=16)
        self.assertIn("pgd20", out)
        self.assertIn("gradient-masking checks", out)
        with open(os.path.join(run, "eval.json")) as f:
            result = json.load(f)
        self.assertEqual(result["num_examples"], 16)
        self.assertEqual(result["suite"], "quick")
        self.assertEqual(result["epsilon"], 0.05)
        self.assertIn("pgd20", result["robust_accuracy"])
        self.assertIn("possible", result["gradient_masking"])
        self.assertGreater(result["seconds"], 0.0)
        # A second run goes beside it, named after the suite; gin sets it.
        self.main(model=run, gin_bindings=["evaluate_suite.suite = 'cw5'"])
        with open(os.path.join(run, "eval-cw5.json")) as f:
            self.assertEqual(json.load(f)["num_examples"], 8)
        self.assert_error("never overwrites", model=run, suite="cw5")
