"""Projected gradient ascent: FGSM, FGSM with random start, and PGD-k."""

import gin
import tensorflow as tf

from tfadv import validation
from tfadv.attacks import base
from tfadv.attacks import objectives
from tfadv.attacks import threat_models

# Where an attack starts (see `ProjectedGradient`).
STARTS = ("uniform", "gaussian", "none")


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
    2015; Madry et al. 2018; Wong et al. 2020) and the attacks of TRADES and
    MART:

    - FGSM: `num_steps=1, step_size=epsilon, start="none"`;
    - FGSM-RS: `num_steps=1, step_size=1.25 * epsilon, start="uniform"`;
    - PGD-k: `num_steps=k`, usually `step_size=2.5 * epsilon / k`,
      `start="uniform"`, optionally `restarts=r`;
    - the TRADES attack: `objective="kl", start="gaussian"` (K steps from
      `x + 0.001·N(0, I)`); MART's is the same on the cross-entropy.

    Each step is `x <- Proj(x + step(grad))`, where the threat model gives the
    step (signed for L-inf, normalised for L2) and the projection (clip to
    the epsilon ball, then to [0, 1]). The gradient is that of the *sum* of
    the per-example objective, so the step does not depend on batch size or
    replica count. With several restarts, each example keeps its worst case
    over the restarts: a misclassified point beats a correct one, then the
    higher objective wins, so an example counts as robust only if it
    survives every restart (scored with the model in inference mode).

    Starts:
    - "uniform": a uniformly random point of the ball, projected into
      [0, 1] (Madry, Wong), or left unprojected with `clip_start=False`
      (the Fast-AT and Fast-TRADES baselines of Backward Smoothing take
      their first gradient at the unclipped `x + U(−ε, ε)`);
    - "gaussian": `x + start_stddev·N(0, I)`, NOT projected: as in the
      TRADES and MART references, the first gradient is taken there and the
      first step projects;
    - "none": `x` itself;
    - a caller-chosen point: the keyword `x_init` of the call replaces the
      start, unprojected like the Gaussian one.

    `num_steps` must be at least 1: an attack of no step returns its start,
    and a "robust" accuracy under it would be a clean (or noisy) accuracy.
    The start alone, projected, is `start_only()`, a copy for schedules
    whose first epochs train on the start (M+PGD's 0 steps).

    Example:
        pgd = ProjectedGradient(epsilon=0.1, step_size=0.01, num_steps=20)
        x_adv = pgd(classifier, x, y, seed=0)

    Args:
        epsilon: radius of the threat model in pixel units, in [0, 1].
        step_size: size of each step in pixel units (>= 0).
        num_steps: number of ascent steps (>= 1).
        norm: "linf" or "l2".
        objective: an objective name from `tfadv.attacks.objectives`
            ("cross_entropy", "margin", "kl", "dlr") or a callable
            `(logits, target) -> per-example loss` (register it with
            `keras.saving.register_keras_serializable` for a trainer
            holding the attack to save and load). With "kl" the target is
            the clean class distribution, not the labels.
        start: "uniform", "gaussian" or "none" (see above).
        start_stddev: the standard deviation of the Gaussian start.
        restarts: number of independent runs (>= 1); the worst case is kept.
        use_predicted_labels: attack the model's own prediction instead of
            `y` (avoids label leaking); `y` is then ignored.
        clip_start: project the uniform start into [0, 1] before the first
            gradient (True), or not (the references of the Fast baselines).
        recompute_target: with the "kl" objective, recompute the clean
            distribution at every step, in the attack's mode (the M+TRADES
            reference attacks in training mode, where BatchNorm's batch
            statistics make each clean forward differ); the target passed
            in is then ignored.
        name: the name results are reported under; defaults to "pgd{k}"
            ("fgsm" for one step).
    """

    def __init__(
        self,
        *,
        epsilon: float,
        step_size: float,
        num_steps: int,
        norm: str = "linf",
        objective: str | objectives.Objective = "cross_entropy",
        start: str = "uniform",
        start_stddev: float = 0.001,
        restarts: int = 1,
        use_predicted_labels: bool = False,
        clip_start: bool = True,
        recompute_target: bool = False,
        name: str | None = None,
    ):
        self.threat_model = threat_models.get(norm, epsilon)
        self.step_size = validation.non_negative("step_size", step_size)
        self.num_steps = validation.count(
            "ProjectedGradient num_steps",
            num_steps,
            minimum=1,
            meaning="ascent steps; 0 steps is no attack, and start_only() "
            "gives the projected start alone",
        )
        self.restarts = validation.count("restarts", restarts, minimum=1)
        self.objective = objectives.get(objective)
        self.start = validation.choice("start", start, STARTS)
        self.start_stddev = validation.non_negative(
            "start_stddev", start_stddev
        )
        self.use_predicted_labels = bool(use_predicted_labels)
        self.clip_start = bool(clip_start)
        self.recompute_target = bool(recompute_target)
        if self.recompute_target and (
            objectives.target_kind(self.objective) == "labels"
        ):
            raise ValueError(
                "ProjectedGradient recompute_target=True recomputes the "
                "clean distribution that the 'kl' objective compares with; "
                f"the objective {objectives.name_of(self.objective)!r} "
                "compares with the labels. Leave recompute_target False."
            )
        self._given_name = name
        if name is None:
            name = "fgsm" if num_steps == 1 else f"pgd{num_steps}"
        self.name = name

    def get_config(self):
        return {
            "epsilon": self.threat_model.epsilon,
            "step_size": self.step_size,
            "num_steps": self.num_steps,
            "norm": self.threat_model.norm,
            "objective": objectives.name_of(self.objective),
            "start": self.start,
            "start_stddev": self.start_stddev,
            "restarts": self.restarts,
            "use_predicted_labels": self.use_predicted_labels,
            "clip_start": self.clip_start,
            "recompute_target": self.recompute_target,
            "name": self._given_name,
        }

    def start_only(self) -> "ProjectedGradient":
        """A copy that returns its projected start: no ascent step.

        The start (uniform, Gaussian, none or the caller's `x_init`)
        projected into the threat set, as a 0-step schedule needs (M+PGD's
        first epoch). Not an attack to evaluate with; its `num_steps` is 0
        and it cannot be `replace`d.
        """
        copy = self.replace()
        copy.num_steps = 0
        return copy

    def __repr__(self):
        return (
            f"ProjectedGradient(name={self.name!r}, {self.threat_model}, "
            f"step_size={self.step_size}, num_steps={self.num_steps}, "
            f"start={self.start!r}, restarts={self.restarts})"
        )

    def initial_point(self, x, seed, *, into_box: bool = True):
        """The attack's start for clean images `x` (see the class doc).

        Args:
            x: clean images.
            seed: a stateless seed of shape [2].
            into_box: project the uniform start into [0, 1]; YOPO's start
                is not projected (docs/algorithms.md §1.6 P3).
        """
        if self.start == "uniform":
            if into_box:
                return self.threat_model.random_init(x, seed)
            return self.threat_model.sample(x, seed)
        if self.start == "gaussian" and self.start_stddev:
            return x + tf.random.stateless_normal(
                tf.shape(x), seed, stddev=self.start_stddev, dtype=x.dtype
            )
        return x

    def _ascend(
        self, model, x, y, seed, training, x_init=None, *, with_gradient=False
    ):
        """One run: the start, then `num_steps` projected ascent steps.

        With `with_gradient`, `(x_adv, g)`: g is the input gradient of the
        batch-mean objective at the last step's point (zeros without a
        step).
        """
        if x_init is not None:
            x_adv = tf.cast(x_init, x.dtype)
        else:
            x_adv = self.initial_point(x, seed, into_box=self.clip_start)
        if not self.num_steps:
            x_adv = self.threat_model.project(x, x_adv)
            return (x_adv, tf.zeros_like(x_adv)) if with_gradient else x_adv

        def gradient(x_adv):
            """The summed objective's input gradient (power-of-two scaled)."""
            target = y
            if self.recompute_target:
                clean = model(x, training=training)
                target = tf.stop_gradient(
                    tf.nn.softmax(tf.cast(clean, tf.float32))
                )
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(x_adv)
                logits = model(x_adv, training=training)
                objective = self.objective(logits, target)
                # Scaled so that a float16 model's gradient cannot
                # underflow; the step's direction is the same.
                loss = base.for_gradient(tf.reduce_sum(objective), objective)
            # A non-differentiable model (hard quantisation) gives a zero
            # gradient, not None: the step then stays put (and the
            # evaluation's masking check can flag it).
            grad = tape.gradient(
                loss, x_adv, unconnected_gradients=tf.UnconnectedGradients.ZERO
            )
            return grad, objective

        def move(x_adv, grad):
            moved = self.threat_model.step(x_adv, grad, self.step_size)
            return self.threat_model.project(x, moved)

        if not with_gradient:
            return base.repeat(
                lambda x_adv: move(x_adv, gradient(x_adv)[0]),
                x_adv,
                self.num_steps,
            )

        def step_keeping_gradient(state):
            x_adv, _ = state
            grad, objective = gradient(x_adv)
            # The batch-mean objective's gradient, the scale removed.
            rows = tf.cast(tf.shape(x_adv)[0], tf.float32)
            scale = base.gradient_scale(objective) * rows
            return move(x_adv, grad), tf.cast(grad, tf.float32) / scale

        state = (x_adv, tf.zeros(tf.shape(x_adv), tf.float32))
        return base.repeat(step_keeping_gradient, state, self.num_steps)

    def ascend_with_gradient(self, model, x, y, *, seed=None, training=False):
        """`(x_adv, g)`: one run, and its last step's input gradient.

        g is the gradient of the batch-mean objective at the point the last
        step started from (before its step), the gradient DEAT's M+ runs
        of Table 1 summed (M+PGD, M+TRADES, M+MART); zeros at 0 steps. One
        restart only.

        Raises:
            ValueError: the attack has several restarts.
        """
        if self.restarts != 1:
            raise ValueError(
                "ascend_with_gradient runs one restart; this attack has "
                f"restarts={self.restarts}."
            )
        x = tf.convert_to_tensor(x)
        y = tf.stop_gradient(tf.convert_to_tensor(y))
        x_adv, grad = self._ascend(
            model, x, y, base.as_seed(seed), training, with_gradient=True
        )
        return tf.stop_gradient(x_adv), tf.stop_gradient(grad)

    # The image check of every attack call (skipped inside a trainer's
    # checked step), for this entry point too.
    ascend_with_gradient = base.checked_call(ascend_with_gradient)

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


# Madry et al.'s CIFAR-10 attack: 7 steps of 2/255 at 8/255, i.e. steps of
# epsilon / 4 from a uniform random start.
MADRY_STEPS = 7
MADRY_STEP_FRACTION = 0.25


def madry_attack(
    epsilon: float, *, num_steps: int = MADRY_STEPS, name: str | None = None
) -> ProjectedGradient:
    """The PGD-AT training attack of Madry et al. (ICLR 2018) at `epsilon`.

    `num_steps` (7 by default) signed steps of `epsilon / 4` on the
    cross-entropy from a uniform random start (2/255 at 8/255 on
    CIFAR-10).
    """
    return ProjectedGradient(
        epsilon=epsilon,
        step_size=MADRY_STEP_FRACTION * epsilon,
        num_steps=num_steps,
        name=name,
    )


# The TRADES family's step at its budget: 0.007 at 0.031.
TRADES_STEP_FRACTION = 0.007 / 0.031


def trades_attack(
    epsilon: float,
    *,
    objective: str = "kl",
    num_steps: int = 10,
    name: str | None = None,
) -> ProjectedGradient:
    """The attack of the TRADES family (TRADES, MART) at `epsilon`.

    K signed steps of `0.007 / 0.031 · epsilon` (0.007 at the references'
    0.031) from `x + 0.001·N(0, I)`, on the KL to the clean distribution
    (TRADES) or the cross-entropy (MART).
    """
    return ProjectedGradient(
        epsilon=epsilon,
        step_size=TRADES_STEP_FRACTION * epsilon,
        num_steps=num_steps,
        objective=objective,
        start="gaussian",
        start_stddev=0.001,
        name=name,
    )
