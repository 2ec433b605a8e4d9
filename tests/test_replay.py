"""Replay planning (figrelay/replay.py) on a journal written through journal.py, and
Outbox.replay, which stores a plan."""

from __future__ import annotations

import json
import sqlite3
from itertools import count

import pytest
from journal_helpers import CONFIG, assert_on_indexes, config, plan_of

from figrelay import replay as replay_module
from figrelay.journal import JournalDelivery
from figrelay.journal_queries import QueryError, UnknownIdError
from figrelay.replay import ReplayRequest, plan_replay, request_from_json
from figrelay.storage.sqlite import Outbox

T0 = 1_750_000_000.0
NOW = T0 + 86400
BODY = b'{"ClientName":"OrdersApi","Instance":null,"UpdatedSettings":["Timeout","Colour"],"Username":"admin","Link":null,"ChangeMessage":"m","IsTest":false}'


def new_ids():
    numbers = count(1)
    return lambda: f"new{next(numbers):029d}"


def plan(reader, tmp_path, request, text=CONFIG):
    return plan_replay(reader, request, config(tmp_path, text), NOW, new_ids())


def test_a_delivered_delivery_is_replayed_with_the_body_its_hook_sends_today(tmp_path, writer, reader):
    event_id, (delivery_id,) = writer.event(T0, body=BODY)
    writer.deliver(delivery_id, T0 + 1)
    result = plan(reader, tmp_path, ReplayRequest(ids=(delivery_id,)))
    (replayed,) = result.replays
    assert result.refused == ()
    new = replayed.delivery
    assert (new.delivery_id, new.event_id, new.client, new.hook, new.route, new.created_at, new.state, new.replay_of) == (
        "new00000000000000000000000000001", event_id, "slack-ops", 0, "SettingValueChanged", NOW, "pending", delivery_id,
    )
    # hook 0's setting_regex (Timeout$) narrows the event as the intake did
    assert json.loads(replayed.body)["UpdatedSettings"] == ["Timeout"] and replayed.body_from == "hook"


def test_a_dead_letter_still_in_the_outbox_is_replayed_with_its_stored_body(tmp_path, writer, reader):
    event_id, (delivery_id,) = writer.event(T0, body=BODY)
    writer.attempt(delivery_id, 1, T0 + 1, "dead", 404, "HTTP 404")
    writer.outbox_row(delivery_id, "slack-ops", "SettingValueChanged", b'{"stored": true}', T0, state="dead", event_id=event_id)
    (replayed,) = plan(reader, tmp_path, ReplayRequest(ids=(delivery_id,))).replays
    assert replayed.body == b'{"stored": true}' and replayed.body_from == "outbox" and replayed.original.state == "dead"


def test_without_its_hook_the_event_goes_whole_and_a_hook_that_no_longer_matches_refuses(tmp_path, writer, reader):
    _, (delivery_id,) = writer.event(T0, body=BODY)
    writer.deliver(delivery_id, T0 + 1)
    moved = CONFIG.replace("  - {event: SettingValueChanged, client: slack-ops, client_regex: ^Orders, setting_regex: Timeout$}\n", "")
    (replayed,) = plan(reader, tmp_path, ReplayRequest(ids=(delivery_id,)), moved).replays  # hook 0 is now the SecurityEvent hook
    assert json.loads(replayed.body)["UpdatedSettings"] == ["Timeout", "Colour"] and replayed.body_from == "event"
    assert replayed.delivery.hook is None
    narrowed = CONFIG.replace("setting_regex: Timeout$", "setting_regex: ^Retries$")
    result = plan(reader, tmp_path, ReplayRequest(ids=(delivery_id,)), narrowed)
    assert result.replays == ()
    assert result.refused[0].id == delivery_id and "hook 0 (SettingValueChanged to slack-ops) no longer matches this event" in result.refused[0].reason


def test_a_client_no_longer_configured_is_refused_with_a_reason(tmp_path, writer, reader):
    _, (delivery_id,) = writer.event(T0, to=[("slack-opps", 0)])
    writer.deliver(delivery_id, T0 + 1)
    (refusal,) = plan(reader, tmp_path, ReplayRequest(ids=(delivery_id,))).refused
    assert refusal.reason.startswith("client 'slack-opps' is no longer in the configuration; did you mean 'slack-ops'? (clients: siem, slack-ops)")


def test_a_raised_min_run_sessions_event_is_replayed_only_from_the_outbox(tmp_path, writer, reader):
    event_id, (gone, kept) = writer.event(
        T0, route="ClientStatusChanged", to=[("slack-ops", 2), ("slack-ops", 2)], delivery_route="MinRunSessions"
    )
    writer.deliver(gone, T0 + 1)
    writer.attempt(kept, 1, T0 + 1, "dead", 400, "HTTP 400")
    writer.outbox_row(kept, "slack-ops", "MinRunSessions", b'{"RunSessions": 1}', T0, state="dead", event_id=event_id)
    result = plan(reader, tmp_path, ReplayRequest(ids=(event_id,)))
    assert [r.original.delivery_id for r in result.replays] == [kept]
    (refusal,) = result.refused
    assert refusal.id == gone and "figrelay raised from run-session counts" in refusal.reason



def test_a_raised_event_whose_body_the_journal_kept_is_replayed_as_it_was_sent(tmp_path, writer, reader):
    raised = b'{"ClientName":"OrdersApi","Instance":null,"RunSessions":1,"RunSessionsEvent":0,"Link":null,"IsTest":false}'
    event_id, (delivered,) = writer.event(T0, route="ClientStatusChanged", to=[("slack-ops", 2)], delivery_route="MinRunSessions", sent=raised)
    writer.deliver(delivered, T0 + 1)
    (replay,) = plan(reader, tmp_path, ReplayRequest(ids=(event_id,))).replays
    assert replay.body == raised and replay.body_from == "journal"

def test_an_event_id_stands_for_its_own_deliveries_and_pending_or_purged_ones_are_refused(tmp_path, writer, reader):
    event_id, (delivered, pending, purged) = writer.event(T0, route="HealthStatusChanged", to=[("siem", 3), ("siem", 3), ("siem", 3)])
    writer.deliver(delivered, T0 + 1)
    writer.attempt(purged, 1, T0 + 1, "dead", 404, "HTTP 404")
    with writer.conn:
        writer.conn.execute("UPDATE journal_deliveries SET state = 'purged' WHERE delivery_id = ?", (purged,))
    writer.replay_of(delivered, event_id, "siem", T0 + 100, route="HealthStatusChanged")  # an earlier replay is not replayed again
    result = plan(reader, tmp_path, ReplayRequest(ids=(event_id, event_id)))
    assert [r.original.delivery_id for r in result.replays] == [delivered]
    assert {r.id: r.reason.split(" (")[0].split(":")[0] for r in result.refused} == {
        pending: "still pending", purged: "it is purged",
    }
    lonely, _ = writer.event(T0, route="NewClientRegistration", to=[])
    assert plan(reader, tmp_path, ReplayRequest(ids=(lonely,))).refused[0].reason == "no hook matched this event: it made no delivery to replay"


def test_a_window_replays_the_original_deliveries_made_in_it(tmp_path, writer, reader):
    made = []
    for i, route in enumerate(["SettingValueChanged", "HealthStatusChanged", "SettingValueChanged", "HealthStatusChanged"]):
        client, hook = ("slack-ops", 0) if route == "SettingValueChanged" else ("siem", 3)
        event_id, (delivery_id,) = writer.event(T0 + i * 100, route=route, to=[(client, hook)])
        made.append((event_id, delivery_id))
    writer.deliver(made[0][1], T0 + 1)
    writer.attempt(made[1][1], 1, T0 + 101, "dead", 404, "HTTP 404")
    writer.deliver(made[2][1], T0 + 201)
    # made[3] is still pending
    writer.replay_of(made[0][1], made[0][0], "slack-ops", T0 + 150)
    chosen = plan(reader, tmp_path, ReplayRequest(since=T0, until=T0 + 1000))
    assert [r.original.delivery_id for r in chosen.replays] == [made[0][1], made[1][1], made[2][1]] and chosen.refused == ()
    chosen = plan(reader, tmp_path, ReplayRequest(since=T0 + 50, client="slack-ops"))
    assert [r.original.delivery_id for r in chosen.replays] == [made[2][1]]
    chosen = plan(reader, tmp_path, ReplayRequest(since=T0, event="HealthStatusChanged"))
    assert [r.original.delivery_id for r in chosen.replays] == [made[1][1]]
    chosen = plan(reader, tmp_path, ReplayRequest(since=T0, outcome="delivered"))
    assert [r.original.delivery_id for r in chosen.replays] == [made[0][1], made[2][1]]
    chosen = plan(reader, tmp_path, ReplayRequest(ids=(made[0][0], made[1][0]), outcome="dead"))
    assert [r.original.delivery_id for r in chosen.replays] == [made[1][1]]
    assert [(r.id, r.reason) for r in chosen.refused] == [(made[0][0], "none of its deliveries has outcome 'dead'")]


def test_too_many_deliveries_at_once_are_refused(tmp_path, writer, reader, monkeypatch):
    for i in range(3):
        _, (delivery_id,) = writer.event(T0 + i)
        writer.deliver(delivery_id, T0 + i)
    monkeypatch.setattr(replay_module, "MAX_REPLAY", 2)
    with pytest.raises(QueryError, match="this selects 3 deliveries, more than 2 at once"):
        plan(reader, tmp_path, ReplayRequest(since=T0))


@pytest.mark.parametrize(
    ("request_", "problem"),
    [
        (ReplayRequest(ids=("0" * 32,)), "unknown id"),
        (ReplayRequest(ids=("a" * 32,), since=T0), "not both"),
        (ReplayRequest(), "nothing selected"),
        (ReplayRequest(since=T0, event="MinRunSession"), "unknown event type 'MinRunSession'; did you mean 'MinRunSessions'?"),
        (ReplayRequest(since=T0 + 5, until=T0), "ends before it starts"),
        (ReplayRequest(since=T0, outcome="pending"), "only delivered or dead deliveries are replayed"),
    ],
)
def test_bad_requests_are_errors(tmp_path, reader, request_, problem):
    with pytest.raises(QueryError, match=problem.replace("(", r"\(").replace("?", r"\?")):
        plan(reader, tmp_path, request_)


def test_an_unknown_id_is_its_own_error(tmp_path, reader):
    with pytest.raises(UnknownIdError):
        plan(reader, tmp_path, ReplayRequest(ids=("f" * 32,)))


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ([], "must be a JSON object"),
        ({"id": ["x"]}, "unknown field 'id'; did you mean 'ids'?"),
        ({"ids": "abc"}, '"ids" must be a list'),
        ({"since": "1h"}, '"since" must be a unix time'),
        ({"since": True}, '"since" must be a unix time'),
        ({"since": 1, "client": 3}, '"client" must be a string'),
        ({"ids": ["a"], "dry_run": "yes"}, '"dry_run" must be true or false'),
    ],
)
def test_the_endpoints_body_is_checked_field_by_field(body, problem):
    with pytest.raises(QueryError) as caught:
        request_from_json(body)
    assert problem in str(caught.value)


def test_request_from_json_reads_every_field():
    body = {"since": 5, "until": 6.5, "client": "siem", "event": "SecurityEvent", "dry_run": True, "outcome": "dead"}
    assert request_from_json(body) == ReplayRequest((), 5.0, 6.5, "siem", "SecurityEvent", True, "dead")


async def test_outbox_replay_stores_the_outbox_row_and_the_journal_row_together(tmp_path):
    path = tmp_path / "state" / "outbox.sqlite3"
    outbox = Outbox(path)
    await outbox.open()
    try:
        new = JournalDelivery("r" * 32, "e" * 32, "siem", 3, "HealthStatusChanged", T0, replay_of="o" * 32)
        await outbox.replay([(new, b'{"x":1}')])
        assert await outbox.pending_in_order() == [("r" * 32, "siem", T0)]
        (row,) = (await outbox.fetch(["r" * 32])).values()
        assert (row.body, row.hook, row.route, row.state, row.event_id) == (b'{"x":1}', 3, "HealthStatusChanged", "pending", "e" * 32)
    finally:
        await outbox.close()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("SELECT event_id, client, state, replay_of FROM journal_deliveries").fetchall() == [("e" * 32, "siem", "pending", "o" * 32)]
    finally:
        conn.close()


def test_replay_reads_through_indexes(tmp_path, writer, reader):
    event_id, (delivery_id,) = writer.event(T0)
    writer.deliver(delivery_id, T0 + 1)
    statements: list[str] = []
    reader.set_trace_callback(statements.append)
    for request in (ReplayRequest(since=T0), ReplayRequest(since=T0, until=T0 + 9, client="slack-ops"), ReplayRequest(ids=(event_id, delivery_id[:8]))):
        plan(reader, tmp_path, request)
    reader.set_trace_callback(None)
    selects = [sql for sql in statements if sql.lstrip().upper().startswith("SELECT")]
    assert any("replay_of IS NULL" in sql for sql in selects)
    for sql in selects:
        assert_on_indexes(plan_of(reader, sql, []))
