"""tools/benchmark.py: the table and plot (the training runs are the CLI's)."""

import importlib.util
import os

import gin
import tensorflow as tf
from absl import app
from absl import flags
from absl.testing import flagsaver

from tfadv import train

_PATH = os.path.join(
    os.path.dirname(os.path.dirname(__file__)), "tools", "benchmark.py"
)
_spec = importlib.util.spec_from_file_location("tfadv_benchmark", _PATH)
benchmark = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(benchmark)


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

    def test_default_target_is_95_percent_of_the_reference_best(self):
        results = {
            "pgd_at": self._with_history([0.5, 0.8, 0.7], [1.0, 2.0, 3.0]),
            "fast": self._with_history([0.7, 0.78], [0.5, 1.0]),
        }
        self.assertAllClose(benchmark.default_target(results), 0.76)
        self.assertIsNone(benchmark.default_target({"fast": results["fast"]}))
        table = benchmark.make_table(results, 0.76)
        self.assertIn("time to 0.760", table.splitlines()[0])
        self.assertIn("| fast | 2 | 0.5 | 1 | 1 | 0.8000 |", table)
        self.assertIn("| pgd_at | 3 | 1.0 | 3 | 2 | 0.8000 |", table)

    def test_suite_column(self):
        result = _result(10.0, 1, 0.5, {"pgd20": 0.4})
        result["suite"] = {"name": "standard", "robust_accuracy": 0.35}
        table = benchmark.make_table({"pgd_at": result})
        self.assertIn("standard suite", table.splitlines()[0])
        self.assertIn("| 0.4000 | 0.3500 | 1.00 |", table)
