"""GradAlign: FGSM plus a gradient-alignment regulariser (2020)."""

import gin
import tensorflow as tf

from tfadv import validation
from tfadv.attacks import base as attack_base
from tfadv.attacks import objectives
from tfadv.attacks import pgd
from tfadv.methods import base
from tfadv.methods import batches
from tfadv.methods import costs
from tfadv.methods import taylor

# The reference's FGSM step, as a multiple of epsilon (`--fgsm_alpha`);
# from the zero start the ε-clip cuts it back to ε.
STEP_FRACTION = 1.25
# λ at 8/255 on CIFAR-10 in the reference's runs, named in the error when
# align_weight is missing (never used silently).
PAPER_ALIGN_WEIGHT = 0.2


def gradient_cosine(g1: tf.Tensor, g2: tf.Tensor):
    """Per-example cosine of two input gradients over the flattened image.

    Computed in float32. An example whose `g1` or `g2` is zero has no
    direction; it gets cosine 0 and `keep` False (the reference drops it
    from the mean).

    Args:
        g1: gradients, shape `(batch, ...)`.
        g2: gradients of the same shape.

    Returns:
        `(cosine, keep)`: float32 cosines and a boolean mask, shape
        `(batch,)`.
    """
    batch = tf.shape(g1)[0]
    g1 = tf.reshape(tf.cast(g1, tf.float32), [batch, -1])
    g2 = tf.reshape(tf.cast(g2, tf.float32), [batch, -1])
    # Each row is divided by its largest entry first: the cosine does not
    # change (so no gradient flows through that scale), the squares cannot
    # underflow, and a zero row divides by 1, so that neither the value
    # nor the gradient of a dropped example is NaN.
    peak1 = tf.stop_gradient(tf.reduce_max(tf.abs(g1), axis=1))
    peak2 = tf.stop_gradient(tf.reduce_max(tf.abs(g2), axis=1))
    keep = tf.logical_and(peak1 > 0.0, peak2 > 0.0)
    ones = tf.ones_like(peak1)
    g1 = g1 / tf.where(keep, peak1, ones)[:, None]
    g2 = g2 / tf.where(keep, peak2, ones)[:, None]
    norm1 = tf.sqrt(tf.where(keep, tf.reduce_sum(g1 * g1, axis=1), ones))
    norm2 = tf.sqrt(tf.where(keep, tf.reduce_sum(g2 * g2, axis=1), ones))
    cosine = tf.reduce_sum(g1 * g2, axis=1) / (norm1 * norm2)
    return tf.where(keep, cosine, tf.zeros_like(cosine)), keep


def masked_replica_mean(values, keep, sample_weight=None) -> tf.Tensor:
    """This replica's share of the mean of `values` over kept examples.

    The mean runs over the kept examples of the whole global batch: each
    replica sums its own kept values (times the sample weights, when
    given, as Keras losses weigh: the denominator counts examples, not
    weights) and divides by the kept count summed over all replicas, so
    the replicas' shares add up to the one-device value whatever each
    replica kept. With nothing kept anywhere it is 0.
    """
    keep = tf.cast(keep, tf.float32)
    values = tf.cast(values, tf.float32) * keep
    if sample_weight is not None:
        values = values * tf.cast(sample_weight, tf.float32)
    count = tf.reduce_sum(keep)
    count = batches.sum_replicas(count)
    count = tf.stop_gradient(count)
    return tf.reduce_sum(values) / tf.maximum(count, 1.0)


@gin.register
class GradAlign(base.AdversarialTrainer):
    """GradAlign (Andriushchenko & Flammarion, NeurIPS 2020).

    "Understanding and Improving Fast Adversarial Training", arXiv
    2007.02617; reference code `tml-epfl/understanding-fast-adv-training:
    train.py` (docs/algorithms.md §10). FGSM adversarial training plus a
    regulariser that keeps the input gradient aligned inside the ε-ball,
    which prevents catastrophic overfitting. Per minibatch, as the
    reference's official runs (`--attack_init=zero`):

        g1 = ∇_x CE(f_θ(x), y)                        (a constant)
        δ = Π(ε·sign(g1))                              (FGSM from δ = 0)
        η ~ U(−ε, ε)^d, fresh;  g2 = ∇_η CE(f_θ(x + η), y)
        cos_i = ⟨g1_i, g2_i⟩ / (‖g1_i‖₂ ‖g2_i‖₂)      (per example, flat)
        L = CE(f_θ(x + δ), y) + λ·(1 − mean_{i∈K} cos_i)

    K is the set of examples whose g1 and g2 both have a non-zero norm
    (the reference drops the others from the mean); with K empty the
    regulariser is 0 (the reference would divide by zero). The weight
    gradient of the regulariser flows through g2 only: g2 is computed on a
    `GradientTape` nested inside the update's tape
    (`tfadv.methods.taylor.input_derivatives`), so the update
    differentiates it again (double backpropagation, through the
    training-mode BatchNorm of that forward, as the reference); g1 is the
    FGSM pass's gradient, held constant.

    Choices, each the reference's unless said:
    - FGSM from zero. The reference's step is `1.25ε` (`--fgsm_alpha`),
      which the ε-clip cuts back to ε from the zero start; the default
      attack keeps that step, so `random_init=True` (the reference's
      argparse default, FGSM-RS: start `U(−ε, ε)`, g1 taken there) gives
      the reference's random-init variant. tfadv projects the random start
      into [0, 1] before the step (the reference clips only the point the
      gradient is taken at).
    - x + η is NOT clipped to [0, 1] (it may leave the image box);
      `clip_noisy_input=True` clips it, as the FastAT Benchmark does.
    - λ (`align_weight`) is required: the reference scales it with ε
      (λ = 0.02·10^(ε·255/8) on CIFAR-10: 0.2 at 8/255, 0.063 at 4/255,
      2.0 at 16/255) and its rule does not transfer across datasets (it
      gives λ ≈ 31 at ε = 0.1), so, as for ε, tfadv sets no default.
    - Under mixed precision the inner loss is multiplied by a power of two
      (`tfadv.attacks.base.for_gradient`) before its input gradient is
      taken, so that g2 does not underflow in float16; the cosine, taken
      in float32, does not change with that scale.
    - Under a `MirroredStrategy` the mean over K is the global batch's:
      the kept count is summed over the replicas (an all-reduce), so two
      replicas make the update one device makes.
    The reference's cyclic learning rate (peak 0.3 at 40 % of training)
    and model are the gin file's (`experiments/cifar10_grad_align.gin`).

    BatchNorm: the FGSM pass runs in `attack_training_mode` (training
    mode by default, as the reference, whose model stays in train mode);
    the update's forward at x + δ and the regulariser's at x + η are in
    training mode. Logs: `loss` is the whole objective (CE plus the
    regulariser), `adv_accuracy` on x + δ, `clean_accuracy` from an
    inference forward on x.

    Cost per minibatch, in forwards F: FGSM 1F + 1 input backward; the
    update's forward and backward at x + δ (3F); the regulariser's
    forward and input backward (2F), double-backpropagated (about 4F);
    about 11 to 13F in all, 2 to 3 times N-FGSM's or FGSM-RS's (the
    FastAT Benchmark measured 2.9×), plus the inference forward for
    `clean_accuracy`.

    Example:
        trainer = tfadv.methods.GradAlign(
            classifier, epsilon=8 / 255, align_weight=0.2)
        trainer.compile(optimizer=keras.optimizers.SGD(
            tfadv.schedules.cyclic(steps_per_epoch=390, epochs=30,
                                   max_lr=0.3, peak_fraction=0.4),
            momentum=0.9))
        trainer.fit(train_ds, epochs=30)

    Args:
        classifier: a Keras model mapping [0, 1] images to logits.
        align_weight: λ >= 0, the regulariser's weight; required (see
            above). 0 is plain FGSM training.
        random_init: the default attack starts from `U(−ε, ε)` (the
            reference's FGSM-RS variant) instead of from x; only without
            a `train_attack`.
        clip_noisy_input: clip x + η to [0, 1] before g2 is taken.
        **kwargs: see `AdversarialTrainer` (`train_attack`, `epsilon`,
            `attack_training_mode`, `eval_attack`, `weight_decay`). Without
            a `train_attack`, the reference's FGSM is built at `epsilon`,
            then required (the paper's CIFAR-10 budget is 8/255): one step
            of `1.25 * epsilon`, from x (or a uniform start), projected. A
            given `train_attack` is a `tfadv.attacks.ProjectedGradient`
            with one restart; its first step's gradient is g1 (later
            steps, if any, continue from there).

    Raises:
        ValueError: no `align_weight`, a negative one, `random_init` with
            a `train_attack`, or a training attack with restarts.
    """

    paper_epsilon = 8 / 255  # CIFAR-10; never a default
    default_attack_training_mode = True
    train_attack_types = (pgd.ProjectedGradient,)

    def __init__(
        self,
        classifier,
        *,
        align_weight: float | None = None,
        random_init: bool = False,
        clip_noisy_input: bool = False,
        **kwargs,
    ):
        if random_init and kwargs.get("train_attack") is not None:
            raise ValueError(
                "GradAlign got random_init=True and a train_attack; "
                "random_init chooses the start of the default attack only. "
                "Give the attack start='uniform' instead."
            )
        # Read by default_train_attack, which the base calls.
        self._random_init = bool(random_init)
        super().__init__(classifier, **kwargs)
        if align_weight is None:
            raise ValueError(
                "GradAlign needs its regulariser weight: give align_weight= "
                "(λ). Its paper trains CIFAR-10 with λ = "
                f"{PAPER_ALIGN_WEIGHT} at ε = 8/255 and scales it with ε "
                "(λ = 0.02·10^(ε·255/8)); that rule does not transfer to "
                "other datasets, so tfadv sets no default (for "
                "Fashion-MNIST at ε = 0.1, try λ in 0.1 to 2)."
            )
        self.align_weight = validation.non_negative(
            "GradAlign align_weight", align_weight
        )
        self.clip_noisy_input = bool(clip_noisy_input)
        if self.train_attack.restarts != 1:
            raise ValueError(
                "GradAlign's training attack must run once (restarts=1): "
                "g1 is the gradient of its first step; got "
                f"{self.train_attack!r}."
            )

    @property
    def random_init(self) -> bool:
        """Whether the training attack starts from a uniform random point."""
        return self.train_attack.start == "uniform"

    def default_train_attack(self, epsilon):
        return pgd.ProjectedGradient(
            epsilon=epsilon,
            step_size=STEP_FRACTION * epsilon,
            num_steps=1,
            start="uniform" if self._random_init else "none",
            name="fgsm_rs" if self._random_init else "fgsm",
        )

    def get_config(self):
        # random_init is carried by the serialized train_attack's start.
        return {
            **super().get_config(),
            "align_weight": self.align_weight,
            "clip_noisy_input": self.clip_noisy_input,
        }

    def passes(self):
        # The regulariser is a second-order pass on the update's tape; the
        # clean forward feeds clean_accuracy.
        attack = self.current_train_attack()
        return (
            costs.attack_passes(attack)
            + costs.target_passes(attack)
            + costs.update(self, second_order=int(bool(self.align_weight)))
            + costs.Passes(inference_forwards=1)
        )

    def fgsm(self, x, y):
        """The training examples and g1, the gradient of the first step.

        Runs the training attack's first step by hand, in the method's
        attack mode, to keep its input gradient (the reference reuses the
        FGSM gradient); later steps, if the attack has any, continue from
        its result.

        Returns:
            `(x_adv, g1)`, both without gradient.
        """
        attack = self.current_train_attack()
        target = self.attack_target(x, y, attack)
        start = attack.initial_point(x, self.next_seed())
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(start)
            logits = self.classifier(start, training=self.attack_training_mode)
            objective = attack.objective(logits, target)
            # Scaled so that a float16 model's gradient cannot underflow;
            # the sign and the cosine are the same.
            loss = attack_base.for_gradient(tf.reduce_sum(objective), objective)
        g1 = tape.gradient(
            loss, start, unconnected_gradients=tf.UnconnectedGradients.ZERO
        )
        threat = attack.threat_model
        x_adv = threat.project(x, threat.step(start, g1, attack.step_size))
        if attack.num_steps > 1:
            rest = attack.replace(num_steps=attack.num_steps - 1)
            x_adv = self.attack(rest, x, target, x_init=x_adv)
        return tf.stop_gradient(x_adv), tf.stop_gradient(g1)

    def perturb(self, x, y):
        """The FGSM examples (see `fgsm`)."""
        return self.fgsm(x, y)[0]

    def noisy_input(self, x):
        """The point of g2: `x + η`, η uniform in the ε-ball, fresh per step."""
        point = self.threat_model.sample(x, self.next_seed())
        if self.clip_noisy_input:
            point = tf.clip_by_value(point, 0.0, 1.0)
        return point

    def noisy_gradient(self, x, y):
        """g2: the input gradient of the cross-entropy at `noisy_input(x)`.

        Recorded on a tape inside the caller's, so an enclosing tape
        differentiates it with respect to the weights (double
        backpropagation); the classifier runs in training mode, as the
        update's forward. Its scale is a power of two times the summed
        losses' gradient (the cosine ignores it).
        """

        def loss_fn(inputs):
            logits = self.classifier(inputs, training=True)
            losses = objectives.cross_entropy(logits, y)
            # A power of two per step (outside the gradient): g2 does not
            # underflow in float16, and its direction is unchanged.
            return attack_base.for_gradient(losses, losses), logits

        _, _, g2, _ = taylor.input_derivatives(loss_fn, self.noisy_input(x))
        return g2

    def alignment_regulariser(self, x, y, g1):
        """This replica's share of `λ·(1 − mean_{i∈K} cos(g1_i, g2_i))`.

        Call it inside the update's tape: g2 is recorded for double
        backpropagation.
        """
        cosine, keep = gradient_cosine(g1, self.noisy_gradient(x, y))
        misalignment = masked_replica_mean(
            1.0 - cosine, keep, self.sample_weight
        )
        # Summed over the replicas (the optimizer sums their gradients),
        # the shares make the global batch's mean: no further scaling.
        return self.align_weight * misalignment

    def update_loss(self, x, y, x_adv, g1):
        """The update's loss: the FGSM cross-entropy and the regulariser.

        Returns:
            `(loss, clean_logits, adv_logits)`, as `compute_adversarial_loss`.
        """
        loss, clean_logits, adv_logits = self.compute_adversarial_loss(
            x, y, x_adv
        )
        if self.align_weight:
            loss = loss + self.alignment_regulariser(x, y, g1)
        return loss, clean_logits, adv_logits

    def minibatch_update(self, x, y):
        x_adv, g1 = self.fgsm(x, y)
        # A weight perturbation (AWP) ascends the whole loss, regulariser too.
        self.perturb_weights(self.update_loss, x, y, x_adv, g1)
        with tf.GradientTape() as tape:
            loss, clean_logits, adv_logits = self.update_loss(x, y, x_adv, g1)
            scaled_loss = self.scale_loss(loss)
        self.apply_gradients(tape, scaled_loss)
        return self.step_logs(
            x, y, loss=loss, clean_logits=clean_logits, adv_logits=adv_logits
        )
