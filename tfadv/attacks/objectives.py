"""Per-example objectives that attacks maximise.

Each objective maps `(logits, target) -> loss[B]`, in float32 whatever the
compute dtype. `target` is what the objective needs: integer labels for
cross-entropy, the margin and DLR, the clean class probabilities for the KL
objective of TRADES-style attacks. The targeted DLR loss of APGD-T takes a
third argument, the target classes, so it is not in `OBJECTIVES`.
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
    right when every other logit is negative (the bug of one reference that
    docs/algorithms.md §7.2 notes).
    """
    logits = tf.cast(logits, tf.float32)
    true, other = _true_and_other_max(logits, labels)
    return other - true


@gin.register
def kl_to_clean(logits: tf.Tensor, clean_probs: tf.Tensor) -> tf.Tensor:
    """KL(p_clean || softmax(logits)) per example, written from log-softmax.

    The attack objective of TRADES-style attacks: the clean distribution is
    a constant target (its `target_kind` is "clean_probs", see
    `target_kind`); `xlogy` makes 0·log 0 = 0.
    """
    logits = tf.cast(logits, tf.float32)
    p = tf.cast(clean_probs, tf.float32)
    log_q = tf.nn.log_softmax(logits, axis=-1)
    return tf.reduce_sum(tf.math.xlogy(p, p) - p * log_q, axis=-1)


kl_to_clean.target_kind = "clean_probs"


def kl_divergence(clean_logits: tf.Tensor, adv_logits: tf.Tensor) -> tf.Tensor:
    """Per-example `KL(softmax(clean) ‖ softmax(adv))`, from log-softmax.

    The training term of TRADES-style losses: gradients flow into both
    arguments (`kl_to_clean` is the attack's version, with a constant
    target). Written by hand rather than with `keras.losses.KLDivergence`,
    which clips probabilities and so changes the gradients near 0.
    """
    log_p = tf.nn.log_softmax(tf.cast(clean_logits, tf.float32), axis=-1)
    log_q = tf.nn.log_softmax(tf.cast(adv_logits, tf.float32), axis=-1)
    return tf.reduce_sum(tf.exp(log_p) * (log_p - log_q), axis=-1)


def target_kind(objective: Objective) -> str:
    """What an objective compares the logits with.

    "labels" (integer classes: cross-entropy, margin, DLR) or
    "clean_probs" (the clean softmax: the KL objective). A method whose
    attack may use either (TRADES) asks this to build the right target.
    """
    return getattr(objective, "target_kind", "labels")


# Keeps the DLR denominator away from zero when the top logits tie
# (the value fra31/auto-attack uses).
_DLR_EPSILON = 1e-12


def _sorted_logits(logits, min_classes, name):
    num_classes = logits.shape[-1]
    if num_classes is not None and num_classes < min_classes:
        raise ValueError(
            f"The {name} loss needs at least {min_classes} classes; the "
            f"model has {num_classes}. Use 'cross_entropy' or 'margin'."
        )
    return tf.sort(logits, axis=-1, direction="DESCENDING")


@gin.register
def dlr(logits: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
    """The difference-of-logits-ratio loss of Croce & Hein (2020), per example.

    `DLR = -(z_y - max_{j != y} z_j) / (z_pi1 - z_pi3)`, where pi sorts the
    logits decreasingly. It is the margin divided by a scale of the logits,
    so it is invariant to shifting and rescaling them (which defeats the
    saturated-softmax masking that fools cross-entropy attacks). Positive
    when misclassified; needs at least 3 classes.
    """
    logits = tf.cast(logits, tf.float32)
    ranked = _sorted_logits(logits, 3, "DLR")
    true, other = _true_and_other_max(logits, labels)
    scale = ranked[:, 0] - ranked[:, 2] + _DLR_EPSILON
    return -(true - other) / scale


def targeted_dlr(
    logits: tf.Tensor, labels: tf.Tensor, targets: tf.Tensor
) -> tf.Tensor:
    """The targeted DLR loss of APGD-T, per example.

    `-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)`, as `dlr_loss_targeted` in
    fra31/auto-attack: maximising it pushes the target logit `z_t` above the
    true one. Needs at least 4 classes.
    """
    logits = tf.cast(logits, tf.float32)
    ranked = _sorted_logits(logits, 4, "targeted DLR")
    num_classes = tf.shape(logits)[-1]
    true = tf.reduce_sum(
        logits * tf.one_hot(tf.cast(labels, tf.int32), num_classes), -1
    )
    target = tf.reduce_sum(
        logits * tf.one_hot(tf.cast(targets, tf.int32), num_classes), -1
    )
    scale = ranked[:, 0] - 0.5 * (ranked[:, 2] + ranked[:, 3]) + _DLR_EPSILON
    return -(true - target) / scale


OBJECTIVES = {
    "cross_entropy": cross_entropy,
    "margin": margin,
    "kl": kl_to_clean,
    "dlr": dlr,
}


def name_of(objective: Objective) -> str | Objective:
    """The registered name of an objective, or the callable itself."""
    for name, fn in OBJECTIVES.items():
        if fn is objective:
            return name
    return objective


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
