"""A synchronous, read-only connection to figrelay's PostgreSQL database, for the journal's queries.

journal_queries.py and replay.py are synchronous and speak sqlite3's DB-API: ``conn.execute(sql,
params)`` with ``?`` placeholders, rows as tuples. The driver, asyncpg, is asynchronous.
``PostgresReader`` bridges the two, so those queries run unchanged on PostgreSQL:

- asyncpg runs on an event loop of the reader's own, in a daemon thread: the same reader works in
  a command, which has no loop, and in a thread the daemon hands the work to (``asyncio.to_thread``),
  without ever running on (or blocking) the daemon's loop;
- ``?`` becomes ``$1``, ``$2``, … (``numbered_placeholders``), never inside a string literal, a
  quoted name or a comment;
- the session is read-only (``default_transaction_read_only``): a write fails, as it does through
  ``open_read_only``'s SQLite connection;
- rows are read as they are used, ``BATCH`` at a time, through a cursor: the journal's walks stop
  as soon as they have enough, and must not pull a million rows to look at fifty. PostgreSQL keeps
  a cursor only inside a transaction, so one is open while some result is partly read (SQLite
  holds its read transaction as long, for the same reason). It ends when the last such result is
  read to its end or closed, or, for one dropped half-read, at the next statement or ``close()``;
  read committed, each statement still sees what was committed when it began, as in SQLite.

Errors: ``JournalUnavailable`` when the database cannot be reached, holds no journal, or the
connection is lost; a statement that fails raises asyncpg's ``PostgresError``, which
``journal_queries.query_errors()`` catches together with ``sqlite3.Error``.
"""

from __future__ import annotations

import asyncio
import functools
import re
import threading
import weakref
from collections import deque
from collections.abc import Coroutine, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from ..journal_queries import _JOURNAL_TABLES, POSTGRESQL, Dialect, JournalUnavailable
from .postgresql import PostgresTarget, describe_failure

if TYPE_CHECKING:
    import asyncpg

T = TypeVar("T")
Row = tuple[Any, ...]

BATCH = 500
"""Rows read at a time: a walk that stops after fifty events reads one batch, and the round trips
of a long one stay few."""
CLOSE_TIMEOUT = 5.0
"""Seconds to close the connection politely before it is cut."""


# --- placeholders ---------------------------------------------------------------------------------

_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_\u0080-\uffff][A-Za-z0-9_\u0080-\uffff]*)?\$")


@functools.lru_cache(maxsize=1024)
def numbered_placeholders(sql: str) -> str:
    """``sql`` with each ``?`` placeholder written ``$1``, ``$2``, … as PostgreSQL numbers them.

    A ``?`` in a string literal (``'…'``, ``E'…'``, ``$$…$$``), a quoted name (``"…"``) or a
    comment is text and stays: the queries build their SQL from parts, and a literal must never
    shift the numbering. So PostgreSQL's own ``?`` operators (jsonb's) cannot be written here; the
    journal's queries use none. (Cached: the queries send the same few texts again and again.)"""
    out: list[str] = []
    number = 0
    copied = i = 0
    n = len(sql)
    while i < n:
        c = sql[i]
        if c == "?":
            number += 1
            out += [sql[copied:i], f"${number}"]
            i = copied = i + 1
        elif c == "'":
            escapes = i > 0 and sql[i - 1] in "Ee" and not (i > 1 and _in_name(sql[i - 2]))  # E'…': backslash escapes
            i = _quoted_end(sql, i, "'", escapes)
        elif c == '"':
            i = _quoted_end(sql, i, '"', False)
        elif sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end < 0 else end + 1
        elif sql.startswith("/*", i):
            i = _comment_end(sql, i)
        elif c == "$" and not (i > 0 and _in_name(sql[i - 1])) and (tag := _DOLLAR_TAG.match(sql, i)):
            end = sql.find(tag.group(), tag.end())
            i = n if end < 0 else end + len(tag.group())
        else:
            i += 1
    out.append(sql[copied:])
    return "".join(out)


def _in_name(c: str) -> bool:
    """Whether ``c`` can be part of an unquoted name (then a following ``'`` or ``$`` does not
    start an E'…' string or a dollar quote)."""
    return c.isalnum() or c in "_$"


def _quoted_end(sql: str, start: int, quote: str, escapes: bool) -> int:
    """The index after the literal or quoted name opened at ``start`` (a doubled quote is one
    quote; with ``escapes``, a backslash escapes the next character); the end of ``sql`` when it
    is not closed (the server then says what is wrong)."""
    i = start + 1
    while i < len(sql):
        if escapes and sql[i] == "\\":
            i += 2
        elif sql[i] == quote:
            if not sql.startswith(quote, i + 1):
                return i + 1
            i += 2
        else:
            i += 1
    return len(sql)


def _comment_end(sql: str, start: int) -> int:
    """The index after the /* … */ comment opened at ``start``; PostgreSQL's nest."""
    depth, i = 0, start
    while i < len(sql):
        if sql.startswith("/*", i):
            depth, i = depth + 1, i + 2
        elif sql.startswith("*/", i):
            depth, i = depth - 1, i + 2
            if depth == 0:
                return i
        else:
            i += 1
    return len(sql)


# --- the reader's own event loop ------------------------------------------------------------------


class _Loop:
    """An event loop run by a daemon thread of its own. asyncpg needs a loop; a command has none,
    and the daemon's must be neither blocked by a synchronous caller nor borrowed by one. A daemon
    thread, so a reader left open does not keep a command from exiting."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="figrelay-pg-read", daemon=True)
        self._thread.start()

    def run(self, work: Coroutine[Any, Any, T]) -> T:
        """Run ``work`` on the loop, and wait here for its result or exception."""
        return asyncio.run_coroutine_threadsafe(work, self._loop).result()

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()


def _driver() -> Any:
    """asyncpg, imported only when a reader opens: an installation that keeps SQLite never loads it."""
    try:
        import asyncpg
    except ImportError as exc:
        raise JournalUnavailable(
            f"storage: postgresql:// needs the PostgreSQL driver, asyncpg, which is not installed ({exc}): "
            "install figrelay with its postgresql extra (pip install 'figrelay[postgresql]')"
        ) from None
    return asyncpg


async def _connect(driver: Any, target: PostgresTarget) -> asyncpg.Connection:
    """A read-only session on ``target``, once it is known to hold the journal's tables."""
    failures = (OSError, TimeoutError, driver.PostgresError, driver.InterfaceError, driver.exceptions.InternalClientError)
    try:
        conn = await driver.connect(**target.driver_arguments())
    except failures as exc:
        raise JournalUnavailable(f"cannot connect to PostgreSQL to read the journal: {describe_failure(exc, target).message}") from None
    try:
        await conn.execute("SET default_transaction_read_only = on")
        # to_regclass follows the search_path, as figrelay does when it creates the tables
        rows = await conn.fetch("SELECT name FROM unnest($1::text[]) AS name WHERE to_regclass(name) IS NOT NULL", list(_JOURNAL_TABLES))
    except failures as exc:
        await _close(conn)
        raise JournalUnavailable(f"cannot read the journal in PostgreSQL at {target.describe()}: {target.scrub(str(exc))}") from None
    missing = [t for t in _JOURNAL_TABLES if t not in {row[0] for row in rows}]
    if missing:
        await _close(conn)
        raise JournalUnavailable(
            f"the PostgreSQL database at {target.describe()} holds no event journal (no table {missing[0]}): has figrelay run with "
            "this storage: URL yet? It creates its tables when it first starts (and finds them through the role's search_path)"
        )
    return conn


async def _close(conn: asyncpg.Connection) -> None:
    """Close politely, or cut the connection when the server does not answer."""
    try:
        await asyncio.wait_for(conn.close(), CLOSE_TIMEOUT)
    except Exception:
        conn.terminate()


async def _undo(transaction: Any) -> None:
    """Roll back a transaction (or savepoint) a statement failed in; when the connection is gone
    too, there is nothing left to roll back, and the statement's own error is the one to raise."""
    try:
        await transaction.rollback()
    except Exception:
        pass


# --- the reader -----------------------------------------------------------------------------------


class PostgresReader:
    """A read-only connection to figrelay's PostgreSQL database for journal_queries and replay
    (journal_queries.ReadConnection); see the module's docstring. Statements from several
    threads take turns. ``close()`` it when done."""

    dialect: Dialect = POSTGRESQL
    """The pieces of SQL the queries write PostgreSQL's way (journal_queries.Dialect)."""

    def __init__(self, target: PostgresTarget, loop: _Loop, conn: asyncpg.Connection) -> None:
        self._target = target
        self._loop = loop
        self._conn = conn
        self._lock = threading.Lock()
        self._transaction: Any = None
        """The transaction that partly read results are read in, while there are some."""
        self._partly_read: weakref.WeakSet[PostgresCursor] = weakref.WeakSet()
        """Results with rows still to read; one that is dropped leaves by itself."""
        self._generation = 0
        """Counts the transactions that ended with results still partly read: a cursor from an
        earlier one has lost the rest of its rows."""
        self._closed = False

    @classmethod
    def open(cls, target: PostgresTarget) -> PostgresReader:
        """A reader on ``target`` (from ``parse_storage_url``). Raises JournalUnavailable, saying
        why and what to do, when the database cannot be reached or holds no journal."""
        driver = _driver()
        loop = _Loop()
        try:
            conn = loop.run(_connect(driver, target))
        except BaseException:
            loop.stop()
            raise
        return cls(target, loop, conn)

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> PostgresCursor:
        """Run one statement (``?`` placeholders) and return its rows' cursor, the first batch read."""
        text = numbered_placeholders(sql)
        with self._lock:
            self._check_open()
            self._settle()
            rows, portal = self._run(self._start(text, tuple(parameters), nested=self._transaction is not None))
            cursor = PostgresCursor(self, rows, portal, self._generation)
            if portal is not None:
                self._partly_read.add(cursor)
            return cursor

    def close(self) -> None:
        """Close the connection (ending any transaction) and stop the reader's thread; again: nothing."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._transaction = None
            self._partly_read.clear()
            try:
                self._loop.run(_close(self._conn))
            finally:
                self._loop.stop()

    # -- for PostgresCursor --------------------------------------------------------------------------

    def _next_batch(self, cursor: PostgresCursor) -> list[Row]:
        """The next rows of a partly read result; the last ones leave ``cursor.portal`` None."""
        with self._lock:
            self._check_open()
            if cursor.generation != self._generation:
                raise JournalUnavailable(
                    "the rest of this result is lost: an error in another statement ended the transaction it was read in; run the query again"
                )
            try:
                rows = self._run(self._fetch(cursor.portal))
            except BaseException:
                self._generation += 1  # the transaction is gone, and with it every partly read result
                self._partly_read.clear()
                raise
            if len(rows) < BATCH:
                self._finished(cursor)
            return rows

    def _finished(self, cursor: PostgresCursor) -> None:
        """``cursor`` holds its last rows (or was closed): its transaction may end."""
        cursor.portal = None
        self._partly_read.discard(cursor)
        if not self._closed:
            self._settle()

    def _release(self, cursor: PostgresCursor) -> None:
        with self._lock:
            self._finished(cursor)

    # -- inside ---------------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise JournalUnavailable("this PostgreSQL reader is closed")

    def _settle(self) -> None:
        """End the transaction once no result still to be read lives in it: it holds locks that
        would keep another replica from changing the schema, and must not outlast its use."""
        if self._transaction is not None and not self._partly_read:
            transaction, self._transaction = self._transaction, None
            self._run(transaction.commit())

    def _run(self, work: Coroutine[Any, Any, T]) -> T:
        """Run ``work`` on the reader's loop; a lost connection becomes JournalUnavailable."""
        try:
            return self._loop.run(work)
        except Exception as exc:
            if isinstance(exc, JournalUnavailable) or not self._lost(exc):
                raise
            self._transaction = None
            self._partly_read.clear()
            self._generation += 1
            raise JournalUnavailable(
                f"lost the connection to PostgreSQL at {self._target.describe()} while reading the journal: {self._target.scrub(str(exc))}"
            ) from exc

    def _lost(self, exc: Exception) -> bool:
        """Whether ``exc`` means the connection is gone: closed, cut, or ended by the server (SQLSTATE
        class 08, or 57P: an administrator, a shutdown, the database dropped), which the driver
        may report before it has seen the socket close."""
        sqlstate = str(getattr(exc, "sqlstate", None) or "")
        return self._conn.is_closed() or isinstance(exc, OSError) or sqlstate.startswith(("08", "57P"))

    async def _start(self, sql: str, args: tuple[Any, ...], *, nested: bool) -> tuple[list[Row], Any]:
        """Open a cursor on the statement in a transaction (a savepoint, beside results still
        being read, so that a failure here spares them) and read its first batch. When that is
        all of it, the transaction ends here; else it stays open for the rest."""
        conn = self._conn
        transaction = conn.transaction()
        await transaction.start()
        try:
            portal = await conn.cursor(sql, *args)
            rows = await portal.fetch(BATCH)
        except BaseException:
            await _undo(transaction)
            raise
        done = len(rows) < BATCH
        if nested or done:
            await transaction.commit()  # a savepoint's RELEASE: the cursor lives on in the transaction around it
        else:
            self._transaction = transaction
        return [tuple(row) for row in rows], None if done else portal

    async def _fetch(self, portal: Any) -> list[Row]:
        try:
            rows = await portal.fetch(BATCH)
        except BaseException:
            # the error aborted the transaction: roll it back, so that the next statement can run
            transaction, self._transaction = self._transaction, None
            if transaction is not None:
                await _undo(transaction)
            raise
        return [tuple(row) for row in rows]


class PostgresCursor:
    """One statement's rows as tuples, read a batch at a time as they are used: ``fetchone``,
    ``fetchall`` and iteration, as a ``sqlite3.Cursor``."""

    def __init__(self, reader: PostgresReader, rows: list[Row], portal: Any, generation: int) -> None:
        self._reader = reader
        self._rows = deque(rows)
        self.portal = portal
        """The server-side cursor with rows still to read, or None."""
        self.generation = generation

    def __iter__(self) -> Iterator[Row]:
        return self

    def __next__(self) -> Row:
        while not self._rows:
            if self.portal is None:
                raise StopIteration
            self._rows.extend(self._reader._next_batch(self))
        return self._rows.popleft()

    def fetchone(self) -> Row | None:
        return next(self, None)

    def fetchall(self) -> list[Row]:
        return list(self)

    def close(self) -> None:
        """Drop the rows not read yet (and, when it was the last, the transaction they were read in)."""
        self._rows.clear()
        if self.portal is not None:
            self._reader._release(self)


__all__ = ["BATCH", "PostgresCursor", "PostgresReader", "numbered_placeholders"]
