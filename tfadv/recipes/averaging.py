"""Weight averaging: an exponential moving average of a classifier's state.

`WeightAveraging` is a callback that keeps, beside the trained weights, an
exponential moving average (EMA) of every weight of the classifier, the
BatchNorm moving statistics included, updated after every training step:

    A ← θ                      after the first step
    A ← τ·A + (1 − τ)·θ        after every later step

This is the averaging of FastAT_Benchmark (`fzjcdt/FastAT_Benchmark`,
`fast_at/n_fgsm.py` and every method with `weight_average: true`), which
averages the whole PyTorch `state_dict` (running statistics included) with
τ = 0.9995 from the first optimizer step, with no warm-up and no bias
correction; see docs/algorithms.md ("Weight averaging").

Why a callback and not Keras's `optimizer.use_ema`: the optimizer's average
covers the trainable variables only (BatchNorm statistics would be the
trained model's, wrong for the averaged weights), and it is taken inside
`optimizer.apply`, so a method that perturbs the weights around the update
(AWP) would average perturbed weights. The callback's update runs after the
whole compiled train step has returned, when every perturbation made inside
the step has been removed again.

The update is one compiled function over all the variables. Under a
distribution strategy the average lives in variables made under the
trainer's strategy scope and is updated in cross-replica context, where the
replicas' weights are equal (BatchNorm statistics read as their replica
mean). One average per training step: with `steps_per_execution > 1` Keras
calls batch callbacks once per several steps, which is refused; Free-AT and
DEAT, whose one train step makes several optimizer updates (the replays),
are averaged once per minibatch, not once per replay as FastAT_Benchmark's
Free-AT does.

Example:
    averaging = WeightAveraging(trainer, decay=0.999)
    trainer.fit(train_ds, epochs=10, callbacks=[averaging])
    with averaging.average_loaded():
        trainer.classifier.save("averaged.keras")
"""

import contextlib

import gin
import keras
import numpy as np
import tensorflow as tf

from tfadv import validation
from tfadv.attacks import base as attack_base
from tfadv.attacks import wrappers

# FastAT_Benchmark's τ (configs/cifar10/*.yaml, `ema_decay: 0.9995`).
DEFAULT_DECAY = 0.9995
VALIDATION_PREFIX = "val_average_"


def classifier_of(trainer: keras.Model) -> keras.Model:
    """The classifier a tfadv trainer wraps, or the model itself."""
    return getattr(trainer, "classifier", trainer)


def shadow_variables(weights, prefix: str) -> list:
    """Zero non-trainable variables shaped as `weights`, `<prefix>_<i>`.

    Made in the caller's strategy scope; a recipe keeps a copy of the
    classifier's state in them (its average, the best epoch's weights).
    """
    return [
        keras.Variable(
            keras.ops.zeros(w.shape, w.dtype),
            trainable=False,
            name=f"{prefix}_{i}",
        )
        for i, w in enumerate(weights)
    ]


def check_steps_per_execution(steps_per_execution) -> None:
    """Refuses a trainer compiled to run several steps per callback.

    Raises:
        ValueError: `steps_per_execution` is not 1.
    """
    if int(steps_per_execution) != 1:
        raise ValueError(
            f"Weight averaging needs steps_per_execution = 1, got "
            f"{steps_per_execution}: Keras calls a callback once per "
            f"{steps_per_execution} training steps, so the average would "
            "skip the weights in between and no longer be an average of "
            "every step. Set run.steps_per_execution = 1 (the default), or "
            "train without recipes/ema.gin."
        )


@gin.register(module="tfadv.recipes")
class WeightAveraging(keras.callbacks.Callback):
    """An EMA of a classifier's weights and BatchNorm statistics.

    Pass it to `fit` (`experiment.run` does, through `run.weight_averaging`
    and `recipes/ema.gin`). The average is in `average_variables`, in the
    order of `classifier.weights`; `average_weights()` returns it as NumPy
    arrays and `average_loaded()` puts it into the classifier for a while.

    After each validation the average is evaluated on the same validation
    data with the trainer's `eval_attack` (clean and robust accuracy, by a
    `Scorer`, seeded the same at every epoch), and the
    epoch's logs get `val_average_clean_accuracy` and
    `val_average_robust_accuracy`, which the TensorBoard callback writes
    beside the model's `val_clean_accuracy` and `val_robust_accuracy`.

    Checkpoints: `checkpoint_variables()` names the average and its step
    count for `tfadv.run_folder.ResumableCheckpoint`, which saves them with
    the weights, so a resumed run continues the average exactly.

    Args:
        trainer: the compiled model to train (a tfadv trainer: its
            `classifier` is averaged; any other model: the model itself).
        decay: τ, in [0, 1): the weight of the old average at each step.
            The horizon is about 1 / (1 − τ) steps (2000 for 0.9995).
        validation_data: batches of `(images, labels)` the average is
            validated on after each epoch with validation, or None.
        evaluate_model: `experiment.run`'s final evaluation also runs the
            suite on the trained (not averaged) weights and reports both.
        seed: the seed of the validation attack's random start.

    Raises:
        ValueError: `decay` outside [0, 1), or a trainer compiled with
            `steps_per_execution > 1`.
    """

    def __init__(
        self,
        trainer: keras.Model,
        *,
        decay: float = DEFAULT_DECAY,
        validation_data: tf.data.Dataset | None = None,
        evaluate_model: bool = True,
        seed: int = 0,
    ):
        super().__init__()
        self.decay = validation.in_interval(
            "WeightAveraging.decay",
            decay,
            0.0,
            1.0,
            high_open=True,
            hint="It is the weight of the old average at each step "
            "(FastAT_Benchmark: 0.9995, a horizon of 2000 steps).",
        )
        validation.boolean("WeightAveraging.evaluate_model", evaluate_model)
        self.evaluate_model = evaluate_model
        self.validation_data = validation_data
        self.seed = seed
        check_steps_per_execution(getattr(trainer, "steps_per_execution", 1))
        self.trainer = trainer
        self.classifier = classifier_of(trainer)
        if not self.classifier.weights:
            raise ValueError(
                f"{self.classifier.name} has no weights yet; build the "
                "trainer (trainer.build(input_shape)) before making its "
                "WeightAveraging."
            )
        with trainer.distribute_strategy.scope():
            self.average_variables = shadow_variables(
                self.classifier.weights, "average"
            )
            self.steps = keras.Variable(
                0, dtype="int64", trainable=False, name="average_steps"
            )
        self._update = tf.function(self._update_average)
        self._scorer = None  # of the validation data, made when first used

    def _update_average(self):
        # The first update copies the weights (FastAT_Benchmark's average
        # starts as the model's state), later ones average.
        first = tf.equal(self.steps.value, 0)
        for average, weight in zip(
            self.average_variables, self.classifier.weights, strict=True
        ):
            value = tf.convert_to_tensor(weight.value)
            decay = tf.cast(self.decay, value.dtype)
            mixed = decay * average.value + (1 - decay) * value
            average.assign(tf.where(first, value, mixed))
        self.steps.assign_add(1)

    def update(self) -> None:
        """Folds the classifier's current weights into the average."""
        self._update()

    def on_train_begin(self, logs=None):
        check_steps_per_execution(getattr(self.model, "steps_per_execution", 1))

    def on_train_batch_end(self, batch, logs=None):
        self.update()

    def checkpoint_variables(self) -> dict:
        """The average and its step count, by a stable name."""
        names = {
            f"weight_averaging|{i}": v
            for i, v in enumerate(self.average_variables)
        }
        names["weight_averaging|steps"] = self.steps
        return names

    @property
    def num_updates(self) -> int:
        """The training steps averaged so far."""
        return int(keras.ops.convert_to_numpy(self.steps.value))

    def average_weights(self) -> list[np.ndarray]:
        """The average, as `classifier.get_weights()` orders the weights.

        Before the first step this is the classifier's own weights.
        """
        if self.num_updates == 0:
            return self.classifier.get_weights()
        return [
            keras.ops.convert_to_numpy(v.value) for v in self.average_variables
        ]

    @contextlib.contextmanager
    def average_loaded(self):
        """Puts the average into the classifier, and the weights back."""
        trained = self.classifier.get_weights()
        self.classifier.set_weights(self.average_weights())
        try:
            yield self.classifier
        finally:
            self.classifier.set_weights(trained)

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or "val_loss" not in logs:
            return  # no validation this epoch
        if self.validation_data is None:
            return
        if self._scorer is None:
            self._scorer = Scorer(
                self.classifier,
                self.validation_data,
                getattr(self.trainer, "eval_attack", None),
                seed=self.seed,
                who="The trainer's eval_attack",
            )
        with self.average_loaded():
            scores = self._scorer()
        logs[VALIDATION_PREFIX + "clean_accuracy"] = scores["clean_accuracy"]
        if "robust_accuracy" in scores:
            logs[VALIDATION_PREFIX + "robust_accuracy"] = scores[
                "robust_accuracy"
            ]

    def results_info(self) -> dict:
        """What results.json records of the averaging."""
        return {
            "weight_averaging": {
                "enabled": True,
                "decay": self.decay,
                "steps_averaged": self.num_updates,
                "warm_up": "none: the first step copies the weights",
                "averaged": "every weight of the classifier, BatchNorm "
                "moving statistics included",
            }
        }


class Scorer:
    """Clean and robust accuracy of a classifier on fixed data, compiled once.

    Each batch is classified in inference mode, then attacked (through
    `tfadv.attacks.wrappers.DefinedGradients`, as the final evaluation
    does) with the seed `(seed, batch index)`, so every call attacks with
    the same randomness and scores differ only through the weights. A
    point is robust when it is classified correctly clean and under the
    attack. The step is traced once: swapping other weights into the same
    classifier (`set_weights`) reuses it.

    Args:
        classifier: maps [0, 1] images to logits.
        dataset: batches of `(images, labels)` in a fixed order.
        attack: a `tfadv.attacks.Attack` (not a training perturbation), or
            None for clean accuracy alone.
        seed: the first half of every batch's attack seed.
        who: names the attack's owner in an error.

    Raises:
        ValueError: `attack` is a training-only perturbation.
    """

    def __init__(self, classifier, dataset, attack, *, seed=0, who="attack"):
        attack_base.evaluation_attack(attack, who)
        self.classifier = classifier
        self.dataset = dataset
        self.attack = attack
        self.seed = int(seed)
        self._score = None

    def _compile(self):
        classifier, attack = self.classifier, self.attack
        view = wrappers.DefinedGradients(classifier)
        x_spec, _ = self.dataset.element_spec
        x_spec = tf.TensorSpec([None, *x_spec.shape[1:]], x_spec.dtype)

        def correct(x, y):
            logits = classifier(x, training=False)
            return tf.equal(tf.argmax(logits, -1, output_type=tf.int32), y)

        def score(x, y, batch_seed):
            clean = correct(x, y)
            if attack is None:
                return clean, clean
            x_adv = attack(view, x, y, seed=batch_seed, training=False)
            return clean, tf.logical_and(clean, correct(x_adv, y))

        signature = [
            x_spec,
            tf.TensorSpec([None], tf.int32),
            tf.TensorSpec([2], tf.int32),
        ]
        return tf.function(score, input_signature=signature)

    def __call__(self) -> dict:
        """The current weights' scores.

        Returns:
            `{"clean_accuracy": float, "robust_accuracy": float}`, the
            second only with an attack.
        """
        if self._score is None:
            self._score = self._compile()
        clean = robust = total = 0
        for index, (x, y) in enumerate(self.dataset):
            y = tf.cast(tf.reshape(y, [-1]), tf.int32)
            seed = tf.constant([self.seed, index], tf.int32)
            batch_clean, batch_robust = self._score(x, y, seed)
            clean += int(tf.reduce_sum(tf.cast(batch_clean, tf.int32)))
            robust += int(tf.reduce_sum(tf.cast(batch_robust, tf.int32)))
            total += int(y.shape[0])
        if total == 0:
            raise ValueError("The data to score the classifier on is empty.")
        scores = {"clean_accuracy": clean / total}
        if self.attack is not None:
            scores["robust_accuracy"] = robust / total
        return scores
