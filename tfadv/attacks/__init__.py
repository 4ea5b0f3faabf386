"""Attacks: threat models, objectives and the attack drivers."""

from tfadv.attacks import backward_smoothing
from tfadv.attacks import base
from tfadv.attacks import fab
from tfadv.attacks import objectives
from tfadv.attacks import perturbations
from tfadv.attacks import threat_models
from tfadv.attacks import wrappers
from tfadv.attacks.apgd import APGD
from tfadv.attacks.apgd import APGDTargeted
from tfadv.attacks.backward_smoothing import BackwardSmoothingAttack
from tfadv.attacks.base import Attack
from tfadv.attacks.fab import FABTargeted
from tfadv.attacks.perturbations import NoiseFGSM
from tfadv.attacks.perturbations import TrainingPerturbation
from tfadv.attacks.pgd import ProjectedGradient
from tfadv.attacks.square import Square
from tfadv.attacks.threat_models import L2ThreatModel
from tfadv.attacks.threat_models import LinfThreatModel
from tfadv.attacks.threat_models import ThreatModel
from tfadv.attacks.wrappers import BPDA
from tfadv.attacks.wrappers import EOT
from tfadv.attacks.wrappers import GaussianNoise
