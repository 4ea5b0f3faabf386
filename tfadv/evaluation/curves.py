"""Robustness curves: robust accuracy of one suite at several budgets.

`robustness_curve` runs a suite at each epsilon of a list and collects, per
attack, its robust accuracy at each budget, and the worst case: a point
counts as robust at epsilon only if no attack broke it at that budget or at
any smaller one (a perturbation inside a smaller ball lies inside every
larger ball, in either norm, so this is still a per-example minimum over
valid attacks, and the curve never rises). `format_curve` prints the table
and `plot_curve` draws it with matplotlib.
"""

import math
from collections.abc import Callable
from collections.abc import Sequence

import numpy as np

from tfadv import validation


def check_epsilons(
    values: Sequence, *, name: str = "--epsilons", norm: str = "linf"
) -> list:
    """At least two distinct positive budgets, sorted increasing.

    An L-infinity budget is in (0, 1]; an L2 one is any positive finite
    radius (`validation.epsilon`).

    Raises:
        ValueError: naming the bad value and what is accepted.
    """
    if norm == "l2":
        accepted = (
            "Give at least two distinct positive L2 radii in pixel units, "
            f"e.g. {name}=0.5,1.0,1.5,2.0."
        )
        high = math.inf
    else:
        accepted = (
            f"Give at least two distinct budgets in (0, 1] pixel units, e.g. "
            f"{name}=0.02,0.05,0.1,0.15."
        )
        high = 1.0
    numbers = []
    for value in values:
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(
                f"{name}: {value!r} is not a number. {accepted}"
            ) from None
        validation.in_interval(
            f"{name} value",
            number,
            0.0,
            high,
            low_open=True,
            high_open=norm == "l2",
            hint=accepted,
        )
        numbers.append(number)
    if len(numbers) < 2:
        raise ValueError(
            f"{name} needs at least two budgets for a curve; got "
            f"{list(values)!r}. {accepted}"
        )
    numbers.sort()
    for a, b in zip(numbers, numbers[1:], strict=False):
        if math.isclose(a, b, rel_tol=1e-9):
            raise ValueError(
                f"{name} lists the budget {a:g} twice; got {list(values)!r}. "
                f"{accepted}"
            )
    return numbers


def robustness_curve(
    run_at: Callable[[float], dict], epsilons: Sequence[float]
) -> dict:
    """Runs a suite at each budget and collects the curve.

    Args:
        run_at: `epsilon -> result` of `runner.run_suite` with
            `per_example=True`, the same attacks at each budget.
        epsilons: the budgets, increasing (`check_epsilons`).

    Returns:
        `{"epsilons", "norm", "suite", "clean_accuracy", "num_examples",
        "attacks": {name: [accuracy per epsilon]}, "worst_case": [...],
        "suite_robust_accuracy": [...], "gradient_masking": [bool, ...],
        "inconsistent_points", "results": [...]}`: `worst_case` is the
        per-example minimum over the attacks at that budget and all smaller
        ones; `suite_robust_accuracy` the suite's own number at each
        budget; `inconsistent_points` counts the points some budget left
        robust although a smaller one broke them (none for exact attacks;
        many hint at gradient masking); `results` holds each budget's
        result without its per-example lists.

    Raises:
        ValueError: the attacks did not run at the requested budgets (a
            suite of attack objects with budgets of their own).
    """
    epsilons = [float(e) for e in epsilons]
    results, robust_sets, attacks = [], [], {}
    robust_so_far, inconsistent = None, 0
    for epsilon in epsilons:
        result = dict(run_at(epsilon))
        if not math.isclose(result["epsilon"], epsilon, rel_tol=1e-6):
            raise ValueError(
                f"The suite's attacks ran at epsilon {result['epsilon']:g}, "
                f"not {epsilon:g}: a curve needs named attacks (a suite name "
                "or attack names), which take each budget."
            )
        per_example = result.pop("per_example")
        robust = np.array(per_example["clean"], bool)
        for name, values in per_example["robust"].items():
            robust &= np.array(values, bool)
            attacks.setdefault(name, []).append(result["robust_accuracy"][name])
        if robust_so_far is not None:
            inconsistent += int((robust & ~robust_so_far).sum())
            robust = robust & robust_so_far
        robust_so_far = robust
        robust_sets.append(robust)
        results.append(result)
    first = results[0]
    masking = [r.get("gradient_masking", {}).get("possible") for r in results]
    return {
        "epsilons": epsilons,
        "norm": first["norm"],
        "suite": first.get("suite"),
        "clean_accuracy": first["clean_accuracy"],
        "num_examples": first["num_examples"],
        "attacks": attacks,
        "worst_case": [float(r.mean()) for r in robust_sets],
        "suite_robust_accuracy": [r["suite_robust_accuracy"] for r in results],
        "gradient_masking": masking,
        "inconsistent_points": inconsistent,
        "results": results,
    }


def format_curve(curve: dict) -> str:
    """The curve as a table: a row per budget, a column per attack."""
    names = list(curve["attacks"])
    width = max([11, *(len(n) + 2 for n in names)])
    header = f"  {'epsilon':>9}" + "".join(f"{n:>{width}}" for n in names)
    header += f"{'worst_case':>{width}}"
    lines = [
        f"robustness curve ({curve['norm']}, suite {curve['suite']}, "
        f"{curve['num_examples']} examples, clean accuracy "
        f"{curve['clean_accuracy']:.4f}):",
        header,
    ]
    for i, epsilon in enumerate(curve["epsilons"]):
        row = f"  {epsilon:>9g}"
        row += "".join(f"{curve['attacks'][n][i]:>{width}.4f}" for n in names)
        row += f"{curve['worst_case'][i]:>{width}.4f}"
        if curve["gradient_masking"][i]:
            row += "  possible gradient masking"
        lines.append(row)
    lines.append(
        "  worst_case: per-example minimum over the attacks at that budget "
        "and every smaller one."
    )
    if curve["inconsistent_points"]:
        lines.append(
            f"  note: {curve['inconsistent_points']} times a point survived "
            "a budget after a smaller one broke it (counted as broken); "
            "many hint at gradient masking or too weak attacks."
        )
    return "\n".join(lines)


def plot_curve(curve: dict, path: str, *, title: str) -> None:
    """Draws robust accuracy against epsilon to a PNG at `path`.

    One line per attack (solid, filled markers) and a dashed black one with
    hollow markers for the worst case, each starting at the clean accuracy
    at epsilon 0 (no perturbation). Where an attack is the worst case (the
    usual PGD-20), its line shows through the dashes and its markers
    inside the hollow ones. Uses matplotlib's Agg backend, so no display is
    needed.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    xs = [0.0, *curve["epsilons"]]
    clean = curve["clean_accuracy"]
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    try:
        for name, values in curve["attacks"].items():
            ax.plot(xs, [clean, *values], marker="o", markersize=5, label=name)
        ax.plot(
            xs,
            [clean, *curve["worst_case"]],
            marker="s",
            markersize=10,
            markerfacecolor="none",
            color="black",
            linestyle=(0, (4, 3)),
            linewidth=1.5,
            label="worst case",
            zorder=3,
        )
        norm = {"linf": "L-inf", "l2": "L2"}.get(curve["norm"], curve["norm"])
        ax.set_xlabel(f"epsilon ({norm}, pixel units)")
        ax.set_ylabel("robust accuracy")
        ax.set_ylim(0.0, 1.0)
        ax.set_xlim(left=0.0)
        ax.grid(True, alpha=0.3)
        ax.legend()
        ax.set_title(title, fontsize=10)
        fig.tight_layout()
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)
