"""The attack interface shared by training, validation and evaluation.

An attack is a callable object

    x_adv = attack(model, x, y, seed=seed, training=False)

with these invariants, which `tests/attacks_test.py` enforces:

- `x_adv` has the shape and dtype of `x`;
- `x_adv` lies inside the attack's threat set around `x` and inside [0, 1];
- `x_adv` is wrapped in `tf.stop_gradient`: no gradient flows out of it;
- an attack creates no variables and reads no global random state: all of its
  randomness comes from `seed`, so the same seed gives the same output;
- with `training=False` the model's weights and BatchNorm statistics are
  untouched. `training=True` runs the model in training mode (batch
  statistics, dropout, moving averages updated), which some methods ask for
  (ALGORITHMS.md §0.3 rule 4).

Attacks contain no `tf.function`: they run inside whatever the caller
compiles (a Keras `train_step`, `test_step`, or the evaluation loop), and use
explicit TF control flow so that they work with AutoGraph off.
"""

import keras
import tensorflow as tf

# What `seed` may be: a Keras SeedGenerator (a method's), a Python int, a
# stateless seed tensor of shape [2], or None (which means the fixed seed 0).
Seed = keras.random.SeedGenerator | int | tf.Tensor | None


def as_seed(seed: Seed) -> tf.Tensor:
    """Converts any accepted `seed` into a stateless int32 seed of shape [2]."""
    if seed is None:
        seed = 0
    if isinstance(seed, keras.random.SeedGenerator):
        seed = seed.next()
    elif isinstance(seed, int):
        return tf.constant([seed & 0x7FFFFFFF, 0], tf.int32)
    seed = tf.convert_to_tensor(seed)
    if seed.shape.rank != 1 or seed.shape[0] != 2:
        raise ValueError(
            f"A seed tensor must have shape [2]; got shape {seed.shape}."
        )
    if seed.dtype != tf.int32:
        # Keep the low 31 bits; stateless ops accept int32 or int64 alike.
        seed = tf.cast(
            tf.math.floormod(tf.cast(seed, tf.int64), 2**31), tf.int32
        )
    return seed


def split_seed(seed: tf.Tensor, num: int) -> list:
    """Splits a stateless seed into `num` independent seeds."""
    return tf.unstack(tf.random.experimental.stateless_split(seed, num))


def check_positive_int(name: str, value, *, allow_zero: bool = True) -> int:
    """Validates a count argument and returns it as an int."""
    lowest = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
        raise ValueError(
            f"{name} must be an integer >= {lowest}; got {value!r}."
        )
    return value


def check_budget(epsilon) -> float:
    """Validates a training budget: a number in (0, 1] pixel units.

    Attacks accept epsilon = 0 (the identity attack); a training method or
    run needs a real budget.
    """
    try:
        value = float(epsilon)
    except (TypeError, ValueError):
        value = float("nan")
    if not 0.0 < value <= 1.0:
        raise ValueError(
            f"epsilon must be in (0, 1] (pixel units; images are in [0, 1]); "
            f"got {epsilon!r}. Fashion-MNIST uses 0.1, CIFAR-10 8/255 = "
            "0.0313725."
        )
    return value


def check_non_negative(name: str, value) -> float:
    """Validates a non-negative float argument and returns it."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"{name} must be a non-negative number; got {value!r}."
        ) from None
    if not value >= 0.0:
        raise ValueError(
            f"{name} must be a non-negative number; got {value!r}."
        )
    return value


class Attack:
    """Base class of every attack. Subclasses implement `__call__`.

    Attributes:
        name: the name results are reported under (e.g. "pgd20").
        threat_model: the `ThreatModel` the attack stays inside.
    """

    name: str = "attack"
    threat_model = None

    @property
    def epsilon(self) -> float:
        return self.threat_model.epsilon

    def __call__(
        self,
        model: keras.Model,
        x: tf.Tensor,
        y: tf.Tensor,
        *,
        seed: Seed = None,
        training: bool = False,
    ) -> tf.Tensor:
        raise NotImplementedError
