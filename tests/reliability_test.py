"""Long-run health: each method's step compiles once, memory stays flat."""

import os
from unittest import mock

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import flags
from absl.testing import parameterized

from tests import cli_fixtures
from tests import harness
from tfadv import methods
from tfadv.methods import base

# One runnable config per shipped method file (experiments/ repeat them).
_METHOD_FILES = [f for f in cli_fixtures.SHIPPED if "/" not in f]


def setUpModule():
    flags.FLAGS.mark_as_parsed()


def _resident_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


@pytest.mark.slow
class TraceCountTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters(*_METHOD_FILES)
    def test_the_step_compiles_once_per_step_count(self, gin_file):
        # A method may retrace when a step count changes between epochs
        # (M+, GAAT): that is the only retrace allowed.
        traces, forced = [], []
        train_step = base.AdversarialTrainer.train_step
        make_train_function = keras.Model.make_train_function

        def counting_step(self, data):
            traces.append(1)
            return train_step(self, data)

        def counting_make(self, force=False):
            if force:
                forced.append(1)
            return make_train_function(self, force=force)

        logdir = os.path.join(self.create_tempdir().full_path, "run")
        with (
            mock.patch.object(
                base.AdversarialTrainer, "train_step", counting_step
            ),
            mock.patch.object(
                keras.Model, "make_train_function", counting_make
            ),
        ):
            cli_fixtures.run_cli(
                logdir,
                gin_file,
                "testing/tiny.gin",
                bindings=["run.epochs = 3"],
            )
        self.assertLen(traces, 1 + len(forced))


class LibraryTraceCountTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.parameters(methods.PGDAT, methods.TRADES, methods.YOPO)
    def test_compile_and_fit_trace_the_step_once(self, cls):
        # A library user compiles and fits; the optimizer's slot variables
        # are made in compile, so the first step is not traced twice.
        traces = []
        train_step = base.AdversarialTrainer.train_step

        def counting_step(self, data):
            traces.append(1)
            return train_step(self, data)

        x, y = harness.tiny_data(num=2 * harness.BATCH)
        attack = harness.yopo_attack() if cls is methods.YOPO else None
        method = cls(
            harness.tiny_classifier(),
            **({"train_attack": attack} if attack else {"epsilon": 0.1}),
        )
        method.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9))
        self.assertTrue(method.optimizer.built)
        with mock.patch.object(
            base.AdversarialTrainer, "train_step", counting_step
        ):
            method.fit(x, y, batch_size=harness.BATCH, epochs=3, verbose=0)
        self.assertLen(traces, 1)


class MemoryTest(tf.test.TestCase):
    def test_many_epochs_do_not_grow_resident_memory(self):
        x, y = harness.tiny_data(num=2 * harness.BATCH)
        method = methods.PGDAT(
            harness.tiny_classifier(),
            train_attack=harness.pgd(num_steps=2),
            eval_attack=harness.eval_attack(),
        )
        method.compile(optimizer=keras.optimizers.SGD(0.01))
        samples = []

        class Sample(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                samples.append(_resident_mib())

        method.fit(
            x,
            y,
            batch_size=harness.BATCH,
            epochs=60,
            validation_data=(x, y),
            callbacks=[Sample(), *method.callbacks()],
            verbose=0,
        )
        # After warm-up, 50 epochs (100 steps and 50 validations) may not
        # add more than a few MiB: a retrace or a growing buffer per epoch
        # would add far more.
        growth = float(np.median(samples[-5:]) - np.median(samples[5:10]))
        self.assertLess(growth, 16.0, f"resident MiB per epoch: {samples}")
