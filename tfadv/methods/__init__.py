"""Training methods: one keras.Model subclass per method.

Every method subclasses `AdversarialTrainer` and follows its contract
(`tfadv.methods.base`): the training attack, the step, the epoch hooks,
`results_info()` and `callbacks()`; the trainer's plumbing sits beside it
(`batches`, `classifiers`, `user_metrics`, `step_counts`,
`training_attack`, `keras_internals`; `weight_perturbations`, the hook
of AWP; `costs`, the passes a minibatch makes, which every method
declares in `passes()`). Shared pieces live in modules of their own:
`replay` (the replay loop of Free-AT and DEAT), `controllers`
(step controllers: M+, DEAT-d, DEAT-p), `per_example` (buffers with a row
per training example, for FGSM-PGI), `taylor` (Taylor expansions of
the loss, for GAAT and noisy training), `layer_lr` (a per-layer learning
rate inside one SGD optimizer), `layer0_gradient` (YOPO's inner-step
gradient through a conv layer 0, written out) and `trades_family` (the
β-weighted KL methods' base). docs/methods.md maps them.
"""

from tfadv.methods import base
from tfadv.methods import controllers
from tfadv.methods import costs
from tfadv.methods import layer0_gradient
from tfadv.methods import layer_lr
from tfadv.methods import replay
from tfadv.methods import taylor
from tfadv.methods import trades_family
from tfadv.methods.backward_smoothing import BackwardSmoothing
from tfadv.methods.base import AdversarialTrainer
from tfadv.methods.deat import DEAT
from tfadv.methods.fgsm_pgi import FGSMPGI
from tfadv.methods.fgsm_rs import FGSMRS
from tfadv.methods.free_at import FreeAT
from tfadv.methods.gaat import GAAT
from tfadv.methods.grad_align import GradAlign
from tfadv.methods.mart import MART
from tfadv.methods.n_fgsm import NFGSM
from tfadv.methods.noisy_training import NoisyTraining
from tfadv.methods.pgd_at import PGDAT
from tfadv.methods.standard import Standard
from tfadv.methods.trades import TRADES
from tfadv.methods.trades_yopo import TRADESYOPO
from tfadv.methods.yopo import YOPO
