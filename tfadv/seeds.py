"""One seed per run: the seeds `run.seed` hands to each random part.

A training run has one seed, `run.seed` (`tfadv.experiment.run`), which
`experiment.run` hands explicitly to each part that draws:

- the weights: `keras.utils.set_random_seed(run.seed)` before the
  classifier is built (Python's, NumPy's and TensorFlow's global seeds);
- the data order and augmentation: `dataset_fn(seed=run.seed)`, the
  argument `tfadv.data.make_datasets` has, so a run's batches are those
  `make_datasets(seed=run.seed)` gives. A `dataset_fn` of your own that
  has no `seed` parameter (nor `**kwargs`) is called without it, and
  orders its data itself;
- the method's randomness (its `keras.random.SeedGenerator`: random
  starts, noise): `method_cls(..., seed=derive(run.seed, "method"))`, a
  seed of its own so that its draws never reuse the data order's
  stateless keys `(run.seed, epoch)`; a `method_cls` without a `seed`
  parameter is called without it;
- the final evaluation's attacks: `run.seed`, from which the evaluation
  derives one seed per attack and batch (`tfadv.evaluation`).

The attacks that score epochs for the recipes and guards (`keep_best`,
`WeightAveraging`, `co_guard`, GAAT's `guard_seed`) keep fixed seeds of
their own, the same at every epoch, so that their scores compare epochs
rather than draws.

results.json records the seeds handed out under `seeds`
(`RunSeeds.record`). Gin refuses a binding of a seed the run hands out
(`make_datasets.seed`, a method's `seed`), naming `run.seed`
(`tfadv.gin_files`).
"""

import dataclasses
import inspect
import zlib

from tfadv import validation


def derive(seed: int, part: str) -> int:
    """A seed for `part`, a fixed function of `seed` in [0, 2**31)."""
    return zlib.crc32(f"{seed}/{part}".encode()) & 0x7FFFFFFF


def accepts(fn, parameter: str) -> bool:
    """Whether calling `fn` with the keyword `parameter` is allowed.

    True when `fn` names the parameter or takes `**kwargs`; False when its
    signature says neither, or cannot be read (a builtin).
    """
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(
        p.kind is inspect.Parameter.VAR_KEYWORD
        or (
            p.name == parameter
            and p.kind
            in (
                inspect.Parameter.KEYWORD_ONLY,
                inspect.Parameter.POSITIONAL_OR_KEYWORD,
            )
        )
        for p in parameters
    )


@dataclasses.dataclass(frozen=True)
class RunSeeds:
    """The seeds of one run, all from `run`, its `run.seed`.

    Attributes:
        run: `run.seed`, the root.
        weights: the global seed set before the classifier is built.
        data_order: the seed of the training order and augmentation, or
            None when the `dataset_fn` takes no seed.
        method: the seed of the method's generator, or None when the
            `method_cls` takes no seed.
        attacks: the base seed of the final evaluation's attacks.
    """

    run: int
    weights: int
    data_order: int | None
    method: int | None
    attacks: int

    @classmethod
    def of(cls, seed, *, dataset_fn=None, method_cls=None) -> "RunSeeds":
        """The seeds `run.seed` gives; None for a part that takes none.

        Raises:
            ValueError: `seed` is not an integer >= 0.
        """
        seed = validation.count("run.seed", seed, meaning="the run's seed")
        return cls(
            run=seed,
            weights=seed,
            data_order=(
                seed
                if dataset_fn is None or accepts(dataset_fn, "seed")
                else None
            ),
            method=(
                derive(seed, "method")
                if method_cls is None or accepts(method_cls, "seed")
                else None
            ),
            attacks=seed,
        )

    def record(self) -> dict:
        """results.json's `seeds`: each part's seed (None: not handed)."""
        return dataclasses.asdict(self)
