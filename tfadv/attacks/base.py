"""The attack interface shared by training, validation and evaluation.

An attack is a callable object

    x_adv = attack(model, x, y, seed=seed, training=False)

with these invariants, which `tests/attacks_pgd_test.py` and
`tests/attacks_base_test.py` enforce:

- `x_adv` has the shape and dtype of `x`;
- `x_adv` lies inside the attack's threat set around `x` and inside [0, 1];
- `x_adv` is wrapped in `tf.stop_gradient`: no gradient flows out of it;
- an attack creates no variables and reads no global random state: all of its
  randomness comes from `seed`, so the same seed gives the same output;
- with `training=False` the model's weights and BatchNorm statistics are
  untouched. `training=True` runs the model in training mode (batch
  statistics, dropout, moving averages updated), which some methods ask for
  (docs/algorithms.md §0.3 rule 4).

Attacks contain no `tf.function`: they run inside whatever the caller
compiles (a Keras `train_step`, `test_step`, or the evaluation loop), and use
explicit TF control flow so that they work with AutoGraph off.

Every attack also:

- takes an optional keyword `x_init`, a start point the caller chose (it
  replaces the attack's own start);
- says whether it needs the model's gradients (`uses_gradients`; Square
  does not), which the evaluation's gradient-masking checks read;
- describes itself with `get_config()` (its constructor arguments) and
  gives a copy with other settings with `replace(num_steps=5, ...)`.
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


class Attack:
    """Base class of every attack. Subclasses implement `__call__`.

    Subclasses keep their constructor arguments in `get_config()`, so that
    `replace` can rebuild them with some settings changed.

    Attributes:
        name: the name results are reported under (e.g. "pgd20").
        threat_model: the `ThreatModel` the attack stays inside.
        uses_gradients: whether the attack differentiates the model.
    """

    name: str = "attack"
    threat_model = None
    uses_gradients: bool = True

    @property
    def epsilon(self) -> float:
        return self.threat_model.epsilon

    def get_config(self) -> dict:
        """The constructor arguments that rebuild this attack."""
        raise NotImplementedError(
            f"{type(self).__name__} does not implement get_config()."
        )

    def replace(self, **changes) -> "Attack":
        """A copy with some constructor arguments changed.

        A name the attack derived from its settings (e.g. "pgd20") is
        derived again for the copy; a name given explicitly is kept unless
        `name=` is among the changes.

        Raises:
            TypeError: a change names no constructor argument.
        """
        config = self.get_config()
        unknown = sorted(set(changes) - set(config))
        if unknown:
            raise TypeError(
                f"{type(self).__name__} has no setting {unknown}; its "
                f"settings are {sorted(config)}."
            )
        return type(self)(**{**config, **changes})

    def __call__(
        self,
        model: keras.Model,
        x: tf.Tensor,
        y: tf.Tensor,
        *,
        seed: Seed = None,
        training: bool = False,
        x_init: tf.Tensor | None = None,
    ) -> tf.Tensor:
        raise NotImplementedError


def serialize(attack: Attack | None) -> dict | None:
    """`{"class_name", "config"}` of an attack, for a trainer's config."""
    if attack is None:
        return None
    config = {}
    for key, value in attack.get_config().items():
        if isinstance(value, Attack):
            value = serialize(value)
        elif callable(value):
            value = getattr(value, "__name__", repr(value))
        config[key] = value
    return {"class_name": type(attack).__name__, "config": config}


def repeat(step, value: tf.Tensor, times: int) -> tf.Tensor:
    """`step` applied `times` times (a static count) to `value`.

    Up to two steps unroll (no loop overhead, and FGSM stays simple);
    longer runs are a `tf.while_loop`, which works with AutoGraph off (as
    Keras traces `train_step`) and keeps the graph small.
    """
    if times <= 2:
        for _ in range(times):
            value = step(value)
        return value
    _, value = tf.while_loop(
        lambda i, _: i < times,
        lambda i, v: (i + 1, step(v)),
        (tf.constant(0), value),
        maximum_iterations=times,
    )
    return value
