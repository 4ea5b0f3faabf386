r"""Trains a method from gin files: `python -m tfadv.train --gin_file=yopo.gin`.

Gin files are found by bare name in `gin_configs/`; several `--gin_file`
flags stack in order (e.g. `--gin_file=pgd_at.gin
--gin_file=testing/tiny.gin`), and `--gin_bindings` override single values.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

import datetime  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402

from tfadv import gin_files  # noqa: E402

GIN_DIR = gin_files.GIN_DIR

_GIN_FILE = flags.DEFINE_multi_string(
    "gin_file", [], "Gin config files, by path or bare name in gin_configs/."
)
_GIN_BINDINGS = flags.DEFINE_multi_string(
    "gin_bindings", [], "Gin bindings, e.g. 'run.epochs = 3'."
)
_LOGDIR = flags.DEFINE_string(
    "logdir", None, "Run folder (default: runs/<first gin file>-<time>)."
)
_DATA_DIR = flags.DEFINE_string(
    "data_dir", None, "Explicit data directory (else TFADV_DATA_DIR, ...)."
)
_STRATEGY = flags.DEFINE_enum(
    "strategy",
    "default",
    ["default", "mirrored", "multi_worker"],
    "Distribution strategy.",
)
_DEVICES = flags.DEFINE_integer(
    "devices", None, "Devices for --strategy=mirrored (GPUs or logical CPUs)."
)
_DRY_RUN = flags.DEFINE_bool(
    "dry_run", False, "Parse the config and build everything, then stop."
)
_PROGRESS = flags.DEFINE_enum(
    "progress",
    "auto",
    ["auto", "bar", "epoch", "none"],
    "Console during training: Keras's progress bar, one line per epoch, "
    "nothing, or auto (a bar on a terminal, else one line per epoch).",
)
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    "allow_config_change",
    False,
    "Resume an interrupted run although its gin configuration changed.",
)


def parse_gin(gin_files_, gin_bindings) -> None:
    """Parses gin files (searched in gin_configs/) and bindings, strictly.

    Raises:
        ValueError: malformed gin, an unknown name or scope (see
            `tfadv.gin_files.parse`), or a binding of an argument of `run`
            that a flag sets.
    """
    try:
        gin_files.parse(gin_files_, gin_bindings)
    except ValueError as e:
        match = re.search(r"'run' has denylisted kwarg '(\w+)'", str(e))
        if not match:
            raise
        from tfadv import experiment

        name = match[1]
        flag = experiment.SET_BY_ENTRY_POINT[name]
        raise ValueError(
            f"run.{name} cannot be set in gin: the command line sets it, "
            f"and a binding would be ignored. Use {flag} instead and remove "
            "the binding."
        ) from None


def default_logdir(gin_files) -> str:
    """runs/<first gin file's stem>-<date>-<time>: never an existing run."""
    stem = "run"
    if gin_files:
        stem = os.path.splitext(os.path.basename(gin_files[0]))[0]
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return os.path.join("runs", f"{stem}-{stamp}")


def main(argv):
    """Parses gin, builds the strategy, trains, prints the final numbers."""
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not _GIN_FILE.value:
        raise app.UsageError("Give at least one --gin_file (e.g. yopo.gin).")
    from tfadv import distribute
    from tfadv import experiment

    distribute.log_tensorflow_once()
    logdir = _LOGDIR.value or default_logdir(_GIN_FILE.value)
    try:
        # The strategy first: logical CPU devices must exist before TF
        # starts.
        strategy = distribute.make_strategy(
            _STRATEGY.value, num_devices=_DEVICES.value
        )
        parse_gin(_GIN_FILE.value, _GIN_BINDINGS.value)
        results = experiment.run(
            logdir=logdir,
            strategy=strategy,
            data_dir=_DATA_DIR.value,
            dry_run=_DRY_RUN.value,
            allow_config_change=_ALLOW_CONFIG_CHANGE.value,
            progress=_PROGRESS.value,
        )
    except experiment.TrainingDivergedError as e:
        # Its message says where, what was kept and what to do; a traceback
        # would add nothing but noise.
        message = str(e).split("\n  In call to configurable")[0]
        sys.exit(f"tfadv.train: training diverged: {message}")
    except RuntimeError as e:
        match = re.search(
            r"Required bindings for `run` not provided in config: \[(.*)\]",
            str(e),
        )
        if not match:
            raise
        missing = ", ".join(
            f"run.{name.strip()}"
            for name in match[1].replace("'", "").split(",")
        )
        sys.exit(
            "tfadv.train: error: the gin files given "
            f"({', '.join(_GIN_FILE.value)}) bind no {missing}, which every "
            "run needs (an empty or partial file?). Start from a method "
            "file, e.g. --gin_file=pgd_at.gin (bare names come from "
            "gin_configs/), and stack others after it."
        )
    except (ValueError, TypeError, OSError) as e:
        if experiment.raised_in_training(e):
            raise  # a failure, not refused input: its traceback helps
        # Bad input: one paragraph and a non-zero exit, no traceback (gin
        # appends where the error was raised on a line of its own).
        message = str(e).split("\n  In call to configurable")[0]
        sys.exit(f"tfadv.train: error: {message}")
    if _DRY_RUN.value:
        print("Dry run: the config parsed and every object was built.")
        return
    print(experiment.format_results(results, logdir))


if __name__ == "__main__":
    logging.set_verbosity(logging.INFO)
    app.run(main)
