"""Named datasets as `tf.data` pipelines in [0, 1] pixel space.

`make_datasets` is the one entry point: it finds the data
(`tfadv.data.sources`), checks it, and returns training, validation and
test pipelines plus a `DatasetInfo`. Every pipeline yields float32 images
[B, H, W, C] in [0, 1] and int32 labels [B]; normalisation belongs inside
the classifier (the pixel-space contract; see the README).

Example:
    data = make_datasets(name="fashion_mnist", batch_size=128)
    method.fit(data.train, validation_data=data.validation, epochs=10)
    method.evaluate(data.test)
"""

import dataclasses
import functools
import hashlib
import numbers

import gin
import keras
import numpy as np
import tensorflow as tf
from absl import logging

from tfadv.data import augment as augment_lib
from tfadv.data import example_ids as example_ids_lib
from tfadv.data import sources

# Images per chunk when computing channel statistics: bounds the float32
# temporary to a few MB instead of a float64 copy of the whole split.
_STATS_CHUNK = 4096

# Datasets whose images must not be mirrored (digits change meaning).
_NO_FLIP = frozenset({"svhn_cropped", "svhn", "mnist", "kmnist", "emnist"})

# Image shape that gets crop+flip augmentation by default (CIFAR, SVHN).
_AUGMENTED_SHAPE = (32, 32, 3)

_CROP_PADDING = 4  # pixels, as `transforms.RandomCrop(32, padding=4)`.


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a pipeline holds and where it came from.

    Attributes:
        name: canonical dataset name, e.g. "fashion_mnist" (the basename
            when the dataset was given as a directory).
        num_classes: number of classes; labels lie in [0, num_classes).
        image_shape: (H, W, C).
        mean: per-channel mean in [0, 1] pixel units over the training
            examples used.
        std: per-channel standard deviation, same units.
        source: human-readable description of where the data came from.
        num_train: examples of the train split used for training.
        num_test: examples the `test` pipeline yields.
        num_holdout: training examples held out from training (the last
            ones of the train split; see `make_datasets`), 0 for none.
        content: a fingerprint of the examples used (`content_fingerprint`
            of the training, held-out, validation and test images and
            labels), which
            a resumed run compares with the one it started with.
    """

    name: str
    num_classes: int
    image_shape: tuple
    mean: tuple
    std: tuple
    source: str
    num_train: int
    num_test: int
    num_holdout: int = 0
    content: str = ""


# Arrays above this many bytes are fingerprinted from a strided sample of
# their examples (a full hash of CIFAR-10 takes ~0.2 s; of a large data
# set it would take minutes at every start).
_FULL_HASH_BYTES = 1 << 28


def content_fingerprint(*arrays: np.ndarray) -> str:
    """A SHA-256 of the arrays' shapes, dtypes and values (hex, 16 digits).

    Arrays up to 256 MiB are hashed whole; a larger one by every k-th
    example along its first axis (k the smallest stride that brings it
    under 256 MiB, always including the first and last example), so a
    change to a skipped example of a large array goes unseen.
    """
    digest = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        stride = -(-array.nbytes // _FULL_HASH_BYTES) if array.size else 1
        if stride > 1:
            array = np.ascontiguousarray(
                np.concatenate([array[::stride], array[-1:]])
            )
        if array.size:  # (no held-out examples: an empty array)
            digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class Datasets:
    """The pipelines of one experiment.

    Attributes:
        train: shuffled (a new order each epoch, a function of the seed
            and the epoch number), batched with `drop_remainder=True`,
            augmented if requested, prefetched; with `example_ids`, its
            inputs are `{"image": images, "example_id": ids}`. None when
            built for evaluation only (`training=False`).
        validation: the first `validation_examples` examples of the test
            split in stored order, batched without `drop_remainder`; None
            when `validation_examples == 0`. It overlaps `test`: it is a
            cheap monitor during training, not a held-out split.
        test: the first `eval_examples` examples of the test split in stored
            order, batched with `eval_batch_size`, not shuffled.
        info: a `DatasetInfo`.
        steps_per_epoch: `num_train // batch_size`.
        order: the epoch counter `train` reads when a pass over it begins
            (see `order_callback`).
        holdout: the examples held out from the train split
            (`holdout_examples`), in stored order, batched like `test`,
            never augmented; None when none are held out. Training never
            sees them: they choose between epochs (`tfadv.recipes`).
    """

    train: tf.data.Dataset | None
    validation: tf.data.Dataset | None
    test: tf.data.Dataset
    info: DatasetInfo
    steps_per_epoch: int
    order: "EpochOrder | None" = None
    holdout: tf.data.Dataset | None = None

    def order_callback(self) -> keras.callbacks.Callback:
        """The callback that tells `train` which epoch `fit` is in.

        With it, epoch e's order and augmentation depend only on the seed
        and e, so a run resumed at epoch e (`BackupAndRestore`) sees the
        batches the uninterrupted run saw; without it each pass over
        `train` takes the next epoch number.

        Raises:
            ValueError: these datasets were made without an epoch order
                (`order=None`: a pipeline not made by `make_datasets`).
        """
        if self.order is None:
            raise ValueError(
                "These Datasets have no epoch order (order=None), so no "
                "callback can set which epoch train reads. Make them with "
                "tfadv.data.make_datasets, whose training pipeline follows "
                "the epoch the callback sets; with your own tf.data "
                "pipeline, seed its shuffle by epoch yourself, or use "
                "keras.callbacks.BackupAndRestore without this callback."
            )
        return _OrderCallback(self.order)


def _shard_by_data() -> tf.data.Options:
    # The pipelines read arrays in memory, not files: a multi-worker run
    # splits each global batch between the workers (every worker computes
    # the same seeded pipeline and keeps its share), where the default
    # policy would look for one file per worker and fail.
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA
    )
    return options


_SHARD_BY_DATA = _shard_by_data()


def channel_stats(images: np.ndarray) -> tuple[tuple, tuple]:
    """Per-channel mean and standard deviation in [0, 1] pixel units.

    Args:
        images: [N, H, W, C] uint8 (divided by 255) or float images.

    Returns:
        `(mean, std)`, tuples of C Python floats.
    """
    channels = images.shape[-1]
    total = np.zeros(channels, np.float64)
    total_sq = np.zeros(channels, np.float64)
    scale = 255.0 if images.dtype == np.uint8 else 1.0
    for start in range(0, len(images), _STATS_CHUNK):
        chunk = images[start : start + _STATS_CHUNK].astype(np.float32)
        chunk = chunk.reshape(-1, channels) / np.float32(scale)
        total += chunk.sum(axis=0, dtype=np.float64)
        total_sq += np.square(chunk).sum(axis=0, dtype=np.float64)
    count = images.size // channels
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - np.square(mean), 0.0))
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def _to_pixels(images: tf.Tensor) -> tf.Tensor:
    if images.dtype == tf.uint8:
        return tf.cast(images, tf.float32) / 255.0
    return tf.cast(images, tf.float32)


class EpochOrder:
    """The epoch number the next pass over a training pipeline takes.

    Each pass (each new iterator) takes `next_epoch` and advances it;
    `set_epoch` fixes the number of the next pass, which is how a resumed
    run starts at its epoch's order.
    """

    def __init__(self):
        self.next_epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.next_epoch = int(epoch)

    def take(self) -> int:
        epoch = self.next_epoch
        self.next_epoch += 1
        return epoch


class _OrderCallback(keras.callbacks.Callback):
    def __init__(self, order: EpochOrder):
        super().__init__()
        self.order = order

    def on_epoch_begin(self, epoch, logs=None):
        # Keras opens the epoch's iterator after `on_epoch_begin`.
        self.order.set_epoch(epoch)


def _training_pipeline(
    images,
    labels,
    order,
    *,
    batch_size,
    steps,
    seed,
    augment_fn,
    with_ids=False,
) -> tf.data.Dataset:
    """Batches of (images, labels) whose order is a function of the epoch.

    Epoch e uses the permutation `stateless_shuffle(range(n), (seed, e))`
    and, when `augment_fn` is given, the stateless seed
    `(seed + 1, e * steps + b)` for its batch b: no state lives in the
    pipeline, so a new process reproduces any epoch. With `with_ids` the
    inputs are `{"image": images, "example_id": indices}`, the indices
    into the stored training set (`tfadv.data.example_ids`).
    """

    def epoch_number(_):
        # Read when each pass opens its iterator. Not `from_generator`:
        # TensorFlow's generator dataset op lowers glibc's M_TRIM_THRESHOLD
        # for the whole process ("Memory patch applied" in the log), which
        # pins the mmap threshold, so every large tensor is mmapped and
        # page-faulted afresh: it made a small-CNN PGD-AT step 1.5x slower.
        epoch = tf.py_function(order.take, [], tf.int64)
        return tf.ensure_shape(epoch, [])

    def one_epoch(epoch):
        permutation = tf.random.experimental.stateless_shuffle(
            tf.range(len(labels), dtype=tf.int64),
            seed=tf.stack([tf.constant(seed, tf.int64), epoch]),
        )
        batches = tf.reshape(permutation[: steps * batch_size], [steps, -1])
        batch_seeds = tf.stack(
            [
                tf.fill([steps], tf.constant(seed + 1, tf.int64)),
                epoch * steps + tf.range(steps, dtype=tf.int64),
            ],
            axis=1,
        )
        return tf.data.Dataset.from_tensor_slices((batches, batch_seeds))

    gather = _gather_fn(images, labels)

    def make_batch(indices, batch_seed):
        x, y = gather(indices)
        if augment_fn is not None:
            x = augment_fn(x, seed=batch_seed)
        if with_ids:
            return example_ids_lib.attach(x, indices), y
        return x, y

    epochs = tf.data.Dataset.from_tensors(tf.constant(0, tf.int64)).map(
        epoch_number
    )
    return (
        epochs.flat_map(one_epoch)
        .map(make_batch, num_parallel_calls=tf.data.AUTOTUNE)
        .apply(tf.data.experimental.assert_cardinality(steps))
    )


def _gather_fn(images: tf.Tensor, labels: tf.Tensor):
    def gather(indices):
        return _to_pixels(tf.gather(images, indices)), tf.gather(
            labels, indices
        )

    return gather


def _check_positive(name: str, value, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Integral)
        or value <= 0
    ):
        accepted = "a positive integer" + (" or None" if allow_none else "")
        raise ValueError(f"{name}={value!r}; expected {accepted}.")


def _clamp(name: str, value: int | None, available: int, split: str) -> int:
    if value is None:
        return available
    if value > available:
        logging.warning(
            "%s=%d exceeds the %d examples of the %s split; using %d.",
            name,
            value,
            available,
            split,
            available,
        )
        return available
    return value


# The smallest held-out split: below it one example moves the selection
# score by more than 2 %.
MIN_HOLDOUT_EXAMPLES = 50


def _check_count(name: str, value, zero_means: str) -> None:
    """Refuses anything but a whole number of examples >= 0."""
    whole = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not whole or value < 0:
        raise ValueError(
            f"{name}={value!r}; expected an integer >= 0 (0 {zero_means})."
        )


def _holdout_size(holdout_examples, available: int) -> int:
    """Checks `holdout_examples` against the train split's size."""
    _check_count("holdout_examples", holdout_examples, "holds nothing out")
    if holdout_examples == 0:
        return 0
    if holdout_examples >= available:
        raise ValueError(
            f"holdout_examples={holdout_examples} holds out the whole train "
            f"split ({available} examples), leaving nothing to train on; "
            f"expected fewer than {available} (1000 is the references' "
            "choice on CIFAR-10)."
        )
    if holdout_examples < MIN_HOLDOUT_EXAMPLES:
        raise ValueError(
            f"holdout_examples={holdout_examples} is too small to choose "
            "between epochs: one example would move the held-out accuracy "
            f"by {100 / holdout_examples:.0f} %. Expected 0 (none) or at "
            f"least {MIN_HOLDOUT_EXAMPLES} (1000 is the references' choice "
            "on CIFAR-10)."
        )
    return int(holdout_examples)


@gin.register
def make_datasets(
    *,
    name: str = "fashion_mnist",
    data_dir: str | None = None,
    batch_size: int = 128,
    eval_batch_size: int | None = None,
    train_examples: int | None = None,
    validation_examples: int = 1000,
    eval_examples: int | None = None,
    augment: bool | None = None,
    seed: int = 0,
    example_ids: bool = False,
    holdout_examples: int = 0,
    training: bool = True,
) -> Datasets:
    """Builds the train, validation and test pipelines of a named dataset.

    Sources are tried in order (explicit `data_dir` or `TFADV_DATA_DIR`,
    well-known local copies, tensorflow-datasets); see
    `tfadv.data.sources`.

    Args:
        name: `fashion_mnist`, `mnist`, `cifar10`, `cifar100`,
            `svhn_cropped`, any tensorflow-datasets name, or a directory of
            IDX files (the dataset is then named after the directory).
        data_dir: directory tried first (IDX files or a prepared tfds
            data_dir); defaults to the `TFADV_DATA_DIR` environment
            variable.
        batch_size: global training batch size.
        eval_batch_size: batch size of validation and test; defaults to
            `batch_size`.
        train_examples: use the first N examples of the train split; None
            uses all. Values above the split size are clamped (logged).
        validation_examples: the first N test examples form the validation
            pipeline; 0 means no validation pipeline.
        eval_examples: the first N test examples form the test pipeline;
            None uses all.
        augment: None chooses per dataset: random crop (4 pixels of zero
            padding) and horizontal flip for 32x32x3 images, without the
            flip for SVHN; nothing otherwise. True forces crop+flip (no
            flip for digit datasets: mnist, svhn); False disables it.
        seed: seed of the training order and of the augmentation
            (`_training_pipeline`). In a training run it is `run.seed`,
            which `tfadv.train` hands here; gin refuses
            `make_datasets.seed` (bind `run.seed`).
        example_ids: the training batches carry each example's index in
            the training set, as inputs `{"image": images, "example_id":
            ids}` (`tfadv.data.example_ids`), for methods that keep state
            per example (FGSM-PGI); `tfadv.train` turns it on for them.
            Validation and test batches stay `(images, labels)`.
        holdout_examples: hold out the last N examples of the train split
            (FastAT_Benchmark's split: the last 1000 of CIFAR-10's train
            images) as the `holdout` pipeline; training then uses the
            first `train_examples` of the others. 0 holds out nothing;
            otherwise at least `MIN_HOLDOUT_EXAMPLES`, and fewer than the
            split holds.
        training: False for evaluation only (`tfadv.evaluate`): no
            training pipeline (`train` is None, `steps_per_epoch` 0), and
            the log names only the test examples.

    Returns:
        A `Datasets`.

    Raises:
        ValueError: a bad argument, images outside [0, 1] or non-finite,
            labels outside [0, num_classes), or fewer training examples
            than `batch_size`.
        DataNotFoundError: no source could provide the data (the message
            lists every place tried and how to supply the data).
    """
    _check_positive("batch_size", batch_size)
    _check_positive("eval_batch_size", eval_batch_size, allow_none=True)
    _check_positive("train_examples", train_examples, allow_none=True)
    _check_positive("eval_examples", eval_examples, allow_none=True)
    _check_count(
        "validation_examples", validation_examples, "disables validation"
    )
    if augment not in (None, True, False):
        raise ValueError(f"augment={augment!r}; expected None, True or False.")
    if example_ids not in (True, False):
        raise ValueError(
            f"example_ids={example_ids!r}; expected True or False."
        )
    if training not in (True, False):
        raise ValueError(f"training={training!r}; expected True or False.")
    eval_batch_size = eval_batch_size or batch_size

    raw = sources.load_splits(name, data_dir=data_dir)
    train_images, train_labels = raw.images["train"], raw.labels["train"]
    num_holdout = _holdout_size(holdout_examples, len(train_images))
    kept = len(train_images) - num_holdout
    holdout_images = train_images[kept:]
    holdout_labels = train_labels[kept:]
    train_images, train_labels = train_images[:kept], train_labels[:kept]
    test_images, test_labels = raw.images["test"], raw.labels["test"]
    if raw.num_classes is not None:
        num_classes = raw.num_classes
    else:
        num_classes = int(train_labels.max()) + 1 if len(train_labels) else 0
        if raw.name in sources.MNIST_FAMILY:
            num_classes = 10  # labels beyond 9 are an error, not classes
    sources.check_arrays(train_images, train_labels, num_classes)
    sources.check_arrays(test_images, test_labels, num_classes)
    if train_images.shape[1:] != test_images.shape[1:]:
        raise ValueError(
            f"Train images have shape {train_images.shape[1:]} but test "
            f"images {test_images.shape[1:]}; expected the same (H, W, C)."
        )

    num_train = _clamp(
        "train_examples", train_examples, len(train_images), "train"
    )
    num_test = _clamp("eval_examples", eval_examples, len(test_images), "test")
    num_validation = _clamp(
        "validation_examples", validation_examples, len(test_images), "test"
    )
    steps_per_epoch = num_train // batch_size if training else 0
    if training and steps_per_epoch == 0:
        raise ValueError(
            f"batch_size={batch_size} exceeds the {num_train} training "
            f"examples of {raw.name!r}; expected batch_size <= {num_train} "
            "(training batches drop the remainder)."
        )
    train_images = train_images[:num_train]
    train_labels = train_labels[:num_train]
    mean, std = channel_stats(train_images)
    image_shape = tuple(int(d) for d in train_images.shape[1:])

    if augment is None:
        augment = image_shape == _AUGMENTED_SHAPE
    flip = raw.name not in _NO_FLIP

    # Keep the arrays on the host: under a GPU strategy scope they would
    # otherwise land in accelerator memory and be copied back for tf.data.
    with tf.device("/cpu:0"):
        train_x = tf.constant(train_images)
        train_y = tf.constant(train_labels.astype(np.int32))
        test_x = tf.constant(test_images[: max(num_test, num_validation)])
        test_y = tf.constant(
            test_labels[: max(num_test, num_validation)].astype(np.int32)
        )

    autotune = tf.data.AUTOTUNE
    order = EpochOrder()
    train = None
    if training:
        train = _training_pipeline(
            train_x,
            train_y,
            order,
            batch_size=batch_size,
            steps=steps_per_epoch,
            seed=seed,
            augment_fn=(
                functools.partial(
                    augment_lib.random_crop_flip, pad=_CROP_PADDING, flip=flip
                )
                if augment
                else None
            ),
            with_ids=bool(example_ids),
        )
        train = train.prefetch(autotune).with_options(_SHARD_BY_DATA)

    def ordered(count):
        return (
            tf.data.Dataset.range(count)
            .batch(eval_batch_size)
            .map(_gather_fn(test_x, test_y), num_parallel_calls=autotune)
            .prefetch(autotune)
            .with_options(_SHARD_BY_DATA)
        )

    validation = ordered(num_validation) if num_validation else None
    test = ordered(num_test)
    holdout = None
    if num_holdout:
        with tf.device("/cpu:0"):
            holdout_x = tf.constant(holdout_images)
            holdout_y = tf.constant(holdout_labels.astype(np.int32))
        holdout = (
            tf.data.Dataset.range(num_holdout)
            .batch(eval_batch_size)
            .map(_gather_fn(holdout_x, holdout_y), num_parallel_calls=autotune)
            .prefetch(autotune)
            .with_options(_SHARD_BY_DATA)
        )

    info = DatasetInfo(
        name=raw.name,
        num_classes=num_classes,
        image_shape=image_shape,
        mean=mean,
        std=std,
        source=raw.source,
        num_train=num_train,
        num_test=num_test,
        num_holdout=num_holdout,
        content=content_fingerprint(
            train_images,
            train_labels,
            holdout_images,
            holdout_labels,
            test_images[: max(num_test, num_validation)],
            test_labels[: max(num_test, num_validation)],
        ),
    )
    if not training:
        logging.info(
            "Dataset %s from %s: %d test examples (for evaluation only: no "
            "training pipeline), %d classes, shape %s.",
            info.name,
            info.source,
            num_test,
            num_classes,
            image_shape,
        )
    else:
        logging.info(
            "Dataset %s from %s: %d train examples (%d steps of %d), %d held "
            "out, %d validation, %d test, %d classes, shape %s, augmentation: "
            "%s.",
            info.name,
            info.source,
            num_train,
            steps_per_epoch,
            batch_size,
            num_holdout,
            num_validation,
            num_test,
            num_classes,
            image_shape,
            ("random crop and flip" if flip else "random crop")
            if augment
            else "none",
        )
    return Datasets(
        train=train,
        validation=validation,
        test=test,
        info=info,
        steps_per_epoch=steps_per_epoch,
        order=order,
        holdout=holdout,
    )
