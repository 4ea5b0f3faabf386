"""Robust accuracy of a classifier under a set of attacks."""

import time
from collections.abc import Mapping
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

from tfadv.attacks import base as attack_base


def _as_dict(attacks) -> dict:
    if isinstance(attacks, Mapping):
        return dict(attacks)
    named = {}
    for attack in attacks:
        if attack.name in named:
            raise ValueError(
                f"Two attacks share the name {attack.name!r}; give them "
                "distinct `name=` arguments."
            )
        named[attack.name] = attack
    return named


def evaluate_robustness(
    classifier: keras.Model,
    dataset: tf.data.Dataset,
    attacks: Mapping[str, attack_base.Attack] | Sequence[attack_base.Attack],
    *,
    seed: int = 0,
) -> dict:
    """Clean and robust accuracy of `classifier` on every example of `dataset`.

    Every attack runs on every example (in inference mode), each batch with
    a seed derived from `seed` and the batch index, so numbers reproduce.
    With several attacks, `robust_accuracy["worst_case"]` counts an example
    as robust only if it is classified correctly clean and under every
    attack (the per-example minimum).

    Args:
        classifier: maps [0, 1] images to logits.
        dataset: batches of `(images, labels)`, in a fixed order.
        attacks: attacks keyed by report name, or a sequence (keyed by each
            attack's `name`).
        seed: base seed.

    Returns:
        A dict with `clean_accuracy`, `robust_accuracy` (attack name ->
        accuracy), `num_examples` and `attack_seconds` (attack name ->
        seconds).
    """
    attacks = _as_dict(attacks)

    @tf.function
    def predict(x):
        return tf.argmax(
            classifier(x, training=False), -1, output_type=tf.int32
        )

    def make_attack_fn(attack):
        @tf.function
        def attack_fn(x, y, batch_seed):
            x_adv = attack(classifier, x, y, seed=batch_seed, training=False)
            return predict(x_adv)

        return attack_fn

    attack_fns = {name: make_attack_fn(a) for name, a in attacks.items()}
    clean, correct = [], {name: [] for name in attacks}
    seconds = dict.fromkeys(attacks, 0.0)
    for index, (x, y) in enumerate(dataset):
        y = tf.cast(tf.reshape(y, [-1]), tf.int32)
        clean.append((predict(x) == y).numpy())
        batch_seed = tf.constant([seed, index], tf.int32)
        for name, fn in attack_fns.items():
            start = time.perf_counter()
            pred = fn(x, y, batch_seed)
            correct[name].append((pred == y).numpy())
            seconds[name] += time.perf_counter() - start
    if not clean:
        raise ValueError("The evaluation dataset is empty.")
    clean = np.concatenate(clean)
    robust = {name: np.concatenate(c) for name, c in correct.items()}
    accuracy = {name: float(c.mean()) for name, c in robust.items()}
    if len(robust) > 1:
        worst = clean.copy()
        for c in robust.values():
            worst &= c
        accuracy["worst_case"] = float(worst.mean())
    return {
        "clean_accuracy": float(clean.mean()),
        "robust_accuracy": accuracy,
        "num_examples": int(clean.size),
        "attack_seconds": seconds,
    }
