"""tfadv.train, the command line: flags, bad input, the run folder's rules.

Every run here goes through `train.main` and its flags (`run_cli`), as a
user's command line does. Each shipped gin file is checked in
gin_configs_test.py, `experiment.run` itself in experiment_test.py and the
resume rule's unit tests in run_folder_test.py.
"""

import contextlib
import glob
import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import traceback
from unittest import mock

import gin
import keras
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import app
from absl import flags
from absl.testing import flagsaver
from absl.testing import parameterized
from tensorboard.plugins.hparams import metadata as hp_metadata

from tests import cli_fixtures
from tests.cli_fixtures import run_cli
from tfadv import experiment
from tfadv import methods
from tfadv import run_folder
from tfadv import train


def setUpModule():
    flags.FLAGS.mark_as_parsed()


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
        # The HPARAMS tab's data, in the folder itself: the run's
        # hyperparameters and its final accuracies.
        tags, hparams = set(), {}
        for path in glob.glob(os.path.join(logdir, "events.out.tfevents.*")):
            for event in tf.compat.v1.train.summary_iterator(path):
                for value in event.summary.value:
                    tags.add(value.tag)
                    if value.tag == hp_metadata.SESSION_START_INFO_TAG:
                        info = hp_metadata.parse_session_start_info_plugin_data(
                            value.metadata.plugin_data.content
                        )
                        hparams = {
                            k: getattr(v, v.WhichOneof("kind"))
                            for k, v in info.hparams.items()
                        }
        self.assertContainsSubset(
            {"final/clean_accuracy", "final/robust_accuracy"}, tags
        )
        self.assertEqual(hparams["method"], "PGDAT")
        self.assertEqual(hparams["dataset"], "fashion_mnist")
        self.assertAllClose(hparams["epsilon"], 0.1)
        self.assertEqual(hparams["train_attack/num_steps"], 10)
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
        # The epoch times are kept for a resumed run (run_folder.TIMING_FILE).
        timing = run_folder.read_json(
            run_folder.path(logdir, run_folder.TIMING_FILE)
        )
        self.assertEqual(timing["epoch_seconds"], results["epoch_seconds"])

    def test_prints_the_final_numbers(self):
        logdir = os.path.join(self.create_tempdir().full_path, "run")
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            run_cli(logdir, "standard.gin", "testing/tiny.gin")
        self.assertIn(
            "Standard on fashion_mnist (epsilon 0.1, 1 epoch,", out.getvalue()
        )
        self.assertIn(logdir, out.getvalue())
        self.assertRegex(out.getvalue(), r"robust accuracy pgd20 +\d\.\d{4}")

    def test_mirrored_strategy_flags(self):
        logdir = os.path.join(self.create_tempdir().full_path, "run")
        run_cli(
            logdir,
            "standard.gin",
            "testing/tiny.gin",
            strategy="mirrored",
            devices=2,
        )
        results = run_folder.read_json(
            run_folder.path(logdir, run_folder.RESULTS_FILE)
        )
        self.assertEqual(results["method"], "Standard")
        self.assertLen(results["epoch_seconds"], 1)
        # TensorFlow's INFO lines ("Reduce to ...", once per variable) no
        # longer print, and a warning prints once (through absl only).
        tf_logger = tf.get_logger()
        self.assertFalse(tf_logger.isEnabledFor(logging.INFO))
        self.assertEqual(tf_logger.handlers, [])

    def test_dry_run_builds_and_writes_nothing(self):
        logdir = os.path.join(self.create_tempdir().full_path, "run")
        out = io.StringIO()
        with (
            mock.patch.object(keras.Model, "fit", autospec=True) as fit,
            contextlib.redirect_stdout(out),
        ):
            run_cli(logdir, "pgd_at.gin", "testing/tiny.gin", dry_run=True)
        fit.assert_not_called()
        self.assertIn("Dry run", out.getvalue())
        self.assertFalse(os.path.exists(logdir))

    def test_default_logdir_is_named_after_the_first_gin_file(self):
        logdir = train.default_logdir(["experiments/cifar10_mart.gin", "x"])
        self.assertRegex(logdir, r"^runs/cifar10_mart-\d{8}-\d{6}$")
        self.assertRegex(train.default_logdir([]), r"^runs/run-\d{8}-\d{6}$")

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
        # More epochs is a changed configuration: refused unless asked for.
        with self.assertRaisesRegex(
            SystemExit, r"another configuration.*\+ *run.epochs = 2"
        ):
            run_cli(
                logdir,
                "standard.gin",
                "testing/tiny.gin",
                bindings=["run.epochs = 2"],
            )
        with mock.patch.object(
            keras.Model, "fit", autospec=True, side_effect=keras.Model.fit
        ) as fit:
            run_cli(
                logdir,
                "standard.gin",
                "testing/tiny.gin",
                bindings=["run.epochs = 2"],
                allow_config_change=True,
            )
        fit.assert_called_once()
        with open(os.path.join(logdir, "results.json")) as f:
            results = json.load(f)
        # Two epochs in all, of which only the second was trained now; the
        # history covers both (the checkpoint keeps the first's logs).
        self.assertLen(results["epoch_seconds"], 2)
        self.assertLen(results["history"]["loss"], 2)

    def test_second_run_on_a_folder_is_refused_while_the_first_lives(self):
        logdir = os.path.join(self.create_tempdir().full_path, "run")
        # Another process holds the folder, as a running tfadv.train does.
        holder = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sys, time\n"
                "from tfadv import run_folder\n"
                "with run_folder.lock(sys.argv[1]):\n"
                "    print('locked', flush=True)\n"
                "    time.sleep(600)\n",
                logdir,
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            self.assertEqual(holder.stdout.readline().strip(), "locked")
            with self.assertRaisesRegex(
                SystemExit,
                rf"in use by another tfadv run \(process "
                rf"{holder.pid}\)",
            ):
                run_cli(logdir, "standard.gin", "testing/tiny.gin")
            self.assertEqual(os.listdir(logdir), [run_folder.LOCK_FILE])
        finally:
            holder.send_signal(signal.SIGKILL)  # dies without clean-up
            holder.wait()
        # A killed holder leaves no stuck lock.
        run_cli(logdir, "standard.gin", "testing/tiny.gin")
        self.assertTrue(os.path.exists(os.path.join(logdir, "results.json")))

    def test_resuming_with_a_changed_config_is_refused(self):
        logdir = os.path.join(self.create_tempdir().full_path, "run")
        run_cli(logdir, "pgd_at.gin", "testing/tiny.gin")
        os.remove(os.path.join(logdir, "results.json"))
        os.remove(os.path.join(logdir, "model.keras"))
        before = sorted(os.listdir(logdir))
        operative = os.path.join(logdir, run_folder.OPERATIVE_CONFIG_FILE)
        with open(operative) as f:
            kept = f.read()
        for gin_files, bindings, changed in (
            (["trades.gin"], [], "TRADES"),
            (["pgd_at.gin"], ["piecewise_constant.base_lr = 0.2"], "0.2"),
            (["pgd_at.gin"], ["small_cnn.dense_units = 32"], "32"),
        ):
            with self.assertRaisesRegex(
                SystemExit, f"another configuration.*{changed}"
            ):
                run_cli(
                    logdir, *gin_files, "testing/tiny.gin", bindings=bindings
                )
            self.assertEqual(sorted(os.listdir(logdir)), before)
            with open(operative) as f:
                self.assertEqual(f.read(), kept)
        # The original command resumes.
        run_cli(logdir, "pgd_at.gin", "testing/tiny.gin")
        self.assertTrue(os.path.exists(os.path.join(logdir, "results.json")))


class UsageTest(tf.test.TestCase):
    def test_no_gin_file(self):
        with (
            flagsaver.flagsaver(gin_file=[]),
            self.assertRaisesRegex(app.UsageError, "--gin_file"),
        ):
            train.main(["tfadv.train"])

    def test_unexpected_arguments(self):
        with (
            flagsaver.flagsaver(gin_file=["standard.gin"]),
            self.assertRaisesRegex(app.UsageError, "extra"),
        ):
            train.main(["tfadv.train", "extra"])

    def test_unknown_binding_is_refused(self):
        with self.assertRaisesRegex(ValueError, "epochz"):
            train.parse_gin(["pgd_at.gin"], ["run.epochz = 3"])


class DivergedRunTest(tf.test.TestCase):
    def test_a_diverged_run_exits_with_one_paragraph(self):
        logdir = os.path.join(self.create_tempdir().full_path, "run")
        real_loss = methods.Standard.compute_adversarial_loss

        def nan_loss(self, x, y, x_adv):
            loss, clean, adv = real_loss(self, x, y, x_adv)
            return loss * np.nan, clean, adv

        with (
            mock.patch.object(
                methods.Standard, "compute_adversarial_loss", nan_loss
            ),
            self.assertRaises(SystemExit) as cm,
        ):
            run_cli(logdir, "standard.gin", "testing/tiny.gin")
        message = str(cm.exception.code)
        self.assertStartsWith(message, "tfadv.train: training diverged: ")
        self.assertNotIn("\n", message)
        self.assertRegex(
            message, r"NaN or infinite in epoch 1 .*no checkpoint.*delete"
        )

    def test_a_nan_validation_loss_stops_the_run(self):
        # Exploded weights with a finite training loss: the validation loss
        # is NaN; the run stops instead of writing NaN results (exit 0).
        logdir = os.path.join(self.create_tempdir().full_path, "run")
        real_test_step = methods.Standard.test_step

        def nan_test_step(self, data):
            logs = dict(real_test_step(self, data))
            logs["loss"] = logs["loss"] * np.nan
            return logs

        with (
            mock.patch.object(methods.Standard, "test_step", nan_test_step),
            self.assertRaises(SystemExit) as cm,
        ):
            run_cli(logdir, "standard.gin", "testing/tiny.gin")
        message = str(cm.exception.code)
        self.assertNotIn("\n", message)
        self.assertRegex(
            message,
            r"training diverged: The validation loss became NaN or infinite "
            r"after epoch 1 .*not saved.*no checkpoint",
        )
        self.assertFalse(os.path.exists(os.path.join(logdir, "results.json")))

    def test_a_finite_explosion_stops_the_run(self):
        # A learning rate of 1e8: the loss reaches ~1e28 but stays finite,
        # which the guard counted as training before (exit 0, NaN results).
        logdir = os.path.join(self.create_tempdir().full_path, "run")
        with self.assertRaises(SystemExit) as cm:
            run_cli(
                logdir,
                "standard.gin",
                "testing/tiny.gin",
                bindings=["run.learning_rate = 1e8"],
            )
        message = str(cm.exception.code)
        self.assertNotIn("\n", message)
        self.assertRegex(
            message,
            r"training diverged: The training loss exploded to \S+e\+\d+ in "
            r"epoch 1 \(batch \d of 4\), over 1000 times its first value.*"
            r"no checkpoint",
        )
        self.assertFalse(os.path.exists(os.path.join(logdir, "results.json")))
        self.assertFalse(os.path.exists(os.path.join(logdir, "checkpoint")))


class FailureInsideTrainingTest(tf.test.TestCase):
    def test_a_value_error_in_fit_keeps_its_traceback(self):
        # Not refused input but a failure once training ran (here a method
        # hook that raises): the entry point lets it through, chained, so
        # its traceback shows where it arose, instead of one line.
        logdir = os.path.join(self.create_tempdir().full_path, "run")

        def broken_hook(self, epoch, logs):
            raise ValueError("shapes (3,) and (4,) are incompatible")

        raised = None
        with mock.patch.object(
            methods.Standard, "on_epoch_end", broken_hook, create=True
        ):
            try:
                run_cli(logdir, "standard.gin", "testing/tiny.gin")
            except ValueError as e:  # not SystemExit
                raised = e
        self.assertIsNotNone(raised)
        self.assertIn("shapes (3,) and (4,)", str(raised))
        self.assertTrue(experiment.raised_in_training(raised))
        frames = traceback.extract_tb(raised.__traceback__)
        self.assertEqual(frames[-1].name, "broken_hook")


class BadInputTest(tf.test.TestCase, parameterized.TestCase):
    def _expect_exit(self, pattern, *gin_files, bindings=(), **extra):
        logdir = os.path.join(self.create_tempdir().full_path, "run")
        with self.assertRaisesRegex(SystemExit, pattern) as cm:
            run_cli(logdir, *gin_files, bindings=bindings, **extra)
        # Rejected before training: no checkpoint, no results.
        self.assertFalse(os.path.exists(os.path.join(logdir, "checkpoint")))
        return logdir, cm.exception

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
            "No gin configurable is named 'PGDATT'.*Closest .*PGDAT",
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
            "num_steps .*must be an integer >= 1; got -3",
            "pgd_at.gin",
            "testing/tiny.gin",
            bindings=["train/ProjectedGradient.num_steps = -3"],
        )

    def test_labels_out_of_range(self):
        data_dir = self.create_tempdir().full_path
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, size=(300, 28, 28))
        labels = rng.integers(0, 10, size=300)
        cli_fixtures.write_idx(data_dir, "train", images, labels)
        test_labels = labels[:100].copy()
        test_labels[3] = 42
        cli_fixtures.write_idx(data_dir, "t10k", images[:100], test_labels)
        self._expect_exit(
            "42", "standard.gin", "testing/tiny.gin", data_dir=data_dir
        )

    def test_method_epsilon_must_be_the_runs(self):
        # The training attack at 0.3, the run (and results.json) at 0.1.
        with mock.patch.object(keras.Model, "fit", autospec=True) as fit:
            logdir, exit_ = self._expect_exit(
                r"^tfadv\.train: error: PGDAT trains at epsilon 0\.3 .*"
                r"run\.epsilon is 0\.1",
                "pgd_at.gin",
                "testing/tiny.gin",
                bindings=["train/ProjectedGradient.epsilon = 0.3"],
            )
        fit.assert_not_called()
        # A non-zero exit (sys.exit with a message) and one paragraph.
        self.assertIsInstance(exit_.code, str)
        self.assertNotIn("\n", exit_.code)
        self.assertTrue(cli_fixtures.folder_is_empty_or_absent(logdir))

    @parameterized.parameters(
        ("data_dir", "'/tmp'", "--data_dir"),
        ("dry_run", "True", "--dry_run"),
        ("logdir", "'/tmp/elsewhere'", "--logdir"),
        ("strategy", "None", "--strategy"),
    )
    def test_binding_set_by_the_entry_point_is_refused(self, name, value, flag):
        with mock.patch.object(keras.Model, "fit", autospec=True) as fit:
            logdir, exit_ = self._expect_exit(
                rf"^tfadv\.train: error: run\.{name} cannot be set in gin.*"
                rf"Use {flag}",
                "standard.gin",
                "testing/tiny.gin",
                bindings=[f"run.{name} = {value}"],
            )
        fit.assert_not_called()
        self.assertNotIn("\n", exit_.code)
        self.assertFalse(os.path.exists(logdir))

    def test_every_argument_of_the_table_is_refused_naming_its_flag(self):
        # One table (experiment.SET_BY_ENTRY_POINT) is run's denylist and
        # the source of the flag each refusal names.
        configurable = gin.config._REGISTRY.get_match("run")
        self.assertCountEqual(
            configurable.denylist, experiment.SET_BY_ENTRY_POINT
        )
        flag_names = set(flags.FLAGS)
        for name, flag in experiment.SET_BY_ENTRY_POINT.items():
            for word in re.findall(r"--(\w+)", flag):
                self.assertIn(word, flag_names, msg=name)
            gin.clear_config()
            with (
                self.subTest(name=name),
                self.assertRaisesRegex(
                    ValueError,
                    rf"^run\.{name} cannot be set in gin.*"
                    rf"Use {re.escape(flag)} instead",
                ),
            ):
                train.parse_gin(["standard.gin"], [f"run.{name} = None"])

    def test_binding_set_by_the_entry_point_is_refused_in_a_file(self):
        gin_file = os.path.join(self.create_tempdir().full_path, "mine.gin")
        with open(gin_file, "w") as f:
            f.write("include 'standard.gin'\nrun.dry_run = True\n")
        self._expect_exit(
            r"run\.dry_run cannot be set in gin.*--dry_run", gin_file
        )
