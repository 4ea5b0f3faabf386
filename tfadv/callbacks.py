"""Keras callbacks for adversarial-training runs.

Everything here writes logs, files or summaries; methods never do (they
return metric dicts and the callbacks write them).
"""

import json
import math
import os
import time

import gin
import keras
import tensorflow as tf

TIMING_FILE = "timing.json"


def write_json_atomic(path: str, payload) -> None:
    """Writes `payload` as JSON to `path` via a temporary file and a rename."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2)
    os.replace(tmp, path)


class GinConfigWriter(keras.callbacks.Callback):
    """Writes `config.operative.gin` and a TensorBoard text summary.

    The operative config (the values gin actually used) is complete once
    everything is built; it is written once, after the first training batch,
    as t5x and multi_representation_adversary do.

    Args:
        logdir: the run folder.
    """

    def __init__(self, logdir: str):
        super().__init__()
        self.logdir = logdir
        self._written = False

    def on_train_batch_end(self, batch, logs=None):
        if self._written:
            return
        self._written = True
        config = gin.operative_config_str()
        with open(os.path.join(self.logdir, "config.operative.gin"), "w") as f:
            f.write(config)
        writer = tf.summary.create_file_writer(
            os.path.join(self.logdir, "train")
        )
        with writer.as_default():
            # Markdown code block keeps gin's indentation in TensorBoard.
            text = "\n".join("    " + line for line in config.splitlines())
            tf.summary.text("gin/operative_config", text, step=0)
        writer.close()


class WallClockLogger(keras.callbacks.Callback):
    """Adds training wall-clock time to the epoch logs.

    Logs `time/epoch_seconds` (training only, validation excluded),
    `time/cumulative_train_seconds` and `examples_per_second`, which the
    TensorBoard callback placed after this one writes. With a `logdir`, the
    per-epoch times are also kept in `timing.json` so a resumed run reports
    the time of every epoch.

    Args:
        examples_per_epoch: training examples seen per epoch.
        logdir: where to keep `timing.json`, or None.
    """

    def __init__(self, examples_per_epoch: int, logdir: str | None = None):
        super().__init__()
        self.examples_per_epoch = examples_per_epoch
        self.logdir = logdir
        self.epoch_seconds = []
        if logdir and os.path.exists(self._path):
            with open(self._path) as f:
                self.epoch_seconds = list(json.load(f)["epoch_seconds"])
        self._start = None
        self._train_seconds = None

    @property
    def _path(self):
        return os.path.join(self.logdir, TIMING_FILE)

    def on_epoch_begin(self, epoch, logs=None):
        # Drop the times of epochs a resumed run is about to redo.
        del self.epoch_seconds[epoch:]
        self._start = time.perf_counter()
        self._train_seconds = None

    def on_test_begin(self, logs=None):
        if self._start is not None and self._train_seconds is None:
            self._train_seconds = time.perf_counter() - self._start

    def on_epoch_end(self, epoch, logs=None):
        seconds = self._train_seconds
        if seconds is None:
            seconds = time.perf_counter() - self._start
        self.epoch_seconds.append(seconds)
        if logs is not None:
            logs["time/epoch_seconds"] = seconds
            logs["time/cumulative_train_seconds"] = sum(self.epoch_seconds)
            logs["examples_per_second"] = self.examples_per_epoch / seconds
        if self.logdir:
            write_json_atomic(self._path, {"epoch_seconds": self.epoch_seconds})
        self._start = None


class DivergenceGuard(keras.callbacks.Callback):
    """Stops training at the first non-finite loss and remembers it.

    Unlike `keras.callbacks.TerminateOnNaN`, it records where it happened so
    the caller can raise a clear error, and `ResumableCheckpoint` does not
    save the diverged weights over the last good checkpoint.
    """

    def __init__(self):
        super().__init__()
        self.diverged_at = None

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.diverged_at = batch
            self.model.stop_training = True


class ResumableCheckpoint(keras.callbacks.BackupAndRestore):
    """`BackupAndRestore` that keeps its checkpoint and never saves NaNs.

    The checkpoint (weights, optimizer state, epoch) stays in the run folder
    after training, and an epoch whose logs hold a non-finite loss is not
    saved, so the last good state survives a divergence.

    Args:
        backup_dir: where the checkpoint lives.
    """

    def __init__(self, backup_dir: str):
        super().__init__(backup_dir, save_freq="epoch", delete_checkpoint=False)

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            return
        super().on_epoch_end(epoch, logs)


class AdversarialImageGrid(keras.callbacks.Callback):
    """Writes clean images, adversarial images and perturbations each epoch.

    A fixed batch is attacked with `attack` (in inference mode) at the end of
    every `every` epochs; the grids appear under IMAGES in TensorBoard.

    Args:
        images: a fixed batch of clean images in [0, 1].
        labels: their labels.
        attack: a `tfadv.attacks.Attack`.
        logdir: the run folder (summaries go to `logdir/images`).
        every: epochs between grids.
    """

    def __init__(self, images, labels, attack, logdir: str, every: int = 1):
        super().__init__()
        self.images = tf.convert_to_tensor(images)
        self.labels = tf.convert_to_tensor(labels)
        self.attack = attack
        self.every = every
        self.writer = tf.summary.create_file_writer(
            os.path.join(logdir, "images")
        )

    def on_epoch_end(self, epoch, logs=None):
        if epoch % self.every:
            return
        classifier = getattr(self.model, "classifier", self.model)
        x_adv = self.attack(
            classifier, self.images, self.labels, seed=epoch, training=False
        )
        delta = x_adv - self.images
        scale = tf.maximum(tf.reduce_max(tf.abs(delta)), 1e-12)
        with self.writer.as_default():
            tf.summary.image("clean", self.images, epoch, max_outputs=8)
            tf.summary.image(f"adversarial/{self.attack.name}", x_adv, epoch, 8)
            tf.summary.image(
                "perturbation", 0.5 + 0.5 * delta / scale, epoch, max_outputs=8
            )
        self.writer.flush()


class MethodEpochHooks(keras.callbacks.Callback):
    """Calls the method's own `on_epoch_begin` / `on_epoch_end`, if any.

    Methods that change per epoch (a second learning-rate schedule, DEAT's
    replay count) keep that state in variables and update it from these
    hooks, so it is checkpointed and restored with the weights. The hooks
    run eagerly, outside the compiled step.
    """

    def on_epoch_begin(self, epoch, logs=None):
        hook = getattr(self.model, "on_epoch_begin", None)
        if hook is not None:
            hook(epoch)

    def on_epoch_end(self, epoch, logs=None):
        hook = getattr(self.model, "on_epoch_end", None)
        if hook is not None:
            extra = hook(epoch, logs)
            if extra and logs is not None:
                logs.update(extra)
