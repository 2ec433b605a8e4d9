"""``figrelay new-plugin NAME``: writes a complete, installable delivery plugin to start from.

The files are the templates beside this module (``*.tmpl``, package data), with ``{{name}}``,
``{{module}}``, ``{{distribution}}``, ``{{Class}}``, ``{{ENV}}``, ``{{figrelay_version}}`` and
``{{plugin_api}}`` filled in. What they make is checked by tests/test_new_plugin.py: it generates
a plugin, installs it, lints it and runs its tests against a real daemon.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from figrelay import PLUGIN_API, __version__

__all__ = ["FILES", "PluginNames", "ScaffoldError", "VALID_NAMES", "next_steps", "plugin_names", "render_plugin", "write_plugin"]

NAME_PATTERN = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)*")
MAX_NAME_LENGTH = 32
VALID_NAMES = (
    "a plugin name is a lower-case letter followed by lower-case letters, digits and single underscores, "
    f"at most {MAX_NAME_LENGTH} characters (e.g. pager, ops_chat): it is the client type's `type:` in the YAML, "
    "the entry point's name, and part of the module's name (figrelay_pager)"
)

FILES: dict[str, tuple[str, str]] = {
    "pyproject.toml": ("pyproject.toml.tmpl", "the distribution: build system, the figrelay entry point, dependencies"),
    "{module}.py": ("module.py.tmpl", "the client type {name!r}: typed options, a target that POSTs JSON"),
    "README.md": ("README.md.tmpl", "install, configure, test"),
    "tests/test_{name}.py": ("test_plugin.py.tmpl", "its tests, against a real figrelay daemon (figrelay.testing's fixtures)"),
    ".gitignore": ("gitignore.tmpl", ""),
}
"""Path in the new folder (``{module}`` and ``{name}`` filled in): (template, what it is)."""

_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")


class ScaffoldError(Exception):
    """Why the plugin was not written: the message says what to do instead."""


@dataclass(frozen=True, slots=True)
class PluginNames:
    """The names of one new plugin, all derived from the one given."""

    name: str
    """The client type (``type: pager``) and the entry point's name."""
    module: str
    """``figrelay_pager``"""
    distribution: str
    """``figrelay-pager``"""
    class_prefix: str
    """``Pager`` (``PagerOptions``, ``PagerTarget``); ``OpsChat`` for ``ops_chat``"""
    env_prefix: str
    """``PAGER``: the environment variable of the README's example (``${PAGER_TOKEN}``)"""


def plugin_names(name: str, taken: Mapping[str, str] | None = None) -> PluginNames:
    """The names for plugin ``name``; ScaffoldError when it is not a valid plugin name, or is
    ``taken`` (``{name: by what}``: the client types and plugins installed already)."""
    given = name
    name = name.strip()
    if not NAME_PATTERN.fullmatch(name) or len(name) > MAX_NAME_LENGTH:
        suggestion = re.sub(r"[^a-z0-9]+", "_", name.lower().removeprefix("figrelay-").removeprefix("figrelay_")).strip("_")
        suggestion = re.sub(r"^[0-9_]+", "", suggestion)[:MAX_NAME_LENGTH].rstrip("_")
        hint = f"; perhaps {suggestion!r}" if suggestion and suggestion != name and NAME_PATTERN.fullmatch(suggestion) else ""
        raise ScaffoldError(f"{given!r} is not a valid plugin name: {VALID_NAMES}{hint}")
    if taken and name in taken:
        raise ScaffoldError(f"{name!r} is already {taken[name]}; a second plugin of that name would not load: choose another name")
    return PluginNames(
        name=name,
        module=f"figrelay_{name}",
        distribution=f"figrelay-{name.replace('_', '-')}",
        class_prefix="".join(part.capitalize() for part in name.split("_")),
        env_prefix=name.upper(),
    )


def render_plugin(names: PluginNames) -> dict[str, str]:
    """{path in the new folder: text} of every file of the plugin."""
    values = {
        "name": names.name,
        "module": names.module,
        "distribution": names.distribution,
        "Class": names.class_prefix,
        "ENV": names.env_prefix,
        "figrelay_version": __version__,
        "plugin_api": str(PLUGIN_API),
    }
    templates = resources.files(__name__)
    out: dict[str, str] = {}
    for path, (template, _) in FILES.items():
        text = (templates / template).read_text(encoding="utf-8")
        out[path.format(module=names.module, name=names.name)] = _PLACEHOLDER.sub(lambda m: values[m.group(1)], text)
    return out


def write_plugin(names: PluginNames, folder: Path) -> list[Path]:
    """Write the plugin into ``folder`` (new, or empty); the files written, in FILES' order."""
    if folder.exists() and not folder.is_dir():
        raise ScaffoldError(f"{folder} is a file, not a folder; give a new or empty folder with --dir PATH")
    if folder.is_dir() and any(folder.iterdir()):
        raise ScaffoldError(f"{folder} is not empty; figrelay new-plugin writes only into a new or empty folder: give another with --dir PATH")
    written: list[Path] = []
    try:
        for path, text in render_plugin(names).items():
            target = folder / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
            written.append(target)
    except OSError as exc:
        raise ScaffoldError(f"cannot write {exc.filename or folder}: {exc.strerror}; give a folder you can write with --dir PATH") from None
    return written


def _shown(path: Path) -> str:
    """``path`` relative to the working folder when it is inside it, else as it is."""
    try:
        return os.path.relpath(path) if path.resolve().is_relative_to(Path.cwd().resolve()) else str(path)
    except ValueError:
        return str(path)


def next_steps(names: PluginNames, folder: Path) -> str:
    """What ``figrelay new-plugin`` prints once it wrote the plugin: its files, then what to do next."""
    rows = [(_shown(folder / path.format(module=names.module, name=names.name)), what.format(name=names.name)) for path, (_, what) in FILES.items()]
    width = max(len(r[0]) for r in rows)
    lines = [f"Wrote the figrelay plugin {names.name!r} (distribution {names.distribution}) in {_shown(folder)}:"]
    lines += [f"  {shown:<{width}}  {what}".rstrip() for shown, what in rows]
    lines += [
        "",
        "Next steps:",
        f"  cd {_shown(folder)}",
        "  pip install -e '.[test]'   # into the environment figrelay runs in",
        f"  figrelay plugins           # lists {names.name}",
        "  pytest                     # its tests, against a real figrelay daemon",
    ]
    return "\n".join(lines)
