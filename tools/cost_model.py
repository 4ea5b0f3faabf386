"""The cost mode of tools/benchmark.py: every method's step against its passes.

Each method declares the passes one minibatch makes (`trainer.passes()`,
`tfadv.methods.costs`). This mode measures, in one process, on the same
model and Fashion-MNIST batch, what one pass of each kind costs (the unit
contenders below) and what each method's `train_step` costs, in
alternating rounds (the order reversed every other round, warm-up rounds
discarded, as the overhead mode). Per method and round, the modelled
seconds are the declared counts times that round's unit costs, and the
waste is measured over modelled; the report gives the medians and
quartiles over rounds. A waste above `WASTE_LIMIT` is what the step costs
beyond its passes: metrics, checks, controller logic, buffers, or a
pass the unit does not represent well (see `OVERHEADS`).

Units (each a `tf.function`, the classifier in training mode unless said):
- `weight_pass`: forward and backward to the weights (the mean
  cross-entropy), no update;
- `weight_input_pass`: the same backward also to the input;
- `apply`: one `optimizer.apply` of fixed gradients (SGD with momentum);
- `update`: `weight_pass` then `apply` in one function (reported beside
  their sum, a check that units add up);
- `input_gradient`: forward and backward of the summed cross-entropy to
  the input only;
- `costate_pass`: forward and backward to the first layer's output only;
- `layer0_input_gradient`, `layer0_weight_gradient`: YOPO's
  `hamiltonian_gradient` with respect to the input and to layer 0's
  weights, on a YOPO built on the unit classifier (as YOPO computes it);
- `inference_forward`: a forward in inference mode;
- `second_order`: the input gradient of the summed cross-entropy on a
  tape inside another, and the weight gradient of its L1 norm (double
  backpropagation, as GradAlign's regulariser and GAAT's surrogate).
A weight backward through a forward counted elsewhere (FGSM-PGI) costs
`weight_pass` less `inference_forward`.

Identical copies of one step differ: four PGD-AT trainers built alike
(same weights, seed and batch) took 340, 340, 500 and 500 ms of CPU time
per step in one process on the project's 2-core machine, each copy steady
over rounds, while each alone ran the same ops. So every method is built
`COPIES` times and each copy timed; the report takes the copy with the
lower median waste (every copy's is listed), since the slower copy's
excess is not in the method's code.

Methods are built from their gin files as `tfadv.train` builds them (the
method class, its bindings, the file's input layers) on the setting's model,
compiled with SGD(0.01, momentum 0.9) and `jit_compile=False`. A method
whose step count a controller drives (the M+ variants, DEAT) is timed at
its cap, the training attack's `num_steps`; at the files' first epochs
the count is smaller (M+PGD's first epoch makes no attack step at all).
"""

import dataclasses
import json
import os
import time

import gin
import keras
import numpy as np
import overhead
import tensorflow as tf

import tfadv
from tfadv import gin_files
from tfadv import methods as tfadv_methods
from tfadv import models
from tfadv.attacks import objectives
from tfadv.methods import costs
from tfadv.methods import taylor

# Copies of each method's trainer, each timed (see the module docstring).
COPIES = 3
# The largest waste (measured over modelled seconds) the issue accepts.
WASTE_LIMIT = 1.15
# The clocks every contender is timed by: the process's CPU time, which
# another program's load on a shared machine inflates far less than the
# wall clock, first.
CLOCKS = ("cpu", "wall")
LEARNING_RATE = 0.01
MOMENTUM = 0.9

UNITS = (
    "weight_pass",
    "weight_input_pass",
    "apply",
    "update",
    "input_gradient",
    "costate_pass",
    "layer0_input_gradient",
    "layer0_weight_gradient",
    "inference_forward",
    "second_order",
)

# The unit whose seconds one pass of each kind costs; a pair is derived
# as the first unit's seconds less the second's.
KIND_UNITS = {
    "weight_passes": "weight_pass",
    "weight_input_passes": "weight_input_pass",
    "updates": "apply",
    "input_gradients": "input_gradient",
    "costate_passes": "costate_pass",
    "layer0_input_gradients": "layer0_input_gradient",
    "layer0_weight_gradients": "layer0_weight_gradient",
    "inference_forwards": "inference_forward",
    "second_order": "second_order",
    "weight_backwards": ("weight_pass", "inference_forward"),
}

CLOCK_TITLES = {
    "cpu": "CPU time of the process (seconds of work, little inflated by "
    "other programs' load)",
    "wall": "Wall clock",
}

# What a method's step does besides its declared passes, named in the
# notes of a method whose waste exceeds WASTE_LIMIT.
_FIXED = (
    "the step's fixed work (input checks, loss and accuracy trackers, the "
    "minibatch counter, the seed, the coupled weight decay), a larger "
    "share of a cheap step"
)
_LOOP = (
    "its attack runs as a tf.while_loop (3 steps or more); copies of such "
    "a step built alike in one process run either at about their model or "
    "about 1.5 times slower, each copy steadily over rounds (a mode TF "
    "picks per copy; disabling grappler's remapper does not remove it), "
    "so a run where every copy landed in the slow mode reads about 1.5"
)
OVERHEADS = {
    "standard": _FIXED,
    "fgsm_rs": _FIXED,
    "n_fgsm": _FIXED,
    "fast_at": _FIXED,
    "fast_trades": _FIXED,
    "pgd_at": _LOOP,
    "mplus_pgd": _LOOP + "; M+ adds the last step's ‖g‖₁ sum",
    "mplus_trades": _LOOP,
    "mplus_mart": _LOOP,
    "trades": _LOOP,
    "mart": _LOOP + "; MART's boosted CE and weighted KL",
    "grad_align": _FIXED + "; the cosine and the kept count's all-reduce",
    "fgsm_pgi": _FIXED
    + "; the prior and momentum rows gathered and scattered, the id "
    "checks, ‖g‖₁ and the momentum",
    "free_at": _FIXED
    + "; per replay δ's signed step and projection and the trackers; the "
    "per-replica δ buffer read and written",
    "deat": _FIXED
    + "; per replay δ's signed step and projection and the trackers; the "
    "controller's ‖g‖₁",
    "yopo": _FIXED
    + "; m gradient accumulations over every weight, and 50 clips and "
    "projections of η in the inner loop",
    "trades_yopo": _FIXED + "; the inner loop's clips and projections",
    "backward_smoothing": _FIXED,
    "gaat": _FIXED + "; the monitor batch's tf.cond and the expansion's "
    "arithmetic",
    "soft_quantization": _FIXED
    + "; the SoftQuantization layer in front of the classifier, whose "
    "forward and backward no unit includes (units use the bare model)",
}


# The arithmetic (tested in tests/cost_model_test.py).


def kind_seconds(units: dict) -> dict:
    """Seconds of one pass of each kind, from one round's unit seconds.

    A derived kind (a pair of units) is their difference, at least 0.
    """
    seconds = {}
    for kind, unit in KIND_UNITS.items():
        if isinstance(unit, tuple):
            first, second = unit
            seconds[kind] = max(units[first] - units[second], 0.0)
        else:
            seconds[kind] = units[unit]
    return seconds


def modelled_seconds(counts: dict, units: dict) -> float:
    """Σ count × the seconds of one pass of its kind.

    Args:
        counts: `{kind: count}` (`Passes.counts()`).
        units: `{unit: seconds}` of one round (or medians).

    Raises:
        KeyError: a kind without a unit.
    """
    seconds = kind_seconds(units)
    return sum(count * seconds[kind] for kind, count in counts.items())


def per_round_waste(measured: list, counts: dict, unit_times: dict) -> list:
    """Measured over modelled seconds, round by round.

    Args:
        measured: the method's seconds per minibatch, one per round.
        counts: its declared passes.
        unit_times: `{unit: [seconds per round]}`.
    """
    waste = []
    for index, seconds in enumerate(measured):
        units = {name: times[index] for name, times in unit_times.items()}
        waste.append(seconds / modelled_seconds(counts, units))
    return waste


def summarise(times: dict, declared: dict) -> dict:
    """Units, and per method its passes, modelled, measured and waste.

    Args:
        times: `{contender: [seconds per round]}`, units and methods.
        declared: `{method: {"counts": {kind: count}, ...}}`.
    """
    unit_times = {name: times[name] for name in UNITS}
    medians = {
        name: overhead.spread(values)["median"]
        for name, values in unit_times.items()
    }
    units = {name: overhead.spread(v) for name, v in unit_times.items()}
    rows = {}
    for method, info in declared.items():
        counts = info["counts"]
        copies = []
        for name in info.get("contenders", [method]):
            waste = per_round_waste(times[name], counts, unit_times)
            copies.append(
                {
                    "contender": name,
                    "measured_seconds": overhead.spread(times[name]),
                    "waste": overhead.spread(waste),
                    "per_round_waste": waste,
                }
            )
        # The copy whose step ran fastest: identical copies of one step
        # differ in one process (see the module docstring).
        best = min(copies, key=lambda c: c["waste"]["median"])
        rows[method] = {
            **info,
            "modelled_seconds": modelled_seconds(counts, medians),
            "measured_seconds": best["measured_seconds"],
            "waste": best["waste"],
            "per_round_waste": best["per_round_waste"],
            "copies": copies,
            "within_limit": best["waste"]["median"] <= WASTE_LIMIT,
        }
    update_sum = medians["weight_pass"] + medians["apply"]
    return {
        "units": units,
        "kind_seconds": kind_seconds(medians),
        "update_over_parts": medians["update"] / update_sum,
        "methods": rows,
    }


def passes_text(counts: dict) -> str:
    """`'2 weight + 1 update + ...'`: the non-zero counts, short names."""
    short = {
        "weight_passes": "W",
        "weight_input_passes": "WI",
        "updates": "U",
        "input_gradients": "I",
        "costate_passes": "C",
        "layer0_input_gradients": "L0I",
        "layer0_weight_gradients": "L0W",
        "inference_forwards": "F",
        "second_order": "S",
        "weight_backwards": "WB",
    }
    return " + ".join(
        f"{count} {short[kind]}" for kind, count in counts.items() if count
    )


def table(summary: dict) -> str:
    """The units, then one row per method, in Markdown (one clock)."""
    lines = [
        "| unit | median ms | IQR ms |",
        "|---|---|---|",
    ]
    for name, s in summary["units"].items():
        lines.append(
            f"| {name} | {1e3 * s['median']:.2f} | "
            f"{1e3 * s['q1']:.2f}-{1e3 * s['q3']:.2f} |"
        )
    lines += [
        "",
        f"`update` over `weight_pass` + `apply`: "
        f"{summary['update_over_parts']:.3f} (units add up when near 1).",
        "",
        "| method | passes | modelled ms | measured ms (IQR) | waste "
        "(IQR) | every copy's waste | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for method, row in summary["methods"].items():
        m, w = row["measured_seconds"], row["waste"]
        note = "" if row["within_limit"] else OVERHEADS.get(method, "")
        flag = "" if row["within_limit"] else " **>1.15**"
        lines.append(
            f"| {method} | {passes_text(row['counts'])} | "
            f"{1e3 * row['modelled_seconds']:.1f} | {1e3 * m['median']:.1f} "
            f"({1e3 * m['q1']:.1f}-{1e3 * m['q3']:.1f}) | "
            f"{w['median']:.2f}{flag} ({w['q1']:.2f}-{w['q3']:.2f}) | "
            + ", ".join(
                f"{c['waste']['median']:.2f}" for c in row.get("copies", [])
            )
            + f" | {note} |"
        )
    return "\n".join(lines)


def measure(runs: dict, *, rounds: int, warmup: int, steps: int) -> dict:
    """`{clock: {contender: [seconds per step, per kept round]}}`.

    The rounds of `overhead.round_orders` (the order reversed every other
    round); the first `warmup` rounds (tracing included) are discarded.
    """
    times = {clock: {name: [] for name in runs} for clock in CLOCKS}
    orders = overhead.round_orders(runs, warmup + rounds)
    for index, order in enumerate(orders):
        for name in order:
            wall, cpu = time.perf_counter(), time.process_time()
            runs[name]()
            if index >= warmup:
                spent = {
                    "cpu": time.process_time() - cpu,
                    "wall": time.perf_counter() - wall,
                }
                for clock in CLOCKS:
                    times[clock][name].append(spent[clock] / steps)
        kept = "warm-up" if index < warmup else "kept"
        print(f"round {index + 1}/{warmup + rounds} ({kept})", flush=True)
    return times


# The contenders.


def _repeat(fn, steps):
    def run():
        out = None
        for _ in range(steps):
            out = fn()
        for value in tf.nest.flatten(out)[:1]:
            np.asarray(value)  # waits for the step

    return run


def unit_contenders(classifier, x, y, steps) -> dict:
    """`{unit: run}` on one classifier and batch (see the module doc)."""
    variables = classifier.trainable_variables
    optimizer = keras.optimizers.SGD(LEARNING_RATE, momentum=MOMENTUM)
    optimizer.build(variables)

    def losses(inputs):
        return objectives.cross_entropy(classifier(inputs, training=True), y)

    def weight_grads(watch=None):
        with tf.GradientTape() as tape:
            if watch is not None:
                tape.watch(watch)
            loss = tf.reduce_mean(losses(x))
        sources = variables if watch is None else [watch, *variables]
        return tape.gradient(loss, sources)

    fixed = [tf.constant(g) for g in weight_grads()]
    yopo = tfadv_methods.YOPO(classifier, m=1, epsilon=0.1)
    z = yopo.layer0(x, training=True)
    costate = tf.random.stateless_normal(tf.shape(z), [0, 1], dtype=z.dtype)
    eta = tf.zeros_like(x)

    def input_gradient():
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(losses(x))
        return tape.gradient(loss, x)

    def costate_pass():
        z = yopo.layer0(x, training=True)
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(z)
            logits = yopo.rest(z, training=True)
            loss = tf.reduce_sum(objectives.cross_entropy(logits, y))
        return tape.gradient(loss, z)

    def second_order():
        with tf.GradientTape() as tape:

            def loss_fn(inputs):
                return losses(inputs), None

            _, _, grad, _ = taylor.input_derivatives(loss_fn, x)
            penalty = tf.reduce_sum(tf.abs(grad))
        return tape.gradient(penalty, variables)

    def update():
        optimizer.apply(weight_grads(), variables)
        return variables[0]

    def apply():
        optimizer.apply(fixed, variables)
        return variables[0]

    functions = {
        "weight_pass": weight_grads,
        "weight_input_pass": lambda: weight_grads(watch=x),
        "apply": apply,
        "update": update,
        "input_gradient": input_gradient,
        "costate_pass": costate_pass,
        # As the inner steps compute it (the written-out formulation where
        # layer 0 allows one), with its once-per-outer-pass set-up.
        "layer0_input_gradient": lambda: yopo.layer0_input_gradient(x, costate)(
            eta
        ),
        "layer0_weight_gradient": lambda: yopo.hamiltonian_gradient(
            x, eta, costate, wrt_input=False
        ),
        "inference_forward": lambda: classifier(x, training=False),
        "second_order": second_order,
    }
    return {
        name: _repeat(tf.function(fn, autograph=False), steps)
        for name, fn in functions.items()
    }


def _reference(parameter):
    try:
        return gin.query_parameter(parameter)
    except ValueError:  # not bound
        return None


def build_method(name, make_classifier, *, batch_size, seed):
    """A compiled trainer built from `<name>.gin` on the setting's model.

    Returns:
        `(trainer, timed_count)`: the trainer (a controller's count set to
        its cap) and that count, or None without a controller.
    """
    gin.clear_config()
    try:
        gin_files.parse([f"{name}.gin"], [f"FreeAT.batch_size = {batch_size}"])
        method_cls = gin.query_parameter("run.method_cls")
        layers = _reference("run.input_layers") or []
        keras.utils.set_random_seed(seed)
        classifier = make_classifier()
        if layers:
            classifier = models.prepend_layers(
                classifier, [layer.scoped_configurable_fn for layer in layers]
            )
        cls = method_cls.scoped_configurable_fn
        extra = {"seed": seed}
        if getattr(cls, "uses_example_ids", False):
            extra["num_examples"] = batch_size
        trainer = cls(classifier, **extra)
    finally:
        gin.clear_config()
    trainer.compile(
        optimizer=keras.optimizers.SGD(LEARNING_RATE, momentum=MOMENTUM),
        jit_compile=False,
    )
    timed = None
    if trainer.step_controller is not None:
        timed = trainer.train_attack.num_steps
        trainer.set_step_count(trainer.step_controller_count, timed)
    trainer.on_epoch_begin(0)
    return trainer, timed


def method_contenders(names, make_classifier, x, y, *, steps, seed):
    """`({contender: run}, {method: declaration})`, `COPIES` per method.

    The copies of a method are built alike (same weights and seed) and
    timed as separate contenders, `<method>#<copy>`.
    """
    runs, declared = {}, {}
    for name in names:
        contenders = []
        for copy in range(COPIES):
            trainer, timed = build_method(
                name, make_classifier, batch_size=int(x.shape[0]), seed=seed
            )
            data = (x, y)
            if trainer.uses_example_ids:
                data = ({"image": x, "example_id": tf.range(x.shape[0])}, y)
            step = tf.function(trainer.train_step, autograph=False)
            contender = f"{name}#{copy}"
            runs[contender] = _repeat(
                lambda step=step, data=data: step(data), steps
            )
            contenders.append(contender)
        declared[name] = {
            "class": type(trainer).__name__,
            "counts": trainer.passes().counts(),
            "timed_step_count": timed,
            "contenders": contenders,
        }
    return runs, declared


def main(
    *, out, command, model, batch_size, rounds, warmup, steps, seed, methods
):
    x, y, info = overhead._batch(batch_size, seed)
    builder, kwargs = model

    def make_classifier():
        return overhead.make_classifier(model, info, seed)

    runs = unit_contenders(make_classifier(), x, y, steps)
    method_runs, declared = method_contenders(
        methods, make_classifier, x, y, steps=steps, seed=seed
    )
    runs.update(method_runs)
    times = measure(runs, rounds=rounds, warmup=warmup, steps=steps)
    summary = {clock: summarise(times[clock], declared) for clock in CLOCKS}
    settings = {
        "model": {"builder": builder, **kwargs},
        "batch_size": batch_size,
        "rounds": rounds,
        "warmup": warmup,
        "steps_per_round": steps,
        "seed": seed,
        "optimizer": f"SGD({LEARNING_RATE}, momentum={MOMENTUM})",
        "jit_compile": False,
        "waste_limit": WASTE_LIMIT,
        "copies": COPIES,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "tfadv": getattr(tfadv, "__version__", None),
        "threads": {
            "intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
            "inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
        },
        "kinds": {
            f.name: KIND_UNITS[f.name] for f in dataclasses.fields(costs.Passes)
        },
    }
    text = "\n\n".join(
        f"### {CLOCK_TITLES[clock]}\n\n{table(summary[clock])}"
        for clock in CLOCKS
    )
    with open(os.path.join(out, "cost_model.md"), "w") as f:
        f.write(f"Command: `{command}`\n\n")
        f.write(
            f"Model {builder} {kwargs or ''}, batch {batch_size}, {rounds} "
            f"rounds of {steps} steps per contender after {warmup} warm-up "
            "rounds, in one process. Passes: W weight pass, WI weight pass "
            "with the input gradient, U optimizer update, I input gradient, "
            "C costate (backward to layer 0's output), L0I / L0W layer-0 "
            "input / weight gradient, F inference forward, S second-order "
            "pass, WB weight backward through a forward counted elsewhere. "
            "Waste is measured over modelled seconds per round, then "
            f"summarised; above {WASTE_LIMIT} is flagged. Every contender "
            "is timed by the process's CPU time and by the wall clock.\n\n"
        )
        f.write(text + "\n")
        notes = [
            f"- {method}: {OVERHEADS[method]}"
            for method in methods
            if method in OVERHEADS
        ]
        if notes:
            f.write("\nWhat steps do beyond their passes:\n\n")
            f.write("\n".join(notes) + "\n")
    with open(os.path.join(out, "cost_model.json"), "w") as f:
        json.dump(
            {"command": command, "settings": settings, "clocks": summary},
            f,
            indent=2,
        )
    print(text)
    print(f"Written to {out}/cost_model.md, cost_model.json")
