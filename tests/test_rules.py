"""Unit tests for figrelay.rules: Fig's filter semantics (FIG.md, "Filters" and scenarios 6, 7, 9)."""

from __future__ import annotations

import itertools
import json
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from figrelay.config import HookConfig, parse_config
from figrelay.events import FigEvent, SettingValueChanged, parse_event
from figrelay.hookregex import compile_hook_regex, is_linear, required_prefix, time_limited
from figrelay.plugins import PluginRegistry, load_plugins
from figrelay.rules import Match, RegexTimeout, Rules

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


# --- regexes that backtrack: a time budget for each hook and event ---------------------------------

HANG = 60
"""Only a hang guard: without the time limit these searches run for hours, with it for 5 ms."""


def finishes(fn: Callable[[], Any]) -> Any:
    """``fn()``, run in a thread so that a search that never ends fails the test instead of
    hanging the run."""
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    thread.start()
    thread.join(HANG)
    assert not thread.is_alive(), f"still matching after {HANG}s"
    assert out, "the match raised (see the thread's traceback above)"
    return out[0]


def test_a_client_regex_that_backtracks_runs_out_of_time_with_the_whole_event(rules_for: Any) -> None:
    rules = rules_for("  - event: ClientStatusChanged\n    client: a\n    client_regex: '^(a|aa)+$'\n")
    hostile = status("a" * 40 + "!")
    [match] = finishes(lambda: rules.match(hostile))
    assert match.timed_out == RegexTimeout("client_regex", "^(a|aa)+$", 0.005)
    assert match.event is hostile and match.hook.client == "a"
    # the same hook on ordinary names: matched or not, as always
    assert [m.timed_out for m in rules.match(status("aaaa"))] == [None]
    assert rules.match(status("OrdersApi")) == []


def test_the_reported_pattern_is_answered_by_the_engine_itself(rules_for: Any) -> None:
    # '^(a+)+$' took 36 s in Python's re on this name; regex answers it at once, without a timeout
    rules = rules_for("  - event: ClientStatusChanged\n    client: a\n    client_regex: '^(a+)+$'\n")
    assert finishes(lambda: rules.match(status("a" * 30 + "!"))) == []
    assert [m.timed_out for m in rules.match(status("aaaa"))] == [None]


def test_a_setting_regex_that_backtracks_keeps_the_event_whole(rules_for: Any) -> None:
    rules = rules_for(
        "  - event: SettingValueChanged\n    client: a\n    setting_regex: '(x+x+)+y'\n"
        "  - event: SettingValueChanged\n    client: b\n    setting_regex: Timeout\n"
    )
    hostile = event("SettingValueChanged", UpdatedSettings=["Timeout", "x" * 3000])
    first, second = finishes(lambda: rules.match(hostile))
    assert first.timed_out is not None and (first.timed_out.key, first.timed_out.pattern) == ("setting_regex", "(x+x+)+y")
    assert first.event is hostile, "not narrowed: whether the names match is unknown"
    # the other hook is matched as usual, with its own budget
    assert second.timed_out is None and second.event.updated_settings == ("Timeout",)  # type: ignore[attr-defined]


def test_the_budget_covers_the_client_name_and_every_setting_name_together() -> None:
    # a clock that moves 2 ms at each reading: the first search starts the budget, each later one
    # reads what is left, so 5 ms last for three searches and the fourth is refused (caches off, so
    # that every name is searched on every event)
    readings = itertools.count()
    rules = Rules(
        [hook("SettingValueChanged", client_regex="^(Orders|Payments)", setting_regex="^(Time|Retry)")],
        regex_budget=0.005, clock=lambda: next(readings) * 0.002, client_cache_size=0, setting_cache_size=0,
    )
    [match] = rules.match(event("SettingValueChanged", UpdatedSettings=["Timeout", "RetryCount"]))
    assert match.timed_out is None and match.event.updated_settings == ("Timeout", "RetryCount")  # type: ignore[attr-defined]
    [match] = rules.match(event("SettingValueChanged", UpdatedSettings=["Timeout", "RetryCount", "TimeoutMs"]))
    assert match.timed_out == RegexTimeout("setting_regex", "^(Time|Retry)", 0.005)
    # each event, and each hook, starts with a full budget
    [match] = rules.match(event("SettingValueChanged", UpdatedSettings=["Timeout"]))
    assert match.timed_out is None


def test_with_caches_only_the_searches_made_count_against_the_budget() -> None:
    # the same clock: names not seen before are searched and charged as without caches; a name whose
    # result is cached costs no search, so it uses none of the budget
    readings = itertools.count()
    rules = Rules(
        [hook("SettingValueChanged", client_regex="^(Orders|Payments)", setting_regex="^(Time|Retry)")],
        regex_budget=0.005, clock=lambda: next(readings) * 0.002,
    )
    [match] = rules.match(event("SettingValueChanged", ClientName="OrdersApi", UpdatedSettings=["Timeout", "RetryCount"]))
    assert match.timed_out is None and match.event.updated_settings == ("Timeout", "RetryCount")  # type: ignore[attr-defined]
    # a new client name and three new setting names: four searches, the fourth refused
    [match] = rules.match(event("SettingValueChanged", ClientName="PaymentsApi", UpdatedSettings=["TimeoutMs", "RetryMax", "TimeLimit"]))
    assert match.timed_out == RegexTimeout("setting_regex", "^(Time|Retry)", 0.005)
    # the refused search was not kept as a non-match: alone, that name is searched again, and found
    [match] = rules.match(event("SettingValueChanged", ClientName="PaymentsApi", UpdatedSettings=["TimeLimit"]))
    assert match.timed_out is None and match.event.updated_settings == ("TimeLimit",)  # type: ignore[attr-defined]
    # every name of the first events is cached now: nothing is searched, nothing runs out
    [match] = rules.match(event("SettingValueChanged", ClientName="OrdersApi", UpdatedSettings=["Timeout", "RetryCount", "TimeoutMs", "RetryMax"]))
    assert match.timed_out is None and match.event.updated_settings == ("Timeout", "RetryCount", "TimeoutMs", "RetryMax")  # type: ignore[attr-defined]


def test_patterns_that_cannot_backtrack_are_searched_without_the_clock() -> None:
    def no_clock() -> float:
        raise AssertionError("a linear pattern read the clock")

    rules = Rules(
        [hook("SettingValueChanged", client_regex=".*", setting_regex="Timeout$"), hook("SettingValueChanged", "b", client_regex="^Orders", index=1)],
        regex_budget=0.005, clock=no_clock,
    )
    a, b = rules.match(event("SettingValueChanged", UpdatedSettings=["ReadTimeout", "Pool"]))
    assert a.event.updated_settings == ("ReadTimeout",) and b.hook.client == "b"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("regex_text", "client", "matches"),
    [
        ("^(?!Test)", "OrdersApi", True),  # lookahead: every client but the test ones
        ("^(?!Test)", "TestApi", False),
        ("(?<=Orders)Api$", "OrdersApi", True),  # lookbehind
        ("(?<=Orders)Api$", "PaymentsApi", False),
        (r"^(\w)\1", "ooze", True),  # backreference
        (r"^(\w)\1", "OrdersApi", False),
        (r"^\p{Lu}", "OrdersApi", True),  # Unicode category, as in .NET
        (r"^\p{Lu}", "ordersApi", False),
        ("^Orders(Api|Service)$", "OrdersService", True),
        ("(?i)^ORDERS", "OrdersApi", True),
    ],
)
def test_what_a_backtracking_engine_offers_keeps_working(rules_for: Any, regex_text: str, client: str, matches: bool) -> None:
    rules = rules_for(f"  - event: ClientStatusChanged\n    client: a\n    client_regex: '{regex_text}'\n")
    result = rules.match(status(client))
    assert [m.timed_out for m in result] == ([None] if matches else [])


def test_threshold_hooks_report_a_regex_that_ran_out_of_time(rules_for: Any) -> None:
    rules = rules_for(
        "  - event: MinRunSessions\n    client: a\n    client_regex: '^(a|aa)+$'\n    min_sessions: 2\n"
        "  - event: MinRunSessions\n    client: b\n    min_sessions: 2\n"
    )
    name = "a" * 40 + "!"
    (first, timed_out), (second, none) = finishes(lambda: rules.threshold_matches(name))
    assert (first.client, second.client, none) == ("a", "b", None)
    assert timed_out == RegexTimeout("client_regex", "^(a|aa)+$", 0.005)
    assert [h.client for h in finishes(lambda: rules.thresholds_for(name))] == ["b"]
    assert [h.client for h in rules.thresholds_for("aaaa")] == ["a", "b"]


def test_a_timeout_reason_says_what_happened_and_what_to_do() -> None:
    reason = RegexTimeout("setting_regex", r"(\w+\s?)*$", 0.0025).reason("6f0c")
    assert reason == (
        r"setting_regex '(\w+\s?)*$' took longer than 2.5ms on this event; matching was abandoned. "
        "Send it anyway with `figrelay deliveries retry 6f0c` or drop it with `figrelay deliveries purge 6f0c`"
    )


@pytest.mark.parametrize(
    ("pattern", "linear"),
    [
        (".*", True), ("^Orders", True), ("Timeout$", True), ("^OrdersApi$", True), (r"Orders\.Api", True), ("Zähler", True), ("", True),
        ("^.*", False), (".*Timeout", False), ("^(a+)+$", False), ("a|b", False), ("r.e", False), (r"\d", False), ("a+", False),
        ("(?i)orders", False), ("[ab]", False), ("a{2}", False), (r"^Orders\b", False),
    ],
)
def test_only_literals_and_dot_star_count_as_linear(pattern: str, linear: bool) -> None:
    assert is_linear(pattern) is linear
    compiled = compile_hook_regex(pattern)
    assert isinstance(compiled, re.Pattern if linear else regex.Pattern)
    assert (time_limited(compiled) is None) is linear


def test_a_hand_built_re_pattern_that_could_backtrack_is_time_limited_with_its_flags() -> None:
    limited = time_limited(re.compile("^orders(api)?$", re.IGNORECASE))
    assert isinstance(limited, regex.Pattern) and limited.search("OrdersApi") is not None
    ascii_only = time_limited(re.compile(r"^\w+$", re.ASCII))
    assert ascii_only is not None and ascii_only.search("Zähler") is None
    # and it goes through Rules like a loaded one
    [match] = finishes(lambda: Rules([hook("ClientStatusChanged", client_regex="^(a|aa)+$")]).match(status("a" * 40 + "!")))
    assert match.timed_out is not None


# --- the prefix index: a name that cannot match is not searched ------------------------------------


@pytest.mark.parametrize(
    ("pattern", "prefix"),
    [
        ("^OrdersApi$", "OrdersApi"), ("^Orders", "Orders"), ("^Orders(Api|Service)?$", "Orders"), ("^Ordersx?", "Orders"),
        ("^O{1}rders", ""), ("^Orders{e<=1}", "Order"), (r"^Orders\.Api", "Orders"), ("^Ab[|]c", "Ab"), ("^Ab[]|]c", "Ab"),
        ("Orders", ""), ("Api$", ""), (".*", ""), ("^", ""), ("", ""), ("^.*", ""), ("^Orders|Payments", ""), ("^Ab(c|d)|e", ""),
        ("^(?i)Orders", ""), ("^Ord(?i)ers", ""), ("^Ab(?#(x)|y", ""), (r"^\p{Lu}x", ""), ("^A*", ""), ("^(Orders|Payments)", ""),
    ],
)
def test_a_required_prefix_is_found_only_where_it_is_certain(pattern: str, prefix: str) -> None:
    assert required_prefix(compile_hook_regex(pattern)) == prefix


def test_flags_that_change_what_matches_leave_no_prefix() -> None:
    for flags in (re.IGNORECASE, re.MULTILINE, re.VERBOSE):
        assert required_prefix(re.compile("^Orders", flags)) == ""
    assert required_prefix(re.compile("^Orders")) == "Orders"
    assert required_prefix(regex.compile("^Orders", regex.VERSION0 | regex.IGNORECASE)) == ""


PIECES = ("a", "b", "(a|b)", "?", "*", "+", "{2}", "{e<=1}", "|a", "[|]", r"\|", "(?:a|bb)", "$", ".", "(?i)", "(?#c|d)", "[]|]", r"\d", "(a)\\1", "[^]a]", "(?=a)", "\n")


@settings(max_examples=400, deadline=None)
@given(st.text("abAB", min_size=1, max_size=3), st.lists(st.sampled_from(PIECES), max_size=5), st.lists(st.text("abAB|\n1", max_size=8), min_size=1, max_size=20))
def test_no_name_a_pattern_is_found_in_lacks_its_required_prefix(literal: str, tail: list[str], names: list[str]) -> None:
    text = "^" + literal + "".join(tail)
    try:
        pattern = compile_hook_regex(text)
    except ValueError:
        return
    prefix = required_prefix(pattern)
    for name in [*names, literal, literal + "a", literal[:-1]]:
        if pattern.search(name) is not None:
            assert name.startswith(prefix), (text, prefix, name)
