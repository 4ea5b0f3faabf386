"""Training runs of a benchmark folder: commands, children, records.

Layout: `<out>/<method>/seed_<k>/` is the `tfadv.train` run folder of one
method and seed (its results.json carries the commit and the machine,
`provenance`), with `benchmark_run.json` beside results.json: the command,
when it started and ended, the machine's load average at both ends and the
wall-clock seconds of the child. `<out>/benchmark_plan.json` keeps the
plan's training choices, so runs added later (more seeds, more methods)
train as the first did.
"""

import json
import os
import re
import shlex
import subprocess
import sys
import time

from bench import settings

PLAN_FILE = "benchmark_plan.json"
RUN_RECORD = "benchmark_run.json"
_SEED_FOLDER = re.compile(r"^seed_(\d+)$")


class Refusal(Exception):
    """A one-paragraph reason not to run (the CLI turns it into a usage
    error or a clean exit)."""


def seed_folder(out, method, seed) -> str:
    return os.path.join(out, method, f"seed_{seed}")


def bindings(plan, method, seed) -> list:
    """The gin bindings of one run, the user's last (they win)."""
    own = [f"run.seed = {seed}", "run.validation_freq = 1"]
    epochs = settings.epochs_for(plan, method)
    if epochs is not None:
        own.insert(0, f"run.epochs = {epochs}")
    if plan.train_examples:
        own.append(f"make_datasets.train_examples = {plan.train_examples}")
    if plan.eval_examples:
        own.append(f"make_datasets.eval_examples = {plan.eval_examples}")
    own.append(
        f"make_datasets.validation_examples = {plan.validation_examples}"
    )
    user = list(plan.bindings) + [
        binding for name, binding in plan.method_bindings if name == method
    ]
    scaled = settings.scaled_epoch_parameters(plan, method, own + user)
    return own + scaled + user


def command(plan, method, seed, logdir) -> list:
    """The `tfadv.train` command line of one run."""
    return [
        sys.executable,
        "-m",
        "tfadv.train",
        f"--gin_file={plan.gin_file(method)}",
        f"--logdir={logdir}",
    ] + [f"--gin_bindings={b}" for b in bindings(plan, method, seed)]


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


def _load():
    try:
        return list(os.getloadavg())
    except OSError:
        return None


def train_one(plan, method, seed, out) -> dict:
    """Trains one method and seed unless its results.json exists."""
    logdir = seed_folder(out, method, seed)
    results_path = os.path.join(logdir, "results.json")
    if not os.path.exists(results_path):
        cmd = command(plan, method, seed, logdir)
        print("$", shlex.join(cmd), flush=True)
        record = {
            "command": shlex.join(cmd),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "load_average_at_start": _load(),
        }
        start = time.perf_counter()
        run_child(cmd)
        record["wall_seconds"] = time.perf_counter() - start
        record["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        record["load_average_at_end"] = _load()
        with open(os.path.join(logdir, RUN_RECORD), "w") as f:
            json.dump(record, f, indent=2)
        print(f"{method} seed {seed}: {record['wall_seconds']:.0f} s")
    return read_json(results_path)


def read_json(path):
    with open(path) as f:
        return json.load(f)


def evaluate_suite(method, seed, out, suite, examples) -> dict:
    """Runs `tfadv.evaluate --suite` on a run; its worst case."""
    logdir = seed_folder(out, method, seed)
    tag = suite.replace(",", "_")
    path = os.path.join(logdir, f"benchmark-{tag}-{examples}.json")
    if not os.path.exists(path):
        cmd = [
            sys.executable,
            "-m",
            "tfadv.evaluate",
            f"--model={logdir}",
            f"--suite={suite}",
            f"--num_examples={examples}",
            f"--output={path}",
        ]
        print("$", shlex.join(cmd), flush=True)
        run_child(cmd)
    scores = read_json(path)
    return {
        "name": suite,
        "seed": seed,
        "robust_accuracy": scores["suite_robust_accuracy"],
        "num_examples": scores["num_examples"],
        "masking": scores.get("gradient_masking", {}).get("possible"),
    }


def finished_runs(out) -> dict:
    """`{method: {seed: results.json}}` of every finished run in `out`."""
    runs = {}
    if not os.path.isdir(out):
        return runs
    for method in sorted(os.listdir(out)):
        folder = os.path.join(out, method)
        if not os.path.isdir(folder):
            continue
        for name in os.listdir(folder):
            match = _SEED_FOLDER.match(name)
            path = os.path.join(folder, name, "results.json")
            if match and os.path.exists(path):
                result = read_json(path)
                record = os.path.join(folder, name, RUN_RECORD)
                if os.path.exists(record):
                    result["benchmark_run"] = read_json(record)
                runs.setdefault(method, {})[int(match.group(1))] = result
    return runs


def check_plan(plan, out) -> None:
    """Stores the plan's training choices, or refuses other ones.

    A folder's runs must share them to be compared; the methods and seeds
    may grow.

    Raises:
        Refusal: the folder holds runs of other choices.
    """
    path = os.path.join(out, PLAN_FILE)
    wanted = plan.training()
    if os.path.exists(path):
        stored = read_json(path)
        if stored != wanted:
            differ = sorted(
                k
                for k in wanted.keys() | stored.keys()
                if wanted.get(k) != stored.get(k)
            )
            details = "; ".join(
                f"{k}: folder {stored.get(k)!r}, now {wanted.get(k)!r}"
                for k in differ
            )
            raise Refusal(
                f"--out={out} holds runs trained with other choices "
                f"({details}). Runs compared in one table must share them: "
                "repeat the folder's choices (only --methods and --seeds may "
                f"grow; they are in {path}) or pass a new --out. Nothing was "
                "trained."
            )
        return
    os.makedirs(out, exist_ok=True)
    with open(path, "w") as f:
        json.dump(wanted, f, indent=2)
