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
- says how many classes the classifier must have (`min_classes`; APGD-T
  needs 4) and builds, in `prepare(model)`, anything it needs per
  classifier before its first call (BPDA's straight-through copy), so the
  evaluation asks the attack instead of testing its class;
- describes itself with `get_config()` (its constructor arguments) and
  gives a copy with other settings with `replace(num_steps=5, ...)`;
- is a registered Keras serializable (package "tfadv" for tfadv's own
  attacks, the defining module's name for others): every subclass is
  registered when it is defined, and `from_config` rebuilds it, so a
  trainer holding attacks saves to `.keras` and loads with
  `keras.saving.load_model`. Settings that are objects (an inner attack, a
  transform, a custom objective) must be registered serializables too;
- refuses images that are not floating point, finite and in [0, 1] (pixel
  space), with a clear error: in eager mode at the call, inside a compiled
  function through `tf.debugging` assertions (which XLA drops). A caller
  that has checked its images already (a trainer's step) runs its attacks
  inside `inputs_checked()`, and a wrapper's inner attack is not checked
  again.
"""

import contextlib
import functools
import math
import threading

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


def gradient_scale(per_example: tf.Tensor) -> tf.Tensor:
    """The power of two that brings the mean objective near 1 (float32).

    An attack's step uses only the gradient's direction (its sign in L∞,
    its unit vector in L2), and multiplying by a power of two scales every
    gradient exactly, so the step is unchanged in float32. Under
    `mixed_float16` the gradient of a tiny objective underflows instead:
    at TRADES' start x + 0.001·N the KL term is about 1e-7, and without
    the scale a few percent of the input gradient's entries come out as
    exact zeros. The scale (at most 2^24, never below 1) is taken outside
    the gradient.
    """
    magnitude = tf.reduce_mean(tf.abs(tf.cast(per_example, tf.float32)))
    exponent = tf.clip_by_value(
        tf.round(-tf.math.log(magnitude) / math.log(2.0)), 0.0, 24.0
    )
    return tf.stop_gradient(tf.pow(2.0, exponent))


def for_gradient(total: tf.Tensor, per_example: tf.Tensor) -> tf.Tensor:
    """`total` times `gradient_scale(per_example)`."""
    return total * tf.cast(gradient_scale(per_example), total.dtype)


def split_seed(seed: tf.Tensor, num: int) -> list:
    """Splits a stateless seed into `num` independent seeds."""
    return tf.unstack(tf.random.experimental.stateless_split(seed, num))


def keras_package(cls: type) -> str:
    """The Keras registration package of a class: "tfadv" for tfadv's own.

    A class defined elsewhere (a user's attack or method) is registered
    under its module's name, so it never shadows a tfadv class of the same
    name.
    """
    module = cls.__module__
    if module == "tfadv" or module.startswith("tfadv."):
        return "tfadv"
    return module


def register_serializable(cls: type) -> type:
    """Registers `cls` with Keras serialization (see `keras_package`)."""
    return keras.saving.register_keras_serializable(package=keras_package(cls))(
        cls
    )


def _is_serialized_object(value) -> bool:
    return isinstance(value, dict) and {"class_name", "config"} <= set(value)


def deserialize_config(config: dict) -> dict:
    """A config with its serialized Keras objects rebuilt.

    `keras.saving.serialize_keras_object` writes the objects a config holds
    (an inner attack, a transform, a registered function) as nested dicts;
    this turns them, and lists of them, back into objects.
    """

    def rebuild(value):
        if _is_serialized_object(value):
            return keras.saving.deserialize_keras_object(value)
        if isinstance(value, (list, tuple)):
            return type(value)(rebuild(v) for v in value)
        return value

    return {key: rebuild(value) for key, value in config.items()}


# Per thread (MirroredStrategy traces each replica in a thread of its
# own): how deep the current attack calls are, and whether the caller
# checked the images itself.
_call_state = threading.local()


@contextlib.contextmanager
def inputs_checked():
    """Attacks called inside do not check their images again.

    For callers that check their images themselves (a trainer's
    `prepare_batch`), so an in-step attack adds no assertions.
    """
    previous = getattr(_call_state, "checked", False)
    _call_state.checked = True
    try:
        yield
    finally:
        _call_state.checked = previous


def check_images(x, who: str = "An attack") -> tf.Tensor:
    """`x` as a tensor, refused unless floating point, finite, in [0, 1].

    Eagerly the values are checked at once (a `ValueError`); inside a
    compiled function the check is a pair of `tf.debugging` assertions on
    the batch's minimum and maximum (an `InvalidArgumentError` when the
    step runs; XLA drops them).

    Raises:
        TypeError: `x` is not floating point.
        ValueError: eagerly, `x` has NaN values or values outside [0, 1].
    """
    x = tf.convert_to_tensor(x)
    if not x.dtype.is_floating:
        raise TypeError(
            f"{who} takes floating-point images in [0, 1] (pixel space); "
            f"got {x.dtype.name} images. Divide uint8 images by 255 in the "
            "input pipeline."
        )
    hint = (
        "Images must be floating point in [0, 1] (pixel space): divide "
        "uint8 images by 255 in the input pipeline, and put normalisation "
        "inside the model; epsilon is then in pixel units."
    )
    if tf.executing_eagerly():
        if not tf.size(x):
            return x
        # The minimum and maximum are NaN when a pixel is.
        low = float(tf.reduce_min(x))
        high = float(tf.reduce_max(x))
        if math.isnan(low) or math.isnan(high):
            raise ValueError(f"{who} got images with NaN values. {hint}")
        if not (low >= 0.0 and high <= 1.0):
            raise ValueError(
                f"{who} got images with values in [{low:g}, {high:g}], "
                f"outside [0, 1]. {hint}"
            )
        return x
    # A NaN pixel makes the minimum and maximum NaN, which fails both.
    low, high = tf.reduce_min(x), tf.reduce_max(x)
    checks = [
        tf.debugging.assert_greater_equal(
            low, tf.constant(0.0, x.dtype), message=f"{who}: {hint}"
        ),
        tf.debugging.assert_less_equal(
            high, tf.constant(1.0, x.dtype), message=f"{who}: {hint}"
        ),
    ]
    with tf.control_dependencies(checks):
        return tf.identity(x)


def checked_call(call):
    """Wraps an attack's entry point with the image check, once per call.

    Every subclass's `__call__` is wrapped when the class is defined; other
    entry points (`ProjectedGradient.ascend_with_gradient`) use it as a
    decorator. Skipped inside `inputs_checked()` and in nested calls.
    """

    @functools.wraps(call)
    def checked(self, model, x, *args, **kwargs):
        depth = getattr(_call_state, "depth", 0)
        if not depth and not getattr(_call_state, "checked", False):
            x = check_images(x, type(self).__name__)
        _call_state.depth = depth + 1
        try:
            return call(self, model, x, *args, **kwargs)
        finally:
            _call_state.depth = depth

    checked.checks_images = True
    return checked


class Attack:
    """Base class of every attack. Subclasses implement `__call__`.

    Subclasses keep their constructor arguments in `get_config()`, so that
    `replace` can rebuild them with some settings changed and `from_config`
    can rebuild them from a saved file. Defining a subclass registers it
    with Keras serialization and wraps its `__call__` with the image check
    (see the module docstring), so a new attack needs neither.

    Attributes:
        name: the name results are reported under (e.g. "pgd20").
        threat_model: the `ThreatModel` the attack stays inside.
        uses_gradients: whether the attack differentiates the model.
        training_only: whether it is a training perturbation, whose output
            may leave the threat set (never an evaluation attack).
        min_classes: the fewest classes (logits) the classifier must have
            for the attack to run; the evaluation refuses a classifier
            with fewer before any attack runs.
    """

    name: str = "attack"
    threat_model = None
    uses_gradients: bool = True
    # A training perturbation (`tfadv.attacks.perturbations`) may leave the
    # threat set; it is never used to measure robustness.
    training_only: bool = False
    min_classes: int = 1

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        register_serializable(cls)
        call = cls.__dict__.get("__call__")
        if call is not None and not getattr(call, "checks_images", False):
            cls.__call__ = checked_call(call)

    @property
    def epsilon(self) -> float:
        return self.threat_model.epsilon

    def get_config(self) -> dict:
        """The constructor arguments that rebuild this attack."""
        raise NotImplementedError(
            f"{type(self).__name__} does not implement get_config()."
        )

    @classmethod
    def from_config(cls, config: dict) -> "Attack":
        """Rebuilds an attack from `get_config()` or its serialized form."""
        return cls(**deserialize_config(config))

    def prepare(self, model: keras.Model) -> None:
        """Builds, eagerly, what calls on `model` will need; nothing here.

        The evaluation calls it once per attack and classifier before any
        batch, so a bad setting fails before attacking and nothing is
        built inside a trace (BPDA builds its straight-through copy).
        """
        del model

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


def evaluation_attack(attack, who: str):
    """`attack`, refused if it cannot measure robustness.

    A training perturbation (`training_only`) may leave the threat set, so
    the accuracy under it is not robust accuracy at its epsilon.

    Raises:
        ValueError: `attack` is a training-only perturbation.
    """
    if attack is not None and getattr(attack, "training_only", False):
        raise ValueError(
            f"{who} must be an evaluation attack, whose examples stay inside "
            f"the threat set; {attack!r} is a training perturbation that "
            f"reaches {attack.reach:g} at epsilon {attack.epsilon:g}. Train "
            "with it (train_attack=) and measure robustness with an attack "
            "of tfadv.attacks (e.g. ProjectedGradient, APGD)."
        )
    return attack


def serialize(attack: Attack | None) -> dict | None:
    """`{"class_name", "config"}`: a readable, JSON-friendly description.

    Callables are replaced by their names, so this describes an attack
    (for logs and reports) but does not rebuild it; the loadable form is
    `keras.saving.serialize_keras_object(attack)`, which trainers' configs
    use.
    """
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
