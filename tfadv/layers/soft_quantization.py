"""A soft k-level quantiser of pixel values."""

from collections.abc import Sequence

import gin
import keras
import numpy as np

from tfadv import validation

UNIFORM = "uniform"


@keras.saving.register_keras_serializable(package="tfadv")
@gin.register(module="tfadv.layers")
class SoftQuantization(keras.layers.Layer):
    """Soft quantisation of [0, 1] inputs to `levels` values, elementwise.

        SQ(x) = 1/(k-1) · Σ_{i=1}^{k-1} sigmoid(T · (x - b_i))

    with k = `levels`, T = `temperature` and thresholds b_i, by default the
    midpoints between the k levels, b_i = (i - 1/2) / (k - 1). The output
    lies in (0, 1); as T grows it tends to the hard staircase
    `1/(k-1) · #{i : x > b_i}` (0 and 1 for k = 2), and its input gradient
    `T/(k-1) · Σ σ'(T(x - b_i))` vanishes away from the thresholds: a steep
    quantiser masks gradients, so models with it are evaluated through
    BPDA (`masks_gradients` marks the layer for `tfadv.evaluation`).

    Reconstruction: the layer of "Is PGD-Adversarial Training Necessary?"
    (Zheng, Chen & Ren, arXiv 1810.05665) is described in its abstract
    only ("a differentiable soft-quantization layer after the network
    input layer"); this formula and its defaults are tfadv's
    (docs/algorithms.md §4).

    Place it right after the input and before normalisation
    (`tfadv.models.prepend_layers`). With `trainable=True` the thresholds
    are trained with the network (kept as given otherwise).

    Example:
        sq = tfadv.layers.SoftQuantization(levels=2, temperature=20.0)
        model = tfadv.models.prepend_layers(classifier, [sq])

    Args:
        levels: k, the number of output levels (>= 2).
        temperature: T > 0, the steepness of each step.
        thresholds: "uniform" (the midpoints above), or the k - 1 increasing
            thresholds in (0, 1).
        trainable: train the thresholds.
        **kwargs: passed to `keras.layers.Layer` (e.g. `name`).

    Raises:
        ValueError: a value out of range, or thresholds that are not k - 1
            increasing numbers in (0, 1).
    """

    # Read by tfadv.evaluation: gradient attacks through this layer may
    # fail by masking, so the final evaluation adds BPDA and Square.
    masks_gradients = True

    def __init__(
        self,
        levels: int = 2,
        temperature: float = 20.0,
        thresholds: str | Sequence[float] = UNIFORM,
        trainable: bool = False,
        **kwargs,
    ):
        super().__init__(trainable=trainable, **kwargs)
        self.levels = validation.count("levels", levels, minimum=2)
        self.temperature = validation.in_interval(
            "temperature",
            temperature,
            0.0,
            float("inf"),
            low_open=True,
            high_open=True,
            hint="It is the steepness of each sigmoid step.",
        )
        self.thresholds = _check_thresholds(thresholds, self.levels)

    def initial_thresholds(self) -> np.ndarray:
        """The k - 1 thresholds the layer starts from."""
        if self.thresholds == UNIFORM:
            steps = np.arange(1, self.levels, dtype="float64")
            return ((steps - 0.5) / (self.levels - 1)).astype("float32")
        return np.asarray(self.thresholds, dtype="float32")

    def build(self, input_shape):
        self.threshold = self.add_weight(
            shape=(self.levels - 1,),
            initializer=keras.initializers.Constant(self.initial_thresholds()),
            trainable=True,  # the layer's own `trainable` freezes it
            name="threshold",
        )

    def call(self, inputs):
        x = keras.ops.cast(inputs, self.compute_dtype)
        b = keras.ops.cast(self.threshold, self.compute_dtype)
        steps = keras.ops.sigmoid(self.temperature * (x[..., None] - b))
        return keras.ops.mean(steps, axis=-1)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        thresholds = self.thresholds
        if thresholds != UNIFORM:
            thresholds = [float(t) for t in thresholds]
        return {
            **super().get_config(),
            "levels": self.levels,
            "temperature": self.temperature,
            "thresholds": thresholds,
        }


def _check_thresholds(thresholds, levels):
    if isinstance(thresholds, str):
        if thresholds != UNIFORM:
            raise ValueError(
                f"SoftQuantization thresholds={thresholds!r}: accepted are "
                f"'{UNIFORM}' or a list of levels - 1 = {levels - 1} "
                "increasing numbers in (0, 1)."
            )
        return UNIFORM
    try:
        values = np.asarray(thresholds, dtype="float64")
    except (TypeError, ValueError):
        values = None
    if (
        values is None
        or values.shape != (levels - 1,)
        or not np.all(np.isfinite(values))
        or np.any(values <= 0)
        or np.any(values >= 1)
        or np.any(np.diff(values) <= 0)
    ):
        raise ValueError(
            f"SoftQuantization thresholds={thresholds!r}: expected "
            f"'{UNIFORM}' or levels - 1 = {levels - 1} strictly increasing "
            "numbers in (0, 1)."
        )
    return tuple(float(v) for v in values)
