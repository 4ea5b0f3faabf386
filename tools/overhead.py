"""The overhead mode of tools/benchmark.py: tfadv's step vs a hand-written one.

Every contender trains its own copy of one classifier (identical initial
weights) on the same Fashion-MNIST batch with the same seed: PGD-10 at
ε = 0.1 with steps of 0.025 from a uniform start, CE on the adversarial
batch, SGD(0.05, momentum 0.9) with coupled weight decay 5e-4, as
pgd_at.gin (at a constant learning rate). In each round every contender
runs `steps` steps (the order reversed every other round, so a drift in
the machine's load does not favour one side); the first `warmup` rounds
are discarded; each contender's time in a round is divided by the
hand-written reference's in the same round, and the medians and spread
(quartiles, min, max) of these per-round ratios are reported.

Contenders:
- `reference_attack` / `tfadv_attack`: the attack alone
  (`reference_step.pgd` vs `tfadv.attacks.ProjectedGradient`), each in
  a `tf.function`;
- `reference_step`: `reference_step.ReferencePGDAT.step`;
- `tfadv_step`: `PGDAT.train_step` in a `tf.function`, called directly;
- `tfadv_fit`: `PGDAT.fit` over `steps` batches per call (the time per
  batch, with `steps_per_execution` as the run uses);
- the profile: `PGDAT.train_step` with one of its extras switched off in
  a subclass (`no_input_checks`, `no_clean_forward`, `no_metrics`,
  `fixed_seed`) and with all of them off and no minibatch counter
  (`bare`); the difference to `tfadv_step` is what that extra costs;
- `art_madry_pgd`, only when IBM's Adversarial Robustness Toolbox is
  installed (it is not a dependency of tfadv): ART's
  `AdversarialTrainerMadryPGD` on a `TensorFlowV2Classifier` of the same
  model (the same initial weights, batch and PGD-10 attack: ε = 0.1, steps
  of 0.025, one uniform random start; SGD(0.05, momentum 0.9) without the
  weight decay, which ART's classifier does not apply), one `fit` epoch
  over `steps` copies of the batch. ART computes every attack step through
  NumPy arrays; the ratio to the hand-written step is what a user of that
  library pays.
"""

import json
import os
import statistics
import time

import keras
import numpy as np
import reference_step
import tensorflow as tf

import tfadv
from tfadv import data
from tfadv import models
from tfadv.attacks import base as attack_base
from tfadv.attacks import pgd
from tfadv.methods import pgd_at

EPSILON = 0.1
STEP_SIZE = 0.025  # 2.5 * EPSILON / 10
NUM_STEPS = 10
LEARNING_RATE = 0.05
MOMENTUM = 0.9
WEIGHT_DECAY = 5e-4

ATTACK_REFERENCE = "reference_attack"
STEP_REFERENCE = "reference_step"
ATTACKS = ("tfadv_attack",)
STEPS = (
    "tfadv_step",
    "tfadv_fit",
    "no_input_checks",
    "no_clean_forward",
    "no_metrics",
    "fixed_seed",
    "bare",
)
# Peers, timed when their library is installed (not dependencies of tfadv).
PEERS = ("art_madry_pgd",)


# The arithmetic (tested in tests/benchmark_test.py).


def per_round_ratios(times: dict, reference: str, names) -> dict:
    """Each contender's time over the reference's, round by round."""
    base = times[reference]
    return {
        name: [t / r for t, r in zip(times[name], base, strict=True)]
        for name in names
    }


def spread(values) -> dict:
    """Median, quartiles, min and max of `values`."""
    values = sorted(float(v) for v in values)
    if len(values) == 1:
        q1 = q3 = values[0]
    else:
        q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return {
        "median": statistics.median(values),
        "q1": q1,
        "q3": q3,
        "min": values[0],
        "max": values[-1],
        "rounds": len(values),
    }


def round_orders(names, rounds: int) -> list:
    """The order of the contenders in each round: A B C, then C B A, ..."""
    names = list(names)
    return [names if r % 2 == 0 else names[::-1] for r in range(rounds)]


# The profile variants: PGDAT with one extra of its step switched off.


class NoCleanForward(pgd_at.PGDAT):
    """No inference forward for `clean_accuracy` (adversarial logits used)."""

    def compute_adversarial_loss(self, x, y, x_adv):
        loss, clean_logits, adv_logits = super().compute_adversarial_loss(
            x, y, x_adv
        )
        if clean_logits is None:
            clean_logits = adv_logits
        return loss, clean_logits, adv_logits


class NoMetrics(pgd_at.PGDAT):
    """No tracker updates, no metric results read."""

    def update_metrics(self, loss, y, *, clean_logits=None, adv_logits=None):
        del loss, y, clean_logits, adv_logits

    def logs(self, names):
        del names
        return {}


class FixedSeed(pgd_at.PGDAT):
    """A constant stateless seed instead of the seed generator's next."""

    def attack(self, attack, x, target, **kwargs):
        with attack_base.inputs_checked():
            return attack(
                self.classifier,
                x,
                target,
                seed=tf.constant([0, 0], tf.int32),
                training=self.attack_training_mode,
                **kwargs,
            )


class Bare(NoCleanForward, NoMetrics, FixedSeed):
    """Every extra off, and no batch preparation or minibatch counter."""

    def train_step(self, data):
        x, y = data
        return self.minibatch_update(x, tf.cast(y, tf.int32))


_VARIANTS = {
    "tfadv_step": (pgd_at.PGDAT, {}),
    "tfadv_fit": (pgd_at.PGDAT, {}),
    "no_input_checks": (pgd_at.PGDAT, {"check_inputs": False}),
    "no_clean_forward": (NoCleanForward, {}),
    "no_metrics": (NoMetrics, {}),
    "fixed_seed": (FixedSeed, {}),
    "bare": (Bare, {"check_inputs": False}),
}


def _attack():
    return pgd.ProjectedGradient(
        epsilon=EPSILON, step_size=STEP_SIZE, num_steps=NUM_STEPS
    )


def make_trainer(cls, classifier, *, seed, steps_per_execution=1, **kwargs):
    """A compiled PGDAT (or variant) as pgd_at.gin builds it."""
    trainer = cls(
        classifier,
        train_attack=_attack(),
        weight_decay=WEIGHT_DECAY,
        seed=seed,
        **kwargs,
    )
    trainer.compile(
        optimizer=keras.optimizers.SGD(LEARNING_RATE, momentum=MOMENTUM),
        jit_compile=False,
        steps_per_execution=steps_per_execution,
    )
    trainer.optimizer.build(trainer.trainable_variables)
    return trainer


def make_reference(classifier, *, seed):
    return reference_step.ReferencePGDAT(
        classifier,
        epsilon=EPSILON,
        step_size=STEP_SIZE,
        num_steps=NUM_STEPS,
        learning_rate=LEARNING_RATE,
        momentum=MOMENTUM,
        weight_decay=WEIGHT_DECAY,
        seed=seed,
    )


def _batch(batch_size, seed):
    datasets = data.make_datasets(
        name="fashion_mnist",
        batch_size=batch_size,
        train_examples=batch_size,
        validation_examples=0,
        eval_examples=batch_size,
        seed=seed,
    )
    x, y = next(iter(datasets.train.take(1)))
    return tf.identity(x), tf.cast(y, tf.int32), datasets.info


def make_classifier(model, info, seed):
    """The `(builder, kwargs)` model for the data `info`, seeded alike.

    Every call gives the same initial weights for the same seed.
    """
    builder, kwargs = model
    keras.utils.set_random_seed(seed)
    return getattr(models, builder)(
        input_shape=tuple(info.image_shape),
        num_classes=info.num_classes,
        mean=info.mean,
        std=info.std,
        **kwargs,
    )


def _contenders(model, batch_size, steps, steps_per_execution, seed):
    """`{name: run}`; `run()` does `steps` steps and waits for them."""
    x, y, info = _batch(batch_size, seed)

    def classifier():
        return make_classifier(model, info, seed)

    runs = {}
    seed_tensor = tf.constant([seed, 0], tf.int32)
    attacked = classifier()
    reference = make_reference(attacked, seed=seed)
    tfadv_attack = _attack()

    @tf.function(autograph=False)
    def attack_once(x, y, s):
        return tfadv_attack(attacked, x, y, seed=s, training=True)

    def repeat(fn):
        def run():
            out = None
            for _ in range(steps):
                out = fn()
            # Reading a result waits for the step (a no-op on the CPU,
            # where a tf.function call returns when it is done).
            for value in tf.nest.flatten(out)[:1]:
                np.asarray(value)

        return run

    runs[ATTACK_REFERENCE] = repeat(lambda: reference.attack(x, y, seed_tensor))
    runs["tfadv_attack"] = repeat(lambda: attack_once(x, y, seed_tensor))
    stepped = make_reference(classifier(), seed=seed)
    runs[STEP_REFERENCE] = repeat(lambda: stepped.step(x, y))
    for name, (cls, extra) in _VARIANTS.items():
        trainer = make_trainer(
            cls,
            classifier(),
            seed=seed,
            steps_per_execution=steps_per_execution,
            **extra,
        )
        if name == "tfadv_fit":
            batches = tf.data.Dataset.from_tensors((x, y)).repeat(steps)
            clock = _BatchClock()

            def fit(trainer=trainer, batches=batches, clock=clock):
                trainer.fit(
                    batches,
                    epochs=1,
                    verbose=0,
                    shuffle=False,
                    callbacks=[clock],
                )
                np.asarray(trainer.minibatches)
                # fit's per-call set-up (the epoch iterator, the callback
                # list) is not a per-batch cost: the clock runs from the
                # first batch's start to the last batch's end.
                return clock.seconds

            runs[name] = fit
        else:
            step = tf.function(trainer.train_step, autograph=False)
            runs[name] = repeat(lambda step=step: step((x, y)))
    art = art_madry_pgd(classifier(), x, y, steps, info.num_classes, seed)
    if art is not None:
        runs["art_madry_pgd"] = art
    return runs


def art_madry_pgd(classifier, x, y, steps, num_classes, seed):
    """ART's Madry PGD trainer on `steps` copies of the batch, or None.

    None when the Adversarial Robustness Toolbox is not installed. A call
    trains one epoch of `steps` minibatches (ART shuffles the copies,
    which are the same batch).
    """
    try:
        from art.defences.trainer import AdversarialTrainerMadryPGD
        from art.estimators.classification import TensorFlowV2Classifier
    except ImportError:
        return None
    estimator = TensorFlowV2Classifier(
        model=classifier,
        nb_classes=num_classes,
        input_shape=tuple(x.shape[1:]),
        loss_object=keras.losses.SparseCategoricalCrossentropy(
            from_logits=True
        ),
        optimizer=keras.optimizers.SGD(LEARNING_RATE, momentum=MOMENTUM),
        clip_values=(0.0, 1.0),
    )
    trainer = AdversarialTrainerMadryPGD(
        estimator,
        nb_epochs=1,
        batch_size=int(x.shape[0]),
        eps=EPSILON,
        eps_step=STEP_SIZE,
        max_iter=NUM_STEPS,
        num_random_init=1,
    )
    images = np.concatenate([np.asarray(x)] * steps)
    labels = np.concatenate([np.asarray(y)] * steps)
    np.random.seed(seed)

    def run():
        trainer.fit(images, labels, nb_epochs=1, batch_size=int(x.shape[0]))

    return run


class _BatchClock(keras.callbacks.Callback):
    """The seconds from the first batch's start to the last batch's end."""

    def __init__(self):
        super().__init__()
        self.seconds = None
        self._start = None

    def on_train_batch_begin(self, batch, logs=None):
        if self._start is None:
            self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.seconds = time.perf_counter() - self._start

    def on_train_begin(self, logs=None):
        self._start, self.seconds = None, None


def measure(runs: dict, *, rounds: int, warmup: int, steps: int) -> dict:
    """Seconds per step of each contender, per kept round.

    A run that returns a number reports its own elapsed seconds (fit,
    without its per-call set-up); otherwise the call is timed.
    """
    times = {name: [] for name in runs}
    for index, order in enumerate(round_orders(runs, warmup + rounds)):
        for name in order:
            start = time.perf_counter()
            elapsed = runs[name]()
            if elapsed is None:
                elapsed = time.perf_counter() - start
            seconds = elapsed / steps
            if index >= warmup:
                times[name].append(seconds)
        kept = "warm-up" if index < warmup else "kept"
        print(f"round {index + 1}/{warmup + rounds} ({kept})", flush=True)
    return times


def summarise(times: dict) -> dict:
    """Ratios to the hand-written attack and step, with their spread."""
    ratios = per_round_ratios(times, ATTACK_REFERENCE, ATTACKS)
    ratios.update(
        per_round_ratios(
            times, STEP_REFERENCE, [n for n in STEPS + PEERS if n in times]
        )
    )
    summary = {
        "seconds_per_step": {n: spread(t) for n, t in times.items()},
        "ratio": {n: spread(r) for n, r in ratios.items()},
        "per_round_ratios": ratios,
    }
    step = summary["seconds_per_step"]
    base = step["tfadv_step"]["median"]
    # What each extra costs: tfadv's step less the step without it, as a
    # fraction of the hand-written step.
    reference = step[STEP_REFERENCE]["median"]
    summary["extra_cost"] = {
        name: (base - step[name]["median"]) / reference
        for name in STEPS
        if name not in ("tfadv_step", "tfadv_fit")
    }
    return summary


def table(summary: dict) -> str:
    lines = [
        "| contender | vs | median s/step | median ratio | IQR | min-max |",
        "|---|---|---|---|---|---|",
    ]
    step = summary["seconds_per_step"]
    for name in (ATTACK_REFERENCE, STEP_REFERENCE):
        lines.append(f"| {name} | - | {step[name]['median']:.4f} | 1 | - | - |")
    for name, r in summary["ratio"].items():
        versus = ATTACK_REFERENCE if name in ATTACKS else STEP_REFERENCE
        lines.append(
            f"| {name} | {versus} | {step[name]['median']:.4f} | "
            f"{r['median']:.3f} | {r['q1']:.3f}-{r['q3']:.3f} | "
            f"{r['min']:.3f}-{r['max']:.3f} |"
        )
    lines += [
        "",
        "What each extra of tfadv's step costs (tfadv_step less the "
        "variant, median seconds, as a fraction of the hand-written step):",
        "",
        "| extra switched off | cost |",
        "|---|---|",
    ]
    lines += [
        f"| {name} | {cost:+.3f} |"
        for name, cost in summary["extra_cost"].items()
    ]
    return "\n".join(lines)


def main(
    *,
    out,
    command,
    model,
    batch_size,
    rounds,
    warmup,
    steps,
    steps_per_execution,
    seed,
):
    runs = _contenders(model, batch_size, steps, steps_per_execution, seed)
    times = measure(runs, rounds=rounds, warmup=warmup, steps=steps)
    summary = summarise(times)
    settings = {
        "model": {"builder": model[0], **model[1]},
        "batch_size": batch_size,
        "rounds": rounds,
        "warmup": warmup,
        "steps_per_round": steps,
        "steps_per_execution": steps_per_execution,
        "seed": seed,
        "attack": f"PGD-{NUM_STEPS}, eps {EPSILON}, step {STEP_SIZE}",
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "tfadv": getattr(tfadv, "__version__", None),
        "threads": {
            "intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
            "inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
        },
    }
    text = table(summary)
    with open(os.path.join(out, "overhead.md"), "w") as f:
        f.write(f"Command: `{command}`\n\n")
        f.write(
            f"Model {model[0]} {model[1] or ''}, batch {batch_size}, "
            f"{rounds} rounds of {steps} steps after {warmup} warm-up "
            "rounds; ratios are per round, then summarised.\n\n"
        )
        f.write(text + "\n")
    with open(os.path.join(out, "overhead.json"), "w") as f:
        json.dump(
            {"command": command, "settings": settings, **summary},
            f,
            indent=2,
        )
    print(text)
    print(f"Written to {out}/overhead.md, overhead.json")
