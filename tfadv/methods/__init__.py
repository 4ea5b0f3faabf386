"""Training methods: one keras.Model subclass per method."""

from tfadv.methods import base
from tfadv.methods.base import AdversarialTrainer
from tfadv.methods.pgd_at import PGDAT
from tfadv.methods.standard import Standard
