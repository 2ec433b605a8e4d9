"""Unit tests for figrelay.rules: Fig's filter semantics (FIG.md, "Filters" and scenarios 6, 7, 9)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from figrelay.config import HookConfig, parse_config
from figrelay.events import FigEvent, SettingValueChanged, parse_event
from figrelay.plugins import PluginRegistry, load_plugins
from figrelay.rules import Match, Rules

FIXTURES = Path(__file__).parent / "fixtures" / "fig"

CLIENTS = """
clients:
  - name: a
    type: log
  - name: b
    type: log
hooks:
"""


@pytest.fixture(scope="module")
def registry() -> Iterator[PluginRegistry]:
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("FIGRELAY_PLUGINS", raising=False)
        reg = load_plugins()
    assert {"log", "http"} <= set(reg.client_types), reg.failures
    yield reg


@pytest.fixture
def rules_for(registry: PluginRegistry, tmp_path: Path) -> Any:
    def build(hooks_yaml: str) -> Rules:
        config = parse_config(CLIENTS + hooks_yaml, tmp_path / "figrelay.yaml", registry)
        return Rules(config.hooks)

    return build


def fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_bytes())


def event(route: str, name: str | None = None, **changes: Any) -> FigEvent:
    data = fixture(name or f"{route}.json")
    data.update(changes)
    return parse_event(route, data)


def status(client: str = "OrdersApi", **changes: Any) -> FigEvent:
    return event("ClientStatusChanged", "ClientStatusChanged.connected.json", ClientName=client, **changes)


def hook(event: str, client: str = "a", client_regex: str = ".*", setting_regex: str | None = None, min_sessions: int | None = None, index: int = 0) -> HookConfig:
    return HookConfig(
        index=index,
        event=event,
        client=client,
        client_regex=re.compile(client_regex),
        setting_regex=re.compile(setting_regex) if setting_regex is not None else None,
        min_sessions=min_sessions,
    )


def clients_of(matches: list[Match]) -> list[str]:
    return [m.hook.client for m in matches]


# --- client regex: a case-sensitive search -------------------------------------------------------


@pytest.mark.parametrize(
    ("regex", "client", "matches"),
    [
        ("^Orders", "OrdersApi", True),
        ("^Orders", "PaymentsApi", False),
        ("^Orders", "MyOrdersApi", False),
        ("Orders", "MyOrdersApi", True),
        ("Orders", "OrdersApi", True),
        ("orders", "OrdersApi", False),
        ("Api$", "OrdersApi", True),
        ("Api$", "OrdersApiV2", False),
        ("^OrdersApi$", "OrdersApi", True),
        ("^OrdersApi$", "OrdersApi2", False),
        ("r.e", "OrdersApi", True),
        ("(?i)orders", "OrdersApi", True),
        (".*", "", True),
    ],
)
def test_client_regex_is_a_case_sensitive_search(rules_for: Any, regex: str, client: str, matches: bool) -> None:
    rules = rules_for(f"  - event: ClientStatusChanged\n    client: a\n    client_regex: '{regex}'\n")
    result = rules.match(status(client))
    assert len(result) == (1 if matches else 0)
    if matches:
        assert result[0].event.setting_client == client


def test_client_regex_default_matches_every_client(rules_for: Any) -> None:
    rules = rules_for("  - event: ClientStatusChanged\n    client: a\n")
    for name in ("OrdersApi", "x", "Payments"):
        assert clients_of(rules.match(status(name))) == ["a"]


def test_only_the_client_name_is_matched_not_the_instance(rules_for: Any) -> None:
    rules = rules_for("  - event: ClientStatusChanged\n    client: a\n    client_regex: blue\n")
    assert rules.match(status("OrdersApi", Instance="blue")) == []
    assert len(rules.match(status("OrdersApi-blue", Instance=None))) == 1


@pytest.mark.parametrize(
    ("route", "name"),
    [
        ("ClientStatusChanged", "ClientStatusChanged.connected.json"),
        ("SettingValueChanged", None),
        ("NewClientRegistration", None),
        ("UpdatedClientRegistration", None),
        ("MinRunSessions", "MinRunSessions.restored.json"),
        ("HealthStatusChanged", None),
    ],
)
def test_client_regex_applies_to_every_client_event(rules_for: Any, route: str, name: str | None) -> None:
    rules = rules_for(
        f"  - event: {route}\n    client: a\n    client_regex: ^Orders\n"
        f"  - event: {route}\n    client: b\n    client_regex: ^Payments\n"
    )
    orders = rules.match(event(route, name, ClientName="OrdersApi"))
    assert clients_of(orders) == ["a"]
    assert orders[0].event.to_json() == event(route, name, ClientName="OrdersApi").to_json()
    assert clients_of(rules.match(event(route, name, ClientName="PaymentsApi"))) == ["b"]
    assert rules.match(event(route, name, ClientName="Billing")) == []


def test_hooks_only_get_their_own_event_type(rules_for: Any) -> None:
    rules = rules_for(
        "  - event: ClientStatusChanged\n    client: a\n"
        "  - event: HealthStatusChanged\n    client: b\n"
    )
    assert clients_of(rules.match(status())) == ["a"]
    assert clients_of(rules.match(event("HealthStatusChanged"))) == ["b"]
    assert rules.match(event("SettingValueChanged")) == []
    assert rules.match(event("SecurityEvent")) == []
    assert rules.match(event("NewClientRegistration")) == []


def test_no_hooks_no_deliveries() -> None:
    rules = Rules([])
    for path in FIXTURES.glob("*.json"):
        assert rules.match(parse_event(path.name.split(".")[0], json.loads(path.read_bytes()))) == []
    assert rules.has_thresholds is False
    assert rules.thresholds_for("OrdersApi") == []


# --- setting regex ----------------------------------------------------------------------------


def test_setting_regex_narrows_updated_settings_keeping_order(rules_for: Any) -> None:
    rules = rules_for("  - event: SettingValueChanged\n    client: a\n    setting_regex: Timeout\n")
    original = event("SettingValueChanged", UpdatedSettings=["ReadTimeout", "RetryCount", "Timeout", "WriteTimeoutMs", "Pool"], Zeta="kept")
    [match] = rules.match(original)
    assert isinstance(match.event, SettingValueChanged)
    assert match.event.updated_settings == ("ReadTimeout", "Timeout", "WriteTimeoutMs")
    # the rest of the event is untouched, extra fields included
    assert match.event.to_json() == (
        b'{"ClientName":"OrdersApi","Instance":null,"UpdatedSettings":["ReadTimeout","Timeout","WriteTimeoutMs"],'
        b'"Username":"admin","Link":"http://localhost:5050/","ChangeMessage":"Increase timeout for peak","IsTest":false,"Zeta":"kept"}'
    )
    # and the received event is not changed
    assert original.updated_settings == ("ReadTimeout", "RetryCount", "Timeout", "WriteTimeoutMs", "Pool")  # type: ignore[attr-defined]


def test_setting_regex_is_a_case_sensitive_search(rules_for: Any) -> None:
    rules = rules_for("  - event: SettingValueChanged\n    client: a\n    setting_regex: timeout\n")
    assert rules.match(event("SettingValueChanged", UpdatedSettings=["Timeout", "RetryCount"])) == []
    [match] = rules.match(event("SettingValueChanged", UpdatedSettings=["Timeout", "timeouts"]))
    assert match.event.updated_settings == ("timeouts",)  # type: ignore[attr-defined]


def test_setting_regex_without_match_sends_nothing(rules_for: Any) -> None:
    rules = rules_for(
        "  - event: SettingValueChanged\n    client: a\n    setting_regex: ^Pool\n"
        "  - event: SettingValueChanged\n    client: b\n"
    )
    # hook 0 matches nothing, hook 1 (default .*) gets the whole event
    result = rules.match(event("SettingValueChanged"))
    assert clients_of(result) == ["b"]
    assert result[0].event.updated_settings == ("Timeout", "RetryCount")  # type: ignore[attr-defined]


def test_default_setting_regex_keeps_every_setting(rules_for: Any) -> None:
    rules = rules_for("  - event: SettingValueChanged\n    client: a\n")
    original = event("SettingValueChanged")
    [match] = rules.match(original)
    assert match.event.to_json() == original.to_json()


def test_setting_regex_and_client_regex_both_apply(rules_for: Any) -> None:
    rules = rules_for("  - event: SettingValueChanged\n    client: a\n    client_regex: ^Orders\n    setting_regex: Timeout\n")
    assert rules.match(event("SettingValueChanged", ClientName="PaymentsApi")) == []
    assert len(rules.match(event("SettingValueChanged", ClientName="OrdersApi"))) == 1
    assert rules.match(event("SettingValueChanged", ClientName="OrdersApi", UpdatedSettings=["RetryCount"])) == []


def test_empty_updated_settings_sends_nothing(rules_for: Any) -> None:
    rules = rules_for("  - event: SettingValueChanged\n    client: a\n    setting_regex: .*\n")
    assert rules.match(event("SettingValueChanged", UpdatedSettings=[])) == []


def test_each_hook_narrows_independently(rules_for: Any) -> None:
    rules = rules_for(
        "  - event: SettingValueChanged\n    client: a\n    setting_regex: ^Retry\n"
        "  - event: SettingValueChanged\n    client: b\n    setting_regex: Time\n"
    )
    a, b = rules.match(event("SettingValueChanged"))
    assert (a.hook.client, a.event.updated_settings) == ("a", ("RetryCount",))  # type: ignore[attr-defined]
    assert (b.hook.client, b.event.updated_settings) == ("b", ("Timeout",))  # type: ignore[attr-defined]


def test_hookconfig_without_setting_regex_relays_the_event_unchanged() -> None:
    original = event("SettingValueChanged")
    [match] = Rules([hook("SettingValueChanged")]).match(original)
    assert match.event is original


# --- SecurityEvent, duplicates --------------------------------------------------------------------


def test_security_event_ignores_client_regex(rules_for: Any) -> None:
    rules = rules_for(
        "  - event: SecurityEvent\n    client: a\n    client_regex: ^NeverMatches$\n"
        "  - event: SecurityEvent\n    client: b\n    client_regex: '^alice$'\n"
    )
    sec = event("SecurityEvent")
    result = rules.match(sec)
    assert clients_of(result) == ["a", "b"]
    assert all(m.event is sec for m in result)
    assert result[0].event.to_json() == (FIXTURES / "SecurityEvent.json").read_bytes().removesuffix(b"\n")


def test_two_hooks_to_the_same_client_match_twice(rules_for: Any) -> None:
    rules = rules_for(
        "  - event: ClientStatusChanged\n    client: a\n"
        "  - event: SecurityEvent\n    client: a\n"
        "  - event: ClientStatusChanged\n    client: a\n    client_regex: Orders\n"
        "  - event: ClientStatusChanged\n    client: b\n    client_regex: Payments\n"
    )
    result = rules.match(status("OrdersApi"))
    assert [(m.hook.client, m.hook.index) for m in result] == [("a", 0), ("a", 2)]
    result = rules.match(status("PaymentsApi"))
    assert [(m.hook.client, m.hook.index) for m in result] == [("a", 0), ("b", 3)]


def test_two_security_hooks_to_the_same_client_match_twice() -> None:
    rules = Rules([hook("SecurityEvent", index=0), hook("SecurityEvent", index=1)])
    assert [m.hook.index for m in rules.match(event("SecurityEvent"))] == [0, 1]


# --- MinRunSessions ---------------------------------------------------------------------------


def test_min_sessions_hooks_never_relay_figs_own_min_run_sessions(rules_for: Any) -> None:
    rules = rules_for(
        "  - event: MinRunSessions\n    client: a\n    min_sessions: 2\n"
        "  - event: MinRunSessions\n    client: b\n    client_regex: ^Orders\n    min_sessions: 1\n"
    )
    for name in ("MinRunSessions.restored.json", "MinRunSessions.below.json"):
        assert rules.match(event("MinRunSessions", name)) == []
    assert rules.has_thresholds is True
    assert [h.client for h in rules.thresholds_for("OrdersApi")] == ["a", "b"]
    assert [h.client for h in rules.thresholds_for("PaymentsApi")] == ["a"]
    # status events do not match threshold hooks either
    assert rules.match(status()) == []


def test_min_run_sessions_hooks_without_min_sessions_relay_fig_events(rules_for: Any) -> None:
    rules = rules_for(
        "  - event: MinRunSessions\n    client: a\n"
        "  - event: MinRunSessions\n    client: b\n    min_sessions: 2\n"
    )
    for name in ("MinRunSessions.restored.json", "MinRunSessions.below.json"):
        fig_event = event("MinRunSessions", name)
        result = rules.match(fig_event)
        assert clients_of(result) == ["a"]
        assert result[0].event is fig_event
    assert [h.client for h in rules.thresholds_for("OrdersApi")] == ["b"]


def test_thresholds_for_is_a_case_sensitive_search() -> None:
    rules = Rules([hook("MinRunSessions", client_regex="^Orders", min_sessions=2), hook("MinRunSessions", client_regex="Api", min_sessions=3, index=1)])
    assert [h.index for h in rules.thresholds_for("OrdersApi")] == [0, 1]
    assert [h.index for h in rules.thresholds_for("ordersApi")] == [1]
    assert rules.thresholds_for("orders") == []


# --- FIG.md scenarios -------------------------------------------------------------------------


def test_scenario_6_client_regex_three_settings(rules_for: Any) -> None:
    rules = rules_for("  - event: SettingValueChanged\n    client: a\n    client_regex: ThreeSettings\n")
    sent = [m for name in ("ClientA", "ThreeSettings") for m in rules.match(event("SettingValueChanged", ClientName=name))]
    assert [m.event.setting_client for m in sent] == ["ThreeSettings"]


def test_scenario_7_setting_regex_a_bool_setting(rules_for: Any) -> None:
    rules = rules_for("  - event: SettingValueChanged\n    client: a\n    setting_regex: ABoolSetting\n")
    assert rules.match(event("SettingValueChanged", UpdatedSettings=["AStringSetting"])) == []
    [match] = rules.match(event("SettingValueChanged", UpdatedSettings=["AStringSetting", "ABoolSetting"]))
    assert match.event.updated_settings == ("ABoolSetting",)  # type: ignore[attr-defined]
    assert json.loads(match.event.to_json())["UpdatedSettings"] == ["ABoolSetting"]


def test_scenario_9_orders_not_payments(rules_for: Any) -> None:
    rules = rules_for(
        "  - event: ClientStatusChanged\n    client: a\n    client_regex: ^Orders\n"
        "  - event: ClientStatusChanged\n    client: b\n    client_regex: ^Payments\n"
    )
    assert clients_of(rules.match(status("OrdersApi"))) == ["a"]
