"""Reading what a daemon keeps in its state directory, read-only, while it runs: the outbox
(pending deliveries and dead letters) and the event journal (every event, delivery and attempt;
see figrelay/journal.py). For tests: ``Daemon.state`` gives one, ``StateReader(path)`` reads any
state directory.

Every read opens the SQLite store read-only (``journal_queries.open_read_only``), so a test can
never change what the daemon keeps.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .waiting import DEFAULT_TIMEOUT, poll

if TYPE_CHECKING:
    from figrelay.journal_queries import AttemptRecord, DeliveryRecord, EventSummary, Trace

__all__ = ["OutboxRow", "StateReader", "STORE_FILE"]

STORE_FILE = "outbox.sqlite3"
"""The SQLite file in ``state_dir`` that holds the outbox and the journal."""


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """A delivery's row in the outbox: pending, or a dead letter. Delivered ones leave the outbox
    (the journal keeps them)."""

    id: str
    client: str
    route: str
    state: str
    """pending or dead"""
    attempts: int
    next_attempt_at: float
    last_error: str | None
    created_at: float
    hook: int | None
    body: bytes


class StateReader:
    """The outbox and journal in one state directory, read-only."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / STORE_FILE

    def __repr__(self) -> str:
        return f"StateReader({str(self.state_dir)!r})"

    def _connect(self) -> sqlite3.Connection:
        from figrelay.journal_queries import open_read_only

        return open_read_only(self.path)

    # --- the outbox -------------------------------------------------------------------------

    def outbox(self, *, client: str | None = None, state: str | None = None) -> list[OutboxRow]:
        """The outbox's rows (of ``client``, in ``state`` pending or dead, when given), oldest first."""
        conditions, params = [], []
        if client is not None:
            conditions.append("client = ?")
            params.append(client)
        if state is not None:
            conditions.append("state = ?")
            params.append(state)
        where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        conn = self._connect()
        try:
            rows = conn.execute(
                "SELECT id, client, route, state, attempts, next_attempt_at, last_error, created_at, hook, body "
                f"FROM deliveries{where} ORDER BY created_at, id",
                params,
            ).fetchall()
        finally:
            conn.close()
        return [OutboxRow(*row[:-1], bytes(row[-1])) for row in rows]

    def pending(self, client: str | None = None) -> list[OutboxRow]:
        return self.outbox(client=client, state="pending")

    def dead_letters(self, client: str | None = None) -> list[OutboxRow]:
        return self.outbox(client=client, state="dead")

    # --- the journal ------------------------------------------------------------------------

    def deliveries(self, *, client: str | None = None, state: str | None = None, route: str | None = None) -> list[DeliveryRecord]:
        """Every delivery the journal holds (to ``client``, now in ``state``: pending, delivered,
        dead or purged, of event type ``route``, when given), oldest first."""
        from figrelay.journal_queries import DeliveryRecord

        columns = ", ".join(f.name for f in dataclasses.fields(DeliveryRecord))
        conditions, params = [], []
        for column, value in (("client", client), ("state", state), ("route", route)):
            if value is not None:
                conditions.append(f"{column} = ?")
                params.append(value)
        where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        conn = self._connect()
        try:
            rows = conn.execute(f"SELECT {columns} FROM journal_deliveries{where} ORDER BY created_at, delivery_id", params).fetchall()
        finally:
            conn.close()
        return [DeliveryRecord(*row) for row in rows]

    def attempts(self, delivery_id: str) -> list[AttemptRecord]:
        """One delivery's attempts, in order: when, how long, outcome (delivered, retry, dead),
        the target's status and the reason."""
        from figrelay.journal_queries import attempts_of

        conn = self._connect()
        try:
            return attempts_of(conn, [delivery_id]).get(delivery_id, [])
        finally:
            conn.close()

    def events(self, limit: int = 100) -> list[EventSummary]:
        """The events received, newest first, each with its deliveries (as ``figrelay events`` lists them)."""
        from figrelay.journal_queries import EventFilter, find_events

        conn = self._connect()
        try:
            return list(find_events(conn, EventFilter(limit=limit)).events)
        finally:
            conn.close()

    def trace(self, id_: str) -> Trace:
        """An event or delivery id (or the start of one) traced through every attempt, as
        ``figrelay trace`` shows it."""
        from figrelay.journal_queries import trace

        conn = self._connect()
        try:
            return trace(conn, id_)
        finally:
            conn.close()

    # --- waiting ----------------------------------------------------------------------------

    async def wait_for_deliveries(
        self,
        count: int = 1,
        *,
        client: str | None = None,
        state: str = "delivered",
        route: str | None = None,
        where: Callable[[DeliveryRecord], bool] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> list[DeliveryRecord]:
        """Wait until the journal holds at least ``count`` deliveries in ``state`` (delivered,
        dead, pending or purged; to ``client``, of ``route``, for which ``where`` holds, when given);
        return them, oldest first. On time-out, fail naming what was awaited and listing the
        deliveries the journal does hold, with their attempts and last reason."""
        found: list[DeliveryRecord] = []

        def read() -> list[DeliveryRecord]:
            from figrelay.journal_queries import JournalUnavailable

            try:
                rows = self.deliveries(client=client, state=state, route=route)
            except JournalUnavailable:  # the daemon has not created its store yet
                return []
            return [d for d in rows if where is None or where(d)]

        async def ready() -> bool:
            found[:] = await asyncio.to_thread(read)
            return len(found) >= count

        what = (
            f"{count} deliver{'ies' if count != 1 else 'y'} in state {state!r}"
            + (f" to client {client!r}" if client else "")
            + (f" of {route}" if route else "")
            + (" matching the condition" if where else "")
            + f" in the journal of {self.state_dir}"
        )
        await poll(ready, timeout, what, lambda: asyncio.to_thread(self.describe))
        return found

    def describe(self) -> str:
        """What the journal holds, for a failure message: each delivery with its state, attempts and last reason."""
        from figrelay.journal_queries import JournalUnavailable

        try:
            held = self.deliveries()
        except JournalUnavailable as exc:
            return str(exc)
        if not held:
            return "the journal holds no delivery (did the event match a hook? see the daemon's log)"
        lines = [
            f"  {d.delivery_id[:8]} {d.route} -> {d.client}: {d.state}, {d.attempts} attempt{'s' if d.attempts != 1 else ''}"
            + (f", last: {d.last_reason}" if d.last_reason else "")
            for d in held[-20:]
        ]
        shown = " (the last 20 shown)" if len(held) > 20 else ""
        return f"the journal holds {len(held)} deliver{'ies' if len(held) != 1 else 'y'}{shown}:\n" + "\n".join(lines)
