"""FGSM with a random start, "Fast is better than free" (Wong et al. 2020)."""

import gin

from tfadv.attacks import pgd
from tfadv.methods import base

# The reference's step, as a multiple of epsilon: 10/255 at 8/255.
STEP_FRACTION = 1.25


@gin.register
class FGSMRS(base.AdversarialTrainer):
    """FGSM adversarial training with a random start (Wong et al. 2020).

    "Fast is better than free: revisiting adversarial training", Wong, Rice
    and Kolter, ICLR 2020, arXiv 2001.03994; reference code
    `locuslab/fast_adversarial` (docs/algorithms.md §6.2). It minimises
    `CE(f_θ(x + δ), y)` with the inner maximum replaced by one signed step
    from a uniform random point of the ball:

        δ₀ ~ U(−ε, ε)^d,   δ = Π(δ₀ + α·sign(∇_δ CE(f_θ(x + δ₀), y)))

    with `α = 1.25ε` and `Π` the projection onto the ε-box and the image
    box, then one update on the trainer's default loss `CE(f(x + δ), y)`
    in training mode. A larger α, or a random start covering only part of
    the ball, leads to catastrophic overfitting: robust accuracy against
    PGD falls to about 0 within an epoch. Train with
    `tfadv.callbacks.CatastrophicOverfittingStop` (the reference's
    `--early-stop`) and a cyclic learning rate (`tfadv.schedules.cyclic`).

    The start is projected into the image box before the step (the CIFAR
    code does this; its MNIST script clips only after the step).

    BatchNorm during the attack: the reference attacks in train mode (batch
    statistics, moving averages updated), so `attack_training_mode=True`
    by default. Cost: 2 forward-backward passes per minibatch.

    Example:
        trainer = tfadv.methods.FGSMRS(classifier, epsilon=8 / 255)
        # the same as train_attack=tfadv.attacks.ProjectedGradient(
        #     epsilon=8 / 255, step_size=10 / 255, num_steps=1)
        trainer.compile(optimizer=keras.optimizers.SGD(
            tfadv.schedules.cyclic(steps_per_epoch=390, epochs=15),
            momentum=0.9))
        trainer.fit(train_ds, epochs=15, callbacks=[guard])

    Args:
        classifier: a Keras model mapping [0, 1] images to logits.
        **kwargs: see `AdversarialTrainer` (`train_attack`, `epsilon`,
            `attack_training_mode`, `eval_attack`, `weight_decay`). Without a
            `train_attack`, the reference's attack is built at `epsilon`,
            then required (the paper's CIFAR-10 budget is 8/255): one step
            of `1.25 * epsilon` from a uniform start. Plain FGSM-AT, which
            overfits catastrophically, is
            `train_attack=ProjectedGradient(epsilon=eps, step_size=eps,
            num_steps=1, start="none")`.
    """

    paper_epsilon = 8 / 255  # CIFAR-10; never a default
    default_attack_training_mode = True

    def default_train_attack(self, epsilon):
        return pgd.ProjectedGradient(
            epsilon=epsilon,
            step_size=STEP_FRACTION * epsilon,
            num_steps=1,
            start="uniform",
            name="fgsm_rs",
        )
