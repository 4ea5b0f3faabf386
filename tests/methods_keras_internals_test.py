"""tfadv.methods.keras_internals: the one place of private Keras names.

Each private name the trainer relies on exists on the installed Keras, and
no other file of `tfadv/methods/` uses one.
"""

import os
import re

import keras
import tensorflow as tf
from tensorflow.python.distribute import collective_all_reduce_strategy

from tests import harness
from tfadv import methods
from tfadv.methods import keras_internals

METHODS_DIR = os.path.dirname(methods.__file__)
PRIVATE_NAMES = (
    "_in_multi_worker_mode",
    "_distribute_strategy",
    "_maybe_symbolic_build",
    "_trainable_variables",
    "_non_trainable_variables",
    "_learning_rate",
)


class KerasInternalsTest(tf.test.TestCase):
    def test_each_name_exists_on_the_installed_keras(self):
        trainer = methods.Standard(harness.tiny_classifier())
        self.assertTrue(hasattr(keras.Model, "_maybe_symbolic_build"))
        self.assertTrue(hasattr(trainer, "_distribute_strategy"))
        # The trainer's own variables: the minibatch counter.
        self.assertEqual(
            [v.name for v in keras_internals.own_variables(trainer)],
            ["minibatches"],
        )
        optimizer = keras.optimizers.SGD(0.25)
        self.assertAllClose(
            keras_internals.learning_rate_schedule(optimizer), 0.25
        )
        self.assertTrue(
            hasattr(
                collective_all_reduce_strategy.CollectiveAllReduceExtended,
                "_in_multi_worker_mode",
            )
        )
        self.assertFalse(
            keras_internals.multi_worker(tf.distribute.get_strategy())
        )

    def test_no_other_method_file_uses_a_private_keras_name(self):
        pattern = re.compile(
            r"\.(" + "|".join(map(re.escape, PRIVATE_NAMES)) + r")\b"
        )
        offenders = []
        for name in sorted(os.listdir(METHODS_DIR)):
            if not name.endswith(".py") or name == "keras_internals.py":
                continue
            with open(os.path.join(METHODS_DIR, name)) as f:
                for number, line in enumerate(f, 1):
                    if pattern.search(line):
                        offenders.append(f"{name}:{number}: {line.strip()}")
        self.assertEqual(offenders, [])
