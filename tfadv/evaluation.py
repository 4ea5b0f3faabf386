"""Robust accuracy under an attack suite, with gradient-masking checks.

Suites (names resolved by `make_suite`):

- `quick`: PGD-20 (step epsilon/10, random start; ALGORITHMS.md §0.5). Each
  attack of a quick or explicit suite runs on every example that is
  classified correctly when clean ("independent" mode).
- `standard`: APGD-CE, APGD-T and Square, AutoAttack-style (§7.3): each
  attack runs only on the points still robust after the previous ones
  ("sequential" mode), and the number after the last one is the result.
  FAB-T is omitted (not implemented here), so the number can be slightly
  higher than AutoAttack's.
- an explicit comma-separated list of attack names, e.g.
  `pgd20,pgd50x10,cw50,apgd_ce,apgd_t,square` (see `make_attack`).

An example counts as robust under an attack only if it is classified
correctly both clean and at the attack's output; the suite's robust
accuracy is the per-example minimum over its attacks ("worst_case").
"""

import dataclasses
import re
import time
import zlib
from collections.abc import Mapping
from collections.abc import Sequence

import gin
import keras
import numpy as np
import tensorflow as tf

from tfadv.attacks import apgd
from tfadv.attacks import base as attack_base
from tfadv.attacks import objectives
from tfadv.attacks import pgd
from tfadv.attacks import square
from tfadv.attacks import wrappers

SUITES = {
    "quick": ("pgd20",),
    "standard": ("apgd_ce", "apgd_t", "square"),
}
SEQUENTIAL_SUITES = frozenset({"standard"})
# A check flags masking when it moves robust accuracy by more than this
# fraction of the examples (AutoAttack's `check_square_sr` uses 0.2 %) and
# by more than one example (one point of a small test set is noise).
MASKING_TOLERANCE = 0.002
# ... or when more than this fraction of correctly classified points has an
# all-zero input gradient.
ZERO_GRADIENT_THRESHOLD = 0.05

ATTACK_NAMES_HELP = (
    "fgsm; pgd<k>[x<r>] (cross-entropy PGD, k steps, r restarts, e.g. "
    "pgd20, pgd50x10); cw<k>[x<r>] (margin PGD, e.g. cw50); apgd_ce[<k>]"
    "[x<r>]; apgd_dlr[<k>][x<r>]; apgd_t[<k>] (9 targets); square[<q>] "
    "(q queries, default 5000)"
)

_PATTERNS = {
    "pgd": re.compile(r"(pgd|cw)(\d+)(?:x(\d+))?"),
    "apgd": re.compile(r"apgd_(ce|dlr)(\d+)?(?:x(\d+))?"),
    "apgd_t": re.compile(r"apgd_t(\d+)?"),
    "square": re.compile(r"square(\d+)?"),
}


def pgd_step_size(epsilon: float, num_steps: int) -> float:
    """Step of the named PGD attacks.

    epsilon/10 from 20 steps on (ALGORITHMS.md §0.5: PGD-20 step 0.01 at
    epsilon 0.1), else 2.5 epsilon / k so short attacks still cross the ball.
    """
    return epsilon / 10 if num_steps >= 20 else 2.5 * epsilon / num_steps


def make_attack(
    name: str, *, epsilon: float, norm: str = "linf"
) -> attack_base.Attack:
    """Builds the attack a name stands for (see `ATTACK_NAMES_HELP`).

    Raises:
        ValueError: an unknown name or a count of 0.
    """
    name = name.strip()
    if name == "fgsm":
        return pgd.ProjectedGradient(
            epsilon=epsilon,
            step_size=epsilon,
            num_steps=1,
            norm=norm,
            random_start=False,
            name=name,
        )
    match = _PATTERNS["pgd"].fullmatch(name)
    if match and int(match[2]) > 0:
        steps, restarts = int(match[2]), int(match[3] or 1)
        return pgd.ProjectedGradient(
            epsilon=epsilon,
            step_size=pgd_step_size(epsilon, steps),
            num_steps=steps,
            norm=norm,
            objective="cross_entropy" if match[1] == "pgd" else "margin",
            restarts=restarts,
            name=name,
        )
    match = _PATTERNS["apgd"].fullmatch(name)
    if match:
        return apgd.APGD(
            epsilon=epsilon,
            num_steps=int(match[2] or 100),
            norm=norm,
            objective="cross_entropy" if match[1] == "ce" else "dlr",
            restarts=int(match[3] or 1),
            name=name,
        )
    match = _PATTERNS["apgd_t"].fullmatch(name)
    if match:
        return apgd.APGDTargeted(
            epsilon=epsilon,
            num_steps=int(match[1] or 100),
            norm=norm,
            name=name,
        )
    match = _PATTERNS["square"].fullmatch(name)
    if match:
        return square.Square(
            epsilon=epsilon,
            num_queries=int(match[1] or 5000),
            norm=norm,
            name=name,
        )
    raise ValueError(
        f"Unknown attack name {name!r}. Accepted: {ATTACK_NAMES_HELP}; or a "
        f"suite: {', '.join(SUITES)}."
    )


@dataclasses.dataclass(frozen=True)
class Suite:
    """Named attacks and how to run them.

    Attributes:
        name: "quick", "standard", or the comma-joined attack names.
        attacks: attack name -> attack, in running order.
        sequential: run each attack only on the points still robust.
    """

    name: str
    attacks: dict
    sequential: bool


def make_suite(
    suite: str | Sequence[str | attack_base.Attack],
    *,
    epsilon: float,
    norm: str = "linf",
    bpda_layers: Sequence[str] = (),
    sequential: bool | None = None,
) -> Suite:
    """Resolves a suite name, a comma-separated list or a list of attacks.

    Args:
        suite: "quick", "standard", "pgd20,cw50,...", or a sequence of
            names and `Attack` objects.
        epsilon: the budget of the named attacks, in pixel units.
        norm: their threat model.
        bpda_layers: when given, every gradient attack runs through BPDA
            over these layers (identity backward pass).
        sequential: override the suite's mode (None: sequential for
            `standard` only).

    Raises:
        ValueError: an unknown suite or attack name, or a repeated name.
    """
    if isinstance(suite, str):
        label = suite.strip()
        items = SUITES.get(label) or [s for s in label.split(",") if s.strip()]
        if not items:
            raise ValueError(f"The suite is empty ({suite!r}).")
    else:
        items = list(suite)
        label = ",".join(getattr(a, "name", str(a)) for a in items)
    if sequential is None:
        sequential = label in SEQUENTIAL_SUITES
    attacks = {}
    for item in items:
        attack = item
        if isinstance(item, str):
            attack = make_attack(item, epsilon=epsilon, norm=norm)
        elif not isinstance(item, attack_base.Attack):
            raise TypeError(f"Expected an attack name or Attack; got {item!r}")
        if bpda_layers and getattr(attack, "uses_gradients", True):
            attack = wrappers.BPDA(
                attack, layers=tuple(bpda_layers), name=attack.name
            )
        if attack.name in attacks:
            raise ValueError(
                f"The suite names {attack.name!r} twice; give attacks "
                "distinct names."
            )
        attacks[attack.name] = attack
    return Suite(label, attacks, bool(sequential))


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


def _uses_gradients(attack) -> bool:
    return getattr(attack, "uses_gradients", True)


def _family(attack):
    """(family, steps, restarts) for attacks that differ only in strength."""
    if type(attack) is pgd.ProjectedGradient:
        key = ("pgd", attack.objective, repr(attack.threat_model))
        return key, attack.num_steps, attack.restarts
    if type(attack) is apgd.APGD:
        key = ("apgd", attack.objective, repr(attack.threat_model))
        return key, attack.num_steps, attack.restarts
    return None


def _weaker_check_attack(reference):
    """A cheap attack clearly weaker than `reference`, in the same wrappers.

    PGD with a quarter of the steps (at most 5 for APGD).
    """
    inner, wraps = reference, []
    while isinstance(inner, (wrappers.BPDA, wrappers.EOT)):
        wraps.append(inner)
        inner = inner.attack
    steps = getattr(inner, "num_steps", 0)
    if not isinstance(inner, (pgd.ProjectedGradient, apgd.APGD)) or steps < 4:
        return None
    objective = "cross_entropy"
    if isinstance(inner, pgd.ProjectedGradient):
        objective = inner.objective
    else:
        steps = min(20, steps)
    steps //= 4
    tm = inner.threat_model
    check = pgd.ProjectedGradient(
        epsilon=tm.epsilon,
        step_size=pgd_step_size(tm.epsilon, steps),
        num_steps=steps,
        norm=tm.norm,
        objective=objective,
        name=f"pgd{steps}",
    )
    for w in reversed(wraps):
        if isinstance(w, wrappers.BPDA):
            check = wrappers.BPDA(
                check, layers=w.layers, approximation=w.approximation
            )
        else:
            check = wrappers.EOT(
                check, num_samples=w.num_samples, transform=w.transform
            )
    return check


def _attack_seed(seed: int, name: str, index: int) -> tf.Tensor:
    """Per attack and batch, so adding an attack changes no other number."""
    first = zlib.crc32(f"{seed}/{name}".encode()) & 0x7FFFFFFF
    return tf.constant([first, index], tf.int32)


def evaluate_robustness(
    classifier: keras.Model,
    dataset: tf.data.Dataset,
    attacks: Mapping[str, attack_base.Attack] | Sequence[attack_base.Attack],
    *,
    seed: int = 0,
    sequential: bool = False,
    masking_checks: bool = True,
    tolerance: float = MASKING_TOLERANCE,
    zero_gradient_threshold: float = ZERO_GRADIENT_THRESHOLD,
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
    crashed on.

    Args:
        classifier: maps [0, 1] images to logits.
        dataset: batches of `(images, labels)`, in a fixed order.
        attacks: attacks keyed by report name, or a sequence (keyed by each
            attack's `name`).
        seed: base seed.
        sequential: AutoAttack's mode (see the module docstring); the
            per-attack numbers are then the robust accuracy after that
            attack and all before it.
        masking_checks: run the gradient-masking checks (`masking_report`).
        tolerance: robust-accuracy change a masking check tolerates.
        zero_gradient_threshold: fraction of zero input gradients tolerated.
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
    order = list(attacks)
    if sequential:
        order.sort(key=lambda n: not _uses_gradients(attacks[n]))
    gradient_names = [n for n in order if _uses_gradients(attacks[n])]
    extra = {}
    if masking_checks and gradient_names:
        strength_pairs = [] if sequential else _strength_pairs(attacks)
        if not strength_pairs:
            check = _weaker_check_attack(attacks[gradient_names[0]])
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
    def predict(x):
        logits = classifier(x, training=False)
        return tf.argmax(logits, -1, output_type=tf.int32)

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
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(x)
            total = tf.reduce_sum(objectives.margin(view(x), y))
        grad = tape.gradient(total, x)
        return tf.reduce_sum(tf.abs(grad), axis=list(range(1, len(x.shape))))

    fns = {n: compile_attack(a) for n, a in {**attacks, **extra}.items()}
    seconds = dict.fromkeys(fns, 0.0)
    clean_all, broken_all, zero_grads = [], {n: [] for n in fns}, 0
    for index, (x, y) in enumerate(dataset):
        y = tf.cast(tf.reshape(y, [-1]), tf.int32)
        clean = predict(x).numpy() == y.numpy()
        clean_all.append(clean)
        survivors = clean.copy()
        for name in [*order, *extra]:
            todo = survivors if sequential and name in attacks else clean
            broken = np.zeros_like(clean)
            if todo.any():
                idx = np.flatnonzero(todo)
                xs, ys = tf.gather(x, idx), tf.gather(y, idx)
                tick = time.perf_counter()
                pred = fns[name](xs, ys, _attack_seed(seed, name, index))
                broken[idx] = pred.numpy() != ys.numpy()
                seconds[name] += time.perf_counter() - tick
            broken_all[name].append(broken)
            if name in attacks:
                survivors &= ~broken
        if masking_checks and clean.any():
            idx = np.flatnonzero(clean)
            grads = zero_gradient(tf.gather(x, idx), tf.gather(y, idx))
            zero_grads += int(np.sum(grads.numpy() == 0))
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
        "attacks": {n: repr(a) for n, a in attacks.items()},
        "attack_seconds": {n: seconds[n] for n in attacks},
    }
    if masking_checks:
        result["gradient_masking"] = masking_report(
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
        )
        result["gradient_masking"]["seconds"] = {n: seconds[n] for n in extra}
    if per_example:
        result["per_example"] = {
            "clean": clean.tolist(),
            "robust": {n: robust[n].tolist() for n in attacks},
        }
    result["seconds"] = time.perf_counter() - start
    return result


def _strength_pairs(attacks):
    """(weaker, stronger) name pairs of one family, e.g. pgd20, pgd50x10."""
    pairs = []
    for a, attack_a in attacks.items():
        for b, attack_b in attacks.items():
            fa, fb = _family(attack_a), _family(attack_b)
            if a == b or fa is None or fb is None or fa[0] != fb[0]:
                continue
            if fa[1:] != fb[1:] and fa[1] <= fb[1] and fa[2] <= fb[2]:
                pairs.append((a, b))
    return pairs


def _beyond(count: int, n: int, tolerance: float) -> bool:
    """More than one example and more than `tolerance` of `n`."""
    return count > max(1, tolerance * n)


def masking_report(
    attacks,
    *,
    clean,
    broken,
    accuracy,
    sequential,
    extra,
    zero_gradients,
    tolerance,
    zero_gradient_threshold,
    through_bpda=False,
) -> dict:
    """The gradient-masking checks, from per-example results.

    1. A gradient-free attack (Square) breaks points that every gradient
       attack left robust: more than `tolerance` of the examples (and more
       than one).
    2. Robust accuracy rises with attack strength by more than
       `tolerance` (and more than one example): between attacks of one
       family in the suite (e.g. pgd20 and pgd50x10, or apgd_ce and
       apgd_ce200), or, when the suite has no such pair, against a cheap
       extra weaker PGD run (e.g. pgd5 for pgd20).
    3. More than `zero_gradient_threshold` of the correctly classified
       points have an all-zero input gradient of the margin loss.

    `through_bpda` notes that the gradient attacks ran through BPDA (the
    remedy): check 3 then still describes the classifier itself.

    Returns:
        `{"possible": bool, "messages": [...], "checks": {...},
        "through_bpda": bool}`.
    """
    n = clean.size
    checks, messages = {}, []
    grad_names = [a for a in attacks if _uses_gradients(attacks[a])]
    free_names = [a for a in attacks if not _uses_gradients(attacks[a])]
    if grad_names and free_names:
        by_free = np.any([broken[a] for a in free_names], axis=0)
        by_grad = np.any([broken[a] for a in grad_names], axis=0)
        only_free = clean & by_free & ~by_grad
        fraction = float(only_free.mean())
        flagged = _beyond(int(only_free.sum()), n, tolerance)
        checks["gradient_free_beats_gradient"] = {
            "flagged": flagged,
            "fraction": fraction,
            "count": int(only_free.sum()),
            "tolerance": tolerance,
        }
        if flagged:
            messages.append(
                f"{'/'.join(free_names)} (gradient-free) broke "
                f"{int(only_free.sum())} of {n} points that the gradient "
                f"attacks ({', '.join(grad_names)}) left robust"
            )
    pairs = [] if sequential else _strength_pairs(attacks)
    comparisons = [(a, b, accuracy[a], accuracy[b]) for a, b in pairs]
    for name in extra:
        weak = float((clean & ~broken[name]).mean())
        comparisons.append((name, grad_names[0], weak, accuracy[grad_names[0]]))
    if comparisons:
        rising = [
            c
            for c in comparisons
            if _beyond(round((c[3] - c[2]) * n), n, tolerance)
        ]
        checks["accuracy_rises_with_strength"] = {
            "flagged": bool(rising),
            "comparisons": [
                {
                    "weaker": a,
                    "stronger": b,
                    "weaker_accuracy": wa,
                    "stronger_accuracy": sa,
                }
                for a, b, wa, sa in comparisons
            ],
            "tolerance": tolerance,
        }
        for a, b, wa, sa in rising:
            messages.append(
                f"robust accuracy rises with attack strength: {b} "
                f"{sa:.4f} > {a} {wa:.4f}"
            )
    correct = int(clean.sum())
    fraction = zero_gradients / correct if correct else 0.0
    flagged = fraction > zero_gradient_threshold
    checks["zero_gradients"] = {
        "flagged": flagged,
        "fraction": fraction,
        "count": zero_gradients,
        "threshold": zero_gradient_threshold,
    }
    if flagged:
        messages.append(
            f"{zero_gradients} of {correct} correctly classified points "
            f"({fraction:.1%}) have an all-zero input gradient"
        )
    return {
        "possible": bool(messages),
        "messages": messages,
        "checks": checks,
        "through_bpda": through_bpda,
    }


@gin.register
def evaluate_suite(
    classifier: keras.Model,
    dataset: tf.data.Dataset,
    *,
    suite: str | Sequence[str | attack_base.Attack] = "standard",
    epsilon: float,
    norm: str = "linf",
    bpda_layers: Sequence[str] = (),
    sequential: bool | None = None,
    seed: int = 0,
    masking_checks: bool = True,
    tolerance: float = MASKING_TOLERANCE,
    zero_gradient_threshold: float = ZERO_GRADIENT_THRESHOLD,
    jit_compile: bool = False,
    per_example: bool = False,
) -> dict:
    """`make_suite` then `evaluate_robustness`; adds the suite's name.

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
        sequential: override the suite's mode.
        seed: base seed of the attacks.
        masking_checks: run the gradient-masking checks.
        tolerance: see `evaluate_robustness`.
        zero_gradient_threshold: see `evaluate_robustness`.
        jit_compile: compile the attacks with XLA.
        per_example: also return per-example results.
    """
    resolved = make_suite(
        suite,
        epsilon=epsilon,
        norm=norm,
        bpda_layers=bpda_layers,
        sequential=sequential,
    )
    result = evaluate_robustness(
        classifier,
        dataset,
        resolved.attacks,
        seed=seed,
        sequential=resolved.sequential,
        masking_checks=masking_checks,
        tolerance=tolerance,
        zero_gradient_threshold=zero_gradient_threshold,
        jit_compile=jit_compile,
        per_example=per_example,
    )
    return {"suite": resolved.name, **result}


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
    masking = result.get("gradient_masking")
    if masking is None:
        lines.append("  gradient-masking checks: not run")
    elif masking["possible"]:
        if masking.get("through_bpda"):
            lines.append(
                "  POSSIBLE GRADIENT MASKING by the classifier; the gradient "
                "attacks ran through BPDA, meant to undo it. Evidence:"
            )
        else:
            lines.append(
                "  POSSIBLE GRADIENT MASKING: the robust accuracy above may "
                "be far too high. Evidence:"
            )
        lines += [f"    - {m}" for m in masking["messages"]]
        if not masking.get("through_bpda"):
            lines.append(
                "    Attack through BPDA (--bpda_layers) or EOT, or use a "
                "stronger suite, before calling the model robust."
            )
    else:
        lines.append(
            "  gradient-masking checks: no sign found ("
            + ", ".join(masking["checks"])
            + "); they cannot prove robustness."
        )
    if result.get("suite") == "quick":
        lines.append(
            "  quick = PGD-20 only, an optimistic upper bound; report numbers "
            "from --suite=standard."
        )
    return "\n".join(lines)
