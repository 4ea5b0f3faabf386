"""The attack of Backward Smoothing (Chen et al., AAAI 2022)."""

import math

import gin
import tensorflow as tf

from tfadv import validation
from tfadv.attacks import base
from tfadv.attacks import pgd


@gin.register
class BackwardSmoothingAttack(base.Attack):
    """TRADES steps from the "backward smoothing" initialisation.

    "Efficient Robust Training via Backward Smoothing", Chen, Cheng, Gan,
    Gu and Liu, arXiv 2010.01278; reference code
    `jinghuichen/BackwardSmoothing: trades_backward.py`
    (docs/algorithms.md §3.2). With `z0 = f(x)` the clean logits, computed
    once:

    1. a smoothed target in *logit* space, fresh per call:
       `q = softmax(z0 + γ·u)`, `u ~ U(−1, 1)^C` per example;
    2. the initialisation, one signed step from `x' = x` that moves
       `f(x')` towards `q`: `x' ← Π(x − α·sign(∇ KL(q ‖ softmax(f(x')))))`.
       At `x' = x` the gradient is `J_fᵀ(p − q)` with `p = softmax(z0)`, a
       random output-space direction pulled back through the network (the
       "backward" smoothing); it is computed exactly as that product, so
       γ = 0 gives a zero step. The sign matters: stepping *up* the KL
       would make this a plain FGSM step from the clean point;
    3. K TRADES steps of size α on `Σ KL(p ‖ softmax(f(x')))`, the clean
       distribution fixed (`ProjectedGradient` with the "kl" objective and
       `x_init` the initialised point).

    The labels are not used (the objectives compare with the clean
    distribution), so the attack takes the clean distribution from its own
    clean forward pass, shared by steps 1–3: a method gives it labels.
    Costs 1F + (K + 1)·FB. No input-space noise is added (the reference
    has the uniform start commented out).

    Example:
        bs = BackwardSmoothingAttack(epsilon=0.031, gamma=1.0)
        x_adv = bs(classifier, x, y, seed=0)

    Args:
        epsilon: radius of the L-inf (or L2) ball in pixel units.
        step_size: α, the size of the initialisation and TRADES steps;
            None means `epsilon` (the reference's 0.031 at 0.031).
        num_steps: K, the TRADES steps after the initialisation (1; 0
            keeps the initialisation step alone).
        gamma: γ, the scale of the logit noise (finite, >= 0; 1 in the
            reference).
        norm: "linf" or "l2".
        name: the report name; defaults to "backward_smoothing".
    """

    def __init__(
        self,
        *,
        epsilon: float,
        step_size: float | None = None,
        num_steps: int = 1,
        gamma: float = 1.0,
        norm: str = "linf",
        name: str | None = None,
    ):
        if step_size is None:
            step_size = validation.epsilon(epsilon)
        num_steps = validation.count(
            "BackwardSmoothingAttack num_steps",
            num_steps,
            meaning="TRADES steps after the initialisation step",
        )
        self.trades_steps = pgd.ProjectedGradient(
            epsilon=epsilon,
            step_size=step_size,
            num_steps=max(num_steps, 1),
            norm=norm,
            objective="kl",
            start="none",
        )
        if not num_steps:
            # The initialisation alone: the TRADES part returns its start.
            self.trades_steps = self.trades_steps.start_only()
        self.threat_model = self.trades_steps.threat_model
        self.step_size = self.trades_steps.step_size
        self.num_steps = num_steps
        self.gamma = validation.in_interval(
            "BackwardSmoothingAttack gamma",
            gamma,
            0.0,
            math.inf,
            high_open=True,
            hint="gamma scales the noise on the clean logits (1 in the "
            "reference); an infinite one drowns them and the attack "
            "silently does nothing. Give a finite number >= 0.",
        )
        self._given_name = name
        self.name = name or "backward_smoothing"

    def get_config(self):
        return {
            "epsilon": self.threat_model.epsilon,
            "step_size": self.step_size,
            "num_steps": self.num_steps,
            "gamma": self.gamma,
            "norm": self.threat_model.norm,
            "name": self._given_name,
        }

    def __repr__(self):
        return (
            f"BackwardSmoothingAttack(name={self.name!r}, "
            f"{self.threat_model}, step_size={self.step_size}, "
            f"num_steps={self.num_steps}, gamma={self.gamma})"
        )

    def smoothed_target(self, clean_logits, seed):
        """`softmax(z0 + γ·U(−1, 1))`, the initialisation's target."""
        clean_logits = tf.cast(clean_logits, tf.float32)
        noise = tf.random.stateless_uniform(
            tf.shape(clean_logits), seed, -1.0, 1.0
        )
        return tf.nn.softmax(clean_logits + self.gamma * noise)

    def initialise(self, model, x, clean_probs, target, *, training, x_init):
        """The backward-smoothing step from `x_init` (default `x`)."""
        start = x if x_init is None else tf.cast(x_init, x.dtype)
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(start)
            logits = model(start, training=training)
        # ∇ KL(q ‖ softmax(f(x'))) = J_fᵀ(softmax(f(x')) − q); at x' = x
        # the first factor is the clean distribution itself, exactly.
        probs = (
            clean_probs
            if x_init is None
            else tf.nn.softmax(tf.cast(logits, tf.float32))
        )
        grad = tape.gradient(
            logits,
            start,
            output_gradients=tf.cast(probs - target, logits.dtype),
            unconnected_gradients=tf.UnconnectedGradients.ZERO,
        )
        # Descend the KL: step along minus its gradient.
        moved = self.threat_model.step(start, -grad, self.step_size)
        return self.threat_model.project(x, moved)

    def __call__(self, model, x, y, *, seed=None, training=False, x_init=None):
        del y  # the objectives compare with the clean distribution
        x = tf.convert_to_tensor(x)
        noise_seed, steps_seed = base.split_seed(base.as_seed(seed), 2)
        clean_logits = tf.stop_gradient(model(x, training=training))
        clean_probs = tf.nn.softmax(tf.cast(clean_logits, tf.float32))
        target = self.smoothed_target(clean_logits, noise_seed)
        x_start = self.initialise(
            model, x, clean_probs, target, training=training, x_init=x_init
        )
        return self.trades_steps(
            model,
            x,
            clean_probs,
            seed=steps_seed,
            training=training,
            x_init=x_start,
        )
