"""What TRADES and MART share: the TRADES-family budget and the β of the KL.

Both references train at ε = 0.031 (not 8/255, docs/algorithms.md §0.3
rule 2) with a KL term weighted by β, and attack with
`tfadv.attacks.pgd.trades_attack` (K steps from `x + 0.001·N(0, I)`).
"""

from tfadv import validation
from tfadv.methods import base


class KLRegularizedTrainer(base.AdversarialTrainer):
    """A method whose loss weighs a KL(clean ‖ adversarial) term by β.

    Not for direct use; see `TRADES` and `MART`.

    Args:
        classifier: a Keras model mapping [0, 1] images to logits.
        beta: β, the weight of the KL term (>= 0).
        **kwargs: see `AdversarialTrainer`.
    """

    default_epsilon = 0.031

    def __init__(self, classifier, *, beta: float = 6.0, **kwargs):
        super().__init__(classifier, **kwargs)
        self.beta = validation.non_negative("beta", beta)

    def get_config(self):
        return {**super().get_config(), "beta": self.beta}
