"""The gradient-masking checks (evaluation.masking)."""

import ast
import inspect

import numpy as np
import tensorflow as tf

from tests import evaluation_fixtures as fx
from tfadv import attacks
from tfadv import evaluation
from tfadv.evaluation import masking


class MaskingTest(tf.test.TestCase):
    def test_masked_model_flagged_and_bpda_recovers(self):
        model = fx.linear_model((8, 8, 1), 3, quantize=8)
        x, y = fx.interior_data(model, (8, 8, 1))
        data = fx.as_dataset(x, y, batch=64)
        masked = evaluation.evaluate_suite(
            model, data, suite="pgd10,square100", epsilon=0.1
        )
        report = masked["gradient_masking"]
        self.assertTrue(report["possible"])
        self.assertTrue(report["checks"]["zero_gradients"]["flagged"])
        self.assertTrue(
            report["checks"]["gradient_free_beats_gradient"]["flagged"]
        )
        self.assertIn(
            "POSSIBLE GRADIENT MASKING", evaluation.format_report(masked)
        )
        self.assertGreater(masked["robust_accuracy"]["pgd10"], 0.8)
        bpda = evaluation.evaluate_suite(
            model, data, suite="pgd10", epsilon=0.1, bpda_layers=["quantize"]
        )
        self.assertLess(bpda["robust_accuracy"]["pgd10"], 0.3)
        self.assertTrue(bpda["gradient_masking"]["through_bpda"])
        with self.assertRaisesRegex(ValueError, "no layer matching"):
            evaluation.evaluate_suite(
                model, data, suite="pgd5", epsilon=0.1, bpda_layers=["nope"]
            )

    def test_strength_check_flags_rising_accuracy(self):
        # PGD-20 leaving more points robust than PGD-5 is flagged.
        clean = np.ones(100, bool)
        broken = {"pgd5": np.arange(100) < 50, "pgd20": np.arange(100) < 40}
        eps = 0.1
        suite = evaluation.make_suite("pgd5,pgd20", epsilon=eps).attacks
        report = evaluation.masking_report(
            suite,
            clean=clean,
            broken=broken,
            accuracy={"pgd5": 0.5, "pgd20": 0.6},
            sequential=False,
            extra={},
            zero_gradients=0,
            tolerance=0.002,
            zero_gradient_threshold=0.05,
        )
        self.assertTrue(report["possible"])
        self.assertIn("rises with attack strength", report["messages"][0])

    def test_names_no_concrete_attack_class(self):
        # The checks read attacks only through the Attack interface.
        source = inspect.getsource(masking)
        for name in ("ProjectedGradient", "APGD", "BPDA", "EOT", "Square"):
            self.assertNotIn(name, source)
        imported = set()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ImportFrom):
                imported |= {f"{node.module}.{a.name}" for a in node.names}
            elif isinstance(node, ast.Import):
                imported |= {a.name for a in node.names}
        tfadv_imports = {m for m in imported if m.startswith("tfadv")}
        self.assertEqual(
            tfadv_imports, {"tfadv.attacks.base", "tfadv.evaluation.suites"}
        )

    def test_strength_pairs_through_bpda(self):
        # Wrapped attacks are one family when the wrappers agree and the
        # inner attacks differ only in steps and restarts.
        suite = evaluation.make_suite(
            "pgd5,pgd20,cw20,square10", epsilon=0.1, bpda_layers=["quantize"]
        ).attacks
        self.assertIsInstance(suite["pgd20"], attacks.BPDA)
        self.assertEqual(masking.strength_pairs(suite), [("pgd5", "pgd20")])
        bpda20 = suite["pgd20"]
        stronger = bpda20.replace(num_steps=50, restarts=10, name="bpda50")
        self.assertEqual(stronger.attack.num_steps, 50)
        self.assertEqual(stronger.attack.restarts, 10)
        self.assertEqual(masking.strength(stronger), (50, 10))
        other_layer = bpda20.replace(layers=("other",), name="other")
        fewer_restarts = stronger.replace(restarts=1, name="bpda50x1")
        bare = evaluation.make_attack("pgd50", epsilon=0.1)
        pairs = masking.strength_pairs(
            {
                "pgd20": bpda20,
                "bpda50": stronger,
                "other": other_layer,
                "bpda50x1": fewer_restarts,
                "pgd50": bare,
            }
        )
        self.assertCountEqual(
            pairs,
            [
                ("pgd20", "bpda50"),
                ("pgd20", "bpda50x1"),
                ("bpda50x1", "bpda50"),
            ],
        )
        # EOT transforms that print alike are one setting; test doubles
        # without get_config belong to no family.
        eot = attacks.EOT(
            bare, num_samples=2, transform=attacks.GaussianNoise(0.05)
        )
        same = attacks.EOT(
            bare.replace(num_steps=100, name="pgd100"),
            num_samples=2,
            transform=attacks.GaussianNoise(0.05),
        )
        noisier = same.replace(transform=attacks.GaussianNoise(0.1))
        self.assertTrue(masking.same_family(eot, same))
        self.assertFalse(masking.same_family(eot, noisier))
        up, down = fx.Shift(0.1, 1, "up"), fx.Shift(0.1, -1, "down")
        self.assertEqual(masking.strength_pairs({"up": up, "down": down}), [])

    def test_weaker_control_keeps_the_wrappers(self):
        apgd_ce = evaluation.make_attack("apgd_ce", epsilon=0.1)
        noise = attacks.GaussianNoise(0.05)
        reference = attacks.BPDA(
            attacks.EOT(apgd_ce, num_samples=3, transform=noise),
            layers="quantize",
            name="wrapped",
        )
        control = masking.weaker_control(reference)
        self.assertIsInstance(control, attacks.BPDA)
        self.assertEqual(control.name, "bpda_eot3_pgd5")
        self.assertEqual(control.layers, ("quantize",))
        self.assertIsInstance(control.attack, attacks.EOT)
        self.assertEqual(control.attack.num_samples, 3)
        self.assertIs(control.attack.transform, noise)
        inner = control.attack.attack
        self.assertIsInstance(inner, attacks.ProjectedGradient)
        self.assertEqual((inner.name, inner.num_steps), ("pgd5", 5))
        self.assertIsNone(
            masking.weaker_control(
                attacks.BPDA(attacks.Square(epsilon=0.1), layers="quantize")
            )
        )

    def test_wrapped_pair_replaces_the_control_run(self):
        # With a strength pair in the suite, no extra control runs, and the
        # pair is compared even through BPDA.
        model = fx.linear_model((8, 8, 1), 3, quantize=8)
        x, y = fx.interior_data(model, (8, 8, 1), n=32)
        result = evaluation.evaluate_suite(
            model,
            fx.as_dataset(x, y),
            suite="pgd5,pgd20",
            epsilon=0.1,
            bpda_layers=["quantize"],
        )
        report = result["gradient_masking"]
        self.assertEqual(report["seconds"], {})
        comparisons = report["checks"]["accuracy_rises_with_strength"]
        self.assertEqual(
            [(c["weaker"], c["stronger"]) for c in comparisons["comparisons"]],
            [("pgd5", "pgd20")],
        )
        # Without a pair, the control runs under the wrappers' name.
        single = evaluation.evaluate_suite(
            model,
            fx.as_dataset(x, y),
            suite="pgd20",
            epsilon=0.1,
            bpda_layers=["quantize"],
        )
        self.assertEqual(
            list(single["gradient_masking"]["seconds"]), ["check/bpda_pgd5"]
        )


class ApproximationCheckTest(tf.test.TestCase):
    def report(self, broken):
        suite = evaluation.make_suite("pgd20", epsilon=0.1)
        suite = evaluation.with_masking_attacks(suite, ["sq"], epsilon=0.1)
        names = list(suite.attacks)
        return evaluation.masking_report(
            suite.attacks,
            clean=np.ones(100, bool),
            broken={n: broken.get(n, np.zeros(100, bool)) for n in names},
            accuracy={
                n: 1.0 - broken.get(n, np.zeros(1)).mean() for n in names
            },
            sequential=False,
            extra={},
            zero_gradients=0,
        )

    def test_flags_points_only_the_approximation_breaks(self):
        first = np.arange(100) < 30
        report = self.report(
            {"pgd20": np.arange(100) < 10, "bpda_pgd20": first}
        )
        check = report["checks"]["approximation_beats_true_gradient"]
        self.assertTrue(check["flagged"])
        self.assertEqual(check["count"], 20)
        self.assertIn("mask gradients", " ".join(report["messages"]))

    def test_quiet_when_both_break_the_same_points(self):
        same = np.arange(100) < 30
        report = self.report({"pgd20": same, "bpda_pgd20": same})
        check = report["checks"]["approximation_beats_true_gradient"]
        self.assertFalse(check["flagged"])
        self.assertFalse(report["possible"])
