"""Training batches that carry each example's stable id.

A method that keeps state per training example (FGSM-PGI's prior
perturbations) must know which rows of its buffers a batch holds. The
id of an example is its index in the training set, fixed before any
shuffling, so that it follows the example through every epoch's order.

Batches in this mode are `({IMAGE: images, EXAMPLE_ID: ids}, labels)`
(or with sample weights as a third element): the id travels inside the
inputs because Keras reads a third tuple element as sample weights.
`tfadv.data.make_datasets(example_ids=True)` builds its training pipeline
this way; `add_example_ids` turns a user's own unbatched dataset into
one, when applied before shuffling.
"""

import tensorflow as tf

IMAGE = "image"
EXAMPLE_ID = "example_id"

# What the error says a batch in this mode looks like.
_ACCEPTED = (
    f"inputs given as a dict {{{IMAGE!r}: images, {EXAMPLE_ID!r}: ids}}, "
    "where ids are integer indices into the training set, fixed before "
    "shuffling (0 <= id < the number of training examples)"
)


def carries_ids(inputs) -> bool:
    """Whether `inputs` (a batch's x, or its element spec) holds ids."""
    return isinstance(inputs, dict) and set(inputs) == {IMAGE, EXAMPLE_ID}


def attach(images, ids) -> dict:
    """The inputs of a batch with ids: `{IMAGE: images, EXAMPLE_ID: ids}`."""
    return {IMAGE: images, EXAMPLE_ID: ids}


def images_of(inputs):
    """The images of a batch's inputs, with or without ids."""
    if isinstance(inputs, dict) and IMAGE in inputs:
        return inputs[IMAGE]
    return inputs


def missing_ids_error(who: str, got) -> ValueError:
    """The one-paragraph refusal of training inputs without ids."""
    if isinstance(got, dict):
        described = f"a dict with keys {sorted(got)}"
    else:
        described = f"images without ids (a {type(got).__name__})"
    return ValueError(
        f"{who} keeps state per training example, so every training batch "
        f"must say which examples it holds: it takes {_ACCEPTED}; got "
        f"{described}. tfadv.train does this by itself; in Python build "
        "the data with tfadv.data.make_datasets(..., example_ids=True), or "
        "apply tfadv.data.add_example_ids to your unbatched (image, label) "
        "dataset before shuffling and batching it."
    )


def split(inputs, *, who: str):
    """`(images, ids)` of a batch's inputs; ids as int32 of shape (batch,).

    Raises:
        ValueError: the inputs carry no ids, or ids of another shape.
    """
    if not carries_ids(inputs):
        raise missing_ids_error(who, inputs)
    images = tf.convert_to_tensor(inputs[IMAGE])
    ids = tf.convert_to_tensor(inputs[EXAMPLE_ID])
    if not ids.dtype.is_integer:
        raise ValueError(
            f"{who} takes {_ACCEPTED}; got ids of type {ids.dtype.name}."
        )
    if ids.shape.rank is not None and ids.shape.rank != 1:
        raise ValueError(
            f"{who} takes {_ACCEPTED}: one id per example, shape (batch,); "
            f"got ids of shape {tuple(ids.shape)}."
        )
    return images, tf.cast(ids, tf.int32)


def require(dataset: tf.data.Dataset, *, who: str) -> None:
    """Refuses, before training, a training dataset whose batches lack ids.

    Raises:
        ValueError: the dataset's inputs are not `{IMAGE, EXAMPLE_ID}`.
    """
    spec = dataset.element_spec
    inputs = spec[0] if isinstance(spec, tuple) else spec
    if not carries_ids(inputs):
        raise missing_ids_error(who, inputs)


def add_example_ids(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """Gives each element of an unbatched dataset its index as its id.

    Apply it to the training set in its stored order, before `shuffle`,
    `batch` and augmentation, so that an example keeps its id in every
    epoch:

        train = tfadv.data.add_example_ids(
            tf.data.Dataset.from_tensor_slices((images, labels)))
        train = train.shuffle(len(images)).batch(128, drop_remainder=True)

    Args:
        dataset: elements `(image, label)` or `(image, label, weight)`.

    Returns:
        A dataset of `({IMAGE: image, EXAMPLE_ID: index}, label[, weight])`.

    Raises:
        ValueError: elements of another structure.
    """
    spec = dataset.element_spec
    if not isinstance(spec, tuple) or len(spec) not in (2, 3):
        raise ValueError(
            "add_example_ids takes an unbatched dataset of (image, label) "
            f"or (image, label, sample_weight) elements; got {spec}."
        )

    def with_id(index, element):
        return (attach(element[0], index), *element[1:])

    return dataset.enumerate().map(with_id)
