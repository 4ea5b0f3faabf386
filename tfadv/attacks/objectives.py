"""Per-example objectives that attacks maximise.

Each objective maps `(logits, target) -> loss[B]`, in float32 whatever the
compute dtype. `target` is what the objective needs: integer labels for
cross-entropy and the margin, the clean class probabilities for the KL
objective of TRADES-style attacks.
"""

from collections.abc import Callable

import gin
import numpy as np
import tensorflow as tf

Objective = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]


def _true_and_other_max(logits, labels):
    """Returns (z_y, max_{j != y} z_j) with the true class masked by -inf."""
    num_classes = tf.shape(logits)[-1]
    onehot = tf.one_hot(tf.cast(labels, tf.int32), num_classes) > 0
    true = tf.reduce_max(tf.where(onehot, logits, -np.inf), axis=-1)
    other = tf.reduce_max(tf.where(onehot, -np.inf, logits), axis=-1)
    return true, other


@gin.register
def cross_entropy(logits: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
    """Cross-entropy of integer `labels` under `logits`, per example."""
    logits = tf.cast(logits, tf.float32)
    return tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.cast(labels, tf.int32), logits=logits
    )


@gin.register
def margin(logits: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
    """The CW margin `max_{j != y} z_j - z_y`, positive when misclassified.

    The true class is masked with -inf rather than zeroed, so the maximum is
    right when every other logit is negative (the bug ALGORITHMS.md §7.2 notes
    in one reference).
    """
    logits = tf.cast(logits, tf.float32)
    true, other = _true_and_other_max(logits, labels)
    return other - true


@gin.register
def kl_to_clean(logits: tf.Tensor, clean_probs: tf.Tensor) -> tf.Tensor:
    """KL(p_clean || softmax(logits)) per example, written from log-softmax.

    The clean distribution is a constant target; `xlogy` makes 0·log 0 = 0.
    """
    logits = tf.cast(logits, tf.float32)
    p = tf.cast(clean_probs, tf.float32)
    log_q = tf.nn.log_softmax(logits, axis=-1)
    return tf.reduce_sum(tf.math.xlogy(p, p) - p * log_q, axis=-1)


OBJECTIVES = {
    "cross_entropy": cross_entropy,
    "margin": margin,
    "kl": kl_to_clean,
}


def get(objective: str | Objective) -> Objective:
    """Returns the objective named `objective`, or `objective` if callable."""
    if callable(objective):
        return objective
    try:
        return OBJECTIVES[objective]
    except KeyError:
        raise ValueError(
            f"Unknown objective {objective!r}; accepted: {sorted(OBJECTIVES)}"
            " or a callable (logits, target) -> per-example loss."
        ) from None
