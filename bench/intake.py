"""Intake throughput: events per second that figrelay accepts (parsed, matched, durably stored,
answered), against a bare aiohttp server on the same machine that only parses the JSON.

    .venv/bin/python bench/intake.py [--events 5000] [--concurrency 64]

The figures are ratios against the baseline measured in the same run, since the machine is
shared and noisy. Each event matches one hook to a `log` client (written at debug level, which
the daemon filters out), so every event costs an outbox insert, a dispatch and a delete.

``python -m bench --only comparison`` (docs/performance.md) measures the intake with wrk instead,
with deliveries to an HTTP receiver, beside Alertmanager and an Apprise script.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import socket
import sqlite3
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import aiohttp

BASELINE = textwrap.dedent(
    """
    import json, sys
    from aiohttp import web
    async def handle(request):
        json.loads(await request.read())
        return web.json_response({"status": "accepted"})
    app = web.Application()
    app.router.add_post("/{route}", handle)
    import asyncio
    async def main():
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        print("listening on http://127.0.0.1:%d" % site._server.sockets[0].getsockname()[1], flush=True)
        await asyncio.Event().wait()
    asyncio.run(main())
    """
)

BODY = json.dumps(
    {"ClientName": "OrdersApi", "Instance": None, "UpdatedSettings": ["Timeout", "RetryCount"], "Username": "admin",
     "Link": "http://localhost:5050/", "ChangeMessage": "Increase timeout for peak", "IsTest": False},
    separators=(",", ":"),
).encode()


async def start(cmd: list[str], url: str | None = None) -> tuple[asyncio.subprocess.Process, str]:
    """Start a server; its URL is ``url`` or the one it prints in a "listening on" line."""
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    assert proc.stdout is not None
    if url is None:
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        m = re.search(rb"listening on (http://\S+)", line)
        if m is None:
            raise SystemExit(f"{cmd} did not start: {line!r}")
        url = m.group(1).decode()
    asyncio.get_running_loop().create_task(_drain(proc))
    async with aiohttp.ClientSession() as http:
        deadline = time.monotonic() + 30
        while True:
            try:
                async with http.get(url + "/healthz") as resp:
                    if resp.status < 500:  # answering at all means up
                        return proc, url
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline or proc.returncode is not None:
                raise SystemExit(f"{cmd} did not start")
            await asyncio.sleep(0.05)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _drain(proc: asyncio.subprocess.Process) -> None:
    assert proc.stdout is not None
    while await proc.stdout.readline():
        pass


async def load(url: str, events: int, concurrency: int) -> float:
    """Seconds to get ``events`` answers with ``concurrency`` requests in flight."""
    headers = {"Content-Type": "application/json; charset=utf-8"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as http:
        remaining = events
        failures = 0

        async def worker() -> None:
            nonlocal remaining, failures
            while remaining > 0:
                remaining -= 1
                async with http.post(url + "/SettingValueChanged", data=BODY, headers=headers) as resp:
                    await resp.read()
                    failures += resp.status != 200

        # warm up the connections first
        for _ in range(concurrency):
            async with http.post(url + "/SettingValueChanged", data=BODY, headers=headers) as resp:
                await resp.read()
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
        if failures:
            raise SystemExit(f"{failures} requests failed")
        return elapsed


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "bench.yaml"
        port = free_port()
        config.write_text(textwrap.dedent(
            f"""
            listen: 127.0.0.1:{port}
            state_dir: ./state
            clients:
              - {{name: sink, type: log, level: debug}}
            hooks:
              - {{event: SettingValueChanged, client: sink}}
            """
        ))
        base_proc, base_url = await start([sys.executable, "-c", BASELINE])
        relay_proc, relay_url = await start(
            [sys.executable, "-m", "figrelay", "run", "--config", str(config), "--log-level", "warning"], f"http://127.0.0.1:{port}"
        )
        try:
            results: dict[str, list[float]] = {}
            for name, url in (("baseline", base_url), ("figrelay", relay_url), ("baseline", base_url), ("figrelay", relay_url)):
                seconds = await load(url, args.events, args.concurrency)
                results.setdefault(name, []).append(args.events / seconds)
            outbox = Path(tmp) / "state" / "outbox.sqlite3"
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                with sqlite3.connect(outbox) as conn:
                    left = conn.execute("SELECT count(*) FROM deliveries").fetchone()[0]
                if left == 0:
                    break
                await asyncio.sleep(0.1)
        finally:
            for proc in (base_proc, relay_proc):
                proc.terminate()
                await proc.wait()
    base, relay = max(results["baseline"]), max(results["figrelay"])
    print(f"events: {args.events} per run, concurrency {args.concurrency}, best of 2 runs")
    print(f"bare aiohttp (parse JSON, answer):           {base:8.0f} events/s")
    print(f"figrelay (parse, match, store, answer):      {relay:8.0f} events/s")
    print(f"figrelay / baseline:                          {relay / base:8.2f}")
    print(f"deliveries left in the outbox after the runs: {left}")


if __name__ == "__main__":
    asyncio.run(main())
