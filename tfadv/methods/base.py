"""The base class every training method subclasses: the method contract.

A method is a `keras.Model` that wraps a classifier. What every method
shares, and what a new one plugs into, is declared here:

- **The training attack.** `train_attack` (any `tfadv.attacks.Attack`) is
  an argument of every method; when it is None the method builds its
  paper's default (`default_train_attack`) at `epsilon`, which is then
  required: ε depends on the dataset, so tfadv's methods have no default
  for it (the error names the paper's, `paper_epsilon`; a subclass may
  still declare a `default_epsilon` of its own). `trainer.epsilon` and
  `trainer.threat_model` always come from that attack, so a run has one
  ε.
- **The step.** `train_step` unpacks and checks the batch, calls
  `minibatch_update(x, y)`, and counts the minibatch. The default update is
  the template "attack outside the tape (`perturb`), one loss
  (`compute_adversarial_loss`), one optimizer update"; methods with another
  structure (Free-AT's replays, YOPO's accumulated passes) override
  `minibatch_update`.
- **Epoch-level control.** `on_epoch_begin(epoch)` and
  `on_epoch_end(epoch, logs) -> dict` (values added to the epoch's logs, so
  TensorBoard and the history get them), `results_info() -> dict` (merged
  into results.json), and `callbacks()` (the callbacks the method needs:
  the hook caller first). `tfadv.train` installs them; a plain-`fit` user
  passes them in one line:

      trainer.fit(train_ds, epochs=10, callbacks=trainer.callbacks())

- **Step counts that change between epochs.** `add_step_count` makes a
  checkpointed integer variable that the step reads as a Python int when
  it is traced (`step_count`), so loops over it unroll. `set_step_count`
  changes it; the next epoch's first batch then runs a retraced step
  (`fit` reads `train_function` at every batch, and the hook caller
  rebuilds it whenever a count differs from the traced value).
- **Step controllers.** `step_controller=` takes a
  `tfadv.methods.controllers.StepController` (M+, DEAT-d, DEAT-p) that
  drives the method's step count named by `step_controller_count` (the
  training attack's steps for PGD-AT, TRADES and MART, the replays for
  DEAT) between epochs, from what the step reports to it (`observe`).
- **Layers that mask gradients.** `masking_layers()` names them (by
  default the classifier's layers with `masks_gradients = True`); the
  final evaluation then adds BPDA and gradient-free attacks.
- **Minibatch counting.** `minibatches` counts minibatches, whatever the
  number of optimizer updates per minibatch; a
  `tfadv.schedules.PerMinibatch` learning rate in the optimizer is bound
  to it at `compile`.
- **The input gradient of the update's own backward pass.**
  `apply_gradients(tape, scaled_loss, inputs=x_adv)` differentiates once
  with respect to the weights and the input together.
- **A Keras citizen.** Every subclass is a registered Keras serializable:
  `trainer.save("x.keras")` (and `ModelCheckpoint("x.keras")`) writes a
  file that `keras.saving.load_model` loads after `import tfadv` (a
  method defined elsewhere: after importing its module), with the
  classifier, the attacks, the step controller, every weight (step counts,
  per-layer rates, the seed generator's state), the optimizer and its
  state, so `fit` continues where it stopped. The trainer is built as
  soon as its classifier is, so `BackupAndRestore` and `save_weights`
  work before the first step. `compile(metrics=[...])` and
  `weighted_metrics=` are reported on the clean and adversarial logits
  (`clean_<name>`, `adv_<name>`; `robust_<name>` on validation), and
  `fit(sample_weight=...)` / `class_weight=` weigh each example's loss
  (see `sample_weight`); `compile(loss=...)` is refused, because a method
  defines its own loss.
- **The classifier** maps [0, 1] images to logits, one per class: a
  functional, Sequential or subclassed `keras.Model` (YOPO-style methods
  need a functional or Sequential one to split). A probability output
  (a final softmax) or an output that is not `(batch, num_classes)` is
  refused when the classifier is first seen built.
- **Labels** are integer class indices of shape `(batch,)` or
  `(batch, 1)`, or one-hot rows of width num_classes (converted by
  argmax); with `check_inputs`, fractional float labels, soft labels and
  labels outside [0, num_classes) fail the step with a clear message.
"""

import math
import threading

import keras
import numpy as np
import tensorflow as tf

from tfadv import layers
from tfadv import schedules
from tfadv import validation
from tfadv.attacks import base as attack_base
from tfadv.attacks import objectives
from tfadv.methods import controllers
from tfadv.models import common

# The metric names every method reports, so curves overlay in TensorBoard.
LOSS = "loss"
CLEAN_ACCURACY = "clean_accuracy"
ADV_ACCURACY = "adv_accuracy"
ROBUST_ACCURACY = "robust_accuracy"
# The logits a user metric is computed on, the prefixes of its logged names:
# clean and adversarial in training, clean and robust in validation.
USER_METRIC_PREFIXES = ("clean", "adv", "robust")
_TRACKER_OF_PREFIX = {
    "clean": CLEAN_ACCURACY,
    "adv": ADV_ACCURACY,
    "robust": ROBUST_ACCURACY,
}


def num_replicas() -> int:
    """Replicas in the current strategy (1 outside any strategy)."""
    return tf.distribute.get_strategy().num_replicas_in_sync


class EpochHooks(keras.callbacks.Callback):
    """Calls a trainer's epoch hooks and keeps its step counts traced.

    `on_epoch_begin` first retraces the training step when a step count
    differs from the value the step was traced with (a hook or a restored
    checkpoint changed it), then calls `trainer.on_epoch_begin(epoch)`.
    `on_epoch_end` adds what `trainer.on_epoch_end` returns to the epoch's
    logs, so callbacks after it (TensorBoard, the history) record it. The
    hooks run eagerly, outside the compiled step.

    Args:
        trainer: the `AdversarialTrainer` whose hooks to call.
    """

    def __init__(self, trainer: "AdversarialTrainer"):
        super().__init__()
        self.trainer = trainer

    def on_epoch_begin(self, epoch, logs=None):
        controller = self.trainer.step_controller
        if controller is not None:
            controller.on_epoch_begin(epoch)
        self.trainer.on_epoch_begin(epoch)
        self.trainer.retrace_if_counts_changed()

    def on_epoch_end(self, epoch, logs=None):
        extra = {}
        controller = self.trainer.step_controller
        if controller is not None:
            extra.update(controller.on_epoch_end(epoch, logs))
        # A hook that returns None has nothing to log.
        extra.update(self.trainer.on_epoch_end(epoch, logs) or {})
        if extra and logs is not None:
            logs.update(extra)


class _BatchState(threading.local):
    """The batch a step is working on, per thread.

    MirroredStrategy traces each replica's step in a thread of its own, so
    what the step sets for its batch (the sample weights) is thread-local.
    """

    sample_weight = None


class _MetricGroups:
    """The user's metrics by logit kind, outside Keras's state tracking.

    `compile` may run after the trainer is built, when Keras refuses new
    tracked state; the metrics need no tracking (`metrics` lists them, and
    saving finds them through `user_metrics`).
    """

    def __init__(self):
        self.groups = {}
        self.specs = ([], [])


class BatchWeightedCrossEntropy(keras.losses.SparseCategoricalCrossentropy):
    """Cross-entropy on logits, weighted by the step's sample weights.

    A `keras.losses.SparseCategoricalCrossentropy(from_logits=True)` whose
    `sample_weight` defaults to the weights of the batch the trainer's step
    is working on (`AdversarialTrainer.sample_weight`), so every method's
    `self.cross_entropy(y, logits)` honours `fit(sample_weight=...)` and
    `class_weight=` without passing them around. The reduction is Keras's:
    the batch mean of `w_i · CE_i`, divided by the replicas.

    Args:
        state: the trainer's `_BatchState`.
    """

    def __init__(self, state: _BatchState, **kwargs):
        super().__init__(from_logits=True, **kwargs)
        self._state = state

    def __call__(self, y_true, y_pred, sample_weight=None):
        if sample_weight is None:
            sample_weight = self._state.sample_weight
        return super().__call__(y_true, y_pred, sample_weight=sample_weight)


def classifier_image_shape(classifier: keras.Model) -> tuple | None:
    """The classifier's input shape without the batch axis, if known.

    From `input_shape` (functional and Sequential models) or, for a built
    subclassed model, from the shape it was built with; None otherwise.
    """
    try:
        shape = classifier.input_shape
    except (AttributeError, ValueError):
        shape = None
    if shape is None:
        build_config = classifier.get_build_config() or {}
        shape = build_config.get("input_shape")
    if shape is None or not isinstance(shape, (tuple, list)) or not shape:
        return None
    if isinstance(shape[0], (tuple, list)):
        return None  # several inputs
    return tuple(shape[1:])


def _metric_list(argument: str, metrics, method: str) -> list:
    """`compile`'s `metrics` or `weighted_metrics` as a flat list."""
    if metrics is None:
        return []
    if isinstance(metrics, (str, keras.metrics.Metric)) or callable(metrics):
        metrics = [metrics]
    if isinstance(metrics, dict) or not isinstance(metrics, (list, tuple)):
        raise ValueError(
            f"{method} has one output, the classifier's logits, so "
            f"compile({argument}=...) takes one list of metrics (names, "
            f"functions or keras.metrics.Metric objects); got {metrics!r}."
        )
    return list(metrics)


def _resolve_metric(spec, method: str) -> keras.metrics.Metric | None:
    """A user metric as a `keras.metrics.Metric` on (labels, logits).

    None for accuracy, which every method reports already. Names resolve
    as `compile` resolves them for integer labels and logits.
    """
    if isinstance(spec, str):
        if spec in ("accuracy", "acc", "sparse_categorical_accuracy"):
            return None
        if spec in ("crossentropy", "ce", "sparse_categorical_crossentropy"):
            return keras.metrics.SparseCategoricalCrossentropy(
                name="crossentropy", from_logits=True
            )
        try:
            spec = keras.metrics.get(spec)
        except ValueError as e:
            raise ValueError(
                f"{method}: unknown metric {spec!r} in compile(metrics=...); "
                "give a Keras metric name or a keras.metrics.Metric."
            ) from e
    if isinstance(spec, keras.metrics.Metric):
        return spec
    if callable(spec):
        name = getattr(spec, "__name__", type(spec).__name__)
        return keras.metrics.MeanMetricWrapper(spec, name=name)
    raise ValueError(
        f"{method} computes metrics on (labels, logits); compile(metrics="
        f"...) takes names, functions or keras.metrics.Metric objects, not "
        f"{spec!r}."
    )


def _probability_activation(model) -> str | None:
    """The name of a final softmax or sigmoid of a layered model, if any."""
    layer = model
    # Descend into nested models through their last layer.
    while isinstance(layer, keras.Model):
        inner = getattr(layer, "layers", None)
        if not inner:
            return None
        layer = inner[-1]
    if isinstance(layer, keras.layers.Softmax):
        return "softmax"
    activation = getattr(layer, "activation", None)
    name = getattr(activation, "__name__", "")
    if name in ("softmax", "sigmoid"):
        return name
    return None


def _multi_worker(strategy) -> bool:
    """Whether `strategy` spans several workers (MultiWorkerMirrored)."""
    extended = getattr(strategy, "extended", None)
    in_multi_worker_mode = getattr(extended, "_in_multi_worker_mode", None)
    return isinstance(
        strategy, tf.distribute.MultiWorkerMirroredStrategy
    ) and bool(in_multi_worker_mode and in_multi_worker_mode())


class AdversarialTrainer(keras.Model):
    """A Keras model that trains a wrapped classifier with one method.

    The trainer owns the classifier, the method's attacks, its metric
    trackers and one `SeedGenerator` for all in-step randomness. `call`
    delegates to the classifier, so `predict`, `evaluate` and the TensorBoard
    graph see the classifier; `model.keras` exports are made from
    `trainer.classifier` and load with plain Keras. The module docstring
    lists the contract a method implements.

    Train logs are `loss`, `clean_accuracy` and `adv_accuracy`; validation
    logs are `loss`, `clean_accuracy` and `robust_accuracy` (Keras prefixes
    them with `val_`). `test_step` reports robust accuracy under
    `eval_attack`, so `fit(validation_data=...)` gives robust validation for
    free.

    Saving: `trainer.save("x.keras")` writes the whole trainer, which
    `keras.saving.load_model("x.keras")` rebuilds after `import tfadv`
    (classifier, attacks, controller, weights, optimizer state); a
    subclassed classifier, and any custom object an attack holds, must be
    a registered Keras serializable for that.

    Writing a new method: subclass, implement `default_train_attack` and
    `compute_adversarial_loss` (or `minibatch_update`), and register it
    with `gin.register` (the Keras registration is automatic). Compute
    hand-written loss terms with `replica_mean` and the cross-entropy with
    `self.cross_entropy`, so sample weights apply. The README's "Writing a
    new method" section has a complete example.

    Args:
        classifier: a Keras model mapping [0, 1] images to logits, one per
            class (functional, Sequential or subclassed).
        train_attack: the attack that makes the training examples; None
            builds the method's paper default at `epsilon`.
        epsilon: the budget of the default training attack, in pixel units;
            required when `train_attack` is None for a method with a
            training attack (tfadv sets no dataset-specific default; each
            method documents its paper's value). Given together with
            `train_attack`, it must equal the attack's epsilon.
        eval_attack: the attack `test_step` uses for robust accuracy, or None
            for clean validation only.
        attack_training_mode: run the classifier in training mode (batch
            statistics, dropout, moving averages updated) while attacking;
            None is the method's paper default (`default_attack_training_
            mode`, documented by each method).
        weight_decay: coupled L2 weight decay `w·θ` added to every gradient
            (PyTorch `SGD(weight_decay=w)`), applied to all trainable
            variables. Keep the optimizer's own decoupled `weight_decay`
            unset when using this.
        check_inputs: assert inside the step that images are finite and in
            [0, 1] and labels whole-number classes in [0, num_classes) (or
            one-hot rows), not under `jit_compile`, where XLA drops
            assertions; `tfadv.train` checks its data before training
            either way.
        seed: seed of the method's `SeedGenerator`.
        step_controller: a `tfadv.methods.controllers.StepController` that
            changes the method's step count between epochs (M+PGD,
            M+TRADES, M+MART, DEAT), or None. Its `max_steps` must be the
            training attack's `num_steps`, which then is the cap.
        **kwargs: passed to `keras.Model` (e.g. `name`).

    Raises:
        TypeError: the classifier is not a Keras model, or the attack is not
            of a kind the method can run.
        ValueError: no budget for a method with a training attack,
            `epsilon` disagrees with `train_attack`, the classifier does
            not output logits (one per class), or another argument is out
            of range.
    """

    train_metric_names = (LOSS, CLEAN_ACCURACY, ADV_ACCURACY)
    test_metric_names = (LOSS, CLEAN_ACCURACY, ROBUST_ACCURACY)
    # Non-trainable state the step changes on purpose (besides BatchNorm
    # statistics, seeds and the optimizer).
    mutable_state_paths = ("minibatches",)
    # The budget of the method's paper, named in the error when neither
    # epsilon nor train_attack is given (never used silently); None for
    # methods without a training attack.
    paper_epsilon: float | None = None
    # A budget the subclass chooses to default to (tfadv's methods set
    # none: epsilon is dataset-specific).
    default_epsilon: float | None = None
    default_attack_training_mode: bool = False
    # The attack classes the method can run (methods that step the
    # perturbation themselves need a ProjectedGradient's settings).
    train_attack_types: tuple = (attack_base.Attack,)
    # The step count a step controller may drive (None: none).
    step_controller_count: str | None = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # Every method loads with keras.saving.load_model once its module
        # is imported (package "tfadv" for tfadv's own).
        attack_base.register_serializable(cls)

    def __init__(
        self,
        classifier: keras.Model,
        *,
        train_attack: attack_base.Attack | None = None,
        epsilon: float | None = None,
        eval_attack: attack_base.Attack | None = None,
        attack_training_mode: bool | None = None,
        weight_decay: float = 0.0,
        check_inputs: bool = True,
        seed: int | None = None,
        step_controller: controllers.StepController | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(classifier, keras.Model):
            raise TypeError(
                "classifier must be a keras.Model mapping images in [0, 1] "
                f"to logits; got {type(classifier).__name__}."
            )
        self.classifier = classifier
        self._num_classes = None
        self._batch = _BatchState()
        self._metric_groups = _MetricGroups()
        self.train_attack = self._resolve_train_attack(train_attack, epsilon)
        self.eval_attack = eval_attack
        if attack_training_mode is None:
            attack_training_mode = self.default_attack_training_mode
        self.attack_training_mode = bool(attack_training_mode)
        self.weight_decay = validation.non_negative(
            "weight_decay", weight_decay
        )
        self.check_inputs = bool(check_inputs)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.cross_entropy = BatchWeightedCrossEntropy(self._batch)
        self.trackers = {
            LOSS: keras.metrics.Mean(name=LOSS),
            CLEAN_ACCURACY: keras.metrics.SparseCategoricalAccuracy(
                name=CLEAN_ACCURACY
            ),
            ADV_ACCURACY: keras.metrics.SparseCategoricalAccuracy(
                name=ADV_ACCURACY
            ),
            ROBUST_ACCURACY: keras.metrics.SparseCategoricalAccuracy(
                name=ROBUST_ACCURACY
            ),
        }
        self.minibatches = self.add_weight(
            shape=(),
            dtype="int64",
            initializer="zeros",
            trainable=False,
            aggregation="only_first_replica",
            name="minibatches",
        )
        self._step_counts = {}
        self._traced_counts = {}
        self._method_callbacks = None
        self.input_std = _input_std(classifier)
        self.step_controller = self._attach_controller(step_controller)
        # The trainer's own variables exist now; with a built classifier it
        # is complete (BackupAndRestore and save_weights need it built),
        # and the classifier is checked now. An unbuilt one (a subclassed
        # model never called) is built and checked by the first step.
        if classifier.built:
            self.inspect_classifier()
            self.built = True

    # The training attack.

    def default_train_attack(self, epsilon: float) -> attack_base.Attack:
        """The paper's training attack at budget `epsilon`.

        Methods without a training attack keep this default (None).
        """
        del epsilon
        return None

    @classmethod
    def has_default_train_attack(cls) -> bool:
        """Whether the method builds a training attack of its own."""
        return (
            cls.default_train_attack
            is not AdversarialTrainer.default_train_attack
        )

    def _resolve_train_attack(self, train_attack, epsilon):
        method = type(self).__name__
        if train_attack is None:
            if epsilon is None:
                epsilon = self.default_epsilon
            if epsilon is None:
                if self.has_default_train_attack():
                    raise ValueError(self._missing_budget_message())
                return None
            attack = self.default_train_attack(
                validation.epsilon(epsilon, allow_zero=False)
            )
            if attack is None:
                raise ValueError(
                    f"{method} trains without an attack; epsilon="
                    f"{epsilon!r} would not be used. Give the budget to "
                    "eval_attack instead."
                )
            return attack
        if not isinstance(train_attack, self.train_attack_types):
            accepted = " or ".join(t.__name__ for t in self.train_attack_types)
            raise TypeError(
                f"{method}.train_attack must be a tfadv.attacks {accepted}; "
                f"got {train_attack!r}."
            )
        validation.epsilon(
            train_attack.epsilon,
            allow_zero=False,
            norm=train_attack.threat_model.norm,
        )
        if epsilon is not None and not math.isclose(
            float(epsilon), train_attack.epsilon, rel_tol=1e-6
        ):
            raise ValueError(
                f"{method} got epsilon={epsilon!r} and a train_attack with "
                f"epsilon {train_attack.epsilon!r}; give one of them, or the "
                "same budget to both."
            )
        return train_attack

    def _missing_budget_message(self) -> str:
        method = type(self).__name__
        paper = ""
        if self.paper_epsilon is not None:
            paper = (
                f" (its paper trains at {self.paper_epsilon:.4g} on its "
                "dataset; see the class docstring)"
            )
        return (
            f"{method} needs its training budget: give epsilon= (in pixel "
            "units, the radius of the training attack, e.g. 0.1 for "
            "Fashion-MNIST or 8/255 = 0.0314 for CIFAR-10) or a "
            f"train_attack=. tfadv sets no dataset-specific default for "
            f"{method}'s epsilon{paper}, so that a run never trains at "
            "another dataset's budget unawares."
        )

    def _attach_controller(self, controller):
        if controller is None:
            return None
        method = type(self).__name__
        if not isinstance(controller, controllers.StepController):
            raise TypeError(
                f"{method}.step_controller must be a tfadv.methods."
                f"controllers.StepController (e.g. MPlus); got {controller!r}."
            )
        if self.step_controller_count is None:
            raise ValueError(
                f"{method} has no step count that a step controller could "
                "drive; controllers drive PGDAT, TRADES and MART (the "
                "training attack's steps) and DEAT (its replays)."
            )
        config = self.train_attack.get_config()
        if not {"num_steps", "step_size"} <= set(config):
            raise ValueError(
                f"{method}'s step controller changes its training attack's "
                f"num_steps and step_size, which {self.train_attack!r} does "
                "not have; use a ProjectedGradient."
            )
        if controller.max_steps != config["num_steps"]:
            raise ValueError(
                f"{method}'s step controller stops at max_steps="
                f"{controller.max_steps}, but its train_attack's num_steps, "
                f"the most {self.step_controller_count} it may reach, is "
                f"{config['num_steps']}; give both the same value."
            )
        controller.attach(self, self.step_controller_count)
        self.mutable_state_paths = (
            *self.mutable_state_paths,
            *controller.mutable_state,
        )
        return controller

    def current_train_attack(self) -> attack_base.Attack:
        """The training attack of this epoch.

        With a step controller driving the attack's steps, a copy with its
        `num_steps` and the step `max(ε / steps, step_size)`
        (`controllers.controlled_step_size`); else `train_attack`.
        """
        controller = self.step_controller
        if controller is None or controller.count_name != "attack_steps":
            return self.train_attack
        steps = controller.steps
        floor = self.train_attack.step_size
        attack = self.train_attack.replace(
            num_steps=max(steps, 1),
            step_size=controllers.controlled_step_size(
                self.epsilon, steps, floor
            ),
        )
        # At 0 steps (M+PGD's first epoch) the examples are the start.
        return attack.start_only() if steps == 0 else attack

    def gradient_l1(self, input_gradient: tf.Tensor) -> tf.Tensor:
        """This replica's share of `‖∇ₓ L‖₁` w.r.t. the normalised input.

        The gradient in pixel space times the normalisation's std (the
        gradient with respect to the model's normalised input, as DEAT
        measures it), summed, divided by the replicas (summed over them,
        it is the whole batch's, whatever the number of replicas).
        """
        scaled = tf.abs(tf.cast(input_gradient, tf.float32)) * self.input_std
        # Each replica's mean is over its own (equal) share of the batch,
        # so its gradient is R times its share of the global mean's.
        return tf.reduce_sum(scaled) / num_replicas()

    @property
    def epsilon(self) -> float | None:
        """The training budget: the training attack's epsilon."""
        return None if self.train_attack is None else self.train_attack.epsilon

    @property
    def threat_model(self):
        """The training attack's threat model (None without an attack)."""
        if self.train_attack is None:
            return None
        return self.train_attack.threat_model

    @property
    def metrics(self):
        # Exactly the method's trackers and the user's metrics: compile()
        # adds a private `loss` tracker that a custom step never updates.
        user = [m for group in self.user_metrics.values() for m in group]
        return [*self.trackers.values(), *user]

    @property
    def user_metrics(self) -> dict:
        """The metrics of `compile`, by prefix ("clean", "adv", "robust")."""
        return self._metric_groups.groups

    @property
    def num_classes(self) -> int:
        """The classifier's number of outputs (logits, one per class)."""
        if self._num_classes is None:
            raise ValueError(
                f"{type(self).__name__}'s classifier has not been built, so "
                "its number of classes is not known yet; call it on a "
                "batch of images (or let fit build it)."
            )
        return self._num_classes

    @property
    def sample_weight(self) -> tf.Tensor | None:
        """The per-example weights of the batch the step is working on.

        From `fit(sample_weight=...)` or `class_weight=` (which Keras
        turns into sample weights), shape `(batch,)`, float32; None
        without weights or outside a step. `self.cross_entropy` and
        `replica_mean` weigh the losses with them the way Keras losses do:
        the batch mean of `w_i · loss_i` (so unit weights change nothing,
        and the mean stays exact across replicas). Attacks are not
        weighted: each example's perturbation maximises its own loss.
        """
        return self._batch.sample_weight

    # The classifier.

    def inspect_classifier(self, image_shape: tuple | None = None) -> None:
        """Checks that the classifier outputs logits, one per class.

        Run at construction for a built classifier, and on the first batch
        for one built there (a subclassed model). Eagerly, one inference
        forward on two fixed images in [0, 1] builds the classifier if
        needed and shows its outputs; in a trace only the static output
        shape is checked. Sets `num_classes`.

        Args:
            image_shape: the input shape without the batch axis, when the
                classifier does not know it.

        Raises:
            ValueError: the output is not `(batch, num_classes)` logits
                with num_classes >= 2 (e.g. softmax probabilities).
        """
        method = type(self).__name__
        activation = _probability_activation(self.classifier)
        if activation is not None:
            raise ValueError(
                f"{method} trains a classifier that outputs logits (one "
                "unnormalised score per class), but this classifier's last "
                f"layer applies a {activation} activation, so its outputs "
                "are probabilities. Remove that activation (e.g. "
                "Dense(num_classes) instead of Dense(num_classes, "
                f"activation='{activation}')): the losses and attacks "
                "apply the softmax themselves."
            )
        if image_shape is None:
            image_shape = classifier_image_shape(self.classifier)
        known = image_shape is not None and all(
            d is not None for d in image_shape
        )
        if known and tf.executing_eagerly():
            size = 2 * int(np.prod(image_shape))
            images = np.linspace(0.0, 1.0, size, dtype="float32")
            outputs = self.classifier(
                tf.constant(images.reshape((2, *image_shape))), training=False
            )
            self._check_logits(outputs)
            return
        try:
            shape = self.classifier.output_shape
        except (AttributeError, ValueError):
            return  # known once the classifier runs
        self._check_logits(keras.KerasTensor(shape))

    def _check_logits(self, outputs) -> None:
        """Refuses outputs that are not logits, one per class."""
        method = type(self).__name__
        accepted = (
            "logits, one per class: a single (batch, num_classes) tensor "
            "of unnormalised scores, with num_classes >= 2"
        )
        if not hasattr(outputs, "shape") or not hasattr(outputs, "dtype"):
            raise ValueError(
                f"{method} trains a classifier that outputs {accepted}; "
                f"this one outputs a {type(outputs).__name__}."
            )
        shape = tuple(outputs.shape)
        if len(shape) != 2:
            raise ValueError(
                f"{method} trains a classifier that outputs {accepted}; "
                f"this one outputs shape {shape}."
            )
        classes = shape[-1]
        if classes is not None and classes < 2:
            raise ValueError(
                f"{method} trains a classifier that outputs {accepted}; "
                f"this one outputs {classes} value per example. For two "
                "classes use two logits (Dense(2)), not one sigmoid output."
            )
        if (
            isinstance(outputs, (tf.Tensor, np.ndarray))
            and tf.executing_eagerly()
        ):
            values = np.asarray(outputs, dtype="float64")
            in_unit = values.min() >= 0.0 and values.max() <= 1.0
            sums_to_one = np.allclose(values.sum(-1), 1.0, atol=1e-3)
            if in_unit and sums_to_one:
                raise ValueError(
                    f"{method} trains a classifier that outputs {accepted}; "
                    "this one's outputs look like probabilities (every row "
                    "is in [0, 1] and sums to 1, as after a softmax). "
                    "Remove the final softmax: the losses and attacks apply "
                    "it themselves."
                )
        if classes is not None:
            self._num_classes = int(classes)

    def _ensure_classifier_checked(self, x) -> None:
        """Builds and checks an unbuilt classifier from the batch's shape."""
        if self._num_classes is not None:
            return
        # Outside the trace (eagerly), so the classifier's variables are
        # made once, as at construction.
        with tf.init_scope():
            self.inspect_classifier(tuple(x.shape[1:]))
        if self._num_classes is None:
            raise ValueError(
                f"{type(self).__name__} could not find how many classes its "
                "classifier outputs; build it on a batch of fully defined "
                f"shape first (got images of shape {tuple(x.shape)})."
            )
        self.built = True

    def build(self, input_shape=None):
        # Eagerly (an explicit build, a first eager call), an unbuilt
        # classifier is built and checked now; in a symbolic build, `call`
        # builds it and checks its output shape.
        if (
            self._num_classes is None
            and input_shape is not None
            and tf.executing_eagerly()
        ):
            self.inspect_classifier(tuple(input_shape[1:]))
        self._build_optimizer()

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras builds a distributed model from one batch, which it gets by
        # averaging a distributed batch over the replicas eagerly; that
        # reduction fails under MultiWorkerMirroredStrategy ("Attempt to
        # convert a value (PerReplica...)"). Only the batch's structure and
        # shapes matter to the build, so this replica's share serves.
        strategy = getattr(self, "_distribute_strategy", None)
        if iterator is not None and strategy is not None:
            for _, _, batches in iterator:
                data_batch = tf.nest.map_structure(
                    lambda v: (
                        strategy.experimental_local_results(v)[0]
                        if isinstance(v, tf.distribute.DistributedValues)
                        else v
                    ),
                    next(batches),
                )
                break
            iterator = None
        return super()._maybe_symbolic_build(
            iterator=iterator, data_batch=data_batch
        )

    def _build_optimizer(self) -> None:
        """Makes the optimizer's slot variables now, outside any step.

        Variables first made inside the compiled step make `tf.function`
        trace it twice; a compiled, built trainer therefore builds its
        optimizer at once (in `compile`, or in `build` after it).
        """
        optimizer = getattr(self, "optimizer", None)
        if (
            optimizer is not None
            and self.built
            and self._num_classes is not None
            and not optimizer.built
            and tf.executing_eagerly()
        ):
            optimizer.build(self.trainable_variables)

    def call(self, inputs, training=False):
        logits = self.classifier(inputs, training=training)
        if self._num_classes is None:
            # First seen here (a symbolic build under a strategy).
            self._check_logits(logits)
        return logits

    # Saving.

    def get_config(self):
        """The constructor arguments, as a Keras config.

        The classifier is a nested serialized model, the attacks and the
        step controller serialized Keras objects; weights (including step
        counts, a controller's state and the seed generator's state) are
        in the file's weights, not here.
        """
        serialize = keras.saving.serialize_keras_object
        return {
            **super().get_config(),
            "classifier": serialize(self.classifier),
            "train_attack": serialize(self.train_attack),
            "eval_attack": serialize(self.eval_attack),
            "attack_training_mode": self.attack_training_mode,
            "weight_decay": self.weight_decay,
            "check_inputs": self.check_inputs,
            "seed": self.seed,
            "step_controller": serialize(self.step_controller),
        }

    @classmethod
    def from_config(cls, config):
        config = attack_base.deserialize_config(config)
        classifier = config.pop("classifier")
        return cls(classifier, **config)

    def save_own_variables(self, store):
        # Keras saves a layer's variables but not its seed generators'
        # states; the trainer's generator is saved after its variables, so
        # a loaded trainer draws the same random starts next.
        super().save_own_variables(store)
        own = len(self._trainable_variables + self._non_trainable_variables)
        store[f"{own}"] = self.seed_generator.state

    def load_own_variables(self, store):
        own = self._trainable_variables + self._non_trainable_variables
        if len(store.keys()) == len(own) + 1:
            for i, variable in enumerate([*own, self.seed_generator.state]):
                variable.assign(store[f"{i}"])
            return
        # A file written without the generator's state.
        super().load_own_variables(store)

    def get_compile_config(self):
        config = super().get_compile_config()
        if config:
            metrics, weighted = self._metric_groups.specs
            serialize = keras.saving.serialize_keras_object
            config["metrics"] = serialize(list(metrics)) or None
            config["weighted_metrics"] = serialize(list(weighted)) or None
        return config

    def compile_from_config(self, config):
        # Keras skips a model whose compile() is overridden; tfadv's only
        # adds checks and the user metrics, so compile as saved.
        config = keras.saving.deserialize_keras_object(config)
        # compile builds the optimizer of a built trainer: its variables
        # must exist before its state loads.
        self.compile(**config)

    # Compiling.

    def compile(
        self,
        optimizer="rmsprop",
        loss=None,
        loss_weights=None,
        metrics=None,
        weighted_metrics=None,
        **kwargs,
    ):
        """`keras.Model.compile`, with the method's own loss.

        Binds a `PerMinibatch` learning rate to the minibatch counter.
        `metrics` (names, functions or `keras.metrics.Metric`s, e.g.
        `[keras.metrics.SparseTopKCategoricalAccuracy(k=5, name="top5")]`)
        are computed on the clean and on the adversarial logits and logged
        as `clean_<name>` and `adv_<name>` (`robust_<name>` on validation,
        under `eval_attack`), like the built-in accuracies;
        `weighted_metrics` too, with the batch's sample weights. "accuracy"
        is always reported (`clean_accuracy`, `adv_accuracy`), so it is
        not added twice.

        Raises:
            ValueError: `loss` or `loss_weights` is given (the method
                defines its loss), or a metric is of a kind the trainer
                cannot compute or clashes with a logged name.
        """
        method = type(self).__name__
        for name, value in (("loss", loss), ("loss_weights", loss_weights)):
            if value is not None:
                raise ValueError(
                    f"{method} defines its own training loss (the method's "
                    "objective: cross-entropy on its adversarial or noisy "
                    "examples, with its regularisers), so compile("
                    f"{name}=...) would have no effect and is refused "
                    f"rather than ignored; got {name}={value!r}. Compile "
                    "with an optimizer and metrics only; weigh examples "
                    "with fit's sample_weight or class_weight, and choose "
                    "the method's loss through its own arguments."
                )
        metrics = _metric_list("metrics", metrics, method)
        weighted_metrics = _metric_list(
            "weighted_metrics", weighted_metrics, method
        )
        super().compile(optimizer=optimizer, **kwargs)
        self._metric_groups.specs = (metrics, weighted_metrics)
        self._metric_groups.groups = self._make_user_metrics(
            metrics, weighted_metrics
        )
        optimizer = getattr(self.optimizer, "inner_optimizer", self.optimizer)
        schedule = getattr(optimizer, "_learning_rate", None)
        if isinstance(schedule, schedules.PerMinibatch):
            schedule.bind(self.minibatches)
        self._build_optimizer()

    def _make_user_metrics(self, metrics, weighted_metrics) -> dict:
        """One copy of every user metric per logit kind."""
        method = type(self).__name__
        made = {prefix: [] for prefix in USER_METRIC_PREFIXES}
        taken = {*self.trackers}
        for specs, weighted in ((metrics, False), (weighted_metrics, True)):
            for spec in specs:
                metric = _resolve_metric(spec, method)
                if metric is None:
                    continue  # accuracy: always reported
                for prefix in USER_METRIC_PREFIXES:
                    name = f"{prefix}_{metric.name}"
                    if name in taken:
                        raise ValueError(
                            f"{method} would log two values named {name!r}; "
                            "give the metric another name (e.g. "
                            "keras.metrics.SparseTopKCategoricalAccuracy("
                            "k=5, name='top5'))."
                        )
                    taken.add(name)
                    copy = type(metric).from_config(
                        {**metric.get_config(), "name": name}
                    )
                    copy.weighted_by_sample = weighted
                    made[prefix].append(copy)
        return made

    def _update_user_metrics(self, prefix, y, logits) -> None:
        for metric in self.user_metrics.get(prefix, ()):
            weights = self.sample_weight if metric.weighted_by_sample else None
            metric.update_state(y, logits, sample_weight=weights)

    # Epoch-level hooks (see the module docstring).

    def on_epoch_begin(self, epoch: int) -> None:
        """Called before each epoch (0-based), eagerly."""

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> dict:
        """Called after each epoch; returns values to add to its logs."""
        del epoch, logs
        return {}

    def results_info(self) -> dict:
        """What the method reports in results.json after training."""
        return {}

    def masking_layers(self) -> list[str]:
        """Names of the classifier's layers that mask input gradients.

        The run's final evaluation then always adds PGD through these
        layers, PGD through BPDA over them and Square, and reports the
        per-example minimum (`tfadv.evaluation.with_masking_attacks`). By
        default, the layers that declare `masks_gradients = True`
        (`tfadv.layers.SoftQuantization`); a method whose own layers mask
        overrides this.
        """
        return layers.masking_layer_names(self.classifier)

    def extra_callbacks(self) -> list:
        """Callbacks of the method's own (a monitor batch, a guard)."""
        return []

    def callbacks(self) -> list:
        """The callbacks the method needs, to pass to `fit`.

        The same objects at every call: the hook caller first, then
        `extra_callbacks()`.
        """
        if self._method_callbacks is None:
            self._method_callbacks = [EpochHooks(self), *self.extra_callbacks()]
        return list(self._method_callbacks)

    # Step counts that change between epochs.

    def add_step_count(self, name: str, value: int) -> keras.Variable:
        """A checkpointed step count the training step unrolls over."""
        value = validation.count(name, value)
        variable = self.add_weight(
            shape=(),
            dtype="int32",
            initializer=keras.initializers.Constant(value),
            trainable=False,
            aggregation="only_first_replica",
            name=name,
        )
        self._step_counts[name] = variable
        return variable

    def step_count(self, name: str) -> int:
        """The count as a Python int; inside a trace, records the value."""
        tracing = not tf.executing_eagerly()
        with tf.init_scope():  # eager even while the step is traced
            value = int(keras.ops.convert_to_numpy(self._step_counts[name]))
        if tracing:
            self._traced_counts[name] = value
        return value

    def set_step_count(self, name: str, value: int) -> None:
        """Changes a count; the next epoch's step is retraced with it."""
        self._step_counts[name].assign(validation.count(name, value))

    def retrace_if_counts_changed(self) -> bool:
        """Rebuilds the train function if a count differs from its trace."""
        changed = False
        for name, traced in self._traced_counts.items():
            current = keras.ops.convert_to_numpy(self._step_counts[name])
            changed |= int(current) != traced
        if changed and getattr(self, "train_function", None) is not None:
            self.make_train_function(force=True)
            return True
        return False

    # Helpers for subclasses.

    def prepare_batch(self, data):
        """Unpacks a batch, casts it, and checks its values when asked.

        Images must be floating point (in [0, 1]); labels are integer class
        indices of shape `(batch,)` or `(batch, 1)`, or one-hot rows of
        width num_classes (converted by argmax). The batch's sample weights
        (from `fit`'s `sample_weight` or `class_weight`) become
        `self.sample_weight` until the step ends. With `check_inputs` (and
        not under XLA), the step asserts finite images in [0, 1],
        whole-number labels in [0, num_classes) and one-hot rows.

        Returns:
            `(x, y)`: the images and int32 labels of shape `(batch,)`.

        Raises:
            TypeError: images that are not floating point, or labels that
                are not numbers.
            ValueError: no labels, or labels of a shape that fits neither
                form.
        """
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        method = type(self).__name__
        if y is None:
            raise ValueError(
                f"{method} trains on labelled batches: (images, labels) or "
                "(images, labels, sample_weight); got images only."
            )
        x = tf.convert_to_tensor(x)
        if not x.dtype.is_floating:
            raise TypeError(
                f"Images must be floating point in [0, 1]; got {x.dtype}. "
                "Divide uint8 images by 255 in the input pipeline."
            )
        self._ensure_classifier_checked(x)
        # XLA drops Assert ops (with a warning per op), so skip them there.
        check = self.check_inputs and not getattr(self, "jit_compile", False)
        y = self._prepare_labels(tf.convert_to_tensor(y), check)
        if check:
            x, y = self._assert_valid(x, y)
        self._batch.sample_weight = _prepare_sample_weight(
            sample_weight, method
        )
        return x, y

    def _prepare_labels(self, y, check):
        method = type(self).__name__
        classes = self.num_classes
        accepted = (
            "integer class indices of shape (batch,) or (batch, 1), or "
            f"one-hot rows of shape (batch, {classes}) (the classifier "
            f"outputs {classes} logits)"
        )
        if not (y.dtype.is_integer or y.dtype.is_floating or y.dtype.is_bool):
            raise TypeError(
                f"{method} takes labels as {accepted}; got {y.dtype.name} "
                "labels."
            )
        rank = y.shape.rank
        width = y.shape[-1] if rank else None
        if rank == 2 and width != 1:
            if width != classes:
                raise ValueError(
                    f"{method} takes labels as {accepted}; got labels of "
                    f"shape {tuple(y.shape)}, whose width is not the "
                    "number of classes."
                )
            y = tf.cast(y, tf.float32)
            if check:
                y = _assert_one_hot(y)
            return tf.argmax(y, axis=-1, output_type=tf.int32)
        if rank is not None and rank > 2:
            raise ValueError(
                f"{method} takes labels as {accepted}; got labels of shape "
                f"{tuple(y.shape)}."
            )
        y = tf.reshape(y, [-1])
        if y.dtype.is_floating and check:
            whole = tf.debugging.assert_equal(
                y,
                tf.round(y),
                message="Labels must be whole-number class indices; a float "
                "label has a fractional part (e.g. 2.7), which would be "
                "truncated to another class. Give integer labels (or "
                "one-hot rows).",
            )
            with tf.control_dependencies([whole]):
                y = tf.identity(y)
        return tf.cast(y, tf.int32)

    def _assert_valid(self, x, y):
        classes = self.num_classes
        checks = [
            tf.debugging.assert_all_finite(
                x, "Images contain NaN or inf; they must be finite in [0, 1]."
            ),
            tf.debugging.assert_greater_equal(
                tf.reduce_min(x),
                tf.constant(0.0, x.dtype),
                message="Images must lie in [0, 1] (pixel space); the "
                "minimum is below 0. Normalisation belongs inside the model.",
            ),
            tf.debugging.assert_less_equal(
                tf.reduce_max(x),
                tf.constant(1.0, x.dtype),
                message="Images must lie in [0, 1] (pixel space); the "
                "maximum is above 1. Divide by 255 in the input pipeline.",
            ),
            tf.debugging.assert_non_negative(
                y, message="Labels must be in [0, num_classes); got < 0."
            ),
            tf.debugging.assert_less(
                y,
                classes,
                message=f"Labels must be in [0, num_classes) = [0, {classes}) "
                f"for this classifier, which outputs {classes} logits (one "
                f"per class); got a label >= {classes}. The data has more "
                "classes than the classifier has outputs: give the "
                "classifier one output per class.",
            ),
        ]
        with tf.control_dependencies(checks):
            return tf.identity(x), tf.identity(y)

    def attack(self, attack, x, target, **kwargs):
        """Runs `attack` on the classifier in the method's attack mode.

        The images were checked by `prepare_batch` (when `check_inputs`),
        so the attack does not check them again.
        """
        with attack_base.inputs_checked():
            return attack(
                self.classifier,
                x,
                target,
                seed=self.next_seed(),
                training=self.attack_training_mode,
                **kwargs,
            )

    def next_seed(self) -> tf.Tensor:
        """A fresh stateless seed from the method's generator, per replica.

        Every replica draws the same seed from the generator; with more
        than one replica the replica's id is folded in, so that replicas
        draw independent random starts and noise (as separate GPUs of a
        data-parallel reference do). One replica keeps the generator's
        seed unchanged.
        """
        seed = attack_base.as_seed(self.seed_generator)
        context = tf.distribute.get_replica_context()
        if context is not None and context.num_replicas_in_sync > 1:
            seed = tf.random.experimental.stateless_fold_in(
                seed, context.replica_id_in_sync_group
            )
        return seed

    def replica_mean(self, values: tf.Tensor) -> tf.Tensor:
        """Batch mean of per-example values, weighted and replica-scaled.

        Use this for hand-written loss terms: like a Keras loss object with
        its default reduction, it multiplies each value by the batch's
        sample weight (`sample_weight`, when the step has one) and divides
        by the number of replicas, since the optimizer sums gradients over
        replicas.
        """
        values = tf.cast(values, tf.float32)
        weights = self.sample_weight
        if weights is not None:
            values = values * weights
        return tf.reduce_mean(values) / num_replicas()

    def scale_loss(self, loss):
        """`optimizer.scale_loss(loss)`, or `loss` before `compile`."""
        optimizer = getattr(self, "optimizer", None)
        return loss if optimizer is None else optimizer.scale_loss(loss)

    def apply_gradients(
        self, tape, scaled_loss, variables=None, *, inputs=None
    ):
        """Differentiates the loss and applies one optimizer update.

        Args:
            tape: the tape that recorded the loss (watching `inputs`).
            scaled_loss: `self.scale_loss(loss)`, computed INSIDE the tape
                (under mixed precision the optimizer is a
                `LossScaleOptimizer`, whose scaling must be on the tape),
                where `loss` is replica-scaled (see `replica_mean`).
            variables: the variables to update; all trainable ones by
                default.
            inputs: a watched input tensor whose gradient to return too,
                from the same backward pass.

        Returns:
            The gradients of the scaled loss, before weight decay; with
            `inputs`, the pair `(gradients, input_gradient)`, where the
            input gradient is that of this replica's batch-mean loss
            (loss scale and replica scaling removed), and zero where it is
            not finite (a loss-scale overflow, when the optimizer skips its
            update too).
        """
        if variables is None:
            variables = self.trainable_variables
        if inputs is None:
            grads = tape.gradient(scaled_loss, variables)
        else:
            input_grad, *grads = tape.gradient(
                scaled_loss, [inputs, *variables]
            )
        self.optimizer.apply(self.add_weight_decay(grads, variables), variables)
        if inputs is None:
            return grads
        unit = self.scale_loss(tf.constant(1.0 / num_replicas(), tf.float32))
        input_grad = input_grad / tf.cast(unit, input_grad.dtype)
        finite = tf.math.is_finite(input_grad)
        return grads, tf.where(finite, input_grad, tf.zeros_like(input_grad))

    def add_weight_decay(self, grads, variables):
        """Adds the coupled decay `w·θ` to gradients of the scaled loss.

        The decay is split evenly over replicas (the optimizer sums their
        gradients) and multiplied by the optimizer's loss scale (1 unless
        mixed precision wraps it in a `LossScaleOptimizer`, which divides
        the gradients by that scale again).
        """
        if not self.weight_decay:
            return grads
        decay = self.optimizer.scale_loss(self.weight_decay / num_replicas())
        return [
            g if g is None else g + tf.cast(decay, g.dtype) * v
            for g, v in zip(grads, variables, strict=True)
        ]

    def update_metrics(self, loss, y, *, clean_logits=None, adv_logits=None):
        """Updates the trackers and the user's metrics.

        Args:
            loss: the replica-scaled loss, or None to leave `loss` alone.
            y: integer labels.
            clean_logits: logits on the clean batch, or None.
            adv_logits: logits on the training examples, or None.
        """
        if loss is not None:
            self.trackers[LOSS].update_state(loss * num_replicas())
        if clean_logits is not None:
            self.trackers[CLEAN_ACCURACY].update_state(y, clean_logits)
            self._update_user_metrics("clean", y, clean_logits)
        if adv_logits is not None:
            self.trackers[ADV_ACCURACY].update_state(y, adv_logits)
            self._update_user_metrics("adv", y, adv_logits)

    def logs(self, names):
        """The results of the trackers `names`, and of the user's metrics.

        A user metric is logged on the logits whose accuracy is among
        `names` (`clean_<name>` with `clean_accuracy`, and so on).
        """
        logs = {name: self.trackers[name].result() for name in names}
        for prefix, tracker in _TRACKER_OF_PREFIX.items():
            if tracker in names:
                for metric in self.user_metrics.get(prefix, ()):
                    logs[metric.name] = metric.result()
        if _multi_worker(tf.distribute.get_strategy()):
            # Keras averages a multi-worker step's outputs along axis 0
            # across the workers, which a scalar lacks (tensorflow#72388);
            # as [1] vectors they average back into the same scalars.
            logs = {
                name: tf.reshape(value, [1]) for name, value in logs.items()
            }
        return logs

    # The step.

    def perturb(self, x, y):
        """Makes the training examples, outside the update's gradient tape.

        Keeping the attack off the tape saves the memory and time a tape
        would spend recording the attack loop. The default runs
        `current_train_attack()` on the labels in the method's attack mode
        (None without a training attack); methods whose attack needs
        another target override `attack_target`.
        """
        if self.train_attack is None:
            return None
        attack = self.current_train_attack()
        return self.attack(attack, x, self.attack_target(x, y))

    def attack_target(self, x, y):
        """What the training attack's objective compares the logits with.

        The labels, unless the objective asks for the clean distribution
        (the KL objective of TRADES-style attacks), computed once in the
        attack mode.
        """
        objective = getattr(self.train_attack, "objective", None)
        if objective is None or objectives.target_kind(objective) == "labels":
            return y
        clean_logits = self.classifier(x, training=self.attack_training_mode)
        return tf.stop_gradient(
            tf.nn.softmax(tf.cast(clean_logits, tf.float32))
        )

    def compute_adversarial_loss(self, x, y, x_adv):
        """Builds the training loss inside the update's gradient tape.

        Args:
            x: clean images in [0, 1].
            y: integer labels.
            x_adv: what `perturb` returned.

        Returns:
            `(loss, clean_logits, adv_logits)`: the replica-scaled loss and the
            logits for the metrics (either may be None; missing clean logits
            are computed in inference mode for the metric).
        """
        raise NotImplementedError

    def minibatch_update(self, x, y):
        """Trains on one checked minibatch and returns the step's logs.

        The default: `perturb`, then one update on
        `compute_adversarial_loss`. Override it for another structure.
        """
        x_adv = self.perturb(x, y)
        # A step controller observes the update's input gradient.
        observed = self.step_controller is not None and x_adv is not None
        with tf.GradientTape() as tape:
            if observed:
                tape.watch(x_adv)
            loss, clean_logits, adv_logits = self.compute_adversarial_loss(
                x, y, x_adv
            )
            scaled_loss = self.scale_loss(loss)
        if observed:
            _, input_grad = self.apply_gradients(
                tape, scaled_loss, inputs=x_adv
            )
            self.step_controller.observe(self.gradient_l1(input_grad))
        else:
            self.apply_gradients(tape, scaled_loss)
        if clean_logits is None:
            clean_logits = self.classifier(x, training=False)
        self.update_metrics(
            loss, y, clean_logits=clean_logits, adv_logits=adv_logits
        )
        return self.logs(self.train_metric_names)

    def train_step(self, data):
        x, y = self.prepare_batch(data)
        try:
            logs = self.minibatch_update(x, y)
        finally:
            self._batch.sample_weight = None
        self.minibatches.assign_add(1)
        return logs

    def test_step(self, data):
        x, y = self.prepare_batch(data)
        try:
            return self._validate(x, y)
        finally:
            self._batch.sample_weight = None

    def _validate(self, x, y):
        logits = self.classifier(x, training=False)
        loss = self.cross_entropy(y, logits)
        self.update_metrics(loss, y, clean_logits=logits)
        names = (LOSS, CLEAN_ACCURACY)
        if self.eval_attack is not None:
            with attack_base.inputs_checked():
                x_adv = self.eval_attack(
                    self.classifier,
                    x,
                    y,
                    seed=self.next_seed(),
                    training=False,
                )
            adv_logits = self.classifier(x_adv, training=False)
            self.trackers[ROBUST_ACCURACY].update_state(y, adv_logits)
            self._update_user_metrics("robust", y, adv_logits)
            names = self.test_metric_names
        return self.logs(names)


def _assert_one_hot(y):
    """`y` after asserting that its rows are one-hot."""
    binary = tf.reduce_all((y == 0.0) | (y == 1.0))
    single = tf.reduce_all(tf.reduce_sum(y, -1) == 1.0)
    check = tf.debugging.Assert(
        binary & single,
        [
            "One-hot labels must have a single 1 per row and 0 elsewhere "
            "(soft labels, e.g. label smoothing, are not accepted: the "
            "method's losses take class indices)."
        ],
    )
    with tf.control_dependencies([check]):
        return tf.identity(y)


def _prepare_sample_weight(sample_weight, method: str):
    """Per-example float32 weights of shape (batch,), or None."""
    if sample_weight is None:
        return None
    weights = tf.cast(tf.convert_to_tensor(sample_weight), tf.float32)
    shape = weights.shape
    if shape.rank is not None and (
        shape.rank > 2 or (shape.rank == 2 and shape[-1] not in (1, None))
    ):
        raise ValueError(
            f"{method} weighs each example's loss by one number, so "
            "sample_weight must have shape (batch,) or (batch, 1); got "
            f"shape {tuple(shape)}."
        )
    return tf.reshape(weights, [-1])


def _input_std(classifier: keras.Model):
    """The std of the classifier's normalisation layer (1 without one).

    tfadv's builders normalise with a `keras.layers.Normalization` named
    `models.NORMALIZE_LAYER`; its std turns a pixel-space gradient into
    the gradient with respect to the normalised input.
    """
    try:
        layer = classifier.get_layer(common.NORMALIZE_LAYER)
    except ValueError:
        return 1.0
    variance = getattr(layer, "input_variance", None)
    if not isinstance(layer, keras.layers.Normalization) or variance is None:
        return 1.0
    return tf.sqrt(tf.cast(tf.reshape(variance, [-1]), tf.float32))
