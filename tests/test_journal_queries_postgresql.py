"""The journal's queries (journal_queries.py) and replay planning (replay.py) on PostgreSQL, through
storage/pg_read.py's PostgresReader: a journal written to SQLite through journal.py is copied table
by table into a database that ``migrate`` created, and every query must answer exactly as on
SQLite. Also what the reader says when it cannot read, its placeholders, and its cursors (read a
batch at a time, in a transaction only while a result is partly read)."""

from __future__ import annotations

import asyncio
import random
import sqlite3
import subprocess
import sys
import threading
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from itertools import count
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from journal_helpers import JournalWriter, config

from figrelay.commands_journal import explainer
from figrelay.journal_queries import (
    POSTGRESQL,
    EventFilter,
    JournalUnavailable,
    attempts_of,
    deliveries_of,
    dialect_of,
    find_events,
    outbox_rows,
    query_errors,
    resolve_id,
    setting_client_names,
    trace,
)
from figrelay.replay import ReplayRequest, plan_replay
from figrelay.storage.pg_read import BATCH, PostgresReader, numbered_placeholders
from figrelay.storage.postgresql import migrate, parse_storage_url

T0 = 1_750_000_000.0
NOW = T0 + 86400
COPIED = ("journal_events", "journal_deliveries", "journal_attempts", "deliveries")
"""The tables the queries read: the journal's three, and the outbox (``outbox_rows``, replay bodies)."""


# --- a SQLite journal, and its copy in PostgreSQL --------------------------------------------------


def _boolean(value: Any) -> bool | None:
    return None if value is None else bool(value)


def _bytea(value: Any) -> bytes | None:
    return value if value is None or isinstance(value, bytes) else str(value).encode()


_CONVERT: dict[str, Callable[[Any], Any]] = {"boolean": _boolean, "bytea": _bytea}
"""SQLite's values where PostgreSQL's column type differs: 0/1 for a boolean, TEXT for a bytea."""


async def copy_store(store: Path, url: str) -> None:
    """Create figrelay's schema in the database at ``url`` (``migrate``) and copy the SQLite
    store's journal and outbox into it, row by row. Every SQLite column must have its namesake in
    PostgreSQL (the two schemas agree); PostgreSQL's extra columns (replica, seq, claims) keep
    their defaults."""
    conn = await asyncpg.connect(url)
    source = sqlite3.connect(store)
    try:
        await migrate(conn)
        for table in COPIED:
            types = dict(
                await conn.fetch(
                    "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = $1",
                    table,
                )
            )
            columns = [row[1] for row in source.execute(f"PRAGMA table_info({table})")]
            assert set(columns) <= set(types), f"{table}: PostgreSQL lacks SQLite's columns {sorted(set(columns) - set(types))}"
            convert = [_CONVERT.get(types[c], lambda v: v) for c in columns]
            rows = [tuple(f(v) for f, v in zip(convert, row, strict=True)) for row in source.execute(f"SELECT {', '.join(columns)} FROM {table}")]
            await conn.copy_records_to_table(table, records=rows, columns=columns)
    finally:
        source.close()
        await conn.close()


@pytest.fixture
async def mirror(pg_database: str, store: Path) -> AsyncIterator[Callable[[], Awaitable[PostgresReader]]]:
    """``await mirror()``: copy the store as written so far into the test's database, and open a
    PostgresReader on it (closed after the test)."""
    readers: list[PostgresReader] = []

    async def make() -> PostgresReader:
        await copy_store(store, pg_database)
        reader = await asyncio.to_thread(PostgresReader.open, parse_storage_url(pg_database))
        readers.append(reader)
        return reader

    yield make
    for reader in readers:
        reader.close()


@dataclass
class Journal:
    """What ``fill`` wrote, to ask about."""

    events: list[str]
    deliveries: list[str]
    pending: list[str]
    ambiguous: list[str]
    orphan: str
    """A delivery whose event retention has pruned."""


NAMES = ["OrdersApi", "OrdersWorker", "PaymentsApi", "Search", "orders-legacy", "Émile", "ÖBB.Fahrplan", "Zeta", "_batch", "a b"]
ROUTES = ["SettingValueChanged", "HealthStatusChanged", "SecurityEvent", "ClientStatusChanged"]
CLIENTS = ["slack-ops", "siem", "mail"]


def fill(writer: JournalWriter, events: int = 450, seed: int = 7) -> Journal:
    """A journal such as months of use leave: events of every type, some tests, names in mixed case
    and scripts (so that any order but SQLite's would show), deliveries delivered, retried, dead
    and pending, dead letters and pending rows in the outbox, bodies kept as sent, replays made
    later, two ids that share a prefix, and a delivery whose event was pruned."""
    rng = random.Random(seed)
    journal = Journal([], [], [], [], "")
    for i in range(events):
        at = T0 + i * 10
        route = rng.choice(ROUTES)
        name = None if route == "SecurityEvent" else rng.choice(NAMES)
        to = [(c, rng.choice([0, 1, 3, None])) for c in rng.sample(CLIENTS, rng.choice([0, 1, 1, 2, 3]))]
        raised = route == "ClientStatusChanged" and rng.random() < 0.5
        sent = b'{"ClientName":"OrdersApi","RunSessions":1,"IsTest":false}' if raised and rng.random() < 0.5 else None
        event_id, delivery_ids = writer.event(
            at, route=route, setting_client=name, to=to, test=rng.random() < 0.1, delivery_route="MinRunSessions" if raised else None, sent=sent,
        )
        journal.events.append(event_id)
        for (client, _), delivery_id in zip(to, delivery_ids, strict=True):
            journal.deliveries.append(delivery_id)
            roll = rng.random()
            if roll < 0.2:
                writer.attempt(delivery_id, 1, at + 1, "retry", 503, "HTTP 503", duration=0.25)
                writer.attempt(delivery_id, 2, at + 4, "delivered", 200, "HTTP 200")
            elif roll < 0.55:
                writer.deliver(delivery_id, at + 1)
            elif roll < 0.75:
                writer.attempt(delivery_id, 1, at + 1, "dead", 404, "HTTP 404: no such route")
                if rng.random() < 0.5:
                    writer.outbox_row(delivery_id, client, route, b'{"dead": "letter"}', at, state="dead", attempts=1, last_error="HTTP 404", event_id=event_id)
            else:
                journal.pending.append(delivery_id)
                writer.outbox_row(delivery_id, client, route, b"{}", at, next_attempt_at=at + 60, attempts=0, event_id=event_id)
    for delivery_id in rng.sample([d for d in journal.deliveries if d not in journal.pending], 40):
        event_id, made = writer.conn.execute("SELECT event_id, created_at FROM journal_deliveries WHERE delivery_id = ?", (delivery_id,)).fetchone()
        writer.replay_of(delivery_id, event_id, rng.choice(CLIENTS), made + rng.uniform(30, 3000))  # some long after
    for suffix in ("01", "02"):
        event_id, _ = writer.event(T0 + events * 10 + int(suffix), event_id="abcdef" + suffix + uuid.uuid4().hex[:24], to=[("siem", None)])
        journal.ambiguous.append(event_id)
    pruned, (journal.orphan,) = writer.event(T0 - 50, to=[("siem", 3)])
    writer.deliver(journal.orphan, T0 - 49)
    with writer.conn:
        writer.conn.execute("DELETE FROM journal_events WHERE event_id = ?", (pruned,))
    return journal


def outcome(query: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, ...]:
    """What a query gives: ("answer", its answer) or ("error", its type, its message), to compare
    the two back ends on failures as well."""
    try:
        return ("answer", query(*args, **kwargs))
    except Exception as exc:
        return ("error", type(exc), str(exc))


def walks_of(filt: EventFilter) -> list[str | None]:
    """The cheapest walk (None), and every way ``find_events`` can be made to find the events."""
    walks: list[str | None] = [None, "events"]
    walks += ["names"] if filt.setting_client is not None else []
    walks += ["deliveries:client"] if filt.client is not None else []
    walks += ["deliveries:state"] if filt.outcome is not None else []
    return walks


FILTERS = [
    EventFilter(),
    EventFilter(limit=1),
    EventFilter(limit=2000),
    EventFilter(since=T0 + 700),
    EventFilter(since=T0 + 500, until=T0 + 1500),
    EventFilter(until=T0 + 300, limit=7),
    EventFilter(route="SecurityEvent"),
    EventFilter(route="HealthStatusChanged", since=T0 + 1000, limit=5),
    EventFilter(route="NewClientRegistration"),
    EventFilter(client="siem"),
    EventFilter(client="mail", limit=3),
    EventFilter(client="nobody"),
    EventFilter(client="slack-ops", since=T0 + 1000, until=T0 + 2500, route="SettingValueChanged"),
    EventFilter(outcome="dead"),
    EventFilter(outcome="pending", client="mail"),
    EventFilter(outcome="purged"),
    EventFilter(outcome="delivered", client="slack-ops", since=T0 + 500, until=T0 + 2000),
    EventFilter(outcome="dead", route="HealthStatusChanged", limit=5),
    EventFilter(outcome="delivered", client="siem", limit=600),
    EventFilter(setting_client="^Orders"),
    EventFilter(setting_client="Api$", outcome="delivered", until=T0 + 1500),
    EventFilter(setting_client="^orders|^Orders", client="siem", limit=7),
    EventFilter(setting_client="^É|^Ö|^_"),
    EventFilter(setting_client=".", since=T0 + 2000, limit=11),
    EventFilter(setting_client="^Nobody"),
    EventFilter(setting_client="Api", client="nobody"),
    EventFilter(setting_client="a", route="HealthStatusChanged", outcome="pending"),
]


@pytest.fixture
async def both(writer: JournalWriter, reader: sqlite3.Connection, mirror: Callable[[], Awaitable[PostgresReader]]) -> tuple[sqlite3.Connection, PostgresReader, Journal]:
    """The filled journal read through SQLite and through PostgreSQL."""
    journal = fill(writer)
    return reader, await mirror(), journal


# --- the same answers on both ----------------------------------------------------------------------


def test_the_reader_names_its_dialect(both):
    lite, pg, _ = both
    assert dialect_of(pg) is POSTGRESQL and dialect_of(lite) is not POSTGRESQL


def test_find_events_answers_the_same_by_every_walk(both):
    lite, pg, _ = both
    for filt in FILTERS:
        expected = find_events(lite, filt)
        for walk in walks_of(filt):
            assert find_events(pg, filt, walk=walk) == find_events(lite, filt, walk=walk) == expected, f"{filt}, walk {walk}"


def test_the_filters_find_events_of_every_kind(both):
    """The comparisons above mean something only if the filters find things, tests and all."""
    lite, _, _ = both
    pages = [find_events(lite, filt) for filt in FILTERS]
    assert sum(bool(page.events) for page in pages) >= 20
    assert sum(page.more for page in pages) >= 5
    every = find_events(lite, EventFilter(limit=2000)).events
    assert any(e.test for e in every) and any(not e.test for e in every)
    assert any(d.replay_of for e in every for d in e.deliveries)


def test_ids_resolve_the_same_whole_or_cut_short(both):
    lite, pg, journal = both
    asked = [
        *journal.events[::7], *journal.deliveries[::5], journal.orphan,
        *(i[:6] for i in journal.events[::11]), *(i[:8] + "…" for i in journal.deliveries[::9]), *(i[:12] + "..." for i in journal.events[::13]),
        journal.events[3].upper(), journal.events[4][:7].upper(),  # ids are lowercase: in SQLite's byte order, neither names anything
        "abcdef0", "abcdef", journal.ambiguous[0][:9], "0123456789abcdef0123456789abcdef", "abc", "'; DROP TABLE x", "abcde~",
    ]
    for text in asked:
        assert outcome(resolve_id, pg, text) == outcome(resolve_id, lite, text), text
    assert outcome(resolve_id, pg, "abcdef0")[0] == "error" and "ambiguous" in outcome(resolve_id, pg, "abcdef0")[2]


def test_traces_are_the_same(tmp_path, both):
    lite, pg, journal = both
    explain = explainer(config(tmp_path))
    asked = [*journal.events[::9], *journal.deliveries[::6], *(d[:7] for d in journal.pending[::4]), journal.orphan, "f" * 32]
    for text in asked:
        assert outcome(trace, pg, text, explain) == outcome(trace, lite, text, explain), text
    found = trace(pg, journal.pending[0], explain)
    assert found.deliveries and any(d.outbox is not None for d in found.deliveries)


def test_deliveries_attempts_outbox_rows_and_names_are_the_same(both):
    lite, pg, journal = both
    events = [*journal.events, "no-such-event"]
    deliveries = [*journal.deliveries, journal.orphan, "no-such-delivery"]
    assert len(events) > 450 and len(deliveries) > 500, "the ids must span several chunks of 500"
    assert deliveries_of(pg, events) == deliveries_of(lite, events)
    assert attempts_of(pg, deliveries) == attempts_of(lite, deliveries)
    assert outbox_rows(pg, deliveries) == outbox_rows(lite, deliveries) != {}
    assert deliveries_of(pg, []) == attempts_of(pg, []) == outbox_rows(pg, []) == {}
    names = setting_client_names(pg)
    assert names == setting_client_names(lite) == sorted(NAMES)
    assert setting_client_names(pg, at_most=3) is None and setting_client_names(lite, at_most=3) is None


def test_replay_plans_are_the_same(tmp_path, both):
    lite, pg, journal = both
    settings = config(tmp_path)
    requests = [
        ReplayRequest(since=T0),
        ReplayRequest(since=T0 + 500, until=T0 + 2500),
        ReplayRequest(since=T0, client="siem"),
        ReplayRequest(since=T0, client="mail", outcome="dead"),
        ReplayRequest(since=T0, outcome="delivered", event="HealthStatusChanged"),
        ReplayRequest(since=T0, event="MinRunSessions"),
        ReplayRequest(since=T0 - 100, until=T0, client="siem"),
        ReplayRequest(ids=(*journal.events[:40], *journal.deliveries[:40])),
        ReplayRequest(ids=(*(d[:8] for d in journal.deliveries[40:60]), *journal.pending[:5], journal.orphan)),
        ReplayRequest(ids=tuple(journal.events[40:80]), client="siem", outcome="dead"),
        ReplayRequest(ids=("0" * 32,)),
        ReplayRequest(ids=("abcdef0",)),
    ]
    for request in requests:
        on_pg = outcome(plan_replay, pg, request, settings, NOW, _new_ids())
        on_lite = outcome(plan_replay, lite, request, settings, NOW, _new_ids())
        assert on_pg == on_lite, request
    plan = plan_replay(pg, ReplayRequest(since=T0), settings, NOW, _new_ids())
    assert {r.body_from for r in plan.replays} >= {"outbox", "hook", "event"} and plan.refused


def _new_ids() -> Callable[[], str]:
    numbers = count(1)
    return lambda: f"new{next(numbers):029d}"


async def test_a_journal_without_its_outbox_table_reads_the_same_and_the_reader_goes_on(tmp_path, writer, reader, mirror, pg_database):
    """outbox_rows and replay read the outbox too; without it (a copied journal) they go without,
    and on PostgreSQL the failed statement must not spoil the reader's next ones."""
    journal = fill(writer, events=60)
    pg = await mirror()
    with writer.conn:
        writer.conn.execute("DROP TABLE deliveries")
    owner = await asyncpg.connect(pg_database)
    try:
        await owner.execute("DROP TABLE deliveries")
    finally:
        await owner.close()
    assert outbox_rows(pg, journal.deliveries) == outbox_rows(reader, journal.deliveries) == {}
    explain = explainer(config(tmp_path))
    for text in journal.pending[:3]:
        assert trace(pg, text, explain) == trace(reader, text, explain)
    request = ReplayRequest(since=T0)
    assert plan_replay(pg, request, config(tmp_path), NOW, _new_ids()) == plan_replay(reader, request, config(tmp_path), NOW, _new_ids())
    assert find_events(pg, EventFilter(client="siem")) == find_events(reader, EventFilter(client="siem"))


async def test_it_works_from_threads_the_daemons_loop_hands_work_to(both):
    """The daemon calls the planner through asyncio.to_thread: the reader's own loop serves every
    thread, and statements from two threads at once take turns."""
    lite, pg, _ = both
    filt = EventFilter(client="siem", limit=30)
    expected = find_events(lite, filt)
    pages = await asyncio.gather(*(asyncio.to_thread(find_events, pg, filt) for _ in range(4)))
    assert all(page == expected for page in pages)
    assert find_events(pg, filt) == expected  # and from this loop's own thread, which it does not use


# --- the reader itself -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SELECT ?, ?", "SELECT $1, $2"),
        ("SELECT '?', ?", "SELECT '?', $1"),
        ("SELECT 'it''s ?', ?", "SELECT 'it''s ?', $1"),
        (r"SELECT E'\' ?', ?", r"SELECT E'\' ?', $1"),
        (r"SELECT e'\\', ?", r"SELECT e'\\', $1"),
        (r"SELECT '\', ?", r"SELECT '\', $1"),  # a backslash is no escape in a standard string
        ('SELECT "a?b" FROM t WHERE x = ?', 'SELECT "a?b" FROM t WHERE x = $1'),
        ('SELECT "say ""?""", ?', 'SELECT "say ""?""", $1'),
        ("SELECT $$ ? ' $$, $tag$ ?$$ $tag$, ?", "SELECT $$ ? ' $$, $tag$ ?$$ $tag$, $1"),
        ("SELECT a$b, ?", "SELECT a$b, $1"),
        ("SELECT ? -- why?\n, ?", "SELECT $1 -- why?\n, $2"),
        ("SELECT /* ? /* ? */ ? */ ?", "SELECT /* ? /* ? */ ? */ $1"),
        ("SELECT 1", "SELECT 1"),
        ("SELECT 'unclosed ?", "SELECT 'unclosed ?"),
    ],
)
def test_question_marks_become_numbered_placeholders_outside_literals(sql, expected):
    assert numbered_placeholders(sql) == expected


async def test_a_question_mark_in_a_literal_reaches_the_server_as_text(mirror):
    pg = await mirror()
    row = pg.execute("SELECT '?' AS a, ? AS b, $$?$$ AS c, E'\\'?' AS d, CAST(? AS integer) AS e /* ? */", ("one", 2)).fetchone()
    assert row == ("?", "one", "?", "'?", 2)


async def test_the_session_is_read_only(mirror):
    pg = await mirror()
    with pytest.raises(query_errors()) as caught:
        pg.execute("DELETE FROM journal_events")
    assert isinstance(caught.value, asyncpg.ReadOnlySQLTransactionError)
    with pytest.raises(query_errors()):
        pg.execute("CREATE TABLE sneaky (x int)")
    assert pg.execute("SELECT 1").fetchone() == (1,)


def test_query_errors_load_no_driver():
    """An installation that keeps SQLite never loads asyncpg, and one without it works: the error
    tuple holds asyncpg's error only once something has loaded the driver."""
    script = (
        "import sqlite3, sys\n"
        "import figrelay.journal_queries as q, figrelay.replay\n"
        "assert 'asyncpg' not in sys.modules, 'asyncpg loaded'\n"
        "assert q.query_errors() == (sqlite3.Error,), q.query_errors()\n"
        "import asyncpg\n"
        "assert q.query_errors() == (sqlite3.Error, asyncpg.PostgresError), q.query_errors()\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def _state_of(pid: int, url: str) -> Callable[[], Awaitable[str]]:
    """The reader's session as the server sees it: idle, or idle in transaction. The server
    records it before it answers, so it needs no waiting for."""

    async def state() -> str:
        conn = await asyncpg.connect(url)
        try:
            return await conn.fetchval("SELECT state FROM pg_stat_activity WHERE pid = $1", pid)
        finally:
            await conn.close()

    return state


async def test_rows_are_read_a_batch_at_a_time_in_a_transaction_only_while_needed(mirror, pg_database):
    pg = await mirror()
    state = _state_of(pg.execute("SELECT pg_backend_pid()").fetchone()[0], pg_database)
    assert await state() == "idle"  # every row read: no transaction left open
    total = BATCH * 3 + 7
    big = pg.execute("SELECT n FROM generate_series(1, ?) AS n", (total,))
    assert next(big) == (1,)
    assert await state() == "idle in transaction"  # the rest waits in a cursor on the server
    # other statements meanwhile, one of them failing: the half-read result is spared
    assert pg.execute("SELECT count(*) FROM journal_events").fetchone() == (0,)
    with pytest.raises(query_errors()):
        pg.execute("SELECT 1 / (? - 1)", (1,))
    other = pg.execute("SELECT n FROM generate_series(1, ?) AS n", (BATCH + 1,))
    assert [n for (n,) in big] == list(range(2, total + 1))
    assert await state() == "idle in transaction"  # ``other`` is still being read
    assert other.fetchall() == [(n,) for n in range(1, BATCH + 2)]
    assert await state() == "idle"
    # a result dropped half read ends its transaction at the next statement
    dropped = pg.execute("SELECT n FROM generate_series(1, ?) AS n", (BATCH * 2,))
    assert dropped.fetchone() == (1,)
    del dropped
    assert pg.execute("SELECT 2").fetchall() == [(2,)]
    assert await state() == "idle"
    closed = pg.execute("SELECT n FROM generate_series(1, ?) AS n", (BATCH * 2,))
    closed.close()
    assert await state() == "idle" and closed.fetchall() == []


async def test_a_database_without_the_schema_is_named(pg_database):
    target = parse_storage_url(pg_database)
    with pytest.raises(JournalUnavailable) as caught:
        await asyncio.to_thread(PostgresReader.open, target)
    message = str(caught.value)
    assert f"database {target.database!r}" in message and "holds no event journal (no table journal_events)" in message
    assert "has figrelay run with this storage: URL yet?" in message


async def test_a_database_that_cannot_be_reached_is_named_without_the_password(tmp_path, pg_database):
    threads = _reader_threads()
    good = parse_storage_url(pg_database)
    nowhere = replace(good, hosts=(str(tmp_path),))
    with pytest.raises(JournalUnavailable) as caught:
        await asyncio.to_thread(PostgresReader.open, nowhere)
    assert str(caught.value).startswith(f"cannot connect to PostgreSQL to read the journal: socket {tmp_path} (port")
    assert "no PostgreSQL socket there" in str(caught.value)
    password = good.password.get_secret_value() if good.password is not None else ""
    wrong = parse_storage_url(pg_database.replace(urllib.parse.quote(password), "Wrong-Pass-7"))
    with pytest.raises(JournalUnavailable) as caught:
        await asyncio.to_thread(PostgresReader.open, wrong)
    assert "refused the password" in str(caught.value) and "Wrong-Pass-7" not in str(caught.value)
    with pytest.raises(JournalUnavailable, match=r"no_such_database.* does not exist: create it"):
        await asyncio.to_thread(PostgresReader.open, replace(good, database="no_such_database"))
    assert _reader_threads() == threads, "a reader that could not open left its thread running"


async def test_a_lost_connection_is_journal_unavailable_and_close_stops_the_thread(mirror, pg_database):
    pg = await mirror()
    threads = _reader_threads()
    pid = pg.execute("SELECT pg_backend_pid()").fetchone()[0]
    owner = await asyncpg.connect(pg_database)
    try:
        assert await owner.fetchval("SELECT pg_terminate_backend($1, 10000)", pid)
    finally:
        await owner.close()
    with pytest.raises(JournalUnavailable, match=r"^lost the connection to PostgreSQL at socket .* while reading the journal"):
        find_events(pg, EventFilter())
    pg.close()
    pg.close()
    assert len(_reader_threads()) == len(threads) - 1
    with pytest.raises(JournalUnavailable, match="closed"):
        pg.execute("SELECT 1")


def _reader_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "figrelay-pg-read"]
