r"""Trains methods side by side and ranks them by time to robustness.

Three modes.

`--mode=train` (the default) trains every method and seed, each in its own
`python -m tfadv.train` process (a clean gin and TensorFlow state each
time), on the same model, data and epochs. Validation robust accuracy
(PGD-20 on a fixed subset, the first `validation_examples` test images) is
measured after every epoch with the training time so far. The table shows,
per method, the mean and spread over its seeds of the training time, the
time to accuracy (below), clean and robust accuracy, the time ratio to
PGD-AT and the method's place against the Pareto front drawn from the
means (ties inside the spread said as ties); a recommendation table
answers "which method should I use"; every run's commit, machine and load
are listed. Markdown, JSON, and a PNG of robust accuracy against training
time with error bars (when matplotlib is installed).

    python tools/benchmark.py --setting=ranking --out=runs/ranking
    python tools/benchmark.py --setting=ranking --out=runs/ranking \
        --methods=pgd_at,n_fgsm --seeds=3,4     # grow a finished folder
    python tools/benchmark.py --methods=pgd_at,yopo --epochs=3 \
        --train_examples=512 --eval_examples=200 --out=runs/smoke

A benchmark folder grows: a later invocation with the same training
choices (stored in `benchmark_plan.json`; another choice is refused) trains
only the runs it lacks and rewrites the tables from every finished run in
the folder, so seeds and methods can be added over several sessions.

`--mode=overhead` measures, in this one process, what tfadv's PGD-AT step
costs over the hand-written step of `tools/reference_step.py` (the same
model, batch and seed): see `tools/overhead.py`.

    python tools/benchmark.py --mode=overhead --out=runs/overhead

`--mode=cost` measures every method's seconds per minibatch against the
cost its passes predict (`tools/cost_model.py`).

    python tools/benchmark.py --mode=cost --out=runs/cost

Settings (`--setting`):
    ranking: the ranking (the small CNN on 15,000 Fashion-MNIST training
        images, 10 epochs of every gin file's own schedule, validation on
        2,500 test images, the final PGD-20 on all 10,000, 3 seeds for the
        methods on or near the front). About 2 hours per seed of every
        method on 2 quiet cores.
    small_cnn: a first look (10,240 images, 3 epochs, 1 seed; about 40
        minutes): too short and noisy to rank.
    resnet_narrow: a narrow PreAct-ResNet-18 (base width 16) on a
        Fashion-MNIST subset, where YOPO's layer 0 is a small part of a
        forward-backward pass; sized for 2 CPU cores.
    full: the papers' settings (CIFAR-10, PreAct-ResNet-18, WRN-34-10; the
        `experiments/` gin files with their own epochs). For GPUs.

Flags:
    --mode: "train", "overhead" or "cost".
    --setting: see above; it sets the defaults of the flags below.
    --methods: gin files (bare names, without .gin) to train, in order.
    --seeds: run.seed of each run of every method (default: the
        setting's). run.seed seeds the weights, the method, the data order
        and the attacks.
    --front_seeds: after the first pass, every method on the Pareto front
        or within 2 points of it gets seeds 0 .. front_seeds-1 (default:
        the setting's; 3 for ranking).
    --epochs: epochs for every method (run.epochs; default: the
        setting's), unless a --method_bindings entry overrides it. A
        method that replays each minibatch m times (Free-AT) trains
        ceil(epochs / m) epochs, so it makes as many updates. Every
        parameter written in epochs (learning-rate boundaries, FGSM-PGI's
        reset period, ...; `tfadv.configurables.epoch_parameters`) is
        scaled to the epochs a method trains here, so every schedule keeps
        its fractions of training.
    --train_examples, --eval_examples, --validation_examples: data sizes.
    --bindings: extra gin bindings for every method.
    --method_bindings: "method=binding" for one method.
    --target_robust: an absolute validation robust accuracy for the
        "time to target" column, instead of the default rule (within 1.5
        points of PGD-AT's final validation robust accuracy, mean over
        seeds).
    --suite: also attack the first seed's final model of every method with
        this `tfadv.evaluate` suite (e.g. "standard") on the first
        --suite_examples test images, and add its worst case as a column.
    --clock: "wall" (the default) or "cpu": the training time the report
        ranks by. The CPU time of the training process is what another
        program's load on a shared machine does not inflate.
    --report_only: rewrite the tables from the folder's finished runs.
    --out: output folder (new, or a benchmark folder to grow).

"Time to target" is the cumulative training time at the end of the first
epoch whose validation robust accuracy reached the target ("not reached"
if none did): a fast method is judged by it, not by seconds per epoch
alone.
"""

import os
import shlex
import sys
import time

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench import analysis  # noqa: E402
from bench import report  # noqa: E402
from bench import runs as runs_lib  # noqa: E402
from bench import settings  # noqa: E402

_MODE = flags.DEFINE_enum(
    "mode", "train", ["train", "overhead", "cost"], "Mode."
)
_SETTING = flags.DEFINE_enum(
    "setting", "small_cnn", list(settings.SETTINGS), "Model, data, sizes."
)
_METHODS = flags.DEFINE_list("methods", None, "Gin files.")
_SEEDS = flags.DEFINE_list("seeds", None, "run.seed of every run.")
_FRONT_SEEDS = flags.DEFINE_integer(
    "front_seeds", None, "Seeds of the methods near the front."
)
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
_CLOCK = flags.DEFINE_enum(
    "clock", "wall", list(analysis.CLOCKS), "Training time to rank by."
)
_REPORT_ONLY = flags.DEFINE_boolean(
    "report_only", False, "Rewrite the tables only."
)
_ROUNDS = flags.DEFINE_integer("rounds", 12, "Overhead/cost: timed rounds.")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Overhead/cost: warm-up rounds.")
_STEPS = flags.DEFINE_integer(
    "steps_per_round", 10, "Overhead/cost: steps per contender and round."
)
_BATCH = flags.DEFINE_integer(
    "overhead_batch_size", 128, "Overhead/cost: batch size."
)
_SPE = flags.DEFINE_integer(
    "steps_per_execution", 1, "Overhead: fit's steps_per_execution."
)


def plan() -> settings.Plan:
    """The plan of this invocation (flags over the setting's defaults).

    Raises:
        app.UsageError: a malformed --seeds or --method_bindings entry.
    """
    seeds = None
    if _SEEDS.value is not None:
        try:
            seeds = tuple(int(s) for s in _SEEDS.value)
        except ValueError:
            raise app.UsageError(
                f"--seeds={','.join(_SEEDS.value)}: give integers separated "
                "by commas (e.g. --seeds=0,1,2). Nothing was trained."
            ) from None
    try:
        return settings.make_plan(
            _SETTING.value,
            methods=_METHODS.value,
            seeds=seeds,
            front_seeds=_FRONT_SEEDS.value,
            epochs=_EPOCHS.value,
            train_examples=_TRAIN.value,
            eval_examples=_EVAL.value,
            validation_examples=_VALIDATION.value,
            bindings=_BINDINGS.value,
            method_bindings=_METHOD_BINDINGS.value,
        )
    except ValueError as e:
        raise app.UsageError(f"{e} Nothing was trained.") from None


def _command():
    return "python tools/benchmark.py " + shlex.join(sys.argv[1:])


def train_runs(current, out) -> None:
    """Every method and seed of the plan, then the front's extra seeds.

    Seed-major: the first seed of every method finishes before the second
    starts, so an interrupted benchmark has a whole first pass.
    """
    for seed in current.seeds:
        for method in current.methods:
            runs_lib.train_one(current, method, seed, out)
    if not current.front_seeds:
        return
    finished = _planned(runs_lib.finished_runs(out), current)
    stats = analysis.summarise(finished)
    for seed in range(current.front_seeds):
        for method in analysis.near_front(stats):
            runs_lib.train_one(current, method, seed, out)


def _planned(found, current):
    """The finished runs of the plan's methods, in the plan's order, then
    the folder's other methods (added by earlier invocations)."""
    ordered = {m: found[m] for m in current.methods if m in found}
    ordered.update({m: r for m, r in found.items() if m not in ordered})
    return ordered


def train_main(out):
    current = plan()
    try:
        runs_lib.check_plan(current, out)
    except runs_lib.Refusal as e:
        raise app.UsageError(str(e)) from None
    if not _REPORT_ONLY.value:
        train_runs(current, out)
    found = _planned(runs_lib.finished_runs(out), current)
    if not found:
        raise app.UsageError(f"{out} holds no finished run to report.")
    suites = {}
    if _SUITE.value:
        for method, by_seed in found.items():
            suites[method] = runs_lib.evaluate_suite(
                method, min(by_seed), out, _SUITE.value, _SUITE_EXAMPLES.value
            )
    clock = _CLOCK.value
    target = _TARGET.value
    if target is None:
        target = analysis.default_target(found)
    stats = analysis.summarise(found, clock, current.validation_examples)
    if target is not None:
        stats = analysis.with_time_to_target(stats, found, target, clock)
    rule = (
        "No target: pgd_at is not among the methods."
        if target is None
        else f"Target: validation robust accuracy {target:.4f} "
        + (
            "(given by --target_robust)"
            if _TARGET.value is not None
            else f"(PGD-AT's final {target + analysis.TOLERANCE:.4f}, mean "
            "over its seeds, less 1.5 points)"
        )
    )
    header = (
        f"Command: `{_command()}`\n\nSetting: {current.setting} "
        f"({_describe(current)}). Clock: {clock}. {rule} "
        "Values are mean ± standard deviation over seeds (one seed: ± the "
        "binomial standard error of the evaluation, or 5 % timing noise). "
        "Pareto: 'front' (no method's means dominate it), 'tie' (dominated "
        "on the means, but by no method that is clearly faster or clearly "
        "more robust, beyond 2 standard errors), 'dominated'."
    )
    table, recommend, plotted = report.write(
        out, stats, found, target, clock, header, suites
    )
    print(table)
    print(recommend)
    written = "benchmark.md, benchmark.json" + (
        ", benchmark.png" if plotted else ""
    )
    print(f"Written to {out}/: {written}")


def _describe(current):
    parts = [
        f"{current.epochs or 'own'} epochs",
        f"{current.train_examples or 'all'} training images",
        f"validation {current.validation_examples}",
        f"test {current.eval_examples or 'all'}",
    ]
    return ", ".join(parts)


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
        ("--front_seeds", _FRONT_SEEDS.value, 0),
    ):
        if value is not None and value < minimum:
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
            "and tables there. Pass a new folder (or a benchmark folder to "
            "grow). Nothing was run."
        )
    plan()  # refuses malformed --seeds and --method_bindings


def _timing_mode(out, module_name):
    import importlib

    module = importlib.import_module(module_name)
    done = os.path.join(out, f"{module_name}.json")
    if os.path.exists(done):
        raise app.UsageError(
            f"{out} already holds {done}; pass a new --out. Nothing was run."
        )
    os.makedirs(out, exist_ok=True)
    builder, kwargs = settings.SETTINGS[_SETTING.value].overhead_model
    options = dict(
        out=out,
        command=_command(),
        model=(builder, kwargs),
        batch_size=_BATCH.value,
        rounds=_ROUNDS.value,
        warmup=_WARMUP.value,
        steps=_STEPS.value,
        seed=int((_SEEDS.value or [0])[0]),
    )
    if module_name == "overhead":
        options["steps_per_execution"] = _SPE.value
    else:
        options["methods"] = list(plan().methods)
    module.main(**options)


def main(argv):
    del argv
    check_flags()
    out = _OUT.value or os.path.join(
        "runs", f"benchmark-{_MODE.value}-" + time.strftime("%Y%m%d-%H%M%S")
    )
    if _MODE.value == "overhead":
        _timing_mode(out, "overhead")
    elif _MODE.value == "cost":
        _timing_mode(out, "cost_model")
    else:
        train_main(out)


if __name__ == "__main__":
    app.run(main)
