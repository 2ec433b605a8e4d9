"""Many hooks: the match caches of figrelay.rules give what matching every hook gives, stay
bounded, never keep a regex that ran out of time as a non-match, start empty with each loaded
configuration; and a 10,000-hook file loads and matches correctly. Nothing here is timed: the
figures printed are for reading, the benchmarks live in bench/."""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import write_config
from figrelay.config import HookConfig, load_config
from figrelay.events import FigEvent, SettingValueChanged, parse_event
from figrelay.hookregex import compile_hook_regex
from figrelay.plugins import PluginRegistry, load_plugins
from figrelay.reload import ConfigHolder
from figrelay.rules import _LRU, MAX_CACHED_NAME, Match, RegexTimeout, Rules

FIXTURES = Path(__file__).parent / "fixtures" / "fig"
ROUTES = ("ClientStatusChanged", "SettingValueChanged", "NewClientRegistration", "UpdatedClientRegistration", "HealthStatusChanged", "SecurityEvent", "MinRunSessions")
FIXTURE_OF = {"ClientStatusChanged": "ClientStatusChanged.connected", "MinRunSessions": "MinRunSessions.below"}


@pytest.fixture(scope="module")
def registry() -> Iterator[PluginRegistry]:
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("FIGRELAY_PLUGINS", raising=False)
        yield load_plugins()


def fig_event(route: str, client: str | None = None, names: Sequence[str] | None = None) -> FigEvent:
    data = json.loads((FIXTURES / f"{FIXTURE_OF.get(route, route)}.json").read_bytes())
    if client is not None and route != "SecurityEvent":
        data["ClientName"] = client
    if names is not None and route == "SettingValueChanged":
        data["UpdatedSettings"] = list(names)
    return parse_event(route, data)


# --- the reference: every hook, every regex, every time -------------------------------------------


def reference(hooks: Sequence[HookConfig], event: FigEvent) -> list[tuple[int, bytes]]:
    """Fig's filter semantics written plainly (FIG.md): (hook index, body relayed) in hook order."""
    out: list[tuple[int, bytes]] = []
    client = event.setting_client
    for hook in hooks:
        if hook.event != event.route or hook.min_sessions is not None:
            continue
        if client is not None and hook.client_regex.search(client) is None:
            continue
        relayed = event
        if isinstance(event, SettingValueChanged) and hook.setting_regex is not None:
            names = tuple(name for name in event.updated_settings if hook.setting_regex.search(name) is not None)
            if not names:
                continue
            if names != event.updated_settings:
                relayed = dataclasses.replace(event, updated_settings=names)
        out.append((hook.index, relayed.to_json()))
    return out


def reference_thresholds(hooks: Sequence[HookConfig], name: str) -> list[int]:
    return [h.index for h in hooks if h.min_sessions is not None and h.client_regex.search(name) is not None]


def relayed(matches: list[Match]) -> list[tuple[int, bytes]]:
    assert all(m.timed_out is None for m in matches)
    return [(m.hook.index, m.event.to_json()) for m in matches]


# patterns of every kind the index and the caches treat apart: literals (anchored or not, `$`
# before a trailing newline), required prefixes, alternations at the top and inside groups,
# lookarounds, flags, the empty pattern and .*
CLIENT_REGEXES = (
    ".*", "", "^", "^$", "^Orders$", "^Orders", "Orders", "Api$", "^OrdersApi$", "^Orders(Api|Service)?$", "^Ord(?!ersX)",
    "^(Orders|Payments)", "^Orders|Api$", "^Or.ers", r"^Orders\.Api", "^Ord[e]rs", "^Ordersx?", "^O{1}rders", "(?i)^orders",
    "^Pay", "^Payments", "^PaymentsApi$", "^P", r"^\p{Lu}", "^Orders[|]Api", "^Orders(?:Api|Svc)", "Svc$", "^OrdersApi\n",
)
SETTING_REGEXES = (None, ".*", "Timeout", "^Retry", "Count$", "(?i)timeout", "^(Read|Write)", "x^", "^Timeout$", "")
CLIENT_NAMES = (
    "", "O", "Orders", "OrdersApi", "OrdersApi\n", "Orders\n", "ordersapi", "OrdersService", "OrdersX", "Orders.Api", "OrdersxApi",
    "Payments", "PaymentsApi", "Pay", "MyOrdersApi", "OrdersSvc", "Orders|Api", "Ärger", "x\nOrdersApi", "ORDERS", "x" * (MAX_CACHED_NAME + 1), "Orders" + "y" * MAX_CACHED_NAME,
)
SETTING_NAMES = ("Timeout", "RetryCount", "ReadTimeout", "WriteTimeoutMs", "Pool", "", "Timeout\n", "timeout", "z" * (MAX_CACHED_NAME + 1))


def hand_built(index: int, event: str, client_regex: str, setting_regex: str | None, min_sessions: int | None, flags: int) -> HookConfig:
    client = compile_hook_regex(client_regex)
    if flags:  # as a HookConfig built by hand: Python's re, with flags that change what ^ and letters match
        try:
            client = re.compile(client_regex, flags)
        except re.error:  # \p{Lu} is regex's only
            pass
    setting = compile_hook_regex(setting_regex) if setting_regex is not None and event == "SettingValueChanged" else None
    return HookConfig(index, event, f"c{index % 3}", client, setting, min_sessions if event == "MinRunSessions" else None)


hook_specs = st.tuples(
    st.sampled_from(ROUTES),
    st.sampled_from(CLIENT_REGEXES),
    st.sampled_from(SETTING_REGEXES),
    st.sampled_from((None, None, 1, 3)),
    st.sampled_from((0, 0, 0, re.IGNORECASE, re.MULTILINE)),
)
event_specs = st.tuples(st.sampled_from(ROUTES), st.sampled_from(CLIENT_NAMES), st.lists(st.sampled_from(SETTING_NAMES), max_size=4))


def build_hooks(specs: Sequence[tuple[str, str, str | None, int | None, int]]) -> list[HookConfig]:
    return [hand_built(i, *spec) for i, spec in enumerate(specs)]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(hook_specs, max_size=30), st.lists(event_specs, min_size=1, max_size=40), st.sampled_from([(4096, 16384), (2, 3), (0, 0)]))
def test_cached_matching_gives_what_matching_every_hook_gives(
    specs: list[tuple[str, str, str | None, int | None, int]], events: list[tuple[str, str, list[str]]], sizes: tuple[int, int]
) -> None:
    hooks = build_hooks(specs)
    rules = Rules(hooks, client_cache_size=sizes[0], setting_cache_size=sizes[1])
    # each event twice, the second time from the caches (when they are on)
    for route, client, names in [*events, *events]:
        event = fig_event(route, client, names)
        assert relayed(rules.match(event)) == reference(hooks, event), (route, client, names)
        assert [h.index for h in rules.thresholds_for(client)] == reference_thresholds(hooks, client)
    clients, setting_results = rules.cache_sizes()
    assert clients <= sizes[0] and setting_results <= sizes[1]


def test_hooks_narrowed_to_the_same_names_share_one_event() -> None:
    hooks = build_hooks([("SettingValueChanged", "^Orders", "Timeout", None, 0), ("SettingValueChanged", "Api$", "Timeout", None, 0)])
    first, second = Rules(hooks).match(fig_event("SettingValueChanged", "OrdersApi", ["Timeout", "Pool"]))
    assert first.event is second.event, "one narrowed event, so the intake serializes one body"
    assert first.event.updated_settings == ("Timeout",)  # type: ignore[attr-defined]


# --- bounded -------------------------------------------------------------------------------------


def test_the_caches_stay_bounded_whatever_names_arrive() -> None:
    hooks = build_hooks([(route, regex, "Timeout", 2, 0) for route in ROUTES for regex in ("^Orders", ".*", "Api$")])
    rules = Rules(hooks, client_cache_size=50, setting_cache_size=80)
    for i in range(600):  # names from whoever can post to Fig: each one new
        name = f"OrdersApi{i}"
        event = fig_event("SettingValueChanged", name, [f"Timeout{i}", f"Pool{i}"])
        assert relayed(rules.match(event)) == reference(hooks, event)
        rules.match(fig_event("ClientStatusChanged", name))
        rules.thresholds_for(name)
        clients, setting_results = rules.cache_sizes()
        assert clients <= 50 and setting_results <= 80
    assert rules.cache_sizes() == (50, 80)
    # names too long to keep are matched all the same, and not kept
    before = rules.cache_sizes()
    long_name = "Orders" + "x" * MAX_CACHED_NAME + "Api"
    event = fig_event("SettingValueChanged", long_name, ["Timeout" + "y" * MAX_CACHED_NAME])
    assert relayed(rules.match(event)) == reference(hooks, event) != []
    assert rules.cache_sizes() == before


def test_the_lru_forgets_the_least_recently_used_and_bounds_the_cost() -> None:
    lru = _LRU(3, 10)
    for key in "abc":
        lru.put(key, key.upper())
    assert lru.get("a") == "A"  # now the most recently used
    lru.put("d", "D")
    assert lru.get("b") is None and [lru.get(k) for k in "acd"] == ["A", "C", "D"]
    lru.put("big", "BIG", cost=8)  # a cost of 10 at most: the least recently used makes room
    assert lru.get("a") is None and lru.get("big") == "BIG" and len(lru) == 3 and lru.cost == 10
    lru.put("e", "E", cost=2)
    assert lru.get("c") is None and lru.get("d") is None and len(lru) == 2 and lru.cost == 10
    lru.put("huge", "HUGE", cost=11)  # never kept
    assert lru.get("huge") is None and lru.cost <= 10
    assert _LRU(0, 10).get("x") is None


def test_a_name_matching_thousands_of_hooks_costs_its_size_in_the_cache() -> None:
    hooks = build_hooks([("ClientStatusChanged", ".*", None, None, 0)] * 3000)
    rules = Rules(hooks)
    for i in range(5):
        assert len(rules.match(fig_event("ClientStatusChanged", f"Svc{i}"))) == 3000
    assert rules._clients.cost == 5 * 3001  # the bound counts the hooks kept, not only the names


# --- regexes that run out of time -----------------------------------------------------------------

HANG = 60


def finishes(fn: Callable[[], Any]) -> Any:
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    thread.start()
    thread.join(HANG)
    assert not thread.is_alive() and out, f"still matching after {HANG}s, or raised"
    return out[0]


def test_a_client_regex_that_ran_out_of_time_is_never_kept_as_a_non_match() -> None:
    hooks = build_hooks([("ClientStatusChanged", "^(a|aa)+$", None, None, 0), ("ClientStatusChanged", "^a", None, None, 0), ("MinRunSessions", "^(a|aa)+$", None, 2, 0)])
    rules = Rules(hooks)
    hostile = "a" * 40 + "!"
    for _ in range(3):  # each time searched again, each time out of time: never "no match"
        first, second = finishes(lambda: rules.match(fig_event("ClientStatusChanged", hostile)))
        assert first.timed_out == RegexTimeout("client_regex", "^(a|aa)+$", 0.005) and second.timed_out is None
        [(hook, timed_out)] = finishes(lambda: rules.threshold_matches(hostile))
        assert timed_out is not None and hook.index == 2
    assert rules.cache_sizes() == (0, 0)
    # ordinary names are kept, and matched as ever
    for _ in range(2):
        assert [m.hook.index for m in rules.match(fig_event("ClientStatusChanged", "aaaa"))] == [0, 1]
        assert [h.index for h in rules.thresholds_for("aaaa")] == [2]
    assert rules.cache_sizes() == (2, 0)


@settings(max_examples=60, deadline=None)
@given(st.lists(event_specs, min_size=1, max_size=15), st.lists(st.sampled_from([0.0, 0.0, 0.001, 0.004, 0.01]), min_size=1, max_size=50))
def test_settings_that_ran_out_of_time_never_change_a_later_answer(events: list[tuple[str, str, list[str]]], steps: list[float]) -> None:
    # setting regexes that could backtrack share one budget per hook and event, measured by this
    # clock: random jumps make some searches run out of time; then, with a clock that stands
    # still, every answer must be the reference's, whatever the caches kept meanwhile
    hooks = build_hooks([("SettingValueChanged", regex, setting, None, 0) for regex in ("^(Orders|Pay)", "Api$", ".*") for setting in ("^(Time|Retry)", "(Count|Ms)$")])
    moves = itertools.cycle(steps)
    now = [0.0]
    running = [True]

    def clock() -> float:
        if running[0]:
            now[0] += next(moves)
        return now[0]

    rules = Rules(hooks, regex_budget=0.005, clock=clock)
    for _route, client, names in events:
        event = fig_event("SettingValueChanged", client, names)
        got = rules.match(event)
        expected = reference(hooks, event)
        # a hook either ran out of time (whole event kept) or answered as the reference does
        answered = [(m.hook.index, m.event.to_json()) for m in got if m.timed_out is None]
        assert all(m.event is event for m in got if m.timed_out is not None)
        assert answered == [pair for pair in expected if pair[0] not in {m.hook.index for m in got if m.timed_out is not None}]
    running[0] = False
    for _route, client, names in events:
        event = fig_event("SettingValueChanged", client, names)
        assert relayed(rules.match(event)) == reference(hooks, event)


# --- a reload starts with empty caches --------------------------------------------------------------


def hooks_config(hooks: str) -> str:
    return f"listen: 127.0.0.1:0\nclients:\n  - {{name: a, type: log}}\n  - {{name: b, type: log}}\nhooks:\n{hooks}"


async def test_a_reload_makes_new_caches_so_a_changed_hook_takes_effect(registry: PluginRegistry, tmp_path: Path) -> None:
    path = write_config(tmp_path / "figrelay.yaml", hooks_config("  - {event: SettingValueChanged, client: a, client_regex: '^OrdersApi$', setting_regex: Timeout}\n"))
    orders = fig_event("SettingValueChanged", "OrdersApi", ["Timeout", "Pool"])
    payments = fig_event("SettingValueChanged", "PaymentsApi", ["Timeout", "Pool"])
    async with aiohttp.ClientSession() as http:
        holder = ConfigHolder(path, registry, http)
        await holder.load()
        try:
            old = holder.current.rules
            for _ in range(2):
                assert [m.hook.client for m in old.match(orders)] == ["a"] and old.match(payments) == []
            assert old.cache_sizes() == (2, 2)

            write_config(path, hooks_config("  - {event: SettingValueChanged, client: b, client_regex: '^PaymentsApi$', setting_regex: Pool}\n"))
            assert (await holder.reload("test")).applied
            new = holder.current.rules
            assert new is not old and new.cache_sizes() == (0, 0)
            assert new.match(orders) == []
            [match] = new.match(payments)
            assert match.hook.client == "b" and match.event.updated_settings == ("Pool",)  # type: ignore[attr-defined]
            assert old.cache_sizes() == (2, 2), "the replaced configuration's caches are its own"
        finally:
            await holder.close()


# --- 10,000 hooks ---------------------------------------------------------------------------------


def many_hooks(count: int, clients: int = 100) -> str:
    """``count`` hooks over ``clients`` clients, each with its own client regex: literals, and every
    third one a pattern that could backtrack; a few catch-all hooks of other event types."""
    lines = ["listen: 127.0.0.1:0", "clients:"]
    lines += [f"  - {{name: c{c}, type: log}}" for c in range(clients)]
    lines.append("hooks:")
    for i in range(count):
        regex = f"^Svc{i:05d}(Api|Worker)?$" if i % 3 == 0 else f"^Svc{i:05d}$"
        setting = ("Timeout", "^Retry", ".*")[i % 3]
        lines.append(f"  - {{event: SettingValueChanged, client: c{i % clients}, client_regex: '{regex}', setting_regex: '{setting}'}}")
    lines.append("  - {event: ClientStatusChanged, client: c0, client_regex: '^Svc0004'}")
    lines.append("  - {event: SecurityEvent, client: c1}")
    return "\n".join(lines) + "\n"


def test_a_file_of_10000_hooks_loads_and_matches_correctly(registry: PluginRegistry, tmp_path: Path) -> None:
    path = write_config(tmp_path / "figrelay.yaml", many_hooks(10_000))
    started = time.perf_counter()
    config = load_config(path, registry)
    loaded = time.perf_counter()
    rules = Rules(config.hooks, config.intake.regex_timeout)
    print(f"\n10,000 hooks: load_config {loaded - started:.3f}s, Rules {time.perf_counter() - loaded:.3f}s (for reading, not asserted)")
    assert len(config.hooks) == 10_002 and len(config.clients) == 100
    assert config.hooks[9_999].line == 104 + 9_999 and config.hooks[42].client == "c42"

    # names repeat: each event twice, from the caches the second time
    for _ in range(2):
        [match] = rules.match(fig_event("SettingValueChanged", "Svc00042", ["Timeout", "RetryCount"]))  # 42 % 3 == 0: 'Timeout'
        assert match.hook.index == 42 and match.event.updated_settings == ("Timeout",)  # type: ignore[attr-defined]
        [match] = rules.match(fig_event("SettingValueChanged", "Svc00043", ["Timeout", "RetryCount"]))  # '^Retry'
        assert match.hook.index == 43 and match.event.updated_settings == ("RetryCount",)  # type: ignore[attr-defined]
        [match] = rules.match(fig_event("SettingValueChanged", "Svc09999Worker", ["Pool", "Timeout"]))  # 9999 % 3 == 0: '(Api|Worker)?'
        assert match.hook.index == 9_999 and match.event.updated_settings == ("Timeout",)  # type: ignore[attr-defined]
        assert rules.match(fig_event("SettingValueChanged", "Svc00044Worker", ["Pool"])) == []  # 44: a plain literal
        assert rules.match(fig_event("SettingValueChanged", "Svc10000", ["Timeout"])) == []
        assert [m.hook.index for m in rules.match(fig_event("ClientStatusChanged", "Svc00041"))] == [10_000]
        assert [m.hook.index for m in rules.match(fig_event("SecurityEvent"))] == [10_001]

    # and a sample of events against the reference
    hooks = config.hooks
    for i in range(0, 10_000, 397):
        for name in (f"Svc{i:05d}", f"Svc{i:05d}Api", f"Svc{i:05d}\n", f"xSvc{i:05d}"):
            event = fig_event("SettingValueChanged", name, ["Timeout", "RetryCount", "Pool"])
            assert relayed(rules.match(event)) == reference(hooks, event)

    # per-event figures, for reading: names repeat, and each event matches one hook of either set
    events = [fig_event("SettingValueChanged", f"Svc{i % 10:05d}", ["Timeout", "RetryCount", "Pool"]) for i in range(2_000)]
    small = Rules(hooks[:10])
    for label, subject in (("10 hooks", small), ("10,000 hooks", rules)):
        started = time.perf_counter()
        for event in events:
            subject.match(event)
        print(f"{label}: {(time.perf_counter() - started) / len(events) * 1e6:.1f}us per event (for reading, not asserted)")
