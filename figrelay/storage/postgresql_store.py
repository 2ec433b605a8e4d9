"""The PostgreSQL ``Store``: one database shared by any number of figrelay replicas.

Every method keeps the promise ``Store`` states for it, the same as the SQLite back end; what is
particular to sharing the store:

- **Claims.** ``fetch`` claims the rows it returns (``SELECT … FOR UPDATE SKIP LOCKED``, then
  ``claimed_by`` this replica until ``claimed_until``, on the database's clock): a row another
  live replica holds is left out, as a row delivered meanwhile is. ``renew_claims`` extends this
  replica's claims while it lives; a replica that dies loses them when they lapse, and the lane's
  next owner takes the rows. An outcome is recorded only on a row this replica still holds (or
  nobody holds): a replica that lost a row never undoes the next owner's work. A delivery that is
  recorded delivered is deleted, so nobody sends it again.
- **Lanes.** One replica at a time owns a client's lane (``lanes``: owner, lease, fence), so
  order, pacing and digests hold across replicas; ``figrelay.lanes`` decides which lanes to take
  and this module does the statements (``acquire_lanes``, ``renew_lanes``, ``release_lanes``).
- **Run sessions** are counted under a transaction-level advisory lock per setting client, so two
  replicas that count the same client at once are serialised by the database.
- **New work** is announced with ``NOTIFY figrelay_work`` (payload: the client), sent by the
  transaction that stores it, so it reaches the listeners exactly when it commits; ``listen``
  hands each client name to a callback and reconnects by itself.
- **Health.** A write that fails because the database is away marks the store unwritable; until a
  probe (``SELECT 1`` once a second, then slower) succeeds again, writes fail at once with the
  reason, so the intake answers 503 quickly instead of waiting for a connection timeout each time.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from .. import __version__, journal
from .base import (
    ClientHealth,
    Completion,
    NewDelivery,
    OutboxError,
    OutboxHealth,
    OutcomeWrites,
    SessionChange,
    SessionWrite,
    StoredDelivery,
    UnstorableError,
)
from .postgresql import Backoff, PostgresTarget, _asyncpg, connect_with_retry, migrate, pool_opener
from .postgresql_writes import (
    INSERT,
    JOURNAL_DELIVERY_COLUMNS,
    RECORD,
    WORK_CHANNEL,
    GroupWriter,
    insert_columns,
    insert_parameters,
    journal_delivery_columns,
    journal_delivery_rows,
    record_columns,
    record_parameters,
)
from .postgresql_writes import text as _text

log = logging.getLogger("figrelay.storage.postgresql")

T = TypeVar("T")

DEFAULT_LEASE = 15.0
"""Seconds a lane or a claim lasts without renewal: how long the work of a replica that died waits
before another takes it. Renewed every third of it."""
PRUNE_LOCK_KEY = int.from_bytes(b"figprune", "big")
"""Advisory lock of the journal's pruning: one replica prunes at a time, the others skip the pass."""
COMMAND_TIMEOUT = 30.0
STATS_EVERY = 30.0
"""The journal's size is measured (a scan of its tables) at most this often; /metrics reads the last."""

# bytes each journal row costs beside its bodies: tuple header, index entries (an estimate: the
# size kept within journal.max_bytes is the data the journal holds, not the files, which
# PostgreSQL does not shrink when rows go)
_EVENT_OVERHEAD = 400
_DELIVERY_OVERHEAD = 250
_ATTEMPT_OVERHEAD = 150

_COLUMNS = "id, client, route, body, hook, created_at, attempts, next_attempt_at, state, last_error, dead_at, event_id"
_DB_NOW = "extract(epoch from clock_timestamp())"


def replica_name() -> str:
    """This process's name among the replicas: host, pid and a random tail (pids repeat across
    containers and restarts; a name must never be two live processes at once)."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


@dataclass(frozen=True, slots=True)
class LaneGrant:
    """A lane this replica holds: since when, and the fence its owner changes raise."""

    client: str
    fence: int


class PostgresStore:
    """The ``Store`` on PostgreSQL (``storage: postgresql://…``)."""

    def __init__(
        self, target: PostgresTarget, *, replica: str | None = None, lease: float = DEFAULT_LEASE, config_hash: str | None = None,
        command: bool = False,
    ) -> None:
        self.command = command
        """An operator command's store (``figrelay deliveries``): one connection attempt, no
        presence among the replicas, and ``fetch`` only reads (it claims nothing)."""
        self.target = target
        self.replica = replica or replica_name()
        self.lease = lease
        self.config_hash = config_hash
        self.journal_enabled = True
        self.store_id: str | None = None
        self._pool: Any = None
        self._health = OutboxHealth(False, time.time(), "not connected to PostgreSQL yet")
        self._probe: asyncio.Task[None] | None = None
        self._listener: asyncio.Task[None] | None = None
        self._closing = False
        self._stats: tuple[float, journal.JournalStats] | None = None
        self._errors: tuple[type[BaseException], ...] = (OSError, TimeoutError)
        self._data_errors: tuple[type[BaseException], ...] = ()
        self.connected = asyncio.Event()
        self._inserts = GroupWriter(self._insert_group)
        self._claims = GroupWriter(self._claim)
        self._records = GroupWriter(self._record_group)
        self.on_claim: Callable[[int], None] | None = None
        """Hears how many rows each ``fetch`` claimed (/metrics)."""

    # --- health ---------------------------------------------------------------------------------

    @property
    def health(self) -> OutboxHealth:
        return self._health

    def _lost(self, exc: BaseException) -> OutboxError:
        message = self.target.scrub(f"PostgreSQL at {self.target.address()}: {type(exc).__name__}: {exc}".rstrip(": "))
        if self._health.writable:
            log.error("lost the database: %s; events are refused (503) until it is back", message)
            self._health = OutboxHealth(False, time.time(), message)
        else:
            self._health = OutboxHealth(False, self._health.since, message)
        if self._probe is None or self._probe.done():
            if not self._closing and self._pool is not None:
                self._probe = asyncio.get_running_loop().create_task(self._recover(), name="figrelay-postgresql-probe")
        return OutboxError(message)

    async def _recover(self) -> None:
        backoff = Backoff(first=0.5, cap=5.0)
        failures = 0
        while not self._closing:
            failures += 1
            await asyncio.sleep(backoff.delay(failures, 0.5))
            try:
                async with self._pool.acquire() as conn:
                    await conn.execute("SELECT 1")
            except Exception as exc:
                log.debug("the database is still away: %s", exc)
                self._lost(exc)  # health tells the last failure: the reason it is away now
                continue
            log.warning("the database is back after %.1fs: events are accepted again", time.time() - self._health.since)
            self._health = OutboxHealth(True, time.time())
            return

    async def _with(self, fn: Callable[[Any], Awaitable[T]], *, write: bool = True, one_statement: bool = False) -> T:
        """Run ``fn(connection)`` in a transaction (``write``) or on a connection, mapping errors:
        a value PostgreSQL refuses is UnstorableError, a failure of the database or the connection
        means it is away; anything else (a completion that raised) goes through as it is."""
        if self._pool is None:
            raise OutboxError(self._health.error or "not connected to PostgreSQL yet")
        if write and not self._health.writable:
            raise OutboxError(self._health.error or "the database is away")
        try:
            async with self._pool.acquire() as conn:
                if write and not one_statement:  # one statement is a transaction of its own
                    async with conn.transaction():
                        return await fn(conn)
                return await fn(conn)
        except self._data_errors as exc:
            raise UnstorableError(f"PostgreSQL refused the value: {exc}") from None
        except (OutboxError, asyncio.CancelledError):
            raise
        except self._errors as exc:
            raise self._lost(exc) from None

    # --- lifecycle ------------------------------------------------------------------------------

    async def open(self, *, accept_empty: bool = False) -> None:
        """Connect (retrying with backoff until the database answers: a replica that starts
        before its database comes up by itself), create or upgrade the schema under the
        migration lock, and register this replica. ``accept_empty`` has no use here: the
        database itself is the store, and PostgreSQL keeps its own backups."""
        asyncpg = _asyncpg()
        self._errors = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.exceptions.InternalClientError)
        self._data_errors = (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError, asyncpg.exceptions.UntranslatableCharacterError)

        async def open_pool(target: PostgresTarget) -> Any:
            pool = await pool_opener(min_size=1, max_size=10)(target)
            try:
                async with pool.acquire() as conn:
                    result = await migrate(conn)
            except BaseException:
                await pool.close()
                raise
            self.store_id = result.store_id
            return pool

        self._pool = await connect_with_retry(self.target, connect=open_pool, max_attempts=1 if self.command else None)
        if not self.command:
            await self._register()
        self._health = OutboxHealth(True, time.time())
        self.connected.set()
        log.info("using PostgreSQL at %s as replica %s (lease %gs)", self.target.describe(), self.replica, self.lease)

    async def _register(self) -> None:
        async with self._pool.acquire() as conn:
            await conn.execute(
                f"INSERT INTO replicas (name, started_at, seen_at, version, config_hash) VALUES ($1, {_DB_NOW}, {_DB_NOW}, $2, $3)"
                " ON CONFLICT (name) DO UPDATE SET seen_at = excluded.seen_at, config_hash = excluded.config_hash",
                self.replica, __version__, self.config_hash,
            )

    async def close(self) -> None:
        self._closing = True
        for task in (self._probe, self._listener):
            if task is not None and not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self._pool is not None and not self.command:
            try:
                async with asyncio.timeout(5):
                    async with self._pool.acquire() as conn:
                        async with conn.transaction():
                            # leave at once: the others need not wait for the leases to lapse
                            await conn.execute("UPDATE lanes SET lease_until = 0 WHERE owner = $1", self.replica)
                            await conn.execute("UPDATE deliveries SET claimed_by = NULL, claimed_until = NULL WHERE claimed_by = $1", self.replica)
                            await conn.execute("DELETE FROM replicas WHERE name = $1", self.replica)
                            await conn.execute(f"SELECT pg_notify('{WORK_CHANNEL}', '')")
            except Exception as exc:
                log.debug("could not hand back this replica's lanes (they lapse by themselves): %s", exc)
        if self._pool is not None:
            try:
                async with asyncio.timeout(5):
                    await self._pool.close()
            except Exception:
                self._pool.terminate()
            self._pool = None

    # --- the intake -----------------------------------------------------------------------------

    async def accept(self, deliveries: Sequence[NewDelivery], sessions: Sequence[SessionWrite] = (), event: journal.JournalEvent | None = None) -> None:
        if not sessions:  # the intake's usual write: grouped with the others arriving meanwhile
            if deliveries or (event is not None and self.journal_enabled):
                await self._inserts.write(self._insert_item(deliveries, event), rows=len(deliveries) + 1)
            return

        async def op(conn: Any) -> None:
            for s in sessions:
                await self._lock_client(conn, s.client)
                await self._write_session(conn, s)
            await self._insert(conn, deliveries, event)

        await self._with(op)

    async def accept_counted(self, session: SessionWrite, complete: Completion) -> tuple[SessionChange | None, Sequence[NewDelivery]]:
        async def op(conn: Any) -> tuple[SessionChange | None, Sequence[NewDelivery]]:
            await self._lock_client(conn, session.client)
            count, present = await conn.fetchrow(
                "SELECT count(*), coalesce(bool_or(key = $2), false) FROM sessions WHERE client = $1", session.client, session.key
            )
            change = None
            if session.connected and not present:
                change = SessionChange(session.client, session.key, True, count + 1)
            elif not session.connected and present:
                change = SessionChange(session.client, session.key, False, count)
            if change is not None:
                await self._write_session(conn, session)
            deliveries, event = complete(change)
            await self._insert(conn, deliveries, event)
            return change, deliveries

        return await self._with(op)

    @staticmethod
    async def _lock_client(conn: Any, client: str) -> None:
        # one count per setting client at a time, across every replica, until the transaction ends
        await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('figrelay-sessions:' || $1, 0))", client)

    @staticmethod
    async def _write_session(conn: Any, s: SessionWrite) -> None:
        if s.connected:
            await conn.execute("INSERT INTO sessions (client, key) VALUES ($1, $2) ON CONFLICT DO NOTHING", s.client, s.key)
        else:
            await conn.execute("DELETE FROM sessions WHERE client = $1 AND key = $2", s.client, s.key)

    def _insert_item(self, deliveries: Sequence[NewDelivery], event: journal.JournalEvent | None) -> tuple[list[list[Any]], set[str]]:
        """One event's part of INSERT: its columns, and the clients it has new work for."""
        columns = insert_columns(deliveries, event if self.journal_enabled else None)
        return columns, {d.client for d in deliveries if d.dead_reason is None}

    async def _insert_group(self, items: Sequence[tuple[list[list[Any]], set[str]]]) -> None:
        await self._with(lambda conn: conn.execute(INSERT, *insert_parameters(items, self.replica)), one_statement=True)

    async def _record_group(self, items: Sequence[list[list[Any]]]) -> None:
        await self._with(lambda conn: conn.execute(RECORD, *record_parameters(items, self.replica)), one_statement=True)

    async def _insert(self, conn: Any, deliveries: Sequence[NewDelivery], event: journal.JournalEvent | None) -> None:
        """Store the deliveries, the journal's entries and the NOTIFY of new work, in one
        statement, inside the caller's transaction."""
        await conn.execute(INSERT, *insert_parameters([self._insert_item(deliveries, event)], self.replica))

    @staticmethod
    async def _journal_deliveries(conn: Any, rows: Sequence[journal.JournalDelivery]) -> None:
        if rows:
            await conn.execute(
                f"INSERT INTO journal_deliveries {JOURNAL_DELIVERY_COLUMNS} {journal_delivery_rows(1)} ON CONFLICT DO NOTHING", *journal_delivery_columns(rows)
            )

    @staticmethod
    async def _notify(conn: Any, clients: Iterable[str]) -> None:
        for client in sorted(clients):
            await conn.execute(f"SELECT pg_notify('{WORK_CHANNEL}', $1)", client)

    async def sessions(self) -> list[tuple[str, str]]:
        return [(r[0], r[1]) for r in await self._with(lambda conn: conn.fetch("SELECT client, key FROM sessions"), write=False)]

    async def session_count(self) -> int:
        return int(await self._with(lambda conn: conn.fetchval("SELECT count(*) FROM sessions"), write=False))

    # --- the dispatcher -------------------------------------------------------------------------

    async def pending_in_order(self, client: str | None = None, limit: int | None = None) -> list[tuple[str, str, float]]:
        async def read(conn: Any) -> list[Any]:
            if client is None:
                return await conn.fetch(
                    "SELECT id, client, created_at FROM deliveries WHERE state = 'pending' ORDER BY created_at, seq LIMIT $1", limit,
                )
            return await conn.fetch(
                "SELECT id, client, created_at FROM deliveries WHERE state = 'pending' AND client = $1 ORDER BY created_at, seq LIMIT $2", client, limit,
            )

        return [(r[0], r[1], r[2]) for r in await self._with(read, write=False)]

    async def pending_after(self, client: str, after: int = 0) -> tuple[list[tuple[str, str, float]], int]:
        """The client's pending deliveries stored (or made pending again) by transactions from
        ``after`` on (a horizon this returned before; 0: all), in acceptance order, and the
        horizon to ask from next time: the oldest transaction still running when this read, so a
        row whose transaction commits after a later one's is never skipped."""
        rows = await self._with(lambda conn: conn.fetch(
            "WITH h AS (SELECT pg_snapshot_xmin(pg_current_snapshot())::text AS horizon)"
            " SELECT h.horizon, d.id, d.client, d.created_at FROM h LEFT JOIN LATERAL ("
            "  SELECT id, client, created_at, seq FROM deliveries"
            "  WHERE state = 'pending' AND client = $1 AND txid >= $2::text::xid8 ORDER BY created_at, seq"
            " ) d ON true",
            client, str(after),
        ), write=False)
        return [(r[1], r[2], r[3]) for r in rows if r[1] is not None], int(rows[0][0])

    async def fetch(self, ids: Sequence[str]) -> dict[str, StoredDelivery]:
        """Claim and return these rows (claims of every lane arriving meanwhile go as one
        statement); a pending row another live replica holds is left out, finished ones (dead
        letters) are returned as they are, for what they say."""

        async def read(conn: Any) -> list[Any]:
            return await conn.fetch(f"SELECT {_COLUMNS} FROM deliveries WHERE id = ANY($1::text[])", list(ids))

        if not ids:
            return {}
        if self.command:  # an operator command looks, and claims nothing
            return {r[0]: StoredDelivery(*r) for r in await self._with(read, write=False)}
        rows: list[Any] = await self._claims.write(list(ids), rows=len(ids))
        claimed = {r[0] for r in rows}
        if len(claimed) < len(ids):
            rows = rows + [r for r in await self._with(read, write=False) if r[0] not in claimed and r[8] != "pending"]
        if self.on_claim is not None and claimed:
            self.on_claim(len(claimed))
        return {r[0]: StoredDelivery(*r) for r in rows}

    async def _claim(self, batches: Sequence[list[str]]) -> list[list[Any]]:
        """One statement claiming every batch's rows (``FOR UPDATE SKIP LOCKED``: rows another
        transaction is claiming now are skipped, not waited for); each batch gets its own."""
        rows = await self._with(lambda conn: conn.fetch(
            f"UPDATE deliveries SET claimed_by = $2, claimed_until = {_DB_NOW} + $3 WHERE id IN ("
            " SELECT id FROM deliveries WHERE id = ANY($1::text[]) AND state = 'pending'"
            f" AND (claimed_by IS NULL OR claimed_by = $2 OR claimed_until < {_DB_NOW}) FOR UPDATE SKIP LOCKED"
            f") RETURNING {_COLUMNS}",
            [i for batch in batches for i in batch], self.replica, self.lease,
        ), one_statement=True)
        by_id = {r[0]: r for r in rows}
        return [[by_id[i] for i in batch if i in by_id] for batch in batches]

    async def record_outcomes(self, outcomes: OutcomeWrites) -> None:
        """Grouped with the other outcomes arriving meanwhile, as one statement (postgresql_writes.RECORD)."""
        columns = record_columns(outcomes, self.journal_enabled)
        await self._records.write(columns, rows=len(outcomes.delivered) + len(outcomes.dead) + len(outcomes.retry))

    async def set_client_health(self, health: ClientHealth) -> None:
        await self._with(lambda conn: conn.execute(
            "INSERT INTO client_health (client, state, failures, since, next_probe_at, last_error) VALUES ($1, $2, $3, $4, $5, $6)"
            " ON CONFLICT (client) DO UPDATE SET state = excluded.state, failures = excluded.failures, since = excluded.since,"
            " next_probe_at = excluded.next_probe_at, last_error = excluded.last_error",
            health.client, health.state, health.failures, health.since, health.next_probe_at, _text(health.last_error),
        ))

    async def client_health(self) -> dict[str, ClientHealth]:
        rows = await self._with(lambda conn: conn.fetch("SELECT client, state, failures, since, next_probe_at, last_error FROM client_health"), write=False)
        return {r[0]: ClientHealth(*r) for r in rows}

    # --- chores, /metrics, figrelay deliveries ---------------------------------------------------

    async def stats(self) -> dict[str, tuple[int, int, float | None]]:
        rows = await self._with(lambda conn: conn.fetch(
            "SELECT client, count(*) FILTER (WHERE state = 'pending'), count(*) FILTER (WHERE state = 'dead'),"
            " min(created_at) FILTER (WHERE state = 'pending') FROM deliveries GROUP BY client"
        ), write=False)
        return {r[0]: (int(r[1]), int(r[2]), r[3]) for r in rows}

    async def expire_waiting(self, clients: Iterable[str], max_age: float, now: float, reason: str) -> list[tuple[str, str]]:
        names = list(clients)
        if not names:
            return []

        async def op(conn: Any) -> list[tuple[str, str]]:
            rows = await conn.fetch(
                "UPDATE deliveries SET state = 'dead', last_error = $1, dead_at = $2, claimed_by = NULL, claimed_until = NULL"
                " WHERE state = 'pending' AND client = ANY($3::text[]) AND created_at < $4 RETURNING id, client",
                _text(reason), now, names, now - max_age,
            )
            if self.journal_enabled:
                await _journal_finished(conn, journal.Finished(now, dead=[(r[0], reason) for r in rows]))
            return [(r[0], r[1]) for r in rows]

        return await self._with(op)

    async def list(self, state: str | None = None, client: str | None = None, limit: int = 1000) -> list[StoredDelivery]:
        clauses, params = ["true"], []
        if state:
            params.append(state)
            clauses.append(f"state = ${len(params)}")
        if client:
            params.append(client)
            clauses.append(f"client = ${len(params)}")
        params.append(limit)
        sql = f"SELECT {_COLUMNS} FROM deliveries WHERE {' AND '.join(clauses)} ORDER BY created_at, seq LIMIT ${len(params)}"
        return [StoredDelivery(*r) for r in await self._with(lambda conn: conn.fetch(sql, *params), write=False)]

    async def revive(self, ids: Iterable[str] = (), *, client: str | None = None, all_dead: bool = False) -> list[tuple[str, str]]:
        where, params = _dead_selector(list(ids), client, all_dead)

        async def op(conn: Any) -> list[tuple[str, str]]:
            now = time.time()
            rows = await conn.fetch(
                f"UPDATE deliveries SET state = 'pending', next_attempt_at = ${len(params) + 1}, dead_at = NULL, txid = pg_current_xact_id()"
                f" WHERE {where} RETURNING id, client",
                *params, now,
            )
            if self.journal_enabled:
                await _journal_finished(conn, journal.Finished(now, pending=[r[0] for r in rows]))
            await self._notify(conn, {r[1] for r in rows})
            return [(r[0], r[1]) for r in rows]

        return await self._with(op)

    async def purge(self, ids: Iterable[str] = (), *, client: str | None = None, all_dead: bool = False) -> int:
        where, params = _dead_selector(list(ids), client, all_dead)

        async def op(conn: Any) -> int:
            gone = [r[0] for r in await conn.fetch(f"DELETE FROM deliveries WHERE {where} RETURNING id", *params)]
            if self.journal_enabled:
                await _journal_finished(conn, journal.Finished(time.time(), purged=gone))
            return len(gone)

        return await self._with(op)

    async def purge_waiting(self, client: str) -> int:
        async def op(conn: Any) -> int:
            gone = [r[0] for r in await conn.fetch("DELETE FROM deliveries WHERE state = 'pending' AND client = $1 RETURNING id", client)]
            if self.journal_enabled:
                await _journal_finished(conn, journal.Finished(time.time(), purged=gone))
            return len(gone)

        return await self._with(op)

    async def check_writable(self) -> None:
        await self._with(lambda conn: conn.execute(
            f"INSERT INTO meta (key, value) VALUES ('heartbeat', {_DB_NOW}::text) ON CONFLICT (key) DO UPDATE SET value = excluded.value"
        ))

    # --- the journal ----------------------------------------------------------------------------

    async def replay(self, replays: Sequence[tuple[journal.JournalDelivery, bytes]]) -> None:
        if not replays:
            return

        async def op(conn: Any) -> None:
            await conn.executemany(
                "INSERT INTO deliveries (id, client, route, body, hook, created_at, next_attempt_at, event_id) VALUES ($1, $2, $3, $4, $5, $6, $6, $7)",
                [(d.delivery_id, d.client, d.route, body, d.hook, d.created_at, d.event_id) for d, body in replays],
            )
            if self.journal_enabled:
                await self._journal_deliveries(conn, [d for d, _ in replays])
            await self._notify(conn, {d.client for d, _ in replays})

        await self._with(op)

    async def prune_journal(self, *, now: float, retention: float, max_bytes: int, batch: int = journal.PRUNE_BATCH) -> journal.Pruned:
        """As SQLite's, with one replica pruning at a time (an advisory lock: the others skip the
        pass), and the size measured once per pass then lowered by what each batch deletes."""
        enabled = self.journal_enabled
        batches = 0

        async def delete(before: float, cursor: tuple[float, str] | None) -> tuple[journal.PruneBatch, int] | None:
            nonlocal batches
            batches += 1
            return await self._with(lambda conn: _prune(conn, before=before, after=cursor, limit=batch))

        by_age = 0
        cursor: tuple[float, str] | None = None
        while True:
            step = await delete(now - retention if enabled else math.inf, cursor)
            if step is None:  # another replica is pruning
                return journal.Pruned(0, 0, await self.journal_stats(), batches) if enabled else journal.Pruned(0, 0, None, batches)
            by_age += step[0].deleted
            if step[0].examined < batch:
                break
            cursor = step[0].cursor
        if not enabled:
            return journal.Pruned(by_age, 0, None, batches)
        stats = await self._measure()
        size = stats.bytes
        by_size = 0
        cursor = None
        while size > max_bytes:
            step = await delete(math.inf, cursor)
            if step is None:
                break
            by_size += step[0].deleted
            size -= step[1]
            if step[0].examined < batch:
                break
            cursor = step[0].cursor
        if by_size:
            stats = await self._measure()
        return journal.Pruned(by_age, by_size, stats, batches)

    async def journal_stats(self) -> journal.JournalStats:
        if self._stats is not None and time.monotonic() - self._stats[0] < STATS_EVERY:
            return self._stats[1]
        return await self._measure()

    async def _measure(self) -> journal.JournalStats:
        async def read(conn: Any) -> journal.JournalStats:
            events = await conn.fetchrow("SELECT count(*), coalesce(sum(octet_length(body)), 0), min(received_at) FROM journal_events")
            deliveries = await conn.fetchrow("SELECT count(*), coalesce(sum(octet_length(body)), 0) FROM journal_deliveries")
            attempts = await conn.fetchval("SELECT count(*) FROM journal_attempts")
            size = (
                events[0] * _EVENT_OVERHEAD + events[1] + deliveries[0] * _DELIVERY_OVERHEAD + deliveries[1] + attempts * _ATTEMPT_OVERHEAD
            )
            return journal.JournalStats(int(size), events[2], exact=False)

        stats = await self._with(read, write=False)
        self._stats = (time.monotonic(), stats)
        return stats

    async def disk_bytes(self) -> int:
        """What the journal's tables and indexes take on the database's disk (PostgreSQL reuses
        the room of deleted rows, so this does not shrink when the journal is pruned)."""
        return int(await self._with(lambda conn: conn.fetchval(
            "SELECT sum(pg_total_relation_size(c)) FROM unnest(ARRAY['journal_events', 'journal_deliveries', 'journal_attempts']::regclass[]) c"
        ), write=False))

    # --- several replicas: lanes, claims, notifications ------------------------------------------

    async def heartbeat(self, owned: Sequence[str]) -> tuple[list[LaneGrant], int]:
        """Renew this replica's presence, its lanes and its claims, in one transaction. Returns the
        lanes it still holds and how many replicas are alive (itself included)."""

        async def op(conn: Any) -> tuple[list[LaneGrant], int]:
            await conn.execute(
                f"INSERT INTO replicas (name, started_at, seen_at, version, config_hash) VALUES ($1, {_DB_NOW}, {_DB_NOW}, $2, $3)"
                " ON CONFLICT (name) DO UPDATE SET seen_at = excluded.seen_at, config_hash = excluded.config_hash",
                self.replica, __version__, self.config_hash,
            )
            rows = await conn.fetch(
                f"UPDATE lanes SET lease_until = {_DB_NOW} + $2 WHERE owner = $1 AND client = ANY($3::text[]) AND lease_until > {_DB_NOW}"
                " RETURNING client, fence",
                self.replica, self.lease, list(owned),
            )
            await conn.execute(
                f"UPDATE deliveries SET claimed_until = {_DB_NOW} + $2 WHERE claimed_by = $1", self.replica, self.lease,
            )
            alive = await conn.fetchval(f"SELECT count(*) FROM replicas WHERE seen_at > {_DB_NOW} - $1", self.lease)
            # a replica gone for ten leases without saying goodbye (kill -9, a lost host) is forgotten
            await conn.execute(f"DELETE FROM replicas WHERE seen_at < {_DB_NOW} - $1", self.lease * 10)
            return [LaneGrant(r[0], r[1]) for r in rows], max(1, int(alive))

        return await self._with(op)

    async def lanes_wanted(self) -> list[tuple[str, str | None, bool]]:
        """Every client with pending deliveries: (client, its lane's owner or None, whether that
        owner's lease runs now)."""
        rows = await self._with(lambda conn: conn.fetch(
            f"SELECT d.client, l.owner, coalesce(l.lease_until > {_DB_NOW}, false) FROM (SELECT DISTINCT client FROM deliveries WHERE state = 'pending') d"
            " LEFT JOIN lanes l ON l.client = d.client"
        ), write=False)
        return [(r[0], r[1], r[2]) for r in rows]

    async def acquire_lanes(self, clients: Sequence[str]) -> list[LaneGrant]:
        """Take the lanes of these clients that nobody holds now (a free lane, or a lease that
        lapsed); the fence rises at every change of owner."""
        if not clients:
            return []
        rows = await self._with(lambda conn: conn.fetch(
            f"INSERT INTO lanes (client, owner, lease_until, acquired_at) SELECT c, $1, {_DB_NOW} + $2, {_DB_NOW} FROM unnest($3::text[]) c"
            f" ON CONFLICT (client) DO UPDATE SET owner = excluded.owner, lease_until = excluded.lease_until, acquired_at = excluded.acquired_at,"
            " fence = lanes.fence + (lanes.owner <> excluded.owner)::int"
            f" WHERE lanes.lease_until <= {_DB_NOW} OR lanes.owner = excluded.owner RETURNING client, fence",
            self.replica, self.lease, sorted(clients),
        ))
        return [LaneGrant(r[0], r[1]) for r in rows]

    async def release_lanes(self, clients: Sequence[str], keep_claimed: Sequence[str] = ()) -> None:
        """Hand these lanes back at once (idle ones), with the claims on their rows except those
        still in flight."""
        if not clients:
            return

        async def op(conn: Any) -> None:
            await conn.execute("UPDATE lanes SET lease_until = 0 WHERE owner = $1 AND client = ANY($2::text[])", self.replica, list(clients))
            await conn.execute(
                "UPDATE deliveries SET claimed_by = NULL, claimed_until = NULL WHERE claimed_by = $1 AND client = ANY($2::text[]) AND NOT id = ANY($3::text[])",
                self.replica, list(clients), list(keep_claimed),
            )
            # no NOTIFY: a lane is handed back when it has no work, and the next work announces itself

        await self._with(op)

    async def lane_owners(self) -> dict[str, tuple[str, float]]:
        """Every lane held now: client -> (owner, seconds left), for ``figrelay deliveries`` and tests."""
        rows = await self._with(lambda conn: conn.fetch(
            f"SELECT client, owner, lease_until - {_DB_NOW} FROM lanes WHERE lease_until > {_DB_NOW}"
        ), write=False)
        return {r[0]: (r[1], float(r[2])) for r in rows}

    async def replicas(self) -> list[tuple[str, float, str, str | None]]:
        """The replicas seen within a lease: (name, seconds since seen, version, config hash)."""
        rows = await self._with(lambda conn: conn.fetch(
            f"SELECT name, {_DB_NOW} - seen_at, version, config_hash FROM replicas WHERE seen_at > {_DB_NOW} - $1 ORDER BY name", self.lease
        ), write=False)
        return [(r[0], float(r[1]), r[2], r[3]) for r in rows]

    def listen(self, on_work: Callable[[str], None], on_reconnect: Callable[[], None]) -> None:
        """Hear ``NOTIFY figrelay_work`` on a connection of its own: ``on_work(client)`` for each
        (an empty name: a replica left, look at every lane), ``on_reconnect()`` after the
        connection was lost and made again (notifications may have been missed meanwhile)."""
        self._listener = asyncio.get_running_loop().create_task(self._listen(on_work, on_reconnect), name="figrelay-postgresql-listen")

    async def _listen(self, on_work: Callable[[str], None], on_reconnect: Callable[[], None]) -> None:
        first = True
        while not self._closing:
            conn = None
            try:
                conn = await connect_with_retry(self.target)
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _conn, lost=lost: lost.set())
                await conn.add_listener(WORK_CHANNEL, lambda _conn, _pid, _channel, payload: on_work(payload))
                if not first:
                    on_reconnect()
                first = False
                while not lost.is_set():
                    try:
                        async with asyncio.timeout(self.lease):
                            await lost.wait()
                    except TimeoutError:
                        try:
                            async with asyncio.timeout(self.lease):
                                await conn.execute("SELECT 1")  # a dead TCP peer shows only when written to
                        except Exception:
                            break
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("lost the PostgreSQL connection that hears new work: %s; connecting again", self.target.scrub(str(exc)))
            finally:
                if conn is not None:
                    conn.terminate()
            await asyncio.sleep(1.0)


def _dead_selector(ids: list[str], client: str | None, all_dead: bool) -> tuple[str, list[Any]]:
    if ids:
        return "state = 'dead' AND id = ANY($1::text[])", [ids]
    if client:
        return "state = 'dead' AND client = $1", [client]
    if all_dead:
        return "state = 'dead'", []
    return "false", []


async def _journal_finished(conn: Any, finished: journal.Finished) -> None:
    now = finished.now
    if finished.delivered:
        await conn.execute(
            "UPDATE journal_deliveries SET state = 'delivered', finished_at = $1 WHERE delivery_id = ANY($2::text[])", now, list(finished.delivered)
        )
    if finished.dead:
        await conn.executemany(
            "UPDATE journal_deliveries SET state = 'dead', finished_at = $1, last_reason = $2 WHERE delivery_id = $3",
            [(now, _text(reason), i) for i, reason in finished.dead],
        )
    if finished.pending:
        await conn.execute("UPDATE journal_deliveries SET state = 'pending', finished_at = NULL WHERE delivery_id = ANY($1::text[])", list(finished.pending))
    if finished.purged:
        await conn.execute("UPDATE journal_deliveries SET state = 'purged', finished_at = $1 WHERE delivery_id = ANY($2::text[])", now, list(finished.purged))


async def _prune(conn: Any, *, before: float, after: tuple[float, str] | None, limit: int) -> tuple[journal.PruneBatch, int] | None:
    """One pruning batch (journal.prune's rules) and the bytes it freed by the size estimate; None
    when another replica holds the pruning lock."""
    if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", PRUNE_LOCK_KEY):
        return None
    where, params = "e.received_at < $1", [before if math.isfinite(before) else float("inf")]
    if after is not None:
        where += " AND (e.received_at, e.event_id) > ($2, $3)"
        params += list(after)
    rows = await conn.fetch(
        "SELECT e.event_id, e.received_at,"
        " EXISTS (SELECT 1 FROM journal_deliveries jd JOIN deliveries d ON d.id = jd.delivery_id WHERE jd.event_id = e.event_id),"
        " octet_length(e.body)"
        f" FROM journal_events e WHERE {where} ORDER BY e.received_at, e.event_id LIMIT ${len(params) + 1}",
        *params, limit,
    )
    ids = [r[0] for r in rows if not r[2]]
    freed = 0
    if ids:
        freed = sum(r[3] + _EVENT_OVERHEAD for r in rows if not r[2])
        deliveries = await conn.fetch("DELETE FROM journal_deliveries WHERE event_id = ANY($1::text[]) RETURNING delivery_id, octet_length(body)", ids)
        freed += sum((r[1] or 0) + _DELIVERY_OVERHEAD for r in deliveries)
        attempts = await conn.execute("DELETE FROM journal_attempts WHERE delivery_id = ANY($1::text[])", [r[0] for r in deliveries])
        freed += int(attempts.split()[-1]) * _ATTEMPT_OVERHEAD
        await conn.execute("DELETE FROM journal_events WHERE event_id = ANY($1::text[])", ids)
    cursor = (rows[-1][1], rows[-1][0]) if rows else None
    return journal.PruneBatch(len(rows), len(ids), cursor), freed


__all__ = ["DEFAULT_LEASE", "LaneGrant", "PostgresStore", "replica_name"]
