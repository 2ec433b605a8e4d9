"""Load: closed-loop with wrk (or, without it, a slower aiohttp loop), and open-loop at a fixed
rate with aiohttp, each request's body made from a template.

A template is a request body with ``{seq}`` (the request's number, from 1) and ``{name}`` (a
setting client's name, taken in turn from a pool) in it; both are filled in per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from .support import OVERFLOW_PATH, Proc, have_tool, percentile, warn

HEADERS = {"Content-Type": "application/json; charset=utf-8"}


@dataclass(frozen=True)
class Request:
    path: str
    template: str
    names: tuple[str, ...] = ("OrdersApi",)

    def body(self, seq: int) -> bytes:
        return self.template.replace("{seq}", str(seq)).replace("{name}", self.names[(seq - 1) % len(self.names)]).encode()


@dataclass
class Closed:
    """A closed-loop run: ``connections`` requests in flight for ``seconds`` or ``count`` answers."""

    requests: int
    seconds: float
    non_200: int
    socket_errors: int
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    tool: str = "wrk"

    @property
    def accepted(self) -> int:
        return self.requests - self.non_200

    @property
    def accepted_per_s(self) -> float:
        return self.accepted / self.seconds if self.seconds > 0 else float("nan")


def _lua(request: Request, count: int | None, first_seq: int) -> str:
    """wrk's script: numbered requests from ``first_seq``; with a ``count``, the requests past it go
    to OVERFLOW_PATH (answered 404) and the line WRKLIMIT is printed once ``count`` others were
    answered (stopping the thread does not end wrk before its duration: the bench sends SIGINT)."""
    pieces = re.split(r"(\{seq\}|\{name\})", request.template)
    template = "".join({"{seq}": "%d", "{name}": "%s"}.get(p, p.replace("%", "%%")) for p in pieces)
    args = "".join(", i" if p == "{seq}" else ", names[(i - 1) % #names + 1]" for p in pieces if p in ("{seq}", "{name}"))
    names = ", ".join(json.dumps(n) for n in request.names)
    last = first_seq - 1 + count if count else 0
    # wrk 4 calls request() once per thread before the run and throws the request away: n starts a
    # number earlier, so that the first one sent is first_seq
    script = f"""
local n = {first_seq - 2}
local last = {last}
local names = {{ {names} }}
local fmt = [==[{template}]==]
local headers = {{ ["Content-Type"] = "application/json; charset=utf-8" }}
local threads = {{}}
answered = 0
overflow = 0

setup = function(thread)
  table.insert(threads, thread)
end

request = function()
  n = n + 1
  local i = n
  if last > 0 and i > last then
    return wrk.format("POST", "{OVERFLOW_PATH}", headers, "{{}}")
  end
  return wrk.format("POST", "{request.path}", headers, string.format(fmt{args}))
end

done = function(summary, latency, requests)
  local e = summary.errors
  local past = 0
  for _, t in ipairs(threads) do
    past = past + (t:get("overflow") or 0)
  end
  io.write(string.format(
    'WRKRESULT {{"requests":%d,"duration_us":%d,"status":%d,"connect":%d,"read":%d,"write":%d,"timeout":%d,"p50_us":%d,"p99_us":%d,"overflow":%d}}\\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(99), past))
end
"""
    if count:
        script += f"""
response = function(status, headers, body)
  if status == 404 then
    overflow = overflow + 1
    return
  end
  answered = answered + 1
  if answered == {count} then
    io.stdout:write("WRKLIMIT\\n")
    io.stdout:flush()
    wrk.thread:stop()
  end
end
"""
    return script


async def closed_loop(url: str, request: Request, folder: Path, *, seconds: float | None = None, count: int | None = None,
                      connections: int = 32, timeout: float = 10, first_seq: int = 1) -> Closed:
    """wrk, 1 thread, ``connections`` connections, for ``seconds`` or until ``count`` answers; the
    aiohttp loop when wrk is missing. The requests are numbered from ``first_seq``."""
    assert (seconds is None) != (count is None)
    wrk = have_tool("wrk")
    if wrk is None:
        return await _aiohttp_closed_loop(url, request, seconds=seconds, count=count, connections=connections, timeout=timeout, first_seq=first_seq)
    script = folder / f"load-{time.monotonic_ns()}.lua"
    script.write_text(_lua(request, count, first_seq))
    duration = f"{max(1, round(seconds))}s" if seconds is not None else "3600s"  # wrk takes whole seconds
    proc = Proc("wrk", [wrk, "-t1", f"-c{connections}", f"-d{duration}", f"--timeout={timeout:g}s", "-s", str(script), url])
    try:
        await proc.start()
        assert proc.proc is not None
        if count is not None:
            patience = 120 + count / 100
            try:
                _, line = await proc.wait_for(r"^WRKLIMIT$|\.lua:\d+:", timeout=patience)
            except RuntimeError as exc:  # too slow, or a request lost to a socket error: what was answered
                warn(f"  wrk: {exc}")
                line = "WRKLIMIT"
            if line != "WRKLIMIT":  # a script error: wrk would go on for its whole duration
                raise RuntimeError(f"wrk: {line}")
            proc.signal(signal.SIGINT)  # wrk then prints its results and exits
        await proc.proc.wait()
        m, _ = await proc.wait_for(r"WRKRESULT (\{.*\})", timeout=5)
    finally:
        await proc.stop()
        script.unlink(missing_ok=True)
    r = json.loads(m.group(1))
    socket_errors = r["connect"] + r["read"] + r["write"] + r["timeout"]
    past = r["overflow"]
    return Closed(r["requests"] - past, r["duration_us"] / 1e6, r["status"] - past, socket_errors, r["p50_us"] / 1000, r["p99_us"] / 1000)


async def _aiohttp_closed_loop(url: str, request: Request, *, seconds: float | None, count: int | None, connections: int,
                               timeout: float, first_seq: int) -> Closed:
    latencies: list[float] = []
    non_200 = errors = 0
    sent = 0
    connector = aiohttp.TCPConnector(limit=connections, limit_per_host=0)
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=client_timeout) as http:
        started = time.perf_counter()
        stop_at = started + seconds if seconds is not None else math.inf

        async def worker() -> None:
            nonlocal sent, non_200, errors
            while time.perf_counter() < stop_at and (count is None or sent < count):
                sent += 1
                body = request.body(first_seq + sent - 1)
                t = time.perf_counter()
                try:
                    async with http.post(url + request.path, data=body, headers=HEADERS) as resp:
                        await resp.read()
                        non_200 += resp.status != 200
                except (aiohttp.ClientError, TimeoutError):
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - t)

        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.perf_counter() - started
    return Closed(len(latencies), elapsed, non_200, errors, percentile(latencies, 50) * 1000, percentile(latencies, 99) * 1000, "aiohttp")


# --- open loop ----------------------------------------------------------------------------------


@dataclass
class Sent:
    scheduled: float
    """time.monotonic() the request was due."""
    lag: float = float("nan")
    """How late it left (the load generator's own delay)."""
    answered: float = float("nan")
    status: str = ""
    deliveries: list[str] = field(default_factory=list)

    @property
    def answer_s(self) -> float:
        """From when it was due to its answer: open-loop, so a slow answer delays no later request."""
        return self.answered - self.scheduled


@dataclass
class Open:
    rate: float
    seconds: float
    sent: list[Sent]

    @property
    def refused(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.sent:
            if s.status != "200":
                out[s.status] = out.get(s.status, 0) + 1
        return out

    @property
    def accepted(self) -> list[Sent]:
        return [s for s in self.sent if s.status == "200"]


async def open_loop(url: str, request: Request, rate: float, seconds: float, *, first_seq: int = 1, timeout: float = 30,
                    max_connections: int = 256) -> Open:
    """Send ``rate`` requests a second for ``seconds``, each on schedule whether or not the earlier
    ones were answered; keep each one's answer time and the delivery ids figrelay answered."""
    connector = aiohttp.TCPConnector(limit=max_connections, limit_per_host=0)
    total = max(1, round(rate * seconds))
    sent = [Sent(0.0) for _ in range(total)]
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout)) as http:

        async def one(k: int) -> None:
            s = sent[k]
            s.lag = time.monotonic() - s.scheduled
            try:
                async with http.post(url + request.path, data=request.body(first_seq + k), headers=HEADERS) as resp:
                    text = await resp.read()
                    s.answered = time.monotonic()
                    s.status = str(resp.status)
                if resp.status == 200:
                    with contextlib.suppress(ValueError, KeyError, TypeError):
                        s.deliveries = [d["id"] for d in json.loads(text).get("deliveries", ())]
            except (aiohttp.ClientError, TimeoutError) as exc:
                s.answered = time.monotonic()
                s.status = type(exc).__name__

        tasks = []
        start = time.monotonic() + 0.05
        for k in range(total):
            sent[k].scheduled = start + k / rate
            delay = sent[k].scheduled - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(one(k)))
        await asyncio.gather(*tasks)
    return Open(rate, seconds, sent)
