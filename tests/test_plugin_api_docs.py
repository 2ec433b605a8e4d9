"""The plugin API reference in docs/plugins.md against the code (datasette's approach, widened).

The plugin API is every name listed in ``API_MODULES`` below, read from the code where the code
says it (the hookspecs by their pluggy mark, ``figrelay.delivery.__all__``, the seven event
types), with every field, property and method of its classes. Each must have an entry in the
"The plugin API reference" section of docs/plugins.md: a list item or heading that starts with
the name and its type in backticks, exactly as the code has them, e.g.

    - `Delivery.body: bytes`: the event in Fig's exact wire format.
    - `outcome_for_status(status: int, headers: Mapping[str, str], body: bytes | str = b'') -> Outcome`: ...

A name the code has and the reference lacks fails, and so does an entry the code no longer has
(renamed, removed, or its type changed). The built-in plugins may import only these names.
"""

from __future__ import annotations

import ast
import dataclasses
import enum
import importlib
import inspect
import json
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from figrelay import delivery, events, hookspecs

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs" / "plugins.md"
REFERENCE = "## The plugin API reference"

HOOKSPECS = tuple(name for name, fn in vars(hookspecs).items() if inspect.isfunction(fn) and hasattr(fn, "figrelay_spec"))
"""Every function that carries pluggy's ``figrelay`` hookspec mark."""

API_MODULES: dict[str, tuple[str, ...]] = {
    "figrelay": ("PLUGIN_API", "__version__"),
    "figrelay.hookspecs": ("hookimpl", *HOOKSPECS),
    "figrelay.delivery": tuple(delivery.__all__),
    "figrelay.durations": ("Duration", "Timeout", "parse_duration"),
    "figrelay.messages": ("Message", "Fact", "Severity", "describe", "digest", "MAX_DIGEST_LINES"),
    "figrelay.templates": ("TemplateError", "compile_template", "check_template", "render_template"),
    "figrelay.events": (
        "FigEvent", *(cls.__name__ for cls in events.EVENT_TYPES.values()),
        "ConnectionEvent", "RegistrationType", "RunSessionsEvent", "HealthStatus",
        "HealthDetails", "HealthComponent", "FigDateTime", "EVENT_TYPES", "ROUTES",
    ),
    "figrelay.samples": ("sample_events", "test_button_events", "sample_test_events", "TEST_LINK"),
}
"""What a plugin may import from figrelay, by module."""

DOCUMENTED_ELSEWHERE = {"figrelay.testing": 'the "Testing a plugin" section'}
"""Plugin API modules that docs/plugins.md documents outside the reference."""

NOT_PLUGIN_API = {
    "FigDateTime.parse", "FigDateTime.from_datetime",  # figrelay builds events; a plugin reads them
    "HealthDetails.extra", "HealthComponent.extra",  # unknown wire fields: described once, under FigEvent
}
"""Public members of API classes that are figrelay's own business."""

SPELLING = {"_dt.datetime": "datetime.datetime"}
"""Annotations written with a module alias, as the reference spells them."""


@dataclass(frozen=True)
class Entry:
    """One thing the reference must document."""

    marker: str
    """The backticked text its line starts with, e.g. ``Delivery.body: bytes``."""
    part: str
    """Where in the reference it belongs: a module (``figrelay.delivery``) or a class's entry."""
    lists: tuple[str, ...] = ()
    """Backticked texts its entry must also hold: an event type's fields, an enum's members."""

    @property
    def name(self) -> str:
        return name_of(self.marker)


def name_of(marker: str) -> str:
    """``Delivery.body`` of ``Delivery.body: bytes``; ``deliver`` of ``async Target.deliver(...)``."""
    match = re.match(r"(?:async )?([\w.]+)", marker)
    return match.group(1) if match else marker


def annotation(value: Any) -> str:
    """An annotation as the code spells it (modules use ``from __future__ import annotations``)."""
    if isinstance(value, str):
        value = value.removeprefix("ClassVar[").removesuffix("]") if value.startswith("ClassVar[") else value
        return SPELLING.get(value, value)
    if value is None or value is type(None):
        return "None"
    return getattr(value, "__name__", repr(value))


def signature(fn: Any, name: str) -> str:
    """``name(param: type = default, ...) -> type``, ``async`` first for a coroutine function."""
    sig = inspect.signature(fn)
    params: list[str] = []
    starred = False
    for p in sig.parameters.values():
        if p.name in ("self", "cls") and not params:
            continue
        if p.kind is p.KEYWORD_ONLY and not starred:
            params.append("*")
            starred = True
        text = {p.VAR_POSITIONAL: "*", p.VAR_KEYWORD: "**"}.get(p.kind, "") + p.name
        starred = starred or p.kind is p.VAR_POSITIONAL
        if p.annotation is not p.empty:
            text += f": {annotation(p.annotation)}"
        if p.default is not p.empty:
            text += f" = {p.default!r}"
        params.append(text)
    returns = "" if sig.return_annotation is sig.empty else f" -> {annotation(sig.return_annotation)}"
    return f"{'async ' if inspect.iscoroutinefunction(fn) else ''}{name}({', '.join(params)}){returns}"


def class_members(cls: type) -> list[Entry]:
    """The fields, class attributes, properties and methods of an API class, as entries."""
    owner = cls.__name__
    found: list[Entry] = []
    if dataclasses.is_dataclass(cls):
        found += [
            Entry(f"{owner}.{f.name}: {annotation(f.type)}", owner)
            for f in dataclasses.fields(cls)
            if not f.name.startswith("_") and f"{owner}.{f.name}" not in NOT_PLUGIN_API
        ]
    else:
        for name, value in inspect.get_annotations(cls).items():
            if not name.startswith("_") and isinstance(value, str) and value.startswith("ClassVar["):
                found.append(Entry(f"{owner}.{name}: {annotation(value)}", owner))
    for name, value in vars(cls).items():
        if name.startswith("_") or f"{owner}.{name}" in NOT_PLUGIN_API:
            continue
        if isinstance(value, property):
            found.append(Entry(f"{owner}.{name}: {annotation(inspect.get_annotations(value.fget).get('return'))}", owner))
        elif isinstance(value, (classmethod, staticmethod)):
            found.append(Entry(signature(getattr(cls, name), f"{owner}.{name}"), owner))
        elif inspect.isfunction(value):
            found.append(Entry(signature(value, f"{owner}.{name}"), owner))
    return found


def expected_entries() -> list[Entry]:
    """Everything the reference must hold, read from the code."""
    entries: list[Entry] = []
    for module_name, names in API_MODULES.items():
        module = importlib.import_module(module_name)
        prefix = "figrelay." if module_name == "figrelay" else ""
        for name in names:
            assert hasattr(module, name), f"tests/test_plugin_api_docs.py: API_MODULES names {module_name}.{name}, which does not exist"
            value = getattr(module, name)
            if inspect.isclass(value) and issubclass(value, events.FigEvent) and value is not events.FigEvent:
                fields = tuple(f"`{f.name}: {annotation(f.type)}`" for f in dataclasses.fields(value) if f.name != "extra")
                entries.append(Entry(name, module_name, fields))
            elif inspect.isclass(value) and issubclass(value, enum.Enum):
                members = tuple(f"`{m.name}` ({json.dumps(m.value)})" for m in value)
                entries += [Entry(name, module_name, members), *class_members(value)]
            elif inspect.isclass(value):
                entries += [Entry(name, module_name), *class_members(value)]
            elif inspect.isfunction(inspect.unwrap(value)):  # a function, or one wrapped (functools.lru_cache)
                entries.append(Entry(signature(inspect.unwrap(value), prefix + name), module_name))
            elif isinstance(value, types.UnionType):
                entries.append(Entry(f"{name} = {' | '.join(annotation(a) for a in typing.get_args(value))}", module_name))
            elif typing.get_origin(value) is typing.Annotated:
                entries.append(Entry(f"{name} = Annotated[{annotation(typing.get_args(value)[0])}, ...]", module_name))
            else:
                declared = inspect.get_annotations(module).get(name)
                entries.append(Entry(f"{prefix}{name}: {annotation(declared) if declared else type(value).__name__}", module_name))
    return entries


ENTRY_LINE = re.compile(r"^[ \t]*(?:[-*]|#{3,5})[ \t]+`([^`]+)`")


def reference_section(text: str) -> str:
    assert REFERENCE in text, f'docs/plugins.md has no "{REFERENCE}" section: it must document the plugin API'
    return text.split(REFERENCE, 1)[1].split("\n## ", 1)[0]


def documented_entries(section: str) -> dict[str, str]:
    """{marker: the entry's text} for every list item or heading of the reference that starts
    with backticks. An entry runs on to the next list item, heading, table or blank line."""
    found: dict[str, str] = {}
    current: str | None = None
    for line in section.splitlines():
        match = ENTRY_LINE.match(line)
        if match:
            current = match.group(1)
            found[current] = found.get(current, "") + line + "\n"
        elif not line.strip() or line.lstrip().startswith(("- ", "* ", "#", "|")):
            current = None
        elif current is not None:
            found[current] += line + "\n"
    return found


def _heading_before(section: str, marker: str) -> str | None:
    """The ``### `` heading above a documented entry."""
    at = re.search(rf"^[ \t]*(?:[-*]|#{{3,5}})[ \t]+`{re.escape(marker)}`", section, re.M)
    headings = re.findall(r"^### .*$", section[: at.start()] if at else "", re.M)
    return headings[-1] if headings else None


def _where(entry: Entry, section: str, near: str | None) -> str:
    """Where a missing entry goes: in its class's entry, or under the heading of the entry before
    it in the code (of the same module), or under the module's first heading."""
    if "." not in entry.part:  # a member of a class
        return f"as an indented item of the `{entry.part}` entry"
    heading = near or next(iter(re.findall(rf"^### .*\(`{re.escape(entry.part)}`\)$", section, re.M)), None)
    return f'under "{heading}"' if heading else f'under a new heading "### <what it is> (`{entry.part}`)"'


def undocumented(section: str) -> list[str]:
    """What the code has and the reference lacks, each with where to add it."""
    documented = documented_entries(section)
    by_name = {name_of(marker): marker for marker in documented}
    problems: list[str] = []
    near: dict[str, str | None] = {}  # module: the heading of its last documented entry
    for entry in expected_entries():
        if entry.marker not in documented:
            if entry.name in by_name:
                problems.append(f"`{by_name[entry.name]}` is out of date: the code now has `{entry.marker}`; update that line")
            else:
                where = _where(entry, section, near.get(entry.part))
                problems.append(f"`{entry.marker}` is not documented: add the line\n      - `{entry.marker}`: <what it means>\n    {where}")
            continue
        if "." in entry.part:
            near[entry.part] = _heading_before(section, entry.marker)
        for item in entry.lists:
            if item not in documented[entry.marker]:
                problems.append(f"the `{entry.marker}` entry does not list {item}: add it to that entry's text")
    return problems


def stale(section: str) -> list[str]:
    """What the reference documents and the code no longer has."""
    expected = {e.marker: e for e in expected_entries()}
    names = {e.name for e in expected.values()}
    problems: list[str] = []
    for marker, text in documented_entries(section).items():
        entry = expected.get(marker)
        if entry is None:
            if name_of(marker) not in names:  # a changed type: undocumented() reports it, with the new type
                problems.append(
                    f"`{marker}` is documented but the code has no such plugin API name: remove it, or, when it is new API, "
                    "add it to API_MODULES in tests/test_plugin_api_docs.py"
                )
            continue
        if entry.lists:  # an event type's fields, an enum's members
            for item in re.findall(r"`\w+: [^`]+`|`\w+` \([^)]*\)", text):
                if item not in entry.lists:
                    problems.append(f"the `{marker}` entry lists {item}, which the code does not have: remove or correct it")
    return problems


def test_every_public_name_is_documented_with_its_type():
    problems = undocumented(reference_section(DOCS.read_text(encoding="utf-8")))
    assert not problems, (
        f'docs/plugins.md, "{REFERENCE}": {len(problems)} public name(s) of the plugin API undocumented '
        "(each entry starts with the name and type in backticks, exactly as the code spells them):\n  " + "\n  ".join(problems)
    )


def test_every_documented_name_still_exists():
    problems = stale(reference_section(DOCS.read_text(encoding="utf-8")))
    assert not problems, f'docs/plugins.md, "{REFERENCE}":\n  ' + "\n  ".join(problems)


def test_the_checks_name_what_is_wrong_and_where():
    """The guard itself: a reference with a line dropped, a type gone stale, a field forgotten and a
    name that does not exist gets one precise complaint for each."""
    section = reference_section(DOCS.read_text(encoding="utf-8"))
    assert "- `Delivery.body: bytes`:" in section and "`connection_event: ConnectionEvent`" in section
    broken = re.sub(r"(?m)^  - `Delivery\.attempt: int`:.*\n(    .*\n)*", "", section)
    broken = broken.replace("`Delivery.body: bytes`", "`Delivery.body: str`")
    broken = broken.replace("`connection_event: ConnectionEvent`,", "")
    broken = broken.replace("- `Failed`:", "- `Failed.retry_after: float`: no such field.\n- `Failed`:")
    assert undocumented(broken) == [
        "`Delivery.body: str` is out of date: the code now has `Delivery.body: bytes`; update that line",
        "`Delivery.attempt: int` is not documented: add the line\n      - `Delivery.attempt: int`: <what it means>\n"
        "    as an indented item of the `Delivery` entry",
        "the `ClientStatusChanged` entry does not list `connection_event: ConnectionEvent`: add it to that entry's text",
    ]
    assert stale(broken) == [
        "`Failed.retry_after: float` is documented but the code has no such plugin API name: remove it, or, when it is new API, "
        "add it to API_MODULES in tests/test_plugin_api_docs.py"
    ]
    without_helper = re.sub(r"(?m)^- `redact_url\(.*\n(  .*\n)*", "", section)
    assert undocumented(without_helper) == [
        "`redact_url(url: str) -> str` is not documented: add the line\n      - `redact_url(url: str) -> str`: <what it means>\n"
        '    under "### HTTP helpers (`figrelay.delivery`)"'
    ]


def test_every_hookspec_is_typed_and_has_a_docstring():
    assert HOOKSPECS, "figrelay/hookspecs.py has no function with the figrelay hookspec mark"
    for name in HOOKSPECS:
        fn = getattr(hookspecs, name)
        assert (fn.__doc__ or "").strip(), f"hook {name} in figrelay/hookspecs.py has no docstring: write what it is for and when it is called"
        sig = inspect.signature(fn)
        untyped = [p.name for p in sig.parameters.values() if p.annotation is p.empty]
        assert not untyped and sig.return_annotation is not sig.empty, f"hook {name}: annotate {untyped or 'its return'} in figrelay/hookspecs.py"


def _figrelay_imports(path: Path) -> list[tuple[int, str, str | None]]:
    """(line, module, name) of every import from figrelay in a module; name None for ``import x``."""
    found: list[tuple[int, str, str | None]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.split(".")[0] == "figrelay":
            found += [(node.lineno, node.module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, None) for alias in node.names if alias.name.split(".")[0] == "figrelay"]
    return found


PLUGIN_MODULES = sorted(REPO.glob("plugins/figrelay-*/figrelay_*.py"))


@pytest.mark.parametrize("path", PLUGIN_MODULES, ids=[p.stem for p in PLUGIN_MODULES])
def test_builtin_plugins_use_only_the_plugin_api(path):
    """A built-in plugin is the third parties' example: it reaches nothing a third party cannot."""
    problems = []
    for line, module, name in _figrelay_imports(path):
        where = f"{path.relative_to(REPO)}:{line}"
        if any(module == m or module.startswith(m + ".") for m in DOCUMENTED_ELSEWHERE):
            continue
        if module not in API_MODULES:
            problems.append(f"{where}: imports {module}, which is not plugin API; use a documented name or a ClientContext field instead")
        elif name is not None and name not in API_MODULES[module]:
            problems.append(f"{where}: imports {module}.{name}, which is not plugin API; document it (API_MODULES and docs/plugins.md) or avoid it")
    assert not problems, "\n".join(problems)


def test_builtin_plugins_declare_the_plugin_api():
    import figrelay

    for path in PLUGIN_MODULES:
        module = importlib.import_module(path.stem)
        assert getattr(module, "FIGRELAY_PLUGIN_API", None) == figrelay.PLUGIN_API, f"{path.relative_to(REPO)}: declare FIGRELAY_PLUGIN_API = {figrelay.PLUGIN_API}"
