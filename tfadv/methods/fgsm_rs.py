"""FGSM with a random start, "Fast is better than free" (Wong et al. 2020)."""

import gin

from tfadv.attacks import base as attack_base
from tfadv.attacks import pgd
from tfadv.attacks import threat_models
from tfadv.methods import base

# The reference's step, as a multiple of epsilon: 10/255 at 8/255.
STEP_FRACTION = 1.25


@gin.register
class FGSMRS(base.AdversarialTrainer):
    """FGSM adversarial training with a random start (Wong et al. 2020).

    "Fast is better than free: revisiting adversarial training", Wong, Rice
    and Kolter, ICLR 2020, arXiv 2001.03994; reference code
    `locuslab/fast_adversarial` (ALGORITHMS.md §6.2). It minimises
    `CE(f_θ(x + δ), y)` with the inner maximum replaced by one signed step
    from a uniform random point of the ball:

        δ₀ ~ U(−ε, ε)^d,   δ = Π(δ₀ + α·sign(∇_δ CE(f_θ(x + δ₀), y)))

    with `α = 1.25ε` and `Π` the projection onto the ε-box and the image
    box. A larger α, or a random start covering only part of the ball,
    leads to catastrophic overfitting: robust accuracy against PGD falls
    to about 0 within an epoch. Train with
    `tfadv.callbacks.CatastrophicOverfittingStop` (the reference's
    `--early-stop`) and a cyclic learning rate (`tfadv.schedules.cyclic`).

    The start is projected into the image box before the step (the CIFAR
    code does this; its MNIST script clips only after the step).

    BatchNorm during the attack: the reference attacks in train mode (batch
    statistics, moving averages updated), so `attack_training_mode=True`
    by default. Cost: 2 forward-backward passes per minibatch.

    Example:
        trainer = tfadv.methods.FGSMRS(classifier, epsilon=8 / 255)
        trainer.compile(optimizer=keras.optimizers.SGD(
            tfadv.schedules.cyclic(steps_per_epoch=390, epochs=15),
            momentum=0.9))
        trainer.fit(train_ds, epochs=15, callbacks=[guard])

    Args:
        classifier: a Keras model mapping [0, 1] images to logits.
        epsilon: L-inf budget in pixel units (8/255 in the reference).
        step_size: the FGSM step α; None means `1.25 * epsilon`.
        random_start: start from `U(−ε, ε)` (False gives plain FGSM-AT,
            which overfits catastrophically).
        attack_training_mode: see above.
        **kwargs: see `AdversarialTrainer` (`eval_attack`, `weight_decay`).
    """

    def __init__(
        self,
        classifier,
        *,
        epsilon: float = 8 / 255,
        step_size: float | None = None,
        random_start: bool = True,
        attack_training_mode: bool = True,
        **kwargs,
    ):
        super().__init__(
            classifier, attack_training_mode=attack_training_mode, **kwargs
        )
        # Validated first: the default step is computed from it.
        epsilon = threat_models.get("linf", epsilon).epsilon
        if step_size is None:
            step_size = STEP_FRACTION * epsilon
        self.epsilon = epsilon
        self.step_size = attack_base.check_non_negative("step_size", step_size)
        self.random_start = bool(random_start)
        self.train_attack = pgd.ProjectedGradient(
            epsilon=epsilon,
            step_size=self.step_size,
            num_steps=1,
            random_start=self.random_start,
            name="fgsm_rs" if self.random_start else "fgsm",
        )

    def get_config(self):
        return {
            **super().get_config(),
            "epsilon": self.epsilon,
            "step_size": self.step_size,
            "random_start": self.random_start,
        }

    def compute_adversarial_loss(self, x, y, x_adv):
        adv_logits = self.classifier(x_adv, training=True)
        return self.cross_entropy(y, adv_logits), None, adv_logits
