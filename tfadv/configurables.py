"""Gin registrations of third-party symbols (Keras optimizers, schedules).

gin.tf's own registrations mix TF1 symbols with `tf.keras` names, so tfadv
registers the few Keras 3 objects its gin files use here, under the module
names a reader expects (`@keras.optimizers.SGD`).
"""

import gin
import keras

for _optimizer in (
    keras.optimizers.SGD,
    keras.optimizers.Adam,
    keras.optimizers.AdamW,
):
    gin.external_configurable(_optimizer, module="keras.optimizers")

for _schedule in (
    keras.optimizers.schedules.PiecewiseConstantDecay,
    keras.optimizers.schedules.CosineDecay,
):
    gin.external_configurable(_schedule, module="keras.optimizers.schedules")
