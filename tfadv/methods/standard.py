"""Standard (non-adversarial) training."""

import gin

from tfadv.methods import base
from tfadv.methods import costs


@gin.register
class Standard(base.AdversarialTrainer):
    """Standard training: cross-entropy on clean inputs, no attack.

    The reference point for cost (1 FB per minibatch) and for the clean
    accuracy an adversarially trained model gives up. It reports `loss` and
    `clean_accuracy` during training (there is no training attack, so no
    `adv_accuracy`), and robust validation accuracy when given an
    `eval_attack`.

    Example:
        trainer = tfadv.methods.Standard(classifier, eval_attack=pgd20)
        trainer.compile(optimizer=keras.optimizers.SGD(0.01))
        trainer.fit(train_ds, validation_data=val_ds, epochs=5)

    Args:
        classifier: a Keras model mapping [0, 1] images to logits.
        **kwargs: see `AdversarialTrainer`.
    """

    train_metric_names = (base.LOSS, base.CLEAN_ACCURACY)

    def compute_adversarial_loss(self, x, y, x_adv):
        logits = self.classifier(x, training=True)
        return self.cross_entropy(y, logits), logits, None

    def passes(self):
        # The update's logits feed clean_accuracy: no other forward.
        return costs.update(self)
