"""Strict parsing of tfadv's gin files and bindings, with one-paragraph errors.

`parse` is what `tfadv.train` and `tfadv.evaluate` call. On top of
`gin.parse_config_files_and_bindings` it

- searches files by bare name in `gin_configs/`, refusing a bare name
  that a file in the working directory would shadow (a path such as
  `./pgd_at.gin` names the user's own), and never as Python package
  resources: gin's package reader
  imports the head of a relative path as a package, so a `data/` folder in
  the working directory broke `include 'data/fashion_mnist.gin'`, and it
  logged a false "Path not found" ERROR line for every file;
- turns syntax errors into one paragraph naming the file (or binding) and
  the line;
- lists the accepted parameters when a binding names an unknown one, and
  the closest configurable names when it names an unknown configurable;
- refuses a binding under a scope that nothing in the config uses
  (`trian/ProjectedGradient.num_steps = 0` would be silently ignored);
- refuses a binding of a value the run hands out itself (`RUN_LEVEL`: the
  seeds that `run.seed` gives, `tfadv.seeds`), naming the binding to use;
- after the run has built everything, `check_unused_bindings` refuses
  bindings that nothing used (`TRADES.beta` in a PGD-AT run).

Gin files are code: their `import` lines run when they are parsed, with
`--dry_run` too. Parse only files you trust.
"""

import difflib
import inspect
import os
import re
import tokenize

import gin
from gin import config as gin_config
from gin import config_parser

# Shipped inside the package, so a wheel install has them too (the
# repository's top-level gin_configs/ is a link to this folder).
GIN_DIR = os.path.join(os.path.dirname(__file__), "gin_configs")


# Values the run hands to the objects that use them (`tfadv.seeds`), so a
# binding on the object would be replaced: (configurable, parameter) -> the
# binding to write instead. A former name is listed too, to get this
# refusal rather than "no parameter". Every method's `seed` is one as well
# (`_run_level`).
RUN_LEVEL = {
    ("make_datasets", "seed"): "run.seed",
    ("make_datasets", "shuffle_seed"): "run.seed",
}


# The shipped files the last `parse` read, for `check_unused_bindings`.
_shipped_files_read = set()


def _is_shipped(path: str) -> bool:
    root = os.path.realpath(GIN_DIR)
    return os.path.realpath(path).startswith(root + os.sep)


def _read(path: str):
    """The file reader gin uses: `open`, noting the shipped files read."""
    if _is_shipped(path):
        _shipped_files_read.add(os.path.realpath(path))
    return open(path)


_AMBIGUOUS = "The gin file name"


def _is_gin_file(path: str) -> bool:
    """The existence check gin uses; refuses a bare name of two files.

    gin tries a relative name in the working directory before
    `gin_configs/`, so a `pgd_at.gin` or `data/fashion_mnist.gin` there
    would silently replace the shipped file (for `--gin_file` and for
    `include` alike). A path (absolute, or starting with ./ or ../) is
    the user's own file and never ambiguous.

    Raises:
        ValueError: the bare name is both a file in the working directory
            and a different shipped file.
    """
    if not os.path.isfile(path):
        return False
    explicit = os.path.isabs(path) or path.split(os.sep)[0] in (".", "..")
    shipped = os.path.join(GIN_DIR, path)
    if (
        not explicit
        and os.path.isfile(shipped)
        and not os.path.samefile(shipped, path)
    ):
        raise ValueError(
            f"{_AMBIGUOUS} {path!r} (a --gin_file or an include) "
            f"names both {os.path.abspath(path)} in the working "
            f"directory and tfadv's shipped gin_configs/{path}; bare "
            "names mean the shipped files, so which one was read would "
            f"depend on the directory you run in. Name yours by a path "
            f"(./{path}), or rename or move it."
        )
    return True


def _ambiguous_name(message: str) -> str | None:
    """`_is_gin_file`'s paragraph, without the location gin appends."""
    if message.startswith(_AMBIGUOUS):
        return message.split("\n")[0]
    return None


def _install_file_reader() -> None:
    """Reads gin files through `_read` and `_is_gin_file` only.

    gin's package reader is dropped: it reads relative paths as Python
    package resources (see the module docstring).
    """
    # gin has no public call to remove a reader; the list is its registry.
    gin_config._FILE_READERS[:] = [(_read, _is_gin_file)]


def _syntax_message(e: SyntaxError) -> str:
    where = (
        "a --gin_bindings value"
        if e.filename in (None, "<string>")
        else f"gin file {e.filename}"
    )
    text = (e.text or "").strip()
    shown = f": {text!r}" if text else ""
    return (
        f"Malformed gin in {where}, line {e.lineno}{shown}: {e.msg} A "
        "binding is `name.parameter = value` (value a Python literal, "
        "@Configurable, @Configurable() or %MACRO), one per line; "
        "`include 'file.gin'` and `import module` are the other statements."
    )


def _is_method(selector: str) -> bool:
    """Whether the configurable `selector` is a tfadv training method."""
    from tfadv.methods import base

    try:
        wrapped = gin_config._REGISTRY.get_match(selector).wrapped
    except Exception:  # noqa: BLE001  (not a registered name: not a method)
        return False
    return isinstance(wrapped, type) and issubclass(
        wrapped, base.AdversarialTrainer
    )


def _run_level(selector: str, parameter: str) -> str | None:
    """The binding that sets `selector.parameter` for a run, if the run does.

    None for a value gin may bind where it is used.
    """
    name = selector.split(".")[-1]
    owner = RUN_LEVEL.get((name, parameter))
    if owner is None and parameter == "seed" and _is_method(selector):
        owner = "run.seed"
    return owner


def _run_level_message(binding: str, owner: str) -> str:
    return (
        f"{binding} cannot be set in gin: the run hands that value out "
        f"itself, from {owner}, so the binding would be replaced (or would "
        f"fork the run's randomness). Bind {owner} instead: it is the one "
        "seed of a training run, handed to the weights, the data order and "
        "augmentation, the method's randomness and the final attacks, each "
        "recorded under `seeds` in results.json."
    )


def check_run_level() -> None:
    """Refuses a binding of a value the run hands out (`RUN_LEVEL`).

    Raises:
        ValueError: naming the binding and the one to write instead.
    """
    for (scope, selector), values in gin_config._CONFIG.items():
        if selector in ("gin.macro", "gin.constant"):
            continue
        for parameter in values:
            owner = _run_level(selector, parameter)
            if owner is not None:
                name = selector.split(".")[-1]
                binding = f"{scope}/{name}" if scope else name
                raise ValueError(
                    _run_level_message(f"{binding}.{parameter}", owner)
                )


def _unknown_parameter(message: str) -> str | None:
    match = re.search(
        r"Configurable '([\w.]+)' doesn't have a parameter named '(\w+)'",
        message,
    )
    if not match:
        return None
    name, parameter = match[1], match[2]
    owner = _run_level(name, parameter)
    if owner is not None:
        return _run_level_message(f"{name}.{parameter}", owner)
    try:
        configurable = gin_config._REGISTRY.get_match(name)
        denied = set(configurable.denylist or ())
        accepted = [
            p
            for p in inspect.signature(configurable.wrapped).parameters
            if p not in ("self", "args", "kwargs") and p not in denied
        ]
    except Exception:  # noqa: BLE001  (the message stays useful without it)
        accepted = []
    listing = ", ".join(accepted) if accepted else "(none)"
    return (
        f"{name} has no parameter {parameter!r}; it accepts: {listing}. "
        "Check the spelling in the gin file or --gin_bindings."
    )


def _unknown_configurable(message: str) -> str | None:
    match = re.search(
        r"No configurable matching (?:reference )?'@?([\w./]+)'", message
    )
    if not match:
        return None
    wanted = match[1].split("/")[-1]
    names = sorted(
        {
            selector.split(".")[-1]
            for selector in gin_config._REGISTRY._selector_map
        }
    )
    close = difflib.get_close_matches(wanted.split(".")[-1], names, n=5)
    hint = (
        f" Closest registered names: {', '.join(close)}."
        if close
        else " No registered name is close."
    )
    return (
        f"No gin configurable is named {match[1]!r}.{hint} Names are "
        "classes and functions of tfadv (e.g. PGDAT, ProjectedGradient, "
        "make_datasets, run) and keras.optimizers.SGD/Adam/AdamW."
    )


def _references(value):
    """Every `ConfigurableReference` inside a bound value."""
    if isinstance(value, gin_config.ConfigurableReference):
        yield value
    elif isinstance(value, (list, tuple, set)):
        for item in value:
            yield from _references(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _references(item)


def check_scopes() -> None:
    """Refuses a binding whose scope no `@scope/Name` reference opens.

    Raises:
        ValueError: naming the binding and the scopes the config uses.
    """
    used = set()
    bindings = []
    for (scope, selector), values in gin_config._CONFIG.items():
        for value in values.values():
            for reference in _references(value):
                if reference.selector != "gin.macro":  # %MACRO opens none
                    used.update(reference.scopes)
        if scope and selector != "gin.macro":
            bindings.append((scope, selector, sorted(values)))
    for scope, selector, parameters in bindings:
        unknown = [part for part in scope.split("/") if part not in used]
        if unknown:
            name = selector.split(".")[-1]
            listing = ", ".join(sorted(used)) or "(none)"
            raise ValueError(
                f"The gin binding {scope}/{name}.{parameters[0]} is under "
                f"the scope {unknown[0]!r}, which no reference in the config "
                f"opens (no @{unknown[0]}/...), so gin would silently ignore "
                f"it. Scopes this config uses: {listing}. Check the spelling."
            )


def _not_utf8(gin_files) -> str:
    """'<path>, ' for the first given file that is not UTF-8, else ''."""
    for name in gin_files:
        for folder in ("", *gin_config._LOCATION_PREFIXES):
            candidate = os.path.join(folder, name)
            if not os.path.isfile(candidate):
                continue
            with open(candidate, "rb") as f:
                try:
                    f.read().decode("utf-8")
                except UnicodeDecodeError:
                    return f"{candidate}, "
            break
    return ""


def shipped_names() -> list:
    """The gin files shipped in `gin_configs/`, by the names to give."""
    names = []
    for folder, _, files in os.walk(GIN_DIR):
        relative = os.path.relpath(folder, GIN_DIR)
        for name in files:
            if name.endswith(".gin"):
                names.append(os.path.normpath(os.path.join(relative, name)))
    return sorted(names)


def _missing_file(message: str) -> str | None:
    """One paragraph for gin's "Unable to open file", with close names."""
    match = re.match(r"Unable to open file: (.*?)\. Searched config", message)
    if match is None:
        return None
    wanted = match[1]
    shipped = shipped_names()
    close = difflib.get_close_matches(wanted, shipped, n=3, cutoff=0.6)
    hint = f" Did you mean {' or '.join(close)}?" if close else ""
    methods = [name for name in shipped if os.sep not in name]
    folders = sorted({name.split(os.sep)[0] for name in shipped} - set(methods))
    return (
        f"No gin file {wanted!r}: it is not a path to a file, nor a name "
        f"in tfadv's gin_configs/ (a --gin_file or an include).{hint} The "
        f"method files there are {', '.join(methods)}; more are in "
        f"{', '.join(f + '/' for f in folders)}."
    )


def parse(gin_files, gin_bindings) -> None:
    """Parses gin files (searched in gin_configs/) and bindings, strictly.

    Args:
        gin_files: paths, or names relative to `gin_configs/`.
        gin_bindings: binding strings, applied after the files.

    Raises:
        ValueError: malformed gin, an unknown name or parameter, a binding
            under a scope nothing uses, or of a value the run hands out
            (`RUN_LEVEL`); one paragraph each.
    """
    from tfadv import configurables  # noqa: F401  (registers every name)

    _install_file_reader()
    _shipped_files_read.clear()
    if GIN_DIR not in gin_config._LOCATION_PREFIXES:
        gin.add_config_file_search_path(GIN_DIR)
    try:
        gin.parse_config_files_and_bindings(
            gin_files, gin_bindings, skip_unknown=False
        )
    except RecursionError:
        raise ValueError(
            "A gin file includes itself, directly or through the files it "
            "includes, so gin followed `include` lines without end (files "
            f"given: {', '.join(map(str, gin_files))}). Remove the include "
            "that closes the loop."
        ) from None
    except UnicodeDecodeError as e:
        raise ValueError(
            f"A gin file is not UTF-8 text ({_not_utf8(gin_files)}byte "
            f"{e.start}: {e.reason}); gin files are text. Save it as UTF-8, "
            "or check that --gin_file names a gin file."
        ) from None
    except OSError as e:
        missing = _missing_file(str(e))
        if missing is None:
            raise
        raise ValueError(missing) from None
    except SyntaxError as e:
        raise ValueError(_syntax_message(e)) from None
    except tokenize.TokenError as e:
        line = e.args[1][0] if len(e.args) > 1 else "?"
        raise ValueError(
            f"Malformed gin: {e.args[0]} (line {line}): a bracket or quote "
            "opened and never closed, in one of the gin files "
            f"({', '.join(map(str, gin_files))}) or --gin_bindings."
        ) from None
    except ValueError as e:
        message = str(e)
        friendly = (
            _unknown_parameter(message)
            or _unknown_configurable(message)
            or _ambiguous_name(message)
        )
        if friendly is None:
            raise
        lines = message.split("\n")[1:]
        where = " ".join(line.strip() for line in lines if line.strip("^ "))
        if where:
            friendly += f" ({where})"
        raise ValueError(friendly) from None
    check_scopes()
    check_run_level()


def _shipped_bindings() -> set:
    """`(scope, name, parameter)` of every binding in the shipped files read.

    A later file may replace what a shipped file configures (testing/
    tiny.gin replaces the model, fgsm_rs.gin the learning-rate schedule
    of the file it includes), leaving those bindings unused on purpose.
    """
    found = set()
    delegate = gin_config.ParserDelegate(skip_unknown=True)
    for path in _shipped_files_read:
        with open(path) as f:
            for statement in config_parser.ConfigParser(f, delegate):
                if isinstance(statement, config_parser.BindingStatement):
                    name = statement.selector.split(".")[-1]
                    found.add((statement.scope, name, statement.arg_name))
    return found


def _within(scope: str, used_scope: str) -> bool:
    """Whether a binding under `scope` applies to a call in `used_scope`."""
    parts = scope.split("/") if scope else []
    return used_scope.split("/")[: len(parts)] == parts


def unused_bindings() -> list[str]:
    """The bindings no call of the run used, each with the reason.

    Call it after the run has built everything: gin's operative config
    then holds every configurable called and the parameters gin gave it
    (not those the caller passed itself). Bindings from the shipped files
    read are left out (`_shipped_bindings`), and so are macros.
    """
    shipped = _shipped_bindings()
    operative = gin_config._OPERATIVE_CONFIG
    unused = []
    for (scope, selector), values in gin_config._CONFIG.items():
        if selector in ("gin.macro", "gin.constant"):
            continue
        name = selector.split(".")[-1]
        calls = [
            parameters
            for (used_scope, used), parameters in operative.items()
            if used == selector and _within(scope, used_scope)
        ]
        for parameter in values:
            if (scope, name, parameter) in shipped or any(
                parameter in parameters for parameters in calls
            ):
                continue
            why = (
                "the caller passes it itself"
                if calls
                else f"nothing calls {name}"
                + (f" under the scope {scope!r}" if scope else "")
            )
            binding = f"{scope}/{name}" if scope else name
            unused.append(f"{binding}.{parameter} ({why})")
    return unused


def check_unused_bindings() -> None:
    """Refuses gin bindings that the built run never used.

    Raises:
        ValueError: naming each unused binding and why it is unused.
    """
    unused = unused_bindings()
    if unused:
        raise ValueError(
            f"The gin config binds values this run never uses: "
            f"{'; '.join(unused)}. Gin would ignore them silently. A "
            "binding takes effect only on a configurable the run calls "
            "through gin: the method (run.method_cls), the attacks and "
            "objects referenced with @ in the config, run itself. The "
            "final suite's named attacks (e.g. 'standard': APGD, FAB-T, "
            "Square) are built in Python with their papers' settings; "
            "to change one, list your own instance in run.final_suite "
            "(e.g. [@final/Square()] with final/Square.p_init = 0.3). "
            "Remove the bindings or bind what the run uses."
        )
