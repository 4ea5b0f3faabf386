"""DEAT and M+DEAT: Dynamic Efficient Adversarial Training (Wang et al.)."""

import gin

from tfadv.attacks import pgd
from tfadv.methods import base
from tfadv.methods import controllers
from tfadv.methods import costs
from tfadv.methods import replay

# The reference's CIFAR-10 setting: r_max = 8, alpha = 10/255 at 8/255.
DEFAULT_MAX_REPLAYS = 8
STEP_FRACTION = 1.25


@gin.register
class DEAT(base.AdversarialTrainer):
    """DEAT, Wang, Zhang, Zheng and Ruan, arXiv 2103.03076 (M+DEAT).

    "Dynamic Efficient Adversarial Training Guided by Gradient Magnitude";
    reference code `TrustAI/DEAT: standard training/mdeat_cifar10.py`
    (docs/algorithms.md §2). A Free-AT-style replay scheme whose number of
    replays r grows during training. Per minibatch:

        δ ~ U(−ε, ε), made feasible for x          (fresh every minibatch)
        repeat r times (train mode):
          one forward/backward of CE(f(x + δ), y) gives ∇_θ and ∇_δ;
          one optimizer update of the weights;
          δ ← Π(δ + α_r·sign(∇_δ)),  α_r = max(ε / r, α)

    so replay k trains on a (k − 1)-step attack, and r = 1 trains on
    random noise only. r is the step count `replays`, driven between
    epochs by the method's `step_controller`:

    - `controllers.MPlus` (the default, M+DEAT): the epoch's
      `M = Σ‖∇ₓ L‖₁` is taken from the last replay's backward (which is
      done anyway), with respect to the normalised input (the pixel-space
      gradient times the model's normalisation std, as the reference);
      after epoch 0, r grows by one; after epoch 1 the threshold is γ·M;
      later r grows, and the threshold becomes γ·M, when M exceeds it;
    - `controllers.LinearGrowth` (DEAT-d): `r = min(⌊epoch / d⌋ + 1, r_max)`;
    - `controllers.AccuracyTrigger` (DEAT-p): r grows after an epoch whose
      training accuracy passed a threshold.

    The training attack holds ε, the step floor α (its `step_size`,
    1.25ε = 10/255 by default), the start (its `start`: "uniform", the
    reference's τ = ε) and r_max (its `num_steps`, 8 by default, which is
    the controller's cap). r is a Python int in the
    traced step: the replays unroll, and the step is retraced when r
    changes (the trainer sets its step count `replays` from the
    controller's decision after every epoch). Each minibatch gives r
    optimizer updates, so use a `tfadv.schedules.PerMinibatch` learning
    rate, which counts minibatches as the reference's scheduler does.

    BatchNorm: the attack and the update are the same pass, in train mode
    (`attack_training_mode` is always True). Cost: r forward-backward
    passes and r updates per minibatch (mean r ≈ 4.9 in the reference's
    50-epoch CIFAR-10 log), plus one inference forward for the
    clean-accuracy metric; M costs nothing extra.

    Example:
        trainer = tfadv.methods.DEAT(classifier, epsilon=8 / 255)
        trainer.compile(optimizer=keras.optimizers.SGD(
            tfadv.schedules.PerMinibatch(schedule), momentum=0.9))
        trainer.fit(train_ds, epochs=50)

    Args:
        classifier: a Keras model mapping [0, 1] images to logits.
        step_controller: what sets r between epochs; None builds
            `controllers.MPlus(gamma=1.01)` (capped at r_max).
        **kwargs: see `AdversarialTrainer` (`train_attack`, a
            `ProjectedGradient`; `epsilon`; `eval_attack`; `weight_decay`).

    Raises:
        ValueError: `attack_training_mode=False`, a controller starting at
            0 replays or capped at another r_max than the attack's
            `num_steps`.
    """

    paper_epsilon = 8 / 255  # CIFAR-10; never a default
    default_attack_training_mode = True
    train_attack_types = (pgd.ProjectedGradient,)
    step_controller_count = "replays"
    weight_perturbation_refused = (
        "each of its r replays is one forward-backward pass whose gradient "
        "updates both the weights and the perturbation δ, so there is no "
        "loss at fixed adversarial examples to ascend before an update, and "
        "no reference combines the two."
    )

    def __init__(self, classifier, *, step_controller=None, **kwargs):
        if kwargs.get("attack_training_mode") is False:
            raise ValueError(
                "DEAT attacks and updates in one training-mode pass; "
                "attack_training_mode=False is not possible."
            )
        if step_controller is None:
            step_controller = controllers.MPlus(gamma=1.01)
        if step_controller.initial_steps < 1:
            raise ValueError(
                "DEAT replays each minibatch at least once; its controller's "
                f"initial_steps is {step_controller.initial_steps}."
            )
        super().__init__(classifier, step_controller=step_controller, **kwargs)

    def default_train_attack(self, epsilon):
        return pgd.ProjectedGradient(
            epsilon=epsilon,
            step_size=STEP_FRACTION * epsilon,
            num_steps=DEFAULT_MAX_REPLAYS,
            start="uniform",
            name="deat",
        )

    @property
    def replays(self) -> int:
        """r, the replays of this epoch (a Python int)."""
        return self.step_count(self.step_controller_count)

    def current_train_attack(self):
        """δ's steps this epoch: the attack with the step `max(ε / r, α)`."""
        return self.train_attack.replace(
            step_size=self.step_controller.step_size(self.replays)
        )

    def passes(self):
        # r replays (this epoch's), each one pass and one update; the clean
        # forward feeds clean_accuracy.
        r = self.replays
        return costs.Passes(
            weight_input_passes=r, updates=r, inference_forwards=1
        )

    def minibatch_update(self, x, y):
        attack = self.current_train_attack()
        # A fresh start every minibatch, made feasible for x.
        start = attack.initial_point(x, self.next_seed())
        delta = self.threat_model.project(x, start) - x
        result = replay.replay(
            self, x, y, delta, num_replays=self.replays, attack=attack
        )
        # M and the accuracy DEAT-p compares: the last replay's.
        self.step_controller.observe(
            self.gradient_l1(result.input_gradients[-1])
        )
        self.step_controller.observe_accuracy(result.logits, y)
        return self.step_logs(x, y)
