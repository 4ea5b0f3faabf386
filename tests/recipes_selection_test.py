"""tfadv.recipes.selection: keep-best, the held-out split, the final state.

The kept state is checked against the FastAT_Benchmark rule re-derived
from scripted and real scores; it survives a resume exactly and is the
same under two replicas. The held-out split is the train split's tail,
never trained on. `experiment.run` evaluates and exports the kept (or the
averaged) state and reports the others beside it.
"""

import json
import os
from unittest import mock

import gin
import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import flags
from absl.testing import parameterized

from tests import cli_fixtures
from tests import data_fixtures as fx
from tests import harness
from tests.recipes_averaging_test import Interrupt
from tests.recipes_averaging_test import compiled
from tests.recipes_averaging_test import dataset
from tests.recipes_averaging_test import no_bn_classifier
from tests.recipes_averaging_test import pgd_at
from tfadv import data
from tfadv import experiment
from tfadv import methods
from tfadv import run_folder
from tfadv import train
from tfadv.recipes import averaging
from tfadv.recipes import selection


def setUpModule():
    flags.FLAGS.mark_as_parsed()


class States(keras.callbacks.Callback):
    """The model's and the average's weights at every epoch's end."""

    def __init__(self, classifier, ema=None):
        super().__init__()
        self.classifier = classifier
        self.ema = ema
        self.model_weights = []
        self.average_weights = []

    def on_epoch_end(self, epoch, logs=None):
        self.model_weights.append(self.classifier.get_weights())
        if self.ema is not None:
            self.average_weights.append(self.ema.average_weights())


def fatb_choice(model_scores, average_scores):
    """The rule, re-derived: the kept (epoch, "model" or "average")."""
    best = (-1.0, -1.0)
    kept = None
    for epoch, (m, a) in enumerate(
        zip(model_scores, average_scores, strict=True)
    ):
        if a is not None and a[0] > m[0]:
            chosen, score = "average", a
        else:
            chosen, score = "model", m
        if score[0] > best[0] or (score[0] == best[0] and score[1] > best[1]):
            best, kept = score, (epoch, chosen)
    return kept


def scripted(values):
    """A `_scores` stand-in returning `(robust, clean)` pairs in order."""
    replies = iter(values)

    def scores(classifier):
        del classifier
        robust, clean = next(replies)
        return {"clean_accuracy": clean, "robust_accuracy": robust}

    return scores


class KeepBestTest(tf.test.TestCase, parameterized.TestCase):
    # (robust, clean) of the model, then of the average, per epoch.
    MODEL = [(0.3, 0.5), (0.4, 0.6), (0.35, 0.6), (0.45, 0.7), (0.2, 0.8)]
    AVERAGE = [(0.2, 0.5), (0.4, 0.9), (0.45, 0.6), (0.3, 0.5), (0.45, 0.5)]

    @parameterized.named_parameters(
        # Epoch 3's model ties epoch 2's average and wins on clean accuracy.
        ("model_on_a_clean_tie", 5, 3, "model"),
        # Epoch 1: a tie between model and average goes to the model;
        # epoch 2's average is strictly more robust than the model.
        ("average", 3, 2, "average"),
    )
    def test_the_fatb_rule_on_scripted_scores(self, epochs, epoch, state):
        method = compiled(pgd_at, harness.tiny_classifier)
        ema = averaging.WeightAveraging(method, decay=0.5)
        keep = selection.KeepBest(
            method, dataset(8), harness.pgd(), averaging=ema
        )
        self.assertEqual(keep.candidates, "both")
        states = States(method.classifier, ema)
        pairs = [
            p
            for m, a in zip(self.MODEL, self.AVERAGE, strict=True)
            for p in (m, a)
        ]
        with mock.patch.object(keep, "_scores", scripted(pairs)):
            history = method.fit(
                dataset(8),
                epochs=epochs,
                callbacks=[ema, states, keep],
                verbose=0,
            ).history
        self.assertEqual(
            fatb_choice(self.MODEL[:epochs], self.AVERAGE[:epochs]),
            (epoch, state),
        )
        self.assertEqual(keep.kept_epoch, epoch)
        self.assertEqual(keep.kept_state, state)
        want = (
            states.average_weights
            if state == "average"
            else states.model_weights
        )[epoch]
        for a, b in zip(keep.best_weights(), want, strict=True):
            self.assertAllEqual(a, b)
        self.assertEqual(history["selection/best_epoch"][-1], epoch + 1)
        info = keep.results_info()["selection"]
        self.assertEqual(info["kept_epoch"], epoch + 1)
        self.assertEqual(info["kept_state"], state)
        self.assertEqual(info["rule"], "best")
        self.assertAllClose(
            info["holdout_robust_accuracy"],
            dict(model=self.MODEL, average=self.AVERAGE)[state][epoch][0],
        )

    def test_model_only_and_start_epoch(self):
        method = compiled(pgd_at, harness.tiny_classifier)
        keep = selection.KeepBest(
            method, dataset(8), harness.pgd(), start_epoch=1
        )
        self.assertEqual(keep.candidates, "model")
        # Epoch 0 is skipped although it scores best.
        replies = scripted([(0.3, 0.5), (0.3, 0.5)])
        with mock.patch.object(keep, "_scores", replies):
            history = method.fit(
                dataset(8), epochs=3, callbacks=[keep], verbose=0
            ).history
        self.assertEqual(keep.kept_epoch, 1)  # the later tie is not kept
        self.assertEqual(keep.kept_state, "model")
        self.assertLen(history["val_holdout_robust_accuracy"], 2)

    def test_real_scores_are_the_classifiers(self):
        method = compiled(pgd_at, harness.tiny_classifier)
        holdout = dataset(12)
        keep = selection.KeepBest(method, holdout, harness.pgd())
        states = States(method.classifier)
        history = method.fit(
            dataset(8), epochs=2, callbacks=[states, keep], verbose=0
        ).history
        labels = np.concatenate([y for _, y in holdout])
        for epoch, weights in enumerate(states.model_weights):
            method.classifier.set_weights(weights)
            logits = method.classifier.predict(
                np.concatenate([x for x, _ in holdout]), verbose=0
            )
            self.assertAllClose(
                history["val_holdout_clean_accuracy"][epoch],
                np.mean(np.argmax(logits, -1) == labels),
            )
            self.assertBetween(
                history["val_holdout_robust_accuracy"][epoch],
                0.0,
                history["val_holdout_clean_accuracy"][epoch],
            )

    def test_two_replicas_keep_what_one_device_keeps(self):
        kept = []
        for strategy in ("default", "mirrored"):
            method = compiled(
                methods.Standard, no_bn_classifier, harness.strategy(strategy)
            )
            ema = averaging.WeightAveraging(method, decay=0.5)
            keep = selection.KeepBest(
                method, dataset(12), harness.pgd(), averaging=ema
            )
            history = method.fit(
                dataset(24, 8), epochs=2, callbacks=[ema, keep], verbose=0
            ).history
            kept.append((keep, history))
        (one, one_history), (two, two_history) = kept
        self.assertEqual(one.kept_epoch, two.kept_epoch)
        self.assertEqual(one.kept_state, two.kept_state)
        for name in (
            "val_holdout_robust_accuracy",
            "val_average_holdout_robust_accuracy",
        ):
            self.assertEqual(one_history[name], two_history[name])
        for a, b in zip(one.best_weights(), two.best_weights(), strict=True):
            self.assertAllClose(a, b, rtol=1e-5, atol=1e-6)

    def _fit_with_checkpoint(self, logdir, epochs, extra=()):
        method = compiled(pgd_at, harness.tiny_classifier)
        ema = averaging.WeightAveraging(method, decay=0.5)
        keep = selection.KeepBest(
            method, dataset(12), harness.pgd(), averaging=ema
        )
        checkpoint = run_folder.ResumableCheckpoint(logdir, states=[ema, keep])
        method.fit(
            dataset(16),
            epochs=epochs,
            callbacks=[ema, keep, checkpoint, *extra],
            verbose=0,
        )
        return keep, checkpoint

    def test_resumed_run_keeps_the_uninterrupted_runs_state(self):
        root = self.create_tempdir().full_path
        want, want_checkpoint = self._fit_with_checkpoint(
            os.path.join(root, "whole"), 2
        )
        logdir = os.path.join(root, "interrupted")
        with self.assertRaisesRegex(RuntimeError, "interrupted"):
            self._fit_with_checkpoint(logdir, 2, [Interrupt()])
        got, got_checkpoint = self._fit_with_checkpoint(logdir, 2)
        self.assertEqual(got.results_info(), want.results_info())
        for a, b in zip(got.best_weights(), want.best_weights(), strict=True):
            self.assertAllEqual(a, b)
        self.assertEqual(
            got_checkpoint.history_dict()["selection/best_epoch"],
            want_checkpoint.history_dict()["selection/best_epoch"],
        )

    def test_bad_settings(self):
        method = compiled(pgd_at, harness.tiny_classifier)
        ema = averaging.WeightAveraging(method)
        holdout = dataset(8)
        with self.assertRaisesRegex(ValueError, "averages no weights.*ema.gin"):
            selection.KeepBest(
                method, holdout, harness.pgd(), candidates="average"
            )
        with self.assertRaisesRegex(ValueError, "KeepBest.candidates"):
            selection.KeepBest(
                method, holdout, harness.pgd(), averaging=ema, candidates="x"
            )
        with self.assertRaisesRegex(ValueError, "KeepBest.final"):
            selection.KeepBest(method, holdout, harness.pgd(), final="first")
        with self.assertRaisesRegex(ValueError, "KeepBest.start_epoch"):
            selection.KeepBest(method, holdout, harness.pgd(), start_epoch=-1)
        with self.assertRaisesRegex(TypeError, "KeepBest.attack"):
            selection.KeepBest(method, holdout, "pgd10")
        datasets = mock.Mock(holdout=None)
        with self.assertRaisesRegex(
            ValueError, "holdout_examples is 0.*never selects on the test"
        ):
            selection.keep_best(method, datasets=datasets, epsilon=0.1)
        keep = selection.KeepBest(method, holdout, harness.pgd())
        with self.assertRaisesRegex(ValueError, "kept no epoch"):
            keep.best_weights()

    def test_default_attack_is_pgd10_at_a_quarter_epsilon(self):
        method = compiled(pgd_at, harness.tiny_classifier)
        keep = selection.keep_best(
            method, datasets=mock.Mock(holdout=dataset(8)), epsilon=0.1
        )
        self.assertEqual(keep.attack.num_steps, 10)
        self.assertAllClose(keep.attack.step_size, 0.025)
        self.assertEqual(keep.attack.start, "uniform")
        self.assertEqual(keep.attack.threat_model.norm, "linf")


class FinalStatesTest(tf.test.TestCase):
    def _recipes(self, *, ema, final="best", evaluate_last=True, kept=True):
        method = compiled(pgd_at, harness.tiny_classifier)
        average = averaging.WeightAveraging(method) if ema else None
        keep = selection.KeepBest(
            method,
            dataset(8),
            harness.pgd(),
            averaging=average,
            final=final,
            evaluate_last=evaluate_last,
        )
        if kept:
            keep.best_epoch.assign(0)
        return method.classifier, average, keep

    def test_labels(self):
        classifier, ema, keep = self._recipes(ema=True)
        label, states = selection.final_states(
            classifier, averaging=ema, selection=keep
        )
        self.assertEqual(label, "best_model")
        self.assertEqual(
            list(states), ["best_model", "last_average", "last_model"]
        )
        label, states = selection.final_states(classifier, averaging=ema)
        self.assertEqual(list(states), ["last_average", "last_model"])
        ema.evaluate_model = False
        label, states = selection.final_states(classifier, averaging=ema)
        self.assertEqual(list(states), ["last_average"])
        label, states = selection.final_states(classifier)
        self.assertEqual(list(states), ["last_model"])
        classifier, ema, keep = self._recipes(ema=False, evaluate_last=False)
        label, states = selection.final_states(classifier, selection=keep)
        self.assertEqual(list(states), ["best_model"])
        classifier, ema, keep = self._recipes(ema=False, final="last")
        label, states = selection.final_states(classifier, selection=keep)
        self.assertEqual(list(states), ["last_model"])
        # Nothing kept: the last state, with a warning.
        classifier, ema, keep = self._recipes(ema=True, kept=False)
        with self.assertLogs(level="WARNING"):
            label, states = selection.final_states(
                classifier, averaging=ema, selection=keep
            )
        self.assertEqual(label, "last_average")


class HoldoutSplitTest(fx.DataTestCase):
    NUM = 120

    def setUp(self):
        super().setUp()
        self.tmp = self.make_tmp()
        for prefix, num, offset in (("train", self.NUM, 0), ("t10k", 20, 200)):
            images, labels = fx.tiny_arrays(num, offset=offset)
            for kind, array in (
                ("images-idx3", images),
                ("labels-idx1", labels),
            ):
                fx.write_idx(
                    os.path.join(self.tmp, f"{prefix}-{kind}-ubyte.gz"), array
                )

    def test_the_holdout_is_the_train_splits_tail_never_trained_on(self):
        ds = data.make_datasets(
            name=self.tmp, batch_size=10, eval_batch_size=7, holdout_examples=60
        )
        held = np.concatenate(fx.ids(ds.holdout))
        self.assertAllEqual(held, np.arange(60, 120))
        self.assertAllEqual(held, np.concatenate(fx.ids(ds.holdout)))
        self.assertCountEqual(np.concatenate(fx.ids(ds.train)), range(60))
        self.assertEqual(ds.info.num_holdout, 60)
        self.assertEqual(ds.info.num_train, 60)
        # Statistics of the training examples only.
        self.assertAllClose(ds.info.mean, [np.arange(60).mean() / 255.0])
        # train_examples counts what is left.
        ds = data.make_datasets(
            name=self.tmp, batch_size=10, train_examples=20, holdout_examples=50
        )
        self.assertCountEqual(np.concatenate(fx.ids(ds.train)), range(20))
        self.assertAllEqual(np.concatenate(fx.ids(ds.holdout)), range(70, 120))
        self.assertIsNone(
            data.make_datasets(name=self.tmp, batch_size=10).holdout
        )

    def test_bad_splits_are_refused(self):
        for holdout, pattern in (
            (120, "holds out the whole train split.*fewer than 120"),
            (10, "too small.*at least 50"),
            (-1, "integer >= 0"),
            (True, "integer >= 0"),
        ):
            with self.assertRaisesRegex(ValueError, pattern):
                data.make_datasets(
                    name=self.tmp, batch_size=10, holdout_examples=holdout
                )
        with self.assertRaisesRegex(ValueError, "batch_size=80 exceeds"):
            data.make_datasets(
                name=self.tmp, batch_size=80, holdout_examples=60
            )


def _parse(*gin_files, bindings=()):
    gin.clear_config()
    train.parse_gin(list(gin_files), list(bindings))


TINY_RECIPE = (
    "make_datasets.holdout_examples = 64",
    "make_datasets.train_examples = 128",
    "run.epochs = 2",
    "run.final_suite = 'fgsm'",
)


def _checkpoint_state(logdir, prefix, count):
    weights = run_folder.path(
        run_folder.path(logdir, run_folder.CHECKPOINT_DIR),
        run_folder.CHECKPOINT_WEIGHTS,
    )
    with h5py.File(weights, "r") as f:
        group = f[run_folder.ResumableCheckpoint.STATE_GROUP]
        return [group[f"{prefix}|{i}"][()] for i in range(count)]


class ExperimentTest(tf.test.TestCase):
    def logdir(self):
        return os.path.join(self.create_tempdir().full_path, "run")

    def _exported(self, logdir):
        model = keras.saving.load_model(
            run_folder.path(logdir, run_folder.MODEL_FILE)
        )
        return model.get_weights()

    def test_bad_recipe_settings_are_refused_before_training(self):
        for files, bindings, pattern in (
            (
                ("recipes/ema.gin",),
                ("run.steps_per_execution = 2",),
                "steps_per_execution = 1, got 2",
            ),
            (
                ("recipes/keep_best.gin",),
                ("make_datasets.holdout_examples = 0",),
                "holdout_examples is 0",
            ),
            (
                ("recipes/keep_best.gin",),
                ("keep_best.candidates = 'both'",),
                "averages no weights",
            ),
        ):
            logdir = self.logdir()
            _parse("pgd_at.gin", *files, "testing/tiny.gin", bindings=bindings)
            with self.assertRaisesRegex(ValueError, pattern):
                experiment.run(logdir=logdir)
            self.assertFalse(os.path.exists(logdir))

    def test_ema_cli_trains_evaluates_and_exports_the_average(self):
        logdir = self.logdir()
        cli_fixtures.run_cli(
            logdir,
            "pgd_at.gin",
            "recipes/ema.gin",
            "testing/tiny.gin",
            bindings=TINY_RECIPE[1:],
        )
        with open(run_folder.path(logdir, run_folder.RESULTS_FILE)) as f:
            results = json.load(f)
        self.assertEqual(results["weight_averaging"]["enabled"], True)
        self.assertEqual(results["weight_averaging"]["decay"], 0.9995)
        self.assertEqual(results["weight_averaging"]["steps_averaged"], 4)
        self.assertEqual(results["selection"], {"rule": "last"})
        self.assertEqual(results["final_state"], "last_average")
        evaluations = results["final_evaluations"]
        self.assertEqual(list(evaluations), ["last_average", "last_model"])
        for key in ("clean_accuracy", "robust_accuracy"):
            self.assertEqual(results[key], evaluations["last_average"][key])
        for name in ("val_robust_accuracy", "val_average_robust_accuracy"):
            self.assertLen(results["history"][name], 2)
        exported = self._exported(logdir)
        average = _checkpoint_state(logdir, "weight_averaging", len(exported))
        for a, b in zip(exported, average, strict=True):
            self.assertAllEqual(a, b)

    def test_keep_best_with_ema_exports_the_kept_state(self):
        logdir = self.logdir()
        _parse(
            "pgd_at.gin",
            "recipes/ema.gin",
            "recipes/keep_best.gin",
            "testing/tiny.gin",
            bindings=TINY_RECIPE,
        )
        results = experiment.run(logdir=logdir)
        chosen = results["selection"]
        self.assertEqual(chosen["rule"], "best")
        self.assertEqual(chosen["candidates"], "both")
        self.assertIn(chosen["kept_epoch"], (1, 2))
        self.assertEqual(results["final_state"], "best_" + chosen["kept_state"])
        self.assertEqual(
            list(results["final_evaluations"]),
            [results["final_state"], "last_average", "last_model"],
        )
        history = results["history"]
        self.assertEqual(
            history["selection/best_epoch"][-1], chosen["kept_epoch"]
        )
        # The kept epoch's held-out score is the best of the history.
        key = "val_%sholdout_robust_accuracy" % (
            "average_" if chosen["kept_state"] == "average" else ""
        )
        self.assertEqual(
            history[key][chosen["kept_epoch"] - 1],
            chosen["holdout_robust_accuracy"],
        )
        exported = self._exported(logdir)
        kept = _checkpoint_state(logdir, "keep_best", len(exported))
        for a, b in zip(exported, kept, strict=True):
            self.assertAllEqual(a, b)
        summary = experiment.format_results(results, logdir).splitlines()
        self.assertEqual(
            summary[-1],
            f"  evaluated and exported: best {chosen['kept_state']}, kept "
            f"after epoch {chosen['kept_epoch']}",
        )
        recorded = run_folder.read_json(run_folder.path(logdir, "data.json"))
        self.assertEqual(recorded["num_holdout"], 64)
        self.assertEqual(recorded["num_train"], 128)


METHOD_FILES = [f for f in cli_fixtures.SHIPPED if "/" not in f]
RECIPES = {
    "ema": ("recipes/ema.gin",),
    "keep_best": ("recipes/keep_best.gin",),
}
FEW_STEPS = (
    "make_datasets.train_examples = 128",  # 2 steps of tiny.gin's 64
    "make_datasets.validation_examples = 16",
    "make_datasets.eval_examples = 16",
    "make_datasets.holdout_examples = 50",
    "run.final_suite = 'fgsm'",
)


@pytest.mark.slow
class EveryMethodTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.named_parameters(
        *[
            (f"{method[: -len('.gin')]}_{recipe}", method, recipe)
            for method in METHOD_FILES
            for recipe in RECIPES
        ]
    )
    def test_trains_with_the_recipe(self, method_file, recipe):
        logdir = os.path.join(self.create_tempdir().full_path, "run")
        _parse(
            method_file,
            *RECIPES[recipe],
            "testing/tiny.gin",
            bindings=FEW_STEPS,
        )
        results = experiment.run(logdir=logdir)
        exported = keras.saving.load_model(
            run_folder.path(logdir, run_folder.MODEL_FILE)
        ).get_weights()
        if recipe == "ema":
            self.assertEqual(results["final_state"], "last_average")
            self.assertEqual(results["weight_averaging"]["steps_averaged"], 2)
            kept = _checkpoint_state(logdir, "weight_averaging", len(exported))
        else:
            self.assertEqual(results["final_state"], "best_model")
            self.assertEqual(results["selection"]["kept_epoch"], 1)
            kept = _checkpoint_state(logdir, "keep_best", len(exported))
        for a, b in zip(exported, kept, strict=True):
            self.assertAllEqual(a, b)
        self.assertBetween(results["clean_accuracy"], 0.0, 1.0)


class StopAfterFirstEpoch(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            raise RuntimeError("interrupted")


@pytest.mark.slow
class ExperimentResumeTest(tf.test.TestCase):
    def test_a_resumed_run_ends_as_the_uninterrupted_one(self):
        root = self.create_tempdir().full_path
        files = (
            "pgd_at.gin",
            "recipes/ema.gin",
            "recipes/keep_best.gin",
            "testing/tiny.gin",
        )
        bindings = (
            *TINY_RECIPE[:3],
            "run.epochs = 3",
            "run.final_suite = 'fgsm'",
        )
        _parse(*files, bindings=bindings)
        want = experiment.run(logdir=os.path.join(root, "whole"))
        logdir = os.path.join(root, "interrupted")
        _parse(*files, bindings=bindings)
        with self.assertRaisesRegex(RuntimeError, "interrupted"):
            experiment.run(
                logdir=logdir,
                callback_fns=[lambda **_: StopAfterFirstEpoch()],
            )
        _parse(*files, bindings=bindings)
        got = experiment.run(logdir=logdir)
        for key in (
            "selection",
            "weight_averaging",
            "final_state",
            "final_evaluations",
            "clean_accuracy",
            "robust_accuracy",
        ):
            self.assertEqual(got[key], want[key], key)
        for name in (
            "val_average_robust_accuracy",
            "val_holdout_robust_accuracy",
            "val_average_holdout_robust_accuracy",
        ):
            self.assertEqual(got["history"][name], want["history"][name])
        exported = [
            keras.saving.load_model(
                run_folder.path(d, run_folder.MODEL_FILE)
            ).get_weights()
            for d in (logdir, os.path.join(root, "whole"))
        ]
        for a, b in zip(*exported, strict=True):
            self.assertAllEqual(a, b)
