"""Keras layers of tfadv's methods.

`SoftQuantization` is the input layer of the soft-quantization network
(`tfadv.methods.NoisyTraining`, `gin_configs/soft_quantization.gin`). It is
a registered Keras serializable: a `model.keras` holding it loads with plain
`keras.saving.load_model` once this module is imported (`import
tfadv.layers`, which `import tfadv` does).

Put input layers in front of any classifier with
`tfadv.models.prepend_layers` (in gin, `run.input_layers =
[@SoftQuantization]`). `masking_layer_names(model)` lists the layers that
declare they mask gradients (`masks_gradients = True`).
"""

from tfadv.layers.masking import MASKS_GRADIENTS
from tfadv.layers.masking import masking_layer_names
from tfadv.layers.soft_quantization import SoftQuantization

__all__ = ["MASKS_GRADIENTS", "SoftQuantization", "masking_layer_names"]
