"""TRADES-YOPO-m-n: TRADES with YOPO's perturbation (Zhang et al. 2019)."""

import gin
import keras
import tensorflow as tf

from tfadv import validation
from tfadv.attacks import pgd
from tfadv.methods import costs
from tfadv.methods import trades_family
from tfadv.methods import yopo
from tfadv.models import common


@gin.register
class TRADESYOPO(yopo.YOPOBase):
    """TRADES-YOPO-m-n, from "You Only Propagate Once" (NeurIPS 2019).

    arXiv 1905.00877; reference `a1600012888/YOPO-You-Only-Propagate-Once:
    experiments/CIFAR10-TRADES/pre-res18.TRADES-YOPO-{2-5,3-4}`
    (docs/algorithms.md §1.4). YOPO is used only to *make* the perturbation of
    the TRADES objective (Zhang et al., ICML 2019, with β = 1 in the
    reference):

        min_θ E[ CE(f(x), y) + β·KL(softmax(f(x)) ‖ softmax(f(x + η))) ]

    Perturbation, with the model in inference mode
    (`attack_training_mode=False`, as the reference): `q = softmax(f(x))`
    is fixed; from `η = start_stddev·N(0, 1)`, m times: one forward
    `z = f0(x + η)` (not clipped, P3) and a backward of the batch-*summed*
    `Σ_i KL(q_i ‖ softmax(g(z)_i))` that stops at `z` (no weight
    gradients), giving the costate `G = ∂K/∂z`; then n signed steps
    `η ← Π(η + σ·sign(J_f0ᵀ G))` through layer 0 only, exactly as YOPO's
    inner loop. The reference also backpropagates a Hamiltonian into layer
    0 here and then zeroes it before the update (P8), so it is not computed.

    Update: training mode, two forwards `z_c = f(x)` and
    `z_a = f(clip(x + η, 0, 1))`, loss
    `CE(z_c, y) + β·mean_i KL(softmax(z_c,i) ‖ softmax(z_a,i))` with
    gradients through both branches (the clean distribution is not
    detached), one optimizer update of every variable with one learning
    rate. Train logs: `loss` is that objective, `clean_accuracy` and
    `adv_accuracy` are on `z_c` and `z_a`.

    Cost per minibatch: 1 inference forward (the clean distribution), m
    forward passes with backward passes down to layer 0's output, m·n
    forward/backward passes through layer 0 only, and one update on 2
    forward + 2 backward passes.

    The perturbation's settings are those of the training attack, a
    `ProjectedGradient` on the "kl" objective: ε, σ (`step_size`), n
    (`num_steps`) and the start (`start="gaussian"`, `start_stddev`).
    Without a `train_attack`, the reference's is built at `epsilon`, then
    required (the reference's is 0.031 on CIFAR-10): σ = 0.007 at 0.031,
    n = 4, the Gaussian start.

    Example:
        trainer = tfadv.methods.TRADESYOPO(
            classifier, m=3,
            train_attack=tfadv.attacks.ProjectedGradient(
                epsilon=0.1, step_size=0.02, num_steps=4, objective="kl",
                start="gaussian"))
        trainer.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
        trainer.fit(train_ds, epochs=10)

    Args:
        classifier: a functional or Sequential Keras model mapping [0, 1]
            images to logits, with a layer named `first_layer_name`.
        m: outer iterations (costate evaluations), "K" in the code.
        beta: weight of the KL term (1 in the reference code).
        first_layer_name: the layer whose output is the costate's point.
        **kwargs: `layer0_gradient` (how the inner steps' gradient is
            computed, see `YOPOBase`), and see `AdversarialTrainer`
            (`train_attack`, `epsilon`,
            `attack_training_mode`: the mode of the perturbation passes,
            `eval_attack`, `weight_decay`).
    """

    paper_epsilon = 0.031  # CIFAR-10; never a default
    costate_objective = "kl"

    def __init__(
        self,
        classifier: keras.Model,
        *,
        m: int = 3,
        beta: float = 1.0,
        first_layer_name: str = common.FIRST_LAYER,
        **kwargs,
    ):
        super().__init__(
            classifier, m=m, first_layer_name=first_layer_name, **kwargs
        )
        self.beta = validation.non_negative("beta", beta)

    def default_train_attack(self, epsilon):
        return pgd.ProjectedGradient(
            epsilon=epsilon,
            step_size=pgd.TRADES_STEP_FRACTION * epsilon,
            num_steps=4,  # n
            objective="kl",
            start="gaussian",
            start_stddev=0.001,
            name="trades_yopo_inner4",
        )

    def get_config(self):
        """The constructor arguments, for serialisation."""
        return {**super().get_config(), "beta": self.beta}

    def passes(self):
        # The clean distribution; m costates and m·n inner steps; the
        # TRADES update on two forwards.
        m, n = self.m, self.n
        return costs.Passes(
            inference_forwards=1,
            costate_passes=m,
            layer0_input_gradients=m * n,
        ) + costs.update(self, weight_passes=2)

    def perturb(self, x, y):
        """YOPO-m-n on the summed KL, in the attack mode."""
        training = self.attack_training_mode
        clean_probs = self.attack_target(x, y)  # the clean distribution
        eta = self.initial_perturbation(x)
        for _ in range(self.m):
            z = self.layer0(x + eta, training=training)
            # Recording from z only: the backward stops at layer 0's output.
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(z)
                logits = self.rest(z, training=training)
                kl = tf.reduce_sum(
                    self.train_attack.objective(logits, clean_probs)
                )
            eta = self.inner_steps(x, eta, tape.gradient(kl, z))
        return tf.stop_gradient(tf.clip_by_value(x + eta, 0.0, 1.0))

    def compute_adversarial_loss(self, x, y, x_adv):
        """The TRADES loss with weight `beta`, in training mode."""
        return trades_family.trades_loss(self, x, y, x_adv, beta=self.beta)
