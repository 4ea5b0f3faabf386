"""PGD adversarial training (Madry et al., ICLR 2018)."""

import gin

from tfadv.attacks import base as attack_base
from tfadv.methods import base


@gin.register
class PGDAT(base.AdversarialTrainer):
    """PGD adversarial training, Madry et al. (ICLR 2018), arXiv 1706.06083.

    Minimises the robust risk with the inner maximum approximated by PGD:

        min_θ E[ max_{‖δ‖∞ ≤ ε} CE(f_θ(x + δ), y) ]

    Per minibatch: `x' = train_attack(x, y)` (PGD-k from a uniform random
    start), then one update on `(1 − c)·CE(f(x'), y) + c·CE(f(x), y)` where
    `c = clean_weight`. Madry's objective is `c = 0` (the default). The PGD
    baseline of the YOPO repository trains on `CE(adv) + CE(clean)`, which is
    `c = 0.5` with the learning rate doubled (ALGORITHMS.md §1.5).

    BatchNorm during the attack: Madry's TF code attacks through the same
    training graph as the update, so `attack_training_mode=True` by default;
    the YOPO repository's baseline attacks in eval mode (set it False).
    Cost: (k + 1) forward-backward passes per minibatch.

    Example:
        pgd10 = tfadv.attacks.ProjectedGradient(
            epsilon=0.1, step_size=0.025, num_steps=10)
        trainer = tfadv.methods.PGDAT(classifier, train_attack=pgd10)
        trainer.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
        trainer.fit(train_ds, epochs=5)

    Args:
        classifier: a Keras model mapping [0, 1] images to logits.
        train_attack: the attack that makes the training examples.
        clean_weight: weight `c` in [0, 1] of the clean cross-entropy.
        attack_training_mode: see above.
        **kwargs: see `AdversarialTrainer`.
    """

    def __init__(
        self,
        classifier,
        *,
        train_attack: attack_base.Attack,
        clean_weight: float = 0.0,
        attack_training_mode: bool = True,
        **kwargs,
    ):
        super().__init__(
            classifier, attack_training_mode=attack_training_mode, **kwargs
        )
        if not isinstance(train_attack, attack_base.Attack):
            raise TypeError(
                "train_attack must be a tfadv.attacks.Attack (e.g. "
                f"ProjectedGradient); got {train_attack!r}."
            )
        clean_weight = attack_base.check_non_negative(
            "clean_weight", clean_weight
        )
        if clean_weight > 1.0:
            raise ValueError(
                f"clean_weight must be in [0, 1]; got {clean_weight}."
            )
        self.train_attack = train_attack
        self.clean_weight = clean_weight

    def get_config(self):
        return {**super().get_config(), "clean_weight": self.clean_weight}

    def compute_adversarial_loss(self, x, y, x_adv):
        adv_logits = self.classifier(x_adv, training=True)
        loss = self.cross_entropy(y, adv_logits)
        clean_logits = None
        if self.clean_weight:
            clean_logits = self.classifier(x, training=True)
            loss = (1.0 - self.clean_weight) * loss + (
                self.clean_weight * self.cross_entropy(y, clean_logits)
            )
        return loss, clean_logits, adv_logits
