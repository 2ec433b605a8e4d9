"""The SQLite back end of the storage contract (``Store``, in base.py), and figrelay's default:
the durable outbox, one SQLite row per delivery, written before the intake answers.

One thread owns the connection; every read and write runs there, so the event loop never blocks
on disk. Writes from concurrent requests are grouped: while one transaction commits, the next
requests queue up and go together in the following one (group commit), so the fsync cost is
shared. The database runs in WAL mode with ``synchronous=FULL``: a committed delivery survives
a crash of the process and of the machine.

Run-session state lives in the same database and is written in the same transaction as the
deliveries it raised, so the two never disagree after a crash.

No write may cost another one. Each write in a group runs under a savepoint, so whatever fails
in it (a broken constraint, a text SQLite cannot encode, any exception) refuses that write
alone. When the shared transaction fails as a whole (the disk is full, COMMIT fails), every
write of the group is tried again in a transaction of its own.

A full disk heals by itself: the WAL is checkpointed often and truncated afterwards, so on a
small state filesystem it cannot grow into the room a checkpoint needs. A write that fails for
want of space first checkpoints and truncates the WAL, then tries again. ``health`` says whether
the outbox takes writes (``/readyz`` reports it); while it does not, a probe with backoff finds
out when it does again.

A marker file beside the database (``outbox.marker``) holds the store's id, which the database
keeps too. When the marker is there but the database is missing, empty or another store,
deliveries were lost: ``open`` refuses unless told to accept that (``accept_empty``).

Beyond ``Store``, the daemon uses two things only this back end has (where the PostgreSQL one will
differ): ``data_version``, which it polls to notice another process's commits (PostgreSQL:
LISTEN/NOTIFY), and ``path``, the file the journal commands and replay planning read on
connections of their own. The marker, the WAL and the full-disk recovery are SQLite's alone.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import math
import os
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

from .. import journal
from ..sessions import SessionTracker
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
    StoreLostError,
    UnstorableError,
)

# The logger keeps the module's old name, so that operators' log filters and alerts keep matching.
log = logging.getLogger("figrelay.outbox")

# SQLite checkpoints the WAL into the database after 1000 pages (4 MiB) by default. A WAL that
# big can fill a small state filesystem before its first checkpoint, and a checkpoint needs room
# in the database file that the WAL then holds: the store could never be written again, not even
# after a restart. A checkpoint every 256 pages (1 MiB), and the WAL truncated back to 1 MiB after
# one, keep the WAL small; the cost is an fsync of the database about every 1 MiB written.
WAL_AUTOCHECKPOINT_PAGES = 256
JOURNAL_SIZE_LIMIT = 1 << 20
# While the outbox cannot be written, the probe calls it writable again only with this much room
# in the state directory: one checkpoint interval of WAL, so the next writes do not fail at once.
# (A real write that succeeds calls it writable at any free space.)
RECOVERY_HEADROOM = 1 << 20
PROBE_FIRST_DELAY = 0.05
PROBE_MAX_DELAY = 2.0
MARKER_SUFFIX = ".marker"

SCHEMA_VERSION = 2
"""2: deliveries.event_id and the journal tables (journal.py)."""
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
CREATE TABLE IF NOT EXISTS client_health (
    client        TEXT PRIMARY KEY,
    state         TEXT NOT NULL,
    failures      INTEGER NOT NULL,
    since         REAL,
    next_probe_at REAL,
    last_error    TEXT
) WITHOUT ROWID;
"""

T = TypeVar("T")

CACHE_KIB = 4 * 1024
"""SQLite's page cache for the outbox's connection (its default is 2 MiB): the ends of the
indexes the intake and the dispatcher write (their keys are ordered by time, so writes land at
the end) stay in memory as the journal grows. 16 MiB cost 16 MB of RSS for no throughput the
bench could measure."""


_COLUMNS = "id, client, route, body, hook, created_at, attempts, next_attempt_at, state, last_error, dead_at, event_id"


class Outbox:
    """The SQLite ``Store``: ``state_dir/outbox.sqlite3`` (deliveries, sessions, circuits and the
    journal, in one file) and its marker beside it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.marker_path = path.with_name(path.stem + MARKER_SUFFIX)
        self.store_id: str | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="figrelay-outbox")
        self._conn: sqlite3.Connection | None = None
        self._reconnect_needed = False
        self._queue: list[tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._probe: asyncio.Task[None] | None = None
        self._closing = False
        self._health = OutboxHealth(True, time.time())
        self.commits = 0
        self.journal_enabled = True
        """Whether accepting and recording also write the journal (``journal.enabled``)."""
        self._sessions = SessionTracker()
        """The committed run sessions, counted in memory: this process is the store's only writer."""

    @property
    def health(self) -> OutboxHealth:
        """Whether the outbox takes writes now; the intake answers 503 while it does not."""
        return self._health

    # --- lifecycle ------------------------------------------------------------------------------

    async def open(self, *, accept_empty: bool = False) -> None:
        """Open or create the store, and prove that it takes a durable write.

        Raises OutboxError when the store cannot be used, and StoreLostError when the marker
        shows a store existed here but the database is now missing, empty or another store;
        ``accept_empty`` opens the database as it is then, and rewrites the marker. A full disk
        does not stop an existing store from opening: it starts unwritable and recovers by
        itself when space returns."""
        await self._run(self._open_sync, accept_empty)
        self._sessions = SessionTracker(await self.sessions())
        if not self._health.writable:
            self._start_probe()

    def _open_sync(self, accept_empty: bool) -> None:
        state_dir = self.path.parent
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutboxError(f"cannot create the state directory {state_dir}: {exc.strerror or exc}") from exc
        marker = _read_marker(self.marker_path)
        found = _missing_or_empty(self.path)
        if marker is not None and found is not None and not accept_empty:
            raise StoreLostError(self._lost_message(marker, found))
        conn: sqlite3.Connection | None = None
        try:
            conn = self._connect()
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            stored: dict[str, str] = {}
            if "meta" in tables:
                stored = dict(conn.execute("SELECT key, value FROM meta WHERE key IN ('store_id', 'store_created_at')").fetchall())
            stored_id = stored.get("store_id")
            if marker is not None and found is None:
                if not {"deliveries", "meta"} <= tables:
                    found = "has no figrelay tables"
                elif marker.store_id and stored_id != marker.store_id:
                    found = f"is another store (store {stored_id or 'without an id'}; the marker names {marker.store_id})"
                if found is not None and not accept_empty:
                    raise StoreLostError(self._lost_message(marker, found))
            conn.executescript(_SCHEMA)
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row is not None and int(row[0]) > SCHEMA_VERSION:
                raise OutboxError(
                    f"{self.path} was written by a newer figrelay (schema {row[0]}, this one knows {SCHEMA_VERSION}); upgrade figrelay"
                )
            _upgrade(conn)
            store_id = stored_id or uuid.uuid4().hex
            created_at = stored.get("store_created_at") if stored_id else None
            created_at = created_at or _utc_now()
            writable = self._prove_writable(conn, new_schema=row is None, new_store=None if stored_id else (store_id, created_at))
        except OutboxError:
            if conn is not None:
                conn.close()
            raise
        except sqlite3.Error as exc:
            if conn is not None:
                conn.close()
            raise self._open_error(exc) from None
        self._conn = conn
        self.store_id = store_id
        if marker is not None and found is not None:
            log.warning(
                "--accept-empty-state: using the outbox %s as it is now: it %s, and the marker %s named store %s (created %s); "
                "what that store held is not in this one",
                self.path, found, self.marker_path, marker.store_id or "(unreadable)", marker.created_at or "(unknown)",
            )
        if writable and (marker is None or marker.store_id != store_id):
            # Written only after the database holds the id: a crash in between leaves a store
            # without a marker, which the next open adopts, never a marker without its store.
            try:
                _write_marker(self.marker_path, StoreMarker(store_id, created_at, self.path.name))
            except OutboxError:
                conn.close()
                self._conn = None
                raise

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=30000")
            conn.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
            conn.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT}")
            conn.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
        except BaseException:
            conn.close()
            raise
        return conn

    def _prove_writable(self, conn: sqlite3.Connection, *, new_schema: bool, new_store: tuple[str, str] | None) -> bool:
        """A real, durable write at open. Opening needs none (SQLite falls back to read-only on
        a file it cannot write), so without it an unwritable store would start and then fail on
        every write. False when the disk is full: an existing store opens unwritable."""
        try:
            conn.execute("BEGIN IMMEDIATE")
            if new_schema:
                conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            if new_store is not None:
                conn.execute("INSERT OR REPLACE INTO meta VALUES ('store_id', ?)", (new_store[0],))
                conn.execute("INSERT OR REPLACE INTO meta VALUES ('store_created_at', ?)", (new_store[1],))
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('opened_at', ?)", (_utc_now(),))
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if _primary_code(exc) != sqlite3.SQLITE_FULL or new_schema or new_store is not None:
                raise
            self._make_room(conn)
            try:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("INSERT OR REPLACE INTO meta VALUES ('opened_at', ?)", (_utc_now(),))
                conn.execute("COMMIT")
            except sqlite3.Error as again:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if _primary_code(again) != sqlite3.SQLITE_FULL:
                    raise
                self._storage_failed(again, starting=True)
                return False
        return True

    def _open_error(self, exc: sqlite3.Error) -> OutboxError:
        code = _primary_code(exc)
        if code in (sqlite3.SQLITE_READONLY, sqlite3.SQLITE_PERM, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_IOERR):
            reason = _why_unwritable(self.path)
            if reason is not None:
                user = _user()
                return OutboxError(
                    f"cannot write the outbox {self.path}: {reason}; figrelay runs as {user}: make state_dir ({self.path.parent}) "
                    f"and the files in it writable by {user} (owner and permissions, no immutable attribute, no read-only mount), "
                    "or set state_dir to a folder it can write"
                )
        if code == sqlite3.SQLITE_FULL:
            return OutboxError(f"cannot set up the outbox {self.path}: {exc}{_free_note(self.path.parent)}; free space there and start again")
        if code in (sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT):
            return OutboxError(
                f"cannot open the outbox {self.path}: {exc}; restore it from a backup, or move it away and start with "
                "'figrelay run --accept-empty-state' (its pending deliveries and dead letters are then lost)"
            )
        return OutboxError(f"cannot open the outbox {self.path}: {exc}")

    def _lost_message(self, marker: StoreMarker, found: str) -> str:
        created = f" on {marker.created_at}" if marker.created_at else ""
        store = f" (store {marker.store_id})" if marker.store_id else ""
        return (
            f"the outbox {self.path} {found}, but the marker {self.marker_path} shows that figrelay created a store here{created}{store}. "
            "Whatever it held is gone unless you restore it from a backup: the deliveries still pending (events accepted from Fig "
            "and not yet delivered), the dead letters and the run-session counts. Not starting, so that this loss is not silent. "
            "Restore the file with figrelay stopped, or start afresh with 'figrelay run --accept-empty-state' (once; it rewrites the marker)"
        )

    async def close(self) -> None:
        self._closing = True
        if self._probe is not None:
            self._probe.cancel()
            await asyncio.gather(self._probe, return_exceptions=True)
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
            except BaseException as exc:  # the outbox is closed or its connection lost: every waiter hears it
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
        if not self._health.writable:
            self._start_probe()

    def _commit(self, ops: Sequence[Callable[[sqlite3.Connection], Any]]) -> list[Any]:
        if self._reconnect_needed:
            self._reconnect()
        if self._conn is None:
            raise OutboxError("the outbox is closed")
        try:
            return self._commit_together(ops)
        except _GroupFailed as failed:
            # The shared transaction failed as a whole (BEGIN, COMMIT, or the storage under one
            # write): make room if it may be the disk, then give every write a transaction of
            # its own, so that only the writes that fail by themselves are refused.
            code = _primary_code(failed.error)
            if self._conn is not None and _is_storage_error(failed.error) and code not in _WAITING_CODES:
                self._make_room(self._conn)
            return self._commit_each(ops)

    def _commit_together(self, ops: Sequence[Callable[[sqlite3.Connection], Any]]) -> list[Any]:
        """One transaction for the whole group. Optimistic first: the writes run one after the
        other with nothing between them. Only when one of them fails by itself is the
        transaction rolled back and the group run again with a savepoint around each write, so
        that the failing write is refused alone (two statements per write saved on the common
        path; every write is a pure function of the database, so running it again is safe)."""
        conn = self._conn
        assert conn is not None
        before = conn.total_changes
        results: list[Any] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                results = [op(conn) for op in ops]
            except Exception as exc:
                if _is_storage_error(exc):
                    raise  # the storage failed under this write, not the write itself
                conn.execute("ROLLBACK")
                conn.execute("BEGIN IMMEDIATE")
                results = [self._isolated(conn, op) for op in ops]
            conn.execute("COMMIT")
        except Exception as exc:
            self._abandon()
            raise _GroupFailed(exc) from exc
        except BaseException:
            self._abandon()
            raise
        self.commits += 1
        if conn.total_changes != before:
            self._wrote()
        return results

    def _isolated(self, conn: sqlite3.Connection, op: Callable[[sqlite3.Connection], Any]) -> Any:
        """One write of a group in a savepoint of its own: a failure of its own undoes it alone."""
        conn.execute("SAVEPOINT op")
        try:
            result = op(conn)
        except Exception as exc:
            if _is_storage_error(exc):
                raise  # the storage failed under this write, not the write itself
            conn.execute("ROLLBACK TO op")
            result = _Failure(self._refused(exc))
        conn.execute("RELEASE op")
        return result

    def _commit_each(self, ops: Sequence[Callable[[sqlite3.Connection], Any]]) -> list[Any]:
        results: list[Any] = []
        waiting: Exception | None = None
        for op in ops:
            conn = self._conn  # _abandon may have replaced it
            if conn is None:
                results.append(_Failure(OutboxError("the outbox is closed")))
                continue
            if waiting is not None:  # another writer holds the lock: each would wait busy_timeout again
                results.append(_Failure(self._unwritable(waiting)))
                continue
            before = conn.total_changes
            try:
                conn.execute("BEGIN IMMEDIATE")
                result = op(conn)
                conn.execute("COMMIT")
            except Exception as exc:
                self._abandon()
                if _is_storage_error(exc):
                    self._storage_failed(exc)
                    results.append(_Failure(self._unwritable(exc)))
                    if _primary_code(exc) in _WAITING_CODES:
                        waiting = exc
                else:
                    results.append(_Failure(self._refused(exc)))
                continue
            except BaseException:
                self._abandon()
                raise
            self.commits += 1
            if conn.total_changes != before:
                self._wrote()
            results.append(result)
        return results

    def _refused(self, exc: Exception) -> OutboxError:
        if isinstance(exc, OutboxError):
            return exc
        return UnstorableError(f"cannot store this write in the outbox {self.path}: {exc}")

    def _unwritable(self, exc: Exception) -> OutboxError:
        return OutboxError(f"cannot write the outbox {self.path}: {exc}")

    def _abandon(self) -> None:
        """Leave no transaction open after a failure, whatever SQLite already undid by itself
        (after SQLITE_FULL or an I/O error it may have rolled back the whole transaction)."""
        conn = self._conn
        if conn is None or not conn.in_transaction:
            return
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error as exc:
            log.warning("cannot roll back a failed write to the outbox %s: %s", self.path, exc)
        if conn.in_transaction:
            # A connection stuck in a transaction would refuse every BEGIN from now on.
            self._reconnect_needed = True
            self._reconnect()

    def _reconnect(self) -> None:
        old, self._conn = self._conn, None
        if old is not None:
            try:
                old.close()
            except sqlite3.Error:
                pass
        try:
            self._conn = self._connect()
        except sqlite3.Error as exc:
            self._storage_failed(exc)
            raise self._unwritable(exc) from None
        self._reconnect_needed = False
        log.warning("reconnected to the outbox %s after a failed write left its connection unusable", self.path)

    def _make_room(self, conn: sqlite3.Connection) -> None:
        """Copy the WAL into the database and truncate it to nothing. SQLite checkpoints by
        itself only after a successful commit, so after a failed write the WAL keeps the room
        it holds unless asked."""
        try:
            # a reader in another process (``figrelay deliveries``) must not hold the writer long
            conn.execute("PRAGMA busy_timeout=1000")
            try:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            finally:
                conn.execute("PRAGMA busy_timeout=30000")
        except sqlite3.Error as exc:
            log.debug("cannot checkpoint the outbox's WAL: %s", exc)

    # --- health ---------------------------------------------------------------------------------

    def _wrote(self) -> None:
        """A write reached the disk: the outbox is writable (runs in the outbox thread)."""
        health = self._health
        if not health.writable:
            log.warning("the outbox %s takes writes again, after %.1fs unwritable (%s)", self.path, time.time() - health.since, health.error)
            self._health = OutboxHealth(True, time.time())

    def _storage_failed(self, exc: BaseException, *, starting: bool = False) -> None:
        """A write failed for a reason of the storage, not of the write."""
        error = str(exc)
        full = _primary_code(exc) == sqlite3.SQLITE_FULL or (isinstance(exc, OSError) and exc.errno == errno.ENOSPC)
        if full:
            error += _free_note(self.path.parent)
        health = self._health
        if health.writable:
            hint = f"; free space in {self.path.parent}" if full else ""
            log.error(
                "the outbox %s cannot be written: %s. %s events are answered 503 and /readyz says not ready until it can; "
                "figrelay retries by itself%s",
                self.path, error, "Starting anyway:" if starting else "New", hint,
            )
            self._health = OutboxHealth(False, time.time(), error)
        else:
            self._health = OutboxHealth(False, health.since, error)

    def _start_probe(self) -> None:
        if self._closing or (self._probe is not None and not self._probe.done()):
            return
        self._probe = asyncio.get_running_loop().create_task(self._recover(), name="figrelay-outbox-probe")

    async def _recover(self) -> None:
        """While the outbox is unwritable: make room and try a durable write, with backoff. The
        next real write that succeeds heals it too."""
        delay = PROBE_FIRST_DELAY
        while not self._closing and not self._health.writable:
            await asyncio.sleep(delay)
            delay = min(delay * 2, PROBE_MAX_DELAY)
            try:
                await self._run(self._probe_once)
            except Exception as exc:  # the connection could not even be reopened: try again later
                log.debug("the outbox's recovery probe failed: %s", exc)

    def _probe_once(self) -> None:
        conn = self._conn
        if conn is None or self._health.writable:
            return
        self._make_room(conn)
        free = _free_bytes(self.path.parent)
        if free is not None and free < RECOVERY_HEADROOM:
            return  # a heartbeat may fit where an event does not: wait for room for a WAL's worth
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('heartbeat', ?)", (str(time.time()),))
            conn.execute("COMMIT")
        except Exception as exc:
            self._abandon()
            if _is_storage_error(exc):
                self._storage_failed(exc)
            else:
                log.error("the outbox's recovery probe failed: %s", exc)
            return
        self.commits += 1
        self._wrote()

    # --- writes ---------------------------------------------------------------------------------

    async def accept(
        self, deliveries: Sequence[NewDelivery], sessions: Sequence[SessionWrite] = (), event: journal.JournalEvent | None = None
    ) -> None:
        """Store new deliveries (due now), session changes and, with the journal on, the event
        they came from, in one durable step. Raises UnstorableError, before any transaction, for
        a value SQLite cannot store."""
        await self._accept(deliveries, sessions, event)
        for s in sessions:  # committed: the count in memory follows
            self._sessions.apply_write(s)

    async def _accept(self, deliveries: Sequence[NewDelivery], sessions: Sequence[SessionWrite], event: journal.JournalEvent | None) -> None:
        _check_storable((*deliveries, *sessions, *((event,) if event is not None else ())))
        keep = event is not None and self.journal_enabled

        def op(conn: sqlite3.Connection) -> None:
            if deliveries:
                conn.executemany(
                    "INSERT INTO deliveries (id, client, route, body, hook, created_at, next_attempt_at, state, last_error, dead_at, event_id)"
                    " VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    [
                        (d.id, d.client, d.route, d.body, d.hook, d.created_at, d.created_at)
                        + (("pending", None, None) if d.dead_reason is None else ("dead", d.dead_reason, d.created_at))
                        + (d.event_id,)
                        for d in deliveries
                    ],
                )
            if keep:
                assert event is not None
                journal.record_event(conn, event, [
                    journal.JournalDelivery(
                        d.id, event.event_id, d.client, d.hook, d.route, d.created_at,
                        "pending" if d.dead_reason is None else "dead", d.dead_reason,
                        body=None if d.body == event.body and d.route == event.route else d.body,
                    )
                    for d in deliveries
                ])
            for s in sessions:
                if s.connected:
                    conn.execute("INSERT OR IGNORE INTO sessions (client, key) VALUES (?, ?)", (s.client, s.key))
                else:
                    conn.execute("DELETE FROM sessions WHERE client = ? AND key = ?", (s.client, s.key))

        await self._write(op)

    async def accept_counted(self, session: SessionWrite, complete: Completion) -> tuple[SessionChange | None, Sequence[NewDelivery]]:
        """Count the change in memory (one process owns this file, and the event loop runs one
        count at a time), then store it with what it makes; undone if the write fails."""
        change = self._sessions.apply_write(session)
        try:
            deliveries, event = complete(change)
            if deliveries or change is not None or event is not None:
                await self._accept(deliveries, [session] if change is not None else [], event)
        except BaseException:
            if change is not None:
                self._sessions.undo(change)
            raise
        return change, deliveries

    async def session_count(self) -> int:
        return self._sessions.total()

    async def delivered(self, delivery_id: str) -> None:
        await self._write(lambda conn: conn.execute("DELETE FROM deliveries WHERE id = ?", (delivery_id,)))

    async def retry_later(self, delivery_id: str, attempts: int, next_attempt_at: float, error: str) -> None:
        await self._write(
            lambda conn: conn.execute(
                "UPDATE deliveries SET attempts = ?, next_attempt_at = ?, last_error = ? WHERE id = ? AND state = 'pending'",
                (attempts, next_attempt_at, _storable_text(error), delivery_id),
            )
        )

    async def dead(self, delivery_id: str, attempts: int, error: str) -> None:
        await self._write(
            lambda conn: conn.execute(
                "UPDATE deliveries SET state = 'dead', attempts = ?, last_error = ?, dead_at = ? WHERE id = ?",
                (attempts, _storable_text(error), time.time(), delivery_id),
            )
        )

    async def kill_client(self, client: str, reason: str) -> int:
        """Turn every pending delivery of a client into a dead letter; return how many."""

        def op(conn: sqlite3.Connection) -> int:
            cur = conn.execute(
                "UPDATE deliveries SET state = 'dead', last_error = ?, dead_at = ? WHERE client = ? AND state = 'pending'",
                (_storable_text(reason), time.time(), client),
            )
            return cur.rowcount

        return await self._write(op)

    async def revive(self, ids: Iterable[str] = (), *, client: str | None = None, all_dead: bool = False) -> list[tuple[str, str]]:
        """Make dead letters pending again (due now); return their (id, client)."""
        id_list = list(ids)

        def op(conn: sqlite3.Connection) -> list[tuple[str, str]]:
            where, params = _dead_selector(id_list, client, all_dead)
            rows = conn.execute(f"SELECT id, client FROM deliveries WHERE {where}", params).fetchall()
            now = time.time()
            conn.execute(f"UPDATE deliveries SET state = 'pending', next_attempt_at = ?, dead_at = NULL WHERE {where}", (now, *params))
            journal.record_finished(conn, journal.Finished(now, pending=[r[0] for r in rows]))
            return [(r[0], r[1]) for r in rows]

        return await self._write(op)

    async def purge(self, ids: Iterable[str] = (), *, client: str | None = None, all_dead: bool = False) -> int:
        """Delete dead letters; return how many."""
        id_list = list(ids)

        def op(conn: sqlite3.Connection) -> int:
            where, params = _dead_selector(id_list, client, all_dead)
            gone = [r[0] for r in conn.execute(f"SELECT id FROM deliveries WHERE {where}", params)]
            journal.record_finished(conn, journal.Finished(time.time(), purged=gone))
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
        """Changes whenever another process (``figrelay deliveries ...``) commits to the outbox.
        SQLite's alone (not in ``Store``): the daemon polls it; the PostgreSQL back end will
        have LISTEN/NOTIFY instead."""
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


    # --- the dispatcher's writes and reads ---------------------------------------------------------

    async def record_outcomes(self, outcomes: OutcomeWrites) -> None:
        """Store what one send (or one digest of sends) came to, every row in one transaction.
        Idempotent: recording the same outcomes again (after a failed write) changes nothing."""

        keep = self.journal_enabled

        def op(conn: sqlite3.Connection) -> None:
            if keep:
                finished = journal.Finished(outcomes.now, outcomes.delivered, [(i, reason) for i, _, reason in outcomes.dead])
                journal.record_outcomes(conn, outcomes.attempts, finished)
            if outcomes.delivered:
                conn.executemany("DELETE FROM deliveries WHERE id = ?", [(i,) for i in outcomes.delivered])
            if outcomes.dead:
                conn.executemany(
                    "UPDATE deliveries SET state = 'dead', attempts = COALESCE(?, attempts), last_error = ?, dead_at = ? WHERE id = ?",
                    [(attempts, _storable_text(error), outcomes.now, i) for i, attempts, error in outcomes.dead],
                )
            if outcomes.retry:
                conn.executemany(
                    "UPDATE deliveries SET attempts = ?, next_attempt_at = ?, last_error = ? WHERE id = ? AND state = 'pending'",
                    [(attempts, at, _storable_text(error), i) for i, attempts, at, error in outcomes.retry],
                )

        await self._write(op)

    async def pending_in_order(self, client: str | None = None, limit: int | None = None) -> list[tuple[str, str, float]]:
        """(id, client, created_at) of every pending delivery (of one client), in the order
        the intake accepted them: the order the dispatcher sends them in; ``limit``: the oldest
        so many."""
        tail = " LIMIT ?" if limit is not None else ""
        extra = (limit,) if limit is not None else ()

        def read() -> list[tuple[str, str, float]]:
            assert self._conn is not None
            if client is None:
                return self._conn.execute(
                    "SELECT id, client, created_at FROM deliveries WHERE state = 'pending' ORDER BY created_at, rowid" + tail, extra
                ).fetchall()
            return self._conn.execute(
                "SELECT id, client, created_at FROM deliveries WHERE state = 'pending' AND client = ? ORDER BY created_at, rowid" + tail, (client, *extra)
            ).fetchall()

        return await self._run(read)

    async def expire_waiting(self, clients: Iterable[str], max_age: float, now: float, reason: str) -> list[tuple[str, str]]:
        """Dead-letter the pending deliveries of these (removed) clients accepted more than
        ``max_age`` seconds ago; return their (id, client)."""
        names = list(clients)
        if not names:
            return []

        def op(conn: sqlite3.Connection) -> list[tuple[str, str]]:
            marks = ",".join("?" * len(names))
            where = f"state = 'pending' AND client IN ({marks}) AND created_at < ?"
            params = (*names, now - max_age)
            rows = conn.execute(f"SELECT id, client FROM deliveries WHERE {where}", params).fetchall()
            conn.execute(f"UPDATE deliveries SET state = 'dead', last_error = ?, dead_at = ? WHERE {where}", (reason, now, *params))
            journal.record_finished(conn, journal.Finished(now, dead=[(r[0], reason) for r in rows]))
            return [(r[0], r[1]) for r in rows]

        return await self._write(op)

    async def purge_waiting(self, client: str) -> int:
        """Delete the pending deliveries of a client (one that was removed from the configuration)."""

        def op(conn: sqlite3.Connection) -> int:
            gone = [r[0] for r in conn.execute("SELECT id FROM deliveries WHERE state = 'pending' AND client = ?", (client,))]
            journal.record_finished(conn, journal.Finished(time.time(), purged=gone))
            return conn.execute("DELETE FROM deliveries WHERE state = 'pending' AND client = ?", (client,)).rowcount

        return await self._write(op)

    async def set_client_health(self, health: ClientHealth) -> None:
        """Remember a client's circuit state, for ``figrelay deliveries`` and across restarts."""
        await self._write(
            lambda conn: conn.execute(
                "INSERT OR REPLACE INTO client_health (client, state, failures, since, next_probe_at, last_error) VALUES (?,?,?,?,?,?)",
                (health.client, health.state, health.failures, health.since, health.next_probe_at, _storable_text(health.last_error or "") or None),
            )
        )

    async def client_health(self) -> dict[str, ClientHealth]:
        def read() -> dict[str, ClientHealth]:
            assert self._conn is not None
            rows = self._conn.execute("SELECT client, state, failures, since, next_probe_at, last_error FROM client_health")
            return {row[0]: ClientHealth(*row) for row in rows}

        return await self._run(read)

    # --- replay (replay.py plans it, POST /-/replay stores it) --------------------------------------

    async def replay(self, replays: Sequence[tuple[journal.JournalDelivery, bytes]]) -> None:
        """Store replays of finished deliveries: for each (journal row, body), a new pending
        delivery due now, in the outbox and in the journal (``replay_of`` the original), all in
        one transaction, so a replay is never half stored. Raises UnstorableError, before any
        transaction, for a value SQLite cannot store."""
        rows = [NewDelivery(d.delivery_id, d.client, d.route, body, d.hook, d.created_at, event_id=d.event_id) for d, body in replays]
        _check_storable((*rows, *(d for d, _ in replays)))
        keep = self.journal_enabled

        def op(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT INTO deliveries (id, client, route, body, hook, created_at, next_attempt_at, event_id) VALUES (?,?,?,?,?,?,?,?)",
                [(r.id, r.client, r.route, r.body, r.hook, r.created_at, r.created_at, r.event_id) for r in rows],
            )
            if keep:
                journal.record_deliveries(conn, [d for d, _ in replays])

        if rows:
            await self._write(op)


    # --- journal retention (the daemon's pruning chore, /metrics) ---------------------------------

    async def prune_journal(self, *, now: float, retention: float, max_bytes: int, batch: int = journal.PRUNE_BATCH) -> journal.Pruned:
        """Delete the journal's oldest events, with their deliveries and attempts: those accepted
        before ``now - retention``, then, while the journal takes more than ``max_bytes``, the
        oldest of the rest; with ``journal_enabled`` off, every one. An event with a delivery
        still in the outbox (pending or dead) is kept (``journal.prune``).

        Each batch of ``batch`` events is one write through the group commit, a few milliseconds
        of the writer's time, and the event loop runs between two batches: accepting and
        recording outcomes go on while a large journal is cut down."""
        enabled = self.journal_enabled
        batches = 0

        async def delete(before: float, cursor: tuple[float, str] | None) -> journal.PruneBatch:
            nonlocal batches
            batches += 1
            result = await self._write(lambda conn: journal.prune(conn, before=before, after=cursor, limit=batch))
            await asyncio.sleep(0)  # let the intake's and dispatcher's writes in before the next batch
            return result

        by_age = 0
        cursor: tuple[float, str] | None = None
        while True:
            step = await delete(now - retention if enabled else math.inf, cursor)
            by_age += step.deleted
            if step.examined < batch:
                break
            cursor = step.cursor
        if not enabled:
            return journal.Pruned(by_age, 0, None, batches)

        # by size: measured again after each batch, since what a batch frees depends on how the
        # pages were filled (a B-tree keyed by random ids gives pages back only once they empty)
        by_size = 0
        cursor = None
        stats = await self.journal_stats()
        while stats.bytes > max_bytes:
            step = await delete(math.inf, cursor)
            by_size += step.deleted
            stats = await self.journal_stats()
            if step.examined < batch:
                break  # every event left has a delivery in the outbox
            cursor = step.cursor
        return journal.Pruned(by_age, by_size, stats, batches)

    async def journal_stats(self) -> journal.JournalStats:
        """The journal's size and oldest event (``/metrics``, pruning by size). Read on a
        read-only connection of its own, in a thread of its own, so that it neither waits for
        the outbox's writes nor holds them up; cheap: it walks the outbox's own tables, not the
        journal's (``journal.stats``)."""
        return await asyncio.to_thread(self._journal_stats)

    def _journal_stats(self) -> journal.JournalStats:
        conn = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None, check_same_thread=False, timeout=5)
        try:
            return journal.stats(conn)
        finally:
            conn.close()


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


# --- failures ------------------------------------------------------------------------------------


class _GroupFailed(Exception):
    """The shared transaction of a group of writes failed as a whole."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


# Errors of the storage rather than of one write: the disk, the file, the lock. Any other
# error (a constraint, an encoding, a bug in one write) refuses that write alone.
_STORAGE_CODES = frozenset({
    sqlite3.SQLITE_PERM, sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_NOMEM, sqlite3.SQLITE_READONLY,
    sqlite3.SQLITE_IOERR, sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_FULL, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PROTOCOL,
    sqlite3.SQLITE_NOTADB,
})
# Another writer holds the lock: trying again at once only waits busy_timeout once more.
_WAITING_CODES = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})


def _primary_code(exc: BaseException) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else code & 0xFF


def _is_storage_error(exc: BaseException) -> bool:
    if isinstance(exc, (OSError, MemoryError)):
        return True
    if isinstance(exc, _GroupFailed):
        return _is_storage_error(exc.error)
    if not isinstance(exc, sqlite3.Error):
        return False
    code = _primary_code(exc)
    return isinstance(exc, sqlite3.OperationalError) if code is None else code in _STORAGE_CODES


def _upgrade(conn: sqlite3.Connection) -> None:
    """Bring an older store up to SCHEMA_VERSION; each step is idempotent (checked, not assumed)."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(deliveries)")}
    if "event_id" not in columns:
        conn.execute("ALTER TABLE deliveries ADD COLUMN event_id TEXT")
    journal.create(conn)
    if conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() is not None:
        conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}
"""The field names of each dataclass _check_storable has seen (dataclasses.fields() is slow)."""


def _check_storable(rows: Iterable[object]) -> None:
    """Refuse, before the shared transaction, a value that SQLite would refuse inside it: a text
    with a lone surrogate (UTF-8 cannot encode it), an integer beyond 64 bits, a NaN where a
    number must be stored."""
    for row in rows:
        names = _FIELD_NAMES.get(type(row))
        if names is None:
            names = _FIELD_NAMES[type(row)] = tuple(f.name for f in fields(row))  # type: ignore[arg-type]
        for name in names:
            value = getattr(row, name)
            problem = None
            if isinstance(value, str):
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError as exc:
                    problem = f"holds {value[exc.start]!r} at position {exc.start}, which UTF-8 cannot encode (a lone surrogate)"
            elif isinstance(value, int) and not -(1 << 63) <= value < (1 << 63):
                problem = f"is {value}, beyond SQLite's 64-bit integers"
            elif isinstance(value, float) and math.isnan(value):
                problem = "is NaN"
            if problem is not None:
                raise UnstorableError(f"cannot store a {type(row).__name__}: its {name} {problem}; nothing of it was stored")


def _storable_text(text: str) -> str:
    """An error text SQLite can store: a lone surrogate (from a target's answer) becomes U+FFFD
    rather than costing the record of a delivery's outcome."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def _free_bytes(folder: Path) -> int | None:
    try:
        st = os.statvfs(folder)
    except OSError:
        return None
    if st.f_blocks == 0:  # a filesystem that does not report its size
        return None
    return st.f_bavail * st.f_frsize


def _free_note(folder: Path) -> str:
    free = _free_bytes(folder)
    return "" if free is None else f" ({free // 1024} KiB free in {folder})"


def _why_unwritable(path: Path) -> str | None:
    """The operating system's reason why this process cannot write the store, or None. It asks
    for write access without writing: opening the files for writing, creating a file beside."""
    for candidate in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            fd = os.open(candidate, os.O_RDWR)
        except FileNotFoundError:
            continue
        except OSError as exc:
            return f"opening {candidate.name} for writing fails: {exc.strerror} ({errno.errorcode.get(exc.errno or 0, exc.errno)})"
        os.close(fd)
    probe = path.with_name(f".{path.name}.write-test-{os.getpid()}")
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        return f"creating a file in {path.parent} fails: {exc.strerror} ({errno.errorcode.get(exc.errno or 0, exc.errno)})"
    os.close(fd)
    probe.unlink(missing_ok=True)
    return None


def _user() -> str:
    uid = os.geteuid()
    try:
        import pwd

        return f"user {pwd.getpwuid(uid).pw_name} (uid {uid})"
    except (ImportError, KeyError):
        return f"uid {uid}"


# --- the store marker ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoreMarker:
    """What ``state_dir/outbox.marker`` says: which store was created here, and when. Empty
    fields when the marker exists but cannot be read (it still shows a store existed)."""

    store_id: str | None
    created_at: str | None
    database: str | None


def _utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _missing_or_empty(path: Path) -> str | None:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "is missing"
    except OSError:
        return None  # opening it reports the problem
    return "is empty (0 bytes)" if size == 0 and path.is_file() else None


def _read_marker(path: Path) -> StoreMarker | None:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError):
        return StoreMarker(None, None, None)
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return StoreMarker(None, None, None)
    if not isinstance(data, dict):
        return StoreMarker(None, None, None)

    def text_of(key: str) -> str | None:
        value = data.get(key)
        return value if isinstance(value, str) and value else None

    return StoreMarker(text_of("store_id"), text_of("created_at"), text_of("database"))


def _write_marker(path: Path, marker: StoreMarker) -> None:
    """Replace the marker atomically and durably (it matters most after a crash)."""
    body = json.dumps(
        {
            "store_id": marker.store_id,
            "created_at": marker.created_at,
            "database": marker.database,
            "about": "figrelay keeps this file beside its outbox to notice when the outbox goes missing or is replaced "
            "by an empty one. Keep it with the outbox; see 'The state directory' in docs/operations.md.",
        },
        indent=2,
    )
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(body + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise OutboxError(
            f"cannot write the store marker {path}: {exc.strerror or exc}; make state_dir ({path.parent}) writable by {_user()}"
        ) from exc
