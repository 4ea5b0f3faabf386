"""Everything gin can name: tfadv's registering modules and Keras symbols.

Importing this module registers every name a gin file may use, without
relying on what the package root happens to import: it imports each module
of tfadv that calls `gin.register` (listed in `REGISTERING_MODULES`, which
a test keeps complete), and registers the few Keras 3 objects tfadv's gin
files use under the module names a reader expects
(`@keras.optimizers.SGD`). gin.tf's own registrations mix TF1 symbols with
`tf.keras` names, so they are not used.
"""

import importlib

import gin
import keras

REGISTERING_MODULES = (
    "tfadv.attacks.apgd",
    "tfadv.attacks.backward_smoothing",
    "tfadv.attacks.fab",
    "tfadv.attacks.objectives",
    "tfadv.attacks.perturbations",
    "tfadv.attacks.pgd",
    "tfadv.attacks.square",
    "tfadv.attacks.threat_models",
    "tfadv.attacks.wrappers",
    "tfadv.callbacks",
    "tfadv.data.augment",
    "tfadv.data.datasets",
    "tfadv.evaluation.runner",
    "tfadv.experiment",
    "tfadv.layers.soft_quantization",
    "tfadv.methods.backward_smoothing",
    "tfadv.methods.controllers",
    "tfadv.methods.deat",
    "tfadv.methods.fgsm_pgi",
    "tfadv.methods.fgsm_rs",
    "tfadv.methods.free_at",
    "tfadv.methods.gaat",
    "tfadv.methods.grad_align",
    "tfadv.methods.mart",
    "tfadv.methods.n_fgsm",
    "tfadv.methods.noisy_training",
    "tfadv.methods.pgd_at",
    "tfadv.methods.standard",
    "tfadv.methods.trades",
    "tfadv.methods.trades_yopo",
    "tfadv.methods.yopo",
    "tfadv.models.resnet",
    "tfadv.models.small_cnn",
    "tfadv.models.wide_resnet",
    "tfadv.recipes.averaging",
    "tfadv.recipes.awp",
    "tfadv.recipes.selection",
    "tfadv.schedules",
)

for _module in REGISTERING_MODULES:
    importlib.import_module(_module)

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


def epoch_parameters() -> tuple:
    """Every gin parameter whose value is written in epochs.

    Each registering module declares its own (`EPOCH_PARAMETERS` beside
    the configurable: learning-rate boundaries, FGSM-PGI's reset period,
    AWP's warm-up, ...), so a tool that trains a gin file's method for
    another number of epochs (tools/benchmark.py) scales every one of them
    without a list of its own.
    """
    found = []
    for module in REGISTERING_MODULES:
        loaded = importlib.import_module(module)
        found += getattr(loaded, "EPOCH_PARAMETERS", ())
    return tuple(found)


def minibatch_replays() -> int:
    """Updates per minibatch of the parsed configuration's method.

    1, unless `run.method_cls` declares `replays_in_config` (Free-AT, which
    replays every minibatch m times): a tool that trains methods at equal
    updates gives such a method 1/m of the epochs.
    """
    try:
        method = gin.query_parameter("run.method_cls")
    except ValueError:  # not bound
        return 1
    cls = getattr(method, "configurable", None)
    replays = getattr(getattr(cls, "wrapped", None), "replays_in_config", None)
    return int(replays()) if replays else 1
