"""Training recipes that wrap any method.

Weight averaging (`WeightAveraging`), keeping the best epoch (`KeepBest`)
and adversarial weight perturbation (`AdversarialWeightPerturbation`). A
recipe changes how a method's weights are updated or
chosen, not how its adversarial examples are made, so each one works with
every trainer in `tfadv.methods`. Their gin files live in
`gin_configs/recipes/` and stack on a method's file.
"""

from tfadv.recipes.averaging import WeightAveraging
from tfadv.recipes.awp import AdversarialWeightPerturbation
from tfadv.recipes.selection import KeepBest
from tfadv.recipes.selection import keep_best

__all__ = [
    "AdversarialWeightPerturbation",
    "KeepBest",
    "WeightAveraging",
    "keep_best",
]
