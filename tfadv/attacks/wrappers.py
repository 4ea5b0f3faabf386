"""Attack wrappers for models that hide their gradients: BPDA and EOT.

Both change only the model an inner attack sees, never the attack loop, so
any gradient attack of `tfadv.attacks` (PGD, APGD, APGD-T) runs through
them unchanged (docs/algorithms.md §7.4). Nest them as `BPDA(EOT(attack))`: BPDA
needs the Keras model itself to find the layer it replaces.
"""

import math
import weakref
from collections.abc import Callable
from collections.abc import Sequence

import gin
import keras
import tensorflow as tf

from tfadv import validation
from tfadv.attacks import base

Transform = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]


class DefinedGradients:
    """A view of a classifier whose input gradient is zeros, never None.

    TensorFlow gives `tf.round`, `tf.floor` and casts no gradient at all, so
    an attack's `tape.gradient` through a hard quantiser returns None. The
    evaluation calls attacks on this view, which adds `0 * sum(x)` to the
    logits: the values are unchanged and the gradient of a piecewise-constant
    model is an honest zero, which the gradient-masking check then reports.

    Attributes:
        wrapped_model: the classifier.
    """

    def __init__(self, model):
        self.wrapped_model = model

    def __call__(self, x, training=False):
        logits = self.wrapped_model(x, training=training)
        zero = tf.reduce_sum(x * 0, axis=list(range(1, len(x.shape))))
        return logits + tf.cast(zero, logits.dtype)[:, None]


class _StraightThrough(keras.layers.Layer):
    """Forward through `layer`; backward through identity or `approximation`.

    `y = a(x) + stop_gradient(layer(x) - a(x))`, with `a` the identity when
    no approximation is given (Athalye et al. 2018). It owns no variables;
    those of `layer` stay shared with the original model.
    """

    def __init__(self, layer, approximation=None, **kwargs):
        super().__init__(name=f"{layer.name}_bpda", **kwargs)
        self.layer = layer
        self.approximation = approximation

    def call(self, inputs, training=None):
        outputs = self.layer(inputs, training=training)
        surrogate = inputs
        if self.approximation is not None:
            surrogate = self.approximation(inputs)
        surrogate = keras.ops.cast(surrogate, outputs.dtype)
        return surrogate + keras.ops.stop_gradient(outputs - surrogate)

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)


class Wrapper(base.Attack):
    """An attack that runs another attack on a changed view of the model.

    It takes the inner attack's threat model, `uses_gradients` and
    `min_classes`, prepares it in `prepare`, and `replace` hands the
    changes that are not the wrapper's own to the inner attack
    (`bpda.replace(num_steps=5)` shortens the wrapped PGD).

    Args:
        attack: the inner attack.
        name: the report name; None derives `<prefix>_<inner name>`.
        prefix: the prefix of the derived name.
    """

    def __init__(self, attack: base.Attack, *, name: str | None, prefix: str):
        if not isinstance(attack, base.Attack):
            raise TypeError(
                f"{type(self).__name__} wraps a tfadv attack; got {attack!r}."
            )
        self.attack = attack
        self.threat_model = attack.threat_model
        self.uses_gradients = attack.uses_gradients
        self.min_classes = attack.min_classes
        self._given_name = name
        self.name = name or f"{prefix}_{attack.name}"

    def prepare(self, model):
        self.attack.prepare(model)

    def replace(self, **changes):
        """A copy; changes that are not the wrapper's go to the inner attack."""
        config = self.get_config()
        own = {k: changes.pop(k) for k in list(changes) if k in config}
        if changes:
            own.setdefault("attack", self.attack.replace(**changes))
        return super().replace(**own)


@gin.register
class BPDA(Wrapper):
    """Backward Pass Differentiable Approximation around another attack.

    The inner attack runs against a copy of the classifier whose selected
    layers compute their usual output in the forward pass but are replaced
    in the backward pass by the identity (`x + stop_gradient(g(x) - x)`) or
    by a differentiable `approximation` of them (Athalye, Carlini & Wagner,
    ICML 2018; docs/algorithms.md §7.4). The copy shares every weight with the
    classifier (it is built once per classifier with
    `keras.models.clone_model`), so nothing is trained or created. Works on
    Sequential and functional models, nested ones included.

    Example:
        pgd = ProjectedGradient(epsilon=0.1, step_size=0.01, num_steps=20)
        bpda = BPDA(pgd, layers="quantize")   # the quantiser's layer name
        x_adv = bpda(classifier, x, y, seed=0)

    Args:
        attack: the inner (gradient) attack.
        layers: the layers to replace: a layer name, a sequence of names, or
            a predicate `layer -> bool` (e.g. matching a layer class).
        approximation: None for the identity, or a differentiable function
            `x -> g_hat(x)` used in the backward pass. Callables (here and
            as `layers`) must be registered Keras serializables for a
            trainer holding the attack to save and load.
        name: the report name; defaults to "bpda_<inner name>".
    """

    # Read by the evaluation (`suites.through_bpda`) and its masking checks.
    replaces_backward_pass = True

    def __init__(
        self,
        attack: base.Attack,
        *,
        layers: str | Sequence[str] | Callable[[keras.layers.Layer], bool],
        approximation: Callable[[tf.Tensor], tf.Tensor] | None = None,
        name: str | None = None,
    ):
        super().__init__(attack, name=name, prefix="bpda")
        if isinstance(layers, str):
            layers = (layers,)
        if not callable(layers):
            layers = tuple(layers)
            if not layers or not all(isinstance(n, str) for n in layers):
                raise ValueError(
                    f"BPDA layers must be layer names or a predicate; got "
                    f"{layers!r}."
                )
        self.layers = layers
        self.approximation = approximation
        self._surrogates = {}

    def get_config(self):
        return {
            "attack": self.attack,
            "layers": self.layers,
            "approximation": self.approximation,
            "name": self._given_name,
        }

    def __repr__(self):
        return f"BPDA({self.attack!r}, layers={self.layers!r})"

    def _selects(self, layer):
        if callable(self.layers):
            return bool(self.layers(layer))
        return layer.name in self.layers

    def prepare(self, model):
        """Builds the straight-through copy of `model`, then the inner's.

        Raises:
            ValueError: no layer of `model` matches `layers`, or the model
                cannot be rebuilt.
        """
        self.attack.prepare(self.surrogate(model))

    def surrogate(self, model) -> keras.Model:
        """The classifier with the selected layers made straight-through."""
        model = getattr(model, "wrapped_model", model)
        if not isinstance(model, keras.Model):
            raise TypeError(
                f"BPDA needs the Keras classifier to find its layers; got "
                f"{model!r}. Nest wrappers as BPDA(EOT(attack)), not "
                "EOT(BPDA(attack))."
            )
        cached = self._surrogates.get(id(model))
        if cached is not None and cached[0]() is model:
            return cached[1]
        matched = []

        def clone(layer):
            if self._selects(layer):
                matched.append(layer.name)
                return _StraightThrough(layer, self.approximation)
            return layer  # shared, weights included

        try:
            surrogate = keras.models.clone_model(
                model, clone_function=clone, recursive=True
            )
        except ValueError as e:
            raise ValueError(
                f"BPDA could not rebuild {model.name!r} (only Sequential and "
                f"functional models can be rebuilt): {e}"
            ) from None
        if not matched:
            names = [layer.name for layer in model._flatten_layers()]
            raise ValueError(
                f"BPDA found no layer matching {self.layers!r} in "
                f"{model.name!r}; its layers are {names}."
            )
        self._surrogates[id(model)] = (weakref.ref(model), surrogate)
        return surrogate

    def __call__(self, model, x, y, *, seed=None, training=False, x_init=None):
        surrogate = DefinedGradients(self.surrogate(model))
        return self.attack(
            surrogate, x, y, seed=seed, training=training, x_init=x_init
        )


@gin.register
@base.register_serializable
class GaussianNoise:
    """A random transform for EOT: add N(0, stddev^2) noise, clip to [0, 1].

    A registered Keras serializable, so an `EOT` holding it saves and loads
    with the trainer that holds the attack.

    Args:
        stddev: the noise scale in pixel units.
    """

    def __init__(self, stddev: float):
        self.stddev = validation.non_negative("stddev", stddev)

    def get_config(self) -> dict:
        return {"stddev": self.stddev}

    @classmethod
    def from_config(cls, config: dict) -> "GaussianNoise":
        return cls(**config)

    def __call__(self, x, seed):
        noise = tf.random.stateless_normal(
            tf.shape(x), seed, stddev=self.stddev, dtype=x.dtype
        )
        return tf.clip_by_value(x + noise, 0.0, 1.0)

    def __repr__(self):
        return f"GaussianNoise(stddev={self.stddev})"


class _Expectation:
    """The classifier averaged over random transforms (see `EOT`)."""

    def __init__(self, model, num_samples, transform, seed):
        self.wrapped = model
        self.num_samples = num_samples
        self.transform = transform
        self.seed = seed

    def __call__(self, x, training=False):
        n = self.num_samples
        tiled = tf.concat([x] * n, axis=0)
        if self.transform is not None:
            # Fresh draws at every iterate, yet reproducible: the seed is
            # folded with a fingerprint of the input.
            content = tf.reduce_sum(tf.cast(tf.stop_gradient(x), tf.float32))
            seed = tf.random.experimental.stateless_fold_in(
                self.seed, tf.bitcast(content, tf.int32)
            )
            tiled = self.transform(tiled, seed)
        logits = tf.cast(self.wrapped(tiled, training=training), tf.float32)
        log_probs = tf.nn.log_softmax(logits, axis=-1)
        log_probs = tf.reshape(log_probs, [n, tf.shape(x)[0], -1])
        return tf.reduce_logsumexp(log_probs, axis=0) - math.log(n)


@gin.register
class EOT(Wrapper):
    """Expectation over Transformation around another attack.

    The inner attack sees the classifier's expected prediction over
    `num_samples` random transforms, `log mean_t softmax(f(t(x)))`, so each
    of its gradients averages the per-transform gradients (weighted by the
    probability each gives the class; Athalye et al., ICML 2018). The
    samples run as one batch of `num_samples * B`. Use it when the
    classifier or its preprocessing is random (docs/algorithms.md §7.4: at least
    20 draws of inference-time noise). With `transform=None` the classifier
    itself must be random at call time; otherwise `transform(x, seed)` draws
    a random transform from a stateless seed derived from the attack's seed
    and the current iterate, so the same seed gives the same output.

    Example:
        eot = EOT(pgd, num_samples=20, transform=GaussianNoise(0.1))

    Args:
        attack: the inner attack.
        num_samples: transforms averaged per gradient (>= 1).
        transform: None, or `transform(x, seed) -> x'` in [0, 1] (a
            registered Keras serializable, as `GaussianNoise`, for a
            trainer holding the attack to save and load).
        name: the report name; defaults to "eot<n>_<inner name>".
    """

    def __init__(
        self,
        attack: base.Attack,
        *,
        num_samples: int = 20,
        transform: Transform | None = None,
        name: str | None = None,
    ):
        self.num_samples = validation.count(
            "num_samples", num_samples, minimum=1
        )
        super().__init__(attack, name=name, prefix=f"eot{num_samples}")
        self.transform = transform

    def get_config(self):
        return {
            "attack": self.attack,
            "num_samples": self.num_samples,
            "transform": self.transform,
            "name": self._given_name,
        }

    def __repr__(self):
        return (
            f"EOT({self.attack!r}, num_samples={self.num_samples}, "
            f"transform={self.transform!r})"
        )

    def __call__(self, model, x, y, *, seed=None, training=False, x_init=None):
        transform_seed, attack_seed = base.split_seed(base.as_seed(seed), 2)
        expected = _Expectation(
            model, self.num_samples, self.transform, transform_seed
        )
        return self.attack(
            expected,
            x,
            y,
            seed=attack_seed,
            training=training,
            x_init=x_init,
        )
