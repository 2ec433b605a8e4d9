"""The journal's queries (figrelay/journal_queries.py) on a journal written through journal.py:
filters, order, ids, traces, and query plans that stay on the indexes."""

from __future__ import annotations

import random
import re
import sqlite3

import pytest
from journal_helpers import assert_on_indexes, config, plan_of

from figrelay.commands_journal import explainer
from figrelay.journal_queries import (
    CLOCK_SLACK,
    CREATE_LAG,
    EventFilter,
    QueryError,
    UnknownIdError,
    deliveries_sql,
    events_sql,
    find_events,
    resolve_id,
    trace,
)

T0 = 1_750_000_000.0


def ids(page) -> list[str]:
    return [e.event_id for e in page.events]


def test_events_are_listed_newest_first_with_their_deliveries_states_and_attempts(writer, reader):
    old, (old_d,) = writer.event(T0)
    new, (new_a, new_b) = writer.event(T0 + 10, to=[("slack-ops", 0), ("siem", None)])
    writer.attempt(old_d, 1, T0 + 1, "retry", 503, "HTTP 503")
    writer.attempt(old_d, 2, T0 + 3, "delivered", 200, "HTTP 200")
    writer.attempt(new_b, 1, T0 + 11, "dead", 404, "HTTP 404: no such route")
    none, _ = writer.event(T0 + 20, route="SecurityEvent", setting_client=None, to=[])

    page = find_events(reader, EventFilter())
    assert ids(page) == [none, new, old] and not page.more
    by_id = {e.event_id: e for e in page.events}
    assert by_id[none].deliveries == () and by_id[none].setting_client is None
    (d,) = by_id[old].deliveries
    assert (d.delivery_id, d.client, d.state, d.attempts, d.finished_at) == (old_d, "slack-ops", "delivered", 2, T0 + 3 + 0.012)
    assert {(d.delivery_id, d.state, d.attempts, d.last_reason) for d in by_id[new].deliveries} == {
        (new_a, "pending", 0, None), (new_b, "dead", 1, "HTTP 404: no such route"),
    }


def test_time_window_route_and_limit(writer, reader):
    events = [writer.event(T0 + i, route="HealthStatusChanged" if i % 2 else "SettingValueChanged")[0] for i in range(10)]
    assert ids(find_events(reader, EventFilter(since=T0 + 3, until=T0 + 6))) == events[6:2:-1]
    assert ids(find_events(reader, EventFilter(route="HealthStatusChanged", since=T0 + 2))) == [events[9], events[7], events[5], events[3]]
    page = find_events(reader, EventFilter(limit=3))
    assert ids(page) == events[9:6:-1] and page.more
    assert not find_events(reader, EventFilter(limit=10)).more


def test_setting_client_regex_searches_names_like_a_hook_and_skips_events_without_one(writer, reader):
    orders, _ = writer.event(T0, setting_client="OrdersApi")
    payments, _ = writer.event(T0 + 1, setting_client="PaymentsApi")
    orders_worker, _ = writer.event(T0 + 2, setting_client="OrdersWorker", route="HealthStatusChanged")
    writer.event(T0 + 3, route="SecurityEvent", setting_client=None, to=[("siem", 1)])
    assert ids(find_events(reader, EventFilter(setting_client="^Orders"))) == [orders_worker, orders]
    assert ids(find_events(reader, EventFilter(setting_client="Api$", route="SettingValueChanged"))) == [payments, orders]
    page = find_events(reader, EventFilter(setting_client="Api$", limit=1))
    assert ids(page) == [payments] and page.more
    # a broad regex (every name) still leaves out events that have no setting client
    assert len(find_events(reader, EventFilter(setting_client=".*")).events) == 3
    assert ids(find_events(reader, EventFilter(setting_client="^Orders", client="slack-ops"))) == [orders_worker, orders]


def test_a_backtracking_regex_gets_a_time_limit_per_name(writer, reader):
    hostile = "a" * 40 + "!"
    writer.event(T0, setting_client=hostile)
    kept, _ = writer.event(T0 + 1, setting_client="aaaa")
    page = find_events(reader, EventFilter(setting_client="^(a|aa)+$"), regex_timeout=0.001)
    assert ids(page) == [kept]
    assert page.regex_timeouts == (hostile,)


def test_client_and_outcome_filters_match_a_delivery_of_the_event(writer, reader):
    a, (a_slack, a_siem) = writer.event(T0, to=[("slack-ops", 0), ("siem", None)])
    b, (b_slack,) = writer.event(T0 + 1)
    c, _ = writer.event(T0 + 2, to=[("siem", None)])
    writer.attempt(a_slack, 1, T0 + 5, "dead", 400, "HTTP 400")
    writer.deliver(a_siem, T0 + 5)
    writer.deliver(b_slack, T0 + 6)
    assert ids(find_events(reader, EventFilter(client="siem"))) == [c, a]
    assert ids(find_events(reader, EventFilter(outcome="dead"))) == [a]
    assert ids(find_events(reader, EventFilter(outcome="delivered"))) == [b, a]
    assert ids(find_events(reader, EventFilter(outcome="delivered", client="slack-ops"))) == [b]
    assert ids(find_events(reader, EventFilter(outcome="dead", client="siem"))) == []
    assert ids(find_events(reader, EventFilter(outcome="pending", client="siem"))) == [c]
    assert ids(find_events(reader, EventFilter(client="slack-ops", since=T0 + 0.5))) == [b]
    assert ids(find_events(reader, EventFilter(client="nobody"))) == []


def test_a_later_replay_finds_its_event_by_client_in_received_order(writer, reader):
    old, (old_d,) = writer.event(T0, to=[("siem", None)])
    newer, _ = writer.event(T0 + 100, to=[("siem", None)])
    writer.replay_of(old_d, old, "siem", T0 + 500)  # walked first (newest delivery), listed by when the event came
    assert ids(find_events(reader, EventFilter(client="siem"))) == [newer, old]
    page = find_events(reader, EventFilter(client="siem", limit=1))
    assert ids(page) == [newer] and page.more
    (event,) = find_events(reader, EventFilter(client="siem", until=T0 + 50)).events
    assert event.event_id == old and [d.replay_of for d in event.deliveries] == [None, old_d]


@pytest.mark.parametrize(
    ("filt", "problem"),
    [
        (EventFilter(route="SettingValueChange"), "unknown event type 'SettingValueChange'; did you mean 'SettingValueChanged'?"),
        (EventFilter(outcome="failed"), "unknown outcome 'failed'"),
        (EventFilter(setting_client="(unclosed"), "the setting-client regex '(unclosed' does not compile: missing )"),
        (EventFilter(limit=0), "the limit must be 1 to"),
        (EventFilter(since=T0 + 1, until=T0), "the time window ends before it starts"),
    ],
)
def test_bad_filters_are_errors_that_name_the_problem(reader, filt, problem):
    with pytest.raises(QueryError) as caught:
        find_events(reader, filt)
    assert problem in str(caught.value) and "\n" not in str(caught.value)


def test_ids_resolve_whole_or_cut_short(writer, reader):
    event_id, (delivery_id,) = writer.event(T0)
    assert resolve_id(reader, event_id) == (event_id, None)
    assert resolve_id(reader, delivery_id) == (event_id, delivery_id)
    assert resolve_id(reader, delivery_id[:8] + "…") == (event_id, delivery_id)
    with pytest.raises(UnknownIdError, match="unknown id '0123456789abcdef0123456789abcdef': no event or delivery"):
        resolve_id(reader, "0123456789abcdef0123456789abcdef")
    with pytest.raises(UnknownIdError):
        resolve_id(reader, event_id[:4])  # too short to stand for an id
    with pytest.raises(QueryError, match="is not an id"):
        resolve_id(reader, "'; DROP TABLE x")


def test_an_ambiguous_prefix_is_an_error(writer, reader):
    writer.event(T0, event_id="abcdef01" + "0" * 24)
    writer.event(T0, event_id="abcdef02" + "0" * 24)
    with pytest.raises(QueryError, match="ambiguous"):
        resolve_id(reader, "abcdef0")


def test_trace_shows_the_event_its_hooks_explained_each_attempt_and_where_each_delivery_is(tmp_path, writer, reader):
    body = b'{"ClientName":"OrdersApi","Instance":null,"UpdatedSettings":["Timeout","Colour"],"Username":"admin","Link":null,"ChangeMessage":"m","IsTest":false}'
    event_id, (done, waiting) = writer.event(T0, body=body, to=[("slack-ops", 0), ("siem", 7)])
    writer.attempt(done, 1, T0 + 1, "retry", 503, "HTTP 503: busy", duration=0.25)
    writer.attempt(done, 2, T0 + 3, "delivered", 200, "HTTP 200")
    writer.attempt(waiting, 1, T0 + 1, "retry", None, "connection refused")
    writer.outbox_row(waiting, "siem", "SettingValueChanged", body, T0, next_attempt_at=T0 + 60, attempts=1, last_error="connection refused")
    replay = writer.replay_of(done, event_id, "slack-ops", T0 + 100)

    found = trace(reader, waiting, explainer(config(tmp_path)))
    assert found.event.event_id == event_id and found.asked_delivery == waiting and found.event.body == body
    assert found.event.updated_settings == ("Timeout", "Colour")
    hook0, hook7 = found.hooks
    assert (hook0.hook, hook0.client, hook0.delivery_id, hook0.configured, hook0.fires) == (0, "slack-ops", done, True, True)
    assert hook0.why == "/^Orders/ found in 'OrdersApi'; would send Timeout"
    assert (hook7.configured, hook7.fires, hook7.why) == (False, None, "this hook is no longer in the configuration")
    by_id = {d.delivery.delivery_id: d for d in found.deliveries}
    assert [(a.attempt, a.outcome, a.status, a.reason, a.duration) for a in by_id[done].attempts] == [
        (1, "retry", 503, "HTTP 503: busy", 0.25), (2, "delivered", 200, "HTTP 200", 0.012),
    ]
    assert by_id[done].delivery.state == "delivered" and by_id[done].outbox is None and by_id[done].replayed_as == (replay,)
    assert by_id[waiting].delivery.state == "pending" and by_id[waiting].outbox.next_attempt_at == T0 + 60
    assert by_id[replay].delivery.replay_of == done and by_id[replay].attempts == ()
    assert [d.delivery.delivery_id for d in found.deliveries] == [done, waiting, replay]


def test_trace_of_an_event_no_hook_matched_and_of_a_moved_hook(tmp_path, writer, reader):
    lonely, _ = writer.event(T0, route="NewClientRegistration", to=[])
    found = trace(reader, lonely, explainer(config(tmp_path)))
    assert found.hooks == () and found.deliveries == () and found.asked_delivery is None
    moved, _ = writer.event(T0, route="SecurityEvent", setting_client=None, to=[("siem", 3)])  # hook 3 is HealthStatusChanged now
    (hook,) = trace(reader, moved, explainer(config(tmp_path))).hooks
    assert not hook.configured and hook.why == "this hook is no longer in the configuration; hook 3 is now HealthStatusChanged to siem"
    with pytest.raises(UnknownIdError):
        trace(reader, "f" * 32)


def test_the_commands_connection_cannot_write(store, reader):
    with pytest.raises(sqlite3.OperationalError, match=r"readonly|read-only|query_only"):
        reader.execute("DELETE FROM journal_events")


# --- query plans: every filter walks an index ------------------------------------------------------

FILTERS = [
    EventFilter(),
    EventFilter(since=T0),
    EventFilter(since=T0, until=T0 + 60),
    EventFilter(route="SecurityEvent"),
    EventFilter(route="SecurityEvent", since=T0, until=T0 + 60),
    EventFilter(client="slack-ops"),
    EventFilter(client="slack-ops", since=T0, until=T0 + 60, route="SettingValueChanged"),
    EventFilter(outcome="dead"),
    EventFilter(outcome="dead", since=T0),
    EventFilter(outcome="dead", client="slack-ops", since=T0),
    EventFilter(outcome="delivered", client="slack-ops", since=T0),
    EventFilter(outcome="pending", route="HealthStatusChanged"),
]


@pytest.mark.parametrize("filt", FILTERS, ids=repr)
def test_filter_queries_use_an_index(reader, filt):
    if filt.client is not None or filt.outcome is not None:
        sql, params = deliveries_sql(filt)
        steps = plan_of(reader, sql, params)
        index = "journal_deliveries_by_state" if filt.outcome in ("dead", "pending") else "journal_deliveries_by_client"
        assert steps[0].startswith(f"SEARCH d USING INDEX {index}"), steps
        assert steps[1].startswith("SEARCH e USING") and steps[1].endswith("(event_id=?)"), steps  # one probe of the primary key
    else:
        sql, params = events_sql(filt)
        steps = plan_of(reader, sql, params)
        index = "journal_events_by_route" if filt.route else "journal_events_by_time"
        assert index in steps[0], steps
    assert_on_indexes(steps)


def test_every_statement_the_queries_run_walks_an_index(tmp_path, writer, reader):
    """Not the SQL as written but as run: every statement find_events and trace send to SQLite,
    captured and explained."""
    _, (delivery_id,) = writer.event(T0)
    writer.attempt(delivery_id, 1, T0 + 1, "delivered", 200, "HTTP 200")
    writer.event(T0 + 1, setting_client="PaymentsApi", to=[("siem", None)])
    statements: list[str] = []
    reader.set_trace_callback(statements.append)
    for filt in [*FILTERS, EventFilter(setting_client="^Orders"), EventFilter(setting_client="^Orders", since=T0, outcome="dead")]:
        find_events(reader, filt)
    trace(reader, delivery_id[:8], explainer(config(tmp_path)))
    reader.set_trace_callback(None)
    selects = [sql for sql in statements if sql.lstrip().upper().startswith("SELECT")]
    assert any("journal_attempts" in sql for sql in selects) and any("FROM journal_deliveries" in sql for sql in selects)
    for sql in selects:
        steps = plan_of(reader, sql, [])
        assert steps, sql
        assert_on_indexes(steps)


def test_every_walk_finds_the_same_events(writer, reader):
    """find_events picks the cheapest way to find the events (the events by time or route, the
    setting clients' names, or the deliveries by client or state): each must give the same answer."""
    rng = random.Random(7)
    names = ["OrdersApi", "OrdersWorker", "PaymentsApi", "Search"]
    routes = ["SettingValueChanged", "HealthStatusChanged", "SecurityEvent"]
    originals: list[tuple[str, str, str]] = []
    for i in range(300):
        route = rng.choice(routes)
        to = [(c, 0) for c in rng.sample(["slack-ops", "siem", "mail"], rng.randint(0, 2))]
        event_id, delivery_ids = writer.event(T0 + i * 10, route=route, setting_client=None if route == "SecurityEvent" else rng.choice(names), to=to)
        for (client, _), delivery_id in zip(to, delivery_ids, strict=True):
            roll = rng.random()
            if roll < 0.6:
                writer.deliver(delivery_id, T0 + i * 10 + 1)
            elif roll < 0.8:
                writer.attempt(delivery_id, 1, T0 + i * 10 + 1, "dead", 404, "HTTP 404")
            originals.append((event_id, delivery_id, client))
    for event_id, delivery_id, client in rng.sample(originals, 30):  # replays made later, some far later
        writer.replay_of(delivery_id, event_id, client, T0 + rng.uniform(0, 4000))
    filters = [
        EventFilter(client="siem"), EventFilter(outcome="dead"), EventFilter(outcome="pending", client="mail"),
        EventFilter(outcome="delivered", client="slack-ops", since=T0 + 500, until=T0 + 2000),
        EventFilter(client="siem", setting_client="^Orders", limit=7), EventFilter(outcome="dead", route="HealthStatusChanged", limit=5),
        EventFilter(client="slack-ops", since=T0 + 1000, limit=3), EventFilter(setting_client="Api$", outcome="delivered", until=T0 + 1500),
        EventFilter(setting_client="Api$", route="SettingValueChanged", since=T0 + 100, limit=9), EventFilter(setting_client="^Orders|^Search"),
        EventFilter(client="nobody", setting_client="Api"), EventFilter(outcome="purged"),
    ]
    for filt in filters:
        walks = ["events", "names"] if filt.setting_client is not None else ["events"]
        walks += ["deliveries:client"] if filt.client is not None else []
        walks += ["deliveries:state"] if filt.outcome is not None else []
        answers = {walk: find_events(reader, filt, walk=walk) for walk in walks}
        chosen = find_events(reader, filt)
        expected = brute_force(reader, filt)
        assert ids(chosen) == expected[: filt.limit] and chosen.more == (len(expected) > filt.limit), filt
        for walk, page in answers.items():
            assert (ids(page), page.more) == (ids(chosen), chosen.more), f"{walk} differs for {filt}"
        assert len(chosen.events) <= filt.limit

    assert sum(len(brute_force(reader, f)) > 0 for f in filters) >= 9, "the filters should find something"


def brute_force(conn: sqlite3.Connection, filt: EventFilter) -> list[str]:
    """The events a filter selects, by reading every row: what the walks must agree with."""
    deliveries: dict[str, list[tuple[str, str, float]]] = {}
    for event_id, client, state, created_at in conn.execute("SELECT event_id, client, state, created_at FROM journal_deliveries"):
        deliveries.setdefault(event_id, []).append((client, state, created_at))
    low = float("-inf") if filt.since is None else filt.since - CLOCK_SLACK
    high = float("inf") if filt.until is None else filt.until + CREATE_LAG

    def selected(received_at: float, route: str, name: str | None, event_id: str) -> bool:
        if (filt.since is not None and received_at < filt.since) or (filt.until is not None and received_at > filt.until):
            return False
        if filt.route is not None and route != filt.route:
            return False
        if filt.setting_client is not None and (name is None or re.search(filt.setting_client, name) is None):
            return False
        if filt.client is None and filt.outcome is None:
            return True
        return any(
            (filt.client is None or c == filt.client) and (filt.outcome is None or st == filt.outcome) and low <= at <= high
            for c, st, at in deliveries.get(event_id, [])
        )

    rows = conn.execute("SELECT event_id, received_at, route, setting_client FROM journal_events").fetchall()
    kept = [(at, event_id) for event_id, at, route, name in rows if selected(at, route, name, event_id)]
    return [event_id for _, event_id in sorted(kept, reverse=True)]
