"""Robust early stopping: keep the epoch with the best held-out robustness.

`KeepBest` is a callback that, after every epoch, attacks the classifier
(and, with weight averaging, its average) on a split held out from the
training data, and keeps a copy of the best state seen so far. At the end
of a run the kept state is the one `experiment.run` evaluates and exports
(`final="best"`), or the last one (`final="last"`, the state is then only
reported); results.json says which, and which epoch it was.

The rule is Rice et al.'s robust early stopping ("Overfitting in
adversarially robust deep learning", ICML 2020, `locuslab/robust_overfitting`
`train_cifar.py` with `--val`) with FastAT_Benchmark's choice between the
model and its average (`fzjcdt/FastAT_Benchmark`, `fast_at/at_base.py` and
`n_fgsm.py`); see docs/algorithms.md ("Robust early stopping"):

    c ← the model if PGD(model) ≥ PGD(average) else the average
    keep c if PGD(c) > best PGD, or PGD(c) = best PGD and clean(c) > best
    clean

with PGD-10 (step ε/4, one uniform random start) in inference mode, each
candidate attacked with the same seeds. Unlike the references' defaults,
tfadv never selects on the test set: the held-out examples are the last
`make_datasets.holdout_examples` of the training split, which training
never sees.

Example:
    pgd10 = tfadv.attacks.ProjectedGradient(
        epsilon=0.1, step_size=0.025, num_steps=10)
    keep = KeepBest(trainer, holdout_ds, pgd10)
    trainer.fit(train_ds, epochs=10, callbacks=[keep])
    trainer.classifier.set_weights(keep.best_weights())
"""

import gin
import keras
import numpy as np
from absl import logging

from tfadv import validation
from tfadv.attacks import pgd
from tfadv.recipes import averaging as averaging_lib

CANDIDATES = ("model", "average", "both")
FINAL = ("best", "last")
# Log names; "val_" puts them in TensorBoard's validation run.
HOLDOUT_PREFIX = "val_holdout_"
AVERAGE_HOLDOUT_PREFIX = "val_average_holdout_"

# Parameters written in epochs (`tfadv.configurables.epoch_parameters`): a
# run that trains a file's method for more or fewer epochs than the file
# scales them with it (tools/benchmark.py does).
EPOCH_PARAMETERS = ("KeepBest.start_epoch", "keep_best.start_epoch")
BEST_EPOCH_LOG = "selection/best_epoch"
# The selection attack: PGD-10 with step ε/4 (2/255 at 8/255 in both
# references), one uniform random start.
SELECTION_STEPS = 10


def selection_attack(epsilon: float, norm: str = "linf"):
    """PGD-10 with step ε/4 and a uniform random start: the references'."""
    return pgd.ProjectedGradient(
        epsilon=epsilon,
        step_size=epsilon / 4,
        num_steps=SELECTION_STEPS,
        norm=norm,
        start="uniform",
        name="pgd10",
    )


@gin.register(module="tfadv.recipes")
class KeepBest(keras.callbacks.Callback):
    """Keeps the state with the best robust accuracy on held-out data.

    After every epoch from `start_epoch` on, the classifier (and, with
    `averaging`, its average) is attacked on `holdout` in inference mode;
    the epoch's logs get `val_holdout_clean_accuracy` and
    `val_holdout_robust_accuracy` (and `val_average_holdout_*` for the
    average) and `selection/best_epoch`. The best state's weights, scores,
    epoch and kind (model or average) are variables, which
    `checkpoint_variables()` hands to the run's checkpoint, so a resumed
    run keeps the same best state as an uninterrupted one.

    Args:
        trainer: the compiled model being trained (its `classifier` when it
            has one).
        holdout: batches of `(images, labels)` held out from training,
            in a fixed order and without augmentation.
        attack: the selection attack (`selection_attack`: PGD-10, step
            ε/4, random start).
        averaging: the run's `WeightAveraging`, or None.
        candidates: which states compete: "model", "average" (needs
            `averaging`), "both" (FastAT_Benchmark's best-of; needs
            `averaging`), or None: "both" with averaging, else "model".
        final: which state `experiment.run` evaluates and exports at the
            end: "best" (the kept one) or "last" (the last epoch's: the
            average with averaging, else the model).
        start_epoch: epochs (counted from 0) before this one are neither
            evaluated nor kept (an average of the first high-learning-rate
            epochs is far from useful; FastAT_Benchmark starts at 0).
        evaluate_last: `experiment.run` also evaluates the last state(s)
            with the final suite and reports them beside the kept one.
        seed: the attack's seed, the same at every epoch and for every
            candidate, so that scores differ only through the weights.

    Raises:
        ValueError: a bad choice, or a candidate that needs averaging
            without it.
    """

    def __init__(
        self,
        trainer: keras.Model,
        holdout,
        attack,
        *,
        averaging: averaging_lib.WeightAveraging | None = None,
        candidates: str | None = None,
        final: str = "best",
        start_epoch: int = 0,
        evaluate_last: bool = True,
        seed: int = 0,
    ):
        super().__init__()
        if candidates is None:
            candidates = "both" if averaging is not None else "model"
        self.candidates = validation.choice(
            "KeepBest.candidates",
            candidates,
            CANDIDATES,
            hint='"model" selects the trained weights, "average" the weight '
            'average, "both" the better of the two at each epoch.',
        )
        if candidates != "model" and averaging is None:
            raise ValueError(
                f"KeepBest.candidates = {candidates!r} selects among "
                "weight averages, but the run averages no weights. Stack "
                "recipes/ema.gin before recipes/keep_best.gin (or pass "
                "averaging=WeightAveraging(...)), or set "
                'keep_best.candidates = "model".'
            )
        self.final = validation.choice("KeepBest.final", final, FINAL)
        self.start_epoch = validation.count(
            "KeepBest.start_epoch", start_epoch, meaning="first epoch kept"
        )
        self.evaluate_last = validation.boolean(
            "KeepBest.evaluate_last", evaluate_last
        )
        if not callable(attack):
            raise TypeError(
                f"KeepBest.attack must be a tfadv.attacks.Attack; got "
                f"{attack!r}."
            )
        self.trainer = trainer
        self.classifier = averaging_lib.classifier_of(trainer)
        self.holdout = holdout
        self.attack = attack
        self.averaging = averaging
        self.seed = seed
        self._scorer = averaging_lib.Scorer(
            self.classifier, holdout, attack, seed=seed, who="KeepBest.attack"
        )
        with trainer.distribute_strategy.scope():
            self.best_variables = averaging_lib.shadow_variables(
                self.classifier.weights, "best"
            )
            # Scores in float64: a resumed run compares with the very
            # values the uninterrupted one kept.
            self.best_robust = keras.Variable(
                -1.0, dtype="float64", trainable=False, name="best_robust"
            )
            self.best_clean = keras.Variable(
                -1.0, dtype="float64", trainable=False, name="best_clean"
            )
            self.best_epoch = keras.Variable(
                -1, dtype="int64", trainable=False, name="best_epoch"
            )
            # 0: the model, 1: the average.
            self.best_is_average = keras.Variable(
                0, dtype="int64", trainable=False, name="best_is_average"
            )
        self.last_scores = {}

    def checkpoint_variables(self) -> dict:
        """The kept state and its record, by a stable name."""
        names = {f"keep_best|{i}": v for i, v in enumerate(self.best_variables)}
        names.update(
            {
                "keep_best|robust": self.best_robust,
                "keep_best|clean": self.best_clean,
                "keep_best|epoch": self.best_epoch,
                "keep_best|is_average": self.best_is_average,
            }
        )
        return names

    @staticmethod
    def _number(variable):
        return keras.ops.convert_to_numpy(variable.value).item()

    @property
    def kept_epoch(self) -> int | None:
        """The kept state's epoch (counted from 0), or None."""
        epoch = int(self._number(self.best_epoch))
        return None if epoch < 0 else epoch

    @property
    def kept_state(self) -> str | None:
        """The kept state, "model" or "average", or None."""
        if self.kept_epoch is None:
            return None
        return "average" if self._number(self.best_is_average) else "model"

    def best_weights(self) -> list[np.ndarray]:
        """The kept state's weights, in `classifier.get_weights()` order.

        Raises:
            ValueError: no epoch has been kept yet.
        """
        if self.kept_epoch is None:
            raise ValueError(
                "KeepBest has kept no epoch yet (training ran no epoch at "
                f"or after start_epoch = {self.start_epoch})."
            )
        return [
            keras.ops.convert_to_numpy(v.value) for v in self.best_variables
        ]

    def _scores(self, classifier) -> dict:
        del classifier  # the candidate is in self.classifier
        return self._scorer()

    def on_epoch_end(self, epoch, logs=None):
        logs = {} if logs is None else logs
        if epoch < self.start_epoch:
            return
        scores = {}
        if self.candidates in ("model", "both"):
            scores["model"] = self._scores(self.classifier)
            for name, value in scores["model"].items():
                logs[HOLDOUT_PREFIX + name] = value
        if self.candidates in ("average", "both"):
            with self.averaging.average_loaded() as classifier:
                scores["average"] = self._scores(classifier)
            for name, value in scores["average"].items():
                logs[AVERAGE_HOLDOUT_PREFIX + name] = value
        self.last_scores = scores
        # FastAT_Benchmark: the model unless the average is strictly more
        # robust; then a strict improvement, clean accuracy breaking ties.
        chosen = "model" if "model" in scores else "average"
        if (
            len(scores) == 2
            and scores["average"]["robust_accuracy"]
            > scores["model"]["robust_accuracy"]
        ):
            chosen = "average"
        robust = scores[chosen]["robust_accuracy"]
        clean = scores[chosen]["clean_accuracy"]
        best_robust = self._number(self.best_robust)
        best_clean = self._number(self.best_clean)
        if robust > best_robust or (
            robust == best_robust and clean > best_clean
        ):
            weights = (
                self.averaging.average_weights()
                if chosen == "average"
                else self.classifier.get_weights()
            )
            for variable, value in zip(
                self.best_variables, weights, strict=True
            ):
                variable.assign(value)
            self.best_robust.assign(robust)
            self.best_clean.assign(clean)
            self.best_epoch.assign(epoch)
            self.best_is_average.assign(int(chosen == "average"))
            logging.info(
                "Keep-best: epoch %d's %s is the best so far (held-out "
                "robust accuracy %.4f, clean %.4f).",
                epoch + 1,
                chosen,
                robust,
                clean,
            )
        logs[BEST_EPOCH_LOG] = float(self._number(self.best_epoch) + 1)

    def results_info(self) -> dict:
        """What results.json records of the selection."""
        kept = self.kept_epoch
        return {
            "selection": {
                "rule": self.final,
                "candidates": self.candidates,
                "kept_epoch": None if kept is None else kept + 1,
                "kept_state": self.kept_state,
                "holdout_robust_accuracy": (
                    None if kept is None else self._number(self.best_robust)
                ),
                "holdout_clean_accuracy": (
                    None if kept is None else self._number(self.best_clean)
                ),
                "start_epoch": self.start_epoch,
                "attack": repr(self.attack),
            }
        }


@gin.register(module="tfadv.recipes")
def keep_best(
    trainer: keras.Model,
    *,
    datasets,
    averaging: averaging_lib.WeightAveraging | None = None,
    epsilon: float,
    norm: str = "linf",
    attack=None,
    candidates: str | None = None,
    final: str = "best",
    start_epoch: int = 0,
    evaluate_last: bool = True,
    seed: int = 0,
) -> KeepBest:
    """Builds `KeepBest` for `experiment.run` on the run's held-out split.

    Bound by `recipes/keep_best.gin` as `run.selection = @keep_best`, which
    also holds out `make_datasets.holdout_examples` training examples.

    Args:
        trainer: the run's built trainer.
        datasets: the run's `tfadv.data.Datasets`; its `holdout` split is
            the selection data.
        averaging: the run's `WeightAveraging`, or None.
        epsilon: the run's budget (of the default attack).
        norm: the run's threat model (of the default attack).
        attack: the selection attack; None: `selection_attack(epsilon,
            norm)`, PGD-10 with step ε/4 and a random start.
        candidates: see `KeepBest`.
        final: see `KeepBest`.
        start_epoch: see `KeepBest`.
        evaluate_last: see `KeepBest`.
        seed: see `KeepBest`.

    Raises:
        ValueError: the datasets hold nothing out, or a bad setting.
    """
    if datasets.holdout is None:
        raise ValueError(
            "Keep-best selects on examples held out from training, but "
            "make_datasets.holdout_examples is 0, so there are none (tfadv "
            "never selects on the test set). Set "
            "make_datasets.holdout_examples to the number of training "
            "examples to hold out (recipes/keep_best.gin sets 1000, as "
            "Rice et al. and FastAT_Benchmark do)."
        )
    if attack is None:
        attack = selection_attack(epsilon, norm)
    return KeepBest(
        trainer,
        datasets.holdout,
        attack,
        averaging=averaging,
        candidates=candidates,
        final=final,
        start_epoch=start_epoch,
        evaluate_last=evaluate_last,
        seed=seed,
    )


def final_states(
    classifier: keras.Model,
    *,
    averaging: averaging_lib.WeightAveraging | None = None,
    selection: KeepBest | None = None,
) -> tuple[str, dict]:
    """The states a run's final evaluation covers, and the one it exports.

    The exported state: the kept one (`selection` with `final="best"`,
    labelled "best_model" or "best_average"), else the last average (with
    `averaging`), else the last model. Beside it, the last states are
    evaluated too: the last model when averaging's `evaluate_model` (or a
    selection's `evaluate_last`) asks for it, and the last average after a
    selection with `evaluate_last`.

    Returns:
        `(exported label, {label: weights})`, the exported state first.
    """
    last_model = classifier.get_weights()
    last_average = averaging.average_weights() if averaging else None
    states = {}
    if selection is not None and selection.final == "best":
        if selection.kept_state is None:
            logging.warning(
                "Keep-best kept no epoch (none ran at or after start_epoch "
                "= %d); the last state is evaluated and exported.",
                selection.start_epoch,
            )
        else:
            states["best_" + selection.kept_state] = selection.best_weights()
    if states:
        if selection.evaluate_last:
            if last_average is not None:
                states["last_average"] = last_average
            if averaging is None or averaging.evaluate_model:
                states["last_model"] = last_model
    elif last_average is not None:
        states["last_average"] = last_average
        last_wanted = averaging.evaluate_model or (
            selection is not None and selection.evaluate_last
        )
        if last_wanted:
            states["last_model"] = last_model
    else:
        states["last_model"] = last_model
    return next(iter(states)), states
