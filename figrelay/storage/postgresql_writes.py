"""The PostgreSQL store's two busiest writes, each one statement, and the group commit that sends
many of them as one.

Accepting an event (its deliveries, its journal entries, the NOTIFY of new work) and recording a
send's outcome (delete, dead, retry, the journal's attempts and states) are each one statement
over arrays (``unnest``), so that any number of rows costs one round trip. ``GroupWriter`` then
does what the SQLite outbox's group commit does: while one statement is on its way, the writes
that arrive meanwhile queue, and the next statement carries them all (their arrays concatenated).
Under load, a hundred events cost a few statements rather than a hundred; alone, a write goes at
once.

A statement is one transaction: its writes commit together or not at all. When a batch fails for
a value PostgreSQL refuses (``UnstorableError``), each of its writes is tried again alone, so a
bad value costs only its own write; when the database is away, every write of the batch fails
with that error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .. import journal
from .base import NewDelivery, OutcomeWrites, UnstorableError

WORK_CHANNEL = "figrelay_work"
MAX_ROWS = 1000
"""The most rows (deliveries or outcomes) one grouped statement carries."""


def text(value: str | None) -> str | None:
    """PostgreSQL's text cannot hold NUL: it becomes U+FFFD, as lone surrogates do at parse time."""
    return value.replace("\x00", "\ufffd") if value is not None and "\x00" in value else value


# --- accepting: deliveries, journal event and deliveries, NOTIFY ------------------------------------

JOURNAL_DELIVERY_COLUMNS = "(delivery_id, event_id, client, hook, route, created_at, state, finished_at, last_reason, replay_of, body)"


def journal_delivery_rows(first: int) -> str:
    """``SELECT * FROM unnest(…)`` of journal_deliveries' columns, from parameter ``$first`` on."""
    types = ("text", "text", "text", "int", "text", "float8", "text", "float8", "text", "text", "bytea")
    return "SELECT * FROM unnest(" + ", ".join(f"${first + i}::{t}[]" for i, t in enumerate(types)) + ")"


INSERT = (
    "WITH new_deliveries AS ("
    " INSERT INTO deliveries (id, client, route, body, hook, created_at, next_attempt_at, state, last_error, dead_at, event_id)"
    " SELECT i, c, r, b, h, t, t, s, e, x, ev FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[], $5::int[], $6::float8[],"
    " $7::text[], $8::text[], $9::float8[], $10::text[]) AS n(i, c, r, b, h, t, s, e, x, ev)"
    "), new_events AS ("
    " INSERT INTO journal_events (event_id, received_at, route, setting_client, body, test, matched, replica)"
    " SELECT i, t, r, c, b, x, m, $18 FROM unnest($11::text[], $12::float8[], $13::text[], $14::text[], $15::bytea[], $16::bool[], $17::text[])"
    " AS e(i, t, r, c, b, x, m) ON CONFLICT DO NOTHING"
    f"), new_journal AS (INSERT INTO journal_deliveries {JOURNAL_DELIVERY_COLUMNS} {journal_delivery_rows(19)} ON CONFLICT DO NOTHING)"
    f" SELECT pg_notify('{WORK_CHANNEL}', c) FROM unnest($30::text[]) c"
)
"""Deliveries, journal events and journal deliveries, then one NOTIFY per client with new work."""


def journal_delivery_columns(rows: Sequence[journal.JournalDelivery]) -> list[list[Any]]:
    return [
        [d.delivery_id for d in rows], [d.event_id for d in rows], [d.client for d in rows], [d.hook for d in rows], [d.route for d in rows],
        [d.created_at for d in rows], [d.state for d in rows], [d.created_at if d.state != "pending" else None for d in rows],
        [text(d.last_reason) for d in rows], [d.replay_of for d in rows], [d.body for d in rows],
    ]


def insert_columns(deliveries: Sequence[NewDelivery], event: journal.JournalEvent | None) -> list[list[Any]]:
    """INSERT's array parameters but the replica ($18) and the clients to notify ($30), for one
    event (``event`` None: no journal entry)."""
    columns: list[list[Any]] = [
        [d.id for d in deliveries], [d.client for d in deliveries], [d.route for d in deliveries], [d.body for d in deliveries],
        [d.hook for d in deliveries], [d.created_at for d in deliveries],
        ["pending" if d.dead_reason is None else "dead" for d in deliveries], [text(d.dead_reason) for d in deliveries],
        [None if d.dead_reason is None else d.created_at for d in deliveries], [d.event_id for d in deliveries],
    ]
    if event is None:
        columns += [[] for _ in range(7)]
        journal_rows: Sequence[journal.JournalDelivery] = ()
    else:
        columns += [
            [event.event_id], [event.received_at], [event.route], [text(event.setting_client)], [event.body], [event.test], [journal.matched_json(event)],
        ]
        journal_rows = [
            journal.JournalDelivery(
                d.id, event.event_id, d.client, d.hook, d.route, d.created_at,
                "pending" if d.dead_reason is None else "dead", d.dead_reason,
                body=None if d.body == event.body and d.route == event.route else d.body,
            )
            for d in deliveries
        ]
    return columns + journal_delivery_columns(journal_rows)


def insert_parameters(batch: Sequence[tuple[list[list[Any]], set[str]]], replica: str) -> list[Any]:
    columns = _concatenated([columns for columns, _ in batch])
    clients = sorted(set().union(*(notify for _, notify in batch)))
    return [*columns[:17], replica, *columns[17:], clients]


# --- recording a send's outcome --------------------------------------------------------------------

RECORD = (
    "WITH gone AS (DELETE FROM deliveries WHERE id = ANY($1::text[])),"
    " dead AS (UPDATE deliveries d SET state = 'dead', attempts = coalesce(x.n, d.attempts), last_error = x.e, dead_at = x.at,"
    "  claimed_by = NULL, claimed_until = NULL FROM unnest($2::text[], $3::int[], $4::text[], $5::float8[]) AS x(i, n, e, at)"
    "  WHERE d.id = x.i AND (d.claimed_by IS NULL OR d.claimed_by = $6) RETURNING d.id),"
    " retried AS (UPDATE deliveries d SET attempts = x.n, next_attempt_at = x.at, last_error = x.e, claimed_by = NULL, claimed_until = NULL"
    "  FROM unnest($7::text[], $8::int[], $9::float8[], $10::text[]) AS x(i, n, at, e)"
    "  WHERE d.id = x.i AND d.state = 'pending' AND (d.claimed_by IS NULL OR d.claimed_by = $6)),"
    " tries AS (INSERT INTO journal_attempts (delivery_id, attempt, started_at, duration, outcome, status, reason, replica)"
    "  SELECT i, n, s, du, o, st, r, $6 FROM unnest($11::text[], $12::int[], $13::float8[], $14::float8[], $15::text[], $16::int[], $17::text[])"
    "  AS x(i, n, s, du, o, st, r) ON CONFLICT (delivery_id, attempt) DO UPDATE SET started_at = excluded.started_at,"
    "  duration = excluded.duration, outcome = excluded.outcome, status = excluded.status, reason = excluded.reason, replica = excluded.replica),"
    " journal AS (UPDATE journal_deliveries j SET"
    "  attempts = CASE WHEN x.n IS NULL THEN j.attempts ELSE greatest(j.attempts, x.n) END,"
    "  state = CASE WHEN x.k = 'delivered' THEN 'delivered' WHEN x.k = 'dead' AND x.i IN (SELECT id FROM dead) THEN 'dead' ELSE j.state END,"
    "  finished_at = CASE WHEN x.k = 'delivered' OR (x.k = 'dead' AND x.i IN (SELECT id FROM dead)) THEN x.at ELSE j.finished_at END,"
    "  last_reason = CASE WHEN x.k = 'dead' AND x.i IN (SELECT id FROM dead) THEN x.dr WHEN x.n IS NULL THEN j.last_reason ELSE x.r END"
    "  FROM unnest($18::text[], $19::text[], $20::int[], $21::text[], $22::text[], $23::float8[]) AS x(i, k, n, r, dr, at)"
    "  WHERE j.delivery_id = x.i)"
    " SELECT 1"
)
"""Delete the delivered; mark dead and retried only the rows this replica ($6) holds or nobody
does (a replica that lost a row never undoes its new holder's work; a delivered row goes whoever
holds it, since it must not be sent again); the journal's attempts, and where each delivery is
now (dead only where the row was marked dead)."""


def record_columns(outcomes: OutcomeWrites, keep_journal: bool) -> list[list[Any]]:
    """RECORD's array parameters but the replica ($6), for one send's outcome."""
    now = outcomes.now
    attempts = {a.delivery_id: a for a in outcomes.attempts} if keep_journal else {}
    kinds: dict[str, str] = {}
    dead_reasons: dict[str, str] = {}
    if keep_journal:
        kinds |= {i: "attempt" for i in attempts} | {i: "retry" for i, *_ in outcomes.retry} | {i: "delivered" for i in outcomes.delivered}
        for i, _, reason in outcomes.dead:
            kinds[i], dead_reasons[i] = "dead", reason
    ids = list(kinds)
    tries = list(attempts.values())
    return [
        list(outcomes.delivered),
        [i for i, _, _ in outcomes.dead], [n for _, n, _ in outcomes.dead], [text(e) for _, _, e in outcomes.dead], [now for _ in outcomes.dead],
        [i for i, *_ in outcomes.retry], [n for _, n, _, _ in outcomes.retry], [at for _, _, at, _ in outcomes.retry], [text(e) for *_, e in outcomes.retry],
        [a.delivery_id for a in tries], [a.attempt for a in tries], [a.started_at for a in tries], [a.duration for a in tries],
        [a.outcome for a in tries], [a.status for a in tries], [text(a.reason) for a in tries],
        ids, [kinds[i] for i in ids], [attempts[i].attempt if i in attempts else None for i in ids],
        [text(attempts[i].reason) if i in attempts else None for i in ids], [text(dead_reasons.get(i)) for i in ids], [now for _ in ids],
    ]


def record_parameters(batch: Sequence[list[list[Any]]], replica: str) -> list[Any]:
    columns = _concatenated(batch)
    return [*columns[:5], replica, *columns[5:]]


def _concatenated(batch: Sequence[list[list[Any]]]) -> list[list[Any]]:
    if len(batch) == 1:
        return batch[0]
    return [[value for columns in batch for value in columns[k]] for k in range(len(batch[0]))]


# --- the group commit -------------------------------------------------------------------------------


@dataclass
class _Write:
    item: Any
    rows: int
    done: asyncio.Future[Any]


class GroupWriter:
    """Sends queued writes of one kind as few statements: ``run(items)`` executes one statement
    for a batch of items (and raises UnstorableError or OutboxError as the store does) and returns
    one result per item (or None for none)."""

    def __init__(self, run: Callable[[Sequence[Any]], Awaitable[Sequence[Any] | None]], *, in_flight: int = 2) -> None:
        self._run = run
        self._queue: list[_Write] = []
        self._in_flight = in_flight
        self._running = 0
        self.statements = 0

    async def write(self, item: Any, rows: int = 1) -> Any:
        """Queue ``item`` and return its result once the statement that carried it committed."""
        done = asyncio.get_running_loop().create_future()
        self._queue.append(_Write(item, max(1, rows), done))
        self._start()
        return await done

    def _start(self) -> None:
        while self._queue and self._running < self._in_flight:
            batch: list[_Write] = []
            rows = 0
            while self._queue and (not batch or rows + self._queue[0].rows <= MAX_ROWS):
                write = self._queue.pop(0)
                batch.append(write)
                rows += write.rows
            self._running += 1
            asyncio.get_running_loop().create_task(self._flush(batch))

    async def _flush(self, batch: list[_Write]) -> None:
        try:
            await self._send(batch)
        except BaseException as exc:  # a bug here must fail the writes, never leave them waiting
            for write in batch:
                _settle(write, exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            self._running -= 1
            self._start()

    async def _send(self, batch: list[_Write]) -> None:
        live = [w for w in batch if not w.done.cancelled()]
        if not live:
            return
        try:
            self.statements += 1
            results = await self._run([w.item for w in live])
        except UnstorableError as exc:
            if len(live) == 1:
                _settle(live[0], exc)
                return
            for write in live:  # one value refused: each write alone, so it costs only its own
                await self._send([write])
            return
        except BaseException as exc:  # the database is away (OutboxError), or cancelled
            for write in live:
                _settle(write, exc)
            if not isinstance(exc, Exception):
                raise
            return
        for i, write in enumerate(live):
            _settle(write, None, results[i] if results is not None else None)


def _settle(write: _Write, error: BaseException | None, result: Any = None) -> None:
    if write.done.done():
        return
    if error is None:
        write.done.set_result(result)
    else:
        write.done.set_exception(error)
