"""Keras callbacks for adversarial training, to pass to `fit`.

Everything here writes logs or summaries; methods never do (they return
metric dicts and the callbacks write them). A method's own callbacks come
from `trainer.callbacks()`. Nothing here knows a training run's folder:
what `tfadv.train` writes there (the checkpoint, the gin config, the
times of `WallClockLogger` and the hyperparameters of `HParamsLogger`)
belongs to the run folder's modules (see docs/architecture.md).
"""

import math

import gin
import keras
import numpy as np
import tensorflow as tf
from absl import logging

from tfadv import validation
from tfadv.data import example_ids


class DivergenceGuard(keras.callbacks.Callback):
    """Stops training when it diverges, and remembers where.

    Unlike `keras.callbacks.TerminateOnNaN`, it records where it happened so
    the caller can raise a clear error, and `ResumableCheckpoint` (given the
    guard) does not save the diverged weights over the last good
    checkpoint. Training has diverged when
    - the training loss (Keras's running mean, after every batch) is not
      finite, or exceeds `explosion_factor` times the larger of 1 and the
      first batch's loss of this `fit`: a finite explosion (a learning
      rate of 1e8 gives 5.6e27) is as dead as NaN, while no sane loss of a
      classifier grows a thousandfold from its start;
    - after an epoch, the validation loss (`val_loss`) or a weight is not
      finite (weights can explode under a finite training loss).

    Args:
        explosion_factor: how many times its first value (at least 1) the
            training loss may reach, > 1 (inf: only non-finite losses).

    Attributes:
        diverged_at: the batch (from 0) whose training loss diverged, or
            None (also when the epoch's end found it).
        diverged_epoch: the epoch (from 0) it happened in, or None.
        diverged_in_validation: whether the epoch's end found it (the
            validation loss or the weights).
        diverged_weights: whether a weight was the sign.
        diverged_loss: the training loss that diverged, or None.
        first_loss: the first batch's training loss of this `fit`.
    """

    def __init__(self, explosion_factor: float = 1e3):
        super().__init__()
        self.explosion_factor = validation.in_interval(
            "explosion_factor",
            explosion_factor,
            1.0,
            math.inf,
            low_open=True,
            hint="It is how many times its first value the training loss "
            "may grow before the run counts as diverged, e.g. 1000.",
        )
        self.diverged_at = None
        self.diverged_epoch = None
        self.diverged_in_validation = False
        self.diverged_weights = False
        self.diverged_loss = None
        self.first_loss = None
        self._epoch = 0

    @property
    def loss_limit(self) -> float:
        """The training loss above which the run has diverged."""
        return self.explosion_factor * max(self.first_loss or 0.0, 1.0)

    def on_train_begin(self, logs=None):
        self.first_loss = None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is None or self.diverged_epoch is not None:
            return
        loss = float(loss)
        if self.first_loss is None and math.isfinite(loss):
            self.first_loss = loss
        if not (math.isfinite(loss) and loss <= self.loss_limit):
            self.diverged_at = batch
            self.diverged_epoch = self._epoch
            self.diverged_loss = loss
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        if self.diverged_epoch is not None:
            return
        losses = finite_losses(logs)
        if not losses or nonfinite_weights(self.model):
            self.diverged_epoch = epoch
            self.diverged_in_validation = True
            self.diverged_weights = losses
            self.model.stop_training = True

    def describe(self, steps_per_epoch: int) -> str:
        """Where and how training diverged, in a sentence or two."""
        epoch = self.diverged_epoch + 1
        if self.diverged_weights:
            return (
                f"A weight became NaN or infinite in epoch {epoch} although "
                "the losses stayed finite; training stopped and that epoch "
                "was not saved."
            )
        if self.diverged_in_validation:
            return (
                "The validation loss became NaN or infinite after epoch "
                f"{epoch} (the weights exploded although the training loss "
                "stayed in bounds); training stopped and that epoch was not "
                "saved."
            )
        where = f"in epoch {epoch} (batch {self.diverged_at + 1} of "
        where += f"{steps_per_epoch})"
        if not math.isfinite(self.diverged_loss):
            return (
                f"The training loss became NaN or infinite {where}; "
                "training stopped."
            )
        return (
            f"The training loss exploded to {self.diverged_loss:.3g} "
            f"{where}, over {self.explosion_factor:g} times its first value "
            f"({self.first_loss:.3g}, or 1 if lower); training stopped and "
            "that epoch was not saved."
        )


def nonfinite_weights(model) -> list:
    """The paths of `model`'s floating-point weights holding NaN or inf."""
    bad = []
    for weight in getattr(model, "weights", ()):
        value = np.asarray(weight.numpy())
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            bad.append(weight.path)
    return bad


def finite_losses(logs) -> bool:
    """Whether an epoch's training and validation losses are finite."""
    for name in ("loss", "val_loss"):
        value = (logs or {}).get(name)
        if value is not None and not math.isfinite(float(value)):
            return False
    return True


class AdversarialImageGrid(keras.callbacks.Callback):
    """Writes one labelled grid of clean and adversarial images each epoch.

    A fixed batch is attacked with `attack` (in inference mode, seeded by
    the epoch) at the end of every `every` epochs. The grid, under IMAGES
    in TensorBoard as `adversarial_grid/<attack>`, has one column per
    example and three rows: the clean image titled with its true label and
    the clean prediction, the adversarial image titled with the prediction
    on it (red when the attack changed a correct prediction), and the
    perturbation, scaled so that ±ε fills the grey range.

    Args:
        images: a fixed batch of clean images in [0, 1].
        labels: their integer labels.
        attack: a `tfadv.attacks.Attack`.
        log_dir: where the image summaries go (a run's `images/`).
        every: epochs between grids.
        class_names: names by label (e.g. `tfadv.data.CLASS_NAMES[...]`);
            labels are shown as numbers without them.
    """

    def __init__(
        self,
        images,
        labels,
        attack,
        log_dir: str,
        every: int = 1,
        class_names=None,
    ):
        super().__init__()
        self.images = tf.convert_to_tensor(images)
        self.labels = tf.reshape(tf.cast(labels, tf.int32), [-1])
        self.attack = attack
        self.every = validation.count("every", every, minimum=1)
        self.class_names = tuple(class_names) if class_names else None
        self.writer = tf.summary.create_file_writer(log_dir)

    def _name(self, label: int) -> str:
        if self.class_names and 0 <= label < len(self.class_names):
            return self.class_names[label]
        return str(label)

    def grid(self, epoch: int) -> np.ndarray:
        """The grid as an [1, H, W, 4] uint8 RGBA image."""
        classifier = getattr(self.model, "classifier", self.model)
        x_adv = self.attack(
            classifier, self.images, self.labels, seed=epoch, training=False
        )

        def predict(x):
            logits = classifier(x, training=False)
            return np.argmax(np.asarray(logits), axis=-1)

        return render_grid(
            self.images.numpy(),
            x_adv.numpy(),
            self.labels.numpy(),
            predict(self.images),
            predict(x_adv),
            epsilon=self.attack.epsilon,
            # The slider's step is Keras's 0-based epoch; the title says
            # both, and the budget the perturbation row is scaled to.
            title=(
                f"{self.attack.name}, ε = {self.attack.epsilon:g}, after "
                f"epoch {epoch + 1} (step {epoch})"
            ),
            name=self._name,
        )

    def on_epoch_end(self, epoch, logs=None):
        if epoch % self.every:
            return
        with self.writer.as_default():
            tf.summary.image(
                f"adversarial_grid/{self.attack.name}",
                self.grid(epoch),
                step=epoch,
            )
        self.writer.flush()


def render_grid(
    clean,
    adversarial,
    labels,
    clean_predictions,
    adversarial_predictions,
    *,
    epsilon: float,
    title: str = "",
    name=str,
) -> np.ndarray:
    """Draws examples as columns: clean, adversarial, perturbation rows.

    Returns:
        An [1, H, W, 4] uint8 RGBA image, as `tf.summary.image` takes it.
    """
    from matplotlib import figure as figure_lib
    from matplotlib.backends import backend_agg

    count = len(clean)
    fig = figure_lib.Figure(figsize=(1.4 * count, 5.2), dpi=80)
    canvas = backend_agg.FigureCanvasAgg(fig)  # no display needed
    axes = fig.subplots(3, count, squeeze=False)
    gray = clean.shape[-1] == 1
    delta = adversarial - clean
    # A perturbation at +-epsilon is white or black; 0 is mid-grey (L2
    # perturbations are shown against their own largest pixel instead).
    scale = max(float(epsilon), 1e-12)
    if float(np.max(np.abs(delta), initial=0.0)) > scale * (1 + 1e-6):
        scale = float(np.max(np.abs(delta)))
    shown = (clean, adversarial, 0.5 + 0.5 * delta / scale)
    columns = grid_titles(
        labels, clean_predictions, adversarial_predictions, name
    )
    for column, (titles, fooled) in enumerate(columns):
        for row in range(3):
            ax = axes[row][column]
            image = np.clip(shown[row][column], 0.0, 1.0)
            if gray:
                ax.imshow(image[..., 0], cmap="gray", vmin=0.0, vmax=1.0)
            else:
                ax.imshow(image)
            ax.set_title(
                titles[row],
                fontsize=7,
                color="red" if row == 1 and fooled else "black",
            )
            ax.set_xticks([])
            ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    canvas.draw()
    pixels = np.asarray(canvas.buffer_rgba(), dtype=np.uint8)
    return pixels[None].copy()


def grid_titles(labels, clean_predictions, adversarial_predictions, name=str):
    """Per example: the three row titles, and whether the attack fooled it.

    Fooled means the clean prediction was right and the adversarial one is
    wrong (that title is drawn in red).
    """
    columns = []
    for true, clean, adv in zip(
        labels, clean_predictions, adversarial_predictions, strict=True
    ):
        true, clean, adv = int(true), int(clean), int(adv)
        titles = (
            f"true {name(true)}\nclean: {name(clean)}",
            f"adv: {name(adv)}",
            "perturbation",
        )
        columns.append((titles, clean == true and adv != true))
    return columns


class CatastrophicOverfittingStop(keras.callbacks.Callback):
    """Stops a run whose robust accuracy collapses, and restores weights.

    The Keras version of `--early-stop` in `locuslab/fast_adversarial`
    (Wong et al. 2020, docs/algorithms.md §6.2), usable with any method. After
    every epoch the classifier is attacked on a fixed training batch
    (PGD-5 in the reference) and its robust accuracy there is recorded.
    When it falls more than `threshold` (absolute) below the reference
    epoch's, training stops, the classifier gets the reference epoch's
    weights back, a warning is logged, and `results_info()` reports it
    (`experiment.run` merges that into results.json).

    The reference epoch is the previous one (`compare_to="previous"`, the
    fast_adversarial rule: a sudden collapse) or the best so far
    (`compare_to="best"`, which also catches a collapse spread over
    several epochs).

    Differences from the reference [X]: the batch is fixed (one training
    minibatch taken before training) instead of each epoch's first
    minibatch, so successive checks differ only through the weights; and
    the check runs the classifier in inference mode, so it leaves the
    BatchNorm statistics alone (the reference stays in train mode).

    The trained model's `classifier` is attacked when it has one (every
    tfadv method), else the model itself. Only those weights are saved
    and restored; the optimizer state is not (training stops anyway).

    Example:
        pgd5 = tfadv.attacks.ProjectedGradient(
            epsilon=8 / 255, step_size=2 / 255, num_steps=5)
        guard = CatastrophicOverfittingStop(images, labels, pgd5)
        trainer.fit(train_ds, epochs=15, callbacks=[guard])
        guard.results_info()["catastrophic_overfitting"]["stopped"]

    Args:
        images: the fixed batch of clean images in [0, 1].
        labels: their integer labels.
        attack: a `tfadv.attacks.Attack` (PGD-5 with step epsilon / 4 in
            the reference: 2/255 at 8/255).
        threshold: the drop in robust accuracy, in (0, 1], that counts as
            a collapse (0.2 in the reference).
        compare_to: "previous" or "best".
        seed: seed of the attack's random start, the same at every check.
    """

    COMPARE_TO = ("previous", "best")

    def __init__(
        self,
        images,
        labels,
        attack,
        *,
        threshold: float = 0.2,
        compare_to: str = "previous",
        seed: int = 0,
    ):
        super().__init__()
        if not callable(attack):
            raise TypeError(
                f"attack must be a tfadv.attacks.Attack; got {attack!r}."
            )
        validation.in_interval(
            "threshold",
            threshold,
            0.0,
            1.0,
            low_open=True,
            hint="It is a drop in accuracy.",
        )
        validation.choice("compare_to", compare_to, self.COMPARE_TO)
        self.images = tf.convert_to_tensor(images)
        self.labels = tf.convert_to_tensor(labels)
        self.attack = attack
        self.threshold = float(threshold)
        self.compare_to = compare_to
        self.seed = seed
        self._reset()

    def _reset(self):
        self.history = []
        self.stopped_epoch = None
        self.restored_epoch = None
        self._reference = None  # (epoch, accuracy, classifier weights)

    @property
    def _classifier(self):
        return getattr(self.model, "classifier", self.model)

    def robust_accuracy(self) -> float:
        """Accuracy of the classifier under `attack` on the fixed batch."""
        classifier = self._classifier
        x_adv = self.attack(
            classifier,
            self.images,
            self.labels,
            seed=self.seed,
            training=False,
        )
        logits = classifier(x_adv, training=False)
        predicted = np.argmax(np.asarray(logits), axis=-1)
        labels = np.asarray(self.labels).reshape(-1)
        return float(np.mean(predicted == labels))

    def on_train_begin(self, logs=None):
        self._reset()

    def on_epoch_end(self, epoch, logs=None):
        accuracy = self.robust_accuracy()
        self.history.append(accuracy)
        logging.info(
            "Catastrophic-overfitting check, epoch %d: robust accuracy %.4f "
            "on the fixed batch.",
            epoch,
            accuracy,
        )
        reference = self._reference
        if reference is not None and accuracy < reference[1] - self.threshold:
            self.stopped_epoch = epoch
            self.restored_epoch = reference[0]
            self._classifier.set_weights(reference[2])
            self.model.stop_training = True
            logging.warning(
                "Catastrophic overfitting at epoch %d: robust accuracy on "
                "the fixed batch fell from %.4f (epoch %d, %s) to %.4f, "
                "more than the threshold %.2f. Training stops; the "
                "classifier has the weights of epoch %d again.",
                epoch,
                reference[1],
                reference[0],
                "the previous epoch"
                if self.compare_to == "previous"
                else "the best so far",
                accuracy,
                self.threshold,
                reference[0],
            )
            return
        if (
            reference is None
            or self.compare_to == "previous"
            or accuracy >= reference[1]
        ):
            weights = self._classifier.get_weights()
            self._reference = (epoch, accuracy, weights)

    def results_info(self) -> dict:
        """The guard's record, for results.json."""
        return {
            "catastrophic_overfitting": {
                "stopped": self.stopped_epoch is not None,
                "epoch": self.stopped_epoch,
                "restored_epoch": self.restored_epoch,
                "threshold": self.threshold,
                "compare_to": self.compare_to,
                "attack": repr(self.attack),
                "robust_accuracy_history": list(self.history),
            }
        }


@gin.register
def co_guard(
    *,
    datasets,
    logdir: str,
    attack=gin.REQUIRED,
    threshold: float = 0.2,
    compare_to: str = "previous",
    seed: int = 0,
) -> CatastrophicOverfittingStop:
    """Builds the catastrophic-overfitting guard for `experiment.run`.

    The fixed batch is the first batch of `datasets.train` (taken once,
    before training). In gin, with the reference's PGD-5:

        run.callback_fns = [@co_guard]
        co_guard.attack = @co_guard/ProjectedGradient()
        co_guard/ProjectedGradient.epsilon = %EPSILON
        co_guard/ProjectedGradient.step_size = 0.025  # EPSILON / 4
        co_guard/ProjectedGradient.num_steps = 5

    Args:
        datasets: the run's `tfadv.data.Datasets`.
        logdir: the run folder (unused; the guard reports through
            `results_info`).
        attack: the attack of the check.
        threshold: see `CatastrophicOverfittingStop`.
        compare_to: see `CatastrophicOverfittingStop`.
        seed: see `CatastrophicOverfittingStop`.
    """
    del logdir
    batch = next(iter(datasets.train.take(1)))
    return CatastrophicOverfittingStop(
        example_ids.images_of(batch[0]),
        batch[1],
        attack,
        threshold=threshold,
        compare_to=compare_to,
        seed=seed,
    )
