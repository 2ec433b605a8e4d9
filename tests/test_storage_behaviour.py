"""The storage contract's behaviour: every ``Store`` method keeps its promise (figrelay/storage/base.py)
on both back ends, SQLite and PostgreSQL, with one test body run against each (``opened_store``),
and the two give the same answers to the same writes (``test_both_back_ends_answer_alike``).

The last part holds what only the PostgreSQL back end has to keep, with two stores ("replicas")
on one database: claims and their fencing, counting run sessions from both at once, lanes,
LISTEN/NOTIFY, and its health while the database refuses connections.

tests/test_storage_contract.py checks the shape (signatures); this file checks what they do.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from figrelay.journal import Attempt, HookMatch, JournalDelivery, JournalEvent
from figrelay.storage import (
    ClientHealth,
    NewDelivery,
    OutboxError,
    OutcomeWrites,
    SessionChange,
    SessionWrite,
    Store,
    StoredDelivery,
    UnstorableError,
)
from figrelay.storage.postgresql import parse_storage_url
from figrelay.storage.postgresql_store import WORK_CHANNEL, LaneGrant, PostgresStore
from figrelay.storage.sqlite import Outbox

LEASE = 1.0
"""The lease of the two-replica tests: short, so that a lapse is waited for with the real clock."""

# --- values --------------------------------------------------------------------------------------


def new(
    i: int | str, client: str = "siem", *, created_at: float = 1000.0, route: str = "SecurityEvent", hook: int | None = 0,
    body: bytes | None = None, dead: str | None = None, event_id: str | None = None,
) -> NewDelivery:
    return NewDelivery(f"d{i}", client, route, body if body is not None else f'{{"n":"{i}"}}'.encode(), hook, created_at, dead, event_id)


def stored(d: NewDelivery, **changes: Any) -> StoredDelivery:
    """The row ``d`` is stored as when accepted; ``changes`` override fields."""
    row = StoredDelivery(
        d.id, d.client, d.route, d.body, d.hook, d.created_at, 0, d.created_at,
        "pending" if d.dead_reason is None else "dead", d.dead_reason, None if d.dead_reason is None else d.created_at, d.event_id,
    )
    return replace(row, **changes)


def event_of(event_id: str, received_at: float, *, body: bytes = b'{"Name":"x"}', route: str = "SecurityEvent",
             setting_client: str | None = "OrdersApi", matched: Sequence[NewDelivery] = (), test: bool = False) -> JournalEvent:
    return JournalEvent(
        event_id, received_at, route, setting_client, body, test, tuple(HookMatch(d.hook or 0, d.client, d.id) for d in matched),
    )


def connect(key: str, client: str = "OrdersApi") -> SessionWrite:
    return SessionWrite(client, key, True)


def disconnect(key: str, client: str = "OrdersApi") -> SessionWrite:
    return SessionWrite(client, key, False)


# --- the two back ends -----------------------------------------------------------------------------


@dataclass
class Backend:
    """An opened store, and a way to read its tables directly (the journal has no read in ``Store``)."""

    kind: str
    store: Any  # Outbox | PostgresStore: both keep Store
    location: str
    _pg: Any = field(default=None, repr=False)

    async def rows(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        """``sql`` with ``?`` placeholders, on a connection of its own."""
        if self.kind == "sqlite":
            with contextlib.closing(sqlite3.connect(self.location)) as conn:
                conn.row_factory = sqlite3.Row
                return [dict(r) for r in conn.execute(sql, args)]
        if self._pg is None:
            self._pg = await asyncpg.connect(self.location)
        first, *rest = sql.split("?")
        sql = first + "".join(f"${n}{part}" for n, part in enumerate(rest, 1))
        return [dict(r) for r in await self._pg.fetch(sql, *args)]

    async def journal_events(self) -> list[dict[str, Any]]:
        rows = await self.rows(
            "SELECT event_id, received_at, route, setting_client, body, CAST(test AS INTEGER) AS test, matched FROM journal_events ORDER BY received_at, event_id"
        )
        return [{**r, "matched": json.loads(r["matched"])} for r in rows]

    async def journal_deliveries(self) -> dict[str, dict[str, Any]]:
        rows = await self.rows(
            "SELECT delivery_id, event_id, client, hook, route, created_at, state, attempts, finished_at, last_reason, replay_of, body"
            " FROM journal_deliveries ORDER BY delivery_id"
        )
        return {r.pop("delivery_id"): r for r in rows}

    async def journal_attempts(self) -> list[tuple[Any, ...]]:
        rows = await self.rows(
            "SELECT delivery_id, attempt, started_at, duration, outcome, status, reason FROM journal_attempts ORDER BY delivery_id, attempt"
        )
        return [tuple(r.values()) for r in rows]

    async def close(self) -> None:
        try:
            await self.store.close()
        finally:
            if self._pg is not None:
                await self._pg.close()


async def open_backend(kind: str, location: str, **options: Any) -> Backend:
    store = Outbox(Path(location)) if kind == "sqlite" else PostgresStore(parse_storage_url(location), **options)
    await store.open()
    assert isinstance(store, Store)
    return Backend(kind, store, location)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_location(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    """(kind, where): an SQLite file in tmp_path, or a fresh PostgreSQL database (started only for this one)."""
    if request.param == "sqlite":
        return "sqlite", str(tmp_path / "outbox.sqlite3")
    return "postgresql", request.getfixturevalue("pg_database")


@pytest.fixture
async def opened_store(store_location: tuple[str, str]) -> AsyncIterator[Backend]:
    backend = await open_backend(*store_location, replica="solo")
    try:
        yield backend
    finally:
        await backend.close()


async def until(predicate: Callable[[], Awaitable[Any]], *, timeout: float = 5.0, every: float = 0.05, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something true, and return that; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = await predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(every)


# --- the intake: accept, accept_counted, session_count ---------------------------------------------


async def test_accept_stores_deliveries_dead_letters_and_the_journal_event(opened_store: Backend) -> None:
    b, store = opened_store, opened_store.store
    body = '{"Name":"Ünïcode","Value":null}'.encode()
    d1 = new(1, "siem", body=body, hook=3, created_at=1000.5, event_id="e1")
    d2 = new(2, "console", body=b'{"narrowed":true}', hook=None, created_at=1000.5, event_id="e1")
    d3 = new(3, "siem", body=body, hook=4, created_at=1000.5, dead="hook 4: regex ran out of time", event_id="e1")
    ev = event_of("e1", 1000.5, body=body, matched=(d1, d2, d3))
    assert store.health.writable and store.journal_enabled
    await store.accept([d1, d2, d3], (), ev)

    assert await store.list() == [stored(d1), stored(d2), stored(d3)]
    assert await store.list(state="dead") == [stored(d3, state="dead", last_error="hook 4: regex ran out of time", dead_at=1000.5, attempts=0)]
    assert await store.pending_in_order() == [("d1", "siem", 1000.5), ("d2", "console", 1000.5)]
    assert await store.stats() == {"siem": (1, 1, 1000.5), "console": (1, 0, 1000.5)}

    assert await b.journal_events() == [{
        "event_id": "e1", "received_at": 1000.5, "route": "SecurityEvent", "setting_client": "OrdersApi", "body": body, "test": 0,
        "matched": [{"hook": 3, "client": "siem", "delivery": "d1"}, {"hook": 0, "client": "console", "delivery": "d2"}, {"hook": 4, "client": "siem", "delivery": "d3"}],
    }]
    common = {"event_id": "e1", "route": "SecurityEvent", "created_at": 1000.5, "attempts": 0, "replay_of": None}
    assert await b.journal_deliveries() == {
        # the body is kept only where it differs from the event's
        "d1": {**common, "client": "siem", "hook": 3, "state": "pending", "finished_at": None, "last_reason": None, "body": None},
        "d2": {**common, "client": "console", "hook": None, "state": "pending", "finished_at": None, "last_reason": None, "body": b'{"narrowed":true}'},
        "d3": {**common, "client": "siem", "hook": 4, "state": "dead", "finished_at": 1000.5, "last_reason": "hook 4: regex ran out of time", "body": None},
    }

    # an event alone (no hook matched), and deliveries alone
    await store.accept([], (), event_of("e2", 1001.0, test=True))
    await store.accept([new(4, created_at=1002.0)])
    assert [(e["event_id"], e["test"], e["matched"]) for e in await b.journal_events()][1:] == [("e2", 1, [])]
    assert set(await b.journal_deliveries()) == {"d1", "d2", "d3"}

    # with the journal off, the deliveries are stored and the event is not
    store.journal_enabled = False
    await store.accept([new(5, created_at=1003.0, event_id="e3")], (), event_of("e3", 1003.0))
    assert [e["event_id"] for e in await b.journal_events()] == ["e1", "e2"]
    assert "d5" not in await b.journal_deliveries()
    assert [d.id for d in await store.list()] == ["d1", "d2", "d3", "d4", "d5"]
    assert store.health.writable



async def test_accept_commits_session_writes(opened_store: Backend) -> None:
    store = opened_store.store
    await store.accept([], [connect("k1"), connect("k2"), connect("k1", "Pay")])
    await store.accept([new(1)], [connect("k1"), disconnect("k2"), disconnect("nobody", "Nowhere")])
    assert await store.session_count() == 2
    assert [d.id for d in await store.list()] == ["d1"]


async def test_a_value_the_store_cannot_hold_is_refused_alone(opened_store: Backend) -> None:
    store = opened_store.store
    for bad in (new(1, "\ud800"), new(2, hook=1 << 70)):  # a lone surrogate, an integer beyond 64 bits
        with pytest.raises(UnstorableError):
            await store.accept([new(0), bad], (), event_of("e1", 1.0))
        assert store.health.writable, "a refused value says nothing of the store's health"
    assert await store.list() == [] and await opened_store.journal_events() == []
    await store.accept([new(0)])
    assert [d.id for d in await store.list()] == ["d0"]


class Counter:
    """A ``Completion`` like the intake's: each counted change it hears, and a MinRunSessions
    crossing (a delivery to "alerts") when a connect reaches ``minimum`` or a disconnect leaves it."""

    def __init__(self, minimum: int = 2, *, journal_event: bool = True) -> None:
        self.minimum = minimum
        self.heard: list[SessionChange | None] = []
        self.journal_event = journal_event
        self.fail: Exception | None = None
        self.extra: list[NewDelivery] = []

    def __call__(self, change: SessionChange | None) -> tuple[list[NewDelivery], JournalEvent | None]:
        self.heard.append(change)
        if self.fail is not None:
            raise self.fail
        n = len(self.heard)
        made = list(self.extra)
        if change is not None and change.count == self.minimum:  # reaching the minimum, or leaving it
            made.append(NewDelivery(f"cross-{n}", "alerts", "MinRunSessions", f'{{"RunSessions":{change.count}}}'.encode(), 1, 2000.0 + n, event_id=f"s{n}"))
        return made, event_of(f"s{n}", 2000.0 + n, route="ClientStatusChanged", matched=made) if self.journal_event else None


async def test_accept_counted_counts_as_fig_does(opened_store: Backend) -> None:
    b, store = opened_store, opened_store.store
    complete = Counter(minimum=2)
    script = [
        (connect("k1"), SessionChange("OrdersApi", "k1", True, 1)),
        (connect("k2"), SessionChange("OrdersApi", "k2", True, 2)),  # crosses 2
        (connect("k1"), None),  # a repeated Connected
        (connect("k1", "Pay"), SessionChange("Pay", "k1", True, 1)),  # counted per setting client
        (disconnect("k9"), None),  # an unknown Disconnected
        (connect("k3"), SessionChange("OrdersApi", "k3", True, 3)),
        (disconnect("k1"), SessionChange("OrdersApi", "k1", False, 3)),  # before a disconnect: still including the leaving one
        (disconnect("k1"), None),  # a repeated Disconnected
        (disconnect("k3"), SessionChange("OrdersApi", "k3", False, 2)),  # leaves 2: the intake's crossing rule decides; ours crosses on 2
    ]
    counts = []
    for n, (write, expected) in enumerate(script, 1):
        change, made = await store.accept_counted(write, complete)
        assert change == expected, (n, write)
        assert complete.heard[-1] == expected, "complete hears the change it returns"
        assert [d.id for d in made] == ([f"cross-{n}"] if n in (2, 9) else [])
        counts.append(await store.session_count())
    assert counts == [1, 2, 2, 3, 3, 4, 3, 3, 2]
    assert len(complete.heard) == len(script), "complete is called once per count, also when nothing changed"
    # what complete made is stored, due now; its journal event is stored every time, also when nothing changed
    assert [(d.id, d.client, d.state) for d in await store.list()] == [("cross-2", "alerts", "pending"), ("cross-9", "alerts", "pending")]
    assert [e["event_id"] for e in await b.journal_events()] == [f"s{n}" for n in range(1, len(script) + 1)]
    assert set(await b.journal_deliveries()) == {"cross-2", "cross-9"}


async def test_accept_counted_stores_nothing_when_it_fails(opened_store: Backend) -> None:
    b, store = opened_store, opened_store.store
    complete = Counter(minimum=1)
    await store.accept([new(0)])
    assert (await store.accept_counted(connect("k1"), complete))[0] == SessionChange("OrdersApi", "k1", True, 1)

    # a delivery the store refuses (its id is taken): the whole count is refused, and said so
    complete.extra = [new(0, "other", created_at=5.0)]
    with pytest.raises(UnstorableError):
        await store.accept_counted(connect("k2"), complete)
    complete.extra = []
    assert await store.session_count() == 1
    assert [(d.id, d.client) for d in await store.list()] == [("d0", "siem"), ("cross-1", "alerts")]
    assert [e["event_id"] for e in await b.journal_events()] == ["s1"]
    assert store.health.writable, "a refused value says nothing of the store's health"

    # counted afresh when it comes again
    assert (await store.accept_counted(connect("k2"), complete))[0] == SessionChange("OrdersApi", "k2", True, 2)
    assert await store.session_count() == 2


async def test_accept_counted_stores_nothing_when_the_completion_fails(opened_store: Backend) -> None:
    b, store = opened_store, opened_store.store
    complete = Counter(minimum=1)
    assert (await store.accept_counted(connect("k1"), complete))[0] == SessionChange("OrdersApi", "k1", True, 1)
    complete.fail = RuntimeError("a bug in the completion")
    with pytest.raises(RuntimeError, match="a bug in the completion"):
        await store.accept_counted(connect("k2"), complete)
    complete.fail = None
    assert store.health.writable, "a failure of the completion is not a failure of the database"
    assert [d.id for d in await store.list()] == ["cross-1"]
    assert [e["event_id"] for e in await b.journal_events()] == ["s1"]

    assert await store.session_count() == 1
    assert (await store.accept_counted(connect("k2"), complete))[0] == SessionChange("OrdersApi", "k2", True, 2), "counted afresh when it comes again"
    assert await store.session_count() == 2


# --- the dispatcher: pending_in_order, fetch, record_outcomes, client health ------------------------


async def test_pending_in_order_is_acceptance_order(opened_store: Backend) -> None:
    store = opened_store.store
    await store.accept([new(1, "siem", created_at=1002.0)])
    await store.accept([new(2, "siem", created_at=1001.0), new(3, "siem", created_at=1001.0)])
    await store.accept([new(4, "zulu", created_at=1000.0), new(5, "siem", created_at=1001.0, dead="timed out")])
    await store.accept([new(6, "alpha", created_at=1001.0)])
    await store.record_outcomes(OutcomeWrites(3000.0, retry=[("d2", 1, 9000.0, "HTTP 503")]))  # a retry keeps its place
    assert await store.pending_in_order() == [
        ("d4", "zulu", 1000.0), ("d2", "siem", 1001.0), ("d3", "siem", 1001.0), ("d6", "alpha", 1001.0), ("d1", "siem", 1002.0),
    ]
    assert await store.pending_in_order("siem") == [("d2", "siem", 1001.0), ("d3", "siem", 1001.0), ("d1", "siem", 1002.0)]
    assert await store.pending_in_order("nobody") == []
    # the oldest so many (a lane reading back what it could not hold)
    assert await store.pending_in_order("siem", limit=2) == [("d2", "siem", 1001.0), ("d3", "siem", 1001.0)]
    assert len(await store.pending_in_order(limit=1)) == 1


async def test_fetch_returns_the_stored_rows_and_leaves_out_the_missing(opened_store: Backend) -> None:
    store = opened_store.store
    rows = [new(1, created_at=1.5), new(2, "console", hook=None, event_id="e9"), new(3, dead="regex timed out")]
    await store.accept(rows)
    assert await store.fetch([]) == {}
    assert await store.fetch(["d1", "d2", "d3", "missing"]) == {
        "d1": stored(rows[0]), "d2": stored(rows[1]), "d3": stored(rows[2]),
    }
    await store.record_outcomes(OutcomeWrites(3000.0, delivered=["d1"], retry=[("d2", 2, 5000.0, "HTTP 500")]))
    assert await store.fetch(["d1", "d2"]) == {"d2": stored(rows[1], attempts=2, next_attempt_at=5000.0, last_error="HTTP 500")}
    await store.purge(["d3"])
    assert await store.fetch(["d3"]) == {}


async def test_record_outcomes_commits_each_outcome_and_its_journal_attempts(opened_store: Backend) -> None:
    b, store = opened_store, opened_store.store
    rows = [new(i, created_at=1000.0 + i, event_id="e1") for i in range(5)]
    await store.accept(rows, (), event_of("e1", 1000.0, matched=rows))
    outcome = OutcomeWrites(
        3000.0,
        delivered=["d0"],
        dead=[("d1", 3, "HTTP 400: bad request"), ("d2", None, "expired while failing")],
        retry=[("d3", 2, 5000.0, "HTTP 503: busy")],
        attempts=[
            Attempt("d0", 1, 2999.0, 0.25, "delivered", 200),
            Attempt("d1", 3, 2999.5, 0.5, "dead", 400, "HTTP 400: bad request"),
            Attempt("d3", 2, 2999.75, 0.125, "retry", 503, "HTTP 503: busy"),
        ],
    )
    for _ in range(2):  # idempotent: recording it again (after a failed record) changes nothing
        await store.record_outcomes(outcome)
        assert await store.list() == [
            stored(rows[1], state="dead", attempts=3, last_error="HTTP 400: bad request", dead_at=3000.0),
            stored(rows[2], state="dead", attempts=0, last_error="expired while failing", dead_at=3000.0),
            stored(rows[3], attempts=2, next_attempt_at=5000.0, last_error="HTTP 503: busy"),
            stored(rows[4]),
        ]
        assert await store.pending_in_order() == [("d3", "siem", 1003.0), ("d4", "siem", 1004.0)]
        assert await b.journal_attempts() == [
            ("d0", 1, 2999.0, 0.25, "delivered", 200, None),
            ("d1", 3, 2999.5, 0.5, "dead", 400, "HTTP 400: bad request"),
            ("d3", 2, 2999.75, 0.125, "retry", 503, "HTTP 503: busy"),
        ]
        journal_rows = await b.journal_deliveries()
        assert {k: (v["state"], v["attempts"], v["finished_at"], v["last_reason"]) for k, v in journal_rows.items()} == {
            "d0": ("delivered", 1, 3000.0, None),
            "d1": ("dead", 3, 3000.0, "HTTP 400: bad request"),
            "d2": ("dead", 0, 3000.0, "expired while failing"),
            "d3": ("pending", 2, None, "HTTP 503: busy"),
            "d4": ("pending", 0, None, None),
        }
    # a retry never revives a dead letter; a delivered id that is gone is no error
    await store.record_outcomes(OutcomeWrites(3100.0, delivered=["d0", "missing"], retry=[("d1", 9, 9999.0, "late")]))
    assert (await store.fetch(["d1"]))["d1"] == stored(rows[1], state="dead", attempts=3, last_error="HTTP 400: bad request", dead_at=3000.0)

    # with the journal off, outcomes are stored and the journal is left as it is
    store.journal_enabled = False
    await store.record_outcomes(OutcomeWrites(3200.0, delivered=["d4"], attempts=[Attempt("d4", 1, 3199.0, 0.1, "delivered", 204)]))
    assert await store.fetch(["d4"]) == {}
    assert len(await b.journal_attempts()) == 3
    assert (await b.journal_deliveries())["d4"]["state"] == "pending"


async def test_client_health_keeps_the_last_state_per_client(opened_store: Backend) -> None:
    store = opened_store.store
    assert await store.client_health() == {}
    await store.set_client_health(ClientHealth("siem", "open", 3, 100.0, 130.0, "HTTP 503"))
    await store.set_client_health(ClientHealth("console", "closed", 0))
    await store.set_client_health(ClientHealth("siem", "open", 4, 100.0, 190.0, "connection refused"))
    assert await store.client_health() == {
        "siem": ClientHealth("siem", "open", 4, 100.0, 190.0, "connection refused"),
        "console": ClientHealth("console", "closed", 0, None, None, None),
    }
    await store.set_client_health(ClientHealth("siem", "closed", 0))
    assert (await store.client_health())["siem"] == ClientHealth("siem", "closed", 0)


# --- chores, /metrics and figrelay deliveries --------------------------------------------------------


async def test_stats_per_client(opened_store: Backend) -> None:
    store = opened_store.store
    assert await store.stats() == {}
    await store.accept([
        new(1, "siem", created_at=20.0), new(2, "siem", created_at=10.0), new(3, "siem", created_at=5.0, dead="x"),
        new(4, "graveyard", created_at=1.0, dead="x"), new(5, "console", created_at=30.0),
    ])
    assert await store.stats() == {"siem": (2, 1, 10.0), "graveyard": (0, 1, None), "console": (1, 0, 30.0)}
    await store.record_outcomes(OutcomeWrites(50.0, delivered=["d5"]))
    assert "console" not in await store.stats()


async def test_expire_waiting_dead_letters_the_old_pending_of_these_clients(opened_store: Backend) -> None:
    b, store = opened_store, opened_store.store
    rows = [new(1, "gone", created_at=100.0), new(2, "gone", created_at=900.0), new(3, "kept", created_at=100.0), new(4, "gone", created_at=50.0, dead="earlier")]
    await store.accept(rows, (), event_of("e1", 100.0, matched=rows))
    assert await store.expire_waiting([], 500.0, 1000.0, "removed") == []
    expired = await store.expire_waiting(["gone", "absent"], 500.0, 1000.0, "client removed long ago")
    assert sorted(expired) == [("d1", "gone")]
    assert await store.list() == [
        stored(rows[3]),
        stored(rows[0], state="dead", last_error="client removed long ago", dead_at=1000.0),
        stored(rows[2]),
        stored(rows[1]),
    ]
    jd = await b.journal_deliveries()
    assert (jd["d1"]["state"], jd["d1"]["finished_at"], jd["d1"]["last_reason"]) == ("dead", 1000.0, "client removed long ago")
    assert await store.expire_waiting(["gone"], 500.0, 1000.0, "again") == []


async def test_list_by_state_client_and_limit_in_acceptance_order(opened_store: Backend) -> None:
    store = opened_store.store
    await store.accept([new(1, "a", created_at=3.0), new(2, "b", created_at=1.0), new(3, "a", created_at=2.0)])
    await store.accept([new(4, "a", created_at=2.0, dead="x"), new(5, "b", created_at=2.0)])
    assert [d.id for d in await store.list()] == ["d2", "d3", "d4", "d5", "d1"]
    assert [d.id for d in await store.list(client="a")] == ["d3", "d4", "d1"]
    assert [d.id for d in await store.list(state="pending")] == ["d2", "d3", "d5", "d1"]
    assert [d.id for d in await store.list(state="dead", client="a")] == ["d4"]
    assert [d.id for d in await store.list(state="pending", client="a", limit=1)] == ["d3"]
    assert [d.id for d in await store.list(limit=2)] == ["d2", "d3"]
    assert await store.list(client="nobody") == []


async def test_revive_and_purge_act_on_the_chosen_dead_letters(opened_store: Backend) -> None:
    b, store = opened_store, opened_store.store
    rows = [new(i, "siem" if i < 4 else "console", created_at=float(i), event_id="e1") for i in range(7)]
    await store.accept(rows, (), event_of("e1", 0.0, matched=rows))
    await store.record_outcomes(OutcomeWrites(500.0, dead=[(f"d{i}", 2, "HTTP 400") for i in range(6)]))  # d6 stays pending
    assert await store.revive() == [] and await store.purge() == 0  # no selector: nothing

    before = time.time()
    assert sorted(await store.revive(["d0", "d6", "missing"])) == [("d0", "siem")]
    row = (await store.list(client="siem"))[0]
    assert (row.id, row.state, row.dead_at, row.attempts, row.last_error) == ("d0", "pending", None, 2, "HTTP 400")  # due now, history kept
    assert before - 1 <= row.next_attempt_at <= time.time() + 1
    assert ("d0", "siem", 0.0) in await store.pending_in_order("siem")
    assert (await b.journal_deliveries())["d0"]["state"] == "pending"
    assert (await b.journal_deliveries())["d0"]["finished_at"] is None
    assert sorted(await store.revive(client="siem")) == [("d1", "siem"), ("d2", "siem"), ("d3", "siem")]
    assert [d.id for d in await store.list(state="dead")] == ["d4", "d5"]

    assert await store.purge(["d4", "d6", "missing"]) == 1  # d6 is pending: only dead letters go
    assert await store.purge(client="siem") == 0
    assert await store.purge(client="console") == 1
    assert await store.purge(all_dead=True) == 0
    await store.record_outcomes(OutcomeWrites(600.0, dead=[("d1", 3, "HTTP 404")]))
    assert await store.revive(all_dead=True) == [("d1", "siem")]
    await store.record_outcomes(OutcomeWrites(700.0, dead=[("d2", 3, "HTTP 404")]))
    assert await store.purge(all_dead=True) == 1
    assert [d.id for d in await store.list()] == ["d0", "d1", "d3", "d6"]
    jd = await b.journal_deliveries()
    assert {k: v["state"] for k, v in jd.items()} == {
        "d0": "pending", "d1": "pending", "d2": "purged", "d3": "pending", "d4": "purged", "d5": "purged", "d6": "pending",
    }


async def test_purge_waiting_deletes_one_clients_pending_deliveries(opened_store: Backend) -> None:
    b, store = opened_store, opened_store.store
    rows = [new(1, "gone"), new(2, "gone"), new(3, "gone", dead="x"), new(4, "kept")]
    await store.accept(rows, (), event_of("e1", 1000.0, matched=rows))
    assert await store.purge_waiting("gone") == 2
    assert [d.id for d in await store.list()] == ["d3", "d4"]
    assert {k: v["state"] for k, v in (await b.journal_deliveries()).items()} == {"d1": "purged", "d2": "purged", "d3": "dead", "d4": "pending"}
    assert await store.purge_waiting("gone") == 0
    assert await store.purge_waiting("nobody") == 0


async def test_check_writable_is_a_real_write(opened_store: Backend) -> None:
    store = opened_store.store
    for _ in range(2):
        assert await store.check_writable() is None
    assert store.health.writable
    assert await store.list() == []


# --- the journal: replay, prune_journal, journal_stats -----------------------------------------------


async def test_replay_stores_new_pending_deliveries_all_or_none(opened_store: Backend) -> None:
    b, store = opened_store, opened_store.store
    original = new(1, created_at=1000.0, event_id="e1")
    await store.accept([original], (), event_of("e1", 1000.0, matched=[original]))
    await store.record_outcomes(OutcomeWrites(1001.0, delivered=["d1"]))
    await store.replay([])

    now = 2000.0
    again = JournalDelivery("r1", "e1", "siem", 0, "SecurityEvent", now, replay_of="d1")
    narrowed = JournalDelivery("r2", "e1", "console", None, "SecurityEvent", now, replay_of="d1", body=b'{"narrowed":1}')
    await store.replay([(again, b'{"n":"1"}'), (narrowed, b'{"narrowed":1}')])
    assert await store.list() == [
        StoredDelivery("r1", "siem", "SecurityEvent", b'{"n":"1"}', 0, now, 0, now, "pending", None, None, "e1"),
        StoredDelivery("r2", "console", "SecurityEvent", b'{"narrowed":1}', None, now, 0, now, "pending", None, None, "e1"),
    ]
    jd = await b.journal_deliveries()
    assert (jd["r1"]["replay_of"], jd["r1"]["state"], jd["r1"]["client"], jd["r1"]["body"]) == ("d1", "pending", "siem", None)
    assert (jd["r2"]["replay_of"], jd["r2"]["body"]) == ("d1", b'{"narrowed":1}')

    # one replay that cannot be stored (its id is taken) refuses the whole batch
    fresh = JournalDelivery("r3", "e1", "siem", 0, "SecurityEvent", now, replay_of="d1")
    with pytest.raises(UnstorableError):
        await store.replay([(fresh, b"{}"), (again, b"{}")])
    assert [d.id for d in await store.list()] == ["r1", "r2"]
    assert "r3" not in await b.journal_deliveries()
    assert store.health.writable


async def test_prune_journal_by_age_by_size_and_when_off(opened_store: Backend) -> None:
    b, store = opened_store, opened_store.store
    for n in range(6):  # e0..e5, one delivery each, received at 100, 200, ...
        row = new(n, created_at=100.0 * (n + 1), event_id=f"e{n}")
        await store.accept([row], (), event_of(f"e{n}", 100.0 * (n + 1), matched=[row]))
        await store.record_outcomes(OutcomeWrites(100.0 * (n + 1) + 1, attempts=[Attempt(row.id, 1, 100.0 * (n + 1), 0.1, "delivered", 200)],
                                                  **({"delivered": [row.id]} if n != 1 else {"dead": [(row.id, 1, "HTTP 400")]})))
    # e1's delivery is a dead letter still in the outbox: its event is kept whatever its age

    pruned = await store.prune_journal(now=1000.0, retention=650.0, max_bytes=1 << 30, batch=2)
    assert (pruned.by_age, pruned.by_size, pruned.events) == (2, 0, 2)  # e0, e2 (received before 350)
    assert pruned.batches >= 2 and pruned.stats is not None and pruned.stats.oldest_event == 200.0
    assert [e["event_id"] for e in await b.journal_events()] == ["e1", "e3", "e4", "e5"]
    assert set(await b.journal_deliveries()) == {"d1", "d3", "d4", "d5"}
    assert {a[0] for a in await b.journal_attempts()} == {"d1", "d3", "d4", "d5"}
    assert (await store.prune_journal(now=1000.0, retention=650.0, max_bytes=1 << 30)).events == 0

    # by size: the oldest first, until it fits (nothing fits in 0 bytes: all but the kept one)
    pruned = await store.prune_journal(now=1000.0, retention=1e9, max_bytes=0, batch=2)
    assert (pruned.by_age, pruned.by_size) == (0, 3)
    assert [e["event_id"] for e in await b.journal_events()] == ["e1"]
    assert pruned.stats is not None and pruned.stats.oldest_event == 200.0

    # off: everything goes, but for the events whose deliveries are still stored
    await store.accept([new(9, created_at=5000.0, event_id="e9")], (), event_of("e9", 5000.0, matched=[new(9)]))
    await store.purge(["d1"])
    store.journal_enabled = False
    pruned = await store.prune_journal(now=0.0, retention=1e9, max_bytes=1 << 30)
    assert (pruned.by_age, pruned.by_size, pruned.stats) == (1, 0, None)
    assert [e["event_id"] for e in await b.journal_events()] == ["e9"]
    await store.record_outcomes(OutcomeWrites(5001.0, delivered=["d9"]))
    assert (await store.prune_journal(now=0.0, retention=1e9, max_bytes=1 << 30)).by_age == 1
    assert await b.journal_events() == [] and await b.journal_deliveries() == {} and await b.journal_attempts() == []


async def test_journal_stats_tell_the_oldest_event_and_grow_with_content(opened_store: Backend) -> None:
    store = opened_store.store
    await store.accept([new(1, created_at=700.0, event_id="e1")], (), event_of("e1", 700.0))
    await store.accept([], (), event_of("e0", 650.0))  # received earlier, stored later
    first = await store.journal_stats()
    assert first.oldest_event == 650.0 and first.bytes > 0

    big = bytes(range(256)) * 1024  # 256 KiB that do not compress
    for n in range(4):
        row = new(f"b{n}", created_at=800.0 + n, body=big[n:] + b"x", event_id=f"big{n}")
        await store.accept([row], (), event_of(f"big{n}", 800.0 + n, body=big[: -n - 1], matched=[row]))
    # prune_journal measures afresh (journal_stats may answer from a recent measurement)
    grown = (await store.prune_journal(now=1000.0, retention=1e9, max_bytes=1 << 40)).stats
    assert grown is not None and grown.oldest_event == 650.0
    assert grown.bytes >= first.bytes + 2 * 4 * len(big) * 0.9
    assert (await store.journal_stats()).bytes == grown.bytes


# --- both back ends, the same writes, the same answers ------------------------------------------------


def settle(value: Any) -> Any:
    """``value`` with the wall-clock times a store sets itself ("due now", "finished now") as "now",
    and dataclasses as dicts, so that two stores' answers compare."""
    if isinstance(value, float):
        return "now" if value > 1e9 else value
    if isinstance(value, dict):
        return {k: settle(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(settle(v) for v in value)
    if hasattr(value, "__dataclass_fields__"):
        return {"type": type(value).__name__, **{k: settle(getattr(value, k)) for k in value.__dataclass_fields__}}
    return value


async def script(b: Backend) -> list[tuple[str, Any]]:
    """One run through every method of ``Store``, noting each answer."""
    s = b.store
    answers: list[tuple[str, Any]] = []

    def note(name: str, value: Any) -> None:
        answers.append((name, settle(value)))

    rows = [
        new(1, "siem", created_at=1001.0, event_id="e1"),
        new(2, "zulu", created_at=1000.0, event_id="e1"),
        new(3, "siem", created_at=1001.0, dead="timed out", event_id="e1"),
        new(4, "alpha", created_at=1001.0, hook=None, body=b"{}", event_id="e1"),
        new(5, "zulu", created_at=1002.0, event_id="e1"),
    ]
    await s.accept(rows, (), event_of("e1", 1000.0, matched=rows))
    note("pending_in_order", await s.pending_in_order())
    note("pending_in_order(siem)", await s.pending_in_order("siem"))
    note("fetch", await s.fetch(["d1", "d3", "d9"]))
    complete = Counter(minimum=2)
    for write in (connect("k1"), connect("k2"), connect("k1"), disconnect("k9"), disconnect("k1"), connect("k1", "Pay"), disconnect("k2")):
        note(f"accept_counted {write}", await s.accept_counted(write, complete))
        note("session_count", await s.session_count())
    note("completions heard", complete.heard)
    await s.record_outcomes(OutcomeWrites(
        3000.0, delivered=["d1"], dead=[("d2", 4, "HTTP 410")], retry=[("d4", 1, 4000.0, "HTTP 502")],
        attempts=[Attempt("d1", 1, 2999.0, 0.5, "delivered", 200), Attempt("d2", 4, 2999.0, 0.5, "dead", 410, "HTTP 410"),
                  Attempt("d4", 1, 2999.0, 0.5, "retry", 502, "HTTP 502")],
    ))
    note("list", await s.list())
    note("stats", await s.stats())
    note("expire_waiting", sorted(await s.expire_waiting(["alpha", "zulu"], 1000.0, 2001.5, "removed")))
    note("list(dead)", await s.list(state="dead"))
    note("revive", sorted(await s.revive(client="zulu")))
    note("purge", await s.purge(all_dead=True))
    note("purge_waiting", await s.purge_waiting("zulu"))
    await s.replay([(JournalDelivery("r1", "e1", "siem", 0, "SecurityEvent", 6000.0, replay_of="d1"), b'{"n":"1"}')])
    note("list after replay", await s.list())
    await s.set_client_health(ClientHealth("siem", "open", 2, 10.0, 20.0, "HTTP 503"))
    note("client_health", await s.client_health())
    await s.check_writable()
    note("journal events", await b.journal_events())
    note("journal deliveries", await b.journal_deliveries())
    note("journal attempts", await b.journal_attempts())
    pruned = await s.prune_journal(now=2003.5, retention=1.0, max_bytes=1 << 30)
    note("prune_journal", (pruned.by_age, pruned.by_size, pruned.stats and pruned.stats.oldest_event))
    note("journal after pruning", [e["event_id"] for e in await b.journal_events()])
    note("journal_stats oldest", (await s.journal_stats()).oldest_event)
    note("health", (s.health.writable, s.health.error))
    return answers


@pytest.fixture
async def both(tmp_path: Path, pg_database: str) -> AsyncIterator[tuple[Backend, Backend]]:
    lite = await open_backend("sqlite", str(tmp_path / "outbox.sqlite3"))
    try:
        pg = await open_backend("postgresql", pg_database, replica="solo")
        try:
            yield lite, pg
        finally:
            await pg.close()
    finally:
        await lite.close()


async def test_both_back_ends_answer_alike(both: tuple[Backend, Backend]) -> None:
    lite, pg = both
    sqlite_answers, postgresql_answers = await script(lite), await script(pg)
    assert [name for name, _ in sqlite_answers] == [name for name, _ in postgresql_answers]
    for (name, a), (_, p) in zip(sqlite_answers, postgresql_answers, strict=True):
        assert a == p, f"{name}: SQLite and PostgreSQL differ"


# --- PostgreSQL: two replicas on one database ------------------------------------------------------------


@pytest.fixture
async def replicas(pg_database: str) -> AsyncIterator[tuple[PostgresStore, PostgresStore]]:
    """Two stores ("replicas" A and B) on one database, with a short lease."""
    stores: list[PostgresStore] = []
    try:
        for name in ("A", "B"):
            store = PostgresStore(parse_storage_url(pg_database), replica=name, lease=LEASE)
            stores.append(store)
            await store.open()
        yield stores[0], stores[1]
    finally:
        for store in reversed(stores):
            await store.close()


async def journal_states(url: str) -> dict[str, str]:
    conn = await asyncpg.connect(url)
    try:
        return {r[0]: r[1] for r in await conn.fetch("SELECT delivery_id, state FROM journal_deliveries")}
    finally:
        await conn.close()


async def test_a_claimed_row_is_one_replicas_until_given_back_or_lapsed_and_a_lost_claim_is_fenced(
    replicas: tuple[PostgresStore, PostgresStore], pg_database: str,
) -> None:
    a, b = replicas
    r1, r2 = new(1, created_at=1.0, event_id="e1"), new(2, created_at=2.0, event_id="e1")
    await a.accept([r1, r2], (), event_of("e1", 1.0, matched=[r1, r2]))
    claimed: list[int] = []
    a.on_claim = claimed.append
    assert await a.fetch(["d1", "d2", "missing"]) == {"d1": stored(r1), "d2": stored(r2)}
    assert claimed == [2]
    assert await b.fetch(["d1", "d2"]) == {}, "rows another live replica holds are left out"
    assert await a.fetch(["d1"]) == {"d1": stored(r1)}, "its own claim: fetched again"

    # a retry gives the row back at once
    await a.record_outcomes(OutcomeWrites(3000.0, retry=[("d2", 1, 3000.0, "HTTP 503")]))
    assert await b.fetch(["d2"]) == {"d2": stored(r2, attempts=1, next_attempt_at=3000.0, last_error="HTTP 503")}
    assert await a.fetch(["d2"]) == {}

    # A goes quiet: once its claim lapses, B takes d1
    assert await until(lambda: b.fetch(["d1"]), timeout=5 * LEASE, what="A's claim to lapse") == {"d1": stored(r1)}

    # fenced: what A records of d1 now changes nothing (B sends it) ...
    await a.record_outcomes(OutcomeWrites(3100.0, retry=[("d1", 1, 9999.0, "HTTP 503")], attempts=[Attempt("d1", 1, 3099.0, 1.0, "retry", 503, "HTTP 503")]))
    await a.record_outcomes(OutcomeWrites(3100.0, dead=[("d1", 1, "HTTP 400")]))
    assert await b.fetch(["d1"]) == {"d1": stored(r1)}
    assert await a.fetch(["d1"]) == {}
    assert (await journal_states(pg_database))["d1"] == "pending", "the journal does not call a row dead that stayed pending"
    # ... but a delivery is honoured from any replica: a delivered row is never sent again
    await a.record_outcomes(OutcomeWrites(3200.0, delivered=["d1"]))
    assert await b.fetch(["d1"]) == {}
    assert [d.id for d in await b.list()] == ["d2"]
    assert (await journal_states(pg_database))["d1"] == "delivered"
    await b.record_outcomes(OutcomeWrites(3300.0, retry=[("d1", 1, 9999.0, "late")]))
    assert await b.list() == [stored(r2, attempts=1, next_attempt_at=3000.0, last_error="HTTP 503")]


async def test_counting_on_two_replicas_at_once_is_exact(replicas: tuple[PostgresStore, PostgresStore]) -> None:
    a, b = replicas
    complete = Counter(minimum=10, journal_event=False)
    n = 20
    # every Connected reaches both replicas (Fig posts to a load balancer, a retry may land on the other)
    results = await asyncio.gather(*(store.accept_counted(connect(f"k{i}"), complete) for i in range(n) for store in (a, b)))
    changes = [change for change, _ in results if change is not None]
    assert sorted(c.count for c in changes) == list(range(1, n + 1)), "each count once: the replicas saw each other's change"
    assert len(complete.heard) == 2 * n and sorted(c.count for c in complete.heard if c is not None) == list(range(1, n + 1)), "complete heard each count once"
    assert sorted(c.key for c in changes) == sorted(f"k{i}" for i in range(n))
    assert sum(change is None for change, _ in results) == n
    assert await a.session_count() == await b.session_count() == n
    crossings = [d for _, made in results for d in made]
    assert len(crossings) == 1 and crossings[0].body == b'{"RunSessions":10}'
    assert [d.id for d in await b.list(client="alerts")] == [crossings[0].id]

    results = await asyncio.gather(*(store.accept_counted(disconnect(f"k{i}"), complete) for i in range(n) for store in (b, a)))
    changes = [change for change, _ in results if change is not None]
    assert sorted(c.count for c in changes) == list(range(1, n + 1)), "before each disconnect: the sessions still including it"
    assert sorted(c.count for c in complete.heard[2 * n :] if c is not None) == list(range(1, n + 1))
    assert await a.session_count() == 0
    assert len(await a.list(client="alerts")) == 2


async def test_one_owner_per_lane(replicas: tuple[PostgresStore, PostgresStore], pg_database: str) -> None:
    a, b = replicas
    assert await a.acquire_lanes([]) == []
    assert sorted(await a.acquire_lanes(["siem", "pay"]), key=lambda g: g.client) == [LaneGrant("pay", 1), LaneGrant("siem", 1)]
    assert await b.acquire_lanes(["siem", "pay"]) == [], "held lanes are nobody else's"
    assert sorted(await a.acquire_lanes(["siem"])) == [LaneGrant("siem", 1)], "its own lane: renewed, same fence"
    owners = await b.lane_owners()
    assert {client: owner for client, (owner, _) in owners.items()} == {"siem": "A", "pay": "A"}
    assert all(0 < left <= LEASE for _, left in owners.values())

    # heartbeat: presence, and only the lanes it is asked for and holds (a renewal is seen in the
    # stored lease itself, whatever the machine's speed)
    conn = await asyncpg.connect(pg_database)
    try:
        leases = "SELECT client, lease_until FROM lanes"
        before = dict(await conn.fetch(leases))
        await b.heartbeat([])
        grants, alive = await a.heartbeat(["siem", "never-held"])
        after = dict(await conn.fetch(leases))
    finally:
        await conn.close()
    assert (grants, alive) == ([LaneGrant("siem", 1)], 2)
    assert after["siem"] > before["siem"] and after["pay"] == before["pay"], "siem renewed, pay not"
    assert sorted(name for name, *_ in await a.replicas()) == ["A", "B"]
    assert "never-held" not in await a.lane_owners()

    # A stops renewing pay: B takes it when the lease lapses, and the fence rises
    assert await until(lambda: b.acquire_lanes(["pay"]), timeout=5 * LEASE, what="pay's lease to lapse") == [LaneGrant("pay", 2)]
    assert (await a.lane_owners())["pay"][0] == "B"
    assert (await a.heartbeat(["pay"]))[0] == [], "a lane another replica took is not renewed"

    # release hands a lane back at once
    await b.release_lanes(["pay"])
    assert "pay" not in await a.lane_owners()
    assert await a.acquire_lanes(["pay"]) == [LaneGrant("pay", 3)]
    # close hands back every lane at once, and leaves the replicas
    await a.close()
    assert sorted(await b.acquire_lanes(["siem", "pay"]), key=lambda g: g.client) == [LaneGrant("pay", 4), LaneGrant("siem", 2)]
    await b.heartbeat(["siem", "pay"])  # B renews its presence, as it does every third of a lease
    assert [name for name, *_ in await b.replicas()] == ["B"]


async def test_listeners_hear_new_work_when_it_commits(replicas: tuple[PostgresStore, PostgresStore], pg_database: str) -> None:
    a, b = replicas
    heard: list[str] = []
    news = asyncio.Event()

    def on_work(client: str) -> None:
        heard.append(client)
        news.set()

    b.listen(on_work, lambda: None)
    outsider = await asyncpg.connect(pg_database)
    try:

        async def listening() -> bool:
            await outsider.execute(f"NOTIFY {WORK_CHANNEL}, '-ping-'")  # B hears it once it listens
            return "-ping-" in heard

        await until(listening, what="B to listen")
    finally:
        await outsider.close()

    async def hear(name: str) -> None:
        async with asyncio.timeout(5):
            while name not in heard:
                news.clear()
                await news.wait()

    heard.clear()
    await a.accept([new(1, "graveyard", dead="regex timed out")])  # a dead letter is no work
    await a.accept([new(2, "siem")])
    await hear("siem")
    assert [name for name in heard if name != "-ping-"] == ["siem"], "in commit order: the dead letter's would have come first"
    assert [row[0] for row in await b.pending_in_order("siem")] == ["d2"], "heard after it committed"

    await a.close()
    await hear("")  # a replica left: look at every lane


async def test_health_while_the_database_refuses_connections(pg_database: str, postgres: str) -> None:
    url = urllib.parse.urlsplit(pg_database)
    database, password = url.path.lstrip("/"), url.password
    assert password
    store = PostgresStore(parse_storage_url(pg_database), replica="A", lease=LEASE)
    admin = await asyncpg.connect(postgres)
    try:
        await store.open()
        await store.accept([new(1)])
        await admin.execute(f"ALTER DATABASE {database} WITH ALLOW_CONNECTIONS false")
        await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()", database)

        with pytest.raises(OutboxError) as caught:
            await store.accept([new(2)])
        since = store.health.since
        assert not store.health.writable and str(caught.value) == store.health.error
        # the first failure may be whatever the killed connection said; the probe's tell why it stays away
        await until(lambda: asyncio.sleep(0, "is not currently accepting connections" in (store.health.error or "")), what="the reason in health")
        error = store.health.error
        assert error is not None and error.startswith("PostgreSQL at socket ") and f'database "{database}" is not currently accepting connections' in error
        assert password not in error
        started = time.monotonic()
        for write in (store.accept([new(3)]), store.check_writable()):
            with pytest.raises(OutboxError) as caught:
                await write
            assert str(caught.value) == error
        assert time.monotonic() - started < 0.5, "while unwritable, writes fail at once"
        assert not store.health.writable and store.health.since == since

        await admin.execute(f"ALTER DATABASE {database} WITH ALLOW_CONNECTIONS true")
        await until(lambda: asyncio.sleep(0, store.health.writable), timeout=10, what="the store to recover by itself")
        assert store.health.error is None and store.health.since >= since
        await store.accept([new(4)])
        assert [d.id for d in await store.list()] == ["d1", "d4"]
    finally:
        await admin.execute(f"ALTER DATABASE {database} WITH ALLOW_CONNECTIONS true")
        await admin.close()
        await store.close()



async def test_a_late_commit_is_never_skipped_by_the_reader_of_new_work(replicas: tuple[PostgresStore, PostgresStore], pg_database: str) -> None:
    """Rows are numbered when inserted but seen when committed: a transaction that inserted first
    and commits last must still be read by the next ``pending_after`` from the horizon it gave."""
    a, _ = replicas
    slow = await asyncpg.connect(pg_database)
    try:
        transaction = slow.transaction()
        await transaction.start()
        await slow.execute(
            "INSERT INTO deliveries (id, client, route, body, created_at, next_attempt_at) VALUES ('late', 'siem', 'SecurityEvent', '\\x7b7d', 1, 1)"
        )
        await a.accept([new("early", created_at=2.0)])
        rows, horizon = await a.pending_after("siem")
        assert [r[0] for r in rows] == ["dearly"], "the row of a transaction still running is not visible yet"
        await transaction.commit()
        rows, later = await a.pending_after("siem", horizon)
        assert "late" in [r[0] for r in rows], "read from the horizon, the late commit is found"
        assert later >= horizon
        rows, _ = await a.pending_after("siem", later)
        assert [r[0] for r in rows] == [], "once every transaction before the horizon is done, nothing is read twice"
    finally:
        await slow.close()


async def test_many_writes_at_once_are_grouped_and_each_answered(opened_store: Backend) -> None:
    """A burst of accepts, fetches and outcomes at once: each call returns what it alone would,
    whichever statement carried it (the PostgreSQL store groups them as SQLite's group commit does)."""
    store = opened_store.store
    batch = [new(i, client=f"c{i % 3}", created_at=1000.0 + i) for i in range(60)]
    await asyncio.gather(*(store.accept([d]) for d in batch))
    fetched = await asyncio.gather(*(store.fetch([d.id]) for d in batch))
    assert [list(f) for f in fetched] == [[d.id] for d in batch]
    await asyncio.gather(*(store.record_outcomes(OutcomeWrites(2000.0, delivered=[d.id])) for d in batch[:30]))
    await asyncio.gather(*(store.record_outcomes(OutcomeWrites(2000.0, retry=[(d.id, 1, 3000.0, "HTTP 503")])) for d in batch[30:]))
    left = await store.list()
    assert [r.id for r in left] == [d.id for d in batch[30:]] and all(r.attempts == 1 for r in left)
