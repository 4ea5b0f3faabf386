"""tools/benchmark.py and tools/bench: plans, runs, analysis and report.

The training runs themselves are the CLI's (`tfadv.train` children); here
the arithmetic is checked on hand-made results.json dictionaries.
"""

import importlib.util
import json
import math
import os
import sys
import tempfile

import gin
import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import flags
from absl.testing import flagsaver
from absl.testing import parameterized

from tfadv import models
from tfadv import train
from tfadv.attacks import pgd
from tfadv.methods import pgd_at

_TOOLS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "tools")


def _load(name, module):
    spec = importlib.util.spec_from_file_location(
        module, os.path.join(_TOOLS, f"{name}.py")
    )
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    return loaded


# benchmark.py puts tools/ on sys.path and imports its parts as `bench.*`.
benchmark = _load("benchmark", "tfadv_benchmark")
from bench import analysis  # noqa: E402
from bench import report  # noqa: E402
from bench import runs  # noqa: E402
from bench import settings  # noqa: E402

# overhead.py imports reference_step as the benchmark script does.
sys.modules.setdefault(
    "reference_step", _load("reference_step", "reference_step")
)
reference_step = sys.modules["reference_step"]
overhead = _load("overhead", "tfadv_overhead")


def _run(robust, seconds, clean=0.8, test=None, cpu=None, examples=10000):
    """A results.json of one seed: a validation curve and a final test."""
    cpu = cpu or [2.0 * s for s in seconds]
    return {
        "train_seconds": seconds[-1],
        "train_cpu_seconds": cpu[-1],
        "epochs": len(seconds),
        "clean_accuracy": clean,
        "robust_accuracy": {"pgd20": robust[-1] if test is None else test},
        "num_eval_examples": examples,
        "history": {
            "val_robust_accuracy": robust,
            "time/cumulative_train_seconds": seconds,
            "time/cumulative_train_cpu_seconds": cpu,
        },
    }


def _plan(**kwargs):
    return settings.make_plan(kwargs.pop("setting", "small_cnn"), **kwargs)


def _parse(plan, method, bindings):
    gin.clear_config()
    train.parse_gin([plan.gin_file(method)], bindings)


class SettingsTest(tf.test.TestCase, parameterized.TestCase):
    def test_every_shipped_method_file_is_in_the_default_list(self):
        folder = os.path.join(os.path.dirname(train.__file__), "gin_configs")
        shipped = {
            name[: -len(".gin")]
            for name in os.listdir(folder)
            if name.endswith(".gin")
        }
        # pgd_at_l2 is attacked under L2: not comparable on one plot.
        self.assertEqual(shipped - {"pgd_at_l2"}, set(settings.METHODS))
        self.assertEqual(settings.SETTINGS["ranking"].methods, settings.METHODS)

    def test_flags_replace_the_settings_defaults(self):
        plan = _plan(
            setting="ranking",
            seeds=(3, 4),
            epochs=2,
            bindings=["make_datasets.batch_size = 64"],
            method_bindings=["yopo=YOPO.m = 3"],
        )
        self.assertEqual(plan.seeds, (3, 4))
        self.assertEqual(plan.epochs, 2)
        self.assertEqual(plan.front_seeds, 3)  # the setting's
        self.assertEqual(plan.train_examples, 15000)
        self.assertEqual(plan.method_bindings, (("yopo", "YOPO.m = 3"),))
        self.assertIn("make_datasets.batch_size = 64", plan.bindings)

    @parameterized.parameters("free_at", "free_at=", "=run.epochs = 1")
    def test_malformed_method_binding(self, entry):
        with self.assertRaisesRegex(ValueError, "method=binding"):
            _plan(method_bindings=[entry])

    def test_free_at_trains_epochs_over_its_configured_replays(self):
        plan = _plan(epochs=6)
        self.assertEqual(settings.epochs_for(plan, "free_at"), 2)  # m = 4
        self.assertEqual(settings.epochs_for(plan, "pgd_at"), 6)
        # The replays come from the parsed configuration, not a constant.
        more = _plan(epochs=6, bindings=["REPLAYS = 6"])
        self.assertEqual(settings.epochs_for(more, "free_at"), 1)
        self.assertIsNone(settings.epochs_for(_plan(setting="full"), "yopo"))

    @parameterized.parameters("resnet_narrow", "small_cnn", "ranking")
    def test_setting_bindings_parse(self, name):
        plan = _plan(setting=name)
        for method in ("pgd_at", "yopo", "free_at", "fgsm_pgi"):
            _parse(plan, method, runs.bindings(plan, method, 0))
        if name == "resnet_narrow":
            self.assertEqual(
                gin.query_parameter("preact_resnet18.width"),
                settings.NARROW_WIDTH,
            )

    def test_full_setting_names_existing_files(self):
        folder = os.path.join(os.path.dirname(train.__file__), "gin_configs")
        full = settings.SETTINGS["full"]
        self.assertEqual(set(full.gin_files), set(full.methods))
        for path in full.gin_files.values():
            self.assertTrue(os.path.exists(os.path.join(folder, path)), path)


class RunBindingsTest(tf.test.TestCase):
    def test_one_seed_seeds_the_run(self):
        plan = _plan(epochs=2, train_examples=512, eval_examples=100)
        for method in ("standard", "pgd_at", "free_at", "yopo"):
            bindings = runs.bindings(plan, method, 3)
            self.assertIn("run.seed = 3", bindings)
            self.assertIn("make_datasets.train_examples = 512", bindings)
            self.assertFalse([b for b in bindings if "shuffle_seed" in b])
            _parse(plan, method, bindings)
            self.assertEqual(gin.query_parameter("run.seed"), 3)

    def test_method_bindings_reach_only_their_method(self):
        plan = _plan(epochs=4, method_bindings=["free_at=run.epochs = 1"])
        self.assertIn("run.epochs = 1", runs.bindings(plan, "free_at", 0))
        self.assertNotIn("run.epochs = 1", runs.bindings(plan, "mart", 0))

    def test_epoch_parameters_scale_to_the_benchmark_epochs(self):
        # pgd_at.gin: 10 epochs, boundaries [8, 9]; yopo.gin: 3 epochs,
        # boundaries [2.2, 2.6], layer 0's [1, 2]; fgsm_pgi.gin: 10 epochs,
        # buffers reset every 4.
        plan = _plan(epochs=5)
        _parse(plan, "pgd_at", runs.bindings(plan, "pgd_at", 0))
        self.assertEqual(
            gin.query_parameter("piecewise_constant.boundaries"), [4.0, 4.5]
        )
        _parse(plan, "yopo", runs.bindings(plan, "yopo", 0))
        self.assertEqual(
            gin.query_parameter("piecewise_constant.boundaries"),
            [3.6667, 4.3333],
        )
        self.assertEqual(
            gin.query_parameter("YOPO.first_layer_lr_boundaries"),
            [1.6667, 3.3333],
        )
        self.assertEqual(gin.query_parameter("run.epochs"), 5)
        _parse(plan, "fgsm_pgi", runs.bindings(plan, "fgsm_pgi", 0))
        self.assertEqual(gin.query_parameter("FGSMPGI.reset_period"), 2)

    def test_own_epochs_keep_the_file_schedule(self):
        for plan, method in (
            (_plan(setting="full"), "pgd_at"),
            (_plan(epochs=3), "yopo"),
            (_plan(setting="ranking"), "pgd_at"),
        ):
            bindings = runs.bindings(plan, method, 0)
            self.assertFalse([b for b in bindings if "boundaries" in b])

    def test_the_users_values_win(self):
        plan = _plan(
            epochs=5,
            bindings=["piecewise_constant.boundaries = [1]"],
            method_bindings=["yopo=YOPO.first_layer_lr_boundaries = [3]"],
        )
        _parse(plan, "yopo", runs.bindings(plan, "yopo", 0))
        self.assertEqual(
            gin.query_parameter("piecewise_constant.boundaries"), [1]
        )
        self.assertEqual(
            gin.query_parameter("YOPO.first_layer_lr_boundaries"), [3]
        )

    def test_command_names_the_file_and_the_folder(self):
        plan = _plan(setting="full")
        cmd = runs.command(plan, "yopo", 1, "/x/yopo/seed_1")
        self.assertEqual(cmd[1:3], ["-m", "tfadv.train"])
        self.assertIn("--gin_file=experiments/cifar10_preact_yopo_5_3.gin", cmd)
        self.assertIn("--logdir=/x/yopo/seed_1", cmd)
        self.assertIn("--gin_bindings=run.seed = 1", cmd)


class FolderTest(tf.test.TestCase):
    def test_finished_runs_by_method_and_seed(self):
        out = tempfile.mkdtemp()
        for method, seed in (("pgd_at", 0), ("pgd_at", 2), ("yopo", 1)):
            folder = runs.seed_folder(out, method, seed)
            os.makedirs(folder)
            with open(os.path.join(folder, "results.json"), "w") as f:
                json.dump({"seed": seed}, f)
        os.makedirs(runs.seed_folder(out, "yopo", 5))  # unfinished
        os.makedirs(os.path.join(out, "pgd_at", "notes"))
        found = runs.finished_runs(out)
        self.assertEqual(
            {m: sorted(r) for m, r in found.items()},
            {"pgd_at": [0, 2], "yopo": [1]},
        )
        self.assertEqual(found["pgd_at"][2], {"seed": 2})

    def test_a_folder_keeps_its_training_choices(self):
        out = os.path.join(tempfile.mkdtemp(), "bench")
        runs.check_plan(_plan(epochs=3, seeds=(0,)), out)
        # More seeds and other methods may join...
        runs.check_plan(_plan(epochs=3, seeds=(1, 2), methods=["yopo"]), out)
        with open(os.path.join(out, runs.PLAN_FILE)) as f:
            before = f.read()
        # ...runs trained otherwise may not.
        with self.assertRaises(runs.Refusal) as cm:
            runs.check_plan(_plan(epochs=4), out)
        message = str(cm.exception)
        self.assertNotIn("\n", message)
        self.assertRegex(message, r"epochs: folder 3, now 4.*Nothing was")
        with open(os.path.join(out, runs.PLAN_FILE)) as f:
            self.assertEqual(f.read(), before)


class AnalysisTest(tf.test.TestCase):
    def test_time_to_target_on_either_clock(self):
        result = _run([0.3, 0.62, 0.7], [10.0, 20.0, 30.0], cpu=[5, 9, 30])
        self.assertEqual(analysis.time_to_target(result, 0.6), 20.0)
        self.assertEqual(analysis.time_to_target(result, 0.6, "cpu"), 9.0)
        self.assertEqual(analysis.time_to_target(result, 0.3), 10.0)
        self.assertIsNone(analysis.time_to_target(result, 0.9))

    def test_target_is_the_references_mean_final_less_1_5_points(self):
        # The final epoch counts, not the best; the mean over seeds.
        found = {
            "pgd_at": {
                0: _run([0.5, 0.8, 0.7], [1.0, 2.0, 3.0]),
                1: _run([0.5, 0.72], [1.0, 2.0]),
            },
            "fast": {0: _run([0.6, 0.69], [0.5, 1.0])},
        }
        self.assertAllClose(analysis.default_target(found), 0.71 - 0.015)
        self.assertIsNone(analysis.default_target({"fast": found["fast"]}))

    def test_estimate_mean_spread_and_floor(self):
        e = analysis.estimate([0.60, 0.64, 0.62])
        self.assertAllClose(e.mean, 0.62)
        self.assertAllClose(e.sd, 0.02)
        self.assertAllClose(e.se, 0.02 / math.sqrt(3))
        # One seed: the floor (a binomial error) stands in for the spread.
        one = analysis.estimate([0.6], floor=analysis.binomial_se(0.6, 2500))
        self.assertAllClose(one.se, math.sqrt(0.24 / 2500))
        self.assertEqual(one.sd, 0.0)
        self.assertIsNone(analysis.estimate([None]))

    def test_differs_only_beyond_two_standard_errors(self):
        a = analysis.Estimate(0.60, 0.0, 0.01, 1)
        self.assertFalse(a.differs_from(analysis.Estimate(0.62, 0, 0.01, 1)))
        self.assertTrue(a.differs_from(analysis.Estimate(0.63, 0, 0.01, 1)))

    def _found(self):
        return {
            "pgd_at": {
                0: _run([0.6, 0.70], [50.0, 100.0], test=0.70),
                1: _run([0.6, 0.71], [52.0, 104.0], test=0.71),
            },
            # As robust as PGD-AT inside the noise, 4x faster.
            "fgsm_rs": {
                0: _run([0.66, 0.698], [12.0, 25.0], test=0.698),
                1: _run([0.66, 0.70], [13.0, 26.0], test=0.70),
            },
            # Slower than FGSM-RS, a hair less robust: a tie.
            "close": {0: _run([0.6, 0.697], [14.0, 27.0], test=0.697)},
            # Slower than FGSM-RS and clearly less robust: dominated.
            "weak": {0: _run([0.5, 0.60], [20.0, 40.0], test=0.60)},
            "standard": {0: _run([0.1, 0.05], [5.0, 10.0], test=0.05)},
        }

    def test_front_ties_and_dominated(self):
        found = self._found()
        stats = analysis.summarise(found, validation_examples=2500)
        self.assertEqual(stats["pgd_at"].seeds, (0, 1))
        self.assertAllClose(stats["pgd_at"].robust.mean, 0.705)
        self.assertAllClose(stats["pgd_at"].seconds.mean, 102.0)
        place = analysis.standing(stats)
        self.assertEqual(
            place,
            {
                "pgd_at": "front",
                "fgsm_rs": "front",
                "standard": "front",
                "close": "tie",
                "weak": "dominated",
            },
        )
        self.assertEqual(
            analysis.near_front(stats),
            ["pgd_at", "fgsm_rs", "close", "standard"],
        )
        self.assertAllClose(analysis.front_gap(stats)["weak"], 0.099)

    def test_recommendations_say_ties(self):
        found = self._found()
        target = analysis.default_target(found)  # 0.705 - 0.015 = 0.69
        stats = analysis.with_time_to_target(
            analysis.summarise(found, validation_examples=2500),
            found,
            target,
        )
        self.assertEqual(stats["fgsm_rs"].reached, 2)
        self.assertAllClose(stats["fgsm_rs"].time_to_target.mean, 25.5)
        self.assertEqual(stats["weak"].reached, 0)
        self.assertIsNone(stats["weak"].time_to_target)
        answers = analysis.recommendations(stats)
        fastest = answers["fastest_to_reference"]
        self.assertEqual(fastest["method"], "fgsm_rs")
        self.assertEqual(fastest["ties"], ["close"])  # 27 s: within noise
        most = answers["most_robust"]
        self.assertEqual(most["method"], "pgd_at")
        self.assertEqual(sorted(most["ties"]), ["close", "fgsm_rs"])
        per_minute = answers["most_robust_per_minute"]
        self.assertEqual(per_minute["method"], "fgsm_rs")
        # (0.699 - 0.05) points over 25.5 s: 1.527 per minute; "close"
        # (1.438) is inside the propagated error, PGD-AT (0.38) is not.
        self.assertAllClose(per_minute["value"], 0.649 / (25.5 / 60))
        self.assertEqual(per_minute["ties"], ["close"])


class ReportTest(tf.test.TestCase):
    def test_table_shows_means_spreads_and_places(self):
        found = AnalysisTest()._found()
        target = analysis.default_target(found)
        stats = analysis.with_time_to_target(
            analysis.summarise(found, validation_examples=2500),
            found,
            target,
        )
        table = report.make_table(stats, target, analysis.standing(stats))
        lines = table.splitlines()
        self.assertIn("time to 0.690", lines[0])
        row = next(line for line in lines if line.startswith("| pgd_at |"))
        # 2 seeds, 2 epochs, 102 ± 3 s, reached by both at 100 and 104 s.
        self.assertIn("| pgd_at | 2 | 2 | 102 ± 3 | 102 ± 3 | 2/2 |", row)
        self.assertIn("| 0.705 ± 0.007 |", row)
        self.assertTrue(row.endswith("| 1.00 | front |"))
        weak = next(line for line in lines if line.startswith("| weak |"))
        self.assertIn("| not reached | 0/1 |", weak)
        self.assertTrue(weak.endswith("| dominated |"))

    def test_write_makes_every_file(self):
        found = AnalysisTest()._found()
        found["pgd_at"][0]["provenance"] = {
            "git": {"commit": "0123456789abcdef", "dirty": False},
            "devices": {"cpu": "Some CPU", "cpu_cores": 2},
        }
        found["pgd_at"][0]["benchmark_run"] = {
            "load_average_at_start": [1.5, 1, 1],
            "load_average_at_end": [2.0, 1, 1],
        }
        out = tempfile.mkdtemp()
        stats = analysis.summarise(found)
        report.write(out, stats, found, None, "cpu", "Header.")
        with open(os.path.join(out, "benchmark.md")) as f:
            text = f.read()
        self.assertIn(
            "| pgd_at | 0 | 0123456789 | Some CPU, 2 cores | 1.5, 2.0 |", text
        )
        self.assertIn("Most robust overall", text)
        with open(os.path.join(out, "benchmark.json")) as f:
            summary = json.load(f)
        self.assertEqual(summary["clock"], "cpu")
        self.assertEqual(summary["methods"]["weak"]["standing"], "dominated")
        self.assertAllClose(
            summary["methods"]["pgd_at"]["robust_accuracy"]["mean"], 0.705
        )
        path = os.path.join(out, "benchmark.png")
        if os.path.exists(path):
            with open(path, "rb") as f:
                self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")


class OverheadArithmeticTest(tf.test.TestCase):
    def test_per_round_ratios_and_spread(self):
        times = {
            "reference_step": [1.0, 2.0, 4.0, 1.0, 2.0],
            "tfadv_step": [1.1, 2.0, 4.8, 1.3, 1.8],
        }
        ratios = overhead.per_round_ratios(
            times, "reference_step", ["tfadv_step"]
        )
        self.assertAllClose(ratios["tfadv_step"], [1.1, 1.0, 1.2, 1.3, 0.9])
        summary = overhead.spread(ratios["tfadv_step"])
        self.assertAllClose(summary["median"], 1.1)
        self.assertAllClose(summary["q1"], 1.0)
        self.assertAllClose(summary["q3"], 1.2)
        self.assertAllClose(summary["min"], 0.9)
        self.assertAllClose(summary["max"], 1.3)
        self.assertEqual(summary["rounds"], 5)

    def test_ratio_of_medians_is_not_the_median_ratio(self):
        # A slow round for both sides cancels in the per-round ratio.
        times = {"reference_step": [1.0, 10.0, 1.0], "x": [1.0, 10.0, 2.0]}
        ratios = overhead.per_round_ratios(times, "reference_step", ["x"])
        self.assertEqual(overhead.spread(ratios["x"])["median"], 1.0)

    def test_rounds_alternate(self):
        orders = overhead.round_orders(["a", "b", "c"], 3)
        self.assertEqual(
            orders, [["a", "b", "c"], ["c", "b", "a"], ["a", "b", "c"]]
        )

    def test_summary_costs(self):
        names = [
            overhead.ATTACK_REFERENCE,
            overhead.STEP_REFERENCE,
            *overhead.ATTACKS,
            *overhead.STEPS,
        ]
        times = {name: [1.0, 1.0] for name in names}
        times["tfadv_step"] = [1.2, 1.2]
        times["fixed_seed"] = [1.1, 1.1]
        summary = overhead.summarise(times)
        self.assertAllClose(summary["ratio"]["tfadv_step"]["median"], 1.2)
        self.assertAllClose(summary["extra_cost"]["fixed_seed"], 0.1)
        self.assertAllClose(summary["extra_cost"]["no_metrics"], 0.2)
        self.assertIn(
            "| tfadv_step | reference_step |", overhead.table(summary)
        )


def _tiny(kind):
    keras.utils.set_random_seed(1)
    if kind == "cnn":
        return models.small_cnn(
            input_shape=(8, 8, 1), filters=(4, 8), dense_units=16
        )
    # BatchNorm: the attack's training-mode forwards move its statistics.
    return models.preact_resnet18(input_shape=(8, 8, 1), width=2)


class ReferenceStepTest(tf.test.TestCase, parameterized.TestCase):
    """The hand-written step computes what tfadv's PGD-AT step does."""

    @parameterized.parameters("cnn", "resnet")
    def test_same_weights_after_pgd_at_steps(self, kind):
        rng = np.random.default_rng(0)
        x = rng.uniform(size=(16, 8, 8, 1)).astype("float32")
        y = rng.integers(0, 10, 16).astype("int32")
        ours, theirs = _tiny(kind), _tiny(kind)
        theirs.set_weights(ours.get_weights())
        before = [np.array(w) for w in ours.get_weights()]
        trainer = overhead.make_trainer(pgd_at.PGDAT, ours, seed=7)
        steps = 3  # momentum and the seed sequence matter after the first
        batches = tf.data.Dataset.from_tensors((x, y)).repeat(steps)
        trainer.fit(batches, epochs=1, verbose=0, shuffle=False)
        reference = overhead.make_reference(theirs, seed=7)
        for _ in range(steps):
            reference.step(tf.constant(x), tf.constant(y))
        for a, b, _ in zip(
            ours.get_weights(), theirs.get_weights(), before, strict=True
        ):
            self.assertAllClose(a, b, rtol=1e-6, atol=1e-7)
        changed = [
            not np.allclose(a, w)
            for a, w in zip(ours.get_weights(), before, strict=True)
        ]
        self.assertTrue(any(changed))

    def test_another_seed_gives_other_weights(self):
        rng = np.random.default_rng(0)
        x = rng.uniform(size=(16, 8, 8, 1)).astype("float32")
        y = rng.integers(0, 10, 16).astype("int32")
        ours, theirs = _tiny("cnn"), _tiny("cnn")
        theirs.set_weights(ours.get_weights())
        trainer = overhead.make_trainer(pgd_at.PGDAT, ours, seed=7)
        trainer.fit(
            tf.data.Dataset.from_tensors((x, y)), verbose=0, shuffle=False
        )
        overhead.make_reference(theirs, seed=8).step(x, y)
        differs = [
            not np.allclose(a, b)
            for a, b in zip(
                ours.get_weights(), theirs.get_weights(), strict=True
            )
        ]
        self.assertTrue(any(differs))

    def test_reference_attack_matches_projected_gradient(self):
        model = _tiny("cnn")
        rng = np.random.default_rng(1)
        x = tf.constant(rng.uniform(size=(8, 8, 8, 1)).astype("float32"))
        y = tf.constant(rng.integers(0, 10, 8).astype("int32"))
        seed = tf.constant([3, 4], tf.int32)
        ours = pgd.ProjectedGradient(
            epsilon=0.1, step_size=0.025, num_steps=10
        )(model, x, y, seed=seed, training=True)
        theirs = reference_step.pgd(
            model,
            x,
            y,
            seed,
            epsilon=0.1,
            step_size=0.025,
            num_steps=10,
            training=True,
        )
        self.assertAllClose(ours, theirs, rtol=0, atol=1e-6)
        self.assertLessEqual(
            float(tf.reduce_max(tf.abs(theirs - x))), 0.1 + 1e-6
        )

    def test_variants_train(self):
        rng = np.random.default_rng(0)
        x = rng.uniform(size=(4, 8, 8, 1)).astype("float32")
        y = rng.integers(0, 10, 4).astype("int32")
        for cls, extra in overhead._VARIANTS.values():
            trainer = overhead.make_trainer(cls, _tiny("cnn"), seed=0, **extra)
            step = tf.function(trainer.train_step, autograph=False)
            step((tf.constant(x), tf.constant(y)))


class ArtPeerTest(tf.test.TestCase):
    def test_art_trainer_trains_the_same_model_adversarially(self):
        try:
            import art  # noqa: F401
        except ImportError:
            self.skipTest("IBM ART is not installed (an optional peer).")
        keras.utils.set_random_seed(0)
        classifier = models.small_cnn(input_shape=(28, 28, 1), num_classes=10)
        before = [w.numpy().copy() for w in classifier.trainable_weights]
        rng = np.random.default_rng(0)
        x = tf.constant(rng.uniform(size=(8, 28, 28, 1)), tf.float32)
        y = tf.constant(rng.integers(0, 10, size=8), tf.int32)
        run = overhead.art_madry_pgd(classifier, x, y, 2, 10, seed=0)
        run()
        after = [w.numpy() for w in classifier.trainable_weights]
        self.assertTrue(
            any(
                not np.allclose(a, b)
                for a, b in zip(after, before, strict=True)
            )
        )


@pytest.mark.slow
class OverheadModeTest(tf.test.TestCase):
    def test_overhead_mode_writes_its_tables(self):
        out = os.path.join(self.get_temp_dir(), "overhead")
        flags.FLAGS.mark_as_parsed()
        with flagsaver.flagsaver(
            mode="overhead",
            rounds=1,
            warmup=0,
            steps_per_round=1,
            overhead_batch_size=8,
            out=out,
        ):
            benchmark.main([])
        with open(os.path.join(out, "overhead.json")) as f:
            summary = json.load(f)
        self.assertIn("tfadv_fit", summary["ratio"])
        self.assertIn("fixed_seed", summary["extra_cost"])
