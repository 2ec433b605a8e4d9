"""Unit tests for figrelay.config (and figrelay.durations): loading, ${...} substitution, and
errors that name the file, the line and the key."""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import regex
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from figrelay.config import Config, ConfigError, HookConfig, Listener, Problem, load_config, parse_config
from figrelay.durations import Duration, parse_duration
from figrelay.hookspecs import hookimpl
from figrelay.plugins import PluginRegistry, load_plugins

REPO = Path(__file__).resolve().parent.parent
FIG_HASH = "$2a$11$3xvQfzPYHvedNwRz.DWX8ecezdoiarEEuvAjL9BxBiUiPZ9BC/oYC"


@pytest.fixture(scope="module")
def registry() -> Iterator[PluginRegistry]:
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("FIGRELAY_PLUGINS", raising=False)
        reg = load_plugins()
    assert {"log", "http"} <= set(reg.client_types), reg.failures
    yield reg


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("FR_TEST_SECRET", "FR_TEST_UNSET", "FR_TEST_EMPTY", "FR_TEST_VALUE", "FR_TEST_URL"):
        monkeypatch.delenv(name, raising=False)


class Loader:
    def __init__(self, registry: PluginRegistry, tmp_path: Path) -> None:
        self.registry = registry
        self.dir = tmp_path / "conf"
        self.dir.mkdir()
        self.path = self.dir / "figrelay.yaml"

    def write(self, text: str) -> Path:
        self.path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
        return self.path

    def load(self, text: str) -> Config:
        return load_config(self.write(text), self.registry)

    def error(self, text: str) -> ConfigError:
        with pytest.raises(ConfigError) as err:
            self.load(text)
        for p in err.value.problems:
            assert p.file == str(self.path)
        return err.value

    def problem(self, text: str, key: str) -> Problem:
        err = self.error(text)
        found = [p for p in err.problems if p.key == key]
        assert found, f"no problem for {key!r} in:\n{err}"
        return found[0]


@pytest.fixture
def cfg(registry: PluginRegistry, tmp_path: Path) -> Loader:
    return Loader(registry, tmp_path)


BASE = """
clients:
  - name: console
    type: log
hooks:
  - event: ClientStatusChanged
    client: console
"""


def assert_problem(p: Problem, line: int, key: str, *fragments: str) -> None:
    assert (p.line, p.key) == (line, key), str(p)
    for fragment in fragments:
        assert fragment in p.message, f"{fragment!r} not in {p.message!r}"
    assert str(p) == f"{p.file}:{line}: {key}: {p.message}"


# --- the example configuration ------------------------------------------------------------------


def test_example_config_loads_cleanly(registry: PluginRegistry) -> None:
    path = REPO / "config.example.yaml"
    config = load_config(path, registry)
    assert config.path == path
    assert [str(l) for l in config.listen] == ["127.0.0.1:8970"]
    assert config.state_dir == REPO / "state"
    assert config.intake.secret is None and config.intake.hashed_secret is None
    assert config.intake.forward_test_events is False
    assert config.intake.max_body_bytes == 1048576
    assert config.delivery.max_age == 24 * 3600
    assert config.delivery.backoff_base == 2
    assert config.delivery.backoff_max == 60
    assert config.delivery.circuit_open_after == 3
    assert config.delivery.attempt_timeout == 60
    assert config.delivery.max_in_flight == 16
    assert config.delivery.shutdown_timeout == 10
    assert list(config.clients) == ["console"]
    console = config.clients["console"]
    assert (console.type, console.max_in_flight) == ("log", 16)
    assert console.options.format == "summary"
    assert [h.event for h in config.hooks] == [
        "SettingValueChanged",
        "ClientStatusChanged",
        "NewClientRegistration",
        "UpdatedClientRegistration",
        "HealthStatusChanged",
        "SecurityEvent",
        "MinRunSessions",
        "MinRunSessions",
    ]
    assert [h.index for h in config.hooks] == list(range(8))
    last = config.hooks[-1]
    assert (last.client_regex.pattern, last.min_sessions) == ("^Orders", 2)
    assert config.hooks[0].setting_regex is not None and config.hooks[0].setting_regex.pattern == ".*"
    assert config.hooks[1].setting_regex is None
    assert all(isinstance(h.line, int) for h in config.hooks)
    assert config.secrets == frozenset()


def test_hook_defaults_and_lines(cfg: Loader) -> None:
    config = cfg.load(
        """
        clients:
          - name: console
            type: log
        hooks:
          - event: SettingValueChanged
            client: console
          - event: MinRunSessions
            client: console
            client_regex: ^Orders
            min_sessions: 1
        """
    )
    first, second = config.hooks
    assert first == HookConfig(0, "SettingValueChanged", "console", re.compile(".*"), re.compile(".*"), None, 5)
    assert (second.index, second.min_sessions, second.client_regex.pattern, second.line) == (1, 1, "^Orders", 7)


@pytest.mark.parametrize("text", ["", "\n   \n", "# figrelay\n# nothing here yet\n", "---\n", "~\n", "null\n"])
def test_an_empty_file_is_an_error(cfg: Loader, text: str) -> None:
    # a file caught half-written at its start, not a wish for a relay without clients and hooks
    err = cfg.error(text)
    [p] = err.problems
    assert "the file is empty" in p.message and "clients" in p.message and "rename" in p.message


def test_an_explicit_empty_mapping_gives_defaults(cfg: Loader) -> None:
    config = cfg.load("{}\n")
    assert [str(l) for l in config.listen] == ["127.0.0.1:8970"]
    assert config.clients == {} and config.hooks == ()
    assert config.state_dir == cfg.dir.resolve() / "state"


def test_unreadable_config_file(registry: PluginRegistry, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "missing.yaml", registry)
    assert str(tmp_path / "missing.yaml") in str(err.value)
    assert "cannot read" in str(err.value)


# --- every error names file, line and key ---------------------------------------------------------


def test_unknown_top_level_key_with_suggestion(cfg: Loader) -> None:
    p = cfg.problem("listen: 127.0.0.1:8970\nclinets: []\n", "clinets")
    assert_problem(p, 2, "clinets", "unknown key 'clinets'", "did you mean 'clients'")


def test_unknown_nested_key_with_suggestion(cfg: Loader) -> None:
    p = cfg.problem("intake:\n  forward_test_events: true\n  secert: hunter2value\n", "intake.secert")
    assert_problem(p, 3, "intake.secert", "did you mean 'secret'")
    p = cfg.problem("delivery:\n  max_ag: 1h\n", "delivery.max_ag")
    assert_problem(p, 2, "delivery.max_ag", "did you mean 'max_age'")


def test_unknown_hook_key_with_suggestion(cfg: Loader) -> None:
    p = cfg.problem(BASE + "  - event: SecurityEvent\n    client: console\n    client_regx: x\n", "hooks[1].client_regx")
    assert_problem(p, 9, "hooks[1].client_regx", "did you mean 'client_regex'")


def test_wrong_type(cfg: Loader) -> None:
    err = cfg.error("state_dir: [a]\ndelivery:\n  max_in_flight: many\n")
    by_key = {p.key: p for p in err.problems}
    assert_problem(by_key["state_dir"], 1, "state_dir", "valid string")
    assert_problem(by_key["delivery.max_in_flight"], 3, "delivery.max_in_flight", "integer")


def test_wrong_type_in_a_hook(cfg: Loader) -> None:
    p = cfg.problem(BASE + "  - event: MinRunSessions\n    client: console\n    min_sessions: two\n", "hooks[1].min_sessions")
    assert_problem(p, 9, "hooks[1].min_sessions", "integer")


def test_hook_and_client_not_mappings(cfg: Loader) -> None:
    err = cfg.error("clients:\n  - console\nhooks:\n  - 5\n")
    by_key = {p.key: p for p in err.problems}
    assert by_key["clients[0]"].line == 2
    assert by_key["hooks[0]"].line == 4


def test_duplicate_client_name(cfg: Loader) -> None:
    p = cfg.problem(
        """
        clients:
          - name: console
            type: log
          - name: console
            type: log
        """,
        "clients[1].name",
    )
    assert_problem(p, 4, "clients[1].name", "duplicate client name 'console'")


@pytest.mark.parametrize(
    ("text", "line", "key"),
    [
        ("listen: 127.0.0.1:1\nlisten: 127.0.0.1:2\n", 2, "listen"),
        ("delivery:\n  max_age: 1h\n  max_age: 2h\n", 3, "delivery.max_age"),
        ("clients:\n  - name: a\n    type: log\n    name: b\n", 4, "clients[0].name"),
    ],
)
def test_duplicate_yaml_key(cfg: Loader, text: str, line: int, key: str) -> None:
    p = cfg.problem(text, key)
    assert_problem(p, line, key, "appears twice")


def test_unknown_client_type_lists_installed_ones(cfg: Loader) -> None:
    p = cfg.problem("clients:\n  - name: a\n    type: slack-ish\n", "clients[0].type")
    assert_problem(p, 3, "clients[0].type", "unknown client type 'slack-ish'", "http", "log")
    p = cfg.problem("clients:\n  - name: a\n    type: htp\n", "clients[0].type")
    assert_problem(p, 3, "clients[0].type", "did you mean 'http'", "installed: ", "http", "log")


def test_client_without_type_or_name(cfg: Loader) -> None:
    err = cfg.error("clients:\n  - name: a\n  - type: log\n")
    by_key = {p.key: p for p in err.problems}
    assert_problem(by_key["clients[0].type"], 2, "clients[0].type", "required", "http", "log")
    assert_problem(by_key["clients[1].name"], 3, "clients[1].name", "required")


def test_hook_naming_unknown_client(cfg: Loader) -> None:
    p = cfg.problem(BASE + "  - event: SecurityEvent\n    client: consol\n", "hooks[1].client")
    assert_problem(p, 8, "hooks[1].client", "no client is named 'consol'", "did you mean 'console'")


def test_unknown_event_with_suggestion(cfg: Loader) -> None:
    p = cfg.problem(BASE + "  - event: SettingsValueChanged\n    client: console\n", "hooks[1].event")
    assert_problem(p, 7, "hooks[1].event", "unknown event 'SettingsValueChanged'", "did you mean 'SettingValueChanged'")
    p = cfg.problem(BASE + "  - event: securityevent\n    client: console\n", "hooks[1].event")
    assert_problem(p, 7, "hooks[1].event", "did you mean 'SecurityEvent'")


@pytest.mark.parametrize(("field", "event"), [("client_regex", "ClientStatusChanged"), ("setting_regex", "SettingValueChanged")])
def test_invalid_regex_with_compiler_message(cfg: Loader, field: str, event: str) -> None:
    p = cfg.problem(BASE + f"  - event: {event}\n    client: console\n    {field}: '(Orders'\n", f"hooks[1].{field}")
    compiler = ""
    try:
        regex.compile("(Orders", regex.VERSION0)
    except regex.error as exc:
        compiler = str(exc)
    assert compiler and "missing )" in compiler
    assert_problem(p, 9, f"hooks[1].{field}", "invalid regular expression", compiler)


def test_hook_regexes_are_compiled_by_the_engine_they_need(cfg: Loader) -> None:
    config = cfg.load(
        BASE
        + "  - {event: ClientStatusChanged, client: console, client_regex: '^Orders'}\n"
        + "  - {event: ClientStatusChanged, client: console, client_regex: '^(?!Test)\\p{Lu}'}\n"
        + "  - {event: SettingValueChanged, client: console, setting_regex: '(?<=Read)Timeout$'}\n"
    )
    default, literal, lookahead, setting = config.hooks
    # literals and .* cannot backtrack: Python's re, as before; the rest: regex, time-limited
    assert isinstance(default.client_regex, re.Pattern) and isinstance(literal.client_regex, re.Pattern)
    assert isinstance(lookahead.client_regex, regex.Pattern) and lookahead.client_regex.search("OrdersApi")
    assert not lookahead.client_regex.search("TestApi")
    assert isinstance(setting.setting_regex, regex.Pattern) and setting.setting_regex.search("ReadTimeout")


def test_regex_timeout(cfg: Loader) -> None:
    assert cfg.load(BASE).intake.regex_timeout == 0.005
    assert cfg.load("intake:\n  regex_timeout: 20ms\n" + BASE).intake.regex_timeout == pytest.approx(0.02)
    for value in ("0", "1s"):
        p = cfg.problem(f"intake:\n  regex_timeout: {value}\n" + BASE, "intake.regex_timeout")
        assert_problem(p, 2, "intake.regex_timeout", "at most 100ms")


def test_min_sessions_zero(cfg: Loader) -> None:
    p = cfg.problem(BASE + "  - event: MinRunSessions\n    client: console\n    min_sessions: 0\n", "hooks[1].min_sessions")
    assert_problem(p, 9, "hooks[1].min_sessions", "at least 1")


def test_min_sessions_on_another_event(cfg: Loader) -> None:
    p = cfg.problem(BASE + "  - event: ClientStatusChanged\n    client: console\n    min_sessions: 2\n", "hooks[1].min_sessions")
    assert_problem(p, 9, "hooks[1].min_sessions", "only to MinRunSessions")


def test_setting_regex_on_another_event(cfg: Loader) -> None:
    p = cfg.problem(BASE + "  - event: ClientStatusChanged\n    client: console\n    setting_regex: Timeout\n", "hooks[1].setting_regex")
    assert_problem(p, 9, "hooks[1].setting_regex", "only to SettingValueChanged")


def test_blank_setting_regex(cfg: Loader) -> None:
    p = cfg.problem(BASE + "  - event: SettingValueChanged\n    client: console\n    setting_regex: ''\n", "hooks[1].setting_regex")
    assert_problem(p, 9, "hooks[1].setting_regex", "blank")


def test_missing_env_var_names_the_variable_and_leaks_no_value(cfg: Loader) -> None:
    p = cfg.problem("state_dir: /srv/prefix-sensitive-${FR_TEST_UNSET}\n", "state_dir")
    assert_problem(p, 1, "state_dir", "FR_TEST_UNSET", "not set")
    assert "prefix-sensitive" not in str(p)


def test_unreadable_file_reference(cfg: Loader) -> None:
    p = cfg.problem("intake:\n  secret: ${file:secrets/missing.txt}\n", "intake.secret")
    assert_problem(p, 2, "intake.secret", "cannot read", "missing.txt")
    assert str(cfg.dir.resolve() / "secrets" / "missing.txt") in p.message


def test_file_reference_to_a_directory(cfg: Loader) -> None:
    (cfg.dir / "adir").mkdir()
    p = cfg.problem("state_dir: ${file:adir}\n", "state_dir")
    assert_problem(p, 1, "state_dir", "cannot read")


def test_malformed_reference(cfg: Loader) -> None:
    p = cfg.problem("state_dir: ${1abc}\n", "state_dir")
    assert_problem(p, 1, "state_dir", "not a variable reference")


def test_yaml_syntax_error_names_file_and_line(cfg: Loader) -> None:
    err = cfg.error("listen: 127.0.0.1:1\nhooks: [\n")
    [p] = err.problems
    assert p.line is not None and p.line >= 2
    assert "not valid YAML" in p.message


def test_top_level_must_be_a_mapping(cfg: Loader) -> None:
    err = cfg.error("- a\n- b\n")
    assert "must be a mapping" in str(err) and "a list" in str(err)
    err = cfg.error("clients\n")  # a file cut after its first word
    assert "must be a mapping" in str(err) and "only the text 'clients'" in str(err)


# --- ${...} substitution --------------------------------------------------------------------------


def test_env_var_substitution(cfg: Loader, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FR_TEST_VALUE", "from-env")
    config = cfg.load("state_dir: /srv/${FR_TEST_VALUE}/x-${ FR_TEST_VALUE }\n")
    assert config.state_dir == Path("/srv/from-env/x-from-env")


def test_env_var_default(cfg: Loader, monkeypatch: pytest.MonkeyPatch) -> None:
    assert cfg.load("state_dir: /srv/${FR_TEST_UNSET:-fallback}\n").state_dir == Path("/srv/fallback")
    assert cfg.load("state_dir: /srv/x${FR_TEST_UNSET:-}\n").state_dir == Path("/srv/x")
    monkeypatch.setenv("FR_TEST_VALUE", "set")
    assert cfg.load("state_dir: /srv/${FR_TEST_VALUE:-fallback}\n").state_dir == Path("/srv/set")


def test_env_var_default_when_set_but_empty(cfg: Loader, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FR_TEST_EMPTY", "")
    assert cfg.load("state_dir: /srv/${FR_TEST_EMPTY:-fallback}\n").state_dir == Path("/srv/fallback")


def test_env_var_in_a_number_field(cfg: Loader, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FR_TEST_VALUE", "4096")
    assert cfg.load("intake:\n  max_body_bytes: ${FR_TEST_VALUE}\n").intake.max_body_bytes == 4096


def test_file_reference_relative_to_the_config_folder_trailing_newline_stripped(cfg: Loader, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (cfg.dir / "creds").mkdir()
    (cfg.dir / "creds" / "fig_secret").write_text("s3cret-from-file\n", encoding="utf-8")
    (cfg.dir / "crlf").write_bytes(b"crlf-secret\r\n")
    (cfg.dir / "two").write_text("line1\nline2\n", encoding="utf-8")
    other = tmp_path / "elsewhere"
    other.mkdir()
    monkeypatch.chdir(other)  # relative to the file's folder, not the working directory
    config = cfg.load(
        """
        intake:
          secret: ${file:creds/fig_secret}
        clients:
          - name: a
            type: http
            base_uri: https://example.com/
            secret: ${file:crlf}
            headers:
              X-Two: ${file:./two}
        """
    )
    assert config.intake.secret is not None
    assert config.intake.secret.get_secret_value() == "s3cret-from-file"
    assert config.clients["a"].options.secret.get_secret_value() == "crlf-secret"
    assert config.clients["a"].options.headers == {"X-Two": "line1\nline2"}


def test_file_reference_absolute(cfg: Loader, tmp_path: Path) -> None:
    target = tmp_path / "abs_secret"
    target.write_text("abs-value\n", encoding="utf-8")
    config = cfg.load(f"intake:\n  secret: ${{file:{target}}}\n")
    assert config.intake.secret is not None and config.intake.secret.get_secret_value() == "abs-value"


def test_double_dollar_is_a_literal_dollar(cfg: Loader, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FR_TEST_VALUE", "nope")
    config = cfg.load("state_dir: /srv/a$$b/$${FR_TEST_VALUE}/c$$$$d\n")
    assert config.state_dir == Path("/srv/a$b/${FR_TEST_VALUE}/c$$d")


@pytest.mark.parametrize("quote", ["", "'", '"'])
def test_bcrypt_hash_passes_through_unchanged(cfg: Loader, quote: str) -> None:
    config = cfg.load(f"listen: 0.0.0.0:8970\nintake:\n  hashed_secret: {quote}{FIG_HASH}{quote}\n")
    assert config.intake.hashed_secret is not None
    assert config.intake.hashed_secret.get_secret_value() == FIG_HASH
    assert FIG_HASH in config.secrets


def test_lone_dollars_pass_through(cfg: Loader) -> None:
    config = cfg.load("clients:\n  - name: a\n    type: http\n    base_uri: https://example.com/\n    secret: pa$s$word$\n")
    assert config.clients["a"].options.secret.get_secret_value() == "pa$s$word$"


# --- several errors at once ---------------------------------------------------------------------------


def test_several_errors_reported_together(cfg: Loader) -> None:
    err = cfg.error(
        """
        clinets: []
        delivery:
          max_age: soon
        clients:
          - name: console
            type: log
          - name: other
            type: nope
        hooks:
          - event: Bogus
            client: console
          - event: ClientStatusChanged
            client: nobody
          - event: SecurityEvent
            client: console
            client_regex: '['
        """
    )
    keys = {p.key: p.line for p in err.problems}
    assert keys == {
        "clinets": 1,
        "delivery.max_age": 3,
        "clients[1].type": 8,
        "hooks[0].event": 10,
        "hooks[1].client": 13,
        "hooks[2].client_regex": 16,
    }
    assert str(err).count("\n") == len(err.problems) - 1


# --- secrets and listeners ----------------------------------------------------------------------------


@pytest.mark.parametrize("listen", ["0.0.0.0:8970", "10.1.2.3:8970", "'[::]:8970'", ":8970", "example.com:8970", "[127.0.0.1:1, 0.0.0.0:2]"])
def test_no_secret_with_a_non_loopback_listener_is_an_error(cfg: Loader, listen: str) -> None:
    p = cfg.problem(f"listen: {listen}\n", "listen")  # no intake key: the problem points at the listener
    assert "no secret is configured" in p.message
    assert p.line == 1
    p = cfg.problem(f"intake: {{forward_test_events: true}}\nlisten: {listen}\n", "intake")
    assert "no secret is configured" in p.message and p.line == 1


@pytest.mark.parametrize(
    "listen",
    ["127.0.0.1:8970", "127.0.0.2:1", "localhost:8970", "'[::1]:8970'", "unix:/run/figrelay/intake.sock", "[127.0.0.1:1, 'unix:/tmp/x.sock', 'localhost:3']"],
)
def test_no_secret_with_loopback_or_unix_is_fine(cfg: Loader, listen: str) -> None:
    config = cfg.load(f"listen: {listen}\n")
    assert all(l.is_local for l in config.listen)


@pytest.mark.parametrize("intake", ["secret: a-plain-secret", f"hashed_secret: '{FIG_HASH}'"])
def test_a_secret_allows_any_listener(cfg: Loader, intake: str) -> None:
    config = cfg.load(f"listen: 0.0.0.0:8970\nintake:\n  {intake}\n")
    assert not config.listen[0].is_local


def test_secret_and_hashed_secret_both_set(cfg: Loader) -> None:
    p = cfg.problem(f"intake:\n  secret: plain-one\n  hashed_secret: '{FIG_HASH}'\n", "intake")
    assert_problem(p, 1, "intake", "not both")


@pytest.mark.parametrize(
    "value",
    [
        "not-a-hash",
        "d21b0b4b-b978-4048-85be-eb73e057f6fb",
        FIG_HASH[:-1],
        FIG_HASH + "x",
        "$2c$11$3xvQfzPYHvedNwRz.DWX8ecezdoiarEEuvAjL9BxBiUiPZ9BC/oYC",
        "$2a$1$3xvQfzPYHvedNwRz.DWX8ecezdoiarEEuvAjL9BxBiUiPZ9BC/oYC0",
    ],
)
def test_invalid_hashed_secret_format(cfg: Loader, value: str) -> None:
    p = cfg.problem(f"intake:\n  hashed_secret: '{value}'\n", "intake.hashed_secret")
    assert_problem(p, 2, "intake.hashed_secret", "BCrypt")
    assert value not in p.message


def test_2b_hash_is_accepted(cfg: Loader) -> None:
    value = "$2b$04$" + FIG_HASH[7:]
    config = cfg.load(f"intake:\n  hashed_secret: '{value}'\n")
    assert config.intake.hashed_secret is not None


def test_empty_secret_is_an_error(cfg: Loader) -> None:
    p = cfg.problem("intake:\n  secret: ''\n", "intake.secret")
    assert "empty" in p.message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:8970", Listener("127.0.0.1", 8970)),
        ("[::1]:8970", Listener("::1", 8970)),
        (":8970", Listener("0.0.0.0", 8970)),
        ("unix:/run/x.sock", Listener(unix_path="/run/x.sock")),
    ],
)
def test_listener_parse(text: str, expected: Listener) -> None:
    assert Listener.parse(text) == expected


@pytest.mark.parametrize("text", ["8970", "host", "unix:", "127.0.0.1:70000", "127.0.0.1:abc"])
def test_listener_parse_errors(text: str) -> None:
    with pytest.raises(ValueError):
        Listener.parse(text)


def test_bad_listener_in_config(cfg: Loader) -> None:
    p = cfg.problem("listen: [127.0.0.1:1, 'nope']\n", "listen[1]")
    assert p.line == 1
    p = cfg.problem("listen: []\n", "listen")
    assert "at least one" in p.message


# --- durations -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("30s", 30.0),
        ("1h30m", 5400.0),
        (90, 90.0),
        (1.5, 1.5),
        ("90", 90.0),
        ("2d", 172800.0),
        ("500ms", 0.5),
        ("1.5h", 5400.0),
        ("5m", 300.0),
        ("1h 30m", 5400.0),
        ("0", 0.0),
    ],
)
def test_parse_duration(value: object, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["bad", "", "30x", "h", "1h30", "-5", -5, "5 parsecs", True, None, [30]])
def test_parse_duration_errors(value: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(value)


def test_duration_as_pydantic_field() -> None:
    class M(BaseModel):
        timeout: Duration = 10.0

    assert M().timeout == 10.0
    assert M(timeout="1m").timeout == 60.0  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        M(timeout="bad")  # type: ignore[arg-type]


def test_durations_in_config(cfg: Loader) -> None:
    config = cfg.load("delivery:\n  max_age: 1h30m\n  backoff_base: 30s\n  backoff_max: 90\n  attempt_timeout: '45'\n")
    d = config.delivery
    assert (d.max_age, d.backoff_base, d.backoff_max, d.attempt_timeout) == (5400.0, 30.0, 90.0, 45.0)
    p = cfg.problem("delivery:\n  shutdown_timeout: bad\n", "delivery.shutdown_timeout")
    assert_problem(p, 2, "delivery.shutdown_timeout", "not a duration")


# --- state_dir ----------------------------------------------------------------------------------------


def test_state_dir_relative_to_the_config_folder(cfg: Loader, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert cfg.load("state_dir: ./var/state\n").state_dir == cfg.dir.resolve() / "var" / "state"
    assert cfg.load("state_dir: var\n").state_dir == cfg.dir.resolve() / "var"
    assert cfg.load("listen: 127.0.0.1:1\n").state_dir == cfg.dir.resolve() / "state"
    assert cfg.load(f"state_dir: {tmp_path / 'abs'}\n").state_dir == tmp_path / "abs"


def test_state_dir_relative_when_config_path_is_relative(registry: PluginRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "figrelay.yaml").write_text("state_dir: st\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    config = load_config(Path("etc/figrelay.yaml"), registry)
    assert config.state_dir == tmp_path.resolve() / "etc" / "st"


# --- plugin options ------------------------------------------------------------------------------------


HTTP = """
clients:
  - name: siem
    type: http
    base_uri: {base_uri}
"""


def test_http_options_validated(cfg: Loader) -> None:
    config = cfg.load(
        """
        clients:
          - name: siem
            type: http
            base_uri: https://siem.example.com/fig
            timeout: 30s
            max_in_flight: 2
            headers: {X-Team: platform}
        """
    )
    siem = config.clients["siem"]
    assert siem.type == "http"
    assert siem.max_in_flight == 2
    assert siem.options.base_uri == "https://siem.example.com/fig/"
    assert siem.options.timeout == 30.0
    assert siem.options.headers == {"X-Team": "platform"}


@pytest.mark.parametrize("base_uri", ["ftp://siem.example.com/", "siem.example.com/fig/", "https:///nohost", "https://x.example.com/?q=1"])
def test_http_bad_base_uri(cfg: Loader, base_uri: str) -> None:
    p = cfg.problem(HTTP.format(base_uri=f"'{base_uri}'"), "clients[0].base_uri")
    assert_problem(p, 4, "clients[0].base_uri")
    assert "http" in p.message or "query" in p.message


def test_http_unknown_option_key_with_suggestion(cfg: Loader) -> None:
    p = cfg.problem(HTTP.format(base_uri="https://x.example.com/") + "    timout: 5s\n", "clients[0].timout")
    assert_problem(p, 5, "clients[0].timout", "unknown key 'timout'", "did you mean 'timeout'")
    p = cfg.problem("clients:\n  - name: siem\n    type: http\n    base_url: https://x.example.com/\n", "clients[0].base_url")
    assert_problem(p, 4, "clients[0].base_url", "did you mean 'base_uri'")


def test_http_missing_base_uri(cfg: Loader) -> None:
    p = cfg.problem("clients:\n  - name: siem\n    type: http\n", "clients[0].base_uri")
    assert "required" in p.message
    assert p.line is not None


@pytest.mark.parametrize("header", ["Authorization", "authorization", "AUTHORIZATION"])
def test_http_authorization_header_refused(cfg: Loader, header: str) -> None:
    p = cfg.problem(HTTP.format(base_uri="https://x.example.com/") + f"    headers:\n      {header}: Secret abcdef123\n", "clients[0].headers")
    assert_problem(p, 5, "clients[0].headers", "secret")
    assert "abcdef123" not in p.message


def test_http_reserved_header_refused(cfg: Loader) -> None:
    p = cfg.problem(HTTP.format(base_uri="https://x.example.com/") + "    headers: {Content-Type: text/plain}\n", "clients[0].headers")
    assert "figrelay" in p.message


def test_log_options_validated(cfg: Loader) -> None:
    p = cfg.problem("clients:\n  - name: c\n    type: log\n    format: xml\n", "clients[0].format")
    assert_problem(p, 4, "clients[0].format")
    p = cfg.problem("clients:\n  - name: c\n    type: log\n    max_in_flight: 0\n", "clients[0].max_in_flight")
    assert_problem(p, 4, "clients[0].max_in_flight", "between 1 and 1000")


def test_client_fingerprint_changes_with_options(cfg: Loader) -> None:
    a = cfg.load("clients:\n  - name: c\n    type: log\n").clients["c"].fingerprint
    b = cfg.load("clients:\n  - name: c\n    type: log\n").clients["c"].fingerprint
    c = cfg.load("clients:\n  - name: c\n    type: log\n    format: json\n").clients["c"].fingerprint
    assert a == b != c


# --- Config.secrets and redaction ------------------------------------------------------------------------


def test_secrets_land_in_config_secrets(cfg: Loader, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FR_TEST_SECRET", "env-intake-secret-123")
    (cfg.dir / "signing").write_text("whsec_c2lnbmluZy1rZXk=\n", encoding="utf-8")
    config = cfg.load(
        """
        listen: 0.0.0.0:8970
        intake:
          secret: ${FR_TEST_SECRET}
        clients:
          - name: siem
            type: http
            base_uri: https://siem.example.com/
            secret: literal-client-secret
            signing_secret: ${file:signing}
            headers: {X-Api-Key: header-key-456}
          - name: console
            type: log
        """
    )
    assert config.secrets == frozenset(
        {"env-intake-secret-123", "literal-client-secret", "whsec_c2lnbmluZy1rZXk=", "header-key-456"}
    )


def test_secretstr_values_not_in_repr_of_config(cfg: Loader) -> None:
    config = cfg.load(
        """
        intake:
          secret: intake-secret-123
        clients:
          - name: siem
            type: http
            base_uri: https://siem.example.com/
            secret: literal-client-secret
            signing_secret: whsec_c2lnbmluZy1rZXk=
        """
    )
    text = repr(config)
    for secret in ("intake-secret-123", "literal-client-secret", "whsec_c2lnbmluZy1rZXk="):
        assert secret not in text


def test_file_values_and_secret_fields_land_in_config_secrets(cfg: Loader, monkeypatch: pytest.MonkeyPatch) -> None:
    """${file:...} values are credentials by convention and are redacted wherever they are used;
    a ${VAR} in a plain field (a path, a port) is not, so logs stay readable."""
    monkeypatch.setenv("FR_TEST_STATE", "/var/lib/figrelay-test")
    (cfg.dir / "uri").write_text("https://hooks.example.com/T000/B000/XXXXsecretpath\n", encoding="utf-8")
    config = cfg.load("state_dir: ${FR_TEST_STATE}\nclients:\n  - name: siem\n    type: http\n    base_uri: ${file:uri}\n")
    assert "https://hooks.example.com/T000/B000/XXXXsecretpath" in config.secrets
    assert "/var/lib/figrelay-test" not in config.secrets


def test_secret_value_never_appears_in_config_error(cfg: Loader, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FR_TEST_SECRET", "TOPSECRET-env-0001")
    (cfg.dir / "key").write_text("TOPSECRET-file-0002\n", encoding="utf-8")
    err = cfg.error(
        """
        listen: [0.0.0.0:1, nope]
        intake:
          secret: ${FR_TEST_SECRET}
          hashed_secret: TOPSECRET-hash-0003
          secert: TOPSECRET-typo-0004
        clients:
          - name: siem
            type: http
            base_uri: ftp://TOPSECRET-uri-0005/
            secret: ${file:key}
            headers:
              Authorization: Secret TOPSECRET-auth-0006
              X-Key: 7
            signing_secret: not base64 TOPSECRET-0007
            timout: TOPSECRET-0008
          - name: siem
            type: http
            base_uri: https://x.example.com/
            secret: [TOPSECRET-list-0009]
        hooks:
          - event: SecurityEvent
            client: siem
            min_sessions: 2
        """
    )
    text = str(err)
    assert len(err.problems) >= 8
    assert "TOPSECRET" not in text, text


def test_problem_without_line() -> None:
    assert str(Problem("f.yaml", None, "", "boom")) == "f.yaml: boom"
    assert str(Problem("f.yaml", 3, "a.b", "boom")) == "f.yaml:3: a.b: boom"
    err = ConfigError([Problem("f.yaml", 1, "x", "one"), Problem("f.yaml", 2, "y", "two")])
    assert str(err) == "f.yaml:1: x: one\nf.yaml:2: y: two"


def test_parse_config_directly(registry: PluginRegistry, tmp_path: Path) -> None:
    config = parse_config(BASE, tmp_path / "x.yaml", registry)
    assert config.path == tmp_path / "x.yaml"
    assert config.state_dir == tmp_path.resolve() / "state"
    assert [h.client for h in config.hooks] == ["console"]
    assert "1 client, 1 hook," in config.summary()


# --- message templates and the core's client keys -------------------------------------------------


def _chat_registry() -> PluginRegistry:
    """The installed plugins plus a message-rendering client type, as Slack's would be."""
    from figrelay.delivery import ClientOptions, ClientType, Delivered

    class ChatOptions(ClientOptions):
        room: str = "ops"

    class ChatTarget:
        def __init__(self, context):
            pass

        async def deliver(self, delivery):
            return Delivered()

        async def aclose(self):
            pass

    class ChatPlugin:
        @hookimpl
        def figrelay_client_types(self, register):
            register(ClientType("chat", ChatOptions, ChatTarget, renders_messages=True, default_min_interval=1.0, default_coalesce=10.0))

    return load_plugins([("chat", ChatPlugin())])


def test_message_templates_and_pacing_keys(tmp_path: Path) -> None:
    path = tmp_path / "figrelay.yaml"
    path.write_text(
        "clients:\n"
        "  - name: chat\n"
        "    type: chat\n"
        "    title: '{{ ClientName }}: {{ message.title }}'\n"
        "    coalesce: 30s\n"
        "  - {name: quick, type: chat, min_interval: 0, coalesce: 0}\n"
        "hooks:\n"
        "  - {event: SettingValueChanged, client: chat, text: 'by {{ Username }}'}\n"
        "  - {event: SecurityEvent, client: quick}\n"
    )
    config = load_config(path, _chat_registry())
    chat, quick = config.clients["chat"], config.clients["quick"]
    assert chat.templates.title.startswith("{{ ClientName }}") and chat.coalesce == 30 and chat.min_interval == 1.0
    assert quick.coalesce == 0 and quick.min_interval == 0 and quick.templates is None
    assert config.hooks[0].templates.text == "by {{ Username }}"


def test_template_problems_are_config_errors(tmp_path: Path) -> None:
    path = tmp_path / "figrelay.yaml"
    path.write_text(
        "clients:\n"
        "  - name: chat\n"
        "    type: chat\n"
        "    title: '{{ ClientName }}'\n"            # fails on SecurityEvent, which has no ClientName
        "  - name: siem\n"
        "    type: http\n"
        "    base_uri: https://x.example.com/\n"
        "    title: nope\n"
        "hooks:\n"
        "  - {event: SecurityEvent, client: chat}\n"
        "  - {event: SettingValueChanged, client: chat, text: '{{ Username '}\n"
        "  - {event: SettingValueChanged, client: chat, text: '{{ Usrname }}'}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(path, _chat_registry())
    text = str(info.value)
    assert f"{path}:4: clients[0].title: bad template: fails on a sample SecurityEvent event: UndefinedError: 'ClientName' is undefined" in text
    assert f"{path}:8: clients[1].title: the 'http' client type sends events as they are, not messages" in text
    assert f"{path}:11: hooks[1].text: bad template: template syntax error" in text
    assert f"{path}:12: hooks[2].text: bad template: fails on a sample SettingValueChanged event: UndefinedError: 'Usrname' is undefined" in text


# --- credentials the command does not need (need_credentials=False) -------------------------------

CREDENTIALS_CONFIG = """
listen: 0.0.0.0:8970
intake:
  secret: "${file:${CREDENTIALS_DIRECTORY}/fig-secret}"
clients:
  - name: siem
    type: http
    base_uri: https://siem.example.com/fig/
    secret: "${file:${CREDENTIALS_DIRECTORY}/siem-secret}"
  - name: console
    type: log
hooks:
  - {event: SecurityEvent, client: siem}
  - {event: SecurityEvent, client: console}
"""


def test_a_missing_credentials_directory_is_one_precise_problem_per_value(cfg: Loader, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    err = cfg.error(CREDENTIALS_CONFIG)
    assert [(p.line, p.key) for p in err.problems] == [(3, "intake.secret"), (8, "clients[0].secret")]
    p = err.problems[1]
    assert_problem(
        p, 8, "clients[0].secret", "${file:${CREDENTIALS_DIRECTORY}/siem-secret} is a systemd credential, but CREDENTIALS_DIRECTORY is not set",
        "LoadCredential=siem-secret:/etc/figrelay/credentials/siem-secret", "systemd-run --pipe", "set CREDENTIALS_DIRECTORY to a folder",
        "docs/operations.md",
    )


def test_a_credential_the_unit_does_not_load_says_how_to_load_it(cfg: Loader, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "fig-secret").write_text("s3cret\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    p = cfg.problem(CREDENTIALS_CONFIG, "clients[0].secret")
    assert_problem(p, 8, "clients[0].secret", f"cannot read {creds / 'siem-secret'}", "LoadCredential=siem-secret:", "systemctl edit figrelay")
    (creds / "siem-secret").write_text("downstream\n")
    assert cfg.load(CREDENTIALS_CONFIG).clients["siem"].options.secret.get_secret_value() == "downstream"


def test_without_need_credentials_unresolved_client_options_and_intake_secret_are_set_aside(
    cfg: Loader, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    config = load_config(cfg.write(CREDENTIALS_CONFIG), cfg.registry, need_credentials=False)
    assert set(config.clients) == {"siem", "console"}
    assert config.clients["siem"].options is None and config.clients["siem"].type == "http"
    assert config.clients["console"].options is not None
    assert [h.client for h in config.hooks] == ["siem", "console"]
    # the intake still requires a secret: no "no secret is configured" problem for 0.0.0.0
    assert config.intake.secret is None
    [intake] = config.unresolved_under("intake")
    assert_problem(intake, 3, "intake.secret", "CREDENTIALS_DIRECTORY is not set")
    [siem] = config.unresolved_under("clients", 0)
    assert_problem(siem, 8, "clients[0].secret", "CREDENTIALS_DIRECTORY is not set")
    assert config.unresolved_under("clients", 1) == []


def test_without_need_credentials_what_commands_use_is_still_checked(cfg: Loader, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    text = CREDENTIALS_CONFIG.replace("listen: 0.0.0.0:8970", "listen: 0.0.0.0:8970\nstate_dir: ${FR_TEST_UNSET}") + (
        "  - {event: SecurityEvent, client: nosuch}\n"
    )
    with pytest.raises(ConfigError) as err:
        load_config(cfg.write(text), cfg.registry, need_credentials=False)
    assert [(p.line, p.key) for p in err.value.problems] == [(2, "state_dir"), (15, "hooks[2].client")]
    # an option the plugin rejects is still an error when every value in it resolved
    text = CREDENTIALS_CONFIG.replace("    base_uri: https://siem.example.com/fig/\n", "    base_uri: ftp://siem\n").replace(
        '    secret: "${file:${CREDENTIALS_DIRECTORY}/siem-secret}"\n', ""
    )
    with pytest.raises(ConfigError) as err:
        load_config(cfg.write(text), cfg.registry, need_credentials=False)
    assert [p.key for p in err.value.problems] == ["clients[0].base_uri"]


# --- YAML mistakes people make ---------------------------------------------------------------------


def test_a_tab_in_yaml_says_use_spaces(cfg: Loader) -> None:
    for text, line in (("clients:\n\t- name: a\n", 2), ("intake:\n  forward_test_events: true\n\tmax_body_bytes: 2048\n", 3)):
        [p] = cfg.error(text).problems
        assert p.line == line and "not valid YAML" in p.message and "use spaces for indentation, not tabs" in p.message, p


def test_an_unquoted_star_value_says_quote_it(cfg: Loader) -> None:
    cases = (
        ("  - event: SecurityEvent\n    client: console\n    client_regex: *Api\n", "'*Api'"),
        ("  - {event: SecurityEvent, client: console, client_regex: *Api}\n", "'*Api'"),
        ("  - event: SecurityEvent\n    client: console\n    client_regex: *.Api$   # ends with Api\n", "'*.Api$'"),
    )
    for hook, quoted in cases:
        [p] = cfg.error(BASE + hook).problems
        assert p.line == BASE.count("\n") + hook.count("\n") - 1, p
        assert "not valid YAML" in p.message and f"a value that starts with '*' is a YAML alias: quote it: {quoted}" in p.message, p


# --- durations ------------------------------------------------------------------------------------


def test_a_negative_duration_is_negative_not_unknown(cfg: Loader) -> None:
    for value in ("-5s", "-1h30m", "-5", "'-250ms'"):
        p = cfg.problem(f"delivery:\n  backoff_base: {value}\n", "delivery.backoff_base")
        assert_problem(p, 2, "delivery.backoff_base", "must not be negative")
        assert "not a duration" not in p.message
    with pytest.raises(ValueError, match="must not be negative, got '-5s'"):
        parse_duration("-5s")
    with pytest.raises(ValueError, match=re.escape("not a duration; write e.g. 250ms, 30s")):
        parse_duration("5 parsecs")


def test_every_duration_unit_is_accepted_and_documented() -> None:
    from figrelay.durations import UNITS

    assert parse_duration("250ms") == 0.25 and parse_duration("1d2h3m4s5ms") == 86400 + 7200 + 180 + 4.005
    for doc in (REPO / "README.md", REPO / "config.example.yaml"):
        # the paragraph that describes durations, wherever it is
        text = doc.read_text()
        start = text.index("Durations ")
        described = text[start : text.index("\n\n", start)]
        for unit in UNITS:  # an example of each: "250ms" shows ms (and not m or s), "1h30m" shows h and m
            assert re.search(rf"\d{unit}(?![a-z])", described), f"{doc.name} does not show the duration unit {unit!r}: {described!r}"


# --- large files: each regex compiled once, YAML read by libyaml as PyYAML reads it ------------------


def test_identical_hook_regexes_are_compiled_once(cfg: Loader) -> None:
    hooks = "".join("  - {event: SettingValueChanged, client: console, client_regex: '^(Orders|Payments)Api$', setting_regex: Timeout}\n" for _ in range(3))
    first, second, third = cfg.load(BASE + hooks).hooks[1:]
    assert first.client_regex is second.client_regex is third.client_regex
    assert first.setting_regex is second.setting_regex is third.setting_regex
    # a regex some loaded configuration holds is not compiled again by the next load (a reload)
    again = cfg.load(BASE + hooks).hooks[1]
    assert again.client_regex is first.client_regex


def test_an_invalid_regex_repeated_is_reported_for_each_hook(cfg: Loader) -> None:
    err = cfg.error(BASE + "  - {event: ClientStatusChanged, client: console, client_regex: '(Orders'}\n" * 2)
    assert [(p.line, p.key) for p in err.problems] == [(7, "hooks[1].client_regex"), (8, "hooks[2].client_regex")]
    assert all("invalid regular expression '(Orders'" in p.message for p in err.problems)


def read_both(text: str, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any]:
    """What _read_yaml gives (value, lines, problems, file values, unresolved) with libyaml's events,
    and with PyYAML alone."""
    from figrelay import config as config_module

    def read() -> Any:
        out = config_module._Collector("f.yaml")
        try:
            value: Any = ("value", config_module._read_yaml(text, "f.yaml", Path("/nonexistent"), out))
        except Exception as exc:
            value = ("raised", type(exc).__name__)
        return value, out.lines, [str(p) for p in out.problems], sorted(out.file_values), [(p, str(q)) for p, q in out.unresolved]

    assert config_module._FAST_LOADER is not None, "PyYAML is built with libyaml here"
    fast = read()
    with monkeypatch.context() as m:
        m.setattr(config_module, "_FAST_LOADER", None)
        return fast, read()


@pytest.mark.parametrize(
    "text",
    [
        BASE, "", "---\n", "~\n", "# nothing\n", "a: 1\n---\nb: 2\n", "a:\n\tb: 1\n", "a: 1\t# tab\n", "a: *x\n", "a: &x 1\nb: *x\n",
        "a: &x {c: 1}\nb: *x\n", "a: 1\na: 2\n", "a: ${FR_TEST_UNSET}\na: ${FR_TEST_UNSET}\n", "? [a]\n: 1\nb: 2\n", "[a, b]: c\n",
        "a: ${FR_TEST_UNSET}\nb: $$\nc: ${FR_TEST_UNSET:-d}\nd: ${nope x}\n", "1: a\nnull: b\ntrue: c\n",
        "a: !!str 1\nb: ! 2\nc: '3'\nd: 2024-01-01\ne: .inf\nf: 0x1F\ng: yes\n", "a: 2024-13-45\n", "a: !custom x\n", "<<: {a: 1}\n",
        "a: [1,\n", "a: 'x\n", "a: \x07\n", "a: \ud800\n", "a: >#\n  x\n", "hooks:\n  - event: X\n    client_regex: *Api\n",
        "a:\n  - x: 1\n    x: 2\n  - y\n", "- a\n- b: c\n  d: [e]\n", "a: {b: 1, b: 2}\n", "a: |\n  two\n  lines\nb: >-\n  folded\n  text\n",
        "clients:\n  - name: a\n    type: log\n  - [x]\nhooks: {}\n", "'quoted key': \"dq\\tvalue\"\n", "a: \u00e9t\u00e9\n",
    ],
)
def test_libyaml_events_read_a_file_as_pyyaml_does(text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FR_TEST_UNSET", raising=False)
    fast, pure = read_both(text, monkeypatch)
    assert fast == pure


scalars = st.one_of(
    st.sampled_from(["x", "a b", "1", "2.5", "true", "null", "~", "${FR_TEST_UNSET}", "$$", "multi\nline", "q'uote", 'd"q', "#hash", "- dash",
                     ": colon", "", " lead", "trail ", "été", "*star", "&amp", "!bang", "%pct", "@at", "|pipe", ">gt", "[br]", "{cu}", "^Orders?$"]),
    st.integers(-5, 5), st.booleans(), st.none(),
)
documents = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(["a", "b", "key x", "1", "null", "hooks"]), inner, max_size=4)), max_leaves=12)


@settings(max_examples=200, deadline=None)
@given(documents, st.sampled_from([None, True, False]), st.sampled_from([None, "'", '"', "|", ">"]), st.integers(0, 3), st.sampled_from(["", ":", "-", " ", "\n", "?", "#", "'", "[", "&a ", "*a "]))
def test_every_file_pyyaml_reads_is_read_the_same_from_libyaml_events(data: Any, flow: bool | None, style: str | None, cut: int, insert: str) -> None:
    text = yaml.safe_dump(data, default_flow_style=flow, default_style=style, allow_unicode=True, width=30)
    if cut:  # and damaged: cut short, or a character put in
        at = len(text) * cut // 4
        text = text[:at] if insert == "" else text[:at] + insert + text[at:]
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.delenv("FR_TEST_UNSET", raising=False)
        fast, pure = read_both(text, monkeypatch)
    if not any("not valid YAML" in p for p in pure[2]):
        # libyaml takes some text PyYAML refuses (e.g. '?' inside a plain value in flow style);
        # whatever PyYAML reads, the events give exactly
        assert fast == pure, text
