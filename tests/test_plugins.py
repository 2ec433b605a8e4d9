"""Plugin loading: entry points, restriction, broken plugins, plugin API versions, and the
context a target is opened with."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

from conftest import wait_until
from figrelay import PLUGIN_API, __version__
from figrelay.config import ConfigError, load_config
from figrelay.delivery import ClientOptions, ClientType, Delivered
from figrelay.hookspecs import hookimpl
from figrelay.plugins import client_context, load_plugins

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs" / "plugins.md"


def test_builtin_plugins_come_from_entry_points():
    registry = load_plugins()
    assert {"http", "log"} <= set(registry.client_types)
    by_name = {p.name: p for p in registry.plugins}
    assert by_name["http"].distribution == "figrelay-http" and by_name["http"].client_types == ("http",)
    assert by_name["log"].distribution == "figrelay-log"
    assert registry.failures == []
    assert {p.name: p.api for p in registry.plugins if p.distribution in ("figrelay-http", "figrelay-log")} == {"http": (1,), "log": (1,)}


def test_figrelay_plugins_restricts_loading(monkeypatch):
    monkeypatch.setenv("FIGRELAY_PLUGINS", "log")
    assert load_plugins().type_names() == ["log"]
    monkeypatch.setenv("FIGRELAY_PLUGINS", "")
    assert load_plugins().type_names() == []
    monkeypatch.setenv("FIGRELAY_PLUGINS", " , ")
    assert load_plugins().type_names() == [] and load_plugins().failures == []
    monkeypatch.setenv("FIGRELAY_PLUGINS", "log, nosuch")
    registry = load_plugins()
    assert registry.type_names() == ["log"]
    assert [f.plugin for f in registry.failures] == ["nosuch"]
    assert re.fullmatch(
        r"FIGRELAY_PLUGINS names 'nosuch', which is not installed \(installed plugins: [a-z, ]*\blog\b[a-z, ]*\); "
        r"install it, or take it out of FIGRELAY_PLUGINS",
        registry.failures[0].error,
    ), registry.failures[0].error


def test_figrelay_plugins_output_in_the_docs_is_what_figrelay_prints():
    docs = DOCS.read_text(encoding="utf-8")
    block = docs.split("<!-- figrelay plugins: FIGRELAY_PLUGINS=log -->\n```console\n", 1)[1].split("```", 1)[0]
    command, shown = block.split("\n", 1)
    assert command == "$ FIGRELAY_PLUGINS=log figrelay plugins"
    result = figrelay("plugins", env={"FIGRELAY_PLUGINS": "log"})
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert result.stdout == shown, "docs/plugins.md shows other output for `FIGRELAY_PLUGINS=log figrelay plugins` than figrelay prints"


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


# --- plugin API versions ----------------------------------------------------------------------


def figrelay(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "figrelay", *args], capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})}, cwd=cwd,
    )


def plugin_module(name: str, api: object = None, type_name: str | None = None) -> types.ModuleType:
    """A plugin module registering one client type, declaring ``api`` unless it is None."""
    module = types.ModuleType(f"figrelay_{name}")
    if api is not None:
        module.FIGRELAY_PLUGIN_API = api  # type: ignore[attr-defined]

    @hookimpl
    def figrelay_client_types(register):
        register(ClientType(type_name or name, _Options, _Target))

    module.figrelay_client_types = figrelay_client_types  # type: ignore[attr-defined]
    return module


def incompatible(plugin: str, where: str, release: str, api: int) -> str:
    return (
        f"plugin {plugin!r}{where} supports figrelay plugin API {api}; this figrelay ({__version__}) has plugin API {PLUGIN_API}: "
        f"install a figrelay release with plugin API {api}, or {release} that supports API {PLUGIN_API}"
    )


def test_a_plugin_for_another_api_is_reported_and_not_loaded():
    newer = PLUGIN_API + 1
    registry = load_plugins([("pager", plugin_module("pager", (newer,))), ("other", plugin_module("other", newer))])
    assert "pager" not in registry.client_types and "other" not in registry.client_types
    assert {"http", "log"} <= set(registry.client_types), "the other plugins still load"
    assert [(f.plugin, f.error) for f in registry.failures] == [
        ("pager", incompatible("pager", "", "a version of plugin 'pager'", newer)),
        ("other", incompatible("other", "", "a version of plugin 'other'", newer)),
    ]
    assert "pager" not in {p.name for p in registry.plugins}


def test_a_plugin_for_several_apis_loads_when_one_is_this_one():
    registry = load_plugins([("both", plugin_module("both", (PLUGIN_API, PLUGIN_API + 1))), ("one", plugin_module("one", PLUGIN_API))], entry_points=False)
    assert registry.failures == [] and registry.type_names() == ["both", "one"]
    assert {p.name: p.api for p in registry.plugins} == {"both": (PLUGIN_API, PLUGIN_API + 1), "one": (PLUGIN_API,)}
    registry = load_plugins([("old", plugin_module("old", [PLUGIN_API + 2, PLUGIN_API + 1]))], entry_points=False)
    assert "plugin APIs 2 and 3" in registry.failures[0].error and "with plugin API 2 or 3," in registry.failures[0].error


def test_an_undeclared_plugin_loads_as_undeclared():
    registry = load_plugins([("plain", plugin_module("plain"))], entry_points=False)
    assert registry.failures == [] and registry.type_names() == ["plain"]
    assert registry.plugins[0].api is None


@pytest.mark.parametrize("declared", ["1", (), True, (1, "2"), 1.0, 0])
def test_a_malformed_declaration_says_how_to_write_it(declared):
    registry = load_plugins([("odd", plugin_module("odd", declared))], entry_points=False)
    assert registry.type_names() == []
    assert registry.failures[0].error == (
        f"plugin 'odd' is not loaded: FIGRELAY_PLUGIN_API = {declared!r} is not a plugin API version: declare an int such as "
        f"FIGRELAY_PLUGIN_API = {PLUGIN_API}, or a tuple of them such as ({PLUGIN_API}, {PLUGIN_API + 1})"
    )


def install_plugin(folder: Path, distribution: str, version: str, entry_point: str, source: str) -> None:
    """A plugin distribution as pip would leave it: its module and a dist-info with the entry
    point (found through PYTHONPATH=folder)."""
    module = distribution.replace("-", "_")
    info = folder / f"{module}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[figrelay]\n{entry_point} = {module}\n")
    (folder / f"{module}.py").write_text(textwrap.dedent(source))


PLUGIN_SOURCE = """
from figrelay.delivery import ClientOptions, ClientType, Delivered
from figrelay.hookspecs import hookimpl
{declaration}

class Target:
    def __init__(self, context):
        pass

    async def deliver(self, delivery):
        return Delivered()

    async def aclose(self):
        pass


@hookimpl
def figrelay_client_types(register):
    register(ClientType({type!r}, ClientOptions, Target, description="a test plugin"))
"""


def test_an_installed_plugin_for_another_api_is_reported_by_plugins_and_check(tmp_path):
    plugins = tmp_path / "site"
    install_plugin(plugins, "figrelay-pager", "0.3.0", "pager", PLUGIN_SOURCE.format(declaration=f"FIGRELAY_PLUGIN_API = {PLUGIN_API + 1}", type="pager"))
    install_plugin(plugins, "figrelay-both", "1.0", "both", PLUGIN_SOURCE.format(declaration=f"FIGRELAY_PLUGIN_API = ({PLUGIN_API}, {PLUGIN_API + 1})", type="both"))
    install_plugin(plugins, "figrelay-plain", "2.0", "plain", PLUGIN_SOURCE.format(declaration="", type="plain"))
    env = {"PYTHONPATH": str(plugins)}
    message = incompatible("pager", " (figrelay-pager 0.3.0)", "a release of figrelay-pager", PLUGIN_API + 1)

    listed = figrelay("plugins", env=env)
    assert listed.returncode == 1, "a plugin that did not load is a failure of `figrelay plugins`"
    assert listed.stderr.strip() == f"FAILED pager: {message}", "reported once, without a traceback"
    rows = {line.split()[0]: line.split(None, 3)[3] for line in listed.stdout.splitlines() if line.startswith(("both ", "plain ", "http "))}
    assert re.fullmatch(rf"{PLUGIN_API}, {PLUGIN_API + 1} +both", rows["both"])
    assert re.fullmatch(r"undeclared +plain", rows["plain"]) and re.fullmatch(rf"{PLUGIN_API} +http", rows["http"])
    assert f"\nAPI undeclared: plain (assumed to work with plugin API {PLUGIN_API}; " in listed.stdout
    assert not re.search(r"(?m)^pager[ :]", listed.stdout), "an incompatible plugin is not loaded, and its type not offered"
    docs = DOCS.read_text(encoding="utf-8")
    shown = docs.split("<!-- figrelay plugins: incompatible -->\n```console\n", 1)[1].split("```", 1)[0]
    if PLUGIN_API == 1 and __version__ == "0.1.0":  # the example in the docs is for these
        assert shown == listed.stderr.strip() + "\n", "docs/plugins.md shows another message than figrelay prints"

    uses_log = tmp_path / "log.yaml"
    uses_log.write_text("intake:\n  secret: s3cret\nclients:\n  - {name: console, type: log}\nhooks:\n  - {event: SecurityEvent, client: console}\n")
    checked = figrelay("check", "--config", str(uses_log), env=env)
    assert checked.returncode == 0, "a plugin problem alone does not make a configuration invalid"
    assert checked.stderr == f"warning: plugin pager: {message}\n"

    uses_pager = tmp_path / "pager.yaml"
    uses_pager.write_text("intake:\n  secret: s3cret\nclients:\n  - {name: oncall, type: pager}\nhooks:\n  - {event: SecurityEvent, client: oncall}\n")
    checked = figrelay("check", "--config", str(uses_pager), env=env)
    assert checked.returncode == 1
    lines = checked.stderr.splitlines()
    assert lines[0] == f"warning: plugin pager: {message}"
    assert f"{uses_pager}:4: clients[0].type: unknown client type 'pager'" in checked.stderr
    assert lines[-1].startswith("note: 1 plugin problem above: the client types of a plugin that did not load are unknown until it is fixed")


# --- the context a target is opened with ------------------------------------------------------

FILE_PLUGIN = """
from pathlib import Path

from figrelay.delivery import ClientContext, ClientOptions, ClientType, Delivered, Delivery, Outcome
from figrelay.hookspecs import hookimpl

FIGRELAY_PLUGIN_API = 1


class FileOptions(ClientOptions):
    path: str


class FileTarget:
    def __init__(self, context: ClientContext) -> None:
        self.path: Path = context.resolve_path(context.options.path)

    async def deliver(self, delivery: Delivery) -> Outcome:
        with self.path.open("ab") as f:
            f.write(delivery.body + b"\\n")
        return Delivered(f"appended to {self.path}")

    async def aclose(self) -> None:
        pass


@hookimpl
def figrelay_client_types(register):
    register(ClientType("file", FileOptions, FileTarget, description="append each event to a file"))
"""


def test_the_context_knows_the_configuration_folder(tmp_path):
    conf = tmp_path / "etc"
    conf.mkdir()
    path = conf / "figrelay.yaml"
    path.write_text("state_dir: ../var\nintake:\n  secret: s3cret\nclients:\n  - {name: console, type: log}\nhooks:\n  - {event: SecurityEvent, client: console}\n")
    config = load_config(path, load_plugins())
    context = client_context(config, "console", None)  # type: ignore[arg-type]  # the log type needs no HTTP
    assert context.name == "console" and context.logger.name == "figrelay.client.console"
    assert context.config_dir == conf.resolve() and context.state_dir.resolve() == (tmp_path / "var").resolve()
    assert context.resolve_path("out.jsonl") == conf.resolve() / "out.jsonl"
    assert context.resolve_path("/srv/out.jsonl") == Path("/srv/out.jsonl")
    assert context.resolve_path("~/out.jsonl") == Path.home() / "out.jsonl"


def test_a_relative_ca_file_is_found_from_the_configuration_folder(tmp_path, monkeypatch):
    # the http and email types' ca_file, checked at load (figrelay check) and opened at run time:
    # both take a relative path from the config's folder, not from wherever figrelay runs
    conf, elsewhere = tmp_path / "etc", tmp_path / "elsewhere"
    conf.mkdir()
    elsewhere.mkdir()
    (conf / "ca.pem").write_bytes(Path("/etc/ssl/certs/ca-certificates.crt").read_bytes())
    path = conf / "figrelay.yaml"
    clients = (
        "  - {name: siem, type: http, base_uri: 'https://siem.example.com/', ca_file: ca.pem}\n"
        "  - {name: mail, type: email, host: smtp.example.com, from: relay@example.com, to: [ops@example.com], ca_file: ca.pem}\n"
    )
    path.write_text(f"intake:\n  secret: s3cret\nclients:\n{clients}hooks:\n  - {{event: SecurityEvent, client: siem}}\n")
    monkeypatch.chdir(elsewhere)
    config = load_config(path, load_plugins())
    assert config.clients["siem"].options.ca_file == config.clients["mail"].options.ca_file == str(conf.resolve() / "ca.pem")

    path.write_text(path.read_text().replace("ca_file: ca.pem}", "ca_file: missing.pem}"))
    with pytest.raises(ConfigError) as failed:
        load_config(path, load_plugins())
    assert any(f"clients[0].ca_file: {conf.resolve() / 'missing.pem'}: no such file" in str(p) for p in failed.value.problems), failed.value.problems


def test_a_context_built_by_a_plugins_own_tests_still_works():
    """Plugins' tests build ClientContext with the fields of the first release: still valid."""
    from figrelay.delivery import ClientContext

    context = ClientContext("ops", None, None, None, Path("/state"))  # type: ignore[arg-type]
    assert context.config_dir == Path(".") and context.resolve_path("out.jsonl") == Path("out.jsonl")


def test_figrelay_test_resolves_a_relative_path_option_from_the_config_folder(tmp_path):
    install_plugin(tmp_path / "site", "figrelay-file", "1.0", "file", FILE_PLUGIN)
    conf, elsewhere = tmp_path / "conf", tmp_path / "elsewhere"
    conf.mkdir()
    elsewhere.mkdir()
    path = conf / "figrelay.yaml"
    path.write_text("intake:\n  secret: s3cret\nclients:\n  - {name: filer, type: file, path: out.jsonl}\nhooks:\n  - {event: SecurityEvent, client: filer}\n")
    result = figrelay("test", "filer", "--config", str(path), env={"PYTHONPATH": str(tmp_path / "site")}, cwd=elsewhere)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not (elsewhere / "out.jsonl").exists(), "a relative path is not taken from the working folder"
    written = (conf / "out.jsonl").read_text().splitlines()
    assert len(written) == 7 and all(json.loads(line)["IsTest"] is True for line in written)
    assert f"appended to {conf.resolve() / 'out.jsonl'}" in result.stdout


async def test_the_daemon_resolves_a_relative_path_option_from_the_config_folder(tmp_path, daemon_factory):
    install_plugin(tmp_path / "site", "figrelay-file", "1.0", "file", FILE_PLUGIN)
    (tmp_path / "conf").mkdir()
    name = f"out-{os.getpid()}-{tmp_path.name}.jsonl"  # unique: a wrong resolution would write it into the working folder
    config = f"""
listen: 127.0.0.1:0
state_dir: ../state
intake:
  secret: s3cret
clients:
  - {{name: filer, type: file, path: {name}}}
hooks:
  - {{event: SecurityEvent, client: filer}}
"""
    written = tmp_path / "conf" / name
    try:
        d = await daemon_factory(config, env={"PYTHONPATH": str(tmp_path / "site")}, name="conf/figrelay.yaml")
        body = json.dumps({"EventType": "Login", "Username": "alice", "Success": False, "IsTest": False}).encode()
        status, payload = await d.post("SecurityEvent", body, {"Authorization": "Secret s3cret"})
        assert status == 200, payload
        await wait_until(lambda: written.exists() and written.read_bytes().endswith(b"\n"), what=f"the delivery written to {written}")
        assert json.loads(written.read_bytes())["Username"] == "alice"
    finally:
        stray = Path.cwd() / name
        if stray.exists():
            stray.unlink()
            pytest.fail(f"the file plugin wrote {stray}, in the daemon's working folder, not next to the configuration")
