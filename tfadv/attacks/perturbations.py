"""Training perturbations: what a method trains on, not what it is judged by.

Some methods train on examples that lie outside the threat set they defend:
N-FGSM (de Jorge et al., NeurIPS 2022) starts from noise of 2ε and takes a
signed step of ε without projecting back, so its examples reach 3ε. Such a
generator has the attack's call signature and is accepted as a method's
`train_attack`, but it is not an attack in the evaluation's sense: its
output is not inside the ball, so it is never an `eval_attack`, a suite
member or a validation attack (`tfadv.attacks.base.evaluation_attack`
refuses it). Its `epsilon` is the budget the method defends, so a run still
has one ε (`run.epsilon`); `reach` documents how far its examples may go.
"""

import gin
import tensorflow as tf

from tfadv import validation
from tfadv.attacks import base
from tfadv.attacks import objectives
from tfadv.attacks import threat_models


class TrainingPerturbation(base.Attack):
    """Base class of the perturbations only a training step may use.

    Subclasses keep every attack invariant but one: `x' − x` may leave the
    ε-ball, up to `reach` (in the threat model's norm); `x'` stays in
    [0, 1], carries no gradient and depends on `seed` alone.

    Attributes:
        training_only: always True.
    """

    training_only = True

    @property
    def reach(self) -> float:
        """The largest norm `x' − x` may have (>= epsilon)."""
        raise NotImplementedError


@gin.register
class NoiseFGSM(TrainingPerturbation):
    """N-FGSM's perturbation: FGSM from strong noise, not projected back.

    "Make Some Noise: Reliable and Efficient Single-Step Adversarial
    Training", de Jorge, Bibi, Volpi, Sanyal, Torr, Rogez and Dokania,
    NeurIPS 2022, arXiv 2202.01181; reference code `pdejorge/N-FGSM:
    train.py` (the loop inlined there, not `attack_utils.attack_nfgsm`,
    whose defaults differ). L-inf only. Per minibatch:

        η ~ U(−kε, kε)^d, fresh per example and pixel;  η ← clip(x + η) − x
        g = ∇_η CE(f(x + η), y)
        δ = clip(x + η + α·sign(g)) − x        (clip: the image box [0, 1])
        δ ← clip(δ, −cε, cε)                   (only when clip_factor = c)

    k = `noise_factor` (2), α = `step_size` (ε), and by default no
    projection onto any ball: `reach` is `(k + 1)·ε`, or `c·ε` when a
    `clip_factor` c < k + 1 is given. Not projecting is the method: the
    stronger noise and the unclipped step avoid catastrophic overfitting
    without extra passes. Cost: one forward-backward for the input
    gradient (the update's pass is the method's).

    Args:
        epsilon: ε, the budget the method defends (pixel units).
        noise_factor: k >= 0, the noise's half-width in units of ε.
        step_size: α > 0, the signed step; None is ε.
        clip_factor: c > 0 to clip δ to the c·ε box (the reference's
            `--clip`), or None (the reference's default) for none.
        name: the name results are reported under.
    """

    def __init__(
        self,
        *,
        epsilon: float,
        noise_factor: float = 2.0,
        step_size: float | None = None,
        clip_factor: float | None = None,
        name: str = "n_fgsm",
    ):
        self.threat_model = threat_models.get("linf", epsilon)
        self.noise_factor = validation.non_negative(
            "NoiseFGSM noise_factor", noise_factor
        )
        if step_size is None:
            step_size = self.threat_model.epsilon
        self.step_size = validation.in_interval(
            "NoiseFGSM step_size", step_size, 0.0, 1.0, low_open=True
        )
        if clip_factor is not None:
            clip_factor = validation.in_interval(
                "NoiseFGSM clip_factor",
                clip_factor,
                0.0,
                float("inf"),
                low_open=True,
                hint="It is a multiple of epsilon; None clips nothing.",
            )
        self.clip_factor = clip_factor
        self.name = name

    @property
    def reach(self) -> float:
        epsilon = self.threat_model.epsilon
        reach = self.noise_factor * epsilon + self.step_size
        if self.clip_factor is not None:
            reach = min(reach, self.clip_factor * epsilon)
        return reach

    def get_config(self):
        return {
            "epsilon": self.epsilon,
            "noise_factor": self.noise_factor,
            "step_size": self.step_size,
            "clip_factor": self.clip_factor,
            "name": self.name,
        }

    def __repr__(self):
        return (
            f"NoiseFGSM(epsilon={self.epsilon:g}, noise_factor="
            f"{self.noise_factor:g}, step_size={self.step_size:g}, "
            f"clip_factor={self.clip_factor})"
        )

    def __call__(self, model, x, y, *, seed=None, training=False, x_init=None):
        x = tf.convert_to_tensor(x)
        y = tf.stop_gradient(tf.convert_to_tensor(y))
        if x_init is not None:
            start = tf.cast(x_init, x.dtype)
        else:
            half_width = self.noise_factor * self.threat_model.epsilon
            noise = tf.random.stateless_uniform(
                tf.shape(x),
                base.as_seed(seed),
                -half_width,
                half_width,
                dtype=x.dtype,
            )
            start = x + noise
        start = tf.clip_by_value(start, 0.0, 1.0)
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(start)
            objective = objectives.cross_entropy(
                model(start, training=training), y
            )
            # Scaled so that a float16 model's gradient cannot underflow;
            # the sign is the same.
            loss = base.for_gradient(tf.reduce_sum(objective), objective)
        grad = tape.gradient(
            loss, start, unconnected_gradients=tf.UnconnectedGradients.ZERO
        )
        moved = start + tf.cast(self.step_size, x.dtype) * tf.sign(grad)
        delta = tf.clip_by_value(moved, 0.0, 1.0) - x
        if self.clip_factor is not None:
            bound = tf.cast(self.clip_factor * self.epsilon, x.dtype)
            delta = tf.clip_by_value(delta, -bound, bound)
        return tf.stop_gradient(x + delta)
