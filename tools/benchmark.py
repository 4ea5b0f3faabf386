r"""Trains methods side by side and tabulates cost and robustness.

Two modes.

`--mode=train` (the default) trains every method one after another in this
one invocation, on the same model, data, epochs and seed, each in its own
`python -m tfadv.train` process (a clean gin and TensorFlow state each
time). Validation robust accuracy (PGD-20 on a fixed subset, the first
`validation_examples` test images) is measured after every epoch with the
training time so far. The table reports seconds per epoch, total training
time, the time to accuracy (below), clean and robust accuracy (with the
attacks named), the time ratio to PGD-AT and whether the method is on the
Pareto front; it is written as Markdown and JSON, with a PNG of robust
accuracy against training time (every method's curve, its final point, the
Pareto front) when matplotlib is installed.

    python tools/benchmark.py --setting=small_cnn --out=runs/bench
    python tools/benchmark.py --setting=resnet_narrow --out=runs/resnet
    python tools/benchmark.py --methods=pgd_at,yopo --epochs=3 \
        --train_examples=512 --eval_examples=200 --out=runs/smoke

`--mode=overhead` measures, in this one process, what tfadv's PGD-AT step
costs over the hand-written step of `tools/reference_step.py` (the same
model, batch and seed): the attack alone, `PGDAT.train_step` called
directly and through `fit`, and variants with one of the step's extras
switched off (input checks, the clean forward for `clean_accuracy`, the
metric updates, the seed generator). Contenders alternate in every round
(the order reversed every other round), warm-up rounds are discarded, and
the medians and spread of the per-round ratios are written as Markdown
and JSON.

    python tools/benchmark.py --mode=overhead --out=runs/overhead

Settings (`--setting`):
    small_cnn: tfadv's small CNN on Fashion-MNIST (the gin files' own
        model and data; the first 10,240 training images, 3 epochs),
        every shipped L-inf method; sized for 2 CPU cores.
    resnet_narrow: a narrow PreAct-ResNet-18 (base width 16) on a
        Fashion-MNIST subset, where YOPO's layer 0 is a small part of a
        forward-backward pass; sized for 2 CPU cores.
    full: the papers' settings (CIFAR-10, PreAct-ResNet-18, WRN-34-10; the
        `experiments/` gin files with their own epochs). For GPUs: days on
        a CPU.

Flags:
    --mode: "train" or "overhead".
    --setting: see above; it sets the defaults of the flags below.
    --methods: gin files (bare names, without .gin) to train, in order
        (default: the setting's list).
    --epochs: epochs for every method (run.epochs; default: the
        setting's), unless a --method_bindings entry overrides it. Free-AT
        trains ceil(epochs / replays) epochs, so it makes as many updates.
        Each method's learning-rate boundaries (written in epochs of its
        gin file's run.epochs) are scaled to the epochs it trains here, so
        every schedule decays at the same fraction of training as in its
        file; cyclic schedules are fractions of training already.
    --train_examples: use the first N training examples.
    --eval_examples: final-evaluation examples.
    --validation_examples: the fixed validation subset.
    --bindings: extra gin bindings for every method.
    --method_bindings: "method=binding" for one method, e.g.
        "free_at=run.epochs = 1".
    --target_robust: an absolute validation robust accuracy for the
        "time to target" column, instead of the default rule (within 1.5
        points of PGD-AT's final validation robust accuracy).
    --suite: also attack every final model with this `tfadv.evaluate`
        suite (e.g. "standard") on the first --suite_examples test images,
        and add its per-example worst case as a column.
    --out: output folder (must not exist, or be an unfinished benchmark).

"Time to target" is the cumulative training time at the end of the first
epoch whose validation robust accuracy reached the target ("not reached"
if none did): a fast method is judged by it, not by seconds per epoch
alone.
"""

import dataclasses
import json
import math
import os
import shlex
import subprocess
import sys
import time

from absl import app
from absl import flags

_MODE = flags.DEFINE_enum("mode", "train", ["train", "overhead"], "Mode.")
_SETTING = flags.DEFINE_enum(
    "setting",
    "small_cnn",
    ["small_cnn", "resnet_narrow", "full"],
    "Model, data and sizes.",
)
_METHODS = flags.DEFINE_list("methods", None, "Gin files.")
_EPOCHS = flags.DEFINE_integer("epochs", None, "Epochs per method.")
_TRAIN = flags.DEFINE_integer("train_examples", None, "Training examples.")
_EVAL = flags.DEFINE_integer("eval_examples", None, "Evaluation examples.")
_VALIDATION = flags.DEFINE_integer(
    "validation_examples", None, "Validation subset (every epoch)."
)
_BINDINGS = flags.DEFINE_multi_string("bindings", [], "Bindings for all.")
_METHOD_BINDINGS = flags.DEFINE_multi_string(
    "method_bindings", [], "'method=binding' for one method."
)
_OUT = flags.DEFINE_string("out", None, "Output folder.")
_TARGET = flags.DEFINE_float(
    "target_robust", None, "Validation robust accuracy to time."
)
# tfadv.evaluate defines --suite too (tests import both modules).
_SUITE = flags.DEFINE_string(
    "suite", None, "Extra tfadv.evaluate suite.", allow_override=True
)
_SUITE_EXAMPLES = flags.DEFINE_integer(
    "suite_examples", 1000, "Test images for --suite."
)
# Not "seed": tfadv.evaluate defines that, and tests import both modules.
_SEED = flags.DEFINE_integer("run_seed", 0, "run.seed and the shuffle seed.")
_ROUNDS = flags.DEFINE_integer("rounds", 12, "Overhead: timed rounds.")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Overhead: discarded rounds.")
_STEPS = flags.DEFINE_integer(
    "steps_per_round", 10, "Overhead: steps per contender and round."
)
_BATCH = flags.DEFINE_integer(
    "overhead_batch_size", 128, "Overhead: batch size."
)
_SPE = flags.DEFINE_integer(
    "steps_per_execution", 1, "Overhead: fit's steps_per_execution."
)

REFERENCE = "pgd_at"
# Time to accuracy: within this much of PGD-AT's final robust accuracy.
TOLERANCE = 0.015  # 1.5 points
NOT_REACHED = "not reached"

# Every shipped method file but pgd_at_l2.gin, whose robust accuracy is
# under an L2 attack and so not comparable; standard.gin is the non-robust
# reference.
METHODS = (
    "standard",
    "pgd_at",
    "fgsm_rs",
    "n_fgsm",
    "grad_align",
    "fgsm_pgi",
    "fast_at",
    "free_at",
    "yopo",
    "trades_yopo",
    "deat",
    "mplus_pgd",
    "mplus_trades",
    "mplus_mart",
    "trades",
    "fast_trades",
    "mart",
    "backward_smoothing",
    "gaat",
    "soft_quantization",
)
# Free-AT replays every minibatch this many times (free_at.gin's REPLAYS),
# so it trains ceil(epochs / replays) epochs to make as many updates.
FREE_AT_REPLAYS = 4


@dataclasses.dataclass(frozen=True)
class Setting:
    """A benchmark setting: the model, data and sizes every method shares.

    Attributes:
        methods: the default method list.
        epochs: epochs for every method (None: each gin file's own).
        train_examples: training subset (None: all).
        eval_examples: final-evaluation examples (None: all).
        validation_examples: the fixed validation subset of every epoch.
        bindings: gin bindings for every method.
        gin_files: the gin file of a method, when not `<method>.gin`.
        overhead_model: the `tfadv.models` builder and its arguments of
            the overhead mode.
    """

    methods: tuple
    epochs: int | None
    train_examples: int | None
    eval_examples: int | None
    validation_examples: int
    bindings: tuple = ()
    gin_files: dict = dataclasses.field(default_factory=dict)
    overhead_model: tuple = ("small_cnn", {})


NARROW_WIDTH = 16  # PreAct-ResNet-18 base width: 16, 32, 64, 128 filters

SETTINGS = {
    # Sized for 2 CPU cores (about 40 minutes for every method).
    "small_cnn": Setting(
        methods=METHODS,
        epochs=3,
        train_examples=10240,
        eval_examples=1000,
        validation_examples=500,
    ),
    "resnet_narrow": Setting(
        methods=METHODS,
        epochs=2,
        train_examples=2048,
        eval_examples=500,
        validation_examples=200,
        bindings=(
            "run.model_fn = @preact_resnet18",
            f"preact_resnet18.width = {NARROW_WIDTH}",
        ),
        overhead_model=("preact_resnet18", {"width": NARROW_WIDTH}),
    ),
    # The papers' runs: CIFAR-10 at 8/255, their models and epochs.
    "full": Setting(
        methods=(
            "pgd_at",
            "fgsm_rs",
            "n_fgsm",
            "grad_align",
            "fgsm_pgi",
            "free_at",
            "yopo",
            "deat",
            "mplus_pgd",
            "mplus_trades",
            "mplus_mart",
            "trades",
            "mart",
            "backward_smoothing",
        ),
        epochs=None,
        train_examples=None,
        eval_examples=None,
        validation_examples=1000,
        gin_files={
            "pgd_at": "experiments/cifar10_pgd_at.gin",
            "fgsm_rs": "experiments/cifar10_fgsm_rs.gin",
            "n_fgsm": "experiments/cifar10_n_fgsm.gin",
            "grad_align": "experiments/cifar10_grad_align.gin",
            "fgsm_pgi": "experiments/cifar10_fgsm_pgi.gin",
            "free_at": "experiments/cifar10_free_at.gin",
            "yopo": "experiments/cifar10_preact_yopo_5_3.gin",
            "deat": "experiments/cifar10_mdeat.gin",
            "mplus_pgd": "experiments/cifar10_mplus_pgd.gin",
            "mplus_trades": "experiments/cifar10_mplus_trades.gin",
            "mplus_mart": "experiments/cifar10_mplus_mart.gin",
            "trades": "experiments/cifar10_trades.gin",
            "mart": "experiments/cifar10_mart.gin",
            "backward_smoothing": "experiments/cifar10_backward_smoothing.gin",
        },
        overhead_model=("preact_resnet18", {}),
    ),
}


def setting() -> Setting:
    return SETTINGS[_SETTING.value]


def _value(flag, default):
    return default if flag.value is None else flag.value


def methods() -> list:
    return list(_value(_METHODS, setting().methods))


def gin_file(method: str) -> str:
    return setting().gin_files.get(method, f"{method}.gin")


def _bindings_for(method):
    current = setting()
    bindings = [f"run.seed = {_SEED.value}", "run.validation_freq = 1"]
    epochs = _value(_EPOCHS, current.epochs)
    if epochs is not None:
        if method == "free_at":
            epochs = max(1, math.ceil(epochs / FREE_AT_REPLAYS))
        bindings.insert(0, f"run.epochs = {epochs}")
    bindings.append(f"make_datasets.shuffle_seed = {_SEED.value}")
    train_examples = _value(_TRAIN, current.train_examples)
    if train_examples:
        bindings.append(f"make_datasets.train_examples = {train_examples}")
    eval_examples = _value(_EVAL, current.eval_examples)
    if eval_examples:
        bindings.append(f"make_datasets.eval_examples = {eval_examples}")
    validation = _value(_VALIDATION, current.validation_examples)
    bindings.append(f"make_datasets.validation_examples = {validation}")
    bindings += list(current.bindings)
    bindings += _BINDINGS.value
    for entry in _METHOD_BINDINGS.value:
        name, sep, binding = entry.partition("=")
        if not sep or not binding.strip():
            raise app.UsageError(
                f"--method_bindings wants 'method=binding'; got {entry!r}."
            )
        if name.strip() == method:
            bindings.append(binding)
    return bindings


# Learning-rate boundaries that gin files write in epochs of their own
# run.epochs. A benchmark that trains fewer (or more) epochs compresses each
# method's schedule into them, as a user training that long would: with
# the files' boundaries as written, a 3-epoch run of a method whose rate
# drops at epochs 8 and 9 would never decay, while a cyclic schedule (in
# fractions of training) would anneal fully, and the table would compare
# schedules, not methods.
EPOCH_BOUNDARIES = (
    "piecewise_constant.boundaries",
    "YOPO.first_layer_lr_boundaries",
)


def _query(parameter):
    import gin

    try:
        return gin.query_parameter(parameter)
    except ValueError:  # not bound
        return None


def _parsed(method, bindings):
    """`(run.epochs, {boundary parameter: value})` of the method's config."""
    import gin

    from tfadv import gin_files

    gin.clear_config()
    try:
        gin_files.parse([gin_file(method)], bindings)
        epochs = _query("run.epochs")
        values = {p: _query(p) for p in EPOCH_BOUNDARIES}
    finally:
        gin.clear_config()
    return epochs, {p: v for p, v in values.items() if v}


def scaled_schedule(method, bindings) -> list:
    """Bindings that scale the file's epoch boundaries to the run's epochs.

    The factor is the epochs that the gin file with `bindings` trains over
    the file's own. `command` puts these before the user's --bindings and
    --method_bindings, so a boundary the user sets there wins.
    """
    own, boundaries = _parsed(method, [])
    epochs, _ = _parsed(method, bindings)
    if not own or not epochs or epochs == own:
        return []
    factor = epochs / own
    return [
        f"{parameter} = {[round(float(b) * factor, 4) for b in value]}"
        for parameter, value in boundaries.items()
    ]


def command(method, logdir) -> list:
    """The `tfadv.train` command line of one method."""
    bindings = _bindings_for(method)
    user = len(_BINDINGS.value) + sum(
        entry.partition("=")[0].strip() == method
        for entry in _METHOD_BINDINGS.value
    )
    split = len(bindings) - user
    bindings = (
        bindings[:split] + scaled_schedule(method, bindings) + bindings[split:]
    )
    return [
        sys.executable,
        "-m",
        "tfadv.train",
        f"--gin_file={gin_file(method)}",
        f"--logdir={logdir}",
    ] + [f"--gin_bindings={b}" for b in bindings]


def run_child(cmd) -> None:
    """Runs a tfadv command line; its refusal ends the benchmark cleanly.

    The child's output streams through. When it exits non-zero, the
    benchmark exits too, with the child's own one-paragraph error (its
    `tfadv.train: error: ...` line) or its exit status, not with a
    `CalledProcessError` traceback.
    """
    tool = cmd[2]  # [python, -m, tfadv.train, ...]
    paragraph = None
    with subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True) as child:
        for line in child.stderr:
            sys.stderr.write(line)
            if line.startswith(f"{tool}: "):
                paragraph = line.strip()
    if child.returncode:
        raise SystemExit(
            f"benchmark.py: stopped, {paragraph}"
            if paragraph
            else f"benchmark.py: stopped: {tool} exited with status "
            f"{child.returncode} (its output is above)."
        )


def train_one(method, out):
    logdir = os.path.join(out, method)
    results_path = os.path.join(logdir, "results.json")
    if not os.path.exists(results_path):
        cmd = command(method, logdir)
        print("$", shlex.join(cmd))
        start = time.perf_counter()
        run_child(cmd)
        print(f"{method}: {time.perf_counter() - start:.0f} s wall clock")
    with open(results_path) as f:
        return json.load(f)


def evaluate_suite(method, out):
    """Runs `tfadv.evaluate --suite` on a method's run; its worst case."""
    logdir = os.path.join(out, method)
    tag = _SUITE.value.replace(",", "_")
    path = os.path.join(logdir, f"benchmark-{tag}.json")
    if not os.path.exists(path):
        cmd = [
            sys.executable,
            "-m",
            "tfadv.evaluate",
            f"--model={logdir}",
            f"--suite={_SUITE.value}",
            f"--num_examples={_SUITE_EXAMPLES.value}",
            f"--output={path}",
        ]
        print("$", shlex.join(cmd))
        run_child(cmd)
    with open(path) as f:
        scores = json.load(f)
    return {
        "name": _SUITE.value,
        "robust_accuracy": scores["suite_robust_accuracy"],
        "num_examples": scores["num_examples"],
        "masking": scores.get("gradient_masking", {}).get("possible"),
    }


# Time to accuracy.


def robust_curve(result) -> list:
    """`[(cumulative training seconds, validation robust accuracy)]`.

    One point per validated epoch, from results.json's history.
    """
    history = result.get("history", {})
    robust = history.get("val_robust_accuracy", [])
    seconds = history.get("time/cumulative_train_seconds", [])
    return [
        (float(t), float(a))
        for t, a in zip(seconds, robust, strict=False)
        if a is not None and t is not None
    ]


def time_to_target(result, target):
    """Training seconds until validation robust accuracy reached `target`.

    None when no epoch reached it.
    """
    for elapsed, accuracy in robust_curve(result):
        if accuracy >= target:
            return elapsed
    return None


def final_robust(result) -> float | None:
    """The last epoch's validation robust accuracy (None without one)."""
    curve = robust_curve(result)
    return curve[-1][1] if curve else None


def default_target(results):
    """PGD-AT's final validation robust accuracy less 1.5 points.

    None when the reference (pgd_at) is not among the results or has no
    validation history.
    """
    reference = results.get(REFERENCE)
    final = None if reference is None else final_robust(reference)
    return None if final is None else final - TOLERANCE


def time_to_accuracy(results, target) -> dict:
    """Per method: the target, the time to it and the ratio to PGD-AT's."""
    reference = results.get(REFERENCE)
    reference_time = (
        None if reference is None else time_to_target(reference, target)
    )
    summary = {}
    for method, result in results.items():
        reached = None if target is None else time_to_target(result, target)
        ratio = None
        if reached is not None and reference_time:
            ratio = reached / reference_time
        summary[method] = {
            "target": target,
            "seconds": reached,
            "reached": reached is not None,
            "ratio_to_reference": ratio,
        }
    return summary


# The Pareto front of (training time, robust accuracy).


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


def final_points(results) -> dict:
    """Each method's final point: training time and robust accuracy.

    The last epoch of the validation curve (the curve the time to accuracy
    is read from); without a history, the final evaluation's first attack.
    """
    points = {}
    for method, result in results.items():
        curve = robust_curve(result)
        if curve:
            points[method] = curve[-1]
        elif result.get("robust_accuracy"):
            name = _plot_attack(result)
            points[method] = (
                float(result["train_seconds"]),
                float(result["robust_accuracy"][name]),
            )
    return points


def make_table(results, target=None, front=None):
    reference = results.get(REFERENCE)
    attack_names = sorted(
        {name for r in results.values() for name in r["robust_accuracy"]}
    )
    suites = sorted(
        {r["suite"]["name"] for r in results.values() if "suite" in r}
    )
    header = ["method", "epochs", "s/epoch", "train s"]
    if target is not None:
        header.append(f"time to {target:.3f}")
    header.append("clean")
    header += [f"robust ({n})" for n in attack_names]
    header += [f"{n} suite" for n in suites]
    header.append(f"time / {REFERENCE}")
    if front is not None:
        header += ["val robust", "Pareto"]
    rows = []
    for method, r in results.items():
        per_epoch = r["train_seconds"] / max(r["epochs"], 1)
        ratio = (
            r["train_seconds"] / reference["train_seconds"]
            if reference
            else float("nan")
        )
        row = [method, str(r["epochs"]), f"{per_epoch:.1f}"]
        row.append(f"{r['train_seconds']:.0f}")
        if target is not None:
            reached = time_to_target(r, target)
            row.append(NOT_REACHED if reached is None else f"{reached:.0f}")
        row.append(f"{r['clean_accuracy']:.4f}")
        row += [
            f"{r['robust_accuracy'][n]:.4f}"
            if n in r["robust_accuracy"]
            else "-"
            for n in attack_names
        ]
        for name in suites:
            suite = r.get("suite", {})
            value = (
                suite.get("robust_accuracy")
                if suite.get("name") == name
                else None
            )
            row.append("-" if value is None else f"{value:.4f}")
        row.append(f"{ratio:.2f}")
        if front is not None:
            final = final_robust(r)
            row.append("-" if final is None else f"{final:.4f}")
            row.append("front" if method in front else "dominated")
        rows.append(row)
    lines = ["| " + " | ".join(header) + " |"]
    lines.append("|" + "---|" * len(header))
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _plot_attack(result):
    names = result["robust_accuracy"]
    return "pgd20" if "pgd20" in names else next(iter(names))


def plot(results, path, target=None, title=""):
    """Robust accuracy against training time, with the Pareto front.

    Every method's validation curve (one point per epoch), its final point
    (filled on the front, hollow when dominated), the front as a step line,
    and the time-to-accuracy target. Methods are named in a legend beside
    the axes, in a colour and marker of their own, not by labels on the
    points, which overlap once a dozen methods end close together.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot as plt
    except ImportError:
        print("matplotlib is not installed; no plot.")
        return False
    points = final_points(results)
    front = pareto_front(points)
    fig, ax = plt.subplots(figsize=(11, 6))
    colours = plt.get_cmap("tab20")
    markers = "osD^vP*Xhp<>"
    for index, method in enumerate(results):
        colour = colours(index % 20)
        marker = markers[index % len(markers)]
        curve = robust_curve(results[method])
        if curve:
            seconds, accuracy = zip(*curve, strict=True)
            ax.plot(seconds, accuracy, "-", color=colour, alpha=0.6, lw=1)
        if method not in points:
            continue
        x, y = points[method]
        on_front = method in front
        ax.scatter(
            x,
            y,
            s=70 if on_front else 45,
            marker=marker,
            facecolors=colour if on_front else "none",
            edgecolors=colour,
            linewidths=1.5,
            zorder=3,
            label=method if on_front else f"{method} (dominated)",
        )
    if front:
        ordered = sorted(points[m] for m in front)
        xs, ys = [], []
        for x, y in ordered:
            if xs:
                xs.append(x)
                ys.append(ys[-1])
            xs.append(x)
            ys.append(y)
        ax.plot(xs, ys, "k--", lw=1, label="Pareto front", zorder=2)
    if target is not None:
        ax.axhline(
            target,
            color="red",
            ls=":",
            lw=1,
            label=f"target {target:.3f} (PGD-AT final - 1.5 pt)",
        )
    ax.set_xlabel("training time (s)")
    ax.set_ylabel("validation robust accuracy")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _command():
    return "python tools/benchmark.py " + shlex.join(sys.argv[1:])


def train_main(out):
    results = {m: train_one(m, out) for m in methods()}
    if _SUITE.value:
        for method in results:
            results[method]["suite"] = evaluate_suite(method, out)
    target = _TARGET.value
    if target is None:
        target = default_target(results)
    points = final_points(results)
    front = pareto_front(points)
    table = make_table(results, target, front)
    rule = (
        f"Target: validation robust accuracy {target:.4f} "
        + (
            "(given by --target_robust)"
            if _TARGET.value is not None
            else f"(PGD-AT's final {target + TOLERANCE:.4f} less 1.5 points)"
        )
        if target is not None
        else "No target: pgd_at is not among the methods."
    )
    command = _command()
    with open(os.path.join(out, "benchmark.md"), "w") as f:
        f.write(f"Command: `{command}`\n\nSetting: {_SETTING.value}. {rule}\n")
        f.write(f"\n{table}\n")
    summary = {
        "command": command,
        "setting": _SETTING.value,
        "target": target,
        "tolerance": TOLERANCE,
        "time_to_accuracy": time_to_accuracy(results, target),
        "pareto_front": sorted(front),
        "final_points": {m: list(p) for m, p in points.items()},
        "results": results,
    }
    with open(os.path.join(out, "benchmark.json"), "w") as f:
        json.dump(summary, f, indent=2)
    plotted = plot(
        results,
        os.path.join(out, "benchmark.png"),
        target,
        title=f"{_SETTING.value}: validation robust accuracy against "
        "training time (filled: on the Pareto front)",
    )
    print(table)
    print(rule)
    written = "benchmark.md, benchmark.json" + (
        ", benchmark.png" if plotted else ""
    )
    print(f"Written to {out}/: {written}")


def check_flags():
    """Refuses flag values that would only fail (or mislead) after training.

    Raises:
        app.UsageError: one paragraph naming the flag and what is accepted.
    """
    target = _TARGET.value
    if target is not None and not 0 <= target <= 1:
        raise app.UsageError(
            f"--target_robust={target} is not an accuracy: give a fraction "
            "in [0, 1] (e.g. 0.45 for 45 %), or leave it out for the default "
            "target (PGD-AT's final validation robust accuracy less 1.5 "
            "points). Nothing was trained."
        )
    for flag, value, minimum in (
        ("--rounds", _ROUNDS.value, 1),
        ("--warmup", _WARMUP.value, 0),
        ("--steps_per_round", _STEPS.value, 1),
        ("--overhead_batch_size", _BATCH.value, 1),
        ("--steps_per_execution", _SPE.value, 1),
    ):
        if value < minimum:
            raise app.UsageError(
                f"{flag}={value}: give an integer >= {minimum}. Nothing was "
                "run."
            )
    if _SUITE.value:
        from tfadv import evaluation

        try:  # the names only: the budget comes from each run later
            evaluation.make_suite(_SUITE.value, epsilon=0.1)
        except ValueError as e:
            raise app.UsageError(
                f"--suite={_SUITE.value}: {e} Nothing was trained."
            ) from None
    out = _OUT.value
    if out and os.path.exists(out) and not os.path.isdir(out):
        raise app.UsageError(
            f"--out={out} is a file; the benchmark writes a folder of runs "
            "and tables there. Pass a new folder (or an unfinished "
            "benchmark's). Nothing was run."
        )


def main(argv):
    del argv
    check_flags()
    out = _OUT.value or os.path.join(
        "runs", f"benchmark-{_MODE.value}-" + time.strftime("%Y%m%d-%H%M%S")
    )
    if _MODE.value == "overhead":
        # Imported here: the train mode needs TensorFlow in this process
        # only to read the gin files (scaled_schedule).
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import overhead

        done = os.path.join(out, "overhead.json")
        if os.path.exists(done):
            raise app.UsageError(f"{out} already holds {done}.")
        os.makedirs(out, exist_ok=True)
        current = setting()
        builder, kwargs = current.overhead_model
        overhead.main(
            out=out,
            command=_command(),
            model=(builder, kwargs),
            batch_size=_BATCH.value,
            rounds=_ROUNDS.value,
            warmup=_WARMUP.value,
            steps=_STEPS.value,
            steps_per_execution=_SPE.value,
            seed=_SEED.value,
        )
        return
    if os.path.exists(os.path.join(out, "benchmark.json")):
        raise app.UsageError(f"{out} already holds a finished benchmark.")
    os.makedirs(out, exist_ok=True)
    train_main(out)


if __name__ == "__main__":
    app.run(main)
