"""Step counts that change between epochs, and the hook caller.

`fit` builds the training step once, so a Python int compiled into it does
not change because an attribute changed. A method whose count changes
between epochs (DEAT's replays, an M+ attack's steps, GAAT's phase) keeps
it as a checkpointed integer variable that the step reads as a Python int
when it is traced, so loops over it unroll; when the count differs from
the value the step was traced with, `EpochHooks` rebuilds the train
function before the next epoch (`fit` reads `train_function` at every
batch).
"""

import keras
import tensorflow as tf

from tfadv import validation
from tfadv.methods import controllers
from tfadv.methods import user_metrics
from tfadv.methods import weight_perturbations


class StepCounts:
    """A trainer's step counts: their variables and their traced values.

    Kept outside Keras's state tracking; the variables themselves are the
    trainer's weights (made with its `add_weight`), so checkpoints carry
    them.
    """

    def __init__(self):
        self.variables = {}
        self.traced = {}

    def add(self, name: str, variable) -> None:
        self.variables[name] = variable

    def read(self, name: str) -> int:
        """The count as a Python int; inside a trace, records the value."""
        tracing = not tf.executing_eagerly()
        with tf.init_scope():  # eager even while the step is traced
            value = int(keras.ops.convert_to_numpy(self.variables[name]))
        if tracing:
            self.traced[name] = value
        return value

    def set(self, name: str, value: int) -> None:
        self.variables[name].assign(validation.count(name, value))

    def changed_since_trace(self) -> bool:
        """Whether a count differs from the value the step was traced with."""
        return any(
            int(keras.ops.convert_to_numpy(self.variables[name])) != traced
            for name, traced in self.traced.items()
        )


def attach_controller(trainer, controller):
    """A trainer's step controller, checked, with its state and count.

    The controller checks that it can drive the trainer, takes its cap,
    budget and step floor from the training attack, and makes its own
    variables; the trainer adds the step count the controller decides
    (`step_controller_count`), starting at the controller's
    `initial_steps`.

    Returns:
        The controller, or None.

    Raises:
        TypeError: `controller` is not a `StepController`.
        ValueError: the controller cannot drive this trainer.
    """
    if controller is None:
        return None
    if not isinstance(controller, controllers.StepController):
        raise TypeError(
            f"{type(trainer).__name__}.step_controller must be a tfadv."
            "methods.controllers.StepController (e.g. MPlus); got "
            f"{controller!r}."
        )
    controller.validate_trainer_compatibility(trainer)
    attack = trainer.train_attack
    controller.create_state(
        attack.num_steps, epsilon=attack.epsilon, step_floor=attack.step_size
    )
    trainer.add_step_count(
        trainer.step_controller_count, controller.initial_steps
    )
    return controller


def with_method_callbacks(trainer, callbacks):
    """`fit`'s callbacks with the trainer's own ones added, each once.

    The method's callbacks (`trainer.callbacks()`) go first, so what its
    hooks add to an epoch's logs reaches the user's callbacks; those the
    user already passed (the same objects) are not added again.

    Args:
        trainer: the `AdversarialTrainer` being fitted.
        callbacks: what the user passed to `fit`: None, a list or tuple of
            callbacks, or a `keras.callbacks.CallbackList`.

    Returns:
        What to pass to `keras.Model.fit`.

    Raises:
        ValueError: a callback monitors a robust metric the trainer never
            logs (`user_metrics.check_monitors`).
    """
    given = callbacks
    if isinstance(callbacks, keras.callbacks.CallbackList):
        given = callbacks.callbacks
    given = list(given or [])
    user_metrics.check_monitors(trainer, given)
    present = {id(callback) for callback in given}
    missing = [c for c in trainer.callbacks() if id(c) not in present]
    if isinstance(callbacks, keras.callbacks.CallbackList):
        callbacks.callbacks[:0] = missing
        callbacks.set_model(trainer)
        return callbacks
    return missing + given


class MethodCallbacks:
    """A trainer's own callbacks, which its `fit` adds to the user's.

    `extra_callbacks()` is where a method adds its own (a monitor batch, a
    guard); `callbacks()` returns them after the hook caller
    (`EpochHooks`).
    """

    _method_callbacks = None

    def extra_callbacks(self) -> list:
        """Callbacks of the method's own (a monitor batch, a guard)."""
        return []

    def callbacks(self) -> list:
        """The callbacks the method needs; `fit` adds them by itself.

        The same objects at every call: the hook caller first, then
        `extra_callbacks()`.
        """
        if self._method_callbacks is None:
            self._method_callbacks = [EpochHooks(self), *self.extra_callbacks()]
        return list(self._method_callbacks)

    def fit(self, *args, callbacks=None, **kwargs):
        """`keras.Model.fit`, with the method's `callbacks()` added once."""
        callbacks = with_method_callbacks(self, callbacks)
        return super().fit(*args, callbacks=callbacks, **kwargs)


class EpochHooks(keras.callbacks.Callback):
    """Calls a trainer's epoch hooks and keeps its step counts traced.

    `on_epoch_begin` lets the step controller, the trainer's
    `on_epoch_begin(epoch)` and its weight perturbation's warm-up
    (`weight_perturbations.on_epoch_begin`) set the epoch's counts, then
    retraces the training step when a count differs from the value the
    step was traced with (a hook or a restored checkpoint changed it).
    `on_epoch_end` lets the controller decide the next count and adds what
    it and `trainer.on_epoch_end` return to the epoch's logs, so callbacks
    after it (TensorBoard, the history) record it. The hooks run eagerly,
    outside the compiled step.

    Args:
        trainer: the `AdversarialTrainer` whose hooks to call.
    """

    def __init__(self, trainer):
        super().__init__()
        self.trainer = trainer

    def on_epoch_begin(self, epoch, logs=None):
        trainer = self.trainer
        controller = trainer.step_controller
        if controller is not None:
            name = trainer.step_controller_count
            steps = controller.on_epoch_begin(epoch, trainer.step_count(name))
            trainer.set_step_count(name, steps)
        trainer.on_epoch_begin(epoch)
        # A weight perturbation's warm-up ends (its step count turns on).
        weight_perturbations.on_epoch_begin(trainer, epoch)
        trainer.retrace_if_counts_changed()

    def on_epoch_end(self, epoch, logs=None):
        trainer = self.trainer
        controller = trainer.step_controller
        extra = {}
        if controller is not None:
            # The controller decides the next count; the trainer keeps it.
            name = trainer.step_controller_count
            steps, values = controller.on_epoch_end(
                epoch, trainer.step_count(name), logs
            )
            trainer.set_step_count(name, steps)
            extra.update(values)
        # A hook that returns None has nothing to log.
        extra.update(trainer.on_epoch_end(epoch, logs) or {})
        if extra and logs is not None:
            logs.update(extra)
