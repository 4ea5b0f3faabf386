"""`--strategy=multi_worker` with two real worker processes on localhost.

Each worker is a `python -m tfadv.train` process configured by TF_CONFIG,
as on two machines. Both must finish, end with the same weights, and match
a one-process run of two replicas (`--strategy=mirrored --devices=2`): the
global batch, its split and the replicas' random starts are the same.
"""

import json
import os
import socket
import subprocess
import sys
import tempfile

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfadv  # noqa: F401  (registers tfadv's Keras layers)

_FLAGS = ("--gin_file=pgd_at.gin", "--gin_file=testing/tiny.gin")
_ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _train(logdir, *flags, env=_ENV):
    command = [sys.executable, "-m", "tfadv.train", f"--logdir={logdir}"]
    return subprocess.Popen(
        [*command, *_FLAGS, "--progress=none", *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _weights(logdir):
    model = keras.saving.load_model(os.path.join(logdir, "model.keras"))
    return model.get_weights()


@pytest.mark.slow
class MultiWorkerTest(tf.test.TestCase):
    def test_two_workers_train_the_two_replica_model(self):
        root = tempfile.mkdtemp()
        workers = [f"localhost:{port}" for port in _free_ports(2)]
        procs = []
        for index in range(2):
            config = {
                "cluster": {"worker": workers},
                "task": {"type": "worker", "index": index},
            }
            procs.append(
                _train(
                    os.path.join(root, f"worker{index}"),
                    "--strategy=multi_worker",
                    env={**_ENV, "TF_CONFIG": json.dumps(config)},
                )
            )
        outputs = [proc.communicate(timeout=600) for proc in procs]
        for proc, (stdout, stderr) in zip(procs, outputs, strict=True):
            self.assertEqual(proc.returncode, 0, stderr[-3000:])
            self.assertIn("robust accuracy pgd20", stdout)
        mirrored = os.path.join(root, "mirrored")
        proc = _train(mirrored, "--strategy=mirrored", "--devices=2")
        _, stderr = proc.communicate(timeout=600)
        self.assertEqual(proc.returncode, 0, stderr[-3000:])

        first, second = (
            _weights(os.path.join(root, f"worker{i}")) for i in (0, 1)
        )
        for a, b, c in zip(first, second, _weights(mirrored), strict=True):
            np.testing.assert_array_equal(a, b)
            np.testing.assert_allclose(a, c, rtol=0, atol=1e-5)
        for index in range(2):
            with open(
                os.path.join(root, f"worker{index}", "results.json")
            ) as f:
                results = json.load(f)
            self.assertEqual(results["method"], "PGDAT")
            self.assertEqual(results["epochs"], 1)
