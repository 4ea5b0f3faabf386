"""Auto-PGD: APGD-CE, APGD-DLR and the targeted APGD-T of AutoAttack."""

import gin
import numpy as np
import tensorflow as tf

from tfadv import validation
from tfadv.attacks import base
from tfadv.attacks import objectives
from tfadv.attacks import threat_models

# AutoAttack's schedule (fra31/auto-attack: autopgd_base.py): the first
# checkpoint after 22 % of the iterations, later intervals 3 % shorter, never
# under 6 %.
_FIRST_CHECKPOINT = 0.22
_CHECKPOINT_DECREMENT = 0.03
_MIN_CHECKPOINT = 0.06


def checkpoint_schedule(num_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Where APGD checks its step size, computed once in Python.

    Returns:
        `(is_check, interval)`, two arrays of length `num_steps`: whether
        iteration i ends an interval, and that interval's length.
    """
    interval = max(int(_FIRST_CHECKPOINT * num_steps), 1)
    shortest = max(int(_MIN_CHECKPOINT * num_steps), 1)
    decrement = max(int(_CHECKPOINT_DECREMENT * num_steps), 1)
    is_check = np.zeros(num_steps, bool)
    lengths = np.ones(num_steps, np.float32)
    since = 0
    for i in range(num_steps):
        since += 1
        if since == interval:
            is_check[i], lengths[i] = True, interval
            interval, since = max(interval - decrement, shortest), 0
    return is_check, lengths


def _per_example(mask, x):
    return tf.reshape(mask, [-1] + [1] * (len(x.shape) - 1))


def _wrong(logits, y):
    return tf.not_equal(tf.argmax(logits, -1, output_type=tf.int32), y)


@gin.register
class APGD(base.Attack):
    """Auto-PGD (Croce & Hein, ICML 2020), as in AutoAttack's standard version.

    A PGD loop that needs no step-size tuning (docs/algorithms.md §7.3):

    - the step starts at `2 * epsilon` (`initial_step` times epsilon);
    - each iterate mixes the projected step with the previous move,
      `x <- P(x + a (P(x + eta sign g) - x) + (1 - a)(x - x_prev))`, with
      momentum `a = 0.75` (1 on the first step);
    - at checkpoints (after 22 % of the iterations, then intervals 3 % of
      them shorter, at least 6 %) the step of an example is halved when
      fewer than `rho = 0.75` of the steps since the last checkpoint raised
      its loss, or when its best loss did not improve since the last
      checkpoint (and the step was not halved there); the example then
      restarts from its best point.

    The per-example best point is kept; an example misclassified at any
    iterate returns that iterate. Already misclassified inputs are returned
    unchanged. With `restarts > 1`, each example keeps its worst case over
    the runs (misclassified first, then the higher margin).

    Deviations from fra31/auto-attack: the random start is uniform in the
    ball (AutoAttack scales a uniform draw so one coordinate sits at
    epsilon); the first oscillation check compares the first step's loss
    with the loss at the start point; loops run on the whole batch until
    every example is misclassified or `num_steps` is reached.
    A caller's `x_init` (projected) replaces the random start of every
    run.

    Example:
        apgd_ce = APGD(epsilon=0.1)                     # APGD-CE, 100 steps
        apgd_dlr = APGD(epsilon=0.1, objective="dlr")
        x_adv = apgd_ce(classifier, x, y, seed=0)

    Args:
        epsilon: radius of the threat model in pixel units, in [0, 1].
        num_steps: iterations per run (AutoAttack: 100).
        norm: "linf" or "l2".
        objective: "cross_entropy" (APGD-CE), "dlr" (APGD-DLR), "margin",
            or a callable `(logits, labels) -> per-example loss`.
        restarts: independent runs (>= 1); the worst case is kept.
        rho: the fraction of improving steps below which the step halves.
        momentum: weight of the previous move (AutoAttack: 0.75).
        initial_step: the first step in units of epsilon (AutoAttack: 2).
        name: the report name; defaults to "apgd_ce" or "apgd_dlr".
    """

    def __init__(
        self,
        *,
        epsilon: float,
        num_steps: int = 100,
        norm: str = "linf",
        objective: str | objectives.Objective = "cross_entropy",
        restarts: int = 1,
        rho: float = 0.75,
        momentum: float = 0.75,
        initial_step: float = 2.0,
        name: str | None = None,
    ):
        self.threat_model = threat_models.get(norm, epsilon)
        self.num_steps = validation.count("num_steps", num_steps, minimum=1)
        self.restarts = validation.count("restarts", restarts, minimum=1)
        self.objective = objectives.get(objective)
        self.rho = validation.non_negative("rho", rho)
        self.momentum = validation.non_negative("momentum", momentum)
        self.initial_step = validation.non_negative(
            "initial_step", initial_step
        )
        self._given_name = name
        if name is None:
            short = {"cross_entropy": "ce", "dlr": "dlr", "margin": "margin"}
            name = "apgd_" + short.get(
                getattr(objective, "__name__", objective), "custom"
            )
        self.name = name

    def get_config(self):
        return {
            "epsilon": self.threat_model.epsilon,
            "num_steps": self.num_steps,
            "norm": self.threat_model.norm,
            "objective": objectives.name_of(self.objective),
            "restarts": self.restarts,
            "rho": self.rho,
            "momentum": self.momentum,
            "initial_step": self.initial_step,
            "name": self._given_name,
        }

    def __repr__(self):
        return (
            f"{type(self).__name__}(name={self.name!r}, {self.threat_model}, "
            f"num_steps={self.num_steps}, restarts={self.restarts}, "
            f"objective={getattr(self.objective, '__name__', 'custom')})"
        )

    def _run(self, model, x, y, loss_fn, seed, training, robust, x_init):
        """One APGD run; returns (x_adv, still_robust).

        It starts from a random point, or from the projected `x_init`.
        """
        tm = self.threat_model
        eps = tf.cast(tm.epsilon, x.dtype)
        is_check, lengths = checkpoint_schedule(self.num_steps)
        is_check, lengths = tf.constant(is_check), tf.constant(lengths)

        def evaluate(x_adv):
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(x_adv)
                logits = model(x_adv, training=training)
                loss = loss_fn(logits)
                # Scaled against float16 underflow (the direction is kept).
                total = base.for_gradient(tf.reduce_sum(loss), loss)
            grad = tape.gradient(
                total,
                x_adv,
                unconnected_gradients=tf.UnconnectedGradients.ZERO,
            )
            return loss, grad, _wrong(logits, y)

        if x_init is None:
            x0 = tm.random_init(x, seed)
        else:
            x0 = tm.project(x, tf.cast(x_init, x.dtype))
        loss0, grad0, wrong0 = evaluate(x0)
        found = robust & wrong0
        x_found = tf.where(_per_example(found, x), x0, x)
        robust &= ~wrong0
        batch = tf.shape(x)[0]
        step0 = tf.fill([batch], self.initial_step) * tf.cast(eps, tf.float32)
        state = dict(
            x_adv=x0,
            x_prev=x0,
            grad=grad0,
            step=step0,
            x_best=x0,
            grad_best=grad0,
            loss_best=loss0,
            x_found=x_found,
            robust=robust,
            loss_prev=loss0,
            increases=tf.zeros([batch]),
            best_at_check=loss0,
            halved_at_check=tf.ones([batch], tf.bool),
        )

        def body(i, s):
            mix = tf.where(i > 0, self.momentum, 1.0)
            mix = tf.cast(mix, x.dtype)
            step = tf.cast(_per_example(s["step"], x), x.dtype)
            z = tm.project(x, tm.step(s["x_adv"], s["grad"], step))
            moved = s["x_adv"] + mix * (z - s["x_adv"])
            moved += (1 - mix) * (s["x_adv"] - s["x_prev"])
            x_new = tm.project(x, moved)
            loss, grad, wrong = evaluate(x_new)
            newly = s["robust"] & wrong
            x_found = tf.where(_per_example(newly, x), x_new, s["x_found"])
            better = loss > s["loss_best"]
            better_x = _per_example(better, x)
            x_best = tf.where(better_x, x_new, s["x_best"])
            grad_best = tf.where(better_x, grad, s["grad_best"])
            loss_best = tf.maximum(loss, s["loss_best"])
            rose = tf.cast(loss > s["loss_prev"], tf.float32)
            increases = s["increases"] + rose

            # The step-size check; a no-op except at checkpoints.
            check = tf.gather(is_check, i)
            oscillates = increases <= tf.gather(lengths, i) * self.rho
            stalled = ~s["halved_at_check"] & (s["best_at_check"] >= loss_best)
            halve = check & (oscillates | stalled)
            halve_x = _per_example(halve, x)
            return i + 1, dict(
                x_adv=tf.where(halve_x, x_best, x_new),
                x_prev=s["x_adv"],
                grad=tf.where(halve_x, grad_best, grad),
                step=tf.where(halve, s["step"] / 2, s["step"]),
                x_best=x_best,
                grad_best=grad_best,
                loss_best=loss_best,
                x_found=x_found,
                robust=s["robust"] & ~wrong,
                loss_prev=loss,
                increases=tf.where(check, 0.0, increases),
                best_at_check=tf.where(check, loss_best, s["best_at_check"]),
                halved_at_check=tf.where(check, halve, s["halved_at_check"]),
            )

        _, state = tf.while_loop(
            lambda i, s: (i < self.num_steps) & tf.reduce_any(s["robust"]),
            body,
            (tf.constant(0), state),
            maximum_iterations=self.num_steps,
        )
        robust = state["robust"]
        x_adv = tf.where(
            _per_example(robust, x), state["x_best"], state["x_found"]
        )
        return x_adv, robust

    def _num_runs(self, clean_logits) -> int:
        del clean_logits
        return self.restarts

    def _loss_fn(self, run, y, clean_logits):
        """The loss of run `run` (a scalar tensor); APGD-T overrides it."""
        del run, clean_logits
        return lambda logits: self.objective(logits, y)

    def __call__(self, model, x, y, *, seed=None, training=False, x_init=None):
        x = tf.convert_to_tensor(x)
        y = tf.cast(tf.stop_gradient(tf.convert_to_tensor(y)), tf.int32)
        seed = base.as_seed(seed)
        clean_logits = model(x, training=False)
        clean_wrong = _wrong(clean_logits, y)
        num_runs = self._num_runs(clean_logits)

        # Runs (restarts, targets) loop in the graph, not in Python, so the
        # graph holds one APGD loop however many runs there are.
        def body(run, best, best_score, robust):
            loss_fn = self._loss_fn(run, y, clean_logits)
            run_seed = tf.random.experimental.stateless_fold_in(seed, run)
            x_adv, still = self._run(
                model, x, y, loss_fn, run_seed, training, robust, x_init
            )
            score = objectives.margin(model(x_adv, training=False), y)
            # Newly misclassified, or still robust with a higher margin.
            take = (robust & ~still) | (still & (score > best_score))
            best = tf.where(_per_example(take, x), x_adv, best)
            best_score = tf.where(take, score, best_score)
            return run + 1, best, best_score, robust & still

        _, best, _, _ = tf.while_loop(
            lambda run, *state: (run < num_runs) & tf.reduce_any(state[-1]),
            body,
            (
                tf.constant(0),
                x,
                tf.fill(tf.shape(y), -np.inf),
                ~clean_wrong,
            ),
            maximum_iterations=num_runs,
        )
        # Inputs misclassified before the attack come back unchanged.
        return tf.stop_gradient(tf.where(_per_example(clean_wrong, x), x, best))


@gin.register
class APGDTargeted(APGD):
    """APGD-T: targeted APGD on the targeted DLR loss (AutoAttack).

    For each of the `num_targets` classes ranked highest by the clean logits
    after the top one, one APGD run of `num_steps` iterations maximises
    `-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)` (docs/algorithms.md §7.3);
    each example keeps its worst case over the targets. AutoAttack's
    standard version uses 9 targets and 100 iterations; with fewer than
    `num_targets + 1` classes every other class is a target. Needs at least
    4 classes.

    Example:
        apgd_t = APGDTargeted(epsilon=0.1)
        x_adv = apgd_t(classifier, x, y, seed=0)

    Args:
        epsilon: radius of the threat model in pixel units, in [0, 1].
        num_steps: iterations per target (AutoAttack: 100).
        num_targets: how many target classes to try (AutoAttack: 9).
        norm: "linf" or "l2".
        restarts: runs per target (AutoAttack: 1).
        name: the report name; defaults to "apgd_t".
        **kwargs: `rho`, `momentum`, `initial_step`, as for `APGD`.
    """

    # The targeted DLR loss reads the four largest logits.
    min_classes = 4

    def __init__(
        self,
        *,
        epsilon: float,
        num_steps: int = 100,
        num_targets: int = 9,
        norm: str = "linf",
        restarts: int = 1,
        name: str = "apgd_t",
        **kwargs,
    ):
        super().__init__(
            epsilon=epsilon,
            num_steps=num_steps,
            norm=norm,
            objective="dlr",
            restarts=restarts,
            name=name,
            **kwargs,
        )
        self.num_targets = validation.count(
            "num_targets", num_targets, minimum=1
        )

    def get_config(self):
        config = super().get_config()
        del config["objective"]  # always the targeted DLR loss
        config["num_targets"] = self.num_targets
        config["name"] = self.name
        return config

    def __repr__(self):
        return super().__repr__()[:-1] + f", num_targets={self.num_targets})"

    def _num_runs(self, clean_logits) -> int:
        num_classes = clean_logits.shape[-1]
        if num_classes is None or num_classes < 4:
            raise ValueError(
                f"APGD-T needs a model with at least 4 classes; this one has "
                f"{num_classes}. Use APGD with objective 'cross_entropy'."
            )
        return min(self.num_targets, num_classes - 1) * self.restarts

    def _loss_fn(self, run, y, clean_logits):
        # Run r attacks the class ranked 1 + r // restarts by the clean
        # logits (rank 0 is the prediction, the true class).
        ranked = tf.argsort(clean_logits, axis=-1, direction="DESCENDING")
        targets = tf.gather(ranked, 1 + run // self.restarts, axis=1)
        return lambda logits: objectives.targeted_dlr(logits, y, targets)
