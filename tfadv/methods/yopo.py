"""YOPO-m-n: You Only Propagate Once (Zhang et al., NeurIPS 2019)."""

from collections.abc import Sequence
from typing import NamedTuple

import gin
import keras
import tensorflow as tf

from tfadv.attacks import base as attack_base
from tfadv.methods import base
from tfadv.models import common

FIRST_LAYER_GRADS = ("reference", "hamiltonian_only")


def _check_count(name: str, value, meaning: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"{name} ({meaning}) must be a Python int >= 1; got {value!r}."
        )
    return value


def _check_sigma(sigma) -> float:
    try:
        value = float(sigma)
    except (TypeError, ValueError):
        value = float("nan")
    if not 0.0 < value <= 1.0:
        raise ValueError(
            f"sigma (the inner step size, pixel units) must be in (0, 1]; "
            f"got {sigma!r}. The reference uses 0.01 at epsilon 0.3 (MNIST) "
            "and 2/255 at 8/255 (CIFAR-10)."
        )
    return value


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

    Not for direct use; see `YOPO` and `TRADESYOPO`.
    """

    def __init__(
        self,
        classifier: keras.Model,
        *,
        epsilon: float,
        sigma: float,
        m: int,
        n: int,
        first_layer_name: str = common.FIRST_LAYER,
        **kwargs,
    ):
        super().__init__(classifier, **kwargs)
        self.epsilon = attack_base.check_budget(epsilon)
        self.sigma = _check_sigma(sigma)
        self.m = _check_count("m", m, "outer iterations, 'K' in the code")
        self.n = _check_count("n", n, "inner steps, 'inner_iters'")
        self.first_layer_name = first_layer_name
        self.layer0, self.rest = split_classifier(
            classifier, first_layer_name, type(self).__name__
        )

    def get_config(self):
        """The constructor arguments, for serialisation."""
        return {
            **super().get_config(),
            "epsilon": self.epsilon,
            "sigma": self.sigma,
            "m": self.m,
            "n": self.n,
            "first_layer_name": self.first_layer_name,
        }

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

    def inner_steps(self, x, eta, costate):
        """The n signed steps on η through layer 0, the costate frozen.

        Each step is `η ← Π(η + σ·sign(∇_η Σ⟨G, f0(clip(x + η))⟩))`, with Π
        the clip to [−ε, ε] and then to `x + η ∈ [0, 1]` (ALGORITHMS.md
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
        sigma = tf.cast(self.sigma, x.dtype)
        eps = tf.cast(self.epsilon, x.dtype)

        def step(eta):
            grad = self.hamiltonian_gradient(x, eta, costate, wrt_input=True)
            eta = eta + sigma * tf.sign(grad)
            eta = tf.clip_by_value(eta, -eps, eps)
            return tf.clip_by_value(x + eta, 0.0, 1.0) - x

        if self.n <= 2:
            for _ in range(self.n):
                eta = step(eta)
        else:
            _, eta = tf.while_loop(
                lambda i, _: i < self.n,
                lambda i, eta: (i + 1, step(eta)),
                (tf.constant(0), eta),
                maximum_iterations=self.n,
            )
        return tf.stop_gradient(eta)


@gin.register
class YOPO(YOPOBase):
    """YOPO-m-n, Zhang et al., "You Only Propagate Once" (NeurIPS 2019).

    arXiv 1905.00877; reference code `a1600012888/YOPO-You-Only-Propagate-
    Once` (ALGORITHMS.md §1). The classifier is split as `f = g ∘ f0`, `f0`
    its first layer. Adversarial training `min_θ E max_η CE(g(f0(x+η)), y)`
    seen as a differential game puts the adversary only in layer 0's
    Hamiltonian `H = ⟨p, f0(x + η; θ0)⟩`, `p = −∂L/∂z` the costate at
    `z = f0(x + η)`. Per minibatch, starting from `η ~ U(−ε, ε)`:

        repeat m times (outer iteration j):
          full forward/backward of L = mean CE(g(f0(x + η)), y):
            G_j = ∂L/∂z, Acc_g += ∇_θ̃ L, Acc_0 += ∇_θ0 L (see below)
          n inner steps, layer 0 only, G_j frozen:
            η ← Π(η + σ·sign(J_f0(clip(x + η))ᵀ G_j))
          Acc_0 += ∇_θ0 Σ⟨G_j, f0(clip(x + η))⟩   (the Hamiltonian term)
        one optimizer update with Acc_g, Acc_0 (+ coupled weight decay)

    η carries over between outer iterations; the outer input `x + η` is not
    clipped (ALGORITHMS.md §1.6 P3: faithful to the code, which only clips
    inside the inner loop; `clip_outer_input=True` is the cleaner variant).
    The m gradients are summed, so the reference divides the base learning
    rate by m. `first_layer_grad="reference"` keeps the full-backprop
    `∇_θ0 L` in Acc_0 as every published number did (P1, issue #4);
    `"hamiltonian_only"` drops it, the "pure" maximum-principle update. The
    reference's logging forward after the last outer pass (P4) is skipped.

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
    `tfadv.experiment.run` calls through `tfadv.callbacks.MethodEpochHooks`;
    pass that callback to `fit` yourself otherwise). It is applied by the
    one optimizer, layer 0's gradients multiplied by `first_layer_lr / lr`:
    Keras SGD's update (plain, momentum or Nesterov) is linear in `lr·g`
    per variable, so this equals a second SGD with its own rate and the
    same momentum, while the loss scaling, `optimizer.iterations` and the
    checkpointed optimizer state stay those of one optimizer. This needs
    `keras.optimizers.SGD` without clipping or decoupled weight decay
    (checked at `compile`); where the main rate is 0, layer 0 does not move
    either. Without `first_layer_lr`, layer 0 follows the main schedule.

    Example:
        trainer = tfadv.methods.YOPO(
            classifier, epsilon=0.1, sigma=0.005, m=5, n=10,
            weight_decay=5e-4, first_layer_lr=0.01,
            first_layer_lr_boundaries=[4, 5])
        trainer.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9))
        trainer.fit(train_ds, epochs=10,
                    callbacks=[tfadv.callbacks.MethodEpochHooks()])

    Args:
        classifier: a functional or Sequential Keras model mapping [0, 1]
            images to logits, with a layer named `first_layer_name`.
        epsilon: the L-inf budget in pixel units, in (0, 1].
        sigma: the inner step size σ in pixel units, in (0, 1].
        m: outer iterations (full passes) per minibatch ("K" in the code).
        n: inner steps per outer iteration ("inner_iters").
        first_layer_name: the layer whose output is the costate's point.
        first_layer_grad: "reference" or "hamiltonian_only" (see above).
        first_layer_lr: the first layer's initial learning rate, or None to
            use the main optimizer's schedule for every variable.
        first_layer_lr_boundaries: epochs (0-based, as
            `tfadv.schedules.piecewise_constant`) from which the first
            layer's rate is multiplied by `first_layer_lr_factor` once more:
            PyTorch `MultiStepLR` milestones stepped once per epoch.
        first_layer_lr_factor: the decay factor at each boundary.
        random_start: start from `η ~ U(−ε, ε)` (the reference); False
            starts from `η = 0` (deterministic, for tests).
        clip_outer_input: clip `x + η` to [0, 1] in the outer passes too.
        attack_training_mode: mode of the outer and inner passes.
        **kwargs: see `AdversarialTrainer` (`weight_decay`: coupled, as the
            reference's 5e-4 on both parameter groups).
    """

    def __init__(
        self,
        classifier: keras.Model,
        *,
        epsilon: float,
        sigma: float,
        m: int = 5,
        n: int = 3,
        first_layer_name: str = common.FIRST_LAYER,
        first_layer_grad: str = "reference",
        first_layer_lr: float | None = None,
        first_layer_lr_boundaries: Sequence[float] = (),
        first_layer_lr_factor: float = 0.1,
        random_start: bool = True,
        clip_outer_input: bool = False,
        attack_training_mode: bool = True,
        **kwargs,
    ):
        super().__init__(
            classifier,
            epsilon=epsilon,
            sigma=sigma,
            m=m,
            n=n,
            first_layer_name=first_layer_name,
            attack_training_mode=attack_training_mode,
            **kwargs,
        )
        if first_layer_grad not in FIRST_LAYER_GRADS:
            raise ValueError(
                f"first_layer_grad must be one of {FIRST_LAYER_GRADS}; got "
                f"{first_layer_grad!r}. 'reference' (the published numbers) "
                "adds the full-backprop gradient of layer 0 to its "
                "Hamiltonian gradient; 'hamiltonian_only' drops it."
            )
        self.first_layer_grad = first_layer_grad
        self.random_start = bool(random_start)
        self.clip_outer_input = bool(clip_outer_input)
        self.first_layer_lr_boundaries = tuple(
            float(b) for b in first_layer_lr_boundaries
        )
        if any(b <= 0 for b in self.first_layer_lr_boundaries):
            raise ValueError(
                "first_layer_lr_boundaries must be positive epochs; got "
                f"{list(first_layer_lr_boundaries)}."
            )
        self.first_layer_lr_factor = attack_base.check_non_negative(
            "first_layer_lr_factor", first_layer_lr_factor
        )
        self.first_layer_lr = None
        self.first_layer_learning_rate = None
        if first_layer_lr is not None:
            self.first_layer_lr = attack_base.check_non_negative(
                "first_layer_lr", first_layer_lr
            )
            # A variable, so the compiled step reads the value the epoch
            # hook sets, and checkpoints carry it.
            self.first_layer_learning_rate = self.add_weight(
                shape=(),
                initializer=keras.initializers.Constant(self.first_layer_lr),
                trainable=False,
                name="first_layer_learning_rate",
            )
        elif self.first_layer_lr_boundaries:
            raise ValueError(
                "first_layer_lr_boundaries needs first_layer_lr, the first "
                "layer's initial learning rate (the reference starts it at "
                "the main optimizer's rate)."
            )

    def get_config(self):
        """The constructor arguments, for serialisation."""
        return {
            **super().get_config(),
            "first_layer_grad": self.first_layer_grad,
            "first_layer_lr": self.first_layer_lr,
            "first_layer_lr_boundaries": list(self.first_layer_lr_boundaries),
            "first_layer_lr_factor": self.first_layer_lr_factor,
            "random_start": self.random_start,
            "clip_outer_input": self.clip_outer_input,
        }

    def compile(self, *args, **kwargs):
        """`keras.Model.compile`, then checks the optimizer (see above)."""
        super().compile(*args, **kwargs)
        if self.first_layer_lr is None:
            return
        optimizer = getattr(self.optimizer, "inner_optimizer", self.optimizer)
        problems = []
        if type(optimizer) is not keras.optimizers.SGD:
            problems.append(f"it is a {type(optimizer).__name__}")
        for name in ("clipnorm", "clipvalue", "global_clipnorm"):
            if getattr(optimizer, name, None) is not None:
                problems.append(f"it sets {name}")
        if getattr(optimizer, "weight_decay", None):
            problems.append(
                "it sets its own (decoupled) weight_decay; use "
                "YOPO.weight_decay, the reference's coupled decay"
            )
        if problems:
            raise ValueError(
                "YOPO's first_layer_lr rescales layer 0's gradients by "
                "first_layer_lr / lr inside one optimizer, which is exact "
                "for keras.optimizers.SGD (any momentum, Nesterov) without "
                f"gradient clipping or decoupled weight decay, but "
                f"{'; '.join(problems)}. Use such an SGD, or set "
                "first_layer_lr=None."
            )

    def on_epoch_begin(self, epoch: int) -> None:
        """Sets the first layer's learning rate for `epoch` (0-based)."""
        if self.first_layer_learning_rate is None:
            return
        decays = sum(epoch >= b for b in self.first_layer_lr_boundaries)
        self.first_layer_learning_rate.assign(
            self.first_layer_lr * self.first_layer_lr_factor**decays
        )

    def on_epoch_end(self, epoch: int, logs=None) -> dict:
        """Adds the first layer's learning rate to the epoch's logs."""
        del epoch, logs
        if self.first_layer_learning_rate is None:
            return {}
        value = keras.ops.convert_to_numpy(self.first_layer_learning_rate)
        return {"first_layer_learning_rate": float(value)}

    def _scale_loss(self, loss):
        optimizer = getattr(self, "optimizer", None)
        return loss if optimizer is None else optimizer.scale_loss(loss)

    def initial_perturbation(self, x):
        """`η ~ U(−ε, ε)`, not projected into the image box (P3)."""
        if not self.random_start:
            return tf.zeros_like(x)
        return tf.random.stateless_uniform(
            tf.shape(x),
            attack_base.as_seed(self.seed_generator),
            -self.epsilon,
            self.epsilon,
            dtype=x.dtype,
        )

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
        first_acc = [tf.zeros(v.shape, v.dtype) for v in first_vars]
        rest_acc = [tf.zeros(v.shape, v.dtype) for v in rest_vars]
        backprop_first = self.first_layer_grad == "reference"
        eta = self.initial_perturbation(x)
        for _ in range(self.m):
            inputs = x + eta
            if self.clip_outer_input:
                inputs = tf.clip_by_value(inputs, 0.0, 1.0)
            with tf.GradientTape() as tape:
                z = self.layer0(inputs, training=training)
                logits = self.rest(z, training=training)
                loss = self.cross_entropy(y, logits)
                scaled = self._scale_loss(loss)
            # One backward gives the costate and every weight gradient.
            costate, first_grads, rest_grads = tape.gradient(
                scaled, (z, first_vars if backprop_first else [], rest_vars)
            )
            rest_acc = _add(rest_acc, rest_grads)
            if backprop_first:
                first_acc = _add(first_acc, first_grads)
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

    def _apply_first_layer_lr(self, grads):
        """Rescales layer 0's gradients to its own learning rate."""
        if self.first_layer_learning_rate is None:
            return grads
        lr = tf.cast(self.optimizer.learning_rate, tf.float32)
        ratio = tf.math.divide_no_nan(
            tf.cast(self.first_layer_learning_rate, tf.float32), lr
        )
        num_first = len(self.layer0.trainable_variables)
        return [g * tf.cast(ratio, g.dtype) for g in grads[:num_first]] + list(
            grads[num_first:]
        )

    def train_step(self, data):
        """One YOPO-m-n minibatch (see the class docstring)."""
        x, y = self.prepare_batch(data)
        result = self.compute_gradients(x, y)
        grads = self.add_weight_decay(result.gradients, result.variables)
        grads = self._apply_first_layer_lr(grads)
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
