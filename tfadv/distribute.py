"""The distribution strategy, built from flags (never from gin)."""

import json
import os

import tensorflow as tf
from absl import logging

STRATEGIES = ("default", "mirrored", "multi_worker")


def log_tensorflow_once() -> None:
    """Routes TensorFlow's Python log through absl only, warnings and up.

    TensorFlow's logger has a handler of its own and also passes each
    record to the root logger, where absl prints it again; under
    `MirroredStrategy` that doubled every "Reduce to ..." line. The entry
    points call this; tfadv's own INFO lines say what those said.
    """
    tf_logger = tf.get_logger()
    for handler in list(tf_logger.handlers):
        tf_logger.removeHandler(handler)
    tf_logger.setLevel("WARNING")


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
    if num_devices is not None and (
        isinstance(num_devices, bool)
        or not isinstance(num_devices, int)
        or num_devices < 1
    ):
        raise ValueError(
            f"--devices={num_devices!r}: the number of devices for "
            "--strategy=mirrored must be an integer >= 1 (GPUs, or logical "
            "CPUs when there is no GPU); leave it out to use every GPU (2 "
            "logical CPUs without one)."
        )
    if num_devices is not None and name != "mirrored":
        raise ValueError(
            f"--devices={num_devices} applies to --strategy=mirrored only; "
            f"--strategy={name} would ignore it. Add --strategy=mirrored or "
            "remove --devices."
        )
    if name == "default":
        strategy = tf.distribute.get_strategy()
    elif name == "multi_worker":
        config = check_tf_config(os.environ.get("TF_CONFIG"))
        task = config["task"]
        peers = config["cluster"][task["type"]]
        # The strategy (and the first step) wait, silently, for every peer.
        logging.info(
            "Joining the cluster of TF_CONFIG as %s %d of %d: this waits "
            "until every worker (%s) has started and can reach the others; "
            "start the same command with each worker's own TF_CONFIG task.",
            task["type"],
            task["index"],
            len(peers),
            ", ".join(map(str, peers)),
        )
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    else:
        strategy = _mirrored(num_devices)
    logging.info(
        "Strategy %s with %d replica(s).",
        type(strategy).__name__,
        strategy.num_replicas_in_sync,
    )
    return strategy


_TF_CONFIG_EXAMPLE = (
    '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
    '"task": {"type": "worker", "index": 0}}'
)


def check_tf_config(text: str | None) -> dict:
    """The parsed TF_CONFIG of a multi-worker run, checked.

    Raises:
        ValueError: TF_CONFIG missing, not JSON, or without a cluster of
            workers and this process's task in it.
    """
    accepted = (
        "TF_CONFIG must be JSON naming the cluster and this worker's task, "
        f"e.g. TF_CONFIG='{_TF_CONFIG_EXAMPLE}' (index 1 on the second "
        "machine)."
    )
    if not text:
        raise ValueError(
            "--strategy=multi_worker needs the TF_CONFIG environment "
            f"variable, which is unset or empty. {accepted}"
        )
    try:
        config = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(
            f"TF_CONFIG is not valid JSON ({e.msg} at character {e.pos}): "
            f"{text[:200]!r}. {accepted}"
        ) from None
    cluster = config.get("cluster") if isinstance(config, dict) else None
    task = config.get("task") if isinstance(config, dict) else None
    workers = cluster.get("worker") if isinstance(cluster, dict) else None
    problem = None
    if not isinstance(workers, list) or not workers:
        problem = 'it has no "cluster": {"worker": [addresses]}'
    elif not isinstance(task, dict) or task.get("type") not in cluster:
        problem = 'its "task" has no "type" that names a job of the cluster'
    elif not (
        isinstance(task.get("index"), int)
        and 0 <= task["index"] < len(cluster[task["type"]])
    ):
        problem = (
            f'its task "index" {task.get("index")!r} is not in '
            f"[0, {len(cluster[task['type']])})"
        )
    if not problem:
        problem = _address_without_port(cluster)
    if problem:
        raise ValueError(
            f"TF_CONFIG {text[:200]!r} is unusable: {problem}. {accepted}"
        )
    return config


def _address_without_port(cluster: dict) -> str | None:
    """A problem with the cluster's first address lacking a port, or None."""
    for job, addresses in cluster.items():
        if not isinstance(addresses, list):
            addresses = [addresses]
        for address in addresses:
            host, colon, port = str(address).rpartition(":")
            if not (
                colon and host and port.isdigit() and 0 < int(port) < 65536
            ):
                return (
                    f"its {job} address {address!r} has no port (each is "
                    "host:port, e.g. 'localhost:12345'; a worker without "
                    "one waits for peers it can never reach)"
                )
    return None


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
