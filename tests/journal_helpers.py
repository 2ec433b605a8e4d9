"""A journal filled through journal.py's own write functions, in a store the outbox created, for the
tests of the journal's queries, replay planning and commands."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Sequence
from pathlib import Path

from conftest import event as fig_event
from figrelay import journal
from figrelay.config import Config, load_config
from figrelay.plugins import load_plugins
from figrelay.storage.sqlite import Outbox

CONFIG = """\
listen: 127.0.0.1:0
state_dir: ./state
clients:
  - {name: slack-ops, type: log}
  - {name: siem, type: log}
hooks:
  - {event: SettingValueChanged, client: slack-ops, client_regex: ^Orders, setting_regex: Timeout$}
  - {event: SecurityEvent, client: siem}
  - {event: MinRunSessions, client: slack-ops, client_regex: ^Orders, min_sessions: 2}
  - {event: HealthStatusChanged, client: siem}
"""


async def new_store(folder: Path) -> Path:
    """An empty store, created by the outbox exactly as the daemon creates it."""
    path = folder / "state" / "outbox.sqlite3"
    outbox = Outbox(path)
    await outbox.open()
    await outbox.close()
    return path


def write_config(folder: Path, text: str = CONFIG) -> Path:
    path = folder / "figrelay.yaml"
    path.write_text(text)
    return path


def config(folder: Path, text: str = CONFIG) -> Config:
    return load_config(write_config(folder, text), load_plugins(), need_credentials=False)


class JournalWriter:
    """Writes events, deliveries, attempts and outcomes as the intake and dispatcher do: through
    journal.py, each step in a transaction of its own."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None)

    def close(self) -> None:
        self.conn.close()

    def event(
        self, at: float, route: str = "SettingValueChanged", setting_client: str | None = "OrdersApi",
        to: Sequence[tuple[str, int | None]] = (("slack-ops", 0),), body: bytes | None = None, test: bool = False,
        delivery_route: str | None = None, event_id: str | None = None, sent: bytes | None = None,
    ) -> tuple[str, list[str]]:
        """One accepted event and its deliveries (pending); returns (event id, delivery ids).
        ``sent``: the body the deliveries carried, when it differs from the event's."""
        event_id = event_id or uuid.uuid4().hex
        if body is None:
            fields = {} if setting_client is None else {"ClientName": setting_client}
            body = fig_event(route, **fields)
        deliveries = [
            journal.JournalDelivery(uuid.uuid4().hex, event_id, client, hook, delivery_route or route, at, body=sent) for client, hook in to
        ]
        matched = tuple(journal.HookMatch(d.hook if d.hook is not None else -1, d.client, d.delivery_id) for d in deliveries)
        with self.conn:
            self.conn.execute("BEGIN")
            journal.record_event(self.conn, journal.JournalEvent(event_id, at, route, setting_client, body, test, matched), deliveries)
        return event_id, [d.delivery_id for d in deliveries]

    def attempt(
        self, delivery_id: str, number: int, at: float, outcome: str, status: int | None = None, reason: str | None = None, duration: float = 0.012
    ) -> None:
        """One attempt and, when it ends the delivery, its outcome, in one transaction."""
        with self.conn:
            self.conn.execute("BEGIN")
            journal.record_attempts(self.conn, [journal.Attempt(delivery_id, number, at, duration, outcome, status, reason)])
            if outcome == "delivered":
                journal.record_finished(self.conn, journal.Finished(at + duration, delivered=[delivery_id]))
            elif outcome == "dead":
                journal.record_finished(self.conn, journal.Finished(at + duration, dead=[(delivery_id, reason or "dead")]))

    def deliver(self, delivery_id: str, at: float) -> None:
        self.attempt(delivery_id, 1, at, "delivered", 200, "HTTP 200")

    def outbox_row(
        self, delivery_id: str, client: str, route: str, body: bytes, at: float, *, next_attempt_at: float | None = None,
        state: str = "pending", attempts: int = 0, last_error: str | None = None, event_id: str | None = None,
    ) -> None:
        """The outbox row a pending delivery (or dead letter) has."""
        self.conn.execute(
            "INSERT INTO deliveries (id, client, route, body, hook, created_at, attempts, next_attempt_at, state, last_error, dead_at, event_id)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (delivery_id, client, route, body, 0, at, attempts, next_attempt_at if next_attempt_at is not None else at, state, last_error,
             at if state == "dead" else None, event_id),
        )

    def replay_of(self, original: str, event_id: str, client: str, at: float, route: str = "SettingValueChanged") -> str:
        new_id = uuid.uuid4().hex
        with self.conn:
            self.conn.execute("BEGIN")
            journal.record_deliveries(self.conn, [journal.JournalDelivery(new_id, event_id, client, 0, route, at, replay_of=original)])
        return new_id


# --- query plans ------------------------------------------------------------------------------------


def plan_of(conn: sqlite3.Connection, sql: str, params: list[object]) -> list[str]:
    return [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params)]


def assert_on_indexes(steps: list[str]) -> None:
    for step in steps:
        assert "TEMP B-TREE" not in step, f"sorts instead of walking an index in order: {steps}"
        for table in ("journal_attempts", "journal_deliveries", "d"):
            assert not step.startswith(f"SCAN {table}"), f"a full scan of {table}: {steps}"
        if step.startswith("SCAN") and not step.startswith("SCAN (subquery"):  # a subquery's rows: bounded by its LIMIT
            assert "USING INDEX" in step or "USING COVERING INDEX" in step, f"a scan without an index: {steps}"
