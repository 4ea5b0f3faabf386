r"""Trains methods side by side and tabulates cost and robustness.

Every method runs one after another in this one invocation, on the same
model, data, epochs and seed, each in its own `python -m tfadv.train`
process (a clean gin and TensorFlow state each time). The table reports
seconds per epoch, total training time, clean and robust accuracy (with the
attacks named) and the time ratio to PGD-AT; it is written as Markdown and
JSON, with a plot of robust accuracy against training time when matplotlib
is installed.

    python tools/benchmark.py --methods=pgd_at,yopo --epochs=3 \
        --out=runs/bench

Flags:
    --methods: gin files (bare names, without .gin) to train, in order.
    --epochs: epochs for every method (run.epochs), unless a
        --method_bindings entry overrides it.
    --train_examples: use the first N training examples (default: all).
    --eval_examples: final-evaluation examples (default: all 10,000).
    --bindings: extra gin bindings for every method.
    --method_bindings: "method=binding" for one method, e.g.
        "free_at=run.epochs = 1" (Free-AT trains epochs/m).
    --target_robust: the validation robust accuracy (PGD-20 on the
        validation images, every epoch) of the "time to target" column;
        default: 95 % of the best that the reference (pgd_at) reached, when
        it is among the methods.
    --suite: also attack every final model with this `tfadv.evaluate`
        suite (e.g. "standard") on the first --suite_examples test images,
        and add its per-example worst case as a column.
    --out: output folder (must not exist, or be an unfinished benchmark).

"Time to target" is the cumulative training time at the end of the first
epoch whose validation robust accuracy reached the target ("-" if none
did): a fast method is judged by it, not by seconds per epoch alone.
"""

import json
import os
import shlex
import subprocess
import sys
import time

from absl import app
from absl import flags

_METHODS = flags.DEFINE_list("methods", ["standard", "pgd_at"], "Gin files.")
_EPOCHS = flags.DEFINE_integer("epochs", 3, "Epochs per method.")
_TRAIN = flags.DEFINE_integer("train_examples", None, "Training examples.")
_EVAL = flags.DEFINE_integer("eval_examples", None, "Evaluation examples.")
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

REFERENCE = "pgd_at"


def _bindings_for(method):
    bindings = [f"run.epochs = {_EPOCHS.value}", f"run.seed = {_SEED.value}"]
    bindings.append(f"make_datasets.shuffle_seed = {_SEED.value}")
    if _TRAIN.value:
        bindings.append(f"make_datasets.train_examples = {_TRAIN.value}")
    if _EVAL.value:
        bindings.append(f"make_datasets.eval_examples = {_EVAL.value}")
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


def train_one(method, out):
    logdir = os.path.join(out, method)
    results_path = os.path.join(logdir, "results.json")
    if not os.path.exists(results_path):
        cmd = [
            sys.executable,
            "-m",
            "tfadv.train",
            f"--gin_file={method}.gin",
            f"--logdir={logdir}",
        ] + [f"--gin_bindings={b}" for b in _bindings_for(method)]
        print("$", shlex.join(cmd))
        start = time.perf_counter()
        subprocess.run(cmd, check=True)
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
        subprocess.run(cmd, check=True)
    with open(path) as f:
        scores = json.load(f)
    return {
        "name": _SUITE.value,
        "robust_accuracy": scores["suite_robust_accuracy"],
        "num_examples": scores["num_examples"],
        "masking": scores.get("gradient_masking", {}).get("possible"),
    }


def time_to_target(result, target):
    """Training seconds until validation robust accuracy reached `target`."""
    history = result.get("history", {})
    robust = history.get("val_robust_accuracy", [])
    seconds = history.get("time/cumulative_train_seconds", [])
    for accuracy, elapsed in zip(robust, seconds, strict=False):
        if accuracy >= target:
            return elapsed
    return None


def default_target(results):
    """95 % of the best validation robust accuracy of the reference."""
    history = results.get(REFERENCE, {}).get("history", {})
    robust = history.get("val_robust_accuracy")
    return 0.95 * max(robust) if robust else None


def make_table(results, target=None):
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
            row.append("-" if reached is None else f"{reached:.0f}")
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
        rows.append(row)
    lines = ["| " + " | ".join(header) + " |"]
    lines.append("|" + "---|" * len(header))
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def plot(results, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot as plt
    except ImportError:
        print("matplotlib is not installed; no plot.")
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for method, r in results.items():
        name = (
            "pgd20"
            if "pgd20" in r["robust_accuracy"]
            else next(iter(r["robust_accuracy"]))
        )
        ax.scatter(r["train_seconds"], r["robust_accuracy"][name])
        ax.annotate(method, (r["train_seconds"], r["robust_accuracy"][name]))
    ax.set_xlabel("training time (s)")
    ax.set_ylabel("robust accuracy")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)


def main(argv):
    del argv
    out = _OUT.value or os.path.join(
        "runs", "benchmark-" + time.strftime("%Y%m%d-%H%M%S")
    )
    if os.path.exists(os.path.join(out, "benchmark.json")):
        raise app.UsageError(f"{out} already holds a finished benchmark.")
    os.makedirs(out, exist_ok=True)
    results = {m: train_one(m, out) for m in _METHODS.value}
    if _SUITE.value:
        for method in results:
            results[method]["suite"] = evaluate_suite(method, out)
    target = _TARGET.value
    if target is None:
        target = default_target(results)
    table = make_table(results, target)
    command = "python tools/benchmark.py " + shlex.join(sys.argv[1:])
    with open(os.path.join(out, "benchmark.md"), "w") as f:
        f.write(f"Command: `{command}`\n\n{table}\n")
    with open(os.path.join(out, "benchmark.json"), "w") as f:
        json.dump({"command": command, "results": results}, f, indent=2)
    plot(results, os.path.join(out, "benchmark.png"))
    print(table)
    print(f"Written to {out}/benchmark.md, benchmark.json")


if __name__ == "__main__":
    app.run(main)
