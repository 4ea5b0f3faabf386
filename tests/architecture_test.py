"""The parts of tfadv and their arrows (docs/architecture.md) hold in code.

The note's table says which part each module belongs to and which parts
it may import. This test reads the table, parses the imports of every
module under `tfadv/` with `ast` (module-level and inside functions; no
module is imported, so it needs no TensorFlow and takes well under a
second) and fails naming the module, the line, the import and the
forbidden arrow.
"""

import ast
import os
import re

from absl.testing import absltest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTE = os.path.join(ROOT, "docs", "architecture.md")
PACKAGE = "tfadv"
# Top-level folders of the repository that no tfadv module may import.
OUTSIDE = ("tools", "tests")

_BEGIN = "<!-- architecture-test: parts -->"
_END = "<!-- architecture-test: end -->"
_NOTHING = "(nothing)"


def read_parts(text: str) -> tuple[dict, dict]:
    """`(modules, allowed)` from the note's table.

    Returns:
        `modules` maps each listed module name to its part; `allowed`
        maps each part to the set of other parts it may import.

    Raises:
        ValueError: no table between the markers, a malformed row, a
            module listed twice, or a `may import` naming no part.
    """
    if _BEGIN not in text or _END not in text:
        raise ValueError(f"No table between {_BEGIN} and {_END}.")
    table = text.split(_BEGIN, 1)[1].split(_END, 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("|")]
    modules, allowed = {}, {}
    for row in rows[2:]:  # after the header and its rule
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        if len(cells) != 3:
            raise ValueError(f"A row of three cells expected: {row!r}.")
        part, listed, may = cells
        for name in re.findall(r"`([\w.]+)`", listed):
            if name in modules:
                raise ValueError(f"{name} is listed twice in the table.")
            modules[name] = part
        allowed[part] = (
            set() if may == _NOTHING else {p.strip() for p in may.split(",")}
        )
    unknown = {p for ps in allowed.values() for p in ps} - set(allowed)
    if unknown:
        raise ValueError(
            f"`may import` names parts the table does not have: "
            f"{', '.join(sorted(unknown))}."
        )
    return modules, allowed


def part_of(name: str, modules: dict, *, source: bool = False) -> str | None:
    """The part of a module (or of a name inside one): longest prefix.

    With `source`, `name` is a module of the package being placed, and the
    package root's entry (`tfadv`) places only `tfadv/__init__.py`, so
    that a new top-level module is reported as belonging to no part.
    """
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        if source and end == 1 and name != parts[0]:
            return None
        part = modules.get(".".join(parts[:end]))
        if part is not None:
            return part
    return None


def imports(source: str, module: str, is_package: bool) -> list:
    """`(line, statement, name)` of every import in `source`, resolved.

    `from X import a` yields `X.a` (a module or a name inside `X`; the
    longest-prefix rule of `part_of` places both), relative imports are
    resolved against `module`.
    """
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append((node.lineno, f"import {alias.name}", alias.name))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                here = module.split(".")
                if not is_package:
                    here = here[:-1]
                here = here[: len(here) - (node.level - 1)]
                base = ".".join(here + ([base] if base else []))
            shown = "." * node.level + (node.module or "")
            for alias in node.names:
                name = base if alias.name == "*" else f"{base}.{alias.name}"
                found.append(
                    (node.lineno, f"from {shown} import {alias.name}", name)
                )
    return found


def violations(sources: dict, modules: dict, allowed: dict) -> list[str]:
    """Every import in `sources` that the table forbids, one line each.

    Args:
        sources: module name -> `(path, source, is_package)`.
        modules, allowed: `read_parts`'s.
    """
    found = []
    for module, (path, source, is_package) in sorted(sources.items()):
        part = part_of(module, modules, source=True)
        if part is None:
            found.append(
                f"{path}: module {module} belongs to no part of "
                "docs/architecture.md; add it to a row of the table."
            )
            continue
        for line, statement, name in imports(source, module, is_package):
            top = name.split(".")[0]
            if top in OUTSIDE:
                found.append(
                    f"{path}:{line}: `{statement}`: {module} ({part}) "
                    f"imports {top}/, which is outside the package; nothing "
                    "in tfadv may import it."
                )
                continue
            if top != PACKAGE:
                continue  # a third-party or standard-library module
            target = part_of(name, modules)
            if target is None or target == part or target in allowed[part]:
                continue
            may = ", ".join(sorted(allowed[part])) or "nothing"
            found.append(
                f"{path}:{line}: `{statement}`: {module} ({part}) imports "
                f"{target}, a forbidden arrow {part} -> {target} in "
                f"docs/architecture.md ({part} may import: {may})."
            )
    return found


def package_sources() -> dict:
    """Module name -> `(path, source, is_package)` for all of tfadv."""
    sources = {}
    for folder, _, files in os.walk(os.path.join(ROOT, PACKAGE)):
        for file_name in files:
            if not file_name.endswith(".py"):
                continue
            path = os.path.join(folder, file_name)
            relative = os.path.relpath(path, ROOT)[: -len(".py")]
            parts = relative.split(os.sep)
            is_package = parts[-1] == "__init__"
            if is_package:
                parts = parts[:-1]
            with open(path, encoding="utf-8") as f:
                sources[".".join(parts)] = (
                    os.path.relpath(path, ROOT),
                    f.read(),
                    is_package,
                )
    return sources


def _note() -> tuple[dict, dict]:
    with open(NOTE, encoding="utf-8") as f:
        return read_parts(f.read())


class ArchitectureTest(absltest.TestCase):
    def test_every_import_follows_the_notes_arrows(self):
        modules, allowed = _note()
        found = violations(package_sources(), modules, allowed)
        self.assertEmpty(found, msg="\n" + "\n".join(found))

    def test_the_table_lists_only_modules_that_exist(self):
        modules, _ = _note()
        sources = package_sources()
        missing = [
            name
            for name in modules
            if not any(s == name or s.startswith(name + ".") for s in sources)
        ]
        self.assertEmpty(missing, msg="listed in the note but not in tfadv")

    def test_the_rules_the_design_names_are_in_the_table(self):
        modules, allowed = _note()
        forbidden = {
            "attacks": ("methods", "evaluation", "recipes", "models"),
            "methods": ("evaluation", "run", "run folder", "recipes"),
            "evaluation": ("methods", "recipes", "run", "run folder"),
            "callbacks": ("run folder", "run", "methods"),
            "run folder": ("methods", "evaluation", "run", "callbacks"),
        }
        for part, targets in forbidden.items():
            for target in targets:
                self.assertNotIn(target, allowed[part], msg=part)
        for part, targets in allowed.items():
            self.assertNotIn("entry points", targets, msg=part)
        self.assertEqual(part_of("tfadv.run_logs", modules), "run folder")
        self.assertEqual(part_of("tfadv.callbacks", modules), "callbacks")


class CheckerTest(absltest.TestCase):
    """The checker finds what it must (so the test above can fail)."""

    def setUp(self):
        super().setUp()
        self.modules, self.allowed = _note()

    def _check(self, module, source, is_package=False):
        path = module.replace(".", "/") + ".py"
        return violations(
            {module: (path, source, is_package)}, self.modules, self.allowed
        )

    def test_a_forbidden_import_is_named_with_its_arrow(self):
        (message,) = self._check(
            "tfadv.attacks.fake", "import os\nfrom tfadv.methods import base\n"
        )
        self.assertStartsWith(message, "tfadv/attacks/fake.py:2: ")
        self.assertIn("`from tfadv.methods import base`", message)
        self.assertIn("forbidden arrow attacks -> methods", message)

    def test_imports_inside_functions_and_relative_ones_count(self):
        source = (
            "def late():\n"
            "    from ..evaluation import runner\n"
            "    import tfadv.experiment\n"
        )
        found = self._check("tfadv.methods.fake", source)
        self.assertLen(found, 2)
        self.assertIn("methods -> evaluation", found[0])
        self.assertIn("methods -> run", found[1])

    def test_callbacks_may_not_reach_the_run_folder(self):
        (message,) = self._check(
            "tfadv.callbacks", "from tfadv import run_logs\n"
        )
        self.assertIn("callbacks -> run folder", message)

    def test_a_package_init_resolves_relative_imports_from_itself(self):
        found = self._check(
            "tfadv.attacks", "from . import pgd\nfrom .. import methods\n", True
        )
        self.assertLen(found, 1)
        self.assertIn("attacks -> methods", found[0])

    def test_tools_and_tests_are_outside(self):
        found = self._check(
            "tfadv.experiment", "import tools.benchmark\nfrom tests import x\n"
        )
        self.assertLen(found, 2)
        self.assertIn("outside the package", found[0])

    def test_allowed_arrows_and_other_libraries_pass(self):
        source = (
            "import numpy as np\nfrom tfadv import validation\n"
            "from tfadv.attacks import pgd\n"
            "from tfadv.data import example_ids\n"
        )
        self.assertEmpty(self._check("tfadv.methods.fake", source))

    def test_a_module_of_no_part_is_named(self):
        found = violations(
            {"tfadv.newthing": ("tfadv/newthing.py", "", False)},
            self.modules,
            self.allowed,
        )
        self.assertLen(found, 1)
        self.assertIn("belongs to no part", found[0])

    def test_a_malformed_table_is_refused(self):
        head = f"{_BEGIN}\n| part | modules | may import |\n|---|---|---|\n"
        with self.assertRaisesRegex(ValueError, "names parts .*: mehtods"):
            read_parts(
                head + "| attacks | `tfadv.attacks` | mehtods |\n" + _END
            )
        with self.assertRaisesRegex(ValueError, "listed twice"):
            read_parts(
                head
                + "| a | `tfadv.x` | (nothing) |\n| b | `tfadv.x` | a |\n"
                + _END
            )
        with self.assertRaisesRegex(ValueError, "No table"):
            read_parts("no table here")


if __name__ == "__main__":
    absltest.main()
