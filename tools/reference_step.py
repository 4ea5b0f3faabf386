"""A hand-written PGD-AT step: the lower bound tfadv's overhead is read from.

`ReferencePGDAT` is what a user would write without a framework: one
`tf.function` that runs PGD-k from a uniform random start (signed steps,
projection onto the L-inf ball and [0, 1]), takes the mean cross-entropy on
the adversarial batch, adds coupled weight decay and applies an SGD momentum
update with its own momentum variables. It computes exactly what
`tfadv.methods.PGDAT` computes with a `ProjectedGradient` training attack
and `keras.optimizers.SGD(learning_rate, momentum)` at a constant rate (the
same operations in the same order, so the weights after a step agree to the
last bit or nearly), and nothing else: no input checks, no metrics, no
clean forward, no Keras optimizer or seed generator.

Its random starts follow a `keras.random.SeedGenerator(seed)` (the state
`[seed, i]` at the i-th step), so a reference built with `seed=s` draws
the same starts as `PGDAT(..., seed=s)`.

    reference = ReferencePGDAT(classifier, epsilon=0.1, step_size=0.025,
                               num_steps=10, learning_rate=0.05, seed=0)
    reference.step(x, y)  # one adversarial-training step

tools/benchmark.py --mode=overhead times it against tfadv's step.
"""

import tensorflow as tf


def project(x, x_adv, epsilon):
    """The L-inf projection: the epsilon box around `x`, then [0, 1]."""
    eps = tf.cast(epsilon, x.dtype)
    delta = tf.clip_by_value(x_adv - x, -eps, eps)
    return tf.clip_by_value(x + delta, 0.0, 1.0)


def pgd(model, x, y, seed, *, epsilon, step_size, num_steps, training):
    """PGD-k on the summed cross-entropy from a uniform random start.

    The loop is a Python loop, unrolled in the trace, as a hand-written
    attack usually is.
    """
    noise = tf.random.stateless_uniform(
        tf.shape(x), seed, -epsilon, epsilon, dtype=x.dtype
    )
    x_adv = project(x, x + noise, epsilon)
    for _ in range(num_steps):
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(x_adv)
            logits = tf.cast(model(x_adv, training=training), tf.float32)
            loss = tf.reduce_sum(
                tf.nn.sparse_softmax_cross_entropy_with_logits(
                    labels=y, logits=logits
                )
            )
        grad = tape.gradient(loss, x_adv)
        moved = x_adv + tf.cast(step_size, x_adv.dtype) * tf.sign(grad)
        x_adv = project(x, moved, epsilon)
    return tf.stop_gradient(x_adv)


class ReferencePGDAT:
    """PGD-AT (Madry et al. 2018) written by hand, one `tf.function` step.

    Args:
        classifier: a Keras model mapping [0, 1] images to logits.
        epsilon: L-inf radius in pixel units.
        step_size: PGD step in pixel units.
        num_steps: PGD steps.
        learning_rate: the (constant) SGD learning rate.
        momentum: SGD momentum.
        weight_decay: coupled weight decay added to the gradients.
        seed: the start of the random-start seed sequence.
        attack_training_mode: run the attack's forward passes in training
            mode (BatchNorm batch statistics), as PGDAT does by default.
        jit_compile: compile the step with XLA.
    """

    def __init__(
        self,
        classifier,
        *,
        epsilon: float,
        step_size: float,
        num_steps: int = 10,
        learning_rate: float = 0.05,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        seed: int = 0,
        attack_training_mode: bool = True,
        jit_compile: bool = False,
    ):
        self.classifier = classifier
        self.epsilon = epsilon
        self.step_size = step_size
        self.num_steps = num_steps
        self.learning_rate = learning_rate
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.attack_training_mode = attack_training_mode
        self.variables = list(classifier.trainable_variables)
        self.momenta = [
            tf.Variable(tf.zeros(v.shape, v.dtype), trainable=False)
            for v in self.variables
        ]
        self.seed_state = tf.Variable([seed, 0], dtype=tf.int32)
        self.step = tf.function(self._step, jit_compile=jit_compile)
        self.attack = tf.function(self._attack, jit_compile=jit_compile)

    def _attack(self, x, y, seed):
        return pgd(
            self.classifier,
            x,
            y,
            seed,
            epsilon=self.epsilon,
            step_size=self.step_size,
            num_steps=self.num_steps,
            training=self.attack_training_mode,
        )

    def _step(self, x, y):
        y = tf.cast(y, tf.int32)
        seed = tf.identity(self.seed_state)
        self.seed_state.assign_add([0, 1])
        x_adv = self._attack(x, y, seed)
        with tf.GradientTape() as tape:
            logits = tf.cast(self.classifier(x_adv, training=True), tf.float32)
            per_example = tf.nn.sparse_softmax_cross_entropy_with_logits(
                labels=y, logits=logits
            )
            loss = tf.reduce_sum(per_example) / tf.cast(
                tf.size(per_example), tf.float32
            )
        grads = tape.gradient(loss, self.variables)
        lr = tf.constant(self.learning_rate, tf.float32)
        momentum = tf.constant(self.momentum, tf.float32)
        for variable, grad, m in zip(
            self.variables, grads, self.momenta, strict=True
        ):
            grad = grad + tf.constant(self.weight_decay, grad.dtype) * variable
            m.assign(m * momentum - grad * lr)
            variable.assign_add(m)
        return loss
