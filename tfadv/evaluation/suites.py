"""The attack-name grammar and the suites of the evaluation.

Suites (names resolved by `make_suite`):

- `quick`: PGD-20 (step epsilon/10, random start; docs/algorithms.md
  §0.5). Each attack of a quick or explicit suite runs on every example
  that is classified correctly when clean ("independent" mode).
- `standard`: AutoAttack's standard version (docs/algorithms.md §7.3):
  APGD-CE, APGD-T, FAB-T and Square (5000 queries, the schedule of p not
  rescaled, as AutoAttack builds it), in that order, each in the given
  norm (L-inf or L2). Each attack runs only on the points still robust
  after the previous ones ("sequential" mode), and the number after the
  last one is the result.
- an explicit comma-separated list of attack names, e.g.
  `pgd20,pgd50x10,cw50,apgd_ce,apgd_t,fab_t,square` (see `make_attack`;
  the name `square` keeps Square's class default, a rescaled schedule).

A model with layers that mask gradients (a soft quantiser) gets PGD through
the true layers, PGD through BPDA and Square added to any suite
(`with_masking_attacks`).

This module is the only part of `tfadv.evaluation` that names concrete
attack classes: the runner and the masking checks go through the
`tfadv.attacks.Attack` interface, and ask `weaker_control` for the
grammar's weaker attack.
"""

import dataclasses
import re
from collections.abc import Mapping
from collections.abc import Sequence

from tfadv.attacks import apgd
from tfadv.attacks import base as attack_base
from tfadv.attacks import fab
from tfadv.attacks import pgd
from tfadv.attacks import square
from tfadv.attacks import wrappers

SUITES = {
    "quick": ("pgd20",),
    "standard": ("apgd_ce", "apgd_t", "fab_t", "square"),
}
SEQUENTIAL_SUITES = frozenset({"standard"})
# Settings a suite gives its attacks beyond what their names say:
# AutoAttack builds its Square with `resc_schedule=False`.
SUITE_SETTINGS = {"standard": {"square": {"rescale_schedule": False}}}

ATTACK_NAMES_HELP = (
    "fgsm; pgd<k>[x<r>] (cross-entropy PGD, k steps, r restarts, e.g. "
    "pgd20, pgd50x10); cw<k>[x<r>] (margin PGD, e.g. cw50); apgd_ce[<k>]"
    "[x<r>]; apgd_dlr[<k>][x<r>]; apgd_t[<k>] (9 targets); fab_t[<k>] "
    "(FAB-T, 9 targets, k steps each); square[<q>] (q queries, default "
    "5000)"
)

_PATTERNS = {
    "pgd": re.compile(r"(pgd|cw)(\d+)(?:x(\d+))?"),
    "apgd": re.compile(r"apgd_(ce|dlr)(\d+)?(?:x(\d+))?"),
    "apgd_t": re.compile(r"apgd_t(\d+)?"),
    "fab_t": re.compile(r"fab_t(\d+)?"),
    "square": re.compile(r"square(\d+)?"),
}


def pgd_step_size(epsilon: float, num_steps: int) -> float:
    """Step of the named PGD attacks.

    epsilon/10 from 20 steps on (docs/algorithms.md §0.5: PGD-20 step 0.01
    at epsilon 0.1), else 2.5 epsilon / k so short attacks still cross the
    ball.
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
            start="none",
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
    match = _PATTERNS["fab_t"].fullmatch(name)
    if match:
        return fab.FABTargeted(
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


# What a model with layers that mask gradients is always attacked with,
# besides its suite: a gradient attack through the true layers, the same
# through BPDA over them, and a gradient-free attack.
MASKING_GRADIENT_ATTACK = "pgd20"
MASKING_GRADIENT_FREE_ATTACK = "square"


def named_attacks(attacks: Mapping | Sequence) -> dict:
    """Attacks keyed by report name, from a mapping or a sequence.

    A sequence is keyed by each attack's `name`.

    Raises:
        TypeError: an attack is not a tfadv attack (`Attack` declares
            what the evaluation asks of it).
        ValueError: two attacks of the sequence share a name.
    """
    items = attacks.values() if isinstance(attacks, Mapping) else attacks
    for attack in items:
        if not isinstance(attack, attack_base.Attack):
            raise TypeError(f"Expected a tfadv attack; got {attack!r}.")
    if isinstance(attacks, Mapping):
        return dict(attacks)
    named = {}
    for attack in attacks:
        if attack.name in named:
            raise ValueError(
                f"Two attacks share the name {attack.name!r}; give them "
                "distinct `name=` arguments."
            )
        named[attack.name] = attack
    return named


# What the masking check for a randomised classifier advises
# (`checks.randomized_model`).
RANDOMIZED_MODEL_REMEDY = (
    "attack it through tfadv.attacks.EOT, which averages each gradient over "
    "random draws (e.g. EOT(pgd, num_samples=20); in gin, "
    "evaluate_suite.suite = [@EOT()] with EOT.attack bound)"
)


def through_bpda(attack) -> bool:
    """Whether `attack` or an attack it wraps replaces the backward pass."""
    while attack is not None:
        if getattr(attack, "replaces_backward_pass", False):
            return True
        attack = getattr(attack, "attack", None)
    return False


def with_masking_attacks(
    suite: "Suite",
    masking_layers: Sequence[str],
    *,
    epsilon: float,
    norm: str = "linf",
) -> "Suite":
    """The suite, plus what a model with gradient-masking layers needs.

    With `masking_layers` (layer names, e.g. from
    `tfadv.layers.masking_layer_names`), the suite gets whichever of these
    it lacks (docs/algorithms.md §4.4):

    - a gradient attack through the true layers (`pgd20`), unless one of
      its gradient attacks is not through BPDA;
    - the same attack through BPDA over those layers (`bpda_pgd20`), unless
      one of its attacks is through BPDA already;
    - a gradient-free attack (`square`, 5000 queries), unless it has one.

    The suite keeps its mode and name (with "+masking" appended), so its
    robust accuracy is the per-example minimum over all of them. Without
    masking layers the suite is returned unchanged.

    Raises:
        ValueError: a layer name is not a string.
    """
    layers = tuple(masking_layers)
    if not layers:
        return suite
    if not all(isinstance(name, str) for name in layers):
        raise ValueError(f"masking_layers must be layer names; got {layers!r}")
    attacks = dict(suite.attacks)

    def add(attack):
        name = attack.name
        while name in attacks:
            name = f"{name}_"
        attacks[name] = (
            attack if name == attack.name else attack.replace(name=name)
        )

    gradient = [a for a in attacks.values() if a.uses_gradients]
    if not any(not through_bpda(a) for a in gradient):
        add(make_attack(MASKING_GRADIENT_ATTACK, epsilon=epsilon, norm=norm))
    if not any(through_bpda(a) for a in attacks.values()):
        pgd20 = make_attack(MASKING_GRADIENT_ATTACK, epsilon=epsilon, norm=norm)
        add(wrappers.BPDA(pgd20, layers=layers))
    if all(a.uses_gradients for a in attacks.values()):
        add(
            make_attack(
                MASKING_GRADIENT_FREE_ATTACK, epsilon=epsilon, norm=norm
            )
        )
    return Suite(f"{suite.name}+masking", attacks, suite.sequential)


def weaker_control(attack: attack_base.Attack) -> attack_base.Attack | None:
    """A PGD of the grammar clearly weaker than a bare PGD or APGD attack.

    The control of the masking check "accuracy rises with strength": a
    cross-entropy PGD (a PGD reference keeps its objective) with a quarter
    of the reference's steps, counting at most 20 steps of an APGD (so at
    most pgd5), named "pgd<k>", with the grammar's step size.

    Args:
        attack: the reference, without wrappers (the masking check peels
            BPDA and EOT off and puts them back on the control).

    Returns:
        The control, or None when `attack` is no PGD or APGD attack or has
        fewer than 4 steps.
    """
    steps = getattr(attack, "num_steps", 0)
    kinds = (pgd.ProjectedGradient, apgd.APGD)
    if not isinstance(attack, kinds) or steps < 4:
        return None
    objective = "cross_entropy"
    if isinstance(attack, pgd.ProjectedGradient):
        objective = attack.objective
    else:
        steps = min(20, steps)
    steps //= 4
    tm = attack.threat_model
    return pgd.ProjectedGradient(
        epsilon=tm.epsilon,
        step_size=pgd_step_size(tm.epsilon, steps),
        num_steps=steps,
        norm=tm.norm,
        objective=objective,
        name=f"pgd{steps}",
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
        norm: their threat model, "linf" or "l2" (every named attack,
            and so every suite, exists in both).
        bpda_layers: when given, every gradient attack runs through BPDA
            over these layers (identity backward pass).
        sequential: override the suite's mode (None: sequential for
            `standard` only).

    Raises:
        ValueError: an unknown suite or attack name, or a repeated name.
    """
    settings = {}
    if isinstance(suite, str):
        label = suite.strip()
        settings = SUITE_SETTINGS.get(label, {})
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
            if item in settings:
                attack = attack.replace(**settings[item])
        elif not isinstance(item, attack_base.Attack):
            raise TypeError(f"Expected an attack name or Attack; got {item!r}")
        if bpda_layers and attack.uses_gradients:
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
