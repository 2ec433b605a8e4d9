"""Plugin loading: entry points, restriction, broken plugins, and documented hooks."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from figrelay import hookspecs
from figrelay.delivery import ClientOptions, ClientType, Delivered
from figrelay.hookspecs import hookimpl
from figrelay.plugins import load_plugins

REPO = Path(__file__).resolve().parent.parent


def test_builtin_plugins_come_from_entry_points():
    registry = load_plugins()
    assert {"http", "log"} <= set(registry.client_types)
    by_name = {p.name: p for p in registry.plugins}
    assert by_name["http"].distribution == "figrelay-http" and by_name["http"].client_types == ("http",)
    assert by_name["log"].distribution == "figrelay-log"
    assert registry.failures == []


def test_figrelay_plugins_restricts_loading(monkeypatch):
    monkeypatch.setenv("FIGRELAY_PLUGINS", "log")
    assert load_plugins().type_names() == ["log"]
    monkeypatch.setenv("FIGRELAY_PLUGINS", "")
    assert load_plugins().type_names() == []
    monkeypatch.setenv("FIGRELAY_PLUGINS", "log,nosuch")
    registry = load_plugins()
    assert registry.type_names() == ["log"]
    assert [f.plugin for f in registry.failures] == ["nosuch"]


class _Options(ClientOptions):
    pass


class _Target:
    def __init__(self, context):
        pass

    async def deliver(self, delivery):
        return Delivered()

    async def aclose(self):
        pass


class DuplicateHttp:
    @hookimpl
    def figrelay_client_types(self, register):
        register(ClientType("http", _Options, _Target))
        register(ClientType("extra", _Options, _Target))


class Raises:
    @hookimpl
    def figrelay_client_types(self, register):
        raise RuntimeError("boom")


class Misspelled:
    @hookimpl
    def figrelay_client_type(self, register):  # no such hook
        pass


def test_a_bad_plugin_is_reported_and_the_others_load():
    registry = load_plugins([("dup", DuplicateHttp()), ("raises", Raises()), ("misspelled", Misspelled())])
    assert {"http", "log", "extra"} <= set(registry.client_types)
    assert registry.client_types["http"].options is not _Options  # the first registration wins
    errors = "\n".join(f"{f.plugin}: {f.error}" for f in registry.failures)
    assert "dup: client type 'http' is already provided by another plugin" in errors
    assert "raises: figrelay_client_types failed: RuntimeError: boom" in errors
    assert "figrelay_client_type" in errors


def test_a_plugin_that_fails_to_import_does_not_take_the_others_down(tmp_path):
    dist = tmp_path / "figrelay_broken-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: figrelay-broken\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[figrelay]\nbroken = figrelay_broken\n")
    (tmp_path / "figrelay_broken.py").write_text("raise ImportError('needs libfoo')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "figrelay", "plugins"], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 1
    assert "FAILED broken: cannot import figrelay_broken: ImportError: needs libfoo" in result.stderr
    assert "http" in result.stdout and "log" in result.stdout


def test_every_hook_is_documented():
    docs = (REPO / "docs" / "plugins.md").read_text()
    hooks = [name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("figrelay_")]
    assert hooks
    for name in hooks:
        assert f"### {name}(" in docs, f"hook {name} is not documented in docs/plugins.md"
        assert getattr(hookspecs, name).__doc__, f"hook {name} has no docstring"


def test_plugin_tutorial_example_registers_a_working_type(tmp_path):
    """The docs' example plugin is real code: it imports and registers."""
    docs = (REPO / "docs" / "plugins.md").read_text()
    code = docs.split("`figrelay_pager.py`:\n\n```python\n", 1)[1].split("```", 1)[0]
    module = tmp_path / "figrelay_pager.py"
    module.write_text(code)
    sys.path.insert(0, str(tmp_path))
    try:
        import figrelay_pager  # type: ignore[import-not-found]

        registry = load_plugins([("pager", figrelay_pager)], entry_points=False)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("figrelay_pager", None)
    assert registry.type_names() == ["pager"] and registry.failures == []
    assert textwrap.dedent(code).count("SecretStr") >= 2
