"""From finished runs to ranked methods: curves, spreads, targets, fronts.

Pure functions of results.json dictionaries (no TensorFlow, no files), so
they are tested on hand-made numbers. A benchmark holds, per method, one
result per seed; everything here works with one seed too, where the spread
of a mean falls back to the binomial standard error of its evaluation.

Clocks: "wall" reads `time/cumulative_train_seconds` (what a user waits),
"cpu" `time/cumulative_train_cpu_seconds` (the work done by the training
process, every thread; another program's load on a shared machine
inflates the wall clock but hardly this).
"""

import dataclasses
import math
import statistics

REFERENCE = "pgd_at"
# Time to accuracy: within this much of PGD-AT's final robust accuracy.
TOLERANCE = 0.015  # 1.5 points
# "Near the front": within this much robust accuracy of the front's step
# line at the method's time; such methods get the extra seeds.
NEAR_FRONT = 0.02  # 2 points
# Two means differ when they are more than this many standard errors of
# their difference apart (about a 5 % two-sided test).
Z = 2.0
# The relative timing noise assumed for a method with one seed (the spread
# of a mean training time is unknown then); from seeds once there are two.
TIMING_NOISE = 0.05

CLOCKS = {
    "wall": ("time/cumulative_train_seconds", "train_seconds"),
    "cpu": ("time/cumulative_train_cpu_seconds", "train_cpu_seconds"),
}


def robust_curve(result, clock="wall") -> list:
    """`[(cumulative training seconds, validation robust accuracy)]`.

    One point per validated epoch, from results.json's history.
    """
    history = result.get("history", {})
    robust = history.get("val_robust_accuracy", [])
    seconds = history.get(CLOCKS[clock][0], [])
    return [
        (float(t), float(a))
        for t, a in zip(seconds, robust, strict=False)
        if a is not None and t is not None
    ]


def time_to_target(result, target, clock="wall"):
    """Training seconds until validation robust accuracy reached `target`.

    The end of the first epoch that reached it; None when none did.
    """
    for elapsed, accuracy in robust_curve(result, clock):
        if accuracy >= target:
            return elapsed
    return None


def final_robust(result) -> float | None:
    """The last epoch's validation robust accuracy (None without one)."""
    curve = robust_curve(result)
    return curve[-1][1] if curve else None


def train_seconds(result, clock="wall") -> float | None:
    value = result.get(CLOCKS[clock][1])
    return None if value is None else float(value)


def test_robust(result) -> float | None:
    """The final evaluation's PGD-20 robust accuracy (else its first)."""
    names = result.get("robust_accuracy") or {}
    if not names:
        return None
    name = "pgd20" if "pgd20" in names else next(iter(names))
    return float(names[name])


@dataclasses.dataclass(frozen=True)
class Estimate:
    """A mean over seeds with its spread.

    Attributes:
        mean: the mean over seeds.
        sd: the sample standard deviation over seeds (0 with one seed).
        se: the standard error of the mean: sd / sqrt(n), but never below
            the floor (the binomial standard error of an accuracy on its
            evaluation set over n seeds, or the timing noise of one seed).
        n: seeds.
    """

    mean: float
    sd: float
    se: float
    n: int

    def differs_from(self, other: "Estimate") -> bool:
        """Whether the two means are more than Z standard errors apart."""
        return abs(self.mean - other.mean) > Z * math.hypot(self.se, other.se)


def estimate(values, floor=0.0) -> Estimate | None:
    """The mean, spread and standard error of a list (None when empty).

    `floor` is the standard error of one value that the seeds' spread
    cannot show (a binomial evaluation error, a timing noise): the standard
    error is at least floor / sqrt(n).
    """
    values = [float(v) for v in values if v is not None]
    if not values:
        return None
    n = len(values)
    sd = statistics.stdev(values) if n > 1 else 0.0
    return Estimate(
        mean=statistics.fmean(values),
        sd=sd,
        se=max(sd, floor) / math.sqrt(n),
        n=n,
    )


def binomial_se(accuracy, examples) -> float:
    """The standard error of an accuracy measured on `examples` points."""
    if not examples:
        return 0.0
    return math.sqrt(max(accuracy * (1.0 - accuracy), 0.0) / examples)


@dataclasses.dataclass(frozen=True)
class MethodStats:
    """One method's runs, summarised over seeds.

    Attributes:
        seeds: the seeds summarised.
        seconds: training time (the report's clock).
        val_robust: the last epoch's validation robust accuracy.
        robust: the final PGD-20 robust accuracy on the test set.
        clean: the final clean accuracy.
        epochs: epochs trained (of the first seed).
        time_to_target: seconds to the target, over the seeds that
            reached it (None when none did).
        reached: how many seeds reached the target.
    """

    seeds: tuple
    seconds: Estimate
    val_robust: Estimate | None
    robust: Estimate | None
    clean: Estimate | None
    epochs: int
    time_to_target: Estimate | None = None
    reached: int = 0


def summarise(runs, clock="wall", validation_examples=None) -> dict:
    """`{method: MethodStats}` of `{method: {seed: results.json dict}}`."""
    stats = {}
    for method, by_seed in runs.items():
        results = [by_seed[s] for s in sorted(by_seed)]
        seconds = [train_seconds(r, clock) for r in results]
        mean_seconds = statistics.fmean(s for s in seconds if s is not None)
        robust = [test_robust(r) for r in results]
        val = [final_robust(r) for r in results]
        clean = [r.get("clean_accuracy") for r in results]
        examples = results[0].get("num_eval_examples")
        stats[method] = MethodStats(
            seeds=tuple(sorted(by_seed)),
            seconds=estimate(seconds, TIMING_NOISE * mean_seconds),
            val_robust=_accuracy(val, validation_examples),
            robust=_accuracy(robust, examples),
            clean=_accuracy(clean, examples),
            epochs=int(results[0].get("epochs", 0)),
        )
    return stats


def _accuracy(values, examples):
    present = [v for v in values if v is not None]
    if not present:
        return None
    floor = binomial_se(statistics.fmean(present), examples)
    return estimate(present, floor)


def default_target(runs) -> float | None:
    """PGD-AT's final validation robust accuracy (mean over seeds) less 1.5
    points; None without PGD-AT runs that validated."""
    finals = [final_robust(r) for r in runs.get(REFERENCE, {}).values()]
    finals = [f for f in finals if f is not None]
    return statistics.fmean(finals) - TOLERANCE if finals else None


def with_time_to_target(stats, runs, target, clock="wall") -> dict:
    """`stats` with each method's time to `target` over its seeds."""
    updated = {}
    for method, summary in stats.items():
        times = [
            time_to_target(runs[method][s], target, clock)
            for s in summary.seeds
        ]
        reached = [t for t in times if t is not None]
        floor = TIMING_NOISE * statistics.fmean(reached) if reached else 0.0
        updated[method] = dataclasses.replace(
            summary,
            time_to_target=estimate(reached, floor),
            reached=len(reached),
        )
    return updated


def pareto_front(points: dict) -> set:
    """The names whose `(seconds, accuracy)` no other point dominates.

    A point dominates another when it is no slower and no less robust, and
    strictly better in one of the two.
    """
    front = set()
    for name, (seconds, accuracy) in points.items():
        dominated = any(
            s <= seconds and a >= accuracy and (s < seconds or a > accuracy)
            for other, (s, a) in points.items()
            if other != name
        )
        if not dominated:
            front.add(name)
    return front


def standing(stats) -> dict:
    """Each method's place against the front drawn from the means.

    "front": no method's means dominate it. "tie": some do, but none is
    both no worse and clearly better (faster or more robust beyond the
    spread, `Estimate.differs_from`): inside the error bars it could be on
    the front. "dominated": a method is as robust and clearly faster, or
    as fast and clearly more robust. Robustness is the final test PGD-20.
    """
    points = _points(stats)
    front = pareto_front(points)
    result = {}
    for method in points:
        if method in front:
            result[method] = "front"
            continue
        mine = stats[method]
        clearly = False
        for other in points:
            theirs = stats[other]
            if other == method or not _dominates(points[other], points[method]):
                continue
            faster = theirs.seconds.differs_from(mine.seconds)
            stronger = theirs.robust.differs_from(mine.robust)
            if faster or stronger:
                clearly = True
                break
        result[method] = "dominated" if clearly else "tie"
    return result


def _points(stats):
    return {
        m: (s.seconds.mean, s.robust.mean)
        for m, s in stats.items()
        if s.robust is not None
    }


def _dominates(a, b):
    return a[0] <= b[0] and a[1] >= b[1] and (a[0] < b[0] or a[1] > b[1])


def front_gap(stats) -> dict:
    """How far each method's mean robust accuracy is below the front.

    The front's step line at a method's mean time is the most robust mean
    among front methods no slower than it; the gap is that less the
    method's own (0 on the front).
    """
    points = _points(stats)
    front = pareto_front(points)
    gaps = {}
    for method, (seconds, accuracy) in points.items():
        reachable = [points[f][1] for f in front if points[f][0] <= seconds]
        best = max(reachable) if reachable else accuracy
        gaps[method] = max(0.0, best - accuracy)
    return gaps


def near_front(stats, margin=NEAR_FRONT) -> list:
    """Methods on the front or within `margin` of it, in `stats`' order."""
    gaps = front_gap(stats)
    return [m for m in stats if m in gaps and gaps[m] <= margin]


def recommendations(stats, reference=REFERENCE) -> dict:
    """The answers of "which method should I use", with their ties.

    - fastest to PGD-AT's robustness: the smallest mean time to the
      target among methods whose every seed reached it;
    - most robust per minute: the largest robust accuracy gained over
      standard training per minute of training (means; its standard
      error propagated from theirs);
    - most robust overall: the largest mean robust accuracy.
    Each answer lists the winner and the methods that are not clearly
    different from it (`Estimate.differs_from`): a tie inside the error
    bars is said as one.
    """
    answers = {}
    reached = {
        m: s
        for m, s in stats.items()
        if s.time_to_target is not None and s.reached == len(s.seeds)
    }
    if reached:
        best = min(reached, key=lambda m: reached[m].time_to_target.mean)
        answers["fastest_to_reference"] = _with_ties(
            reached, best, lambda s: s.time_to_target
        )
    robust = {m: s for m, s in stats.items() if s.robust is not None}
    if robust:
        best = max(robust, key=lambda m: robust[m].robust.mean)
        answers["most_robust"] = _with_ties(robust, best, lambda s: s.robust)
    per_minute = _per_minute(robust, stats.get("standard"))
    if per_minute:
        best = max(per_minute, key=lambda m: per_minute[m].mean)
        answers["most_robust_per_minute"] = _with_ties(
            per_minute, best, lambda e: e
        )
    return answers


def _per_minute(robust, baseline) -> dict:
    """Robust accuracy gained over standard training per training minute.

    An `Estimate` per method (not standard training itself), its standard
    error propagated from the accuracies' and the time's (first order).
    """
    floor = baseline.robust if baseline and baseline.robust else None
    gains = {}
    for method, s in robust.items():
        if method == "standard" or s.seconds.mean <= 0:
            continue
        gain = s.robust.mean - (floor.mean if floor else 0.0)
        gain_se = math.hypot(s.robust.se, floor.se if floor else 0.0)
        minutes = s.seconds.mean / 60.0
        value = gain / minutes
        relative = math.hypot(
            gain_se / gain if gain else 0.0, s.seconds.se / s.seconds.mean
        )
        gains[method] = Estimate(value, 0.0, abs(value) * relative, 1)
    return gains


def _with_ties(stats, best, quantity):
    value = quantity(stats[best])
    ties = [
        m
        for m, s in stats.items()
        if m != best and not quantity(s).differs_from(value)
    ]
    return {"method": best, "value": value.mean, "ties": ties}
