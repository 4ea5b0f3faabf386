"""The package as a user installs it: a wheel, not the source tree.

Builds a wheel of the repository, installs it (without dependencies) into a
fresh virtual environment that borrows this interpreter's packages, and
runs the command line from a folder outside the repository: the gin
configs must ship inside the wheel.
"""

import glob
import os
import shutil
import subprocess
import sys
import tempfile

import pytest
import tensorflow as tf

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*argv, cwd=None):
    proc = subprocess.run(
        argv,
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        timeout=600,
    )
    assert proc.returncode == 0, (
        argv,
        proc.stdout[-2000:],
        proc.stderr[-3000:],
    )
    return proc


class NoTensorFlowTest(tf.test.TestCase):
    def test_import_without_tensorflow_says_what_to_install(self):
        # TensorFlow hidden from the import system, as in an environment
        # where the install chose no extra.
        code = (
            "import sys; sys.modules['tensorflow'] = None\n"
            "try:\n    import tfadv\n"
            "except ImportError as e:\n    print(e)\n"
        )
        proc = _run(sys.executable, "-c", code, cwd=_REPO)
        self.assertIn("pip install 'tensorflow-cpu>=2.16,<2.22'", proc.stdout)
        self.assertIn("'tfadv[cpu]'", proc.stdout)


@pytest.mark.slow
class WheelTest(tf.test.TestCase):
    def test_the_cli_runs_from_a_wheel_install(self):
        root = tempfile.mkdtemp()
        # Build from a copy: setuptools writes build/ into the source tree.
        source = os.path.join(root, "source")
        shutil.copytree(
            _REPO,
            source,
            symlinks=True,
            ignore=shutil.ignore_patterns(
                ".git", "runs", "build", "*.egg-info", "__pycache__"
            ),
        )
        _run(
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            os.path.join(root, "dist"),
            source,
        )
        (wheel,) = glob.glob(os.path.join(root, "dist", "tfadv-*.whl"))
        venv = os.path.join(root, "venv")
        _run(sys.executable, "-m", "venv", "--system-site-packages", venv)
        python = os.path.join(venv, "bin", "python")
        _run(python, "-m", "pip", "install", "--no-deps", "--no-index", wheel)
        cwd = os.path.join(root, "work")
        os.makedirs(os.path.join(cwd, "data"))  # as a user's folder may be
        where = _run(
            python, "-c", "import tfadv; print(tfadv.__file__)", cwd=cwd
        )
        self.assertStartsWith(where.stdout.strip(), venv)
        meta = _run(
            python,
            "-c",
            "from importlib.metadata import metadata; m = metadata('tfadv'); "
            "print(m['Author'], '|', m['License'] or m['License-Expression'])",
            cwd=cwd,
        )
        self.assertEqual(meta.stdout.strip(), "The tfadv authors | Apache-2.0")
        for gin_file in ("yopo.gin", "pgd_at.gin"):
            proc = _run(
                python,
                "-m",
                "tfadv.train",
                f"--gin_file={gin_file}",
                "--gin_file=testing/tiny.gin",
                "--dry_run",
                cwd=cwd,
            )
            self.assertIn("Dry run", proc.stdout)
