"""Callbacks: the catastrophic-overfitting guard and `co_guard`, the
divergence guard and the adversarial image grid."""

import json
import os
import types

import keras
import numpy as np
import tensorflow as tf
from absl import flags
from absl.testing import parameterized

from tests import harness
from tfadv import attacks
from tfadv import callbacks
from tfadv import methods


def setUpModule():
    # tf.test.TestCase.create_tempdir reads absl flags.
    flags.FLAGS.mark_as_parsed()


def _separable_problem(n=32, d=5, c=3, seed=0):
    """A linear classifier that is right on every point, with margin."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(d, c)).astype("float32")
    b = np.zeros(c, "float32")
    x = rng.uniform(size=(n, d)).astype("float32")
    z = x @ w
    keep = np.sort(z, -1)[:, -1] - np.sort(z, -1)[:, -2] > 0.2
    return w, b, x[keep], z[keep].argmax(-1).astype("int32")


class _Scramble(keras.callbacks.Callback):
    """Negates the classifier's weights at the end of epoch `epoch`."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            classifier = self.model.classifier
            classifier.set_weights([-v for v in classifier.get_weights()])


class _Scripted(callbacks.CatastrophicOverfittingStop):
    """The guard with robust accuracies read from a script."""

    def __init__(self, script, **kwargs):
        x, y = np.zeros((2, 5), "float32"), np.zeros(2, "int32")
        super().__init__(x, y, lambda *a, **k: None, **kwargs)
        self.script = list(script)

    def robust_accuracy(self):
        return self.script[len(self.history)]


class CatastrophicOverfittingStopTest(tf.test.TestCase, parameterized.TestCase):
    def _drive(self, guard, epochs):
        """Runs the guard's hooks; the weights record the epoch."""
        model = methods.Standard(
            keras.Sequential([keras.Input((5,)), keras.layers.Dense(3)])
        )
        model.stop_training = False  # as fit() sets it
        guard.set_model(model)
        guard.on_train_begin()
        for epoch in range(epochs):
            model.classifier.set_weights(
                [np.full_like(v, epoch) for v in model.classifier.get_weights()]
            )
            guard.on_epoch_end(epoch)
            if model.stop_training:
                break
        return model

    @parameterized.parameters(
        # compare_to, script, stopped at, restored epoch
        ("previous", [0.5, 0.6, 0.45, 0.2, 0.9], 3, 2),
        ("previous", [0.5, 0.6, 0.45, 0.38, 0.3], None, None),
        ("best", [0.5, 0.6, 0.45, 0.38, 0.9], 3, 1),
        ("best", [0.5, 0.6, 0.41, 0.5, 0.45], None, None),
    )
    def test_rule(self, compare_to, script, stopped_at, restored):
        guard = _Scripted(script, compare_to=compare_to)
        model = self._drive(guard, len(script))
        info = guard.results_info()["catastrophic_overfitting"]
        self.assertEqual(info["stopped"], stopped_at is not None)
        self.assertEqual(info["epoch"], stopped_at)
        self.assertEqual(info["restored_epoch"], restored)
        if stopped_at is None:
            self.assertEqual(info["robust_accuracy_history"], script)
            return
        self.assertEqual(
            info["robust_accuracy_history"], script[: stopped_at + 1]
        )
        self.assertTrue(model.stop_training)
        for v in model.classifier.get_weights():
            self.assertAllEqual(v, np.full_like(v, restored))

    def test_stops_a_collapsing_run_and_restores_weights(self):
        w, b, x, y = _separable_problem()
        classifier = keras.Sequential(
            [keras.Input((5,)), keras.layers.Dense(3)]
        )
        classifier.layers[0].set_weights([w, b])
        method = methods.Standard(classifier)
        method.compile(optimizer=keras.optimizers.SGD(0.0))  # weights stay
        guard = callbacks.co_guard(
            datasets=types.SimpleNamespace(
                train=tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
            ),
            logdir=self.create_tempdir().full_path,
            attack=attacks.ProjectedGradient(
                epsilon=0.01, step_size=0.005, num_steps=5
            ),
        )
        self.assertEqual(guard.images.shape[0], 16)  # the first batch
        with self.assertLogs(level="WARNING") as logs:
            history = method.fit(
                x,
                y,
                batch_size=8,
                epochs=6,
                verbose=0,
                callbacks=[*method.callbacks(), _Scramble(epoch=2), guard],
            )
        self.assertTrue(
            any(
                "Catastrophic overfitting at epoch 2" in m for m in logs.output
            ),
            logs.output,
        )
        self.assertLen(history.history["loss"], 3)  # stopped after epoch 2
        info = guard.results_info()["catastrophic_overfitting"]
        self.assertTrue(info["stopped"])
        self.assertEqual(info["epoch"], 2)
        self.assertEqual(info["restored_epoch"], 1)
        self.assertEqual(info["robust_accuracy_history"][:2], [1.0, 1.0])
        self.assertLess(info["robust_accuracy_history"][2], 0.5)
        got_w, got_b = classifier.layers[0].get_weights()
        self.assertAllClose(got_w, w)
        self.assertAllClose(got_b, b)
        json.dumps(guard.results_info())  # results.json can hold it

    def test_bad_arguments(self):
        x, y = np.zeros((2, 5), "float32"), np.zeros(2, "int32")
        attack = harness.pgd()
        for threshold in (0.0, 1.5, -0.2, "x"):
            with self.assertRaisesRegex(ValueError, f"threshold.*{threshold}"):
                callbacks.CatastrophicOverfittingStop(
                    x, y, attack, threshold=threshold
                )
        with self.assertRaisesRegex(ValueError, "compare_to.*'worst'"):
            callbacks.CatastrophicOverfittingStop(
                x, y, attack, compare_to="worst"
            )
        with self.assertRaisesRegex(TypeError, "attack"):
            callbacks.CatastrophicOverfittingStop(x, y, "pgd")


class AdversarialImageGridTest(tf.test.TestCase):
    def test_one_labelled_grid_per_epoch(self):
        log_dir = os.path.join(self.create_tempdir().full_path, "images")
        x, y = harness.tiny_data()
        method = methods.Standard(harness.tiny_classifier())
        method.compile(optimizer="sgd")
        grid = callbacks.AdversarialImageGrid(
            x[:4], y[:4], harness.eval_attack(), log_dir
        )
        method.fit(
            x,
            y,
            batch_size=harness.BATCH,
            epochs=2,
            verbose=0,
            callbacks=[grid],
        )
        summaries = harness.event_tensors(log_dir)
        self.assertEqual(list(summaries), ["adversarial_grid/pgd3"])
        steps = [step for step, _ in summaries["adversarial_grid/pgd3"]]
        self.assertEqual(steps, [0, 1])
        _, value = summaries["adversarial_grid/pgd3"][0]
        width, height, png = tf.make_ndarray(value.tensor)
        image = tf.io.decode_png(png).numpy()
        self.assertEqual(image.shape, (int(height), int(width), 4))
        # Four columns of 1.4 inches at 80 dpi; not eight separate images.
        self.assertEqual(int(width), 4 * 112)
        self.assertGreater(image[..., :3].std(), 10)  # drawn, not blank

    def test_titles_name_labels_and_mark_what_the_attack_fooled(self):
        names = ("cat", "dog", "emu")
        columns = callbacks.grid_titles(
            labels=[0, 1, 2, 2],
            clean_predictions=[0, 1, 1, 2],
            adversarial_predictions=[0, 2, 0, 2],
            name=lambda label: names[label],
        )
        self.assertEqual(
            columns[1][0], ("true dog\nclean: dog", "adv: emu", "perturbation")
        )
        # Fooled: right when clean and wrong when attacked (not example 2,
        # already wrong when clean).
        self.assertEqual([fooled for _, fooled in columns], [0, 1, 0, 0])

    def test_the_perturbation_row_maps_epsilon_to_black_and_white(self):
        clean = np.full((1, 6, 6, 1), 0.5, "float32")
        delta = np.zeros_like(clean)
        delta[0, :3] = 0.1
        delta[0, 3:] = -0.1
        grid = callbacks.render_grid(
            clean, clean + delta, [0], [0], [0], epsilon=0.1
        )
        self.assertEqual(grid.dtype, np.uint8)
        self.assertEqual(grid.shape[0], 1)
        self.assertEqual(grid.shape[-1], 4)
        bottom = grid[0, 2 * grid.shape[1] // 3 :, :, :3]
        # Both extremes appear: +ε white, -ε black.
        self.assertEqual(bottom.max(), 255)
        self.assertEqual(bottom.min(), 0)


class DivergenceGuardTest(tf.test.TestCase):
    def test_a_nan_validation_loss_is_a_divergence(self):
        # Weights that exploded with a finite training loss (1e27) give a
        # NaN validation loss: the run stops there, and that epoch's
        # weights are not saved as the last good state.
        guard = callbacks.DivergenceGuard()
        guard.set_model(types.SimpleNamespace(stop_training=False))
        guard.on_epoch_end(0, {"loss": 2.0, "val_loss": 1.5})
        self.assertIsNone(guard.diverged_epoch)
        self.assertFalse(guard.model.stop_training)
        guard.on_epoch_end(1, {"loss": 5.6e27, "val_loss": float("nan")})
        self.assertEqual(guard.diverged_epoch, 1)
        self.assertTrue(guard.diverged_in_validation)
        self.assertIsNone(guard.diverged_at)
        self.assertTrue(guard.model.stop_training)

    def test_the_checkpoint_skips_an_epoch_with_a_nan_validation_loss(self):
        from tfadv import run_folder

        logdir = self.create_tempdir().full_path
        model = harness.tiny_classifier()
        model.compile(optimizer="sgd", loss="mse")
        checkpoint = run_folder.ResumableCheckpoint(logdir)
        checkpoint.set_model(model)
        checkpoint.on_epoch_end(0, {"loss": 1.0, "val_loss": float("nan")})
        self.assertIsNone(checkpoint.saved_epoch())
        checkpoint.on_epoch_end(0, {"loss": 1.0, "val_loss": 0.5})
        self.assertEqual(checkpoint.saved_epoch(), 1)

    def _guard(self, weights=()):
        guard = callbacks.DivergenceGuard()
        guard.set_model(
            types.SimpleNamespace(stop_training=False, weights=list(weights))
        )
        guard.on_train_begin()
        guard.on_epoch_begin(0)
        return guard

    def test_a_finite_explosion_of_the_training_loss_is_a_divergence(self):
        # lr 1e8 gives a finite loss of 5.6e27: as dead as NaN. The limit
        # is 1000 times the first batch's loss (2.0 here).
        guard = self._guard()
        guard.on_train_batch_end(0, {"loss": 2.0})
        guard.on_train_batch_end(1, {"loss": 1999.0})
        self.assertIsNone(guard.diverged_epoch)
        self.assertFalse(guard.model.stop_training)
        guard.on_train_batch_end(2, {"loss": 2001.0})
        self.assertEqual((guard.diverged_epoch, guard.diverged_at), (0, 2))
        self.assertEqual(guard.diverged_loss, 2001.0)
        self.assertTrue(guard.model.stop_training)
        self.assertRegex(
            guard.describe(4),
            r"exploded to 2e\+03 in epoch 1 \(batch 3 of 4\), over 1000 "
            r"times its first value \(2",
        )

    def test_a_small_first_loss_allows_a_loss_up_to_the_factor(self):
        # A resumed run starts low (0.01): its limit is 1000 x 1, not 10.
        guard = self._guard()
        guard.on_train_batch_end(0, {"loss": 0.01})
        guard.on_train_batch_end(1, {"loss": 999.0})
        self.assertIsNone(guard.diverged_epoch)
        guard.on_train_batch_end(2, {"loss": 1001.0})
        self.assertEqual(guard.diverged_at, 2)

    def test_a_nan_loss_is_still_a_divergence(self):
        guard = self._guard()
        guard.on_train_batch_end(0, {"loss": float("nan")})
        self.assertEqual(guard.diverged_at, 0)
        self.assertRegex(guard.describe(4), "NaN or infinite in epoch 1")

    def test_a_non_finite_weight_is_a_divergence(self):
        weights = [keras.Variable(np.ones(3, "float32"))]
        guard = self._guard(weights)
        guard.on_epoch_end(0, {"loss": 2.0, "val_loss": 1.5})
        self.assertIsNone(guard.diverged_epoch)
        weights[0].assign([1.0, np.inf, 1.0])
        guard.on_epoch_end(1, {"loss": 2.0, "val_loss": 1.5})
        self.assertEqual(guard.diverged_epoch, 1)
        self.assertTrue(guard.diverged_weights)
        self.assertRegex(guard.describe(4), "A weight became NaN or infinite")

    def test_a_bad_explosion_factor_is_refused(self):
        for factor in (1.0, 0.5, float("nan")):
            with self.assertRaisesRegex(
                ValueError, r"explosion_factor must be in \(1, inf\]"
            ):
                callbacks.DivergenceGuard(explosion_factor=factor)

    def test_the_checkpoint_skips_an_epoch_its_guard_found_diverged(self):
        from tfadv import run_folder

        logdir = self.create_tempdir().full_path
        model = harness.tiny_classifier()
        model.compile(optimizer="sgd", loss="mse")
        guard = self._guard()
        checkpoint = run_folder.ResumableCheckpoint(logdir, guard=guard)
        checkpoint.set_model(model)
        checkpoint.on_epoch_end(0, {"loss": 2.0, "val_loss": 1.0})
        self.assertEqual(checkpoint.saved_epoch(), 1)
        guard.on_train_batch_end(0, {"loss": 2.0})
        guard.on_train_batch_end(1, {"loss": 5.6e27})
        checkpoint.on_epoch_end(1, {"loss": 5.6e27, "val_loss": 1.0})
        self.assertEqual(checkpoint.saved_epoch(), 1)
