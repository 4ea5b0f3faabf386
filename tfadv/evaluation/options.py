"""The settings of one evaluation, built once and passed down.

`EvalOptions` holds what used to travel as the same keyword arguments
through `run_suite`, `evaluate_suite` and `evaluate_robustness`: the seed,
whether the gradient-masking checks run and with which statistical
margins, XLA, per-example results and whether the checks log what they
find. `resolve` builds one from an `EvalOptions` and the keyword
arguments those functions still accept (`seed=3, jit_compile=True`), so
callers written before it keep working.

The defaults of the masking checks, and why (docs/algorithms.md §7.7):
"""

import dataclasses
import numbers
from collections.abc import Mapping

from tfadv import validation

# Each statistical masking check flags a healthy model with probability at
# most this (one-sided), whatever the number of points: its threshold is
# the count a binomial null reaches with at most this probability
# (`margins.binomial_limit`). The strength check splits it over its
# comparisons (Bonferroni).
FALSE_ALARM_RATE = 0.001
# The null of the sequential rule ("a later attack broke points the
# earlier ones left robust") and of the BPDA check: on a healthy model the
# gradient attacks (those through the true layers) miss each breakable
# point with probability at most this. Measured on the shipped
# Fashion-MNIST models (1,000 points, the standard suite): Square broke 3
# to 4 of the about 100 breakable PGD-AT points and 2 to 3 of the about
# 125 YOPO points that APGD-CE, APGD-T and FAB-T had left robust, i.e.
# 2.4 % to 4 %. The null must lie above every healthy rate, or enough
# points flag a healthy model for certain; a masked model's gradient
# attacks miss most breakable points.
MISS_RATE = 0.05
# In independent mode (an explicit list, whose gradient attacks may be as
# weak as FGSM or PGD-20) a gradient-free attack that breaks some points
# they missed is ordinary attack weakness: on a small PGD-AT CNN on
# Fashion-MNIST (epsilon 0.1, 500 test points) square (5000 queries) broke
# 4.6 %, 3.6 % and 2.4 % of the examples against fgsm, pgd5 and pgd20, and
# 0.2 % against apgd_ce, cw50 and pgd100x3 together. There the null is that
# the gradient-free attack's extra breaks are a Binomial(n, this) count
# over the n examples.
INDEPENDENT_GRADIENT_FREE_TOLERANCE = 0.05
# More than this fraction of correctly classified points with an all-zero
# input gradient of the margin flags masking.
ZERO_GRADIENT_THRESHOLD = 0.05


@dataclasses.dataclass(frozen=True)
class EvalOptions:
    """How one evaluation runs and checks itself.

    Example:
        options = evaluation.EvalOptions(seed=1, jit_compile=True)
        result = evaluation.run_suite(classifier, data, suite, options=options)

    Attributes:
        seed: base seed of the attacks; each attack and batch derives its
            own from it, the attack's name and the batch index.
        masking_checks: run the gradient-masking checks
            (`masking.masking_report`) and the weaker control attack they
            may need.
        false_alarm_rate: the largest probability with which a
            statistical masking check flags a model that its null
            hypothesis describes (one-sided; the strength check divides it
            among its comparisons).
        miss_rate: the null of the sequential rule and of the BPDA check:
            the fraction of breakable points a healthy model's gradient
            attacks may miss.
        independent_tolerance: the null of the gradient-free check in
            independent mode: the fraction of the examples a gradient-free
            attack may break beyond weak listed gradient attacks.
        zero_gradient_threshold: the fraction of correctly classified
            points with an all-zero margin input gradient tolerated.
        jit_compile: compile the attacks with XLA.
        per_example: also return `per_example` results.
        log_findings: each check logs what it finds as it finds it
            (`tfadv.evaluate` turns this off: its table prints them).

    Raises:
        ValueError: a value of the wrong type or outside its range.
    """

    seed: int = 0
    masking_checks: bool = True
    false_alarm_rate: float = FALSE_ALARM_RATE
    miss_rate: float = MISS_RATE
    independent_tolerance: float = INDEPENDENT_GRADIENT_FREE_TOLERANCE
    zero_gradient_threshold: float = ZERO_GRADIENT_THRESHOLD
    jit_compile: bool = False
    per_example: bool = False
    log_findings: bool = True

    def __post_init__(self):
        seed = self.seed
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise ValueError(
                f"EvalOptions.seed must be an integer; got {seed!r}."
            )
        object.__setattr__(self, "seed", int(seed))
        for name in ("masking_checks", "jit_compile", "per_example"):
            validation.boolean(f"EvalOptions.{name}", getattr(self, name))
        validation.boolean("EvalOptions.log_findings", self.log_findings)
        validation.in_interval(
            "EvalOptions.false_alarm_rate",
            self.false_alarm_rate,
            0.0,
            0.5,
            low_open=True,
            high_open=True,
            hint="It is the chance a check flags a healthy model, e.g. 0.001.",
        )
        for name in (
            "miss_rate",
            "independent_tolerance",
            "zero_gradient_threshold",
        ):
            validation.in_interval(
                f"EvalOptions.{name}",
                getattr(self, name),
                0.0,
                1.0,
                high_open=True,
                hint="It is a fraction of points (the default is 0.05).",
            )


FIELDS = tuple(field.name for field in dataclasses.fields(EvalOptions))
# Keyword arguments of earlier versions that no longer exist, and why.
_RETIRED = {
    "tolerance": (
        "the absolute tolerance of the masking checks was replaced by "
        "binomial margins: set false_alarm_rate (default 0.001) or "
        "miss_rate (default 0.05) instead"
    ),
}


def resolve(
    options: EvalOptions | None, overrides: Mapping, who: str
) -> EvalOptions:
    """`options` (None: the defaults) with `overrides` applied.

    Args:
        options: an `EvalOptions`, or None.
        overrides: field name -> value, the keyword arguments a caller
            passed beside `options` (`seed=3`).
        who: the function the caller called, for the error message.

    Raises:
        TypeError: `options` is not an `EvalOptions`.
        ValueError: an override names no field, or a value is bad.
    """
    if options is None:
        options = EvalOptions()
    elif not isinstance(options, EvalOptions):
        raise TypeError(
            f"{who}: options must be an evaluation.EvalOptions; got "
            f"{options!r}."
        )
    for name in overrides:
        if name in _RETIRED:
            raise ValueError(f"{who}: {name}= is gone: {_RETIRED[name]}.")
        if name not in FIELDS:
            raise ValueError(
                f"{who} got the unknown keyword argument {name!r}; the "
                f"evaluation options are {', '.join(FIELDS)} (see "
                "evaluation.EvalOptions)."
            )
    if not overrides:
        return options
    return dataclasses.replace(options, **overrides)
