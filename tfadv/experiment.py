"""One training run: check, build under a strategy, fit, finish.

`run` is the only gin-configurable root of tfadv. It runs in four named
phases: `check_config` (every scalar and the final suite, before anything
is built), `build` (data, classifier, method and optimizer under the
strategy's scope, and the method's ε against the run's), `fit` (Keras's
loop with the run's callbacks and the method's own) and `finish` (export,
the final evaluation through `tfadv.evaluation`, results.json). The run
folder's files and resume rule belong to `tfadv.run_folder`.
"""

import contextlib
import dataclasses
import math
import os
import sys
from collections.abc import Callable
from collections.abc import Sequence

import gin
import keras
import tensorflow as tf
from absl import logging

from tfadv import callbacks as callbacks_lib
from tfadv import data
from tfadv import evaluation
from tfadv import gin_files
from tfadv import models
from tfadv import provenance
from tfadv import run_folder
from tfadv import run_logs
from tfadv import seeds as seeds_lib
from tfadv import validation
from tfadv.attacks import base as attack_base
from tfadv.attacks import threat_models
from tfadv.methods import base as methods_base
from tfadv.methods.weight_perturbations import WeightPerturbation
from tfadv.recipes import selection as selection_lib

# The arguments of `run` that the entry point (`tfadv.train`) sets from its
# flags, each with the flags that set it: gin refuses bindings of them
# (`run`'s denylist), and `tfadv.train` names the flag in its refusal.
SET_BY_ENTRY_POINT = {
    "logdir": "--logdir",
    "strategy": "--strategy and --devices",
    "data_dir": "--data_dir (or TFADV_DATA_DIR)",
    "dry_run": "--dry_run",
    "allow_config_change": "--allow_config_change",
    "progress": "--progress",
}
PROGRESS = ("auto", "bar", "epoch", "none")
MIXED_PRECISION_POLICIES = (None, "mixed_float16", "mixed_bfloat16")


class TrainingDivergedError(RuntimeError):
    """Training diverged (`tfadv.callbacks.DivergenceGuard`)."""


# Set on a ValueError or TypeError that `run` let through from training.
_RAISED_IN_TRAINING = "tfadv_raised_in_training"


def raised_in_training(error: BaseException) -> bool:
    """Whether `run` saw `error` raised once training had started.

    Bad input is refused before training, by checks that raise ValueError,
    TypeError or OSError with one paragraph, which `tfadv.train` prints
    without a traceback. The same types raised later (inside `fit` or the
    final evaluation) are failures, not refused input, and their traceback
    is the clue to where they arose: `run` marks them so that the entry
    point lets them through. (A mark, not a wrapping exception: gin
    re-raises what a configurable raises without its cause, but forwards
    attribute reads to it.)
    """
    return bool(getattr(error, _RAISED_IN_TRAINING, False))


@dataclasses.dataclass
class Built:
    """What `build` makes: the data, the classifier and the method.

    `averaging` and `selection` are the run's recipes (`tfadv.recipes`),
    made after `build` when the run asks for them.
    """

    datasets: data.Datasets
    classifier: keras.Model
    method: keras.Model
    averaging: keras.callbacks.Callback | None = None
    selection: keras.callbacks.Callback | None = None

    def recipes(self) -> list:
        return [r for r in (self.averaging, self.selection) if r is not None]


def check_config(
    *,
    epsilon,
    epochs,
    mixed_precision,
    final_suite,
    eval_attack,
    validation_freq=1,
    steps_per_execution=1,
    learning_rate=0.01,
    norm="linf",
    jit_compile=False,
) -> tuple[float, evaluation.Suite]:
    """Checks the run's scalars and resolves the final suite.

    Returns:
        `(epsilon, suite)`.

    Raises:
        ValueError: a value out of range, or an unknown attack name.
    """
    validation.count("epochs", epochs, minimum=1)
    validation.count(
        "run.validation_freq",
        validation_freq,
        minimum=1,
        meaning="validate every that many epochs",
    )
    validation.count(
        "run.steps_per_execution",
        steps_per_execution,
        minimum=1,
        meaning="batches per compiled call",
    )
    if not callable(learning_rate):
        validation.in_interval(
            "run.learning_rate",
            learning_rate,
            0.0,
            math.inf,
            low_open=True,
            hint="Give a positive number, or a schedule such as "
            "@piecewise_constant.",
        )
    validation.choice(
        "mixed_precision", mixed_precision, MIXED_PRECISION_POLICIES
    )
    validation.boolean(
        "run.jit_compile",
        jit_compile,
        hint="Write run.jit_compile = True or False, without quotes.",
    )
    norm = validation.choice(
        "run.norm", norm, tuple(threat_models.THREAT_MODELS)
    )
    epsilon = validation.epsilon(epsilon, allow_zero=False, norm=norm)
    suite = evaluation.make_suite(final_suite, epsilon=epsilon, norm=norm)
    attacks = [eval_attack] if eval_attack is not None else []
    for attack in [*attacks, *suite.attacks.values()]:
        if not isinstance(attack, attack_base.Attack):
            raise TypeError(
                f"Expected a tfadv.attacks.Attack; got {attack!r}. In gin, "
                "bind an instance, e.g. @eval/ProjectedGradient()."
            )
        validation.epsilon(
            attack.epsilon, allow_zero=False, norm=attack.threat_model.norm
        )
        if not math.isclose(attack.epsilon, epsilon, rel_tol=1e-4):
            logging.warning(
                "Attack %r uses epsilon %g but the run's epsilon is %g.",
                attack.name,
                attack.epsilon,
                epsilon,
            )
        if attack.threat_model.norm != norm:
            logging.warning(
                "Attack %r works in %s but the run's norm is %s.",
                attack.name,
                attack.threat_model.norm,
                norm,
            )
    return epsilon, suite


def check_method_epsilon(method, epsilon: float) -> None:
    """Refuses a method whose training budget is not the run's.

    Raises:
        ValueError: naming both budgets.
    """
    trained = getattr(method, "epsilon", None)
    if trained is None or math.isclose(trained, epsilon, rel_tol=1e-6):
        return
    name = type(method).__name__
    raise ValueError(
        f"{name} trains at epsilon {trained:g} (its train_attack) but "
        f"run.epsilon is {epsilon:g}; results.json would report the wrong "
        f"budget. Give the training attack the run's budget (e.g. "
        f"train/ProjectedGradient.epsilon = %EPSILON when {name}.train_attack "
        f"is bound, else {name}.epsilon = %EPSILON), or change run.epsilon."
    )


def check_method_classes(method, info) -> None:
    """Refuses a classifier whose output width is not the data's classes.

    Raises:
        ValueError: naming both numbers.
    """
    try:
        outputs = method.num_classes
    except ValueError:
        return  # unbuilt: the first batch checks it
    if outputs == info.num_classes:
        return
    raise ValueError(
        f"The classifier (run.model_fn) outputs {outputs} logits, but "
        f"{info.name!r} has {info.num_classes} classes; it needs one logit "
        "per class (with fewer, some labels have none; with more, "
        "accuracy and attacks count classes the data never has). Build "
        "the model with the num_classes it is given."
    )


def check_method_norm(method, norm: str) -> None:
    """Refuses a method whose training threat model is not the run's.

    Raises:
        ValueError: naming both norms.
    """
    threat_model = getattr(method, "threat_model", None)
    if threat_model is None or threat_model.norm == norm:
        return
    name = type(method).__name__
    raise ValueError(
        f"{name} trains in the {threat_model.norm} norm (its train_attack) "
        f"but run.norm is {norm!r}; results.json would report the wrong "
        f"threat model. Give the training attack the run's norm (e.g. "
        f"train/ProjectedGradient.norm = {norm!r}), or set run.norm = "
        f"{threat_model.norm!r}."
    )


def _learning_rate(learning_rate, steps_per_epoch, epochs):
    if callable(learning_rate):
        return learning_rate(steps_per_epoch=steps_per_epoch, epochs=epochs)
    return float(learning_rate)


def build(
    *,
    strategy,
    dataset_fn,
    data_dir,
    model_fn,
    input_layers,
    method_cls,
    eval_attack,
    optimizer_cls,
    learning_rate,
    epochs,
    epsilon,
    jit_compile,
    steps_per_execution,
    mixed_precision,
    seeds: seeds_lib.RunSeeds,
    norm="linf",
    weight_perturbation=None,
) -> Built:
    """Builds the data, and under `strategy.scope()` the variables.

    Each random part gets its seed from `seeds` (`tfadv.seeds`): the data
    order (`dataset_fn(seed=...)`, when it takes one), the weights and the
    method's generator (`method_cls(..., seed=...)`, when it takes one).
    A method whose batches carry example ids (`uses_example_ids`, e.g.
    FGSM-PGI) gets them from `dataset_fn(example_ids=True)` and the
    training set's size as `num_examples`; data without them is refused.
    """
    method_kwargs, data_kwargs = {}, {}
    if seeds.data_order is not None:
        data_kwargs["seed"] = seeds.data_order
    if seeds.method is not None:
        method_kwargs["seed"] = seeds.method
    if _uses_example_ids(method_cls):
        datasets = dataset_fn(
            data_dir=data_dir, example_ids=True, **data_kwargs
        )
        data.example_ids.require(
            datasets.train, who=getattr(method_cls, "__name__", "The method")
        )
        method_kwargs["num_examples"] = datasets.info.num_train
    else:
        datasets = dataset_fn(data_dir=data_dir, **data_kwargs)
    info = datasets.info
    keras.utils.set_random_seed(seeds.weights)
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
            classifier = models.prepend_layers(classifier, input_layers)
            # A recipe around the method's update (AWP), when one is bound.
            if weight_perturbation is not None:
                method_kwargs["weight_perturbation"] = weight_perturbation
            method = method_cls(
                classifier, eval_attack=eval_attack, **method_kwargs
            )
            check_method_norm(method, norm)
            check_method_classes(method, info)
            check_method_epsilon(method, epsilon)
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
    return Built(datasets, classifier, method)


def _uses_example_ids(method_cls) -> bool:
    """Whether `method_cls` is a trainer whose batches carry example ids."""
    return (
        isinstance(method_cls, type)
        and issubclass(method_cls, methods_base.AdversarialTrainer)
        and method_cls.uses_example_ids
    )


def _batch_size(datasets) -> int:
    spec = data.example_ids.images_of(datasets.train.element_spec[0])
    if spec.shape[0] is not None:
        return int(spec.shape[0])
    images = data.example_ids.images_of(next(iter(datasets.train.take(1)))[0])
    return int(images.shape[0])


def _verbosity(progress: str) -> int:
    """Keras's `verbose` for `progress` ("auto": a bar on a terminal)."""
    if progress == "auto":
        progress = "bar" if sys.stdout.isatty() else "epoch"
    return {"bar": 1, "epoch": 2, "none": 0}[progress]


def fit(
    built: Built,
    *,
    logdir: str,
    epochs: int,
    eval_attack,
    extra_callbacks: Sequence[keras.callbacks.Callback],
    validation_freq: int,
    progress: str = "auto",
    norm: str = "linf",
    seed: int = 0,
    identity: dict | None = None,
) -> tuple[dict, list, run_logs.WallClockLogger]:
    """Trains with the run's callbacks and the method's own.

    Returns:
        `(history, callbacks, wall_clock)`: history maps each log name to
        its value per epoch, the epochs before a resume included.

    Raises:
        TrainingDivergedError: the loss became NaN or infinite.
    """
    datasets = built.datasets
    wall_clock = run_logs.WallClockLogger(
        datasets.steps_per_epoch * _batch_size(datasets),
        run_folder.path(logdir, run_folder.TIMING_FILE),
    )
    guard = callbacks_lib.DivergenceGuard()
    checkpoint = run_folder.ResumableCheckpoint(
        logdir, identity, states=built.recipes(), guard=guard
    )
    info = datasets.info
    hparams = run_logs.HParamsLogger(
        logdir,
        {
            "dataset": info.name,
            "norm": norm,
            "epochs": epochs,
            "batch_size": _batch_size(datasets),
            "seed": seed,
            "model": built.classifier.name,
        },
    )
    # The method's callbacks add to the epoch's logs, so they come before
    # the ones that write the logs.
    callbacks = [
        run_folder.GinConfigWriter(logdir),
        datasets.order_callback(),
        guard,
        *built.method.callbacks(),
        wall_clock,
        *built.recipes(),  # their logs and state belong to the epoch
        keras.callbacks.TensorBoard(logdir, update_freq="epoch"),
        hparams,
        checkpoint,
    ]
    if eval_attack is not None and datasets.validation is not None:
        images, labels = next(iter(datasets.validation.take(1)))
        callbacks.append(
            callbacks_lib.AdversarialImageGrid(
                images[:8],
                labels[:8],
                eval_attack,
                run_folder.path(logdir, run_folder.IMAGE_EVENTS),
                class_names=data.CLASS_NAMES.get(info.name),
            )
        )
    callbacks += list(extra_callbacks)
    built.method.fit(
        datasets.train,
        validation_data=datasets.validation,
        validation_freq=validation_freq,
        epochs=epochs,
        callbacks=callbacks,
        shuffle=False,  # The pipeline shuffles, seeded.
        verbose=_verbosity(progress),
    )
    if guard.diverged_epoch is not None:
        folder = run_folder.path(logdir, run_folder.CHECKPOINT_DIR)
        epoch = guard.diverged_epoch + 1
        if guard.diverged_epoch == 0:
            kept = (
                "No good epoch was saved, so there is no checkpoint to "
                f"resume from; delete {logdir} before trying again."
            )
        else:
            kept = (
                f"The last good state (after epoch {epoch - 1}) is in "
                f"{folder}; a rerun with the same --logdir resumes from "
                "it (with --allow_config_change if you change the config)."
            )
        where = guard.describe(built.datasets.steps_per_epoch)
        raise TrainingDivergedError(
            f"{where} {kept} Lower the learning rate or check the data."
        )
    # The checkpoint's history covers the epochs before a resume too.
    return checkpoint.history_dict(), callbacks, wall_clock


def finish(
    built: Built,
    *,
    logdir: str,
    epsilon: float,
    suite: evaluation.Suite,
    seeds: seeds_lib.RunSeeds,
    history,
    callbacks: list,
    wall_clock: run_logs.WallClockLogger,
) -> dict:
    """Exports the classifier, evaluates it and writes results.json.

    With recipes, the exported and evaluated state is
    `selection_lib.final_states`'s (the kept or the averaged one), and the
    other states it names are evaluated too, under `final_evaluations`.
    """
    exported, states = selection_lib.final_states(
        built.classifier, averaging=built.averaging, selection=built.selection
    )
    built.classifier.set_weights(states[exported])
    model_file = run_folder.path(logdir, run_folder.MODEL_FILE)
    incoming = run_folder.path(logdir, "incoming." + run_folder.MODEL_FILE)
    built.classifier.save(incoming)
    os.replace(incoming, model_file)  # a kill mid-export keeps no half file
    masking_layers = built.method.masking_layers()
    if masking_layers:
        suite = evaluation.with_masking_attacks(
            suite,
            masking_layers,
            epsilon=epsilon,
            norm=built.method.threat_model.norm
            if built.method.threat_model is not None
            else "linf",
        )
        logging.info(
            "The classifier has layers that mask gradients (%s): the final "
            "evaluation adds PGD through them, through BPDA and Square, and "
            "reports the per-example minimum.",
            ", ".join(masking_layers),
        )
    logging.info("Final evaluation with %s.", ", ".join(suite.attacks))
    evaluations = {}
    for label in reversed(states):  # the exported state last: it stays
        built.classifier.set_weights(states[label])
        evaluations[label] = evaluation.run_suite(
            built.classifier, built.datasets.test, suite, seed=seeds.attacks
        )
    scores = evaluations[exported]
    results = {
        "method": type(built.method).__name__,
        "dataset": built.datasets.info.name,
        "epsilon": epsilon,
        "norm": scores["norm"],
        "epochs": len(wall_clock.epoch_seconds),
        "train_seconds": sum(wall_clock.epoch_seconds),
        "epoch_seconds": wall_clock.epoch_seconds,
        "train_cpu_seconds": sum(wall_clock.epoch_cpu_seconds),
        "clean_accuracy": scores["clean_accuracy"],
        "robust_accuracy": scores["robust_accuracy"],
        "suite_robust_accuracy": scores["suite_robust_accuracy"],
        "masking_layers": masking_layers,
        "num_eval_examples": scores["num_examples"],
        "predicted_classes": scores["predicted_classes"],
        "eval_suite": scores["suite"],
        "eval_attacks": scores["attacks"],
        "eval_seconds": scores["attack_seconds"],
        "gradient_masking": scores["gradient_masking"],
        "data_source": built.datasets.info.source,
        "seeds": seeds.record(),
        "history": history,
        "provenance": provenance.record(),
    }
    results.update(built.method.results_info())
    # Recipes (in `callbacks`) replace these in their results_info().
    results["weight_averaging"] = {"enabled": False}
    results["selection"] = {"rule": "last"}
    results["final_state"] = exported
    if len(states) > 1:
        results["final_evaluations"] = {
            label: {
                key: evaluations[label][key]
                for key in (
                    "clean_accuracy",
                    "robust_accuracy",
                    "suite_robust_accuracy",
                )
            }
            for label in states
        }
    for callback in callbacks:
        # A callback reports into results.json through results_info() (the
        # catastrophic-overfitting guard does).
        info = getattr(callback, "results_info", None)
        if info is not None:
            results.update(info())
    for callback in callbacks:
        if isinstance(callback, run_logs.HParamsLogger):
            callback.write_final(
                {
                    "clean_accuracy": results["clean_accuracy"],
                    "robust_accuracy": results["suite_robust_accuracy"],
                },
                step=results["epochs"],
            )
    run_folder.write_json_atomic(
        run_folder.path(logdir, run_folder.RESULTS_FILE), results
    )
    return results


@gin.configurable(denylist=list(SET_BY_ENTRY_POINT))
def run(
    *,
    logdir: str,
    strategy: tf.distribute.Strategy | None = None,
    method_cls: Callable[..., keras.Model] = gin.REQUIRED,
    weight_perturbation: WeightPerturbation | None = None,
    epsilon: float = gin.REQUIRED,
    norm: str = "linf",
    epochs: int = 10,
    dataset_fn: Callable[..., data.Datasets] = data.make_datasets,
    data_dir: str | None = None,
    model_fn: Callable[..., keras.Model] = models.small_cnn,
    input_layers: Sequence[Callable[[], keras.layers.Layer]] = (),
    optimizer_cls: Callable[..., keras.optimizers.Optimizer] = (
        keras.optimizers.SGD
    ),
    learning_rate: float | Callable = 0.01,
    eval_attack: attack_base.Attack | None = None,
    final_suite: str | Sequence[str | attack_base.Attack] = "quick",
    callback_fns: Sequence[Callable[..., keras.callbacks.Callback]] = (),
    weight_averaging: Callable[..., keras.callbacks.Callback] | None = None,
    selection: Callable[..., keras.callbacks.Callback] | None = None,
    validation_freq: int = 1,
    jit_compile: bool = False,
    steps_per_execution: int = 1,
    mixed_precision: str | None = None,
    seed: int = 0,
    dry_run: bool = False,
    allow_config_change: bool = False,
    progress: str = "auto",
) -> dict:
    """Trains one method and writes the run folder (`tfadv.run_folder`).

    Variable-owning objects (method, model, optimizer) are built here,
    inside `strategy.scope()`, which is why gin binds them as unevaluated
    references (`@PGDAT`, `@small_cnn`). `logdir`, `strategy`, `data_dir`
    and `dry_run` come from the entry point's flags; gin refuses them.

    Args:
        logdir: the run folder; a finished run there is never overwritten,
            an interrupted one resumes from its checkpoint.
        strategy: the distribution strategy (default: the current one).
        method_cls: the method class, called as
            `method_cls(classifier, eval_attack=eval_attack, seed=...)`
            (`seed` derived from `seed` below, left out for a callable
            without that parameter); its own
            hyperparameters, training attack included, come from gin. Its
            training epsilon must equal `epsilon`. A method that declares
            `uses_example_ids` (FGSM-PGI) also gets `num_examples`, and
            `dataset_fn` is then called with `example_ids=True`.
        weight_perturbation: a recipe around every update of the method,
            passed to it as `weight_perturbation=` (e.g.
            `@AdversarialWeightPerturbation()`, `recipes/awp.gin`), or None.
        epsilon: the threat model's budget in pixel units, in (0, 1];
            recorded in results.json and used by the named final attacks.
        norm: the threat model of the named final attacks, "linf" or "l2"
            (give the training and validation attacks the same `norm`).
        epochs: training epochs.
        dataset_fn: returns a `tfadv.data.Datasets`; called with
            `data_dir`, and with `seed` (the data order's, `seed` below)
            when it has a `seed` parameter or `**kwargs`; one without
            orders its data itself, and results.json records no data-order
            seed.
        data_dir: an explicit data directory (the `--data_dir` flag).
        model_fn: builds the classifier from `input_shape`, `num_classes`,
            `mean` and `std`.
        input_layers: layers put in front of the classifier, before its
            normalisation (`tfadv.models.prepend_layers`), as layer classes
            or factories: `run.input_layers = [@SoftQuantization]`.
        optimizer_cls: the optimizer class, called with `learning_rate`.
        learning_rate: a float, or a schedule builder called with
            `steps_per_epoch` and `epochs` (see `tfadv.schedules`).
        eval_attack: the attack for robust validation during training.
        final_suite: the attacks of the final numbers in results.json, as
            `tfadv.evaluation.make_suite` takes them: "quick" (PGD-20),
            "standard" (APGD-CE, APGD-T, FAB-T, Square, AutoAttack-style), a
            comma-separated list of attack names ("pgd20,cw50"), or a list
            of names and attacks (`[@final/ProjectedGradient()]`, reported
            under each attack's `name`).
        callback_fns: extra callbacks, each built as
            `fn(datasets=..., logdir=...)`. A callback with a
            `results_info()` method adds its dict to results.json (e.g. the
            catastrophic-overfitting guard reports whether it stopped), as
            the method's own `results_info()` does.
        weight_averaging: keep an average of the classifier's weights
            (`recipes/ema.gin`: `@WeightAveraging`), called as
            `weight_averaging(method, validation_data=...)`; validation,
            the final evaluation and `model.keras` then use the average.
        selection: keep the best epoch on held-out training examples
            (`recipes/keep_best.gin`: `@keep_best`), called as
            `selection(method, datasets=..., averaging=..., epsilon=...,
            norm=...)`; the final evaluation and export use the kept state.
        validation_freq: epochs between validations.
        jit_compile: compile the train and test steps with XLA.
        steps_per_execution: Keras `steps_per_execution`.
        mixed_precision: None, "mixed_float16" or "mixed_bfloat16".
        seed: the run's one seed, handed to each random part: the
            weights', the data order's and augmentation's (as
            `dataset_fn(seed=seed)`, when it takes a seed), the method's
            generator's (a seed derived from it) and the final attacks'.
            results.json records each under `seeds` (`tfadv.seeds`); gin
            refuses seeds bound elsewhere (`make_datasets.seed`).
        dry_run: build everything, then return without training.
        allow_config_change: resume an interrupted run although the gin
            configuration differs from the one it started with (else that
            is an error naming what changed).
        progress: the console during training: "bar" (Keras's progress
            bar), "epoch" (one line per epoch, for logs), "none", or
            "auto" (a bar on a terminal, else one line per epoch).

    Returns:
        The contents of results.json (empty for a dry run).

    Raises:
        ValueError, TypeError, OSError: bad input, refused before training
            starts (one paragraph each).
        TrainingDivergedError: the loss became NaN or infinite.
        ValueError, TypeError raised once training had started: failures,
            not refused input; `raised_in_training` tells them apart.
    """
    validation.choice("progress", progress, PROGRESS)
    seeds = seeds_lib.RunSeeds.of(
        seed, dataset_fn=dataset_fn, method_cls=method_cls
    )
    epsilon, suite = check_config(
        epsilon=epsilon,
        epochs=epochs,
        mixed_precision=mixed_precision,
        final_suite=final_suite,
        eval_attack=eval_attack,
        validation_freq=validation_freq,
        steps_per_execution=steps_per_execution,
        learning_rate=learning_rate,
        norm=norm,
        jit_compile=jit_compile,
    )
    strategy = strategy or tf.distribute.get_strategy()
    with contextlib.ExitStack() as stack:
        # A start refused before training leaves no folder behind.
        with run_folder.removed_on_error(logdir) as start:
            resuming, config_changed, epoch = False, False, None
            config = gin.config_str()
            if not dry_run:
                # Refuse a finished or foreign folder before touching it, then
                # check again under the lock (another run may have finished).
                # What this start created is decided under the lock.
                run_folder.check(logdir)
                stack.enter_context(run_folder.lock(logdir, start))
                resuming = run_folder.check(logdir)
            if resuming:
                # Read only: a refused resume leaves the folder as it was.
                epoch = run_folder.check_checkpoint(
                    logdir, epochs=epochs, allow_change=allow_config_change
                )
                config_changed = run_folder.config_changed(
                    logdir, config, allow_change=allow_config_change
                )
            logging.info(
                "jit_compile=%s, steps_per_execution=%d, mixed_precision=%s, "
                "replicas=%d",
                jit_compile,
                steps_per_execution,
                mixed_precision,
                strategy.num_replicas_in_sync,
            )
            built = build(
                strategy=strategy,
                dataset_fn=dataset_fn,
                data_dir=data_dir,
                model_fn=model_fn,
                input_layers=input_layers,
                method_cls=method_cls,
                eval_attack=eval_attack,
                optimizer_cls=optimizer_cls,
                learning_rate=learning_rate,
                epochs=epochs,
                epsilon=epsilon,
                jit_compile=jit_compile,
                steps_per_execution=steps_per_execution,
                mixed_precision=mixed_precision,
                seeds=seeds,
                norm=norm,
                weight_perturbation=weight_perturbation,
            )
            # Built before training, so that a bad setting of one (e.g. the
            # catastrophic-overfitting guard's threshold) is refused here.
            extra_callbacks = [
                fn(datasets=built.datasets, logdir=logdir)
                for fn in callback_fns
            ]
            if weight_averaging is not None:
                built.averaging = weight_averaging(
                    built.method, validation_data=built.datasets.validation
                )
            if selection is not None:
                built.selection = selection(
                    built.method,
                    datasets=built.datasets,
                    averaging=built.averaging,
                    epsilon=epsilon,
                    norm=norm,
                )
            # Everything is built: a binding nothing used was a mistake.
            gin_files.check_unused_bindings()
            if dry_run:
                return {}
            info = built.datasets.info
            data_used = {
                "dataset": info.name,
                "source": info.source,
                "num_train": info.num_train,
                "num_test": info.num_test,
                "num_classes": info.num_classes,
                "image_shape": list(info.image_shape),
                "content": info.content,
            }
            if info.num_holdout:
                data_used["num_holdout"] = info.num_holdout
            data_changed = resuming and run_folder.data_changed(
                logdir, data_used, allow_change=allow_config_change
            )
            # Every check passed: record this start (and, for an allowed
            # change, what the earlier epochs used).
            identity = run_folder.record_start(
                logdir,
                config=config,
                data=data_used,
                resuming=resuming,
                epoch=epoch,
                changed=config_changed or data_changed,
            )
        if resuming:
            logging.info(
                "Resuming the interrupted run in %s after epoch %s.",
                logdir,
                epoch or 0,
            )
        try:
            history, callbacks, wall_clock = fit(
                built,
                logdir=logdir,
                identity=identity,
                epochs=epochs,
                eval_attack=eval_attack,
                extra_callbacks=extra_callbacks,
                validation_freq=validation_freq,
                progress=progress,
                norm=norm,
                seed=seed,
            )
            return finish(
                built,
                logdir=logdir,
                epsilon=epsilon,
                suite=suite,
                seeds=seeds,
                history=history,
                callbacks=callbacks,
                wall_clock=wall_clock,
            )
        except (ValueError, TypeError) as e:
            setattr(e, _RAISED_IN_TRAINING, True)
            raise


def format_results(results: dict, logdir: str) -> str:
    """A short human-readable summary of a finished run."""
    epochs = results["epochs"]
    epochs = f"{epochs} epoch" + ("" if epochs == 1 else "s")
    lines = [
        f"{results['method']} on {results['dataset']} "
        f"(epsilon {results['epsilon']:g}, {epochs}, "
        f"{results['train_seconds']:.1f} s training) -> {logdir}",
        f"  clean accuracy           {results['clean_accuracy']:.4f}",
    ]
    for name, value in results["robust_accuracy"].items():
        if name == "worst_case":
            name = "per-example minimum over the attacks"
        lines.append(f"  robust accuracy {name:<8} {value:.4f}")
    if results.get("masking_layers"):
        lines.append(
            "  layers that mask gradients: "
            + ", ".join(results["masking_layers"])
            + " (attacked through them, through BPDA and with Square)"
        )
    lines += evaluation.one_class_lines(results)
    masking = results.get("gradient_masking") or {}
    if masking.get("possible"):
        lines.append(
            "  POSSIBLE GRADIENT MASKING: " + "; ".join(masking["messages"])
        )
    lines.append(f"  on the first {results['num_eval_examples']} test examples")
    state = results.get("final_state", "last_model")
    if state != "last_model":  # a recipe chose it (tfadv.recipes)
        kept = (results.get("selection") or {}).get("kept_epoch")
        epoch = f", kept after epoch {kept}" if state.startswith("best") else ""
        lines.append(
            f"  evaluated and exported: {state.replace('_', ' ')}{epoch}"
        )
    return "\n".join(lines)
