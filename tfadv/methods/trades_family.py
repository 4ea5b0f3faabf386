"""What the TRADES family shares: its budget, β and the TRADES loss.

TRADES, MART and Backward Smoothing's papers train CIFAR-10 at ε = 0.031
(not 8/255, docs/algorithms.md §0.3 rule 2; tfadv requires ε, since it
depends on the dataset) with a KL(clean ‖ adversarial) term
weighted by β. TRADES and Backward Smoothing share the loss itself,
`CE(f(x), y) + β·mean KL(p(x) ‖ p(x'))`, the default
`compute_adversarial_loss` here; MART weighs its KL differently and
overrides it.
"""

from tfadv import validation
from tfadv.attacks import objectives
from tfadv.methods import base
from tfadv.methods import costs


class KLRegularizedTrainer(base.AdversarialTrainer):
    """A method whose loss weighs a KL(clean ‖ adversarial) term by β.

    Not for direct use; see `TRADES`, `MART` and `BackwardSmoothing`.

    Args:
        classifier: a Keras model mapping [0, 1] images to logits.
        beta: β, the weight of the KL term (>= 0).
        **kwargs: see `AdversarialTrainer`.
    """

    paper_epsilon = 0.031  # CIFAR-10; never a default
    default_beta = 6.0

    def __init__(self, classifier, *, beta: float | None = None, **kwargs):
        super().__init__(classifier, **kwargs)
        if beta is None:
            beta = self.default_beta
        self.beta = validation.non_negative("beta", beta)

    def get_config(self):
        return {**super().get_config(), "beta": self.beta}

    def compute_adversarial_loss(self, x, y, x_adv):
        return trades_loss(self, x, y, x_adv, beta=self.beta)

    def passes(self):
        # The update's loss runs f(x) and f(x') in training mode, and its
        # clean logits feed clean_accuracy.
        return costs.attack_and_update(self, weight_passes=2)


def trades_loss(trainer: base.AdversarialTrainer, x, y, x_adv, *, beta):
    """`CE(f(x), y) + β·mean KL(p(x) ‖ p(x'))`, in train mode.

    Gradients flow through both branches (the clean distribution is not
    detached). One train-mode `f(x)` serves both the CE and the KL (the
    TRADES reference runs it twice, updating BatchNorm statistics twice).

    Returns:
        `(loss, clean_logits, adv_logits)`, as `compute_adversarial_loss`.
    """
    clean_logits = trainer.classifier(x, training=True)
    adv_logits = trainer.classifier(x_adv, training=True)
    kl = objectives.kl_divergence(clean_logits, adv_logits)
    loss = trainer.cross_entropy(y, clean_logits)
    loss += beta * trainer.replica_mean(kl)
    return loss, clean_logits, adv_logits
