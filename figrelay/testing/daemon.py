"""A real figrelay daemon for tests: ``figrelay run`` as a child process on a free port, its log
captured line by line, its state in a temporary folder; and ``figrelay check`` run the same way.

    factory = DaemonFactory(tmp_path)
    daemon = await factory(figrelay_config(clients=[...], hooks=[...]))
    await FigSender(daemon.url, daemon.secret).send("SettingValueChanged")
    [delivery] = await daemon.wait_for_deliveries(1)
    await factory.aclose()

The ``figrelay_daemon`` pytest fixture is such a factory, closed after the test.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
import textwrap
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import yaml

from .state import StateReader
from .waiting import DEFAULT_TIMEOUT

if TYPE_CHECKING:
    from figrelay.journal_queries import DeliveryRecord

__all__ = [
    "FAST_DELIVERY",
    "TEST_SECRET",
    "CheckResult",
    "Daemon",
    "DaemonFactory",
    "Metrics",
    "figrelay_config",
    "write_config",
]

TEST_SECRET = "3f1c9a52-7d4e-4b8a-9e61-0c2d5b7a8f90"
"""The intake secret of the configurations ``figrelay_config`` writes (a GUID, as Fig's web app
makes them); a FigSender made for such a daemon sends it."""

FAST_DELIVERY = """
delivery:
  backoff_base: 0.05s
  backoff_max: 0.5s
  attempt_timeout: 5s
  shutdown_timeout: 2s
"""
"""The ``delivery:`` section of a test daemon: retries within a fraction of a second, so a test
of retrying does not wait for production's backoff. (A target's Retry-After is still honoured.)"""

_FAST_DELIVERY_OPTIONS = {"backoff_base": "0.05s", "backoff_max": "0.5s", "attempt_timeout": "5s", "shutdown_timeout": "2s"}


def figrelay_config(
    clients: Sequence[Mapping[str, Any]] | str,
    hooks: Sequence[Mapping[str, Any]] | str,
    *,
    secret: str | None = TEST_SECRET,
    forward_test_events: bool = False,
    delivery: Mapping[str, Any] | None = None,
    state_dir: str = "./state",
    extra: str = "",
) -> str:
    """A whole configuration for a test daemon: listening on a free loopback port, the state in
    ``state_dir`` beside the file, the intake's plain ``secret`` (None: no secret, loopback only),
    fast retries (``FAST_DELIVERY``, updated by ``delivery``), then ``extra`` YAML, ``clients``
    and ``hooks`` (lists of mappings, as in the YAML, or YAML text of the list items)::

        figrelay_config(
            clients=[{"name": "pager", "type": "pager", "url": f"{receiver.url}/alerts", "token": "t0k"}],
            hooks=[{"event": "SettingValueChanged", "client": "pager"}],
        )
    """
    intake: dict[str, Any] = {"forward_test_events": forward_test_events}
    if secret is not None:
        intake["secret"] = secret
    top = {
        "listen": "127.0.0.1:0",
        "state_dir": state_dir,
        "intake": intake,
        "delivery": {**_FAST_DELIVERY_OPTIONS, **(delivery or {})},
    }
    parts = [_dump(top)]
    if extra:
        parts.append(textwrap.dedent(extra).strip("\n") + "\n")
    parts.append("clients:\n" + _items(clients))
    parts.append("hooks:\n" + _items(hooks))
    return "".join(parts)


def _dump(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True)


def _items(items: Sequence[Mapping[str, Any]] | str) -> str:
    if isinstance(items, str):
        return textwrap.indent(textwrap.dedent(items).strip("\n"), "  ") + "\n"
    return textwrap.indent(_dump([dict(i) for i in items]), "  ")


def write_config(path: Path, text: str) -> Path:
    """Write a config atomically (like an editor that renames over the old file)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(textwrap.dedent(text))
    os.replace(tmp, path)
    return path


def _literal(value: Any) -> str | None:
    """A plain string from the YAML, or None for anything figrelay would still expand (${...})."""
    return value if isinstance(value, str) and "$" not in value else None


@dataclass(frozen=True, slots=True)
class Metrics:
    """A daemon's ``/metrics`` as it answered."""

    text: str

    def samples(self) -> list[tuple[str, dict[str, str], float]]:
        """Every sample: (name, labels, value); a counter's samples end in ``_total``."""
        from prometheus_client.parser import text_string_to_metric_families

        return [(s.name, dict(s.labels), s.value) for family in text_string_to_metric_families(self.text) for s in family.samples]

    def value(self, name: str, **labels: str) -> float | None:
        """The sum of the samples named ``name`` (or ``name_total``, for a counter) whose labels
        include ``labels``; None when there is none, e.g.
        ``metrics.value("figrelay_deliveries", client="pager", outcome="delivered")``."""
        found = [v for n, ls, v in self.samples() if n in (name, f"{name}_total") and all(ls.get(k) == v2 for k, v2 in labels.items())]
        return sum(found) if found else None


@dataclass(frozen=True, slots=True)
class CheckResult:
    """What ``figrelay check`` said about a configuration."""

    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


class Daemon:
    """``figrelay run`` as a child process, its log captured line by line (``lines``, ``log``)."""

    def __init__(self, config_path: Path, env: dict[str, str] | None = None, *, secret: str | None = None, state_dir: Path | None = None) -> None:
        self.config_path = config_path
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.secret = secret
        """The intake secret a FigSender for this daemon sends (None: none)."""
        self._state_dir = state_dir
        self.proc: asyncio.subprocess.Process | None = None
        self.lines: list[str] = []
        self.url = ""
        self._reader: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"Daemon({str(self.config_path)!r}, url={self.url!r}, returncode={self.returncode})"

    @property
    def state_dir(self) -> Path:
        """Where the daemon keeps its outbox: the one given, else the configuration's ``state_dir``
        as figrelay takes it, relative to the file's folder (./state when the value needs expanding)."""
        if self._state_dir is not None:
            return self._state_dir
        try:
            data = yaml.safe_load(self.config_path.read_text())
        except (OSError, yaml.YAMLError):
            data = None
        text = _literal(data.get("state_dir")) if isinstance(data, dict) else None
        path = Path(os.path.expanduser(text or "./state"))
        return path if path.is_absolute() else self.config_path.parent / path

    # --- the process ----------------------------------------------------------------------------

    async def start(self, expect_ready: bool = True, timeout: float = DEFAULT_TIMEOUT) -> Daemon:
        """Start the process; with ``expect_ready``, wait until it listens and is ready (``url`` set)."""
        mark = len(self.lines)
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "figrelay", "run", "--config", str(self.config_path), "--log-level", "debug",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=self.env,
        )
        self._reader = asyncio.get_running_loop().create_task(self._read())
        if expect_ready:
            match = await self.wait_for_log(r"listening on (http://\S+)", timeout=timeout, start=mark)
            self.url = match.group(1)
            await self.wait_for_log(r"ready in", timeout=timeout, start=mark)
        return self

    async def restart(self) -> Daemon:
        """Stop gracefully (SIGTERM) and start again on the same configuration and state."""
        await self.stop()
        return await self.start()

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            self.lines.append(line.decode("utf-8", "replace").rstrip("\n"))

    @property
    def returncode(self) -> int | None:
        """The exit status, once the process has ended."""
        return self.proc.returncode if self.proc is not None else None

    def signal(self, sig: int) -> None:
        assert self.proc is not None, "the daemon was never started"
        self.proc.send_signal(sig)

    async def wait(self, timeout: float = DEFAULT_TIMEOUT) -> int:
        """Wait for the process to end; its exit status."""
        assert self.proc is not None, "the daemon was never started"
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        if self._reader:
            await self._reader
        return code

    async def stop(self) -> int:
        """SIGTERM, as systemd stops it; the exit status (0 for a clean stop)."""
        if self.proc is None or self.proc.returncode is not None:
            return self.proc.returncode if self.proc else 0
        self.signal(signal.SIGTERM)
        return await self.wait()

    async def kill(self) -> None:
        """SIGKILL: a crash, with no chance to finish anything."""
        assert self.proc is not None, "the daemon was never started"
        self.proc.kill()
        await self.wait()

    async def close(self) -> None:
        """Release everything: the HTTP session, and the process if it still runs (killed)."""
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        if self._reader is not None and not self._reader.done():
            await self._reader

    # --- the log --------------------------------------------------------------------------------

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def mark(self) -> int:
        """A place in the log: ``wait_for_log(..., start=daemon.mark())`` looks only at what follows."""
        return len(self.lines)

    async def wait_for_log(self, pattern: str, timeout: float = DEFAULT_TIMEOUT, start: int = 0) -> re.Match[str]:
        """The first log line (from line ``start`` on) in which ``pattern`` (a regex) is found."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            for line in self.lines[start:]:
                if m := regex.search(line):
                    return m
            if self.proc is not None and self.proc.returncode is not None and self._reader and self._reader.done():
                raise AssertionError(f"figrelay exited ({self.proc.returncode}) before logging {pattern!r}:\n{self.log}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:g}s waiting for the log line {pattern!r}; the log:\n{self.log}")
            await asyncio.sleep(0.01)

    # --- HTTP -----------------------------------------------------------------------------------

    async def request(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, Any, Any]:
        """(status, answer decoded from JSON or text, headers) of a request to the daemon."""
        if not self.url:
            raise AssertionError("the daemon has no address yet: start() it (with expect_ready) first")
        if self._session is None:
            self._session = aiohttp.ClientSession()
        headers = {"Content-Type": "application/json; charset=utf-8", **(headers or {})}
        async with self._session.request(method, self.url + path, data=body, headers=headers) as resp:
            text = await resp.text()
            try:
                payload = json.loads(text)
            except json.JSONDecodeError:
                payload = text
            return resp.status, payload, resp.headers

    async def post(self, route: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        """POST ``body`` to ``/<route>`` with exactly these headers (see FigSender for Fig's own)."""
        status, payload, _ = await self.request("POST", "/" + route, body, headers)
        return status, payload

    async def metrics(self) -> Metrics:
        """The daemon's ``/metrics`` now."""
        status, text, _ = await self.request("GET", "/metrics")
        if status != 200:
            raise AssertionError(f"GET /metrics answered {status}: {text}")
        return Metrics(text if isinstance(text, str) else json.dumps(text))

    # --- state ------------------------------------------------------------------------------------

    @property
    def state(self) -> StateReader:
        """The outbox and journal in the daemon's state_dir, read-only."""
        return StateReader(self.state_dir)

    async def wait_for_deliveries(
        self,
        count: int = 1,
        *,
        client: str | None = None,
        state: str = "delivered",
        route: str | None = None,
        where: Callable[[DeliveryRecord], bool] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> list[DeliveryRecord]:
        """``StateReader.wait_for_deliveries`` on this daemon's state, with the end of its log in
        the failure message."""
        try:
            return await self.state.wait_for_deliveries(count, client=client, state=state, route=route, where=where, timeout=timeout)
        except AssertionError as exc:
            tail = "\n".join(self.lines[-30:])
            raise AssertionError(f"{exc}\nthe daemon's log (the last 30 lines):\n{tail}") from None


class DaemonFactory:
    """Starts daemons whose configuration files it writes into ``folder``, and ends them all in
    ``aclose()``. The ``figrelay_daemon`` pytest fixture is one on the test's ``tmp_path``."""

    def __init__(self, folder: Path, env: dict[str, str] | None = None) -> None:
        self.folder = Path(folder)
        self.env = dict(env or {})
        self.daemons: list[Daemon] = []

    async def __call__(
        self, config: str, env: dict[str, str] | None = None, start: bool = True, name: str = "figrelay.yaml", *, secret: str | None = None
    ) -> Daemon:
        """Write ``config`` (YAML text, e.g. from ``figrelay_config``) to ``folder/name`` and start
        ``figrelay run`` on it (unless ``start`` is false), waiting until it is ready. ``secret``
        is what a FigSender sends; by default the configuration's plain ``intake.secret``."""
        path = write_config(self.folder / name, config)
        if secret is None:
            try:
                data = yaml.safe_load(textwrap.dedent(config))
            except yaml.YAMLError:
                data = None
            intake = data.get("intake") if isinstance(data, dict) else None
            secret = _literal(intake.get("secret")) if isinstance(intake, dict) else None
        daemon = Daemon(path, {**self.env, **(env or {})}, secret=secret)
        self.daemons.append(daemon)
        if start:
            await daemon.start()
        return daemon

    async def check(self, config: str, name: str = "figrelay.yaml", env: dict[str, str] | None = None) -> CheckResult:
        """Write ``config`` to ``folder/name`` and run ``figrelay check`` on it."""
        path = write_config(self.folder / name, config)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "figrelay", "check", "--config", str(path),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env={**os.environ, **self.env, **(env or {})},
        )
        out, err = await proc.communicate()
        assert proc.returncode is not None
        return CheckResult(proc.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"))

    async def aclose(self) -> None:
        for daemon in self.daemons:
            await daemon.close()
