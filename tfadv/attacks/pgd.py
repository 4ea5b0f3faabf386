"""Projected gradient ascent: FGSM, FGSM with random start, and PGD-k."""

import gin
import tensorflow as tf

from tfadv.attacks import base
from tfadv.attacks import objectives
from tfadv.attacks import threat_models


def _better(loss_new, wrong_new, loss_best, wrong_best):
    """Per example: is the new candidate a worse case for the model?

    A misclassified candidate beats a correctly classified one; between two
    of the same kind, the higher objective wins.
    """
    if wrong_new is None:
        return loss_new > loss_best
    return (wrong_new & ~wrong_best) | (
        (wrong_new == wrong_best) & (loss_new > loss_best)
    )


def _broadcast_mask(mask, x):
    return tf.reshape(mask, [-1] + [1] * (len(x.shape) - 1))


@gin.register
class ProjectedGradient(base.Attack):
    """Projected gradient ascent on a per-example objective.

    One class covers the single-step and iterative attacks (Goodfellow et al.
    2015; Madry et al. 2018; Wong et al. 2020):

    - FGSM: `num_steps=1, step_size=epsilon, random_start=False`;
    - FGSM-RS: `num_steps=1, step_size=1.25 * epsilon, random_start=True`;
    - PGD-k: `num_steps=k`, usually `step_size=2.5 * epsilon / k`,
      `random_start=True`, optionally `restarts=r`.

    Each step is `x <- Proj(x + step(grad))`, where the threat model gives the
    step (signed for L-inf, normalised for L2) and the projection (clip to
    the epsilon ball, then to [0, 1]). The gradient is that of the *sum* of
    the per-example objective, so the step does not depend on batch size or
    replica count. With several restarts, each example keeps its worst case
    over the restarts: a misclassified point beats a correct one, then the
    higher objective wins, so an example counts as robust only if it
    survives every restart (scored with the model in inference mode).

    Example:
        pgd = ProjectedGradient(epsilon=0.1, step_size=0.01, num_steps=20)
        x_adv = pgd(classifier, x, y, seed=0)

    Args:
        epsilon: radius of the threat model in pixel units, in [0, 1].
        step_size: size of each step in pixel units (>= 0).
        num_steps: number of ascent steps (>= 0). 0 with `random_start=False`
            returns `x` itself.
        norm: "linf" or "l2".
        objective: an objective name from `tfadv.attacks.objectives`
            ("cross_entropy", "margin", "kl") or a callable
            `(logits, target) -> per-example loss`.
        random_start: start from a uniform random point of the ball.
        restarts: number of independent runs (>= 1); the worst case is kept.
        use_predicted_labels: attack the model's own prediction instead of
            `y` (avoids label leaking); `y` is then ignored.
        name: the name results are reported under; defaults to "pgd{k}"
            ("fgsm" for one step).

    Calling it takes an optional keyword `x_init`, a start point the caller
    chose (TRADES and MART start from `x + 0.001·N(0, I)`). It replaces the
    random start, and, as in those references, the first gradient is taken
    there without projecting it first; every step projects. With
    `num_steps=0` the projected `x_init` is returned.
    """

    def __init__(
        self,
        *,
        epsilon: float,
        step_size: float,
        num_steps: int,
        norm: str = "linf",
        objective: str | objectives.Objective = "cross_entropy",
        random_start: bool = True,
        restarts: int = 1,
        use_predicted_labels: bool = False,
        name: str | None = None,
    ):
        self.threat_model = threat_models.get(norm, epsilon)
        self.step_size = base.check_non_negative("step_size", step_size)
        self.num_steps = base.check_positive_int("num_steps", num_steps)
        self.restarts = base.check_positive_int(
            "restarts", restarts, allow_zero=False
        )
        self.objective = objectives.get(objective)
        self.random_start = bool(random_start)
        self.use_predicted_labels = bool(use_predicted_labels)
        if name is None:
            name = "fgsm" if num_steps == 1 else f"pgd{num_steps}"
        self.name = name

    def __repr__(self):
        return (
            f"ProjectedGradient(name={self.name!r}, {self.threat_model}, "
            f"step_size={self.step_size}, num_steps={self.num_steps}, "
            f"random_start={self.random_start}, restarts={self.restarts})"
        )

    def _ascend(self, model, x, y, seed, training, x_init=None):
        """One run: random start, then `num_steps` projected ascent steps."""
        x_adv = x
        if x_init is not None:
            x_adv = tf.cast(x_init, x.dtype)
            if not self.num_steps:
                return self.threat_model.project(x, x_adv)
        elif self.random_start:
            x_adv = self.threat_model.random_init(x, seed)

        def step(x_adv):
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(x_adv)
                logits = model(x_adv, training=training)
                loss = tf.reduce_sum(self.objective(logits, y))
            # A non-differentiable model (hard quantisation) gives a zero
            # gradient, not None: the step then stays put (and the
            # evaluation's masking check can flag it).
            grad = tape.gradient(
                loss, x_adv, unconnected_gradients=tf.UnconnectedGradients.ZERO
            )
            moved = self.threat_model.step(x_adv, grad, self.step_size)
            return self.threat_model.project(x, moved)

        if self.num_steps <= 2:
            # Short attacks unroll (no loop overhead, and FGSM stays simple).
            for _ in range(self.num_steps):
                x_adv = step(x_adv)
            return x_adv
        _, x_adv = tf.while_loop(
            lambda i, _: i < self.num_steps,
            lambda i, x_adv: (i + 1, step(x_adv)),
            (tf.constant(0), x_adv),
            maximum_iterations=self.num_steps,
        )
        return x_adv

    def _score(self, model, x_adv, y, labels_are_classes):
        logits = model(x_adv, training=False)
        loss = self.objective(logits, y)
        if not labels_are_classes:
            return loss, None
        wrong = tf.not_equal(
            tf.argmax(logits, axis=-1, output_type=tf.int32),
            tf.cast(y, tf.int32),
        )
        return loss, wrong

    def __call__(self, model, x, y, *, seed=None, training=False, x_init=None):
        x = tf.convert_to_tensor(x)
        if self.use_predicted_labels:
            y = tf.argmax(model(x, training=False), -1, output_type=tf.int32)
        y = tf.stop_gradient(tf.convert_to_tensor(y))
        seed = base.as_seed(seed)
        if self.restarts == 1:
            return tf.stop_gradient(
                self._ascend(model, x, y, seed, training, x_init)
            )
        labels_are_classes = y.dtype.is_integer
        best = None
        for restart_seed in base.split_seed(seed, self.restarts):
            x_adv = self._ascend(model, x, y, restart_seed, training, x_init)
            loss, wrong = self._score(model, x_adv, y, labels_are_classes)
            if best is None:
                best, best_loss, best_wrong = x_adv, loss, wrong
                continue
            take = _better(loss, wrong, best_loss, best_wrong)
            best = tf.where(_broadcast_mask(take, x), x_adv, best)
            best_loss = tf.where(take, loss, best_loss)
            if wrong is not None:
                best_wrong = tf.where(take, wrong, best_wrong)
        return tf.stop_gradient(best)
