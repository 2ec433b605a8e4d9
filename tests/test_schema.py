"""figrelay schema: a JSON Schema of the configuration that a real validator (jsonschema) reads the
way ``figrelay check`` does. The example configuration and each of its commented examples pass it;
configurations check rejects are rejected at the same key; every configuration of the test suite
that check accepts passes it; its patterns accept what the parsers accept; its descriptions are
the docstrings and the README's words; a plugin's client type appears under its ``type``.

Where the schema is looser than check by design (a hook's client naming a defined client, a regex
that compiles, a bound on a duration written as text), no test asks it to agree: see the module
docstring of figrelay/schema.py and README.md, "Editor support".
"""

from __future__ import annotations

import ast
import copy
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pytest
import yaml
from hypothesis import example, given, settings
from hypothesis import strategies as st
from jsonschema import Draft7Validator, Draft202012Validator
from pydantic import ConfigDict, SecretStr
from test_example_config import EXAMPLE, storage_forms, uncommented_examples

from conftest import REPO
from figrelay import __version__
from figrelay.config import (
    ConfigError,
    DeliverySettings,
    IntakeSettings,
    JournalSettings,
    Listener,
    Problem,
    StorageSettings,
    _ClientCoreModel,
    _HookModel,
    _TopModel,
    load_config,
)
from figrelay.delivery import ClientOptions, ClientType
from figrelay.durations import Duration, parse_duration
from figrelay.events import ROUTES
from figrelay.hookspecs import hookimpl
from figrelay.plugins import PluginRegistry, load_plugins
from figrelay.schema import (
    DIALECT,
    DURATION_PATTERN,
    KEY_DESCRIPTIONS,
    LISTEN_PATTERN,
    REFINEMENTS,
    SIZE_PATTERN,
    attribute_docstrings,
    build_schema,
)
from figrelay.sizes import parse_size

FIG_HASH = "$2a$11$3xvQfzPYHvedNwRz.DWX8ecezdoiarEEuvAjL9BxBiUiPZ9BC/oYC"
BASE: dict[str, Any] = {
    "clients": [{"name": "console", "type": "log"}],
    "hooks": [{"event": "ClientStatusChanged", "client": "console"}],
}


@pytest.fixture(scope="module")
def registry() -> PluginRegistry:
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("FIGRELAY_PLUGINS", raising=False)
        registry = load_plugins()
    assert not registry.failures, registry.failures
    return registry


@pytest.fixture(scope="module")
def schema(registry: PluginRegistry) -> dict[str, Any]:
    document, problems = build_schema(registry)
    assert problems == []
    return document


@pytest.fixture(scope="module")
def validator(schema: dict[str, Any]) -> Draft202012Validator:
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


@pytest.fixture(scope="module")
def validator7(schema: dict[str, Any]) -> Draft7Validator:
    """The schema read as draft-07, as the YAML language server reads every schema (it also checks
    a schema against draft-07's meta-schema before using it)."""
    Draft7Validator.check_schema(schema)
    return Draft7Validator(schema)


def schema_errors(validator: Draft202012Validator | Draft7Validator, data: Any) -> list[str]:
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(data)]


def key_path(key: str) -> tuple[str | int, ...]:
    """("clients", 0, "type") from check's ``clients[0].type``."""
    return tuple(int(part[1:-1]) if part.startswith("[") else part for part in re.findall(r"\[\d+\]|[^.\[\]]+", key))


def check(tmp_path: Path, data: Any, registry: PluginRegistry, name: str = "figrelay.yaml") -> list[Problem]:
    """What ``figrelay check`` finds wrong with ``data``, written as YAML: [] when it is valid."""
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    try:
        load_config(path, registry)
    except ConfigError as exc:
        return exc.problems
    return []


def rejects_at(validator: Draft202012Validator | Draft7Validator, data: Any, path: tuple[str | int, ...]) -> bool:
    """Whether the schema finds a mistake at ``path``: there, or in the mapping that holds it,
    naming its key (an unknown key, a missing one)."""
    for error in validator.iter_errors(data):
        at = tuple(error.absolute_path)
        if at == path or (at == path[:-1] and repr(path[-1]) in error.message):
            return True
        # jsonschema places a key refused by a false schema ("setting_regex": false) on its
        # mapping (editors place it on the key): the error holds the key's value
        if at == path[:-1] and error.validator is None and isinstance(error.instance, type(_at(data, path))) and error.instance == _at(data, path):
            return True
    return False


def _at(data: Any, path: tuple[str | int, ...]) -> Any:
    for part in path:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return None
    return data


# --- the document ----------------------------------------------------------------------------------


def test_the_schema_is_draft_2020_12_and_says_what_made_it(schema, registry):
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == DIALECT == "https://json-schema.org/draft/2020-12/schema"
    assert f"figrelay {__version__}" in schema["title"]
    for name in registry.type_names():
        assert name in schema["title"]
    for plugin in registry.plugins:
        assert f"{plugin.name} ({plugin.distribution} {plugin.version})" in schema["description"]


def _keywords(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key != "properties":
                yield key
            yield from _keywords(value) if key != "properties" else (k for v in value.values() for k in _keywords(v))
    elif isinstance(node, list):
        for item in node:
            yield from _keywords(item)


def test_the_schema_uses_only_what_the_yaml_language_server_checks(schema):
    """The YAML language server validates draft-07's keywords: a 2019-09/2020-12 keyword would be
    ignored there, and the editor would miss the mistake it was meant to catch."""
    ignored = {"unevaluatedProperties", "unevaluatedItems", "dependentSchemas", "dependentRequired", "prefixItems", "$dynamicRef", "$anchor"}
    assert not ignored & set(_keywords(schema))


# --- the example configuration -----------------------------------------------------------------------


def test_the_example_configuration_names_the_schema_and_passes_it(validator, validator7):
    text = EXAMPLE.read_text()
    assert text.splitlines()[0] == "# yaml-language-server: $schema=figrelay.schema.json"
    assert "figrelay schema --output figrelay.schema.json" in text
    for reader in (validator, validator7):
        assert schema_errors(reader, yaml.safe_load(text)) == []


def test_every_commented_example_passes_the_schema(validator, validator7):
    text = EXAMPLE.read_text()
    data = yaml.safe_load(uncommented_examples(text))
    assert {c["type"] for c in data["clients"]} >= {"log", "http", "slack", "teams", "email"}
    for reader in (validator, validator7):
        assert schema_errors(reader, data) == []
        for form in storage_forms(text):
            with_storage = yaml.safe_load(text.replace("state_dir: ./state\n", "state_dir: ./state\n" + form + "\n", 1))
            assert "storage" in with_storage
            assert schema_errors(reader, with_storage) == []


# --- rejected as figrelay check rejects ------------------------------------------------------------------


def _with(**changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(BASE)
    data.update(changes)
    return data


def _client(**keys: Any) -> dict[str, Any]:
    return _with(clients=[{"name": "console", **keys}])


def _hook(**keys: Any) -> dict[str, Any]:
    return _with(hooks=[{"client": "console", **keys}])


BAD: dict[str, tuple[dict[str, Any], str]] = {
    "unknown top-level key": (_with(listn="127.0.0.1:8970"), "listn"),
    "unknown intake key": (_with(intake={"secrett": "x"}), "intake.secrett"),
    "text for a number": (_with(intake={"max_body_bytes": "lots"}), "intake.max_body_bytes"),
    "list for a number": (_with(delivery={"circuit_open_after": [1]}), "delivery.circuit_open_after"),
    "text for a boolean": (_with(intake={"forward_test_events": "maybe"}), "intake.forward_test_events"),
    "unknown log level": (_with(log_level="loud"), "log_level"),
    "mapping for the hooks": (_with(hooks={"event": "ClientStatusChanged"}), "hooks"),
    "duration in words": (_with(delivery={"max_age": "5 minutes"}), "delivery.max_age"),
    "negative duration": (_with(delivery={"shutdown_timeout": "-5s"}), "delivery.shutdown_timeout"),
    "duration out of bounds": (_with(intake={"header_timeout": 601}), "intake.header_timeout"),
    "ambiguous size": (_with(journal={"max_bytes": "256M"}), "journal.max_bytes"),
    "journal too small": (_with(journal={"max_bytes": 256}), "journal.max_bytes"),
    "listen without a port": (_with(listen="localhost"), "listen"),
    "listen on port 70000": (_with(listen="127.0.0.1:70000"), "listen"),
    "storage in MySQL": (_with(storage="mysql://db.example.com/figrelay"), "storage"),
    "hashed secret that is no hash": (_with(intake={"hashed_secret": "hunter2"}), "intake.hashed_secret"),
    "client without a name": (_with(clients=[{"type": "log"}]), "clients[0].name"),
    "blank client name": (_with(clients=[{"name": " ", "type": "log"}]), "clients[0].name"),
    "unknown client type": (_client(type="htp"), "clients[0].type"),
    "unknown client option": (_client(type="log", colour="red"), "clients[0].colour"),
    "option of another type": (_client(type="log", webhook_url="https://hooks.slack.com/services/T/B/X"), "clients[0].webhook_url"),
    "bad option value": (_client(type="log", format="xml"), "clients[0].format"),
    "required option missing": (_client(type="email", host="smtp.example.com", **{"from": "fig@example.com"}), "clients[0].to"),
    "client in flight 0": (_client(type="log", max_in_flight=0), "clients[0].max_in_flight"),
    "plugin timeout out of bounds": (_client(type="slack", webhook_url="https://hooks.slack.com/services/T/B/X", timeout=601), "clients[0].timeout"),
    "template on a client that sends events as they are": (_client(type="log", title="{{ ClientName }}"), "clients[0].title"),
    "unknown event": (_hook(event="SettingValueChange"), "hooks[0].event"),
    "hook without a client": (_with(hooks=[{"event": "ClientStatusChanged"}]), "hooks[0].client"),
    "unknown hook key": (_hook(event="ClientStatusChanged", clientregex=".*"), "hooks[0].clientregex"),
    "setting_regex off SettingValueChanged": (_hook(event="ClientStatusChanged", setting_regex="Timeout$"), "hooks[0].setting_regex"),
    "blank setting_regex": (_hook(event="SettingValueChanged", setting_regex=""), "hooks[0].setting_regex"),
    "min_sessions off MinRunSessions": (_hook(event="SettingValueChanged", min_sessions=2), "hooks[0].min_sessions"),
    "min_sessions 0": (_hook(event="MinRunSessions", min_sessions=0), "hooks[0].min_sessions"),
}


def test_the_base_of_the_bad_configurations_is_valid(tmp_path, registry, validator):
    assert check(tmp_path, BASE, registry) == []
    assert schema_errors(validator, BASE) == []


@pytest.mark.parametrize("case", list(BAD))
def test_the_schema_rejects_what_check_rejects_at_the_same_key(case, tmp_path, registry, validator, validator7):
    data, key = BAD[case]
    problems = check(tmp_path, data, registry)
    assert key in [p.key for p in problems], problems
    for reader in (validator, validator7):
        assert rejects_at(reader, data, key_path(key)), f"the schema takes {key} in {data}: {schema_errors(reader, data)}"


def test_a_reference_is_taken_wherever_a_value_goes(tmp_path, registry, validator, monkeypatch):
    """figrelay substitutes ${...} before it checks a value: a number, a boolean, a choice or a
    duration may come from the environment, and the schema cannot know what it will hold."""
    values = {"LISTEN": "127.0.0.1:8971", "FORWARD": "true", "MAX_BODY": "2048", "REGEX_TIMEOUT": "10ms", "LEVEL": "debug",
              "IN_FLIGHT": "4", "JOURNAL": "512MB", "FORMAT": "json", "MINIMUM": "3", "EVENT": "MinRunSessions"}
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    data = {
        "listen": "${LISTEN}",
        "log_level": "${LEVEL}",
        "intake": {"forward_test_events": "${FORWARD}", "max_body_bytes": "${MAX_BODY}", "regex_timeout": "${REGEX_TIMEOUT}",
                   "max_connections": "${CONNECTIONS:-500}"},
        "delivery": {"max_in_flight": "${IN_FLIGHT}", "max_age": "${MAX_AGE:-12h}"},
        "journal": {"max_bytes": "${JOURNAL}"},
        "clients": [{"name": "console", "type": "log", "format": "${FORMAT}", "max_in_flight": "${IN_FLIGHT}"}],
        "hooks": [{"event": "${EVENT}", "client": "console", "min_sessions": "${MINIMUM}"}],
    }
    assert check(tmp_path, data, registry) == []
    assert schema_errors(validator, data) == []
    # a reference does not make a client's type every type at once: its keys are then not checked
    data["clients"][0] = {"name": "console", "type": "${TYPE:-log}", "format": "json"}
    assert schema_errors(validator, data) == []


# --- accepted as figrelay check accepts -------------------------------------------------------------------


def _configurations_in_the_tests() -> Iterator[tuple[str, str]]:
    """Every YAML configuration written out as a literal in the suite's tests and the plugins'."""
    files = sorted((REPO / "tests").glob("test_*.py")) + sorted((REPO / "plugins").glob("*/tests/test_*.py"))
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.Constant) and isinstance(node.value, str) and ("clients:" in node.value or "hooks:" in node.value)):
                continue
            text = textwrap.dedent(node.value).lstrip("\n")
            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError:
                continue
            if isinstance(data, dict) and ("clients" in data or "hooks" in data):
                yield f"{path.relative_to(REPO)}:{node.lineno}", text


def test_every_configuration_of_the_suite_that_check_accepts_passes_the_schema(tmp_path, registry, validator, monkeypatch):
    """Property-style: the suite's configurations are many and varied (every client type, every
    hook filter, durations and sizes in all their spellings); none that check accepts may be
    marked wrong in an editor."""
    monkeypatch.chdir(tmp_path)
    accepted, disagreements = 0, []
    for where, text in _configurations_in_the_tests():
        if check(tmp_path, text, registry):
            continue  # it needs what the test set up around it (an environment variable, a file, a test plugin)
        accepted += 1
        errors = schema_errors(validator, yaml.safe_load(text))
        if errors:
            disagreements.append(f"{where}: {errors}")
    # most of the suite's configurations are f-strings (a receiver's port) and are not found here:
    # the generated configurations below go further
    assert accepted >= 15, f"only {accepted} configurations found in the tests: is the search still finding them?"
    assert disagreements == []


DURATIONS = st.one_of(
    st.integers(0, 600), st.floats(0, 600, allow_nan=False),
    st.sampled_from(["250ms", "30s", "5m", "1h30m", "1.5h", "10", "0.5", " 1h 30m ", "+5s", "10.", ".5", "2m30s", "${D:-30s}"]),
)
POSITIVE = DURATIONS.filter(lambda d: d not in (0, 0.0))
SIZES = st.sampled_from([1_000_000, "1MB", "256MB", "1GiB", "2 GB", " 512mib ", "1.5GB", "${J:-1GB}"])
SLACK_URL = "https://hooks.slack.com/services/T000/B000/XXXX"
TEAMS_URL = "https://prod-00.westeurope.logic.azure.com/workflows/abc/triggers/manual/paths/invoke?sig=x"


def _some(**options: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """A mapping holding any of these keys."""
    return st.fixed_dictionaries({}, optional=options)


CLIENT_OPTIONS: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "log": _some(format=st.sampled_from(["summary", "json"]), level=st.sampled_from(["debug", "info", "warning", "error"])),
    "http": st.fixed_dictionaries(
        {"base_uri": st.sampled_from(["https://siem.example.com/fig/", "http://127.0.0.1:9000", "${SIEM_URL:-https://r.example.com/}"])},
        optional={"secret": st.just("${SIEM_SECRET:-s}"), "headers": st.just({"X-Team": "platform"}), "timeout": POSITIVE},
    ),
    "slack": st.one_of(
        st.fixed_dictionaries({"webhook_url": st.sampled_from([SLACK_URL, "${SLACK_URL:-" + SLACK_URL + "}"])}),
        st.fixed_dictionaries({"token": st.just("xoxb-1234"), "channel": st.sampled_from(["C0123456789", "#ops"])}),
    ).flatmap(lambda base: _some(title=st.just("{{ message.title }}"), icon_emoji=st.just(":gear:")).map(lambda extra: {**base, **extra})),
    "teams": st.fixed_dictionaries({"webhook_url": st.just(TEAMS_URL)}, optional={"format": st.sampled_from(["adaptive", "messagecard"])}),
    "email": st.fixed_dictionaries(
        {"host": st.just("smtp.example.com"), "from": st.just("Fig <fig@example.com>"), "to": st.sampled_from(["ops@example.com", ["a@example.com", "b@example.com"]])},
        optional={"port": st.integers(1, 65535), "security": st.sampled_from(["starttls", "tls"]), "cc": st.just([]), "subject": st.just("[Fig] {{ message.title }}")},
    ),
}


@st.composite
def configurations(draw: st.DrawFn) -> dict[str, Any]:
    names = [f"c{i}" for i in range(draw(st.integers(1, 3)))]
    clients = []
    for name in names:
        type_name = draw(st.sampled_from(sorted(CLIENT_OPTIONS)))
        core = draw(_some(max_in_flight=st.integers(1, 1000), min_interval=st.sampled_from([0, 1, "1s", "500ms"]), coalesce=st.sampled_from([0, "10s", 30])))
        clients.append({"name": name, "type": type_name, **core, **draw(CLIENT_OPTIONS[type_name])})
    hooks = []
    for _ in range(draw(st.integers(0, 4))):
        event = draw(st.sampled_from(ROUTES))
        hook = {"event": event, "client": draw(st.sampled_from(names)), **draw(_some(client_regex=st.sampled_from([".*", "^Orders", "Api$", "${RE:-.*}"])))}
        if event == "SettingValueChanged":
            hook |= draw(_some(setting_regex=st.sampled_from(["Timeout$", ".*"])))
        if event == "MinRunSessions":
            hook |= draw(_some(min_sessions=st.integers(1, 5)))
        hooks.append(hook)
    data: dict[str, Any] = draw(_some(
        listen=st.sampled_from(["127.0.0.1:8970", "[::1]:0", "unix:/run/figrelay.sock", ["127.0.0.1:1", "unix:/x"], "localhost:65535"]),
        log_level=st.sampled_from(["debug", "info", "warning", "error", "${LOG_LEVEL:-info}"]),
        intake=_some(
            forward_test_events=st.booleans(), regex_timeout=st.sampled_from(["1ms", "5ms", 0.05, "100ms"]),
            max_body_bytes=st.integers(1024, 10**7), header_timeout=POSITIVE, body_timeout=POSITIVE, max_connections=st.integers(1, 10**6),
            hashed_secret=st.just(FIG_HASH),
        ),
        delivery=_some(
            max_age=DURATIONS, backoff_base=DURATIONS, backoff_max=DURATIONS, attempt_timeout=DURATIONS, shutdown_timeout=DURATIONS,
            circuit_open_after=st.integers(1, 100), max_in_flight=st.integers(1, 1000),
        ),
        journal=_some(enabled=st.booleans(), retention=POSITIVE, max_bytes=SIZES),
        state_dir=st.sampled_from(["./state", "${STATE_DIRECTORY:-/var/lib/figrelay}"]),
        storage=st.sampled_from([
            "postgresql://figrelay:${PGPASSWORD:-pw}@db.example.com:5432/figrelay?sslmode=verify-full",
            {"url": "postgres://db.example.com/figrelay", "lease": "15s"},
        ]),
    ))
    return {**data, "clients": clients, "hooks": hooks}


@settings(max_examples=60, deadline=None)
@given(configurations())
def test_every_generated_configuration_that_check_accepts_passes_the_schema(tmp_path_factory, registry, validator, data):
    """Property-style, over configurations of every client type, filter and value spelling."""
    if check(tmp_path_factory.mktemp("generated"), data, registry):
        return  # a combination check refuses (a hook's template on a client that takes none, ...): not this test's concern
    assert schema_errors(validator, data) == []


# --- the patterns: what the parsers take ---------------------------------------------------------------


def _takes(parse: Any, text: str) -> bool:
    try:
        parse(text)
    except ValueError:
        return False
    return True


@settings(deadline=None)
@given(st.text(alphabet="0123456789.smhd +-x", max_size=12))
@example("250ms")
@example("1h 30m")
@example("1.5h")
@example("+5s")
@example("10.")
@example(".5")
@example("5ms5s")
@example("5 minutes")
@example("1h-30m")
@example("5.s")
def test_the_duration_pattern_takes_what_parse_duration_takes(text):
    taken = _takes(parse_duration, text)
    if taken and text.replace(" ", "").startswith("-"):
        return  # "-0s": a negative zero, which the pattern refuses and nobody writes
    assert (re.search(DURATION_PATTERN, text) is not None) == taken, text


@settings(deadline=None)
@given(st.text(alphabet="0123456789. kKmMgGtTbBiI-x", max_size=10))
@example("256MB")
@example("512 MiB")
@example(" 1gb ")
@example("256M")
@example("1.5B")
def test_the_size_pattern_takes_what_parse_size_takes(text):
    try:
        parse_size(text)
        taken, why = True, ""
    except ValueError as exc:
        taken, why = False, str(exc)
    matched = re.search(SIZE_PATTERN, text) is not None
    # the pattern cannot see that 1.5B is no whole number of bytes: check says so
    assert matched == taken or (matched and "not a whole number of bytes" in why), (text, why)


@settings(deadline=None)
@given(st.text(alphabet="0123456789:.unix/ab[] ", max_size=14))
@example("127.0.0.1:8970")
@example("[::1]:8970")
@example(" unix:/run/figrelay.sock ")
@example("unix: ")
@example("localhost")
@example("0.0.0.0:65536")
@example(":00080")
def test_the_listen_pattern_takes_what_figrelay_listens_on(text):
    assert (re.search(LISTEN_PATTERN, text) is not None) == _takes(Listener.parse, text), text


def _patterns(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "pattern" and isinstance(value, str):
                yield value
            elif key != "properties" or not isinstance(value, dict):
                yield from _patterns(value)
            else:
                for item in value.values():
                    yield from _patterns(item)
    elif isinstance(node, list):
        for item in node:
            yield from _patterns(item)


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node, to compile the patterns as editors do (ECMA-262)")
def test_every_pattern_is_a_regex_editors_can_run(schema):
    """Editors run the patterns as JavaScript regexes (with the u flag, as the YAML language server
    does), which refuse some of what Python takes: "*+" (possessive in Python 3.11), (?i), (?P<>)."""
    patterns = sorted(set(_patterns(schema)))
    assert len(patterns) >= 5
    script = "for (const p of JSON.parse(require('fs').readFileSync(0, 'utf8'))) new RegExp(p, 'u');"
    result = subprocess.run(["node", "-e", script], input=json.dumps(patterns), capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr


# --- the bounds of config.py's validators, probed at their edges -------------------------------------------

SETTING = {"hooks": [{"event": "SettingValueChanged", "client": "console"}]}
MINIMUM = {"hooks": [{"event": "MinRunSessions", "client": "console"}]}
STORAGE = {"storage": {"url": "postgresql://figrelay@db.example.com/figrelay"}}

PROBES: dict[tuple[type, str], tuple[tuple[str | int, ...], list[Any], dict[str, Any]]] = {
    (_TopModel, "listen"): (("listen",), ["127.0.0.1:8970", "[::1]:65535", "127.0.0.1:65536", "unix:/run/x.sock", "unix:", "localhost"], {}),
    (_TopModel, "storage"): (("storage",), ["postgresql://figrelay@db.example.com/figrelay", "Postgres://db.example.com/f", "sqlite:///x"], {}),
    (IntakeSettings, "hashed_secret"): (("intake", "hashed_secret"), [FIG_HASH, FIG_HASH[:-1], "secret"], {}),
    (IntakeSettings, "max_body_bytes"): (("intake", "max_body_bytes"), [1023, 1024], {}),
    (IntakeSettings, "max_connections"): (("intake", "max_connections"), [0, 1, 1_000_000, 1_000_001], {}),
    (IntakeSettings, "header_timeout"): (("intake", "header_timeout"), [0, 0.5, 600, 601, "10m"], {}),
    (IntakeSettings, "body_timeout"): (("intake", "body_timeout"), [0, "1ms", 600, 600.5], {}),
    (DeliverySettings, "max_in_flight"): (("delivery", "max_in_flight"), [0, 1, 1000, 1001], {}),
    (DeliverySettings, "circuit_open_after"): (("delivery", "circuit_open_after"), [0, 1, 100, 101], {}),
    (StorageSettings, "url"): (("storage", "url"), ["postgres://db.example.com/figrelay", "mysql://db.example.com/figrelay"], STORAGE),
    (StorageSettings, "lease"): (("storage", "lease"), [0.5, 1, "10m", 600, 601], STORAGE),
    (JournalSettings, "retention"): (("journal", "retention"), [0, "1ms", 1], {}),
    (JournalSettings, "max_bytes"): (("journal", "max_bytes"), [999_999, 1_000_000, "1MB", "1MiB", 256], {}),
    (_ClientCoreModel, "name"): (("clients", 0, "name"), ["console", "", " "], {}),
    (_ClientCoreModel, "max_in_flight"): (("clients", 0, "max_in_flight"), [0, 1, 1000, 1001], {}),
    (_ClientCoreModel, "min_interval"): (("clients", 0, "min_interval"), [0, 3600, 3601, "1h"], {}),
    (_ClientCoreModel, "coalesce"): (("clients", 0, "coalesce"), [0, 3600, 3600.5, "59m"], {}),
    (_HookModel, "event"): (("hooks", 0, "event"), ["HealthStatusChanged", "healthstatuschanged"], {}),
    (_HookModel, "min_sessions"): (("hooks", 0, "min_sessions"), [0, 1, -1], MINIMUM),
    (_HookModel, "setting_regex"): (("hooks", 0, "setting_regex"), ["", ".*"], SETTING),
}
DURATION_PROBES = {
    "intake.regex_timeout": (("intake", "regex_timeout"), [0, 0.1, 0.11, "5ms", "100ms"], {}),
    "http timeout": (("clients", 0, "timeout"), [0, 600, 601, "10s"], {"clients": [{"name": "console", "type": "http", "base_uri": "https://r.example.com/"}]}),
}


def _plain(path: tuple[str | int, ...]) -> tuple[str | int, ...]:
    """A key path without the name of the union member pydantic tried (``storage.StorageSettings.lease``)."""
    return tuple(p for p in path if not (isinstance(p, str) and p[:1].isupper()))


def test_every_bound_the_schema_adds_is_probed():
    assert set(PROBES) == set(REFINEMENTS)


@pytest.mark.parametrize("probe", [*(f"{m.__name__}.{f}" for m, f in PROBES), *DURATION_PROBES])
def test_a_bound_in_the_schema_is_where_check_draws_it(probe, tmp_path, registry, validator):
    spec = next((v for (m, f), v in PROBES.items() if f"{m.__name__}.{f}" == probe), None) or DURATION_PROBES[probe]
    path, values, setup = spec
    for value in values:
        data = _with(**copy.deepcopy(setup))
        holder: Any = data
        for part in path[:-1]:
            holder = holder[part] if isinstance(part, int) else holder.setdefault(part, {})
        holder[path[-1]] = value
        by_check = any(_plain(key_path(p.key))[: len(path)] == path for p in check(tmp_path, data, registry))
        assert rejects_at(validator, data, path) == by_check, f"{probe} = {value!r}: check {'rejects' if by_check else 'takes'} it"


# --- the descriptions ------------------------------------------------------------------------------------


def _undescribed(node: dict[str, Any], where: str) -> Iterator[str]:
    for key, prop in node.get("properties", {}).items():
        if isinstance(prop, dict) and not prop.get("description"):
            yield f"{where}.{key}"


def test_every_key_of_the_configuration_and_of_this_repository_s_plugins_is_described(schema, registry):
    """An editor shows a key's description as it is completed. The core's keys are described by
    config.py's attribute docstrings or figrelay.schema.KEY_DESCRIPTIONS; a plugin's by its option
    model's attribute docstrings (or Field(description=...))."""
    ours = {p.distribution for p in registry.plugins if p.distribution and (REPO / "plugins" / p.distribution).is_dir()}
    assert ours >= {"figrelay-http", "figrelay-log", "figrelay-slack", "figrelay-teams", "figrelay-email"}
    theirs = {f"client.{t}" for p in registry.plugins if p.distribution not in ours for t in p.client_types}
    missing = list(_undescribed(schema, "(top)"))
    for name, definition in schema["$defs"].items():
        if name not in theirs:
            missing += _undescribed(definition, name)
    assert missing == [], "give these keys an attribute docstring: " + ", ".join(missing)


def test_descriptions_are_the_docstrings(schema, registry):
    docs = attribute_docstrings(DeliverySettings)
    assert schema["$defs"]["DeliverySettings"]["properties"]["max_age"]["description"] == docs["max_age"]
    assert docs["max_age"] == "A delivery still failing this long after it was accepted becomes a dead letter."
    email = registry.client_types["email"].options
    assert schema["$defs"]["client.email"]["properties"]["from"]["description"] == attribute_docstrings(email)["from_"]
    # reST's ``code`` reads as `code`; wrapped lines are joined
    assert "`security`" in schema["$defs"]["client.email"]["properties"]["port"]["description"]
    assert "\n" not in schema["$defs"]["client.http"]["properties"]["headers"]["description"]


def test_the_hand_written_descriptions_are_only_for_keys_without_a_docstring():
    for model, key in KEY_DESCRIPTIONS:
        assert key in model.model_fields, f"figrelay/schema.py describes {model.__name__}.{key}, which is no key"
        assert key not in attribute_docstrings(model), f"{model.__name__}.{key} has a docstring now: remove it from KEY_DESCRIPTIONS"


def _readme_rows() -> dict[str, str]:
    """{key: meaning} from the README's `key | meaning` tables, as plain text."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    rows: dict[str, str] = {}
    for keys, meaning in re.findall(r"(?m)^\| ((?:`\w+`(?:, )?)+) \| ((?:[^|\\\n]|\\.)+?) \|$", readme):
        plain = meaning.replace("\\|", "|").replace("`", "").replace("**", "")
        for key in re.findall(r"`(\w+)`", keys):
            rows.setdefault(key, plain)
    return rows


def test_the_descriptions_of_hook_and_message_keys_are_the_readme_s(schema):
    rows = _readme_rows()
    shared = {
        (_HookModel, "event"), (_HookModel, "client"), (_HookModel, "client_regex"), (_HookModel, "setting_regex"), (_HookModel, "min_sessions"),
        (_HookModel, "title"), (_HookModel, "text"), (_ClientCoreModel, "title"), (_ClientCoreModel, "text"),
        (_ClientCoreModel, "coalesce"), (_ClientCoreModel, "min_interval"),
    }
    for model, key in shared:
        assert KEY_DESCRIPTIONS[model, key] == rows[key], f"README.md's row for {key} and figrelay/schema.py's KEY_DESCRIPTIONS differ"
    assert schema["$defs"]["hook"]["properties"]["setting_regex"]["description"] == rows["setting_regex"]


def _example_comments() -> dict[tuple[str, str], str]:
    """{(section, key): its comment on the same line} in config.example.yaml; section "" for the top."""
    comments: dict[tuple[str, str], str] = {}
    section = ""
    for line in EXAMPLE.read_text(encoding="utf-8").splitlines():
        top = re.match(r"^(\w+):", line)
        if top:
            section = top.group(1)
        keyed = re.match(r"^(  )?(\w+): .*?\s#\s(.+)$", line)
        if keyed:
            comments[("" if keyed.group(1) is None else section, keyed.group(2))] = keyed.group(3)
    return comments


def test_the_descriptions_keep_the_example_configuration_s_comments():
    comments = _example_comments()
    sections = {_TopModel: "", IntakeSettings: "intake", DeliverySettings: "delivery", JournalSettings: "journal"}
    compared = []
    for (model, key), description in KEY_DESCRIPTIONS.items():
        comment = comments.get((sections.get(model, "?"), key))
        if comment is None:
            continue
        words = comment.strip().rstrip(".").removesuffix(" ...").strip().lower()
        assert words in description.lower(), f"config.example.yaml says of {key}: {comment!r}; the schema: {description!r}"
        compared.append(key)
    assert {"forward_test_events", "max_body_bytes", "log_level", "backoff_base", "shutdown_timeout"} <= set(compared)


# --- plugins -----------------------------------------------------------------------------------------------


class PagerOptions(ClientOptions):
    service_key: SecretStr
    """The integration key of the PagerDuty service to page."""
    urgency: Literal["high", "low"] = "high"
    """How loudly to page."""
    timeout: Duration = 10.0
    """How long one request may take."""


class Opaque:
    """A type pydantic cannot describe in JSON Schema."""


class OpaqueOptions(ClientOptions):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    handle: Opaque | None = None


class PagerPlugin:
    @hookimpl
    def figrelay_client_types(self, register):
        register(ClientType(name="pager", options=PagerOptions, open=lambda context: None, description="page the on-call engineer",
                            default_coalesce=5.0))
        register(ClientType(name="opaque", options=OpaqueOptions, open=lambda context: None, description="an odd one"))


@pytest.fixture(scope="module")
def pager_registry() -> PluginRegistry:
    registry = load_plugins(extra=[("pager", PagerPlugin())], entry_points=False)
    assert registry.type_names() == ["opaque", "pager"], registry.failures
    return registry


def test_a_plugin_s_client_type_appears_under_its_type(tmp_path, pager_registry):
    schema, _ = build_schema(pager_registry)
    Draft202012Validator.check_schema(schema)
    validator = Draft202012Validator(schema)
    assert schema["$defs"]["client"]["properties"]["type"]["anyOf"][0]["enum"] == ["opaque", "pager"]
    pager = schema["$defs"]["client.pager"]
    assert pager["description"].startswith("page the on-call engineer")
    assert set(pager["required"]) == {"name", "type", "service_key"}
    props = pager["properties"]
    assert props["service_key"]["description"] == "The integration key of the PagerDuty service to page."
    assert props["urgency"]["anyOf"][0]["enum"] == ["high", "low"] and props["urgency"]["default"] == "high"
    assert props["timeout"]["default"] == "10s" and props["coalesce"]["default"] == "5s"
    assert "title" not in props, "a type that does not render messages takes no templates"

    good = _with(clients=[{"name": "console", "type": "pager", "service_key": "${PAGER_KEY:-k}", "urgency": "low", "timeout": "30s"}])
    assert check(tmp_path, good, pager_registry) == []
    assert schema_errors(validator, good) == []
    for bad, key in (
        ({"urgency": "loud"}, "clients[0].urgency"),
        ({"colour": "red"}, "clients[0].colour"),
        ({"title": "{{ ClientName }}"}, "clients[0].title"),
        ({"service_key": None}, "clients[0].service_key"),
    ):
        client = {**good["clients"][0], **bad}
        data = _with(clients=[{k: v for k, v in client.items() if v is not None}])
        assert key in [p.key for p in check(tmp_path, data, pager_registry)]
        assert rejects_at(validator, data, key_path(key)), (bad, schema_errors(validator, data))


def test_a_plugin_whose_options_cannot_be_described_is_named_and_taken_loosely(pager_registry):
    schema, problems = build_schema(pager_registry)
    assert len(problems) == 1 and "client type 'opaque' (plugin pager)" in problems[0] and "WithJsonSchema" in problems[0]
    validator = Draft202012Validator(schema)
    assert schema_errors(validator, _with(clients=[{"name": "console", "type": "opaque", "handle": "anything"}])) == []
    assert schema_errors(validator, _with(clients=[{"type": "opaque"}])) != []


def test_figrelay_plugins_limits_the_client_types_of_the_schema(monkeypatch, tmp_path):
    monkeypatch.setenv("FIGRELAY_PLUGINS", "log")
    registry = load_plugins()
    schema, _ = build_schema(registry)
    assert "(client types: log)" in schema["title"]
    data = _client(type="http", base_uri="https://r.example.com/")
    assert "clients[0].type" in [p.key for p in check(tmp_path, data, registry)]
    assert rejects_at(Draft202012Validator(schema), data, ("clients", 0, "type"))


# --- the command -------------------------------------------------------------------------------------------


def _figrelay(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "FIGRELAY_PLUGINS"}
    return subprocess.run([sys.executable, "-m", "figrelay", *args], capture_output=True, text=True, env=env, timeout=120, check=False)


def test_figrelay_schema_prints_the_schema_as_json(schema):
    result = _figrelay("schema")
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    Draft202012Validator.check_schema(printed)
    assert printed == json.loads(json.dumps(schema))


def test_figrelay_schema_writes_the_file_an_editor_reads(tmp_path):
    target = tmp_path / "figrelay.schema.json"
    result = _figrelay("schema", "--output", str(target))
    assert result.returncode == 0, result.stderr
    Draft202012Validator.check_schema(json.loads(target.read_text(encoding="utf-8")))
    assert "# yaml-language-server: $schema=figrelay.schema.json" in result.stdout
    assert [p.name for p in tmp_path.iterdir()] == ["figrelay.schema.json"]

    missing = tmp_path / "nowhere" / "figrelay.schema.json"
    result = _figrelay("schema", "--output", str(missing))
    assert result.returncode == 1
    assert f"cannot write {missing}" in result.stderr and "--output" in result.stderr
