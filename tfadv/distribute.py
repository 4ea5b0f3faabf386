"""The distribution strategy, built from flags (never from gin)."""

import json
import os

import tensorflow as tf
from absl import logging

STRATEGIES = ("default", "mirrored", "multi_worker")


def make_strategy(
    name: str = "default", *, num_devices: int | None = None
) -> tf.distribute.Strategy:
    """Builds the strategy named `name`.

    - "default": one device (TensorFlow's default strategy).
    - "mirrored": synchronous data parallelism on this machine's GPUs; with
      no GPU, on `num_devices` logical CPU devices (default 2), which is how
      the tests exercise multi-replica code on a CPU.
    - "multi_worker": `MultiWorkerMirroredStrategy` across machines, from the
      `TF_CONFIG` environment variable.

    Logical CPU devices can only be made before TensorFlow initialises its
    devices, so call this early (as `tfadv.train` does).

    Args:
        name: one of "default", "mirrored", "multi_worker".
        num_devices: for "mirrored": how many GPUs or logical CPUs to use.

    Returns:
        The strategy.

    Raises:
        ValueError: for an unknown name, a bad device count, or a missing
            TF_CONFIG.
    """
    if name not in STRATEGIES:
        raise ValueError(
            f"Unknown strategy {name!r}; accepted: {', '.join(STRATEGIES)}."
        )
    if num_devices is not None and num_devices < 1:
        raise ValueError(f"num_devices must be >= 1; got {num_devices}.")
    if name == "default":
        strategy = tf.distribute.get_strategy()
    elif name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise ValueError(
                "strategy 'multi_worker' needs the TF_CONFIG environment "
                "variable (cluster spec and this worker's task)."
            )
        json.loads(os.environ["TF_CONFIG"])  # Fails early on bad JSON.
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    else:
        strategy = _mirrored(num_devices)
    logging.info(
        "Strategy %s with %d replica(s).",
        type(strategy).__name__,
        strategy.num_replicas_in_sync,
    )
    return strategy


def split_cpu(num_devices: int) -> list:
    """Splits the first CPU into `num_devices` logical devices (idempotent)."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    existing = tf.config.get_logical_device_configuration(cpu)
    if existing is None:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * num_devices
        )
    elif len(existing) < num_devices:
        raise ValueError(
            f"The CPU is already split into {len(existing)} logical devices; "
            f"cannot make {num_devices} after TensorFlow has initialised."
        )
    return [d.name for d in tf.config.list_logical_devices("CPU")][:num_devices]


def _mirrored(num_devices):
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        count = num_devices or len(gpus)
        if count > len(gpus):
            raise ValueError(
                f"Asked for {count} GPUs; this machine has {len(gpus)}."
            )
        devices = [f"/gpu:{i}" for i in range(count)]
        return tf.distribute.MirroredStrategy(devices)
    devices = split_cpu(num_devices or 2)
    return tf.distribute.MirroredStrategy(
        devices, cross_device_ops=tf.distribute.ReductionToOneDevice()
    )
