"""tfadv.distribute: the strategies behind `--strategy` and `--devices`."""

import os
from unittest import mock

import keras
import tensorflow as tf

from tests import harness
from tfadv import distribute
from tfadv import methods
from tfadv.attacks import base as attack_base


class DistributeTest(tf.test.TestCase):
    def test_unknown_strategy(self):
        with self.assertRaisesRegex(ValueError, "'tpu'.*default, mirrored"):
            distribute.make_strategy("tpu")

    def test_bad_device_count(self):
        with self.assertRaisesRegex(ValueError, "--devices=0: .*integer >= 1"):
            distribute.make_strategy("mirrored", num_devices=0)

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


class MultiWorkerWaitTest(tf.test.TestCase):
    def test_says_what_it_waits_for(self):
        # MultiWorkerMirroredStrategy waits silently for its peers.
        config = (
            '{"cluster": {"worker": ["host1:2222", "host2:2222"]}, '
            '"task": {"type": "worker", "index": 1}}'
        )
        fake = mock.Mock(num_replicas_in_sync=2)
        with (
            mock.patch.dict(os.environ, {"TF_CONFIG": config}),
            mock.patch.object(
                tf.distribute, "MultiWorkerMirroredStrategy", return_value=fake
            ),
            self.assertLogs("absl", level="INFO") as logs,
        ):
            self.assertIs(distribute.make_strategy("multi_worker"), fake)
        self.assertRegex(
            "\n".join(logs.output),
            r"worker 1 of 2: this waits until every worker "
            r"\(host1:2222, host2:2222\) has started",
        )


class ReplicaSeedTest(tf.test.TestCase):
    def _method(self):
        return methods.PGDAT(
            harness.tiny_classifier(), train_attack=harness.pgd(), seed=3
        )

    def test_replicas_draw_independent_random_starts(self):
        x, y = harness.tiny_data(num=harness.BATCH)
        strategy = harness.mirrored()
        with strategy.scope():
            method = self._method()
        start = method.train_attack.start_only()

        @tf.function
        def starts():
            return strategy.run(lambda: method.attack(start, x, y))

        first, second = strategy.experimental_local_results(starts())
        # The same images on both replicas, two different uniform starts.
        self.assertNotAllClose(first, second)
        for point in (first, second):
            self.assertAllInRange(point - x, -0.1 - 1e-6, 0.1 + 1e-6)

    def test_one_device_keeps_the_generators_seed(self):
        x, y = harness.tiny_data(num=harness.BATCH)
        method = self._method()
        start = method.train_attack.start_only()
        expected = start(
            method.classifier,
            x,
            y,
            seed=attack_base.as_seed(keras.random.SeedGenerator(3)),
        )
        self.assertAllEqual(method.attack(start, x, y), expected)
