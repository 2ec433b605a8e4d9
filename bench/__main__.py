"""figrelay's benchmark suite (issue 11): figures and ratios, measured side by side in one run.

    .venv/bin/python -m bench [--quick] [--only comparison,e2e,latency,hooks,memory] [options]

Parts (docs/performance.md says what each measures):
  comparison  requests accepted per second (wrk, 1 thread, 32 connections, 8 s) by a bare aiohttp
              server, figrelay (10 hooks, one matching, an http client to a local receiver),
              Prometheus Alertmanager and a script around Apprise's json:// sender; and the
              deliveries per second reaching the receiver, counted until the backlog drained
  e2e         figrelay and Alertmanager, 3 rounds on the same processes: delivered/s per round
  latency     open loop at fixed rates (1,000 events/s for 10 s): p50/p99 of the intake's answer
              and of answer -> receipt (matched by X-Figrelay-Delivery)
  hooks       10 against 10,000 hooks: per-event cost, start-up, reload (SIGHUP), and whether a
              reload under load refuses or loses an event
  memory      RSS after 100,000 run sessions; RSS and the store's size over 1,000,000 events
  scale       hooks and memory

The whole suite takes 20 to 30 minutes on 2 cores; --quick runs every part small, in about a
minute. The bench prints figures, never asserts them; the machine is shared and noisy, so the
ratios measured in the same run are what to compare. wrk, Alertmanager and Apprise are bench
tools, not figrelay dependencies: when one is missing the bench says how to install it; without
wrk the load comes from a slower aiohttp loop, without the others their baseline is skipped.
Every process and the temporary folder are removed at the end, also on Ctrl-C, SIGTERM or an error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import platform
import re
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from .parts import PARTS, Bench, Settings
from .support import Proc, fmt, log_message, say, table, warn
from .systems import Receiver

TARGETS: list[tuple[str, str, float, str]] = [
    # (a key of Bench.found, or a prefix of one), the target as the issue words it, the bound, ">=" or "<"
    ("end-to-end figrelay / Alertmanager", "≥ 2", 2.0, ">="),
    ("intake figrelay / bare aiohttp", "≥ 0.5", 0.5, ">="),
    ("figrelay round 3 / round 1 (delivered/s)", "≥ 0.9", 0.9, ">="),
    ("latency p99 answer→receipt ms at", "< 50 ms", 50.0, "<"),
    ("latency p99 answer ms at", "< 10 ms", 10.0, "<"),
    ("hooks / 10 hooks per-event cost", "≤ 2", 2.0, "<="),
    ("(process start to \"ready in\" line)", "< 0.5 s", 0.5, "<"),
    ("(as \"ready in\" tells)", "< 0.5 s", 0.5, "<"),
    ("hooks (slowest)", "< 0.5 s", 0.5, "<"),
    ("refused or lost during reloads", "0", 0.0, "<="),
    ("sessions: Δ RSS MB", "< 50 MB", 50.0, "<"),
    ("RSS MB after", "< 100 MB", 100.0, "<"),
]


def settings_from(args: argparse.Namespace) -> Settings:
    s = Settings.quick() if args.quick else Settings()
    for name in ("seconds", "connections", "rounds", "latency_seconds", "hooks", "reload_rate", "reload_seconds", "reloads", "sessions", "events",
                 "samples", "settle"):
        value = getattr(args, name)
        if value is not None:
            setattr(s, name, value)
    if args.rate is not None:
        s.rates = tuple(float(r) for r in args.rate.split(",") if r.strip())
    return s


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help="comma-separated parts to run, in the suite's order (default: all)")
    parser.add_argument("--quick", action="store_true", help="a short smoke version of every part")
    parser.add_argument("--seconds", type=int, help="each closed-loop (wrk) round, whole seconds (default 8; quick 1)")
    parser.add_argument("--connections", type=int, help="wrk's connections (default 32)")
    parser.add_argument("--rounds", type=int, help="end-to-end rounds on the same processes (default 3)")
    parser.add_argument("--rate", help="latency: comma-separated events/s (default 1000)")
    parser.add_argument("--latency-seconds", type=float, help="latency: seconds at each rate (default 10; quick 2)")
    parser.add_argument("--hooks", type=int, help="hooks: the large count, against 10 (default 10000)")
    parser.add_argument("--reload-rate", type=float, help="hooks: events/s during the reloads under load (default 200)")
    parser.add_argument("--reload-seconds", type=float, help="hooks: seconds of load during the reloads (default 8; quick 2)")
    parser.add_argument("--reloads", type=int, help="hooks: reloads idle, and reloads under load (default 3; quick 1)")
    parser.add_argument("--sessions", type=int, help="memory: run sessions posted (default 100000; quick 5000)")
    parser.add_argument("--events", type=int, help="memory: events of the long run (default 1000000; quick 12000)")
    parser.add_argument("--samples", type=int, help="memory: chunks of the long run, sampled after each (default 10; quick 3)")
    parser.add_argument("--settle", type=float, help="give up waiting for deliveries after this many seconds without one (default 15; quick 5)")
    args = parser.parse_args(argv)
    wanted = [p.strip() for p in (args.only or "").split(",") if p.strip()]
    wanted = [q for p in wanted for q in (("hooks", "memory") if p == "scale" else (p,))]
    unknown = [p for p in wanted if p not in PARTS]
    if unknown:
        parser.error(f"--only: unknown {', '.join(unknown)}; choose from {', '.join([*PARTS, 'scale'])}")
    args.parts = [p for p in PARTS if p in wanted] if wanted else list(PARTS)
    for name in ("seconds", "connections", "rounds", "latency_seconds", "hooks", "sessions", "events", "samples"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    return args


def header(parts: list[str], quick: bool) -> None:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    say(f"# figrelay benchmarks, {time.strftime('%Y-%m-%d %H:%M %Z')}\n")
    say(f"machine: {os.cpu_count()} CPUs, {platform.machine()}, Linux {platform.release()}, Python {platform.python_version()}; "
        f"load average at the start: {load}")
    say(f"parts: {', '.join(parts)}{' (--quick)' if quick else ''}\n")


def targets(bench: Bench) -> None:
    rows = []
    for key, wording, bound, op in TARGETS:
        names = [n for n in bench.found if n == key] or [n for n in bench.found if key in n]
        for name in names[:1]:
            value = bench.found[name]
            met = {">=": value >= bound, "<": value < bound, "<=": value <= bound}[op]
            rows.append([name, fmt(value, 2), wording, "-" if math.isnan(value) else ("yes" if met else "no")])
    others = [(name, value) for name, value in bench.found.items() if not any(r[0] == name for r in rows)]
    rows += [[name, fmt(value, 2), "", ""] for name, value in others]
    if rows:
        say("## Issue 11's targets, as measured in this run\n")
        say(table(["figure", "measured", "target", "met"], rows))
        say()


def problems(bench: Bench) -> None:
    """The WARNING/ERROR lines of every process, the same message counted once."""
    say("## Problems in the processes' output\n")
    quiet = []
    for proc in Proc.started:
        if proc.name == "wrk":
            continue
        code = proc.proc.returncode if proc.proc is not None else None
        if code not in (0, None, -signal.SIGTERM):
            proc.note(f"exited with {code}")
        if not proc.problem_count:
            quiet.append(proc.name)
            continue
        # a traceback's frames (indented) are left out: its first line and its exception stay
        shown = [log_message(line) for line in proc.problems if not line[:1].isspace()]
        counted = Counter(re.sub(r"\b[0-9a-f]{32}\b|\d+", "N", message)[:300] for message in shown)
        say(f"{proc.name}: {proc.problem_count} problem line(s){' (the first 200 grouped)' if proc.problem_count > 200 else ''}:")
        for message, n in counted.most_common(12):
            say(f"  {n} x {message}")
    if quiet:
        say(f"no WARNING or ERROR lines: {', '.join(dict.fromkeys(quiet))}")
    for note in bench.missing:
        say(f"missing: {note}")


async def run(args: argparse.Namespace, folder: Path) -> int:
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    for signum in (signal.SIGINT, signal.SIGTERM):  # cancelled, so that everything is stopped
        loop.add_signal_handler(signum, task.cancel)
    settings = settings_from(args)
    header(args.parts, args.quick)
    receiver = Receiver()
    bench = Bench(settings, folder, receiver)
    code = 0
    try:
        await receiver.start()
        for name in args.parts:
            started = time.monotonic()
            try:
                await PARTS[name](bench)
            except (RuntimeError, OSError, AssertionError, KeyError, ValueError) as exc:
                warn(f"part {name} failed: {type(exc).__name__}: {exc}")
                code = 1
            say(f"({name}: {time.monotonic() - started:.0f} s)\n")
        targets(bench)
    finally:
        for proc in reversed(Proc.started):
            with contextlib.suppress(Exception):
                await proc.stop()
        problems(bench)
    return code


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="figrelay-bench-"))
    try:
        return asyncio.run(run(args, folder))
    except (KeyboardInterrupt, asyncio.CancelledError):
        warn("\ninterrupted: stopped every process and removed the temporary folder")
        return 130
    finally:
        Proc.kill_all()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
