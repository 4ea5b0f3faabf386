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

The controller owns a step count of the trainer (`add_step_count`, so a
checkpoint carries it and the step is retraced when it changes) and its own
state in the trainer's variables. The trainer calls `observe` from its
training step with the ℓ1 norm of the input gradient of its update's own
backward pass (no extra pass), and the epoch hooks call `on_epoch_begin`
and `on_epoch_end`, whose values go to the epoch's logs (TensorBoard and
results.json's history).
"""

import gin
import keras

from tfadv import validation
from tfadv.attacks import base as attack_base

STEPS = "steps"


class StepController:
    """Base class: a rule that sets a step count between epochs.

    Every subclass is a registered Keras serializable (its `get_config`
    holds its constructor arguments), so a trainer driven by it saves to
    `.keras` and loads whole; the controller's state lives in the
    trainer's weights, which the file carries.

    Args:
        max_steps: the most steps the rule may reach (>= 1).
        initial_steps: the count of the first epoch (0 <= it <= max_steps).
        name: the prefix of the logged values (`<name>/steps`, ...).
    """

    # Weights the training step itself changes (not only the epoch hooks).
    mutable_state = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        attack_base.register_serializable(cls)

    def __init__(self, *, max_steps: int, initial_steps: int = 1, name: str):
        self.max_steps = validation.count(
            f"{type(self).__name__} max_steps", max_steps, minimum=1
        )
        self.initial_steps = validation.count(
            f"{type(self).__name__} initial_steps", initial_steps
        )
        if self.initial_steps > self.max_steps:
            raise ValueError(
                f"{type(self).__name__} initial_steps ({initial_steps}) must "
                f"not exceed max_steps ({max_steps})."
            )
        self.name = name
        self.trainer = None
        self.count_name = None

    def attach(self, trainer, count_name: str) -> None:
        """Takes charge of `trainer`'s step count `count_name`."""
        if self.trainer is not None:
            raise ValueError(
                f"This {type(self).__name__} already drives a "
                f"{type(self.trainer).__name__}; give each trainer its own."
            )
        self.trainer = trainer
        self.count_name = count_name
        trainer.add_step_count(count_name, self.initial_steps)
        self.build(trainer)

    def build(self, trainer) -> None:
        """Creates the controller's state as weights of `trainer`."""

    @property
    def steps(self) -> int:
        """The current count (a Python int; read as the step is traced)."""
        return self.trainer.step_count(self.count_name)

    def set_steps(self, value: int) -> None:
        self.trainer.set_step_count(self.count_name, value)

    def observe(self, gradient_l1) -> None:
        """Called from the training step with ‖∇ₓ loss‖₁ of its update."""

    def on_epoch_begin(self, epoch: int) -> None:
        """Called before each epoch, eagerly."""

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> dict:
        """Applies the rule after `epoch`; returns values to log."""
        raise NotImplementedError

    def get_config(self) -> dict:
        """The constructor arguments (not the state, which is weights)."""
        return {
            "max_steps": self.max_steps,
            "initial_steps": self.initial_steps,
        }

    @classmethod
    def from_config(cls, config: dict) -> "StepController":
        """A fresh controller (not attached) from `get_config()`."""
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
    count grows. Logs `mplus/steps` (the count of the epoch that ended),
    `mplus/magnitude` (its M) and `mplus/threshold` (after the rule; 0 until
    it is set). M and the threshold are weights of the trainer, so a
    checkpoint carries them; M restarts at every epoch.

    Example:
        trainer = tfadv.methods.DEAT(
            classifier, epsilon=8 / 255,
            step_controller=tfadv.methods.controllers.MPlus(gamma=1.01))
        trainer.fit(train_ds, epochs=50, callbacks=trainer.callbacks())

    Args:
        gamma: γ > 0, the factor of the threshold (1.01 on CIFAR-10).
        max_steps: r_max, the most steps (8 for M+DEAT).
        initial_steps: the first epoch's count (1 for M+DEAT, 0 for M+PGD,
            M+TRADES and M+MART).
    """

    mutable_state = ("mplus_magnitude",)

    def __init__(
        self,
        *,
        gamma: float = 1.01,
        max_steps: int = 8,
        initial_steps: int = 1,
    ):
        super().__init__(
            max_steps=max_steps, initial_steps=initial_steps, name="mplus"
        )
        self.gamma = validation.in_interval(
            "MPlus gamma", gamma, 0.0, float("inf"), low_open=True
        )
        self.magnitude = None
        self.threshold = None
        self.threshold_set = None

    def build(self, trainer):
        # Each replica sums its own share of M (no all-reduce in the step);
        # a read outside the step adds the replicas' sums. An attribute of
        # the trainer, so checkpoints carry it.
        trainer.mplus_magnitude = keras.Variable(
            initializer="zeros",
            shape=(),
            dtype="float32",
            trainable=False,
            synchronization="on_read",
            aggregation="sum",
            name="mplus_magnitude",
        )
        self.magnitude = trainer.mplus_magnitude
        self.threshold = trainer.add_weight(
            shape=(),
            initializer="zeros",
            trainable=False,
            aggregation="only_first_replica",
            name="mplus_threshold",
        )

    def observe(self, gradient_l1):
        self.magnitude.assign_add(gradient_l1)

    def on_epoch_begin(self, epoch):
        self.magnitude.assign(0.0)

    def decide(self, epoch: int, magnitude: float, threshold: float):
        """The rule: `(steps, threshold)` after `epoch` with this M."""
        steps = self.steps
        if epoch == 0:
            steps = min(steps + 1, self.max_steps)
        elif epoch == 1:
            threshold = self.gamma * magnitude
        elif magnitude > threshold and steps < self.max_steps:
            threshold = self.gamma * magnitude
            steps += 1
        return steps, threshold

    def on_epoch_end(self, epoch, logs=None):
        magnitude = float(keras.ops.convert_to_numpy(self.magnitude))
        threshold = float(keras.ops.convert_to_numpy(self.threshold))
        used = self.steps
        steps, threshold = self.decide(epoch, magnitude, threshold)
        self.threshold.assign(threshold)
        self.set_steps(steps)
        return {
            "mplus/steps": used,
            "mplus/magnitude": magnitude,
            "mplus/threshold": threshold,
        }

    def get_config(self):
        return {**super().get_config(), "gamma": self.gamma}


@gin.register
class LinearGrowth(StepController):
    """DEAT-d: `steps = min(⌊epoch / every⌋ + initial_steps, max_steps)`.

    DEAT's FAST setting (d = 3, r_max = 5; docs/algorithms.md §2.4). The
    count is a function of the epoch, set before each epoch, so a resumed
    run gets it right. Logs `linear/steps`.

    Args:
        every: epochs per step (d >= 1).
        max_steps: r_max.
        initial_steps: the count of epochs 0 … every − 1.
    """

    def __init__(
        self, *, every: int = 3, max_steps: int = 5, initial_steps: int = 1
    ):
        super().__init__(
            max_steps=max_steps, initial_steps=initial_steps, name="linear"
        )
        self.every = validation.count("LinearGrowth every", every, minimum=1)

    def steps_at(self, epoch: int) -> int:
        return min(epoch // self.every + self.initial_steps, self.max_steps)

    def on_epoch_begin(self, epoch):
        self.set_steps(self.steps_at(epoch))

    def on_epoch_end(self, epoch, logs=None):
        return {"linear/steps": self.steps}

    def get_config(self):
        return {**super().get_config(), "every": self.every}


@gin.register
class AccuracyTrigger(StepController):
    """DEAT-p: one more step after an epoch whose accuracy passed a bar.

    DEAT's FAST setting (threshold 0.4, r_max = 4; docs/algorithms.md §2.4).
    The accuracy is the epoch's training `metric` (the accuracy on the
    training examples the method made). Logs `accuracy_trigger/steps`.

    Args:
        threshold: the accuracy, in [0, 1], above which the count grows.
        max_steps: r_max.
        initial_steps: the first epoch's count.
        metric: the training log to compare (default "adv_accuracy").
    """

    def __init__(
        self,
        *,
        threshold: float = 0.4,
        max_steps: int = 4,
        initial_steps: int = 1,
        metric: str = "adv_accuracy",
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

    def on_epoch_end(self, epoch, logs=None):
        used = self.steps
        logs = logs or {}
        if self.metric not in logs:
            raise ValueError(
                f"AccuracyTrigger compares the training log {self.metric!r}, "
                f"which this run does not have (it has {sorted(logs)})."
            )
        if float(logs[self.metric]) > self.threshold and used < self.max_steps:
            self.set_steps(used + 1)
        return {"accuracy_trigger/steps": used}

    def get_config(self):
        return {
            **super().get_config(),
            "threshold": self.threshold,
            "metric": self.metric,
        }


def controlled_step_size(epsilon: float, steps: int, floor: float) -> float:
    """DEAT's step for `steps` steps: `max(ε / steps, floor)`.

    The M+ scripts of the reference misspell the floor's name in the
    branch where `ε / steps < floor`; this is the rule they intend
    (docs/algorithms.md §2.3).
    """
    if steps < 1:
        return floor
    return max(epsilon / steps, floor)
