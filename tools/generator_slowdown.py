r"""Times one PGD-AT step before and after a `from_generator` dataset runs.

TensorFlow's generator dataset op lowers glibc's M_TRIM_THRESHOLD for the
whole process the first time it runs ("Memory patch applied" in the log),
which pins the mmap threshold, so large tensors are mmapped afresh on every
allocation. This script measures what that does to a tfadv step in one
process: the step (small CNN, batch 128, PGD-10) timed, a one-element
generator dataset iterated, the step timed again. tfadv's own pipeline does
not use `from_generator` (docs/benchmarks/README.md, "Measured overhead").

    python tools/generator_slowdown.py --steps=10
"""

import os
import sys
import time

import numpy as np
import tensorflow as tf
from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import overhead  # noqa: E402

from tfadv import models  # noqa: E402
from tfadv.methods import pgd_at  # noqa: E402

_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps per measurement.")


def seconds_per_step(step, batch, steps):
    step(batch)  # traced and warm
    start = time.perf_counter()
    for _ in range(steps):
        out = step(batch)
    np.asarray(tf.nest.flatten(out)[0])
    return (time.perf_counter() - start) / steps


def main(argv):
    del argv
    x = tf.random.stateless_uniform([128, 28, 28, 1], seed=[0, 0])
    y = tf.random.stateless_uniform(
        [128], seed=[0, 1], minval=0, maxval=10, dtype=tf.int32
    )
    classifier = models.small_cnn(input_shape=(28, 28, 1), num_classes=10)
    trainer = overhead.make_trainer(pgd_at.PGDAT, classifier, seed=0)
    step = tf.function(trainer.train_step, autograph=False)
    before = seconds_per_step(step, (x, y), _STEPS.value)
    generator = tf.data.Dataset.from_generator(
        lambda: iter([0]), output_signature=tf.TensorSpec((), tf.int64)
    )
    list(generator)
    after = seconds_per_step(step, (x, y), _STEPS.value)
    print(
        f"s/step before a generator dataset ran: {before:.3f}; after: "
        f"{after:.3f}; ratio {after / before:.2f}"
    )


if __name__ == "__main__":
    app.run(main)
