"""Reading the event journal (journal.py): find events, trace one event or delivery.

Pure functions over an open read-only connection (``ReadConnection``) that return frozen
dataclasses; they never write. The connection is SQLite's (the commands open the store read-only
with ``open_read_only``, so they work beside a running daemon and cannot disturb it) or a
``storage.pg_read.PostgresReader`` on the shared PostgreSQL database: the same SQL, with ``?``
placeholders, gives the same answers on both. Where no one text can serve both engines without
changing what SQLite does, ``Dialect`` says what differs (see its docstring).

The journal can hold millions of rows, so every query walks an index in the order it answers
in and stops as soon as it has enough (``EXPLAIN QUERY PLAN`` in tests/test_journal_queries.py
keeps it so). ``find_events`` can find the events three ways:

- the events, newest first, through ``journal_events_by_time`` (or ``journal_events_by_route``),
  each checked for a delivery to ``--client`` / in state ``--outcome`` through
  ``journal_deliveries_by_event``;
- for a setting-client regex: the distinct setting-client names are read from
  ``journal_events_by_client`` (one index probe each), the regex is tried once per name, and the
  events of the matching names are merged newest first, one index range per name;
- for ``--client`` or ``--outcome``: the deliveries, newest first, through
  ``journal_deliveries_by_client`` or ``journal_deliveries_by_state``, each joined to its event.
  A delivery is created when its event is accepted, so walking deliveries backwards walks events
  backwards too; a replay, made later, counts for its event only when both fall in the time
  window asked for (the other walks count it the same way).

Which one is cheapest depends on the data (a client that gets one event in a thousand, an event
type nobody sends), and SQLite has no statistics to tell, so ``find_events`` counts the index
entries in each walk's range (an index-only count, capped) and takes the smallest.
"""

from __future__ import annotations

import heapq
import json
import re
import sqlite3
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .config import closest
from .events import ROUTES
from .hookregex import DEFAULT_TIME_LIMIT, HookPattern, compile_hook_regex, time_limited
from .journal import DELIVERY_STATES

CLOCK_SLACK = 1.0
"""Seconds by which a delivery's ``created_at`` may precede its event's ``received_at`` (both are
read from the wall clock by the intake): the margin kept when deliveries stand in for events."""
CREATE_LAG = 60.0
"""Seconds by which a delivery's ``created_at`` may follow its event's ``received_at`` (the body
still arriving): the margin past ``until`` searched for the deliveries of the last events."""
MAX_NAMES = 5000
"""Distinct setting-client names read ahead for a regex; beyond it, each event's name is tried
as the walk meets it (names come from whoever can post to Fig, and may be many)."""
NAMES_MERGED = 200
"""At most this many matching names are walked one index range each and merged; more, and the
events are walked newest first with each name tested (a broad regex finds its events early)."""
MAX_LIMIT = 100_000

_JOURNAL_TABLES = ("journal_events", "journal_deliveries", "journal_attempts")
_ID_SHAPE = re.compile(r"[0-9A-Za-z-]+")
MIN_PREFIX = 6
"""The shortest id prefix taken for a whole id (the log shows ids cut short as ``6f0c1d2e…``)."""


class QueryError(ValueError):
    """Bad input to a query (an unknown id, a regex that does not compile, an unknown event
    type): the message names the problem and how to put it right."""


class UnknownIdError(QueryError):
    """An id that names no event or delivery in the journal."""


class JournalUnavailable(Exception):
    """The store cannot be read, or holds no journal."""


# --- the connection: SQLite's, or PostgreSQL's ------------------------------------------------------


class ReadCursor(Protocol):
    """The rows of one statement, as tuples (``sqlite3.Cursor`` is one)."""

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class ReadConnection(Protocol):
    """What the queries need of a connection: ``execute`` with ``?`` placeholders. A
    ``sqlite3.Connection`` is one; so is ``storage.pg_read.PostgresReader``, which also names its
    ``dialect`` (a connection without that attribute is taken for SQLite)."""

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> ReadCursor: ...


@dataclass(frozen=True, slots=True)
class Dialect:
    """The few pieces of SQL that cannot be one text for both engines.

    SQLite's are exactly what the queries always sent, so its query plans (checked in
    tests/test_journal_queries.py) stay as they were; PostgreSQL's give the same answers."""

    name: str
    no_index: str
    """Put before a column to keep the planner off its index. SQLite has no statistics, so a
    unary ``+`` tells it which index not to take; PostgreSQL weighs its statistics, and has no
    unary ``+`` for text at all."""
    derived_name: str
    """After a subquery in FROM: PostgreSQL before 16 requires a name there. SQLite goes without,
    so that EXPLAIN QUERY PLAN still shows the subquery as ``(subquery-1)``."""
    binary: str
    """After a text column that is compared by range or ordered, so that text sorts by its bytes
    (code points) on both: SQLite compares with BINARY by default; PostgreSQL with the database's
    collation, under which ``'6f0c~'`` may sort before ``'6f0c1…'`` (an id-prefix range would
    miss its id) and case and punctuation interleave."""


SQLITE = Dialect("sqlite", no_index="+", derived_name="", binary="")
POSTGRESQL = Dialect("postgresql", no_index="", derived_name=" AS walk", binary=' COLLATE "C"')


def dialect_of(conn: ReadConnection) -> Dialect:
    """The connection's SQL dialect: the one it names, else SQLite's (``sqlite3.Connection``)."""
    dialect = getattr(conn, "dialect", SQLITE)
    return dialect if isinstance(dialect, Dialect) else SQLITE


def query_errors() -> tuple[type[Exception], ...]:
    """What a failed query raises, on either back end, for an ``except`` clause: ``sqlite3.Error``,
    and ``asyncpg.PostgresError`` once asyncpg is loaded. A PostgreSQL error can only come from a
    loaded driver, so the driver is never imported for this: an installation that keeps SQLite
    never loads it, and one without it installed works. (A function, not a constant: a tuple made
    when this module is imported would miss the driver loaded after it.)"""
    asyncpg = sys.modules.get("asyncpg")
    postgres_error = getattr(asyncpg, "PostgresError", None)
    return (sqlite3.Error,) if postgres_error is None else (sqlite3.Error, postgres_error)


# --- opening ----------------------------------------------------------------------------------------


def open_read_only(path: Path) -> sqlite3.Connection:
    """The store at ``path``, opened read-only: any write through it fails, so a command cannot
    change what the daemon keeps, and it needs only read access to the state directory."""
    if not path.exists():
        raise JournalUnavailable(f"no store at {path}: has figrelay run with this configuration (state_dir)?")
    try:
        # as_uri() percent-encodes the path: a '?' or '#' in a folder name stays part of the path
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=10)
    except sqlite3.Error as exc:
        raise JournalUnavailable(f"cannot open {path} to read: {exc}") from None
    try:
        conn.execute("PRAGMA query_only=ON")
        found = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.Error as exc:
        conn.close()
        raise JournalUnavailable(f"cannot read {path}: {exc}") from None
    missing = [t for t in _JOURNAL_TABLES if t not in found]
    if missing:
        conn.close()
        raise JournalUnavailable(
            f"{path} holds no event journal (no table {missing[0]}): the daemon that uses it predates the journal, "
            "or runs with journal.enabled: false"
        )
    return conn


# --- results ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeliveryRecord:
    """One delivery as the journal keeps it: where it is now (``state``) and how many attempts."""

    delivery_id: str
    event_id: str
    client: str
    hook: int | None
    route: str
    created_at: float
    state: str
    """pending, delivered, dead or purged"""
    attempts: int
    finished_at: float | None
    last_reason: str | None
    replay_of: str | None


@dataclass(frozen=True, slots=True)
class EventSummary:
    """One accepted event with its deliveries (replays included), oldest delivery first."""

    event_id: str
    received_at: float
    route: str
    setting_client: str | None
    test: bool
    deliveries: tuple[DeliveryRecord, ...]


@dataclass(frozen=True, slots=True)
class EventPage:
    events: tuple[EventSummary, ...]
    """Newest first."""
    more: bool
    """More events match than ``limit``."""
    regex_timeouts: tuple[str, ...] = ()
    """Setting-client names on which the regex ran out of time (counted as not matching)."""


@dataclass(frozen=True, slots=True)
class EventFilter:
    """What ``find_events`` selects. Times are unix seconds; ``setting_client`` is a regex
    searched in the setting client's name, as a hook's ``client_regex`` is."""

    since: float | None = None
    until: float | None = None
    route: str | None = None
    setting_client: str | None = None
    client: str | None = None
    outcome: str | None = None
    """A delivery state: delivered, dead, pending or purged."""
    limit: int = 50


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    attempt: int
    started_at: float
    duration: float
    outcome: str
    """delivered, retry or dead"""
    status: int | None
    reason: str | None


@dataclass(frozen=True, slots=True)
class OutboxRecord:
    """A delivery's row in the outbox, while it has one (pending, or a dead letter)."""

    state: str
    attempts: int
    next_attempt_at: float
    last_error: str | None


@dataclass(frozen=True, slots=True)
class DeliveryTrace:
    delivery: DeliveryRecord
    attempts: tuple[AttemptRecord, ...]
    outbox: OutboxRecord | None
    replayed_as: tuple[str, ...] = ()
    """The deliveries that replay this one."""


@dataclass(frozen=True, slots=True)
class ReceivedEvent:
    """An event as the intake received it."""

    event_id: str
    received_at: float
    route: str
    setting_client: str | None
    body: bytes
    test: bool

    @property
    def updated_settings(self) -> tuple[str, ...]:
        """The changed settings' names a SettingValueChanged body lists (for explanations)."""
        try:
            data = json.loads(self.body)
        except (ValueError, UnicodeDecodeError):
            return ()
        names = data.get("UpdatedSettings") if isinstance(data, dict) else None
        return tuple(n for n in names if isinstance(n, str)) if isinstance(names, list) else ()


@dataclass(frozen=True, slots=True)
class MatchedHook:
    """One entry of the event's ``matched`` list, explained against the configuration."""

    hook: int
    client: str
    delivery_id: str | None
    note: str
    configured: bool
    """Whether the configuration still has this hook (same index, client and event type)."""
    fires: bool | None
    """Whether it would fire on this event now; None when that cannot be told."""
    why: str


Explain = Callable[[int, str, ReceivedEvent], tuple[bool, bool | None, str]]
"""(hook index, client, event) -> (still configured, would fire, why): the commands pass one
built from the loaded configuration and ``figrelay matches``'s explanation."""


@dataclass(frozen=True, slots=True)
class Trace:
    event: ReceivedEvent
    asked: str
    """The id the trace was asked for."""
    asked_delivery: str | None
    """The delivery id asked for, when it was one."""
    hooks: tuple[MatchedHook, ...]
    """Empty: no hook matched."""
    deliveries: tuple[DeliveryTrace, ...] = field(default_factory=tuple)


# --- validating filters -------------------------------------------------------------------------


def check_route(route: str) -> str:
    if route not in ROUTES:
        raise QueryError(f"unknown event type {route!r}{closest(route, ROUTES)} (one of: {', '.join(ROUTES)})")
    return route


def compile_setting_client(pattern: str) -> HookPattern:
    try:
        return compile_hook_regex(pattern)
    except ValueError as exc:
        raise QueryError(f"the setting-client regex {pattern!r} does not compile: {exc}") from None


def _check(filt: EventFilter) -> None:
    if filt.route is not None:
        check_route(filt.route)
    if filt.outcome is not None and filt.outcome not in DELIVERY_STATES:
        raise QueryError(f"unknown outcome {filt.outcome!r}{closest(filt.outcome, DELIVERY_STATES)} (one of: {', '.join(DELIVERY_STATES)})")
    if not 1 <= filt.limit <= MAX_LIMIT:
        raise QueryError(f"the limit must be 1 to {MAX_LIMIT}, got {filt.limit}")
    if filt.since is not None and filt.until is not None and filt.since > filt.until:
        raise QueryError("the time window ends before it starts (since is after until)")


# --- finding events -------------------------------------------------------------------------------

_EVENT_COLUMNS = "e.event_id, e.received_at, e.route, e.setting_client, e.test"
_DELIVERY_COLUMNS = "delivery_id, event_id, client, hook, route, created_at, state, attempts, finished_at, last_reason, replay_of"
_Head = tuple[str, float, str, "str | None", int]
"""(event_id, received_at, route, setting_client, test) of a journal_events row."""


class _NameTest:
    """Whether a setting client's name matches the regex, each name tried once, within a time
    limit per name (a regex such as ^(a|aa)+$ must not hang the command on a hostile name)."""

    def __init__(self, pattern: HookPattern, limit: float) -> None:
        self._pattern = pattern
        self._limited = time_limited(pattern)
        self._limit = limit
        self._seen: dict[str, bool] = {}
        self.timeouts: list[str] = []

    def __call__(self, name: str | None) -> bool:
        if name is None:  # SecurityEvent: no setting client to match
            return False
        found = self._seen.get(name)
        if found is None:
            if self._limited is None:
                found = self._pattern.search(name) is not None
            else:
                try:
                    found = self._limited.search(name, timeout=self._limit) is not None
                except TimeoutError:
                    found = False
                    self.timeouts.append(name)
            self._seen[name] = found
        return found


# --- the SQL of each walk ----------------------------------------------------------------------


def _window(filt: EventFilter, column: str, slack_before: float = 0.0, slack_after: float = 0.0) -> tuple[list[str], list[object]]:
    """``column`` within [since - slack_before, until + slack_after], for the filter's bounds that are set."""
    where: list[str] = []
    params: list[object] = []
    if filt.since is not None:
        where.append(f"{column} >= ?")
        params.append(filt.since - slack_before)
    if filt.until is not None:
        where.append(f"{column} <= ?")
        params.append(filt.until + slack_after)
    return where, params


def _event_window(filt: EventFilter) -> tuple[list[str], list[object]]:
    return _window(filt, "e.received_at")


def _where(conditions: Sequence[str]) -> str:
    """`` WHERE`` and the conditions, or nothing when there are none (PostgreSQL takes no
    ``WHERE 1``: a condition must be boolean)."""
    return f" WHERE {' AND '.join(conditions)}" if conditions else ""


def _delivery_window(filt: EventFilter, column: str = "d.created_at") -> tuple[list[str], list[object]]:
    """The deliveries that count for events received in the window: made in it, give or take
    the clock's slack and the time a body takes to arrive."""
    return _window(filt, column, CLOCK_SLACK, CREATE_LAG)


def _has_delivery(filt: EventFilter, dialect: Dialect) -> tuple[list[str], list[object]]:
    """The condition "has a delivery to ``client`` / in state ``outcome``, made in the window",
    checked per event through journal_deliveries_by_event (``dialect.no_index``, SQLite's unary
    ``+``, keeps SQLite from choosing the client or state index for it)."""
    if filt.client is None and filt.outcome is None:
        return [], []
    plus = dialect.no_index
    where = ["d.event_id = e.event_id"]
    params: list[object] = []
    if filt.client is not None:
        where.append(f"{plus}d.client = ?")
        params.append(filt.client)
    if filt.outcome is not None:
        where.append(f"{plus}d.state = ?")
        params.append(filt.outcome)
    window, window_params = _delivery_window(filt, f"{plus}d.created_at")
    return [f"EXISTS (SELECT 1 FROM journal_deliveries AS d WHERE {' AND '.join(where + window)})"], params + window_params


def events_sql(filt: EventFilter, dialect: Dialect = SQLITE) -> tuple[str, list[object]]:
    """The walk of journal_events newest first (by time, or by route and time), with every filter
    but the setting-client regex."""
    where, params = _event_window(filt)
    if filt.route is not None:  # then journal_events_by_route serves the window and the order
        where.append("e.route = ?")
        params.append(filt.route)
    has, has_params = _has_delivery(filt, dialect)
    sql = f"SELECT {_EVENT_COLUMNS} FROM journal_events AS e{_where(where + has)} ORDER BY e.received_at DESC"
    return sql, params + has_params


def named_events_sql(filt: EventFilter, dialect: Dialect = SQLITE) -> tuple[str, list[object]]:
    """The walk of one setting client's events newest first, through journal_events_by_client
    (its name is the first parameter, to be filled in), with every other filter."""
    where, params = _event_window(filt)
    where.insert(0, "e.setting_client = ?")
    if filt.route is not None:
        where.append("e.route = ?")
        params.append(filt.route)
    has, has_params = _has_delivery(filt, dialect)
    sql = f"SELECT {_EVENT_COLUMNS} FROM journal_events AS e{_where(where + has)} ORDER BY e.received_at DESC"
    return sql, params + has_params


def deliveries_sql(filt: EventFilter, by: str | None = None, dialect: Dialect = SQLITE) -> tuple[str, list[object]]:
    """The walk of deliveries newest first, each with its event, through
    journal_deliveries_by_client (``by="client"``) or journal_deliveries_by_state (``by="state"``);
    the other of the two filters is checked on each row (``dialect.no_index`` keeps SQLite from
    using its index). By default the state index for the rare states, else the client index."""
    assert filt.client is not None or filt.outcome is not None
    if by is None:
        by = "state" if filt.outcome is not None and (filt.client is None or filt.outcome != "delivered") else "client"
    plus = dialect.no_index
    where = ["e.event_id = d.event_id"]
    params: list[object] = []
    if filt.outcome is not None:
        where.append("d.state = ?" if by == "state" else f"{plus}d.state = ?")
        params.append(filt.outcome)
    if filt.client is not None:
        where.append("d.client = ?" if by == "client" else f"{plus}d.client = ?")
        params.append(filt.client)
    window, window_params = _delivery_window(filt)
    event_where, event_params = _event_window(filt)
    if filt.route is not None:
        event_where.append("e.route = ?")
        event_params.append(filt.route)
    # CROSS JOIN keeps the deliveries outside in SQLite: their index gives the order, each event is
    # one primary-key probe. The join condition is in WHERE: PostgreSQL takes no ON after CROSS JOIN.
    sql = (
        f"SELECT {_EVENT_COLUMNS}, d.created_at FROM journal_deliveries AS d CROSS JOIN journal_events AS e"
        f"{_where(where + window + event_where)} ORDER BY d.created_at DESC, d.delivery_id{dialect.binary} DESC"
    )
    return sql, params + window_params + event_params


def setting_client_names(conn: ReadConnection, at_most: int = MAX_NAMES) -> list[str] | None:
    """The distinct setting-client names in the journal, in order (of their code points), or None
    when there are more than ``at_most``. Each is one probe of journal_events_by_client, so a
    journal of a million events from a hundred services costs a hundred probes, not a million rows.

    The probes step through the names in the database's order (PostgreSQL's collation may not be
    SQLite's byte order, and a ``COLLATE "C"`` here would keep it off the index); any order meets
    every name once, and the list is put in code-point order at the end, as SQLite gives it."""
    names: list[str] = []
    row = conn.execute("SELECT MIN(setting_client) FROM journal_events WHERE setting_client IS NOT NULL").fetchone()
    name = row[0] if row else None
    while name is not None:
        if len(names) >= at_most:
            return None
        names.append(name)
        name = conn.execute("SELECT MIN(setting_client) FROM journal_events WHERE setting_client > ?", (name,)).fetchone()[0]
    return sorted(names)


# --- choosing the walk ---------------------------------------------------------------------------------

COUNT_CAP = 200_000
"""Index entries counted at most to size up a walk: counting runs through an index alone, some
ten million entries a second, and beyond this every walk is long and any will do."""


@dataclass(frozen=True, slots=True)
class _Walk:
    """One way to find the events: ``kind`` events, names or deliveries (``by`` client or state),
    and ``rows``, how many index entries it could meet (at most COUNT_CAP)."""

    kind: str
    rows: int
    by: str | None = None


def _count(conn: ReadConnection, sql: str, params: Sequence[object], cap: int) -> int:
    named = dialect_of(conn).derived_name
    return int(conn.execute(f"SELECT COUNT(*) FROM ({sql} LIMIT ?){named}", (*params, cap)).fetchone()[0])


def _walks(conn: ReadConnection, filt: EventFilter, names: Sequence[str] | None) -> list[_Walk]:
    """Each walk the filters allow, with the number of index entries in its range. Without
    statistics (the daemon never runs ANALYZE) SQLite cannot tell a rare client from a common one,
    nor an event type nobody sends: counting the ranges can, in milliseconds, and the smallest
    range bounds the work, whatever the filters' overlap."""
    walks: list[_Walk] = []
    window, window_params = _event_window(filt)
    events_where = window + (["e.route = ?"] if filt.route is not None else [])
    events_params = window_params + ([filt.route] if filt.route is not None else [])
    candidates: list[tuple[str, str | None]] = [("events", None)]
    if names is not None and len(names) <= NAMES_MERGED:
        candidates.append(("names", None))
    if filt.client is not None:
        candidates.append(("deliveries", "client"))
    if filt.outcome is not None:
        candidates.append(("deliveries", "state"))
    if len(candidates) == 1:
        return [_Walk("events", 0)]
    for kind, by in candidates:
        if kind == "events":
            rows = _count(conn, f"SELECT 1 FROM journal_events AS e{_where(events_where)}", events_params, COUNT_CAP)
        elif kind == "names":
            assert names is not None
            rows = 0
            for name in names:
                rows += _count(
                    conn, f"SELECT 1 FROM journal_events AS e WHERE {' AND '.join(['e.setting_client = ?', *window])}", [name, *window_params],
                    COUNT_CAP - rows,
                )
                if rows >= COUNT_CAP:
                    break
        else:
            column, value = ("client", filt.client) if by == "client" else ("state", filt.outcome)
            where, params = _delivery_window(filt)
            rows = _count(conn, f"SELECT 1 FROM journal_deliveries AS d WHERE {' AND '.join([f'd.{column} = ?', *where])}", [value, *params], COUNT_CAP)
        walks.append(_Walk(kind, rows, by))
    return walks


def find_events(
    conn: ReadConnection, filt: EventFilter, *, regex_timeout: float = DEFAULT_TIME_LIMIT, walk: str | None = None
) -> EventPage:
    """The events that pass every filter, newest first, at most ``filt.limit`` of them, each with
    all its deliveries. Raises QueryError for bad filters. ``walk`` forces the way they are found
    (``events``, ``names``, ``deliveries:client``, ``deliveries:state``) instead of the cheapest:
    the tests check that every way finds the same."""
    _check(filt)
    name_test = None
    names: list[str] | None = None
    if filt.setting_client is not None:
        name_test = _NameTest(compile_setting_client(filt.setting_client), regex_timeout)
        every = setting_client_names(conn)
        if every is not None:
            names = [n for n in every if name_test(n)]
            if not names:
                return EventPage((), False, tuple(name_test.timeouts))
    want = filt.limit + 1  # one more than asked, to tell whether there are more
    # the fewest rows to meet; on a tie, the walk that needs no reordering
    order = {"events": 0, "names": 1, "deliveries": 2}
    if walk is None:
        chosen = min(_walks(conn, filt, names), key=lambda w: (w.rows, order[w.kind]))
    else:
        kind, _, by = walk.partition(":")
        chosen = _Walk(kind, 0, by or None)
    heads: list[_Head]
    if chosen.kind == "deliveries":
        heads = _through_deliveries(conn, filt, chosen.by, name_test, want)
    elif chosen.kind == "names":
        if names is None:  # too many names to read ahead: the events walk tries each name instead
            return find_events(conn, filt, regex_timeout=regex_timeout, walk="events")
        heads = _through_names(conn, filt, names, want)
    else:
        heads = _through_events(conn, filt, name_test, want)
    # Each walk orders by time alone, which every index it walks keeps (a tie-break column would
    # make SQLite sort); the event id orders events of the very same instant.
    heads.sort(key=lambda h: (h[1], h[0]), reverse=True)
    more = len(heads) > filt.limit
    heads = heads[: filt.limit]
    by_event = deliveries_of(conn, [h[0] for h in heads])
    events = tuple(
        EventSummary(event_id, received_at, route, setting_client, bool(test), tuple(by_event.get(event_id, ())))
        for event_id, received_at, route, setting_client, test in heads
    )
    return EventPage(events, more, tuple(name_test.timeouts) if name_test else ())


def _through_events(conn: ReadConnection, filt: EventFilter, name_test: _NameTest | None, want: int) -> list[_Head]:
    sql, params = events_sql(filt, dialect_of(conn))
    if name_test is None:
        return conn.execute(f"{sql} LIMIT ?", (*params, want)).fetchall()
    out: list[_Head] = []
    for head in conn.execute(sql, params):
        if name_test(head[3]):
            out.append(head)
            if len(out) >= want:
                break
    return out


def _through_names(conn: ReadConnection, filt: EventFilter, names: Sequence[str], want: int) -> list[_Head]:
    sql, params = named_events_sql(filt, dialect_of(conn))
    walks: list[Iterable[_Head]] = [conn.execute(f"{sql} LIMIT ?", (name, *params, want)) for name in names]
    merged: Iterator[_Head] = heapq.merge(*walks, key=lambda h: h[1], reverse=True)
    out: list[_Head] = []
    for head in merged:
        out.append(head)
        if len(out) >= want:
            break
    return out


def _through_deliveries(conn: ReadConnection, filt: EventFilter, by: str | None, name_test: _NameTest | None, want: int) -> list[_Head]:
    sql, params = deliveries_sql(filt, by, dialect_of(conn))
    found: dict[str, _Head] = {}
    newest: list[float] = []  # a min-heap of the received_at of the ``want`` newest events found
    for *head, created_at in conn.execute(sql, params):
        event_id = head[0]
        # Every delivery not walked yet was created before this one, so the events still to find
        # were received before created_at + CLOCK_SLACK: once ``want`` events found are newer,
        # none of them can make the list.
        if len(newest) >= want and newest[0] > created_at + CLOCK_SLACK:
            break
        if event_id in found or (name_test is not None and not name_test(head[3])):
            continue
        found[event_id] = (head[0], head[1], head[2], head[3], head[4])
        if len(newest) < want:
            heapq.heappush(newest, head[1])
        elif head[1] > newest[0]:
            heapq.heapreplace(newest, head[1])
    return sorted(found.values(), key=lambda h: (h[1], h[0]), reverse=True)[:want]


def deliveries_of(conn: ReadConnection, event_ids: Sequence[str]) -> dict[str, list[DeliveryRecord]]:
    """Each event's deliveries, oldest first (through journal_deliveries_by_event)."""
    out: dict[str, list[DeliveryRecord]] = {}
    for start in range(0, len(event_ids), 500):
        chunk = list(event_ids[start : start + 500])
        marks = ",".join("?" * len(chunk))
        rows = conn.execute(f"SELECT {_DELIVERY_COLUMNS} FROM journal_deliveries WHERE event_id IN ({marks})", chunk)
        for row in rows:
            out.setdefault(row[1], []).append(DeliveryRecord(*row))
    for records in out.values():
        records.sort(key=lambda d: (d.created_at, d.replay_of is not None, d.hook if d.hook is not None else -1, d.delivery_id))
    return out


# --- ids ------------------------------------------------------------------------------------------------


def resolve_id(conn: ReadConnection, text: str) -> tuple[str, str | None]:
    """(event id, delivery id or None) for an event id or a delivery id, whole or cut short to at
    least MIN_PREFIX characters (as the log shows them, ``6f0c1d2e…``). Raises QueryError for an
    id that names nothing, or more than one thing."""
    wanted = text.strip().removesuffix("…").removesuffix("...")
    if not _ID_SHAPE.fullmatch(wanted):
        raise QueryError(f"{text!r} is not an id: event and delivery ids are 32 hex digits, as `figrelay events` lists them")
    row = conn.execute("SELECT event_id FROM journal_events WHERE event_id = ?", (wanted,)).fetchone()
    if row is not None:
        return row[0], None
    row = conn.execute("SELECT event_id, delivery_id FROM journal_deliveries WHERE delivery_id = ?", (wanted,)).fetchone()
    if row is not None:
        return row[0], row[1]
    if len(wanted) >= MIN_PREFIX:
        # A prefix is a range of the primary key: '~' sorts after every character an id holds (in
        # byte order: ``binary`` asks PostgreSQL for it, whatever the database's collation).
        upper = wanted + "~"
        event_id, delivery_id = (f"{column}{dialect_of(conn).binary}" for column in ("event_id", "delivery_id"))
        events = [
            r[0] for r in conn.execute(f"SELECT event_id FROM journal_events WHERE {event_id} >= ? AND {event_id} < ? LIMIT 2", (wanted, upper))
        ]
        deliveries = conn.execute(
            f"SELECT event_id, delivery_id FROM journal_deliveries WHERE {delivery_id} >= ? AND {delivery_id} < ? LIMIT 2", (wanted, upper)
        ).fetchall()
        if len(events) + len(deliveries) == 1:
            return (events[0], None) if events else (deliveries[0][0], deliveries[0][1])
        if events or deliveries:
            raise QueryError(f"the id {text!r} is ambiguous: more than one event or delivery starts with it; give more of it")
    raise UnknownIdError(
        f"unknown id {text!r}: no event or delivery in the journal has it (`figrelay events` lists the ids; "
        "the journal keeps events for journal.retention only)"
    )


# --- tracing --------------------------------------------------------------------------------------------


def trace(conn: ReadConnection, id_: str, explain: Explain | None = None) -> Trace:
    """An event (or the event of a delivery) with each hook it matched, explained by ``explain``,
    and each delivery with every attempt and where it is now. Raises QueryError for an unknown id."""
    event_id, delivery_id = resolve_id(conn, id_)
    row = conn.execute(
        "SELECT event_id, received_at, route, setting_client, body, test, matched FROM journal_events WHERE event_id = ?", (event_id,)
    ).fetchone()
    if row is None:  # a delivery whose event was pruned first (retention works in batches)
        raise QueryError(f"the event {event_id} of delivery {delivery_id} is no longer in the journal (pruned by journal.retention)")
    # a BLOB (or a body once kept as TEXT) in SQLite; bytea in PostgreSQL, which a driver may give as a memoryview
    body = bytes(row[4]) if isinstance(row[4], (bytes, bytearray, memoryview)) else str(row[4]).encode("utf-8", "surrogatepass")
    event = ReceivedEvent(row[0], row[1], row[2], row[3], body, bool(row[5]))
    hooks = tuple(_matched_hooks(row[6], event, explain))
    deliveries = deliveries_of(conn, [event_id]).get(event_id, [])
    ids = [d.delivery_id for d in deliveries]
    attempts = attempts_of(conn, ids)
    outbox = outbox_rows(conn, ids)
    replays: dict[str, list[str]] = {}
    for d in deliveries:
        if d.replay_of is not None:
            replays.setdefault(d.replay_of, []).append(d.delivery_id)
    traced = tuple(
        DeliveryTrace(d, tuple(attempts.get(d.delivery_id, ())), outbox.get(d.delivery_id), tuple(replays.get(d.delivery_id, ())))
        for d in deliveries
    )
    return Trace(event, id_, delivery_id, hooks, traced)


def _matched_hooks(text: str, event: ReceivedEvent, explain: Explain | None) -> Iterator[MatchedHook]:
    try:
        entries = json.loads(text or "[]")
    except ValueError:
        entries = []
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict) or not isinstance(entry.get("hook"), int):
            continue
        hook, client = entry["hook"], str(entry.get("client", ""))
        if explain is None:
            configured, fires, why = False, None, "no configuration at hand to explain it"
        else:
            configured, fires, why = explain(hook, client, event)
        delivery = entry.get("delivery")
        yield MatchedHook(hook, client, delivery if isinstance(delivery, str) else None, str(entry.get("note") or ""), configured, fires, why)


def attempts_of(conn: ReadConnection, delivery_ids: Sequence[str]) -> dict[str, list[AttemptRecord]]:
    """Each delivery's attempts in order (through journal_attempts' primary key)."""
    out: dict[str, list[AttemptRecord]] = {}
    for start in range(0, len(delivery_ids), 500):
        chunk = list(delivery_ids[start : start + 500])
        marks = ",".join("?" * len(chunk))
        rows = conn.execute(
            f"SELECT delivery_id, attempt, started_at, duration, outcome, status, reason FROM journal_attempts WHERE delivery_id IN ({marks})"
            " ORDER BY delivery_id, attempt",
            chunk,
        )
        for delivery_id, *rest in rows:
            out.setdefault(delivery_id, []).append(AttemptRecord(*rest))
    return out


def outbox_rows(conn: ReadConnection, delivery_ids: Sequence[str]) -> dict[str, OutboxRecord]:
    """The outbox rows these deliveries still have (pending ones and dead letters)."""
    out: dict[str, OutboxRecord] = {}
    try:
        for start in range(0, len(delivery_ids), 500):
            chunk = list(delivery_ids[start : start + 500])
            marks = ",".join("?" * len(chunk))
            for row in conn.execute(f"SELECT id, state, attempts, next_attempt_at, last_error FROM deliveries WHERE id IN ({marks})", chunk):
                out[row[0]] = OutboxRecord(*row[1:])
    except query_errors():  # a journal copied without its outbox: "where it is now" is the journal's word alone
        return {}
    return out


__all__ = [
    "AttemptRecord",
    "DeliveryRecord",
    "DeliveryTrace",
    "Dialect",
    "EventFilter",
    "EventPage",
    "EventSummary",
    "Explain",
    "JournalUnavailable",
    "MatchedHook",
    "OutboxRecord",
    "POSTGRESQL",
    "QueryError",
    "ReadConnection",
    "ReadCursor",
    "ReceivedEvent",
    "SQLITE",
    "Trace",
    "UnknownIdError",
    "attempts_of",
    "check_route",
    "compile_setting_client",
    "deliveries_of",
    "deliveries_sql",
    "dialect_of",
    "events_sql",
    "find_events",
    "named_events_sql",
    "open_read_only",
    "outbox_rows",
    "query_errors",
    "resolve_id",
    "setting_client_names",
    "trace",
]
