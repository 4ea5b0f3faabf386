"""GAAT, Taylor-approximated adversarial training (Gong et al. 2023)."""

import math

import gin
import keras
import tensorflow as tf
from absl import logging

from tfadv import validation
from tfadv.attacks import base as attack_base
from tfadv.attacks import objectives
from tfadv.attacks import pgd
from tfadv.methods import base
from tfadv.methods import classifiers
from tfadv.methods import costs
from tfadv.methods import taylor

ORDERS = taylor.ORDERS
# The phases, in the order of their value in the step count PHASE.
PHASES = ("surrogate", "exact")
SURROGATE, EXACT = 0, 1
PHASE = "exact_phase"
# The monitor batch of the guard: the first minibatch's first rows.
MONITOR_IMAGES = "gaat_monitor_images"
MONITOR_LABELS = "gaat_monitor_labels"
MONITOR_COUNT = "gaat_monitor_count"
# Names of the values the guard adds to the epoch's logs.
REMAINDER_LOG = "gaat/remainder"
PHASE_LOG = "gaat/exact_phase"


@gin.register
class GAAT(base.AdversarialTrainer):
    """GAAT, after Gong et al. (2023), arXiv 2309.09464: a reconstruction.

    "Reducing Adversarial Training Cost with Gradient Approximation". No
    code exists and the method section could not be read; tfadv builds the
    method from the abstract alone ("the adversarial loss can be
    approximated by the partial sum of its Taylor series"; up to 60 % of
    the training time saved at comparable accuracy on MNIST, CIFAR-10 and
    CIFAR-100). Everything below is tfadv's design, and the exactness
    guard is tfadv's own addition (docs/algorithms.md §5).

    Around the clean input, per example, for δ in the threat set:

        ℓ(x + δ) = ℓ(x) + δᵀ∇ₓℓ(x) + ½ δᵀ∇²ₓℓ(x) δ + R₃

    Surrogate phase: one update on the mean of the partial sum
    `L_K(δ)`, K = `order`, with δ held constant:
    - order 1: `L₁ = ℓ(x) + δᵀ∇ₓℓ(x)`. The default δ is the maximiser of
      the linear term, `ε·sign(∇ₓℓ(x))` kept inside [0, 1], taken from
      the same inner gradient, so `L₁ = ℓ(x) + ε‖∇ₓℓ(x)‖₁` away from the
      box edges. The weight gradient is one double backpropagation.
    - order 2: `L₂ = L₁ + ½ δᵀ∇²ₓℓ(x) δ`, the Hessian-vector product by
      forward-over-backward (`tf.autodiff.ForwardAccumulator` with tangent
      δ around the inner `GradientTape`), differentiated by the outer tape.
      The tangent must be known before the forward pass, so the default δ
      is an FGSM step from x (the same `ε·sign(∇ₓℓ(x))`), one extra
      forward-backward pass.
    With `perturbation_attack`, δ is `attack(x) − x` instead (e.g. an
    FGSM-RS step), run outside the tape in the attack mode.

    Exact phase: PGD adversarial training, one update on
    `CE(f(x'), y)` with `x' = train_attack(x, y)`, as `PGDAT`.

    The guard: after every epoch, on a fixed monitor batch, the relative
    Taylor remainder `ρ = |mean ℓ(x + δ) − mean L_K(δ)| / mean ℓ(x + δ)`
    is measured with δ from `train_attack` (PGD-k), the current weights,
    inference mode and the fixed seed `guard_seed`. The next epoch runs
    the exact phase when `ρ > tau`, the surrogate otherwise. The monitor
    batch is the first rows (`monitor_size`, at most one replica's share)
    of the first minibatch the trainer sees, kept in its variables, so a
    checkpoint carries it, as it carries the phase (the step count
    `exact_phase`; the step is retraced when it changes). The guard runs
    in the epoch hook, which `fit` runs by itself. Logs `gaat/remainder`
    (ρ after the epoch) and `gaat/exact_phase` (1 if the epoch ran the
    exact phase);
    `results_info()` reports the phase and remainder of every epoch this
    trainer ran (a resumed run: those since the resume). The guard is the
    trainer's own epoch hook, not a separate callback, because all it
    reads and sets (monitor batch, phase, expansion) is the trainer's.

    The default order is 1, for its cost. Per minibatch, in forward
    passes F (a forward-backward FB ≈ 3F) by operation count: order 1 is
    the forward, the inner backward and the outer backward through both,
    about 9F ≈ 3 FB; order 2 adds the FGSM pass (1 FB) and doubles the
    inner passes with their tangents, about 7 FB; both add one inference
    forward (1F) at x + δ for `adv_accuracy`. The exact phase is PGD-k:
    (k + 1) FB plus the clean-accuracy forward, 11 FB at k = 10. On the
    project's 2-core CPU (small CNN, batch 128) an order-1 step took 0.23
    to 0.33 of a PGD-10 step and an order-2 step 0.55 to 1.3 of it
    (docs/algorithms.md §5): order 2 buys a smaller remainder, so more
    surrogate epochs, at two to four times the price of order 1. The
    guard costs one PGD-k and one expansion on the monitor batch per
    epoch.

    BatchNorm: as `PGDAT`, the attacks (PGD-k in the exact phase, the
    order-2 FGSM step or `perturbation_attack`) run in training mode by
    default (`attack_training_mode=True`), and the update's forward runs
    in training mode once (the expansion's forward at x); the metric
    forward at x + δ and the guard run in inference mode. Train logs are
    `loss` (the phase's training loss: the surrogate or the exact CE),
    `clean_accuracy` (the surrogate's own clean logits; in the exact
    phase, an inference forward) and `adv_accuracy` (at x + δ; at x').

    Example:
        trainer = tfadv.methods.GAAT(classifier, epsilon=0.1, order=1)
        trainer.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
        trainer.fit(train_ds, epochs=10)
        trainer.results_info()["gaat"]["surrogate_epoch_fraction"]

    Args:
        classifier: a Keras model mapping [0, 1] images to logits, with a
            fully defined input shape (the monitor batch is a variable).
        order: K, the order of the Taylor partial sum: 1 or 2.
        tau: τ > 0, the largest relative remainder at which the guard
            keeps the surrogate (0.1 by default; `float("inf")` never
            switches to the exact phase).
        perturbation_attack: a `tfadv.attacks.Attack` whose `x' − x` is the
            surrogate's δ, with the training budget; None for the default
            (above).
        initial_phase: "surrogate" or "exact", the phase of the first
            epoch.
        monitor_size: rows of the guard's monitor batch (>= 1).
        guard_seed: the seed of the guard's PGD start, the same at every
            check.
        **kwargs: see `AdversarialTrainer` (`train_attack`, the exact
            phase's attack and the guard's: PGDAT's default, PGD-7 with
            steps of ε/4 from a uniform start, when None; `epsilon`;
            `attack_training_mode`; `eval_attack`; `weight_decay`).

    Raises:
        TypeError: `perturbation_attack` is not an attack.
        ValueError: a bad argument, or a `perturbation_attack` with
            another budget than the training attack's.
    """

    mutable_state = (
        *base.AdversarialTrainer.mutable_state,
        MONITOR_IMAGES,
        MONITOR_LABELS,
        MONITOR_COUNT,
    )
    default_attack_training_mode = True

    def __init__(
        self,
        classifier,
        *,
        order: int = 1,
        tau: float = 0.1,
        perturbation_attack: attack_base.Attack | None = None,
        initial_phase: str = "surrogate",
        monitor_size: int = 128,
        guard_seed: int = 0,
        **kwargs,
    ):
        super().__init__(classifier, **kwargs)
        validation.count("GAAT order", order, minimum=1)
        self.order = validation.choice(
            "GAAT order",
            order,
            ORDERS,
            hint="It is the last Taylor term kept: 1 (gradient) or 2 "
            "(Hessian-vector product).",
        )
        self.tau = validation.in_interval(
            "GAAT tau",
            tau,
            0.0,
            math.inf,
            low_open=True,
            hint="It is the largest relative Taylor remainder at which "
            "the surrogate is kept, e.g. 0.1.",
        )
        self.initial_phase = validation.choice(
            "GAAT initial_phase", initial_phase, PHASES
        )
        self.monitor_size = validation.count(
            "GAAT monitor_size", monitor_size, minimum=1
        )
        self.guard_seed = validation.count("GAAT guard_seed", guard_seed)
        self.perturbation_attack = self._check_perturbation_attack(
            perturbation_attack
        )
        # The order-2 default δ: one FGSM step from x, ε·sign(∇ₓℓ(x)).
        self._fgsm = None
        if self.order == 2 and perturbation_attack is None:
            self._fgsm = pgd.ProjectedGradient(
                epsilon=self.epsilon,
                step_size=self.epsilon,
                num_steps=1,
                norm=self.threat_model.norm,
                start="none",
                name="gaat_fgsm",
            )
        image_shape = classifiers.defined_image_shape(
            classifier, method="GAAT", what="a monitor batch"
        )
        # One copy per replica, never synchronised, so the step fills it
        # inside a tf.cond without a cross-replica merge; each replica keeps
        # its own first rows, and a cross-replica read (the guard, a
        # checkpoint) takes the first replica's.
        self.monitor_images = classifiers.per_replica_buffer(
            (self.monitor_size, *image_shape), "float32", MONITOR_IMAGES
        )
        self.monitor_labels = classifiers.per_replica_buffer(
            (self.monitor_size,), "int32", MONITOR_LABELS
        )
        self.monitor_count = classifiers.per_replica_buffer(
            (), "int32", MONITOR_COUNT
        )
        self.add_step_count(PHASE, PHASES.index(self.initial_phase))
        self.phase_history = []
        self.remainder_history = []

    def _check_perturbation_attack(self, attack):
        if attack is None:
            return None
        if not isinstance(attack, attack_base.Attack):
            raise TypeError(
                "GAAT.perturbation_attack must be a tfadv.attacks.Attack "
                "(e.g. an FGSM-RS step, ProjectedGradient(num_steps=1, "
                f"step_size=1.25 * epsilon)) or None; got {attack!r}."
            )
        if not math.isclose(attack.epsilon, self.epsilon, rel_tol=1e-6):
            raise ValueError(
                f"GAAT.perturbation_attack has epsilon {attack.epsilon!r} "
                f"but the training attack {self.epsilon!r}; the surrogate's "
                "δ must lie in the training threat set, so give both the "
                "same budget."
            )
        return attack

    def default_train_attack(self, epsilon):
        return pgd.madry_attack(epsilon)

    def get_config(self):
        return {
            **super().get_config(),
            "order": self.order,
            "tau": self.tau,
            "perturbation_attack": keras.saving.serialize_keras_object(
                self.perturbation_attack
            ),
            "initial_phase": self.initial_phase,
            "monitor_size": self.monitor_size,
            "guard_seed": self.guard_seed,
        }

    @property
    def phase(self) -> str:
        """The phase the next epoch runs: "surrogate" or "exact"."""
        return PHASES[self.step_count(PHASE)]

    # The step.

    def capture_monitor(self, x, y):
        """Keeps the first minibatch's first rows as the monitor batch.

        Each replica keeps the first rows of its own share; a read outside
        the step takes the first replica's. A `tf.cond` on the filled
        count, so later steps only read it.
        """
        size = self.monitor_size

        def fill():
            images = tf.cast(x[:size], self.monitor_images.dtype)
            rows = tf.shape(images)[0]
            padding = [[0, size - rows]] + [[0, 0]] * (len(x.shape) - 1)
            self.monitor_images.assign(tf.pad(images, padding))
            self.monitor_labels.assign(tf.pad(y[:size], padding[:1]))
            self.monitor_count.assign(rows)
            return tf.constant(True)

        return tf.cond(self.monitor_count > 0, lambda: tf.constant(False), fill)

    def surrogate_delta(self, x, y):
        """δ from `perturbation_attack` (or the order-2 FGSM step), or None.

        None means the order-1 default, taken from the update's own input
        gradient.
        """
        attack = self.perturbation_attack or self._fgsm
        if attack is None:
            return None
        return self.attack(attack, x, self.attack_target(x, y, attack)) - x

    def surrogate_loss(self, x, y, delta):
        """`mean L_K(δ)`, replica-scaled, and the expansion's terms."""

        def loss_fn(inputs):
            logits = self.classifier(inputs, training=True)
            return objectives.cross_entropy(logits, y), logits

        terms = taylor.taylor_expansion(
            loss_fn,
            x,
            order=self.order,
            delta=delta,
            direction=lambda g: taylor.steepest_ascent_delta(
                self.threat_model, x, g
            ),
        )
        return self.replica_mean(terms.surrogate), terms

    def surrogate_update(self, x, y):
        """One update on the Taylor surrogate `mean L_K(δ)`."""
        delta = self.surrogate_delta(x, y)
        # A weight perturbation (AWP) ascends the surrogate.
        self.perturb_weights(self.surrogate_loss, x, y, delta)
        with tf.GradientTape() as tape:
            loss, terms = self.surrogate_loss(x, y, delta)
            scaled_loss = self.scale_loss(loss)
        # x + δ is in the threat set; measured before the update.
        perturbed = x + tf.cast(terms.delta, x.dtype)
        adv_logits = self.classifier(perturbed, training=False)
        self.apply_gradients(tape, scaled_loss)
        return self.step_logs(
            x, y, loss=loss, clean_logits=terms.aux, adv_logits=adv_logits
        )

    def passes(self):
        """The passes of this epoch's phase (see the class docstring).

        The surrogate: the attack making δ (order 2's FGSM step, or
        `perturbation_attack`), the expansion as `order` second-order
        passes (order 2's forward-over-backward Hessian-vector product
        counted as a second one) and the inference forward at x + δ; the
        exact phase is PGD-AT's.
        """
        if self.step_count(PHASE) == EXACT:
            return super().passes()
        attack = self.perturbation_attack or self._fgsm
        passes = costs.Passes(inference_forwards=1)
        if attack is not None:
            passes += costs.attack_passes(attack) + costs.target_passes(attack)
        return passes + costs.update(
            self, weight_passes=0, second_order=self.order
        )

    def minibatch_update(self, x, y):
        self.capture_monitor(x, y)
        # A Python branch: the phase is a step count, and a change of it
        # retraces the step.
        if self.step_count(PHASE) == EXACT:
            return super().minibatch_update(x, y)
        return self.surrogate_update(x, y)

    # The guard.

    def taylor_remainder(self) -> float | None:
        """ρ on the monitor batch with the current weights (None if empty).

        δ is `train_attack` (inference mode, seed `guard_seed`); the
        expansion runs in inference mode too, so neither changes BatchNorm
        statistics.
        """
        # The monitor variables are per replica: read them in the
        # trainer's strategy (the first replica's copy).
        with self.distribute_strategy.scope():
            count = int(keras.ops.convert_to_numpy(self.monitor_count))
            if not count:
                return None
            x = tf.convert_to_tensor(self.monitor_images)[:count]
            y = tf.convert_to_tensor(self.monitor_labels)[:count]
        target = self.attack_target(x, y, training=False)
        x_adv = self.train_attack(
            self.classifier, x, target, seed=self.guard_seed, training=False
        )

        def loss_fn(inputs):
            logits = self.classifier(inputs, training=False)
            return objectives.cross_entropy(logits, y), None

        terms = taylor.taylor_expansion(
            loss_fn, x, order=self.order, delta=x_adv - x
        )
        true_losses = objectives.cross_entropy(
            self.classifier(x_adv, training=False), y
        )
        return taylor.relative_remainder(true_losses, terms.surrogate)

    def on_epoch_end(self, epoch, logs=None):
        ran = self.step_count(PHASE)
        remainder = self.taylor_remainder()
        if remainder is None:
            following = ran  # No minibatch yet: nothing to measure.
        else:
            following = EXACT if remainder > self.tau else SURROGATE
        self.set_step_count(PHASE, following)
        self.phase_history.append(PHASES[ran])
        self.remainder_history.append(remainder)
        logging.info(
            "GAAT guard, epoch %d (%s phase): relative Taylor remainder %s "
            "(tau %g); the next epoch runs the %s phase.",
            epoch,
            PHASES[ran],
            "n/a" if remainder is None else f"{remainder:.4f}",
            self.tau,
            PHASES[following],
        )
        return {
            REMAINDER_LOG: math.nan if remainder is None else remainder,
            PHASE_LOG: ran,
        }

    def results_info(self):
        phases = self.phase_history
        surrogate = sum(p == PHASES[SURROGATE] for p in phases)
        return {
            "gaat": {
                "order": self.order,
                "tau": self.tau,
                "initial_phase": self.initial_phase,
                "phases": list(phases),
                "remainders": list(self.remainder_history),
                "surrogate_epoch_fraction": (
                    surrogate / len(phases) if phases else None
                ),
                "next_phase": self.phase,
            }
        }
