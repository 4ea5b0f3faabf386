"""Learning-rate schedules the papers use, as Keras schedules.

The builders here are registered with gin and called by `experiment.run`
with the keyword arguments `steps_per_epoch` (optimizer steps) and `epochs`,
so gin files speak in epochs:

    run.learning_rate = @piecewise_constant
    piecewise_constant.base_lr = 0.1
    piecewise_constant.boundaries = [75, 90]   # epochs
"""

from collections.abc import Callable
from collections.abc import Sequence
from typing import Any

import gin
import keras
import numpy as np

from tfadv import validation

# Parameters written in epochs (`tfadv.configurables.epoch_parameters`): a
# run that trains a file's method for more or fewer epochs than the file
# scales them with it (tools/benchmark.py does).
EPOCH_PARAMETERS = ("piecewise_constant.boundaries",)


@keras.saving.register_keras_serializable(package="tfadv")
class PiecewiseLinear(keras.optimizers.schedules.LearningRateSchedule):
    """Linear interpolation between `(step, value)` knots, flat outside.

    This is the triangular "cyclic" schedule of Wong et al. (2020) when the
    knots are (0, 0), (peak, max_lr), (total, 0).

    Args:
        boundaries: increasing optimizer-step positions of the knots.
        values: the learning rate at each knot.
    """

    def __init__(self, boundaries: Sequence[float], values: Sequence[float]):
        boundaries = [float(b) for b in boundaries]
        values = [float(v) for v in values]
        if len(boundaries) != len(values) or len(boundaries) < 2:
            raise ValueError(
                "PiecewiseLinear needs as many boundaries as values, at least "
                f"two; got {len(boundaries)} boundaries and {len(values)} "
                "values."
            )
        if np.any(np.diff(boundaries) <= 0):
            raise ValueError(
                f"boundaries must increase strictly; got {boundaries}."
            )
        self.boundaries = boundaries
        self.values = values

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        lr = keras.ops.convert_to_tensor(self.values[0], "float32")
        knots = zip(
            self.boundaries[:-1],
            self.boundaries[1:],
            self.values[:-1],
            self.values[1:],
            strict=True,
        )
        for b0, b1, v0, v1 in knots:
            frac = keras.ops.clip((step - b0) / (b1 - b0), 0.0, 1.0)
            lr = keras.ops.where(step >= b0, v0 + (v1 - v0) * frac, lr)
        return lr

    def get_config(self):
        return {"boundaries": self.boundaries, "values": self.values}


@gin.register
def constant(
    *, steps_per_epoch: int, epochs: float, base_lr: float = 0.01
) -> float:
    """A constant learning rate."""
    del steps_per_epoch, epochs
    return float(base_lr)


@gin.register
def piecewise_constant(
    *,
    steps_per_epoch: int,
    epochs: float,
    base_lr: float = 0.1,
    boundaries: Sequence[float] = (),
    factor: float = 0.1,
) -> keras.optimizers.schedules.LearningRateSchedule | float:
    """`base_lr`, multiplied by `factor` at each boundary (in epochs).

    This is PyTorch's `MultiStepLR(milestones, gamma)`, stepped per epoch as
    YOPO and TRADES do: the first minibatch of a boundary epoch already
    uses the new rate. (Keras's `PiecewiseConstantDecay` keeps the old rate
    while `step <= boundary`, so each boundary is given one step early.)
    Boundaries may be fractional epochs.
    """
    del epochs
    validation.positive_epochs("boundaries", boundaries)
    if not boundaries:
        return float(base_lr)
    steps = [int(round(b * steps_per_epoch)) - 1 for b in boundaries]
    values = [base_lr * factor**i for i in range(len(steps) + 1)]
    return keras.optimizers.schedules.PiecewiseConstantDecay(steps, values)


@gin.register
def cyclic(
    *,
    steps_per_epoch: int,
    epochs: float,
    max_lr: float = 0.2,
    peak_fraction: float = 0.5,
    min_lr: float = 0.0,
) -> PiecewiseLinear:
    """Triangular cyclic schedule: min -> max at `peak_fraction` -> min.

    Stepped per optimizer step, as `locuslab/fast_adversarial` does
    (docs/algorithms.md §6.2: peak at half of training for CIFAR FGSM-RS, at 2/5
    for MNIST).
    """
    validation.in_interval(
        "peak_fraction", peak_fraction, 0.0, 1.0, low_open=True, high_open=True
    )
    validation.positive_epochs("epochs", [epochs])
    total = float(epochs * steps_per_epoch)
    return PiecewiseLinear(
        [0.0, peak_fraction * total, total], [min_lr, max_lr, min_lr]
    )


_Schedule = keras.optimizers.schedules.LearningRateSchedule


@keras.saving.register_keras_serializable(package="tfadv")
class PerMinibatch(keras.optimizers.schedules.LearningRateSchedule):
    """Evaluates `schedule` at the minibatch count, not the update count.

    Methods that replay each minibatch (Free-AT's m replays, DEAT's r, which
    changes between epochs) advance `optimizer.iterations` several times
    per minibatch. A `PerMinibatch` schedule ignores that step and reads the
    trainer's `minibatches` counter instead, so every replay of a minibatch
    uses the same rate and a schedule written in minibatches (epochs) means
    the same thing for every method. `AdversarialTrainer.compile` binds it
    to the trainer's counter; it cannot run unbound. Wong et al.'s Free-AT
    steps its cyclic schedule per replay instead; the two differ by less
    than one minibatch's change of the learning rate.

    Args:
        schedule: a schedule of the minibatch count, or a float.
    """

    def __init__(self, schedule: _Schedule | float):
        self.schedule = schedule
        self.counter = None

    def bind(self, counter) -> None:
        """Reads the minibatch count from `counter` (a scalar variable)."""
        self.counter = counter

    def __call__(self, step):
        del step  # counts optimizer updates, not minibatches
        if self.counter is None:
            raise ValueError(
                "PerMinibatch reads a tfadv trainer's minibatch counter; "
                "use it in the optimizer of a tfadv.methods trainer, which "
                "binds it at compile()."
            )
        minibatch = keras.ops.cast(self.counter, "int64")
        if callable(self.schedule):
            return self.schedule(minibatch)
        return keras.ops.convert_to_tensor(self.schedule, "float32")

    def get_config(self):
        schedule = self.schedule
        if isinstance(schedule, _Schedule):
            schedule = keras.optimizers.schedules.serialize(schedule)
        return {"schedule": schedule}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config["schedule"], dict):
            config["schedule"] = keras.optimizers.schedules.deserialize(
                config["schedule"]
            )
        return cls(**config)


@gin.register
def per_minibatch(
    *,
    steps_per_epoch: int,
    epochs: float,
    schedule: Callable[..., Any] = gin.REQUIRED,
) -> PerMinibatch:
    """Builds `schedule` in minibatches and wraps it in `PerMinibatch`.

    `schedule` is another builder of this module (called with the same
    `steps_per_epoch`, which counts minibatches, and `epochs`). In gin:

        run.learning_rate = @per_minibatch
        per_minibatch.schedule = @cyclic
    """
    inner = schedule(steps_per_epoch=steps_per_epoch, epochs=epochs)
    return PerMinibatch(inner)
