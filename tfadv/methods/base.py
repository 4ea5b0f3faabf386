"""The base class every training method subclasses: the method contract.

A method is a `keras.Model` that wraps a classifier. What every method
shares, and what a new one plugs into, is declared here:

- **The training attack.** `train_attack` (any `tfadv.attacks.Attack`) is
  an argument of every method; when it is None the method builds its
  paper's default (`default_train_attack`) at `epsilon`, or at the paper's
  budget (`default_epsilon`). `trainer.epsilon` and `trainer.threat_model`
  always come from that attack, so a run has one ε.
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
"""

import math

import keras
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

    Writing a new method: subclass, set `default_epsilon`, implement
    `default_train_attack` and `compute_adversarial_loss` (or
    `minibatch_update`), and register it with `gin.register`. The README's
    "Writing a new method" section has a complete example.

    Args:
        classifier: a Keras model mapping [0, 1] images to logits.
        train_attack: the attack that makes the training examples; None
            builds the method's paper default at `epsilon`.
        epsilon: the budget of the default training attack (the paper's
            when None). Given together with `train_attack`, it must equal
            the attack's epsilon.
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
            [0, 1] and labels in [0, num_classes) (not under `jit_compile`,
            where XLA drops assertions; `tfadv.train` checks its data before
            training either way).
        seed: seed of the method's `SeedGenerator`.
        step_controller: a `tfadv.methods.controllers.StepController` that
            changes the method's step count between epochs (M+PGD,
            M+TRADES, M+MART, DEAT), or None. Its `max_steps` must be the
            training attack's `num_steps`, which then is the cap.
        **kwargs: passed to `keras.Model` (e.g. `name`).

    Raises:
        TypeError: the classifier is not a Keras model, or the attack is not
            of a kind the method can run.
        ValueError: `epsilon` disagrees with `train_attack`, or another
            argument is out of range.
    """

    train_metric_names = (LOSS, CLEAN_ACCURACY, ADV_ACCURACY)
    test_metric_names = (LOSS, CLEAN_ACCURACY, ROBUST_ACCURACY)
    # Non-trainable state the step changes on purpose (besides BatchNorm
    # statistics, seeds and the optimizer).
    mutable_state_paths = ("minibatches",)
    # The paper's budget, used when neither train_attack nor epsilon is
    # given; None for methods without a training attack.
    default_epsilon: float | None = None
    default_attack_training_mode: bool = False
    # The attack classes the method can run (methods that step the
    # perturbation themselves need a ProjectedGradient's settings).
    train_attack_types: tuple = (attack_base.Attack,)
    # The step count a step controller may drive (None: none).
    step_controller_count: str | None = None

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
        self.cross_entropy = keras.losses.SparseCategoricalCrossentropy(
            from_logits=True
        )
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
        # is complete (BackupAndRestore and save_weights need it built).
        if classifier.built:
            self.built = True

    # The training attack.

    def default_train_attack(self, epsilon: float) -> attack_base.Attack:
        """The paper's training attack at budget `epsilon`.

        Methods without a training attack keep this default (None).
        """
        del epsilon
        return None

    def _resolve_train_attack(self, train_attack, epsilon):
        method = type(self).__name__
        if train_attack is None:
            if epsilon is None:
                epsilon = self.default_epsilon
            if epsilon is None:
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
        validation.epsilon(train_attack.epsilon, allow_zero=False)
        if epsilon is not None and not math.isclose(
            float(epsilon), train_attack.epsilon, rel_tol=1e-6
        ):
            raise ValueError(
                f"{method} got epsilon={epsilon!r} and a train_attack with "
                f"epsilon {train_attack.epsilon!r}; give one of them, or the "
                "same budget to both."
            )
        return train_attack

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
        return self.train_attack.replace(
            num_steps=steps,
            step_size=controllers.controlled_step_size(
                self.epsilon, steps, floor
            ),
        )

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
        # Exactly the method's trackers: compile() adds a private `loss`
        # tracker that a custom step never updates.
        return list(self.trackers.values())

    @property
    def num_classes(self) -> int:
        return int(self.classifier.output_shape[-1])

    def call(self, inputs, training=False):
        return self.classifier(inputs, training=training)

    def get_config(self):
        return {
            "train_attack": attack_base.serialize(self.train_attack),
            "eval_attack": attack_base.serialize(self.eval_attack),
            "attack_training_mode": self.attack_training_mode,
            "weight_decay": self.weight_decay,
            "check_inputs": self.check_inputs,
            "seed": self.seed,
        }

    def compile(self, *args, **kwargs):
        """`keras.Model.compile`; binds a `PerMinibatch` learning rate."""
        super().compile(*args, **kwargs)
        optimizer = getattr(self.optimizer, "inner_optimizer", self.optimizer)
        schedule = getattr(optimizer, "_learning_rate", None)
        if isinstance(schedule, schedules.PerMinibatch):
            schedule.bind(self.minibatches)

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
        """Unpacks a batch, casts it, and checks its values when asked."""
        x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
        x = tf.convert_to_tensor(x)
        if not x.dtype.is_floating:
            raise TypeError(
                f"Images must be floating point in [0, 1]; got {x.dtype}. "
                "Divide uint8 images by 255 in the input pipeline."
            )
        y = tf.cast(tf.reshape(y, [-1]), tf.int32)
        # XLA drops Assert ops (with a warning per op), so skip them there.
        if self.check_inputs and not getattr(self, "jit_compile", False):
            x, y = self._assert_valid(x, y)
        return x, y

    def _assert_valid(self, x, y):
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
                self.num_classes,
                message=f"Labels must be in [0, {self.num_classes}) for this "
                "classifier; got a label >= num_classes.",
            ),
        ]
        with tf.control_dependencies(checks):
            return tf.identity(x), tf.identity(y)

    def attack(self, attack, x, target, **kwargs):
        """Runs `attack` on the classifier in the method's attack mode."""
        return attack(
            self.classifier,
            x,
            target,
            seed=self.seed_generator,
            training=self.attack_training_mode,
            **kwargs,
        )

    def next_seed(self) -> tf.Tensor:
        """A fresh stateless seed from the method's generator."""
        return attack_base.as_seed(self.seed_generator)

    def replica_mean(self, values: tf.Tensor) -> tf.Tensor:
        """Batch mean of per-example values, scaled for the strategy.

        Use this for hand-written loss terms: like a Keras loss object with
        its default reduction, it divides by the number of replicas, since
        the optimizer sums gradients over replicas.
        """
        values = tf.cast(values, tf.float32)
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
        """Updates the trackers; `loss` is the replica-scaled loss."""
        self.trackers[LOSS].update_state(loss * num_replicas())
        if clean_logits is not None:
            self.trackers[CLEAN_ACCURACY].update_state(y, clean_logits)
        if adv_logits is not None:
            self.trackers[ADV_ACCURACY].update_state(y, adv_logits)

    def logs(self, names):
        return {name: self.trackers[name].result() for name in names}

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
        logs = self.minibatch_update(x, y)
        self.minibatches.assign_add(1)
        return logs

    def test_step(self, data):
        x, y = self.prepare_batch(data)
        logits = self.classifier(x, training=False)
        loss = self.cross_entropy(y, logits)
        self.trackers[LOSS].update_state(loss * num_replicas())
        self.trackers[CLEAN_ACCURACY].update_state(y, logits)
        names = (LOSS, CLEAN_ACCURACY)
        if self.eval_attack is not None:
            x_adv = self.eval_attack(
                self.classifier, x, y, seed=self.seed_generator, training=False
            )
            adv_logits = self.classifier(x_adv, training=False)
            self.trackers[ROBUST_ACCURACY].update_state(y, adv_logits)
            names = self.test_metric_names
        return self.logs(names)


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
