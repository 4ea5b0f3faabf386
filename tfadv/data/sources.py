"""Finding and reading raw image-classification data.

A dataset is named (`fashion_mnist`, `mnist`, `cifar10`, `cifar100`,
`svhn_cropped`, any tensorflow-datasets name) or given as a path to a
directory. Sources are tried in a fixed, logged order:

1. an explicit directory: the `data_dir` argument, else the `TFADV_DATA_DIR`
   environment variable. It may hold MNIST-style IDX files (directly or in a
   sub-folder named after the dataset) or be a prepared tensorflow-datasets
   data directory (read with `download=False`). When one is given, it is
   the only place tried: a directory that fails (missing, empty, truncated
   or corrupt files) is an error naming what is wrong, never silently
   replaced by another copy;
2. otherwise a well-known local copy (`WELL_KNOWN_DIRS`), e.g. the Debian
   package `dataset-fashion-mnist` at `/usr/share/datasets/fashion-mnist`;
3. then tensorflow-datasets, which downloads when the network allows.

When the name is a path, only that directory is tried. When nothing works a
`DataNotFoundError` names every place tried, why it failed and how to
supply the data.

Arrays are returned as stored: uint8 NHWC images (grayscale gets a channel
axis) and int64 labels. Conversion to float32 in [0, 1] happens in the
`tf.data` pipeline (`tfadv.data.datasets`), to keep host memory small.
"""

import dataclasses
import gzip
import os

import numpy as np
from absl import logging

# Environment variable naming an explicit data directory; the `data_dir`
# argument wins over it.
DATA_DIR_ENV_VAR = "TFADV_DATA_DIR"

# Names this library knows and tests; any other tensorflow-datasets name or
# a directory path is accepted too.
KNOWN_NAMES = ("fashion_mnist", "mnist", "cifar10", "cifar100", "svhn_cropped")

# Class names of the well-known datasets, by label (image grids show them).
CLASS_NAMES = {
    "fashion_mnist": (
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ),
    "mnist": tuple(str(digit) for digit in range(10)),
    "cifar10": (
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ),
}

# Datasets whose labels are the ten MNIST-style classes even when a small
# subset does not contain all of them.
MNIST_FAMILY = frozenset({"mnist", "fashion_mnist", "kmnist"})

# Canonical dataset name -> local directories holding IDX files, tried in
# order after the explicit directory. Extend this to add local mirrors.
WELL_KNOWN_DIRS = {
    # Debian/Ubuntu: `apt-get install dataset-fashion-mnist`.
    "fashion_mnist": ("/usr/share/datasets/fashion-mnist",),
    "mnist": ("/usr/share/datasets/mnist",),
}

SPLITS = ("train", "test")

# Split -> IDX file-name prefix, as in the original MNIST distribution.
_IDX_PREFIX = {"train": "train", "test": "t10k"}
_IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions.
_IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension.

# Examples per chunk when reading a tensorflow-datasets split into NumPy.
_TFDS_CHUNK = 10000


class DataNotFoundError(FileNotFoundError):
    """No source could provide the requested dataset."""


class UnknownDatasetError(DataNotFoundError, ValueError):
    """The dataset name is neither known here, nor to tfds, nor a directory.

    Subclasses both `DataNotFoundError` and `ValueError`, so either catches
    it.
    """


class IDXFormatError(ValueError):
    """An IDX file is malformed."""


@dataclasses.dataclass(frozen=True)
class RawSplits:
    """Arrays of several splits read from one source.

    Attributes:
        name: canonical dataset name.
        images: split name -> uint8 images, NHWC.
        labels: split name -> int64 labels, shape [N].
        source: human-readable description of where the data came from.
        num_classes: number of classes declared by the source (tfds), or
            None when the source does not declare it (IDX files).
    """

    name: str
    images: dict
    labels: dict
    source: str
    num_classes: int | None = None


def canonical_name(name: str) -> str:
    """Returns the dataset name used for look-ups and reports.

    Args:
        name: a dataset name or a directory path.

    Returns:
        The basename of a directory path, else the name in lower case with
        `-` replaced by `_` (so `fashion-mnist` means `fashion_mnist`).
    """
    if is_path(name):
        return os.path.basename(os.path.normpath(os.path.expanduser(name)))
    return name.strip().lower().replace("-", "_")


def is_path(name: str) -> bool:
    """Returns whether `name` designates a directory rather than a name.

    Absolute, `./`, `../` and `~` paths always do; a relative path with a
    `/` does when the directory exists (otherwise it is read as a tfds
    `name/config`). A bare word such as `mnist` is always a name.
    """
    if name.startswith(("/", ".", "~")):
        return True
    return os.sep in name and os.path.isdir(name)


def read_idx(path: str, *, expected_magic: int) -> np.ndarray:
    """Reads one IDX file of unsigned bytes (MNIST format), gzipped or not.

    Args:
        path: file path; files ending in `.gz` are decompressed.
        expected_magic: 2051 for image files, 2049 for label files.

    Returns:
        A uint8 array with the dimensions stored in the header.

    Raises:
        IDXFormatError: wrong magic number, truncated header or data, or
            trailing bytes.
    """
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise IDXFormatError(f"Cannot read IDX file {path!r}: {e}.") from e
    if len(data) < 4:
        raise IDXFormatError(
            f"IDX file {path!r} is {len(data)} bytes long, too short for "
            "the 4-byte magic number."
        )
    magic = int.from_bytes(data[:4], "big")
    if magic != expected_magic:
        raise IDXFormatError(
            f"IDX file {path!r} has magic number {magic}; expected "
            f"{expected_magic} ({_IDX_IMAGES_MAGIC} for images, "
            f"{_IDX_LABELS_MAGIC} for labels, unsigned bytes)."
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IDXFormatError(
            f"IDX file {path!r} is truncated: {len(data)} bytes, but the "
            f"header of {ndim} dimensions needs {header}."
        )
    dims = tuple(int(d) for d in np.frombuffer(data, ">u4", ndim, offset=4))
    size = int(np.prod(dims))
    if len(data) - header != size:
        raise IDXFormatError(
            f"IDX file {path!r} declares dimensions {dims} ({size} bytes of "
            f"data) but holds {len(data) - header} bytes of data."
        )
    return np.frombuffer(data, np.uint8, size, offset=header).reshape(dims)


def _find_file(directory: str, stem: str) -> str | None:
    for filename in (stem, stem + ".gz"):
        path = os.path.join(directory, filename)
        if os.path.isfile(path):
            return path
    return None


def read_idx_directory(directory: str, split: str) -> tuple:
    """Reads one split of MNIST-style IDX files from a directory.

    Looks for `train-images-idx3-ubyte` and `train-labels-idx1-ubyte`
    (split "train") or `t10k-...` (split "test"), each optionally `.gz`.

    Args:
        directory: the directory holding the files.
        split: "train" or "test".

    Returns:
        `(images, labels)`: uint8 images [N, H, W, 1] and int64 labels [N].

    Raises:
        FileNotFoundError: a file is missing.
        IDXFormatError: a file is malformed or the counts disagree.
    """
    prefix = _IDX_PREFIX[split]
    paths = []
    for stem in (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"):
        path = _find_file(directory, stem)
        if path is None:
            raise FileNotFoundError(f"no {stem}[.gz] in {directory}")
        paths.append(path)
    images = read_idx(paths[0], expected_magic=_IDX_IMAGES_MAGIC)
    labels = read_idx(paths[1], expected_magic=_IDX_LABELS_MAGIC)
    if len(images) != len(labels):
        raise IDXFormatError(
            f"{paths[0]!r} holds {len(images)} images but {paths[1]!r} holds "
            f"{len(labels)} labels; they must match."
        )
    return images[..., np.newaxis], labels.astype(np.int64)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    message = text[0] if text else ""
    return f"{type(error).__name__}: {message}"[:300]


@dataclasses.dataclass(frozen=True)
class _Attempt:
    """One place to look for data: a description and a loader."""

    description: str
    load: object  # Callable[[tuple[str, ...]], RawSplits]


def _idx_attempt(name: str, directory: str) -> _Attempt:
    def load(splits):
        if not os.path.isdir(directory):
            raise FileNotFoundError(f"directory {directory} does not exist")
        images, labels = {}, {}
        for split in splits:
            images[split], labels[split] = read_idx_directory(directory, split)
        return RawSplits(
            name=name,
            images=images,
            labels=labels,
            source=f"IDX files in {directory}",
        )

    return _Attempt(f"IDX files in {directory}", load)


def _tfds_to_numpy(dataset) -> tuple:
    # Read in chunks rather than with `batch_size=-1`: that option crashes
    # the process (std::length_error) under `tfds.testing.mock_data`, and
    # chunks keep the peak memory at one copy of the split.
    images, labels = [], []
    for x, y in dataset.batch(_TFDS_CHUNK).as_numpy_iterator():
        images.append(x)
        labels.append(y)
    if not images:
        raise DataNotFoundError("the split is empty")
    images = np.concatenate(images)
    if images.ndim == 3:
        images = images[..., np.newaxis]
    return images, np.concatenate(labels).astype(np.int64)


def _tfds_attempt(name: str, data_dir: str | None) -> _Attempt:
    if data_dir is None:
        description = "tensorflow-datasets (download allowed)"
    else:
        description = f"prepared tensorflow-datasets directory {data_dir}"

    def load(splits):
        import tensorflow_datasets as tfds  # Slow import; only when needed.

        images, labels, info = {}, {}, None
        for split in splits:
            dataset, info = tfds.load(
                name,
                split=split,
                as_supervised=True,
                data_dir=data_dir,
                download=data_dir is None,
                with_info=True,
            )
            images[split], labels[split] = _tfds_to_numpy(dataset)
        num_classes = None
        features = info.features if info is not None else {}
        if "label" in features:
            num_classes = getattr(features["label"], "num_classes", None)
            num_classes = None if num_classes is None else int(num_classes)
        where = data_dir or "its default data_dir"
        return RawSplits(
            name=name,
            images=images,
            labels=labels,
            source=f"tensorflow-datasets {name!r} ({where})",
            num_classes=num_classes,
        )

    return _Attempt(description, load)


def _attempts(name: str, data_dir: str | None) -> list:
    """The ordered list of places to try for `name`."""
    if is_path(name):
        directory = os.path.expanduser(name)
        return [_idx_attempt(canonical_name(name), directory)]
    name = canonical_name(name)
    attempts = []
    explicit = _explicit_dir(data_dir)
    if explicit:
        attempts.append(_idx_attempt(name, explicit))
        for sub in dict.fromkeys((name, name.replace("_", "-"))):
            attempts.append(_idx_attempt(name, os.path.join(explicit, sub)))
        attempts.append(_tfds_attempt(name, explicit))
        return attempts  # an explicit choice is never replaced
    for directory in WELL_KNOWN_DIRS.get(name, ()):
        attempts.append(_idx_attempt(name, directory))
    attempts.append(_tfds_attempt(name, None))
    return attempts


def _explicit_dir(data_dir: str | None) -> str | None:
    explicit = data_dir or os.environ.get(DATA_DIR_ENV_VAR) or None
    return os.path.expanduser(explicit) if explicit else None


def _tfds_knows(name: str) -> bool:
    try:
        import tensorflow_datasets as tfds

        tfds.builder_cls(name.split(":")[0].split("/")[0])
    except Exception:  # noqa: BLE001 - any failure means "not known".
        return False
    return True


def load_splits(
    name: str,
    *,
    splits: tuple = SPLITS,
    data_dir: str | None = None,
) -> RawSplits:
    """Loads several splits of a dataset, all from the first source that works.

    Args:
        name: dataset name or directory path (see module docstring).
        splits: which splits to read, from {"train", "test"}.
        data_dir: explicit directory tried first; defaults to the
            `TFADV_DATA_DIR` environment variable.

    Returns:
        A `RawSplits` holding the arrays of every requested split.

    Raises:
        ValueError: a split is not "train" or "test".
        UnknownDatasetError: no source worked and the name is not known.
        DataNotFoundError: no source worked.
    """
    for split in splits:
        if split not in SPLITS:
            raise ValueError(
                f"Unknown split {split!r}; accepted splits are {SPLITS}."
            )
    failures = []
    for attempt in _attempts(name, data_dir):
        logging.info("Data %r: trying %s.", name, attempt.description)
        try:
            raw = attempt.load(tuple(splits))
        except Exception as e:  # noqa: BLE001 - reported below.
            logging.info("Data %r: %s failed: %s", name, attempt.description, e)
            failures.append(f"{attempt.description} ({_first_line(e)})")
            continue
        logging.info("Data %r: loaded %s from %s.", name, splits, raw.source)
        return raw
    tried = "; ".join(f"[{i + 1}] {f}" for i, f in enumerate(failures))
    how = (
        f"To supply the data, pass --data_dir (or set {DATA_DIR_ENV_VAR}) to a "
        "directory holding MNIST-style IDX files (train-images-idx3-ubyte, "
        "train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
        "t10k-labels-idx1-ubyte, optionally .gz, directly or in a "
        "sub-folder named after the dataset) or a prepared "
        "tensorflow-datasets data_dir; for Fashion-MNIST run "
        "`apt-get install dataset-fashion-mnist`; or allow network access "
        "so that tensorflow-datasets can download it."
    )
    canonical = canonical_name(name)
    if (
        not is_path(name)
        and canonical not in KNOWN_NAMES
        and not _tfds_knows(canonical)
    ):
        raise UnknownDatasetError(
            f"Unknown dataset {name!r}: it is not one of "
            f"{', '.join(KNOWN_NAMES)}, not a tensorflow-datasets name, and "
            f"not an existing directory. Places tried: {tried}. Accepted: "
            "one of those names, any tensorflow-datasets name, or a path to "
            f"a directory of IDX files. {how}"
        )
    explicit = _explicit_dir(data_dir)
    if explicit and not is_path(name):
        given = (
            f"--data_dir={data_dir}"
            if data_dir
            else f"{DATA_DIR_ENV_VAR}={explicit}"
        )
        raise DataNotFoundError(
            f"The data directory you gave ({given}) does not provide "
            f"{name!r}: {tried}. tfadv does not fall back to another copy "
            "when a directory is named. Accepted: a directory holding the "
            "four MNIST-style IDX files of the dataset (train-images-idx3-"
            "ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
            "t10k-labels-idx1-ubyte, optionally .gz, directly or in a "
            "sub-folder named after the dataset) or a prepared "
            "tensorflow-datasets data_dir. Fix the directory, or give no "
            f"--data_dir (and unset {DATA_DIR_ENV_VAR}) to use the default "
            "sources."
        )
    raise DataNotFoundError(
        f"Could not find data for dataset {name!r} (splits {list(splits)}). "
        f"Places tried, in order: {tried}. {how}"
    )


def load_arrays(
    name: str, split: str, *, data_dir: str | None = None
) -> tuple[np.ndarray, np.ndarray, str]:
    """Loads one split of a dataset as NumPy arrays.

    Args:
        name: dataset name (`fashion_mnist`, `mnist`, `cifar10`, `cifar100`,
            `svhn_cropped`, any tfds name) or a directory path.
        split: "train" or "test".
        data_dir: explicit directory tried first; defaults to the
            `TFADV_DATA_DIR` environment variable.

    Returns:
        `(images, labels, source)`: uint8 images [N, H, W, C] (a channel
        axis is added for grayscale), int64 labels [N], and a description
        of where the data came from.

    Raises:
        DataNotFoundError: no source could provide the data.
    """
    raw = load_splits(name, splits=(split,), data_dir=data_dir)
    return raw.images[split], raw.labels[split], raw.source


def check_arrays(images, labels, num_classes: int) -> None:
    """Checks that arrays meet the pixel-space and label contracts.

    Args:
        images: NHWC images, uint8 (always valid) or floating point in
            [0, 1].
        labels: integer class indices, shape [N].
        num_classes: labels must lie in [0, num_classes).

    Raises:
        ValueError: naming the bad value and what is accepted.
    """
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.ndim != 4:
        raise ValueError(
            f"Images have rank {images.ndim} (shape {images.shape}); "
            "expected rank 4, [N, H, W, C]."
        )
    if labels.ndim != 1:
        raise ValueError(
            f"Labels have rank {labels.ndim} (shape {labels.shape}); "
            "expected rank 1, [N] integer class indices."
        )
    if len(images) != len(labels):
        raise ValueError(
            f"There are {len(images)} images but {len(labels)} labels; "
            "expected one label per image."
        )
    if len(labels) == 0:
        raise ValueError("The dataset has 0 examples; expected at least 1.")
    if num_classes < 1:
        raise ValueError(f"num_classes={num_classes}; expected at least 1.")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"Labels have dtype {labels.dtype}; expected integers in "
            f"[0, {num_classes})."
        )
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        bad = low if low < 0 else high
        raise ValueError(
            f"Label {bad} is outside the class range [0, {num_classes}) "
            f"(labels span [{low}, {high}]); expected integers in "
            f"[0, {num_classes})."
        )
    if images.dtype == np.uint8:
        return
    if not np.issubdtype(images.dtype, np.floating):
        raise ValueError(
            f"Images have dtype {images.dtype}; expected uint8 in [0, 255] "
            "or floating point in [0, 1]."
        )
    finite = np.isfinite(images)
    if not finite.all():
        bad = images[~finite].flat[0]
        raise ValueError(
            f"Images contain the non-finite value {bad}; expected finite "
            "floats in [0, 1]."
        )
    low, high = float(images.min()), float(images.max())
    if low < 0.0 or high > 1.0:
        bad = low if low < 0.0 else high
        raise ValueError(
            f"Image value {bad} is outside [0, 1] (images span [{low}, "
            f"{high}]); expected floats in [0, 1] (pixel space) or uint8."
        )
