"""tools/benchmark.py: the table and plot (the training runs are the CLI's)."""

import importlib.util
import json
import os
import sys

import gin
import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import app
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


benchmark = _load("benchmark", "tfadv_benchmark")
# overhead.py imports reference_step as the benchmark script does.
sys.modules.setdefault(
    "reference_step", _load("reference_step", "reference_step")
)
reference_step = sys.modules["reference_step"]
overhead = _load("overhead", "tfadv_overhead")


def _result(seconds, epochs, clean, robust):
    return {
        "train_seconds": seconds,
        "epochs": epochs,
        "clean_accuracy": clean,
        "robust_accuracy": robust,
    }


class BenchmarkTest(tf.test.TestCase):
    def test_table_reports_ratio_to_pgd_at(self):
        table = benchmark.make_table(
            {
                "pgd_at": _result(200.0, 2, 0.8, {"pgd20": 0.7}),
                "yopo": _result(100.0, 2, 0.82, {"pgd20": 0.68}),
            }
        )
        lines = table.splitlines()
        self.assertIn("time / pgd_at", lines[0])
        self.assertIn(
            "| pgd_at | 2 | 100.0 | 200 | 0.8000 | 0.7000 | 1.00 |", lines
        )
        self.assertIn(
            "| yopo | 2 | 50.0 | 100 | 0.8200 | 0.6800 | 0.50 |", lines
        )

    def test_missing_attack_is_a_dash(self):
        table = benchmark.make_table(
            {
                "pgd_at": _result(10.0, 1, 0.5, {"pgd20": 0.4}),
                "other": _result(5.0, 1, 0.5, {"square": 0.3}),
            }
        )
        self.assertIn(
            "| other | 1 | 5.0 | 5 | 0.5000 | - | 0.3000 | 0.50 |", table
        )

    def test_method_bindings_reach_only_their_method(self):
        flags.FLAGS.mark_as_parsed()
        with flagsaver.flagsaver(
            method_bindings=["free_at=run.epochs = 1"], epochs=4
        ):
            self.assertIn("run.epochs = 1", benchmark._bindings_for("free_at"))
            self.assertNotIn("run.epochs = 1", benchmark._bindings_for("mart"))

    def test_bindings_parse_with_every_method_file(self):
        # The bindings benchmark.py passes use the current gin vocabulary.
        flags.FLAGS.mark_as_parsed()
        with flagsaver.flagsaver(
            epochs=2,
            train_examples=512,
            eval_examples=100,
            run_seed=3,
            bindings=["make_datasets.batch_size = 64"],
        ):
            for method in ("standard", "pgd_at", "free_at", "yopo"):
                bindings = benchmark._bindings_for(method)
                self.assertIn("run.seed = 3", bindings)
                self.assertIn("make_datasets.train_examples = 512", bindings)
                gin.clear_config()
                train.parse_gin([f"{method}.gin"], bindings)

    def _parsed_command(self, method):
        cmd = benchmark.command(method, "/nonexistent")
        bindings = [
            arg.partition("=")[2]
            for arg in cmd
            if arg.startswith("--gin_bindings=")
        ]
        gin.clear_config()
        train.parse_gin([benchmark.gin_file(method)], bindings)
        return bindings

    def test_schedules_scale_to_the_benchmark_epochs(self):
        flags.FLAGS.mark_as_parsed()
        # pgd_at.gin: 10 epochs, boundaries [8, 9]; yopo.gin: 3 epochs,
        # boundaries [2.2, 2.6], layer 0's [1, 2].
        with flagsaver.flagsaver(epochs=5):
            self._parsed_command("pgd_at")
            self.assertEqual(
                gin.query_parameter("piecewise_constant.boundaries"),
                [4.0, 4.5],
            )
            self._parsed_command("yopo")
            self.assertEqual(
                gin.query_parameter("piecewise_constant.boundaries"),
                [3.6667, 4.3333],
            )
            self.assertEqual(
                gin.query_parameter("YOPO.first_layer_lr_boundaries"),
                [1.6667, 3.3333],
            )
            self.assertEqual(gin.query_parameter("run.epochs"), 5)

    def test_own_epochs_keep_the_file_schedule(self):
        flags.FLAGS.mark_as_parsed()
        with flagsaver.flagsaver(setting="full", epochs=None):
            bindings = self._parsed_command("pgd_at")
        self.assertFalse([b for b in bindings if "boundaries" in b])
        with flagsaver.flagsaver(epochs=3):
            bindings = self._parsed_command("yopo")
        self.assertFalse([b for b in bindings if "boundaries" in b])

    def test_the_users_boundaries_win(self):
        flags.FLAGS.mark_as_parsed()
        with flagsaver.flagsaver(
            epochs=5,
            bindings=["piecewise_constant.boundaries = [1]"],
            method_bindings=["yopo=YOPO.first_layer_lr_boundaries = [3]"],
        ):
            self._parsed_command("yopo")
            self.assertEqual(
                gin.query_parameter("piecewise_constant.boundaries"), [1]
            )
            self.assertEqual(
                gin.query_parameter("YOPO.first_layer_lr_boundaries"), [3]
            )

    def test_malformed_method_binding(self):
        flags.FLAGS.mark_as_parsed()
        with (
            flagsaver.flagsaver(method_bindings=["free_at"]),
            self.assertRaisesRegex(app.UsageError, "method=binding"),
        ):
            benchmark._bindings_for("free_at")


class TimeToTargetTest(tf.test.TestCase):
    def _with_history(self, robust, seconds):
        result = _result(seconds[-1], len(seconds), 0.8, {"pgd20": robust[-1]})
        result["history"] = {
            "val_robust_accuracy": robust,
            "time/cumulative_train_seconds": seconds,
        }
        return result

    def test_first_epoch_at_the_target(self):
        result = self._with_history([0.3, 0.62, 0.7], [10.0, 20.0, 30.0])
        self.assertEqual(benchmark.time_to_target(result, 0.6), 20.0)
        self.assertEqual(benchmark.time_to_target(result, 0.3), 10.0)
        self.assertIsNone(benchmark.time_to_target(result, 0.9))

    def test_target_is_the_reference_final_less_1_5_points(self):
        # The final epoch counts, not the best one.
        results = {
            "pgd_at": self._with_history([0.5, 0.8, 0.7], [1.0, 2.0, 3.0]),
            "fast": self._with_history([0.6, 0.69], [0.5, 1.0]),
        }
        self.assertAllClose(benchmark.default_target(results), 0.685)
        self.assertIsNone(benchmark.default_target({"fast": results["fast"]}))
        no_history = {"pgd_at": _result(1.0, 1, 0.8, {"pgd20": 0.5})}
        self.assertIsNone(benchmark.default_target(no_history))

    def test_reached_within_and_not_reached(self):
        results = {
            "pgd_at": self._with_history([0.40, 0.55, 0.60], [10, 20, 30]),
            # 0.586 is within 1.5 points of 0.60: reached at 8 s.
            "within": self._with_history([0.50, 0.586], [4.0, 8.0]),
            # 0.584 is 1.6 points short: never reached.
            "short": self._with_history([0.55, 0.584], [3.0, 6.0]),
            # Reached early, then lost: the first epoch counts.
            "early": self._with_history([0.59, 0.30], [5.0, 10.0]),
        }
        target = benchmark.default_target(results)
        self.assertAllClose(target, 0.585)
        summary = benchmark.time_to_accuracy(results, target)
        self.assertEqual(summary["pgd_at"]["seconds"], 30)
        self.assertEqual(summary["within"]["seconds"], 8.0)
        self.assertAllClose(summary["within"]["ratio_to_reference"], 8 / 30)
        self.assertFalse(summary["short"]["reached"])
        self.assertIsNone(summary["short"]["seconds"])
        self.assertIsNone(summary["short"]["ratio_to_reference"])
        self.assertEqual(summary["early"]["seconds"], 5.0)
        table = benchmark.make_table(results, target)
        self.assertIn("time to 0.585", table.splitlines()[0])
        self.assertIn("| short | 2 | 3.0 | 6 | not reached | 0.8000 |", table)
        self.assertIn("| within | 2 | 4.0 | 8 | 8 | 0.8000 |", table)

    def test_the_reference_reaches_its_own_target(self):
        results = {"pgd_at": self._with_history([0.2, 0.6], [1.0, 2.0])}
        target = benchmark.default_target(results)
        self.assertEqual(benchmark.time_to_target(results["pgd_at"], target), 2)

    def test_suite_column(self):
        result = _result(10.0, 1, 0.5, {"pgd20": 0.4})
        result["suite"] = {"name": "standard", "robust_accuracy": 0.35}
        table = benchmark.make_table({"pgd_at": result})
        self.assertIn("standard suite", table.splitlines()[0])
        self.assertIn("| 0.4000 | 0.3500 | 1.00 |", table)


class ParetoTest(tf.test.TestCase):
    def test_front_on_hand_made_points(self):
        points = {
            "pgd_at": (100.0, 0.70),
            "fgsm_rs": (30.0, 0.65),
            # Slower than FGSM-RS and no more robust: dominated.
            "slow_weak": (50.0, 0.65),
            "slower_weaker": (120.0, 0.60),
            "fastest": (10.0, 0.10),
            # Ties FGSM-RS's time, more robust: FGSM-RS stays (it is not
            # strictly worse in time) only if it is not less robust.
            "best_at_30": (30.0, 0.66),
        }
        front = benchmark.pareto_front(points)
        self.assertEqual(front, {"pgd_at", "fastest", "best_at_30"})

    def test_identical_points_are_both_on_the_front(self):
        front = benchmark.pareto_front({"a": (1.0, 0.5), "b": (1.0, 0.5)})
        self.assertEqual(front, {"a", "b"})

    def test_final_points_come_from_the_curve(self):
        result = _result(9.0, 2, 0.8, {"pgd20": 0.4})
        result["history"] = {
            "val_robust_accuracy": [0.3, 0.45],
            "time/cumulative_train_seconds": [4.0, 9.0],
        }
        bare = _result(5.0, 1, 0.8, {"pgd20": 0.2})
        points = benchmark.final_points({"a": result, "b": bare})
        self.assertEqual(points, {"a": (9.0, 0.45), "b": (5.0, 0.2)})

    def test_table_and_plot_mark_the_front(self):
        def run(robust, seconds):
            result = _result(seconds[-1], len(seconds), 0.8, {"pgd20": 0.5})
            result["history"] = {
                "val_robust_accuracy": robust,
                "time/cumulative_train_seconds": seconds,
            }
            return result

        results = {
            "pgd_at": run([0.5, 0.6], [10.0, 20.0]),
            "fgsm_rs": run([0.55, 0.58], [3.0, 6.0]),
            "slow": run([0.4, 0.5], [9.0, 18.0]),
        }
        front = benchmark.pareto_front(benchmark.final_points(results))
        table = benchmark.make_table(results, 0.585, front)
        self.assertIn("| slow |", table)
        self.assertTrue(
            [line for line in table.splitlines() if "| slow |" in line][
                0
            ].endswith("| 0.5000 | dominated |")
        )
        path = os.path.join(self.get_temp_dir(), "plot.png")
        if benchmark.plot(results, path, 0.585):
            with open(path, "rb") as f:
                self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")


class SettingsTest(tf.test.TestCase, parameterized.TestCase):
    def test_every_shipped_method_file_is_in_the_default_list(self):
        folder = os.path.join(os.path.dirname(train.__file__), "gin_configs")
        shipped = {
            name[: -len(".gin")]
            for name in os.listdir(folder)
            if name.endswith(".gin")
        }
        # pgd_at_l2 is attacked under L2: not comparable on one plot.
        self.assertEqual(shipped - {"pgd_at_l2"}, set(benchmark.METHODS))

    def test_free_at_trains_epochs_over_replays(self):
        flags.FLAGS.mark_as_parsed()
        with flagsaver.flagsaver(epochs=6):
            self.assertIn("run.epochs = 2", benchmark._bindings_for("free_at"))
            self.assertIn("run.epochs = 6", benchmark._bindings_for("pgd_at"))

    @parameterized.parameters("resnet_narrow", "small_cnn")
    def test_setting_bindings_parse(self, name):
        flags.FLAGS.mark_as_parsed()
        with flagsaver.flagsaver(setting=name):
            for method in ("pgd_at", "yopo", "free_at"):
                gin.clear_config()
                train.parse_gin(
                    [benchmark.gin_file(method)],
                    benchmark._bindings_for(method),
                )
            if name == "resnet_narrow":
                self.assertEqual(
                    gin.query_parameter("preact_resnet18.width"),
                    benchmark.NARROW_WIDTH,
                )

    def test_full_setting_names_existing_files(self):
        folder = os.path.join(os.path.dirname(train.__file__), "gin_configs")
        full = benchmark.SETTINGS["full"]
        self.assertEqual(set(full.gin_files), set(full.methods))
        for path in full.gin_files.values():
            self.assertTrue(os.path.exists(os.path.join(folder, path)), path)


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
