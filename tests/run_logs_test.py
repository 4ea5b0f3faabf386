"""The run folder's logs: the wall-clock logger and the HPARAMS writer."""

import json
import os

import keras
import tensorflow as tf
from absl import flags

from tests import harness
from tfadv import methods
from tfadv import run_logs


def setUpModule():
    # tf.test.TestCase.create_tempdir reads absl flags.
    flags.FLAGS.mark_as_parsed()


class WallClockLoggerTest(tf.test.TestCase):
    def test_logs_and_keeps_the_epoch_times(self):
        path = os.path.join(self.create_tempdir().full_path, "timing.json")
        x, y = harness.tiny_data()
        method = methods.Standard(harness.tiny_classifier())
        method.compile(optimizer="sgd")
        logger = run_logs.WallClockLogger(len(x), timing_path=path)
        history = method.fit(
            x,
            y,
            batch_size=harness.BATCH,
            epochs=2,
            verbose=0,
            callbacks=[logger],
        )
        for key in (
            "time/epoch_seconds",
            "time/cumulative_train_seconds",
            "time/epoch_cpu_seconds",
            "time/cumulative_train_cpu_seconds",
            "examples_per_second",
        ):
            self.assertLen(history.history[key], 2, msg=key)
        seconds = history.history["time/epoch_seconds"]
        cpu_seconds = history.history["time/epoch_cpu_seconds"]
        self.assertAllClose(
            history.history["time/cumulative_train_seconds"][-1], sum(seconds)
        )
        self.assertAllClose(
            history.history["time/cumulative_train_cpu_seconds"][-1],
            sum(cpu_seconds),
        )
        self.assertAllGreater(cpu_seconds, 0.0)
        with open(path) as f:
            timing = json.load(f)
        self.assertAllClose(timing["epoch_seconds"], seconds)
        self.assertAllClose(timing["epoch_cpu_seconds"], cpu_seconds)
        # A resumed run reads the times back and drops the epochs it redoes.
        resumed = run_logs.WallClockLogger(len(x), timing_path=path)
        self.assertAllClose(resumed.epoch_seconds, seconds)
        self.assertAllClose(resumed.epoch_cpu_seconds, cpu_seconds)
        resumed.on_epoch_begin(1)
        self.assertAllClose(resumed.epoch_seconds, seconds[:1])
        self.assertAllClose(resumed.epoch_cpu_seconds, cpu_seconds[:1])


class HParamsLoggerTest(tf.test.TestCase):
    def _session_hparams(self, log_dir):
        from tensorboard.plugins.hparams import metadata

        summaries = harness.event_tensors(log_dir)
        ((_, value),) = summaries[metadata.SESSION_START_INFO_TAG]
        info = metadata.parse_session_start_info_plugin_data(
            value.metadata.plugin_data.content
        )
        hparams = {}
        for key, v in info.hparams.items():
            kind = v.WhichOneof("kind")
            hparams[key] = getattr(v, kind)
        return info, hparams, summaries

    def test_records_the_method_budget_and_hyperparameters(self):
        log_dir = self.create_tempdir("run").full_path
        x, y = harness.tiny_data()
        method = methods.TRADES(
            harness.tiny_classifier(), epsilon=0.1, beta=3.0
        )
        method.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
        logger = run_logs.HParamsLogger(log_dir, {"dataset": "tiny"})
        method.fit(
            x,
            y,
            batch_size=harness.BATCH,
            epochs=1,
            verbose=0,
            callbacks=[logger],
        )
        logger.write_final({"clean_accuracy": 0.75}, step=1)
        info, hparams, summaries = self._session_hparams(log_dir)
        self.assertEqual(info.group_name, "run")
        self.assertEqual(hparams["method"], "TRADES")
        self.assertAllClose(hparams["epsilon"], 0.1)
        self.assertAllClose(hparams["beta"], 3.0)
        self.assertEqual(hparams["train_attack"], "ProjectedGradient")
        self.assertEqual(hparams["train_attack/num_steps"], 10)
        self.assertEqual(hparams["train_attack/objective"], "kl")
        self.assertEqual(hparams["optimizer"], "SGD")
        self.assertAllClose(hparams["learning_rate"], 0.05)
        self.assertEqual(hparams["dataset"], "tiny")
        self.assertNotIn("classifier", hparams)
        ((step, value),) = summaries["final/clean_accuracy"]
        self.assertEqual(step, 1)
        self.assertAllClose(tf.make_ndarray(value.tensor), 0.75)

    def test_the_config_orders_columns_and_declares_the_accuracies(self):
        from tensorboard.plugins.hparams import metadata

        log_dir = self.create_tempdir("run").full_path
        method = methods.TRADES(harness.tiny_classifier(), epsilon=0.1)
        method.compile(optimizer=keras.optimizers.SGD(0.05))
        extra = {"dataset": "tiny", "norm": "linf", "epochs": 1, "seed": 3}
        logger = run_logs.HParamsLogger(log_dir, extra)
        x, y = harness.tiny_data()
        method.fit(
            x, y, batch_size=harness.BATCH, verbose=0, callbacks=[logger]
        )
        summaries = harness.event_tensors(log_dir)
        ((_, value),) = summaries[metadata.EXPERIMENT_TAG]
        experiment = metadata.parse_experiment_plugin_data(
            value.metadata.plugin_data.content
        )
        names = [h.name for h in experiment.hparam_infos]
        self.assertEqual(
            names[:5], ["method", "epsilon", "norm", "dataset", "epochs"]
        )
        self.assertCountEqual(names, logger.hparams)
        self.assertIn("beta", names)
        self.assertEqual(experiment.hparam_infos[1].display_name, "ε")
        # TensorBoard lists (and ticks) the ones marked as differing first.
        marked = [h.name for h in experiment.hparam_infos if h.differs]
        self.assertEqual(marked, names[:5])
        metrics = [(m.name.group, m.name.tag) for m in experiment.metric_infos]
        self.assertEqual(
            metrics,
            [
                ("", "final/robust_accuracy"),
                ("", "final/clean_accuracy"),
                ("validation", "epoch_robust_accuracy"),
                ("validation", "epoch_clean_accuracy"),
            ],
        )
        self.assertTrue(all(m.description for m in experiment.metric_infos))
        logger.write_final({"robust_accuracy": 0.5}, step=1)
        ((_, value),) = harness.event_tensors(log_dir)["final/robust_accuracy"]
        self.assertIn("attack suite", value.metadata.summary_description)

    def test_a_schedule_records_its_initial_rate(self):
        schedule = keras.optimizers.schedules.PiecewiseConstantDecay(
            [10], [0.2, 0.02]
        )
        optimizer = keras.optimizers.SGD(schedule)
        self.assertAllClose(run_logs._initial_learning_rate(optimizer), 0.2)

    def test_values_tensorboard_cannot_store_are_refused(self):
        logger = run_logs.HParamsLogger("unused", {"sizes": [1, 2]})
        logger.set_model(methods.Standard(harness.tiny_classifier()))
        with self.assertRaisesRegex(TypeError, "'sizes' must be a bool"):
            logger.collect()
