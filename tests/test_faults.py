"""Fault tests against the real daemon: ``kill -9`` under load, and a target that is down.

Each prints its figures (lost, duplicated, 5xx, attempts, drain time). The short versions run in
the README's test command; the long ones (``-m torture``) repeat them at the sizes of the
original fault report: 20 kills over 5,000 events, 5,000 deliveries behind a dead target.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import sqlite3
import time
from collections import Counter
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web

from conftest import Daemon, Receiver, event, wait_until
from test_e2e import SECRET, outbox_rows, relay_config

AUTH = {"Authorization": f"Secret {SECRET}", "Content-Type": "application/json; charset=utf-8"}
PLAIN = f"  secret: {SECRET}"


@dataclass
class KillFigures:
    sent: int = 0
    acknowledged: set[str] = field(default_factory=set)
    server_errors: int = 0
    refused_connections: int = 0
    kills: int = 0
    event_ids: set[str] = field(default_factory=set)

    def report(self, receiver: Receiver) -> dict[str, int]:
        deliveries = [(r.headers.get("X-Figrelay-Delivery", ""), r.json["Username"]) for r in receiver.requests]
        ids_per_event: dict[str, set[str]] = {}
        for delivery_id, name in deliveries:
            ids_per_event.setdefault(name, set()).add(delivery_id)
        copies = Counter(delivery_id for delivery_id, _ in deliveries)
        return {
            "sent": self.sent,
            "acknowledged": len(self.acknowledged),
            "lost": len(self.acknowledged - set(ids_per_event)),
            "duplicates_same_id": sum(n - 1 for n in copies.values()),
            "events_with_two_ids": sum(1 for ids in ids_per_event.values() if len(ids) > 1),
            "5xx": self.server_errors,
            "refused_while_down": self.refused_connections,
            "kills": self.kills,
        }


async def kill_under_load(d: Daemon, receiver: Receiver, events: int, kills: int, concurrency: int = 16) -> KillFigures:
    """Post ``events`` distinct SecurityEvents, ``concurrency`` at a time, killing the daemon
    with SIGKILL ``kills`` times along the way and starting it again on the same state."""
    figures = KillFigures()
    up = asyncio.Event()
    up.set()
    step = events // (kills + 1)
    gate = asyncio.Semaphore(concurrency)

    async def post(http: aiohttp.ClientSession, i: int) -> None:
        name = f"event-{i:05d}"
        async with gate:
            await up.wait()
            figures.sent += 1
            try:
                async with http.post(d.url + "/SecurityEvent", data=event("SecurityEvent", Username=name), headers=AUTH) as resp:
                    if resp.status == 200:
                        figures.acknowledged.add(name)
                        figures.event_ids.add((await resp.json())["event_id"])
                    elif resp.status >= 500:
                        figures.server_errors += 1
            except (TimeoutError, aiohttp.ClientError):
                figures.refused_connections += 1  # in flight when the process died: never acknowledged

    async def killer() -> None:
        for k in range(1, kills + 1):
            await wait_until(lambda k=k: figures.sent >= k * step, timeout=120, what=f"{k * step} events sent")
            up.clear()
            await d.kill()
            figures.kills += 1
            await d.start()
            up.set()

    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=concurrency, force_close=True)) as http:
        kill_task = asyncio.get_running_loop().create_task(killer())
        await asyncio.gather(*(post(http, i) for i in range(events)))
        await kill_task
    return figures


async def _kill_test(daemon_factory, receiver, events: int, kills: int, capsys) -> None:
    config = relay_config({"siem": receiver}, "  - {event: SecurityEvent, client: siem}", intake=PLAIN)
    d = await daemon_factory(config)
    figures = await kill_under_load(d, receiver, events, kills)
    await wait_until(
        lambda: figures.acknowledged <= {r.json["Username"] for r in receiver.requests}, timeout=120, what="every acknowledged event delivered"
    )
    report = figures.report(receiver)
    # the journal agrees: every acknowledged event is in it, and nothing it calls delivered was not
    await wait_until(lambda: not outbox_rows(d.config_path.parent), timeout=60, what="the outbox drained")
    with sqlite3.connect(d.config_path.parent / "state" / "outbox.sqlite3") as conn:
        journaled = {r[0] for r in conn.execute("SELECT event_id FROM journal_events")}
        said_delivered = {r[0] for r in conn.execute("SELECT delivery_id FROM journal_deliveries WHERE state = 'delivered'")}
    received = {r.headers.get("X-Figrelay-Delivery") for r in receiver.requests}
    report["acknowledged_not_in_journal"] = len(figures.event_ids - journaled)
    report["journal_delivered_not_received"] = len(said_delivered - received)
    with capsys.disabled():
        print(f"\nkill -9 under load: {json.dumps(report)}")
    assert report["acknowledged_not_in_journal"] == 0
    assert report["journal_delivered_not_received"] == 0, "the journal says delivered for a delivery the target never got"
    assert report["kills"] == kills
    assert report["lost"] == 0, "an acknowledged event was lost"
    assert report["events_with_two_ids"] == 0, "a resend must carry the same delivery id"
    assert report["5xx"] == 0


async def test_kill_9_under_load_loses_no_acknowledged_event(daemon_factory, receiver, capsys):
    await _kill_test(daemon_factory, receiver, events=600, kills=3, capsys=capsys)


@pytest.mark.torture
async def test_kill_9_twenty_times_over_5000_events(daemon_factory, receiver, capsys):
    await _kill_test(daemon_factory, receiver, events=5000, kills=20, capsys=capsys)


# --- a dead target ------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


async def _outage_test(daemon_factory, receiver_factory, pending: int, down_for_probes: int, failure: str, capsys) -> None:
    """``pending`` events reach a healthy client and one whose target is down (answering 503, or
    refusing connections); the target comes back after ``down_for_probes`` probes."""
    healthy = await receiver_factory()
    port = _free_port()
    flaky_url = f"http://127.0.0.1:{port}"
    down: Receiver | None = None
    if failure == "503":
        down = await receiver_factory()
        down.responder = lambda r: web.Response(status=503, text="down for maintenance")
        flaky_url = down.url
    hooks = "  - {event: SecurityEvent, client: flaky}\n  - {event: SecurityEvent, client: healthy}"
    config = relay_config({"flaky": Receiver(url=flaky_url), "healthy": healthy}, hooks, intake=PLAIN)
    config = config.replace("    secret: downstream-flaky\n", "    secret: downstream-flaky\n    max_in_flight: 1\n")
    config = config.replace("  backoff_max: 0.5s", "  backoff_max: 0.2s\n  circuit_open_after: 3")
    d = await daemon_factory(config)
    names = [f"event-{i:05d}" for i in range(pending)]
    sent_at: dict[str, float] = {}
    answer_seconds: list[float] = []
    async with aiohttp.ClientSession() as http:
        started = time.monotonic()
        for name in names:  # one after the other: the acceptance order is known
            sent_at[name] = time.monotonic()
            async with http.post(d.url + "/SecurityEvent", data=event("SecurityEvent", Username=name), headers=AUTH) as resp:
                assert resp.status == 200
            answer_seconds.append(time.monotonic() - sent_at[name])
        accept_seconds = time.monotonic() - started
    await wait_until(lambda: len(healthy.requests) == pending, timeout=120, what="the healthy client, unaffected by the other's outage")
    healthy_latency = [r.at - sent_at[r.json["Username"]] for r in healthy.requests]
    await d.wait_for_log(r"client flaky is failing: circuit open after 3 failed attempts")
    attempts = lambda: len(re.findall(r"SecurityEvent to flaky failed", d.log))  # noqa: E731
    await wait_until(lambda: attempts() >= 3 + down_for_probes, timeout=120, what="probes while the target is down")
    attempts_while_down = attempts()
    down_seconds = time.monotonic() - started

    if down is not None:
        down.responder = None
        back = down
    else:
        back = await receiver_factory(port=port)
    mark = len(back.requests)
    came_back = time.monotonic()
    await wait_until(lambda: len(back.requests) - mark >= pending, timeout=120, what="the drain")
    drain_seconds = time.monotonic() - came_back
    await d.wait_for_log(r"client flaky answers again: circuit closed")

    delivered = [r.json["Username"] for r in back.requests[mark:]]
    probes = {r.json["Username"] for r in back.requests[3:mark]}
    figures = {
        "failure": failure,
        "pending": pending,
        "accept_seconds": round(accept_seconds, 2),
        "intake_p99_ms": round(_percentile(answer_seconds, 0.99) * 1000, 1),
        "healthy_client_p50_ms": round(_percentile(healthy_latency, 0.5) * 1000, 1),
        "healthy_client_p99_ms": round(_percentile(healthy_latency, 0.99) * 1000, 1),
        "attempts_while_down": attempts_while_down,
        "down_seconds": round(down_seconds, 2),
        "drain_seconds": round(drain_seconds, 2),
        "lost": len(set(names) - set(delivered)),
        "duplicates": len(delivered) - len(set(delivered)),
        "order_kept": delivered == names,
    }
    with capsys.disabled():
        print(f"\ntarget down then back: {json.dumps(figures)}")
    assert probes <= {names[0]}, "an open circuit probes with the oldest delivery only"
    assert delivered == names, "max_in_flight 1: the target gets the events in the order figrelay accepted them"


@pytest.mark.parametrize("failure", ["503", "refused"])
async def test_a_dead_target_is_probed_not_stormed_and_drains_in_order(daemon_factory, receiver_factory, failure, capsys):
    await _outage_test(daemon_factory, receiver_factory, pending=200, down_for_probes=5, failure=failure, capsys=capsys)


@pytest.mark.torture
@pytest.mark.parametrize("failure", ["503", "refused"])
async def test_5000_deliveries_behind_a_dead_target(daemon_factory, receiver_factory, failure, capsys):
    await _outage_test(daemon_factory, receiver_factory, pending=5000, down_for_probes=200, failure=failure, capsys=capsys)
