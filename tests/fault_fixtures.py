"""Runs `tfadv.train` in a child process that is killed at a chosen point.

Not a test module. `run_train(where, logdir, *flags)` starts
`python -m tfadv.train`-equivalent child that dies by SIGKILL (no clean-up,
as a power cut or the OOM killer would) at `where`:

- `"none"`: not killed, a plain run;
- `"batch:E:B"`: after batch B (from 0) of epoch E (from 0) trained;
- `"checkpoint:E"`: halfway through writing the checkpoint of epoch E;
- `"final_evaluation"`: when the final evaluation starts;
- `"export"`: halfway through writing `model.keras`;
- `"results"`: halfway through writing `results.json` (its temporary
  file, which the kill leaves behind).

`start_train("pause:E:B", ...)` starts a child that instead waits after
batch B of epoch E: it creates `<logdir>.paused`, and goes on once
`<logdir>.resume` exists (a live run holding its folder).
`start_train("wait_before_lock", ...)` starts a child that, having checked
the folder, waits just before it locks it (a preemption in that window):
it creates `<logdir>.waiting` and goes on once `<logdir>.go` exists.
"""

import os
import subprocess
import sys

_CHILD = r"""
import os
import signal
import sys

from absl import app
import keras

from tfadv import callbacks
from tfadv import experiment
from tfadv import train

where = sys.argv[1]


def die():
    os.kill(os.getpid(), signal.SIGKILL)


def half_written(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    die()


if where.startswith("batch:"):
    target = tuple(int(n) for n in where.split(":")[1:])
    batch_end = callbacks.DivergenceGuard.on_train_batch_end

    def on_train_batch_end(self, batch, logs=None):
        batch_end(self, batch, logs)
        if (self._epoch, batch) == target:
            die()

    callbacks.DivergenceGuard.on_train_batch_end = on_train_batch_end
elif where.startswith("pause:"):
    import time

    target = tuple(int(n) for n in where.split(":")[1:])
    batch_end = callbacks.DivergenceGuard.on_train_batch_end
    logdir = next(a for a in sys.argv if a.startswith("--logdir="))
    logdir = logdir.split("=", 1)[1]

    def on_train_batch_end(self, batch, logs=None):
        batch_end(self, batch, logs)
        if (self._epoch, batch) == target:
            open(logdir + ".paused", "w").close()
            while not os.path.exists(logdir + ".resume"):
                time.sleep(0.05)

    callbacks.DivergenceGuard.on_train_batch_end = on_train_batch_end
elif where == "wait_before_lock":
    import time

    from tfadv import run_folder

    lock = run_folder.lock

    def waits_then_locks(logdir, *args, **kwargs):
        open(logdir + ".waiting", "w").close()
        while not os.path.exists(logdir + ".go"):
            time.sleep(0.05)
        return lock(logdir, *args, **kwargs)

    run_folder.lock = waits_then_locks
elif where.startswith("checkpoint:"):
    epoch = int(where.split(":")[1])
    save_weights = keras.Model.save_weights
    writes = []

    def save_then_die(self, filepath, **kwargs):
        save_weights(self, filepath, **kwargs)
        writes.append(filepath)
        if len(writes) == epoch + 1:
            half_written(filepath)

    keras.Model.save_weights = save_then_die
elif where == "final_evaluation":
    experiment.evaluation.run_suite = lambda *args, **kwargs: die()
elif where == "export":
    save = keras.Model.save

    def save_then_die(self, filepath, *args, **kwargs):
        save(self, filepath, *args, **kwargs)
        half_written(filepath)

    keras.Model.save = save_then_die
elif where == "results":
    import json

    from tfadv import run_folder

    write_json_atomic = run_folder.write_json_atomic

    def dies_inside_the_results_write(file_path, payload):
        if os.path.basename(file_path) != run_folder.RESULTS_FILE:
            return write_json_atomic(file_path, payload)
        with open(file_path + ".tmp", "w") as f:
            text = json.dumps(payload, indent=2)
            f.write(text[: len(text) // 2])
            f.flush()
        die()

    run_folder.write_json_atomic = dies_inside_the_results_write
elif where != "none":
    raise SystemExit(f"unknown kill point {where!r}")

app.run(train.main, argv=["tfadv.train", *sys.argv[2:]])
"""


def _command(where, logdir, flags):
    return [sys.executable, "-c", _CHILD, where, f"--logdir={logdir}", *flags]


_ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}


def run_train(where: str, logdir: str, *flags: str, cwd=None):
    """Runs the child; returns the `subprocess.CompletedProcess`."""
    return subprocess.run(
        _command(where, logdir, flags),
        capture_output=True,
        text=True,
        cwd=cwd,
        env=_ENV,
        timeout=600,
    )


def start_train(where: str, logdir: str, *flags: str) -> subprocess.Popen:
    """Starts the child without waiting; the caller waits for it."""
    return subprocess.Popen(
        _command(where, logdir, flags),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_ENV,
    )
