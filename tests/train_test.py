"""The entry point end to end, every shipped gin file, run-folder rules."""

import glob
import json
import os
from unittest import mock

import gin
import keras
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import flags
from absl.testing import flagsaver
from absl.testing import parameterized

from tfadv import distribute
from tfadv import experiment
from tfadv import schedules
from tfadv import train

GIN_DIR = train.GIN_DIR
# Included pieces, not runnable on their own.
_FRAGMENTS = ("data/", "testing/", "models/", "eval/")
SHIPPED = sorted(
    os.path.relpath(p, GIN_DIR)
    for p in glob.glob(os.path.join(GIN_DIR, "**", "*.gin"), recursive=True)
    if not os.path.relpath(p, GIN_DIR).startswith(_FRAGMENTS)
)


def setUpModule():
    flags.FLAGS.mark_as_parsed()


def run_cli(logdir, *gin_files, bindings=(), **extra):
    """Drives train.main through its flags, as a user's command line does."""
    gin.clear_config()  # Each command line starts from a fresh process.
    with flagsaver.flagsaver(
        gin_file=list(gin_files),
        gin_bindings=list(bindings),
        logdir=logdir,
        **extra,
    ):
        train.main(["tfadv.train"])


def write_idx(folder, prefix, images, labels):
    import gzip

    os.makedirs(folder, exist_ok=True)
    n, h, w = images.shape
    header = np.array([2051, n, h, w], ">i4").tobytes()
    with gzip.open(
        os.path.join(folder, f"{prefix}-images-idx3-ubyte.gz"), "wb"
    ) as f:
        f.write(header + images.astype(np.uint8).tobytes())
    header = np.array([2049, n], ">i4").tobytes()
    with gzip.open(
        os.path.join(folder, f"{prefix}-labels-idx1-ubyte.gz"), "wb"
    ) as f:
        f.write(header + labels.astype(np.uint8).tobytes())


class GinConfigsTest(tf.test.TestCase, parameterized.TestCase):
    def test_shipped_configs_found(self):
        self.assertIn("pgd_at.gin", SHIPPED)
        self.assertIn("standard.gin", SHIPPED)

    @parameterized.parameters(*SHIPPED)
    def test_parses_and_builds_with_tiny(self, gin_file):
        # Datasets not on this machine (CIFAR, MNIST, SVHN) come from tfds's
        # mock data; Fashion-MNIST is read from its local copy.
        train.parse_gin([gin_file, "testing/tiny.gin"], [])
        with tfds.testing.mock_data(num_examples=300):
            result = experiment.run(
                logdir=os.path.join(self.create_tempdir().full_path, "run"),
                dry_run=True,
            )
        self.assertEqual(result, {})

    def test_unknown_binding_is_refused(self):
        with self.assertRaisesRegex(ValueError, "epochz"):
            train.parse_gin(["pgd_at.gin"], ["run.epochz = 3"])


class TrainCliTest(tf.test.TestCase):
    def test_end_to_end_run_folder(self):
        logdir = os.path.join(self.create_tempdir().full_path, "run")
        run_cli(logdir, "pgd_at.gin", "testing/tiny.gin")
        for name in ("config.operative.gin", "model.keras", "results.json"):
            self.assertTrue(os.path.exists(os.path.join(logdir, name)), name)
        self.assertNotEmpty(
            glob.glob(os.path.join(logdir, "checkpoint", "*.weights.h5"))
        )
        for sub in ("train", "validation", "images"):
            self.assertNotEmpty(
                glob.glob(os.path.join(logdir, sub, "events.out.tfevents.*")),
                sub,
            )
        with open(os.path.join(logdir, "results.json")) as f:
            results = json.load(f)
        for key in (
            "method",
            "dataset",
            "epsilon",
            "epochs",
            "train_seconds",
            "epoch_seconds",
            "clean_accuracy",
            "robust_accuracy",
            "num_eval_examples",
        ):
            self.assertIn(key, results)
        self.assertEqual(results["method"], "PGDAT")
        self.assertEqual(results["dataset"], "fashion_mnist")
        self.assertEqual(results["epsilon"], 0.1)
        self.assertEqual(results["num_eval_examples"], 64)
        self.assertIn("pgd20", results["robust_accuracy"])
        self.assertLen(results["epoch_seconds"], 1)
        # The bare classifier loads with plain Keras (safe mode on).
        model = keras.saving.load_model(os.path.join(logdir, "model.keras"))
        self.assertEqual(model.output_shape, (None, 10))
        # The operative config records what was actually used.
        with open(os.path.join(logdir, "config.operative.gin")) as f:
            self.assertIn("PGDAT", f.read())

    def test_finished_run_is_never_overwritten(self):
        logdir = os.path.join(self.create_tempdir().full_path, "run")
        run_cli(logdir, "standard.gin", "testing/tiny.gin")
        mtime = os.path.getmtime(os.path.join(logdir, "results.json"))
        with self.assertRaisesRegex(SystemExit, "already holds a finished run"):
            run_cli(logdir, "standard.gin", "testing/tiny.gin")
        self.assertEqual(
            mtime, os.path.getmtime(os.path.join(logdir, "results.json"))
        )

    def test_foreign_folder_is_refused(self):
        logdir = self.create_tempdir().full_path
        with open(os.path.join(logdir, "thesis.tex"), "w") as f:
            f.write("precious")
        with self.assertRaisesRegex(SystemExit, "not an interrupted tfadv run"):
            run_cli(logdir, "standard.gin", "testing/tiny.gin")
        with open(os.path.join(logdir, "thesis.tex")) as f:
            self.assertEqual(f.read(), "precious")

    def test_interrupted_run_resumes_from_checkpoint(self):
        logdir = os.path.join(self.create_tempdir().full_path, "run")
        run_cli(logdir, "standard.gin", "testing/tiny.gin")
        # Simulate an interruption after the first epoch's checkpoint.
        os.remove(os.path.join(logdir, "results.json"))
        os.remove(os.path.join(logdir, "model.keras"))
        with mock.patch.object(
            keras.Model, "fit", autospec=True, side_effect=keras.Model.fit
        ) as fit:
            run_cli(
                logdir,
                "standard.gin",
                "testing/tiny.gin",
                bindings=["run.epochs = 2"],
            )
        fit.assert_called_once()
        with open(os.path.join(logdir, "results.json")) as f:
            results = json.load(f)
        # Two epochs in all, of which only the second was trained now.
        self.assertLen(results["epoch_seconds"], 2)
        self.assertLen(results["history"]["loss"], 1)

    def test_nan_loss_stops_with_clear_error_and_keeps_checkpoint(self):
        from tfadv import methods

        logdir = os.path.join(self.create_tempdir().full_path, "run")
        poisoned = tf.Variable(False)
        real_loss = methods.Standard.compute_adversarial_loss

        def loss_fn(self, x, y, x_adv):
            loss, clean, adv = real_loss(self, x, y, x_adv)
            return tf.where(poisoned, np.nan, loss), clean, adv

        def poison_after_first_epoch(self, epoch, logs):
            poisoned.assign(True)

        with (
            mock.patch.object(
                methods.Standard, "compute_adversarial_loss", loss_fn
            ),
            mock.patch.object(
                methods.Standard,
                "on_epoch_end",
                poison_after_first_epoch,
                create=True,
            ),
            self.assertRaisesRegex(
                experiment.TrainingDivergedError, "NaN or infinite"
            ),
        ):
            run_cli(
                logdir,
                "standard.gin",
                "testing/tiny.gin",
                bindings=["run.epochs = 3"],
            )
        self.assertFalse(os.path.exists(os.path.join(logdir, "results.json")))
        # The checkpoint is the last good one: epoch 1, finite weights.
        with open(
            os.path.join(logdir, "checkpoint", "training_metadata.json")
        ) as f:
            self.assertEqual(json.load(f)["epoch"], 1)
        import h5py

        with h5py.File(
            os.path.join(logdir, "checkpoint", "latest.weights.h5")
        ) as f:
            arrays = []
            f.visititems(
                lambda _, o: (
                    arrays.append(o[()])
                    if isinstance(o, h5py.Dataset)
                    else None
                )
            )
        self.assertNotEmpty(arrays)
        for a in arrays:
            if np.issubdtype(np.asarray(a).dtype, np.floating):
                self.assertTrue(np.all(np.isfinite(a)))


class BadInputTest(tf.test.TestCase, parameterized.TestCase):
    def _expect_exit(self, pattern, *gin_files, bindings=(), **extra):
        logdir = os.path.join(self.create_tempdir().full_path, "run")
        with self.assertRaisesRegex(SystemExit, pattern):
            run_cli(logdir, *gin_files, bindings=bindings, **extra)
        # Rejected before training: no checkpoint, no results.
        self.assertFalse(os.path.exists(os.path.join(logdir, "checkpoint")))

    @parameterized.parameters("0.0", "-0.1", "1.5")
    def test_bad_epsilon(self, eps):
        self._expect_exit(
            rf"epsilon must (be|lie) in .*got {eps}",
            "pgd_at.gin",
            "testing/tiny.gin",
            bindings=[f"EPSILON = {eps}"],
        )

    def test_unknown_gin_name(self):
        self._expect_exit(
            "No configurable matching 'PGDATT'",
            "pgd_at.gin",
            bindings=["PGDATT.clean_weight = 0.5"],
        )

    def test_unknown_gin_file(self):
        self._expect_exit("nope.gin", "nope.gin")

    def test_unknown_dataset(self):
        with mock.patch.object(
            tfds,
            "load",
            side_effect=tfds.core.registered.DatasetNotFoundError("nope"),
        ):
            self._expect_exit(
                "nope.*fashion_mnist",
                "standard.gin",
                "testing/tiny.gin",
                bindings=["make_datasets.name = 'nope'"],
            )

    def test_negative_step_count(self):
        self._expect_exit(
            "num_steps must be an integer >= 0; got -3",
            "pgd_at.gin",
            "testing/tiny.gin",
            bindings=["train/ProjectedGradient.num_steps = -3"],
        )

    def test_labels_out_of_range(self):
        data_dir = self.create_tempdir().full_path
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, size=(300, 28, 28))
        labels = rng.integers(0, 10, size=300)
        write_idx(data_dir, "train", images, labels)
        test_labels = labels[:100].copy()
        test_labels[3] = 42
        write_idx(data_dir, "t10k", images[:100], test_labels)
        self._expect_exit(
            "42", "standard.gin", "testing/tiny.gin", data_dir=data_dir
        )


class DistributeTest(tf.test.TestCase):
    def test_unknown_strategy(self):
        with self.assertRaisesRegex(ValueError, "'tpu'.*default, mirrored"):
            distribute.make_strategy("tpu")

    def test_mirrored_on_logical_cpus(self):
        strategy = distribute.make_strategy("mirrored", num_devices=2)
        self.assertEqual(strategy.num_replicas_in_sync, 2)

    def test_mirrored_uses_gpus_when_present(self):
        with (
            mock.patch.object(
                tf.config, "list_physical_devices", return_value=["g0", "g1"]
            ),
            mock.patch.object(tf.distribute, "MirroredStrategy") as mirrored,
        ):
            distribute.make_strategy("mirrored")
        mirrored.assert_called_once_with(["/gpu:0", "/gpu:1"])

    def test_multi_worker_needs_tf_config(self):
        with (
            mock.patch.dict(os.environ, {}, clear=True),
            self.assertRaisesRegex(ValueError, "TF_CONFIG"),
        ):
            distribute.make_strategy("multi_worker")


class SchedulesTest(tf.test.TestCase):
    def test_piecewise_constant_in_epochs(self):
        lr = schedules.piecewise_constant(
            steps_per_epoch=10, epochs=5, base_lr=0.1, boundaries=[2, 4]
        )
        self.assertAllClose(
            [float(lr(s)) for s in (0, 20, 21, 40, 41)],
            [0.1, 0.1, 0.01, 0.01, 0.001],
        )

    def test_cyclic_is_triangular(self):
        lr = schedules.cyclic(
            steps_per_epoch=10, epochs=4, max_lr=0.2, peak_fraction=0.5
        )
        self.assertAllClose(
            [float(lr(s)) for s in (0, 10, 20, 30, 40, 50)],
            [0.0, 0.1, 0.2, 0.1, 0.0, 0.0],
        )
        restored = schedules.PiecewiseLinear.from_config(lr.get_config())
        self.assertAllClose(float(restored(15)), float(lr(15)))

    def test_bad_schedule_arguments(self):
        with self.assertRaisesRegex(ValueError, "peak_fraction"):
            schedules.cyclic(steps_per_epoch=1, epochs=1, peak_fraction=1.0)
        with self.assertRaisesRegex(ValueError, "boundaries"):
            schedules.piecewise_constant(
                steps_per_epoch=1, epochs=1, boundaries=[-1]
            )
