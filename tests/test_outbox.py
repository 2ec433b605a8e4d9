"""Unit tests for figrelay.outbox with a real SQLite file under tmp_path."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from figrelay.outbox import NewDelivery, Outbox, OutboxError, SessionWrite, StoredDelivery


def new(i: int | str, client: str = "siem", *, created_at: float = 1000.0, route: str = "SecurityEvent", hook: int | None = 0) -> NewDelivery:
    return NewDelivery(f"d{i}", client, route, f'{{"n":{i!r}}}'.encode() if isinstance(i, int) else b"{}", hook, created_at)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "outbox.sqlite"


@pytest.fixture
async def outbox(db_path: Path) -> AsyncIterator[Outbox]:
    box = Outbox(db_path)
    await box.open()
    try:
        yield box
    finally:
        await box.close()


async def reopen(box: Outbox) -> Outbox:
    await box.close()
    again = Outbox(box.path)
    await again.open()
    return again


# --- accept / schedule / fetch -----------------------------------------------------------------


async def test_open_creates_the_database_and_folder(db_path: Path) -> None:
    assert not db_path.parent.exists()
    box = Outbox(db_path)
    await box.open()
    await box.close()
    assert db_path.exists()
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"deliveries", "sessions", "meta"} <= tables
        assert conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == ("1",)


async def test_accept_pending_schedule_fetch_round_trip(outbox: Outbox) -> None:
    body = '{"ClientName":"Ünïcode","Instance":null}'.encode()
    await outbox.accept(
        [
            NewDelivery("a", "siem", "ClientStatusChanged", body, 3, 1000.5),
            NewDelivery("b", "console", "SecurityEvent", b"{}", None, 1000.25),
        ]
    )
    assert outbox.commits == 1
    # oldest first, due when accepted
    assert await outbox.pending_schedule() == [("b", "console", 1000.25), ("a", "siem", 1000.5)]
    rows = await outbox.fetch(["a", "b", "missing"])
    assert set(rows) == {"a", "b"}
    assert rows["a"] == StoredDelivery(
        id="a",
        client="siem",
        route="ClientStatusChanged",
        body=body,
        hook=3,
        created_at=1000.5,
        attempts=0,
        next_attempt_at=1000.5,
        state="pending",
        last_error=None,
        dead_at=None,
    )
    assert isinstance(rows["a"].body, bytes)
    assert rows["b"].hook is None


async def test_fetch_many_ids(outbox: Outbox) -> None:
    await outbox.accept([new(i, created_at=1000.0 + i) for i in range(1200)])
    ids = [f"d{i}" for i in range(1200)]
    rows = await outbox.fetch(ids)
    assert len(rows) == 1200
    assert rows["d1199"].body == b'{"n":1199}'
    assert [r[0] for r in await outbox.pending_schedule()] == ids


async def test_fetch_nothing(outbox: Outbox) -> None:
    assert await outbox.fetch([]) == {}
    assert await outbox.pending_schedule() == []


async def test_same_created_at_keeps_insertion_order(outbox: Outbox) -> None:
    await outbox.accept([new(3), new(1), new(2)])
    assert [r[0] for r in await outbox.pending_schedule()] == ["d3", "d1", "d2"]


async def test_accept_with_nothing_still_commits(outbox: Outbox) -> None:
    await outbox.accept([])
    assert await outbox.pending_schedule() == []


# --- group commit ------------------------------------------------------------------------------


async def test_concurrent_accepts_are_grouped_into_fewer_commits(outbox: Outbox) -> None:
    n = 50
    await asyncio.gather(*(outbox.accept([new(i, created_at=1000.0 + i)], [SessionWrite("OrdersApi", f"k{i}", True)]) for i in range(n)))
    assert outbox.commits < n
    assert outbox.commits >= 1
    schedule = await outbox.pending_schedule()
    assert [r[0] for r in schedule] == [f"d{i}" for i in range(n)]
    assert len(await outbox.sessions()) == n


async def test_concurrent_mixed_writes_all_land(outbox: Outbox) -> None:
    await outbox.accept([new(i) for i in range(20)])
    before = outbox.commits
    await asyncio.gather(
        *(outbox.delivered(f"d{i}") for i in range(0, 10)),
        *(outbox.retry_later(f"d{i}", 1, 2000.0, "HTTP 503") for i in range(10, 15)),
        *(outbox.dead(f"d{i}", 2, "HTTP 400") for i in range(15, 20)),
    )
    assert outbox.commits - before < 20
    rows = await outbox.fetch([f"d{i}" for i in range(20)])
    assert sorted(rows) == sorted(f"d{i}" for i in range(10, 20))
    assert all(rows[f"d{i}"].state == "pending" and rows[f"d{i}"].attempts == 1 for i in range(10, 15))
    assert all(rows[f"d{i}"].state == "dead" for i in range(15, 20))


async def test_a_failing_write_in_a_group_fails_alone(outbox: Outbox) -> None:
    await outbox.accept([new(0)])
    results = await asyncio.gather(
        outbox.accept([new(1)]),
        outbox.accept([new(0)]),  # duplicate id: this one fails
        outbox.accept([new(2)]),
        return_exceptions=True,
    )
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], OutboxError)
    assert sorted(await outbox.fetch(["d0", "d1", "d2"])) == ["d0", "d1", "d2"]


async def test_a_failing_single_write_raises_outbox_error_and_stores_nothing(outbox: Outbox) -> None:
    await outbox.accept([new(0)])
    with pytest.raises(OutboxError):
        await outbox.accept([new(5), new(0)], [SessionWrite("OrdersApi", "k", True)])
    assert await outbox.fetch(["d5"]) == {}
    assert await outbox.sessions() == []
    # the outbox still works afterwards
    await outbox.accept([new(6)])
    assert "d6" in await outbox.fetch(["d6"])


# --- state changes -----------------------------------------------------------------------------


async def test_delivered_deletes(outbox: Outbox) -> None:
    await outbox.accept([new(1), new(2)])
    await outbox.delivered("d1")
    await outbox.delivered("nope")
    assert [r[0] for r in await outbox.pending_schedule()] == ["d2"]
    assert await outbox.fetch(["d1"]) == {}


async def test_retry_later(outbox: Outbox) -> None:
    await outbox.accept([new(1), new(2)])
    await outbox.retry_later("d1", 3, 5000.0, "HTTP 503: busy")
    rows = await outbox.fetch(["d1"])
    row = rows["d1"]
    assert (row.attempts, row.next_attempt_at, row.last_error, row.state) == (3, 5000.0, "HTTP 503: busy", "pending")
    assert await outbox.pending_schedule() == [("d1", "siem", 5000.0), ("d2", "siem", 1000.0)]


async def test_retry_later_does_not_revive_a_dead_letter(outbox: Outbox) -> None:
    await outbox.accept([new(1)])
    await outbox.dead("d1", 4, "HTTP 400")
    await outbox.retry_later("d1", 5, 9999.0, "late")
    row = (await outbox.fetch(["d1"]))["d1"]
    assert (row.state, row.attempts, row.last_error) == ("dead", 4, "HTTP 400")


async def test_dead(outbox: Outbox) -> None:
    await outbox.accept([new(1), new(2)])
    before = time.time()
    await outbox.dead("d1", 7, "HTTP 404: gone")
    row = (await outbox.fetch(["d1"]))["d1"]
    assert (row.state, row.attempts, row.last_error) == ("dead", 7, "HTTP 404: gone")
    assert row.dead_at is not None and before - 1 <= row.dead_at <= time.time() + 1
    assert [r[0] for r in await outbox.pending_schedule()] == ["d2"]
    assert [d.id for d in await outbox.list(state="dead")] == ["d1"]
    assert [d.id for d in await outbox.list(state="pending")] == ["d2"]
    assert [d.id for d in await outbox.list()] == ["d1", "d2"]


async def test_kill_client(outbox: Outbox) -> None:
    await outbox.accept([new(1, "siem"), new(2, "siem"), new(3, "console"), new(4, "siem")])
    await outbox.dead("d4", 1, "earlier")
    assert await outbox.kill_client("siem", "client removed from the configuration") == 2
    rows = await outbox.fetch(["d1", "d2", "d3", "d4"])
    assert rows["d1"].state == rows["d2"].state == "dead"
    assert rows["d1"].last_error == "client removed from the configuration"
    assert rows["d1"].dead_at is not None
    assert rows["d3"].state == "pending"
    assert rows["d4"].last_error == "earlier"  # already dead: untouched
    assert await outbox.pending_schedule() == [("d3", "console", 1000.0)]
    assert await outbox.kill_client("nobody", "x") == 0


async def test_revive_by_ids_client_and_all(outbox: Outbox) -> None:
    await outbox.accept([new(i, "siem" if i < 4 else "console") for i in range(6)])
    for i in range(5):
        await outbox.dead(f"d{i}", 2, "HTTP 400")
    # d5 stays pending
    before = time.time()
    assert sorted(await outbox.revive(["d0", "d5", "missing"])) == [("d0", "siem")]
    row = (await outbox.fetch(["d0"]))["d0"]
    assert row.state == "pending" and row.dead_at is None
    assert before - 1 <= row.next_attempt_at <= time.time() + 1
    assert row.attempts == 2  # history kept

    assert sorted(await outbox.revive(client="siem")) == [("d1", "siem"), ("d2", "siem"), ("d3", "siem")]
    assert [d.id for d in await outbox.list(state="dead")] == ["d4"]
    assert await outbox.revive(all_dead=True) == [("d4", "console")]
    assert await outbox.list(state="dead") == []


async def test_revive_or_purge_with_no_selector_does_nothing(outbox: Outbox) -> None:
    await outbox.accept([new(1)])
    await outbox.dead("d1", 1, "x")
    assert await outbox.revive() == []
    assert await outbox.purge() == 0
    assert [d.id for d in await outbox.list(state="dead")] == ["d1"]


async def test_purge(outbox: Outbox) -> None:
    await outbox.accept([new(i, "siem" if i < 3 else "console") for i in range(5)])
    for i in (0, 1, 3):
        await outbox.dead(f"d{i}", 1, "x")
    assert await outbox.purge(["d0", "d2"]) == 1  # d2 is pending: not purged
    assert sorted(await outbox.fetch(["d0", "d1", "d2", "d3", "d4"])) == ["d1", "d2", "d3", "d4"]
    assert await outbox.purge(client="siem") == 1
    assert await outbox.purge(all_dead=True) == 1
    assert sorted(await outbox.fetch(["d1", "d2", "d3", "d4"])) == ["d2", "d4"]
    assert await outbox.purge(all_dead=True) == 0


async def test_list_filters(outbox: Outbox) -> None:
    await outbox.accept([new(1, "a", created_at=3.0), new(2, "b", created_at=1.0), new(3, "a", created_at=2.0)])
    assert [d.id for d in await outbox.list(client="a")] == ["d3", "d1"]
    assert [d.id for d in await outbox.list(limit=2)] == ["d2", "d3"]


# --- sessions and durability -----------------------------------------------------------------


async def test_sessions_written_with_deliveries(outbox: Outbox) -> None:
    await outbox.accept([], [SessionWrite("OrdersApi", "k1", True), SessionWrite("OrdersApi", "k2", True), SessionWrite("Pay", "k1", True)])
    await outbox.accept([], [SessionWrite("OrdersApi", "k1", True)])  # a repeat is ignored
    assert sorted(await outbox.sessions()) == [("OrdersApi", "k1"), ("OrdersApi", "k2"), ("Pay", "k1")]
    await outbox.accept([new(1)], [SessionWrite("OrdersApi", "k1", False), SessionWrite("Nobody", "zz", False)])
    assert sorted(await outbox.sessions()) == [("OrdersApi", "k2"), ("Pay", "k1")]
    assert "d1" in await outbox.fetch(["d1"])


async def test_sessions_persist_across_close_and_reopen(outbox: Outbox) -> None:
    key = '[null,"orders-host-1","10.0.0.12",17487812961234567]'
    await outbox.accept([], [SessionWrite("OrdersApi", key, True), SessionWrite("OrdersApi", "other", True)])
    await outbox.accept([], [SessionWrite("OrdersApi", "other", False)])
    again = await reopen(outbox)
    try:
        assert await again.sessions() == [("OrdersApi", key)]
    finally:
        await again.close()


async def test_data_survives_reopen(db_path: Path) -> None:
    box = Outbox(db_path)
    await box.open()
    await box.accept([new(1, created_at=10.0), new(2, created_at=20.0), new(3, created_at=30.0)])
    await box.retry_later("d2", 1, 99.0, "HTTP 500")
    await box.dead("d3", 4, "HTTP 400")
    await box.delivered("d1")
    await box.close()

    box = Outbox(db_path)
    await box.open()
    try:
        assert await box.pending_schedule() == [("d2", "siem", 99.0)]
        rows = await box.fetch(["d1", "d2", "d3"])
        assert sorted(rows) == ["d2", "d3"]
        assert (rows["d2"].attempts, rows["d2"].last_error) == (1, "HTTP 500")
        assert (rows["d3"].state, rows["d3"].attempts) == ("dead", 4)
        assert rows["d2"].body == b'{"n":2}'
        assert box.commits == 0
        await box.accept([new(4)])
        assert box.commits == 1
    finally:
        await box.close()


async def test_committed_rows_visible_to_another_connection(outbox: Outbox) -> None:
    await outbox.accept([new(1)])
    with sqlite3.connect(outbox.path) as conn:
        assert conn.execute("SELECT id, state FROM deliveries").fetchall() == [("d1", "pending")]


async def test_newer_schema_is_refused(db_path: Path) -> None:
    box = Outbox(db_path)
    await box.open()
    await box.close()
    with sqlite3.connect(db_path) as conn:
        conn.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    box = Outbox(db_path)
    with pytest.raises(OutboxError, match="newer figrelay"):
        await box.open()
    await box.close()


async def test_uncreatable_state_dir_is_an_outbox_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    box = Outbox(blocker / "outbox.sqlite")  # its folder would have to be a file
    try:
        with pytest.raises(OutboxError):
            await box.open()
    finally:
        await box.close()


async def test_unopenable_database_is_an_outbox_error(tmp_path: Path) -> None:
    (tmp_path / "outbox.sqlite").mkdir()  # a folder where the database file should be
    box = Outbox(tmp_path / "outbox.sqlite")
    try:
        with pytest.raises(OutboxError):
            await box.open()
    finally:
        await box.close()
