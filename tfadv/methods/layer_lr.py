"""A learning rate of its own for some variables, inside one SGD optimizer.

YOPO's MNIST setting decays its first layer's rate on its own epochs
(docs/algorithms.md §1.6 P7). Rather than a second optimizer, the rate
lives in a checkpointed variable that an epoch hook sets, and those
variables' gradients are multiplied by `rate / lr` before the one
optimizer's update. Keras SGD's update (plain, momentum or Nesterov) is
linear in `lr·g` per variable, so this equals a second SGD with its own
rate and the same momentum, while the loss scaling, `optimizer.iterations`
and the checkpointed optimizer state stay those of one optimizer. It needs
`keras.optimizers.SGD` without clipping or decoupled weight decay
(`check_optimizer`); where the main rate is 0, these variables do not move
either.
"""

from collections.abc import Sequence

import keras
import tensorflow as tf

from tfadv import validation


class LayerLearningRate:
    """A piecewise-constant rate in epochs for a group of variables.

    The rate is `initial · factor^k` after k of `boundaries` (epochs,
    0-based, as `tfadv.schedules.piecewise_constant`: PyTorch `MultiStepLR`
    milestones stepped once per epoch).

    Args:
        owner: the trainer whose weight holds the rate (so checkpoints
            carry it).
        initial: the initial learning rate.
        boundaries: epochs at which the rate is multiplied by `factor`.
        factor: the decay factor.
        name: the variable's name, and the key of the logged value.
        arg_prefix: the owner's argument names in error messages:
            `<arg_prefix>`, `<arg_prefix>_boundaries`, `<arg_prefix>_factor`.
    """

    def __init__(
        self,
        owner: keras.Model,
        *,
        initial: float,
        boundaries: Sequence[float] = (),
        factor: float = 0.1,
        name: str = "layer_learning_rate",
        arg_prefix: str = "lr",
    ):
        self.initial = validation.non_negative(arg_prefix, initial)
        self.boundaries = validation.positive_epochs(
            f"{arg_prefix}_boundaries", boundaries
        )
        self.factor = validation.non_negative(f"{arg_prefix}_factor", factor)
        self.name = name
        self.variable = owner.add_weight(
            shape=(),
            initializer=keras.initializers.Constant(self.initial),
            trainable=False,
            name=name,
        )

    def rate_at(self, epoch: int) -> float:
        """The rate of `epoch` (0-based)."""
        decays = sum(epoch >= b for b in self.boundaries)
        return self.initial * self.factor**decays

    def on_epoch_begin(self, epoch: int) -> None:
        """Sets the rate for `epoch`."""
        self.variable.assign(self.rate_at(epoch))

    def log(self) -> dict:
        """`{name: current rate}`, for the epoch's logs."""
        return {self.name: float(keras.ops.convert_to_numpy(self.variable))}

    def scale(self, grads: list, optimizer) -> list:
        """Multiplies gradients by `rate / lr` (0 where lr is 0)."""
        lr = tf.cast(optimizer.learning_rate, tf.float32)
        ratio = tf.math.divide_no_nan(tf.cast(self.variable, tf.float32), lr)
        return [
            None if g is None else g * tf.cast(ratio, g.dtype) for g in grads
        ]

    @staticmethod
    def check_optimizer(optimizer, method: str) -> None:
        """Refuses an optimizer for which `scale` is not exact.

        Raises:
            ValueError: not a plain `keras.optimizers.SGD` (clipping or a
                decoupled weight decay set).
        """
        optimizer = getattr(optimizer, "inner_optimizer", optimizer)
        problems = []
        if type(optimizer) is not keras.optimizers.SGD:
            problems.append(f"it is a {type(optimizer).__name__}")
        for name in ("clipnorm", "clipvalue", "global_clipnorm"):
            if getattr(optimizer, name, None) is not None:
                problems.append(f"it sets {name}")
        if getattr(optimizer, "weight_decay", None):
            problems.append(
                f"it sets its own (decoupled) weight_decay; use "
                f"{method}.weight_decay, the reference's coupled decay"
            )
        if problems:
            raise ValueError(
                f"{method}'s first_layer_lr rescales layer 0's gradients by "
                "first_layer_lr / lr inside one optimizer, which is exact "
                "for keras.optimizers.SGD (any momentum, Nesterov) without "
                f"gradient clipping or decoupled weight decay, but "
                f"{'; '.join(problems)}. Use such an SGD, or set "
                "first_layer_lr=None."
            )
