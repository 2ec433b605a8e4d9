"""Every storage back end keeps the storage contract, ``figrelay.storage.Store``, by its shape.

Each member of the protocol exists on the back end, a coroutine where the protocol has one, with
the same parameters (names, kinds, order, defaults, types) and the same return type, so every call
the core makes through ``Store`` fits. A new back end joins BACKENDS and is held to the same
contract. The last test keeps the contract honest from the other side: the core calls nothing on
a store that ``Store`` does not list, apart from the SQLite-specific places that are named here.
"""

from __future__ import annotations

import ast
import inspect
import typing
from collections.abc import Callable
from pathlib import Path

import pytest

import figrelay
from figrelay.storage import Store
from figrelay.storage.postgresql import parse_storage_url
from figrelay.storage.postgresql_store import PostgresStore
from figrelay.storage.sqlite import Outbox

BACKENDS = [
    pytest.param(Outbox, lambda tmp_path: Outbox(tmp_path / "outbox.sqlite3"), id="sqlite"),
    pytest.param(PostgresStore, lambda tmp_path: PostgresStore(parse_storage_url(f"postgresql://figrelay@/figrelay?host={tmp_path}")), id="postgresql"),
]
"""(class, a factory of an unopened instance in tmp_path) of every back end."""


def contract() -> tuple[dict[str, Callable[..., object]], dict[str, property], dict[str, object]]:
    """The protocol's members: methods, properties and data attributes (with their types)."""
    methods: dict[str, Callable[..., object]] = {}
    properties: dict[str, property] = {}
    for name, value in vars(Store).items():
        if name.startswith("_"):
            continue
        if isinstance(value, property):
            properties[name] = value
        elif inspect.isfunction(value):
            methods[name] = value
    attributes = {name: hint for name, hint in typing.get_type_hints(Store).items() if not name.startswith("_")}
    return methods, properties, attributes


def test_the_contract_is_what_the_core_uses() -> None:
    methods, properties, attributes = contract()
    assert {"accept", "pending_in_order", "fetch", "record_outcomes", "open", "close", "replay", "prune_journal"} <= set(methods)
    assert "health" in properties and attributes.get("journal_enabled") is bool
    assert "data_version" not in methods, "SQLite's own: the PostgreSQL back end hears commits through LISTEN/NOTIFY"
    for name, fn in (*methods.items(), *((n, p.fget) for n, p in properties.items())):
        assert fn is not None and fn.__doc__ and "\n" not in fn.__doc__.strip(), f"Store.{name} needs a one-line docstring: its contract"


def _signature(fn: Callable[..., object]) -> inspect.Signature:
    return inspect.signature(fn, eval_str=True)


def _check_method(backend: type, name: str, wanted: Callable[..., object]) -> list[str]:
    problems: list[str] = []
    found = inspect.getattr_static(backend, name, None)
    if not inspect.isfunction(found):
        return [f"{name}: missing, or not a plain method ({found!r})"]
    if inspect.iscoroutinefunction(wanted) != inspect.iscoroutinefunction(found):
        problems.append(f"{name}: {'a coroutine' if inspect.iscoroutinefunction(wanted) else 'not a coroutine'} in the contract")
    want, have = _signature(wanted), _signature(found)
    if want.return_annotation != have.return_annotation:
        problems.append(f"{name}: returns {have.return_annotation}, the contract {want.return_annotation}")
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    want_order = [p.name for p in want.parameters.values() if p.kind in positional]
    have_order = [p.name for p in have.parameters.values() if p.kind in positional]
    if have_order[: len(want_order)] != want_order:
        problems.append(f"{name}: positional parameters {have_order}, the contract {want_order}")
    for p in want.parameters.values():
        q = have.parameters.get(p.name)
        if q is None:
            problems.append(f"{name}: no parameter {p.name!r}")
            continue
        if q.kind != p.kind:
            problems.append(f"{name}({p.name}): {q.kind.description}, the contract {p.kind.description}")
        if p.name != "self" and q.annotation != p.annotation:
            problems.append(f"{name}({p.name}): {q.annotation}, the contract {p.annotation}")
        if p.default is not inspect.Parameter.empty and q.default != p.default:
            problems.append(f"{name}({p.name}): default {q.default!r}, the contract {p.default!r}")
    for q in have.parameters.values():
        extra = q.name not in want.parameters and q.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        if extra and q.default is inspect.Parameter.empty:
            problems.append(f"{name}({q.name}): required, and the core never passes it")
    return problems


@pytest.mark.parametrize(("backend", "make"), BACKENDS)
async def test_a_back_end_has_every_member_of_the_contract_with_its_signature(backend: type, make: Callable[[Path], object], tmp_path: Path) -> None:
    methods, properties, attributes = contract()
    problems: list[str] = []
    for name, wanted in methods.items():
        problems += _check_method(backend, name, wanted)
    for name, wanted_property in properties.items():
        found = inspect.getattr_static(backend, name, None)
        if not isinstance(found, property) or found.fget is None:
            problems.append(f"{name}: not a property ({found!r})")
        elif _signature(found.fget).return_annotation != _signature(wanted_property.fget).return_annotation:
            problems.append(f"{name}: a property of another type")
    store = make(tmp_path)
    try:
        for name, kind in attributes.items():
            if not isinstance(getattr(store, name, None), kind):
                problems.append(f"{name}: no {kind.__name__} attribute on a new store")
        assert not problems, f"{backend.__module__}.{backend.__qualname__} breaks the storage contract:\n" + "\n".join(problems)
        assert isinstance(store, Store)
    finally:
        await store.close()


# --- what the core calls on a store ---------------------------------------------------------------

CORE = ("intake.py", "dispatch.py", "daemon.py", "server.py", "commands.py", "commands_journal.py", "replay.py", "metrics.py", "reload.py")
SQLITE_ONLY = {("daemon.py", "_watch_outbox", "data_version"), ("server.py", "_plan_replay", "path"), ("server.py", "_plan_replay", "target")}
# and where the daemon wires the PostgreSQL back end's own parts (its lanes, its listener)
SQLITE_ONLY |= {("daemon.py", "serve", name) for name in ("open", "listen", "target", "on_claim")}
"""Where the core uses what only the SQLite back end has, on purpose; the PostgreSQL one differs there."""


def _store_uses(source: str) -> set[tuple[str, str]]:
    """(enclosing function, member) of every ``outbox.X``, ``self._outbox.X`` and ``app[OUTBOX].X``."""
    uses: set[tuple[str, str]] = set()

    def is_store(node: ast.expr) -> bool:
        if isinstance(node, ast.Name):
            return node.id == "outbox"
        if isinstance(node, ast.Attribute):
            return node.attr == "_outbox" and isinstance(node.value, ast.Name) and node.value.id == "self"
        if isinstance(node, ast.Subscript):
            return isinstance(node.slice, ast.Name) and node.slice.id == "OUTBOX"
        return False

    def visit(node: ast.AST, function: str) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            function = node.name
        if isinstance(node, ast.Attribute) and is_store(node.value):
            uses.add((function, node.attr))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "setattr" and node.args and is_store(node.args[0]):
            if len(node.args) > 1 and isinstance(node.args[1], ast.Constant):
                uses.add((function, str(node.args[1].value)))
        for child in ast.iter_child_nodes(node):
            visit(child, function)

    visit(ast.parse(source), "<module>")
    return uses


def test_the_core_calls_nothing_on_a_store_beyond_the_contract() -> None:
    methods, properties, attributes = contract()
    members = set(methods) | set(properties) | set(attributes)
    package = Path(figrelay.__file__).parent
    outside: list[str] = []
    used: set[str] = set()
    for module in CORE:
        for function, member in _store_uses((package / module).read_text(encoding="utf-8")):
            used.add(member)
            if member not in members and (module, function, member) not in SQLITE_ONLY:
                outside.append(f"figrelay/{module}: {function} uses outbox.{member}, which Store does not list")
    assert not outside, "\n".join(sorted(outside))
    assert members <= used, f"Store lists members the core never uses: {sorted(members - used)}"
