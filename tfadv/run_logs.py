"""The run folder's logs: training time and hyperparameters.

The callbacks of a training run (`tfadv.experiment.fit`) that write into
its folder beside the checkpoint and the gin config (`tfadv.run_folder`):
`WallClockLogger` adds the epochs' wall-clock and CPU times to the logs
and keeps them in the folder's timing file, so that a resumed run reports
every epoch; `HParamsLogger` writes the hyperparameters and the final
accuracies for TensorBoard's HPARAMS tab. Both work in a plain `fit` too,
with a folder of your choosing (or none, for `WallClockLogger`).
`tfadv.callbacks` keeps the callbacks that write no run folder.
"""

import os
import time

import keras
import numpy as np
import tensorflow as tf

from tfadv import run_folder


class WallClockLogger(keras.callbacks.Callback):
    """Adds training wall-clock time to the epoch logs.

    Logs `time/epoch_seconds` (training only, validation excluded),
    `time/cumulative_train_seconds` and `examples_per_second`, which the
    TensorBoard callback placed after this one writes, and the same
    epochs' CPU time of this process (every thread: TensorFlow's, tf.data's)
    as `time/epoch_cpu_seconds` and `time/cumulative_train_cpu_seconds`.
    Wall-clock time is what a user waits; CPU time is the work done, which
    another program's load on a shared machine does not inflate as it does
    the wall clock (the benchmark can rank by either). With a
    `timing_path`, the per-epoch times are also kept in that JSON file, so
    a resumed run reports the time of every epoch.

    Args:
        examples_per_epoch: training examples seen per epoch.
        timing_path: the JSON file that keeps the times, or None.
    """

    def __init__(self, examples_per_epoch: int, timing_path: str | None = None):
        super().__init__()
        self.examples_per_epoch = examples_per_epoch
        self.timing_path = timing_path
        self.epoch_seconds = []
        self.epoch_cpu_seconds = []
        if timing_path:
            timing = run_folder.read_json(timing_path)
            self.epoch_seconds = list(timing.get("epoch_seconds", []))
            self.epoch_cpu_seconds = list(timing.get("epoch_cpu_seconds", []))
        self._start = None
        self._train_seconds = None

    def on_epoch_begin(self, epoch, logs=None):
        # Drop the times of epochs a resumed run is about to redo.
        del self.epoch_seconds[epoch:]
        del self.epoch_cpu_seconds[epoch:]
        self._start = (time.perf_counter(), time.process_time())
        self._train_seconds = None

    def _elapsed(self):
        wall, cpu = self._start
        return time.perf_counter() - wall, time.process_time() - cpu

    def on_test_begin(self, logs=None):
        if self._start is not None and self._train_seconds is None:
            self._train_seconds = self._elapsed()

    def on_epoch_end(self, epoch, logs=None):
        seconds, cpu_seconds = self._train_seconds or self._elapsed()
        self.epoch_seconds.append(seconds)
        self.epoch_cpu_seconds.append(cpu_seconds)
        if logs is not None:
            logs["time/epoch_seconds"] = seconds
            logs["time/cumulative_train_seconds"] = sum(self.epoch_seconds)
            logs["time/epoch_cpu_seconds"] = cpu_seconds
            logs["time/cumulative_train_cpu_seconds"] = sum(
                self.epoch_cpu_seconds
            )
            logs["examples_per_second"] = self.examples_per_epoch / seconds
        if self.timing_path:
            run_folder.write_json_atomic(
                self.timing_path,
                {
                    "epoch_seconds": self.epoch_seconds,
                    "epoch_cpu_seconds": self.epoch_cpu_seconds,
                },
            )
        self._start = None


# Constructor arguments that are not hyperparameters.
_NOT_HPARAMS = frozenset(
    {"name", "trainable", "dtype", "classifier", "check_inputs", "seed"}
)


def trainer_hparams(trainer) -> dict:
    """A trainer's hyperparameters, flattened for the hparams plugin.

    The method's class name, its training budget and every scalar argument
    of its config; nested Keras objects (the training attack, a step
    controller) contribute their class name and scalar arguments, prefixed
    with the argument's name (`train_attack/num_steps`). Missing values
    (None) are left out.
    """
    values = {"method": type(trainer).__name__}
    if getattr(trainer, "epsilon", None) is not None:
        values["epsilon"] = float(trainer.epsilon)

    def add(prefix, config):
        for key, value in sorted(config.items()):
            if key in _NOT_HPARAMS or value is None:
                continue
            if isinstance(value, dict) and "class_name" in value:
                if key == "eval_attack":
                    continue  # validation, not training
                values[f"{prefix}{key}"] = value["class_name"]
                add(f"{prefix}{key}/", value.get("config") or {})
            elif isinstance(value, (bool, int, float, str)):
                values[f"{prefix}{key}"] = value
            elif isinstance(value, (list, tuple)) and all(
                isinstance(v, (int, float)) for v in value
            ):
                values[f"{prefix}{key}"] = ",".join(f"{v:g}" for v in value)

    add("", trainer.get_config())
    return values


def _initial_learning_rate(optimizer):
    optimizer = getattr(optimizer, "inner_optimizer", optimizer)
    rate = getattr(optimizer, "_learning_rate", None)
    if isinstance(rate, keras.optimizers.schedules.LearningRateSchedule):
        return float(rate(0))
    if rate is None:
        return None
    try:
        return float(np.asarray(rate))
    except (TypeError, ValueError):
        return None


# The columns HPARAMS shows first, in this order; the method's own follow.
HPARAM_FIRST = ("method", "epsilon", "norm", "dataset", "epochs")
HPARAM_DISPLAY = {"epsilon": "ε"}
# The metrics HPARAMS shows, in order: (tag, run group, name, description).
HPARAM_METRICS = (
    (
        "final/robust_accuracy",
        None,
        "final robust accuracy",
        "Accuracy under the final attack suite (per-example minimum over "
        "its attacks) on the test examples of results.json.",
    ),
    (
        "final/clean_accuracy",
        None,
        "final clean accuracy",
        "Accuracy on the same unperturbed test examples.",
    ),
    (
        "epoch_robust_accuracy",
        "validation",
        "validation robust accuracy",
        "Last epoch's accuracy under the validation attack.",
    ),
    (
        "epoch_clean_accuracy",
        "validation",
        "validation clean accuracy",
        "Last epoch's accuracy on the unperturbed validation examples.",
    ),
)
FINAL_DESCRIPTIONS = {
    "robust_accuracy": HPARAM_METRICS[0][3],
    "clean_accuracy": HPARAM_METRICS[1][3],
}


def hparam_order(hparams: dict) -> list:
    """The hyperparameters' names, the shared ones first (`HPARAM_FIRST`)."""
    first = [name for name in HPARAM_FIRST if name in hparams]
    return first + [name for name in hparams if name not in first]


def hparams_config(hparams: dict):
    """The HPARAMS configuration of a run, as a `Summary` proto.

    Declares the hyperparameters (the shared ones first) and the metrics
    (`HPARAM_METRICS`). TensorBoard lists hyperparameters by name and
    ticks the first few; it lists those marked as differing between runs
    first, so the shared ones (`HPARAM_FIRST`) are marked so, to be the
    columns of the default view.
    """
    from tensorboard.plugins.hparams import api as hparams_api
    from tensorboard.plugins.hparams import plugin_data_pb2

    summary = hparams_api.hparams_config_pb(
        hparams=[
            hparams_api.HParam(name, display_name=HPARAM_DISPLAY.get(name))
            for name in hparam_order(hparams)
        ],
        metrics=[
            hparams_api.Metric(
                tag, group=group, display_name=shown, description=text
            )
            for tag, group, shown, text in HPARAM_METRICS
        ],
    )
    (value,) = summary.value
    data = plugin_data_pb2.HParamsPluginData.FromString(
        value.metadata.plugin_data.content
    )
    for info in data.experiment.hparam_infos:
        info.differs = info.name in HPARAM_FIRST
    value.metadata.plugin_data.content = data.SerializeToString()
    return summary


class HParamsLogger(keras.callbacks.Callback):
    """Records the run's hyperparameters for TensorBoard's HPARAMS tab.

    At the start of training it writes the trainer's hyperparameters
    (`trainer_hparams`: the method, ε, the method's own arguments and its
    training attack's), the optimizer and its initial learning rate, and
    `hparams` (e.g. the dataset and batch size) to `log_dir`, with
    `tensorboard.plugins.hparams`, with a configuration that orders the
    columns (method, ε, norm, dataset, epochs, then the method's own) and
    declares the final and validation accuracies as the metrics, so they
    are in the tab's default view. `write_final` adds the final accuracies
    as `final/<name>` scalars, which the tab shows as metrics beside the
    per-epoch curves (`epoch_robust_accuracy` of the `validation` group).
    Give every run its own `log_dir` (the folder name is the trial id), and
    point TensorBoard at their parent to compare them.

    Args:
        log_dir: the run's folder (the parent of `train/` and
            `validation/`).
        hparams: more hyperparameters to record: names to bool, int,
            float or str values.
    """

    def __init__(self, log_dir: str, hparams: dict | None = None):
        super().__init__()
        self.log_dir = log_dir
        self.extra = dict(hparams or {})
        self.hparams = None
        self._writer = None

    def _summary_writer(self):
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.log_dir)
        return self._writer

    def collect(self) -> dict:
        """The hyperparameters this callback writes."""
        values = trainer_hparams(self.model)
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is not None:
            inner = getattr(optimizer, "inner_optimizer", optimizer)
            values["optimizer"] = type(inner).__name__
            rate = _initial_learning_rate(optimizer)
            if rate is not None:
                values["learning_rate"] = rate
        values.update(self.extra)
        for key, value in values.items():
            if not isinstance(value, (bool, int, float, str)):
                raise TypeError(
                    f"Hyperparameter {key!r} must be a bool, int, float or "
                    f"str for TensorBoard; got {value!r}."
                )
        return values

    def on_train_begin(self, logs=None):
        from tensorboard.plugins.hparams import api as hparams_api

        self.hparams = self.collect()
        writer = self._summary_writer()
        with writer.as_default():
            tf.summary.experimental.write_raw_pb(
                hparams_config(self.hparams).SerializeToString(), step=0
            )
            hparams_api.hparams(
                self.hparams, trial_id=os.path.basename(self.log_dir)
            )
        writer.flush()

    def write_final(self, metrics: dict, step: int = 0) -> None:
        """Writes `final/<name>` scalars (e.g. the final accuracies)."""
        writer = self._summary_writer()
        with writer.as_default():
            for name, value in metrics.items():
                tf.summary.scalar(
                    f"final/{name}",
                    float(value),
                    step=step,
                    description=FINAL_DESCRIPTIONS.get(name),
                )
        writer.flush()
