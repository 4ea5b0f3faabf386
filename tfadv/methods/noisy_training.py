"""Noisy natural training (the soft-quantization network's method)."""

import gin
import tensorflow as tf

from tfadv import validation
from tfadv.attacks import objectives
from tfadv.methods import base
from tfadv.methods import costs
from tfadv.methods import taylor

NOISES = ("gaussian", "uniform")


@gin.register
class NoisyTraining(base.AdversarialTrainer):
    """Training on noisy natural samples only (no adversarial example).

    The method of "Is PGD-Adversarial Training Necessary? Alternative
    Training via a Soft-Quantization Network with Noisy-Natural Samples
    Only" (Zheng, Chen & Ren, arXiv 1810.05665), **reconstructed from its
    abstract**: the paper's code and text could not be found, so the noise
    law, the penalty's form and every default are tfadv's
    (docs/algorithms.md §4). The abstract's argument: to first order,
    `max_{‖δ‖∞≤ε} ℓ(x+δ) ≈ ℓ(x) + ε‖∇ₓℓ(x)‖₁`, and a soft-quantization
    layer after the input (`tfadv.layers.SoftQuantization`, put in front
    of the classifier with `tfadv.models.prepend_layers`) trained on noisy
    natural samples stands in for the ℓ1 term.

    Per minibatch, with noise n fresh per example, pixel and step:

        x̃ = clip(x + n, 0, 1),  n ~ N(0, s²) (or U(-s, s))
        L = CE(f(x̃), y) + λ · mean_i ‖∇_{x̃_i} CE(f(x̃_i), y_i)‖₁

    λ = 0 by default (1 forward-backward per minibatch, as standard
    training); λ > 0 adds the explicit penalty by double backprop (about
    3 FB), evaluated at the noisy inputs (the ICLR submission's abstract
    takes the gradient norms "on the inputs (including adversarial
    samples)"). The gradient is in pixel units, so λ = ε makes the penalty
    the first-order estimate of the loss increase under an ε attack.

    The trainer's logs: `clean_accuracy` on x (an inference forward) and
    `adv_accuracy` on the noisy x̃ (the examples it trains on).

    A soft quantiser masks gradients, so a model trained this way is
    judged by the final evaluation's PGD through the true layer, PGD
    through BPDA and Square, and their per-example minimum
    (`masking_layers()`; `tfadv.evaluation.with_masking_attacks`).

    Example:
        sq = tfadv.layers.SoftQuantization(levels=2, temperature=20.0)
        classifier = tfadv.models.prepend_layers(classifier, [sq])
        trainer = tfadv.methods.NoisyTraining(classifier, noise_scale=0.1)
        trainer.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
        trainer.fit(train_ds, epochs=10)

    Args:
        classifier: a Keras model mapping [0, 1] images to logits (with a
            `SoftQuantization` input layer for the paper's network).
        noise: "gaussian" (std `noise_scale`) or "uniform" (on
            `[-noise_scale, noise_scale]`).
        noise_scale: s, in pixel units (> 0): the threat radius the model
            is meant to resist, 0.1 for Fashion-MNIST by default.
        gradient_penalty: λ >= 0, the weight of the ℓ1 input-gradient term.
        **kwargs: see `AdversarialTrainer` (`eval_attack`, `weight_decay`,
            `seed`); there is no training attack.

    Raises:
        ValueError: an unknown noise, a scale outside (0, 1], a negative λ,
            or a training attack or epsilon (this method makes no attack).
    """

    def __init__(
        self,
        classifier,
        *,
        noise: str = "gaussian",
        noise_scale: float = 0.1,
        gradient_penalty: float = 0.0,
        **kwargs,
    ):
        for name in ("train_attack", "epsilon", "step_controller"):
            if kwargs.get(name) is not None:
                raise ValueError(
                    f"NoisyTraining trains on noisy natural samples only and "
                    f"takes no {name} (got {kwargs[name]!r}); set the noise "
                    "with noise and noise_scale, and the evaluation budget "
                    "with eval_attack."
                )
        super().__init__(classifier, **kwargs)
        self.noise = validation.choice("noise", noise, NOISES)
        self.noise_scale = validation.in_interval(
            "noise_scale",
            noise_scale,
            0.0,
            1.0,
            low_open=True,
            hint="It is in pixel units, e.g. the threat radius 0.1.",
        )
        self.gradient_penalty = validation.non_negative(
            "gradient_penalty", gradient_penalty
        )

    def get_config(self):
        return {
            **super().get_config(),
            "noise": self.noise,
            "noise_scale": self.noise_scale,
            "gradient_penalty": self.gradient_penalty,
        }

    def perturb(self, x, y):
        """The noisy natural samples `clip(x + n, 0, 1)` (no attack)."""
        del y
        seed = self.next_seed()
        scale = tf.cast(self.noise_scale, x.dtype)
        if self.noise == "gaussian":
            n = tf.random.stateless_normal(tf.shape(x), seed, dtype=x.dtype)
        else:
            n = tf.random.stateless_uniform(
                tf.shape(x), seed, -1.0, 1.0, dtype=x.dtype
            )
        return tf.clip_by_value(x + scale * n, 0.0, 1.0)

    def passes(self):
        # With the penalty, the update is one double backpropagation; the
        # clean forward feeds clean_accuracy.
        if self.gradient_penalty:
            update = costs.update(self, weight_passes=0, second_order=1)
        else:
            update = costs.update(self)
        return update + costs.Passes(inference_forwards=1)

    def compute_adversarial_loss(self, x, y, x_adv):
        if not self.gradient_penalty:
            return super().compute_adversarial_loss(x, y, x_adv)

        def loss_fn(inputs):
            logits = self.classifier(inputs, training=True)
            return objectives.cross_entropy(logits, y), logits

        # The summed losses' input gradient is each example's own ∇ₓ CE,
        # recorded for the double backpropagation of the penalty.
        per_example, logits, grad, _ = taylor.input_derivatives(loss_fn, x_adv)
        axes = list(range(1, len(x_adv.shape)))
        l1 = tf.reduce_sum(tf.abs(tf.cast(grad, tf.float32)), axis=axes)
        loss = self.replica_mean(per_example + self.gradient_penalty * l1)
        return loss, None, logits
