"""figrelay/storage/postgresql.py: the storage: URL, connecting with retries, and the schema; the
connection and schema parts against a real PostgreSQL server (conftest's ``postgres``).

No test waits for real time: the retry loop's sleep, clock and jitter are injected, and a test
that needs the server to "come up" starts a TCP forwarder to it from inside the injected sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import ssl
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

import asyncpg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from figrelay.storage.postgresql import (
    FIGRELAY_TABLES,
    MIGRATION_LOCK_KEY,
    SCHEMA_VERSION,
    Backoff,
    ConnectAttempt,
    DatabaseUnavailableError,
    DriverMissingError,
    FailureKind,
    PostgresTarget,
    SchemaError,
    SchemaTooNewError,
    StorageURLError,
    connect_with_retry,
    describe_failure,
    migrate,
    parse_storage_url,
    pool_opener,
)

PASSWORD = "Zq9x-Hush-Kv7w"
LOGGER = "figrelay.storage.postgresql"


def leaks(text: str) -> bool:
    """Whether ``text`` shows the password, or any part of it that a misparse could have split off."""
    return any(part in text for part in PASSWORD.split("-"))


# --- the storage: URL -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "postgresql://figrelay:pw@db.example.com:5432/figrelay",
            dict(hosts=("db.example.com",), ports=(5432,), user="figrelay", database="figrelay"),
        ),
        ("postgres://db.example.com/figrelay", dict(hosts=("db.example.com",), ports=(), user=None, database="figrelay")),
        ("postgresql:///figrelay", dict(hosts=(), ports=(), database="figrelay")),
        ("postgresql://figrelay@/figrelay?host=/run/postgresql", dict(hosts=("/run/postgresql",), user="figrelay", database="figrelay")),
        ("postgresql://figrelay@%2Frun%2Fpostgresql:5433/figrelay", dict(hosts=("/run/postgresql",), ports=(5433,))),
        ("postgresql://u@/d?host=/run/postgresql&port=6432", dict(hosts=("/run/postgresql",), ports=(6432,))),
        ("postgresql://u@[2001:db8::1]:6432/d", dict(hosts=("2001:db8::1",), ports=(6432,))),
        ("postgresql://u@10.0.0.5/d", dict(hosts=("10.0.0.5",), ports=())),
        ("postgresql://u@db1:5432,db2:5433/d", dict(hosts=("db1", "db2"), ports=(5432, 5433))),
        ("postgresql://u@db1,db2:5433/d", dict(hosts=("db1", "db2"), ports=(5432, 5433))),
        ("postgresql://u@db1,db2/d?port=6432", dict(hosts=("db1", "db2"), ports=(6432, 6432))),
        ("postgresql://%C3%A9mile@db/caf%C3%A9", dict(user="émile", database="café")),
        ("postgresql://db/d?application_name=relay%40a", dict(application_name="relay@a")),
        ("postgresql://db/d?connect_timeout=2.5", dict(connect_timeout=2.5)),
        ("postgresql://db/d?options=-c%20search_path%3Dfigrelay", dict(server_options="-c search_path=figrelay")),
        ("postgresql://db?dbname=x&user=y", dict(database="x", user="y")),
    ],
)
def test_good_urls(url: str, expected: dict[str, Any]) -> None:
    target = parse_storage_url(url)
    for key, value in expected.items():
        assert getattr(target, key) == value, key


def test_url_options_are_checked_and_kept() -> None:
    target = parse_storage_url(
        "postgresql://figrelay:p%40ss%2Fw%3Frd@db.example.com/figrelay"
        "?sslmode=verify-full&sslrootcert=/etc/figrelay/ca.pem&target_session_attrs=read-write&ssl_min_protocol_version=TLSv1.3"
    )
    assert target.password is not None and target.password.get_secret_value() == "p@ss/w?rd"
    assert target.sslmode == "verify-full"
    assert target.option("sslrootcert") == "/etc/figrelay/ca.pem"
    arguments = target.driver_arguments()
    assert arguments["password"] == "p@ss/w?rd"
    assert "p@ss" not in arguments["dsn"] and "sslrootcert=%2Fetc%2Ffigrelay%2Fca.pem" in arguments["dsn"]
    assert arguments["target_session_attrs"] == "read-write"
    assert arguments["server_settings"] == {"application_name": "figrelay"}
    assert arguments["timeout"] == 10.0


def test_a_password_with_an_unencoded_at_sign_still_parses() -> None:
    target = parse_storage_url("postgresql://figrelay:p@ss@db/figrelay")
    assert target.password == SecretStr("p@ss") and target.hosts == ("db",)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("", "the storage URL is empty"),
        ("db.example.com/figrelay", "not a URL: write it as postgresql://USER:PASSWORD@HOST:PORT/DATABASE"),
        ("mysql://db/figrelay", "unsupported scheme 'mysql'"),
        ("sqlite:///var/lib/figrelay/outbox.sqlite3", "SQLite is the default store; leave storage: out"),
        ("postgresql+asyncpg://db/figrelay", "write postgresql:// (figrelay brings its own driver"),
        ("postgresql://db:99999/figrelay", "the port '99999' is not a number from 1 to 65535"),
        ("postgresql://db:five/figrelay", "the port 'five' is not a number"),
        ("postgresql://db/figrelay?sslmode=requir", "sslmode='requir' is not one of disable, allow, prefer, require, verify-ca, verify-full; did you mean 'require'?"),
        ("postgresql://db/figrelay?sslmod=require", "unknown option sslmod=; did you mean 'sslmode'?"),
        ("postgresql://db/figrelay?hostaddr=10.0.0.5", "hostaddr= is not supported: write the address as the host"),
        ("postgresql://db/figrelay?connect_timeout=0", "connect_timeout='0' is not a number of seconds"),
        ("postgresql://db/figrelay?sslnegotiation=direct", "sslnegotiation=direct starts with TLS at once, so it needs sslmode=require"),
        ("postgresql://db/figrelay?target_session_attrs=master", "target_session_attrs='master' is not one of"),
        ("postgresql://db/figrelay?dbname=other", "the database is given twice"),
        ("postgresql://db/figrelay?sslmode=require&sslmode=disable", "sslmode= is given twice"),
        ("postgresql://db1,db2/figrelay?port=1,2,3", "2 hosts but 3 ports"),
        ("postgresql://db1,,db2/figrelay", "an empty host between commas"),
        ("postgresql://db/figrelay/extra", "a URL names one database"),
        ("postgresql://::1/figrelay", "an IPv6 address in the host part needs brackets"),
        ("postgresql://ho st/figrelay", "the host 'ho st' is not a host name, an IP address or a socket folder"),
        ("postgresql://db/figrelay?host=/run/postgresql", "the host is given twice"),
        ("postgresql://db/" + "d" * 64, "longer than 63 bytes"),
        ("postgresql://db/figrelay?sslrootcert=", "sslrootcert= is empty"),
        ("postgresql://db/100%", "the database name holds a '%' that does not start a percent-encoded byte"),
        ("postgresql://db/figrelay#main", "the URL holds a '#'"),
        ("postgresql://db/figrelay?application_name=relay@a", "an '@' comes after the host"),
    ],
)
def test_bad_urls_say_what_and_how_to_fix(url: str, message: str) -> None:
    with pytest.raises(StorageURLError) as caught:
        parse_storage_url(url)
    assert message in str(caught.value)


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(StorageURLError) as caught:
        parse_storage_url("postgresql://db:0/figrelay?sslmode=on&bogus=1")
    assert len(caught.value.problems) == 3, caught.value.problems


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://figrelay:{PASSWORD}/x@db/figrelay",  # an unencoded '/' in the password
        f"postgresql://figrelay:{PASSWORD}?x@db/figrelay",  # an unencoded '?'
        f"postgresql://figrelay:{PASSWORD}?sslmode=x@db/figrelay",
        f"postgresql://figrelay:{PASSWORD}#x@db/figrelay",  # an unencoded '#'
        f"postgresql://figrelay:{PASSWORD}%zz@db/figrelay",  # a broken escape
        f"postgresql://figrelay:{PASSWORD}%FF@db/figrelay",  # not UTF-8
        f"postgresql://figrelay:{PASSWORD}@db:{PASSWORD}/figrelay",  # pasted into the port too
        f"postgresql://figrelay:{PASSWORD}@db/figrelay?sslmode={PASSWORD}",
        f"postgresql://figrelay:{PASSWORD}@db/figrelay?password=other",
        f"postgresql://figrelay@db/figrelay?password={PASSWORD}&password=again",
        f"postgresql://figrelay@db/figrelay?sslpassword={PASSWORD}&sslmode=bad",
        f"postgresql://figrelay:{PASSWORD}@ho st/figrelay",
        f"mysql://figrelay:{PASSWORD}@db/figrelay",
        f"figrelay:{PASSWORD}@db/figrelay",
    ],
)
def test_no_error_quotes_the_password(url: str) -> None:
    with pytest.raises(StorageURLError) as caught:
        parse_storage_url(url)
    for text in (str(caught.value), repr(caught.value), *caught.value.problems):
        assert not leaks(text), text


@settings(max_examples=300, deadline=None)
@given(
    before=st.text(alphabet=":/?#@&=%[],. aZ09", max_size=8),
    after=st.text(alphabet=":/?#@&=%[],. aZ09", max_size=8),
    tail=st.text(alphabet=":/?#@&=%[],. aZ09", max_size=8),
)
def test_no_error_quotes_the_password_whatever_surrounds_it(before: str, after: str, tail: str) -> None:
    url = f"postgresql://figrelay:{before}{PASSWORD}{after}@db.example.com/figrelay{tail}"
    try:
        target = parse_storage_url(url)
    except StorageURLError as exc:
        assert not leaks(str(exc)) and not leaks(repr(exc))
    else:
        for text in (repr(target), str(target), target.describe(), target.redacted(), repr(target.driver_arguments()["dsn"])):
            assert not leaks(text)


def test_a_target_never_shows_its_password() -> None:
    target = parse_storage_url(f"postgresql://figrelay:{PASSWORD}@db.example.com:5432/figrelay?sslmode=require&sslpassword=Key-Hush-Pass")
    for text in (repr(target), str(target), target.describe(), target.address()):
        assert not leaks(text), text
    assert str(target) == "postgresql://figrelay:***@db.example.com:5432/figrelay?sslmode=require&sslpassword=***"
    assert target.describe() == "db.example.com:5432, database 'figrelay', role 'figrelay'"
    assert set(target.secrets()) == {PASSWORD, "Key-Hush-Pass"}
    assert target.scrub(f"it said {PASSWORD}") == "it said ***"


def test_redacted_urls_parse_back_to_the_same_target() -> None:
    for url in (
        "postgresql://u@/d?host=/run/postgresql&port=6432&sslmode=disable",
        "postgresql://u@[2001:db8::1]:6432,db2:5433/d?target_session_attrs=read-write&connect_timeout=3",
        "postgresql:///d?application_name=relay-a",
    ):
        target = parse_storage_url(url)
        assert parse_storage_url(target.redacted()) == target, target.redacted()


def test_backoff_doubles_up_to_its_cap_with_jitter_between_half_and_all() -> None:
    backoff = Backoff(first=0.5, cap=8.0)
    assert [backoff.delay(n, 1.0) for n in range(1, 8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert [backoff.delay(n, 0.0) for n in range(1, 8)] == [0.25, 0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert backoff.delay(10_000, 0.5) == 6.0


# --- what a failed connection means ---------------------------------------------------------------

TCP = parse_storage_url("postgresql://figrelay@db.example.com:5432/figrelay")


@pytest.mark.parametrize(
    ("exc", "kind", "message"),
    [
        (socket.gaierror(socket.EAI_NONAME, "Name or service not known"), FailureKind.HOST_UNKNOWN, "the host name db.example.com cannot be resolved"),
        (TimeoutError(), FailureKind.TIMEOUT, "no answer within connect_timeout=10s"),
        (ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"), FailureKind.UNREACHABLE, "connection refused: is PostgreSQL running"),
        (OSError(errno.EHOSTUNREACH, "No route to host"), FailureKind.UNREACHABLE, "no route to the server from here"),
        (asyncpg.CannotConnectNowError("the database system is starting up"), FailureKind.STARTING, "not taking connections yet"),
        (asyncpg.TooManyConnectionsError("sorry, too many clients already"), FailureKind.BUSY, "raise its max_connections"),
        (
            asyncpg.InvalidAuthorizationSpecificationError('no pg_hba.conf entry for host "10.0.0.9", user "figrelay", database "figrelay", no encryption'),
            FailureKind.SSL,
            "accepts this role only over SSL",
        ),
        (
            asyncpg.InvalidAuthorizationSpecificationError('no pg_hba.conf entry for host "10.0.0.9", user "figrelay", database "figrelay", SSL encryption'),
            FailureKind.NOT_ALLOWED,
            "add a line for this role, database and address to pg_hba.conf",
        ),
        (asyncpg.InvalidAuthorizationSpecificationError('Peer authentication failed for user "figrelay"'), FailureKind.NOT_ALLOWED, "run figrelay as the OS user"),
        (ssl.SSLCertVerificationError(1, "certificate verify failed"), FailureKind.SSL, "sslrootcert=PATH"),
        (ConnectionError('PostgreSQL server at "db.example.com:5432" rejected SSL upgrade'), FailureKind.SSL, "the server does not offer SSL"),
    ],
)
def test_failures_are_named_with_the_fix(exc: BaseException, kind: FailureKind, message: str) -> None:
    failure = describe_failure(exc, TCP)
    assert failure.kind is kind
    assert message in failure.message
    assert failure.message.startswith("db.example.com:5432, database 'figrelay', role 'figrelay': ")


def test_a_missing_certificate_is_not_taken_for_a_missing_socket(tmp_path: Any) -> None:
    target = parse_storage_url(f"postgresql://db/figrelay?sslmode=require&sslcert={tmp_path}/client.crt")
    failure = describe_failure(FileNotFoundError(errno.ENOENT, "No such file or directory"), target)
    assert failure.kind is FailureKind.CLIENT_CONFIG and f"no such file: sslcert={tmp_path}/client.crt" in failure.message


class StopRetrying(Exception):
    """Raised by the injected sleep to end a retry loop that would otherwise go on for ever."""


class FakeTime:
    """The retry loop's sleep and clock: sleeping advances the clock, and ``stop_after`` sleeps
    end the loop; ``on_sleep`` runs inside a sleep (to start a server, for example)."""

    def __init__(self, stop_after: int | None = None, on_sleep: Callable[[int], Any] | None = None) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []
        self.stop_after = stop_after
        self.on_sleep = on_sleep

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        if self.on_sleep is not None:
            result = self.on_sleep(len(self.sleeps))
            if asyncio.iscoroutine(result):
                await result
        if self.stop_after is not None and len(self.sleeps) >= self.stop_after:
            raise StopRetrying


async def test_each_distinct_failure_is_logged_once_then_reminded(caplog: pytest.LogCaptureFixture) -> None:
    """The loop itself, with a fake connect: a change of failure is news, a repeat is not, a
    long run of the same one is reminded of, and the success after them is logged."""
    script: list[BaseException | None] = [ConnectionRefusedError(errno.ECONNREFUSED, "refused")] * 3 + [
        asyncpg.CannotConnectNowError("the database system is starting up")
    ] * 2 + [ConnectionRefusedError(errno.ECONNREFUSED, "refused")] * 6 + [None]

    async def connect(target: PostgresTarget) -> str:
        outcome = script.pop(0)
        if outcome is not None:
            raise outcome
        return "connection"

    time = FakeTime()
    attempts: list[ConnectAttempt] = []
    caplog.set_level(logging.DEBUG, LOGGER)
    result = await connect_with_retry(
        TCP, connect=connect, sleep=time.sleep, clock=time.clock, draw=lambda: 1.0, on_attempt=attempts.append,
        backoff=Backoff(first=1.0, cap=100.0), remind_every=50.0,
    )
    assert result == "connection"
    assert [a.failure.kind if a.failure else None for a in attempts] == [FailureKind.UNREACHABLE] * 3 + [FailureKind.STARTING] * 2 + [
        FailureKind.UNREACHABLE
    ] * 6 + [None]
    assert [a.new for a in attempts[:11]] == [True, False, False, True, False, True, False, False, False, False, False]
    assert time.sleeps == [1, 2, 4, 8, 16, 32, 64, 100, 100, 100, 100]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    # attempts 1, 4 and 6 are news (at t=0, 7 and 31); the same failure is reminded of at
    # attempts 8 to 11 (t=127, 227, 327, 427), each 50s or more after the last word about it
    assert len(warnings) == 7, warnings
    assert "connection refused" in warnings[0] and "next in 1.0s" in warnings[0]
    assert "not taking connections yet" in warnings[1]
    assert "still, after" in warnings[3]
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert infos == [f"connected to PostgreSQL at db.example.com:5432 after 11 failed attempts ({sum(time.sleeps):.1f}s)"]


async def test_max_attempts_gives_up_with_the_reason() -> None:
    async def refuse(target: PostgresTarget) -> None:
        raise ConnectionRefusedError(errno.ECONNREFUSED, "refused")

    time = FakeTime()
    with pytest.raises(DatabaseUnavailableError) as caught:
        await connect_with_retry(TCP, connect=refuse, sleep=time.sleep, clock=time.clock, max_attempts=3)
    assert caught.value.attempts == 3 and caught.value.failure.kind is FailureKind.UNREACHABLE
    assert str(caught.value).endswith("connection refused: is PostgreSQL running and listening there (listen_addresses, port)? (gave up after 3 attempts)")
    assert len(time.sleeps) == 2


async def test_a_programming_error_is_not_retried() -> None:
    async def broken(target: PostgresTarget) -> None:
        raise TypeError("a bug, not an outage")

    with pytest.raises(TypeError):
        await connect_with_retry(TCP, connect=broken, sleep=FakeTime().sleep)


# --- against the real server ----------------------------------------------------------------------


def socket_dir(url: str) -> str:
    return parse_storage_url(url).hosts[0]


async def test_connects(pg_database: str) -> None:
    target = parse_storage_url(pg_database)
    attempts: list[ConnectAttempt] = []
    conn = await connect_with_retry(target, on_attempt=attempts.append, sleep=FakeTime(stop_after=0).sleep)
    try:
        assert await conn.fetchval("SELECT current_user") == target.user
        assert await conn.fetchval("SELECT current_setting('application_name')") == "figrelay"
    finally:
        await conn.close()
    assert [(a.number, a.failure) for a in attempts] == [(1, None)]


async def test_connects_a_pool(pg_database: str) -> None:
    pool = await connect_with_retry(parse_storage_url(pg_database), connect=pool_opener(min_size=1, max_size=2))
    try:
        assert await pool.fetchval("SELECT 1") == 1
    finally:
        await pool.close()


async def test_a_wrong_password_is_named_once_and_retried(pg_database: str, caplog: pytest.LogCaptureFixture) -> None:
    good = parse_storage_url(pg_database)
    target = replace(good, password=SecretStr(PASSWORD))
    time = FakeTime(stop_after=4)
    attempts: list[ConnectAttempt] = []
    caplog.set_level(logging.DEBUG, LOGGER)
    with pytest.raises(StopRetrying):
        await connect_with_retry(target, sleep=time.sleep, clock=time.clock, draw=lambda: 1.0, on_attempt=attempts.append)
    assert len(attempts) == 4 and time.sleeps == [0.5, 1.0, 2.0, 4.0]
    assert {a.failure.kind for a in attempts if a.failure} == {FailureKind.PASSWORD}
    assert [a.new for a in attempts] == [True, False, False, False]
    message = attempts[0].failure.message if attempts[0].failure else ""
    assert f'password authentication failed for user "{good.user}"' in message
    assert "check the password in storage:" in message and f"ALTER ROLE {good.user} WITH LOGIN PASSWORD" in message
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "trying again" in warnings[0].getMessage()
    assert not leaks(caplog.text) and not any(leaks(a.failure.message) for a in attempts if a.failure)
    assert good.password is not None and good.password.get_secret_value() not in caplog.text


async def test_a_missing_database_is_named(pg_database: str) -> None:
    target = replace(parse_storage_url(pg_database), database="no_such_database")
    with pytest.raises(DatabaseUnavailableError) as caught:
        await connect_with_retry(target, max_attempts=1)
    failure = caught.value.failure
    assert failure.kind is FailureKind.DATABASE and failure.needs_operator
    assert 'database "no_such_database" does not exist: create it (CREATE DATABASE no_such_database OWNER test_' in failure.message


async def test_a_missing_role_is_named(postgres: str) -> None:
    # conftest's pg_hba.conf lets any role into "figrelay_trust" without a password, so the
    # server says which role is missing (behind a password it would not).
    target = parse_storage_url(f"postgresql://no_such_role@/figrelay_trust?host={urllib.parse.quote(socket_dir(postgres))}")
    with pytest.raises(DatabaseUnavailableError) as caught:
        await connect_with_retry(target, max_attempts=1)
    assert caught.value.failure.kind is FailureKind.ROLE
    assert 'role "no_such_role" does not exist: create it (CREATE ROLE no_such_role WITH LOGIN PASSWORD' in caught.value.failure.message


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.asynccontextmanager
async def tcp_forwarder(port: int, unix_socket: str) -> AsyncIterator[asyncio.Server]:
    """127.0.0.1:``port`` forwarded to the server's unix socket: the test server then "listens" on
    TCP (it listens on its socket only), from the moment this starts."""

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    tasks: set[asyncio.Task[Any]] = set()

    async def handle(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_unix_connection(unix_socket)
        for task in (asyncio.create_task(pipe(client_reader, server_writer)), asyncio.create_task(pipe(server_reader, client_writer))):
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    try:
        yield server
    finally:
        server.close()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()


async def test_a_server_that_comes_up_later_is_connected_to(pg_database: str, caplog: pytest.LogCaptureFixture) -> None:
    good = parse_storage_url(pg_database)
    port = free_port()
    target = replace(good, hosts=("127.0.0.1",), ports=(port,))
    async with contextlib.AsyncExitStack() as stack:

        async def come_up(sleeps: int) -> None:
            if sleeps == 2:  # the server comes up during the second wait
                await stack.enter_async_context(tcp_forwarder(port, f"{good.hosts[0]}/.s.PGSQL.5432"))

        time = FakeTime(stop_after=10, on_sleep=come_up)
        attempts: list[ConnectAttempt] = []
        caplog.set_level(logging.INFO, LOGGER)
        conn = await connect_with_retry(target, sleep=time.sleep, clock=time.clock, draw=lambda: 0.0, on_attempt=attempts.append)
        try:
            assert await conn.fetchval("SELECT current_database()") == good.database
        finally:
            await conn.close()
    assert [a.failure.kind if a.failure else None for a in attempts] == [FailureKind.UNREACHABLE, FailureKind.UNREACHABLE, None]
    assert time.sleeps == [0.25, 0.5]
    assert [r.getMessage() for r in caplog.records if r.name == LOGGER] == [
        f"cannot connect to PostgreSQL: 127.0.0.1:{port}, database '{good.database}', role '{good.user}': connection refused: "
        "is PostgreSQL running and listening there (listen_addresses, port)?; trying again (next in 0.2s)",
        f"connected to PostgreSQL at 127.0.0.1:{port} after 2 failed attempts (0.8s)",
    ]


async def test_ssl_required_by_the_url_but_not_offered_by_the_server(pg_database: str) -> None:
    good = parse_storage_url(pg_database)
    port = free_port()
    target = replace(good, hosts=("127.0.0.1",), ports=(port,), options=(("sslmode", "require"),))
    async with tcp_forwarder(port, f"{good.hosts[0]}/.s.PGSQL.5432"):
        with pytest.raises(DatabaseUnavailableError) as caught:
            await connect_with_retry(target, max_attempts=1)
    assert caught.value.failure.kind is FailureKind.SSL
    assert "the server does not offer SSL, and sslmode=require in storage: (the URL in the configuration) insists on it" in str(caught.value)


# --- the schema -----------------------------------------------------------------------------------


@pytest.fixture
async def conn(pg_database: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(pg_database)
    yield connection
    await connection.close()


async def schema_snapshot(conn: asyncpg.Connection) -> list[tuple[Any, ...]]:
    rows = await conn.fetch(
        "SELECT table_name, column_name, data_type, is_nullable, column_default FROM information_schema.columns"
        " WHERE table_schema = current_schema() ORDER BY table_name, ordinal_position"
    )
    indexes = await conn.fetch("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema() ORDER BY indexname")
    return [tuple(r) for r in rows] + [tuple(r) for r in indexes]


async def test_migrate_creates_the_schema_and_a_second_run_changes_nothing(conn: asyncpg.Connection) -> None:
    first = await migrate(conn)
    assert (first.found, first.now, first.applied) == (0, SCHEMA_VERSION, (1,))
    tables = {r["tablename"] for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")}
    assert tables == FIGRELAY_TABLES
    columns = {r["column_name"] for r in await conn.fetch("SELECT column_name FROM information_schema.columns WHERE table_name = 'deliveries'")}
    assert {"claimed_by", "claimed_until", "event_id", "seq"} <= columns
    lanes = {r["column_name"] for r in await conn.fetch("SELECT column_name FROM information_schema.columns WHERE table_name = 'lanes'")}
    assert {"client", "owner", "lease_until"} <= lanes
    meta = dict(await conn.fetch("SELECT key, value FROM meta"))
    assert meta["schema_version"] == str(SCHEMA_VERSION) and meta["store_id"] == first.store_id

    before = await schema_snapshot(conn)
    second = await migrate(conn)
    assert (second.found, second.applied, second.store_id) == (SCHEMA_VERSION, (), first.store_id)
    assert await schema_snapshot(conn) == before
    assert dict(await conn.fetch("SELECT key, value FROM meta")) == meta


async def test_two_replicas_migrating_at_once_take_turns(pg_database: str, conn: asyncpg.Connection) -> None:
    """Both wait on the migration lock (held here until both are seen waiting), then one creates
    the schema and the other finds it done."""
    replicas = [await asyncpg.connect(pg_database) for _ in range(2)]
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
        both = asyncio.gather(*(migrate(r) for r in replicas))
        waiting = 0

        async def count_waiting() -> None:
            nonlocal waiting
            waiting = await conn.fetchval(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND classid = $1 AND objid = $2",
                MIGRATION_LOCK_KEY >> 32, MIGRATION_LOCK_KEY & 0xFFFFFFFF,
            )

        for _ in range(1000):
            await count_waiting()
            if waiting == 2:
                break
            await asyncio.sleep(0.01)
        assert waiting == 2, "the two migrations did not both wait on the migration lock"
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
        results = await asyncio.wait_for(both, 30)
    finally:
        for r in replicas:
            await r.close()
    assert sorted(r.applied for r in results) == [(), (1,)]
    assert results[0].store_id == results[1].store_id
    assert await conn.fetchval("SELECT value FROM meta WHERE key = 'schema_version'") == str(SCHEMA_VERSION)


async def test_two_replicas_migrating_at_once_without_help(pg_database: str) -> None:
    replicas = [await asyncpg.connect(pg_database) for _ in range(2)]
    try:
        results = await asyncio.gather(*(migrate(r) for r in replicas))
    finally:
        for r in replicas:
            await r.close()
    assert sorted(r.applied for r in results) == [(), (1,)]


async def test_a_newer_schema_is_refused_and_left_alone(conn: asyncpg.Connection) -> None:
    await migrate(conn)
    await conn.execute("UPDATE meta SET value = $1 WHERE key = 'schema_version'", str(SCHEMA_VERSION + 1))
    before = await schema_snapshot(conn)
    with pytest.raises(SchemaTooNewError) as caught:
        await migrate(conn)
    database = await conn.fetchval("SELECT current_database()")
    assert str(caught.value).startswith(
        f"database {database!r} holds figrelay schema version {SCHEMA_VERSION + 1}, and this figrelay knows versions up to {SCHEMA_VERSION}: "
        "a newer figrelay has upgraded it; upgrade this replica"
    )
    assert await schema_snapshot(conn) == before


async def test_tables_that_are_not_figrelays_are_refused(conn: asyncpg.Connection) -> None:
    await conn.execute("CREATE TABLE deliveries (parcel text)")
    with pytest.raises(SchemaError, match="holds tables named deliveries but no figrelay meta table: they belong to something else"):
        await migrate(conn)
    assert await conn.fetchval("SELECT count(*) FROM pg_tables WHERE schemaname = current_schema()") == 1


async def test_a_role_that_may_not_create_tables_is_told_how_to_fix_it(postgres: str, pg_database: str) -> None:
    database = parse_storage_url(pg_database)
    role, password = f"reader_{uuid.uuid4().hex}", uuid.uuid4().hex
    admin = await asyncpg.connect(postgres)
    try:
        await admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
        reader = await asyncpg.connect(
            host=database.hosts[0], user=role, password=password, database=database.database
        )
        try:
            with pytest.raises(SchemaError) as caught:
                await migrate(reader)
            assert await reader.fetchval("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == 0
        finally:
            await reader.close()
    finally:
        await admin.execute(f"DROP ROLE IF EXISTS {role}")
        await admin.close()
    assert f"role {role!r} may not create figrelay's tables in schema 'public'" in str(caught.value)
    assert f"ALTER DATABASE {database.database} OWNER TO {role}" in str(caught.value)


def test_the_url_is_checked_without_loading_the_driver() -> None:
    """``figrelay check`` validates storage: on an installation without the postgresql extra."""
    import subprocess
    import sys

    probe = "import sys, figrelay.storage.postgresql as p; p.parse_storage_url('postgresql://db/figrelay'); print('asyncpg' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip() == "False"


async def test_connecting_without_the_driver_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "asyncpg", None)
    with pytest.raises(DriverMissingError, match=r"install figrelay with its postgresql extra \(pip install 'figrelay\[postgresql\]'\)"):
        await connect_with_retry(TCP)
