"""AWP: adversarial weight perturbation (Wu, Xia, Wang, NeurIPS 2020)."""

import gin
import tensorflow as tf

from tfadv import validation
from tfadv.methods import batches
from tfadv.methods import weight_perturbations

# The reference's guard against a zero gradient (utils_awp.py EPS).
NORM_GUARD = 1e-20

# Parameters written in epochs (`tfadv.configurables.epoch_parameters`): a
# run that trains a file's method for more or fewer epochs than the file
# scales them with it (tools/benchmark.py does).
EPOCH_PARAMETERS = ("AdversarialWeightPerturbation.warmup_epochs",)


@gin.register
class AdversarialWeightPerturbation(weight_perturbations.WeightPerturbation):
    """Adversarial weight perturbation around any method's update.

    "Adversarial Weight Perturbation Helps Robust Generalization", Wu, Xia
    and Wang, NeurIPS 2020, arXiv 2004.05884; reference code
    `csdongxian/AWP` (`AT_AWP/utils_awp.py`, `AT_AWP/train_cifar10.py`,
    `trades_AWP/`), docs/algorithms.md §12. Pass it to any method as
    `weight_perturbation=` (gin: `recipes/awp.gin`). In each training step,
    after the method has made its adversarial examples x':

        g_l   = ∇_{w_l} L(w; x, x', y)       the method's own loss, at w
        Δ_l   = η_p·g_l                       one plain SGD ascent step
        v_l   = ‖w_l‖·Δ_l / (‖Δ_l‖ + 1e-20)   per weight tensor, Frobenius
        w_l  ← w_l + γ·v_l                    for every kernel (rank >= 2)
        one optimizer update with ∇L(w + γv)  the method's update
        w_l  ← w_l − γ·v_l                    after the optimizer's step

    L is the loss the method's update minimises (`compute_adversarial_loss`,
    plus GradAlign's alignment term, GAAT's Taylor surrogate in its
    surrogate phase): the cross-entropy on x' for PGD-AT (AT-AWP), the TRADES
    loss for TRADES (TRADES-AWP). Only trainable variables of rank >= 2
    (convolution and dense kernels) are perturbed, as the reference's
    `'weight'` tensors with more than one dimension; biases, normalisation
    scales and offsets, and BatchNorm's moving statistics are not.

    Faithful to the reference, and where tfadv chooses:

    - **Order.** The offsets are removed after the optimizer's step, as the
      reference (`opt.step()` then `restore`), so the momentum buffer and a
      coupled weight decay (`weight_decay=`) see `w + γv`; the weights end
      at `w − update(∇L(w + γv), w + γv)`. `restore_before_step=True` takes
      them off between the gradient and the step instead.
    - **The ascent's BatchNorm.** The reference ascends a separate proxy
      copy in train mode, so the real model's running statistics are not
      touched. tfadv runs the method's loss in its own mode (train mode for
      every method's update), then puts back the classifier's
      floating-point non-trainable variables (BatchNorm's moving mean and
      variance) as they were: only the update's forward moves them, once.
      Random-number states (dropout seeds) advance, as the proxy's do.
    - **The ascent's learning rate** η_p (`proxy_lr`) does not change v
      (the normalisation divides it out), except through the 1e-20 guard;
      there is no momentum or weight decay on the ascent, as in the
      reference (a stateful proxy optimizer would be a bug).
    - **Distribution.** The ascent's gradients are summed over replicas
      (the global batch's mean loss, as one device sees it), so v is the
      same on every replica and the replicas' weights stay identical.
    - **Mixed precision.** The ascent differentiates the loss scaled as the
      update's (`optimizer.scale_loss`) and divides the scale out; if that
      gradient overflows, this step's v is zero. Variables and offsets are
      float32.
    - **Warm-up.** `warmup_epochs` epochs (from 0) train without AWP; the
      trainer's `callbacks()` switch it on (pass them to `fit`), and the
      step is retraced then. The AT reference uses 0 (SVHN 5); the TRADES
      reference `epoch >= 10` with epochs from 1, so 9 epochs without AWP
      (`recipes/awp_trades.gin`).
    - The reference's extra train-mode forward on clean x after each step
      (for its logs) also updates BatchNorm statistics; tfadv logs the
      clean accuracy in inference mode and does not.

    Methods whose update is not one loss minimised at fixed adversarial
    examples refuse it at construction: Free-AT and DEAT (each replay's
    single backward pass steps both the weights and the perturbation) and
    YOPO (its weight gradient is summed over passes whose perturbation moves
    in between).

    Cost per minibatch: one more forward and backward pass in train mode
    (the ascent) on the examples of the method's update, i.e. the
    update's cost again (F + B for PGD-AT: about +13 % over PGD-10 AT with
    input-only attack backward passes; 2F + 2B for TRADES), plus memory
    copies of the offsets and BatchNorm statistics.

    Example:
        trainer = tfadv.methods.PGDAT(
            classifier, epsilon=8 / 255,
            weight_perturbation=tfadv.recipes.AdversarialWeightPerturbation(
                gamma=0.01))
        trainer.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
        trainer.fit(train_ds, epochs=200, callbacks=trainer.callbacks())

    Args:
        gamma: γ, the size of each kernel's perturbation relative to its
            norm (0.01 for AT-AWP, 5e-3 for TRADES-AWP); > 0.
        proxy_lr: η_p, the ascent step's learning rate (0.01 in the AT
            reference; only the zero-gradient guard sees it); > 0.
        warmup_epochs: epochs trained without AWP first (0 for AT-AWP).
        restore_before_step: remove the offsets before the optimizer's
            step instead of after it (the reference's order).

    Raises:
        ValueError: a value out of range.
    """

    def __init__(
        self,
        *,
        gamma: float = 0.01,
        proxy_lr: float = 0.01,
        warmup_epochs: int = 0,
        restore_before_step: bool = False,
    ):
        super().__init__(
            warmup_epochs=warmup_epochs,
            restore_before_step=restore_before_step,
        )
        hint = "AT-AWP uses 0.01, TRADES-AWP 5e-3."
        self.gamma = validation.in_interval(
            "AdversarialWeightPerturbation.gamma",
            gamma,
            0.0,
            float("inf"),
            low_open=True,
            high_open=True,
            hint=f"γ sizes each kernel's perturbation as γ·‖w‖; {hint}",
        )
        self.proxy_lr = validation.in_interval(
            "AdversarialWeightPerturbation.proxy_lr",
            proxy_lr,
            0.0,
            float("inf"),
            low_open=True,
            high_open=True,
            hint="The reference's ascent step uses 0.01.",
        )

    def get_config(self):
        return {
            **super().get_config(),
            "gamma": self.gamma,
            "proxy_lr": self.proxy_lr,
        }

    def __repr__(self):
        return (
            f"AdversarialWeightPerturbation(gamma={self.gamma:g}, "
            f"proxy_lr={self.proxy_lr:g}, "
            f"warmup_epochs={self.warmup_epochs}, "
            f"restore_before_step={self.restore_before_step})"
        )

    def offsets(self, trainer, loss_fn):
        variables = self.variables_to_perturb(trainer)
        if not variables:
            return []
        # The ascent's train-mode forward must not move the classifier's
        # running statistics: they are put back after it.
        kept = [
            v
            for v in trainer.classifier.non_trainable_variables
            if tf.as_dtype(v.dtype).is_floating
        ]
        saved = [tf.identity(tf.convert_to_tensor(v)) for v in kept]
        with tf.GradientTape() as tape:
            scaled = trainer.scale_loss(loss_fn())
        zero = tf.UnconnectedGradients.ZERO
        grads = tape.gradient(scaled, variables, unconnected_gradients=zero)
        for variable, value in zip(kept, saved, strict=True):
            variable.assign(value)
        grads = [tf.cast(g, tf.float32) for g in grads]
        grads = batches.sum_replicas(grads)
        # The gradient of the global batch's mean loss, loss scale removed.
        unit = tf.cast(trainer.scale_loss(tf.constant(1.0)), tf.float32)
        finite = tf.reduce_all(
            [tf.reduce_all(tf.math.is_finite(g)) for g in grads]
        )
        offsets = []
        for variable, grad in zip(variables, grads, strict=True):
            step = self.proxy_lr * grad / unit
            weight = tf.cast(tf.convert_to_tensor(variable), tf.float32)
            scale = tf.norm(weight) / (tf.norm(step) + NORM_GUARD)
            offset = tf.where(finite, self.gamma * scale * step, 0.0)
            offsets.append(tf.cast(offset, variable.dtype))
        return offsets
