"""What a benchmark trains: settings, and the plan one invocation carries out.

A `Setting` names the model, data and sizes every method shares; a `Plan`
is a setting with the command line's choices applied (methods, seeds,
epochs, bindings), built once and handed to the runs and the report. The
plan's training choices are stored in the benchmark folder, so seeds and
methods added later train exactly as the first ones did.
"""

import dataclasses
import math

# Every shipped method file but pgd_at_l2.gin, whose robust accuracy is
# under an L2 attack and so not comparable; standard.gin is the non-robust
# reference.
METHODS = (
    "standard",
    "pgd_at",
    "fgsm_rs",
    "n_fgsm",
    "grad_align",
    "fgsm_pgi",
    "fast_at",
    "free_at",
    "yopo",
    "trades_yopo",
    "deat",
    "mplus_pgd",
    "mplus_trades",
    "mplus_mart",
    "trades",
    "fast_trades",
    "mart",
    "backward_smoothing",
    "gaat",
    "soft_quantization",
)


@dataclasses.dataclass(frozen=True)
class Setting:
    """A benchmark setting: the model, data and sizes every method shares.

    Attributes:
        methods: the default method list.
        epochs: epochs for every method (None: each gin file's own).
        train_examples: training subset (None: all).
        eval_examples: final-evaluation examples (None: all).
        validation_examples: the fixed validation subset of every epoch.
        seeds: the default seeds of every method.
        front_seeds: seeds that every method on the Pareto front or near it
            (`analysis.NEAR_FRONT`) gets after the first pass (0: none).
        bindings: gin bindings for every method.
        gin_files: the gin file of a method, when not `<method>.gin`.
        overhead_model: the `tfadv.models` builder and its arguments of
            the overhead and cost modes.
    """

    methods: tuple
    epochs: int | None
    train_examples: int | None
    eval_examples: int | None
    validation_examples: int
    seeds: tuple = (0,)
    front_seeds: int = 0
    bindings: tuple = ()
    gin_files: dict = dataclasses.field(default_factory=dict)
    overhead_model: tuple = ("small_cnn", {})


NARROW_WIDTH = 16  # PreAct-ResNet-18 base width: 16, 32, 64, 128 filters

SETTINGS = {
    # The ranking: long and large enough that PGD-AT's validation robust
    # accuracy plateaus before the last epoch (the files' own schedule: 10
    # epochs, the rate /10 at 8 and 9), validation on 2,500 images (a
    # standard error under 1 point at 60-70 % accuracy), the final PGD-20
    # on all 10,000 test images, 3 seeds near the front. One seed of every
    # method takes about 2 hours on 2 quiet cores.
    "ranking": Setting(
        methods=METHODS,
        epochs=10,
        train_examples=15000,
        eval_examples=None,
        validation_examples=2500,
        front_seeds=3,
    ),
    # A first look, sized for 2 CPU cores (about 40 minutes for every
    # method): too short and noisy to rank.
    "small_cnn": Setting(
        methods=METHODS,
        epochs=3,
        train_examples=10240,
        eval_examples=1000,
        validation_examples=500,
    ),
    "resnet_narrow": Setting(
        methods=METHODS,
        epochs=2,
        train_examples=2048,
        eval_examples=500,
        validation_examples=200,
        bindings=(
            "run.model_fn = @preact_resnet18",
            f"preact_resnet18.width = {NARROW_WIDTH}",
        ),
        overhead_model=("preact_resnet18", {"width": NARROW_WIDTH}),
    ),
    # The papers' runs: CIFAR-10 at 8/255, their models and epochs.
    "full": Setting(
        methods=(
            "pgd_at",
            "fgsm_rs",
            "n_fgsm",
            "grad_align",
            "fgsm_pgi",
            "free_at",
            "yopo",
            "deat",
            "mplus_pgd",
            "mplus_trades",
            "mplus_mart",
            "trades",
            "mart",
            "backward_smoothing",
        ),
        epochs=None,
        train_examples=None,
        eval_examples=None,
        validation_examples=1000,
        gin_files={
            "pgd_at": "experiments/cifar10_pgd_at.gin",
            "fgsm_rs": "experiments/cifar10_fgsm_rs.gin",
            "n_fgsm": "experiments/cifar10_n_fgsm.gin",
            "grad_align": "experiments/cifar10_grad_align.gin",
            "fgsm_pgi": "experiments/cifar10_fgsm_pgi.gin",
            "free_at": "experiments/cifar10_free_at.gin",
            "yopo": "experiments/cifar10_preact_yopo_5_3.gin",
            "deat": "experiments/cifar10_mdeat.gin",
            "mplus_pgd": "experiments/cifar10_mplus_pgd.gin",
            "mplus_trades": "experiments/cifar10_mplus_trades.gin",
            "mplus_mart": "experiments/cifar10_mplus_mart.gin",
            "trades": "experiments/cifar10_trades.gin",
            "mart": "experiments/cifar10_mart.gin",
            "backward_smoothing": "experiments/cifar10_backward_smoothing.gin",
        },
        overhead_model=("preact_resnet18", {}),
    ),
}


@dataclasses.dataclass(frozen=True)
class Plan:
    """One benchmark's training choices: a setting with the flags applied.

    Attributes:
        setting: the setting's name.
        methods: gin files (bare names) to train, in order.
        seeds: run.seed of each run of every method.
        front_seeds: seeds every method near the front gets (0: none).
        epochs: epochs per method (None: each file's own).
        train_examples, eval_examples, validation_examples: data sizes.
        bindings: gin bindings of every method (the setting's, then the
            user's).
        method_bindings: `(method, binding)` pairs for one method.
    """

    setting: str
    methods: tuple
    seeds: tuple
    front_seeds: int
    epochs: int | None
    train_examples: int | None
    eval_examples: int | None
    validation_examples: int
    bindings: tuple = ()
    method_bindings: tuple = ()

    @property
    def gin_files(self) -> dict:
        return SETTINGS[self.setting].gin_files

    def gin_file(self, method: str) -> str:
        return self.gin_files.get(method, f"{method}.gin")

    def training(self) -> dict:
        """The choices every run of the folder must share (stored there)."""
        return {
            "setting": self.setting,
            "epochs": self.epochs,
            "train_examples": self.train_examples,
            "eval_examples": self.eval_examples,
            "validation_examples": self.validation_examples,
            "bindings": list(self.bindings),
            "method_bindings": [list(p) for p in self.method_bindings],
        }


def parse_method_bindings(entries) -> tuple:
    """`("method=binding", ...)` as `((method, binding), ...)`.

    Raises:
        ValueError: an entry without a method, "=" or binding.
    """
    pairs = []
    for entry in entries:
        name, sep, binding = entry.partition("=")
        if not sep or not name.strip() or not binding.strip():
            raise ValueError(
                f"--method_bindings wants 'method=binding'; got {entry!r}."
            )
        pairs.append((name.strip(), binding))
    return tuple(pairs)


def make_plan(
    setting: str,
    methods=None,
    seeds=None,
    front_seeds=None,
    epochs=None,
    train_examples=None,
    eval_examples=None,
    validation_examples=None,
    bindings=(),
    method_bindings=(),
) -> Plan:
    """The setting's defaults, replaced by every value that is not None."""
    base = SETTINGS[setting]

    def pick(value, default):
        return default if value is None else value

    return Plan(
        setting=setting,
        methods=tuple(pick(methods, base.methods)),
        seeds=tuple(pick(seeds, base.seeds)),
        front_seeds=pick(front_seeds, base.front_seeds),
        epochs=pick(epochs, base.epochs),
        train_examples=pick(train_examples, base.train_examples),
        eval_examples=pick(eval_examples, base.eval_examples),
        validation_examples=pick(validation_examples, base.validation_examples),
        bindings=tuple(base.bindings) + tuple(bindings),
        method_bindings=parse_method_bindings(method_bindings),
    )


def _parsed(plan, method, bindings):
    """`(run.epochs, replays, {epoch parameter: value})` of a config."""
    import gin

    from tfadv import configurables
    from tfadv import gin_files

    gin.clear_config()
    try:
        gin_files.parse([plan.gin_file(method)], bindings)
        epochs = _query("run.epochs")
        replays = configurables.minibatch_replays()
        values = {p: _query(p) for p in configurables.epoch_parameters()}
    finally:
        gin.clear_config()
    return epochs, replays, {p: v for p, v in values.items() if v}


def _query(parameter):
    import gin

    try:
        value = gin.query_parameter(parameter)
    except ValueError:  # not bound
        return None
    if isinstance(value, gin.config.ConfigurableReference):
        value = value.scoped_configurable_fn()  # a macro
    return value


def epochs_for(plan, method) -> int | None:
    """The epochs `method` trains: the plan's, over its minibatch replays.

    A method that replays every minibatch m times (Free-AT, as its parsed
    configuration declares) trains ceil(epochs / m) epochs, so it makes as
    many updates as the others.
    """
    if plan.epochs is None:
        return None
    _, replays, _ = _parsed(plan, method, list(plan.bindings))
    return max(1, math.ceil(plan.epochs / max(replays, 1)))


def scaled_epoch_parameters(plan, method, bindings) -> list:
    """Bindings that scale the file's epoch-valued parameters to the run.

    The factor is the epochs that the gin file with `bindings` trains over
    the file's own. Every parameter the registering modules declare as
    written in epochs (`tfadv.configurables.epoch_parameters`) is scaled:
    lists element by element (rounded to 4 decimals), integers rounded and
    kept at least 1. The runs put these before the user's bindings, so a
    value the user sets wins.
    """
    own, _, values = _parsed(plan, method, [])
    epochs, _, _ = _parsed(plan, method, bindings)
    if not own or not epochs or epochs == own:
        return []
    factor = epochs / own
    scaled = []
    for parameter, value in values.items():
        if isinstance(value, (list, tuple)):
            new = [round(float(v) * factor, 4) for v in value]
        else:
            new = max(1, round(value * factor))
        scaled.append(f"{parameter} = {new}")
    return scaled
