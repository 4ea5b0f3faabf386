"""Training methods: one keras.Model subclass per method."""

from tfadv.methods import base
from tfadv.methods.base import AdversarialTrainer
from tfadv.methods.fgsm_rs import FGSMRS
from tfadv.methods.free_at import FreeAT
from tfadv.methods.mart import MART
from tfadv.methods.pgd_at import PGDAT
from tfadv.methods.standard import Standard
from tfadv.methods.trades import TRADES
from tfadv.methods.trades_yopo import TRADESYOPO
from tfadv.methods.yopo import YOPO
