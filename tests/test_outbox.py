"""Unit tests for figrelay.storage.sqlite (the SQLite Outbox) with a real SQLite file under tmp_path."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from figrelay.storage import NewDelivery, OutboxError, SessionWrite, StoredDelivery, StoreLostError, UnstorableError
from figrelay.storage.sqlite import JOURNAL_SIZE_LIMIT, SCHEMA_VERSION, WAL_AUTOCHECKPOINT_PAGES, Outbox


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
        assert conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == (str(SCHEMA_VERSION),)


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


# --- one write's failure is its own ------------------------------------------------------------


def meta_keys(path: Path) -> set[str]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return {r[0] for r in conn.execute("SELECT key FROM meta")}


async def test_any_exception_in_a_write_fails_that_write_alone(outbox: Outbox) -> None:
    def half_done_then_raises(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO meta VALUES ('half-done', 'x')")
        raise ValueError("a bug in one write")

    def unencodable(conn: sqlite3.Connection) -> None:  # binding a lone surrogate raises UnicodeEncodeError
        conn.execute("INSERT INTO meta VALUES (?, ?)", ("k", "\ud800"))

    before = outbox.commits
    results = await asyncio.gather(
        *(outbox.accept([new(i)]) for i in range(10)),
        outbox._write(half_done_then_raises),
        outbox._write(unencodable),
        *(outbox.accept([new(i)]) for i in range(10, 20)),
        return_exceptions=True,
    )
    assert results[:10] + results[12:] == [None] * 20
    assert isinstance(results[10], UnstorableError) and "a bug in one write" in str(results[10])
    assert isinstance(results[11], UnstorableError) and "surrogates not allowed" in str(results[11])
    assert outbox.commits == before + 1, "the 22 writes shared one transaction"
    assert len(await outbox.pending_schedule()) == 20
    assert "half-done" not in meta_keys(outbox.path)  # the failed write's own changes were undone
    assert outbox.health.writable


async def test_a_failing_single_write_is_undone_and_refused(outbox: Outbox) -> None:
    def half_done_then_raises(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO meta VALUES ('half-done', 'x')")
        raise KeyError("nope")

    with pytest.raises(UnstorableError, match="nope"):
        await outbox._write(half_done_then_raises)
    assert "half-done" not in meta_keys(outbox.path)
    await outbox.accept([new(1)])
    assert "d1" in await outbox.fetch(["d1"])


async def test_a_value_sqlite_cannot_store_is_refused_before_the_shared_transaction(outbox: Outbox) -> None:
    # Built directly: the event parser may replace lone surrogates, but the outbox must not
    # depend on that.
    before = outbox.commits
    results = await asyncio.gather(
        *(outbox.accept([new(i)], [SessionWrite("OrdersApi", f"k{i}", True)]) for i in range(5)),
        outbox.accept([new(90)], [SessionWrite("\ud800", "k", True)]),
        outbox.accept([NewDelivery("d91", "si\udcffem", "SecurityEvent", b"{}", 0, 1000.0)]),
        outbox.accept([new(92, hook=1 << 70)]),
        outbox.accept([new(93, created_at=float("nan"))]),
        *(outbox.accept([new(i)], [SessionWrite("OrdersApi", f"k{i}", True)]) for i in range(5, 10)),
        return_exceptions=True,
    )
    assert results[:5] + results[9:] == [None] * 10
    refused = results[5:9]
    assert all(isinstance(r, UnstorableError) for r in refused), refused
    assert "SessionWrite" in str(refused[0]) and "its client holds '\\ud800' at position 0" in str(refused[0])
    assert "NewDelivery" in str(refused[1]) and "its client" in str(refused[1])
    assert "its hook" in str(refused[2]) and "its created_at is NaN" in str(refused[3])
    assert outbox.commits == before + 1
    assert sorted(await outbox.fetch([f"d{i}" for i in (*range(10), 90, 91, 92, 93)])) == sorted(f"d{i}" for i in range(10))
    assert len(await outbox.sessions()) == 10
    assert outbox.health.writable


async def test_error_texts_with_a_lone_surrogate_are_stored_with_a_replacement(outbox: Outbox) -> None:
    await outbox.accept([new(1), new(2)])
    await outbox.retry_later("d1", 1, 2000.0, "HTTP 500: \udcff")
    await outbox.dead("d2", 1, "HTTP 400: \ud800")
    rows = await outbox.fetch(["d1", "d2"])
    assert rows["d1"].last_error == "HTTP 500: \ufffd" and rows["d2"].last_error == "HTTP 400: \ufffd"


async def test_a_group_whose_commit_fails_is_retried_write_by_write(outbox: Outbox) -> None:
    # A deferred foreign key is checked only at COMMIT: one write that breaks it fails the
    # shared transaction as a whole, the way a full disk or an I/O error does.
    def deferred_key() -> None:
        assert outbox._conn is not None
        outbox._conn.execute("PRAGMA foreign_keys=ON")
        outbox._conn.executescript(
            "CREATE TABLE parent (id INTEGER PRIMARY KEY);"
            "CREATE TABLE child (parent INTEGER REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED);"
        )

    await outbox._run(deferred_key)
    before = outbox.commits
    results = await asyncio.gather(
        *(outbox.accept([new(i)]) for i in range(5)),
        outbox._write(lambda conn: conn.execute("INSERT INTO child VALUES (42)")),
        *(outbox.accept([new(i)]) for i in range(5, 10)),
        return_exceptions=True,
    )
    assert results[:5] + results[6:] == [None] * 10
    assert isinstance(results[5], UnstorableError) and "FOREIGN KEY" in str(results[5])
    assert outbox.commits == before + 10, "after the shared COMMIT failed, each write went alone"
    assert len(await outbox.pending_schedule()) == 10
    assert outbox.health.writable, "a write's own constraint says nothing about the storage"


async def test_a_write_the_storage_refused_is_tried_again(outbox: Outbox) -> None:
    calls = 0

    def flaky(conn: sqlite3.Connection) -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise sqlite3.OperationalError("disk I/O error")
        conn.execute("INSERT INTO meta VALUES ('flaky', 'ok')")
        return "stored"

    results = await asyncio.gather(outbox.accept([new(1)]), outbox._write(flaky), outbox.accept([new(2)]))
    assert results == [None, "stored", None]
    assert calls == 2
    assert sorted(await outbox.fetch(["d1", "d2"])) == ["d1", "d2"]
    assert outbox.health.writable


async def test_a_storage_failure_makes_the_outbox_unwritable_until_a_write_succeeds(outbox: Outbox) -> None:
    def full(conn: sqlite3.Connection) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    assert outbox.health.writable
    with pytest.raises(OutboxError, match="database or disk is full") as caught:
        await outbox._write(full)
    assert not isinstance(caught.value, UnstorableError)
    health = outbox.health
    assert not health.writable and "database or disk is full" in (health.error or "")
    assert health.since <= time.time()
    # the probe finds the outbox writable again by itself (this disk has room)
    deadline = time.monotonic() + 10
    while not outbox.health.writable:
        assert time.monotonic() < deadline, "the probe did not find the outbox writable again"
        await asyncio.sleep(0.01)
    assert "heartbeat" in meta_keys(outbox.path)


async def test_the_wal_is_kept_small(outbox: Outbox) -> None:
    def pragmas() -> tuple[int, int]:
        assert outbox._conn is not None
        return (
            outbox._conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0],
            outbox._conn.execute("PRAGMA journal_size_limit").fetchone()[0],
        )

    assert await outbox._run(pragmas) == (WAL_AUTOCHECKPOINT_PAGES, JOURNAL_SIZE_LIMIT)
    blob = b"x" * 3000
    for start in range(0, 2000, 100):
        await outbox.accept([NewDelivery(f"big{i}", "siem", "SecurityEvent", blob, 0, 1.0) for i in range(start, start + 100)])
        await asyncio.gather(*(outbox.delivered(f"big{i}") for i in range(start, start + 100)))
    wal = outbox.path.with_name(outbox.path.name + "-wal")
    # 6 MB went through; without checkpoints every 256 pages and the size limit the WAL holds it
    assert wal.stat().st_size <= JOURNAL_SIZE_LIMIT + 200 * 4096


# --- the store marker --------------------------------------------------------------------------


def marker_of(box: Outbox) -> dict:
    return json.loads(box.marker_path.read_text())


def stored_id(path: Path) -> str | None:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        row = conn.execute("SELECT value FROM meta WHERE key = 'store_id'").fetchone()
    return row[0] if row else None


async def test_a_new_store_gets_a_marker_with_its_id(outbox: Outbox, db_path: Path) -> None:
    assert outbox.marker_path == db_path.parent / "outbox.marker"
    marker = marker_of(outbox)
    assert marker["store_id"] == outbox.store_id == stored_id(db_path)
    assert len(marker["store_id"]) == 32 and marker["database"] == db_path.name and marker["created_at"].endswith("Z")
    again = await reopen(outbox)
    try:
        assert again.store_id == marker["store_id"] and marker_of(again) == marker
    finally:
        await again.close()


def remove_store(db_path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        db_path.with_name(db_path.name + suffix).unlink(missing_ok=True)


@pytest.mark.parametrize("damage", ["missing", "empty", "another store", "not figrelay's"])
async def test_a_lost_store_is_refused_loudly_and_accepted_when_asked(db_path: Path, damage: str, caplog: pytest.LogCaptureFixture) -> None:
    box = Outbox(db_path)
    await box.open()
    await box.accept([new(i) for i in range(20)])
    await box.close()
    old_id = marker_of(box)["store_id"]
    remove_store(db_path)
    if damage == "empty":
        db_path.write_bytes(b"")
    elif damage == "another store":
        other = Outbox(db_path.parent / "elsewhere" / db_path.name)
        await other.open()
        await other.close()
        shutil.copyfile(other.path, db_path)
    elif damage == "not figrelay's":
        with contextlib.closing(sqlite3.connect(db_path)) as conn, conn:
            conn.execute("CREATE TABLE notes (text TEXT)")

    box = Outbox(db_path)
    with pytest.raises(StoreLostError) as caught:
        await box.open()
    await box.close()
    message = str(caught.value)
    found = {"missing": "is missing", "empty": "is empty (0 bytes)", "another store": "is another store", "not figrelay's": "has no figrelay tables"}
    assert f"the outbox {db_path} {found[damage]}" in message
    assert str(box.marker_path) in message and old_id in message
    assert "pending" in message and "figrelay run --accept-empty-state" in message
    assert marker_of(box)["store_id"] == old_id, "a refused start leaves the marker alone"

    box = Outbox(db_path)
    with caplog.at_level(logging.WARNING, logger="figrelay.outbox"):
        await box.open(accept_empty=True)
    try:
        assert await box.pending_schedule() == []
        assert box.store_id != old_id and marker_of(box)["store_id"] == box.store_id == stored_id(db_path)
        assert "--accept-empty-state" in caplog.text and found[damage] in caplog.text
    finally:
        await box.close()
    again = Outbox(db_path)  # from now on an ordinary store
    await again.open()
    await again.close()


async def test_a_store_without_a_marker_is_adopted(db_path: Path) -> None:
    box = Outbox(db_path)
    await box.open()
    await box.accept([new(1)])
    await box.close()
    first = marker_of(box)
    store = first["store_id"]
    box.marker_path.unlink()  # a marker lost on its own: the store keeps its id and creation time
    box = Outbox(db_path)
    await box.open()
    await box.close()
    assert marker_of(box) == first
    box.marker_path.unlink()  # a store written before figrelay kept markers: it gets an id
    with contextlib.closing(sqlite3.connect(db_path)) as conn, conn:
        conn.execute("DELETE FROM meta WHERE key = 'store_id'")
    box = Outbox(db_path)
    await box.open()
    try:
        assert "d1" in await box.fetch(["d1"])
        assert box.store_id not in (None, store) and marker_of(box)["store_id"] == box.store_id == stored_id(db_path)
    finally:
        await box.close()


async def test_an_unreadable_marker_still_shows_a_store_existed(db_path: Path) -> None:
    box = Outbox(db_path)
    await box.open()
    await box.close()
    box.marker_path.write_text("")  # the same accident that emptied the database
    remove_store(db_path)
    box = Outbox(db_path)
    with pytest.raises(StoreLostError, match="is missing"):
        await box.open()
    await box.close()

