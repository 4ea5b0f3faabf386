"""The gradient-masking checks of an evaluation, from per-example results.

A masked model (hard quantisation, saturated activations, randomness) hides
the gradients that gradient attacks follow, so its robust accuracy under
them is too high. `masking_report` looks for signs of it in the attacks'
results (see there), and `output_checks` for two properties of the
classifier's outputs that make gradient attacks unreliable: outputs that
change from one forward pass to the next (a randomised model) and outputs
that are probabilities rather than logits. None of them proves robustness.

Each check is a function of `checks`, with its rule and null hypothesis;
this module says which attacks each compares and composes the report:

1. `gradient_free_beats_gradient`: a gradient-free attack (e.g. square)
   broke points every gradient attack left robust;
2. `approximation_beats_true_gradient`: an attack through a backward-pass
   approximation (e.g. bpda_pgd20) broke
   points every attack through the true layers left robust;
3. `accuracy_rises_with_strength`: between attacks of one family in an
   independent suite (`strength_pairs`, e.g. pgd20 and pgd50x10), and
   between each extra weaker control (`weaker_control`, e.g. pgd5 for
   pgd20) and the first gradient attack;
4. `zero_gradients`: too many correct points with an all-zero margin
   input gradient; and `zero_gradient_points`, a warning for any with an
   all-zero cross-entropy one (said once: not when 4 flagged).

It reads attacks only through the `tfadv.attacks.Attack`
interface (`uses_gradients`, `get_config`, `replace`, a wrapper's
`attack`), never through their classes, so a new attack or wrapper takes
part in the checks once it implements that interface; the weaker control
attack comes from the name grammar (`suites.weaker_control`).
"""

from collections.abc import Mapping
from collections.abc import Sequence

import numpy as np

from tfadv.attacks import base as attack_base
from tfadv.evaluation import checks
from tfadv.evaluation import options as options_lib
from tfadv.evaluation import suites

# Settings in which two attacks of one family may differ: their strength,
# the step size the name grammar derives from the step count, and the name.
STRENGTH_SETTINGS = frozenset({"num_steps", "restarts", "step_size", "name"})

_MISSING = object()


def uses_gradients(attack) -> bool:
    """Whether `attack` differentiates the model (True unless it says no)."""
    return getattr(attack, "uses_gradients", True)


def _config(attack) -> dict | None:
    """`attack.get_config()`, or None for an attack that has none."""
    get_config = getattr(attack, "get_config", None)
    if get_config is None:
        return None
    try:
        return get_config()
    except NotImplementedError:
        return None


def _same_setting(a, b) -> bool:
    """Equal values, or values of one type printed alike (a transform)."""
    if a is b:
        return True
    try:
        if bool(a == b):
            return True
    except (TypeError, ValueError):  # e.g. arrays
        pass
    return type(a) is type(b) and repr(a) == repr(b)


def same_family(a: attack_base.Attack, b: attack_base.Attack) -> bool:
    """Whether `a` and `b` are one attack that differs only in strength.

    They must be of one type and agree on every `get_config()` setting but
    those in `STRENGTH_SETTINGS`; a wrapper's inner attacks (its
    `config["attack"]`) must be of one family in turn. An attack without
    `get_config` belongs to no family.
    """
    if type(a) is not type(b):
        return False
    config_a, config_b = _config(a), _config(b)
    if config_a is None or config_b is None:
        return False
    for key in (set(config_a) | set(config_b)) - STRENGTH_SETTINGS:
        value_a = config_a.get(key, _MISSING)
        value_b = config_b.get(key, _MISSING)
        if isinstance(value_a, attack_base.Attack):
            if not isinstance(value_b, attack_base.Attack):
                return False
            if not same_family(value_a, value_b):
                return False
        elif not _same_setting(value_a, value_b):
            return False
    return True


def strength(attack: attack_base.Attack) -> tuple[int, int] | None:
    """(steps, restarts) of the innermost attack, or None without steps."""
    config = _config(attack)
    while config is not None and isinstance(
        config.get("attack"), attack_base.Attack
    ):
        config = _config(config["attack"])
    if config is None or config.get("num_steps") is None:
        return None
    return config["num_steps"], config.get("restarts", 1)


def strength_pairs(attacks: Mapping[str, attack_base.Attack]) -> list:
    """(weaker, stronger) name pairs of one family, e.g. pgd20, pgd50x10.

    The weaker one has no more steps and no more restarts than the
    stronger one, and not the same strength.
    """
    pairs = []
    for a, attack_a in attacks.items():
        for b, attack_b in attacks.items():
            if a == b or not same_family(attack_a, attack_b):
                continue
            strength_a, strength_b = strength(attack_a), strength(attack_b)
            if strength_a is None or strength_b is None:
                continue
            if strength_a != strength_b and all(
                sa <= sb for sa, sb in zip(strength_a, strength_b, strict=True)
            ):
                pairs.append((a, b))
    return pairs


def weaker_control(
    reference: attack_base.Attack,
) -> attack_base.Attack | None:
    """A cheap attack clearly weaker than `reference`, in the same wrappers.

    The wrappers (any attack with an inner `attack`) are peeled off,
    `suites.weaker_control` gives the grammar's weaker PGD for the
    innermost attack (a quarter of the steps, at most pgd5 for apgd_ce),
    and each wrapper is put back with `replace(attack=..., name=None)`, so
    the control gets the wrapper's default name (e.g. "bpda_pgd5").

    Returns:
        The control, or None when the innermost attack has no weaker PGD.
    """
    inner, wraps = reference, []
    while isinstance(getattr(inner, "attack", None), attack_base.Attack):
        wraps.append(inner)
        inner = inner.attack
    control = suites.weaker_control(inner)
    if control is None:
        return None
    for wrapper in reversed(wraps):
        control = wrapper.replace(attack=control, name=None)
    return control


def output_checks(
    first: np.ndarray,
    second: np.ndarray,
    *,
    randomness_tolerance: float = checks.RANDOMNESS_TOLERANCE,
    probability_tolerance: float = checks.PROBABILITY_TOLERANCE,
    options: options_lib.EvalOptions | None = None,
) -> dict:
    """Checks the classifier's outputs for one batch, from two passes.

    `checks.randomized_model` (the two inference-mode passes disagree) and
    `checks.probability_outputs` (the first pass is probabilities), each
    logging its message (see `EvalOptions.log_findings`).

    Args:
        first: outputs of the first pass, [batch, classes].
        second: outputs of the second pass on the same batch.
        randomness_tolerance: see `checks.randomized_model`.
        probability_tolerance: see `checks.probability_outputs`.
        options: the evaluation's options (None: the defaults).

    Returns:
        `{"checks": {name: {...}}, "messages": [...], "findings": [...]}`,
        a message per flagged check; `findings` are the `checks.Finding`s,
        which `masking_report(findings=...)` takes.
    """
    findings = [
        checks.randomized_model(
            first, second, tolerance=randomness_tolerance, options=options
        ),
        checks.probability_outputs(
            first, tolerance=probability_tolerance, options=options
        ),
    ]
    return {**_summary(findings), "findings": findings}


def _summary(findings: Sequence[checks.Finding]) -> dict:
    return {
        "checks": {f.name: f.details for f in findings},
        "messages": [f.message for f in findings if f.message],
        "warnings": [f.warning for f in findings if f.warning],
    }


def _comparisons(attacks, extra, gradient, sequential) -> list:
    """(weaker, stronger) names: strength pairs, and each control."""
    pairs = [] if sequential else strength_pairs(attacks)
    if gradient:
        pairs += [(name, gradient[0]) for name in extra]
    return pairs


def masking_report(
    attacks: Mapping[str, attack_base.Attack],
    *,
    clean: np.ndarray,
    broken: Mapping[str, np.ndarray],
    sequential: bool,
    extra: Sequence[str] = (),
    zero_gradients: int = 0,
    zero_ce_gradients: int | None = None,
    findings: Sequence[checks.Finding] = (),
    through_bpda: bool = False,
    options: options_lib.EvalOptions | None = None,
    **overrides,
) -> dict:
    """The gradient-masking checks, from per-example results.

    Runs the checks listed in the module docstring, each only where the
    suite gives it something to compare. The output checks ran before the
    attacks (`output_checks`); their findings come in as `findings` and
    lead the report.

    Args:
        attacks: the suite's attacks, by report name.
        clean: per example, classified correctly when clean.
        broken: attack or control name -> per example, misclassified by it.
        sequential: the suite ran in sequential mode.
        extra: the names of the weaker controls that ran (in `broken`).
        zero_gradients: correct points with an all-zero margin gradient.
        zero_ce_gradients: correct points with an all-zero cross-entropy
            gradient, or None (not counted).
        findings: `checks.Finding`s made before the attacks ran.
        through_bpda: some attack ran through a backward-pass
            approximation (the remedy): recorded for the printed report.
        options: the evaluation's options (None: the defaults).
        **overrides: `EvalOptions` fields, replacing those of `options`.

    Returns:
        `{"possible": bool, "messages": [...], "warnings": [...],
        "checks": {name: {...}}, "through_bpda": bool}`.
    """
    options = options_lib.resolve(options, overrides, "masking_report")
    clean = np.asarray(clean, bool)
    per_example = dict(clean=clean, broken=broken, options=options)
    gradient = [a for a in attacks if uses_gradients(attacks[a])]
    free = [a for a in attacks if a not in gradient]
    approximated = [a for a in gradient if suites.through_bpda(attacks[a])]
    true = [a for a in gradient if a not in approximated]
    comparisons = _comparisons(attacks, extra, gradient, sequential)
    correct = int(clean.sum())
    margin = checks.zero_gradients(
        zero_gradients,
        correct,
        cross_entropy_count=zero_ce_gradients,
        options=options,
    )
    found = [
        *findings,
        checks.gradient_free_beats_gradient(
            free, gradient, sequential=sequential, **per_example
        ),
        checks.approximation_beats_true_gradient(
            approximated, true, **per_example
        ),
        checks.accuracy_rises_with_strength(comparisons, **per_example),
        margin,
    ]
    if zero_ce_gradients is not None:
        found.append(
            checks.zero_gradient_points(
                zero_ce_gradients,
                correct,
                already_flagged=margin.flagged,
                options=options,
            )
        )
    summary = _summary([f for f in found if f is not None])
    possible = bool(summary["messages"])
    return {"possible": possible, **summary, "through_bpda": through_bpda}
