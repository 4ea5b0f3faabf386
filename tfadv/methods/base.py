"""The base class every training method subclasses: the method contract.

A method is a `keras.Model` that wraps a classifier. What every method
shares, and what a new one plugs into, is declared here; the plumbing no
method overrides lives in modules beside it: `batches` (unpacking and
checking a batch), `classifiers` (what is read from and checked about the
classifier), `user_metrics` (the logged names and `compile`'s metrics),
`step_counts` (counts that change between epochs, the hook caller),
`training_attack` (the budget and the default attack), and
`keras_internals` (every private Keras name the trainer relies on).

- **The training attack.** `train_attack` (any `tfadv.attacks.Attack`, or
  a training-only perturbation such as `tfadv.attacks.NoiseFGSM`) is an
  argument of every method; when it is None the method builds its
  paper's default (`default_train_attack`) at `epsilon`, which is then
  required: ε depends on the dataset (the error names the paper's,
  `paper_epsilon`). `trainer.epsilon` and `trainer.threat_model` come
  from that attack, so a run has one ε: the budget the method defends,
  even where its training perturbation reaches further.
- **The step.** `train_step` checks the batch (`prepare_batch`), calls
  `minibatch_update(x, y)` and counts the minibatch (`minibatches`, which
  a `PerMinibatch` learning rate reads). The default update: `perturb`
  outside the tape, `compute_adversarial_loss` (by default the
  cross-entropy on the training examples), `apply_gradients`, then
  `step_logs`; other structures (Free-AT, YOPO) override
  `minibatch_update`. Loss terms go through `replica_mean` and
  `cross_entropy`, so replicas and sample weights are handled once.
- **Epoch-level control.** `on_epoch_begin(epoch)`, `on_epoch_end(epoch,
  logs) -> dict` (values added to the epoch's logs), `results_info()` and
  `callbacks()` (which `fit` adds to the user's own, once). A count
  that changes between epochs is a step count (`add_step_count`,
  `step_count`, `set_step_count`), the step retraced when it changes.
- **Step controllers.** `step_controller=` takes a
  `tfadv.methods.controllers.StepController` (M+, DEAT-d, DEAT-p), a rule
  with its own state that decides, between epochs, the step count named by
  `step_controller_count` (`ATTACK_STEPS` for PGD-AT, TRADES and MART;
  DEAT's replays), capped at the training attack's `num_steps`.
- **Layers that mask gradients.** `masking_layers()` names them; the final
  evaluation then adds BPDA and gradient-free attacks.
- **A Keras citizen.** Every subclass is a registered Keras serializable:
  `save` / `keras.saving.load_model` round-trip the classifier, attacks,
  controller, every weight, the seed generator's state and the optimizer,
  so `fit` continues where it stopped; `compile(metrics=...)` adds
  `clean_<name>`, `adv_<name>` (`robust_<name>` in validation);
  `sample_weight` and `class_weight` weigh each example's loss;
  `compile(loss=...)` is refused. Classifiers output logits, one per
  class; labels are class indices or one-hot rows.
"""

import keras
import tensorflow as tf

from tfadv import layers
from tfadv import schedules
from tfadv import validation
from tfadv.attacks import base as attack_base
from tfadv.attacks import objectives
from tfadv.methods import batches
from tfadv.methods import classifiers
from tfadv.methods import controllers
from tfadv.methods import costs
from tfadv.methods import keras_internals
from tfadv.methods import step_counts
from tfadv.methods import training_attack
from tfadv.methods import user_metrics
from tfadv.methods import weight_perturbations

# The metric names every method reports, so curves overlay in TensorBoard.
LOSS = user_metrics.LOSS
CLEAN_ACCURACY = user_metrics.CLEAN_ACCURACY
ADV_ACCURACY = user_metrics.ADV_ACCURACY
ROBUST_ACCURACY = user_metrics.ROBUST_ACCURACY
# The step count of a method whose controller drives its attack's steps.
ATTACK_STEPS = "attack_steps"

EpochHooks = step_counts.EpochHooks
num_replicas = batches.num_replicas


class AdversarialTrainer(
    batches.FirstBatchCheck,
    classifiers.ExportsClassifier,
    keras_internals.ReplicaBatchBuild,
    keras_internals.SeedStateSaving,
    user_metrics.SavedCompileMetrics,
    weight_perturbations.WeightPerturbationHooks,
    step_counts.MethodCallbacks,
    costs.DeclaresPasses,
    keras.Model,
):
    """A Keras model that trains a wrapped classifier with one method.

    The trainer owns the classifier, the method's attacks, its metric
    trackers and one `SeedGenerator` for all in-step randomness. `call`
    delegates to the classifier, so `predict`, `evaluate` and the
    TensorBoard graph see the classifier; `model.keras` exports are made
    from `trainer.classifier` and load with plain Keras. Train logs are
    `loss`, `clean_accuracy` and `adv_accuracy`; validation logs `loss`,
    `clean_accuracy` and `robust_accuracy` under `eval_attack`. The module
    docstring lists the contract; the README's "Writing a new method" has
    a complete example and every file a method touches.

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
            for clean validation only; never a training-only perturbation.
        attack_training_mode: run the classifier in training mode (batch
            statistics, dropout, moving averages updated) while attacking;
            None is the method's paper default (`default_attack_training_
            mode`, documented by each method).
        weight_decay: coupled L2 weight decay `w·θ` added to every gradient
            (PyTorch `SGD(weight_decay=w)`), applied to all trainable
            variables. Keep the optimizer's own decoupled `weight_decay`
            unset when using this.
        check_inputs: check images (finite, in [0, 1]), labels (classes
            in [0, num_classes) or one-hot rows) and sample weights (>= 0):
            on `fit`'s first batch eagerly, in every step but under XLA.
        seed: seed of the method's `SeedGenerator`.
        step_controller: a `tfadv.methods.controllers.StepController` that
            changes the method's step count between epochs (M+PGD,
            M+TRADES, M+MART, DEAT), or None. Its cap is the training
            attack's `num_steps` (a `max_steps` it was given must equal
            them).
        **kwargs: `weight_perturbation` (AWP; `methods.weight_perturbations`)
            and what `keras.Model` takes (e.g. `name`).

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
    # statistics, seeds and the optimizer), by variable name; a step
    # controller's is added in `mutable_state_paths`.
    mutable_state = ("minibatches",)
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
    # The weight c of the clean cross-entropy in the default loss.
    clean_weight: float = 0.0
    # Training batches carry example ids (`tfadv.data.example_ids`); the
    # trainer takes `num_examples=`, which `tfadv.train` sets from the data.
    uses_example_ids: bool = False

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
        self._batch = batches.BatchState()
        self._metric_groups = user_metrics.MetricGroups()
        self._step_counts = step_counts.StepCounts()
        self.train_attack = training_attack.resolve(self, train_attack, epsilon)
        self.eval_attack = attack_base.evaluation_attack(
            eval_attack, f"{type(self).__name__}.eval_attack"
        )
        if attack_training_mode is None:
            attack_training_mode = self.default_attack_training_mode
        self.attack_training_mode = bool(attack_training_mode)
        self.weight_decay = validation.non_negative(
            "weight_decay", weight_decay
        )
        self.check_inputs = bool(check_inputs)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.cross_entropy = batches.WeightedCrossEntropy(self._batch)
        self.trackers = user_metrics.trackers()
        self.minibatches = self.add_weight(
            shape=(),
            dtype="int64",
            initializer="zeros",
            trainable=False,
            aggregation="only_first_replica",
            name="minibatches",
        )
        self.input_std = classifiers.normalization_std(classifier)
        self.step_controller = step_counts.attach_controller(
            self, step_controller
        )
        weight_perturbations.attach(self)
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

    def current_train_attack(self) -> attack_base.Attack:
        """The training attack of this epoch.

        With a step controller driving the attack's steps, a copy with the
        count's `num_steps` and the controller's step for it (M+:
        `max(ε / steps, step_size)` or the fixed `step_size`); else
        `train_attack`. A method whose controller drives another count
        (DEAT) overrides this.
        """
        if self.step_controller is None:
            return self.train_attack
        steps = self.step_count(self.step_controller_count)
        attack = self.train_attack.replace(
            num_steps=max(steps, 1),
            step_size=self.step_controller.step_size(steps),
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
    def mutable_state_paths(self) -> tuple:
        """Paths of the variables the step changes on purpose."""
        own = self.mutable_state
        controller = self.step_controller
        if controller is None:
            return own
        theirs = (f"{controller.name}/{n}" for n in controller.mutable_state)
        return (*own, *theirs)

    @property
    def metrics(self):
        # Exactly the method's trackers and the user's metrics: compile()
        # adds a private `loss` tracker that a custom step never updates.
        return [*self.trackers.values(), *self._metric_groups.all()]

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
        for one built there (a subclassed model); sets `num_classes`
        (`tfadv.methods.classifiers.inspect`).

        Args:
            image_shape: the input shape without the batch axis, when the
                classifier does not know it.

        Raises:
            ValueError: the output is not `(batch, num_classes)` logits
                with num_classes >= 2 (e.g. softmax probabilities).
        """
        classes = classifiers.inspect(
            self.classifier, image_shape, method=type(self).__name__
        )
        if classes is not None:
            self._num_classes = classes

    def _ensure_classifier_checked(self, x) -> None:
        """Builds and checks an unbuilt classifier from the batch's shape."""
        if self._num_classes is None:
            # Outside the trace (eagerly), so the classifier's variables are
            # made once, as at construction.
            with tf.init_scope():
                self.inspect_classifier(tuple(x.shape[1:]))
            classifiers.require_classes(self._num_classes, x, self)
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
        keras_internals.build_optimizer(self)

    def call(self, inputs, training=False):
        logits = self.classifier(inputs, training=training)
        if self._num_classes is None:
            # First seen here (a symbolic build under a strategy).
            classes = classifiers.check_outputs(
                logits, method=type(self).__name__
            )
            if classes is not None:
                self._num_classes = classes
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
        groups = user_metrics.MetricGroups()
        groups.set(
            metrics, weighted_metrics, taken=self.trackers, method=method
        )
        super().compile(optimizer=optimizer, **kwargs)
        self._metric_groups = groups
        schedule = keras_internals.learning_rate_schedule(self.optimizer)
        if isinstance(schedule, schedules.PerMinibatch):
            schedule.bind(self.minibatches)
        keras_internals.build_optimizer(self)

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
        self._step_counts.add(name, variable)
        return variable

    def step_count(self, name: str) -> int:
        """The count as a Python int; inside a trace, records the value."""
        return self._step_counts.read(name)

    def set_step_count(self, name: str, value: int) -> None:
        """Changes a count; the next epoch's step is retraced with it."""
        self._step_counts.set(name, value)

    @property
    def traced_step_counts(self) -> dict:
        """The counts the current training step was traced with."""
        return dict(self._step_counts.traced)

    def retrace_if_counts_changed(self) -> bool:
        """Rebuilds the train function if a count differs from its trace."""
        changed = self._step_counts.changed_since_trace()
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
        whole-number labels in [0, num_classes) and one-hot rows
        (`tfadv.methods.batches`).

        Returns:
            `(x, y)`: the images and int32 labels of shape `(batch,)`.

        Raises:
            TypeError: images that are not floating point, or labels that
                are not numbers.
            ValueError: no labels, or labels of a shape that fits neither
                form.
        """
        method = type(self).__name__
        x, y, sample_weight = batches.unpack(data, method=method)
        self._ensure_classifier_checked(x)
        # XLA drops Assert ops (with a warning per op), so skip them there.
        check = self.check_inputs and not getattr(self, "jit_compile", False)
        y = batches.labels(
            y, num_classes=self.num_classes, check=check, method=method
        )
        if check:
            x, y = batches.assert_valid(x, y, num_classes=self.num_classes)
        self._batch.sample_weight = sample_weight
        return x, y

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
        self.update_weights(grads, variables)
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
        weights = self.sample_weight
        if clean_logits is not None:
            self.trackers[CLEAN_ACCURACY].update_state(y, clean_logits)
            self._metric_groups.update("clean", y, clean_logits, weights)
        if adv_logits is not None:
            self.trackers[ADV_ACCURACY].update_state(y, adv_logits)
            self._metric_groups.update("adv", y, adv_logits, weights)

    def logs(self, names):
        """The results of the trackers `names`, and of the user's metrics.

        A user metric is logged on the logits whose accuracy is among
        `names` (`clean_<name>` with `clean_accuracy`, and so on).
        """
        logs = {name: self.trackers[name].result() for name in names}
        logs.update(self._metric_groups.results(names))
        if keras_internals.multi_worker(tf.distribute.get_strategy()):
            # Keras averages a multi-worker step's outputs along axis 0
            # across the workers, which a scalar lacks (tensorflow#72388);
            # as [1] vectors they average back into the same scalars.
            logs = user_metrics.as_vectors(logs)
        return logs

    def step_logs(self, x, y, *, loss=None, clean_logits=None, adv_logits=None):
        """Ends a training step: updates the metrics, returns the logs.

        `loss` is the step's replica-scaled loss, the logits those the
        update computed; None leaves a metric alone (a method that updated
        it at every replay), except missing clean logits, which are
        computed in inference mode for the clean accuracy.
        """
        if clean_logits is None:
            clean_logits = self.classifier(x, training=False)
        self.update_metrics(
            loss, y, clean_logits=clean_logits, adv_logits=adv_logits
        )
        return self.logs(self.train_metric_names)

    # The step.

    def perturb(self, x, y):
        """Makes the training examples, outside the update's gradient tape.

        The default runs `current_train_attack()` on `attack_target` in the
        method's attack mode (None without a training attack).
        """
        if self.train_attack is None:
            return None
        attack = self.current_train_attack()
        target = self.attack_target(x, y, attack)
        controller = self.step_controller
        if controller is None or controller.measure == controllers.UPDATE:
            return self.attack(attack, x, target)
        # M from the attack's last step (DEAT's Table-1 M+ runs).
        with attack_base.inputs_checked():
            x_adv, grad = attack.ascend_with_gradient(
                self.classifier,
                x,
                target,
                seed=self.next_seed(),
                training=self.attack_training_mode,
            )
        controller.observe(self.gradient_l1(grad))
        return x_adv

    def attack_target(self, x, y, attack=None, *, training=None):
        """What an attack's objective compares the logits with.

        The labels, unless the objective asks for the clean distribution
        (the KL objective of TRADES-style attacks), computed once.

        Args:
            x: clean images.
            y: integer labels.
            attack: the attack (the training attack by default).
            training: the classifier's mode for the clean distribution
                (the method's attack mode by default).
        """
        attack = self.train_attack if attack is None else attack
        objective = getattr(attack, "objective", None)
        if objective is None or objectives.target_kind(objective) == "labels":
            return y
        if training is None:
            training = self.attack_training_mode
        clean_logits = self.classifier(x, training=training)
        return tf.stop_gradient(
            tf.nn.softmax(tf.cast(clean_logits, tf.float32))
        )

    def compute_adversarial_loss(self, x, y, x_adv):
        """Builds the training loss inside the update's gradient tape.

        The default is the cross-entropy on the training examples in
        training mode, `(1 − c)·CE(f(x_adv), y) + c·CE(f(x), y)` with
        `c = clean_weight` (0 unless the method sets it): the loss of
        PGD-AT, FGSM-RS, GAAT's exact phase and noisy training.

        Args:
            x: clean images in [0, 1].
            y: integer labels.
            x_adv: what `perturb` returned.

        Returns:
            `(loss, clean_logits, adv_logits)`: the replica-scaled loss and the
            logits for the metrics (either may be None; missing clean logits
            are computed in inference mode for the metric).
        """
        adv_logits = self.classifier(x_adv, training=True)
        loss = self.cross_entropy(y, adv_logits)
        clean_logits = None
        if self.clean_weight:
            clean_logits = self.classifier(x, training=True)
            loss = (1.0 - self.clean_weight) * loss + (
                self.clean_weight * self.cross_entropy(y, clean_logits)
            )
        return loss, clean_logits, adv_logits

    def minibatch_update(self, x, y):
        """Trains on one checked minibatch and returns the step's logs.

        The default: `perturb`, then one update on
        `compute_adversarial_loss`. Override it for another structure.
        """
        x_adv = self.perturb(x, y)
        self.perturb_weights(self.compute_adversarial_loss, x, y, x_adv)
        controller = self.step_controller
        # A step controller observes the update's input gradient.
        observed = x_adv is not None and (
            controller is not None and controller.measure == controllers.UPDATE
        )
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
            controller.observe(self.gradient_l1(input_grad))
        else:
            self.apply_gradients(tape, scaled_loss)
        if controller is not None and adv_logits is not None:
            controller.observe_accuracy(adv_logits, y)
        return self.step_logs(
            x, y, loss=loss, clean_logits=clean_logits, adv_logits=adv_logits
        )

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
            self._metric_groups.update(
                "robust", y, adv_logits, self.sample_weight
            )
            names = self.test_metric_names
        return self.logs(names)
