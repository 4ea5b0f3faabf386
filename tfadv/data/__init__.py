"""Named datasets as `tf.data` pipelines in [0, 1] pixel space.

Public API:

- `make_datasets`: pipelines plus `DatasetInfo` for a named dataset.
- `load_arrays`, `check_arrays`: raw NumPy access and validation.
- `random_crop_flip`: the CIFAR crop+flip augmentation on batches.
- `example_ids`, `add_example_ids`: training batches that carry each
  example's stable id (for methods with per-example state, FGSM-PGI).
- `DataNotFoundError`, `UnknownDatasetError`: raised when no source works.
"""

from tfadv.data import augment
from tfadv.data import datasets
from tfadv.data import example_ids
from tfadv.data import sources
from tfadv.data.augment import random_crop_flip
from tfadv.data.datasets import DatasetInfo
from tfadv.data.datasets import Datasets
from tfadv.data.datasets import channel_stats
from tfadv.data.datasets import make_datasets
from tfadv.data.example_ids import add_example_ids
from tfadv.data.sources import CLASS_NAMES
from tfadv.data.sources import DATA_DIR_ENV_VAR
from tfadv.data.sources import KNOWN_NAMES
from tfadv.data.sources import WELL_KNOWN_DIRS
from tfadv.data.sources import DataNotFoundError
from tfadv.data.sources import IDXFormatError
from tfadv.data.sources import UnknownDatasetError
from tfadv.data.sources import check_arrays
from tfadv.data.sources import load_arrays
from tfadv.data.sources import read_idx

__all__ = [
    "CLASS_NAMES",
    "DATA_DIR_ENV_VAR",
    "KNOWN_NAMES",
    "WELL_KNOWN_DIRS",
    "DataNotFoundError",
    "DatasetInfo",
    "Datasets",
    "IDXFormatError",
    "UnknownDatasetError",
    "add_example_ids",
    "augment",
    "channel_stats",
    "check_arrays",
    "datasets",
    "example_ids",
    "load_arrays",
    "make_datasets",
    "random_crop_flip",
    "read_idx",
    "sources",
]
