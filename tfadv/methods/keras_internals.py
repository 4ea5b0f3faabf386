"""Every Keras internal the trainer relies on, in one place.

Keras has no public API for these; each is used here and nowhere else in
`tfadv.methods`, so a Keras upgrade that moves one breaks this file only.
Tested on Keras 3.15.1 with TensorFlow 2.21.0, what `tools/setup.sh`
installs for `keras>=3.8` and `tensorflow-cpu<2.22` at the time of
writing (`tests/methods_keras_test.py`, `tests/multi_worker_test.py` and
the method harness exercise each).
`tests/methods_keras_internals_test.py` checks that each name exists on the
installed Keras and that no other file of `tfadv/methods/` uses one.

- `strategy.extended._in_multi_worker_mode()`: whether a
  MultiWorkerMirroredStrategy really spans several workers;
- `Model._distribute_strategy`: the strategy a model was built under;
- `Model._maybe_symbolic_build(iterator, data_batch)`: the build `fit`
  runs before the first step (overridden by `ReplicaBatchBuild`);
- `Layer._trainable_variables` and `_non_trainable_variables`: a layer's
  own variables, in the order `save_own_variables` writes them
  (`SeedStateSaving` appends the seed generator's state);
- `Optimizer._learning_rate`: the schedule object behind
  `optimizer.learning_rate`.

It also holds `build_optimizer`, which works around a Keras behaviour (an
optimizer built inside the compiled step traces it twice).
"""

import tensorflow as tf


def multi_worker(strategy) -> bool:
    """Whether `strategy` spans several workers (MultiWorkerMirrored)."""
    extended = getattr(strategy, "extended", None)
    in_multi_worker_mode = getattr(extended, "_in_multi_worker_mode", None)
    return isinstance(
        strategy, tf.distribute.MultiWorkerMirroredStrategy
    ) and bool(in_multi_worker_mode and in_multi_worker_mode())


def build_optimizer(model) -> None:
    """Makes a compiled, built model's optimizer slots now, outside a step.

    Variables first made inside the compiled step make `tf.function`
    trace it twice; a compiled, built trainer therefore builds its
    optimizer at once (in `compile`, or in `build` after it).
    """
    optimizer = getattr(model, "optimizer", None)
    if (
        optimizer is not None
        and model.built
        and model._num_classes is not None
        and not optimizer.built
        and tf.executing_eagerly()
    ):
        optimizer.build(model.trainable_variables)


def learning_rate_schedule(optimizer):
    """The schedule (or float) an optimizer's learning rate comes from."""
    optimizer = getattr(optimizer, "inner_optimizer", optimizer)
    return getattr(optimizer, "_learning_rate", None)


def own_variables(layer) -> list:
    """A layer's own variables, in `save_own_variables`'s order."""
    return layer._trainable_variables + layer._non_trainable_variables


class ReplicaBatchBuild:
    """Builds a distributed model from one replica's share of a batch.

    Keras builds a distributed model from one batch, which it gets by
    averaging a distributed batch over the replicas eagerly; that
    reduction fails under MultiWorkerMirroredStrategy ("Attempt to convert
    a value (PerReplica...)"). Only the batch's structure and shapes
    matter to the build, so this replica's share serves. A mixin before
    `keras.Model`.
    """

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        strategy = getattr(self, "_distribute_strategy", None)
        if iterator is not None and strategy is not None:
            for _, _, batches in iterator:
                data_batch = tf.nest.map_structure(
                    lambda v: (
                        strategy.experimental_local_results(v)[0]
                        if isinstance(v, tf.distribute.DistributedValues)
                        else v
                    ),
                    next(batches),
                )
                break
            iterator = None
        return super()._maybe_symbolic_build(
            iterator=iterator, data_batch=data_batch
        )


class SeedStateSaving:
    """Saves a model's `seed_generator` state after its own variables.

    Keras saves a layer's variables but not its seed generators' states;
    saved after the variables, a loaded trainer draws the same random
    starts next. A file written without the state still loads. A mixin
    before `keras.Model`.
    """

    def save_own_variables(self, store):
        super().save_own_variables(store)
        store[f"{len(own_variables(self))}"] = self.seed_generator.state

    def load_own_variables(self, store):
        own = own_variables(self)
        if len(store.keys()) == len(own) + 1:
            for i, variable in enumerate([*own, self.seed_generator.state]):
                variable.assign(store[f"{i}"])
            return
        super().load_own_variables(store)
