"""Models, data and attack doubles shared by the evaluation tests."""

import keras
import numpy as np
import tensorflow as tf

from tfadv import attacks
from tfadv.attacks import objectives


class Quantize(keras.layers.Layer):
    """A hard quantiser, round(x * levels) / levels: zero gradient a.e."""

    def __init__(self, levels=8, **kwargs):
        super().__init__(**kwargs)
        self.levels = levels

    def call(self, x):
        return keras.ops.round(x * self.levels) / self.levels


def linear_model(shape=(8,), num_classes=2, quantize=None, seed=0):
    """z = W flatten(q(x)), fixed Gaussian weights, zero bias."""
    rng = np.random.default_rng(seed)
    layers = [keras.Input(shape)]
    if quantize:
        layers.append(Quantize(quantize, name="quantize"))
    layers += [keras.layers.Flatten(), keras.layers.Dense(num_classes)]
    model = keras.Sequential(layers)
    dims = int(np.prod(shape))
    model.layers[-1].set_weights(
        [
            rng.normal(size=(dims, num_classes)).astype("float32"),
            np.zeros(num_classes, "float32"),
        ]
    )
    return model


class Shift(attacks.Attack):
    """A test double: moves every pixel by `sign * epsilon`."""

    def __init__(self, epsilon, sign, name):
        self.threat_model = attacks.LinfThreatModel(epsilon)
        self.sign, self.name = sign, name

    def __call__(self, model, x, y, *, seed=None, training=False, x_init=None):
        moved = x + self.sign * self.threat_model.epsilon
        return tf.stop_gradient(self.threat_model.project(x, moved))


def bn_model(num_classes=5):
    return keras.Sequential(
        [
            keras.Input((6, 6, 1)),
            keras.layers.Rescaling(1.0, name="pre"),
            keras.layers.Conv2D(4, 3),
            keras.layers.BatchNormalization(momentum=0.9),
            keras.layers.ReLU(),
            keras.layers.Flatten(),
            keras.layers.Dropout(0.5),
            keras.layers.Dense(num_classes),
        ]
    )


def interior_data(model, shape, n=64, seed=1):
    """Points in [0.2, 0.8] labelled with the model's own prediction."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.2, 0.8, size=(n, *shape)).astype("float32")
    y = np.argmax(model(x).numpy(), -1).astype("int32")
    return tf.constant(x), tf.constant(y)


def run_attack(attack, model, x, y, seed=0):
    """Runs `attack` compiled, as the evaluation does (eager is slower)."""
    return tf.function(lambda x, y: attack(model, x, y, seed=seed))(x, y)


def accuracy(model, x, y):
    pred = tf.argmax(model(x), -1, output_type=tf.int32)
    return float(tf.reduce_mean(tf.cast(pred == y, tf.float32)))


def as_dataset(x, y, batch=32):
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch)


def margin_of_true(logits, y):
    return -objectives.margin(logits, y).numpy()


class InferenceNoise(keras.layers.Layer):
    """Adds fresh Gaussian noise at every call, inference included."""

    def __init__(self, stddev=0.1, **kwargs):
        super().__init__(**kwargs)
        self.stddev = stddev
        self.seed_generator = keras.random.SeedGenerator(0)

    def call(self, x):
        noise = keras.random.normal(
            keras.ops.shape(x), stddev=self.stddev, seed=self.seed_generator
        )
        return x + noise


def softmax_model(shape=(8,), num_classes=3, seed=0):
    """`linear_model` ending in a softmax: it outputs probabilities."""
    model = linear_model(shape, num_classes, seed=seed)
    return keras.Sequential([keras.Input(shape), model, keras.layers.Softmax()])


def small_pgd_at_model(train_examples=1024, eval_examples=300, epochs=6):
    """A small CNN PGD-AT-trained on Fashion-MNIST (epsilon 0.1), and data.

    A few seconds of training on the local copy of Fashion-MNIST: about
    70 % clean and 50 % PGD-20 accuracy on the test examples.

    Returns:
        `(classifier, test dataset)`, the test set in one batch.
    """
    from tfadv import data
    from tfadv import methods
    from tfadv import models

    keras.utils.set_random_seed(0)
    datasets = data.make_datasets(
        name="fashion_mnist",
        train_examples=train_examples,
        batch_size=64,
        eval_examples=eval_examples,
        eval_batch_size=eval_examples,
        validation_examples=0,
    )
    info = datasets.info
    classifier = models.small_cnn(
        input_shape=tuple(info.image_shape),
        num_classes=info.num_classes,
        mean=info.mean,
        std=info.std,
        filters=(8, 16),
        dense_units=32,
    )
    trainer = methods.PGDAT(
        classifier,
        train_attack=attacks.ProjectedGradient(
            epsilon=0.1, step_size=0.05, num_steps=5
        ),
    )
    trainer.compile(optimizer=keras.optimizers.Adam(3e-3))
    trainer.fit(datasets.train, epochs=epochs, verbose=0)
    return classifier, datasets.test
