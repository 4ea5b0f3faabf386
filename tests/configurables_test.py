"""tfadv.configurables: importing it registers every name a gin file uses."""

import json
import os
import pathlib
import re
import subprocess
import sys
import textwrap

import tensorflow as tf

from tests import cli_fixtures
from tfadv import configurables

_ROOT = pathlib.Path(__file__).resolve().parent.parent
_PACKAGE = _ROOT / "tfadv"
_REGISTERS = re.compile(r"@gin\.register\b|gin\.register\(")
_DECLARES = re.compile(
    r"@gin\.register\b|gin\.register\(|gin\.configurable|"
    r"gin\.external_configurable"
)
# `@name`, `@scope/name` or `@name()` in a gin file (comments removed).
_REFERENCE = re.compile(r"@((?:[\w.]+/)*)([\w.]+)(\(\))?")


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(_ROOT).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _sources():
    for path in sorted(_PACKAGE.rglob("*.py")):
        yield _module_name(path), path.read_text()


def _references(gin_file):
    text = (pathlib.Path(cli_fixtures.GIN_DIR) / gin_file).read_text()
    names = set()
    for line in text.splitlines():
        code = line.split("#", 1)[0]
        names.update(m[2] for m in _REFERENCE.finditer(code))
    return names


# Runs in a fresh interpreter that imports tfadv.configurables and nothing
# else of tfadv, then parses every gin file strictly (with tiny.gin) and
# looks up every @name.
_CHECK = textwrap.dedent(
    """
    import json, sys
    import gin
    import tfadv.configurables
    gin_dir, files, names = json.loads(sys.argv[1])
    gin.add_config_file_search_path(gin_dir)
    failures = {}
    for gin_file in files:
        gin.clear_config()
        try:
            gin.parse_config_files_and_bindings(
                [gin_file, "testing/tiny.gin"], [], skip_unknown=False
            )
        except Exception as e:
            failures[gin_file] = f"{type(e).__name__}: {e}"
    for name in names:
        try:
            gin.get_configurable(name)
        except Exception as e:
            failures["@" + name] = f"{type(e).__name__}: {e}"
    print(json.dumps(failures))
    """
)


class ConfigurablesTest(tf.test.TestCase):
    def test_every_registering_module_is_listed(self):
        registering = [
            name for name, source in _sources() if _REGISTERS.search(source)
        ]
        self.assertNotEmpty(registering)
        listed = set(configurables.REGISTERING_MODULES)
        missing = sorted(set(registering) - listed)
        self.assertEmpty(
            missing,
            "call gin.register but are not in "
            "configurables.REGISTERING_MODULES",
        )

    def test_epoch_parameters_name_registered_arguments(self):
        import gin

        declared = configurables.epoch_parameters()
        for parameter in (
            "piecewise_constant.boundaries",
            "YOPO.first_layer_lr_boundaries",
            "FGSMPGI.reset_period",
        ):
            self.assertIn(parameter, declared)
        for parameter in declared:
            name, _, argument = parameter.rpartition(".")
            # Binding it parses only if `name` is registered and takes it.
            gin.clear_config()
            gin.parse_config(f"{name}.{argument} = 1")
            gin.clear_config()

    def test_minibatch_replays_come_from_the_parsed_method(self):
        import gin

        from tfadv import gin_files

        for files, bindings, replays in (
            (["pgd_at.gin"], [], 1),
            (["free_at.gin"], [], 4),
            (["free_at.gin"], ["REPLAYS = 6"], 6),
            (["free_at.gin"], ["train/ProjectedGradient.num_steps = 3"], 3),
        ):
            gin.clear_config()
            gin_files.parse(files, bindings)
            self.assertEqual(configurables.minibatch_replays(), replays)
        gin.clear_config()
        self.assertEqual(configurables.minibatch_replays(), 1)

    def test_every_listed_module_exists_and_declares_names(self):
        sources = dict(_sources())
        self.assertLen(
            set(configurables.REGISTERING_MODULES),
            len(configurables.REGISTERING_MODULES),
        )
        for name in configurables.REGISTERING_MODULES:
            self.assertIn(name, sources)
            self.assertRegex(sources[name], _DECLARES, name)

    def test_gin_references_are_found(self):
        # The parser of this test finds what the gin files use.
        self.assertEqual(
            _references("pgd_at.gin"), {"PGDAT", "ProjectedGradient"}
        )
        self.assertIn(
            "keras.optimizers.SGD", _references("data/fashion_mnist.gin")
        )

    def test_every_gin_name_resolves_after_importing_only_configurables(self):
        files = cli_fixtures.ALL_GIN_FILES
        names = sorted(set().union(*(_references(f) for f in files)))
        self.assertIn("co_guard", names)
        env = dict(
            os.environ,
            KERAS_BACKEND="tensorflow",
            TF_CPP_MIN_LOG_LEVEL="3",
            PYTHONPATH=os.pathsep.join(
                [str(_ROOT), os.environ.get("PYTHONPATH", "")]
            ),
        )
        done = subprocess.run(
            [
                sys.executable,
                "-c",
                _CHECK,
                json.dumps([cli_fixtures.GIN_DIR, files, names]),
            ],
            capture_output=True,
            text=True,
            env=env,
            cwd=str(_ROOT),
            timeout=300,
            check=False,
        )
        self.assertEqual(done.returncode, 0, done.stderr[-3000:])
        failures = json.loads(done.stdout.strip().splitlines()[-1])
        self.assertEqual(failures, {})

    def test_unknown_reference_is_refused_when_parsing(self):
        # What the check above relies on: strict parsing resolves @names.
        import gin

        with self.assertRaisesRegex(ValueError, "no_such_builder"):
            gin.parse_config("run.model_fn = @no_such_builder")
