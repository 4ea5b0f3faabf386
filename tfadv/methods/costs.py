"""What a method's minibatch costs: its passes through the classifier.

Every method declares, through `AdversarialTrainer.passes()`, how many
passes of each kind one call of its `train_step` makes, as a function of
its own hyperparameters (attack steps, replays, YOPO's m and n) and of
its step counts as they stand (an M+ or DEAT count: the current epoch's).
`tools/benchmark.py --mode=cost` measures what one pass of each kind
costs on a model and compares the sum with the measured step: what the
step costs beyond its passes (metrics, controller logic, buffers,
cross-replica sums) is the "waste" it reports.

The declarations count passes as the code makes them, not as an ideal
implementation would: a forward shared by two gradients is counted once
(`weight_backwards`), and the forward on the clean batch that only feeds
`clean_accuracy` is an inference forward like any other.
"""

import dataclasses

from tfadv.attacks import backward_smoothing
from tfadv.attacks import objectives
from tfadv.attacks import perturbations
from tfadv.attacks import pgd

# The step count AWP sets (weight_perturbations.STEP_COUNT), read here
# without importing the trainer's modules.
_WEIGHT_PERTURBATION_ON = "weight_perturbation_on"


@dataclasses.dataclass(frozen=True)
class Passes:
    """Passes through the classifier per minibatch, by kind.

    Attributes:
        weight_passes: forward + backward with weight gradients, in
            training mode (each update's loss; each Free-AT or DEAT
            replay; each of YOPO's m outer passes). A loss on two
            forwards (TRADES' clean and adversarial logits) is 2.
        weight_input_passes: weight passes whose backward also gives the
            gradient with respect to the input (each Free-AT or DEAT
            replay, whose one backward steps both the weights and the
            perturbation; the update whose input gradient an M+
            controller observes).
        updates: optimizer updates (`optimizer.apply`, with the coupled
            weight decay): one per minibatch, m for Free-AT's replays.
        input_gradients: forward + backward to the input only, no weight
            gradient (each attack step).
        costate_passes: forward + backward to the first layer's output,
            without weight gradients (TRADES-YOPO's m costates).
        layer0_input_gradients: forward + backward to the input through
            the classifier's first layer only (YOPO's inner steps).
        layer0_weight_gradients: forward + backward to the first layer's
            weights only (YOPO's Hamiltonian term, once per outer pass).
        inference_forwards: forwards without a backward (the clean
            forward for `clean_accuracy`, TRADES' clean distribution,
            the scores of an attack with restarts).
        second_order: double backpropagation: a forward, the input
            gradient on an inner tape and the weight gradient of a
            function of it (GradAlign's regulariser, GAAT's order-1
            surrogate, noisy training's gradient penalty).
        weight_backwards: a backward with weight gradients through a
            forward counted elsewhere (FGSM-PGI's forward at the prior,
            whose input gradient made the example and whose logits enter
            the update's loss).
    """

    weight_passes: int = 0
    weight_input_passes: int = 0
    updates: int = 0
    input_gradients: int = 0
    costate_passes: int = 0
    layer0_input_gradients: int = 0
    layer0_weight_gradients: int = 0
    inference_forwards: int = 0
    second_order: int = 0
    weight_backwards: int = 0

    def __add__(self, other: "Passes") -> "Passes":
        return Passes(
            **{
                f.name: getattr(self, f.name) + getattr(other, f.name)
                for f in dataclasses.fields(self)
            }
        )

    def counts(self) -> dict:
        """`{kind: count}` of every kind, zeros included."""
        return dataclasses.asdict(self)

    def total(self) -> int:
        """All passes of every kind, updates included."""
        return sum(self.counts().values())


def attack_passes(attack) -> Passes:
    """The passes one call of a training attack makes.

    A `ProjectedGradient`: `num_steps` input gradients per restart (0 for
    `start_only()`), an inference forward per step when it recomputes the
    clean distribution, one scoring forward per restart when it has
    several, and one forward for predicted labels. `NoiseFGSM`: one input
    gradient. `BackwardSmoothingAttack`: the clean forward, the
    initialisation's input gradient and its TRADES steps. None: nothing.

    Raises:
        TypeError: an attack of another kind, whose passes are not known.
    """
    if attack is None:
        return Passes()
    if isinstance(attack, pgd.ProjectedGradient):
        steps = attack.num_steps
        forwards = steps if attack.recompute_target else 0
        per_run = Passes(input_gradients=steps, inference_forwards=forwards)
        runs = Passes()
        for _ in range(attack.restarts):
            runs += per_run
        extra = (attack.restarts if attack.restarts > 1 else 0) + int(
            attack.use_predicted_labels
        )
        return runs + Passes(inference_forwards=extra)
    if isinstance(attack, perturbations.NoiseFGSM):
        return Passes(input_gradients=1)
    if isinstance(attack, backward_smoothing.BackwardSmoothingAttack):
        start = Passes(inference_forwards=1, input_gradients=1)
        return start + attack_passes(attack.trades_steps)
    raise TypeError(
        f"The passes of {type(attack).__name__} are not known: give the "
        "attack's class a case in tfadv.methods.costs.attack_passes, or "
        "override the method's passes()."
    )


def target_passes(attack) -> Passes:
    """The forward `attack_target` makes before the attack.

    One inference forward for an objective that compares with the clean
    distribution (TRADES' KL), none for one on the labels.
    """
    objective = getattr(attack, "objective", None)
    if objective is None or objectives.target_kind(objective) == "labels":
        return Passes()
    return Passes(inference_forwards=1)


def update(
    trainer,
    *,
    weight_passes: int = 1,
    second_order: int = 0,
    with_input: bool = False,
) -> Passes:
    """One optimizer update on a loss of these passes, and its AWP ascent.

    With `with_input`, one of the weight passes also gives the input
    gradient. A weight perturbation (AWP) that is on differentiates the
    same loss once more before the update (without an update of its own).
    """
    loss = Passes(weight_passes=weight_passes, second_order=second_order)
    passes = Passes(updates=1)
    if with_input:
        passes += Passes(weight_passes=-1, weight_input_passes=1)
    passes += loss
    if trainer.weight_perturbation is not None and trainer.step_count(
        _WEIGHT_PERTURBATION_ON
    ):
        passes += loss
    return passes


def default_passes(trainer) -> Passes:
    """The passes of `AdversarialTrainer`'s default minibatch update.

    The training attack of this epoch (`current_train_attack()`) with its
    target's forward, one update on the cross-entropy at the training
    examples (and at the clean batch when `clean_weight` is set, which
    then feeds `clean_accuracy`), else one inference forward on the clean
    batch for `clean_accuracy`.
    """
    clean = 1 if trainer.clean_weight else 0
    return attack_and_update(trainer, weight_passes=1 + clean) + Passes(
        inference_forwards=1 - clean
    )


def attack_and_update(trainer, *, weight_passes: int) -> Passes:
    """This epoch's training attack, then one update on its examples.

    The attack's target forward included; a step controller that measures
    the update (`controllers.UPDATE`) takes the update's input gradient.
    """
    passes = Passes()
    observed = False
    if trainer.train_attack is not None:
        attack = trainer.current_train_attack()
        passes += attack_passes(attack) + target_passes(attack)
        controller = trainer.step_controller
        observed = controller is not None and controller.measure == "update"
    return passes + update(
        trainer, weight_passes=weight_passes, with_input=observed
    )


class DeclaresPasses:
    """A mixin of `AdversarialTrainer`: its default `passes()`."""

    def passes(self) -> Passes:
        """The passes one minibatch of this epoch makes, by kind.

        A method whose step differs from the default update overrides it
        (beside its `minibatch_update`), from the helpers of
        `tfadv.methods.costs`.
        """
        return default_passes(self)
