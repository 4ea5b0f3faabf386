"""Classifier builders: images in [0, 1] -> logits, normalisation inside.

Every builder returns a functional `keras.Model` whose first layer,
"normalize", maps pixels to `(x - mean) / std`, and whose layer named
`FIRST_LAYER` ("first_layer") ends YOPO's layer 0; `split_at_first_layer`
cuts a model there. `prepend_layers` puts input layers such as
`tfadv.layers.SoftQuantization` in front of any classifier, before its
normalisation (in gin: `run.input_layers`).
"""

from tfadv.models.common import BN_EPSILON
from tfadv.models.common import BN_MOMENTUM
from tfadv.models.common import FIRST_LAYER
from tfadv.models.common import LOGITS_LAYER
from tfadv.models.common import NORMALIZE_LAYER
from tfadv.models.common import split_at_first_layer
from tfadv.models.input_layers import prepend_layers
from tfadv.models.resnet import preact_resnet18
from tfadv.models.resnet import resnet18
from tfadv.models.small_cnn import mnist_small_cnn
from tfadv.models.small_cnn import small_cnn
from tfadv.models.wide_resnet import wide_resnet

__all__ = [
    "BN_EPSILON",
    "BN_MOMENTUM",
    "FIRST_LAYER",
    "LOGITS_LAYER",
    "NORMALIZE_LAYER",
    "mnist_small_cnn",
    "preact_resnet18",
    "prepend_layers",
    "resnet18",
    "small_cnn",
    "split_at_first_layer",
    "wide_resnet",
]
