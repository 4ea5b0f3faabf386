"""Robust accuracy under an attack suite, with gradient-masking checks.

- `suites`: the attack-name grammar (`make_attack`) and the suites
  (`make_suite`: quick, standard, or a list such as pgd20,pgd50x10,cw50;
  `with_masking_attacks`: what a model with gradient-masking layers is
  always attacked with as well);
- `runner`: the batch loop (`evaluate_robustness`, `run_suite`, the
  gin-configurable `evaluate_suite`) and the printed table
  (`format_report`);
- `options`: `EvalOptions`, the settings of one evaluation (seed, masking
  checks and their false-alarm rate, XLA, per-example results), built
  once and passed down;
- `checks`: the gradient-masking checks, one function each, each
  returning a `Finding` and logging it; `margins`: the binomial margin
  they share (`binomial_limit`);
- `masking`: which attacks each check compares, composed into
  `masking_report`, and the checks of the classifier's outputs
  (`output_checks`: a randomised model, probabilities instead of logits);
- `curves`: robust accuracy at several budgets (`robustness_curve`,
  `format_curve`, `plot_curve`).

Typical use:

    suite = evaluation.make_suite("standard", epsilon=0.1)
    options = evaluation.EvalOptions(seed=1)
    result = evaluation.run_suite(classifier, test_dataset, suite,
                                  options=options)
    print(evaluation.format_report(result))
"""

from tfadv.evaluation import checks
from tfadv.evaluation import curves
from tfadv.evaluation import margins
from tfadv.evaluation import masking
from tfadv.evaluation import options
from tfadv.evaluation import runner
from tfadv.evaluation import suites
from tfadv.evaluation.curves import check_epsilons
from tfadv.evaluation.curves import format_curve
from tfadv.evaluation.curves import plot_curve
from tfadv.evaluation.curves import robustness_curve
from tfadv.evaluation.margins import binomial_limit
from tfadv.evaluation.masking import masking_report
from tfadv.evaluation.masking import output_checks
from tfadv.evaluation.options import FALSE_ALARM_RATE
from tfadv.evaluation.options import INDEPENDENT_GRADIENT_FREE_TOLERANCE
from tfadv.evaluation.options import MISS_RATE
from tfadv.evaluation.options import ZERO_GRADIENT_THRESHOLD
from tfadv.evaluation.options import EvalOptions
from tfadv.evaluation.runner import evaluate_robustness
from tfadv.evaluation.runner import evaluate_suite
from tfadv.evaluation.runner import format_report
from tfadv.evaluation.runner import one_class_lines
from tfadv.evaluation.runner import run_suite
from tfadv.evaluation.suites import ATTACK_NAMES_HELP
from tfadv.evaluation.suites import SEQUENTIAL_SUITES
from tfadv.evaluation.suites import SUITES
from tfadv.evaluation.suites import Suite
from tfadv.evaluation.suites import make_attack
from tfadv.evaluation.suites import make_suite
from tfadv.evaluation.suites import pgd_step_size
from tfadv.evaluation.suites import with_masking_attacks
