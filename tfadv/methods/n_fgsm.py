"""N-FGSM: FGSM from strong noise, not projected (de Jorge et al. 2022)."""

import gin

from tfadv.attacks import perturbations
from tfadv.methods import base

# The reference's noise half-width, in units of epsilon (`--unif 2`).
NOISE_FACTOR = 2.0


@gin.register
class NFGSM(base.AdversarialTrainer):
    """N-FGSM adversarial training (de Jorge et al., NeurIPS 2022).

    "Make Some Noise: Reliable and Efficient Single-Step Adversarial
    Training", de Jorge, Bibi, Volpi, Sanyal, Torr, Rogez and Dokania,
    arXiv 2202.01181; reference code `pdejorge/N-FGSM: train.py`, run as
    `--alpha 8 --unif 2` at ε = 8/255 (docs/algorithms.md §9). Per
    minibatch, with the classifier in training mode for both passes:

        η ~ U(−kε, kε)^d,  η ← clip(x + η, 0, 1) − x
        δ = clip(x + η + α·sign(∇_η CE(f_θ(x + η), y)), 0, 1) − x
        θ ← θ − lr·∇_θ CE(f_θ(x + δ), y)

    with k = 2 and α = ε. Unlike FGSM-RS, δ is **not projected back onto
    the ε-ball**: the stronger noise and the unclipped step are what keep
    the method from catastrophic overfitting at large ε without extra
    passes. The training examples therefore reach ‖δ‖∞ ≤ (k + 1)ε = 3ε
    (the perturbation's `reach`); the method's `epsilon` is still the
    budget it defends and is evaluated at (`tfadv.train` requires it to
    equal `run.epsilon`). The perturbation is
    `tfadv.attacks.NoiseFGSM`, a training-only perturbation that the
    evaluation refuses; the update is the trainer's default loss,
    `CE(f(x + δ), y)` in training mode.

    BatchNorm during the attack: training mode (batch statistics, moving
    averages updated by both forwards), as the reference, which never
    leaves train mode while training; `attack_training_mode=True` by
    default. Cost per minibatch: one forward-backward for the input
    gradient and one for the update (2 FB, about 5F with the input
    backward at 1F: the same as FGSM-RS), plus the inference forward on x
    for `clean_accuracy`.

    Example:
        trainer = tfadv.methods.NFGSM(classifier, epsilon=8 / 255)
        # the same as train_attack=tfadv.attacks.NoiseFGSM(
        #     epsilon=8 / 255, noise_factor=2, step_size=8 / 255)
        trainer.compile(optimizer=keras.optimizers.SGD(
            tfadv.schedules.cyclic(steps_per_epoch=390, epochs=30),
            momentum=0.9))
        trainer.fit(train_ds, epochs=30)

    Args:
        classifier: a Keras model mapping [0, 1] images to logits.
        **kwargs: see `AdversarialTrainer` (`train_attack`, `epsilon`,
            `attack_training_mode`, `eval_attack`, `weight_decay`). Without
            a `train_attack`, the reference's perturbation is built at
            `epsilon`, then required (the paper's CIFAR-10 budget is
            8/255): `NoiseFGSM(epsilon=epsilon)`, noise of 2ε, one step of
            ε, no projection onto the ε-ball. Other settings of the
            reference (`--unif k`, `--alpha`, `--clip c`) are
            `train_attack=tfadv.attacks.NoiseFGSM(epsilon=eps,
            noise_factor=k, step_size=alpha, clip_factor=c)`.
    """

    paper_epsilon = 8 / 255  # CIFAR-10; never a default
    default_attack_training_mode = True

    def default_train_attack(self, epsilon):
        return perturbations.NoiseFGSM(
            epsilon=epsilon, noise_factor=NOISE_FACTOR, step_size=epsilon
        )
