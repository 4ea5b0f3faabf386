"""Runs an attack suite over a dataset: robust accuracy, per example.

An example counts as robust under an attack only if it is classified
correctly both clean and at the attack's output; the suite's robust
accuracy is the per-example minimum over its attacks ("worst_case"). In
independent mode every attack runs on each example classified correctly
when clean; in sequential mode (AutoAttack's, the `standard` suite) each
attack runs only on the points still robust after the previous ones.

`evaluate_robustness` runs in named phases: `_prepare` settles and checks
the attacks (and the masking checks' weaker control) before anything
runs; each batch then goes through `_clean_pass`, an `_attack_pass` per
attack and `_gradient_pass`; `_worst_case` takes the per-example minimum,
`_summary` the numbers, and `_masking` the gradient-masking checks. The
settings travel as one `options.EvalOptions`.
"""

import dataclasses
import time
import zlib
from collections.abc import Mapping
from collections.abc import Sequence

import gin
import keras
import numpy as np
import tensorflow as tf

from tfadv import layers
from tfadv.attacks import base as attack_base
from tfadv.attacks import objectives
from tfadv.attacks import wrappers
from tfadv.evaluation import masking
from tfadv.evaluation import options as options_lib
from tfadv.evaluation import suites

Attacks = Mapping[str, attack_base.Attack] | Sequence[attack_base.Attack]


def _chain(attack):
    """The attack and every attack it wraps (BPDA, EOT), outermost first."""
    while attack is not None:
        yield attack
        attack = getattr(attack, "attack", None)


def _seed_name(name: str, attack) -> str:
    """The name an attack's random draws derive from.

    A wrapper (BPDA, EOT) draws what its innermost attack would, so
    `bpda_pgd20` starts from the points `pgd20` starts from: comparing the
    two then isolates the backward pass (for an increasing elementwise
    layer with nonzero derivative, signed PGD through it and through BPDA
    take the very same steps).
    """
    inner = list(_chain(attack))[-1]
    return name if inner is attack else inner.name


def _attack_seed(seed: int, name: str, index: int) -> tf.Tensor:
    """Per attack and batch, so adding an attack changes no other number."""
    first = zlib.crc32(f"{seed}/{name}".encode()) & 0x7FFFFFFF
    return tf.constant([first, index], tf.int32)


def _check_batch(logits: np.ndarray, labels: np.ndarray, index: int):
    """Refuses labels the classifier has no logit for, and NaN outputs."""
    width = logits.shape[-1]
    bad = (labels < 0) | (labels >= width)
    if bad.any():
        shown = sorted(set(labels[bad].tolist()))[:5]
        raise ValueError(
            f"evaluate_robustness: batch {index} holds labels {shown}, but "
            f"the classifier outputs {width} logits (classes 0 to "
            f"{width - 1}); every such point would count as a miss. Pass "
            f"labels in [0, {width}) with the classifier trained on them."
        )
    if not np.isfinite(logits).all():
        raise ValueError(
            f"evaluate_robustness: the classifier outputs NaN or infinite "
            f"logits on batch {index} (NaN or infinite weights, e.g. after "
            "a diverged training); every accuracy would be 0 and mean "
            "nothing. Evaluate a classifier with finite weights and outputs."
        )


def _check_attacks(classifier: keras.Model, attacks: dict) -> None:
    """Refuses training perturbations, and too few classes for an attack."""
    try:
        num_classes = classifier.output_shape[-1]
    except (AttributeError, ValueError):
        num_classes = None  # known once the first batch runs
    for name, attack in attacks.items():
        for inner in _chain(attack):
            attack_base.evaluation_attack(inner, f"The attack {name!r}")
        needed = attack.min_classes
        if num_classes is not None and num_classes < needed:
            raise ValueError(
                f"{name} needs a classifier with at least {needed} classes "
                f"({attack!r}); this one has {num_classes}. Use an attack "
                "that needs fewer (apgd_ce, pgd20) on this classifier."
            )


@dataclasses.dataclass(frozen=True)
class _Plan:
    """What `_prepare` settles before the first batch.

    Attributes:
        attacks: the suite's attacks by report name, in the caller's order.
        order: their names in running order (gradient attacks first in
            sequential mode).
        extra: the masking checks' weaker control, by report name
            ("check/<name>"), or nothing; it runs on every clean point.
        sequential: each suite attack runs on the points still robust.
        options: the evaluation's options.
        seed_names: run name -> the name its random draws derive from.
    """

    attacks: dict
    order: list
    extra: dict
    sequential: bool
    options: options_lib.EvalOptions
    seed_names: dict

    @property
    def runs(self) -> dict:
        """The suite's attacks, then the controls."""
        return {**self.attacks, **self.extra}


def _prepare(
    classifier: keras.Model,
    attacks: Attacks,
    sequential: bool,
    options: options_lib.EvalOptions,
) -> _Plan:
    """Names and checks the attacks, adds the control, prepares them all."""
    attacks = suites.named_attacks(attacks)
    if not attacks:
        raise ValueError("No attacks to evaluate with.")
    _check_attacks(classifier, attacks)
    order = list(attacks)
    if sequential:
        order.sort(key=lambda n: not masking.uses_gradients(attacks[n]))
    gradient = [n for n in order if masking.uses_gradients(attacks[n])]
    extra = {}
    if options.masking_checks and gradient:
        pairs = [] if sequential else masking.strength_pairs(attacks)
        control = None
        if not pairs:
            control = masking.weaker_control(attacks[gradient[0]])
        if control is not None:
            extra[f"check/{control.name}"] = control
    runs = {**attacks, **extra}
    for attack in runs.values():
        # Eagerly, once: a bad setting (a BPDA layer name) fails before
        # any attack runs, and no model is cloned inside a trace.
        attack.prepare(classifier)
    seed_names = {n: _seed_name(n, a) for n, a in runs.items()}
    return _Plan(attacks, order, extra, sequential, options, seed_names)


class _Passes:
    """The compiled functions of one evaluation.

    `outputs` (the clean logits), one function per attack run (its
    predictions at the attack's output) and `gradient_norms` (per point,
    the L1 norms of the margin and cross-entropy input gradients). Attacks
    see the classifier through `wrappers.DefinedGradients`, so a
    classifier without gradients (a hard quantiser) is attacked and
    reported, not crashed on.
    """

    def __init__(self, classifier, dataset, plan: _Plan):
        self.classifier = classifier
        self.view = wrappers.DefinedGradients(classifier)
        x_spec, _ = dataset.element_spec
        x_spec = tf.TensorSpec([None, *x_spec.shape[1:]], x_spec.dtype)
        y_spec = tf.TensorSpec([None], tf.int32)
        self.outputs = tf.function(self._outputs, input_signature=[x_spec])
        self.gradient_norms = tf.function(
            self._gradient_norms, input_signature=[x_spec, y_spec]
        )
        signature = [x_spec, y_spec, tf.TensorSpec([2], tf.int32)]
        self.attacks = {
            name: tf.function(
                self._predictions(attack),
                input_signature=signature,
                jit_compile=plan.options.jit_compile,
            )
            for name, attack in plan.runs.items()
        }

    def _outputs(self, x):
        return tf.cast(self.classifier(x, training=False), tf.float32)

    def _predictions(self, attack):
        def predictions(x, y, seed):
            x_adv = attack(self.view, x, y, seed=seed, training=False)
            logits = self.classifier(x_adv, training=False)
            return tf.argmax(logits, -1, output_type=tf.int32)

        return predictions

    def _gradient_norms(self, x, y):
        with tf.GradientTape(
            persistent=True, watch_accessed_variables=False
        ) as tape:
            tape.watch(x)
            logits = tf.cast(self.view(x), tf.float32)
            margin = tf.reduce_sum(objectives.margin(logits, y))
            ce = tf.reduce_sum(objectives.cross_entropy(logits, y))
        axes = list(range(1, len(x.shape)))
        return tuple(
            tf.reduce_sum(tf.abs(tape.gradient(loss, x)), axis=axes)
            for loss in (margin, ce)
        )


@dataclasses.dataclass
class _Tally:
    """What the batches add up to."""

    clean: list
    broken: dict
    seconds: dict
    predicted: set = dataclasses.field(default_factory=set)
    zero_margin: int = 0
    zero_ce: int = 0
    findings: list = dataclasses.field(default_factory=list)

    @classmethod
    def start(cls, plan: _Plan) -> "_Tally":
        return cls(
            [], {n: [] for n in plan.runs}, dict.fromkeys(plan.runs, 0.0)
        )


def _clean_pass(plan, passes, tally, x, y, index):
    """Checks and classifies a batch; on the first, the output checks."""
    # Eagerly, once per batch: the attacks' own range assertions are
    # dropped when they are compiled with XLA (jit_compile).
    x = attack_base.check_images(x, "evaluate_robustness")
    y = tf.cast(tf.reshape(y, [-1]), tf.int32)
    logits = passes.outputs(x).numpy()
    _check_batch(logits, y.numpy(), index)
    if plan.options.masking_checks and index == 0:
        # Before any attack: a second pass on the same batch.
        second = passes.outputs(x).numpy()
        report = masking.output_checks(logits, second, options=plan.options)
        tally.findings = report["findings"]
    clean = logits.argmax(-1) == y.numpy()
    tally.clean.append(clean)
    tally.predicted.update(np.unique(logits.argmax(-1)).tolist())
    return x, y, clean


def _attack_pass(plan, passes, tally, name, x, y, todo, index):
    """Runs one attack on the points `todo`; per point, broken by it."""
    broken = np.zeros_like(todo)
    if todo.any():
        idx = np.flatnonzero(todo)
        xs, ys = tf.gather(x, idx), tf.gather(y, idx)
        tick = time.perf_counter()
        seed = _attack_seed(plan.options.seed, plan.seed_names[name], index)
        predictions = passes.attacks[name](xs, ys, seed)
        broken[idx] = predictions.numpy() != ys.numpy()
        tally.seconds[name] += time.perf_counter() - tick
    tally.broken[name].append(broken)
    return broken


def _gradient_pass(passes, tally, x, y, clean):
    """Counts the clean-correct points with all-zero input gradients."""
    idx = np.flatnonzero(clean)
    margin, ce = passes.gradient_norms(tf.gather(x, idx), tf.gather(y, idx))
    tally.zero_margin += int(np.sum(margin.numpy() == 0))
    tally.zero_ce += int(np.sum(ce.numpy() == 0))


def _batch(plan, passes, tally, x, y, index):
    """One batch through the clean pass, every attack and the gradients."""
    x, y, clean = _clean_pass(plan, passes, tally, x, y, index)
    survivors = clean.copy()
    for name in [*plan.order, *plan.extra]:
        in_suite = name in plan.attacks
        todo = survivors if plan.sequential and in_suite else clean
        broken = _attack_pass(plan, passes, tally, name, x, y, todo, index)
        if in_suite:
            survivors &= ~broken
    if plan.options.masking_checks and clean.any():
        _gradient_pass(passes, tally, x, y, clean)


def _worst_case(plan, clean, broken):
    """Per attack, the points robust under it, and the suite's survivors.

    In sequential mode "robust under it" means under it and every attack
    before it; the survivors are robust under every attack.
    """
    robust, survivors = {}, clean.copy()
    for name in plan.order:
        survivors &= ~broken[name]
        alone = clean & ~broken[name]
        robust[name] = survivors.copy() if plan.sequential else alone
    return robust, survivors


def _summary(plan, tally, clean, robust, survivors) -> dict:
    """The result's numbers, attacks in the caller's order."""
    accuracy = {n: float(robust[n].mean()) for n in plan.attacks}
    if len(plan.attacks) > 1:
        accuracy["worst_case"] = float(survivors.mean())
    first = next(iter(plan.attacks.values()))
    return {
        "mode": "sequential" if plan.sequential else "independent",
        "epsilon": first.epsilon,
        "norm": first.threat_model.norm,
        "clean_accuracy": float(clean.mean()),
        "robust_accuracy": accuracy,
        "suite_robust_accuracy": float(survivors.mean()),
        "num_examples": int(clean.size),
        "predicted_classes": len(tally.predicted),
        "attacks": {n: repr(a) for n, a in plan.attacks.items()},
        "attack_seconds": {n: tally.seconds[n] for n in plan.attacks},
    }


def _masking(plan, tally, clean, broken) -> dict:
    """The gradient-masking report, with the controls' seconds."""
    report = masking.masking_report(
        plan.attacks,
        clean=clean,
        broken=broken,
        sequential=plan.sequential,
        extra=list(plan.extra),
        zero_gradients=tally.zero_margin,
        zero_ce_gradients=tally.zero_ce,
        findings=tally.findings,
        through_bpda=any(suites.through_bpda(a) for a in plan.runs.values()),
        options=plan.options,
    )
    report["seconds"] = {n: tally.seconds[n] for n in plan.extra}
    return report


def evaluate_robustness(
    classifier: keras.Model,
    dataset: tf.data.Dataset,
    attacks: Attacks,
    *,
    sequential: bool = False,
    options: options_lib.EvalOptions | None = None,
    **overrides,
) -> dict:
    """Clean and robust accuracy of `classifier` on every example of `dataset`.

    Attacks run in inference mode on the examples classified correctly when
    clean (in sequential mode, on those still robust, gradient attacks
    first). Each attack and batch gets a seed derived from the options'
    seed, the attack's name and the batch index, so numbers reproduce.
    Before any attack each attack is checked (an evaluation attack, enough
    classes: `Attack.min_classes`) and prepared (`Attack.prepare`: BPDA
    builds its straight-through copy). With the masking checks on, a
    weaker control attack (`masking.weaker_control`) also runs when no two
    attacks of one family are in an independent suite, reported under
    "check/<name>"; the first batch goes through the classifier twice
    (`masking.output_checks`), and every batch's correct points have their
    input gradients checked for zeros (`masking.masking_report`).

    Args:
        classifier: maps [0, 1] images to logits.
        dataset: batches of `(images, labels)`, in a fixed order.
        attacks: attacks keyed by report name, or a sequence (keyed by each
            attack's `name`).
        sequential: AutoAttack's mode (see the module docstring); the
            per-attack numbers are then the robust accuracy after that
            attack and all before it.
        options: an `EvalOptions` (None: the defaults): the seed, the
            masking checks and their margins, XLA, per-example results.
        **overrides: `EvalOptions` fields (`seed=1, jit_compile=True`),
            replacing those of `options`, as earlier versions took them.

    Returns:
        A dict: `clean_accuracy`, `robust_accuracy` (attack name ->
        accuracy, plus "worst_case" with several attacks),
        `suite_robust_accuracy`, `num_examples`, `predicted_classes`,
        `mode`, `epsilon`, `norm`, `attacks` (name -> description),
        `attack_seconds`, `seconds`, with the masking checks
        `gradient_masking`, and with `per_example` `per_example`:
        `{"clean": [bool], "robust": {name: [bool]}}`, robust meaning
        correct clean and under that attack (in sequential mode: and all
        before it).

    Raises:
        ValueError: no attacks, a training perturbation, a classifier
            with too few classes for an attack, bad options, images
            outside [0, 1], labels without a logit, NaN outputs, or an
            empty dataset; all before the attacks run on the batch.
    """
    start = time.perf_counter()
    options = options_lib.resolve(options, overrides, "evaluate_robustness")
    plan = _prepare(classifier, attacks, sequential, options)
    passes = _Passes(classifier, dataset, plan)
    tally = _Tally.start(plan)
    for index, (x, y) in enumerate(dataset):
        _batch(plan, passes, tally, x, y, index)
    if not tally.clean:
        raise ValueError("The evaluation dataset is empty.")
    clean = np.concatenate(tally.clean)
    broken = {n: np.concatenate(b) for n, b in tally.broken.items()}
    robust, survivors = _worst_case(plan, clean, broken)
    result = _summary(plan, tally, clean, robust, survivors)
    if options.masking_checks:
        result["gradient_masking"] = _masking(plan, tally, clean, broken)
    if options.per_example:
        result["per_example"] = {
            "clean": clean.tolist(),
            "robust": {n: robust[n].tolist() for n in plan.attacks},
        }
    result["seconds"] = time.perf_counter() - start
    return result


def run_suite(
    classifier: keras.Model,
    dataset: tf.data.Dataset,
    suite: suites.Suite,
    *,
    options: options_lib.EvalOptions | None = None,
    **overrides,
) -> dict:
    """`evaluate_robustness` with a suite's attacks and mode, and its name.

    Args:
        classifier: maps [0, 1] images to logits.
        dataset: batches of `(images, labels)`, in a fixed order.
        suite: a `Suite` (from `suites.make_suite`, or built by hand).
        options: an `EvalOptions` (None: the defaults).
        **overrides: `EvalOptions` fields (`seed=1`), replacing those of
            `options`.

    Returns:
        The dict of `evaluate_robustness`, with `suite` (the suite's name)
        first.
    """
    options = options_lib.resolve(options, overrides, "run_suite")
    result = evaluate_robustness(
        classifier,
        dataset,
        suite.attacks,
        sequential=suite.sequential,
        options=options,
    )
    return {"suite": suite.name, **result}


@gin.register
def evaluate_suite(
    classifier: keras.Model,
    dataset: tf.data.Dataset,
    *,
    suite: str | Sequence[str | attack_base.Attack] = "standard",
    epsilon: float,
    norm: str = "linf",
    bpda_layers: Sequence[str] = (),
    masking_layers: Sequence[str] | None = None,
    sequential: bool | None = None,
    options: options_lib.EvalOptions | None = None,
    **overrides,
) -> dict:
    """`make_suite` then `run_suite`.

    This is what `python -m tfadv.evaluate` calls; gin bindings such as
    `evaluate_suite.jit_compile = True` (any `EvalOptions` field) or
    `evaluate_suite.suite = [@eval/ProjectedGradient(), 'square']`
    configure it there.

    Args:
        classifier: maps [0, 1] images to logits.
        dataset: batches of `(images, labels)`, in a fixed order.
        suite: as for `make_suite`.
        epsilon: budget of the named attacks in pixel units.
        norm: their threat model.
        bpda_layers: run gradient attacks through BPDA over these layers.
        masking_layers: layers that mask gradients: the suite then also
            runs PGD through them, PGD through BPDA over them and Square
            (`suites.with_masking_attacks`). None finds them in the
            classifier (layers with `masks_gradients = True`, such as
            `tfadv.layers.SoftQuantization`); () adds nothing.
        sequential: override the suite's mode.
        options: an `EvalOptions` (None: the defaults).
        **overrides: `EvalOptions` fields (`seed=1, jit_compile=True`),
            replacing those of `options`.
    """
    options = options_lib.resolve(options, overrides, "evaluate_suite")
    resolved = suites.make_suite(
        suite,
        epsilon=epsilon,
        norm=norm,
        bpda_layers=bpda_layers,
        sequential=sequential,
    )
    if masking_layers is None:
        masking_layers = layers.masking_layer_names(classifier)
    resolved = suites.with_masking_attacks(
        resolved, masking_layers, epsilon=epsilon, norm=norm
    )
    return run_suite(classifier, dataset, resolved, options=options)


def one_class_lines(result: dict) -> list:
    """Says so when the classifier predicts one class for every example.

    Such a model has not learned (its input gradients are often all zero),
    so the masking checks that follow describe a dead model, not a robust
    one; the summaries print this first.
    """
    if result.get("predicted_classes") != 1:
        return []
    return [
        "  THE MODEL PREDICTS ONE CLASS for every clean example: it has not "
        "learned (train longer or check the learning rate); its robust "
        "accuracy and any masking verdict below say nothing about robustness"
    ]


def format_report(result: dict) -> str:
    """The table `python -m tfadv.evaluate` prints."""
    mode = result["mode"]
    lines = [
        f"suite {result.get('suite', '?')} ({mode}"
        + (
            ": each attack on the points still robust"
            if mode == "sequential"
            else ": each attack on every correctly classified point"
        )
        + f"), {result['norm']} epsilon {result['epsilon']:g}, "
        f"{result['num_examples']} examples",
        f"  {'attack':<22} {'accuracy':>9} {'seconds':>9}",
        f"  {'clean':<22} {result['clean_accuracy']:>9.4f}",
    ]
    for name, value in result["robust_accuracy"].items():
        secs = result["attack_seconds"].get(name)
        secs = f"{secs:>9.1f}" if secs is not None else ""
        lines.append(f"  {name:<22} {value:>9.4f} {secs}")
    lines.append(
        f"  robust accuracy (per-example minimum over the suite): "
        f"{result['suite_robust_accuracy']:.4f}"
    )
    lines += one_class_lines(result)
    report = result.get("gradient_masking")
    if report is None:
        lines.append("  gradient-masking checks: not run")
    elif report["possible"]:
        if report.get("through_bpda"):
            lines.append(
                "  POSSIBLE GRADIENT MASKING by the classifier; attacks "
                "through BPDA, meant to undo it, are in the suite and count "
                "in the per-example minimum. Evidence:"
            )
        else:
            lines.append(
                "  POSSIBLE GRADIENT MASKING: the robust accuracy above may "
                "be far too high. Evidence:"
            )
        lines += [f"    - {m}" for m in report["messages"]]
        if not report.get("through_bpda"):
            lines.append(
                "    Attack through BPDA (--bpda_layers) or EOT, or use a "
                "stronger suite, before calling the model robust."
            )
    else:
        lines.append(
            "  gradient-masking checks: no sign found ("
            + ", ".join(report["checks"])
            + "); they cannot prove robustness."
        )
    if report is not None:
        lines += [f"  warning: {w}" for w in report.get("warnings", ())]
    if result.get("suite") == "quick":
        lines.append(
            "  quick = PGD-20 only, an optimistic upper bound; report numbers "
            "from --suite=standard."
        )
    return "\n".join(lines)
