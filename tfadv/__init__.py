"""tfadv: efficient adversarial training for Keras 3 / TensorFlow 2.

Library use: wrap any Keras classifier (images in [0, 1] -> logits) in a
method from `tfadv.methods`, compile and fit it with your own data:

    pgd10 = tfadv.attacks.ProjectedGradient(
        epsilon=0.1, step_size=0.025, num_steps=10)
    trainer = tfadv.methods.PGDAT(classifier, train_attack=pgd10)
    trainer.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    trainer.fit(train_ds, validation_data=val_ds, epochs=5)
"""

try:
    import tensorflow  # noqa: F401
except ImportError as error:  # the install chose no TensorFlow extra
    raise ImportError(
        "tfadv needs TensorFlow (2.16 to 2.21), which its install leaves to "
        "an extra: pip install -e '.[cpu]' (tensorflow-cpu), "
        "pip install -e '.[gpu]' (tensorflow with CUDA), or install "
        "tensorflow yourself before pip install -e ."
    ) from error

from tfadv import attacks
from tfadv import callbacks
from tfadv import data
from tfadv import evaluation
from tfadv import layers
from tfadv import methods
from tfadv import models
from tfadv import recipes
from tfadv import schedules

__version__ = "0.1.0"
