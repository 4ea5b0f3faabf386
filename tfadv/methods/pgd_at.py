"""PGD adversarial training (Madry et al., ICLR 2018)."""

import gin

from tfadv import validation
from tfadv.attacks import pgd
from tfadv.methods import base


@gin.register
class PGDAT(base.AdversarialTrainer):
    """PGD adversarial training, Madry et al. (ICLR 2018), arXiv 1706.06083.

    Minimises the robust risk with the inner maximum approximated by PGD:

        min_θ E[ max_{‖δ‖∞ ≤ ε} CE(f_θ(x + δ), y) ]

    Per minibatch: `x' = train_attack(x, y)` (PGD-k from a uniform random
    start; without a `train_attack`, Madry's CIFAR-10 PGD-7 with steps of
    ε/4, `tfadv.attacks.pgd.madry_attack`, built at the required `epsilon`
    (the paper's is 8/255 on CIFAR-10), and any `tfadv.attacks.Attack`
    works), then one update on the trainer's default loss
    `(1 − c)·CE(f(x'), y) + c·CE(f(x), y)` in training mode, where
    `c = clean_weight`. Madry's objective is `c = 0` (the default). The PGD
    baseline of the YOPO repository trains on `CE(adv) + CE(clean)`, which is
    `c = 0.5` with the learning rate doubled (docs/algorithms.md §1.5).

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
        clean_weight: weight `c` in [0, 1] of the clean cross-entropy.
        **kwargs: see `AdversarialTrainer` (`train_attack` or `epsilon`,
            one of them required; `attack_training_mode`, `eval_attack`,
            `weight_decay`).
    """

    # M+ (tfadv.methods.controllers.MPlus) may drive the attack's steps.
    step_controller_count = base.ATTACK_STEPS
    paper_epsilon = 8 / 255  # CIFAR-10; never a default
    default_attack_training_mode = True

    def __init__(self, classifier, *, clean_weight: float = 0.0, **kwargs):
        super().__init__(classifier, **kwargs)
        self.clean_weight = validation.in_interval(
            "clean_weight", clean_weight, 0.0, 1.0
        )

    def default_train_attack(self, epsilon):
        return pgd.madry_attack(epsilon)

    def get_config(self):
        return {**super().get_config(), "clean_weight": self.clean_weight}
