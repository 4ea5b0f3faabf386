"""Backward Smoothing (Chen et al., AAAI 2022)."""

import gin

from tfadv.attacks import backward_smoothing
from tfadv.methods import trades_family


@gin.register
class BackwardSmoothing(trades_family.KLRegularizedTrainer):
    """Backward Smoothing, Chen, Cheng, Gan, Gu and Liu (AAAI 2022).

    "Efficient Robust Training via Backward Smoothing", arXiv 2010.01278;
    reference code `jinghuichen/BackwardSmoothing: trades_backward.py`
    (docs/algorithms.md §3). TRADES with a one-step attack whose start is
    not a random point of the ε-ball but a random *output-space* direction
    pulled back through the network:

        min_θ E[ CE(f_θ(x), y) + β · KL(p_θ(x) ‖ p_θ(x')) ]

    where `x'` is `tfadv.attacks.BackwardSmoothingAttack`: from the clean
    logits `z0` (computed once), one signed step of size α that moves
    `f(x')` towards `softmax(z0 + γ·U(−1, 1))`, then K TRADES steps of size
    α on `KL(p(x) ‖ p(x'))` (K = 1 by default, α = ε). The update is the
    TRADES loss in train mode, with gradients through both the clean and
    the adversarial branch (the clean softmax is not detached).

    Defaults: α = ε, K = 1, γ = 1 and β = 10, the README's documented
    setting of the reference (its argparse default is β = 6); ε is
    required (the reference's is 0.031 on CIFAR-10).

    BatchNorm during the attack: eval mode, as the reference
    (`attack_training_mode=False`). Cost per minibatch: 1F (clean logits) +
    (K + 1)·FB (initialisation and steps) + the update's 2F + 4F, about 13F
    at K = 1, against about 36F for TRADES-10 with its clean logits cached
    (docs/algorithms.md §3.4).

    The paper's baselines come from the same pieces by gin:
    `fast_trades.gin` (TRADES with a uniform start and one KL step of ε)
    and `fast_at.gin` (PGD-AT with a uniform start and one CE step of ε,
    eval-mode attack).

    Example:
        trainer = tfadv.methods.BackwardSmoothing(classifier, epsilon=0.031)
        trainer.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
        trainer.fit(train_ds, epochs=100)

    Args:
        classifier: a Keras model mapping [0, 1] images to logits.
        beta: β, the weight of the KL term (>= 0; 10 by default).
        **kwargs: see `AdversarialTrainer` (`train_attack`, `epsilon`,
            `attack_training_mode`, `eval_attack`, `weight_decay`). Without
            a `train_attack`, `BackwardSmoothingAttack(epsilon=epsilon)` is
            built (α = ε, K = 1, γ = 1).
    """

    default_beta = 10.0

    def default_train_attack(self, epsilon):
        return backward_smoothing.BackwardSmoothingAttack(epsilon=epsilon)
