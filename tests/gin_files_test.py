"""Tests of tfadv.gin_files: where files are found, and strict parsing."""

import os
import subprocess
import sys

import gin
import tensorflow as tf
from absl import flags
from absl.testing import parameterized

from tfadv import gin_files


def setUpModule():
    flags.FLAGS.mark_as_parsed()


class SearchTest(tf.test.TestCase):
    def test_a_data_folder_in_the_working_directory_is_harmless(self):
        # gin's package reader used to import `data` from the working
        # directory for `include 'data/fashion_mnist.gin'` and crash.
        cwd = self.create_tempdir().full_path
        os.makedirs(os.path.join(cwd, "data"))
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "tfadv.train",
                "--gin_file=pgd_at.gin",
                "--gin_file=testing/tiny.gin",
                "--dry_run",
            ],
            cwd=cwd,
            capture_output=True,
            text=True,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
            timeout=300,
        )
        self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
        self.assertIn("Dry run", proc.stdout)
        # A working run logs no ERROR line (absl's start with "E" + date).
        errors = [
            line
            for line in proc.stderr.splitlines()
            if line[:1] == "E" and line[1:5].isdigit()
        ]
        self.assertEmpty(errors)
        self.assertEqual(os.listdir(cwd), ["data"])

    def test_files_are_found_by_bare_name_and_by_path(self):
        path = os.path.join(self.create_tempdir().full_path, "extra.gin")
        with open(path, "w") as f:
            f.write("run.epochs = 7\n")
        gin_files.parse(["pgd_at.gin", path], [])
        self.assertEqual(gin.query_parameter("run.epochs"), 7)


class StrictTest(tf.test.TestCase, parameterized.TestCase):
    def _error(self, files, bindings):
        with self.assertRaises(ValueError) as cm:
            gin_files.parse(files, bindings)
        message = str(cm.exception)
        self.assertNotIn("\n", message)
        return message

    def test_unknown_parameter_lists_the_accepted_ones(self):
        message = self._error(["pgd_at.gin"], ["run.epochz = 3"])
        self.assertRegex(message, "run has no parameter 'epochz'")
        self.assertIn("epochs, dataset_fn", message)
        # Arguments the command line sets are not offered.
        self.assertNotIn("logdir", message.split("accepts:")[1])

    def test_unknown_configurable_suggests_close_names(self):
        message = self._error(["pgd_at.gin"], ["ProjectedGradiant.x = 1"])
        self.assertIn("'ProjectedGradiant'", message)
        self.assertIn("ProjectedGradient", message)

    def test_misspelt_scope_is_refused(self):
        message = self._error(
            ["pgd_at.gin"], ["trian/ProjectedGradient.num_steps = 0"]
        )
        self.assertIn("'trian'", message)
        self.assertIn("eval, train", message)

    @parameterized.parameters(
        "train/ProjectedGradient.num_steps = 3",
        "eval/ProjectedGradient.num_steps = 3",
    )
    def test_used_scopes_are_accepted(self, binding):
        gin_files.parse(["pgd_at.gin"], [binding])
        self.assertEqual(
            gin.query_parameter(binding.split(" =")[0]),
            3,
        )

    def test_macro_names_are_not_scopes(self):
        # %EPSILON is stored under the scope "EPSILON"; that opens nothing.
        message = self._error(["pgd_at.gin"], ["EPSILON/PGDAT.x = 1"])
        self.assertIn("'EPSILON'", message)

    def test_malformed_file_names_file_and_line(self):
        path = os.path.join(self.create_tempdir().full_path, "bad.gin")
        with open(path, "w") as f:
            f.write("run.epochs = 3\nthis is garbage (\n")
        message = self._error(["pgd_at.gin", path], [])
        self.assertIn(f"gin file {path}, line 2", message)
        self.assertIn("'this is garbage ('", message)

    def test_malformed_binding_names_the_binding(self):
        message = self._error(["pgd_at.gin"], ["run.epochs = = 3"])
        self.assertIn("a --gin_bindings value, line 1", message)

    def test_unclosed_bracket(self):
        message = self._error(["pgd_at.gin"], ["run.final_suite = ['pgd20'"])
        self.assertIn("never closed", message)
