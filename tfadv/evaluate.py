r"""Attacks a trained classifier: `python -m tfadv.evaluate --model=runs/x`.

`--model` is a run folder (its model.keras; dataset, epsilon, norm and
example count come from its results.json, flags override them) or a .keras
file. `--suite` is quick (PGD-20), standard (APGD-CE, APGD-T, FAB-T, Square
run AutoAttack-style; the default) or a list such as pgd20,pgd50x10,cw50;
`--norm` is linf or l2. Prints a table with the gradient-masking checks and
writes eval.json beside the model, or eval-<suite>.json when eval.json
exists; it never overwrites a file. `--epsilons=0.02,0.05,0.1` also runs
the suite at each of those budgets, prints and stores the robustness curve
(`curve` in the JSON) and draws it to a PNG of the JSON's name.
`--gin_file`/`--gin_bindings` configure `make_datasets` and `evaluate_suite`
(e.g. `evaluate_suite.jit_compile = True`).
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

import json  # noqa: E402
import logging as std_logging  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402

import gin  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402

from tfadv import gin_files  # noqa: E402

GIN_DIR = gin_files.GIN_DIR
_SHARED = dict(allow_override=True)  # also defined by tfadv.train
_GIN_FILE = flags.DEFINE_multi_string("gin_file", [], "Gin files.", **_SHARED)
_GIN_BINDINGS = flags.DEFINE_multi_string(
    "gin_bindings", [], "Gin bindings.", **_SHARED
)
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Data directory.", **_SHARED)
_MODEL = flags.DEFINE_string("model", None, "Run folder or .keras file.")
_SUITE = flags.DEFINE_string(
    "suite", None, "quick, standard, or a list.", **_SHARED
)
_EPSILON = flags.DEFINE_float("epsilon", None, "Budget (default: the run's).")
_NORM = flags.DEFINE_string(
    "norm", None, "Threat model: linf or l2 (default: the run's, else linf)."
)
_EPSILONS = flags.DEFINE_list(
    "epsilons",
    [],
    "Budgets of a robustness curve, e.g. 0.02,0.05,0.1,0.15: the suite runs "
    "at each; the curve goes into the JSON and a PNG beside it.",
)
_NUM_EXAMPLES = flags.DEFINE_integer(
    "num_examples", None, "First N test examples (default: the run's, 1000)."
)
_DATASET = flags.DEFINE_string("dataset", None, "Dataset (default: run's).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 256, "Evaluation batch.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the attacks.")
_BPDA_LAYERS = flags.DEFINE_list("bpda_layers", [], "BPDA over these layers.")
_OUTPUT = flags.DEFINE_string("output", None, "Where to write the JSON.")


def _inputs():
    """Resolves and checks the flags.

    Returns:
        `(model file, folder, epsilon, norm, epsilons, dataset, N)`; norm is
        None when neither `--norm` nor the run's results.json gives one.
    """
    from tfadv import run_folder
    from tfadv import validation
    from tfadv.attacks import threat_models
    from tfadv.evaluation import curves

    path, model_file = _MODEL.value, _MODEL.value
    if path and os.path.isdir(path):
        model_file = run_folder.path(path, run_folder.MODEL_FILE)
    if not path or not model_file.endswith(".keras"):
        raise ValueError(
            f"--model={path!r}: give a run folder holding model.keras or a "
            ".keras file."
        )
    if not os.path.isfile(model_file):
        raise ValueError(f"--model: {model_file} does not exist.")
    folder = os.path.dirname(model_file) or "."
    run = run_folder.read_json(run_folder.path(folder, run_folder.RESULTS_FILE))
    norm = run.get("norm") if _NORM.value is None else _NORM.value
    if norm is not None:
        norm = validation.choice(
            "--norm",
            norm,
            tuple(threat_models.THREAT_MODELS),
            hint="linf is the L-infinity ball, l2 the Euclidean one; "
            "epsilon is the radius in pixel units.",
        )
    epsilons = []
    if _EPSILONS.value:
        epsilons = curves.check_epsilons(_EPSILONS.value, norm=norm or "linf")
    epsilon = _EPSILON.value
    run_norm = run.get("norm", "linf")  # runs before run.norm were L-inf
    if epsilon is None and run.get("epsilon") is not None:
        if norm in (None, run_norm):
            epsilon = run["epsilon"]
        elif not epsilons:
            raise ValueError(
                f"--norm={norm}, but the run in {folder} was evaluated in "
                f"{run_norm} at epsilon {run['epsilon']:g}, a radius that "
                f"means nothing in {norm}; pass --epsilon (e.g. --epsilon=1.5 "
                "for L2 on 28x28 images) or --epsilons."
            )
    if epsilon is None and epsilons:
        epsilon = epsilons[-1]  # the headline numbers: the largest budget
    if epsilon is None:
        raise ValueError(
            f"No results.json in {folder}; pass --epsilon (or --epsilons)."
        )
    epsilon = validation.epsilon(
        epsilon, allow_zero=False, norm=norm or run_norm
    )
    num = _NUM_EXAMPLES.value
    if num is not None:
        validation.count("--num_examples", num, minimum=1)
    validation.count("--batch_size", _BATCH_SIZE.value, minimum=1)
    num = num or run.get("num_eval_examples") or 1000
    dataset = _DATASET.value or run.get("dataset") or "fashion_mnist"
    return model_file, folder, epsilon, norm, epsilons, dataset, num


def _load(model_file):
    """The classifier in `model_file`, or one paragraph on why not."""
    import keras

    try:
        return keras.saving.load_model(model_file)  # safe mode on
    except Exception as e:  # noqa: BLE001  (any reason: say it, no trace)
        reason = " ".join(str(e).split())[:300]
        raise ValueError(
            f"--model: {model_file} exists but cannot be loaded as a Keras "
            f"model ({type(e).__name__}: {reason}). It may be truncated "
            "(a run killed while exporting; rerun its training command to "
            "finish it) or not a .keras file. Accepted: a .keras file "
            "written by keras Model.save, or a finished run folder."
        ) from None


def _check_input_shape(classifier, info, model_file):
    shape = getattr(classifier, "input_shape", None)
    if not isinstance(shape, tuple) or len(shape) != 4:
        return  # a subclassed model: the first call will tell
    expected = tuple(info.image_shape)
    if tuple(shape[1:]) != expected and None not in shape[1:]:
        raise ValueError(
            f"--model: {model_file} takes images of shape {shape[1:]}, but "
            f"{info.name!r} has images of shape {expected}. Pass the "
            "dataset the model was trained on (--dataset)."
        )


def _check_classifier(classifier, info, model_file):
    """Refuses a classifier whose scores would mean nothing on the data."""
    from tfadv import callbacks

    shape = getattr(classifier, "output_shape", None)
    width = shape[-1] if isinstance(shape, tuple) and shape else None
    if width is not None and width != info.num_classes:
        raise ValueError(
            f"--model: {model_file} outputs {width} logits, but "
            f"{info.name!r} has {info.num_classes} classes; its accuracy "
            "would count every label it has no logit for as a miss. Pass "
            "the dataset the model was trained on (--dataset), or a model "
            "with one logit per class."
        )
    bad = callbacks.nonfinite_weights(classifier)
    if bad:
        raise ValueError(
            f"--model: {model_file} holds NaN or infinite weights (in "
            f"{', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}); every "
            "score would be 0 and mean nothing. Evaluate a model with "
            "finite weights (e.g. the run's last good checkpoint, after a "
            "diverged training)."
        )


def _check_writable(file_path):
    """Refuses, before any attack runs, an output that cannot be written."""
    parent = os.path.dirname(os.path.abspath(file_path))
    if not os.path.isdir(parent):
        raise ValueError(
            f"--output={file_path}: the folder {parent} does not exist; "
            "create it or pass a path in an existing folder (nothing was "
            "attacked)."
        )
    # A real probe: os.access says yes to root on a read-only folder.
    try:
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as e:
        raise ValueError(
            f"--output={file_path}: the folder {parent} is not writable "
            f"({e.strerror}); pass a path you can write (nothing was "
            "attacked)."
        ) from None


def plot_path(json_path):
    """The robustness curve's PNG: the JSON's path with `.png`."""
    return os.path.splitext(json_path)[0] + ".png"


def _output_path(folder, suite_name, with_plot=False):
    """eval.json, else eval-<suite>.json; an existing file is an error.

    With `with_plot`, the PNG of the same name must not exist either.
    """
    if _OUTPUT.value:
        if os.path.isdir(_OUTPUT.value):
            raise ValueError(
                f"--output={_OUTPUT.value} is a folder; give the path of the "
                f"JSON file to write, e.g. {os.path.join(_OUTPUT.value, '')}"
                "eval.json (nothing was attacked)."
            )
        candidates = [_OUTPUT.value]
        if with_plot and plot_path(_OUTPUT.value) == _OUTPUT.value:
            raise ValueError(
                f"--output={_OUTPUT.value}: with --epsilons the curve is "
                "drawn to the output's name with .png; give a .json path."
            )
    else:
        tag = re.sub(r"[^A-Za-z0-9_.-]+", "_", suite_name)
        candidates = [f"{folder}/eval.json", f"{folder}/eval-{tag}.json"]
    taken = []
    for candidate in candidates:
        files = [candidate, plot_path(candidate)] if with_plot else [candidate]
        existing = [f for f in files if os.path.exists(f)]
        if not existing:
            _check_writable(candidate)
            return candidate
        taken += existing
    raise ValueError(
        f"{' and '.join(taken)} exist; tfadv.evaluate never overwrites "
        "an evaluation. Pass another --output=PATH or move them away."
    )


def _check_plotting():
    """Refuses --epsilons, before any attack, without matplotlib."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ValueError(
            "--epsilons draws the curve with matplotlib, which is not "
            "installed: pip install matplotlib (or drop --epsilons)."
        ) from None


def _title(model_file, dataset, norm, suite):
    from tfadv import run_folder

    label = os.path.basename(model_file)
    if label == run_folder.MODEL_FILE:
        label = os.path.basename(os.path.dirname(os.path.abspath(model_file)))
    norm = {"linf": "L-inf", "l2": "L2"}.get(norm, norm)
    return f"{label} on {dataset}: robust accuracy, {norm}, suite {suite}"


class _QuietRetracing(std_logging.Filter):
    """Drops TensorFlow's retracing warning during a robustness curve.

    Each budget builds its attacks anew, so their compiled functions trace
    again on purpose; TensorFlow's advice about it would only mislead.
    """

    def filter(self, record):
        return "triggered tf.function retracing" not in record.getMessage()


def main(argv):
    """Checks every flag, then loads, attacks, prints and writes."""
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    import tfadv  # noqa: F401  (registers every gin name and Keras layer)
    from tfadv import configurables  # noqa: F401
    from tfadv import data
    from tfadv import evaluation
    from tfadv import provenance

    try:
        model_file, folder, epsilon, norm, epsilons, dataset, num = _inputs()
        gin_files.parse(_GIN_FILE.value, _GIN_BINDINGS.value)
        # The table printed below carries every finding of the masking
        # checks: logging them as well would say each twice.
        options = dict(epsilon=epsilon, seed=_SEED.value, log_findings=False)
        if norm is not None:  # else gin's evaluate_suite.norm or linf
            options["norm"] = norm
        if _SUITE.value is not None:
            options["suite"] = _SUITE.value
        if _BPDA_LAYERS.value:
            options["bpda_layers"] = _BPDA_LAYERS.value
        suite = options.get("suite")
        if suite is None:
            try:
                suite = gin.query_parameter("evaluate_suite.suite")
            except ValueError:
                suite = "standard"
        name = "custom"
        if isinstance(suite, str):  # checks the names before anything loads
            name = evaluation.make_suite(
                suite, epsilon=epsilon, norm=norm or "linf"
            ).name
        elif epsilons:
            raise ValueError(
                "--epsilons runs the suite at each budget, so it needs named "
                "attacks (--suite=quick, standard or a list such as "
                "pgd20,square); the gin-bound evaluate_suite.suite holds "
                "attack objects with budgets of their own."
            )
        if epsilons:
            _check_plotting()
        output = _output_path(folder, name, with_plot=bool(epsilons))
        classifier = _load(model_file)
        datasets = gin.get_configurable(data.make_datasets)(
            name=dataset,
            data_dir=_DATA_DIR.value,
            training=False,  # test examples only: no training pipeline
            eval_batch_size=_BATCH_SIZE.value,
            eval_examples=num,
            validation_examples=0,
        )
        _check_input_shape(classifier, datasets.info, model_file)
        _check_classifier(classifier, datasets.info, model_file)
        evaluate = gin.get_configurable(evaluation.evaluate_suite)
        curve, same = None, []
        if epsilons:

            def run_at(budget):
                at = {**options, "epsilon": budget, "per_example": True}
                return evaluate(classifier, datasets.test, **at)

            quiet = _QuietRetracing()
            std_logging.getLogger("tensorflow").addFilter(quiet)
            try:
                curve = evaluation.robustness_curve(run_at, epsilons)
            finally:
                std_logging.getLogger("tensorflow").removeFilter(quiet)
            same = [
                r
                for r in curve["results"]
                if math.isclose(r["epsilon"], epsilon, rel_tol=1e-6)
            ]
        if same:
            result = same[0]  # that budget has run already
        else:
            result = evaluate(classifier, datasets.test, **options)
    except (ValueError, OSError) as e:
        # Bad input: one paragraph and a non-zero exit, no traceback.
        message = str(e).split("\n  In call to configurable")[0]
        sys.exit(f"tfadv.evaluate: error: {message}")
    result = {"model": model_file, "dataset": dataset, **result}
    result["bpda_layers"] = list(_BPDA_LAYERS.value)
    result["provenance"] = provenance.record()
    if curve is not None:
        result["curve"] = curve
    print(f"{model_file} on {dataset}:")
    print(evaluation.format_report(result))
    if curve is not None:
        print(evaluation.format_curve(curve))
    with open(output, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {output}")
    if curve is not None:
        picture = plot_path(output)
        title = _title(model_file, dataset, curve["norm"], curve["suite"])
        evaluation.plot_curve(curve, picture, title=title)
        print(f"wrote {picture}")


if __name__ == "__main__":
    logging.set_verbosity(logging.INFO)
    app.run(main)
