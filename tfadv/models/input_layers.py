"""Input layers in front of any classifier (e.g. soft quantisation)."""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence

import keras

LayerSpec = keras.layers.Layer | Callable[[], keras.layers.Layer]


def prepend_layers(
    classifier: keras.Model,
    layers: Sequence[LayerSpec],
    *,
    input_shape: Sequence[int] | None = None,
    name: str | None = None,
) -> keras.Model:
    """The classifier with `layers` applied to its input first.

    The layers run right after the input, so in front of a tfadv builder's
    "normalize" layer: they see [0, 1] pixels. A functional classifier is
    rebuilt flat from copies of its layers (same names, its current
    weights), so its layers stay at the top level (`get_layer("normalize")`,
    YOPO's "first_layer" and BPDA's layer names work as before); train the
    returned model, not the classifier. A Sequential classifier gets the
    layers in front of its own (shared); any other model (a subclassed
    one) is nested after them (shared).

    Example:
        sq = tfadv.layers.SoftQuantization(levels=2, temperature=20.0)
        model = tfadv.models.prepend_layers(my_functional_cnn, [sq])

    Args:
        classifier: a built Keras model with one image input.
        layers: layers (or zero-argument callables returning one, such as
            a layer class bound in gin), applied in order.
        input_shape: the shape of one input image; needed only for a
            subclassed classifier, which does not record it.
        name: the new model's name (default: the classifier's).

    Returns:
        A new `keras.Model` with the classifier's input shape and outputs.

    Raises:
        TypeError: `classifier` is no Keras model, or an entry of `layers`
            is no layer.
        ValueError: the input shape is unknown (a subclassed classifier
            without `input_shape`), or the classifier has several inputs.
    """
    if not isinstance(classifier, keras.Model):
        raise TypeError(
            f"prepend_layers needs a keras.Model; got {classifier!r}."
        )
    layers = [_as_layer(spec) for spec in layers]
    name = name or classifier.name
    if not layers:
        return classifier
    try:
        inputs = classifier.inputs  # a functional model's; else unset
    except (AttributeError, ValueError):
        inputs = None
    if isinstance(classifier, keras.Sequential):
        return keras.Sequential(
            [keras.Input(classifier.input_shape[1:]), *layers]
            + list(classifier.layers),
            name=name,
        )
    if inputs is not None and len(inputs) == 1:
        return _rebuild_functional(classifier, layers, name)
    if input_shape is None:
        try:
            input_shape = classifier.input_shape[1:]
        except (AttributeError, ValueError, TypeError):
            input_shape = None
    if input_shape is None or isinstance(input_shape[0], (list, tuple)):
        raise ValueError(
            f"prepend_layers cannot tell the input shape of "
            f"{classifier.name!r} (a subclassed model does not record it, "
            "and a model with several inputs is not accepted); pass "
            "input_shape=, the shape of one image, e.g. (28, 28, 1)."
        )
    return keras.Sequential(
        [keras.Input(tuple(input_shape)), *layers, classifier], name=name
    )


def _as_layer(spec) -> keras.layers.Layer:
    layer = spec
    if not isinstance(spec, keras.layers.Layer) and callable(spec):
        layer = spec()
    if not isinstance(layer, keras.layers.Layer):
        raise TypeError(
            f"Input layers must be Keras layers or callables returning one "
            f"(e.g. @SoftQuantization in gin); got {spec!r}."
        )
    return layer


def _rebuild_functional(classifier, layers, name):
    outputs = {}

    def call_through(layer, *args, **kwargs):
        # The first layers that read the model's input read the new
        # layers' output instead; every layer is the classifier's own.
        tensor = args[0] if args else None
        history = getattr(tensor, "_keras_history", None)
        if history is not None and isinstance(
            history.operation, keras.layers.InputLayer
        ):
            if id(tensor) not in outputs:
                value = tensor
                for new in layers:
                    value = new(value)
                outputs[id(tensor)] = value
            args = (outputs[id(tensor)], *args[1:])
        return layer(*args, **kwargs)

    # Fresh layers (same names, the classifier's weights): a layer shared by
    # two graphs would have two outputs, and `layer.output` (which YOPO's
    # split reads) would name the old graph's.
    rebuilt = keras.models.clone_model(classifier, call_function=call_through)
    for layer in classifier.layers:
        if layer.weights:
            rebuilt.get_layer(layer.name).set_weights(layer.get_weights())
    # clone_model keeps the original name; the caller may want another.
    return keras.Model(rebuilt.input, rebuilt.output, name=name)
