"""Free adversarial training (Shafahi et al., NeurIPS 2019)."""

import math

import gin
import tensorflow as tf

from tfadv import validation
from tfadv.attacks import pgd
from tfadv.methods import base
from tfadv.methods import classifiers
from tfadv.methods import costs
from tfadv.methods import replay

DELTA_NAME = "free_at_delta"
# m on CIFAR-10 in both references.
DEFAULT_REPLAYS = 8


@gin.register
class FreeAT(base.AdversarialTrainer):
    """Free adversarial training, Shafahi et al. (NeurIPS 2019).

    "Adversarial training for free!", arXiv 1904.12843; reference code
    `mahyarnajibi/FreeAdversarialTraining` and Wong et al.'s
    `locuslab/fast_adversarial: CIFAR10/train_free.py` (docs/algorithms.md
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
    minibatch; wrap the schedule in `tfadv.schedules.PerMinibatch` so it
    counts minibatches like every other method.

    The training attack holds the settings of δ's steps: its threat model,
    its `step_size` (ε by default, both references) and its `num_steps`,
    which is m (the replays; 8 by default). The default is
    `ProjectedGradient(epsilon, step_size=epsilon, num_steps=8,
    start="none")`. The replay loop (`tfadv.methods.replay`) is shared with
    DEAT.

    BatchNorm: the attack and the update are the same pass, in train mode
    (`attack_training_mode` is always True). Cost: m forward-backward
    passes (m weight updates) per minibatch, plus one inference forward
    for the clean-accuracy metric. The logged `loss` and `adv_accuracy`
    average over the m replays.

    Example:
        trainer = tfadv.methods.FreeAT(classifier, epsilon=8 / 255,
                                       batch_size=128)
        trainer.compile(optimizer=keras.optimizers.SGD(
            tfadv.schedules.PerMinibatch(schedule), momentum=0.9))
        trainer.fit(train_ds, epochs=10)

    Args:
        classifier: a Keras model mapping [0, 1] images to logits, with a
            fully defined input shape.
        batch_size: the largest global batch the method will see; the
            buffer holds `ceil(batch_size / replicas)` rows per replica.
        **kwargs: see `AdversarialTrainer` (`train_attack`, a
            `ProjectedGradient`; `epsilon`; `eval_attack`; `weight_decay`).

    Raises:
        ValueError: bad `batch_size` or training attack, or
            `attack_training_mode=False`.
    """

    mutable_state = (*base.AdversarialTrainer.mutable_state, DELTA_NAME)
    paper_epsilon = 8 / 255  # CIFAR-10; never a default
    default_attack_training_mode = True
    train_attack_types = (pgd.ProjectedGradient,)
    weight_perturbation_refused = (
        "each of its m replays is one forward-backward pass whose gradient "
        "updates both the weights and the carried perturbation δ, so there "
        "is no loss at fixed adversarial examples to ascend before an "
        "update, and no reference combines the two."
    )

    def __init__(self, classifier, *, batch_size: int = 128, **kwargs):
        if kwargs.get("attack_training_mode") is False:
            raise ValueError(
                "FreeAT attacks and updates in one training-mode pass; "
                "attack_training_mode=False is not possible."
            )
        super().__init__(classifier, **kwargs)
        validation.count(
            "FreeAT replays (train_attack.num_steps)",
            self.train_attack.num_steps,
            minimum=1,
        )
        self.batch_size = validation.count("batch_size", batch_size, minimum=1)
        image_shape = classifiers.defined_image_shape(
            classifier, method="FreeAT", what="a perturbation"
        )
        self.rows_per_replica = math.ceil(self.batch_size / base.num_replicas())
        # One buffer per replica: each replica reads and writes its own
        # rows; a cross-replica read (saving) takes replica 0's.
        self.delta = classifiers.per_replica_buffer(
            (self.rows_per_replica, *image_shape), "float32", DELTA_NAME
        )

    @property
    def replays(self) -> int:
        """m, the replays of each minibatch: the attack's `num_steps`."""
        return self.train_attack.num_steps

    @classmethod
    def replays_in_config(cls) -> int:
        """The replays m as the parsed gin configuration sets, unbuilt.

        The `num_steps` bound to the attack that `FreeAT.train_attack`
        references (with its scope, e.g. `train/ProjectedGradient`), or the
        default m when none is bound. Tools that compare methods at equal
        updates read it (Free-AT makes m updates per minibatch).
        """
        try:
            attack = gin.query_parameter("FreeAT.train_attack")
            steps = gin.query_parameter(
                "/".join([*attack.scopes, attack.selector]) + ".num_steps"
            )
        except (ValueError, AttributeError):  # not bound
            return DEFAULT_REPLAYS
        if isinstance(steps, gin.config.ConfigurableReference):
            steps = steps.scoped_configurable_fn()  # a macro: %REPLAYS
        return int(steps)

    def default_train_attack(self, epsilon):
        return pgd.ProjectedGradient(
            epsilon=epsilon,
            step_size=epsilon,
            num_steps=DEFAULT_REPLAYS,
            start="none",
            name=f"free{DEFAULT_REPLAYS}",
        )

    def get_config(self):
        return {**super().get_config(), "batch_size": self.batch_size}

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

    def passes(self):
        # m replays, each one pass and one update; the clean forward feeds
        # clean_accuracy.
        m = self.replays
        return costs.Passes(
            weight_input_passes=m, updates=m, inference_forwards=1
        )

    def minibatch_update(self, x, y):
        x = tf.cast(x, self.delta.dtype)
        stored = self._stored_rows(x)
        size = tf.shape(x)[0]
        # This minibatch's rows, made feasible for its images.
        delta = self.threat_model.project(x, x + stored[:size]) - x
        result = replay.replay(
            self,
            x,
            y,
            delta,
            num_replays=self.replays,
            attack=self.train_attack,
        )
        self.delta.assign(tf.concat([result.delta, stored[size:]], axis=0))
        return self.step_logs(x, y)
