"""What produced a result: versions, the checkout's commit, the machine.

results.json, eval.json and the benchmark's rows carry this record, so a
table can say which code, libraries and hardware made each number.
"""

import datetime
import os
import platform
import subprocess

import keras
import tensorflow as tf

import tfadv


def git_commit(path: str | None = None) -> dict | None:
    """The commit of the git checkout holding `path` (default: tfadv's).

    Returns:
        `{"commit": sha, "dirty": bool}`, or None where tfadv is not run
        from a git checkout (an installed wheel) or git is missing.
    """
    path = path or os.path.dirname(os.path.abspath(tfadv.__file__))
    try:
        commit = subprocess.run(
            ["git", "-C", path, "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        status = subprocess.run(
            [
                "git",
                "-C",
                path,
                "status",
                "--porcelain",
                "--untracked-files=no",
            ],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(status.strip())}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def devices() -> dict:
    """The CPU, its cores, and the accelerators TensorFlow sees."""
    accelerators = []
    for device in tf.config.list_physical_devices():
        if device.device_type == "CPU":
            continue
        details = tf.config.experimental.get_device_details(device)
        accelerators.append(details.get("device_name", device.name))
    return {
        "cpu": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "accelerators": accelerators,
        "host": platform.node(),
    }


def record() -> dict:
    """The provenance of a result, to store beside it."""
    return {
        "tfadv_version": tfadv.__version__,
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
        "python_version": platform.python_version(),
        "git": git_commit(),
        "devices": devices(),
        "finished_at": datetime.datetime.now(datetime.timezone.utc)
        .replace(microsecond=0)
        .isoformat(),
    }
