"""State kept per training example: buffers with one row per example id.

A method that carries something from one epoch to the next for each
training example (FGSM-PGI's prior perturbation and its momentum) keeps
it in a `[num_examples, ...]` buffer whose row n belongs to the example
with id n (`tfadv.data.example_ids`). The buffers are non-trainable
weights of the trainer, so `save`, `save_weights` and the run's
checkpoint carry them and a resumed run continues from the same rows.

Under a distribution strategy every replica holds a whole copy of each
buffer (an `ON_READ` variable, `classifiers.per_replica_buffer`). A step
reads the rows of its own examples from its replica's copy, and writes
the rows of the WHOLE global batch, gathered from every replica, into
its copy: the copies therefore stay identical, although the next epoch
sends an example to another replica. A read outside the step (saving, an
epoch hook) takes the first replica's copy; an assignment there (a
restore, a reset) writes every copy.

Rows are read and written with sparse resource ops only: after a sparse
write, TensorFlow copies a variable in full on every dense read, which
for a buffer the size of the training set would cost more than the step.
"""

import keras
import tensorflow as tf

from tfadv.methods import classifiers


def buffer(num_examples: int, row_shape, name: str) -> keras.Variable:
    """A zero float32 buffer of `num_examples` rows, one copy per replica."""
    return classifiers.per_replica_buffer(
        (num_examples, *row_shape), "float32", name
    )


def read_rows(variable: keras.Variable, ids: tf.Tensor) -> tf.Tensor:
    """The rows `ids` of this replica's copy of `variable`."""
    return tf.raw_ops.ResourceGather(
        resource=variable.handle, indices=ids, dtype=variable.dtype
    )


def write_rows(variable: keras.Variable, ids, rows) -> tf.Operation:
    """Writes this replica's `rows` at `ids`, and every other replica's.

    With more than one replica, the ids and rows of all replicas are
    gathered first (in replica order, so the global batch's order), and
    every replica writes all of them into its own copy.
    """
    ids, rows = gather_replicas(ids), gather_replicas(rows)
    return tf.raw_ops.ResourceScatterUpdate(
        resource=variable.handle,
        indices=ids,
        updates=tf.cast(rows, variable.dtype),
    )


def gather_replicas(value: tf.Tensor) -> tf.Tensor:
    """`value` of every replica, concatenated on axis 0 (itself on one)."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return value
    return context.all_gather(value, axis=0)


def check_ids(ids: tf.Tensor, num_examples: int, *, who: str) -> tf.Tensor:
    """`ids` after asserting that they index a buffer of `num_examples`.

    Out-of-range ids would fail the gather on a CPU but read zeros and
    drop writes on a GPU, so the step checks them (not under XLA, which
    drops assertions; the caller decides).
    """
    checks = [
        tf.debugging.assert_non_negative(
            ids, message=f"{who}: an example id is negative."
        ),
        tf.debugging.assert_less(
            ids,
            tf.constant(num_examples, ids.dtype),
            message=f"{who} keeps {num_examples} rows "
            f"(num_examples={num_examples}) but got an example id >= "
            f"{num_examples}; ids index the training set, so num_examples "
            "must be its size.",
        ),
    ]
    with tf.control_dependencies(checks):
        return tf.identity(ids)
