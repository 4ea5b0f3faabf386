"""Runs an attack suite over a dataset: robust accuracy, per example.

An example counts as robust under an attack only if it is classified
correctly both clean and at the attack's output; the suite's robust
accuracy is the per-example minimum over its attacks ("worst_case"). In
independent mode every attack runs on each example classified correctly
when clean; in sequential mode (AutoAttack's, the `standard` suite) each
attack runs only on the points still robust after the previous ones.
"""

import time
import zlib
from collections.abc import Mapping
from collections.abc import Sequence

import gin
import keras
import numpy as np
import tensorflow as tf
from absl import logging

from tfadv import layers
from tfadv.attacks import apgd
from tfadv.attacks import base as attack_base
from tfadv.attacks import objectives
from tfadv.attacks import wrappers
from tfadv.evaluation import masking
from tfadv.evaluation import suites


def _as_dict(attacks) -> dict:
    if isinstance(attacks, Mapping):
        return dict(attacks)
    named = {}
    for attack in attacks:
        if not isinstance(attack, attack_base.Attack):
            raise TypeError(f"Expected a tfadv attack; got {attack!r}.")
        if attack.name in named:
            raise ValueError(
                f"Two attacks share the name {attack.name!r}; give them "
                "distinct `name=` arguments."
            )
        named[attack.name] = attack
    return named


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


def evaluate_robustness(
    classifier: keras.Model,
    dataset: tf.data.Dataset,
    attacks: Mapping[str, attack_base.Attack] | Sequence[attack_base.Attack],
    *,
    seed: int = 0,
    sequential: bool = False,
    masking_checks: bool = True,
    tolerance: float = masking.MASKING_TOLERANCE,
    zero_gradient_threshold: float = masking.ZERO_GRADIENT_THRESHOLD,
    independent_tolerance: float = masking.INDEPENDENT_GRADIENT_FREE_TOLERANCE,
    jit_compile: bool = False,
    per_example: bool = False,
) -> dict:
    """Clean and robust accuracy of `classifier` on every example of `dataset`.

    Attacks run in inference mode on the examples classified correctly when
    clean (in sequential mode, on those still robust, gradient attacks
    first). Each attack and batch gets a seed derived from `seed`, the
    attack's name and the batch index, so numbers reproduce. Attacks see
    the classifier through `wrappers.DefinedGradients`, so a classifier
    without gradients (a hard quantiser) is attacked and reported, not
    crashed on. With the masking checks on and no two attacks of one
    family in the suite, a weaker control attack
    (`masking.weaker_control`) also runs, reported under "check/<name>".
    Before any attack, the masking checks also run the classifier twice on
    the first batch (`masking.output_checks`: a randomised model, outputs
    that are probabilities) and count the correctly classified points whose
    cross-entropy input gradient is all zero (logged as a warning).

    Args:
        classifier: maps [0, 1] images to logits.
        dataset: batches of `(images, labels)`, in a fixed order.
        attacks: attacks keyed by report name, or a sequence (keyed by each
            attack's `name`).
        seed: base seed.
        sequential: AutoAttack's mode (see the module docstring); the
            per-attack numbers are then the robust accuracy after that
            attack and all before it.
        masking_checks: run the gradient-masking checks
            (`masking.masking_report`).
        tolerance: robust-accuracy change a masking check tolerates.
        zero_gradient_threshold: fraction of zero input gradients tolerated.
        independent_tolerance: the fraction of the examples a gradient-free
            attack may break beyond the gradient attacks in independent
            mode (`masking.gradient_free_threshold`).
        jit_compile: compile the attacks with XLA.
        per_example: also return `per_example`: `{"clean": [bool],
            "robust": {name: [bool]}}`, robust meaning correct clean and
            under that attack (in sequential mode: and all before it).

    Returns:
        A dict: `clean_accuracy`, `robust_accuracy` (attack name ->
        accuracy, plus "worst_case" with several attacks),
        `suite_robust_accuracy`, `num_examples`, `mode`, `epsilon`, `norm`,
        `attacks` (name -> description), `attack_seconds`, `seconds` and
        `gradient_masking`.
    """
    start = time.perf_counter()
    attacks = _as_dict(attacks)
    if not attacks:
        raise ValueError("No attacks to evaluate with.")
    for name, attack in attacks.items():
        for inner in _chain(attack):
            attack_base.evaluation_attack(inner, f"The attack {name!r}")
    order = list(attacks)
    if sequential:
        order.sort(key=lambda n: not masking.uses_gradients(attacks[n]))
    gradient_names = [n for n in order if masking.uses_gradients(attacks[n])]
    extra = {}
    if masking_checks and gradient_names:
        pairs = [] if sequential else masking.strength_pairs(attacks)
        if not pairs:
            check = masking.weaker_control(attacks[gradient_names[0]])
            if check is not None:
                extra[f"check/{check.name}"] = check
    bpda = [
        a
        for attack in [*attacks.values(), *extra.values()]
        for a in _chain(attack)
        if isinstance(a, wrappers.BPDA)
    ]
    for attack in bpda:
        # Built here, eagerly: a bad layer name fails before any attack
        # runs, and no model is cloned inside a trace.
        attack.surrogate(classifier)
    try:
        num_classes = classifier.output_shape[-1]
    except (AttributeError, ValueError):
        num_classes = None  # known once the first batch runs
    for name, attack in attacks.items():
        targeted = any(isinstance(a, apgd.APGDTargeted) for a in _chain(attack))
        if targeted and num_classes is not None and num_classes < 4:
            raise ValueError(
                f"{name} (APGD-T) needs at least 4 classes; the classifier "
                f"has {num_classes}. Use apgd_ce or apgd_dlr instead."
            )
    view = wrappers.DefinedGradients(classifier)
    x_spec, _ = dataset.element_spec
    x_spec = tf.TensorSpec([None, *x_spec.shape[1:]], x_spec.dtype)
    y_spec = tf.TensorSpec([None], tf.int32)

    @tf.function(input_signature=[x_spec])
    def outputs(x):
        return tf.cast(classifier(x, training=False), tf.float32)

    def compile_attack(attack):
        def attack_fn(x, y, batch_seed):
            x_adv = attack(view, x, y, seed=batch_seed, training=False)
            logits = classifier(x_adv, training=False)
            return tf.argmax(logits, -1, output_type=tf.int32)

        signature = [x_spec, y_spec, tf.TensorSpec([2], tf.int32)]
        return tf.function(
            attack_fn, input_signature=signature, jit_compile=jit_compile
        )

    @tf.function(input_signature=[x_spec, y_spec])
    def zero_gradient(x, y):
        """Per point, the L1 norms of the margin and CE input gradients."""
        with tf.GradientTape(
            persistent=True, watch_accessed_variables=False
        ) as tape:
            tape.watch(x)
            logits = tf.cast(view(x), tf.float32)
            margin = tf.reduce_sum(objectives.margin(logits, y))
            ce = tf.reduce_sum(objectives.cross_entropy(logits, y))
        axes = list(range(1, len(x.shape)))
        return tuple(
            tf.reduce_sum(tf.abs(tape.gradient(loss, x)), axis=axes)
            for loss in (margin, ce)
        )

    fns = {n: compile_attack(a) for n, a in {**attacks, **extra}.items()}
    seed_names = {n: _seed_name(n, a) for n, a in {**attacks, **extra}.items()}
    seconds = dict.fromkeys(fns, 0.0)
    clean_all, broken_all, zero_grads = [], {n: [] for n in fns}, 0
    predicted = set()
    zero_ce_grads, output_report = 0, None
    for index, (x, y) in enumerate(dataset):
        # Eagerly, once per batch: the attacks' own range assertions are
        # dropped when they are compiled with XLA (jit_compile).
        x = attack_base.check_images(x, "evaluate_robustness")
        y = tf.cast(tf.reshape(y, [-1]), tf.int32)
        logits = outputs(x).numpy()
        _check_batch(logits, y.numpy(), index)
        if masking_checks and index == 0:
            # Before any attack: a second pass on the same batch.
            output_report = masking.output_checks(logits, outputs(x).numpy())
            for message in output_report["messages"]:
                logging.warning("Evaluation check: %s.", message)
        clean = logits.argmax(-1) == y.numpy()
        clean_all.append(clean)
        predicted.update(np.unique(logits.argmax(-1)).tolist())
        survivors = clean.copy()
        for name in [*order, *extra]:
            todo = survivors if sequential and name in attacks else clean
            broken = np.zeros_like(clean)
            if todo.any():
                idx = np.flatnonzero(todo)
                xs, ys = tf.gather(x, idx), tf.gather(y, idx)
                tick = time.perf_counter()
                batch_seed = _attack_seed(seed, seed_names[name], index)
                pred = fns[name](xs, ys, batch_seed)
                broken[idx] = pred.numpy() != ys.numpy()
                seconds[name] += time.perf_counter() - tick
            broken_all[name].append(broken)
            if name in attacks:
                survivors &= ~broken
        if masking_checks and clean.any():
            idx = np.flatnonzero(clean)
            grads, ce_grads = zero_gradient(
                tf.gather(x, idx), tf.gather(y, idx)
            )
            zero_grads += int(np.sum(grads.numpy() == 0))
            zero_ce_grads += int(np.sum(ce_grads.numpy() == 0))
    if not clean_all:
        raise ValueError("The evaluation dataset is empty.")
    clean = np.concatenate(clean_all)
    broken = {n: np.concatenate(b) for n, b in broken_all.items()}
    robust, survivors = {}, clean.copy()
    for name in order:
        survivors &= ~broken[name]
        robust[name] = survivors.copy() if sequential else clean & ~broken[name]
    accuracy = {n: float(robust[n].mean()) for n in order}
    accuracy = {n: accuracy[n] for n in attacks}  # the caller's order
    if len(attacks) > 1:
        accuracy["worst_case"] = float(survivors.mean())
    first = next(iter(attacks.values()))
    result = {
        "mode": "sequential" if sequential else "independent",
        "epsilon": first.epsilon,
        "norm": first.threat_model.norm,
        "clean_accuracy": float(clean.mean()),
        "robust_accuracy": accuracy,
        "suite_robust_accuracy": float(survivors.mean()),
        "num_examples": int(clean.size),
        "predicted_classes": len(predicted),
        "attacks": {n: repr(a) for n, a in attacks.items()},
        "attack_seconds": {n: seconds[n] for n in attacks},
    }
    if masking_checks:
        result["gradient_masking"] = masking.masking_report(
            attacks,
            clean=clean,
            broken=broken,
            accuracy=accuracy,
            sequential=sequential,
            extra=extra,
            zero_gradients=zero_grads,
            through_bpda=bool(bpda),
            tolerance=tolerance,
            zero_gradient_threshold=zero_gradient_threshold,
            independent_tolerance=independent_tolerance,
            outputs=output_report,
            zero_ce_gradients=zero_ce_grads,
        )
        result["gradient_masking"]["seconds"] = {n: seconds[n] for n in extra}
        for warning in result["gradient_masking"]["warnings"]:
            logging.warning("Evaluation check: %s.", warning)
    if per_example:
        result["per_example"] = {
            "clean": clean.tolist(),
            "robust": {n: robust[n].tolist() for n in attacks},
        }
    result["seconds"] = time.perf_counter() - start
    return result


def run_suite(
    classifier: keras.Model,
    dataset: tf.data.Dataset,
    suite: suites.Suite,
    *,
    seed: int = 0,
    masking_checks: bool = True,
    tolerance: float = masking.MASKING_TOLERANCE,
    zero_gradient_threshold: float = masking.ZERO_GRADIENT_THRESHOLD,
    independent_tolerance: float = masking.INDEPENDENT_GRADIENT_FREE_TOLERANCE,
    jit_compile: bool = False,
    per_example: bool = False,
) -> dict:
    """`evaluate_robustness` with a suite's attacks and mode, and its name.

    Args:
        classifier: maps [0, 1] images to logits.
        dataset: batches of `(images, labels)`, in a fixed order.
        suite: a `Suite` (from `suites.make_suite`, or built by hand).
        seed: base seed of the attacks.
        masking_checks: run the gradient-masking checks.
        tolerance: see `evaluate_robustness`.
        zero_gradient_threshold: see `evaluate_robustness`.
        independent_tolerance: see `evaluate_robustness`.
        jit_compile: compile the attacks with XLA.
        per_example: also return per-example results.

    Returns:
        The dict of `evaluate_robustness`, with `suite` (the suite's name)
        first.
    """
    result = evaluate_robustness(
        classifier,
        dataset,
        suite.attacks,
        seed=seed,
        sequential=suite.sequential,
        masking_checks=masking_checks,
        tolerance=tolerance,
        zero_gradient_threshold=zero_gradient_threshold,
        independent_tolerance=independent_tolerance,
        jit_compile=jit_compile,
        per_example=per_example,
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
    seed: int = 0,
    masking_checks: bool = True,
    tolerance: float = masking.MASKING_TOLERANCE,
    zero_gradient_threshold: float = masking.ZERO_GRADIENT_THRESHOLD,
    independent_tolerance: float = masking.INDEPENDENT_GRADIENT_FREE_TOLERANCE,
    jit_compile: bool = False,
    per_example: bool = False,
) -> dict:
    """`make_suite` then `run_suite`.

    This is what `python -m tfadv.evaluate` calls; gin bindings such as
    `evaluate_suite.jit_compile = True` or `evaluate_suite.suite =
    [@eval/ProjectedGradient(), 'square']` configure it there.

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
        seed: base seed of the attacks.
        masking_checks: run the gradient-masking checks.
        tolerance: see `evaluate_robustness`.
        zero_gradient_threshold: see `evaluate_robustness`.
        independent_tolerance: see `evaluate_robustness`.
        jit_compile: compile the attacks with XLA.
        per_example: also return per-example results.
    """
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
    return run_suite(
        classifier,
        dataset,
        resolved,
        seed=seed,
        masking_checks=masking_checks,
        tolerance=tolerance,
        zero_gradient_threshold=zero_gradient_threshold,
        independent_tolerance=independent_tolerance,
        jit_compile=jit_compile,
        per_example=per_example,
    )


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
