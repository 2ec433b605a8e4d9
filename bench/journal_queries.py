"""Journal query times: ``figrelay events`` and ``trace`` on a journal of a million attempts.

    .venv/bin/python bench/journal_queries.py [--attempts 1000000] [--keep DIR]

Fills a temporary store (the outbox's schema, journal included) with a week of events from 200
setting clients to five clients: most deliveries succeed at once, some after retries, a few die
or are still pending, as a busy figrelay's journal looks. Then times each query shape the
commands use, each run a few times (the best and the worst run are printed), on a read-only
connection as the commands open it. Every query should answer in well under a second; the
filters walk an index (tests/test_journal_queries.py checks the plans), so the times depend on
how many rows are shown, not on how many are kept.

Not a test: it prints figures.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from figrelay.journal_queries import EventFilter, find_events, open_read_only, trace
from figrelay.storage.sqlite import Outbox

CLIENTS = ["slack-ops", "siem", "teams-platform", "mail-oncall", "archive"]
ROUTES = ["SettingValueChanged", "ClientStatusChanged", "HealthStatusChanged", "NewClientRegistration", "SecurityEvent"]
WEEK = 7 * 86400.0


def fill(path: Path, attempts_wanted: int, rng: random.Random) -> tuple[int, int, int, list[str]]:
    """(events, deliveries, attempts, some delivery ids) written."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous=OFF")
    names = [f"{prefix}{kind}{i}" for prefix in ("Orders", "Payments", "Billing", "Search") for kind in ("Api", "Worker") for i in range(25)]
    now = time.time()
    start = now - WEEK
    events = deliveries = attempts = 0
    sample: list[str] = []
    event_rows: list[tuple[object, ...]] = []
    delivery_rows: list[tuple[object, ...]] = []
    attempt_rows: list[tuple[object, ...]] = []
    # 2 deliveries an event, 1.6 attempts a delivery: the events spread over the week up to now
    per_event = 3.2
    step = WEEK / (attempts_wanted / per_event)
    at = start
    conn.execute("BEGIN")
    while attempts < attempts_wanted:
        at += rng.expovariate(1 / step)
        event_id = uuid.uuid4().hex
        route = rng.choice(ROUTES)
        client = None if route == "SecurityEvent" else rng.choice(names)
        body = f'{{"ClientName":"{client}","Instance":null,"UpdatedSettings":["Timeout"],"IsTest":false}}'.encode()
        targets = rng.sample(CLIENTS, rng.choice((1, 2, 2, 3)))
        matched = []
        for target in targets:
            delivery_id = uuid.uuid4().hex
            matched.append(f'{{"hook":{CLIENTS.index(target)},"client":"{target}","delivery":"{delivery_id}"}}')
            roll = rng.random()
            tries = 1 if roll < 0.8 else rng.randint(2, 6)
            state = "dead" if roll > 0.985 else "delivered"
            if at > now - 3600 and roll < 0.3:  # the last hour: some still pending
                state, tries = "pending", 0
            t = at
            for n in range(1, tries + 1):
                last = n == tries
                outcome = ("dead" if state == "dead" else "delivered") if last else "retry"
                status = 200 if outcome == "delivered" else rng.choice((503, 429, 404))
                attempt_rows.append((delivery_id, n, t, rng.uniform(0.01, 0.4), outcome, status, f"HTTP {status}"))
                t += 2.0**n
            attempts += tries
            finished = t if state != "pending" else None
            delivery_rows.append((delivery_id, event_id, target, CLIENTS.index(target), route, at, state, tries, finished, f"HTTP {status}" if tries else None))
            deliveries += 1
            if len(sample) < 1000 and rng.random() < 0.01:
                sample.append(delivery_id)
        event_rows.append((event_id, at, route, client, body, 0, "[" + ",".join(matched) + "]"))
        events += 1
        if len(attempt_rows) >= 50_000:
            _flush(conn, event_rows, delivery_rows, attempt_rows)
    _flush(conn, event_rows, delivery_rows, attempt_rows)
    conn.execute("COMMIT")  # no ANALYZE: the daemon never runs it, so the planner works without statistics here too
    conn.close()
    return events, deliveries, attempts, sample


def _flush(conn: sqlite3.Connection, events: list[tuple[object, ...]], deliveries: list[tuple[object, ...]], attempts: list[tuple[object, ...]]) -> None:
    conn.executemany("INSERT INTO journal_events (event_id, received_at, route, setting_client, body, test, matched) VALUES (?,?,?,?,?,?,?)", events)
    conn.executemany(
        "INSERT INTO journal_deliveries (delivery_id, event_id, client, hook, route, created_at, state, attempts, finished_at, last_reason)"
        " VALUES (?,?,?,?,?,?,?,?,?,?)",
        deliveries,
    )
    conn.executemany("INSERT INTO journal_attempts (delivery_id, attempt, started_at, duration, outcome, status, reason) VALUES (?,?,?,?,?,?,?)", attempts)
    events.clear()
    deliveries.clear()
    attempts.clear()


def timed(label: str, runs: int, query: Callable[[], object]) -> float:
    times = []
    shown = ""
    for _ in range(runs):
        started = time.perf_counter()
        result = query()
        times.append(time.perf_counter() - started)
        shown = _size(result)
    print(f"  {label:<72} {min(times) * 1000:8.1f} ms  {max(times) * 1000:8.1f} ms  {shown}")
    return max(times)


def _size(result: object) -> str:
    events = getattr(result, "events", None)
    if events is not None:
        return f"{len(events)} events"
    deliveries = getattr(result, "deliveries", None)
    if deliveries is not None:
        return f"{len(deliveries)} deliveries, {sum(len(d.attempts) for d in deliveries)} attempts"
    return ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--attempts", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--keep", type=Path, help="build the journal in this folder and keep it (default: a temporary folder)")
    args = parser.parse_args()
    rng = random.Random(9)
    with tempfile.TemporaryDirectory(prefix="figrelay-bench-") as tmp:
        folder = args.keep or Path(tmp)
        path = folder / "outbox.sqlite3"
        outbox = Outbox(path)
        asyncio.run(outbox.open())
        asyncio.run(outbox.close())
        started = time.perf_counter()
        events, deliveries, attempts, sample = fill(path, args.attempts, rng)
        size = path.stat().st_size
        print(
            f"journal: {events} events, {deliveries} deliveries, {attempts} attempts, {size / 2**20:.0f} MiB, "
            f"filled in {time.perf_counter() - started:.0f}s"
        )
        conn = open_read_only(path)
        now = time.time()
        print(f"  {'query':<72} {'best':>11}  {'worst':>11}")
        worst = 0.0
        cases: list[tuple[str, EventFilter]] = [
            ("events (newest 50)", EventFilter()),
            ("events --since 1h", EventFilter(since=now - 3600)),
            ("events --since 2025-.. --until .. (a day, 3 days ago)", EventFilter(since=now - 4 * 86400, until=now - 3 * 86400)),
            ("events --event HealthStatusChanged --since 2d", EventFilter(route="HealthStatusChanged", since=now - 2 * 86400)),
            ("events --setting-client ^Orders", EventFilter(setting_client="^Orders")),
            ("events --setting-client 'Worker1[0-9]$' (rare names)", EventFilter(setting_client="Worker1[0-9]$")),
            ("events --setting-client '^(?!Orders).*Api' (lookahead)", EventFilter(setting_client="^(?!Orders).*Api")),
            ("events --setting-client NoSuchService (no event)", EventFilter(setting_client="NoSuchService")),
            ("events --client slack-ops", EventFilter(client="slack-ops")),
            ("events --client slack-ops --since 24h --limit 1000", EventFilter(client="slack-ops", since=now - 86400, limit=1000)),
            ("events --outcome dead", EventFilter(outcome="dead")),
            ("events --outcome dead --client siem --since 7d", EventFilter(outcome="dead", client="siem", since=now - WEEK)),
            ("events --outcome pending", EventFilter(outcome="pending")),
            ("events --outcome delivered --client archive --until 5d ago", EventFilter(outcome="delivered", client="archive", until=now - 5 * 86400)),
            ("events --setting-client ^Billing --outcome dead", EventFilter(setting_client="^Billing", outcome="dead")),
            ("events --event SecurityEvent --client mail-oncall --limit 500", EventFilter(route="SecurityEvent", client="mail-oncall", limit=500)),
            # the worst cases: the index walked matches many rows, the filter checked on each none
            ("worst: events --client slack-ops --event MinRunSessions (none)", EventFilter(client="slack-ops", route="MinRunSessions")),
            ("worst: events --setting-client ^Orders --event MinRunSessions", EventFilter(setting_client="^Orders", route="MinRunSessions")),
            ("worst: events --setting-client Api --event MinRunSessions", EventFilter(setting_client="Api", route="MinRunSessions")),
            ("worst: events --outcome delivered --setting-client NoSuch", EventFilter(outcome="delivered", setting_client="NoSuch")),
            ("worst: events --event SecurityEvent --setting-client ^Orders (disjoint)", EventFilter(route="SecurityEvent", setting_client="^Orders")),
            ("worst: events --client slack-ops --setting-client Api (both broad)", EventFilter(client="slack-ops", setting_client="Api", limit=1000)),
        ]
        for label, filt in cases:
            worst = max(worst, timed(label, args.runs, lambda filt=filt: find_events(conn, filt)))
        for i, delivery_id in enumerate(sample[:3]):
            worst = max(worst, timed(f"trace <delivery id> ({i + 1})", args.runs, lambda d=delivery_id: trace(conn, d)))
        worst = max(worst, timed("trace <first 8 characters of a delivery id>", args.runs, lambda: trace(conn, sample[3][:8])))
        conn.close()
        print(f"slowest query: {worst * 1000:.1f} ms")


if __name__ == "__main__":
    main()
