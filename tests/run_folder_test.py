"""tfadv.run_folder: the resume rule, the JSON writers and the callbacks."""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from unittest import mock

import gin
import h5py
import keras
import numpy as np
import tensorflow as tf
from absl import flags

from tests import cli_fixtures
from tests import harness
from tfadv import run_folder


def setUpModule():
    flags.FLAGS.mark_as_parsed()


class PrepareTest(tf.test.TestCase):
    def setUp(self):
        super().setUp()
        self.root = self.create_tempdir().full_path

    def _folder(self, *names, dirs=()):
        logdir = os.path.join(self.root, "run")
        os.makedirs(logdir)
        for name in names:
            with open(os.path.join(logdir, name), "w") as f:
                f.write("{}")
        for name in dirs:
            os.makedirs(os.path.join(logdir, name))
        return logdir

    def test_new_folder_is_made_and_does_not_resume(self):
        logdir = os.path.join(self.root, "a", "b", "run")
        self.assertFalse(run_folder.prepare(logdir))
        self.assertTrue(os.path.isdir(logdir))

    def test_empty_folder_does_not_resume(self):
        self.assertFalse(run_folder.prepare(self._folder()))

    def test_interrupted_run_with_checkpoint_resumes(self):
        logdir = self._folder(
            run_folder.OPERATIVE_CONFIG_FILE,
            run_folder.TIMING_FILE,
            dirs=(
                run_folder.CHECKPOINT_DIR,
                run_folder.TRAIN_EVENTS,
                run_folder.VALIDATION_EVENTS,
                run_folder.IMAGE_EVENTS,
            ),
        )
        self.assertTrue(run_folder.prepare(logdir))

    def test_interrupted_run_without_checkpoint_starts_over(self):
        logdir = self._folder(
            run_folder.OPERATIVE_CONFIG_FILE, dirs=(run_folder.TRAIN_EVENTS,)
        )
        self.assertFalse(run_folder.prepare(logdir))

    def test_finished_run_is_refused(self):
        logdir = self._folder(
            run_folder.RESULTS_FILE,
            run_folder.MODEL_FILE,
            dirs=(run_folder.CHECKPOINT_DIR,),
        )
        with self.assertRaisesRegex(
            run_folder.RunFolderError,
            "already holds a finished run .*results.json.*--logdir",
        ):
            run_folder.prepare(logdir)

    def test_foreign_files_are_refused(self):
        # A model.keras beside no checkpoint is someone's model, not a run.
        for name, dirs in (
            ("thesis.tex", (run_folder.CHECKPOINT_DIR,)),
            (run_folder.MODEL_FILE, ()),
        ):
            with self.subTest(name=name):
                logdir = self._folder(name, dirs=dirs)
                with self.assertRaisesRegex(
                    run_folder.RunFolderError,
                    rf"not an interrupted tfadv run .*{name}",
                ):
                    run_folder.prepare(logdir)
                self.assertTrue(os.path.exists(os.path.join(logdir, name)))
                shutil.rmtree(logdir)

    def test_a_run_killed_during_export_or_a_write_resumes(self):
        # Killed after training: model.keras (whole or not) and the
        # temporary files of atomic writes sit beside the checkpoint.
        for names in (
            (run_folder.MODEL_FILE,),
            ("incoming." + run_folder.MODEL_FILE,),
            (run_folder.TIMING_FILE + ".tmp", run_folder.DATA_FILE),
            # Killed inside the results write: it resumes and finishes.
            (run_folder.RESULTS_FILE + ".tmp", run_folder.MODEL_FILE),
            (run_folder.DATA_FILE + ".tmp", run_folder.TIMING_FILE),
            (run_folder.REQUESTED_CONFIG_FILE + ".tmp",),
        ):
            with self.subTest(names=names):
                logdir = self._folder(*names, dirs=(run_folder.CHECKPOINT_DIR,))
                self.assertTrue(run_folder.prepare(logdir))
                shutil.rmtree(logdir)

    def test_a_foreign_tmp_file_is_still_foreign(self):
        for name in ("thesis.tex.tmp", "results.json.tmp.tmp", ".tmp"):
            with self.subTest(name=name):
                logdir = self._folder(name, dirs=(run_folder.CHECKPOINT_DIR,))
                with self.assertRaisesRegex(
                    run_folder.RunFolderError, "not an interrupted tfadv run"
                ):
                    run_folder.prepare(logdir)
                shutil.rmtree(logdir)

    def test_error_is_a_value_error(self):
        # tfadv.train turns ValueErrors into one-paragraph exits.
        self.assertTrue(issubclass(run_folder.RunFolderError, ValueError))

    def test_path(self):
        self.assertEqual(
            run_folder.path("runs/x", run_folder.RESULTS_FILE),
            os.path.join("runs/x", "results.json"),
        )


class RefusedStartTest(tf.test.TestCase):
    """A refused start removes only what it created, and only locked."""

    def test_a_start_refused_by_the_lock_never_deletes_the_live_run(self):
        # The race: this start finds no folder, is delayed (a preemption)
        # before it locks, and meanwhile another run creates the folder,
        # locks it and writes its files. The lock refuses this start; the
        # live run's folder must survive it.
        logdir = os.path.join(self.create_tempdir().full_path, "run")
        real_lock = run_folder.lock
        live = contextlib.ExitStack()
        config = run_folder.path(logdir, run_folder.OPERATIVE_CONFIG_FILE)

        def delayed_lock(*args, **kwargs):
            # The other run starts in the delay: it locks and writes.
            live.enter_context(real_lock(logdir))
            with open(config, "w") as f:
                f.write("live run's config\n")
            return real_lock(*args, **kwargs)

        with live:
            with (
                mock.patch.object(run_folder, "lock", delayed_lock),
                self.assertRaisesRegex(
                    SystemExit, f"in use by another tfadv run .*{os.getpid()}"
                ),
            ):
                cli_fixtures.run_cli(logdir, "pgd_at.gin", "testing/tiny.gin")
            # The live run goes on in its folder: nothing was removed.
            self.assertCountEqual(
                os.listdir(logdir),
                [run_folder.LOCK_FILE, run_folder.OPERATIVE_CONFIG_FILE],
            )
            with open(config) as f:
                self.assertEqual(f.read(), "live run's config\n")
            run_folder.write_json_atomic(
                run_folder.path(logdir, run_folder.TIMING_FILE), {"a": 1}
            )

    def test_a_start_that_fails_under_its_lock_removes_what_it_made(self):
        root = self.create_tempdir().full_path
        logdir = os.path.join(root, "a", "b", "run")
        # As experiment.run holds it: the lock outlives the block.
        with (
            self.assertRaisesRegex(ValueError, "bad"),
            contextlib.ExitStack() as held,
            run_folder.removed_on_error(logdir) as start,
        ):
            held.enter_context(run_folder.lock(logdir, start))
            self.assertTrue(start.locked)
            with open(run_folder.path(logdir, "x"), "w") as f:
                f.write("x")
            raise ValueError("bad")
        self.assertEqual(os.listdir(root), [])  # parents it made, too

    def test_a_folder_that_existed_is_kept(self):
        logdir = self.create_tempdir().full_path
        with open(os.path.join(logdir, run_folder.TIMING_FILE), "w") as f:
            f.write("{}")
        with (
            self.assertRaisesRegex(ValueError, "bad"),
            contextlib.ExitStack() as held,
            run_folder.removed_on_error(logdir) as start,
        ):
            held.enter_context(run_folder.lock(logdir, start))
            raise ValueError("bad")
        self.assertIn(run_folder.TIMING_FILE, os.listdir(logdir))

    def test_nothing_is_removed_without_the_lock(self):
        # This start made the folder, but another run locked it first.
        logdir = os.path.join(self.create_tempdir().full_path, "run")
        with (
            self.assertRaisesRegex(ValueError, "bad"),
            run_folder.removed_on_error(logdir) as start,
        ):
            run_folder._make_folders(logdir, start)
            self.assertEqual(start.created, [logdir])
            raise ValueError("bad")
        self.assertTrue(os.path.isdir(logdir))

    def test_the_lock_follows_a_folder_removed_before_it_locked(self):
        # Another start removed the folder (and its lock file) between
        # this start's open and its flock: this start locks the new file.
        logdir = os.path.join(self.create_tempdir().full_path, "run")
        real_flock = run_folder.fcntl.flock
        removed = []

        def flock(handle, operation):
            if not removed and operation & run_folder.fcntl.LOCK_EX:
                removed.append(1)
                shutil.rmtree(logdir)
            return real_flock(handle, operation)

        with (
            mock.patch.object(run_folder.fcntl, "flock", flock),
            run_folder.lock(logdir),
        ):
            with open(run_folder.path(logdir, run_folder.LOCK_FILE)) as f:
                self.assertEqual(f.read(), str(os.getpid()))
            with (
                self.assertRaisesRegex(run_folder.RunFolderError, "in use"),
                run_folder.lock(logdir),
            ):
                pass
        self.assertEqual(removed, [1])


class _Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs (no `except Exception`)."""


class KilledInTheResultsWriteTest(tf.test.TestCase):
    def test_the_rerun_resumes_and_finishes(self):
        # Killed halfway through writing results.json: its temporary file
        # is left beside the checkpoint and model.keras. The rerun of the
        # same command trains no more and writes the results.
        logdir = os.path.join(self.create_tempdir().full_path, "run")
        results_path = run_folder.path(logdir, run_folder.RESULTS_FILE)
        write = run_folder.write_json_atomic

        def dies_inside_the_results_write(file_path, payload):
            if file_path != results_path:
                return write(file_path, payload)
            with open(file_path + ".tmp", "w") as f:
                f.write(json.dumps(payload)[:100])
            raise _Killed

        with (
            mock.patch.object(
                run_folder, "write_json_atomic", dies_inside_the_results_write
            ),
            self.assertRaises(_Killed),
        ):
            cli_fixtures.run_cli(logdir, "pgd_at.gin", "testing/tiny.gin")
        self.assertFalse(os.path.exists(results_path))
        self.assertTrue(os.path.exists(results_path + ".tmp"))
        with mock.patch.object(
            keras.Model, "fit", autospec=True, side_effect=keras.Model.fit
        ) as fit:
            cli_fixtures.run_cli(logdir, "pgd_at.gin", "testing/tiny.gin")
        fit.assert_called_once()
        results = run_folder.read_json(results_path)
        self.assertEqual(results["method"], "PGDAT")
        self.assertLen(results["history"]["loss"], 1)
        self.assertLen(results["epoch_seconds"], 1)
        self.assertNotIn(run_folder.RESULTS_FILE + ".tmp", os.listdir(logdir))


def _snapshot(root):
    """Every file under `root` with its size and modification time."""
    state = {}
    for folder, _, files in os.walk(root):
        for name in files:
            stat = os.stat(os.path.join(folder, name))
            state[os.path.relpath(os.path.join(folder, name), root)] = (
                stat.st_size,
                stat.st_mtime,
            )
    return state


_TINY = ("pgd_at.gin", "testing/tiny.gin")


class DataChangedTest(tf.test.TestCase):
    def _folder(self, data):
        logdir = self.create_tempdir().full_path
        run_folder.write_json_atomic(
            run_folder.path(logdir, run_folder.DATA_FILE), data
        )
        return logdir

    def test_other_contents_under_the_same_description_are_refused(self):
        data = {"dataset": "d", "num_train": 256, "content": "00aa"}
        logdir = self._folder(data)
        self.assertFalse(
            run_folder.data_changed(logdir, data, allow_change=False)
        )
        with self.assertRaisesRegex(
            run_folder.RunFolderError, r"other data \(content: '00aa' -> "
        ):
            run_folder.data_changed(
                logdir, {**data, "content": "11bb"}, allow_change=False
            )

    def test_a_data_json_without_content_still_resumes(self):
        # Written before the fingerprint existed: the rest is compared.
        old = {"dataset": "d", "num_train": 256}
        logdir = self._folder(old)
        self.assertFalse(
            run_folder.data_changed(
                logdir, {**old, "content": "00aa"}, allow_change=False
            )
        )
        with self.assertRaisesRegex(run_folder.RunFolderError, "num_train"):
            run_folder.data_changed(
                logdir,
                {**old, "num_train": 128, "content": "00aa"},
                allow_change=False,
            )


class ResumeChecksTest(tf.test.TestCase):
    """A resume refuses a checkpoint that is not this run's, and records."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.root = tempfile.mkdtemp()
        cls.template = os.path.join(cls.root, "template")
        cli_fixtures.run_cli(cls.template, *_TINY)

    def _interrupted(self):
        """A copy of a 1-epoch run killed after its checkpoint."""
        logdir = os.path.join(self.create_tempdir().full_path, "run")
        shutil.copytree(self.template, logdir)
        for name in (run_folder.RESULTS_FILE, run_folder.MODEL_FILE):
            os.remove(run_folder.path(logdir, name))
        return logdir

    def _checkpoint(self, logdir, name=run_folder.CHECKPOINT_WEIGHTS):
        return os.path.join(
            run_folder.path(logdir, run_folder.CHECKPOINT_DIR), name
        )

    def _assert_refused(self, logdir, pattern, bindings=(), **flags):
        before = _snapshot(logdir)
        with self.assertRaises(SystemExit) as cm:
            cli_fixtures.run_cli(logdir, *_TINY, bindings=bindings, **flags)
        message = str(cm.exception.code)
        self.assertStartsWith(message, "tfadv.train: error: ")
        self.assertNotIn("\n", message)
        self.assertRegex(message, pattern)
        self.assertEqual(_snapshot(logdir), before)

    def test_the_checkpoint_names_its_run(self):
        logdir = self._interrupted()
        record = run_folder.read_json(run_folder.path(logdir, "run.json"))
        self.assertLen(record["run_id"], 32)
        self.assertEqual(record["history"], [])
        self.assertEqual(
            run_folder.check_checkpoint(logdir, epochs=1), 1
        )  # and it resumes
        cli_fixtures.run_cli(logdir, *_TINY)
        results = run_folder.read_json(
            run_folder.path(logdir, run_folder.RESULTS_FILE)
        )
        self.assertLen(results["history"]["loss"], 1)

    def test_weights_missing_beside_the_metadata(self):
        logdir = self._interrupted()
        os.remove(self._checkpoint(logdir))
        self._assert_refused(
            logdir,
            r"latest\.weights\.h5 is missing, but .*training_metadata\.json"
            r".*delete .*checkpoint",
        )

    def test_a_truncated_weights_file(self):
        logdir = self._interrupted()
        weights = self._checkpoint(logdir)
        with open(weights, "r+b") as f:
            f.truncate(os.path.getsize(weights) // 2)
        self._assert_refused(
            logdir, r"latest\.weights\.h5 cannot be read .*truncated"
        )

    def test_a_truncated_history_in_the_weights_file(self):
        logdir = self._interrupted()
        with h5py.File(self._checkpoint(logdir), "a") as f:
            key = run_folder.ResumableCheckpoint.HISTORY_ATTRIBUTE
            f.attrs[key] = f.attrs[key][:10]
        self._assert_refused(
            logdir, r"latest\.weights\.h5 holds a truncated or edited record"
        )

    def test_a_truncated_json_file_of_the_run(self):
        for name in (run_folder.TIMING_FILE, run_folder.DATA_FILE, "run.json"):
            with self.subTest(name=name):
                logdir = self._interrupted()
                file_path = run_folder.path(logdir, name)
                with open(file_path, "r+") as f:
                    f.truncate(os.path.getsize(file_path) // 2)
                self._assert_refused(
                    logdir,
                    rf"{name} is not valid JSON .*truncated.*restore it from "
                    "a copy of the run",
                )

    def test_an_epoch_beyond_the_runs_epochs(self):
        logdir = self._interrupted()
        for name in (run_folder.CHECKPOINT_WEIGHTS,):
            with h5py.File(self._checkpoint(logdir, name), "a") as f:
                f.attrs[run_folder.ResumableCheckpoint.EPOCH_ATTRIBUTE] = 7
        self._assert_refused(
            logdir, r"holds epoch 7, but this run has 1 epochs"
        )

    def test_another_runs_checkpoint(self):
        logdir = self._interrupted()
        other = os.path.join(self.create_tempdir().full_path, "other")
        cli_fixtures.run_cli(other, *_TINY)  # same config, another run
        shutil.rmtree(run_folder.path(logdir, run_folder.CHECKPOINT_DIR))
        shutil.copytree(
            run_folder.path(other, run_folder.CHECKPOINT_DIR),
            run_folder.path(logdir, run_folder.CHECKPOINT_DIR),
        )
        self._assert_refused(logdir, r"was written by another run")

    def test_other_data_is_refused_or_recorded(self):
        # The same config on another data source (--data_dir).
        logdir = self._interrupted()
        data_dir = os.path.join(self.create_tempdir().full_path, "data")
        rng = np.random.default_rng(0)
        for prefix, n in (("train", 256), ("t10k", 64)):
            cli_fixtures.write_idx(
                data_dir,
                prefix,
                rng.integers(0, 256, size=(n, 28, 28)),
                rng.integers(0, 10, size=n),
            )
        self._assert_refused(
            logdir,
            r"trained on other data \(source: .*data\.json.*"
            r"--allow_config_change",
            data_dir=data_dir,
        )
        with open(run_folder.path(logdir, run_folder.DATA_FILE)) as f:
            before = json.load(f)
        cli_fixtures.run_cli(
            logdir, *_TINY, data_dir=data_dir, allow_config_change=True
        )
        record = run_folder.read_json(run_folder.path(logdir, "run.json"))
        self.assertLen(record["history"], 1)
        self.assertEqual(record["history"][0]["epochs"], 1)
        self.assertEqual(record["history"][0]["data.json"], before)
        now = run_folder.read_json(
            run_folder.path(logdir, run_folder.DATA_FILE)
        )
        self.assertIn(data_dir, now["source"])

    def test_an_allowed_config_change_keeps_the_earlier_config(self):
        logdir = self._interrupted()
        requested = run_folder.path(logdir, run_folder.REQUESTED_CONFIG_FILE)
        operative = run_folder.path(logdir, run_folder.OPERATIVE_CONFIG_FILE)
        with open(requested) as f:
            old_requested = f.read()
        with open(operative) as f:
            old_operative = f.read()
        cli_fixtures.run_cli(
            logdir,
            *_TINY,
            bindings=["run.epochs = 2"],
            allow_config_change=True,
        )
        record = run_folder.read_json(run_folder.path(logdir, "run.json"))
        self.assertLen(record["history"], 1)
        earlier = record["history"][0]
        self.assertEqual(earlier["epochs"], 1)
        self.assertEqual(earlier["config.requested.gin"], old_requested)
        self.assertEqual(earlier["config.operative.gin"], old_operative)
        with open(requested) as f:
            self.assertIn("run.epochs = 2", f.read())
        results = run_folder.read_json(
            run_folder.path(logdir, run_folder.RESULTS_FILE)
        )
        self.assertLen(results["history"]["loss"], 2)

    def test_a_config_edited_under_the_checkpoint(self):
        logdir = self._interrupted()
        requested = run_folder.path(logdir, run_folder.REQUESTED_CONFIG_FILE)
        with open(requested) as f:
            text = f.read()
        with open(requested, "w") as f:
            f.write(
                text.replace("run.epochs = 1", "run.epochs = 1\n# x\nA = 1")
            )
        self._assert_refused(
            logdir,
            r"trained with another configuration than config\.requested\.gin",
            bindings=["A = 1"],
        )


class JsonTest(tf.test.TestCase):
    def test_write_atomic_and_read(self):
        folder = self.create_tempdir().full_path
        path = os.path.join(folder, "r.json")
        run_folder.write_json_atomic(path, {"a": [1, 2.5], "b": None})
        self.assertEqual(run_folder.read_json(path), {"a": [1, 2.5], "b": None})
        run_folder.write_json_atomic(path, {"a": 3})
        with open(path) as f:
            self.assertEqual(json.load(f), {"a": 3})
        self.assertEqual(os.listdir(folder), ["r.json"])  # No .tmp left.

    def test_read_missing_file_is_empty(self):
        path = os.path.join(self.create_tempdir().full_path, "none.json")
        self.assertEqual(run_folder.read_json(path), {})


def _compiled_classifier():
    model = harness.tiny_classifier()
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


@gin.configurable("run_folder_test_used")
def _used(value=1):
    return value


class GinConfigWriterTest(tf.test.TestCase):
    def test_writes_the_operative_config_once(self):
        logdir = self.create_tempdir().full_path

        gin.parse_config("run_folder_test_used.value = 7")
        self.assertEqual(_used(), 7)
        writer = run_folder.GinConfigWriter(logdir)
        writer.on_train_batch_end(0)
        path = run_folder.path(logdir, run_folder.OPERATIVE_CONFIG_FILE)
        with open(path) as f:
            self.assertIn("run_folder_test_used.value = 7", f.read())
        with open(path, "w") as f:
            f.write("kept")
        writer.on_train_batch_end(1)
        with open(path) as f:
            self.assertEqual(f.read(), "kept")
        events = os.listdir(run_folder.path(logdir, run_folder.TRAIN_EVENTS))
        self.assertLen(events, 1)
        self.assertStartsWith(events[0], "events.out.tfevents.")


class ResumableCheckpointTest(tf.test.TestCase):
    def test_keeps_checkpoint_and_skips_non_finite_epochs(self):
        logdir = self.create_tempdir().full_path
        checkpoint = run_folder.path(logdir, run_folder.CHECKPOINT_DIR)
        metadata = os.path.join(checkpoint, "training_metadata.json")
        weights = os.path.join(checkpoint, "latest.weights.h5")
        model = _compiled_classifier()
        x, y = harness.tiny_data()
        callback = run_folder.ResumableCheckpoint(logdir)
        model.fit(
            x,
            y,
            batch_size=harness.BATCH,
            epochs=1,
            callbacks=[callback],
            verbose=0,
        )
        # Kept after training (delete_checkpoint=False).
        with open(metadata) as f:
            self.assertEqual(json.load(f)["epoch"], 1)
        saved = [w.numpy().copy() for w in model.weights]
        for w in model.weights:
            w.assign(np.full(w.shape, np.nan, w.dtype))
        for loss in (float("nan"), float("inf"), np.float32("nan")):
            callback.on_epoch_end(1, {"loss": loss})
        with open(metadata) as f:
            self.assertEqual(json.load(f)["epoch"], 1)
        model.load_weights(weights)
        for a, b in zip(model.weights, saved, strict=True):
            self.assertAllClose(a, b)
        # A finite epoch is saved.
        callback.on_epoch_end(1, {"loss": 0.5})
        with open(metadata) as f:
            self.assertEqual(json.load(f)["epoch"], 2)

    def test_resumes_from_the_checkpoint(self):
        logdir = self.create_tempdir().full_path
        x, y = harness.tiny_data()
        model = _compiled_classifier()
        model.fit(
            x,
            y,
            batch_size=harness.BATCH,
            epochs=1,
            callbacks=[run_folder.ResumableCheckpoint(logdir)],
            verbose=0,
        )
        fresh = _compiled_classifier()
        history = fresh.fit(
            x,
            y,
            batch_size=harness.BATCH,
            epochs=3,
            callbacks=[run_folder.ResumableCheckpoint(logdir)],
            verbose=0,
        )
        self.assertEqual(history.epoch, [1, 2])


# A child process that trains one epoch with the checkpoint, then is killed
# (SIGKILL, no clean-up) in the middle of writing the second epoch's
# weights: the file is half written when the process dies.
_KILLED_IN_THE_WRITE = """
import os
import signal
import sys

import keras
import numpy as np

from tfadv import run_folder

logdir = sys.argv[1]
keras.utils.set_random_seed(0)
model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
x = np.random.default_rng(0).uniform(size=(32, 4)).astype("float32")
y = np.arange(32) % 3
save_weights = keras.Model.save_weights
writes = []


def dies_while_writing(self, filepath, **kwargs):
    save_weights(self, filepath, **kwargs)
    writes.append(filepath)
    if len(writes) == 2:
        size = os.path.getsize(filepath)
        with open(filepath, "r+b") as f:
            f.truncate(size // 2)
        os.kill(os.getpid(), signal.SIGKILL)


keras.Model.save_weights = dies_while_writing
model.fit(x, y, epochs=3, verbose=0,
          callbacks=[run_folder.ResumableCheckpoint(logdir)])
"""


class AtomicCheckpointTest(tf.test.TestCase):
    def test_a_process_killed_inside_the_write_keeps_the_last_checkpoint(
        self,
    ):
        logdir = self.create_tempdir().full_path
        script = os.path.join(logdir, "child.py")
        with open(script, "w") as f:
            f.write(_KILLED_IN_THE_WRITE)
        checkpoint = run_folder.path(logdir, run_folder.CHECKPOINT_DIR)
        proc = subprocess.run(
            [sys.executable, script, logdir],
            capture_output=True,
            text=True,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        )
        self.assertEqual(proc.returncode, -signal.SIGKILL, proc.stderr[-2000:])
        # The half-written file is the incoming one; the checkpoint of
        # epoch 1 is whole and loads.
        incoming = os.path.join(checkpoint, "incoming.weights.h5")
        self.assertTrue(os.path.exists(incoming))
        callback = run_folder.ResumableCheckpoint(logdir)
        self.assertEqual(callback.saved_epoch(), 1)
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
        model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
        x = np.random.default_rng(0).uniform(size=(32, 4)).astype("float32")
        history = model.fit(
            x, np.arange(32) % 3, epochs=3, verbose=0, callbacks=[callback]
        )
        self.assertEqual(history.epoch, [1, 2])
        self.assertEqual(callback.saved_epoch(), 3)
        self.assertFalse(os.path.exists(incoming))

    def test_the_weights_files_epoch_wins_over_stale_metadata(self):
        # Killed between the weights' rename and the metadata's write: the
        # weights are epoch 2's, the metadata still says 1.
        logdir = self.create_tempdir().full_path
        x, y = harness.tiny_data()
        model = _compiled_classifier()
        model.fit(
            x,
            y,
            batch_size=harness.BATCH,
            epochs=2,
            callbacks=[run_folder.ResumableCheckpoint(logdir)],
            verbose=0,
        )
        metadata = os.path.join(
            run_folder.path(logdir, run_folder.CHECKPOINT_DIR),
            "training_metadata.json",
        )
        with open(metadata, "w") as f:
            json.dump({"epoch": 1, "batch": 0}, f)
        fresh = _compiled_classifier()
        history = fresh.fit(
            x,
            y,
            batch_size=harness.BATCH,
            epochs=3,
            callbacks=[run_folder.ResumableCheckpoint(logdir)],
            verbose=0,
        )
        self.assertEqual(history.epoch, [2])
