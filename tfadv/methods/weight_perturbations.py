"""Weight perturbations around a method's update: the hook AWP plugs into.

A weight perturbation (`tfadv.recipes.AdversarialWeightPerturbation`) moves
the weights by offsets `v` just before a method's update, so that the
update's loss and gradients are taken at `w + v`, and takes `v` off again
at the end of the update. It is a trainer argument, `weight_perturbation=`,
accepted by every method through `WeightPerturbationHooks`, a mixin of
`AdversarialTrainer`:

1. At construction, `attach` checks the method can take one (a method whose
   update has no single loss to ascend declares why in
   `weight_perturbation_refused`, and is refused with that reason) and adds
   the step count `weight_perturbation_on` (1 while the perturbation is
   applied, 0 during its warm-up epochs), which `EpochHooks` sets before
   each epoch (`on_epoch_begin`); the step is retraced when it changes,
   so warm-up steps are exactly the method's own.
2. In the step, after its adversarial examples and before its gradient
   tape, the method calls `trainer.perturb_weights(loss_fn, *args)`, with
   the function that computes the loss its update minimises
   (`compute_adversarial_loss` for most). The perturbation computes its
   offsets from that loss (`WeightPerturbation.offsets`) and they are
   added to the weights.
3. `trainer.update_weights(grads, variables)` (called by
   `apply_gradients`) applies the optimizer update and removes the offsets:
   after the optimizer's step by default, as AWP's reference does (so a
   coupled weight decay and the momentum see `w + v`), or before it with
   `restore_before_step=True`. The weights are then exactly those of the
   optimizer's update from `w`, and the perturbation never outlives the
   training step: callbacks after the step (an EMA of the weights) never
   see it.

Under a distribution strategy the offsets are computed in every replica
from the same all-reduced gradients and the same weights, so every
replica's copy moves identically. The offsets are added in the variables'
dtype (float32 under mixed precision, whose variables stay float32).
"""

import threading

import keras

from tfadv import validation
from tfadv.attacks import base as attack_base

# The step count that switches the perturbation on (1) or off (0).
STEP_COUNT = "weight_perturbation_on"


class WeightPerturbation:
    """Base class: a rule that perturbs the weights before each update.

    Subclasses implement `offsets`; every subclass is a registered Keras
    serializable (its `get_config` holds its constructor arguments), so a
    trainer with one saves to `.keras` and loads whole. It holds no
    variables: its on/off state is the trainer's step count `STEP_COUNT`.

    Args:
        warmup_epochs: epochs (counted from 0) trained without the
            perturbation before it is switched on.
        restore_before_step: take the offsets off between the gradient and
            the optimizer's step (the weight decay and momentum then see
            `w`), instead of after the step (the reference's order).
    """

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        attack_base.register_serializable(cls)

    def __init__(
        self, *, warmup_epochs: int = 0, restore_before_step: bool = False
    ):
        kind = type(self).__name__
        self.warmup_epochs = validation.count(
            f"{kind} warmup_epochs",
            warmup_epochs,
            meaning="epochs trained without the weight perturbation, "
            "counted from 0",
        )
        self.restore_before_step = validation.boolean(
            f"{kind} restore_before_step", restore_before_step
        )

    def get_config(self) -> dict:
        return {
            "warmup_epochs": self.warmup_epochs,
            "restore_before_step": self.restore_before_step,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def active_in_epoch(self, epoch: int) -> bool:
        """Whether epoch `epoch` (from 0) trains with the perturbation."""
        return epoch >= self.warmup_epochs

    def variables_to_perturb(self, trainer) -> list:
        """The trainer's trainable variables of rank >= 2 (kernels).

        Biases and normalisation scales (rank 1) and every non-trainable
        variable are left alone.
        """
        return [v for v in trainer.trainable_variables if len(v.shape) >= 2]

    def offsets(self, trainer, loss_fn) -> list:
        """The offsets to add, one per `variables_to_perturb(trainer)`.

        Called inside the training step (per replica), before the update's
        gradient tape.

        Args:
            trainer: the `AdversarialTrainer`.
            loss_fn: computes the replica-scaled loss the update minimises,
                at the current weights, when called without arguments.

        Returns:
            A list of tensors of the variables' shapes and dtypes, equal on
            every replica.
        """
        raise NotImplementedError


def attach(trainer) -> None:
    """Checks the trainer's weight perturbation and adds its step count.

    Raises:
        TypeError: `weight_perturbation` is not a `WeightPerturbation`.
        ValueError: the method cannot take a weight perturbation.
    """
    perturbation = trainer.weight_perturbation
    if perturbation is None:
        return
    method = type(trainer).__name__
    if not isinstance(perturbation, WeightPerturbation):
        raise TypeError(
            f"{method}.weight_perturbation must be a tfadv.methods."
            "weight_perturbations.WeightPerturbation, such as tfadv.recipes."
            "AdversarialWeightPerturbation(gamma=0.01), or None; got "
            f"{perturbation!r}."
        )
    if trainer.weight_perturbation_refused:
        raise ValueError(
            f"{method} cannot take a weight perturbation "
            f"({type(perturbation).__name__}): "
            f"{trainer.weight_perturbation_refused} Train {method} without "
            "weight_perturbation, or use it with a method whose update "
            "minimises one loss at fixed adversarial examples (PGDAT, "
            "TRADES, MART, FGSMRS, NFGSM, GradAlign, ...)."
        )
    on = int(perturbation.active_in_epoch(0))
    trainer.add_step_count(STEP_COUNT, on)
    # The count changes between epochs, on purpose.
    trainer.mutable_state = (*trainer.mutable_state, STEP_COUNT)


def on_epoch_begin(trainer, epoch: int) -> None:
    """Switches the trainer's weight perturbation on or off for `epoch`."""
    perturbation = trainer.weight_perturbation
    if perturbation is not None:
        on = int(perturbation.active_in_epoch(epoch))
        trainer.set_step_count(STEP_COUNT, on)


class _Pending(threading.local):
    """The offsets applied in the step being traced, until the update.

    Per thread: MirroredStrategy traces each replica in a thread of its own.
    """

    def __init__(self):
        self.offsets = None
        self.perturbed = False


def _shift(pairs, sign: float) -> None:
    for variable, offset in pairs:
        variable.assign_add(sign * offset)


class WeightPerturbationHooks:
    """The trainer's side of a weight perturbation (a trainer mixin).

    Takes the `weight_perturbation` argument of every method, serializes
    it with the trainer's config, and provides the two calls of the step:
    `perturb_weights` and `update_weights`.
    """

    # Why the method cannot take a weight perturbation (one or two
    # sentences), or None when it can. Set by methods whose update is not
    # one loss minimised at fixed adversarial examples.
    weight_perturbation_refused: str | None = None

    def __init__(self, *args, weight_perturbation=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.weight_perturbation = weight_perturbation
        self._pending_weights = _Pending()

    def get_config(self):
        return {
            **super().get_config(),
            "weight_perturbation": keras.saving.serialize_keras_object(
                self.weight_perturbation
            ),
        }

    def perturb_weights(self, loss_fn, *args) -> None:
        """Adds the weight perturbation before the update (if any is on).

        Call it in the training step after making the adversarial examples
        and before the update's gradient tape. `loss_fn(*args)` computes
        the replica-scaled loss the update minimises (or a tuple that
        starts with it, as `compute_adversarial_loss` returns); the
        perturbation ascends it. Nothing happens without a perturbation or
        during its warm-up. `update_weights` removes the offsets.
        """
        pending = self._pending_weights
        pending.offsets, pending.perturbed = None, True
        perturbation = self.weight_perturbation
        if perturbation is None or not self.step_count(STEP_COUNT):
            return

        def loss():
            result = loss_fn(*args)
            return result[0] if isinstance(result, tuple) else result

        variables = perturbation.variables_to_perturb(self)
        offsets = perturbation.offsets(self, loss)
        pairs = list(zip(variables, offsets, strict=True))
        _shift(pairs, 1.0)
        pending.offsets = pairs

    def update_weights(self, grads, variables) -> None:
        """One optimizer update with the weight decay; removes offsets.

        The offsets `perturb_weights` added are taken off after the
        optimizer's step (or before it, with the perturbation's
        `restore_before_step`): the weights end at `w` plus the optimizer's
        update, computed from the gradient taken at `w + v`.

        Raises:
            RuntimeError: a weight perturbation is on but the step did not
                call `perturb_weights` before this update (a method whose
                update structure ignores it must refuse it instead).
        """
        pending = self._pending_weights
        pairs, perturbed = pending.offsets, pending.perturbed
        pending.offsets, pending.perturbed = None, False
        if (
            self.weight_perturbation is not None
            and self.step_count(STEP_COUNT)
            and not perturbed
        ):
            raise RuntimeError(
                f"{type(self).__name__} has a weight_perturbation, but its "
                "update did not call perturb_weights before it (one call "
                "before each update's gradient tape); the update would run "
                "unperturbed. Call it, or set weight_perturbation_refused."
            )
        if pairs and self.weight_perturbation.restore_before_step:
            _shift(pairs, -1.0)
        self.optimizer.apply(self.add_weight_decay(grads, variables), variables)
        if pairs and not self.weight_perturbation.restore_before_step:
            _shift(pairs, -1.0)
