"""The run folder: every file name in it, the resume rule, and its writers.

A run folder (`--logdir`) holds, when the run has finished:

- `config.operative.gin`: the values gin actually used;
- `config.requested.gin`: every binding the run was started with, which a
  resume must repeat;
- TensorBoard events in `train/`, `validation/` and `images/`;
- `checkpoint/`: weights, optimizer state, random-number state, epoch and
  the history of the finished epochs, for resuming;
- `data.json`: which data the run used (the source that provided it);
- `run.json`: the run's id, which every checkpoint stores with the
  fingerprints of the configuration and data it was trained with, and the
  configurations and data of earlier epochs when a resume was allowed to
  change them;
- `timing.json`: the seconds of every finished epoch (kept across resumes);
- `model.keras`: the bare classifier, loadable with plain Keras (written
  atomically);
- `results.json`: the run's numbers (written last, atomically).

The resume rule: a folder with `results.json` is a finished run and is
never written to; a folder holding only what an interrupted run leaves
behind resumes from its checkpoint (a run killed during its final
evaluation or export resumes too, trains no more and finishes); anything
else is refused. A resume first checks that the checkpoint is this run's
(`check_checkpoint`). A resumed run ends with the weights, history and
results of the uninterrupted run. One run at a
time: a run holds the folder's lock (`lock`) while it trains, and a second
run on the folder is refused while the first lives. A start refused before
training removes what it created (`removed_on_error`), decided under its
lock: never a folder that another run holds.

The writers of the training logs that go into the folder (the timing file,
the hyperparameters) are in `tfadv.run_logs`, beside this module.
"""

import contextlib
import difflib
import fcntl
import hashlib
import json
import math
import os
import shutil
import uuid

import gin
import h5py
import keras
import tensorflow as tf

RESULTS_FILE = "results.json"
MODEL_FILE = "model.keras"
CHECKPOINT_DIR = "checkpoint"
TIMING_FILE = "timing.json"
DATA_FILE = "data.json"
OPERATIVE_CONFIG_FILE = "config.operative.gin"
REQUESTED_CONFIG_FILE = "config.requested.gin"
TRAIN_EVENTS = "train"
VALIDATION_EVENTS = "validation"
IMAGE_EVENTS = "images"
LOCK_FILE = ".lock"
RUN_FILE = "run.json"
# Keras's names inside checkpoint/ (keras.callbacks.BackupAndRestore).
CHECKPOINT_WEIGHTS = "latest.weights.h5"
CHECKPOINT_METADATA = "training_metadata.json"
# The run's hyperparameters and final accuracies, in the folder itself so
# that TensorBoard's HPARAMS tab finds train/ and validation/ under it.
HPARAMS_EVENTS_PREFIX = "events.out.tfevents."
# What an interrupted run may leave behind.
_INTERRUPTED_RUN = {
    LOCK_FILE,
    RUN_FILE,
    REQUESTED_CONFIG_FILE,
    OPERATIVE_CONFIG_FILE,
    CHECKPOINT_DIR,
    TIMING_FILE,
    DATA_FILE,
    MODEL_FILE,
    "incoming." + MODEL_FILE,
    TRAIN_EVENTS,
    VALIDATION_EVENTS,
    IMAGE_EVENTS,
}
# Files tfadv writes through a temporary "<name>.tmp" and a rename: a kill
# inside the write leaves that temporary file, which is tfadv's own.
_WRITTEN_ATOMICALLY = {
    RESULTS_FILE,
    TIMING_FILE,
    DATA_FILE,
    REQUESTED_CONFIG_FILE,
    RUN_FILE,
}


class RunFolderError(ValueError):
    """The run folder holds something a run must not overwrite."""


def path(logdir: str, name: str) -> str:
    """The path of one of the folder's files (a name from this module)."""
    return os.path.join(logdir, name)


def prepare(logdir: str) -> bool:
    """Checks the run folder, creates it, and says whether the run resumes.

    Returns:
        True when the folder holds an interrupted run's checkpoint.

    Raises:
        RunFolderError: the folder holds a finished run, or files that no
            tfadv run made.
    """
    resuming = check(logdir)
    os.makedirs(logdir, exist_ok=True)
    return resuming


def check(logdir: str) -> bool:
    """`prepare` without creating anything: refuses, or says if it resumes.

    Raises:
        RunFolderError: as `prepare`.
    """
    if os.path.exists(logdir) and not os.path.isdir(logdir):
        raise RunFolderError(
            f"--logdir={logdir} is a file, not a folder; a run writes a "
            "folder of files there. Pass a new or an interrupted run's "
            "folder."
        )
    if os.path.exists(path(logdir, RESULTS_FILE)):
        raise RunFolderError(
            f"{logdir} already holds a finished run ({RESULTS_FILE} exists); "
            "tfadv never overwrites a run. Pass another --logdir, or delete "
            "the folder yourself."
        )
    if os.path.isdir(logdir):
        foreign = sorted(
            name
            for name in os.listdir(logdir)
            if name not in _INTERRUPTED_RUN
            # A kill during an atomic write leaves its ".tmp" file (the
            # results' too: that run resumes, trains no more and finishes).
            and not _temporary_of_an_atomic_write(name)
            # The hparams summary (tfadv.run_logs.HParamsLogger).
            and not name.startswith(HPARAMS_EVENTS_PREFIX)
        )
        checkpoint = os.path.isdir(path(logdir, CHECKPOINT_DIR))
        if not checkpoint and os.path.exists(path(logdir, MODEL_FILE)):
            # Only a run killed after training leaves a model.keras.
            foreign.append(MODEL_FILE)
        if foreign:
            raise RunFolderError(
                f"{logdir} is not empty and is not an interrupted tfadv run "
                f"(it holds {foreign[:5]}); pass another --logdir."
            )
    return os.path.isdir(path(logdir, CHECKPOINT_DIR))


def _temporary_of_an_atomic_write(name: str) -> bool:
    stem = name.removesuffix(".tmp")
    return stem != name and stem in _WRITTEN_ATOMICALLY | _INTERRUPTED_RUN


class Start:
    """What one start of a run made, and whether it holds the folder.

    `lock` fills it in: the folders it created (the run folder and any
    missing parents, each made with one `os.mkdir`, so a folder another
    process made first is never counted) and whether the lock is held.
    """

    def __init__(self):
        self.folder = None  # the run folder's absolute path, once locked
        self.created: list[str] = []  # outermost first
        self.locked = False

    def remove_created(self) -> None:
        """Removes what this start created, only while it holds the lock.

        A start refused by the lock created nothing the live run does not
        now own (it may have made the folder an instant before the other
        run locked it), so it removes nothing.
        """
        if not self.locked:
            return
        for folder in reversed(self.created):
            if folder == self.folder:
                shutil.rmtree(folder, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.rmdir(folder)  # a parent, only if still empty
        self.created = []


@contextlib.contextmanager
def removed_on_error(logdir: str):
    """On a failure in the block, removes what this start created.

    For the checks and the build before training: a refused start leaves
    nothing behind, and a folder that existed is left as it was found.
    The block passes the yielded `Start` to `lock`; what was created is
    decided there, under the lock, not from whether `logdir` existed
    when the block began (another run may create and lock the folder in
    between, and a refused start must never delete a live run). Nothing
    is removed unless this start holds the lock.
    """
    del logdir  # decided by `lock`, under the lock
    start = Start()
    try:
        yield start
    except BaseException:
        start.remove_created()
        raise


def _make_folders(logdir: str, start: Start | None) -> None:
    """`os.makedirs(logdir)`, noting in `start` each folder it made."""
    missing = []
    folder = os.path.abspath(logdir)
    while not os.path.isdir(folder):
        missing.append(folder)
        parent = os.path.dirname(folder)
        if parent == folder:
            break
        folder = parent
    for folder in reversed(missing):
        try:
            os.mkdir(folder)
        except FileExistsError:
            continue  # another process made it: not this start's
        if start is not None:
            start.created.append(folder)


def record_config(
    logdir: str, config: str, *, resuming: bool, allow_change: bool = False
) -> None:
    """Keeps the run's gin configuration; a resume must not change it.

    A new run writes `config` (`gin.config_str()`: every binding, after the
    includes) to `config.requested.gin`. A resumed run compares its own
    with it: a difference would mix two runs in one folder (another
    method, learning rate or model width on the old checkpoint), so it is
    an error naming the changed lines, unless `allow_change`, which then
    records the new configuration.

    Raises:
        RunFolderError: resuming with a changed configuration.
    """
    if resuming and not config_changed(
        logdir, config, allow_change=allow_change
    ):
        return
    _write_text(path(logdir, REQUESTED_CONFIG_FILE), config)


def config_changed(logdir: str, config: str, *, allow_change: bool) -> bool:
    """Whether `config` differs from the interrupted run's, if allowed.

    Raises:
        RunFolderError: it differs and `allow_change` is False (naming the
            changed lines).
    """
    file_path = path(logdir, REQUESTED_CONFIG_FILE)
    if os.path.isfile(file_path):
        with open(file_path) as f:
            before = _bindings(f.read())
        now = _bindings(config)
        if before == now:
            return False
        if not allow_change:
            changed = [
                line
                for line in difflib.unified_diff(before, now, lineterm="", n=0)
                if line[:1] in "+-" and not line.startswith(("+++", "---"))
            ]
            shown = "; ".join(changed[:8])
            if len(changed) > 8:
                shown += f"; and {len(changed) - 8} more"
            raise RunFolderError(
                f"{logdir} holds an interrupted run started with another "
                f"configuration; resuming would mix two runs. Changed "
                f"(- before, + now): {shown}. Rerun the original command to "
                "resume it, pass another --logdir, or pass "
                "--allow_config_change to continue with the new one."
            )
    return True


def _write_text(file_path: str, text: str) -> None:
    tmp = file_path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, file_path)


def _fingerprint(payload) -> str:
    text = payload if isinstance(payload, str) else json.dumps(payload)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def config_fingerprint(config: str) -> str:
    """A short hash of a gin config's bindings (comments, order ignored)."""
    return _fingerprint("\n".join(_bindings(config)))


def data_fingerprint(data: dict) -> str:
    """A short hash of `data.json`'s description of the data."""
    return _fingerprint(json.dumps(data, sort_keys=True))


def check_checkpoint(
    logdir: str, *, epochs: int, allow_change: bool = False
) -> int | None:
    """Checks that the folder's checkpoint belongs to this run, unchanged.

    Read only. A checkpoint is tied to its run by what its weights file
    stores (`ResumableCheckpoint`): the run's id (`run.json`), the
    fingerprints of its configuration and data, its epoch and the history
    of the epochs it finished.

    Returns:
        The checkpoint's epoch, or None when no epoch was saved.

    Raises:
        RunFolderError: one paragraph naming the file and what to do: the
            weights file is missing while the metadata claims an epoch, it
            cannot be read, its epoch is beyond `epochs` or disagrees with
            its history, it was written by another run, or with another
            configuration or data than the folder records (the last two
            unless `allow_change`).
    """
    folder = path(logdir, CHECKPOINT_DIR)
    weights = os.path.join(folder, CHECKPOINT_WEIGHTS)
    metadata = os.path.join(folder, CHECKPOINT_METADATA)
    start_over = (
        f"Restore it from a copy of the run, or delete {folder} to "
        "train the run from its first epoch (or pass another --logdir)."
    )
    # Files a resume reads: broken, they are refused here, named.
    for name in (TIMING_FILE, RUN_FILE, DATA_FILE):
        read_json(
            path(logdir, name),
            remedy="restore it from a copy of the run, or pass another "
            "--logdir to train the run anew.",
        )
    if not os.path.isfile(weights):
        if os.path.isfile(metadata):
            raise RunFolderError(
                f"{weights} is missing, but {metadata} says the run "
                "finished epochs; resuming would train on from fresh "
                f"weights and mislabel the results. {start_over}"
            )
        return None
    try:
        with h5py.File(weights, "r") as f:
            attrs = dict(f.attrs)
    except OSError as e:
        raise RunFolderError(
            f"{weights} cannot be read as a checkpoint ({e}); it is "
            f"truncated or not a tfadv checkpoint. {start_over}"
        ) from None
    epoch = attrs.get(ResumableCheckpoint.EPOCH_ATTRIBUTE)
    if epoch is None:
        return None  # written by Keras itself: nothing more to check
    epoch = int(epoch)
    if epoch > epochs:
        raise RunFolderError(
            f"{weights} holds epoch {epoch}, but this run has {epochs} "
            "epochs (run.epochs): it is not this run's checkpoint, or the "
            f"run was longer. {start_over}"
        )
    try:
        history = attrs.get(ResumableCheckpoint.HISTORY_ATTRIBUTE)
        history = None if history is None else json.loads(history)
        identity = attrs.get(ResumableCheckpoint.RUN_ATTRIBUTE)
        identity = None if identity is None else json.loads(identity)
    except json.JSONDecodeError as e:
        raise RunFolderError(
            f"{weights} holds a truncated or edited record of its run "
            f"({e.msg}); tfadv writes it whole. {start_over}"
        ) from None
    if history is not None and len(history) != epoch:
        raise RunFolderError(
            f"{weights} holds epoch {epoch} but the logs of "
            f"{len(history)} epochs; it was edited or mixed with another "
            f"run's. {start_over}"
        )
    if identity is None:
        return epoch  # written before checkpoints named their run
    run_id = read_json(path(logdir, RUN_FILE)).get("run_id")
    if identity.get("run_id") != run_id:
        raise RunFolderError(
            f"{weights} was written by another run (run id "
            f"{identity.get('run_id')}, this folder's {RUN_FILE} says "
            f"{run_id}); resuming would mix two runs. Put back this run's "
            f"checkpoint, or delete {folder} to train the run from its "
            "first epoch (or pass another --logdir)."
        )
    recorded = read_json(path(logdir, RUN_FILE)).get("history", [])
    for key, what, name in (
        ("config", "configuration", REQUESTED_CONFIG_FILE),
        ("data", "data", DATA_FILE),
    ):
        fingerprint = _file_fingerprint(path(logdir, name), key)
        saved = identity.get(key)
        if fingerprint is None or saved is None or saved == fingerprint:
            continue
        # A change that a start allowed and recorded, killed before its
        # first checkpoint, or one allowed now (and recorded then).
        earlier = {_file_fingerprint(e, key) for e in recorded}
        if allow_change or saved in earlier:
            continue
        raise RunFolderError(
            f"{weights} was trained with another {what} than {name} "
            f"records (fingerprint {saved}, the file's {fingerprint}); the "
            f"folder would misstate what the run used. Put back the {name} "
            "the run started with, or pass --allow_config_change to "
            "continue and record the change."
        )
    return epoch


def _file_fingerprint(source, key: str) -> str | None:
    """The fingerprint of a file's config or data, or of a history entry."""
    name = REQUESTED_CONFIG_FILE if key == "config" else DATA_FILE
    if isinstance(source, dict):  # an entry of run.json's history
        content = source.get(name)
    elif os.path.isfile(source):
        if key == "data":
            content = read_json(source)
        else:
            with open(source) as f:
                content = f.read()
    else:
        return None
    if content is None:
        return None
    if key == "data":
        return data_fingerprint(content)
    return config_fingerprint(content)


def data_changed(logdir: str, data: dict, *, allow_change: bool) -> bool:
    """Whether `data` differs from the data the interrupted run used.

    Raises:
        RunFolderError: it differs and `allow_change` is False.
    """
    file_path = path(logdir, DATA_FILE)
    before = read_json(file_path)
    # A data.json written before the content fingerprint existed: only
    # the fields it has can be compared.
    if before and "content" not in before:
        data = {key: value for key, value in data.items() if key != "content"}
    if not before or before == data:
        return False
    if not allow_change:
        # The readable fields first; the content fingerprint last.
        changed = [
            f"{key}: {before.get(key)!r} -> {data.get(key)!r}"
            for key in sorted(
                before.keys() | data.keys(), key=lambda k: (k == "content", k)
            )
            if before.get(key) != data.get(key)
        ]
        raise RunFolderError(
            f"{logdir} holds an interrupted run trained on other data "
            f"({'; '.join(changed)}, from {file_path}); resuming would mix "
            "two data sets in one run. Rerun with the data it started with "
            "(the same --data_dir or TFADV_DATA_DIR), pass another "
            "--logdir, or pass --allow_config_change to continue and record "
            "the change."
        )
    return True


def record_start(
    logdir: str,
    *,
    config: str,
    data: dict,
    resuming: bool,
    epoch: int | None,
    changed: bool,
) -> dict:
    """Writes the run's configuration, data and record for this start.

    A new run gets a new id in `run.json`. A resumed run keeps its id; when
    its configuration or data changed (allowed by --allow_config_change),
    the previous `config.requested.gin`, `config.operative.gin` and
    `data.json` are kept in `run.json`'s `history` with the epochs they
    trained, before the new ones replace them.

    Returns:
        The identity its checkpoints store: the run's id and the
        fingerprints of its configuration and data.
    """
    record = read_json(path(logdir, RUN_FILE)) if resuming else {}
    record.setdefault("run_id", uuid.uuid4().hex)
    record.setdefault("history", [])
    if changed:
        earlier = {"epochs": epoch or 0}
        for name in (REQUESTED_CONFIG_FILE, OPERATIVE_CONFIG_FILE):
            if os.path.isfile(path(logdir, name)):
                with open(path(logdir, name)) as f:
                    earlier[name] = f.read()
        earlier[DATA_FILE] = read_json(path(logdir, DATA_FILE))
        record["history"].append(earlier)
    write_json_atomic(path(logdir, RUN_FILE), record)
    _write_text(path(logdir, REQUESTED_CONFIG_FILE), config)
    write_json_atomic(path(logdir, DATA_FILE), data)
    return {
        "run_id": record["run_id"],
        "config": config_fingerprint(config),
        "data": data_fingerprint(data),
    }


def _bindings(config: str) -> list[str]:
    """The binding lines of a gin config string (no comments or blanks)."""
    lines = (line.rstrip() for line in config.splitlines())
    return sorted(line for line in lines if line and not line.startswith("#"))


@contextlib.contextmanager
def lock(logdir: str, start: Start | None = None):
    """Holds the run folder's lock: one run at a time per folder.

    An exclusive `flock` on `<logdir>/.lock`, which holds the owner's
    process id. The operating system releases it when the process ends,
    however it ends, so a killed run never leaves the folder locked.
    Creates the folder if needed; with `start` (from `removed_on_error`)
    it notes the folders it made and that the lock is held.

    Raises:
        RunFolderError: another live process holds the lock.
    """
    lock_path = path(logdir, LOCK_FILE)
    for _ in range(_LOCK_TRIES):
        _make_folders(logdir, start)
        try:
            # Held while the run lives, hence no `with`.
            handle = open(lock_path, "a+")  # noqa: SIM115
        except FileNotFoundError:
            continue  # a refused start removed its folder just now
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            owner = handle.read().strip() or "unknown"
            handle.close()
            raise RunFolderError(
                f"{logdir} is in use by another tfadv run (process {owner}); "
                "two runs on one folder would overwrite each other. Wait for "
                "it to finish, or pass another --logdir."
            ) from None
        if _same_file(handle, lock_path):
            break
        # The file was removed (with its folder) between the open and the
        # lock: this lock guards nothing; lock the folder's new file.
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()
    else:
        raise RunFolderError(
            f"{logdir} was removed {_LOCK_TRIES} times while this run tried "
            "to lock it; another process is deleting it. Pass another "
            "--logdir."
        )
    if start is not None:
        start.folder = os.path.abspath(logdir)
        start.locked = True
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield
    finally:
        if start is not None:
            start.locked = False
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


_LOCK_TRIES = 5


def _same_file(handle, file_path: str) -> bool:
    """Whether the open `handle` is still the file at `file_path`."""
    try:
        on_disk = os.stat(file_path)
    except FileNotFoundError:
        return False
    held = os.fstat(handle.fileno())
    return (on_disk.st_dev, on_disk.st_ino) == (held.st_dev, held.st_ino)


def write_json_atomic(file_path: str, payload) -> None:
    """Writes `payload` as JSON via a temporary file and a rename."""
    tmp = file_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2)
    os.replace(tmp, file_path)


def read_json(file_path: str, *, remedy: str | None = None) -> dict:
    """The JSON object in `file_path`, or {} if there is none.

    Args:
        file_path: the file.
        remedy: what to do about a broken file, for the error message.

    Raises:
        RunFolderError: the file is not a JSON object (e.g. truncated).
    """
    if not os.path.isfile(file_path):
        return {}
    with open(file_path) as f:
        text = f.read()
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as e:
        remedy = remedy or (
            "restore it from the run (or a copy) or pass the values it "
            "would give explicitly (e.g. --epsilon)."
        )
        raise RunFolderError(
            f"{file_path} is not valid JSON ({e.msg}, line {e.lineno} "
            f"column {e.colno}; {len(text)} bytes): it is truncated or was "
            f"edited. tfadv writes it whole or not at all, so {remedy}"
        ) from None
    if not isinstance(payload, dict):
        raise RunFolderError(
            f"{file_path} holds a JSON {type(payload).__name__}, expected "
            "an object of a run's results."
        )
    return payload


class GinConfigWriter(keras.callbacks.Callback):
    """Writes `config.operative.gin` and a TensorBoard text summary.

    The operative config (the values gin actually used) is complete once
    everything is built; it is written once, after the first training batch,
    as t5x and multi_representation_adversary do.

    Args:
        logdir: the run folder.
    """

    def __init__(self, logdir: str):
        super().__init__()
        self.logdir = logdir
        self._written = False

    def on_train_batch_end(self, batch, logs=None):
        if self._written:
            return
        self._written = True
        config = gin.operative_config_str()
        with open(path(self.logdir, OPERATIVE_CONFIG_FILE), "w") as f:
            f.write(config)
        writer = tf.summary.create_file_writer(path(self.logdir, TRAIN_EVENTS))
        with writer.as_default():
            # Markdown code block keeps gin's indentation in TensorBoard.
            text = "\n".join("    " + line for line in config.splitlines())
            tf.summary.text("gin/operative_config", text, step=0)
        writer.close()


class ResumableCheckpoint(keras.callbacks.BackupAndRestore):
    """`BackupAndRestore` that keeps, writes atomically and never NaNs.

    The checkpoint (weights, optimizer state, epoch) stays in the run folder
    after training, and an epoch whose logs hold a non-finite loss is not
    saved, so the last good state survives a divergence.

    Writes are atomic: the weights go to a file beside the checkpoint, which
    then replaces it with one `os.replace`, so a process killed while
    writing leaves the previous checkpoint whole. The epoch the weights
    belong to is stored inside the weights file (an HDF5 attribute) as well
    as in Keras's `training_metadata.json`; on resume the file's own epoch
    wins, so a kill between the two writes cannot pair new weights with an
    old epoch.

    The same file keeps what `save_weights` leaves out and a resume needs
    to continue exactly: the model's random-number state (every
    `keras.random.SeedGenerator`, e.g. a method's attack seeds) and the
    logs of every finished epoch (`history`, which therefore covers the
    epochs before a resume too), and the run it belongs to.

    Args:
        logdir: the run folder (the checkpoint goes to its `checkpoint/`).
        identity: the run's id and the fingerprints of its configuration
            and data (`record_start`), which `check_checkpoint` compares.
        states: objects whose `checkpoint_variables()` (a dict of unique
            name to variable) the checkpoint saves and restores too (the
            weight average and the kept best state of `tfadv.recipes`);
            put their callbacks before this one, so that what they change
            at an epoch's end is in that epoch's checkpoint.
        guard: a `tfadv.callbacks.DivergenceGuard` placed before this
            callback; an epoch it found diverged is not saved.
    """

    EPOCH_ATTRIBUTE = "tfadv_epoch"
    HISTORY_ATTRIBUTE = "tfadv_history"
    RUN_ATTRIBUTE = "tfadv_run"
    STATE_GROUP = "tfadv_state"
    INCOMING = "incoming.weights.h5"

    def __init__(
        self,
        logdir: str,
        identity: dict | None = None,
        states=(),
        *,
        guard=None,
    ):
        super().__init__(
            path(logdir, CHECKPOINT_DIR),
            save_freq="epoch",
            delete_checkpoint=False,
        )
        self.history = []  # one dict of floats per finished epoch
        # The run the checkpoint belongs to (`record_start`), stored with
        # the weights so that `check_checkpoint` can tie them to it.
        self.identity = identity
        self.states = list(states)
        # A `DivergenceGuard` placed before this callback: an epoch it
        # found diverged (e.g. a finite loss of 1e27) is not saved.
        self.guard = guard

    def on_epoch_end(self, epoch, logs=None):
        for name in ("loss", "val_loss"):  # diverged weights are not kept
            value = (logs or {}).get(name)
            if value is not None and not math.isfinite(float(value)):
                return
        if getattr(self.guard, "diverged_epoch", None) is not None:
            return
        del self.history[epoch:]  # a redone epoch replaces its entry
        self.history.append(
            {name: float(value) for name, value in (logs or {}).items()}
        )
        super().on_epoch_end(epoch, logs)

    def on_train_begin(self, logs=None):
        # The weights file's own epoch is the truth (see the class doc).
        epoch = self.saved_epoch()
        if epoch is not None:
            write_json_atomic(
                self._training_metadata_path, {"epoch": epoch, "batch": 0}
            )
        super().on_train_begin(logs)
        if epoch is not None:
            self._restore_state()

    def saved_epoch(self) -> int | None:
        """The epoch stored in the checkpoint's weights file, if any."""
        if not os.path.isfile(self._weights_path):
            return None
        with h5py.File(self._weights_path, "r") as f:
            epoch = f.attrs.get(self.EPOCH_ATTRIBUTE)
        return None if epoch is None else int(epoch)

    def history_dict(self) -> dict:
        """`{name: [value per epoch]}`, as `keras.callbacks.History` has."""
        names = dict.fromkeys(k for logs in self.history for k in logs)
        return {
            name: [logs.get(name, math.nan) for logs in self.history]
            for name in names
        }

    def _extra_state(self) -> dict:
        """Variables a resume needs that `save_weights` does not write."""
        saved = {id(v) for v in self.model.weights}
        extra = {v.path: v for v in self.model.variables if id(v) not in saved}
        for state in self.states:
            extra.update(state.checkpoint_variables())
        return extra

    def _restore_state(self):
        with h5py.File(self._weights_path, "r") as f:
            history = f.attrs.get(self.HISTORY_ATTRIBUTE)
            self.history = json.loads(history) if history else []
            group = f.get(self.STATE_GROUP)
            if group is None:
                return
            for name, variable in self._extra_state().items():
                key = name.replace("/", "|")
                if key in group:
                    variable.assign(group[key][()])

    def _save_model(self):
        os.makedirs(self.backup_dir, exist_ok=True)
        incoming = os.path.join(self.backup_dir, self.INCOMING)
        self.model.save_weights(filepath=incoming, overwrite=True)
        with h5py.File(incoming, "a") as f:
            f.attrs[self.EPOCH_ATTRIBUTE] = self._current_epoch
            f.attrs[self.HISTORY_ATTRIBUTE] = json.dumps(self.history)
            if self.identity is not None:
                f.attrs[self.RUN_ATTRIBUTE] = json.dumps(self.identity)
            group = f.create_group(self.STATE_GROUP)
            for name, variable in self._extra_state().items():
                group[name.replace("/", "|")] = keras.ops.convert_to_numpy(
                    variable.value
                )
        os.replace(incoming, self._weights_path)
        write_json_atomic(
            self._training_metadata_path,
            {"epoch": self._current_epoch, "batch": self._last_batch_seen},
        )
