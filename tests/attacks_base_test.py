"""The attack interface: seeds, `repeat`, configs and `replace`, `x_init`
and `uses_gradients` across the attacks; Keras serialization and the image
check of every attack."""

import keras
import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from tests import harness
from tfadv import attacks
from tfadv.attacks import base


def image_model():
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((6, 6, 1)),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(4),
        ]
    )


# One of each attack, cheap enough for a test.
ATTACKS = {
    "pgd": lambda: attacks.ProjectedGradient(
        epsilon=0.1, step_size=0.05, num_steps=3
    ),
    "apgd": lambda: attacks.APGD(epsilon=0.1, num_steps=5),
    "square": lambda: attacks.Square(epsilon=0.1, num_queries=20),
    "fab_t": lambda: attacks.FABTargeted(
        epsilon=0.1, num_steps=5, num_targets=2
    ),
}


class SeedTest(tf.test.TestCase):
    def test_as_seed_accepts_every_kind(self):
        self.assertAllEqual(base.as_seed(None), base.as_seed(0))
        self.assertAllEqual(base.as_seed(5), [5, 0])
        self.assertEqual(base.as_seed(5).dtype, tf.int32)
        self.assertAllEqual(base.as_seed(-1), [2**31 - 1, 0])
        wide = base.as_seed(tf.constant([2**40 + 3, 7], tf.int64))
        self.assertEqual(wide.dtype, tf.int32)
        self.assertAllEqual(wide, [3, 7])
        gen_a = keras.random.SeedGenerator(11)
        gen_b = keras.random.SeedGenerator(11)
        first = base.as_seed(gen_a)
        self.assertAllEqual(first, base.as_seed(gen_b))
        # A generator advances: its next seed differs.
        self.assertNotAllEqual(first, base.as_seed(gen_a))
        with self.assertRaisesRegex(ValueError, "shape"):
            base.as_seed(tf.constant([1, 2, 3]))

    def test_split_seed(self):
        seeds = base.split_seed(base.as_seed(7), 3)
        self.assertLen(seeds, 3)
        values = {tuple(s.numpy()) for s in seeds}
        self.assertLen(values, 3)
        again = base.split_seed(base.as_seed(7), 3)
        for a, b in zip(seeds, again, strict=True):
            self.assertAllEqual(a, b)

    def test_same_seed_same_output(self):
        model = harness.bn_model()
        x, y = harness.attack_data()
        attack = attacks.ProjectedGradient(
            epsilon=0.1, step_size=0.05, num_steps=3, restarts=2
        )
        a = attack(model, x, y, seed=5)
        self.assertAllEqual(a, attack(model, x, y, seed=5))
        self.assertNotAllClose(a, attack(model, x, y, seed=6))
        gen_a = keras.random.SeedGenerator(11)
        gen_b = keras.random.SeedGenerator(11)
        self.assertAllEqual(
            attack(model, x, y, seed=gen_a), attack(model, x, y, seed=gen_b)
        )


class RepeatTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters(0, 1, 2, 3, 7)
    def test_applies_the_step_times_times(self, times):
        value = base.repeat(lambda v: 2.0 * v + 1.0, tf.constant(1.0), times)
        want = 1.0
        for _ in range(times):
            want = 2.0 * want + 1.0
        self.assertAllClose(value, want)

    @parameterized.parameters(2, 5)
    def test_works_without_autograph(self, times):
        @tf.function(autograph=False)
        def run(v):
            return base.repeat(lambda t: t + 1.0, v, times)

        self.assertAllClose(run(tf.zeros([3])), [float(times)] * 3)

    def test_short_runs_unroll_long_runs_loop(self):
        def ops(times):
            graph = (
                tf.function(lambda v: base.repeat(lambda t: t * 3.0, v, times))
                .get_concrete_function(tf.TensorSpec([], tf.float32))
                .graph
            )
            return [op.type for op in graph.get_operations()]

        self.assertNotIn("While", ops(2))
        self.assertTrue(any("While" in t for t in ops(3)), ops(3))


class ConfigTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters(*ATTACKS)
    def test_get_config_rebuilds_the_attack(self, name):
        attack = ATTACKS[name]()
        config = attack.get_config()
        rebuilt = type(attack)(**config)
        self.assertEqual(rebuilt.get_config(), config)
        self.assertEqual(rebuilt.name, attack.name)
        self.assertEqual(repr(rebuilt), repr(attack))

    @parameterized.parameters(*ATTACKS)
    def test_replace(self, name):
        attack = ATTACKS[name]()
        copy = attack.replace(epsilon=0.05)
        self.assertIsInstance(copy, type(attack))
        self.assertNear(copy.epsilon, 0.05, 1e-9)
        self.assertNear(attack.epsilon, 0.1, 1e-9)
        self.assertEqual(
            copy.get_config(), {**attack.get_config(), "epsilon": 0.05}
        )
        with self.assertRaisesRegex(TypeError, "no setting.*'bogus'"):
            attack.replace(bogus=1)

    def test_serialize(self):
        self.assertIsNone(base.serialize(None))
        attack = attacks.ProjectedGradient(
            epsilon=0.1,
            step_size=0.05,
            num_steps=3,
            objective=lambda logits, labels: logits[:, 0],
        )
        got = base.serialize(attack)
        self.assertEqual(got["class_name"], "ProjectedGradient")
        self.assertEqual(got["config"]["num_steps"], 3)
        # A callable objective is named, so the config is JSON-friendly.
        self.assertEqual(got["config"]["objective"], "<lambda>")

    def test_base_class_has_no_config(self):
        with self.assertRaises(NotImplementedError):
            base.Attack().get_config()

    def test_uses_gradients(self):
        self.assertTrue(ATTACKS["pgd"]().uses_gradients)
        self.assertTrue(ATTACKS["apgd"]().uses_gradients)
        self.assertFalse(ATTACKS["square"]().uses_gradients)
        self.assertTrue(ATTACKS["fab_t"]().uses_gradients)


class XInitTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters(*ATTACKS)
    def test_x_init_is_honoured_and_the_output_is_valid(self, name):
        model = image_model()
        x, y = harness.attack_data(num_classes=4)
        attack = ATTACKS[name]()
        # A start partly outside the ball and the box.
        start = x + 0.3 * tf.cos(50.0 * x)
        x_adv = attack(model, x, y, seed=1, x_init=start)
        self.assertEqual(x_adv.shape, x.shape)
        self.assertAllInRange(x_adv, 0.0, 1.0)
        self.assertAllLessEqual(
            attack.threat_model.distance(x, x_adv), 0.1 + 1e-5
        )
        # The start matters: another start, another result.
        other = attack(model, x, y, seed=1, x_init=x)
        self.assertNotAllClose(x_adv, other)

    def test_gradient_attacks_from_x_init_do_not_depend_on_the_seed(self):
        model = image_model()
        x, y = harness.attack_data(num_classes=4)
        start = x + 0.05 * tf.cos(50.0 * x)
        for name in ("pgd", "apgd", "fab_t"):
            attack = ATTACKS[name]()
            self.assertAllClose(
                attack(model, x, y, seed=1, x_init=start),
                attack(model, x, y, seed=2, x_init=start),
                msg=name,
            )


def all_attacks():
    """One of every attack class of tfadv, wrappers included."""
    pgd = ATTACKS["pgd"]()
    return {
        **{name: make() for name, make in ATTACKS.items()},
        "apgd_t": attacks.APGDTargeted(epsilon=0.1, num_steps=3, num_targets=2),
        "backward_smoothing": attacks.BackwardSmoothingAttack(
            epsilon=0.1, num_steps=2, gamma=0.5
        ),
        "bpda_eot": attacks.BPDA(
            attacks.EOT(
                pgd, num_samples=2, transform=attacks.GaussianNoise(0.05)
            ),
            layers=["dense"],
        ),
        "eot": attacks.EOT(pgd, num_samples=2),
        "n_fgsm": attacks.NoiseFGSM(epsilon=0.1),
    }


def tfadv_attack_classes():
    found, todo = set(), [base.Attack]
    while todo:
        for sub in todo.pop().__subclasses__():
            if sub not in found:
                found.add(sub)
                todo.append(sub)
    return {c for c in found if c.__module__.startswith("tfadv.")}


class SerializationTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters(*all_attacks())
    def test_keras_round_trip(self, name):
        attack = all_attacks()[name]
        config = keras.saving.serialize_keras_object(attack)
        self.assertEqual(
            config["registered_name"], f"tfadv>{type(attack).__name__}"
        )
        rebuilt = keras.saving.deserialize_keras_object(config)
        self.assertIs(type(rebuilt), type(attack))
        self.assertEqual(repr(rebuilt), repr(attack))
        self.assertEqual(rebuilt.name, attack.name)
        self.assertEqual(keras.saving.serialize_keras_object(rebuilt), config)

    def test_every_tfadv_attack_class_is_registered(self):
        classes = tfadv_attack_classes()
        self.assertGreaterEqual(len(classes), 7)
        for cls in classes:
            self.assertEqual(
                keras.saving.get_registered_name(cls), f"tfadv>{cls.__name__}"
            )

    def test_a_new_attack_is_registered_and_checked_automatically(self):
        class Identity(base.Attack):
            def __init__(self, *, epsilon=0.1):
                self.threat_model = attacks.LinfThreatModel(epsilon)

            def get_config(self):
                return {"epsilon": self.epsilon}

            def __call__(self, model, x, y, *, seed=None, training=False):
                return tf.stop_gradient(tf.convert_to_tensor(x))

        self.assertEqual(
            keras.saving.get_registered_name(Identity),
            f"{__name__}>Identity",
        )
        rebuilt = keras.saving.deserialize_keras_object(
            keras.saving.serialize_keras_object(Identity(epsilon=0.2))
        )
        self.assertAllClose(rebuilt.epsilon, 0.2)
        x, y = harness.attack_data()
        with self.assertRaisesRegex(ValueError, "Identity got images"):
            Identity()(image_model(), x * 255.0, y)


class ImageCheckTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters(*all_attacks())
    def test_images_outside_the_unit_box_are_refused(self, name):
        attack = all_attacks()[name]
        model = image_model()
        x, y = harness.attack_data(num_classes=4)
        with self.assertRaisesRegex(
            ValueError, r"values in \[0, 255\], outside \[0, 1\]"
        ):
            attack(model, x * 255.0, y, seed=0)
        nan = tf.tensor_scatter_nd_update(x, [[0, 0, 0, 0]], [np.nan])
        with self.assertRaisesRegex(ValueError, "NaN"):
            attack(model, nan, y, seed=0)
        with self.assertRaisesRegex(TypeError, "floating-point images"):
            attack(model, tf.cast(x * 255.0, tf.uint8), y, seed=0)

    def test_compiled_attacks_assert_the_range(self):
        attack = ATTACKS["pgd"]()
        model = image_model()
        x, y = harness.attack_data(num_classes=4)
        run = tf.function(lambda x: attack(model, x, y, seed=0))
        self.assertAllInRange(run(x), 0.0, 1.0)
        with self.assertRaisesRegex(
            tf.errors.InvalidArgumentError, r"ProjectedGradient: Images must"
        ):
            run(x * 255.0)

    def test_a_wrapper_checks_once_and_a_trainer_not_again(self):
        def asserts(fn, *args):
            graph = tf.function(fn).get_concrete_function(*args).graph
            # TF2 builds each assertion as a conditional named assert_*.
            return sum(
                op.type in ("Assert", "If", "StatelessIf")
                and "assert" in op.name
                for op in graph.get_operations()
            )

        model = image_model()
        x, y = harness.attack_data(num_classes=4)
        pgd = ATTACKS["pgd"]()
        wrapped = attacks.EOT(attacks.EOT(pgd, num_samples=1), num_samples=1)
        self.assertEqual(asserts(lambda x: pgd(model, x, y), x), 2)
        self.assertEqual(asserts(lambda x: wrapped(model, x, y), x), 2)

        def checked(x):
            with base.inputs_checked():
                return pgd(model, x, y)

        self.assertEqual(asserts(checked, x), 0)
