"""Step controllers: what decides a method's step count between epochs.

DEAT (Wang et al. 2021) trains with r replays per minibatch and lets r grow
during training; its "M+" rule also drives the attack steps of PGD-AT,
TRADES and MART (docs/algorithms.md §2). A controller is one small object
that a method accepts (`step_controller=`), like the loss objects Keras's
`Distiller` takes, never code copied into each `train_step`:

- `MPlus`: the gradient-magnitude rule (M+);
- `LinearGrowth`: DEAT-d, one more step every `every` epochs;
- `AccuracyTrigger`: DEAT-p, one more step when the epoch's training
  accuracy passes a threshold.

A controller is a rule with state of its own and no reference to what it
drives. It is a Keras layer, so its state (M+'s magnitude and threshold)
is its own saved variables, which a trainer's checkpoint and `.keras` file
carry. The trainer that accepts it asks it to
`validate_trainer_compatibility`, then `create_state(max_steps)` (the cap
is the
training attack's `num_steps` unless the controller was given one); per
step it `observe`s the ℓ1 norm of the input gradient of the update's own
backward pass (no extra pass); per epoch `on_epoch_begin(epoch, steps)`
and `on_epoch_end(epoch, steps, logs)` return the count to run next, which
the trainer sets as its own step count (retracing its step), and the
values to add to the epoch's logs.
"""

import gin
import keras
import tensorflow as tf

from tfadv import validation
from tfadv.attacks import base as attack_base

# Where M is measured (`StepController.measure`).
UPDATE = "update"
LAST_ATTACK_STEP = "last_attack_step"
MEASURES = (UPDATE, LAST_ATTACK_STEP)
# How M+'s attack step follows the count (`MPlus.step_rule`).
STEP_RULES = ("max", "fixed")

# Parameters written in epochs (`tfadv.configurables.epoch_parameters`): a
# run that trains a file's method for more or fewer epochs than the file
# scales them with it (tools/benchmark.py does).
EPOCH_PARAMETERS = ("LinearGrowth.every",)


class StepController(keras.layers.Layer):
    """Base class: a rule that sets a step count between epochs.

    Every subclass is a registered Keras serializable (its `get_config`
    holds its constructor arguments), so a trainer driven by it saves to
    `.keras` and loads whole, the controller's variables with it.

    Args:
        max_steps: the most steps the rule may reach (>= 1), or None for
            the training attack's `num_steps` (given, it must equal them).
        initial_steps: the count of the first epoch (0 <= it <= max_steps).
        name: the prefix of the logged values (`<name>/steps`, ...) and of
            the controller's variables.
    """

    # The controller's variables that the training step itself changes
    # (not only the epoch hooks), by name.
    mutable_state = ()
    # Where the trainer measures the M it observes: the input gradient of
    # the update's own backward pass, or of the attack's last step.
    measure = UPDATE

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        attack_base.register_serializable(cls)

    def __init__(
        self, *, max_steps: int | None = None, initial_steps: int = 1, **kwargs
    ):
        super().__init__(**kwargs)
        kind = type(self).__name__
        if max_steps is not None:
            max_steps = validation.count(
                f"{kind} max_steps", max_steps, minimum=1
            )
        self.max_steps = max_steps
        self.initial_steps = validation.count(
            f"{kind} initial_steps", initial_steps
        )
        self._check_initial_steps()

    def _check_initial_steps(self):
        if self.max_steps is not None and self.initial_steps > self.max_steps:
            raise ValueError(
                f"{type(self).__name__} initial_steps ({self.initial_steps}) "
                f"must not exceed max_steps ({self.max_steps})."
            )

    def validate_trainer_compatibility(self, trainer) -> None:
        """Refuses a trainer this controller cannot drive.

        The trainer must declare a step count (`step_controller_count`)
        and train with an attack that has `num_steps` and `step_size`,
        whose `num_steps` is the cap; a controller drives one trainer.

        Raises:
            ValueError: any of these does not hold.
        """
        method = type(trainer).__name__
        if self.built:
            raise ValueError(
                f"This {type(self).__name__} already drives a trainer; give "
                f"each trainer its own (for {method})."
            )
        count = trainer.step_controller_count
        if count is None:
            raise ValueError(
                f"{method} has no step count that a step controller could "
                "drive; controllers drive PGDAT, TRADES and MART (the "
                "training attack's steps) and DEAT (its replays)."
            )
        config = trainer.train_attack.get_config()
        if not {"num_steps", "step_size"} <= set(config):
            raise ValueError(
                f"{method}'s step controller changes its training attack's "
                f"num_steps and step_size, which {trainer.train_attack!r} "
                "does not have; use a ProjectedGradient."
            )
        measured = getattr(trainer.train_attack, "ascend_with_gradient", None)
        if self.measure == LAST_ATTACK_STEP and (
            measured is None or config.get("restarts", 1) != 1
        ):
            raise ValueError(
                f"{type(self).__name__}(measure={LAST_ATTACK_STEP!r}) takes M "
                "from the gradient of the training attack's last step, which "
                f"{trainer.train_attack!r} does not give; use a "
                "ProjectedGradient with one restart, or measure='update'."
            )
        if self.max_steps not in (None, config["num_steps"]):
            raise ValueError(
                f"{method}'s step controller stops at max_steps="
                f"{self.max_steps}, but its train_attack's num_steps, the "
                f"most {count} it may reach, is {config['num_steps']}; give "
                "one of them (the controller takes the attack's when its "
                "max_steps is None), or the same value to both."
            )

    def create_state(
        self, max_steps: int, *, epsilon: float, step_floor: float
    ) -> None:
        """Fixes the cap and creates the controller's variables.

        Args:
            max_steps: the training attack's `num_steps`.
            epsilon: the training budget ε.
            step_floor: α, the training attack's `step_size`.
        """
        self.max_steps = validation.count(
            f"{type(self).__name__} max_steps", max_steps, minimum=1
        )
        self.epsilon = float(epsilon)
        self.step_floor = float(step_floor)
        self._check_initial_steps()
        # Variables made here are named `<name>/<variable>`, as a layer's.
        with keras.name_scope(self.name, caller=self):
            self.make_variables()
        self.built = True

    def make_variables(self) -> None:
        """Creates the rule's variables (none by default)."""

    def observe(self, gradient_l1) -> None:
        """Called from the training step with ‖∇ₓ loss‖₁ (see `measure`)."""

    def observe_accuracy(self, logits, labels) -> None:
        """Called from the training step with the logits it trained on.

        The last replay's for DEAT; a rule on the training accuracy
        (`AccuracyTrigger`) sums them.
        """

    def step_size(self, steps: int) -> float:
        """The attack's step at `steps` steps: `max(ε / steps, α)`."""
        return controlled_step_size(self.epsilon, steps, self.step_floor)

    def on_epoch_begin(self, epoch: int, steps: int) -> int:
        """The count epoch `epoch` runs, given the current one; eagerly."""
        del epoch
        return steps

    def on_epoch_end(
        self, epoch: int, steps: int, logs: dict | None = None
    ) -> tuple[int, dict]:
        """Applies the rule after `epoch`, which ran `steps`.

        Returns:
            `(steps, values)`: the count of the next epoch, and values to
            add to the epoch's logs.
        """
        raise NotImplementedError

    def get_config(self) -> dict:
        """The constructor arguments (not the state, which is weights)."""
        return {
            "max_steps": self.max_steps,
            "initial_steps": self.initial_steps,
        }

    @classmethod
    def from_config(cls, config: dict) -> "StepController":
        """A fresh controller (not built) from `get_config()`."""
        return cls(**config)


@gin.register
class MPlus(StepController):
    """The M+ rule of DEAT (Wang et al. 2021), docs/algorithms.md §2.2.

    `M` is the epoch's sum of `‖∇ₓ L‖₁` over its minibatches, where `L` is
    the batch-mean training loss and x the input of the update (the
    normalised input in DEAT's reference, whose method multiplies the
    gradient by the normalisation's std). After each epoch t, in this
    order:

        t = 0:                      steps ← steps + 1
        t = 1:                      threshold ← γ·M
        M > threshold, steps < max: threshold ← γ·M; steps ← steps + 1

    The comparison is strict and the threshold is refreshed only when the
    count grows. With `forced_growth`, the count also grows (and the
    threshold is refreshed) after any epoch t >= 2 while `α·steps < ε`, α
    the attack's step floor: the runs behind DEAT's Table 1 for M+PGD,
    M+TRADES and M+MART did this (the clause is commented out in the
    repository's current scripts, `mpgd_cifar10.py` lines 199-200 and
    `mmart_cifar10.py` 259-260; fed the logged M values, only the rule with
    it reproduces the logged schedules, `tests/data/deat_table1.json`).
    The reference does not cap that growth; tfadv stops at `max_steps`.
    Logs `mplus/steps` (the count of the epoch that ended),
    `mplus/magnitude` (its M) and `mplus/threshold` (after the rule; 0 until
    it is set). M and the threshold are the controller's variables, so a
    checkpoint carries them; M restarts at every epoch.

    Example:
        trainer = tfadv.methods.DEAT(
            classifier, epsilon=8 / 255,
            step_controller=tfadv.methods.controllers.MPlus(gamma=1.01))
        trainer.fit(train_ds, epochs=50)

    Args:
        gamma: γ > 0, the factor of the threshold (1.01 on CIFAR-10).
        max_steps: r_max, the most steps; None (the default) takes the
            training attack's `num_steps` (8 for M+DEAT).
        initial_steps: the first epoch's count (1 for M+DEAT, 0 for M+PGD,
            M+TRADES and M+MART).
        forced_growth: also grow while `α·steps < ε` (Table 1's runs).
        measure: where the trainer measures M: "update", the input
            gradient of the update's own backward pass at the training
            examples (the repository's current M+ scripts, and M+DEAT's last
            replay), or "last_attack_step", the gradient of the attack's
            objective at its last step (Table 1's M+PGD, M+TRADES and
            M+MART runs: their logs show M = 0 in every 0-step epoch, which
            only this gives; read from the logs, the lines are commented out
            in the current scripts). DEAT measures its last replay's
            backward either way (the update and the attack's step are one
            pass there).
        step_rule: the attack's step at k steps: "max", `max(ε / k, α)`
            (M+PGD and M+DEAT), or "fixed", α at every count (the M+TRADES
            and M+MART references, whose attack reads the module-level step;
            the `max(ε / k, α)` their `main()` computes never reaches it).
    """

    mutable_state = ("magnitude",)

    def __init__(
        self,
        *,
        gamma: float = 1.01,
        max_steps: int | None = None,
        initial_steps: int = 1,
        forced_growth: bool = False,
        measure: str = UPDATE,
        step_rule: str = "max",
    ):
        super().__init__(
            max_steps=max_steps, initial_steps=initial_steps, name="mplus"
        )
        self.gamma = validation.in_interval(
            "MPlus gamma", gamma, 0.0, float("inf"), low_open=True
        )
        self.forced_growth = validation.boolean(
            "MPlus forced_growth", forced_growth
        )
        self.measure = validation.choice("MPlus measure", measure, MEASURES)
        self.step_rule = validation.choice(
            "MPlus step_rule", step_rule, STEP_RULES
        )
        self.magnitude = None
        self.threshold = None

    def make_variables(self):
        self.magnitude = replica_sum("magnitude")
        self.threshold = self.add_weight(
            shape=(),
            initializer="zeros",
            trainable=False,
            aggregation="only_first_replica",
            name="threshold",
        )

    def observe(self, gradient_l1):
        self.magnitude.assign_add(gradient_l1)

    def on_epoch_begin(self, epoch, steps):
        self.magnitude.assign(0.0)
        return steps

    def decide(self, epoch: int, steps: int, magnitude: float, threshold):
        """The rule: `(steps, threshold)` after `epoch` with this M."""
        below_cap = steps < self.max_steps
        forced = self.forced_growth and self.step_floor * steps < self.epsilon
        if epoch == 0:
            steps = min(steps + 1, self.max_steps)
        elif epoch == 1:
            threshold = self.gamma * magnitude
        elif below_cap and (magnitude > threshold or forced):
            threshold = self.gamma * magnitude
            steps += 1
        return steps, threshold

    def step_size(self, steps):
        if self.step_rule == "fixed":
            return self.step_floor
        return super().step_size(steps)

    def on_epoch_end(self, epoch, steps, logs=None):
        magnitude = float(keras.ops.convert_to_numpy(self.magnitude))
        threshold = float(keras.ops.convert_to_numpy(self.threshold))
        following, threshold = self.decide(epoch, steps, magnitude, threshold)
        self.threshold.assign(threshold)
        return following, {
            "mplus/steps": steps,
            "mplus/magnitude": magnitude,
            "mplus/threshold": threshold,
        }

    def get_config(self):
        return {
            **super().get_config(),
            "gamma": self.gamma,
            "forced_growth": self.forced_growth,
            "measure": self.measure,
            "step_rule": self.step_rule,
        }


@gin.register
class LinearGrowth(StepController):
    """DEAT-d: `steps = min(⌊epoch / every⌋ + initial_steps, max_steps)`.

    DEAT's FAST setting (d = 3, r_max = 5; docs/algorithms.md §2.4). The
    count is a function of the epoch, set before each epoch, so a resumed
    run gets it right. Logs `linear/steps`.

    Args:
        every: epochs per step (d >= 1).
        max_steps: r_max (5 in DEAT's setting); None takes the training
            attack's `num_steps`.
        initial_steps: the count of epochs 0 … every − 1.
    """

    def __init__(
        self,
        *,
        every: int = 3,
        max_steps: int | None = None,
        initial_steps: int = 1,
    ):
        super().__init__(
            max_steps=max_steps, initial_steps=initial_steps, name="linear"
        )
        self.every = validation.count("LinearGrowth every", every, minimum=1)

    def steps_at(self, epoch: int) -> int:
        return min(epoch // self.every + self.initial_steps, self.max_steps)

    def on_epoch_begin(self, epoch, steps):
        return self.steps_at(epoch)

    def on_epoch_end(self, epoch, steps, logs=None):
        return steps, {"linear/steps": steps}

    def get_config(self):
        return {**super().get_config(), "every": self.every}


@gin.register
class AccuracyTrigger(StepController):
    """DEAT-p: one more step after an epoch whose accuracy passed a bar.

    DEAT's FAST setting (threshold 0.4, r_max = 4; docs/algorithms.md §2.4).
    The accuracy is, by default, the epoch's accuracy on the last replay's
    examples, which the trainer reports to `observe_accuracy`, as the
    reference (`deat-p_cifar10.py` lines 137 and 144) counts it; with
    `metric=` a training log instead (e.g. "adv_accuracy", which averages
    every replay, the noise-only first one included). Logs
    `accuracy_trigger/steps` and `accuracy_trigger/accuracy`.

    Args:
        threshold: the accuracy, in [0, 1], above which the count grows.
        max_steps: r_max (4 in DEAT's setting); None takes the training
            attack's `num_steps`.
        initial_steps: the first epoch's count.
        metric: None for the last replay's accuracy, or the name of the
            training log to compare.
    """

    def __init__(
        self,
        *,
        threshold: float = 0.4,
        max_steps: int | None = None,
        initial_steps: int = 1,
        metric: str | None = None,
    ):
        super().__init__(
            max_steps=max_steps,
            initial_steps=initial_steps,
            name="accuracy_trigger",
        )
        self.threshold = validation.in_interval(
            "AccuracyTrigger threshold", threshold, 0.0, 1.0
        )
        self.metric = metric
        self.correct = None
        self.seen = None

    mutable_state = ("correct", "seen")

    def make_variables(self):
        self.correct = replica_sum("correct")
        self.seen = replica_sum("seen")

    def observe_accuracy(self, logits, labels):
        predicted = tf.argmax(logits, axis=-1, output_type=tf.int32)
        hits = tf.cast(
            tf.equal(predicted, tf.cast(labels, tf.int32)), "float32"
        )
        self.correct.assign_add(tf.reduce_sum(hits))
        self.seen.assign_add(tf.cast(tf.size(hits), "float32"))

    def on_epoch_begin(self, epoch, steps):
        self.correct.assign(0.0)
        self.seen.assign(0.0)
        return steps

    def accuracy(self, logs) -> float:
        """The epoch's accuracy the rule compares."""
        if self.metric is None:
            seen = float(keras.ops.convert_to_numpy(self.seen))
            correct = float(keras.ops.convert_to_numpy(self.correct))
            return correct / seen if seen else 0.0
        logs = logs or {}
        if self.metric not in logs:
            raise ValueError(
                f"AccuracyTrigger compares the training log {self.metric!r}, "
                f"which this run does not have (it has {sorted(logs)})."
            )
        return float(logs[self.metric])

    def on_epoch_end(self, epoch, steps, logs=None):
        used = steps
        accuracy = self.accuracy(logs)
        if accuracy > self.threshold and used < self.max_steps:
            steps = used + 1
        return steps, {
            "accuracy_trigger/steps": used,
            "accuracy_trigger/accuracy": accuracy,
        }

    def get_config(self):
        return {
            **super().get_config(),
            "threshold": self.threshold,
            "metric": self.metric,
        }


def replica_sum(name: str) -> keras.Variable:
    """A float32 scalar the step adds to, summed over replicas when read.

    Each replica adds its own share (no all-reduce in the step); a read
    outside the step adds the replicas' sums.
    """
    return keras.Variable(
        initializer="zeros",
        shape=(),
        dtype="float32",
        trainable=False,
        synchronization="on_read",
        aggregation="sum",
        name=name,
    )


def controlled_step_size(epsilon: float, steps: int, floor: float) -> float:
    """DEAT's step for `steps` steps: `max(ε / steps, floor)`.

    The M+ scripts of the reference misspell the floor's name in the
    branch where `ε / steps < floor`; this is the rule they intend
    (docs/algorithms.md §2.3).
    """
    if steps < 1:
        return floor
    return max(epsilon / steps, floor)
