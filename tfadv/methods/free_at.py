"""Free adversarial training (Shafahi et al., NeurIPS 2019)."""

import math

import gin
import keras
import tensorflow as tf

from tfadv.attacks import base as attack_base
from tfadv.attacks import threat_models
from tfadv.methods import base

DELTA_NAME = "free_at_delta"


@gin.register
class FreeAT(base.AdversarialTrainer):
    """Free adversarial training, Shafahi et al. (NeurIPS 2019).

    "Adversarial training for free!", arXiv 1904.12843; reference code
    `mahyarnajibi/FreeAdversarialTraining` and Wong et al.'s
    `locuslab/fast_adversarial: CIFAR10/train_free.py` (ALGORITHMS.md
    §6.3). It approximates the PGD-AT objective
    `min_θ E[max_{‖δ‖∞ ≤ ε} CE(f_θ(x + δ), y)]` by replaying each
    minibatch m times; every replay is one forward-backward pass whose
    gradient serves both players:

        g_θ, g_δ = ∇_{θ, δ} CE(f_θ(x + δ), y)
        θ ← optimizer step with g_θ
        δ ← Π(δ + s·sign(g_δ)),   s = ε by default

    with `Π` the projection onto the ε-box and then the image box.

    The perturbation carries across minibatches: δ is a persistent buffer
    of `batch_size` rows, zero at the start and never reset (both
    references do this). A smaller batch uses its first rows; the other
    rows keep their values. At the start of each minibatch δ is projected
    so that `x + δ` lies in [0, 1] (the ImageNet reference clamps `x + δ`).
    Under a distribution strategy each replica keeps its own rows: the
    buffer is a non-trainable `ON_READ` variable
    (`aggregation="only_first_replica"`) of `ceil(batch_size / replicas)`
    rows, updated only from its replica's gradient and never
    all-reduced. Checkpoints save replica 0's rows and restore them to
    every replica.

    Epochs: each minibatch gives m weight updates, so train for the
    natural epoch count divided by m (rounded up, Shafahi's ⌈90/m⌉ on
    ImageNet). Learning rate: Keras counts m optimizer steps per
    minibatch; wrap the schedule in `tfadv.schedules.per_minibatch` so it
    counts minibatches like every other method.

    BatchNorm: the attack and the update are the same pass, in train mode
    (`attack_training_mode` is always True). Cost: m forward-backward
    passes (m weight updates) per minibatch, plus one inference forward
    for the clean-accuracy metric. The logged `loss` and `adv_accuracy`
    average over the m replays.

    Example:
        trainer = tfadv.methods.FreeAT(classifier, epsilon=8 / 255,
                                       replays=8, batch_size=128)
        trainer.compile(optimizer=keras.optimizers.SGD(
            tfadv.schedules.PerMinibatch(schedule, replays=8),
            momentum=0.9))
        trainer.fit(train_ds, epochs=10)

    Args:
        classifier: a Keras model mapping [0, 1] images to logits, with a
            fully defined input shape.
        epsilon: L-inf budget in pixel units (8/255 on CIFAR-10).
        replays: m, the replays of each minibatch (>= 1; 8 on CIFAR-10).
        step_size: the step of δ; None means `epsilon` (both references).
        batch_size: the largest global batch the method will see; the
            buffer holds `ceil(batch_size / replicas)` rows per replica.
        **kwargs: see `AdversarialTrainer` (`eval_attack`, `weight_decay`).

    Raises:
        ValueError: bad `replays`, `batch_size`, `epsilon` or `step_size`,
            or `attack_training_mode=False`.
    """

    mutable_state_paths = (DELTA_NAME,)

    def __init__(
        self,
        classifier,
        *,
        epsilon: float = 8 / 255,
        replays: int = 8,
        step_size: float | None = None,
        batch_size: int = 128,
        **kwargs,
    ):
        if not kwargs.pop("attack_training_mode", True):
            raise ValueError(
                "FreeAT attacks and updates in one training-mode pass; "
                "attack_training_mode=False is not possible."
            )
        super().__init__(classifier, attack_training_mode=True, **kwargs)
        self.threat_model = threat_models.LinfThreatModel(epsilon)
        self.epsilon = self.threat_model.epsilon
        self.replays = attack_base.check_positive_int(
            "replays", replays, allow_zero=False
        )
        if step_size is None:
            step_size = self.epsilon
        self.step_size = attack_base.check_non_negative("step_size", step_size)
        self.batch_size = attack_base.check_positive_int(
            "batch_size", batch_size, allow_zero=False
        )
        image_shape = tuple(classifier.input_shape[1:])
        if any(d is None for d in image_shape):
            raise ValueError(
                "FreeAT keeps a perturbation of the input's shape, so the "
                "classifier needs a fully defined input shape; got "
                f"{classifier.input_shape}."
            )
        self.rows_per_replica = math.ceil(self.batch_size / base.num_replicas())
        # One buffer per replica, never synchronised: each replica reads
        # and writes its own rows; a cross-replica read (saving) takes
        # replica 0's.
        self.delta = keras.Variable(
            initializer="zeros",
            shape=(self.rows_per_replica, *image_shape),
            dtype="float32",
            trainable=False,
            synchronization="on_read",
            aggregation="only_first_replica",
            name=DELTA_NAME,
        )

    def get_config(self):
        return {
            **super().get_config(),
            "epsilon": self.epsilon,
            "replays": self.replays,
            "step_size": self.step_size,
            "batch_size": self.batch_size,
        }

    def _stored_rows(self, x):
        """This replica's buffer, after checking that the batch fits."""
        stored = tf.convert_to_tensor(self.delta)
        size = x.shape[0]
        if size is not None and size > self.rows_per_replica:
            raise ValueError(
                f"FreeAT keeps {self.rows_per_replica} rows of perturbation "
                f"per replica (batch_size={self.batch_size}) but got a batch "
                f"of {size} per replica. Set FreeAT.batch_size to the global "
                "training batch size."
            )
        if size is None and not getattr(self, "jit_compile", False):
            check = tf.debugging.assert_less_equal(
                tf.shape(x)[0],
                self.rows_per_replica,
                message="FreeAT.batch_size is smaller than the batch; set it "
                "to the global training batch size.",
            )
            with tf.control_dependencies([check]):
                stored = tf.identity(stored)
        return stored

    def train_step(self, data):
        x, y = self.prepare_batch(data)
        x = tf.cast(x, self.delta.dtype)
        stored = self._stored_rows(x)
        size = tf.shape(x)[0]
        # This minibatch's rows, made feasible for its images.
        delta = self.threat_model.project(x, x + stored[:size]) - x
        variables = self.trainable_variables
        for _ in range(self.replays):  # a static count: unrolled
            with tf.GradientTape() as tape:
                tape.watch(delta)
                adv_logits = self.classifier(x + delta, training=True)
                loss = self.cross_entropy(y, adv_logits)
                scaled = self.optimizer.scale_loss(loss)
            # One backward pass for the weights and the perturbation.
            delta_grad, *grads = tape.gradient(scaled, [delta, *variables])
            # A loss-scale overflow makes the gradients non-finite; the
            # optimizer then skips its update, and δ must not move either.
            delta_grad = tf.where(
                tf.math.is_finite(delta_grad), delta_grad, 0.0
            )
            self.optimizer.apply(
                self.add_weight_decay(grads, variables), variables
            )
            moved = self.threat_model.step(
                x + delta, delta_grad, self.step_size
            )
            delta = self.threat_model.project(x, moved) - x
            self.update_metrics(loss, y, adv_logits=adv_logits)
        self.delta.assign(tf.concat([delta, stored[size:]], axis=0))
        clean_logits = self.classifier(x, training=False)
        self.trackers[base.CLEAN_ACCURACY].update_state(y, clean_logits)
        return self.logs(self.train_metric_names)
