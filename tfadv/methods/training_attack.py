"""A method's training attack: the budget it defends, and its default.

`AdversarialTrainer.__init__` calls `resolve`: a given `train_attack` is
checked (its kind, its budget, its agreement with `epsilon`); without one
the method's paper default is built at `epsilon`, which is then required,
since ε depends on the dataset and a run must never train at another
dataset's budget unawares.
"""

import math

from tfadv import validation


def resolve(trainer, train_attack, epsilon):
    """The trainer's training attack, from its arguments.

    Raises:
        TypeError: an attack of a kind the method cannot run.
        ValueError: no budget for a method with a default attack, a budget
            for a method without one, or `epsilon` and the attack's
            disagree.
    """
    method = type(trainer).__name__
    if train_attack is None:
        if epsilon is None:
            epsilon = trainer.default_epsilon
        if epsilon is None:
            if trainer.has_default_train_attack():
                raise ValueError(missing_budget_message(trainer))
            return None
        attack = trainer.default_train_attack(
            validation.epsilon(epsilon, allow_zero=False)
        )
        if attack is None:
            raise ValueError(
                f"{method} trains without an attack; epsilon="
                f"{epsilon!r} would not be used. Give the budget to "
                "eval_attack instead."
            )
        return attack
    if not isinstance(train_attack, trainer.train_attack_types):
        accepted = " or ".join(t.__name__ for t in trainer.train_attack_types)
        raise TypeError(
            f"{method}.train_attack must be a tfadv.attacks {accepted}; "
            f"got {train_attack!r}."
        )
    validation.epsilon(
        train_attack.epsilon,
        allow_zero=False,
        norm=train_attack.threat_model.norm,
    )
    if epsilon is not None and not math.isclose(
        float(epsilon), train_attack.epsilon, rel_tol=1e-6
    ):
        raise ValueError(
            f"{method} got epsilon={epsilon!r} and a train_attack with "
            f"epsilon {train_attack.epsilon!r}; give one of them, or the "
            "same budget to both."
        )
    return train_attack


def missing_budget_message(trainer) -> str:
    """The error for a method built with neither budget nor attack."""
    method = type(trainer).__name__
    paper = ""
    if trainer.paper_epsilon is not None:
        paper = (
            f" (its paper trains at {trainer.paper_epsilon:.4g} on its "
            "dataset; see the class docstring)"
        )
    return (
        f"{method} needs its training budget: give epsilon= (in pixel "
        "units, the radius of the training attack, e.g. 0.1 for "
        "Fashion-MNIST or 8/255 = 0.0314 for CIFAR-10) or a "
        f"train_attack=. tfadv sets no dataset-specific default for "
        f"{method}'s epsilon{paper}, so that a run never trains at "
        "another dataset's budget unawares."
    )
