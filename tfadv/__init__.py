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
        "an extra so that an environment keeps the TensorFlow it has, and "
        "this environment has none. Install one into it: pip install "
        "'tensorflow-cpu>=2.16,<2.22' (CPU only, the lighter wheel) or pip "
        "install 'tensorflow[and-cuda]>=2.16,<2.22' (GPU). Installing tfadv "
        "with its extra does the same: pip install '.[cpu]' or '.[gpu]' "
        "from a checkout (-e for an editable one), 'tfadv[cpu]' from a "
        "package index."
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
