"""Times the formulations of YOPO's layer-0 input gradient, and YOPO's step.

YOPO's inner loop takes, m·n times per minibatch, the gradient of
`Σ⟨G, f0(clip(x + η, 0, 1))⟩` with respect to η (G the frozen costate at
layer 0's output). This tool runs one outer iteration's inner loop (n
signed steps, `YOPOBase.inner_steps`) on a Fashion-MNIST batch, the
perturbation's gradient computed as:

- `tape`: a GradientTape over layer 0 (tfadv before the formulations);
- `transpose`, `flipped`, `shifted`: `tfadv.methods.layer0_gradient`'s
  formulations (`tf.nn.conv2d_transpose`; a forward convolution of the
  padded costate with the flipped kernel; a matmul and shifted sums);
- each of these again inside `tf.function(jit_compile=True)` (`_xla`).

Cases: the small CNN's layer 0 (3x3 conv, 1 -> 32 channels, ReLU), the
MNIST SmallCNN's (valid padding), PreAct-ResNet-18's stem at width 16 on
Fashion-MNIST (affine, 1 -> 16) and on CIFAR-shaped inputs (3 -> 16).
Then YOPO-5-10's whole `train_step` (as yopo.gin, a `tf.function` called
directly) with `layer0_gradient="tape"` against "auto", on the small CNN
and the narrow ResNet.

Every contender runs `steps` calls per round, the order reversed every
other round, the first `warmup` rounds discarded; each round's time is
divided by `tape`'s in the same round and the medians and spread of those
ratios are reported, with each formulation's largest difference from the
tape's result (relative to the largest gradient entry).

    PYTHONPATH=$PWD python tools/layer0_gradient.py \\
        --out=docs/benchmarks/layer0_gradient
"""

import json
import os
import platform
import time

import keras
import numpy as np
import overhead
import tensorflow as tf
from absl import app
from absl import flags

from tfadv import data
from tfadv import models
from tfadv.attacks import pgd
from tfadv.methods import layer0_gradient
from tfadv.methods import yopo

_OUT = flags.DEFINE_string("out", None, "Folder for results.md/.json.")
_ROUNDS = flags.DEFINE_integer("rounds", 6, "Rounds after the warm-up.")
_WARMUP = flags.DEFINE_integer("warmup", 1, "Rounds discarded.")
_STEPS = flags.DEFINE_integer("steps", 5, "Inner loops per round.")
_STEP_ROUNDS = flags.DEFINE_integer(
    "step_rounds", 4, "Rounds of the whole-step comparison."
)
_BATCH = flags.DEFINE_integer("batch_size", 128, "Batch (the benchmark's).")
_INNER = flags.DEFINE_bool("inner", True, "Time the inner loops.")
_STEP_XLA = flags.DEFINE_bool("step_xla", True, "Also jit the whole steps.")
_PREFIX = flags.DEFINE_string("prefix", "results", "Output file stem.")

EPSILON = 0.1
SIGMA = 0.005  # yopo.gin
N = 10  # yopo.gin's inner steps
M = 5
REFERENCE = "tape"

CASES = {
    "small_cnn": ("small_cnn", {}, None),
    "mnist_small_cnn": ("mnist_small_cnn", {}, None),
    "resnet_narrow_stem": ("preact_resnet18", {"width": 16}, None),
    "resnet_narrow_stem_rgb": ("preact_resnet18", {"width": 16}, (32, 32, 3)),
}
STEP_CASES = ("small_cnn", "resnet_narrow_stem")


def _batch(batch_size):
    datasets = data.make_datasets(
        name="fashion_mnist",
        batch_size=batch_size,
        train_examples=batch_size,
        validation_examples=0,
        eval_examples=batch_size,
        shuffle_seed=0,
    )
    x, y = next(iter(datasets.train.take(1)))
    return tf.identity(x), tf.cast(y, tf.int32), datasets.info


def _classifier(case, info):
    builder, kwargs, shape = CASES[case]
    keras.utils.set_random_seed(0)
    shape = shape or tuple(info.image_shape)
    channels = shape[-1]
    return getattr(models, builder)(
        input_shape=shape,
        num_classes=info.num_classes,
        mean=[info.mean[0]] * channels,
        std=[info.std[0]] * channels,
        **kwargs,
    )


def _yopo(classifier, choice, **kwargs):
    return yopo.YOPO(
        classifier,
        m=M,
        train_attack=pgd.ProjectedGradient(
            epsilon=EPSILON, step_size=SIGMA, num_steps=N, start="uniform"
        ),
        weight_decay=5e-4,
        layer0_gradient=choice,
        **kwargs,
    )


def _inputs(case, x, info):
    """A batch of the case's shape, its start η and a costate G."""
    shape = CASES[case][2]
    if shape is not None:
        rng = np.random.default_rng(1)
        x = tf.constant(
            rng.uniform(size=(x.shape[0], *shape)).astype("float32")
        )
    rng = np.random.default_rng(2)
    eta = tf.constant(
        rng.uniform(-EPSILON, EPSILON, size=x.shape).astype("float32")
    )
    return x, eta


def _inner_loop_contenders(case, x, info):
    """`{name: fn}`, each running one inner loop; and the gradients."""
    x, eta = _inputs(case, x, info)
    classifier = _classifier(case, info)
    methods = {c: _yopo(classifier, c) for c in ("tape", *_formulations())}
    # A costate of layer 0's output shape (the MNIST SmallCNN's zero
    # logits layer would give a zero one at initialisation).
    z = methods["tape"].layer0(x + eta)
    costate = tf.constant(
        np.random.default_rng(3).normal(size=z.shape).astype("float32")
    )
    runs, gradients = {}, {}
    for name, method in methods.items():
        runs[name] = tf.function(
            lambda m=method: m.inner_steps(x, eta, costate), autograph=False
        )
        runs[f"{name}_xla"] = tf.function(
            lambda m=method: m.inner_steps(x, eta, costate),
            jit_compile=True,
            autograph=False,
        )
        gradients[name] = _one_gradient(method, x, eta, costate)
    return runs, gradients


def _one_gradient(method, x, eta, costate):
    structure = method._layer0_structure
    formulation = method.layer0_formulation
    if formulation == "tape":
        return method.hamiltonian_gradient(x, eta, costate, wrt_input=True)
    return layer0_gradient.bind(
        structure, formulation, method.layer0, x, costate, training=True
    )(eta)


def _formulations():
    return layer0_gradient.FORMULATIONS


def _step_contenders(case, x, y, info):
    """YOPO-5-10's train_step with the tape and with "auto", jit off/on."""
    runs = {}
    for jit in (False, True) if _STEP_XLA.value else (False,):
        for choice in ("tape", "auto"):
            method = _yopo(_classifier(case, info), choice, seed=0)
            method.compile(
                optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                jit_compile=False,
            )
            method.optimizer.build(method.trainable_variables)
            name = f"{choice}_step" + ("_xla" if jit else "")
            runs[name] = tf.function(
                lambda m=method: m.train_step((x, y)),
                jit_compile=jit,
                autograph=False,
            )
    return runs


def measure(runs, *, rounds, warmup, steps):
    """Seconds per call of each contender, round by round."""
    times = {name: [] for name in runs}
    for fn in runs.values():
        _wait(fn())  # trace
    orders = overhead.round_orders(list(runs), rounds + warmup)
    for index, order in enumerate(orders):
        for name in order:
            start = time.perf_counter()
            for _ in range(steps):
                out = runs[name]()
            _wait(out)
            if index >= warmup:
                times[name].append((time.perf_counter() - start) / steps)
    return times


def _wait(out):
    for value in tf.nest.flatten(out)[:1]:
        np.asarray(value)


def summarise(times, reference):
    names = list(times)
    ratios = overhead.per_round_ratios(times, reference, names)
    return {
        name: {
            "seconds": overhead.spread(times[name]),
            "ratio": overhead.spread(ratios[name]),
        }
        for name in names
    }


def _row(name, summary, error=None):
    s, r = summary["seconds"], summary["ratio"]
    cells = [
        name,
        f"{1e3 * s['median']:.2f}",
        f"{r['median']:.3f}",
        f"{r['q1']:.3f}-{r['q3']:.3f}",
        f"{r['min']:.3f}-{r['max']:.3f}",
    ]
    if error is not None:
        cells.append(f"{error:.1e}")
    return "| " + " | ".join(cells) + " |"


def main(argv):
    del argv
    x, y, info = _batch(_BATCH.value)
    results = {
        "batch_size": _BATCH.value,
        "n": N,
        "m": M,
        "rounds": _ROUNDS.value,
        "warmup": _WARMUP.value,
        "steps": _STEPS.value,
        "machine": f"{platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs",
        "tensorflow": tf.__version__,
        "inner_loop": {},
        "train_step": {},
    }
    lines = []
    for case in CASES if _INNER.value else ():
        runs, gradients = _inner_loop_contenders(case, x, info)
        reference = gradients["tape"]
        scale = float(tf.reduce_max(tf.abs(reference)))
        errors = {
            name: float(tf.reduce_max(tf.abs(g - reference))) / scale
            for name, g in gradients.items()
        }
        times = measure(
            runs,
            rounds=_ROUNDS.value,
            warmup=_WARMUP.value,
            steps=_STEPS.value,
        )
        summary = summarise(times, REFERENCE)
        results["inner_loop"][case] = {"summary": summary, "errors": errors}
        print(case, {k: v["ratio"]["median"] for k, v in summary.items()})
        lines += [
            f"### {case}: one inner loop (n = {N} steps)",
            "",
            "| gradient | ms per loop | ratio to tape | IQR | min-max "
            "| max rel. diff. to tape |",
            "|---|---|---|---|---|---|",
        ]
        for name, entry in summary.items():
            lines.append(_row(name, entry, errors[name.removesuffix("_xla")]))
        lines.append("")
    for case in STEP_CASES:
        runs = _step_contenders(case, x, y, info)
        times = measure(runs, rounds=_STEP_ROUNDS.value, warmup=1, steps=2)
        summary = summarise(times, "tape_step")
        results["train_step"][case] = summary
        print(case, {k: v["ratio"]["median"] for k, v in summary.items()})
        lines += [
            f"### {case}: YOPO-{M}-{N}'s whole train_step, tape vs auto",
            "",
            "`_xla`: the whole step in `tf.function(jit_compile=True)`.",
            "",
            "| step | ms per step | ratio to tape_step | IQR | min-max |",
            "|---|---|---|---|---|",
        ]
        lines += [_row(n, e) for n, e in summary.items()]
        lines.append("")
    header = [
        "# YOPO's layer-0 input gradient: formulations and YOPO's step",
        "",
        "Command: `PYTHONPATH=$PWD python tools/layer0_gradient.py "
        f"--out=docs/benchmarks/layer0_gradient --rounds={_ROUNDS.value} "
        f"--warmup={_WARMUP.value} --steps={_STEPS.value} "
        f"--step_rounds={_STEP_ROUNDS.value} --inner={_INNER.value} "
        f"--step_xla={_STEP_XLA.value} --prefix={_PREFIX.value}`",
        "",
        f"Machine: {results['machine']}, TensorFlow {tf.__version__}; "
        f"batch {_BATCH.value} of Fashion-MNIST (random [0, 1] images for "
        "the RGB case). Ratios are per round, then summarised; below 1 is "
        "faster than the tape.",
        "",
    ]
    text = "\n".join(header + lines)
    print(text)
    if _OUT.value:
        os.makedirs(_OUT.value, exist_ok=True)
        stem = os.path.join(_OUT.value, _PREFIX.value)
        with open(f"{stem}.md", "w") as f:
            f.write(text)
        with open(f"{stem}.json", "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    app.run(main)
