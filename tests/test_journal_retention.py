"""The journal's retention: ``journal.prune`` and ``Outbox.prune_journal`` on a real SQLite outbox
with an injected ``now`` (by age, by size, never an event whose delivery is still in the outbox,
in batches that let other writes through), its measurement (``journal.stats``), the daemon's
pruning chore, and the journal's figures on ``/metrics`` of a real daemon."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import re
import sqlite3
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from conftest import event, wait_until, write_config
from figrelay import journal
from figrelay.config import JournalSettings
from figrelay.daemon import JOURNAL_PRUNE_EVERY, JOURNAL_PRUNE_FIRST, _prune_journal
from figrelay.metrics import Metrics
from figrelay.storage import NewDelivery
from figrelay.storage.sqlite import Outbox
from test_e2e import daemon_config

DAY = 86400.0
NOW = 100 * DAY
"""The injected clock: every test's events are placed relative to it."""
FOREVER = 10**12
"""A max_bytes that no test reaches."""


@pytest.fixture
async def outbox(tmp_path: Path) -> AsyncIterator[Outbox]:
    box = Outbox(tmp_path / "state" / "outbox.sqlite3")
    await box.open()
    try:
        yield box
    finally:
        await box.close()


def delivery_of(event_id: str) -> str:
    return f"{event_id}-d"


async def add_events(box: Outbox, times: Sequence[float], *, body_bytes: int = 64, attempts: int = 2) -> list[str]:
    """Journal one finished event per time (random ids, as the intake makes them), each with one
    delivery and ``attempts`` attempts, in one transaction; return their ids, in ``times``' order."""
    ids = [uuid.uuid4().hex for _ in times]

    def op(conn: sqlite3.Connection) -> None:
        for event_id, at in zip(ids, times, strict=True):
            d = delivery_of(event_id)
            body = os.urandom(body_bytes // 2).hex().encode()  # incompressible, distinct
            journal.record_event(
                conn,
                journal.JournalEvent(event_id, at, "SecurityEvent", "OrdersApi", body, matched=(journal.HookMatch(0, "siem", d),)),
                [journal.JournalDelivery(d, event_id, "siem", 0, "SecurityEvent", at)],
            )
            journal.record_attempts(
                conn, [journal.Attempt(d, n, at + n, 0.1, "delivered" if n == attempts else "retry", 200) for n in range(1, attempts + 1)]
            )
            journal.record_finished(conn, journal.Finished(at + attempts, delivered=[d]))

    await box._write(op)
    return ids


async def keep_in_outbox(box: Outbox, event_id: str, at: float, *, dead: bool = False) -> str:
    """Put the event's delivery (back) in the outbox: pending, or a dead letter."""
    d = delivery_of(event_id)
    await box.accept([NewDelivery(d, "siem", "SecurityEvent", b"{}", 0, at)])
    if dead:
        await box.dead(d, 3, "HTTP 404")
    return d


def journal_rows(box: Outbox) -> dict[str, set[str]]:
    """Every id in the journal's three tables, read on a connection of the test's own."""
    conn = sqlite3.connect(box.path)
    try:
        return {
            "events": {r[0] for r in conn.execute("SELECT event_id FROM journal_events")},
            "deliveries": {r[0] for r in conn.execute("SELECT delivery_id FROM journal_deliveries")},
            "attempts": {r[0] for r in conn.execute("SELECT DISTINCT delivery_id FROM journal_attempts")},
        }
    finally:
        conn.close()


def assert_journal_holds(box: Outbox, event_ids: Sequence[str]) -> None:
    """The journal holds exactly these events, each with its delivery and attempts."""
    rows = journal_rows(box)
    assert rows["events"] == set(event_ids)
    assert rows["deliveries"] == rows["attempts"] == {delivery_of(e) for e in event_ids}


# --- by age -----------------------------------------------------------------------------------------


async def test_events_older_than_the_retention_go_with_their_deliveries_and_attempts(outbox: Outbox) -> None:
    ids = await add_events(outbox, [NOW - (10 - i) * DAY for i in range(10)])  # 10 days ago .. 1 day ago
    pruned = await outbox.prune_journal(now=NOW, retention=5.5 * DAY, max_bytes=FOREVER)
    assert (pruned.by_age, pruned.by_size) == (5, 0)
    assert_journal_holds(outbox, ids[5:])
    assert pruned.stats is not None and pruned.stats.oldest_event == NOW - 5 * DAY
    # the clock moves on a day: one more is out of the retention
    again = await outbox.prune_journal(now=NOW + DAY, retention=5.5 * DAY, max_bytes=FOREVER)
    assert again.by_age == 1
    assert_journal_holds(outbox, ids[6:])


async def test_nothing_within_the_retention_is_touched(outbox: Outbox) -> None:
    ids = await add_events(outbox, [NOW - 60, NOW - 1, NOW])
    pruned = await outbox.prune_journal(now=NOW, retention=3600, max_bytes=FOREVER)
    assert pruned.events == 0 and pruned.batches == 1
    assert_journal_holds(outbox, ids)


# --- by size ----------------------------------------------------------------------------------------


async def test_over_max_bytes_the_oldest_events_go_until_the_journal_fits(outbox: Outbox) -> None:
    times = [NOW - 3000 + i for i in range(3000)]
    ids = await add_events(outbox, times, body_bytes=1000)
    before = await outbox.journal_stats()
    assert before.exact and before.bytes > 3000 * 1000
    limit = before.bytes // 2
    pruned = await outbox.prune_journal(now=NOW, retention=365 * DAY, max_bytes=limit)
    assert pruned.by_age == 0 and pruned.by_size > 0
    assert pruned.stats is not None and pruned.stats.bytes <= limit
    left = journal_rows(outbox)["events"]
    # the newest are kept, the oldest went: what is left is the tail of the list
    assert left == set(ids[len(ids) - len(left) :])
    assert_journal_holds(outbox, ids[len(ids) - len(left) :])
    # and not much more went than the limit asked for (random ids leave pages part-filled: some slack)
    assert len(left) >= 0.25 * len(ids), f"kept {len(left)} of {len(ids)} for half the room"
    # once it fits, a pass deletes nothing
    assert (await outbox.prune_journal(now=NOW, retention=365 * DAY, max_bytes=limit)).events == 0


async def test_the_size_is_measured_cheaply_and_grows_with_the_journal(outbox: Outbox) -> None:
    empty = await outbox.journal_stats()
    assert empty.oldest_event is None and empty.exact
    assert empty.bytes < 100_000  # the journal's empty tables and indexes: a page each
    await add_events(outbox, [NOW - 5, NOW - 3], body_bytes=64)
    await add_events(outbox, [NOW - 1 for _ in range(500)], body_bytes=2000)
    full = await outbox.journal_stats()
    assert full.oldest_event == NOW - 5
    # at least the bodies; at most a few times them (pages part-filled, overflow pages, indexes)
    assert 500 * 2000 < full.bytes - empty.bytes < 8 * 500 * 2000
    # pending deliveries in the outbox (its own table) are not counted as the journal's
    await outbox.accept([NewDelivery(f"p{i}", "siem", "SecurityEvent", os.urandom(2000), 0, NOW) for i in range(200)])
    with_outbox = await outbox.journal_stats()
    assert abs(with_outbox.bytes - full.bytes) < 50_000


def test_without_dbstat_the_size_is_an_estimate_near_the_measure(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript(
        "CREATE TABLE deliveries (id TEXT PRIMARY KEY, body BLOB, last_error TEXT);"
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);"
    )
    journal.create(conn)
    conn.execute("BEGIN")
    for i in range(300):
        conn.execute("INSERT INTO deliveries VALUES (?, ?, NULL)", (f"p{i}", os.urandom(3000)))
    for i in range(300):
        journal.record_event(conn, journal.JournalEvent(f"e{i}", float(i), "SecurityEvent", None, os.urandom(3000)), [])
    conn.execute("COMMIT")
    exact = journal.stats(conn)
    conn.close()

    class WithoutDbstat(sqlite3.Connection):
        """An SQLite built without SQLITE_ENABLE_DBSTAT_VTAB, as far as the journal can tell."""

        def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:  # type: ignore[override]
            if "dbstat" in sql:
                raise sqlite3.OperationalError("no such table: dbstat")
            return super().execute(sql, *args)

    plain = sqlite3.connect(path, isolation_level=None, factory=WithoutDbstat)
    try:
        estimate = journal.stats(plain)
    finally:
        plain.close()
    assert exact.exact and not estimate.exact
    assert estimate.oldest_event == exact.oldest_event == 0.0
    assert abs(estimate.bytes - exact.bytes) < 0.25 * exact.bytes, (estimate, exact)


# --- never what the outbox still holds ---------------------------------------------------------------


async def test_an_event_whose_delivery_is_still_in_the_outbox_is_never_pruned(outbox: Outbox) -> None:
    old = NOW - 30 * DAY
    pending, dead, _delivered = await add_events(outbox, [old, old + 1, old + 2])
    pending_delivery = await keep_in_outbox(outbox, pending, old)
    dead_delivery = await keep_in_outbox(outbox, dead, old + 1, dead=True)

    by_age = await outbox.prune_journal(now=NOW, retention=DAY, max_bytes=FOREVER)
    assert by_age.by_age == 1
    assert_journal_holds(outbox, [pending, dead])
    # nor to make room: the limit is left unmet rather than lose a trace the outbox still needs
    by_size = await outbox.prune_journal(now=NOW, retention=365 * DAY, max_bytes=0)
    assert by_size.events == 0 and by_size.stats is not None and by_size.stats.bytes > 0
    assert_journal_holds(outbox, [pending, dead])
    outbox.journal_enabled = False
    assert (await outbox.prune_journal(now=NOW, retention=DAY, max_bytes=FOREVER)).events == 0
    assert_journal_holds(outbox, [pending, dead])
    outbox.journal_enabled = True

    # delivered, and purged: the outbox is done with them, and so is the retention
    await outbox.delivered(pending_delivery)
    assert await outbox.purge([dead_delivery]) == 1
    assert (await outbox.prune_journal(now=NOW, retention=DAY, max_bytes=FOREVER)).by_age == 2
    assert_journal_holds(outbox, [])


async def test_events_held_by_the_outbox_are_looked_at_once_per_pass(outbox: Outbox, monkeypatch: pytest.MonkeyPatch) -> None:
    # a target down for a day holds many old events; each batch starts after the last one looked at
    held = await add_events(outbox, [NOW - 10 * DAY + i for i in range(250)])
    for i, event_id in enumerate(held):
        await keep_in_outbox(outbox, event_id, NOW - 10 * DAY + i)
    free = await add_events(outbox, [NOW - 9 * DAY + i for i in range(150)])
    examined: list[int] = []
    real = journal.prune

    def counting(conn: sqlite3.Connection, **kwargs: Any) -> journal.PruneBatch:
        result = real(conn, **kwargs)
        examined.append(result.examined)
        return result

    monkeypatch.setattr(journal, "prune", counting)
    pruned = await outbox.prune_journal(now=NOW, retention=DAY, max_bytes=FOREVER, batch=100)
    assert pruned.by_age == 150
    assert sum(examined) == 400 and pruned.batches == 5  # 100, 100, 100, 100, then 0 left
    assert journal_rows(outbox)["events"] == set(held)
    assert not set(free) & journal_rows(outbox)["events"]


# --- off ----------------------------------------------------------------------------------------------


async def test_with_the_journal_off_pruning_empties_it(outbox: Outbox) -> None:
    ids = await add_events(outbox, [NOW - 1, NOW, NOW + 60])  # within any retention, even "from the future"
    outbox.journal_enabled = False
    pruned = await outbox.prune_journal(now=NOW, retention=365 * DAY, max_bytes=FOREVER)
    assert pruned.by_age == len(ids) and pruned.stats is None
    assert_journal_holds(outbox, [])


# --- batches ------------------------------------------------------------------------------------------


async def test_each_batch_is_a_transaction_of_its_own(outbox: Outbox) -> None:
    await add_events(outbox, [NOW - DAY - i for i in range(450)])
    commits = outbox.commits
    pruned = await outbox.prune_journal(now=NOW, retention=60, max_bytes=FOREVER, batch=200)
    assert pruned.by_age == 450 and pruned.batches == 3
    assert outbox.commits - commits == 3
    assert_journal_holds(outbox, [])


async def test_an_intake_write_goes_in_between_two_batches_not_after_the_last(outbox: Outbox, monkeypatch: pytest.MonkeyPatch) -> None:
    await add_events(outbox, [NOW - DAY - i for i in range(1000)])
    loop = asyncio.get_running_loop()
    batches_done: list[int] = []
    accepted_after: list[int] = []
    accepting: list[asyncio.Task[None]] = []
    real = journal.prune

    def accept_now() -> None:
        # an event arrives while the first batch is being written
        task = loop.create_task(outbox.accept([NewDelivery("new", "siem", "SecurityEvent", b"{}", 0, NOW)]))
        task.add_done_callback(lambda _: accepted_after.append(len(batches_done)))
        accepting.append(task)

    def first_lets_an_event_in(conn: sqlite3.Connection, **kwargs: Any) -> journal.PruneBatch:
        if not batches_done:
            loop.call_soon_threadsafe(accept_now)
        result = real(conn, **kwargs)
        batches_done.append(result.deleted)
        return result

    monkeypatch.setattr(journal, "prune", first_lets_an_event_in)
    pruned = await outbox.prune_journal(now=NOW, retention=60, max_bytes=FOREVER, batch=100)
    await accepting[0]
    assert pruned.by_age == 1000 and pruned.batches == 11
    # the event was stored right after the batch it arrived during, not behind the other ten
    assert accepted_after[0] <= 2, f"the event waited for {accepted_after[0]} batches"
    assert [d.id for d in await outbox.list()] == ["new"]


# --- the daemon's chore and /metrics ---------------------------------------------------------------


def holder_with(settings: JournalSettings) -> Any:
    return SimpleNamespace(current=SimpleNamespace(config=SimpleNamespace(journal=settings)))


async def run_chore(outbox: Outbox, settings: JournalSettings, metrics: Metrics, now: float = NOW, check: float = 3600) -> asyncio.Task[None]:
    # every: an hour, so exactly one pass runs while the test looks (and no measurement between passes, unless asked)
    return asyncio.get_running_loop().create_task(
        _prune_journal(outbox, holder_with(settings), metrics, every=3600, first=0, clock=lambda: now, check=check)
    )


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


async def test_the_chore_prunes_by_the_settings_and_counts_what_it_pruned(outbox: Outbox) -> None:
    await add_events(outbox, [NOW - 3 * DAY, NOW - 2 * DAY, NOW - 60])
    metrics = Metrics()
    assert sample(metrics, "figrelay_journal_pruned_events_total", reason="age") == 0
    chore = await run_chore(outbox, JournalSettings(retention=DAY), metrics)
    try:
        await wait_until(lambda: sample(metrics, "figrelay_journal_pruned_events_total", reason="age") == 2, what="the first pass")
        assert sample(metrics, "figrelay_journal_oldest_event_timestamp_seconds") == NOW - 60
        assert (sample(metrics, "figrelay_journal_bytes") or 0) > 0
    finally:
        chore.cancel()
        await asyncio.gather(chore, return_exceptions=True)


async def test_the_chore_says_once_when_the_size_limit_decides_what_is_kept(outbox: Outbox, caplog: pytest.LogCaptureFixture) -> None:
    await add_events(outbox, [NOW - 3600 + i for i in range(2000)], body_bytes=1000)
    measured = (await outbox.journal_stats()).bytes
    # below the configuration's minimum, to keep the test small: constructed, not validated
    settings = JournalSettings.model_construct(enabled=True, retention=7 * DAY, max_bytes=measured // 2)
    metrics = Metrics()
    with caplog.at_level(logging.INFO, logger="figrelay"):
        chore = await run_chore(outbox, settings, metrics)
        try:
            await wait_until(lambda: (sample(metrics, "figrelay_journal_pruned_events_total", reason="size") or 0) > 0, what="a pass by size")
        finally:
            chore.cancel()
            await asyncio.gather(chore, return_exceptions=True)
    lines = [r.getMessage() for r in caplog.records if "journal.max_bytes" in r.getMessage()]
    assert len(lines) == 1, lines
    assert re.search(r"the journal reached journal\.max_bytes \(\S+\): it keeps the events of the last (\d+[dhms])+, less than journal\.retention \(7d\)", lines[0]), lines[0]


async def test_a_journal_that_grows_past_its_limit_between_passes_is_pruned_then(outbox: Outbox) -> None:
    # the first pass finds the journal within its limit; the next pass is an hour away, but the
    # size is measured every few milliseconds here, and the journal, grown past the limit, is pruned at once
    await add_events(outbox, [NOW - 3600 + i for i in range(200)], body_bytes=1000)
    measured = (await outbox.journal_stats()).bytes
    settings = JournalSettings.model_construct(enabled=True, retention=7 * DAY, max_bytes=measured * 2)
    metrics = Metrics()
    chore = await run_chore(outbox, settings, metrics, check=0.01)
    try:
        await wait_until(lambda: sample(metrics, "figrelay_journal_bytes") == measured, what="the first pass's measurement")
        assert sample(metrics, "figrelay_journal_pruned_events_total", reason="size") == 0
        await add_events(outbox, [NOW - 1800 + i for i in range(600)], body_bytes=1000)
        await wait_until(lambda: (sample(metrics, "figrelay_journal_pruned_events_total", reason="size") or 0) > 0, what="a pass by size")
        assert (sample(metrics, "figrelay_journal_bytes") or 0) <= settings.max_bytes
    finally:
        chore.cancel()
        await asyncio.gather(chore, return_exceptions=True)


async def test_the_chore_empties_a_journal_that_was_turned_off(outbox: Outbox, caplog: pytest.LogCaptureFixture) -> None:
    await add_events(outbox, [NOW - 1, NOW])
    outbox.journal_enabled = False  # the daemon sets it from journal.enabled, at start and on reload
    metrics = Metrics()
    with caplog.at_level(logging.INFO, logger="figrelay"):
        chore = await run_chore(outbox, JournalSettings(enabled=False), metrics)
        try:
            await wait_until(lambda: sample(metrics, "figrelay_journal_pruned_events_total", reason="disabled") == 2, what="the first pass")
        finally:
            chore.cancel()
            await asyncio.gather(chore, return_exceptions=True)
    assert_journal_holds(outbox, [])
    assert "journal.enabled is false: removed 2 events from the journal" in caplog.text


def metric_value(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert m, f"{name} is not on /metrics:\n{text}"
    return float(m.group(1))


async def test_metrics_show_the_journals_size_and_oldest_event(daemon_factory: Any) -> None:
    config = daemon_config(
        clients="  - {name: console, type: log}",
        hooks="  - {event: SecurityEvent, client: console}",
        intake="  forward_test_events: false",
        extra="journal:\n  retention: 2d\n  max_bytes: 64MiB\n",
    )
    d = await daemon_factory(config)
    status, text, _ = await d.request("GET", "/metrics")
    assert status == 200
    assert metric_value(text, "figrelay_journal_bytes") > 0
    assert math.isnan(metric_value(text, "figrelay_journal_oldest_event_timestamp_seconds"))  # nothing journalled yet
    for reason in ("age", "size", "disabled"):
        assert metric_value(text, f'figrelay_journal_pruned_events_total{{reason="{reason}"}}') == 0

    status, payload = await d.post("SecurityEvent", event("SecurityEvent"))
    assert status == 200, payload
    status, text, _ = await d.request("GET", "/metrics")
    oldest = metric_value(text, "figrelay_journal_oldest_event_timestamp_seconds")
    assert not math.isnan(oldest), "the accepted event is in the journal"


def journal_config(journal: str) -> str:
    return daemon_config(
        clients="  - {name: console, type: log}", hooks="  - {event: SecurityEvent, client: console}", intake="  forward_test_events: false",
        extra=f"journal:\n{journal}",
    )


async def oldest_on_metrics(d: Any) -> float:
    status, text, _ = await d.request("GET", "/metrics")
    assert status == 200
    return metric_value(text, "figrelay_journal_oldest_event_timestamp_seconds")


async def test_journal_enabled_is_applied_at_start_and_on_reload(daemon_factory: Any) -> None:
    d = await daemon_factory(journal_config("  enabled: false\n"))
    assert (await d.post("SecurityEvent", event("SecurityEvent")))[0] == 200
    assert math.isnan(await oldest_on_metrics(d)), "with the journal off, the event is not journalled"

    mark = len(d.lines)
    write_config(d.config_path, journal_config("  enabled: true\n"))
    await d.wait_for_log(r"reload \(file changed\) applied", start=mark)
    assert (await d.post("SecurityEvent", event("SecurityEvent")))[0] == 200
    assert not math.isnan(await oldest_on_metrics(d)), "once turned on by a reload, events are journalled"


async def test_the_daemon_prunes_shortly_after_start(daemon_factory: Any) -> None:
    # a retention of 1ms: the event is past it by the first pass (JOURNAL_PRUNE_FIRST after start)
    d = await daemon_factory(journal_config("  retention: 1ms\n"))
    assert (await d.post("SecurityEvent", event("SecurityEvent")))[0] == 200
    await d.wait_for_log(r"delivered", timeout=15)

    # the first pass comes JOURNAL_PRUNE_FIRST after start; the next a minute later, should the
    # delivery still have been in the outbox then
    await d.wait_for_log(r"pruned the journal: 1 events by age", timeout=JOURNAL_PRUNE_FIRST + JOURNAL_PRUNE_EVERY + 30)
    status, text, _ = await d.request("GET", "/metrics")
    assert status == 200
    assert metric_value(text, 'figrelay_journal_pruned_events_total{reason="age"}') == 1
    assert math.isnan(metric_value(text, "figrelay_journal_oldest_event_timestamp_seconds")), "the journal is empty again"
