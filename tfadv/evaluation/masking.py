"""The gradient-masking checks of an evaluation, from per-example results.

A masked model (hard quantisation, saturated activations, randomness) hides
the gradients that gradient attacks follow, so its robust accuracy under
them is too high. `masking_report` looks for signs of it in the attacks'
results (see there), and `output_checks` for two properties of the
classifier's outputs that make gradient attacks unreliable: outputs that
change from one forward pass to the next (a randomised model) and outputs
that are probabilities rather than logits. None of them proves robustness.

This module reads attacks only through the `tfadv.attacks.Attack`
interface (`uses_gradients`, `get_config`, `replace`, a wrapper's
`attack`), never through their classes, so a new attack or wrapper takes
part in the checks once it implements that interface; the weaker control
attack comes from the name grammar (`suites.weaker_control`).
"""

import math
from collections.abc import Mapping

import numpy as np

from tfadv.attacks import base as attack_base
from tfadv.evaluation import suites

# A check flags masking when it moves robust accuracy by more than this
# fraction of the examples (AutoAttack's `check_square_sr` uses 0.2 %) and
# by more than one example (one point of a small test set is noise).
MASKING_TOLERANCE = 0.002
# ... or when more than this fraction of correctly classified points has an
# all-zero input gradient.
ZERO_GRADIENT_THRESHOLD = 0.05
# In independent mode (an explicit list, whose gradient attacks may be as
# weak as FGSM or PGD-20) a gradient-free attack that breaks some points
# they missed is ordinary attack weakness: on a small PGD-AT CNN on
# Fashion-MNIST (epsilon 0.1, 500 test points) square (5000 queries) broke
# 4.6 %, 3.6 % and 2.4 % of the examples against fgsm, pgd5 and pgd20 (which
# broke 0 or 1 point it missed), and 0.2 % against apgd_ce, cw50 and
# pgd100x3 together.
# There the check "gradient-free beats gradient" flags only more than this
# fraction of the examples, beyond a one-sided binomial margin of
# MARGIN_Z standard deviations. A masked model's gradient attacks miss most
# breakable points, far above it. Sequential mode (AutoAttack's standard
# suite, strong gradient attacks first) keeps AutoAttack's 0.2 %.
INDEPENDENT_GRADIENT_FREE_TOLERANCE = 0.05
MARGIN_Z = 3.09  # one-sided p = 0.001 under the normal approximation
# A randomised model: the L2-normalised outputs of two forward passes on one
# batch differ by more than this in some row (AutoAttack's
# `check_randomized` uses 1e-4), or some prediction changes.
RANDOMNESS_TOLERANCE = 1e-4
# Probabilities: every output in [0, 1] and every row summing to 1, within
# this (float16 softmax rows are off by up to about 1e-3).
PROBABILITY_TOLERANCE = 2e-3
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


def _beyond(count: int, n: int, tolerance: float) -> bool:
    """More than one example and more than `tolerance` of `n`."""
    return count > max(1, tolerance * n)


def gradient_free_threshold(
    n: int,
    *,
    tolerance: float = MASKING_TOLERANCE,
    independent_tolerance: float | None = INDEPENDENT_GRADIENT_FREE_TOLERANCE,
    margin_z: float = MARGIN_Z,
) -> float:
    """The count of points the check "gradient-free beats gradient" allows.

    More than one example and more than `tolerance` of the `n` examples;
    with `independent_tolerance` (independent mode) also more than
    `n * t + margin_z * sqrt(n * t * (1 - t))`, `t = independent_tolerance`:
    a count that ordinary attack weakness on a fraction `t` of the examples
    reaches with probability about 0.001 (binomial, normal approximation).
    """
    threshold = max(1.0, tolerance * n)
    t = independent_tolerance
    if t:
        margin = margin_z * math.sqrt(n * t * (1.0 - t))
        threshold = max(threshold, n * t + margin)
    return threshold


def output_checks(
    first: np.ndarray,
    second: np.ndarray,
    *,
    randomness_tolerance: float = RANDOMNESS_TOLERANCE,
    probability_tolerance: float = PROBABILITY_TOLERANCE,
) -> dict:
    """Checks the classifier's outputs for one batch, from two passes.

    1. "randomized_model": the two inference-mode passes on the same batch
       disagree (an L2-normalised row moves by more than
       `randomness_tolerance`, or a prediction changes). Each gradient
       attack then follows one random draw of the model's gradient.
    2. "probability_outputs": every output is in [0, 1] and every row sums
       to 1, within `probability_tolerance`: the model ends in a softmax.
       The attacks' losses (cross-entropy and margin on logits, DLR) are
       then computed on probabilities and the gradient attacks weaken.

    Args:
        first: outputs of the first pass, [batch, classes].
        second: outputs of the second pass on the same batch.
        randomness_tolerance: see check 1.
        probability_tolerance: see check 2.

    Returns:
        `{"checks": {name: {...}}, "messages": [...]}`, a message per
        flagged check.
    """
    first = np.asarray(first, np.float64)
    second = np.asarray(second, np.float64)
    rows = first.shape[0]

    def unit(a):
        return a / (np.linalg.norm(a, axis=-1, keepdims=True) + 1e-10)

    change = np.linalg.norm(unit(first) - unit(second), axis=-1)
    largest = float(change.max()) if rows else 0.0
    changed = int(np.sum(first.argmax(-1) != second.argmax(-1)))
    random = bool(largest > randomness_tolerance or changed)
    tol = probability_tolerance
    sums = first.sum(-1)
    probabilities = bool(
        rows
        and first.shape[-1] > 1
        and first.min() >= -tol
        and first.max() <= 1.0 + tol
        and np.all(np.abs(sums - 1.0) <= tol)
    )
    checks = {
        "randomized_model": {
            "flagged": random,
            "largest_change": largest,
            "changed_predictions": changed,
            "num_points": rows,
            "tolerance": randomness_tolerance,
        },
        "probability_outputs": {
            "flagged": probabilities,
            "min": float(first.min()) if rows else 0.0,
            "max": float(first.max()) if rows else 0.0,
            "largest_sum_error": float(np.abs(sums - 1.0).max())
            if rows
            else 0.0,
            "tolerance": tol,
        },
    }
    messages = []
    if random:
        messages.append(
            f"the classifier is randomised: two forward passes in inference "
            f"mode on the same {rows} points differ (largest change "
            f"{largest:.3g} of an L2-normalised output row, {changed} "
            f"predictions changed), so each gradient attack follows one "
            f"random draw of the gradient; {suites.RANDOMIZED_MODEL_REMEDY}"
        )
    if probabilities:
        messages.append(
            "the classifier outputs probabilities, not logits (every output "
            f"of the first {rows} points is in [0, 1] and every row sums to "
            f"1 within {tol:g}): the attacks' losses (cross-entropy and "
            "margin on logits, DLR) are wrong on probabilities and the "
            "gradient attacks weaken; evaluate the model without its final "
            "softmax (keep the layer's logits, activation=None)"
        )
    return {"checks": checks, "messages": messages}


def masking_report(
    attacks: Mapping[str, attack_base.Attack],
    *,
    clean: np.ndarray,
    broken: Mapping[str, np.ndarray],
    accuracy: Mapping[str, float],
    sequential: bool,
    extra: Mapping[str, attack_base.Attack],
    zero_gradients: int,
    tolerance: float = MASKING_TOLERANCE,
    zero_gradient_threshold: float = ZERO_GRADIENT_THRESHOLD,
    independent_tolerance: float = INDEPENDENT_GRADIENT_FREE_TOLERANCE,
    through_bpda: bool = False,
    outputs: Mapping | None = None,
    zero_ce_gradients: int | None = None,
) -> dict:
    """The gradient-masking checks, from per-example results.

    1. A gradient-free attack (e.g. square) breaks points that every gradient
       attack left robust: more than `gradient_free_threshold` of them. In
       sequential mode that is AutoAttack's rule (more than `tolerance` of
       the examples, and more than one); in independent mode the count must
       also pass `independent_tolerance` of the examples by a statistical
       margin, which ordinary weakness of the listed gradient attacks
       (e.g. pgd20 against square) does not reach.
    2. Robust accuracy rises with attack strength by more than
       `tolerance` (and more than one example): between attacks of one
       family in the suite (`strength_pairs`, e.g. pgd20 and pgd50x10, or
       apgd_ce and apgd_ce200; not in sequential mode), and against each
       extra weaker control run (`weaker_control`, e.g. pgd5 for pgd20),
       which the runner adds when the suite has no such pair.
    3. More than `zero_gradient_threshold` of the correctly classified
       points have an all-zero input gradient of the margin loss.
    4. A gradient attack through a backward-pass approximation breaks
       points that every gradient attack through the true layers left
       robust (more than `tolerance` and more than one): the approximated
       layers mask gradients.
    5. The classifier's outputs (`output_checks`, when given): a randomised
       model, or probabilities instead of logits.

    Besides, any correctly classified point whose cross-entropy input
    gradient at the clean input is exactly zero (`zero_ce_gradients`, where
    a gradient attack's first step goes nowhere) gives a warning, in
    `warnings`; it flags nothing by itself.

    Args:
        attacks: the suite's attacks, by report name.
        clean: per example, classified correctly when clean.
        broken: attack or control name -> per example, misclassified by it.
        accuracy: the suite's robust accuracy per attack name.
        sequential: the suite ran in sequential mode.
        extra: the weaker controls that ran, by name (compared with the
            first gradient attack).
        zero_gradients: correctly classified points with an all-zero input
            gradient of the margin loss.
        tolerance: see checks 1, 2 and 4.
        zero_gradient_threshold: see check 3.
        independent_tolerance: see check 1 (independent mode only).
        through_bpda: the gradient attacks ran through a backward-pass
            approximation (`bpda_layers`, the remedy): check 3 then still
            describes the classifier itself.
        outputs: the result of `output_checks`, or None.
        zero_ce_gradients: correctly classified points with an all-zero
            cross-entropy input gradient, or None.

    Returns:
        `{"possible": bool, "messages": [...], "warnings": [...],
        "checks": {...}, "through_bpda": bool}`.
    """
    n = clean.size
    checks, messages, warnings = {}, [], []
    if outputs is not None:
        checks.update(outputs["checks"])
        messages += outputs["messages"]
    grad_names = [a for a in attacks if uses_gradients(attacks[a])]
    free_names = [a for a in attacks if not uses_gradients(attacks[a])]
    approx_names = [a for a in grad_names if suites.through_bpda(attacks[a])]
    true_names = [a for a in grad_names if a not in approx_names]
    free_threshold = gradient_free_threshold(
        n,
        tolerance=tolerance,
        independent_tolerance=None if sequential else independent_tolerance,
    )
    for key, stronger, weaker, threshold, message in (
        (
            "gradient_free_beats_gradient",
            free_names,
            grad_names,
            free_threshold,
            "{s} (gradient-free) broke {k} of {n} points that the gradient "
            "attacks ({w}) left robust (the check allows {t:.1f})",
        ),
        (
            "approximation_beats_true_gradient",
            approx_names,
            true_names,
            max(1.0, tolerance * n),
            "{s} (backward pass approximated) broke {k} of {n} points that "
            "the attacks through the true layers ({w}) left robust: those "
            "layers mask gradients",
        ),
    ):
        if not (stronger and weaker):
            continue
        by_stronger = np.any([broken[a] for a in stronger], axis=0)
        by_weaker = np.any([broken[a] for a in weaker], axis=0)
        only = clean & by_stronger & ~by_weaker
        count = int(only.sum())
        flagged = count > threshold
        checks[key] = {
            "flagged": flagged,
            "fraction": float(only.mean()),
            "count": count,
            "threshold": threshold,
            "tolerance": tolerance,
        }
        if key == "gradient_free_beats_gradient" and not sequential:
            checks[key]["independent_tolerance"] = independent_tolerance
            checks[key]["margin_z"] = MARGIN_Z
            # The reverse count: points the gradient attacks broke and the
            # gradient-free ones left robust (the attacks' disagreement).
            checks[key]["reverse_count"] = int(
                (clean & by_weaker & ~by_stronger).sum()
            )
        if flagged:
            messages.append(
                message.format(
                    s="/".join(stronger),
                    k=count,
                    n=n,
                    w=", ".join(weaker),
                    t=threshold,
                )
            )
    pairs = [] if sequential else strength_pairs(attacks)
    comparisons = [(a, b, accuracy[a], accuracy[b]) for a, b in pairs]
    for name in extra:
        weak = float((clean & ~broken[name]).mean())
        comparisons.append((name, grad_names[0], weak, accuracy[grad_names[0]]))
    if comparisons:
        rising = [
            c
            for c in comparisons
            if _beyond(round((c[3] - c[2]) * n), n, tolerance)
        ]
        checks["accuracy_rises_with_strength"] = {
            "flagged": bool(rising),
            "comparisons": [
                {
                    "weaker": a,
                    "stronger": b,
                    "weaker_accuracy": wa,
                    "stronger_accuracy": sa,
                }
                for a, b, wa, sa in comparisons
            ],
            "tolerance": tolerance,
        }
        for a, b, wa, sa in rising:
            messages.append(
                f"robust accuracy rises with attack strength: {b} "
                f"{sa:.4f} > {a} {wa:.4f}"
            )
    correct = int(clean.sum())
    fraction = zero_gradients / correct if correct else 0.0
    flagged = fraction > zero_gradient_threshold
    checks["zero_gradients"] = {
        "flagged": flagged,
        "fraction": fraction,
        "count": zero_gradients,
        "threshold": zero_gradient_threshold,
    }
    if flagged:
        messages.append(
            f"{zero_gradients} of {correct} correctly classified points "
            f"({fraction:.1%}) have an all-zero input gradient"
        )
    if zero_ce_gradients is not None:
        ce_fraction = zero_ce_gradients / correct if correct else 0.0
        checks["zero_gradient_points"] = {
            "warned": zero_ce_gradients > 0,
            "count": zero_ce_gradients,
            "fraction": ce_fraction,
            "objective": "cross_entropy",
        }
        if zero_ce_gradients:
            warnings.append(
                f"{zero_ce_gradients} of {correct} correctly classified "
                f"points ({ce_fraction:.1%}) have an all-zero cross-entropy "
                "input gradient at the clean input: a gradient attack "
                "cannot start on them, and their robust accuracy under it "
                "is unreliable"
            )
    return {
        "possible": bool(messages),
        "messages": messages,
        "warnings": warnings,
        "checks": checks,
        "through_bpda": through_bpda,
    }
