"""The metric names every method reports, and the user's compile metrics.

Every method logs the same names (`loss`, `clean_accuracy`,
`adv_accuracy`; `robust_accuracy` in validation), so curves overlay in
TensorBoard. `compile(metrics=...)` and `weighted_metrics=` add metrics
computed on the clean and adversarial logits (`clean_<name>`,
`adv_<name>`; `robust_<name>` in validation): `MetricGroups` holds one copy
of each metric per logit kind, the way Keras's `CompileMetrics` sits beside
its trainer.
"""

import keras
import tensorflow as tf

LOSS = "loss"
CLEAN_ACCURACY = "clean_accuracy"
ADV_ACCURACY = "adv_accuracy"
ROBUST_ACCURACY = "robust_accuracy"
# The logits a user metric is computed on, the prefixes of its logged names:
# clean and adversarial in training, clean and robust in validation.
PREFIXES = ("clean", "adv", "robust")
TRACKER_OF_PREFIX = {
    "clean": CLEAN_ACCURACY,
    "adv": ADV_ACCURACY,
    "robust": ROBUST_ACCURACY,
}


def trackers() -> dict:
    """The built-in metrics, by name."""
    return {
        LOSS: keras.metrics.Mean(name=LOSS),
        CLEAN_ACCURACY: keras.metrics.SparseCategoricalAccuracy(
            name=CLEAN_ACCURACY
        ),
        ADV_ACCURACY: keras.metrics.SparseCategoricalAccuracy(
            name=ADV_ACCURACY
        ),
        ROBUST_ACCURACY: keras.metrics.SparseCategoricalAccuracy(
            name=ROBUST_ACCURACY
        ),
    }


class MetricGroups:
    """The user's metrics by logit kind, outside Keras's state tracking.

    `compile` may run after the trainer is built, when Keras refuses new
    tracked state; the metrics need no tracking (the trainer's `metrics`
    lists them, and saving finds them through `user_metrics`).

    Attributes:
        groups: prefix -> list of metrics (named `<prefix>_<name>`).
        specs: `(metrics, weighted_metrics)` as given to `compile`.
    """

    def __init__(self):
        self.groups = {}
        self.specs = ([], [])

    def set(self, metrics, weighted_metrics, *, taken, method: str) -> None:
        """Makes one copy of every metric per logit kind.

        Raises:
            ValueError: a metric of a kind the trainer cannot compute, or
                whose logged name is in `taken` or made twice.
        """
        metrics = _metric_list("metrics", metrics, method)
        weighted_metrics = _metric_list(
            "weighted_metrics", weighted_metrics, method
        )
        made = {prefix: [] for prefix in PREFIXES}
        taken = set(taken)
        for specs, weighted in ((metrics, False), (weighted_metrics, True)):
            for spec in specs:
                metric = _resolve_metric(spec, method)
                if metric is None:
                    continue  # accuracy: always reported
                for prefix in PREFIXES:
                    name = f"{prefix}_{metric.name}"
                    if name in taken:
                        raise ValueError(
                            f"{method} would log two values named {name!r}; "
                            "give the metric another name (e.g. "
                            "keras.metrics.SparseTopKCategoricalAccuracy("
                            "k=5, name='top5'))."
                        )
                    taken.add(name)
                    copy = type(metric).from_config(
                        {**metric.get_config(), "name": name}
                    )
                    copy.weighted_by_sample = weighted
                    made[prefix].append(copy)
        self.specs = (metrics, weighted_metrics)
        self.groups = made

    def update(self, prefix, y, logits, sample_weight) -> None:
        """Updates the metrics of `prefix` on `(y, logits)`."""
        for metric in self.groups.get(prefix, ()):
            weights = sample_weight if metric.weighted_by_sample else None
            metric.update_state(y, logits, sample_weight=weights)

    def results(self, names) -> dict:
        """The results of the metrics whose logit kind's accuracy is named."""
        logs = {}
        for prefix, tracker in TRACKER_OF_PREFIX.items():
            if tracker in names:
                for metric in self.groups.get(prefix, ()):
                    logs[metric.name] = metric.result()
        return logs

    def all(self) -> list:
        return [m for group in self.groups.values() for m in group]


class SavedCompileMetrics:
    """Saves and restores a trainer's `compile` with its user metrics.

    A mixin before `keras.Model`: the compile config records the metrics as
    given (Keras would record its own compiled metrics), and a loaded
    trainer is compiled through its own `compile`, which Keras skips for a
    model that overrides it.
    """

    def get_compile_config(self):
        config = super().get_compile_config()
        if config:
            metrics, weighted = self._metric_groups.specs
            serialize = keras.saving.serialize_keras_object
            config["metrics"] = serialize(list(metrics)) or None
            config["weighted_metrics"] = serialize(list(weighted)) or None
        return config

    def compile_from_config(self, config):
        config = keras.saving.deserialize_keras_object(config)
        # compile builds the optimizer of a built trainer: its variables
        # must exist before its state loads.
        self.compile(**config)


def _metric_list(argument: str, metrics, method: str) -> list:
    """`compile`'s `metrics` or `weighted_metrics` as a flat list."""
    if metrics is None:
        return []
    if isinstance(metrics, (str, keras.metrics.Metric)) or callable(metrics):
        metrics = [metrics]
    if isinstance(metrics, dict) or not isinstance(metrics, (list, tuple)):
        raise ValueError(
            f"{method} has one output, the classifier's logits, so "
            f"compile({argument}=...) takes one list of metrics (names, "
            f"functions or keras.metrics.Metric objects); got {metrics!r}."
        )
    return list(metrics)


def _resolve_metric(spec, method: str) -> keras.metrics.Metric | None:
    """A user metric as a `keras.metrics.Metric` on (labels, logits).

    None for accuracy, which every method reports already. Names resolve
    as `compile` resolves them for integer labels and logits.
    """
    if isinstance(spec, str):
        if spec in ("accuracy", "acc", "sparse_categorical_accuracy"):
            return None
        if spec in ("crossentropy", "ce", "sparse_categorical_crossentropy"):
            return keras.metrics.SparseCategoricalCrossentropy(
                name="crossentropy", from_logits=True
            )
        try:
            spec = keras.metrics.get(spec)
        except ValueError as e:
            raise ValueError(
                f"{method}: unknown metric {spec!r} in compile(metrics=...); "
                "give a Keras metric name or a keras.metrics.Metric."
            ) from e
    if isinstance(spec, keras.metrics.Metric):
        return spec
    if callable(spec):
        name = getattr(spec, "__name__", type(spec).__name__)
        return keras.metrics.MeanMetricWrapper(spec, name=name)
    raise ValueError(
        f"{method} computes metrics on (labels, logits); compile(metrics="
        f"...) takes names, functions or keras.metrics.Metric objects, not "
        f"{spec!r}."
    )


def check_monitors(trainer, callbacks) -> None:
    """Refuses a callback that monitors a robust metric never logged.

    `val_robust_*` exists only when the trainer has an `eval_attack`;
    without one, Keras's `EarlyStopping` and `ModelCheckpoint` would only
    warn each epoch and stop or save on nothing.

    Raises:
        ValueError: a callback's `monitor` names `val_robust_<name>` and
            the trainer has no `eval_attack`.
    """
    if trainer.eval_attack is not None:
        return
    for callback in callbacks:
        monitor = getattr(callback, "monitor", None)
        if isinstance(monitor, str) and monitor.startswith("val_robust_"):
            raise ValueError(
                f"{type(callback).__name__} monitors {monitor!r}, but "
                f"this {type(trainer).__name__} has no eval_attack, so "
                "validation logs only loss and clean accuracy and "
                f"{monitor!r} is never logged. Give the trainer an "
                "eval_attack (e.g. eval_attack=tfadv.attacks."
                "ProjectedGradient(epsilon=..., step_size=..., num_steps="
                "20)), or monitor one of 'val_loss', 'val_clean_accuracy'."
            )


def as_vectors(logs: dict) -> dict:
    """Scalar logs as [1] vectors (see `keras_internals.multi_worker`)."""
    return {name: tf.reshape(value, [1]) for name, value in logs.items()}
