"""FGSM-PGI: FGSM from a prior carried across epochs (Jia et al. 2022)."""

import threading

import gin
import keras
import tensorflow as tf

from tfadv import validation
from tfadv.attacks import base as attack_base
from tfadv.attacks import objectives
from tfadv.attacks import pgd
from tfadv.data import example_ids
from tfadv.methods import base
from tfadv.methods import batches
from tfadv.methods import classifiers
from tfadv.methods import costs
from tfadv.methods import per_example

PRIOR_NAME = "fgsm_pgi_prior"
MOMENTUM_NAME = "fgsm_pgi_momentum"
# The reference's CIFAR-10 values (jiaxiaojunQAQ/FGSM-PGI FGSM_MEP.py).
MSE_WEIGHT = 10.0  # --lamda, :41
MOMENTUM_DECAY = 0.3  # --momentum_decay, :42
RESET_PERIOD = 40  # --epochs_reset, :22 (epochs)
LABEL_SMOOTHING_FACTOR = 0.6  # --factor, :40 (the true class's target)

# Parameters written in epochs (`tfadv.configurables.epoch_parameters`): a
# run that trains a file's method for more or fewer epochs than the file
# scales them with it (tools/benchmark.py does).
EPOCH_PARAMETERS = ("FGSMPGI.reset_period",)


def smoothed_targets(y: tf.Tensor, num_classes: int, factor: float):
    """The reference's smoothed targets: `factor` on y, the rest shared.

    The true class gets `factor` and each other class
    `(1 − factor) / (num_classes − 1)` (PGI's `_label_smoothing`; not
    Keras's `label_smoothing=s`, which gives the true class
    `1 − s + s / num_classes`).
    """
    onehot = tf.one_hot(y, num_classes, dtype=tf.float32)
    other = (1.0 - factor) / (num_classes - 1)
    return factor * onehot + other * (1.0 - onehot)


def soft_cross_entropy(logits: tf.Tensor, targets: tf.Tensor) -> tf.Tensor:
    """Per-example `−Σ_c targets_c · log softmax(logits)_c`, in float32."""
    log_p = tf.nn.log_softmax(tf.cast(logits, tf.float32), axis=-1)
    return -tf.reduce_sum(targets * log_p, axis=-1)


class _BatchIds(threading.local):
    """The example ids of the batch a replica's step is working on.

    MirroredStrategy traces each replica's step in a thread of its own.
    """

    value = None


@gin.register
class FGSMPGI(base.AdversarialTrainer):
    """FGSM-PGI, prior-guided initialisation (Jia et al., ECCV 2022).

    "Prior-Guided Adversarial Initialization for Fast Adversarial
    Training", Jia, Zhang, Wei, Wu, Zhu, Cao and Cao, arXiv 2207.08859;
    reference code `jiaxiaojunQAQ/FGSM-PGI: FGSM_MEP.py`, the
    momentum-of-epoch-prior form, the only one released (docs/algorithms.md
    §11). FGSM starts from the perturbation the same example got in the
    previous epoch (its prior), so the start costs nothing and carries the
    attack's strength across epochs; a regulariser keeps the logits at the
    new point close to those at the prior. Per minibatch of examples with
    ids I, images x and labels y:

        ỹ = smooth(y)         (0.6 on y, 0.4 / (C − 1) on the others)
        δ0 = P[I]             (the prior; x + δ0 clipped into [0, 1])
        z0 = f_θ(x + δ0);  g = ∇_δ0 LS-CE(z0, ỹ)
        m = g / ‖g‖₁ + μ·M[I]            (‖g‖₁ over the whole batch)
        P[I] ← Π(δ0 + α·sign(m))          (the next epoch's prior)
        δ = Π(δ0 + α·sign(g))             (this update's perturbation)
        z = f_θ(x + δ)
        L = LS-CE(z, ỹ) + λ·mean_{b,c}(z − z0)²
        θ ← θ − lr·∇_θ L;  M[I] ← m

    with `Π` the projection onto the ε-box and then the image box, α the
    training attack's step (ε), λ = 10, μ = 0.3, and LS-CE the
    cross-entropy against the smoothed targets. The two steps from one
    gradient differ on purpose: the stored prior follows the momentum,
    the trained example the current gradient. The MSE is on logits,
    averaged over batch × classes, and its gradient flows into BOTH
    forwards (z0 is not held constant). Every `reset_period` epochs
    (epochs e with e mod R = 0, counted from 0) the priors become random
    corners of the box, `±min(α, ε)` per pixel, and the momenta zero
    (`on_epoch_begin`); the buffers start that way too.

    Choices, each the reference's unless said:
    - x + δ0 is clipped into [0, 1] before the first forward [X, as the
      FastAT Benchmark]: a prior was projected for the previous epoch's
      view of the example, which may differ (crop, flip), and tfadv's
      inputs stay in the image box. The reference feeds x + δ0 unclipped.
    - The prior is per example, not per view: under crop-and-flip
      augmentation next epoch's prior meets a shifted or mirrored image,
      as in the reference.
    - ‖g‖₁ is over the global batch: under a `MirroredStrategy` each
      replica's sum of |g| is all-reduced, so two replicas take the steps
      one device takes. With g = 0 everywhere, m = μ·M (the reference
      would divide by zero).
    - Each example's gradient is that of its own loss (the sum of the
      per-example losses, scaled by a power of two against float16
      underflow and scaled back, `tfadv.attacks.base.gradient_scale`); the
      reference's batch mean differs by a constant that ‖g‖₁ removes.
    - The input gradient costs an input-only backward; the reference's
      first `backward()` also fills the weight gradients it then discards.

    The per-example state. Two buffers with one row per training example,
    P (priors) and M (momenta), each `num_examples × image size` float32:
    about 2 × N × H × W × C × 4 bytes (Fashion-MNIST, 60,000 × 784: 376 MB;
    CIFAR-10, 50,000 × 3072: 1.2 GB), held on the training device, by
    every replica under a distribution strategy, and written into every
    checkpoint (`tfadv.methods.per_example`). Rows are found by the
    examples' ids: training batches must be `({"image": x,
    "example_id": ids}, y)` (`tfadv.data.example_ids`); a batch without
    ids is refused when the step is built, before any update.
    `tfadv.train` makes such batches and sets `num_examples` itself; in
    Python use `tfadv.data.make_datasets(..., example_ids=True)` or
    `tfadv.data.add_example_ids`. The buffers are reset every
    `reset_period` epochs by the epoch hook, which `fit` runs itself.
    Validation, `evaluate` and `predict` take plain images (ids, if
    given, are ignored).

    BatchNorm: both forwards in training mode (`attack_training_mode` is
    the mode of the prior's forward, training by default), so the
    statistics move twice per minibatch, as in the reference. Logs:
    `loss` is the whole objective, `adv_accuracy` on x + δ,
    `clean_accuracy` from an inference forward on x.

    Cost per minibatch, in forwards F: the prior's forward (1F) and its
    input backward (about 1F), the update's forward (1F), and one backward
    through both forwards (about 4F): about 7F, 1.4 times FGSM-RS's 5F
    (the FastAT Benchmark measured 1.36 × N-FGSM's time), plus the
    inference forward for `clean_accuracy`; no extra attack pass.

    Example:
        data = tfadv.data.make_datasets(name="cifar10", example_ids=True)
        trainer = tfadv.methods.FGSMPGI(
            classifier, epsilon=8 / 255,
            num_examples=data.info.num_train)
        trainer.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
        trainer.fit(data.train, epochs=110,
                    callbacks=[data.order_callback()])

    Args:
        classifier: a Keras model mapping [0, 1] images to logits, with a
            fully defined input shape (the buffers have its rows).
        num_examples: N, the size of the training set: ids lie in
            [0, N). Required.
        mse_weight: λ >= 0, the weight of the logits' MSE (10).
        momentum_decay: μ >= 0, the momentum's decay (0.3).
        reset_period: R >= 1, epochs between resets of the buffers (40 of
            the reference's 110 CIFAR-10 epochs; 10 on CIFAR-100).
        label_smoothing_factor: the true class's smoothed target, in
            (0, 1] (0.6; 1 is no smoothing), in both losses.
        **kwargs: see `AdversarialTrainer` (`train_attack`, `epsilon`,
            `attack_training_mode`, `eval_attack`, `weight_decay`, `seed`,
            which seeds the resets). Without a `train_attack`, the step is
            built at `epsilon`, then required (the paper's CIFAR-10 budget
            is 8/255): `ProjectedGradient(epsilon, step_size=epsilon,
            num_steps=1, start="none")`. A given one must be an L∞
            `ProjectedGradient` of one step, one restart, start "none"
            (the prior is the start) and the cross-entropy objective; it
            supplies ε, α (`step_size`) and the projection.

    Raises:
        ValueError: no or a bad `num_examples`, a bad weight, decay,
            period or factor, or a training attack of another form.
    """

    mutable_state = (
        *base.AdversarialTrainer.mutable_state,
        PRIOR_NAME,
        MOMENTUM_NAME,
    )
    paper_epsilon = 8 / 255  # CIFAR-10; never a default
    default_attack_training_mode = True
    train_attack_types = (pgd.ProjectedGradient,)
    uses_example_ids = True
    weight_perturbation_refused = (
        "its update's loss includes the forward at the prior, the same pass "
        "whose input gradient makes this update's example, so the example "
        "(at w) and the loss (at w + v) would need that forward twice, and "
        "no reference combines the two."
    )

    def __init__(
        self,
        classifier,
        *,
        num_examples: int | None = None,
        mse_weight: float = MSE_WEIGHT,
        momentum_decay: float = MOMENTUM_DECAY,
        reset_period: int = RESET_PERIOD,
        label_smoothing_factor: float = LABEL_SMOOTHING_FACTOR,
        **kwargs,
    ):
        super().__init__(classifier, **kwargs)
        self._check_attack(self.train_attack)
        if num_examples is None:
            raise ValueError(
                "FGSMPGI keeps a prior perturbation and a momentum for every "
                "training example, in buffers of one row per example id: "
                "give num_examples= the size of the training set (ids lie "
                "in [0, num_examples)). tfadv.train sets it from the data; "
                "in Python it is make_datasets(...).info.num_train. The "
                "buffers take 2 × num_examples × image size float32 "
                "(CIFAR-10: 1.2 GB)."
            )
        self.num_examples = validation.count(
            "FGSMPGI num_examples",
            num_examples,
            minimum=1,
            meaning="the size of the training set",
        )
        self.mse_weight = validation.non_negative(
            "FGSMPGI mse_weight", mse_weight
        )
        self.momentum_decay = validation.non_negative(
            "FGSMPGI momentum_decay", momentum_decay
        )
        self.reset_period = validation.count(
            "FGSMPGI reset_period",
            reset_period,
            minimum=1,
            meaning="epochs between resets of the priors",
        )
        self.label_smoothing_factor = validation.in_interval(
            "FGSMPGI label_smoothing_factor",
            label_smoothing_factor,
            0.0,
            1.0,
            low_open=True,
            hint="It is the true class's target probability (the "
            "reference's 0.6; 1 is no smoothing).",
        )
        image_shape = classifiers.defined_image_shape(
            classifier,
            method="FGSMPGI",
            what="a prior perturbation per example",
        )
        self._ids = _BatchIds()
        self.prior = per_example.buffer(
            self.num_examples, image_shape, PRIOR_NAME
        )
        self.momentum = per_example.buffer(
            self.num_examples, image_shape, MOMENTUM_NAME
        )
        self.reset_buffers()

    @staticmethod
    def _check_attack(attack) -> None:
        settings = (
            attack.threat_model.norm == "linf",
            attack.num_steps == 1,
            attack.restarts == 1,
            attack.start == "none",
            attack.objective is objectives.get("cross_entropy"),
        )
        if not all(settings):
            raise ValueError(
                "FGSMPGI's training attack supplies ε, the step α and the "
                "projection of one signed step from the prior, so it must "
                "be an L∞ ProjectedGradient with num_steps=1, restarts=1, "
                "start='none' (the prior is the start) and the "
                "cross_entropy objective (smoothed by the method); got "
                f"{attack!r}."
            )

    def default_train_attack(self, epsilon):
        return pgd.ProjectedGradient(
            epsilon=epsilon,
            step_size=epsilon,
            num_steps=1,
            start="none",
            name="fgsm_pgi",
        )

    def get_config(self):
        return {
            **super().get_config(),
            "num_examples": self.num_examples,
            "mse_weight": self.mse_weight,
            "momentum_decay": self.momentum_decay,
            "reset_period": self.reset_period,
            "label_smoothing_factor": self.label_smoothing_factor,
        }

    # The buffers.

    def reset_buffers(self) -> None:
        """Random corners `±min(α, ε)` for every prior, zero momenta.

        The reference's reset: `clip(α·sign(U(−ε, ε)), −ε, ε)`. The signs
        come from the method's seed generator (its state is checkpointed,
        so a resumed run draws what the uninterrupted one drew). Runs
        eagerly; every replica's copy gets the same values.
        """
        attack = self.train_attack
        corner = min(attack.step_size, attack.epsilon)
        shape = tuple(self.prior.shape)
        seed = attack_base.as_seed(self.seed_generator)
        signs = tf.random.stateless_uniform(
            shape, seed, minval=0, maxval=2, dtype=tf.int32
        )
        self.prior.assign(tf.cast(2 * signs - 1, tf.float32) * corner)
        self.momentum.assign(tf.zeros(shape, tf.float32))

    def on_epoch_begin(self, epoch: int) -> None:
        if epoch % self.reset_period == 0:
            self.reset_buffers()

    # The step.

    def call(self, inputs, training=False):
        return super().call(example_ids.images_of(inputs), training=training)

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        images, ids = example_ids.split(x, who="FGSMPGI")
        self._ids.value = ids
        try:
            return super().train_step(
                keras.utils.pack_x_y_sample_weight(images, y, sample_weight)
            )
        finally:
            self._ids.value = None

    def test_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        return super().test_step(
            keras.utils.pack_x_y_sample_weight(
                example_ids.images_of(x), y, sample_weight
            )
        )

    def _batch_ids(self, x):
        ids = self._ids.value
        if self.check_inputs and not getattr(self, "jit_compile", False):
            ids = per_example.check_ids(ids, self.num_examples, who="FGSMPGI")
        batch = x.shape[0]
        if batch is not None and ids.shape[0] not in (None, batch):
            raise ValueError(
                f"FGSMPGI got {ids.shape[0]} example ids for a batch of "
                f"{batch} images; give one id per image."
            )
        return ids

    def prior_gradient(self, tape, start, prior_logits, targets):
        """g, the input gradient of the smoothed CE at the prior point.

        Taken on the update's tape (not recording), so that the update
        differentiates the prior's forward again.
        """
        losses = soft_cross_entropy(prior_logits, targets)
        scale = attack_base.gradient_scale(losses)
        # The total is recorded: the gradient is taken from it.
        total = tf.reduce_sum(losses) * scale
        with tape.stop_recording():
            grad = tape.gradient(
                total,
                start,
                unconnected_gradients=tf.UnconnectedGradients.ZERO,
            )
            return tf.cast(grad, tf.float32) / scale

    def two_steps(self, x, start, grad, momentum):
        """`(x_adv, next_prior, next_momentum)` from one gradient."""
        threat = self.threat_model
        alpha = self.train_attack.step_size
        norm = batches.sum_replicas(tf.reduce_sum(tf.abs(grad)))
        next_momentum = (
            tf.math.divide_no_nan(grad, norm) + self.momentum_decay * momentum
        )
        next_prior = threat.project(x, threat.step(start, next_momentum, alpha))
        x_adv = threat.project(x, threat.step(start, grad, alpha))
        return x_adv, next_prior - x, next_momentum

    def passes(self):
        # The prior's forward and input backward, the update at x + δ and,
        # when the MSE joins them, the weight backward through the prior's
        # forward; the clean forward feeds clean_accuracy.
        return costs.Passes(
            input_gradients=1,
            weight_passes=1,
            updates=1,
            weight_backwards=int(bool(self.mse_weight)),
            inference_forwards=1,
        )

    def minibatch_update(self, x, y):
        x = tf.cast(x, tf.float32)
        ids = self._batch_ids(x)
        prior = per_example.read_rows(self.prior, ids)
        momentum = per_example.read_rows(self.momentum, ids)
        start = self.threat_model.project(x, x + prior)
        targets = smoothed_targets(
            y, self.num_classes, self.label_smoothing_factor
        )
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(start)
            prior_logits = self.classifier(
                start, training=self.attack_training_mode
            )
            grad = self.prior_gradient(tape, start, prior_logits, targets)
            with tape.stop_recording():
                x_adv, next_prior, next_momentum = self.two_steps(
                    x, start, grad, momentum
                )
            adv_logits = self.classifier(x_adv, training=True)
            loss = self.replica_mean(soft_cross_entropy(adv_logits, targets))
            if self.mse_weight:
                gap = tf.cast(adv_logits, tf.float32) - tf.cast(
                    prior_logits, tf.float32
                )
                mse = tf.reduce_mean(tf.square(gap), axis=-1)
                loss = loss + self.mse_weight * self.replica_mean(mse)
            scaled_loss = self.scale_loss(loss)
        self.apply_gradients(tape, scaled_loss)
        per_example.write_rows(self.prior, ids, next_prior)
        per_example.write_rows(self.momentum, ids, next_momentum)
        return self.step_logs(x, y, loss=loss, adv_logits=adv_logits)
