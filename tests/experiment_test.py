"""tfadv.experiment: `run`, its phases, the ε rule, the NaN guard, results.

`run` is called directly here, with gin parsed by `train.parse_gin` (the
command line's own behaviour is in train_test.py).
"""

import json
import os
from unittest import mock

import h5py
import keras
import numpy as np
import tensorflow as tf
from absl import flags

import tfadv
from tests import cli_fixtures
from tests import harness
from tfadv import attacks
from tfadv import data
from tfadv import evaluation
from tfadv import experiment
from tfadv import methods
from tfadv import run_folder
from tfadv import seeds
from tfadv import train


def setUpModule():
    flags.FLAGS.mark_as_parsed()


def _parse(*gin_files, bindings=()):
    train.parse_gin(list(gin_files), list(bindings))


class _RunTestCase(tf.test.TestCase):
    def logdir(self):
        return os.path.join(self.create_tempdir().full_path, "run")


class CheckConfigTest(tf.test.TestCase):
    def _check(self, **overrides):
        return cli_fixtures.check_config(**overrides)

    def test_resolves_the_suite_at_the_runs_epsilon(self):
        epsilon, suite = self._check(epsilon=np.float32(0.25))
        self.assertIsInstance(epsilon, float)
        self.assertAllClose(epsilon, 0.25)
        self.assertEqual(list(suite.attacks), ["pgd20"])
        self.assertAllClose(suite.attacks["pgd20"].epsilon, 0.25)

    def test_final_suite_attacks_are_named_by_their_name(self):
        mine = attacks.ProjectedGradient(
            epsilon=0.1, step_size=0.05, num_steps=2, name="mine"
        )
        _, suite = self._check(final_suite=[mine, "fgsm"])
        self.assertEqual(list(suite.attacks), ["mine", "fgsm"])
        self.assertIs(suite.attacks["mine"], mine)

    def test_bad_values(self):
        for overrides, pattern in (
            (dict(epsilon=0.0), "epsilon"),
            (dict(epsilon=1.5), "epsilon"),
            (dict(epochs=0), "epochs must be an integer >= 1; got 0"),
            (dict(epochs=1.5), "epochs"),
            (dict(mixed_precision="float16"), "mixed_precision"),
            (dict(final_suite="pgd20,nope"), "nope"),
        ):
            with (
                self.subTest(overrides=overrides),
                self.assertRaisesRegex(ValueError, pattern),
            ):
                self._check(**overrides)

    def test_eval_attack_must_be_an_attack_instance(self):
        with self.assertRaisesRegex(TypeError, r"@eval/ProjectedGradient\(\)"):
            self._check(eval_attack=attacks.ProjectedGradient)

    def test_attack_at_another_epsilon_is_logged(self):
        other = attacks.ProjectedGradient(
            epsilon=0.2, step_size=0.05, num_steps=2, name="other"
        )
        with self.assertLogs("absl", level="WARNING") as logs:
            self._check(eval_attack=other)
        self.assertIn("'other' uses epsilon 0.2", "\n".join(logs.output))


class CheckMethodEpsilonTest(tf.test.TestCase):
    def _pgd_at(self, epsilon):
        attack = attacks.ProjectedGradient(
            epsilon=epsilon, step_size=0.05, num_steps=2
        )
        return methods.PGDAT(harness.tiny_classifier(), train_attack=attack)

    def test_different_budget_is_refused_naming_both(self):
        with self.assertRaises(ValueError) as cm:
            experiment.check_method_epsilon(self._pgd_at(0.3), 0.1)
        message = str(cm.exception)
        self.assertRegex(
            message, r"PGDAT trains at epsilon 0\.3 .*run\.epsilon is 0\.1"
        )
        self.assertIn("PGDAT.epsilon", message)
        self.assertNotIn("\n", message)

    def test_same_budget_and_methods_without_attack_pass(self):
        experiment.check_method_epsilon(self._pgd_at(0.1), 0.1)
        experiment.check_method_epsilon(self._pgd_at(0.1), 0.1 * (1 + 1e-8))
        experiment.check_method_epsilon(
            methods.Standard(harness.tiny_classifier()), 0.1
        )


class RunTest(_RunTestCase):
    def test_method_epsilon_mismatch_is_refused_before_training(self):
        logdir = self.logdir()
        _parse(
            "pgd_at.gin",
            "testing/tiny.gin",
            bindings=["train/ProjectedGradient.epsilon = 0.3"],
        )
        with (
            mock.patch.object(keras.Model, "fit", autospec=True) as fit,
            self.assertRaisesRegex(
                ValueError,
                r"PGDAT trains at epsilon 0\.3 .*run\.epsilon is 0\.1",
            ),
        ):
            experiment.run(logdir=logdir)
        fit.assert_not_called()
        self.assertTrue(cli_fixtures.folder_is_empty_or_absent(logdir))

    def test_bad_config_fails_before_the_data_is_loaded(self):
        dataset_fn = mock.Mock()
        _parse("standard.gin", "testing/tiny.gin", bindings=["run.epochs = 0"])
        logdir = self.logdir()
        with self.assertRaisesRegex(ValueError, "epochs"):
            experiment.run(logdir=logdir, dataset_fn=dataset_fn)
        dataset_fn.assert_not_called()
        self.assertFalse(os.path.exists(logdir))

    def test_dry_run_builds_and_writes_nothing(self):
        logdir = self.logdir()
        _parse(
            "pgd_at.gin",
            "testing/tiny.gin",
            bindings=["run.mixed_precision = 'mixed_bfloat16'"],
        )
        with mock.patch.object(keras.Model, "fit", autospec=True) as fit:
            self.assertEqual(experiment.run(logdir=logdir, dry_run=True), {})
        fit.assert_not_called()
        self.assertFalse(os.path.exists(logdir))
        # build() restores the global dtype policy.
        self.assertEqual(keras.mixed_precision.dtype_policy().name, "float32")

    def test_results_json(self):
        logdir = self.logdir()
        mine = attacks.ProjectedGradient(
            epsilon=0.1, step_size=0.05, num_steps=2, name="mine"
        )
        _parse("standard.gin", "testing/tiny.gin", bindings=["run.seed = 3"])
        with mock.patch.object(
            evaluation, "run_suite", wraps=evaluation.run_suite
        ) as run_suite:
            results = experiment.run(logdir=logdir, final_suite=[mine, "fgsm"])
        with open(run_folder.path(logdir, run_folder.RESULTS_FILE)) as f:
            self.assertEqual(json.load(f), results)
        # run.seed is the root of every seed, each recorded.
        self.assertEqual(
            results["seeds"],
            {
                "run": 3,
                "weights": 3,
                "data_order": 3,
                "method": seeds.derive(3, "method"),
                "attacks": 3,
            },
        )
        self.assertEqual(run_suite.call_args.kwargs["seed"], 3)
        self.assertEqual(results["method"], "Standard")
        self.assertEqual(results["dataset"], "fashion_mnist")
        self.assertEqual(results["epsilon"], 0.1)
        self.assertEqual(results["epochs"], 1)
        self.assertLen(results["epoch_seconds"], 1)
        self.assertAllClose(
            results["train_seconds"], sum(results["epoch_seconds"])
        )
        self.assertBetween(results["clean_accuracy"], 0.0, 1.0)
        # The final attacks are reported under their names, in order.
        self.assertEqual(
            list(results["robust_accuracy"]), ["mine", "fgsm", "worst_case"]
        )
        self.assertEqual(results["eval_suite"], "mine,fgsm")
        self.assertCountEqual(results["eval_attacks"], ["mine", "fgsm"])
        self.assertCountEqual(results["eval_seconds"], ["mine", "fgsm"])
        self.assertIn("gradient_masking", results)
        self.assertEqual(results["num_eval_examples"], 64)
        # What produced the numbers: versions, the checkout, the machine.
        record = results["provenance"]
        self.assertEqual(record["tfadv_version"], tfadv.__version__)
        self.assertEqual(record["tensorflow_version"], tf.__version__)
        self.assertEqual(record["keras_version"], keras.__version__)
        self.assertEqual(record["devices"]["cpu_cores"], os.cpu_count())
        self.assertIn("finished_at", record)
        history = results["history"]
        for key in (
            "loss",
            "clean_accuracy",
            "val_robust_accuracy",
            "time/epoch_seconds",
            "examples_per_second",
        ):
            self.assertLen(history[key], 1, key)
        self.assertTrue(
            os.path.isfile(run_folder.path(logdir, run_folder.MODEL_FILE))
        )

    def _dry_build(self, *gin_files, bindings=(), **run_args):
        """What `build` made in a dry run of `gin_files`."""
        built = []
        real_build = experiment.build

        def build(**kwargs):
            built.append(real_build(**kwargs))
            return built[-1]

        _parse(*gin_files, "testing/tiny.gin", bindings=bindings)
        with mock.patch.object(experiment, "build", side_effect=build):
            experiment.run(logdir=self.logdir(), dry_run=True, **run_args)
        (made,) = built
        return made

    def test_run_seed_is_handed_to_the_data_the_weights_and_the_method(self):
        with mock.patch.object(
            keras.utils, "set_random_seed", wraps=keras.utils.set_random_seed
        ) as set_random_seed:
            built = self._dry_build("pgd_at.gin", bindings=["run.seed = 5"])
        set_random_seed.assert_called_once_with(5)
        # The method's generator has a seed of its own, derived from 5.
        self.assertEqual(built.method.seed, seeds.derive(5, "method"))
        self.assertNotEqual(built.method.seed, 5)
        # The data order is exactly make_datasets(seed=run.seed)'s.

        def labels(seed):
            made = data.make_datasets(
                train_examples=256,
                batch_size=64,
                validation_examples=0,
                eval_examples=64,
                seed=seed,
            )
            return np.concatenate([y for _, y in made.train])

        order = np.concatenate([y for _, y in built.datasets.train])
        self.assertAllEqual(order, labels(5))
        self.assertNotAllEqual(order, labels(6))

    def test_a_dataset_fn_without_a_seed_is_called_without_one(self):
        calls = []

        def my_data(*, data_dir=None):
            calls.append(data_dir)
            return data.make_datasets(
                train_examples=128, batch_size=64, eval_examples=64
            )

        built = self._dry_build("standard.gin", dataset_fn=my_data)
        self.assertEqual(calls, [None])
        self.assertEqual(built.datasets.info.num_train, 128)
        self.assertIsNone(seeds.RunSeeds.of(0, dataset_fn=my_data).data_order)

    def test_method_hooks_callbacks_and_results_info(self):
        logdir = self.logdir()
        epochs_seen = []

        class Recorder(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                epochs_seen.append(epoch)

        recorder = Recorder()

        class Reporter(keras.callbacks.Callback):
            def results_info(self):
                return {"reporter": {"stopped": False}}

        def on_epoch_end(self, epoch, logs=None):
            return {"hook/value": 0.25 + epoch}

        callback_fn = mock.Mock(return_value=Reporter())
        _parse("standard.gin", "testing/tiny.gin", bindings=["run.epochs = 2"])
        with (
            mock.patch.object(methods.Standard, "on_epoch_end", on_epoch_end),
            mock.patch.object(
                methods.Standard, "extra_callbacks", return_value=[recorder]
            ),
            mock.patch.object(
                methods.Standard,
                "results_info",
                return_value={"method_info": {"steps": 3}},
            ),
        ):
            results = experiment.run(logdir=logdir, callback_fns=[callback_fn])
        # The method's on_epoch_end values reach the epoch's logs.
        self.assertEqual(results["history"]["hook/value"], [0.25, 1.25])
        # Its extra callbacks ran.
        self.assertEqual(epochs_seen, [0, 1])
        # callback_fns are built with the run's data and folder.
        _, kwargs = callback_fn.call_args
        self.assertEqual(kwargs["logdir"], logdir)
        self.assertEqual(kwargs["datasets"].info.name, "fashion_mnist")
        # results_info() of the method and of a callback go to results.json.
        self.assertEqual(results["method_info"], {"steps": 3})
        self.assertEqual(results["reporter"], {"stopped": False})
        with open(run_folder.path(logdir, run_folder.RESULTS_FILE)) as f:
            on_disk = json.load(f)
        self.assertEqual(on_disk["method_info"], {"steps": 3})
        self.assertEqual(on_disk["reporter"], {"stopped": False})

    def test_nan_loss_stops_with_clear_error_and_keeps_checkpoint(self):
        logdir = self.logdir()
        poisoned = tf.Variable(False)
        real_loss = methods.Standard.compute_adversarial_loss

        def loss_fn(self, x, y, x_adv):
            loss, clean, adv = real_loss(self, x, y, x_adv)
            return tf.where(poisoned, np.nan, loss), clean, adv

        def poison_after_first_epoch(self, epoch, logs):
            poisoned.assign(True)

        _parse("standard.gin", "testing/tiny.gin", bindings=["run.epochs = 3"])
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
            experiment.run(logdir=logdir)
        self.assertFalse(os.path.exists(os.path.join(logdir, "results.json")))
        # The checkpoint is the last good one: epoch 1, finite weights.
        with open(
            os.path.join(logdir, "checkpoint", "training_metadata.json")
        ) as f:
            self.assertEqual(json.load(f)["epoch"], 1)
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


class FormatResultsTest(tf.test.TestCase):
    def test_summary(self):
        text = experiment.format_results(
            {
                "method": "PGDAT",
                "dataset": "fashion_mnist",
                "epsilon": 0.1,
                "epochs": 2,
                "train_seconds": 12.34,
                "clean_accuracy": 0.8,
                "robust_accuracy": {"pgd20": 0.5},
                "num_eval_examples": 64,
            },
            "runs/x",
        )
        lines = text.splitlines()
        self.assertEqual(
            lines[0],
            "PGDAT on fashion_mnist (epsilon 0.1, 2 epochs, 12.3 s "
            "training) -> runs/x",
        )
        self.assertIn("  clean accuracy           0.8000", lines)
        self.assertIn("  robust accuracy pgd20    0.5000", lines)
        self.assertEqual(lines[-1], "  on the first 64 test examples")


class ProgressTest(tf.test.TestCase):
    def test_auto_is_a_bar_on_a_terminal_and_one_line_per_epoch_otherwise(
        self,
    ):
        for tty, verbose in ((True, 1), (False, 2)):
            with mock.patch.object(
                experiment.sys.stdout, "isatty", return_value=tty
            ):
                self.assertEqual(experiment._verbosity("auto"), verbose)
        self.assertEqual(experiment._verbosity("bar"), 1)
        self.assertEqual(experiment._verbosity("epoch"), 2)
        self.assertEqual(experiment._verbosity("none"), 0)

    def test_the_choice_reaches_fit(self):
        logdir = os.path.join(self.create_tempdir().full_path, "run")
        with mock.patch.object(
            keras.Model, "fit", autospec=True, side_effect=keras.Model.fit
        ) as fit:
            cli_fixtures.run_cli(
                logdir, "standard.gin", "testing/tiny.gin", progress="none"
            )
        self.assertEqual(fit.call_args.kwargs["verbose"], 0)
