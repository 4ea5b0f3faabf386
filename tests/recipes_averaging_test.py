"""tfadv.recipes.averaging: the EMA of the weights, its checkpoint, its logs.

The average is checked against a NumPy EMA of the weights recorded after
every step (BatchNorm statistics included), under one device and two
replicas; it survives a checkpoint and a resume bit-exactly.
"""

import os

import keras
import numpy as np
import tensorflow as tf
from absl import flags
from absl.testing import parameterized

from tests import harness
from tfadv import attacks
from tfadv import methods
from tfadv import run_folder
from tfadv.recipes import averaging


def setUpModule():
    flags.FLAGS.mark_as_parsed()


class Recorder(keras.callbacks.Callback):
    """The classifier's weights after every training step."""

    def __init__(self, classifier):
        super().__init__()
        self.classifier = classifier
        self.weights = []

    def on_train_batch_end(self, batch, logs=None):
        self.weights.append(self.classifier.get_weights())


class Interrupt(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            raise RuntimeError("interrupted")


def numpy_ema(steps, decay):
    """FastAT_Benchmark's average: the first step's weights, then EMA."""
    average = [w.copy() for w in steps[0]]
    for weights in steps[1:]:
        average = [
            np.float32(decay) * a + np.float32(1 - decay) * w
            for a, w in zip(average, weights, strict=True)
        ]
    return average


def no_bn_classifier(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(harness.INPUT_SHAPE)
    h = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    h = keras.layers.Flatten()(h)
    return keras.Model(inputs, keras.layers.Dense(harness.NUM_CLASSES)(h))


def dataset(num=16, batch=harness.BATCH):
    x, y = harness.tiny_data(num)
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch)


def pgd_at(classifier):
    return methods.PGDAT(
        classifier,
        train_attack=harness.pgd(),
        eval_attack=harness.eval_attack(),
    )


def compiled(make_method, make_classifier, strategy=None, **compile_args):
    strategy = strategy or tf.distribute.get_strategy()
    with strategy.scope():
        method = make_method(make_classifier())
        method.compile(optimizer=keras.optimizers.SGD(0.1), **compile_args)
        method.build((None, *harness.INPUT_SHAPE))
    return method


class AverageTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.named_parameters(
        ("default", "default"), ("mirrored", "mirrored")
    )
    def test_average_is_the_numpy_ema_of_every_step(self, strategy):
        method = compiled(
            pgd_at, harness.tiny_classifier, harness.strategy(strategy)
        )
        ema = averaging.WeightAveraging(method, decay=0.75)
        recorder = Recorder(method.classifier)
        method.fit(
            dataset(24, 8), epochs=2, callbacks=[recorder, ema], verbose=0
        )
        self.assertLen(recorder.weights, 6)
        self.assertEqual(ema.num_updates, 6)
        # Every weight is averaged, BatchNorm's moving statistics too.
        names = [v.path for v in method.classifier.weights]
        self.assertTrue(any("moving_mean" in n for n in names))
        self.assertLen(ema.average_variables, len(names))
        want = numpy_ema(recorder.weights, 0.75)
        got = ema.average_weights()
        for name, a, b in zip(names, want, got, strict=True):
            self.assertAllClose(a, b, rtol=1e-6, atol=1e-7, msg=name)
        # The average is not the last weights (the test can fail).
        last = recorder.weights[-1]
        self.assertGreater(
            max(
                float(np.abs(a - b).max())
                for a, b in zip(want, last, strict=True)
            ),
            1e-4,
        )

    def test_first_step_copies_and_decay_zero_follows_the_weights(self):
        method = compiled(pgd_at, harness.tiny_classifier)
        ema = averaging.WeightAveraging(method, decay=0.0)
        # Before any step the average is the classifier's weights.
        for a, b in zip(
            ema.average_weights(), method.classifier.get_weights(), strict=True
        ):
            self.assertAllEqual(a, b)
        method.fit(dataset(8), epochs=1, callbacks=[ema], verbose=0)
        for a, b in zip(
            ema.average_weights(), method.classifier.get_weights(), strict=True
        ):
            self.assertAllEqual(a, b)

    def test_two_replicas_average_like_one_device(self):
        averages = []
        for strategy in ("default", "mirrored"):
            method = compiled(
                methods.Standard, no_bn_classifier, harness.strategy(strategy)
            )
            ema = averaging.WeightAveraging(method, decay=0.5)
            method.fit(dataset(24, 8), epochs=1, callbacks=[ema], verbose=0)
            averages.append(ema.average_weights())
        for a, b in zip(*averages, strict=True):
            self.assertAllClose(a, b, rtol=1e-5, atol=1e-6)

    def test_average_loaded_swaps_in_and_back(self):
        method = compiled(pgd_at, harness.tiny_classifier)
        ema = averaging.WeightAveraging(method, decay=0.9)
        method.fit(dataset(16), epochs=1, callbacks=[ema], verbose=0)
        trained = method.classifier.get_weights()
        with ema.average_loaded() as classifier:
            for a, b in zip(
                classifier.get_weights(), ema.average_weights(), strict=True
            ):
                self.assertAllEqual(a, b)
        for a, b in zip(method.classifier.get_weights(), trained, strict=True):
            self.assertAllEqual(a, b)

    def test_the_average_is_validated_beside_the_model(self):
        method = compiled(pgd_at, harness.tiny_classifier)
        val = dataset(16)
        ema = averaging.WeightAveraging(method, decay=0.5, validation_data=val)
        history = method.fit(
            dataset(16),
            validation_data=val,
            epochs=2,
            callbacks=[ema],
            verbose=0,
        ).history
        for name in ("clean_accuracy", "robust_accuracy"):
            self.assertLen(history["val_" + name], 2)
            self.assertLen(history["val_average_" + name], 2)
        # The last epoch's clean accuracy is the average's, by NumPy.
        with ema.average_loaded() as classifier:
            logits = np.concatenate(
                [classifier.predict(x, verbose=0) for x, _ in val]
            )
        labels = np.concatenate([y for _, y in val])
        self.assertAllClose(
            history["val_average_clean_accuracy"][-1],
            np.mean(np.argmax(logits, -1) == labels),
        )
        robust = history["val_average_robust_accuracy"][-1]
        self.assertBetween(
            robust, 0.0, history["val_average_clean_accuracy"][-1]
        )


class ScorerTest(tf.test.TestCase):
    def test_scores_by_numpy_and_the_same_at_every_call(self):
        classifier = harness.tiny_classifier()
        data = dataset(14, 4)  # a short last batch
        x = np.concatenate([b for b, _ in data])
        labels = np.concatenate([y for _, y in data])
        clean = np.mean(
            np.argmax(classifier.predict(x, verbose=0), -1) == labels
        )
        # An attack at epsilon 0 changes nothing: robust equals clean.
        still = averaging.Scorer(classifier, data, harness.pgd(eps=0.0))()
        self.assertAllClose(still["clean_accuracy"], clean)
        self.assertAllClose(still["robust_accuracy"], clean)
        scorer = averaging.Scorer(classifier, data, harness.pgd(eps=0.3))
        first = scorer()
        self.assertEqual(scorer(), first)  # fixed seeds
        self.assertLess(first["robust_accuracy"], first["clean_accuracy"])
        self.assertEqual(
            averaging.Scorer(classifier, data, None)(),
            {"clean_accuracy": still["clean_accuracy"]},
        )

    def test_a_training_perturbation_is_refused(self):
        noise = attacks.NoiseFGSM(epsilon=0.1)
        with self.assertRaisesRegex(ValueError, "must be an evaluation"):
            averaging.Scorer(harness.tiny_classifier(), dataset(4), noise)


class PerturbedInsideTheStep(methods.PGDAT):
    """PGD-AT that shifts the weights around its update, as AWP does."""

    SHIFT = 1.0

    def minibatch_update(self, x, y):
        weights = self.classifier.trainable_variables
        for v in weights:
            v.assign_add(tf.fill(v.shape, self.SHIFT))
        logs = super().minibatch_update(x, y)
        for v in weights:
            v.assign_sub(tf.fill(v.shape, self.SHIFT))
        return logs


class PerturbationTest(tf.test.TestCase):
    def test_a_perturbation_removed_inside_the_step_is_never_averaged(self):
        method = compiled(
            lambda c: PerturbedInsideTheStep(c, train_attack=harness.pgd()),
            harness.tiny_classifier,
        )
        ema = averaging.WeightAveraging(method, decay=0.5)
        recorder = Recorder(method.classifier)
        method.fit(dataset(16), epochs=1, callbacks=[recorder, ema], verbose=0)
        # The EMA is linear: an average of the shifted weights would be
        # SHIFT away from this one in every trainable entry.
        want = numpy_ema(recorder.weights, 0.5)
        for a, b in zip(want, ema.average_weights(), strict=True):
            self.assertAllClose(a, b, rtol=1e-6, atol=1e-6)


class CheckpointTest(tf.test.TestCase):
    def _fit(self, logdir, epochs, extra=()):
        method = compiled(pgd_at, harness.tiny_classifier)
        ema = averaging.WeightAveraging(method, decay=0.8)
        checkpoint = run_folder.ResumableCheckpoint(logdir, states=[ema])
        method.fit(
            dataset(16),
            epochs=epochs,
            callbacks=[ema, checkpoint, *extra],
            verbose=0,
        )
        return method, ema

    def test_resumed_average_equals_the_uninterrupted_one_exactly(self):
        root = self.create_tempdir().full_path
        want_method, want = self._fit(os.path.join(root, "whole"), 2)
        logdir = os.path.join(root, "interrupted")
        with self.assertRaisesRegex(RuntimeError, "interrupted"):
            self._fit(logdir, 2, [Interrupt()])
        got_method, got = self._fit(logdir, 2)
        self.assertEqual(got.num_updates, want.num_updates)
        self.assertEqual(got.num_updates, 8)
        for a, b in zip(
            got.average_weights(), want.average_weights(), strict=True
        ):
            self.assertAllEqual(a, b)
        for a, b in zip(
            got_method.classifier.get_weights(),
            want_method.classifier.get_weights(),
            strict=True,
        ):
            self.assertAllEqual(a, b)

    def test_a_saved_average_loads_bit_exactly(self):
        logdir = os.path.join(self.create_tempdir().full_path, "run")
        _, saved = self._fit(logdir, 1)
        # A fresh trainer and average, restored by the checkpoint (0 more
        # epochs to train).
        method = compiled(pgd_at, harness.tiny_classifier)
        loaded = averaging.WeightAveraging(method, decay=0.8)
        checkpoint = run_folder.ResumableCheckpoint(logdir, states=[loaded])
        method.fit(
            dataset(16), epochs=1, callbacks=[loaded, checkpoint], verbose=0
        )
        self.assertEqual(loaded.num_updates, saved.num_updates)
        for a, b in zip(
            loaded.average_weights(), saved.average_weights(), strict=True
        ):
            self.assertAllEqual(a, b)


class BadInputTest(tf.test.TestCase):
    def test_bad_decay(self):
        method = compiled(pgd_at, harness.tiny_classifier)
        for decay in (1.0, -0.1, "0.9x"):
            with self.assertRaisesRegex(ValueError, "WeightAveraging.decay"):
                averaging.WeightAveraging(method, decay=decay)

    def test_several_steps_per_execution_are_refused(self):
        method = compiled(
            pgd_at, harness.tiny_classifier, steps_per_execution=2
        )
        with self.assertRaisesRegex(
            ValueError, "steps_per_execution = 1, got 2.*run.steps_per"
        ):
            averaging.WeightAveraging(method)

    def test_an_unbuilt_trainer_is_refused(self):
        method = pgd_at(harness.subclassed_classifier())
        with self.assertRaisesRegex(ValueError, "has no weights yet"):
            averaging.WeightAveraging(method)
