"""tfadv.distribute: the strategies behind `--strategy` and `--devices`."""

import os
from unittest import mock

import tensorflow as tf

from tfadv import distribute


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
