"""The base class every training method subclasses."""

import keras
import tensorflow as tf

from tfadv.attacks import base as attack_base

# The metric names every method reports, so curves overlay in TensorBoard.
LOSS = "loss"
CLEAN_ACCURACY = "clean_accuracy"
ADV_ACCURACY = "adv_accuracy"
ROBUST_ACCURACY = "robust_accuracy"


def num_replicas() -> int:
    """Replicas in the current strategy (1 outside any strategy)."""
    return tf.distribute.get_strategy().num_replicas_in_sync


class AdversarialTrainer(keras.Model):
    """A Keras model that trains a wrapped classifier with one method.

    The trainer owns the classifier, the method's attacks, its metric
    trackers and one `SeedGenerator` for all in-step randomness. `call`
    delegates to the classifier, so `predict`, `evaluate` and the TensorBoard
    graph see the classifier; `model.keras` exports are made from
    `trainer.classifier` and load with plain Keras.

    Subclasses implement `compute_adversarial_loss` and, where the attack
    is special, `perturb` (the common case: one attack, one loss, one
    update), or override `train_step` wholesale (methods with a different
    update structure: Free-AT, YOPO). `test_step` reports
    clean accuracy and, with an `eval_attack`, robust accuracy, so
    `fit(validation_data=...)` gives robust validation for free.

    Train logs are `loss`, `clean_accuracy` and `adv_accuracy`; validation
    logs are `loss`, `clean_accuracy` and `robust_accuracy` (Keras prefixes
    them with `val_`).

    Args:
        classifier: a Keras model mapping [0, 1] images to logits.
        eval_attack: the attack `test_step` uses for robust accuracy, or None
            for clean validation only.
        attack_training_mode: run the classifier in training mode (batch
            statistics, dropout, moving averages updated) while attacking.
            Each subclass documents and defaults it to its paper's choice.
        weight_decay: coupled L2 weight decay `w·θ` added to every gradient
            (PyTorch `SGD(weight_decay=w)`, ALGORITHMS.md §0.3 rule 5),
            applied to all trainable variables. Keep the optimizer's own
            decoupled `weight_decay` unset when using this.
        check_inputs: assert inside the step that images are finite and in
            [0, 1] and labels in [0, num_classes) (not under `jit_compile`,
            where XLA drops assertions; `tfadv.train` checks its data before
            training either way).
        seed: seed of the method's `SeedGenerator`.
        **kwargs: passed to `keras.Model` (e.g. `name`).
    """

    train_metric_names = (LOSS, CLEAN_ACCURACY, ADV_ACCURACY)
    test_metric_names = (LOSS, CLEAN_ACCURACY, ROBUST_ACCURACY)

    def __init__(
        self,
        classifier: keras.Model,
        *,
        eval_attack: attack_base.Attack | None = None,
        attack_training_mode: bool = False,
        weight_decay: float = 0.0,
        check_inputs: bool = True,
        seed: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(classifier, keras.Model):
            raise TypeError(
                "classifier must be a keras.Model mapping images in [0, 1] "
                f"to logits; got {type(classifier).__name__}."
            )
        self.classifier = classifier
        self.eval_attack = eval_attack
        self.attack_training_mode = bool(attack_training_mode)
        self.weight_decay = attack_base.check_non_negative(
            "weight_decay", weight_decay
        )
        self.check_inputs = bool(check_inputs)
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
            "attack_training_mode": self.attack_training_mode,
            "weight_decay": self.weight_decay,
            "check_inputs": self.check_inputs,
        }

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

    def attack(self, attack, x, y):
        """Runs `attack` on the classifier in the method's attack mode."""
        return attack(
            self.classifier,
            x,
            y,
            seed=self.seed_generator,
            training=self.attack_training_mode,
        )

    def replica_mean(self, values: tf.Tensor) -> tf.Tensor:
        """Batch mean of per-example values, scaled for the strategy.

        Use this for hand-written loss terms: like a Keras loss object with
        its default reduction, it divides by the number of replicas, since
        the optimizer sums gradients over replicas.
        """
        values = tf.cast(values, tf.float32)
        return tf.reduce_mean(values) / num_replicas()

    def apply_gradients(self, tape, scaled_loss, variables=None):
        """Differentiates the loss and applies one optimizer update.

        Args:
            tape: the tape that recorded the loss.
            scaled_loss: `self.optimizer.scale_loss(loss)`, computed INSIDE
                the tape (under mixed precision the optimizer is a
                `LossScaleOptimizer`, whose scaling must be on the tape),
                where `loss` is replica-scaled (see `replica_mean`).
            variables: the variables to update; all trainable ones by
                default.

        Returns:
            The gradients of the scaled loss, before weight decay.
        """
        if variables is None:
            variables = self.trainable_variables
        grads = tape.gradient(scaled_loss, variables)
        self.optimizer.apply(self.add_weight_decay(grads, variables), variables)
        return grads

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

    # The step template.

    def perturb(self, x, y):
        """Makes the training examples, outside the update's gradient tape.

        Keeping the attack off the tape saves the memory and time a tape
        would spend recording the attack loop. The default runs
        `self.train_attack` (if the method has one) in the method's attack
        mode; methods whose attack needs more (TRADES' clean distribution)
        override this.
        """
        attack = getattr(self, "train_attack", None)
        if attack is None:
            return None
        return self.attack(attack, x, y)

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

    def train_step(self, data):
        x, y = self.prepare_batch(data)
        x_adv = self.perturb(x, y)
        with tf.GradientTape() as tape:
            loss, clean_logits, adv_logits = self.compute_adversarial_loss(
                x, y, x_adv
            )
            scaled_loss = self.optimizer.scale_loss(loss)
        self.apply_gradients(tape, scaled_loss)
        if clean_logits is None:
            clean_logits = self.classifier(x, training=False)
        self.update_metrics(
            loss, y, clean_logits=clean_logits, adv_logits=adv_logits
        )
        return self.logs(self.train_metric_names)

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
