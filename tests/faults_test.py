"""Fault tests: real `tfadv.train` processes killed at every stage.

A run killed by SIGKILL (no clean-up) during training, inside the
checkpoint write, during the final evaluation or during the export, and
then rerun with the same command, must end with exactly what the
uninterrupted run ends with: the same weights bit for bit, the same
history and the same results (apart from wall-clock times).
"""

import json
import os
import signal
import tempfile
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl.testing import parameterized

import tfadv  # noqa: F401  (registers tfadv's Keras layers)
from tests import fault_fixtures
from tfadv import run_folder

_FLAGS = (
    "--gin_file=pgd_at.gin",
    "--gin_file=testing/tiny.gin",
    "--gin_bindings=run.epochs = 3",
)
# Wall-clock values, and when (and where) a run finished, differ between
# any two runs.
_TIMES = (
    "train_seconds",
    "epoch_seconds",
    "train_cpu_seconds",
    "eval_seconds",
    "provenance",
)
_TIMED_LOGS = ("time/", "examples_per_second")


def _comparable(results):
    results = {k: v for k, v in results.items() if k not in _TIMES}
    results["history"] = {
        k: v
        for k, v in results["history"].items()
        if not k.startswith(_TIMED_LOGS)
    }
    results["gradient_masking"] = {
        k: v for k, v in results["gradient_masking"].items() if k != "seconds"
    }
    return results


def _finished(logdir):
    with open(os.path.join(logdir, "results.json")) as f:
        results = json.load(f)
    model = keras.saving.load_model(os.path.join(logdir, "model.keras"))
    return model.get_weights(), _comparable(results)


def _run(where, logdir):
    proc = fault_fixtures.run_train(where, logdir, *_FLAGS)
    return proc


@pytest.mark.slow
class KilledRunTest(tf.test.TestCase, parameterized.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.root = tempfile.mkdtemp()
        reference = os.path.join(cls.root, "uninterrupted")
        proc = _run("none", reference)
        assert proc.returncode == 0, proc.stderr[-3000:]
        cls.weights, cls.results = _finished(reference)

    @parameterized.named_parameters(
        ("mid_second_epoch", "batch:1:2"),
        ("inside_the_checkpoint_write", "checkpoint:1"),
        ("during_the_final_evaluation", "final_evaluation"),
        ("during_the_export", "export"),
        ("inside_the_results_write", "results"),
    )
    def test_resumed_run_equals_the_uninterrupted_one(self, where):
        logdir = os.path.join(self.root, where.replace(":", "_"))
        killed = _run(where, logdir)
        self.assertEqual(
            killed.returncode, -signal.SIGKILL, killed.stderr[-3000:]
        )
        self.assertFalse(os.path.exists(os.path.join(logdir, "results.json")))
        if where == "results":
            self.assertIn("results.json.tmp", os.listdir(logdir))
        resumed = _run("none", logdir)
        self.assertEqual(resumed.returncode, 0, resumed.stderr[-3000:])
        weights, results = _finished(logdir)
        self.assertLen(weights, len(self.weights))
        for got, want in zip(weights, self.weights, strict=True):
            np.testing.assert_array_equal(got, want)
        self.assertLen(results["history"]["loss"], 3)
        self.assertEqual(results, self.results)
        self.assertEmpty(
            [
                n
                for n in os.listdir(logdir)
                if n.startswith("incoming.") or n.endswith(".tmp")
            ]
        )


@pytest.mark.slow
class TwoRunsOnOneFolderTest(tf.test.TestCase):
    def test_a_second_run_is_refused_while_the_first_trains(self):
        root = tempfile.mkdtemp()
        reference = os.path.join(root, "uninterrupted")
        proc = _run("none", reference)
        self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
        weights, results = _finished(reference)

        logdir = os.path.join(root, "shared")
        first = fault_fixtures.start_train("pause:1:2", logdir, *_FLAGS)
        try:
            deadline = time.monotonic() + 300
            while not os.path.exists(logdir + ".paused"):
                self.assertIsNone(first.poll(), "the first run ended early")
                self.assertLess(time.monotonic(), deadline)
                time.sleep(0.1)
            before = sorted(os.listdir(logdir))
            # Started while the first one trains: refused, nothing touched.
            second = _run("none", logdir)
            self.assertNotEqual(second.returncode, 0)
            self.assertIn("in use by another tfadv run", second.stderr)
            self.assertIn(f"process {first.pid}", second.stderr)
            self.assertNotIn("Traceback", second.stderr)
            self.assertEqual(sorted(os.listdir(logdir)), before)
        finally:
            open(logdir + ".resume", "w").close()
            _, stderr = first.communicate(timeout=600)
        self.assertEqual(first.returncode, 0, stderr[-3000:])
        got_weights, got_results = _finished(logdir)
        for a, b in zip(got_weights, weights, strict=True):
            np.testing.assert_array_equal(a, b)
        self.assertEqual(got_results, results)
        # Started after the first finished: refused, results kept.
        with open(os.path.join(logdir, "results.json")) as f:
            finished = f.read()
        late = _run("none", logdir)
        self.assertNotEqual(late.returncode, 0)
        self.assertIn("already holds a finished run", late.stderr)
        with open(os.path.join(logdir, "results.json")) as f:
            self.assertEqual(f.read(), finished)

    def test_a_start_refused_after_a_delay_never_deletes_the_live_run(self):
        # The second start checks the folder (none yet), is delayed before
        # its lock, and meanwhile the first run creates the folder and
        # trains. The lock refuses the second; the first run goes on and
        # finishes in its folder.
        logdir = os.path.join(tempfile.mkdtemp(), "raced")
        second = fault_fixtures.start_train("wait_before_lock", logdir, *_FLAGS)
        first = None
        try:
            deadline = time.monotonic() + 300
            while not os.path.exists(logdir + ".waiting"):
                self.assertIsNone(second.poll(), "the second start ended")
                self.assertLess(time.monotonic(), deadline)
                time.sleep(0.1)
            first = fault_fixtures.start_train("pause:0:0", logdir, *_FLAGS)
            while not os.path.exists(logdir + ".paused"):
                self.assertIsNone(first.poll(), "the first run ended early")
                self.assertLess(time.monotonic(), deadline)
                time.sleep(0.1)
            open(logdir + ".go", "w").close()
            _, stderr = second.communicate(timeout=300)
            self.assertNotEqual(second.returncode, 0)
            self.assertIn("in use by another tfadv run", stderr)
            self.assertIn(run_folder.OPERATIVE_CONFIG_FILE, os.listdir(logdir))
        finally:
            open(logdir + ".go", "w").close()
            open(logdir + ".resume", "w").close()
            second.communicate(timeout=300)
            if first is not None:
                _, stderr = first.communicate(timeout=600)
        self.assertEqual(first.returncode, 0, stderr[-3000:])
        self.assertTrue(os.path.exists(os.path.join(logdir, "results.json")))
