"""tools/cost_model.py: modelled seconds, waste, and the methods it builds."""

import dataclasses
import importlib.util
import json
import os
import sys
import time

import keras
import pytest
import tensorflow as tf

from tfadv import layers
from tfadv import models
from tfadv.methods import costs

_TOOLS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "tools")


def _load(name, module):
    spec = importlib.util.spec_from_file_location(
        module, os.path.join(_TOOLS, f"{name}.py")
    )
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    return loaded


# cost_model.py imports overhead (and it reference_step) as the benchmark
# script does, with tools/ on the path.
sys.modules.setdefault(
    "reference_step", _load("reference_step", "reference_step")
)
sys.modules.setdefault("overhead", _load("overhead", "overhead"))
cost_model = _load("cost_model", "tfadv_cost_model")

UNITS = {
    "weight_pass": 3.0,
    "weight_input_pass": 3.5,
    "apply": 0.5,
    "update": 3.5,
    "input_gradient": 2.0,
    "costate_pass": 1.5,
    "layer0_input_gradient": 0.25,
    "layer0_weight_gradient": 0.125,
    "inference_forward": 1.0,
    "second_order": 6.0,
}


def _counts(**counts):
    return costs.Passes(**counts).counts()


class ArithmeticTest(tf.test.TestCase):
    def test_every_kind_has_a_unit(self):
        kinds = {f.name for f in dataclasses.fields(costs.Passes)}
        self.assertEqual(set(cost_model.KIND_UNITS), kinds)
        self.assertEqual(set(cost_model.kind_seconds(UNITS)), kinds)

    def test_derived_kind_is_a_difference_never_negative(self):
        seconds = cost_model.kind_seconds(UNITS)
        self.assertEqual(seconds["weight_backwards"], 2.0)  # 3 - 1
        self.assertEqual(seconds["updates"], 0.5)
        cheap = {**UNITS, "weight_pass": 0.5}
        self.assertEqual(
            cost_model.kind_seconds(cheap)["weight_backwards"], 0.0
        )

    def test_modelled_seconds(self):
        # PGD-10: 10 input gradients, 1 weight pass, 1 update, 1 forward.
        pgd10 = _counts(
            input_gradients=10, weight_passes=1, updates=1, inference_forwards=1
        )
        self.assertEqual(cost_model.modelled_seconds(pgd10, UNITS), 24.5)
        # YOPO-5-10: 5 W, 1 U, 50 L0I, 5 L0W, 1 F.
        yopo = _counts(
            weight_passes=5,
            updates=1,
            layer0_input_gradients=50,
            layer0_weight_gradients=5,
            inference_forwards=1,
        )
        self.assertEqual(
            cost_model.modelled_seconds(yopo, UNITS),
            15.0 + 0.5 + 12.5 + 0.625 + 1.0,
        )
        pgi = _counts(
            input_gradients=1,
            weight_passes=1,
            updates=1,
            weight_backwards=1,
            inference_forwards=1,
        )
        self.assertEqual(cost_model.modelled_seconds(pgi, UNITS), 8.5)

    def test_unknown_kind_is_refused(self):
        with self.assertRaises(KeyError):
            cost_model.modelled_seconds({"teleports": 1}, UNITS)

    def test_waste_per_round_cancels_a_slow_round(self):
        counts = _counts(weight_passes=1, updates=1)  # 3.5 s modelled
        slow = {name: [v, 2 * v, v] for name, v in UNITS.items()}
        waste = cost_model.per_round_waste([3.5, 7.0, 7.0], counts, slow)
        self.assertAllClose(waste, [1.0, 1.0, 2.0])

    def test_summary(self):
        times = {name: [v, v, v] for name, v in UNITS.items()}
        times["lean"] = [3.5, 3.6, 3.4]
        times["wasteful"] = [7.0, 7.0, 7.0]
        declared = {
            name: {"class": "X", "counts": _counts(weight_passes=1, updates=1)}
            for name in ("lean", "wasteful")
        }
        summary = cost_model.summarise(times, declared)
        lean, wasteful = (
            summary["methods"]["lean"],
            summary["methods"]["wasteful"],
        )
        self.assertAllClose(lean["modelled_seconds"], 3.5)
        self.assertAllClose(lean["waste"]["median"], 1.0)
        self.assertTrue(lean["within_limit"])
        self.assertAllClose(wasteful["waste"]["median"], 2.0)
        self.assertFalse(wasteful["within_limit"])
        # update (3.5) over weight pass (3) + apply (0.5).
        self.assertAllClose(summary["update_over_parts"], 1.0)
        text = cost_model.table(summary)
        self.assertIn("| lean | 1 W + 1 U | 3500.0 |", text)
        self.assertIn("2.00 **>1.15**", text)

    def test_faster_copy_is_reported_every_copy_listed(self):
        times = {name: [v, v] for name, v in UNITS.items()}
        times["m#0"] = [5.25, 5.25]  # 1.5 times its 3.5 s model
        times["m#1"] = [3.5, 3.85]
        declared = {
            "m": {
                "counts": _counts(weight_passes=1, updates=1),
                "contenders": ["m#0", "m#1"],
            }
        }
        row = cost_model.summarise(times, declared)["methods"]["m"]
        self.assertAllClose(row["waste"]["median"], 1.05)
        self.assertAllClose(row["measured_seconds"]["median"], 3.675)
        self.assertTrue(row["within_limit"])
        self.assertEqual(
            [c["contender"] for c in row["copies"]], ["m#0", "m#1"]
        )
        self.assertAllClose(row["copies"][0]["waste"]["median"], 1.5)

    def test_measure_keeps_rounds_by_clock(self):
        calls = []

        def sleeper(name):
            def run():
                calls.append(name)
                time.sleep(0.02)  # wall-clock time, almost no CPU time

            return run

        runs = {"a": sleeper("a"), "b": sleeper("b")}
        times = cost_model.measure(runs, rounds=2, warmup=1, steps=2)
        self.assertEqual(calls, ["a", "b", "b", "a", "a", "b"])
        for name in runs:
            self.assertLen(times["wall"][name], 2)
            for wall, cpu in zip(
                times["wall"][name], times["cpu"][name], strict=True
            ):
                self.assertGreaterEqual(wall, 0.01)  # 0.02 s over 2 steps
                self.assertLess(cpu, wall)

    def test_passes_text(self):
        self.assertEqual(
            cost_model.passes_text(
                _counts(weight_passes=2, updates=1, input_gradients=10)
            ),
            "2 W + 1 U + 10 I",
        )


def _classifier():
    keras.utils.set_random_seed(0)
    return models.small_cnn(
        input_shape=(8, 8, 1), filters=(4, 8), dense_units=16
    )


class BuildMethodTest(tf.test.TestCase):
    def test_controller_count_timed_at_its_cap(self):
        trainer, timed = cost_model.build_method(
            "mplus_pgd", _classifier, batch_size=4, seed=0
        )
        self.assertEqual(timed, 7)
        self.assertEqual(trainer.passes().input_gradients, 7)

    def test_gin_file_as_tfadv_train_builds_it(self):
        free, timed = cost_model.build_method(
            "free_at", _classifier, batch_size=4, seed=0
        )
        self.assertIsNone(timed)
        self.assertEqual(free.batch_size, 4)
        self.assertEqual(free.passes().weight_input_passes, 4)
        pgi, _ = cost_model.build_method(
            "fgsm_pgi", _classifier, batch_size=4, seed=0
        )
        self.assertEqual(pgi.num_examples, 4)
        sq, _ = cost_model.build_method(
            "soft_quantization", _classifier, batch_size=4, seed=0
        )
        self.assertEqual(
            [type(layer) for layer in sq.classifier.layers].count(
                layers.SoftQuantization
            ),
            1,
        )


@pytest.mark.slow
class CostModeTest(tf.test.TestCase):
    def test_cost_mode_writes_its_tables(self):
        out = self.get_temp_dir()
        # As tools/benchmark.py --mode=cost calls it.
        cost_model.main(
            out=out,
            command="test",
            model=("small_cnn", {"filters": (4, 8), "dense_units": 16}),
            batch_size=8,
            rounds=1,
            warmup=0,
            steps=1,
            seed=0,
            methods=["standard", "yopo"],
        )
        with open(os.path.join(out, "cost_model.json")) as f:
            summary = json.load(f)
        self.assertEqual(set(summary["clocks"]), {"cpu", "wall"})
        methods = summary["clocks"]["cpu"]["methods"]
        self.assertEqual(set(methods), {"standard", "yopo"})
        yopo = methods["yopo"]
        self.assertEqual(yopo["counts"]["layer0_input_gradients"], 50)
        self.assertGreater(yopo["modelled_seconds"], 0.0)
        with open(os.path.join(out, "cost_model.md")) as f:
            self.assertIn("| yopo |", f.read())
