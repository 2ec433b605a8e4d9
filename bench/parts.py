"""The parts of ``python -m bench``: each starts the servers it loads, prints its table, keeps
its figures in ``Bench.found`` for the targets' summary, and stops what it started."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .load import Closed, Open, Request, closed_loop, open_loop
from .support import INSTALL, cpu_seconds, fmt, have_tool, memory_mb, percentile, say, table, warn
from .systems import (
    POOL,
    Alertmanager,
    AppriseScript,
    Bare,
    BareRelay,
    Figrelay,
    Receiver,
    Server,
    alertmanager_binary,
    comparison_hooks,
    scale_hooks,
    sessions_request,
)


@dataclass
class Settings:
    """What each part does; ``--quick`` shrinks every amount of time and events."""

    seconds: int = 8
    """Each closed-loop round (wrk: whole seconds)."""
    connections: int = 32
    rounds: int = 3
    rates: tuple[float, ...] = (1000.0,)
    latency_seconds: float = 10.0
    hooks: int = 10_000
    reload_rate: float = 200.0
    reload_seconds: float = 8.0
    reloads: int = 3
    sessions: int = 100_000
    events: int = 1_000_000
    samples: int = 10
    settle: float = 15.0
    """Give up waiting for deliveries after this many seconds without one."""

    @classmethod
    def quick(cls) -> Settings:
        return cls(seconds=1, rounds=3, latency_seconds=2.0, reload_seconds=2.0, reloads=1, sessions=5_000, events=12_000, samples=3,
                   settle=5.0)


@dataclass
class Bench:
    settings: Settings
    folder: Path
    receiver: Receiver
    found: dict[str, float] = field(default_factory=dict)
    """Figures for the targets' summary, by name."""
    missing: list[str] = field(default_factory=list)
    """The tools that were not installed, with how to install them."""

    def place(self, name: str) -> Path:
        path = self.folder / name
        n = 1
        while path.exists():
            n += 1
            path = self.folder / f"{name}-{n}"
        path.mkdir(parents=True)
        return path

    @contextlib.asynccontextmanager
    async def running(self, server: Server) -> AsyncIterator[Server]:
        """Started, and always stopped."""
        try:
            await server.start()
            yield server
        finally:
            await server.stop()


# --- a closed-loop round: load, then wait for the backlog to drain ------------------------------


@dataclass
class Round:
    server: str
    load: Closed
    delivered: int | None = None
    delivered_per_s: float = float("nan")
    drain_s: float = float("nan")
    """From the end of the load to the last receipt."""
    duplicates: int = 0
    cpu_ms: float = float("nan")
    """The server's CPU milliseconds per accepted event (load and drain)."""
    receiver_cpu_ms: float = float("nan")
    rss_mb: float = float("nan")
    store_mb: float = float("nan")
    pending: float = float("nan")


async def wait_delivered(bench: Bench, server: Server, wanted: int) -> dict[str, Any]:
    """The receiver's stats once ``wanted`` deliveries of ``server`` arrived (and figrelay's
    outbox has nothing pending), or nothing arrived for ``settle`` seconds."""
    seen, since = -1, time.monotonic()
    while True:
        stats = await bench.receiver.stats()
        got = delivered_of(stats, server)
        pending = 0.0
        if isinstance(server, Figrelay) and got >= wanted:
            with contextlib.suppress(Exception):
                pending = (await server.metrics()).get("figrelay_outbox_pending", 0.0)
        if got >= wanted and pending == 0:
            return stats
        if got != seen:
            seen, since = got, time.monotonic()
        elif time.monotonic() - since > bench.settings.settle:
            warn(f"  {server.name}: {got:,} of {wanted:,} deliveries arrived; nothing more for {bench.settings.settle:g}s")
            return stats
        if server.proc is not None and not server.proc.running:
            warn(f"  {server.name} exited while delivering")
            return stats
        await asyncio.sleep(0.1)


def delivered_of(stats: dict[str, Any], server: Server) -> int:
    """figrelay's distinct delivery ids, or the other server's items (Alertmanager's alerts)."""
    if isinstance(server, Figrelay):
        return int(stats["ids"])
    return int(stats["sources"].get(server.source or "", {}).get("items", 0))


async def closed_round(bench: Bench, server: Server, *, names: tuple[str, ...] = ("OrdersApi",), request: Request | None = None,
                       seconds: float | None = None, count: int | None = None, deliveries: bool = True) -> Round:
    """One closed-loop load on ``server`` (``seconds`` of wrk, or ``count`` events), then, when it
    delivers, until its backlog has drained."""
    s = bench.settings
    await bench.receiver.reset()
    cpu0 = cpu_seconds(server.pid), cpu_seconds(bench.receiver.proc.pid)
    t0 = time.monotonic()
    first = server.next_seq
    load = await closed_loop(server.url, request or server.request(names), bench.folder, seconds=seconds if count is None else None,
                             count=count, connections=s.connections, first_seq=first)
    server.next_seq = first + load.requests + s.connections  # past the ones in flight when wrk stopped
    load_end = time.monotonic()
    r = Round(server.name, load)
    if server.source is not None and deliveries:
        stats = await wait_delivered(bench, server, load.accepted)
        source: dict[str, float] = stats["sources"].get(server.source, {})
        r.delivered = delivered_of(stats, server)
        if r.delivered and "last" in source:
            r.delivered_per_s = r.delivered / (source["last"] - t0)
            r.drain_s = max(0.0, source["last"] - load_end)
        r.duplicates = int(stats["duplicates"])
    cpu1 = cpu_seconds(server.pid), cpu_seconds(bench.receiver.proc.pid)
    per_event = 1000 / max(1, load.accepted)
    r.cpu_ms, r.receiver_cpu_ms = (cpu1[0] - cpu0[0]) * per_event, (cpu1[1] - cpu0[1]) * per_event
    r.rss_mb = server.rss_mb()
    if isinstance(server, Figrelay):
        r.store_mb = server.store_mb()
        with contextlib.suppress(Exception):
            r.pending = (await server.metrics()).get("figrelay_outbox_pending", float("nan"))
    return r


async def warm_up(bench: Bench, server: Server, names: tuple[str, ...] = ("OrdersApi",)) -> None:
    """A few hundred events (connections opened, caches filled), delivered before measuring."""
    await closed_round(bench, server, names=names, count=300)


def failures(load: Closed) -> str:
    return f"{load.non_200:,} / {load.socket_errors:,}"


# --- 1. comparison ------------------------------------------------------------------------------


def available(bench: Bench, what: str, instead: str) -> bool:
    """Whether a tool is installed; if not, say how to install it and what the bench does instead."""
    present = {
        "wrk": have_tool("wrk") is not None,
        "alertmanager": alertmanager_binary() is not None,
        "apprise": _apprise_installed(),
    }[what]
    if not present:
        note = f"{what} is not installed ({INSTALL[what]}): {instead}"
        if note not in bench.missing:
            bench.missing.append(note)
            warn(f"  {note}")
    return present


def loader(bench: Bench) -> str:
    """What the closed-loop load comes from."""
    if available(bench, "wrk", "the closed-loop load comes from an aiohttp loop in the bench, slower (it caps bare aiohttp's figure)"):
        return "wrk, 1 thread"
    return "an aiohttp loop (no wrk)"


def _apprise_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("apprise") is not None


async def comparison(bench: Bench) -> None:
    s = bench.settings
    say(f"## Comparison: {loader(bench)}, {s.connections} connections, {s.seconds:g} s; one SettingValueChanged (or one new alert) per request\n")
    info = Figrelay(bench.place("comparison-figrelay-info"), bench.receiver.url, comparison_hooks(), log_level="info", label="figrelay, log level info")
    info.name = info.label  # figrelay's default level: a log line as it accepts an event and one as it delivers it
    servers: list[Server] = [
        Bare(), BareRelay(bench.receiver.url), Figrelay(bench.place("comparison-figrelay"), bench.receiver.url, comparison_hooks()), info,
    ]
    if available(bench, "alertmanager", "Alertmanager skipped"):
        servers.append(Alertmanager(bench.place("comparison-alertmanager"), bench.receiver.url))
    if available(bench, "apprise", "the Apprise script skipped"):
        servers.append(AppriseScript(bench.receiver.url))
    rounds: dict[str, Round] = {}
    for server in servers:
        say(f"  {server.name} ...")
        async with bench.running(server):
            await warm_up(bench, server)
            rounds[server.name] = await closed_round(bench, server, seconds=s.seconds)
    bare = rounds["bare aiohttp"].load.accepted_per_s
    rows = []
    for name, r in rounds.items():
        rows.append([
            name, fmt(r.load.accepted_per_s), fmt(r.load.accepted_per_s / bare, 2), fmt(r.delivered_per_s if r.delivered is not None else "-"),
            fmt(r.drain_s, 1), fmt(r.cpu_ms, 3), fmt(r.receiver_cpu_ms, 3), fmt(r.rss_mb, 0), fmt(r.load.p99_ms, 1), failures(r.load),
        ])
    say(table(["server", "accepted/s", "÷ bare", "delivered/s", "drain s", "CPU ms/event", "receiver CPU ms/event", "RSS MB", "answer p99 ms",
               "non-200 / socket errors"], rows))
    say("delivered/s: deliveries reaching the receiver, over the time from the load's start to the last receipt (the backlog\n"
        "drained); drain s: from the end of the load to the last receipt; CPU ms/event: the server's CPU time per accepted event")
    if any(isinstance(sv, Alertmanager) for sv in servers):
        am = next(sv for sv in servers if isinstance(sv, Alertmanager))
        say(f"Alertmanager {am.version}: group_by ['...'] (a group per alert), group_wait 0s, webhook to the receiver")
    fig = rounds["figrelay"]
    bench.found["intake figrelay / bare aiohttp"] = fig.load.accepted_per_s / bare
    ratios = [("intake figrelay / bare aiohttp", fig.load.accepted_per_s / bare)]
    if "Alertmanager" in rounds:
        am_round = rounds["Alertmanager"]
        ratios += [("intake figrelay / Alertmanager", fig.load.accepted_per_s / am_round.load.accepted_per_s),
                   ("end-to-end figrelay / Alertmanager", fig.delivered_per_s / am_round.delivered_per_s)]
        bench.found["comparison end-to-end figrelay / Alertmanager"] = ratios[-1][1]
    relay = rounds["bare aiohttp relay"]
    ratios += [("intake figrelay / bare aiohttp relay", fig.load.accepted_per_s / relay.load.accepted_per_s),
               ("end-to-end figrelay / bare aiohttp relay", fig.delivered_per_s / relay.delivered_per_s)]
    bench.found["end-to-end figrelay / bare aiohttp relay"] = ratios[-1][1]
    logged = rounds[info.name]
    ratios.append(("CPU per event, figrelay at log level info / at warning", logged.cpu_ms / fig.cpu_ms))
    if "Alertmanager" in rounds:
        ratios.append(("end-to-end bare aiohttp relay / Alertmanager", relay.delivered_per_s / rounds["Alertmanager"].delivered_per_s))
        bench.found["end-to-end bare aiohttp relay / Alertmanager"] = ratios[-1][1]
    if "Apprise script" in rounds:
        ratios.append(("end-to-end figrelay / Apprise script", fig.delivered_per_s / rounds["Apprise script"].delivered_per_s))
    say("\n" + "\n".join(f"{what}: {fmt(value, 2)}" for what, value in ratios) + "\n")


# --- 2. end to end, over rounds -----------------------------------------------------------------


async def end_to_end(bench: Bench) -> None:
    s = bench.settings
    say(f"## End to end: {s.rounds} rounds of {s.seconds:g} s ({loader(bench)}) on the same processes, each counted until the backlog drained\n")
    servers: list[Server] = [Figrelay(bench.place("e2e-figrelay"), bench.receiver.url, comparison_hooks())]
    if available(bench, "alertmanager", "Alertmanager skipped"):
        servers.append(Alertmanager(bench.place("e2e-alertmanager"), bench.receiver.url))
    results: dict[str, list[Round]] = {sv.name: [] for sv in servers}
    async with contextlib.AsyncExitStack() as stack:
        for server in servers:
            await stack.enter_async_context(bench.running(server))
            await warm_up(bench, server)
        for n in range(s.rounds):
            for server in servers:  # interleaved, so that a slower spell of the machine hits both
                say(f"  round {n + 1}: {server.name} ...")
                results[server.name].append(await closed_round(bench, server, seconds=s.seconds))
    rows = []
    for name, rounds in results.items():
        for n, r in enumerate(rounds):
            rows.append([name, str(n + 1), fmt(r.load.accepted_per_s), fmt(r.delivered_per_s), fmt(r.drain_s, 1), fmt(r.cpu_ms, 3),
                         fmt(r.rss_mb, 0), fmt(r.store_mb, 1), str(r.duplicates), failures(r.load)])
    say(table(["server", "round", "accepted/s", "delivered/s", "drain s", "CPU ms/event", "RSS MB", "store MB", "duplicates",
               "non-200 / socket errors"], rows))
    say("store MB: outbox.sqlite3 with its -wal after the round")
    lines = []
    for name, rounds in results.items():
        if len(rounds) >= 2:
            last = rounds[-1].delivered_per_s / rounds[0].delivered_per_s
            lines.append(f"{name} delivered/s, round {len(rounds)} / round 1: {fmt(last, 2)}")
            lines.append(f"{name} accepted/s, round {len(rounds)} / round 1: {fmt(rounds[-1].load.accepted_per_s / rounds[0].load.accepted_per_s, 2)}")
            if name == "figrelay":
                bench.found["figrelay round 3 / round 1 (delivered/s)"] = last
    if "Alertmanager" in results:
        for n, (f, a) in enumerate(zip(results["figrelay"], results["Alertmanager"], strict=True)):
            ratio = f.delivered_per_s / a.delivered_per_s
            lines.append(f"end-to-end figrelay / Alertmanager, round {n + 1}: {fmt(ratio, 2)}")
            if n == 0:
                bench.found["end-to-end figrelay / Alertmanager"] = ratio
    say("\n" + "\n".join(lines) + "\n")


# --- 3. latency at fixed rates ------------------------------------------------------------------


async def latency(bench: Bench) -> None:
    s = bench.settings
    say(f"## Latency: open loop (sent on schedule, not waiting for answers) for {s.latency_seconds:g} s at each rate; figrelay with 10 hooks\n")
    fig = Figrelay(bench.place("latency-figrelay"), bench.receiver.url, comparison_hooks())
    rows = []
    async with bench.running(fig):
        await warm_up(bench, fig)
        for rate in s.rates:
            say(f"  {rate:g} events/s ...")
            await bench.receiver.reset(record=True)
            sent = await open_loop(fig.url, fig.request(), rate, s.latency_seconds, first_seq=fig.numbers(round(rate * s.latency_seconds)))
            ids = {d: x.answered for x in sent.accepted for d in x.deliveries}
            await wait_delivered(bench, fig, len(ids))
            received = await bench.receiver.times()
            answers = [x.answer_s * 1000 for x in sent.accepted]
            to_receipt = [(received[d] - at) * 1000 for d, at in ids.items() if d in received]
            lag = [x.lag * 1000 for x in sent.sent]
            span = max(x.answered for x in sent.sent) - sent.sent[0].scheduled
            lost = sum(d not in received for d in ids)
            refused = sent.refused
            rows.append([
                fmt(rate), fmt(len(sent.sent)), fmt(len(sent.sent) / span), fmt(percentile(answers, 50), 1), fmt(percentile(answers, 99), 1),
                fmt(max(answers, default=float("nan")), 1), fmt(percentile(to_receipt, 50), 1), fmt(percentile(to_receipt, 99), 1),
                fmt(max(to_receipt, default=float("nan")), 1), fmt(percentile(lag, 99), 1),
                ", ".join(f"{k}: {v}" for k, v in refused.items()) or "0", str(lost),
            ])
            if rate == s.rates[0]:
                bench.found[f"latency p99 answer ms at {rate:g}/s"] = percentile(answers, 99)
                bench.found[f"latency p99 answer→receipt ms at {rate:g}/s"] = percentile(to_receipt, 99)
    say(table(["events/s", "sent", "achieved/s", "answer p50 ms", "answer p99 ms", "answer max ms", "→ receipt p50 ms", "→ receipt p99 ms",
               "→ receipt max ms", "sender lag p99 ms", "refused", "lost"], rows))
    say("answer: from when the request was due to its answer; → receipt: from the intake's answer to the receiver's receipt of\n"
        "the delivery it named (X-Figrelay-Delivery; negative when the delivery arrived before the answer was read); sender lag:\n"
        "how late the load generator itself sent (a large one means the figures above are the generator's, not figrelay's)\n")


# --- 4a. hooks: 10 against 10,000 ---------------------------------------------------------------


@dataclass
class HookRun:
    hooks: int
    startup_s: float = float("nan")
    ready_logged_s: float = float("nan")
    reload_idle_s: list[float] = field(default_factory=list)
    reload_load_s: list[float] = field(default_factory=list)
    reload_lines: list[str] = field(default_factory=list)
    under_load: Open | None = None
    lost: int = 0
    throughput: Round | None = None


async def reload_under_load(bench: Bench, fig: Figrelay, run: HookRun) -> None:
    """Open-loop load at ``reload_rate``, with ``reloads`` SIGHUPs spread over it; then count what
    was refused (not 200) and what was accepted but never delivered."""
    s = bench.settings
    await bench.receiver.reset(record=True)
    started = time.monotonic()
    first = fig.numbers(round(s.reload_rate * s.reload_seconds))
    load = asyncio.ensure_future(open_loop(fig.url, fig.request(POOL), s.reload_rate, s.reload_seconds, first_seq=first))
    try:
        for k in range(s.reloads):
            await asyncio.sleep(started + (k + 1) * s.reload_seconds / (s.reloads + 1) - time.monotonic())
            seconds, line = await fig.reload()
            run.reload_load_s.append(seconds)
            run.reload_lines.append(line)
        sent = await load
    finally:
        if not load.done():
            load.cancel()
            await asyncio.gather(load, return_exceptions=True)
    run.under_load = sent
    ids = [d for x in sent.accepted for d in x.deliveries]
    await wait_delivered(bench, fig, len(ids))
    received = await bench.receiver.times()
    run.lost = sum(d not in received for d in ids)


async def hooks(bench: Bench) -> None:
    s = bench.settings
    counts = (10, s.hooks)
    loader(bench)
    say(f"## Hooks: {' against '.join(f'{n:,}' for n in counts)} hooks, one of which matches each event; setting clients from a pool of "
        f"{len(POOL)} names\n")
    runs = []
    for n in counts:
        run = HookRun(n)
        runs.append(run)
        say(f"  {n:,} hooks: start-up and reloads (log level info) ...")
        fig = Figrelay(bench.place(f"hooks-{n}-reload"), bench.receiver.url, scale_hooks(n), log_level="info", label=f"figrelay ({n:,} hooks, reloads)")
        async with bench.running(fig):
            run.startup_s, run.ready_logged_s, _ = await fig.startup()
            await warm_up(bench, fig, POOL)
            for _ in range(s.reloads):
                seconds, line = await fig.reload()
                run.reload_idle_s.append(seconds)
                run.reload_lines.append(line)
            say(f"  {n:,} hooks: reloads under {s.reload_rate:g} events/s ...")
            await reload_under_load(bench, fig, run)
        say(f"  {n:,} hooks: throughput (log level warning) ...")
        fig = Figrelay(bench.place(f"hooks-{n}"), bench.receiver.url, scale_hooks(n), label=f"figrelay ({n:,} hooks)")
        async with bench.running(fig):
            await warm_up(bench, fig, POOL)
            run.throughput = await closed_round(bench, fig, names=POOL, seconds=s.seconds)
    rows = []
    for run in runs:
        t = run.throughput
        assert t is not None and run.under_load is not None
        answers = [x.answer_s * 1000 for x in run.under_load.accepted]
        refused = run.under_load.refused
        rows.append([
            fmt(run.hooks), fmt(t.load.accepted_per_s), fmt(t.delivered_per_s), fmt(t.cpu_ms, 3), fmt(run.startup_s, 2), fmt(run.ready_logged_s, 2),
            fmt(percentile(run.reload_idle_s, 50), 3), fmt(max(run.reload_load_s, default=float("nan")), 3), fmt(max(answers, default=float("nan")), 0),
            ", ".join(f"{k}: {v}" for k, v in refused.items()) or "0", str(run.lost),
        ])
    say(table(["hooks", "accepted/s", "delivered/s", "CPU ms/event", "start-up s", "\"ready in\" s", "reload s (idle, median)",
               "reload s (under load, max)", "answer max ms under reloads", "refused", "lost"], rows))
    say("start-up: from the process's start to its \"ready in\" log line, which tells the seconds from the daemon's own start (after\n"
        "Python's imports); reload: from the SIGHUP to the \"reload (SIGHUP) applied\" line, the file rewritten with a change each time;\n"
        f"under load: {s.reloads} reload(s) while {s.reload_rate:g} events/s came in for {s.reload_seconds:g} s (open loop), from the same\n"
        "pool; refused: answers other than 200; lost: accepted deliveries that never reached the receiver")
    for run in runs:
        if any("applied" not in line for line in run.reload_lines):
            say(f"{run.hooks:,} hooks: a reload was not applied: {[line for line in run.reload_lines if 'applied' not in line][:3]}")
    small, large = runs[0].throughput, runs[-1].throughput
    assert small is not None and large is not None
    cost = small.load.accepted_per_s / large.load.accepted_per_s
    lines = [
        f"{counts[1]:,} hooks / 10 hooks per-event cost, by accepted/s: {fmt(cost, 2)}",
        f"{counts[1]:,} hooks / 10 hooks per-event cost, by delivered/s: {fmt(small.delivered_per_s / large.delivered_per_s, 2)}",
        f"{counts[1]:,} hooks / 10 hooks per-event cost, by figrelay's CPU ms/event: {fmt(large.cpu_ms / small.cpu_ms, 2)}",
    ]
    say("\n" + "\n".join(lines) + "\n")
    big = runs[-1]
    bench.found[f"{counts[1]:,} hooks / 10 hooks per-event cost"] = cost
    bench.found[f"start-up s with {counts[1]:,} hooks (process start to \"ready in\" line)"] = big.startup_s
    bench.found[f"start-up s with {counts[1]:,} hooks (as \"ready in\" tells)"] = big.ready_logged_s
    bench.found[f"reload s with {counts[1]:,} hooks (slowest)"] = max(big.reload_idle_s + big.reload_load_s, default=float("nan"))
    assert big.under_load is not None
    bench.found[f"refused or lost during reloads with {counts[1]:,} hooks"] = sum(big.under_load.refused.values()) + big.lost


# --- 4b. memory: sessions, and a long run -------------------------------------------------------


async def memory(bench: Bench) -> None:
    loader(bench)
    await sessions(bench)
    await long_run(bench)


async def sessions(bench: Bench) -> None:
    s = bench.settings
    say(f"## Memory: {s.sessions:,} run sessions (ClientStatusChanged Connected, each a new session of one of {len(POOL)} setting clients)\n")
    fig = Figrelay(bench.place("sessions"), bench.receiver.url, comparison_hooks(), label="figrelay (sessions)")
    rows = []
    async with bench.running(fig):
        fresh = fig.rss_mb()
        rows.append(["started (0 sessions)", "0", fmt(fresh, 1), "", ""])
        await warm_up(bench, fig)
        warm = fig.rss_mb()
        rows.append(["after 300 SettingValueChanged (warm-up)", "0", fmt(warm, 1), "", ""])
        say(f"  posting {s.sessions:,} sessions ...")
        load = await closed_round(bench, fig, request=sessions_request(), count=s.sessions, deliveries=False)
        tracked = (await fig.metrics()).get("figrelay_sessions_tracked", float("nan"))
        after = fig.rss_mb()
        rows.append([f"after {s.sessions:,} sessions posted ({fmt(load.load.accepted_per_s)}/s)", fmt(int(tracked)), fmt(after, 1),
                     fmt(after - warm, 1), fmt(fig.store_mb(), 1)])
        await fig.stop()
        say("  restarting with them ...")
        await fig.start(log_level="info")
        startup, logged, told = await fig.startup()
        restarted = fig.rss_mb()
        rows.append([f"restarted: ready in {fmt(logged, 2)} s ({fmt(startup, 2)} s from the process's start)", fmt(told), fmt(restarted, 1),
                     fmt(restarted - fresh, 1), fmt(fig.store_mb(), 1)])
    say(table(["figrelay", "sessions tracked", "RSS MB", "Δ RSS MB", "store MB"], rows))
    say("Δ RSS: after posting, against after the warm-up; restarted, against the fresh start\n")
    bench.found[f"{s.sessions:,} sessions: Δ RSS MB"] = after - warm
    bench.found[f"{s.sessions:,} sessions: Δ RSS MB, restarted with them against a fresh start"] = restarted - fresh


async def long_run(bench: Bench) -> None:
    s = bench.settings
    chunk = max(1, s.events // s.samples)
    say(f"## Memory and store over {s.events:,} events (SettingValueChanged from {len(POOL)} setting clients, 10 hooks, one matching; {loader(bench)} "
        f"in {s.samples} chunks of {chunk:,}, each drained before sampling)\n")
    fig = Figrelay(bench.place("long-run"), bench.receiver.url, scale_hooks(10), label="figrelay (long run)")
    rows = []
    async with bench.running(fig):
        await warm_up(bench, fig, POOL)
        total = 0
        started = time.monotonic()
        last: Round | None = None
        first_rss = fig.rss_mb()
        for k in range(s.samples):
            r = await closed_round(bench, fig, names=POOL, count=chunk)
            last = r
            total += r.load.accepted
            metrics = await fig.metrics()
            rss, peak = memory_mb(fig.pid)
            rows.append([
                fmt(total), fmt((time.monotonic() - started) / 60, 1), fmt(r.load.accepted_per_s), fmt(r.delivered_per_s), fmt(rss, 1), fmt(peak, 1),
                fmt(r.store_mb, 1), fmt(metrics.get("figrelay_journal_bytes", float("nan")) / 1e6, 1),
                fmt(r.pending, 0), failures(r.load),
            ])
            say(f"  {k + 1}/{s.samples}: {total:,} events, RSS {rss:.1f} MB, store {r.store_mb:.1f} MB")
    say(table(["events", "minutes", "accepted/s", "delivered/s", "RSS MB", "peak RSS MB", "store MB", "journal MB", "pending",
               "non-200 / socket errors"], rows))
    say("store: outbox.sqlite3 with its -wal (and -shm); journal: figrelay_journal_bytes (journal.max_bytes bounds it: 256 MB by default,\n"
        "measured every 5 s and pruned when past it); pending: deliveries in the outbox when sampled\n")
    if last is not None:
        bench.found[f"RSS MB after {total:,} events"] = last.rss_mb
        bench.found[f"store MB after {total:,} events"] = last.store_mb
        bench.found[f"RSS growth MB over {total:,} events"] = last.rss_mb - first_rss


PARTS = {"comparison": comparison, "e2e": end_to_end, "latency": latency, "hooks": hooks, "memory": memory}
"""In the order they run."""
