"""The gradient-masking checks, one function each.

Each check takes per-example results (or the classifier's outputs),
returns a `Finding` (its numbers for the report, and a message when it
flags masking or a warning when it only warns) and logs that message or
warning itself, once, unless the options say not to (`tfadv.evaluate`
prints them in its table instead). It returns None when the suite gives it
nothing to compare. `masking.masking_report` composes them.

The counting checks share one margin (`margins.binomial_limit`): under a
stated null hypothesis about a healthy model the count is a binomial draw,
and the check flags only a count such a draw exceeds with probability at
most `EvalOptions.false_alarm_rate` (0.001).
"""

import dataclasses
from collections.abc import Mapping
from collections.abc import Sequence

import numpy as np
from absl import logging

from tfadv.evaluation import margins
from tfadv.evaluation import options as options_lib
from tfadv.evaluation import suites

# A randomised model: the L2-normalised outputs of two forward passes on one
# batch differ by more than this in some row (AutoAttack's
# `check_randomized` uses 1e-4), or some prediction changes.
RANDOMNESS_TOLERANCE = 1e-4
# Probabilities: every output in [0, 1] and every row summing to 1, within
# this (float16 softmax rows are off by up to about 1e-3).
PROBABILITY_TOLERANCE = 2e-3


@dataclasses.dataclass(frozen=True)
class Finding:
    """What one check found.

    Attributes:
        name: the check's key in the report's `checks`.
        details: its JSON-friendly numbers, `flagged` or `warned` first.
        message: the evidence, when the check flags masking.
        warning: a warning that flags nothing.
    """

    name: str
    details: dict
    message: str | None = None
    warning: str | None = None

    @property
    def flagged(self) -> bool:
        return bool(self.details.get("flagged"))


def _logged(finding: Finding, options: options_lib.EvalOptions) -> Finding:
    """Logs the finding's message or warning (when the options say so)."""
    text = finding.message or finding.warning
    if text and options.log_findings:
        logging.warning("Evaluation check: %s.", text)
    return finding


def _options(options) -> options_lib.EvalOptions:
    return options_lib.EvalOptions() if options is None else options


def randomized_model(
    first: np.ndarray,
    second: np.ndarray,
    *,
    tolerance: float = RANDOMNESS_TOLERANCE,
    options: options_lib.EvalOptions | None = None,
) -> Finding:
    """Two inference-mode passes on one batch disagree: a random model.

    Flags when an L2-normalised output row moves by more than `tolerance`
    or a prediction changes. Each gradient attack then follows one random
    draw of the model's gradient.
    """
    first = np.asarray(first, np.float64)
    second = np.asarray(second, np.float64)
    rows = first.shape[0]

    def unit(a):
        return a / (np.linalg.norm(a, axis=-1, keepdims=True) + 1e-10)

    change = np.linalg.norm(unit(first) - unit(second), axis=-1)
    largest = float(change.max()) if rows else 0.0
    changed = int(np.sum(first.argmax(-1) != second.argmax(-1)))
    flagged = bool(largest > tolerance or changed)
    details = {
        "flagged": flagged,
        "largest_change": largest,
        "changed_predictions": changed,
        "num_points": rows,
        "tolerance": tolerance,
    }
    message = None
    if flagged:
        message = (
            f"the classifier is randomised: two forward passes in inference "
            f"mode on the same {rows} points differ (largest change "
            f"{largest:.3g} of an L2-normalised output row, {changed} "
            f"predictions changed), so each gradient attack follows one "
            f"random draw of the gradient; {suites.RANDOMIZED_MODEL_REMEDY}"
        )
    finding = Finding("randomized_model", details, message)
    return _logged(finding, _options(options))


def probability_outputs(
    outputs: np.ndarray,
    *,
    tolerance: float = PROBABILITY_TOLERANCE,
    options: options_lib.EvalOptions | None = None,
) -> Finding:
    """The classifier outputs probabilities, not logits.

    Flags when every output is in [0, 1] and every row sums to 1, within
    `tolerance`: the attacks' losses (cross-entropy and margin on logits,
    DLR) then act on probabilities and the gradient attacks weaken.
    """
    outputs = np.asarray(outputs, np.float64)
    rows = outputs.shape[0]
    sums = outputs.sum(-1)
    flagged = bool(
        rows
        and outputs.shape[-1] > 1
        and outputs.min() >= -tolerance
        and outputs.max() <= 1.0 + tolerance
        and np.all(np.abs(sums - 1.0) <= tolerance)
    )
    details = {
        "flagged": flagged,
        "min": float(outputs.min()) if rows else 0.0,
        "max": float(outputs.max()) if rows else 0.0,
        "largest_sum_error": float(np.abs(sums - 1.0).max()) if rows else 0.0,
        "tolerance": tolerance,
    }
    message = None
    if flagged:
        message = (
            "the classifier outputs probabilities, not logits (every output "
            f"of the first {rows} points is in [0, 1] and every row sums to "
            f"1 within {tolerance:g}): the attacks' losses (cross-entropy "
            "and margin on logits, DLR) are wrong on probabilities and the "
            "gradient attacks weaken; evaluate the model without its final "
            "softmax (keep the layer's logits, activation=None)"
        )
    finding = Finding("probability_outputs", details, message)
    return _logged(finding, _options(options))


def _either(broken: Mapping, names: Sequence[str], size: int) -> np.ndarray:
    """Per example: some attack of `names` broke it."""
    if not names:
        return np.zeros(size, bool)
    return np.any([np.asarray(broken[n], bool) for n in names], axis=0)


def _extra_breaks(clean, broken, later, earlier):
    """(points only `later` broke, points either broke), as masks."""
    by_later = _either(broken, later, clean.size)
    by_earlier = _either(broken, earlier, clean.size)
    return clean & by_later & ~by_earlier, clean & (by_later | by_earlier)


def gradient_free_beats_gradient(
    free: Sequence[str],
    gradient: Sequence[str],
    *,
    clean: np.ndarray,
    broken: Mapping[str, np.ndarray],
    sequential: bool,
    options: options_lib.EvalOptions | None = None,
) -> Finding | None:
    """A gradient-free attack broke points every gradient attack left robust.

    Let k be that count out of n examples.

    - Sequential mode (the strong gradient attacks ran first): the null is
      a healthy model whose gradient attacks miss each breakable point
      with probability at most `miss_rate`, so k is Binomial(b, miss_rate)
      over the b points some attack broke. square finding 4 of the 100
      breakable points of a healthy PGD-AT model is that; finding most of
      them (the gradient attacks see no gradient) is not.
    - Independent mode (the listed gradient attacks may be as weak as
      FGSM): the null is k ~ Binomial(n, independent_tolerance).

    Flags k above `margins.binomial_limit` of the null at
    `false_alarm_rate`. None without attacks of both kinds.
    """
    if not (free and gradient):
        return None
    options = _options(options)
    only, breakable = _extra_breaks(clean, broken, free, gradient)
    count, n = int(only.sum()), int(clean.size)
    if sequential:
        null = {"miss_rate": options.miss_rate}
        points, rate = int(breakable.sum()), options.miss_rate
        basis = f"of the {points} points some attack broke, a "
        basis += f"{rate:.0%} miss rate"
    else:
        null = {"independent_tolerance": options.independent_tolerance}
        points, rate = n, options.independent_tolerance
        basis = f"of {n}, {rate:.0%} of the examples"
    limit = margins.binomial_limit(points, rate, options.false_alarm_rate)
    details = {
        "flagged": count > limit,
        "count": count,
        "fraction": count / n if n else 0.0,
        "threshold": limit,
        "null_points": points,
        **null,
        "false_alarm_rate": options.false_alarm_rate,
    }
    if not sequential:
        # The attacks' disagreement the other way round.
        reverse, _ = _extra_breaks(clean, broken, gradient, free)
        details["reverse_count"] = int(reverse.sum())
    message = None
    if details["flagged"]:
        message = (
            f"{'/'.join(free)} (gradient-free) broke {count} of {n} points "
            f"that the gradient attacks ({', '.join(gradient)}) left robust "
            f"(the check allows {limit} {basis}, at false-alarm rate "
            f"{options.false_alarm_rate:g})"
        )
    finding = Finding("gradient_free_beats_gradient", details, message)
    return _logged(finding, options)


def approximation_beats_true_gradient(
    approximated: Sequence[str],
    true: Sequence[str],
    *,
    clean: np.ndarray,
    broken: Mapping[str, np.ndarray],
    options: options_lib.EvalOptions | None = None,
) -> Finding | None:
    """An attack through a backward-pass approximation beat the true layers.

    The null is the sequential rule's: attacks through the true layers
    miss each point some attack broke with probability at most
    `miss_rate`. Flags the count above `margins.binomial_limit` of it; the
    approximated layers then mask gradients. None without attacks of both
    kinds.
    """
    if not (approximated and true):
        return None
    options = _options(options)
    only, breakable = _extra_breaks(clean, broken, approximated, true)
    count, n, points = int(only.sum()), int(clean.size), int(breakable.sum())
    limit = margins.binomial_limit(
        points, options.miss_rate, options.false_alarm_rate
    )
    details = {
        "flagged": count > limit,
        "count": count,
        "fraction": count / n if n else 0.0,
        "threshold": limit,
        "null_points": points,
        "miss_rate": options.miss_rate,
        "false_alarm_rate": options.false_alarm_rate,
    }
    message = None
    if details["flagged"]:
        message = (
            f"{'/'.join(approximated)} (backward pass approximated) broke "
            f"{count} of {n} points that the attacks through the true "
            f"layers ({', '.join(true)}) left robust (the check allows "
            f"{limit} of the {points} points some attack broke): those "
            "layers mask gradients"
        )
    finding = Finding("approximation_beats_true_gradient", details, message)
    return _logged(finding, options)


def accuracy_rises_with_strength(
    comparisons: Sequence[tuple[str, str]],
    *,
    clean: np.ndarray,
    broken: Mapping[str, np.ndarray],
    options: options_lib.EvalOptions | None = None,
) -> Finding | None:
    """A stronger attack left robust points a weaker one of its kind broke.

    For each (weaker, stronger) pair, take the points exactly one of the
    two broke: d of them only the weaker one, e only the stronger one.
    The null is that the stronger attack is at least as strong, i.e. each
    such point is the weaker one's with probability at most 1/2 (an exact
    one-sided sign test, McNemar's). Flags d above
    `margins.binomial_limit(d + e, 1/2, false_alarm_rate / pairs)`
    (Bonferroni over the pairs): two points of noise never flag; ten to
    none do. None without pairs.
    """
    if not comparisons:
        return None
    options = _options(options)
    alpha = options.false_alarm_rate / len(comparisons)
    rows, messages = [], []
    for weaker, stronger in comparisons:
        by_weaker = clean & np.asarray(broken[weaker], bool)
        by_stronger = clean & np.asarray(broken[stronger], bool)
        only_weaker = int((by_weaker & ~by_stronger).sum())
        only_stronger = int((by_stronger & ~by_weaker).sum())
        limit = margins.binomial_limit(only_weaker + only_stronger, 0.5, alpha)
        weak_acc = float((clean & ~by_weaker).mean())
        strong_acc = float((clean & ~by_stronger).mean())
        rows.append(
            {
                "weaker": weaker,
                "stronger": stronger,
                "weaker_accuracy": weak_acc,
                "stronger_accuracy": strong_acc,
                "only_weaker_broke": only_weaker,
                "only_stronger_broke": only_stronger,
                "threshold": limit,
            }
        )
        if only_weaker > limit:
            messages.append(
                f"robust accuracy rises with attack strength: {stronger} "
                f"{strong_acc:.4f} > {weaker} {weak_acc:.4f} ({stronger} "
                f"left robust {only_weaker} points {weaker} broke, against "
                f"{only_stronger} the other way; the check allows {limit})"
            )
    details = {
        "flagged": bool(messages),
        "comparisons": rows,
        "false_alarm_rate": options.false_alarm_rate,
    }
    finding = Finding(
        "accuracy_rises_with_strength", details, "; ".join(messages) or None
    )
    return _logged(finding, options)


def zero_gradients(
    count: int,
    correct: int,
    *,
    cross_entropy_count: int | None = None,
    options: options_lib.EvalOptions | None = None,
) -> Finding:
    """Too many correct points have an all-zero margin input gradient.

    Flags more than `zero_gradient_threshold` of the `correct` points; the
    message also gives the cross-entropy count when known.
    """
    options = _options(options)
    fraction = count / correct if correct else 0.0
    flagged = fraction > options.zero_gradient_threshold
    details = {
        "flagged": flagged,
        "fraction": fraction,
        "count": count,
        "threshold": options.zero_gradient_threshold,
    }
    message = None
    if flagged:
        message = (
            f"{count} of {correct} correctly classified points "
            f"({fraction:.1%}) have an all-zero input gradient"
        )
        if cross_entropy_count is not None:
            message += (
                f" of the margin loss ({cross_entropy_count} of the "
                "cross-entropy): a gradient attack cannot start on them"
            )
    return _logged(Finding("zero_gradients", details, message), options)


def zero_gradient_points(
    count: int,
    correct: int,
    *,
    already_flagged: bool = False,
    options: options_lib.EvalOptions | None = None,
) -> Finding:
    """Correct points whose cross-entropy input gradient is all zero.

    A gradient attack cannot start on them, so their robust accuracy under
    it is unreliable (AutoAttack warns as its first attack starts). Warns, flags
    nothing; and stays quiet when `zero_gradients` flagged the model
    (`already_flagged`), whose message carries the count, so the fact is
    said once.
    """
    options = _options(options)
    fraction = count / correct if correct else 0.0
    warned = count > 0 and not already_flagged
    details = {
        "warned": warned,
        "count": count,
        "fraction": fraction,
        "objective": "cross_entropy",
    }
    warning = None
    if warned:
        warning = (
            f"{count} of {correct} correctly classified points "
            f"({fraction:.1%}) have an all-zero cross-entropy input gradient "
            "at the clean input: a gradient attack cannot start on them, and "
            "their robust accuracy under it is unreliable"
        )
    finding = Finding("zero_gradient_points", details, warning=warning)
    return _logged(finding, options)
