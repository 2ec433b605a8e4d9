"""Slow, many and broken clients against the real daemon: header and body timeouts, the
connection limit, running out of file descriptors, and the limits' configuration."""

from __future__ import annotations

import asyncio
import configparser
import functools
import json
import logging
import os
import resource
import signal
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from pydantic import ValidationError

from conftest import REPO, Daemon, event, wait_until, write_config
from figrelay.config import IntakeSettings
from figrelay.connections import DESCRIPTOR_RESERVE, KEEPALIVE_TIMEOUT, RepeatedWarning, plan_descriptors

INFINITY = resource.RLIM_INFINITY


def config(intake: str = "") -> str:
    """A daemon that relays SettingValueChanged to its own log, with these intake keys."""
    return f"""listen: 127.0.0.1:0
state_dir: ./state
intake:
  forward_test_events: false
{intake}
clients:
  - {{name: console, type: log}}
hooks:
  - {{event: SettingValueChanged, client: console}}
"""


Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@asynccontextmanager
async def raw_connection(daemon: Daemon) -> AsyncIterator[Stream]:
    """A plain TCP connection to the daemon, for speaking broken HTTP."""
    url = urlsplit(daemon.url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    try:
        yield reader, writer
    finally:
        writer.close()


async def read_until_eof(reader: asyncio.StreamReader, timeout: float = 15.0) -> bytes:
    """Everything the daemon sends until it closes the connection (fails after ``timeout``)."""
    try:
        return await asyncio.wait_for(reader.read(), timeout)
    except TimeoutError:
        raise AssertionError(f"figrelay kept the connection open for more than {timeout}s") from None


async def read_response(reader: asyncio.StreamReader, timeout: float = 15.0) -> tuple[int, dict[str, str], Any]:
    """One HTTP response: status, headers (lower-case names) and the JSON body."""

    async def read() -> tuple[int, dict[str, str], Any]:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        status_line, *lines = head.strip().split("\r\n")
        headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        return int(status_line.split()[1]), headers, json.loads(body) if body else None

    try:
        return await asyncio.wait_for(read(), timeout)
    except TimeoutError:
        raise AssertionError(f"no response within {timeout}s") from None


def request_bytes(body: bytes, content_length: int | None = None, extra: str = "") -> bytes:
    head = (
        "POST /SettingValueChanged HTTP/1.1\r\nHost: figrelay\r\nContent-Type: application/json; charset=utf-8\r\n"
        f"Content-Length: {len(body) if content_length is None else content_length}\r\n{extra}\r\n"
    )
    return head.encode() + body


def parse_response(data: bytes) -> tuple[int, dict[str, str], Any]:
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, json.loads(body)


async def eventually_accepted(daemon: Daemon, timeout: float = 15.0) -> None:
    """Post an event until figrelay accepts it (a refused or dropped connection is retried)."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            status, payload = await asyncio.wait_for(daemon.post("SettingValueChanged", event("SettingValueChanged")), 5)
            if status == 200:
                return
            last = (status, payload)
        except (aiohttp.ClientError, TimeoutError) as exc:
            last = exc
        await asyncio.sleep(0.05)
    raise AssertionError(f"figrelay did not accept an event within {timeout}s; last answer: {last!r}")


def descriptors_of(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@contextmanager
def child_nofile(monkeypatch: pytest.MonkeyPatch, soft: int, hard: int) -> Iterator[None]:
    """Start the daemons created inside with RLIMIT_NOFILE (soft, hard), as a unit's
    LimitNOFILE= or a container's ulimit would."""
    original = asyncio.create_subprocess_exec

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    monkeypatch.setattr(asyncio, "create_subprocess_exec", functools.partial(original, preexec_fn=limit))
    try:
        yield
    finally:
        monkeypatch.setattr(asyncio, "create_subprocess_exec", original)


# --- the request head --------------------------------------------------------------------------


async def test_half_sent_headers_are_closed_while_a_good_client_is_served(daemon_factory):
    d = await daemon_factory(config("  header_timeout: 0.3s"))
    async with raw_connection(d) as (slow_reader, slow_writer), raw_connection(d) as (silent_reader, _):
        slow_writer.write(b"POST /SettingValueChanged HTTP/1.1\r\nHost: figrelay\r\nContent-Type: appl")
        await slow_writer.drain()
        status, payload = await d.post("SettingValueChanged", event("SettingValueChanged"))
        assert status == 200, payload

        status, headers, body = parse_response(await read_until_eof(slow_reader))
        assert status == 408 and body["error"] == "header_timeout", body
        assert "intake.header_timeout" in body["message"] and headers["connection"] == "close"
        # A connection that never starts a request is closed after the same time.
        status, _, body = parse_response(await read_until_eof(silent_reader))
        assert status == 408 and body["error"] == "header_timeout"

    await d.wait_for_log(r"WARNING .*did not arrive within 0.3s \(intake.header_timeout\)")
    assert "Traceback" not in d.log


async def test_an_idle_keepalive_connection_outlives_the_header_timeout(daemon_factory):
    d = await daemon_factory(config("  header_timeout: 0.3s"))
    body = event("SettingValueChanged")
    async with raw_connection(d) as (reader, writer):
        writer.write(request_bytes(body))
        status, headers, _ = await read_response(reader)
        assert status == 200 and headers.get("connection", "keep-alive").lower() != "close"
        # Idle from here on. A head timer that started later expiring proves this connection's
        # idle time has passed header_timeout too, without sleeping.
        async with raw_connection(d) as (late_reader, late_writer):
            late_writer.write(b"POST /SettingValueChanged HTTP/1.1\r\n")
            await read_until_eof(late_reader)
        writer.write(request_bytes(body))
        status, _, payload = await read_response(reader)
        assert status == 200, payload
    assert KEEPALIVE_TIMEOUT > 60  # above .NET HttpClient's pooled idle timeout


# --- the request body ---------------------------------------------------------------------------


async def test_a_content_length_longer_than_the_body_times_out_with_408(daemon_factory):
    d = await daemon_factory(config("  body_timeout: 0.3s"))
    body = event("SettingValueChanged")
    async with raw_connection(d) as (reader, writer):
        writer.write(request_bytes(body, content_length=len(body) + 100))
        status, headers, payload = await read_response(reader)
    assert status == 408, payload
    assert payload["error"] == "body_timeout" and "intake.body_timeout" in payload["message"]
    assert headers["connection"] == "close"
    await d.wait_for_log(r"WARNING .*intake.body_timeout")
    assert "Traceback" not in d.log
    # nothing half-read was stored
    status, payload = await d.post("SettingValueChanged", body)
    assert status == 200, payload


async def test_a_client_leaving_mid_body_leaves_no_traceback(daemon_factory):
    d = await daemon_factory(config())
    body = event("SettingValueChanged")
    mark = len(d.lines)
    async with raw_connection(d) as (reader, writer):
        # Expect: 100-continue makes figrelay say when the handler is about to read the body.
        writer.write(request_bytes(b"", content_length=len(body), extra="Expect: 100-continue\r\n"))
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 15)).startswith(b"HTTP/1.1 100")
        writer.write(body[:10])
        await writer.drain()
    await d.wait_for_log(r"closed the connection after 10 of \d+ bytes|Traceback|Error handling request", start=mark)
    assert "Traceback" not in d.log and "ERROR" not in "\n".join(d.lines[mark:])
    status, payload = await d.post("SettingValueChanged", body)
    assert status == 200, payload


# --- the number of connections ------------------------------------------------------------------


async def test_connections_beyond_max_connections_get_a_503_until_some_close(daemon_factory):
    d = await daemon_factory(config("  max_connections: 3\n  header_timeout: 60s"))
    held = [await asyncio.open_connection(urlsplit(d.url).hostname, urlsplit(d.url).port) for _ in range(3)]
    try:
        async with raw_connection(d) as (reader, _):
            status, headers, body = parse_response(await read_until_eof(reader))
        assert status == 503, body
        assert body["error"] == "too_many_connections" and "intake.max_connections" in body["message"]
        assert headers["retry-after"].isdigit() and headers["connection"] == "close"

        # The held connections are served normally.
        first_reader, first_writer = held[0]
        first_writer.write(request_bytes(event("SettingValueChanged")))
        status, _, payload = await read_response(first_reader)
        assert status == 200, payload

        for _, writer in held[:2]:
            writer.close()
        await eventually_accepted(d)
    finally:
        for _, writer in held:
            writer.close()
    await d.wait_for_log(r"WARNING .*refused a connection: 3 connections are open")
    assert "Traceback" not in d.log


async def test_max_connections_follows_a_reload(daemon_factory):
    d = await daemon_factory(config("  max_connections: 1000\n  header_timeout: 60s"))
    async with raw_connection(d) as (reader, writer):
        writer.write(request_bytes(event("SettingValueChanged")))
        status, _, payload = await read_response(reader)  # surely counted now
        assert status == 200, payload
        mark = len(d.lines)
        write_config(d.config_path, config("  max_connections: 1\n  header_timeout: 60s"))
        d.signal(signal.SIGHUP)
        await d.wait_for_log(r"reload \(.*\) applied", start=mark)
        async with raw_connection(d) as (refused, _):
            status, _, body = parse_response(await read_until_eof(refused))
        assert status == 503 and body["error"] == "too_many_connections"


async def test_running_out_of_file_descriptors_keeps_the_log_small(daemon_factory):
    """The accept loop hitting EMFILE (descriptors taken by something other than intake
    connections, simulated by lowering the running daemon's limit) pauses and says so once."""
    d = await daemon_factory(config("  header_timeout: 60s"))
    assert d.proc is not None
    pid = d.proc.pid
    _, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    mark = len(d.lines)
    url = urlsplit(d.url)
    clients: list[Stream] = []
    try:
        # a few to spare for the daemon's own lazily opened descriptors and a few connections
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (descriptors_of(pid) + 12, hard))
        for _ in range(40):  # they wait in the listen backlog once the daemon runs out
            clients.append(await asyncio.open_connection(url.hostname, url.port))
        await d.wait_for_log(r"Too many open files", start=mark)
        for _, writer in clients:
            writer.close()
        clients.clear()
        await eventually_accepted(d)
    finally:
        for _, writer in clients:
            writer.close()
    lines = d.lines[mark:]
    assert len(lines) < 40, f"{len(lines)} log lines:\n" + "\n".join(lines[:60])
    assert sum("Too many open files" in line for line in lines) <= 3
    assert not any("Traceback" in line for line in lines)


async def test_the_open_file_limit_is_raised_for_max_connections(daemon_factory, monkeypatch):
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != INFINITY and hard < 2000 + DESCRIPTOR_RESERVE + 100:
        pytest.skip(f"the hard open-file limit here ({hard}) is too low to raise the soft limit for the test")
    d = await daemon_factory(config("  max_connections: 2000"), start=False)
    with child_nofile(monkeypatch, 256, hard):
        await d.start()
    assert d.proc is not None
    soft, _ = resource.prlimit(d.proc.pid, resource.RLIMIT_NOFILE)
    assert soft >= 2000 + DESCRIPTOR_RESERVE
    await d.wait_for_log(r"raised the open-file limit from 256 to \d+")
    assert "LimitNOFILE" not in d.log


async def test_a_low_hard_limit_lowers_max_connections_and_says_what_to_set(daemon_factory, monkeypatch):
    d = await daemon_factory(config("  max_connections: 1000"), start=False)
    with child_nofile(monkeypatch, 512, 512):
        await d.start()
    match = await d.wait_for_log(r"WARNING .*the open-file limit is 512 .*accepts at most (\d+) connections.*LimitNOFILE=(\d+)")
    assert 0 < int(match.group(1)) < 512 and int(match.group(2)) >= 1000 + DESCRIPTOR_RESERVE
    status, payload = await d.post("SettingValueChanged", event("SettingValueChanged"))
    assert status == 200, payload


# --- bounded warnings ---------------------------------------------------------------------------


async def test_a_repeated_warning_is_logged_once_then_summarised(caplog):
    log = logging.getLogger("figrelay.test.repeated")
    warn = RepeatedWarning(log, every=0.05)
    with caplog.at_level(logging.WARNING, logger=log.name):
        for n in range(1000):
            warn(f"refused connection {n}")
        assert [r.getMessage() for r in caplog.records] == ["refused connection 0"]
        await wait_until(lambda: len(caplog.records) >= 2, what="the summary line")
        assert caplog.records[1].getMessage() == "refused connection 999 (999 more like this in the last 0.05s)"
        warn.close()
    assert len(caplog.records) == 2


# --- configuration and the unit -----------------------------------------------------------------


def test_intake_limits_have_safe_defaults_and_are_validated():
    intake = IntakeSettings()
    assert intake.header_timeout == 10 and intake.body_timeout == 30 and intake.max_connections == 1000
    assert IntakeSettings(header_timeout="500ms", body_timeout="1m").body_timeout == 60
    for bad in ({"header_timeout": 0}, {"body_timeout": "2h"}, {"max_connections": 0}, {"max_connections": 10**7}):
        with pytest.raises(ValidationError):
            IntakeSettings(**bad)


@pytest.mark.parametrize(
    ("wanted", "soft", "hard", "in_use", "expect_soft", "expect_connections"),
    [
        (1000, 1024, 524288, 30, 30 + DESCRIPTOR_RESERVE + 1000, 1000),  # raised toward the hard limit
        (1000, 65536, 65536, 30, 65536, 1000),  # already enough: left alone
        (1000, 1024, INFINITY, 30, 30 + DESCRIPTOR_RESERVE + 1000, 1000),
        (1000, 1024, 1024, 30, 1024, 1024 - 30 - DESCRIPTOR_RESERVE),  # capped by the hard limit
        (1000, 256, 256, 30, 256, (256 - 30) // 2),  # not even the reserve fits: share the rest
        (10, INFINITY, INFINITY, 30, INFINITY, 10),
    ],
)
def test_descriptor_plan(wanted, soft, hard, in_use, expect_soft, expect_connections):
    plan = plan_descriptors(wanted, soft, hard, in_use)
    assert (plan.soft_limit, plan.max_connections) == (expect_soft, expect_connections)
    assert plan.short == (expect_connections < wanted)


def test_the_unit_gives_figrelay_enough_file_descriptors():
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string((REPO / "systemd" / "figrelay.service").read_text())
    limit = int(unit["Service"]["LimitNOFILE"])
    assert limit >= IntakeSettings().max_connections + DESCRIPTOR_RESERVE + 100

