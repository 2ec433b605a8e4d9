"""What the parts of ``python -m bench`` share: child processes that are always stopped, what
/proc says about them, ports, percentiles and tables."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import re
import shutil
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar

import aiohttp

REPO = Path(__file__).resolve().parent.parent

INSTALL = {
    "wrk": "apt-get install -y wrk",
    "alertmanager": "apt-get install -y prometheus-alertmanager",
    "apprise": f"{REPO / '.venv/bin/pip'} install apprise",
}
"""How to get each tool the bench compares with or loads with (not figrelay dependencies)."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest rank; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]


# --- what /proc says about a process ------------------------------------------------------------

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of a process (all its threads); NaN once it is gone."""
    if pid is None:
        return float("nan")
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime: fields 14 and 15 of stat


def memory_mb(pid: int | None) -> tuple[float, float]:
    """(RSS, peak RSS) in MB (10^6 bytes); NaN once the process is gone."""
    if pid is None:
        return float("nan"), float("nan")
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return float("nan"), float("nan")

    def kb(key: str) -> float:
        m = re.search(rf"^{key}:\s+(\d+) kB", status, re.M)
        return int(m.group(1)) * 1024 / 1e6 if m else float("nan")

    return kb("VmRSS"), kb("VmHWM")


def files_mb(*paths: Path) -> float:
    """The size of the files that exist among ``paths``, in MB."""
    total = 0
    for path in paths:
        with contextlib.suppress(OSError):
            total += path.stat().st_size
    return total / 1e6


# --- child processes ----------------------------------------------------------------------------

LineKind = Callable[[str], bool]

OVERFLOW_PATH = "/bench-overflow/past-the-count"
"""Where the requests past a wrk run's count go: every server here answers 404, storing nothing."""


def figrelay_problem(line: str) -> bool:
    """A WARNING or worse line of figrelay's JSON log, or anything that is not a log line (a
    traceback); but not the refusals of the bench's own requests to OVERFLOW_PATH."""
    try:
        entry = json.loads(line)
    except ValueError:
        return bool(line.strip())
    if not isinstance(entry, dict):
        return True
    if entry.get("level") in ("debug", "info"):
        return False
    message = str(entry.get("message", ""))
    return OVERFLOW_PATH not in message and not ("more requests" in message and "not_found" in message)


def logfmt_problem(line: str) -> bool:
    """A warn or error line of a logfmt log (Alertmanager's)."""
    return bool(re.search(r"\blevel=(warn|error)", line))


def plain_problem(line: str) -> bool:
    """Any line but a "listening on" one (the bench's own small servers print nothing else)."""
    return bool(line.strip()) and "listening on" not in line


class Proc:
    """A child process in a session of its own (a Ctrl-C reaches the bench, which stops it), its
    output (stdout and stderr) read line by line: the recent lines are kept, the problems counted."""

    started: ClassVar[list[Proc]] = []
    """Every child ever started, for the bench to kill whatever was not stopped."""

    KEEP = 50_000

    def __init__(self, name: str, cmd: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None,
                 problem: LineKind = plain_problem) -> None:
        self.name, self.cmd, self.cwd, self.env, self.problem = name, cmd, cwd, env, problem
        self.proc: asyncio.subprocess.Process | None = None
        self.spawned_at = float("nan")
        """time.time() just before the process was started."""
        self.lines: list[str] = []
        self.base = 0
        """How many lines were dropped from the front of ``lines``."""
        self.problems: list[str] = []
        self.problem_count = 0
        self._reader: asyncio.Task[None] | None = None
        self._new_line = asyncio.Event()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.returncode is None else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    @property
    def seen(self) -> int:
        """Lines read so far: a mark for ``wait_for(since=...)``."""
        return self.base + len(self.lines)

    async def start(self) -> Proc:
        self.spawned_at = time.time()
        self.proc = await asyncio.create_subprocess_exec(
            *self.cmd, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(self.env or {})}, cwd=self.cwd, start_new_session=True,
        )
        Proc.started.append(self)
        self._reader = asyncio.get_running_loop().create_task(self._read())
        return self

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while True:
            try:
                raw = await self.proc.stdout.readline()
            except ValueError:  # a line longer than the stream's limit: skip it
                continue
            if not raw:
                break
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.lines.append(line)
            if len(self.lines) > self.KEEP:
                drop = self.KEEP // 2
                del self.lines[:drop]
                self.base += drop
            if self.problem(line):
                self.problem_count += 1
                if len(self.problems) < 200:
                    self.problems.append(line)
            self._new_line.set()

    async def wait_for(self, pattern: str, timeout: float = 60, since: int = 0) -> tuple[re.Match[str], str]:
        """The first line from line number ``since`` on that matches ``pattern``, and its match."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        at = since
        while True:
            for line in self.lines[max(0, at - self.base):]:
                if m := regex.search(line):
                    return m, line
            at = self.seen
            if self._reader is not None and self._reader.done():
                tail = "\n".join(self.lines[-30:])
                raise RuntimeError(f"{self.name} exited ({self.proc and self.proc.returncode}) before printing {pattern!r}:\n{tail}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not print {pattern!r} within {timeout:g}s")
            self._new_line.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._new_line.wait(), 0.2)

    def signal(self, signum: int) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signum)

    async def stop(self, timeout: float = 20) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; the exit code."""
        if self.proc is None:
            return None
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), timeout)
            except TimeoutError:
                self.note(f"did not stop within {timeout:g}s of SIGTERM: killed")
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                await self.proc.wait()
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._reader, 5)
        return self.proc.returncode

    def note(self, text: str) -> None:
        """A problem the bench saw (not a line of the process's output)."""
        self.problem_count += 1
        self.problems.append(f"[bench] {text}")

    @classmethod
    def kill_all(cls) -> None:
        """Last resort, from synchronous code: SIGKILL every child not yet reaped."""
        for child in cls.started:
            if child.proc is not None and child.proc.returncode is None:  # not reaped: the pid is still its own
                with contextlib.suppress(OSError):
                    os.kill(child.proc.pid, signal.SIGKILL)


async def wait_http(url: str, proc: Proc, timeout: float = 60, ok: Iterable[int] = (200,)) -> None:
    """Until ``url`` answers with one of ``ok``."""
    wanted = set(ok)
    deadline = time.monotonic() + timeout
    last = ""
    async with aiohttp.ClientSession() as http:
        while True:
            try:
                async with http.get(url) as resp:
                    last = f"{resp.status}"
                    if resp.status in wanted:
                        return
            except aiohttp.ClientError as exc:
                last = repr(exc)
            if not proc.running:
                tail = "\n".join(proc.lines[-30:])
                raise RuntimeError(f"{proc.name} exited ({proc.proc and proc.proc.returncode}):\n{tail}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{proc.name}: {url} did not answer within {timeout:g}s ({last})")
            await asyncio.sleep(0.02)


def log_time(line: str) -> float:
    """The time (epoch seconds) of a line of figrelay's JSON log."""
    stamp = json.loads(line)["time"]
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


def log_message(line: str) -> str:
    try:
        entry = json.loads(line)
    except ValueError:
        return line
    return str(entry.get("message", line)) if isinstance(entry, dict) else line


# --- output -------------------------------------------------------------------------------------


def fmt(value: object, digits: int = 0) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table, padded to line up in a terminal too."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))) + " |"

    rule = "|" + "|".join("-" * (w + 1) + ":" if i else "-" * (w + 2) for i, w in enumerate(widths)) + "|"
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def say(text: str = "") -> None:
    print(text, flush=True)


def warn(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def have_tool(name: str) -> str | None:
    """The path of a command-line tool, or None."""
    return shutil.which(name)
