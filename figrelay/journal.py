"""The event journal: every accepted event and every delivery attempt, kept after the outbox is
done with them, so that "did the on-call channel get told?" has an answer.

The outbox holds pending work; the journal is where finished work goes. Both live in the same
SQLite database and the journal's rows are written by the same transactions that change the
outbox (accepting an event, recording an attempt, reviving or purging a dead letter), so the two
never disagree after a crash. These functions take the open connection inside such a transaction
and never commit themselves.

Tables:

- ``journal_events``: one row per accepted event (its id, route, setting client, when, the body as
  received, whether it was a Test-button event, and the hooks it matched as JSON);
- ``journal_deliveries``: one row per delivery the event made (client, hook, where it is now:
  ``pending``, ``delivered``, ``dead`` or ``purged``, when it finished, and for a replay the
  delivery it repeats);
- ``journal_attempts``: one row per attempt (number, start, duration, outcome ``delivered`` /
  ``retry`` / ``dead``, the HTTP or SMTP status where there is one, the redacted reason).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

SCHEMA = """
CREATE TABLE IF NOT EXISTS journal_events (
    event_id       TEXT PRIMARY KEY,
    received_at    REAL NOT NULL,
    route          TEXT NOT NULL,
    setting_client TEXT,
    body           BLOB NOT NULL,
    test           INTEGER NOT NULL DEFAULT 0,
    matched        TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX IF NOT EXISTS journal_events_by_time ON journal_events (received_at, event_id);
CREATE INDEX IF NOT EXISTS journal_events_by_route ON journal_events (route, received_at);
CREATE INDEX IF NOT EXISTS journal_events_by_client ON journal_events (setting_client, received_at);
CREATE TABLE IF NOT EXISTS journal_deliveries (
    delivery_id TEXT PRIMARY KEY,
    event_id    TEXT NOT NULL,
    client      TEXT NOT NULL,
    hook        INTEGER,
    route       TEXT NOT NULL,
    created_at  REAL NOT NULL,
    state       TEXT NOT NULL DEFAULT 'pending',
    attempts    INTEGER NOT NULL DEFAULT 0,
    finished_at REAL,
    last_reason TEXT,
    replay_of   TEXT,
    body        BLOB
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS journal_deliveries_by_event ON journal_deliveries (event_id);
CREATE INDEX IF NOT EXISTS journal_deliveries_by_client ON journal_deliveries (client, created_at);
CREATE INDEX IF NOT EXISTS journal_deliveries_by_state ON journal_deliveries (state, created_at);
CREATE TABLE IF NOT EXISTS journal_attempts (
    delivery_id TEXT NOT NULL,
    attempt     INTEGER NOT NULL,
    started_at  REAL NOT NULL,
    duration    REAL NOT NULL,
    outcome     TEXT NOT NULL,
    status      INTEGER,
    reason      TEXT,
    PRIMARY KEY (delivery_id, attempt)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS journal_attempts_by_time ON journal_attempts (started_at);
"""

DELIVERY_STATES = ("pending", "delivered", "dead", "purged")
OUTCOMES = ("delivered", "retry", "dead")


@dataclass(frozen=True, slots=True)
class HookMatch:
    """One hook an event matched (or one whose regex ran out of time), as the journal keeps it."""

    hook: int
    client: str
    delivery_id: str | None
    note: str = ""
    """Why, when it is not a plain match: a regex time-out, a MinRunSessions crossing."""


@dataclass(frozen=True, slots=True)
class JournalEvent:
    """An accepted event, as received."""

    event_id: str
    received_at: float
    route: str
    setting_client: str | None
    body: bytes
    test: bool = False
    matched: tuple[HookMatch, ...] = ()
    """Empty: no hook matched."""


@dataclass(frozen=True, slots=True)
class JournalDelivery:
    delivery_id: str
    event_id: str
    client: str
    hook: int | None
    route: str
    created_at: float
    state: str = "pending"
    """pending, or dead for a delivery kept as a dead letter from the start (a regex time-out)."""
    last_reason: str | None = None
    replay_of: str | None = None
    body: bytes | None = None
    """What was sent, when it differs from the event as received (a SettingValueChanged narrowed
    by a setting regex, a MinRunSessions figrelay raised); None when it is the event itself."""


@dataclass(frozen=True, slots=True)
class Attempt:
    """One try at a delivery."""

    delivery_id: str
    attempt: int
    started_at: float
    duration: float
    outcome: str
    """delivered, retry or dead"""
    status: int | None = None
    """The HTTP or SMTP status, where there is one."""
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Finished:
    """Where deliveries are now, after the transaction that moved them."""

    now: float
    delivered: Sequence[str] = ()
    dead: Sequence[tuple[str, str]] = ()
    """(delivery id, reason)"""
    pending: Sequence[str] = field(default_factory=tuple)
    """Back to pending (a revived dead letter)."""
    purged: Sequence[str] = ()


def create(conn: sqlite3.Connection) -> None:
    conn.executescript(SCHEMA)


def matched_json(event: JournalEvent) -> str:
    """The hooks an event matched, as ``journal_events.matched`` keeps them."""
    return json.dumps([{"hook": m.hook, "client": m.client, "delivery": m.delivery_id, **({"note": m.note} if m.note else {})} for m in event.matched])


def record_event(conn: sqlite3.Connection, event: JournalEvent, deliveries: Iterable[JournalDelivery]) -> None:
    matched = matched_json(event)
    conn.execute(
        "INSERT OR IGNORE INTO journal_events (event_id, received_at, route, setting_client, body, test, matched) VALUES (?,?,?,?,?,?,?)",
        (event.event_id, event.received_at, event.route, event.setting_client, event.body, int(event.test), matched),
    )
    record_deliveries(conn, deliveries)


def record_deliveries(conn: sqlite3.Connection, deliveries: Iterable[JournalDelivery]) -> None:
    conn.executemany(
        "INSERT OR IGNORE INTO journal_deliveries"
        " (delivery_id, event_id, client, hook, route, created_at, state, finished_at, last_reason, replay_of, body)"
        " VALUES (?,?,?,?,?,?,?,?,?,?,?)",
        [
            (
                d.delivery_id, d.event_id, d.client, d.hook, d.route, d.created_at, d.state,
                d.created_at if d.state != "pending" else None, d.last_reason, d.replay_of, d.body,
            )
            for d in deliveries
        ],
    )


def record_attempts(conn: sqlite3.Connection, attempts: Sequence[Attempt]) -> None:
    if not attempts:
        return
    conn.executemany(
        "INSERT OR REPLACE INTO journal_attempts (delivery_id, attempt, started_at, duration, outcome, status, reason) VALUES (?,?,?,?,?,?,?)",
        [(a.delivery_id, a.attempt, a.started_at, a.duration, a.outcome, a.status, a.reason) for a in attempts],
    )
    conn.executemany(
        "UPDATE journal_deliveries SET attempts = MAX(attempts, ?), last_reason = ? WHERE delivery_id = ?",
        [(a.attempt, a.reason, a.delivery_id) for a in attempts],
    )


def record_outcomes(conn: sqlite3.Connection, attempts: Sequence[Attempt], finished: Finished) -> None:
    """``record_attempts`` then ``record_finished``, with one UPDATE instead of two for a
    delivery whose attempt delivered it (the common case: one statement less per delivery)."""
    delivered = set(finished.delivered)
    if not delivered or not attempts:
        record_attempts(conn, attempts)
        record_finished(conn, finished)
        return
    conn.executemany(
        "INSERT OR REPLACE INTO journal_attempts (delivery_id, attempt, started_at, duration, outcome, status, reason) VALUES (?,?,?,?,?,?,?)",
        [(a.delivery_id, a.attempt, a.started_at, a.duration, a.outcome, a.status, a.reason) for a in attempts],
    )
    conn.executemany(
        "UPDATE journal_deliveries SET attempts = MAX(attempts, ?), last_reason = ?, state = CASE WHEN ? THEN 'delivered' ELSE state END,"
        " finished_at = CASE WHEN ? THEN ? ELSE finished_at END WHERE delivery_id = ?",
        [(a.attempt, a.reason, done, done, finished.now, a.delivery_id) for a in attempts for done in (a.delivery_id in delivered,)],
    )
    attempted = {a.delivery_id for a in attempts}
    record_finished(conn, replace(finished, delivered=[i for i in finished.delivered if i not in attempted]))


def record_finished(conn: sqlite3.Connection, finished: Finished) -> None:
    now = finished.now
    if finished.delivered:
        conn.executemany(
            "UPDATE journal_deliveries SET state = 'delivered', finished_at = ? WHERE delivery_id = ?", [(now, i) for i in finished.delivered]
        )
    if finished.dead:
        conn.executemany(
            "UPDATE journal_deliveries SET state = 'dead', finished_at = ?, last_reason = ? WHERE delivery_id = ?",
            [(now, reason, i) for i, reason in finished.dead],
        )
    if finished.pending:
        conn.executemany("UPDATE journal_deliveries SET state = 'pending', finished_at = NULL WHERE delivery_id = ?", [(i,) for i in finished.pending])
    if finished.purged:
        conn.executemany("UPDATE journal_deliveries SET state = 'purged', finished_at = ? WHERE delivery_id = ?", [(now, i) for i in finished.purged])


__all__ = [
    "SCHEMA",
    "DELIVERY_STATES",
    "OUTCOMES",
    "Attempt",
    "Finished",
    "HookMatch",
    "JournalDelivery",
    "JournalEvent",
    "create",
    "matched_json",
    "record_attempts",
    "record_outcomes",
    "record_deliveries",
    "record_event",
    "record_finished",
]


# --- retention ------------------------------------------------------------------------------------
# Pruning runs in the background (``Outbox.prune_journal``, from a daemon chore) in small
# transactions that go through the outbox's group commit like any other write, so a prune never
# holds the database for longer than a few milliseconds and intake and dispatch go on between
# batches.

PRUNE_BATCH = 200
"""Events looked at (and at most deleted) per transaction: a few milliseconds of work."""


@dataclass(frozen=True, slots=True)
class PruneBatch:
    """What one pruning transaction did."""

    examined: int
    """Events looked at; fewer than asked for means none older is left to look at."""
    deleted: int
    """Events deleted, each with its deliveries and their attempts."""
    cursor: tuple[float, str] | None
    """(received_at, event_id) of the last event looked at: the next batch starts after it, so the
    events kept (a delivery still in the outbox) are not looked at again and again."""


def prune(conn: sqlite3.Connection, *, before: float, after: tuple[float, str] | None = None, limit: int = PRUNE_BATCH) -> PruneBatch:
    """Delete the oldest events received before ``before`` (``math.inf``: any), at most ``limit``,
    starting after ``after``; with each event go its deliveries and their attempts.

    An event is kept while the outbox still holds one of its deliveries, pending or dead: its
    finish is yet to be written into the journal, and a dead letter's trace is what an operator
    reads before retrying it. Runs inside the caller's transaction; never commits."""
    where, params = "e.received_at < ?", [before]
    if after is not None:
        where += " AND (e.received_at, e.event_id) > (?, ?)"
        params += after
    rows = conn.execute(
        # both the order and the bounds come from journal_events_by_time (received_at, event_id):
        # no sort, and only ``limit`` entries read
        "SELECT e.event_id, e.received_at,"
        " EXISTS (SELECT 1 FROM journal_deliveries jd JOIN deliveries d ON d.id = jd.delivery_id WHERE jd.event_id = e.event_id)"
        f" FROM journal_events e WHERE {where} ORDER BY e.received_at, e.event_id LIMIT ?",
        (*params, limit),
    ).fetchall()
    ids = [event_id for event_id, _, held in rows if not held]
    if ids:
        marks = ",".join("?" * len(ids))
        conn.execute(
            f"DELETE FROM journal_attempts WHERE delivery_id IN (SELECT delivery_id FROM journal_deliveries WHERE event_id IN ({marks}))", ids
        )
        conn.execute(f"DELETE FROM journal_deliveries WHERE event_id IN ({marks})", ids)
        conn.execute(f"DELETE FROM journal_events WHERE event_id IN ({marks})", ids)
    cursor = (rows[-1][1], rows[-1][0]) if rows else None
    return PruneBatch(len(rows), len(ids), cursor)


@dataclass(frozen=True, slots=True)
class JournalStats:
    """The journal's size and reach, for ``/metrics`` and for pruning by size."""

    bytes: int
    """Room the journal's tables and indexes take in the database, in whole pages."""
    oldest_event: float | None
    """received_at of the oldest event kept; None when the journal is empty."""
    exact: bool = True
    """False when this SQLite lacks the dbstat table and ``bytes`` is an estimate."""


def stats(conn: sqlite3.Connection) -> JournalStats:
    """The journal's size and oldest event, from one snapshot of the database.

    The size is the database's pages in use less the pages of every other table and index:
    ``PRAGMA page_count`` and ``freelist_count`` are read from the header, and SQLite's dbstat
    walks only the outbox's own B-trees, which hold pending work and stay small. Walking the
    journal's pages instead would read its whole size (hundreds of MB) on every measurement, and
    keeping a running total would need every write path to maintain it. Without dbstat (an SQLite
    built without SQLITE_ENABLE_DBSTAT_VTAB), the other tables' room is estimated from their rows
    and the lengths of the outbox's bodies. Call it outside a transaction: it opens its own."""
    own = not conn.in_transaction
    if own:
        conn.execute("BEGIN")  # one read snapshot: the page counts and the walk must agree
    try:
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        used = conn.execute("PRAGMA page_count").fetchone()[0] - conn.execute("PRAGMA freelist_count").fetchone()[0]
        others = [
            name for (name,) in conn.execute(
                "SELECT name FROM sqlite_schema WHERE type IN ('table', 'index') AND rootpage > 0 AND tbl_name NOT LIKE 'journal\\_%' ESCAPE '\\'"
            )
        ]
        exact = True
        try:
            other_bytes = 0
            # the schema's own B-tree is "sqlite_schema" to dbstat, "sqlite_master" before SQLite 3.33
            for name in (*others, "sqlite_schema", "sqlite_master"):
                # one query per name: dbstat walks only the B-tree of an equality on name
                other_bytes += conn.execute("SELECT COALESCE(SUM(pgsize), 0) FROM dbstat WHERE name = ?", (name,)).fetchone()[0]
        except sqlite3.OperationalError:  # no dbstat in this SQLite
            exact = False
            other_bytes = _estimate_others(conn, page_size)
        try:
            oldest = conn.execute("SELECT MIN(received_at) FROM journal_events").fetchone()[0]
        except sqlite3.OperationalError:  # a store from before the journal, not yet upgraded
            oldest = None
    finally:
        if own:
            conn.execute("COMMIT")
    return JournalStats(max(0, used * page_size - other_bytes), oldest, exact)


@dataclass(frozen=True, slots=True)
class Pruned:
    """What one pruning pass (``Outbox.prune_journal``) did."""

    by_age: int
    """Events deleted for being older than the retention (or, with the journal off, any)."""
    by_size: int
    """Events deleted, oldest first, while the journal took more than its limit."""
    stats: JournalStats | None
    """The journal after the pass; None with the journal off (nothing was measured)."""
    batches: int = 0
    """Transactions the pass took."""

    @property
    def events(self) -> int:
        return self.by_age + self.by_size


# what SQLite spends on a row beside its values (record header, cell pointer, its index entries),
# roughly; only the estimate without dbstat uses it
_ROW_OVERHEAD = 200


def _estimate_others(conn: sqlite3.Connection, page_size: int) -> int:
    tables = [
        name for (name,) in conn.execute(
            "SELECT name FROM sqlite_schema WHERE type = 'table' AND rootpage > 0 AND name NOT LIKE 'journal\\_%' ESCAPE '\\'"
        ).fetchall()
    ]
    total = page_size  # the schema
    for name in tables:
        if name == "deliveries":  # the one that holds bodies
            count, payload = conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(length(body) + COALESCE(length(last_error), 0)), 0) FROM deliveries"
            ).fetchone()
            total += payload + count * _ROW_OVERHEAD
        else:
            quoted = name.replace('"', '""')
            total += page_size + conn.execute(f'SELECT COUNT(*) FROM "{quoted}"').fetchone()[0] * _ROW_OVERHEAD
    return total


__all__ += ["PRUNE_BATCH", "JournalStats", "PruneBatch", "Pruned", "prune", "stats"]
