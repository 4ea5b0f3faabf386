"""tfadv.seeds: the seeds `run.seed` hands out, and who takes one."""

import functools

from absl.testing import absltest
from absl.testing import parameterized

from tfadv import seeds


def _takes_seed(*, data_dir=None, seed=0):
    return seed


def _takes_kwargs(**kwargs):
    return kwargs


def _takes_none(*, data_dir=None):
    return data_dir


def _positional_only_seed(seed, /):
    return seed


class AcceptsTest(parameterized.TestCase):
    @parameterized.parameters(
        (_takes_seed, True),
        (_takes_kwargs, True),
        (_takes_none, False),
        (_positional_only_seed, False),
        (functools.partial(_takes_seed, data_dir="x"), True),
        (len, False),  # a builtin: no readable keyword seed
    )
    def test_who_takes_a_seed(self, fn, expected):
        self.assertEqual(seeds.accepts(fn, "seed"), expected)


class RunSeedsTest(parameterized.TestCase):
    def test_every_part_gets_its_seed_from_run_seed(self):
        made = seeds.RunSeeds.of(7, dataset_fn=_takes_seed)
        self.assertEqual(
            made.record(),
            {
                "run": 7,
                "weights": 7,
                "data_order": 7,
                "method": seeds.derive(7, "method"),
                "attacks": 7,
            },
        )

    def test_the_method_seed_is_its_own_and_a_fixed_function(self):
        derived = [seeds.derive(s, "method") for s in range(50)]
        self.assertLen(set(derived), 50)
        self.assertEqual(
            derived, [seeds.derive(s, "method") for s in range(50)]
        )
        self.assertTrue(all(0 <= d < 2**31 for d in derived))
        self.assertNotEqual(seeds.derive(0, "method"), seeds.derive(0, "x"))

    def test_parts_that_take_no_seed_get_none(self):
        made = seeds.RunSeeds.of(
            1, dataset_fn=_takes_none, method_cls=_takes_none
        )
        self.assertIsNone(made.data_order)
        self.assertIsNone(made.method)
        self.assertEqual(made.weights, 1)

    @parameterized.parameters(-1, 1.5, True, "3", None)
    def test_a_bad_seed_is_refused_naming_run_seed(self, bad):
        with self.assertRaisesRegex(
            ValueError, rf"run\.seed .* integer >= 0; got {bad!r}"
        ):
            seeds.RunSeeds.of(bad)


if __name__ == "__main__":
    absltest.main()
