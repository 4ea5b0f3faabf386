"""Minibatch replays: one pass updates both the weights and the perturbation.

Free-AT (Shafahi et al. 2019) replays each minibatch m times, and DEAT
(Wang et al. 2021) r times; in both, each replay is one forward-backward
pass whose single backward gives the weight gradients (one optimizer
update) and the perturbation's gradient (one signed step, projected).
`replay` is that loop, shared by the methods that need it.
"""

from typing import NamedTuple

import tensorflow as tf

from tfadv.attacks import base as attack_base


class ReplayResult(NamedTuple):
    """What `replay` returns.

    Attributes:
        delta: the perturbation after the last replay's step; `x + delta`
            is in the threat set and in [0, 1].
        loss: the last replay's replica-scaled loss.
        logits: the last replay's logits.
        input_gradients: one tensor per replay, the gradient of that
            replay's batch-mean loss with respect to the input (from the
            update's own backward pass).
    """

    delta: tf.Tensor
    loss: tf.Tensor
    logits: tf.Tensor
    input_gradients: list


def replay(
    trainer,
    x: tf.Tensor,
    y: tf.Tensor,
    delta: tf.Tensor,
    *,
    num_replays: int,
    attack: attack_base.Attack,
) -> ReplayResult:
    """Replays a minibatch `num_replays` times (a static, unrolled count).

    Each replay: `L = CE(f(x + δ), y)` in train mode; one backward gives
    `∇_θ L` and `∇_δ L`; one optimizer update of the weights (with the
    trainer's weight decay); `δ ← Π(δ + s·step(∇_δ L)) `, with the step,
    its size s and the projection Π of `attack` (its threat model and
    `step_size`). The loss and adversarial accuracy trackers are updated at
    every replay. A loss-scale overflow gives a zero input gradient, so δ
    stays put when the optimizer skips its update.

    Args:
        trainer: the `AdversarialTrainer` (its classifier, optimizer,
            cross-entropy and trackers are used).
        x: clean images in [0, 1].
        y: integer labels.
        delta: the starting perturbation, feasible for `x`.
        num_replays: replays (>= 1), a Python int.
        attack: gives the threat model and step size of δ's steps.

    Returns:
        A `ReplayResult`.
    """
    threat_model = attack.threat_model
    variables = trainer.trainable_variables
    input_gradients = []
    for _ in range(num_replays):
        with tf.GradientTape() as tape:
            tape.watch(delta)
            logits = trainer.classifier(x + delta, training=True)
            loss = trainer.cross_entropy(y, logits)
            scaled = trainer.scale_loss(loss)
        _, delta_grad = trainer.apply_gradients(
            tape, scaled, variables, inputs=delta
        )
        moved = threat_model.step(x + delta, delta_grad, attack.step_size)
        delta = threat_model.project(x, moved) - x
        trainer.update_metrics(loss, y, adv_logits=logits)
        input_gradients.append(delta_grad)
    return ReplayResult(delta, loss, logits, input_gradients)
