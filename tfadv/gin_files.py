"""Strict parsing of tfadv's gin files and bindings, with one-paragraph errors.

`parse` is what `tfadv.train` and `tfadv.evaluate` call. On top of
`gin.parse_config_files_and_bindings` it

- searches files by bare name in `gin_configs/` (after the working
  directory), and never as Python package resources: gin's package reader
  imports the head of a relative path as a package, so a `data/` folder in
  the working directory broke `include 'data/fashion_mnist.gin'`, and it
  logged a false "Path not found" ERROR line for every file;
- turns syntax errors into one paragraph naming the file (or binding) and
  the line;
- lists the accepted parameters when a binding names an unknown one, and
  the closest configurable names when it names an unknown configurable;
- refuses a binding under a scope that nothing in the config uses
  (`trian/ProjectedGradient.num_steps = 0` would be silently ignored).

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
from gin import resource_reader

# Shipped inside the package, so a wheel install has them too (the
# repository's top-level gin_configs/ is a link to this folder).
GIN_DIR = os.path.join(os.path.dirname(__file__), "gin_configs")


def _drop_package_reader() -> None:
    """Stops gin from reading relative paths as Python package resources."""
    # gin has no public call to remove a reader; the list is its registry.
    gin_config._FILE_READERS[:] = [
        (reader, exists)
        for reader, exists in gin_config._FILE_READERS
        if reader is not resource_reader.system_path_reader
    ]


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


def _unknown_parameter(message: str) -> str | None:
    match = re.search(
        r"Configurable '([\w.]+)' doesn't have a parameter named '(\w+)'",
        message,
    )
    if not match:
        return None
    name, parameter = match[1], match[2]
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


def parse(gin_files, gin_bindings) -> None:
    """Parses gin files (searched in gin_configs/) and bindings, strictly.

    Args:
        gin_files: paths, or names relative to `gin_configs/`.
        gin_bindings: binding strings, applied after the files.

    Raises:
        ValueError: malformed gin, an unknown name or parameter, or a binding
            under a scope nothing uses; one paragraph each.
    """
    from tfadv import configurables  # noqa: F401  (registers every name)

    _drop_package_reader()
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
        friendly = _unknown_parameter(message) or _unknown_configurable(message)
        if friendly is None:
            raise
        lines = message.split("\n")[1:]
        where = " ".join(line.strip() for line in lines if line.strip("^ "))
        if where:
            friendly += f" ({where})"
        raise ValueError(friendly) from None
    check_scopes()
