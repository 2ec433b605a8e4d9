"""The durable outbox: one SQLite row per delivery, written before the intake answers.

One thread owns the connection; every read and write runs there, so the event loop never blocks
on disk. Writes from concurrent requests are grouped: while one transaction commits, the next
requests queue up and go together in the following one (group commit), so the fsync cost is
shared. The database runs in WAL mode with ``synchronous=FULL``: a committed delivery survives
a crash of the process and of the machine.

Run-session state lives in the same database and is written in the same transaction as the
deliveries it raised, so the two never disagree after a crash.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS deliveries (
    id              TEXT PRIMARY KEY,
    client          TEXT NOT NULL,
    route           TEXT NOT NULL,
    body            BLOB NOT NULL,
    hook            INTEGER,
    created_at      REAL NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    state           TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'dead')),
    last_error      TEXT,
    dead_at         REAL
);
CREATE INDEX IF NOT EXISTS deliveries_by_state ON deliveries (state, client, next_attempt_at);
CREATE TABLE IF NOT EXISTS sessions (
    client TEXT NOT NULL,
    key    TEXT NOT NULL,
    PRIMARY KEY (client, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

T = TypeVar("T")


class OutboxError(Exception):
    """The outbox could not be opened or written."""


@dataclass(frozen=True, slots=True)
class NewDelivery:
    id: str
    client: str
    route: str
    body: bytes
    hook: int | None
    created_at: float


@dataclass(frozen=True, slots=True)
class StoredDelivery:
    id: str
    client: str
    route: str
    body: bytes
    hook: int | None
    created_at: float
    attempts: int
    next_attempt_at: float
    state: str
    last_error: str | None
    dead_at: float | None


@dataclass(frozen=True, slots=True)
class SessionWrite:
    client: str
    key: str
    connected: bool


_COLUMNS = "id, client, route, body, hook, created_at, attempts, next_attempt_at, state, last_error, dead_at"


class Outbox:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="figrelay-outbox")
        self._conn: sqlite3.Connection | None = None
        self._queue: list[tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self.commits = 0

    # --- lifecycle ------------------------------------------------------------------------------

    async def open(self) -> None:
        await self._run(self._open_sync)

    def _open_sync(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutboxError(f"cannot create the state directory {self.path.parent}: {exc.strerror or exc}") from exc
        conn: sqlite3.Connection | None = None
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=30000")
            conn.executescript(_SCHEMA)
            row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            if row is None:
                conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            elif int(row[0]) > SCHEMA_VERSION:
                raise OutboxError(
                    f"{self.path} was written by a newer figrelay (schema {row[0]}, this one knows {SCHEMA_VERSION}); upgrade figrelay"
                )
        except (sqlite3.Error, OutboxError) as exc:
            if conn is not None:
                conn.close()
            if isinstance(exc, OutboxError):
                raise
            raise OutboxError(f"cannot open the outbox {self.path}: {exc}") from exc
        self._conn = conn

    async def close(self) -> None:
        if self._flusher is not None:
            await asyncio.shield(self._flusher)
        if self._conn is not None:
            await self._run(self._conn.close)
            self._conn = None
        self._executor.shutdown(wait=True)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # --- group commit ---------------------------------------------------------------------------

    async def _write(self, op: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.append((op, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = loop.create_task(self._flush(), name="figrelay-outbox-flush")
        return await future

    async def _flush(self) -> None:
        while self._queue:
            batch, self._queue = self._queue, []
            try:
                results = await self._run(self._commit, [op for op, _ in batch])
            except BaseException as exc:  # the whole transaction failed: every waiter hears it
                error = exc if isinstance(exc, OutboxError) else OutboxError(f"cannot write the outbox {self.path}: {exc}")
                for _, future in batch:
                    if not future.done():
                        future.set_exception(error)
                if not isinstance(exc, Exception):
                    raise
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if future.done():
                    continue
                if isinstance(result, _Failure):
                    future.set_exception(result.error)
                else:
                    future.set_result(result)

    def _commit(self, ops: Sequence[Callable[[sqlite3.Connection], Any]]) -> list[Any]:
        conn = self._conn
        if conn is None:
            raise OutboxError("the outbox is closed")
        results: list[Any] = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            for op in ops:
                if len(ops) == 1:
                    results.append(op(conn))
                    continue
                conn.execute("SAVEPOINT op")
                try:
                    results.append(op(conn))
                except sqlite3.Error as exc:
                    conn.execute("ROLLBACK TO op")
                    results.append(_Failure(OutboxError(f"cannot write the outbox {self.path}: {exc}")))
                conn.execute("RELEASE op")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        self.commits += 1
        return results

    # --- writes ---------------------------------------------------------------------------------

    async def accept(self, deliveries: Sequence[NewDelivery], sessions: Sequence[SessionWrite] = ()) -> None:
        """Store new deliveries (due now) and session changes in one durable step."""

        def op(conn: sqlite3.Connection) -> None:
            if deliveries:
                conn.executemany(
                    "INSERT INTO deliveries (id, client, route, body, hook, created_at, next_attempt_at) VALUES (?,?,?,?,?,?,?)",
                    [(d.id, d.client, d.route, d.body, d.hook, d.created_at, d.created_at) for d in deliveries],
                )
            for s in sessions:
                if s.connected:
                    conn.execute("INSERT OR IGNORE INTO sessions (client, key) VALUES (?, ?)", (s.client, s.key))
                else:
                    conn.execute("DELETE FROM sessions WHERE client = ? AND key = ?", (s.client, s.key))

        await self._write(op)

    async def delivered(self, delivery_id: str) -> None:
        await self._write(lambda conn: conn.execute("DELETE FROM deliveries WHERE id = ?", (delivery_id,)))

    async def retry_later(self, delivery_id: str, attempts: int, next_attempt_at: float, error: str) -> None:
        await self._write(
            lambda conn: conn.execute(
                "UPDATE deliveries SET attempts = ?, next_attempt_at = ?, last_error = ? WHERE id = ? AND state = 'pending'",
                (attempts, next_attempt_at, error, delivery_id),
            )
        )

    async def dead(self, delivery_id: str, attempts: int, error: str) -> None:
        await self._write(
            lambda conn: conn.execute(
                "UPDATE deliveries SET state = 'dead', attempts = ?, last_error = ?, dead_at = ? WHERE id = ?",
                (attempts, error, time.time(), delivery_id),
            )
        )

    async def kill_client(self, client: str, reason: str) -> int:
        """Turn every pending delivery of a client into a dead letter; return how many."""

        def op(conn: sqlite3.Connection) -> int:
            cur = conn.execute(
                "UPDATE deliveries SET state = 'dead', last_error = ?, dead_at = ? WHERE client = ? AND state = 'pending'",
                (reason, time.time(), client),
            )
            return cur.rowcount

        return await self._write(op)

    async def revive(self, ids: Iterable[str] = (), *, client: str | None = None, all_dead: bool = False) -> list[tuple[str, str]]:
        """Make dead letters pending again (due now); return their (id, client)."""
        id_list = list(ids)

        def op(conn: sqlite3.Connection) -> list[tuple[str, str]]:
            where, params = _dead_selector(id_list, client, all_dead)
            rows = conn.execute(f"SELECT id, client FROM deliveries WHERE {where}", params).fetchall()
            conn.execute(
                f"UPDATE deliveries SET state = 'pending', next_attempt_at = ?, dead_at = NULL WHERE {where}",
                (time.time(), *params),
            )
            return [(r[0], r[1]) for r in rows]

        return await self._write(op)

    async def purge(self, ids: Iterable[str] = (), *, client: str | None = None, all_dead: bool = False) -> int:
        """Delete dead letters; return how many."""
        id_list = list(ids)

        def op(conn: sqlite3.Connection) -> int:
            where, params = _dead_selector(id_list, client, all_dead)
            return conn.execute(f"DELETE FROM deliveries WHERE {where}", params).rowcount

        return await self._write(op)

    # --- reads ----------------------------------------------------------------------------------

    async def pending_schedule(self) -> list[tuple[str, str, float]]:
        """(id, client, next_attempt_at) of every pending delivery, oldest first."""

        def read() -> list[tuple[str, str, float]]:
            assert self._conn is not None
            return self._conn.execute(
                "SELECT id, client, next_attempt_at FROM deliveries WHERE state = 'pending' ORDER BY created_at, rowid"
            ).fetchall()

        return await self._run(read)

    async def fetch(self, ids: Sequence[str]) -> dict[str, StoredDelivery]:
        """The stored rows of these ids (missing ids were delivered or purged meanwhile)."""

        def read() -> dict[str, StoredDelivery]:
            assert self._conn is not None
            out: dict[str, StoredDelivery] = {}
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                marks = ",".join("?" * len(chunk))
                for row in self._conn.execute(f"SELECT {_COLUMNS} FROM deliveries WHERE id IN ({marks})", chunk):
                    out[row[0]] = StoredDelivery(*row)
            return out

        return await self._run(read)

    async def list(self, state: str | None = None, client: str | None = None, limit: int = 1000) -> list[StoredDelivery]:
        def read() -> list[StoredDelivery]:
            assert self._conn is not None
            clauses, params = [], []
            if state:
                clauses.append("state = ?")
                params.append(state)
            if client:
                clauses.append("client = ?")
                params.append(client)
            where = " AND ".join(clauses) or "1"
            rows = self._conn.execute(
                f"SELECT {_COLUMNS} FROM deliveries WHERE {where} ORDER BY created_at, rowid LIMIT ?", (*params, limit)
            )
            return [StoredDelivery(*row) for row in rows]

        return await self._run(read)

    async def stats(self) -> dict[str, tuple[int, int, float | None]]:
        """Per client: (pending, dead, created_at of the oldest pending)."""

        def read() -> dict[str, tuple[int, int, float | None]]:
            assert self._conn is not None
            rows = self._conn.execute(
                "SELECT client, SUM(state = 'pending'), SUM(state = 'dead'), MIN(CASE WHEN state = 'pending' THEN created_at END)"
                " FROM deliveries GROUP BY client"
            ).fetchall()
            return {client: (int(pending or 0), int(dead or 0), oldest) for client, pending, dead, oldest in rows}

        return await self._run(read)

    async def data_version(self) -> int:
        """Changes whenever another process (``figrelay deliveries ...``) commits to the outbox."""
        assert self._conn is not None
        conn = self._conn
        return await self._run(lambda: conn.execute("PRAGMA data_version").fetchone()[0])

    async def check_writable(self) -> None:
        """A real, durable write; raises OutboxError when the outbox cannot be written."""
        stamp = str(time.time())
        await self._write(lambda conn: conn.execute("INSERT OR REPLACE INTO meta VALUES ('heartbeat', ?)", (stamp,)))

    async def sessions(self) -> list[tuple[str, str]]:
        def read() -> list[tuple[str, str]]:
            assert self._conn is not None
            return self._conn.execute("SELECT client, key FROM sessions").fetchall()

        return await self._run(read)


@dataclass(frozen=True, slots=True)
class _Failure:
    error: Exception


def _dead_selector(ids: list[str], client: str | None, all_dead: bool) -> tuple[str, tuple[Any, ...]]:
    if ids:
        return f"state = 'dead' AND id IN ({','.join('?' * len(ids))})", tuple(ids)
    if client:
        return "state = 'dead' AND client = ?", (client,)
    if all_dead:
        return "state = 'dead'", ()
    return "0", ()
