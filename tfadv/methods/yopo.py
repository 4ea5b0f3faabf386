"""YOPO-m-n: You Only Propagate Once (Zhang et al., NeurIPS 2019)."""

from collections.abc import Sequence
from typing import NamedTuple

import gin
import keras
import tensorflow as tf

from tfadv import validation
from tfadv.attacks import base as attack_base
from tfadv.attacks import objectives
from tfadv.attacks import pgd
from tfadv.methods import base
from tfadv.methods import costs
from tfadv.methods import layer0_gradient as layer0_gradient_lib
from tfadv.methods import layer_lr
from tfadv.models import common

FIRST_LAYER_GRADS = ("reference", "hamiltonian_only")

# Parameters written in epochs (`tfadv.configurables.epoch_parameters`): a
# run that trains a file's method for more or fewer epochs than the file
# scales them with it (tools/benchmark.py does).
EPOCH_PARAMETERS = ("YOPO.first_layer_lr_boundaries",)


def split_classifier(
    classifier: keras.Model, first_layer_name: str, method: str
) -> tuple[keras.Model, keras.Model]:
    """Cuts `classifier` into YOPO's layer 0 `f0` and the rest `g`.

    Args:
        classifier: a functional or Sequential Keras model.
        first_layer_name: the layer whose output is `z = f0(x)`.
        method: the method's name, for the error message.

    Returns:
        `(f0, g)` with `g(f0(x)) == classifier(x)`, sharing its weights.

    Raises:
        ValueError: the classifier cannot be split there.
    """
    try:
        return common.split_at_first_layer(classifier, first_layer_name)
    except ValueError as e:
        raise ValueError(
            f"{method} trains through a split of the classifier into its "
            "first layer f0 (the costate is taken at f0's output) and the "
            f"rest, and this classifier cannot be split. {e} For {method}, "
            "give the name of that layer as first_layer_name= (gin: "
            f"{method}.first_layer_name); every tfadv.models builder "
            f"declares it as '{common.FIRST_LAYER}'."
        ) from e


class _Split:
    """The two views of a YOPO split, held outside Keras's tracking."""

    def __init__(self, layer0: keras.Model, rest: keras.Model):
        self.layer0 = layer0
        self.rest = rest


class YOPOGradients(NamedTuple):
    """What `YOPO.compute_gradients` returns for one minibatch.

    Attributes:
        gradients: the accumulated gradients, aligned with `variables`, of
            the loss as scaled for the optimizer (replica-scaled, and
            loss-scaled under mixed_float16), before weight decay.
        variables: the classifier's trainable variables, those of the first
            layer first.
        eta: the final perturbation; `x + eta` is in [0, 1] and the ε-box.
        loss: the last outer pass's replica-scaled cross-entropy.
        logits: the last outer pass's logits.
    """

    gradients: list
    variables: list
    eta: tf.Tensor
    loss: tf.Tensor
    logits: tf.Tensor


class YOPOBase(base.AdversarialTrainer):
    """What YOPO and TRADES-YOPO share: the split and the inner loop.

    The training attack is a `ProjectedGradient` that holds YOPO's
    perturbation settings: its threat model (ε), its `step_size` (the inner
    step σ), its `num_steps` (n, the inner steps per outer iteration), its
    start and its objective (the loss whose costate is taken). Not for
    direct use; see `YOPO` and `TRADESYOPO`.

    The inner steps' gradient `J_f0ᵀ G` is computed as `layer0_gradient`
    says: "auto" (the default) writes it out for a conv layer 0 in the
    fastest exact formulation measured (`tfadv.methods.layer0_gradient`;
    for the builders' stride-1 convs a matmul and shifted sums in place of
    TensorFlow's `Conv2DBackpropInput`, and once per costate for an affine
    layer 0) and records any other layer 0 on a tape; "tape" always
    records it; "transpose", "flipped" and "shifted" name a formulation
    (for comparisons). All give the same perturbation to float rounding.
    """

    train_attack_types = (pgd.ProjectedGradient,)
    # The objective the method's costate is the gradient of.
    costate_objective = None

    def __init__(
        self,
        classifier: keras.Model,
        *,
        m: int,
        first_layer_name: str = common.FIRST_LAYER,
        layer0_gradient: str = "auto",
        **kwargs,
    ):
        super().__init__(classifier, **kwargs)
        method = type(self).__name__
        attack = self.train_attack
        validation.count(
            f"{method} n (train_attack.num_steps, inner steps per outer "
            "iteration)",
            attack.num_steps,
            minimum=1,
        )
        validation.in_interval(
            f"{method} sigma (train_attack.step_size, the inner step)",
            attack.step_size,
            0.0,
            1.0,
            low_open=True,
        )
        wanted = objectives.get(self.costate_objective)
        if attack.objective is not wanted:
            raise ValueError(
                f"{method} takes its costate from the "
                f"{self.costate_objective!r} objective; its train_attack "
                f"has objective {objectives.name_of(attack.objective)!r}. "
                f"Set train_attack's objective to {self.costate_objective!r}."
            )
        if attack.restarts != 1 or attack.use_predicted_labels:
            raise ValueError(
                f"{method} runs one perturbation per minibatch on the true "
                "labels; its train_attack must have restarts=1 and "
                "use_predicted_labels=False."
            )
        self.m = validation.count(
            "m", m, minimum=1, meaning="outer iterations, 'K' in the code"
        )
        self.first_layer_name = first_layer_name
        # Views that share the classifier's layers and weights. Kept out of
        # Keras's layer tracking, so summary() and count_params() count
        # each weight once, under the classifier.
        self._split = _Split(
            *split_classifier(classifier, first_layer_name, method)
        )
        self.layer0_gradient = validation.choice(
            "layer0_gradient",
            layer0_gradient,
            layer0_gradient_lib.CHOICES,
            hint="'auto' computes the inner steps' gradient in the fastest "
            "exact way layer 0 allows; 'tape' records layer 0 on a "
            "GradientTape.",
        )
        structure, reason = layer0_gradient_lib.analyse(self.layer0)
        problem = layer0_gradient_lib.unsupported(
            self.layer0_gradient, structure, reason
        )
        if problem:
            raise ValueError(f"{method}: {problem}")
        # Not tracked by Keras: its layers are the classifier's, which the
        # trainer tracks already (tracked here too, layer 0 would be listed
        # again in `layers` and in `summary`, as `_split`'s are not).
        object.__setattr__(self, "_layer0_structure", structure)

    @property
    def layer0(self) -> keras.Model:
        """Layer 0, `f0`: the classifier up to `first_layer_name`."""
        return self._split.layer0

    @property
    def rest(self) -> keras.Model:
        """The rest, `g`, with `g(f0(x)) == classifier(x)`."""
        return self._split.rest

    @property
    def n(self) -> int:
        """Inner steps per outer iteration: the attack's `num_steps`."""
        return self.train_attack.num_steps

    @property
    def sigma(self) -> float:
        """The inner step: the attack's `step_size`."""
        return self.train_attack.step_size

    def get_config(self):
        """The constructor arguments, for serialisation."""
        return {
            **super().get_config(),
            "m": self.m,
            "first_layer_name": self.first_layer_name,
            "layer0_gradient": self.layer0_gradient,
        }

    @property
    def layer0_formulation(self) -> str:
        """How the inner steps' gradient is computed: "tape" or a formulation.

        One of `tfadv.methods.layer0_gradient.FORMULATIONS`, or "tape".
        """
        return layer0_gradient_lib.resolve(
            self.layer0_gradient, self._layer0_structure
        )

    def initial_perturbation(self, x):
        """The attack's start as a perturbation, not clipped to [0, 1] (P3)."""
        start = self.train_attack.initial_point(
            x, self.next_seed(), into_box=False
        )
        return start - x

    def hamiltonian_gradient(self, x, eta, costate, *, wrt_input: bool):
        """The gradient of `Σ ⟨G, f0(clip(x + η, 0, 1))⟩`.

        This is the negated Hamiltonian of the code (`H = Σ ⟨p, f0⟩` with
        costate `p = −G`): the inner steps ascend it in η and layer 0's
        update descends it in θ0. It is computed as the vector-Jacobian
        product of layer 0 with `G`, without forming the product and sum.

        Args:
            x: clean images in [0, 1].
            eta: the perturbation.
            costate: `G`, shaped as layer 0's output.
            wrt_input: True for the gradient w.r.t. η (`J_f0ᵀ G`, zero where
                `x + η` is outside [0, 1]); False for the gradients w.r.t.
                layer 0's trainable variables (a list).

        Returns:
            The gradient w.r.t. η, or the list of variable gradients.
        """
        sources = eta if wrt_input else self.layer0.trainable_variables
        # Only layer 0's variables are accessed, so watching them records
        # nothing else.
        with tf.GradientTape(watch_accessed_variables=not wrt_input) as tape:
            if wrt_input:
                tape.watch(eta)
            z = self.layer0(
                tf.clip_by_value(x + eta, 0.0, 1.0),
                training=self.attack_training_mode,
            )
        return tape.gradient(
            z, sources, output_gradients=tf.cast(costate, z.dtype)
        )

    def layer0_input_gradient(self, x, costate):
        """The function `η -> J_f0(clip(x + η))ᵀ G` the inner steps call.

        Written out for a convolutional layer 0 (`layer0_gradient`, the
        formulation chosen at construction), else the tape of
        `hamiltonian_gradient`. Whatever depends only on `x` and `G` (a
        stem's back-projection) is computed here, once per outer pass.
        """
        if self.layer0_formulation == "tape":

            def gradient(eta):
                return self.hamiltonian_gradient(
                    x, eta, costate, wrt_input=True
                )

            return gradient
        return layer0_gradient_lib.bind(
            self._layer0_structure,
            self.layer0_formulation,
            self.layer0,
            x,
            costate,
            training=self.attack_training_mode,
        )

    def inner_steps(self, x, eta, costate):
        """The n steps on η through layer 0, the costate frozen.

        Each step is `η ← Π(η + σ·step(∇_η Σ⟨G, f0(clip(x + η))⟩))` with the
        training attack's threat model: for L-inf a signed step and Π the
        clip to [−ε, ε] and then to `x + η ∈ [0, 1]` (docs/algorithms.md
        §1.3 (b)). The gradient is `J_f0ᵀ G`, the whole network's input
        gradient linearised at layer 0's output.

        Args:
            x: clean images in [0, 1].
            eta: the current perturbation.
            costate: `G = ∂L/∂z`, the gradient of the loss with respect to
                layer 0's output (only its direction matters here).

        Returns:
            The perturbation after n steps, without gradient.
        """
        costate = tf.stop_gradient(costate)
        threat_model = self.threat_model
        gradient = self.layer0_input_gradient(x, costate)

        def step(eta):
            grad = gradient(eta)
            moved = threat_model.step(x + eta, grad, self.sigma)
            return threat_model.project(x, moved) - x

        return tf.stop_gradient(attack_base.repeat(step, eta, self.n))


@gin.register
class YOPO(YOPOBase):
    """YOPO-m-n, Zhang et al., "You Only Propagate Once" (NeurIPS 2019).

    arXiv 1905.00877; reference code `a1600012888/YOPO-You-Only-Propagate-
    Once` (docs/algorithms.md §1). The classifier is split as `f = g ∘ f0`,
    `f0` its first layer. Adversarial training `min_θ E max_η CE(g(f0(x+η)),
    y)` seen as a differential game puts the adversary only in layer 0's
    Hamiltonian `H = ⟨p, f0(x + η; θ0)⟩`, `p = −∂L/∂z` the costate at
    `z = f0(x + η)`. Per minibatch, starting from `η ~ U(−ε, ε)`:

        repeat m times (outer iteration j):
          full forward/backward of L = mean CE(g(f0(x + η)), y):
            G_j = ∂L/∂z, Acc_g += ∇_θ̃ L, Acc_0 += ∇_θ0 L (see below)
          n inner steps, layer 0 only, G_j frozen:
            η ← Π(η + σ·sign(J_f0(clip(x + η))ᵀ G_j))
          Acc_0 += ∇_θ0 Σ⟨G_j, f0(clip(x + η))⟩   (the Hamiltonian term)
        one optimizer update with Acc_g, Acc_0 (+ coupled weight decay)

    The perturbation's settings are those of the training attack, a
    `ProjectedGradient`: ε and the projection from its threat model, σ its
    `step_size`, n its `num_steps`, the start its `start` ("uniform" is the
    reference's; "none" starts from η = 0). Without a `train_attack`, the
    reference's CIFAR-10 setting is built at `epsilon`, then required (the
    paper's is 8/255): σ = ε/4 (2/255 at 8/255), n = 3, a uniform start.

    η carries over between outer iterations; neither the start nor the
    outer input `x + η` is clipped to [0, 1] (docs/algorithms.md §1.6 P3:
    faithful to the code, which only clips inside the inner loop;
    `clip_outer_input=True` is the cleaner variant). The m gradients are
    summed, so the reference divides the base learning rate by m.
    `first_layer_grad="reference"` keeps the full-backprop `∇_θ0 L` in
    Acc_0 as every published number did (P1, issue #4);
    `"hamiltonian_only"` drops it for layer 0's kernels, the "pure"
    maximum-principle update, and keeps it for layer 0's biases, as the
    reference does in either variant. The reference's logging forward after
    the last outer pass (P4) is skipped.

    BatchNorm mode: every outer pass is both an attack pass and an update
    pass and runs in training mode (`attack_training_mode=True`, as the
    reference): batch statistics, BN moving averages updated m times per
    minibatch, a new dropout mask per pass (P6). The inner passes through
    layer 0 use the same mode.

    Cost per minibatch: m full forward/backward passes, m·(n + 1)
    forward/backward passes through layer 0 only, one optimizer update
    (`optimizer.iterations` advances once), plus one inference forward on
    the clean batch for the `clean_accuracy` metric (as other methods).
    Train logs: `loss` and `adv_accuracy` are those of the last outer pass
    (at η after (m − 1)·n inner steps, training mode); `clean_accuracy` is
    on the clean batch in inference mode.

    First layer's learning rate (P7: the MNIST setting decays it at epochs
    15 and 19, the rest at 30, 35, 39): with `first_layer_lr` set, layer 0
    is updated at `first_layer_lr · first_layer_lr_factor^k` after k of
    `first_layer_lr_boundaries` (epochs), set by `on_epoch_begin` (which
    the method's callbacks call; `fit` installs them by itself). See
    `tfadv.methods.layer_lr` for how one SGD optimizer applies it; the
    optimizer is checked at `compile`. Without `first_layer_lr`, layer 0
    follows the main schedule.

    Example:
        trainer = tfadv.methods.YOPO(
            classifier, m=5, weight_decay=5e-4,
            train_attack=tfadv.attacks.ProjectedGradient(
                epsilon=0.1, step_size=0.005, num_steps=10),  # sigma, n
            first_layer_lr=0.01, first_layer_lr_boundaries=[4, 5])
        trainer.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9))
        trainer.fit(train_ds, epochs=10)

    Args:
        classifier: a functional or Sequential Keras model mapping [0, 1]
            images to logits, with a layer named `first_layer_name`.
        m: outer iterations (full passes) per minibatch ("K" in the code).
        first_layer_name: the layer whose output is the costate's point.
        first_layer_grad: "reference" or "hamiltonian_only" (see above).
        first_layer_lr: the first layer's initial learning rate, or None to
            use the main optimizer's schedule for every variable.
        first_layer_lr_boundaries: epochs (0-based, as
            `tfadv.schedules.piecewise_constant`) from which the first
            layer's rate is multiplied by `first_layer_lr_factor` once more:
            PyTorch `MultiStepLR` milestones stepped once per epoch.
        first_layer_lr_factor: the decay factor at each boundary.
        clip_outer_input: clip `x + η` to [0, 1] in the outer passes too.
        **kwargs: `layer0_gradient` ("auto", "tape" or a formulation of
            `tfadv.methods.layer0_gradient`: how the inner steps' gradient
            is computed, see `YOPOBase`), and see `AdversarialTrainer`
            (`train_attack`, a
            cross-entropy `ProjectedGradient`; `epsilon`;
            `attack_training_mode`, the mode of the outer and inner passes;
            `weight_decay`: coupled, as the reference's 5e-4 on both
            parameter groups).
    """

    paper_epsilon = 8 / 255  # CIFAR-10; never a default
    default_attack_training_mode = True
    costate_objective = "cross_entropy"
    weight_perturbation_refused = (
        "its update sums weight gradients over m passes between which its "
        "perturbation η moves, with a Hamiltonian term for layer 0, so "
        "there is no loss at fixed adversarial examples to ascend before "
        "the update (TRADES-YOPO, whose update is the TRADES loss at YOPO's "
        "final examples, takes one)."
    )

    def __init__(
        self,
        classifier: keras.Model,
        *,
        m: int = 5,
        first_layer_name: str = common.FIRST_LAYER,
        first_layer_grad: str = "reference",
        first_layer_lr: float | None = None,
        first_layer_lr_boundaries: Sequence[float] = (),
        first_layer_lr_factor: float = 0.1,
        clip_outer_input: bool = False,
        **kwargs,
    ):
        super().__init__(
            classifier, m=m, first_layer_name=first_layer_name, **kwargs
        )
        self.first_layer_grad = validation.choice(
            "first_layer_grad",
            first_layer_grad,
            FIRST_LAYER_GRADS,
            hint="'reference' (the published numbers) adds the "
            "full-backprop gradient of layer 0 to its Hamiltonian "
            "gradient; 'hamiltonian_only' drops it.",
        )
        self.clip_outer_input = bool(clip_outer_input)
        self.first_layer_lr = first_layer_lr
        self.first_layer_lr_boundaries = tuple(first_layer_lr_boundaries)
        self.first_layer_lr_factor = first_layer_lr_factor
        self.first_layer_schedule = None
        if first_layer_lr is not None:
            self.first_layer_schedule = layer_lr.LayerLearningRate(
                self,
                initial=first_layer_lr,
                boundaries=first_layer_lr_boundaries,
                factor=first_layer_lr_factor,
                name="first_layer_learning_rate",
                arg_prefix="first_layer_lr",
            )
        elif self.first_layer_lr_boundaries:
            raise ValueError(
                "first_layer_lr_boundaries needs first_layer_lr, the first "
                "layer's initial learning rate (the reference starts it at "
                "the main optimizer's rate)."
            )

    def default_train_attack(self, epsilon):
        return pgd.ProjectedGradient(
            epsilon=epsilon,
            step_size=epsilon / 4,  # sigma = 2/255 at 8/255
            num_steps=3,  # n
            start="uniform",
            name="yopo_inner3",
        )

    def get_config(self):
        """The constructor arguments, for serialisation."""
        return {
            **super().get_config(),
            "first_layer_grad": self.first_layer_grad,
            "first_layer_lr": self.first_layer_lr,
            "first_layer_lr_boundaries": list(self.first_layer_lr_boundaries),
            "first_layer_lr_factor": self.first_layer_lr_factor,
            "clip_outer_input": self.clip_outer_input,
        }

    @property
    def first_layer_learning_rate(self):
        """The variable holding layer 0's rate (None without one)."""
        schedule = self.first_layer_schedule
        return None if schedule is None else schedule.variable

    def compile(self, *args, **kwargs):
        """`AdversarialTrainer.compile`, then checks the optimizer."""
        super().compile(*args, **kwargs)
        if self.first_layer_schedule is not None:
            layer_lr.LayerLearningRate.check_optimizer(self.optimizer, "YOPO")

    def on_epoch_begin(self, epoch: int) -> None:
        """Sets the first layer's learning rate for `epoch` (0-based)."""
        if self.first_layer_schedule is not None:
            self.first_layer_schedule.on_epoch_begin(epoch)

    def on_epoch_end(self, epoch: int, logs=None) -> dict:
        """Adds the first layer's learning rate to the epoch's logs."""
        del epoch, logs
        if self.first_layer_schedule is None:
            return {}
        return self.first_layer_schedule.log()

    def _backprop_first_layer(self):
        """Layer 0's variables that get the full-backprop gradient (P1)."""
        variables = list(self.layer0.trainable_variables)
        if self.first_layer_grad == "reference":
            return variables
        # hamiltonian_only: the reference still backpropagates into the
        # bias (only the kernel's gradient was saved and restored).
        return [v for v in variables if "bias" in v.path.split("/")[-1]]

    def compute_gradients(self, x, y) -> YOPOGradients:
        """Runs YOPO-m-n on one batch and returns the summed gradients.

        This is everything `train_step` does before the optimizer update
        (weight decay and the first layer's rate are applied there).

        Args:
            x: clean images in [0, 1].
            y: integer labels.

        Returns:
            A `YOPOGradients`.
        """
        x = tf.convert_to_tensor(x)
        training = self.attack_training_mode
        first_vars = list(self.layer0.trainable_variables)
        rest_vars = list(self.rest.trainable_variables)
        backprop_vars = self._backprop_first_layer()
        first_acc = [tf.zeros(v.shape, v.dtype) for v in first_vars]
        rest_acc = [tf.zeros(v.shape, v.dtype) for v in rest_vars]
        eta = self.initial_perturbation(x)
        for _ in range(self.m):
            inputs = x + eta
            if self.clip_outer_input:
                inputs = tf.clip_by_value(inputs, 0.0, 1.0)
            with tf.GradientTape() as tape:
                z = self.layer0(inputs, training=training)
                logits = self.rest(z, training=training)
                loss = self.cross_entropy(y, logits)
                scaled = self.scale_loss(loss)
            # One backward gives the costate and every weight gradient.
            costate, backprop_grads, rest_grads = tape.gradient(
                scaled, (z, backprop_vars, rest_vars)
            )
            rest_acc = _add(rest_acc, rest_grads)
            backprop = dict(
                zip(
                    [v.path for v in backprop_vars], backprop_grads, strict=True
                )
            )
            first_acc = _add(
                first_acc, [backprop.get(v.path) for v in first_vars]
            )
            costate = tf.stop_gradient(costate)
            eta = self.inner_steps(x, eta, costate)
            # The Hamiltonian term, at the end of this inner loop.
            first_acc = _add(
                first_acc,
                self.hamiltonian_gradient(x, eta, costate, wrt_input=False),
            )
        return YOPOGradients(
            gradients=first_acc + rest_acc,
            variables=first_vars + rest_vars,
            eta=eta,
            loss=loss,
            logits=logits,
        )

    def passes(self):
        # m outer passes, m·n inner and m Hamiltonian layer-0 passes, one
        # update, the clean forward for clean_accuracy.
        m, n = self.m, self.n
        return costs.Passes(
            weight_passes=m,
            updates=1,
            layer0_input_gradients=m * n,
            layer0_weight_gradients=m,
            inference_forwards=1,
        )

    def minibatch_update(self, x, y):
        """One YOPO-m-n minibatch (see the class docstring)."""
        result = self.compute_gradients(x, y)
        grads = self.add_weight_decay(result.gradients, result.variables)
        if self.first_layer_schedule is not None:
            num_first = len(self.layer0.trainable_variables)
            grads = self.first_layer_schedule.scale(
                grads[:num_first], self.optimizer
            ) + list(grads[num_first:])
        self.optimizer.apply(grads, result.variables)
        clean_logits = self.classifier(x, training=False)
        self.update_metrics(
            result.loss, y, clean_logits=clean_logits, adv_logits=result.logits
        )
        return self.logs(self.train_metric_names)


def _add(accumulated, grads):
    return [
        a if g is None else a + tf.cast(g, a.dtype)
        for a, g in zip(accumulated, grads, strict=True)
    ]
