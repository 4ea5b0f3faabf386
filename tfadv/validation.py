"""Argument checks shared by attacks, methods, schedules and the run.

Each check returns the value in its canonical type, or raises a
`ValueError` whose message names the argument, the bad value and what is
accepted, so that a bad gin binding fails before training with one clear
paragraph.
"""

import math
from collections.abc import Sequence


def count(name: str, value, *, minimum: int = 0, meaning: str = "") -> int:
    """A Python int >= `minimum` (a step, replay or restart count)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        what = f" ({meaning})" if meaning else ""
        raise ValueError(
            f"{name}{what} must be an integer >= {minimum}; got {value!r}."
        )
    return value


def non_negative(name: str, value) -> float:
    """A finite or infinite float >= 0."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not number >= 0.0:
        raise ValueError(
            f"{name} must be a non-negative number; got {value!r}."
        )
    return number


def in_interval(
    name: str,
    value,
    low: float,
    high: float,
    *,
    low_open: bool = False,
    high_open: bool = False,
    hint: str = "",
) -> float:
    """A float in the interval from `low` to `high` (open ends as asked)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    above = number > low if low_open else number >= low
    below = number < high if high_open else number <= high
    if math.isnan(number) or not (above and below):
        interval = (
            f"{'(' if low_open else '['}{low:g}, {high:g}"
            f"{')' if high_open else ']'}"
        )
        raise ValueError(
            f"{name} must be in {interval}; got {value!r}."
            + (f" {hint}" if hint else "")
        )
    return number


def epsilon(value, *, allow_zero: bool = True, norm: str = "linf") -> float:
    """An L-p radius in pixel units, checked against its norm's range.

    In L-infinity a radius above 1 moves every pixel anywhere in [0, 1], so
    the range is [0, 1]. In L2 the image box is far wider (its diameter is
    sqrt(pixels), 28 for 28x28 images), so any finite radius is accepted.
    A training run needs a positive radius (`allow_zero=False`).
    """
    if norm == "l2":
        return in_interval(
            "epsilon",
            value,
            0.0,
            math.inf,
            low_open=not allow_zero,
            high_open=True,
            hint="An L2 radius is in pixel units (images are in [0, 1]): "
            "MNIST-like 28x28 images commonly use 1.5, CIFAR-10 0.5. An "
            "attack accepts 0 (the images stay unchanged); a training run "
            "needs a positive radius.",
        )
    return in_interval(
        "epsilon",
        value,
        0.0,
        1.0,
        low_open=not allow_zero,
        hint="Epsilon is in pixel units (images are in [0, 1]): "
        "Fashion-MNIST uses 0.1, CIFAR-10 8/255 = 0.0313725. An attack "
        "accepts [0, 1] (0 leaves the images unchanged); a training run "
        "needs (0, 1].",
    )


def boolean(name: str, value, *, hint: str = "") -> bool:
    """True or False, not a string or number that would read as one."""
    if not isinstance(value, bool):
        raise ValueError(
            f"{name} must be True or False; got {value!r}."
            + (f" {hint}" if hint else "")
        )
    return value


def choice(name: str, value, choices: Sequence, *, hint: str = ""):
    """One of `choices`."""
    if value not in choices:
        raise ValueError(
            f"{name} must be one of {list(choices)}; got {value!r}."
            + (f" {hint}" if hint else "")
        )
    return value


def positive_epochs(name: str, values: Sequence[float]) -> tuple:
    """Epoch boundaries: a sequence of positive numbers."""
    values = tuple(float(v) for v in values)
    if any(not v > 0 for v in values):
        raise ValueError(f"{name} must be positive epochs; got {list(values)}.")
    return values
