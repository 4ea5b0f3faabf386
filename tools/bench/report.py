"""The benchmark's table, recommendations, plot and JSON.

Every accuracy and time is a mean over seeds with its spread ("±" is one
sample standard deviation over seeds; with one seed, the binomial standard
error of the evaluation or the assumed timing noise), and every seed's
commit and machine is listed beside the table.
"""

import json
import os

from bench import analysis

NOT_REACHED = "not reached"


def _pm(estimate, digits=3, scale=1.0):
    if estimate is None:
        return "-"
    spread = estimate.sd if estimate.n > 1 else estimate.se
    return f"{estimate.mean * scale:.{digits}f} ± {spread * scale:.{digits}f}"


def make_table(stats, target=None, standing=None, suites=None) -> str:
    """One Markdown row per method: means ± spread over its seeds."""
    reference = stats.get(analysis.REFERENCE)
    header = ["method", "seeds", "epochs", "train s"]
    if target is not None:
        header += [f"time to {target:.3f}", "reached"]
    header += ["clean", "robust (pgd20, test)", "val robust"]
    if suites:
        header.append("suite (worst case)")
    header.append(f"time / {analysis.REFERENCE}")
    if standing is not None:
        header.append("Pareto")
    rows = []
    for method, s in stats.items():
        row = [method, str(len(s.seeds)), str(s.epochs), _pm(s.seconds, 0)]
        if target is not None:
            row.append(
                NOT_REACHED
                if s.time_to_target is None
                else _pm(s.time_to_target, 0)
            )
            row.append(f"{s.reached}/{len(s.seeds)}")
        row += [_pm(s.clean), _pm(s.robust), _pm(s.val_robust)]
        if suites:
            suite = suites.get(method)
            row.append(
                "-"
                if not suite
                else f"{suite['robust_accuracy']:.3f} ({suite['name']}, "
                f"{suite['num_examples']} images"
                + (", masking?" if suite.get("masking") else "")
                + ")"
            )
        ratio = (
            s.seconds.mean / reference.seconds.mean
            if reference
            else float("nan")
        )
        row.append(f"{ratio:.2f}")
        if standing is not None:
            row.append(standing.get(method, "-"))
        rows.append(row)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def provenance_table(runs) -> str:
    """Which commit and machine ran each seed, and the load around it."""
    lines = [
        "| method | seed | commit | machine | load (start, end) | "
        "wall s | cpu s |",
        "|---|---|---|---|---|---|---|",
    ]
    for method, by_seed in runs.items():
        for seed in sorted(by_seed):
            result = by_seed[seed]
            git = result.get("provenance", {}).get("git") or {}
            commit = git.get("commit", "?")[:10] + (
                " (dirty)" if git.get("dirty") else ""
            )
            devices = result.get("provenance", {}).get("devices", {})
            machine = (
                f"{devices.get('cpu', '?')}, {devices.get('cpu_cores', '?')}"
                " cores"
            )
            record = result.get("benchmark_run", {})
            load = [
                record.get("load_average_at_start"),
                record.get("load_average_at_end"),
            ]
            load = ", ".join("-" if v is None else f"{v[0]:.1f}" for v in load)
            cpu = result.get("train_cpu_seconds")
            lines.append(
                f"| {method} | {seed} | {commit} | {machine} | {load} | "
                f"{result.get('train_seconds', 0):.0f} | "
                + ("-" if cpu is None else f"{cpu:.0f}")
                + " |"
            )
    return "\n".join(lines)


def recommendation_table(answers, clock) -> str:
    """ "Which method should I use", one row per question."""
    unit = "CPU seconds" if clock == "cpu" else "seconds"
    questions = (
        (
            "fastest_to_reference",
            "Fastest to PGD-AT's robustness (every seed within 1.5 points of "
            "PGD-AT's final validation robust accuracy)",
            lambda v: f"{v:.0f} {unit} to the target",
        ),
        (
            "most_robust_per_minute",
            "Most robust per minute (robust accuracy over standard "
            "training's, per minute of training)",
            lambda v: f"{v * 100:.2f} points per minute",
        ),
        (
            "most_robust",
            "Most robust overall (final PGD-20 on the test set)",
            lambda v: f"{v:.3f}",
        ),
    )
    lines = [
        "| question | method | value | not clearly different |",
        "|---|---|---|---|",
    ]
    for key, question, show in questions:
        answer = answers.get(key)
        if answer is None:
            lines.append(f"| {question} | - | - | - |")
            continue
        ties = ", ".join(answer["ties"]) or "none"
        lines.append(
            f"| {question} | {answer['method']} | {show(answer['value'])} | "
            f"{ties} |"
        )
    return "\n".join(lines)


def plot(stats, runs, path, target=None, standing=None, clock="wall", title=""):
    """Robust accuracy against training time, with error bars and front.

    Every seed's validation curve (thin), each method's mean final point
    (test PGD-20 against mean training time) with error bars of one
    standard deviation over seeds (or the one-seed standard error), filled
    on the front, half-filled when tied with it, hollow when dominated;
    the front through the means as a step line; the target.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot as plt
    except ImportError:
        print("matplotlib is not installed; no plot.")
        return False
    standing = standing or {}
    fig, ax = plt.subplots(figsize=(12, 6.5))
    colours = plt.get_cmap("tab20")
    markers = "osD^vP*Xhp<>"
    for index, (method, s) in enumerate(stats.items()):
        colour = colours(index % 20)
        marker = markers[index % len(markers)]
        for result in runs[method].values():
            curve = analysis.robust_curve(result, clock)
            if curve:
                xs, ys = zip(*curve, strict=True)
                ax.plot(xs, ys, "-", color=colour, alpha=0.35, lw=0.8)
        if s.robust is None:
            continue
        place = standing.get(method, "dominated")
        spread = lambda e: e.sd if e.n > 1 else e.se  # noqa: E731
        ax.errorbar(
            s.seconds.mean,
            s.robust.mean,
            xerr=spread(s.seconds),
            yerr=spread(s.robust),
            fmt=marker,
            ms=8 if place == "front" else 6,
            color=colour,
            mfc={"front": colour, "tie": "lightgrey"}.get(place, "none"),
            mew=1.5,
            capsize=2,
            zorder=3,
            label=f"{method} (n={len(s.seeds)}, {place})",
        )
    points = {
        m: (s.seconds.mean, s.robust.mean)
        for m, s in stats.items()
        if s.robust is not None
    }
    front = sorted(points[m] for m in analysis.pareto_front(points))
    xs, ys = [], []
    for x, y in front:
        if xs:
            xs.append(x)
            ys.append(ys[-1])
        xs.append(x)
        ys.append(y)
    if xs:
        ax.plot(xs, ys, "k--", lw=1, label="Pareto front (means)", zorder=2)
    if target is not None:
        ax.axhline(
            target,
            color="red",
            ls=":",
            lw=1,
            label=f"target {target:.3f} (PGD-AT final - 1.5 pt)",
        )
    ax.set_xlabel(
        "training CPU seconds" if clock == "cpu" else "training time (s)"
    )
    ax.set_ylabel("robust accuracy (curves: validation; points: test)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def summary_json(stats, runs, target, standing, answers, extra) -> dict:
    """The JSON beside the table: every number the tables show, and more."""

    def est(e):
        return None if e is None else vars(e).copy()

    return {
        **extra,
        "target": target,
        "tolerance": analysis.TOLERANCE,
        "methods": {
            m: {
                "seeds": list(s.seeds),
                "epochs": s.epochs,
                "train_seconds": est(s.seconds),
                "time_to_target": est(s.time_to_target),
                "reached": s.reached,
                "clean_accuracy": est(s.clean),
                "robust_accuracy": est(s.robust),
                "val_robust_accuracy": est(s.val_robust),
                "standing": standing.get(m),
            }
            for m, s in stats.items()
        },
        "recommendations": answers,
        "runs": runs,
    }


def write(out, stats, runs, target, clock, header, suites=None):
    """Writes benchmark.md, benchmark.json and benchmark.png in `out`."""
    place = analysis.standing(stats)
    answers = analysis.recommendations(stats)
    table = make_table(stats, target, place, suites)
    recommend = recommendation_table(answers, clock)
    with open(os.path.join(out, "benchmark.md"), "w") as f:
        f.write(header + "\n\n" + table + "\n\n")
        f.write("Which method should I use (from the table above):\n\n")
        f.write(recommend + "\n\n")
        f.write("Commit, machine and load of every run:\n\n")
        f.write(provenance_table(runs) + "\n")
    summary = summary_json(
        stats,
        runs,
        target,
        place,
        answers,
        {"header": header, "clock": clock, "suites": suites or {}},
    )
    with open(os.path.join(out, "benchmark.json"), "w") as f:
        json.dump(summary, f, indent=2)
    plotted = plot(
        stats,
        runs,
        os.path.join(out, "benchmark.png"),
        target,
        place,
        clock,
        title="robust accuracy against training time "
        "(error bars: spread over seeds)",
    )
    return table, recommend, plotted
