"""Every method's declared passes against an instrumented classifier.

The classifier carries two counting layers: one before its first layer
and one after it. Each counts its forwards, and, through a
`tf.custom_gradient` identity, the backward passes that go through it. A
kind of pass leaves a known signature on the four counters (a weight pass
does not reach the input; a layer-0 pass never reaches the second
counter; a double backpropagation goes through the second counter twice),
so a method's declaration predicts what one `train_step` counts, and the
optimizer's iterations count its updates.
"""

import keras
import tensorflow as tf
from absl.testing import parameterized

from tfadv import attacks
from tfadv import methods
from tfadv.attacks import pgd
from tfadv.methods import controllers
from tfadv.methods import costs

INPUT_SHAPE = (8, 8, 1)
NUM_CLASSES = 3
BATCH = 4
EPS = 0.1

# (forwards before layer 0, forwards after it, backwards into the input,
# backwards through layer 0's output) of one pass of each kind.
SIGNATURES = {
    "weight_passes": (1, 1, 0, 1),
    "weight_input_passes": (1, 1, 1, 1),
    "updates": (0, 0, 0, 0),
    "input_gradients": (1, 1, 1, 1),
    "costate_passes": (1, 1, 0, 1),
    "layer0_input_gradients": (1, 0, 1, 0),
    "layer0_weight_gradients": (1, 0, 0, 0),
    "inference_forwards": (1, 1, 0, 0),
    "second_order": (1, 1, 1, 2),
    "weight_backwards": (0, 0, 0, 1),
}


class _Counters:
    """Forward and backward counts, outside Keras's variable tracking."""

    def __init__(self):
        self.forwards = tf.Variable(0)
        self.backwards = tf.Variable(0)


class Counting(keras.layers.Layer):
    """The identity, counting its forwards and the backwards through it."""

    def __init__(self, counters, **kwargs):
        super().__init__(**kwargs)
        self._counters = counters

    def compute_output_shape(self, input_shape):
        return input_shape

    def call(self, inputs):
        counters = self._counters

        @tf.custom_gradient
        def identity(x):
            counters.forwards.assign_add(1)

            def grad(dy, variables=None):
                counters.backwards.assign_add(1)
                return tf.identity(dy), [None] * len(variables or [])

            return tf.identity(x), grad

        return identity(inputs)


def counting_classifier():
    """A conv net with counters around its first layer, and the counters."""
    keras.utils.set_random_seed(0)
    before, after = _Counters(), _Counters()
    inputs = keras.Input(INPUT_SHAPE)
    h = Counting(before, name="count_input")(inputs)
    h = keras.layers.Conv2D(4, 3, padding="same", name="conv0")(h)
    h = keras.layers.ReLU(name="first_layer")(h)
    h = Counting(after, name="count_layer0")(h)
    h = keras.layers.Conv2D(4, 3, strides=2, activation="relu")(h)
    h = keras.layers.Flatten()(h)
    outputs = keras.layers.Dense(NUM_CLASSES)(h)
    return keras.Model(inputs, outputs), (before, after)


def _pgd(steps, **kwargs):
    return pgd.ProjectedGradient(
        epsilon=EPS, step_size=EPS / 4, num_steps=steps, **kwargs
    )


METHODS = {
    "standard": lambda c: methods.Standard(c),
    "pgd_at": lambda c: methods.PGDAT(c, train_attack=_pgd(3)),
    "pgd_at_clean_weight": lambda c: methods.PGDAT(
        c, train_attack=_pgd(2), clean_weight=0.5
    ),
    "pgd_restarts": lambda c: methods.PGDAT(
        c, train_attack=_pgd(2, restarts=2)
    ),
    "fgsm_rs": lambda c: methods.FGSMRS(c, epsilon=EPS),
    "n_fgsm": lambda c: methods.NFGSM(c, epsilon=EPS),
    "grad_align": lambda c: methods.GradAlign(c, epsilon=EPS, align_weight=0.2),
    "fgsm_pgi": lambda c: methods.FGSMPGI(c, epsilon=EPS, num_examples=BATCH),
    "free_at": lambda c: methods.FreeAT(
        c,
        train_attack=_pgd(3, start="none"),
        batch_size=BATCH,
    ),
    "trades": lambda c: methods.TRADES(
        c, train_attack=pgd.trades_attack(EPS, objective="kl", num_steps=2)
    ),
    "trades_recompute": lambda c: methods.TRADES(
        c,
        train_attack=pgd.trades_attack(
            EPS, objective="kl", num_steps=2
        ).replace(recompute_target=True),
    ),
    "mart": lambda c: methods.MART(c, epsilon=EPS),
    "backward_smoothing": lambda c: methods.BackwardSmoothing(c, epsilon=EPS),
    "yopo": lambda c: methods.YOPO(
        c, m=2, train_attack=_pgd(3, start="uniform")
    ),
    "trades_yopo": lambda c: methods.TRADESYOPO(
        c,
        m=2,
        train_attack=_pgd(2, objective="kl", start="gaussian"),
    ),
    "gaat_order1": lambda c: methods.GAAT(c, epsilon=EPS, order=1),
    "gaat_exact": lambda c: methods.GAAT(c, epsilon=EPS, initial_phase="exact"),
    "noisy_training": lambda c: methods.NoisyTraining(c),
    "noisy_training_penalty": lambda c: methods.NoisyTraining(
        c, gradient_penalty=0.1
    ),
}

# Counts the instrument sees that are no pass: FGSM-PGI's update is
# recorded on the tape that watches the prior point (for the prior's input
# gradient), so its backward also calls the input counter's gradient
# function, whose result nothing uses.
UNUSED = {"fgsm_pgi": (0, 0, 1, 0)}

# Step counts set before the step: the declaration is for the current one.
COUNTS = {
    "deat_r2": (
        lambda c: methods.DEAT(
            c, train_attack=_pgd(4), step_controller=controllers.MPlus()
        ),
        2,
    ),
    "mplus_pgd_2": (
        lambda c: methods.PGDAT(
            c,
            train_attack=_pgd(3),
            step_controller=controllers.MPlus(
                initial_steps=0, measure="last_attack_step"
            ),
        ),
        2,
    ),
    "mplus_pgd_0": (
        lambda c: methods.PGDAT(
            c,
            train_attack=_pgd(3),
            step_controller=controllers.MPlus(initial_steps=0),
        ),
        0,
    ),
    "mplus_trades_1": (
        lambda c: methods.TRADES(
            c,
            train_attack=pgd.trades_attack(EPS, objective="kl", num_steps=3),
            step_controller=controllers.MPlus(initial_steps=0),
        ),
        1,
    ),
}


def _batch(trainer):
    x = tf.random.stateless_uniform((BATCH, *INPUT_SHAPE), seed=[1, 2])
    y = tf.constant([0, 1, 2, 0], tf.int32)
    if trainer.uses_example_ids:
        return {"image": x, "example_id": tf.range(BATCH)}, y
    return x, y


def predicted(passes: costs.Passes) -> tuple:
    totals = [0, 0, 0, 0]
    for kind, count in passes.counts().items():
        for i, value in enumerate(SIGNATURES[kind]):
            totals[i] += count * value
    return tuple(totals)


class CountedPassesTest(tf.test.TestCase, parameterized.TestCase):
    def counted(self, trainer, counters):
        """Counter totals and updates of one compiled `train_step`."""
        trainer.compile(optimizer=keras.optimizers.SGD(0.01))
        step = tf.function(trainer.train_step, autograph=False)
        data = _batch(trainer)
        step(data)  # traced, and the first batch's one-off work done
        for c in counters:
            c.forwards.assign(0)
            c.backwards.assign(0)
        before = int(trainer.optimizer.iterations)
        step(data)
        updates = int(trainer.optimizer.iterations) - before
        first, second = counters
        counts = tuple(
            int(v)
            for v in (
                first.forwards,
                second.forwards,
                first.backwards,
                second.backwards,
            )
        )
        return counts, updates

    def check(self, trainer, counters, unused=(0, 0, 0, 0)):
        declared = trainer.passes()
        counts, updates = self.counted(trainer, counters)
        expected = tuple(
            p + u for p, u in zip(predicted(declared), unused, strict=True)
        )
        self.assertEqual(counts, expected, declared)
        self.assertEqual(updates, declared.updates, declared)
        return declared

    @parameterized.named_parameters(
        *((name, name, make) for name, make in METHODS.items())
    )
    def test_declaration_matches_counted_passes(self, name, make):
        classifier, counters = counting_classifier()
        self.check(make(classifier), counters, UNUSED.get(name, (0, 0, 0, 0)))

    @parameterized.named_parameters(
        *((name, make, count) for name, (make, count) in COUNTS.items())
    )
    def test_declaration_follows_current_step_count(self, make, count):
        classifier, counters = counting_classifier()
        trainer = make(classifier)
        trainer.set_step_count(trainer.step_controller_count, count)
        declared = self.check(trainer, counters)
        self.assertGreater(declared.total(), 0)

    def test_counts_scale_with_hyperparameters(self):
        classifier, _ = counting_classifier()
        yopo = methods.YOPO(classifier, m=3, train_attack=_pgd(4))
        self.assertEqual(
            yopo.passes(),
            costs.Passes(
                weight_passes=3,
                updates=1,
                layer0_input_gradients=12,
                layer0_weight_gradients=3,
                inference_forwards=1,
            ),
        )
        free = methods.FreeAT(
            classifier, train_attack=_pgd(5, start="none"), batch_size=BATCH
        )
        self.assertEqual(free.passes().updates, 5)
        self.assertEqual(free.passes().weight_input_passes, 5)

    def test_signatures_tell_the_kinds_apart(self):
        # A declaration that put an input gradient where a weight pass is
        # (or the reverse) would predict other counts.
        right = costs.Passes(input_gradients=2, weight_passes=1)
        wrong = costs.Passes(input_gradients=1, weight_passes=2)
        self.assertNotEqual(predicted(right), predicted(wrong))


class AttackPassesTest(tf.test.TestCase):
    def test_projected_gradient(self):
        self.assertEqual(
            costs.attack_passes(_pgd(5)), costs.Passes(input_gradients=5)
        )
        self.assertEqual(
            costs.attack_passes(_pgd(3, restarts=2, use_predicted_labels=True)),
            costs.Passes(input_gradients=6, inference_forwards=3),
        )
        self.assertEqual(
            costs.attack_passes(_pgd(3).start_only()), costs.Passes()
        )

    def test_passes_add_and_total(self):
        total = costs.Passes(updates=1, weight_passes=2) + costs.Passes(
            updates=1, inference_forwards=1
        )
        self.assertEqual(
            total,
            costs.Passes(updates=2, weight_passes=2, inference_forwards=1),
        )
        self.assertEqual(total.total(), 5)

    def test_unknown_attack_is_refused(self):
        class Mystery(attacks.Attack):
            def __call__(self, model, x, y, *, seed=None, training=False):
                return x

        with self.assertRaisesRegex(TypeError, "Mystery.*not known"):
            costs.attack_passes(Mystery())
