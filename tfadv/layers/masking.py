"""Which layers of a model mask input gradients."""

import keras

# A layer class sets this attribute to True when gradient attacks through
# it may fail by masking (a steep or hard quantiser, a randomised
# transform); tfadv's final evaluation then attacks through BPDA as well.
MASKS_GRADIENTS = "masks_gradients"


def masking_layer_names(model: keras.Model) -> list[str]:
    """Names of the layers of `model`, nested ones included, that mask.

    A layer masks when it has a true `masks_gradients` attribute
    (`tfadv.layers.SoftQuantization` has). The names are what
    `tfadv.attacks.BPDA(layers=...)` takes.
    """
    names = []
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if getattr(layer, MASKS_GRADIENTS, False) and layer.name not in names:
            names.append(layer.name)
    return names
