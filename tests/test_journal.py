"""The journal's write paths: written by the same transactions as the outbox, so the two agree."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from conftest import event, wait_until
from figrelay import journal
from figrelay.storage import NewDelivery, OutcomeWrites
from figrelay.storage.sqlite import Outbox
from test_e2e import AUTH, relay_config


@pytest.fixture
async def outbox(tmp_path: Path):
    box = Outbox(tmp_path / "outbox.sqlite3")
    await box.open()
    yield box
    await box.close()


def rows(box: Outbox, query: str, *params: object) -> list[tuple]:
    with sqlite3.connect(box.path) as conn:
        return conn.execute(query, params).fetchall()


def journal_event(event_id: str, *matched: journal.HookMatch) -> journal.JournalEvent:
    return journal.JournalEvent(event_id, 1000.0, "SecurityEvent", None, b'{"Username":"alice"}', False, matched)


async def test_an_event_and_its_deliveries_are_journaled_with_the_outbox_rows(outbox: Outbox) -> None:
    deliveries = [
        NewDelivery("d1", "siem", "SecurityEvent", b"{}", 0, 1000.0, event_id="e1"),
        NewDelivery("d2", "chat", "SecurityEvent", b"{}", 1, 1000.0, dead_reason="regex ran out of time", event_id="e1"),
    ]
    await outbox.accept(deliveries, (), journal_event("e1", journal.HookMatch(0, "siem", "d1"), journal.HookMatch(1, "chat", "d2", "timed out")))
    assert rows(outbox, "SELECT event_id, route, body, test FROM journal_events") == [("e1", "SecurityEvent", b'{"Username":"alice"}', 0)]
    [(matched,)] = rows(outbox, "SELECT matched FROM journal_events")
    assert json.loads(matched) == [{"hook": 0, "client": "siem", "delivery": "d1"}, {"hook": 1, "client": "chat", "delivery": "d2", "note": "timed out"}]
    assert rows(outbox, "SELECT delivery_id, event_id, client, state, last_reason FROM journal_deliveries ORDER BY delivery_id") == [
        ("d1", "e1", "siem", "pending", None), ("d2", "e1", "chat", "dead", "regex ran out of time"),
    ]
    assert rows(outbox, "SELECT id, event_id FROM deliveries ORDER BY id") == [("d1", "e1"), ("d2", "e1")]


async def test_an_event_that_matched_no_hook_is_journaled_too(outbox: Outbox) -> None:
    await outbox.accept([], (), journal_event("e2"))
    assert rows(outbox, "SELECT event_id, matched FROM journal_events") == [("e2", "[]")]


async def test_attempts_and_outcomes_move_the_journal_in_the_same_transaction(outbox: Outbox) -> None:
    await outbox.accept([NewDelivery(f"d{i}", "siem", "SecurityEvent", b"{}", 0, 1000.0, event_id="e1") for i in range(3)], (), journal_event("e1"))
    await outbox.record_outcomes(OutcomeWrites(
        1001.0, retry=[("d0", 1, 1010.0, "HTTP 503")], attempts=[journal.Attempt("d0", 1, 1000.5, 0.25, "retry", 503, "HTTP 503")],
    ))
    await outbox.record_outcomes(OutcomeWrites(
        1011.0, delivered=["d0"], attempts=[journal.Attempt("d0", 2, 1010.5, 0.01, "delivered", 200, "HTTP 200")],
    ))
    await outbox.record_outcomes(OutcomeWrites(
        1012.0, dead=[("d1", 1, "HTTP 400: bad")], attempts=[journal.Attempt("d1", 1, 1011.5, 0.02, "dead", 400, "HTTP 400: bad")],
    ))
    assert rows(outbox, "SELECT delivery_id, attempt, outcome, status FROM journal_attempts ORDER BY delivery_id, attempt") == [
        ("d0", 1, "retry", 503), ("d0", 2, "delivered", 200), ("d1", 1, "dead", 400),
    ]
    states = dict(rows(outbox, "SELECT delivery_id, state FROM journal_deliveries"))
    assert states == {"d0": "delivered", "d1": "dead", "d2": "pending"}
    assert [r[0] for r in rows(outbox, "SELECT id FROM deliveries ORDER BY id")] == ["d1", "d2"]

    await outbox.revive(["d1"])
    assert dict(rows(outbox, "SELECT delivery_id, state FROM journal_deliveries"))["d1"] == "pending"
    await outbox.record_outcomes(OutcomeWrites(1013.0, dead=[("d1", 2, "HTTP 400: bad")]))
    assert await outbox.purge(["d1"]) == 1
    assert dict(rows(outbox, "SELECT delivery_id, state FROM journal_deliveries"))["d1"] == "purged"


def test_record_outcomes_leaves_the_journal_as_attempts_then_finished_do() -> None:
    # record_outcomes folds a delivered attempt's two UPDATEs into one: the rows must come out the same
    attempts = [
        journal.Attempt("d1", 1, 1000.5, 0.1, "delivered", 200, "HTTP 200"),  # delivered by this attempt
        journal.Attempt("d2", 2, 1000.5, 0.1, "retry", 503, "HTTP 503"),  # retried
        journal.Attempt("d3", 3, 1000.5, 0.1, "dead", 400, "HTTP 400"),  # dead: its own reason wins
        journal.Attempt("d5", 1, 1000.5, 0.1, "retry", 503, "HTTP 503"),  # two attempts in one write, the second delivers
        journal.Attempt("d5", 2, 1000.6, 0.1, "delivered", 200, "HTTP 200"),
    ]
    finished = journal.Finished(1001.0, delivered=["d1", "d4", "d5"], dead=[("d3", "HTTP 400: no such channel")])

    def journal_after(write) -> list[tuple]:
        conn = sqlite3.connect(":memory:")
        journal.create(conn)
        journal.record_deliveries(conn, [journal.JournalDelivery(f"d{i}", "e1", "siem", 0, "SecurityEvent", 1000.0) for i in range(1, 6)])
        conn.execute("UPDATE journal_deliveries SET attempts = 1 WHERE delivery_id = 'd2'")
        write(conn)
        return conn.execute("SELECT delivery_id, state, attempts, finished_at, last_reason FROM journal_deliveries ORDER BY delivery_id").fetchall() + (
            conn.execute("SELECT * FROM journal_attempts ORDER BY delivery_id, attempt").fetchall())

    def apart(conn: sqlite3.Connection) -> None:
        journal.record_attempts(conn, attempts)
        journal.record_finished(conn, finished)

    expected = journal_after(apart)
    assert journal_after(lambda conn: journal.record_outcomes(conn, attempts, finished)) == expected
    assert expected[:5] == [
        ("d1", "delivered", 1, 1001.0, "HTTP 200"), ("d2", "pending", 2, None, "HTTP 503"), ("d3", "dead", 3, 1001.0, "HTTP 400: no such channel"),
        ("d4", "delivered", 0, 1001.0, None), ("d5", "delivered", 2, 1001.0, "HTTP 200"),
    ]


async def test_a_disabled_journal_writes_nothing(outbox: Outbox) -> None:
    outbox.journal_enabled = False
    await outbox.accept([NewDelivery("d1", "siem", "SecurityEvent", b"{}", 0, 1000.0, event_id="e1")], (), journal_event("e1"))
    await outbox.record_outcomes(OutcomeWrites(1001.0, delivered=["d1"], attempts=[journal.Attempt("d1", 1, 1000.0, 0.1, "delivered")]))
    assert rows(outbox, "SELECT COUNT(*) FROM journal_events") == [(0,)]
    assert rows(outbox, "SELECT COUNT(*) FROM journal_attempts") == [(0,)]


async def test_an_older_store_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    with sqlite3.connect(path) as conn:  # a schema-1 store, as figrelay wrote it before the journal
        conn.executescript("""
            CREATE TABLE deliveries (id TEXT PRIMARY KEY, client TEXT NOT NULL, route TEXT NOT NULL, body BLOB NOT NULL, hook INTEGER,
                created_at REAL NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at REAL NOT NULL,
                state TEXT NOT NULL DEFAULT 'pending', last_error TEXT, dead_at REAL);
            CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
            INSERT INTO meta VALUES ('schema_version', '1');
            INSERT INTO deliveries (id, client, route, body, hook, created_at, next_attempt_at) VALUES ('old', 'siem', 'SecurityEvent', x'7b7d', 0, 1, 1);
        """)
    box = Outbox(path)
    await box.open()
    try:
        [row] = (await box.fetch(["old"])).values()
        assert row.event_id is None and row.client == "siem"
        assert rows(box, "SELECT value FROM meta WHERE key = 'schema_version'") == [("2",)]
        assert rows(box, "SELECT COUNT(*) FROM journal_events") == [(0,)]
    finally:
        await box.close()


async def test_the_intake_answers_with_the_event_id_and_journals_the_body_as_received(daemon_factory, receiver) -> None:
    d = await daemon_factory(relay_config({"siem": receiver}, "  - {event: SecurityEvent, client: siem}"))
    body = event("SecurityEvent", Username="alice")
    status, answer = await d.post("SecurityEvent", body, AUTH)
    assert status == 200 and len(answer["event_id"]) == 32
    status, unmatched = await d.post("SettingValueChanged", event("SettingValueChanged"), AUTH)
    assert status == 200 and unmatched["deliveries"] == []
    await wait_until(lambda: len(receiver.requests) == 1)
    db = d.config_path.parent / "state" / "outbox.sqlite3"

    def journaled() -> dict[str, tuple]:
        with sqlite3.connect(db) as conn:
            return {r[0]: r[1:] for r in conn.execute("SELECT event_id, route, body, matched FROM journal_events")}

    events = journaled()
    assert events[answer["event_id"]][:2] == ("SecurityEvent", body)
    assert events[unmatched["event_id"]][2] == "[]", "an event no hook matched is journaled with no matches"
    [delivery] = answer["deliveries"]

    def state() -> str:
        with sqlite3.connect(db) as conn:
            return conn.execute("SELECT state FROM journal_deliveries WHERE delivery_id = ?", (delivery["id"],)).fetchone()[0]

    await wait_until(lambda: state() == "delivered")
    with sqlite3.connect(db) as conn:
        [(outcome, code)] = conn.execute("SELECT outcome, status FROM journal_attempts WHERE delivery_id = ?", (delivery["id"],)).fetchall()
    assert (outcome, code) == ("delivered", 200)


async def test_a_delivery_body_is_kept_only_when_it_differs_from_the_event(outbox: Outbox) -> None:
    received = b'{"Username":"alice"}'
    await outbox.accept([
        NewDelivery("same", "siem", "SecurityEvent", received, 0, 1000.0, event_id="e1"),
        NewDelivery("narrowed", "chat", "SecurityEvent", b'{"Username":"a"}', 1, 1000.0, event_id="e1"),
        NewDelivery("raised", "chat", "MinRunSessions", received, 2, 1000.0, event_id="e1"),
    ], (), journal_event("e1"))
    kept = dict(rows(outbox, "SELECT delivery_id, body FROM journal_deliveries"))
    assert kept == {"same": None, "narrowed": b'{"Username":"a"}', "raised": received}
