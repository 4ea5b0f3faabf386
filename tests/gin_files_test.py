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


class SearchTest(tf.test.TestCase, parameterized.TestCase):
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

    def _in_folder(self, files):
        """A temporary working directory holding `files` (name: text)."""
        cwd = self.create_tempdir().full_path
        for name, text in files.items():
            os.makedirs(os.path.dirname(os.path.join(cwd, name)), exist_ok=True)
            with open(os.path.join(cwd, name), "w") as f:
                f.write(text)
        previous = os.getcwd()
        os.chdir(cwd)
        self.addCleanup(os.chdir, previous)
        return cwd

    def test_a_path_names_the_users_file_of_a_shipped_name(self):
        self._in_folder(
            {"pgd_at.gin": "include 'standard.gin'\nrun.epochs = 7\n"}
        )
        gin_files.parse(["./pgd_at.gin"], [])
        self.assertEqual(gin.query_parameter("run.epochs"), 7)

    def test_a_users_own_name_is_found_in_the_working_directory(self):
        self._in_folder({"mine/base.gin": "run.epochs = 5\n"})
        gin_files.parse(["pgd_at.gin", "mine/base.gin"], [])
        self.assertEqual(gin.query_parameter("run.epochs"), 5)

    def test_the_shipped_folder_as_working_directory_is_not_ambiguous(self):
        # The same file under both names (the repository's gin_configs/ is
        # a link to the package's).
        previous = os.getcwd()
        os.chdir(gin_files.GIN_DIR)
        self.addCleanup(os.chdir, previous)
        gin_files.parse(["pgd_at.gin"], [])
        self.assertEqual(
            gin.query_parameter("PGDAT.train_attack").scopes, ["train"]
        )

    @parameterized.parameters("pgd_at.gin", "data/fashion_mnist.gin")
    def test_a_shadowing_file_is_refused_and_never_read(self, name):
        # gin would have read it instead of the shipped file, silently.
        self._in_folder({name: "this is not gin (\n"})
        with self.assertRaisesRegex(
            ValueError, rf"'{name}' .*names both .*\./{name}"
        ) as cm:
            gin_files.parse(["pgd_at.gin"], [])
        self.assertNotIn("\n", str(cm.exception))


@gin.register(module="tests.gin_files_test")
def build_attack(*, attack_cls):
    """Calls the attack class as a run's build does, with its budget."""
    return attack_cls(epsilon=0.1, step_size=0.05)


class UnusedBindingsTest(tf.test.TestCase):
    def setUp(self):
        super().setUp()
        gin.clear_config()
        self.addCleanup(gin.clear_config)

    def _build(self, files, bindings):
        # What a run's build calls through gin, in miniature: a training
        # attack under its scope, given its budget by the caller.
        reference = ["build_attack.attack_cls = @train/ProjectedGradient"]
        gin_files.parse(files, reference + bindings)
        gin.get_configurable("build_attack")()

    def test_every_binding_used_leaves_nothing(self):
        self._build([], ["train/ProjectedGradient.num_steps = 3"])
        self.assertEqual(gin_files.unused_bindings(), [])

    def test_bindings_nothing_used_are_named_with_the_reason(self):
        self._build(
            [],
            [
                "train/ProjectedGradient.num_steps = 3",
                "train/ProjectedGradient.epsilon = 0.2",
                "TRADES.beta = 3.0",
                "eval/ProjectedGradient.num_steps = 5",
                "APGD.num_steps = 5",
                "train/ProjectedGradient.name = @eval/ProjectedGradient",
            ],
        )
        self.assertCountEqual(
            gin_files.unused_bindings(),
            [
                "train/ProjectedGradient.epsilon (the caller passes it itself)",
                "TRADES.beta (nothing calls TRADES)",
                "eval/ProjectedGradient.num_steps (nothing calls "
                "ProjectedGradient under the scope 'eval')",
                "APGD.num_steps (nothing calls APGD)",
            ],
        )
        with self.assertRaisesRegex(
            ValueError, r"never uses: .*TRADES\.beta.*ignore them silently"
        ) as cm:
            gin_files.check_unused_bindings()
        self.assertNotIn("\n", str(cm.exception))

    def test_an_unscoped_binding_used_by_a_scoped_call_is_used(self):
        self._build([], ["ProjectedGradient.num_steps = 3"])
        self.assertEqual(gin_files.unused_bindings(), [])

    def test_shipped_bindings_a_later_file_made_dead_are_allowed(self):
        # fgsm_rs.gin replaces the learning-rate schedule of the file it
        # includes; tiny.gin the model: their bindings stay unused.
        gin_files.parse(["fgsm_rs.gin", "testing/tiny.gin"], [])
        unused = gin_files.unused_bindings()
        self.assertNotIn("piecewise_constant", " ".join(unused))
        self.assertNotIn("small_cnn", " ".join(unused))


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

    def test_a_misspelt_file_name_suggests_the_shipped_one(self):
        message = self._error(["pgd_a.gin"], [])
        self.assertIn("No gin file 'pgd_a.gin'", message)
        self.assertIn("Did you mean pgd_at.gin", message)
        self.assertIn("yopo.gin", message)  # the method files are listed
        self.assertIn("recipes/", message)
        # A file's include gets the same help.
        path = self.create_tempfile(
            "mine.gin", "include 'data/fashion_mnst.gin'\n"
        ).full_path
        message = self._error([path], [])
        self.assertIn("Did you mean data/fashion_mnist.gin", message)

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

    @parameterized.parameters(
        "make_datasets.seed = 3",
        "make_datasets.shuffle_seed = 3",  # its name before run.seed
        "PGDAT.seed = 3",
        "TRADES.seed = 3",
    )
    def test_a_seed_the_run_hands_out_is_refused_naming_run_seed(self, binding):
        message = self._error(["pgd_at.gin"], [binding])
        name = binding.split(" =")[0]
        self.assertStartsWith(message, f"{name} cannot be set in gin")
        self.assertIn("Bind run.seed instead", message)

    def test_a_seed_in_a_file_is_refused_too(self):
        path = self.create_tempfile(
            "mine.gin", "include 'pgd_at.gin'\nmake_datasets.seed = 1\n"
        ).full_path
        message = self._error([path], [])
        self.assertIn("make_datasets.seed cannot be set in gin", message)

    @parameterized.parameters(
        "run.seed = 3",
        "keep_best.seed = 3",  # a scoring attack's own fixed seed
        "GAAT.guard_seed = 3",
    )
    def test_seeds_the_run_does_not_hand_out_are_accepted(self, binding):
        gin_files.parse(["pgd_at.gin"], [binding])
        self.assertEqual(gin.query_parameter(binding.split(" =")[0]), 3)

    def test_unclosed_bracket(self):
        message = self._error(["pgd_at.gin"], ["run.final_suite = ['pgd20'"])
        self.assertIn("never closed", message)
