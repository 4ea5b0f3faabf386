"""One training run: build under a strategy, fit, evaluate, export.

`run` is the only gin-configurable root of tfadv.
"""

import math
import os
from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence

import gin
import keras
import tensorflow as tf
from absl import logging

from tfadv import callbacks as callbacks_lib
from tfadv import data
from tfadv import evaluation
from tfadv import models
from tfadv.attacks import base as attack_base

RESULTS_FILE = "results.json"
MODEL_FILE = "model.keras"
CHECKPOINT_DIR = "checkpoint"
# What a run folder may hold before `run` starts in it (a run resumes only
# in a folder made by an interrupted tfadv run).
_RUN_ARTEFACTS = {
    "config.parsed.gin",
    "config.operative.gin",
    CHECKPOINT_DIR,
    callbacks_lib.TIMING_FILE,
    "train",
    "validation",
    "images",
}


class RunFolderError(ValueError):
    """The run folder holds something `run` must not overwrite."""


class TrainingDivergedError(RuntimeError):
    """The training loss became NaN or infinite."""


def prepare_logdir(logdir: str) -> bool:
    """Checks the run folder and says whether the run resumes.

    Returns:
        True when the folder holds an interrupted run's checkpoint.

    Raises:
        RunFolderError: the folder holds a finished run, or files that no
            tfadv run made.
    """
    if os.path.exists(os.path.join(logdir, RESULTS_FILE)):
        raise RunFolderError(
            f"{logdir} already holds a finished run ({RESULTS_FILE} exists); "
            "tfadv never overwrites a run. Pass another --logdir, or delete "
            "the folder yourself."
        )
    if os.path.isdir(logdir):
        foreign = sorted(set(os.listdir(logdir)) - _RUN_ARTEFACTS)
        if foreign:
            raise RunFolderError(
                f"{logdir} is not empty and is not an interrupted tfadv run "
                f"(it holds {foreign[:5]}); pass another --logdir."
            )
    os.makedirs(logdir, exist_ok=True)
    return os.path.isdir(os.path.join(logdir, CHECKPOINT_DIR))


def default_final_attacks(epsilon: float) -> dict:
    """The quick suite: PGD-20, step epsilon/10, random start (§0.5)."""
    return evaluation.make_suite("quick", epsilon=epsilon).attacks


def _check_attacks(epsilon, attacks):
    for attack in attacks:
        if not isinstance(attack, attack_base.Attack):
            raise TypeError(
                f"Expected a tfadv.attacks.Attack; got {attack!r}. In gin, "
                "bind an instance, e.g. @eval/ProjectedGradient()."
            )
        if attack.epsilon <= 0:
            raise ValueError(
                f"Attack {attack.name!r} has epsilon {attack.epsilon}; "
                "training and evaluation attacks need epsilon in (0, 1]."
            )
        if not math.isclose(attack.epsilon, epsilon, rel_tol=1e-4):
            logging.warning(
                "Attack %r uses epsilon %g but the run's epsilon is %g.",
                attack.name,
                attack.epsilon,
                epsilon,
            )


def _learning_rate(learning_rate, steps_per_epoch, epochs):
    if callable(learning_rate):
        return learning_rate(steps_per_epoch=steps_per_epoch, epochs=epochs)
    return float(learning_rate)


@gin.configurable(denylist=["logdir", "strategy"])
def run(
    *,
    logdir: str,
    strategy: tf.distribute.Strategy | None = None,
    method_cls: Callable[..., keras.Model] = gin.REQUIRED,
    epsilon: float = gin.REQUIRED,
    epochs: int = 10,
    dataset_fn: Callable[..., data.Datasets] = data.make_datasets,
    data_dir: str | None = None,
    model_fn: Callable[..., keras.Model] = models.small_cnn,
    optimizer_cls: Callable[..., keras.optimizers.Optimizer] = (
        keras.optimizers.SGD
    ),
    learning_rate: float | Callable = 0.01,
    eval_attack: attack_base.Attack | None = None,
    final_attacks: Mapping[str, attack_base.Attack] | None = None,
    final_suite: str | Sequence[str] = "quick",
    callback_fns: Sequence[Callable[..., keras.callbacks.Callback]] = (),
    validation_freq: int = 1,
    jit_compile: bool = False,
    steps_per_execution: int = 1,
    mixed_precision: str | None = None,
    seed: int = 0,
    dry_run: bool = False,
) -> dict:
    """Trains one method and writes the run folder.

    The folder gets `config.operative.gin`, TensorBoard events (`train/`,
    `validation/`, `images/`), a resumable `checkpoint/`, `model.keras` (the
    bare classifier) and `results.json`. Variable-owning objects (method,
    model, optimizer) are built here, inside `strategy.scope()`, which is why
    gin binds them as unevaluated references (`@PGDAT`, `@small_cnn`).

    Args:
        logdir: the run folder; a finished run there is never overwritten,
            an interrupted one resumes from its checkpoint.
        strategy: the distribution strategy (default: the current one).
        method_cls: the method class, called as
            `method_cls(classifier, eval_attack=eval_attack)`; its own
            hyperparameters come from gin.
        epsilon: the threat model's budget in pixel units, in (0, 1];
            recorded in results.json and used by the default final attack.
        epochs: training epochs.
        dataset_fn: returns a `tfadv.data.Datasets`; called with `data_dir`.
        data_dir: an explicit data directory (the `--data_dir` flag).
        model_fn: builds the classifier from `input_shape`, `num_classes`,
            `mean` and `std`.
        optimizer_cls: the optimizer class, called with `learning_rate`.
        learning_rate: a float, or a schedule builder called with
            `steps_per_epoch` and `epochs` (see `tfadv.schedules`).
        eval_attack: the attack for robust validation during training.
        final_attacks: attacks for the final numbers in results.json, keyed
            by report name, each run on every example; overrides
            `final_suite` when given.
        final_suite: the `tfadv.evaluation` suite for the final numbers:
            "quick" (PGD-20), "standard" (APGD-CE, APGD-T, Square, run
            AutoAttack-style) or a comma-separated list of attack names
            ("pgd20,cw50"), as `python -m tfadv.evaluate --suite` takes.
        callback_fns: extra callbacks, each built as
            `fn(datasets=..., logdir=...)`. A callback with a
            `results_info()` method adds its dict to results.json (e.g. the
            catastrophic-overfitting guard reports whether it stopped).
        validation_freq: epochs between validations.
        jit_compile: compile the train and test steps with XLA.
        steps_per_execution: Keras `steps_per_execution`.
        mixed_precision: None, "mixed_float16" or "mixed_bfloat16".
        seed: seed of weight initialisation and of the method's randomness.
        dry_run: build everything, then return without training.

    Returns:
        The contents of results.json (empty for a dry run).
    """
    epsilon = attack_base.check_budget(epsilon)
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an integer >= 1; got {epochs!r}.")
    if mixed_precision not in (None, "mixed_float16", "mixed_bfloat16"):
        raise ValueError(
            f"mixed_precision must be None, 'mixed_float16' or "
            f"'mixed_bfloat16'; got {mixed_precision!r}."
        )
    if final_attacks is None:
        suite = evaluation.make_suite(final_suite, epsilon=epsilon)
    else:
        suite = evaluation.Suite(
            ",".join(final_attacks), dict(final_attacks), sequential=False
        )
    final_attacks = suite.attacks
    _check_attacks(
        epsilon, [a for a in [eval_attack] if a] + list(final_attacks.values())
    )
    strategy = strategy or tf.distribute.get_strategy()
    resuming = False if dry_run else prepare_logdir(logdir)
    logging.info(
        "jit_compile=%s, steps_per_execution=%d, mixed_precision=%s, "
        "replicas=%d",
        jit_compile,
        steps_per_execution,
        mixed_precision,
        strategy.num_replicas_in_sync,
    )

    datasets = dataset_fn(data_dir=data_dir)
    info = datasets.info
    keras.utils.set_random_seed(seed)
    previous_policy = keras.mixed_precision.dtype_policy()
    if mixed_precision:
        keras.mixed_precision.set_dtype_policy(mixed_precision)
    try:
        with strategy.scope():
            classifier = model_fn(
                input_shape=tuple(info.image_shape),
                num_classes=info.num_classes,
                mean=info.mean,
                std=info.std,
            )
            method = method_cls(classifier, eval_attack=eval_attack)
            optimizer = optimizer_cls(
                learning_rate=_learning_rate(
                    learning_rate, datasets.steps_per_epoch, epochs
                )
            )
            method.compile(
                optimizer=optimizer,
                jit_compile=jit_compile,
                steps_per_execution=steps_per_execution,
            )
            method.build((None, *info.image_shape))
    finally:
        keras.mixed_precision.set_dtype_policy(previous_policy)
    if dry_run:
        return {}
    if resuming:
        logging.info("Resuming the interrupted run in %s.", logdir)

    wall_clock = callbacks_lib.WallClockLogger(
        datasets.steps_per_epoch * _batch_size(datasets), logdir
    )
    guard = callbacks_lib.DivergenceGuard()
    callbacks = [
        callbacks_lib.GinConfigWriter(logdir),
        guard,
        callbacks_lib.MethodEpochHooks(),
        wall_clock,
        keras.callbacks.TensorBoard(logdir, update_freq="epoch"),
        callbacks_lib.ResumableCheckpoint(os.path.join(logdir, CHECKPOINT_DIR)),
    ]
    if eval_attack is not None and datasets.validation is not None:
        images, labels = next(iter(datasets.validation.take(1)))
        callbacks.append(
            callbacks_lib.AdversarialImageGrid(
                images[:8], labels[:8], eval_attack, logdir
            )
        )
    callbacks += [fn(datasets=datasets, logdir=logdir) for fn in callback_fns]

    history = method.fit(
        datasets.train,
        validation_data=datasets.validation,
        validation_freq=validation_freq,
        epochs=epochs,
        callbacks=callbacks,
        shuffle=False,  # The pipeline shuffles, seeded.
        verbose=2,
    )
    if guard.diverged_at is not None:
        raise TrainingDivergedError(
            f"The training loss became NaN or infinite (batch "
            f"{guard.diverged_at} of the last epoch); training stopped. The "
            f"last good state is in {os.path.join(logdir, CHECKPOINT_DIR)}. "
            "Lower the learning rate or check the data."
        )

    classifier.save(os.path.join(logdir, MODEL_FILE))
    logging.info("Final evaluation with %s.", ", ".join(final_attacks))
    scores = evaluation.evaluate_robustness(
        classifier,
        datasets.test,
        final_attacks,
        seed=seed,
        sequential=suite.sequential,
    )
    results = {
        "method": type(method).__name__,
        "dataset": info.name,
        "epsilon": epsilon,
        "epochs": len(wall_clock.epoch_seconds),
        "train_seconds": sum(wall_clock.epoch_seconds),
        "epoch_seconds": wall_clock.epoch_seconds,
        "clean_accuracy": scores["clean_accuracy"],
        "robust_accuracy": scores["robust_accuracy"],
        "num_eval_examples": scores["num_examples"],
        "eval_suite": suite.name,
        "eval_attacks": scores["attacks"],
        "eval_seconds": scores["attack_seconds"],
        "gradient_masking": scores["gradient_masking"],
        "history": {
            k: [float(v) for v in vs] for k, vs in history.history.items()
        },
    }
    for callback in callbacks:
        info_fn = getattr(callback, "results_info", None)
        if info_fn is not None:
            results.update(info_fn())
    callbacks_lib.write_json_atomic(os.path.join(logdir, RESULTS_FILE), results)
    return results


def _batch_size(datasets) -> int:
    spec = datasets.train.element_spec[0]
    if spec.shape[0] is not None:
        return int(spec.shape[0])
    return int(next(iter(datasets.train.take(1)))[0].shape[0])


def format_results(results: dict, logdir: str) -> str:
    """A short human-readable summary of a finished run."""
    lines = [
        f"{results['method']} on {results['dataset']} "
        f"(epsilon {results['epsilon']:g}, {results['epochs']} epochs, "
        f"{results['train_seconds']:.1f} s training) -> {logdir}",
        f"  clean accuracy           {results['clean_accuracy']:.4f}",
    ]
    for name, value in results["robust_accuracy"].items():
        lines.append(f"  robust accuracy {name:<8} {value:.4f}")
    lines.append(f"  on the first {results['num_eval_examples']} test examples")
    return "\n".join(lines)
