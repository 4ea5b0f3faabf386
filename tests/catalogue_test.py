"""The bad-input catalogue: every refusal is one clear paragraph, and safe.

Each case feeds one bad input through a user's door (the `tfadv.train`
and `tfadv.evaluate` command lines, gin, data files, or a library call)
and asserts that it is refused before any work:

- a non-zero exit (`SystemExit` with the tool's `error:` line) or, for a
  library call, a `ValueError`;
- one paragraph (no line break) that names the bad value and says what is
  accepted;
- no traceback: the command lines raise nothing but `SystemExit`;
- every folder the case touched is unchanged (file names, sizes and
  modification times), and a run folder it would have made does not exist.

`CASES` lists the command-line cases as (name, argv-style options,
expected pattern); `library cases` are methods of `LibraryTest`.
"""

import contextlib
import gzip
import itertools
import json
import os
import sys
import tempfile

import gin
import keras
import numpy as np
import tensorflow as tf
from absl import app
from absl import flags
from absl.testing import flagsaver
from absl.testing import parameterized

from tests import cli_fixtures
from tfadv import attacks
from tfadv import data
from tfadv import evaluate
from tfadv import evaluation
from tfadv import methods
from tfadv import models
from tfadv import validation

_TINY = ("pgd_at.gin", "testing/tiny.gin")


def setUpModule():
    flags.FLAGS.mark_as_parsed()


def _snapshot(root):
    """Every file under `root` with its size and modification time."""
    state = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            stat = os.stat(path)
            state[os.path.relpath(path, root)] = (stat.st_size, stat.st_mtime)
    return state


def _write_idx_dir(folder, defect=None, shape=(28, 28)):
    """Fashion-MNIST-shaped IDX files in `folder`, with one `defect`."""
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 256), ("t10k", 64)):
        images = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        if defect == "label_out_of_range":
            labels[3] = 12
        if defect == "count_mismatch" and prefix == "train":
            labels = labels[:-5]
        cli_fixtures.write_idx(folder, prefix, images, labels)
    images_file = os.path.join(folder, "train-images-idx3-ubyte.gz")
    if defect == "truncated":
        with gzip.open(images_file) as f:
            payload = f.read()
        with gzip.open(images_file, "wb") as f:
            f.write(payload[: len(payload) // 2])
    elif defect == "bad_magic":
        with gzip.open(images_file) as f:
            payload = f.read()
        with gzip.open(images_file, "wb") as f:
            f.write(np.array([1234], ">i4").tobytes() + payload[4:])
    elif defect == "corrupt_gzip":
        with open(images_file, "r+b") as f:
            f.seek(20)
            f.write(b"\x00garbage\xff" * 8)


# (name, options for tfadv.train, regex the message must match). Options:
# "bindings", "gin_files" (default _TINY), "env", "data" (a defect of the
# IDX folder passed as --data_dir), "logdir" (a kind of folder), other
# keys are flags.
TRAIN_CASES = (
    (
        "unknown_parameter",
        dict(bindings=["run.epochz = 3"]),
        "'epochz'.*accepts",
    ),
    (
        "unknown_configurable",
        dict(bindings=["PGDATT.beta = 1"]),
        "'PGDATT'.*PGDAT",
    ),
    (
        "unknown_reference",
        dict(bindings=["run.method_cls = @PGDATT"]),
        "'PGDATT'",
    ),
    (
        "misspelt_scope",
        dict(bindings=["trian/ProjectedGradient.num_steps = 0"]),
        "'trian'.*eval, train",
    ),
    (
        "malformed_binding",
        dict(bindings=["run.epochs = = 3"]),
        "Malformed gin.*--gin_bindings.*line 1",
    ),
    (
        "garbage_gin_file",
        dict(gin_file_text="run.epochs = 3\nthis is garbage (\n"),
        r"Malformed gin in gin file .*bad\.gin, line 2",
    ),
    (
        "self_including_gin_file",
        dict(gin_file_text="include '{self}'\n"),
        r"A gin file includes itself.*bad\.gin.*Remove the include",
    ),
    (
        "gin_file_not_utf8",
        dict(gin_file_text=b"run.epochs = 3 # \xff\xfe\n"),
        r"A gin file is not UTF-8 text \(.*bad\.gin, byte \d+.*UTF-8",
    ),
    (
        "unclosed_bracket",
        dict(gin_file_text="run.epochs = [1,\n"),
        "Malformed gin.*never closed",
    ),
    (
        "gin_file_without_a_method",
        dict(gin_files=("testing/tiny.gin",)),
        r"gin files given \(testing/tiny\.gin\) bind no run\.method_cls, "
        r"run\.epsilon.*--gin_file=pgd_at\.gin",
    ),
    (
        "empty_gin_file",
        dict(gin_files=(), gin_file_text=""),
        r"gin files given \(.*bad\.gin\) bind no run\.method_cls",
    ),
    (
        "missing_gin_file",
        dict(gin_files=("pgd_at.gin", "nope.gin")),
        "nope.gin",
    ),
    (
        "denylisted_binding",
        dict(bindings=["run.logdir = 'x'"]),
        "run.logdir cannot be set.*--logdir",
    ),
    (
        "zero_epochs",
        dict(bindings=["run.epochs = 0"]),
        "epochs must be an integer >= 1; got 0",
    ),
    (
        "fractional_epochs",
        dict(bindings=["run.epochs = 2.5"]),
        "epochs must be an integer >= 1; got 2.5",
    ),
    (
        "zero_epsilon",
        dict(bindings=["EPSILON = 0.0"]),
        r"epsilon must be in \(0, 1\]; got 0.0",
    ),
    (
        "negative_epsilon",
        dict(bindings=["EPSILON = -0.1"]),
        r"epsilon must be in .*got -0.1.*training run needs \(0, 1\]",
    ),
    (
        "epsilon_in_pixels",
        dict(bindings=["EPSILON = 25.0"]),
        r"epsilon must be in .*got 25.0.*pixel units",
    ),
    (
        "zero_validation_freq",
        dict(bindings=["run.validation_freq = 0"]),
        "validation_freq .*>= 1; got 0",
    ),
    (
        "zero_steps_per_execution",
        dict(bindings=["run.steps_per_execution = 0"]),
        "steps_per_execution .*>= 1; got 0",
    ),
    (
        "negative_learning_rate",
        dict(bindings=["run.learning_rate = -0.1"]),
        r"learning_rate must be in \(0, inf\]; got -0.1",
    ),
    (
        "unknown_precision",
        dict(bindings=["run.mixed_precision = 'float64'"]),
        "mixed_precision must be one of .*'float64'",
    ),
    (
        "unknown_final_attack",
        dict(bindings=["run.final_suite = 'pgd20,pgd2x'"]),
        "pgd2x",
    ),
    (
        "negative_step_size",
        dict(bindings=["train/ProjectedGradient.step_size = -0.1"]),
        "step_size",
    ),
    (
        "zero_training_steps",
        dict(bindings=["train/ProjectedGradient.num_steps = 0"]),
        "num_steps .*0 steps is no attack.*>= 1; got 0",
    ),
    (
        "train_epsilon_mismatch",
        dict(bindings=["train/ProjectedGradient.epsilon = 0.2"]),
        "epsilon 0.2 .*run.epsilon is 0.1",
    ),
    (
        "zero_batch_size",
        dict(bindings=["make_datasets.batch_size = 0"]),
        "batch_size=0; expected a positive integer",
    ),
    (
        "batch_above_dataset",
        dict(bindings=["make_datasets.batch_size = 512"]),
        "batch_size=512 exceeds the 256",
    ),
    (
        "unknown_dataset",
        dict(bindings=["make_datasets.name = 'no_such_dataset'"]),
        "'no_such_dataset'",
    ),
    (
        "negative_validation_examples",
        dict(bindings=["make_datasets.validation_examples = -1"]),
        "validation_examples=-1",
    ),
    (
        "augment_not_bool",
        dict(bindings=["make_datasets.augment = 'yes'"]),
        "augment='yes'",
    ),
    (
        "zero_train_examples",
        dict(bindings=["make_datasets.train_examples = 0"]),
        "train_examples=0; expected a positive integer",
    ),
    (
        "devices_zero",
        dict(strategy="mirrored", devices=0),
        "--devices=0.*integer >= 1",
    ),
    (
        "devices_negative",
        dict(strategy="mirrored", devices=-1),
        "--devices=-1.*integer >= 1",
    ),
    (
        "devices_without_mirrored",
        dict(devices=2),
        "--devices=2 applies to --strategy=mirrored only",
    ),
    (
        "multi_worker_no_tf_config",
        dict(strategy="multi_worker", env={"TF_CONFIG": ""}),
        "TF_CONFIG environment variable, which is unset",
    ),
    (
        "multi_worker_bad_json",
        dict(strategy="multi_worker", env={"TF_CONFIG": "{bad"}),
        "TF_CONFIG is not valid JSON",
    ),
    (
        "multi_worker_no_cluster",
        dict(strategy="multi_worker", env={"TF_CONFIG": '{"cluster": {}}'}),
        'TF_CONFIG .*no "cluster"',
    ),
    (
        "multi_worker_bad_index",
        dict(
            strategy="multi_worker",
            env={
                "TF_CONFIG": json.dumps(
                    {
                        "cluster": {"worker": ["localhost:1"]},
                        "task": {"type": "worker", "index": 3},
                    }
                )
            },
        ),
        r"task \"index\" 3 is not in \[0, 1\)",
    ),
    (
        "multi_worker_address_without_port",
        dict(
            strategy="multi_worker",
            env={
                "TF_CONFIG": json.dumps(
                    {
                        "cluster": {"worker": ["localhost"]},
                        "task": {"type": "worker", "index": 0},
                    }
                )
            },
        ),
        r"worker address 'localhost' has no port .*host:port",
    ),
    ("logdir_is_a_file", dict(logdir="file"), "is a file, not a folder"),
    (
        "logdir_finished_run",
        dict(logdir="finished"),
        "already holds a finished run",
    ),
    (
        "logdir_foreign_folder",
        dict(logdir="foreign"),
        r"not an interrupted tfadv run .*thesis\.tex",
    ),
    (
        "logdir_model_without_checkpoint",
        dict(logdir="model_only"),
        r"not an interrupted tfadv run .*model\.keras",
    ),
    (
        "resume_with_changed_config",
        dict(logdir="interrupted", bindings=["run.learning_rate = 0.5"]),
        "changed.*learning_rate.*--allow_config_change",
    ),
    (
        "data_dir_missing",
        dict(data="missing"),
        r"--data_dir=.*missing.*does not exist.*does not fall back",
    ),
    (
        "data_dir_empty",
        dict(data="empty"),
        r"--data_dir=.*no train-images-idx3-ubyte.*does not fall back",
    ),
    (
        "data_dir_truncated",
        dict(data="truncated"),
        r"--data_dir=.*does not fall back",
    ),
    (
        "data_dir_bad_magic",
        dict(data="bad_magic"),
        r"--data_dir=.*magic.*does not fall back",
    ),
    (
        "data_dir_count_mismatch",
        dict(data="count_mismatch"),
        r"--data_dir=.*declares dimensions \(256,\).*holds 251",
    ),
    (
        "data_dir_corrupt_gzip",
        dict(data="corrupt_gzip"),
        r"--data_dir=.*does not fall back",
    ),
    (
        "data_dir_is_a_file",
        dict(data="file"),
        r"--data_dir=.*does not fall back",
    ),
    (
        "labels_out_of_range",
        dict(data="label_out_of_range"),
        r"[Ll]abels .*12.*\[0, 10\)",
    ),
    (
        "env_data_dir_missing",
        dict(data="env_missing"),
        r"TFADV_DATA_DIR=.*does not exist.*does not fall back",
    ),
    (
        "norm_of_the_training_attack",
        dict(bindings=["run.norm = 'l2'"]),
        r"PGDAT trains in the linf norm .*run\.norm is 'l2'.*"
        r"train/ProjectedGradient\.norm = 'l2'.*run\.norm = 'linf'",
    ),
    (
        "co_guard_threshold_above_one",
        dict(
            gin_files=("fgsm_rs.gin", "testing/tiny.gin"),
            bindings=["co_guard.threshold = 2.0"],
        ),
        r"threshold must be in \(0, 1\]; got 2\.0\. It is a drop",
    ),
    (
        "yopo_unknown_layer0_gradient",
        dict(
            gin_files=("yopo.gin", "testing/tiny.gin"),
            bindings=["YOPO.layer0_gradient = 'fast'"],
        ),
        r"layer0_gradient must be one of \['auto', 'tape'.*; got 'fast'",
    ),
    (
        "yopo_formulation_on_a_layer0_it_cannot_write_out",
        dict(
            gin_files=("yopo.gin", "testing/tiny.gin"),
            bindings=[
                "YOPO.layer0_gradient = 'shifted'",
                "run.input_layers = [@SoftQuantization]",
            ],
        ),
        r"YOPO: layer0_gradient='shifted' writes out .* not one: its "
        r"layers \['SoftQuantization'",
    ),
    (
        "jit_compile_string",
        dict(bindings=["run.jit_compile = 'yes'"]),
        r"run\.jit_compile must be True or False; got 'yes'",
    ),
    (
        "binding_of_a_method_the_run_never_calls",
        dict(bindings=["TRADES.beta = 3.0"]),
        r"binds values this run never uses: TRADES\.beta \(nothing calls "
        r"TRADES\)\..*ignore them silently",
    ),
    (
        "binding_of_a_suite_attack_built_in_python",
        dict(
            bindings=[
                "FABTargeted.alpha_max = 2.0",
                "Square.p_init = 0.0",
                "run.final_suite = 'standard'",
            ]
        ),
        r"never uses: FABTargeted\.alpha_max \(nothing calls FABTargeted\); "
        r"Square\.p_init \(nothing calls Square\)\..*run\.final_suite",
    ),
    (
        "binding_the_caller_overrides",
        dict(bindings=["small_cnn.num_classes = 5"]),
        r"never uses: small_cnn\.num_classes \(the caller passes it itself\)",
    ),
    (
        "binding_under_a_scope_never_called",
        dict(bindings=["eval/APGD.num_steps = 3"]),
        r"never uses: eval/APGD\.num_steps \(nothing calls APGD under the "
        r"scope 'eval'\)",
    ),
    (
        "classifier_with_the_wrong_output_width",
        dict(bindings=["run.model_fn = @five_logits_cnn"]),
        r"outputs 5 logits, but 'fashion_mnist' has 10 classes.*one logit "
        r"per class",
    ),
    (
        "cwd_file_shadowing_a_shipped_method_file",
        dict(shadow="pgd_at.gin"),
        r"'pgd_at\.gin' .*names both .*pgd_at\.gin in the working directory "
        r"and tfadv's shipped gin_configs/pgd_at\.gin.*\./pgd_at\.gin",
    ),
    (
        "cwd_file_shadowing_a_shipped_include",
        dict(shadow="data/fashion_mnist.gin"),
        r"'data/fashion_mnist\.gin' \(a --gin_file or an include\) names "
        r"both .*\./data/fashion_mnist\.gin",
    ),
    (
        "backward_smoothing_infinite_gamma",
        dict(
            gin_files=("backward_smoothing.gin", "testing/tiny.gin"),
            bindings=["train/BackwardSmoothingAttack.gamma = 1e999"],
        ),
        r"gamma must be in \[0, inf\); got inf\..*finite number >= 0",
    ),
)


@gin.register
def five_logits_cnn(*, input_shape, num_classes, mean=None, std=None):
    """A model function that ignores the data's number of classes."""
    del num_classes
    return models.small_cnn(
        input_shape=input_shape,
        num_classes=5,
        mean=mean,
        std=std,
        filters=(4, 8),
        dense_units=16,
    )


@contextlib.contextmanager
def _working_directory(folder):
    previous = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(previous)


class TrainCatalogueTest(tf.test.TestCase, parameterized.TestCase):
    def _case_folder(self, root, kind):
        """A --logdir of `kind` ("new", "file", "finished", ...)."""
        logdir = os.path.join(root, "run")
        if kind == "file":
            with open(logdir, "w") as f:
                f.write("not a folder\n")
        elif kind in ("finished", "foreign", "model_only"):
            os.makedirs(logdir)
            name = {
                "finished": "results.json",
                "foreign": "thesis.tex",
                "model_only": "model.keras",
            }[kind]
            with open(os.path.join(logdir, name), "w") as f:
                f.write("{}")
        elif kind == "interrupted":
            cli_fixtures.run_cli(logdir, *_TINY)
            os.remove(os.path.join(logdir, "results.json"))  # "killed"
        return logdir

    def _data_dir(self, root, defect, env):
        folder = os.path.join(root, "data_given")
        if defect in ("missing", "env_missing"):
            folder = os.path.join(root, "no_such_folder")
        elif defect == "empty":
            os.makedirs(folder)
        elif defect == "file":
            with open(folder, "w") as f:
                f.write("x")
        else:
            _write_idx_dir(folder, defect)
        if defect == "env_missing":
            env["TFADV_DATA_DIR"] = folder
            return None
        return folder

    @parameterized.named_parameters(*TRAIN_CASES)
    def test_refused(self, options, pattern):
        options = dict(options)
        root = self.create_tempdir().full_path
        env = dict(options.pop("env", {}))
        gin_files = list(options.pop("gin_files", _TINY))
        text = options.pop("gin_file_text", None)
        if text is not None:
            gin_files.append(os.path.join(root, "bad.gin"))
            if isinstance(text, str):
                text = text.replace("{self}", gin_files[-1]).encode()
            with open(gin_files[-1], "wb") as f:
                f.write(text)
        logdir = self._case_folder(root, options.pop("logdir", "new"))
        if "data" in options:
            data_dir = self._data_dir(root, options.pop("data"), env)
            if data_dir is not None:
                options["data_dir"] = data_dir
        bindings = options.pop("bindings", [])
        shadow = options.pop("shadow", None)
        if shadow:  # a user's file of a shipped name, in the cwd
            os.makedirs(
                os.path.join(root, os.path.dirname(shadow)), exist_ok=True
            )
            with open(os.path.join(root, shadow), "w") as f:
                f.write("run.epochs = 1\n")
            self.enter_context(_working_directory(root))
        existed = os.path.exists(logdir)
        before = _snapshot(root)
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            with self.assertRaises(SystemExit) as cm:
                cli_fixtures.run_cli(
                    logdir, *gin_files, bindings=bindings, **options
                )
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        message = str(cm.exception.code)
        self.assertStartsWith(message, "tfadv.train: error: ")
        self.assertNotIn("\n", message)
        self.assertNotIn("Traceback", message)
        self.assertRegex(message, pattern)
        self.assertEqual(_snapshot(root), before)
        self.assertEqual(os.path.exists(logdir), existed)

    def test_resume_on_data_whose_pixels_changed(self):
        # Same file names, sizes, counts and shapes (what data.json
        # described before), other pixels: the content fingerprint differs.
        root = self.create_tempdir().full_path
        folder = os.path.join(root, "data_given")
        _write_idx_dir(folder)
        logdir = os.path.join(root, "run")
        cli_fixtures.run_cli(logdir, *_TINY, data_dir=folder)
        os.remove(os.path.join(logdir, "results.json"))  # "killed"
        rng = np.random.default_rng(1)
        cli_fixtures.write_idx(
            folder,
            "train",
            rng.integers(0, 256, size=(256, 28, 28), dtype=np.uint8),
            rng.integers(0, 10, size=256, dtype=np.uint8),
        )
        before = _snapshot(root)
        with self.assertRaises(SystemExit) as cm:
            cli_fixtures.run_cli(logdir, *_TINY, data_dir=folder)
        message = str(cm.exception.code)
        self.assertNotIn("\n", message)
        self.assertRegex(
            message, r"trained on other data \(content: '[0-9a-f]{16}' -> "
        )
        self.assertEqual(_snapshot(root), before)


class EvaluateCatalogueTest(tf.test.TestCase, parameterized.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.run_dir = os.path.join(tempfile.mkdtemp(), "run")
        cli_fixtures.run_cli(cls.run_dir, *_TINY)

    def _model(self, kind, root):
        if kind == "run":
            return self.run_dir
        if kind == "missing":
            return os.path.join(root, "none.keras")
        folder = os.path.join(root, kind)
        os.makedirs(folder)
        with open(os.path.join(self.run_dir, "model.keras"), "rb") as f:
            model = f.read()
        if kind == "corrupt":
            model = model[: len(model) // 3]
        with open(os.path.join(folder, "model.keras"), "wb") as f:
            f.write(model)
        if kind in ("nan_weights", "five_outputs"):
            path = os.path.join(folder, "model.keras")
            if kind == "nan_weights":  # a diverged run's export
                classifier = keras.saving.load_model(path)
                weight = classifier.weights[-1]
                weight.assign(np.full(weight.shape, np.nan, weight.dtype))
            else:
                classifier = keras.Sequential(
                    [
                        keras.Input((28, 28, 1)),
                        keras.layers.Flatten(),
                        keras.layers.Dense(5),
                    ]
                )
            classifier.save(path)
        if kind == "truncated_results":
            with open(os.path.join(self.run_dir, "results.json")) as f:
                text = f.read()
            with open(os.path.join(folder, "results.json"), "w") as f:
                f.write(text[: len(text) // 2])
        return folder

    @parameterized.named_parameters(
        ("missing_model", "missing", {}, "does not exist"),
        (
            "corrupt_keras",
            "corrupt",
            {"epsilon": 0.1},
            "exists but cannot be loaded as a Keras model",
        ),
        (
            "truncated_results",
            "truncated_results",
            {},
            r"results\.json is not valid JSON .*truncated",
        ),
        (
            "no_results_no_epsilon",
            "no_results",
            {},
            "No results.json .*--epsilon",
        ),
        (
            "zero_epsilon",
            "run",
            {"epsilon": 0.0},
            r"epsilon must be in \(0, 1\]; got 0.0",
        ),
        (
            "negative_epsilon",
            "run",
            {"epsilon": -1.0},
            "epsilon must be in .*got -1.0",
        ),
        ("unknown_suite", "run", {"suite": "pgd20,nope"}, "nope"),
        (
            "output_folder_missing",
            "run",
            {"output": "/nonexistent/x/eval.json"},
            "does not exist.*nothing was attacked",
        ),
        (
            "output_folder_not_writable",
            "run",
            {"output": "/proc/eval.json"},
            r"--output=/proc/eval\.json: the folder /proc is not writable "
            r"\(.*\); .*nothing was attacked",
        ),
        (
            "output_is_a_folder",
            "run",
            {"output": tempfile.gettempdir()},
            r"--output=.* is a folder; .*eval\.json \(nothing was attacked",
        ),
        (
            "zero_num_examples",
            "run",
            {"num_examples": 0},
            "--num_examples .*>= 1; got 0",
        ),
        (
            "zero_batch_size",
            "run",
            {"batch_size": 0},
            "--batch_size .*>= 1; got 0",
        ),
        (
            "wrong_image_shape",
            "run",
            {"dataset": "small_images"},
            r"shape \(28, 28, 1\).*\(14, 14, 1\)",
        ),
        (
            "bad_data_dir",
            "run",
            {"data_dir": "/nonexistent/data"},
            "does not fall back",
        ),
        (
            "nan_weights",
            "nan_weights",
            {"epsilon": 0.1},
            r"model\.keras holds NaN or infinite weights .*finite weights",
        ),
        (
            "output_width_not_the_classes",
            "five_outputs",
            {"epsilon": 0.1},
            r"model\.keras outputs 5 logits, but 'fashion_mnist' has 10 "
            r"classes.*--dataset",
        ),
    )
    def test_refused(self, model_kind, options, pattern):
        root = self.create_tempdir().full_path
        model = self._model(model_kind, root)
        options = dict(options)
        if options.get("dataset") == "small_images":
            options["dataset"] = os.path.join(root, "small_images")
            _write_idx_dir(options["dataset"], shape=(14, 14))
        watched = (root, self.run_dir)
        before = [_snapshot(folder) for folder in watched]
        with (
            flagsaver.flagsaver(model=model, **options),
            self.assertRaises(SystemExit) as cm,
        ):
            evaluate.main(["tfadv.evaluate"])
        message = str(cm.exception.code)
        self.assertStartsWith(message, "tfadv.evaluate: error: ")
        self.assertNotIn("\n", message)
        self.assertRegex(message, pattern)
        self.assertEqual([_snapshot(folder) for folder in watched], before)


class BenchmarkCatalogueTest(tf.test.TestCase, parameterized.TestCase):
    @parameterized.named_parameters(
        ("target_above_one", 2.0, r"--target_robust=2\.0 .*\[0, 1\]"),
        ("target_negative", -0.1, r"--target_robust=-0\.1 .*\[0, 1\]"),
        ("zero_rounds", dict(rounds=0), r"--rounds=0: .*>= 1"),
        ("negative_warmup", dict(warmup=-1), r"--warmup=-1: .*>= 0"),
        ("seeds_not_integers", dict(seeds=["0", "x"]), r"--seeds=0,x: .*int"),
        (
            "negative_front_seeds",
            dict(front_seeds=-1),
            r"--front_seeds=-1: .*>= 0",
        ),
        (
            "method_binding_without_method",
            dict(method_bindings=["yopo"]),
            r"'method=binding'; got 'yopo'.*Nothing was trained",
        ),
        ("out_is_a_file", "file", r"--out=.*bench is a file.*new folder"),
        (
            "unknown_suite_attack",
            dict(suite="pgd20,pgd2x"),
            r"--suite=pgd20,pgd2x: .*pgd2x.*Nothing was trained",
        ),
    )
    def test_refused(self, flag_values, pattern):
        # tools/benchmark.py as benchmark_test loads it (its flags once).
        from tests import benchmark_test

        root = self.create_tempdir().full_path
        out = os.path.join(root, "bench")
        if flag_values == "file":
            with open(out, "w") as f:
                f.write("notes\n")
            flag_values = {}
        elif not isinstance(flag_values, dict):
            flag_values = {"target_robust": flag_values}
        existed = os.path.exists(out)
        before = _snapshot(root)
        with (
            flagsaver.flagsaver(out=out, **flag_values),
            self.assertRaises(app.UsageError) as cm,
        ):
            benchmark_test.benchmark.main(["benchmark.py"])
        message = str(cm.exception)
        self.assertNotIn("\n", message)
        self.assertRegex(message, pattern)
        self.assertEqual(_snapshot(root), before)
        self.assertEqual(os.path.exists(out), existed)

    def test_a_childs_refusal_ends_the_benchmark_with_its_paragraph(self):
        # Was the child's paragraph, then a CalledProcessError traceback.
        from tests import benchmark_test

        cmd = [sys.executable, "-m", "tfadv.train", "--gin_file=nope.gin"]
        with self.assertRaises(SystemExit) as cm:
            benchmark_test.runs.run_child(cmd)
        message = str(cm.exception.code)
        self.assertNotIn("\n", message)
        self.assertRegex(
            message, r"^benchmark\.py: stopped, tfadv\.train: error: .*nope"
        )
        cmd = [sys.executable, "-c", "raise SystemExit(3)"]
        with self.assertRaisesRegex(SystemExit, "exited with status 3"):
            benchmark_test.runs.run_child(cmd)


class LibraryCatalogueTest(tf.test.TestCase, parameterized.TestCase):
    def _assert_one_paragraph(self, cm, pattern):
        message = str(cm.exception)
        self.assertNotIn("\n", message)
        self.assertRegex(message, pattern)

    @parameterized.named_parameters(
        (
            "epsilon_above_one",
            dict(epsilon=8.0, step_size=0.1, num_steps=3),
            "epsilon must be in",
        ),
        (
            "negative_step_size",
            dict(epsilon=0.1, step_size=-0.1, num_steps=3),
            "step_size",
        ),
        (
            "zero_steps",
            dict(epsilon=0.1, step_size=0.1, num_steps=0),
            "num_steps .*>= 1; got 0",
        ),
        (
            "unknown_start",
            dict(epsilon=0.1, step_size=0.1, num_steps=3, start="gauss"),
            "start",
        ),
    )
    def test_bad_attack_arguments(self, kwargs, pattern):
        with self.assertRaises(ValueError) as cm:
            attacks.ProjectedGradient(**kwargs)
        self._assert_one_paragraph(cm, pattern)

    @parameterized.named_parameters(
        ("unknown_attack", "pgd20,zz9", "zz9"),
        ("empty_suite", "", "suite"),
    )
    def test_bad_suite(self, suite, pattern):
        with self.assertRaises(ValueError) as cm:
            evaluation.make_suite(suite, epsilon=0.1)
        self._assert_one_paragraph(cm, pattern)

    @parameterized.named_parameters(
        ("rank_3_images", (np.zeros((4, 28, 28)), np.zeros(4, int)), "rank 4"),
        (
            "float_labels",
            (np.zeros((4, 28, 28, 1)), np.full(4, 2.7)),
            "dtype float64",
        ),
        (
            "label_count",
            (np.zeros((4, 28, 28, 1)), np.zeros(3, int)),
            "4 images but 3 labels",
        ),
        (
            "labels_out_of_range",
            (np.zeros((4, 28, 28, 1)), np.array([0, 1, 2, 10])),
            r"\[0, 10\)",
        ),
        (
            "images_in_0_255",
            (np.full((4, 28, 28, 1), 200.0), np.zeros(4, int)),
            r"\[0, 1\]",
        ),
    )
    def test_bad_arrays(self, arrays, pattern):
        with self.assertRaises(ValueError) as cm:
            data.check_arrays(*arrays, num_classes=10)
        self._assert_one_paragraph(cm, pattern)

    def test_bad_make_datasets_arguments(self):
        for kwargs, pattern in (
            (dict(batch_size=-1), "batch_size"),
            (dict(eval_examples=0), "eval_examples"),
        ):
            with (
                self.subTest(**kwargs),
                self.assertRaises(ValueError) as cm,
            ):
                data.make_datasets(name="fashion_mnist", **kwargs)
            self._assert_one_paragraph(cm, pattern)

    def _trainer(self, cls=None, activation=None):
        inputs = keras.Input((8, 8, 1))
        h = keras.layers.Flatten()(inputs)
        outputs = keras.layers.Dense(3, activation=activation)(h)
        classifier = keras.Model(inputs, outputs)
        cls = cls or methods.PGDAT
        if cls is methods.Standard:
            return cls(classifier)
        return cls(classifier, epsilon=0.1)

    @parameterized.named_parameters(
        ("images_in_0_255", 200.0, [0, 1] * 4, None, r"\[200, 200\].*\[0, 1\]"),
        ("fractional_labels", 0.5, [0.5, 1.0] * 4, None, r"\(0\.5\).*whole"),
        ("labels_out_of_range", 0.5, [0, 7] * 4, None, r"\[7\].*3 logits"),
        (
            "negative_sample_weights",
            0.5,
            [0, 1] * 4,
            [1.0, -1.0] * 4,
            r"sample weights down to -1\.0.*>= 0.*ascend",
        ),
    )
    def test_a_trainer_refuses_bad_batches(
        self, pixel, labels, weights, pattern
    ):
        # fit reads the first batch eagerly, with jit_compile or not (XLA
        # drops the in-step assertions), and refuses it in one paragraph
        # before any weight moves; arrays, datasets, validation data.
        x = np.full((8, 8, 8, 1), pixel, "float32")
        y = np.array(labels, "float32")
        good = (np.full_like(x, 0.5), np.zeros(8, "int32"))
        data = (x, y) if weights is None else (x, y, np.array(weights))
        dataset = tf.data.Dataset.from_tensor_slices(data).batch(4)
        for cls, jit, kind in itertools.product(
            (methods.PGDAT, methods.Standard),
            (False, True),
            ("arrays", "dataset", "validation"),
        ):
            if kind == "validation" and weights is not None:
                continue
            trainer = self._trainer(cls)
            trainer.compile(
                optimizer=keras.optimizers.SGD(0.1), jit_compile=jit
            )
            before = [w.numpy() for w in trainer.classifier.weights]
            fit = dict(epochs=1, verbose=0, shuffle=False)
            if kind == "arrays":
                args = data[:2]
                fit.update(batch_size=4, sample_weight=(data + (None,))[2])
            elif kind == "dataset":
                args = (dataset,)
            else:
                args = good
                fit.update(batch_size=4, validation_data=dataset)
            with (
                self.subTest(cls=cls.__name__, jit=jit, kind=kind),
                self.assertRaises(ValueError) as cm,
            ):
                trainer.fit(*args, **fit)
            self._assert_one_paragraph(cm, pattern)
            where = "validation" if kind == "validation" else "training"
            self.assertIn(f"{cls.__name__}'s ", str(cm.exception))
            self.assertIn(where, str(cm.exception))
            for a, b in zip(before, trainer.classifier.weights, strict=True):
                self.assertAllEqual(a, b.numpy())

    @parameterized.parameters(False, True)
    def test_a_trainer_refuses_a_metric_of_another_target(self, jit):
        # 'mse' on (labels, logits) failed inside the first step, in a
        # graph traceback; AUC wants probabilities of one class.
        for metric, name in (("mse", "mean_squared_error"), ("auc", "auc")):
            trainer = self._trainer()
            trainer.compile(
                optimizer=keras.optimizers.SGD(0.1),
                metrics=[metric],
                jit_compile=jit,
            )
            before = [w.numpy() for w in trainer.classifier.weights]
            x = np.full((8, 8, 8, 1), 0.5, "float32")
            with self.assertRaises(ValueError) as cm:
                trainer.fit(x, np.zeros(8, "int32"), verbose=0)
            self._assert_one_paragraph(
                cm, rf"the metric '{name}(_\d+)?' fails on them \(.*SparseTopK"
            )
            self.assertNotIn("{{", str(cm.exception))
            for a, b in zip(before, trainer.classifier.weights, strict=True):
                self.assertAllEqual(a, b.numpy())

    def test_a_trainer_accepts_metrics_of_labels_and_logits(self):
        # The check tries each metric on zero logits (ties: all in the top
        # 2), statelessly: the logged values equal those of an unchecked
        # fit from the same start.
        x = np.random.default_rng(0).uniform(size=(8, 8, 8, 1))
        y = np.array([0, 1, 2, 0, 1, 2, 0, 1], "int32")
        histories = []
        for check in (True, False):
            keras.utils.set_random_seed(0)
            classifier = self._trainer().classifier
            trainer = methods.PGDAT(
                classifier, epsilon=0.1, seed=0, check_inputs=check
            )
            top2 = keras.metrics.SparseTopKCategoricalAccuracy(k=2, name="top2")
            trainer.compile(
                optimizer=keras.optimizers.SGD(0.1),
                metrics=[top2, "crossentropy"],
            )
            histories.append(
                trainer.fit(
                    x.astype("float32"), y, batch_size=4, verbose=0
                ).history
            )
        self.assertIn("adv_crossentropy", histories[0])
        self.assertLess(histories[0]["clean_top2"][0], 1.0)
        self.assertEqual(histories[0], histories[1])

    def test_a_trainer_refuses_negative_class_weights(self):
        trainer = self._trainer()
        trainer.compile(optimizer=keras.optimizers.SGD(0.1))
        x = np.full((8, 8, 8, 1), 0.5, "float32")
        with self.assertRaises(ValueError) as cm:
            trainer.fit(
                x,
                np.zeros(8, "int32"),
                class_weight={0: 1.0, 1: -2.0, 2: 1.0},
                verbose=0,
            )
        self._assert_one_paragraph(cm, r"class_weight \{1: -2\.0\}.*>= 0")

    def test_a_later_bad_batch_fails_the_step(self):
        # Only the first batch is read eagerly: without jit_compile the
        # step's own assertions catch a later one.
        x = np.full((8, 8, 8, 1), 0.5, "float32")
        x[4:] = 200.0
        trainer = self._trainer()
        trainer.compile(optimizer=keras.optimizers.SGD(0.1))
        dataset = tf.data.Dataset.from_tensor_slices(
            (x, np.zeros(8, "int32"))
        ).batch(4)
        with self.assertRaisesRegex(
            tf.errors.InvalidArgumentError, r"\[0, 1\]"
        ):
            trainer.fit(dataset, epochs=1, verbose=0, shuffle=False)

    def test_a_trainer_refuses_a_softmax_classifier(self):
        with self.assertRaises(ValueError) as cm:
            self._trainer(activation="softmax")
        self._assert_one_paragraph(cm, "softmax activation")

    @parameterized.parameters(False, True)
    def test_evaluate_robustness_refuses_0_255_images(self, jit_compile):
        # XLA drops the attacks' own range assertions: the runner checks
        # every batch eagerly instead.
        classifier = self._trainer().classifier
        images = np.full((4, 8, 8, 1), 200.0, "float32")
        dataset = tf.data.Dataset.from_tensor_slices(
            (images, np.zeros(4, "int32"))
        ).batch(4)
        attack = attacks.ProjectedGradient(
            epsilon=0.1, step_size=0.05, num_steps=2
        )
        with self.assertRaises(ValueError) as cm:
            evaluation.evaluate_robustness(
                classifier, dataset, [attack], jit_compile=jit_compile
            )
        self._assert_one_paragraph(cm, r"values in \[200, 200\].*\[0, 1\]")

    def test_backward_smoothing_refuses_an_infinite_gamma(self):
        with self.assertRaises(ValueError) as cm:
            attacks.BackwardSmoothingAttack(epsilon=0.1, gamma=float("inf"))
        self._assert_one_paragraph(cm, r"gamma .*got inf.*finite")

    @parameterized.named_parameters(
        (
            "labels_beyond_the_logits",
            [0, 1, 2, 7],
            False,
            r"labels \[7\].*3 logits",
        ),
        ("nan_outputs", [0, 1, 2, 0], True, r"NaN or infinite logits.*finite"),
    )
    def test_evaluate_robustness_refuses(self, labels, nan, pattern):
        # Counted as misses (or scored 0.0) without a word before.
        classifier = self._trainer().classifier
        if nan:
            weight = classifier.weights[-1]
            weight.assign(np.full(weight.shape, np.nan, "float32"))
        dataset = tf.data.Dataset.from_tensor_slices(
            (np.full((4, 8, 8, 1), 0.5, "float32"), np.array(labels, "int32"))
        ).batch(4)
        attack = attacks.ProjectedGradient(
            epsilon=0.1, step_size=0.05, num_steps=2
        )
        with self.assertRaises(ValueError) as cm:
            evaluation.evaluate_robustness(classifier, dataset, [attack])
        self._assert_one_paragraph(cm, pattern)

    def test_epsilon_messages_agree(self):
        # 0 and a negative budget name the same interval for a run.
        for value in (0.0, -0.1):
            with self.assertRaises(ValueError) as cm:
                validation.epsilon(value, allow_zero=False)
            self._assert_one_paragraph(cm, r"\(0, 1\]")

    def test_bad_tf_config_names_it(self):
        from tfadv import distribute

        with self.assertRaises(ValueError) as cm:
            distribute.check_tf_config('{"task": {}}')
        self._assert_one_paragraph(cm, "TF_CONFIG")
