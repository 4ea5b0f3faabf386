"""Shared by the tests that drive `tfadv.train` or read the gin files.

Not a test module: `run_cli` runs `train.main` through its flags as a
user's command line does, `check_config` calls `experiment.check_config`
with small defaults, `SHIPPED` lists the runnable gin files and
`FRAGMENTS` the ones that are stacked or included, `write_idx` writes
MNIST-style IDX files. A module using `run_cli` calls
`flags.FLAGS.mark_as_parsed()` in its `setUpModule`.
"""

import glob
import gzip
import os

import gin
import numpy as np
from absl.testing import flagsaver

from tfadv import experiment
from tfadv import train

GIN_DIR = train.GIN_DIR
# Included or stacked pieces, not runnable on their own.
FRAGMENT_DIRS = (
    "data/",
    "testing/",
    "models/",
    "eval/",
    "experiments/common/",
    "recipes/",
)
ALL_GIN_FILES = sorted(
    os.path.relpath(p, GIN_DIR)
    for p in glob.glob(os.path.join(GIN_DIR, "**", "*.gin"), recursive=True)
)
SHIPPED = [f for f in ALL_GIN_FILES if not f.startswith(FRAGMENT_DIRS)]
FRAGMENTS = [f for f in ALL_GIN_FILES if f.startswith(FRAGMENT_DIRS)]


def run_cli(logdir, *gin_files, bindings=(), **extra):
    """Drives train.main through its flags, as a user's command line does."""
    gin.clear_config()  # Each command line starts from a fresh process.
    with flagsaver.flagsaver(
        gin_file=list(gin_files),
        gin_bindings=list(bindings),
        logdir=logdir,
        **extra,
    ):
        train.main(["tfadv.train"])


def check_config(**overrides):
    """`experiment.check_config` of a 1-epoch run, final suite "quick"."""
    kwargs = dict(
        epsilon=0.1,
        epochs=1,
        mixed_precision=None,
        final_suite="quick",
        eval_attack=None,
    )
    return experiment.check_config(**{**kwargs, **overrides})


def write_idx(folder, prefix, images, labels):
    """Writes `<prefix>-{images-idx3,labels-idx1}-ubyte.gz` in `folder`."""
    os.makedirs(folder, exist_ok=True)
    n, h, w = images.shape
    header = np.array([2051, n, h, w], ">i4").tobytes()
    with gzip.open(
        os.path.join(folder, f"{prefix}-images-idx3-ubyte.gz"), "wb"
    ) as f:
        f.write(header + images.astype(np.uint8).tobytes())
    header = np.array([2049, n], ">i4").tobytes()
    with gzip.open(
        os.path.join(folder, f"{prefix}-labels-idx1-ubyte.gz"), "wb"
    ) as f:
        f.write(header + labels.astype(np.uint8).tobytes())


def folder_is_empty_or_absent(logdir) -> bool:
    """True when a refused run left nothing but possibly an empty folder."""
    return not os.path.exists(logdir) or not os.listdir(logdir)
