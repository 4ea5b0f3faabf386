"""TRADES (Zhang et al., ICML 2019)."""

import gin
import tensorflow as tf

from tfadv.attacks import base as attack_base
from tfadv.attacks import pgd
from tfadv.methods import base


def kl_divergence(clean_logits: tf.Tensor, adv_logits: tf.Tensor) -> tf.Tensor:
    """Per-example `KL(softmax(clean) ‖ softmax(adv))`, from log-softmax.

    Gradients flow into both arguments. Written by hand rather than with
    `keras.losses.KLDivergence`, which clips probabilities and so changes
    the gradients near 0 (ALGORITHMS.md §0.3 rule 8).
    """
    log_p = tf.nn.log_softmax(tf.cast(clean_logits, tf.float32), axis=-1)
    log_q = tf.nn.log_softmax(tf.cast(adv_logits, tf.float32), axis=-1)
    return tf.reduce_sum(tf.exp(log_p) * (log_p - log_q), axis=-1)


def gaussian_start(
    x: tf.Tensor, stddev: float, seed: attack_base.Seed
) -> tf.Tensor:
    """`x + stddev·N(0, I)`, not clipped: the TRADES and MART start point."""
    if not stddev:
        return x
    noise = tf.random.stateless_normal(
        tf.shape(x), attack_base.as_seed(seed), stddev=stddev, dtype=x.dtype
    )
    return x + noise


class GaussianStartTrainer(base.AdversarialTrainer):
    """Shared by TRADES and MART: PGD from `x + init_stddev·N(0, I)`.

    Subclasses set `attack_objective` and `attack_name_prefix`, say what the
    objective compares the logits with (`attack_target`) and build the
    β-weighted loss (`compute_adversarial_loss`). The constructor arguments
    are documented by the subclasses.
    """

    attack_objective = None
    attack_name_prefix = None

    def __init__(
        self,
        classifier,
        *,
        epsilon: float = 0.031,
        step_size: float = 0.007,
        num_steps: int = 10,
        beta: float = 6.0,
        init_stddev: float = 0.001,
        attack_training_mode: bool = False,
        **kwargs,
    ):
        super().__init__(
            classifier, attack_training_mode=attack_training_mode, **kwargs
        )
        self.beta = attack_base.check_non_negative("beta", beta)
        self.init_stddev = attack_base.check_non_negative(
            "init_stddev", init_stddev
        )
        self.train_attack = pgd.ProjectedGradient(
            epsilon=epsilon,
            step_size=step_size,
            num_steps=num_steps,
            objective=self.attack_objective,
            random_start=False,
            name=f"{self.attack_name_prefix}{num_steps}",
        )

    def get_config(self):
        attack = self.train_attack
        return {
            **super().get_config(),
            "epsilon": attack.epsilon,
            "step_size": attack.step_size,
            "num_steps": attack.num_steps,
            "beta": self.beta,
            "init_stddev": self.init_stddev,
        }

    def initial_point(self, x: tf.Tensor) -> tf.Tensor:
        """The attack's start, `x + init_stddev·N(0, I)` (override to vary)."""
        return gaussian_start(x, self.init_stddev, self.seed_generator)

    def attack_target(self, x, y):
        """What the attack's objective compares the logits with."""
        raise NotImplementedError

    def perturb(self, x, y):
        return self.train_attack(
            self.classifier,
            x,
            self.attack_target(x, y),
            seed=self.seed_generator,
            training=self.attack_training_mode,
            x_init=self.initial_point(x),
        )


@gin.register
class TRADES(GaussianStartTrainer):
    """TRADES, Zhang et al. (ICML 2019), arXiv 1901.08573.

    "Theoretically principled trade-off between robustness and accuracy";
    reference code `yaodongyu/TRADES: trades.py` (ALGORITHMS.md §6.4).
    It minimises the clean loss plus a boundary term that pushes the
    prediction at the worst nearby point towards the clean prediction:

        min_θ E[ CE(f_θ(x), y)
                 + β · max_{‖x' − x‖∞ ≤ ε} KL(p_θ(x) ‖ p_θ(x')) ]

    with `p_θ = softmax(f_θ)`. Per minibatch:

    1. attack: the clean distribution `p(x)` once, then K signed ascent
       steps of size s on `Σ_batch KL(p(x) ‖ p(x'))` from
       `x' = x + 0.001·N(0, I)` (not clipped at the start; each step
       projects onto the ε-box and [0, 1]);
    2. update: `CE(f(x), y) + β·(1/B)·Σ KL(p(x) ‖ p(x'))` with the
       classifier in train mode and gradients through both the clean and
       the adversarial branch.

    The reference recomputes `f(x)` at every attack step and a second
    time inside the KL of the update (in train mode). Here the attack's
    clean distribution is computed once (in eval mode it is the same at
    every step), and one train-mode `f(x)` serves both the CE and the KL
    (the same values; BatchNorm moving statistics get one update from it
    instead of two).

    BatchNorm during the attack: eval mode, as the reference
    (`attack_training_mode=False`). Cost per minibatch: 1F (clean
    distribution) + K·(F + B) (attack) + 2·(F + B) (update), about
    3K + 7 forward-equivalents; K = 10 gives ≈ 37F.

    Example:
        trainer = tfadv.methods.TRADES(classifier, epsilon=0.031, beta=6.0)
        trainer.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
        trainer.fit(train_ds, epochs=76)

    Args:
        classifier: a Keras model mapping [0, 1] images to logits.
        epsilon: L-inf budget in pixel units (0.031 on CIFAR-10).
        step_size: s, the attack's step (0.007 on CIFAR-10).
        num_steps: K, the attack's steps (10 on CIFAR-10).
        beta: β, the weight of the KL term (>= 0; 6 in the reference's
            CIFAR-10 runs and its released models).
        init_stddev: standard deviation of the attack's Gaussian start
            (0.001; 0 starts at `x`, where the KL gradient is zero).
        attack_training_mode: see above.
        **kwargs: see `AdversarialTrainer` (`eval_attack`, `weight_decay`).

    Raises:
        ValueError: a negative `beta`, `init_stddev` or `step_size`, a bad
            `num_steps` or `epsilon`.
    """

    attack_objective = "kl"
    attack_name_prefix = "trades_kl"

    def attack_target(self, x, y):
        # The clean distribution, computed once per step.
        clean_logits = self.classifier(x, training=self.attack_training_mode)
        return tf.stop_gradient(
            tf.nn.softmax(tf.cast(clean_logits, tf.float32))
        )

    def compute_adversarial_loss(self, x, y, x_adv):
        clean_logits = self.classifier(x, training=True)
        adv_logits = self.classifier(x_adv, training=True)
        kl = self.replica_mean(kl_divergence(clean_logits, adv_logits))
        loss = self.cross_entropy(y, clean_logits) + self.beta * kl
        return loss, clean_logits, adv_logits
