"""figrelay's log: control characters from event data are escaped (no forged lines, no terminal
escapes) in the text and JSON formats, repeated warnings are bounded, secrets are redacted; and
the real daemon logs a malformed request or a client that leaves mid-body as one WARNING line."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web

from conftest import event, wait_until
from figrelay.logs import FIELDS, EscapeControls, JsonLines, OncePerKey, RepeatLimiter, escape_controls, fields, make_handler, redactor
from figrelay.server import IntakeRunner, RefusalLog
from test_e2e import daemon_config

# --- escaping -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "escaped"),
    [
        ("a\nb", "a\\nb"),
        ("a\r\nb", "a\\r\\nb"),
        ("tab\there", "tab\\there"),
        ("\x1b[31mred\x1b[0m", "\\x1b[31mred\\x1b[0m"),
        ("nul\x00 bell\x07 del\x7f", "nul\\x00 bell\\x07 del\\x7f"),
        ("c1 \x85 \x9b", "c1 \\x85 \\x9b"),
        ("ls\u2028ps\u2029", "ls\\u2028ps\\u2029"),
        ("bidi \u202eevil\u2066", "bidi \\u202eevil\\u2066"),
        ("plain ü € 😀 \\n", "plain ü € 😀 \\n"),
    ],
)
def test_escape_controls(raw: str, escaped: str) -> None:
    assert escape_controls(raw) == escaped


def test_escape_controls_can_keep_newlines() -> None:
    assert escape_controls("line1\nline2\x1b\r", keep_newlines=True) == "line1\nline2\\x1b\\r"


def record(msg: Any, *args: Any, level: int = logging.INFO, name: str = "figrelay.intake", exc_info: Any = None) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, args or None, exc_info)


def escaped(rec: logging.LogRecord) -> str:
    assert EscapeControls().filter(rec)
    return rec.getMessage()


def test_arguments_are_escaped_and_the_template_keeps_its_lines() -> None:
    assert escaped(record("accepted %s for %s", "ClientStatusChanged", "Orders\n2025-01-01 ERROR forged\x1b[2J")) == (
        "accepted ClientStatusChanged for Orders\\n2025-01-01 ERROR forged\\x1b[2J"
    )
    assert escaped(record("Problems:\n  %s\n  %s", "a\nb", "c")) == "Problems:\n  a\\nb\n  c"


def test_numbers_repr_mappings_and_objects_still_format() -> None:
    assert escaped(record("%d items, %.1fs, %-6s|", 3, 1.25, "x\ty")) == "3 items, 1.2s, x\\ty  |"
    assert escaped(record("%r", "a\nb")) == repr("a\nb")
    assert escaped(record("%(who)s said %(what)s", {"who": "me\n", "what": 2})) == "me\\n said 2"
    assert escaped(record("failed: %s", ValueError("bad\nvalue"))) == "failed: bad\\nvalue"
    assert escaped(record(ValueError("msg object\x1b"))) == "msg object\\x1b"
    assert escaped(record("none %s %s", None, True)) == "none None True"


def test_exception_text_is_escaped_but_keeps_its_lines() -> None:
    try:
        raise ValueError("boom\x1b[31m")
    except ValueError:
        rec = record("failed", exc_info=sys.exc_info())
    EscapeControls().filter(rec)
    assert rec.exc_text is not None and "\x1b" not in rec.exc_text
    assert "ValueError: boom\\x1b[31m" in rec.exc_text and rec.exc_text.count("\n") >= 2


@pytest.fixture
def secrets() -> Iterator[None]:
    redactor.update(["hunter2-secret"])
    yield
    redactor.update([])


def emit(handler: logging.Handler, *records: logging.LogRecord) -> None:
    for rec in records:
        handler.handle(rec)


@pytest.mark.usefixtures("secrets")
def test_text_handler_escapes_and_redacts() -> None:
    out = io.StringIO()
    handler = make_handler("text", out)
    emit(
        handler,
        record("accepted %s for %s", "SettingValueChanged", "Orders\nFORGED LINE \x1b[31m"),
        record("delivery %s failed: %s", "d1", "HTTP 401: token hunter2-secret\r\n"),
        record("reload (%s) rejected. Problems:" + "\n  %s" * 2, "SIGHUP", "a.yaml:1: x", "a.yaml:2: y", level=logging.ERROR),
    )
    lines = out.getvalue().splitlines()
    assert len(lines) == 5  # three records; the reload error keeps its intended three lines
    assert lines[0].endswith("accepted SettingValueChanged for Orders\\nFORGED LINE \\x1b[31m")
    assert "\x1b" not in out.getvalue() and "\r" not in out.getvalue()
    assert lines[1].endswith("delivery d1 failed: HTTP 401: token ***\\r\\n")
    assert lines[3:] == ["  a.yaml:1: x", "  a.yaml:2: y"]


@pytest.mark.usefixtures("secrets")
def test_json_handler_escapes_and_redacts() -> None:
    out = io.StringIO()
    handler = make_handler("json", out)
    emit(handler, record("accepted %s for %s", "X", "a\u2028b\x85c\nd\x1b hunter2-secret"))
    text = out.getvalue()
    assert text.count("\n") == 1 and "\u2028" not in text and "\x85" not in text and "\x1b" not in text
    entry = json.loads(text)
    assert entry["message"] == "accepted X for a\\u2028b\\x85c\\nd\\x1b ***"


def test_json_lines_writes_raw_separators_as_escapes_even_without_filters() -> None:
    line = JsonLines().format(record("%s", "x\u2028y\x9b\u202e"))
    assert "\u2028" not in line and "\x9b" not in line and "\u202e" not in line
    assert json.loads(line)["message"] == "x\u2028y\x9b\u202e"


# --- bounded repeats ------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def passes(limiter: RepeatLimiter, rec: logging.LogRecord) -> bool:
    return limiter.filter(rec)


def test_a_repeated_warning_is_written_a_few_times_per_window_then_counted() -> None:
    clock = Clock()
    limiter = RepeatLimiter(window=10, burst=2, clock=clock)
    results = [passes(limiter, record("bad request from %s", f"10.0.0.{i}", level=logging.WARNING)) for i in range(50)]
    assert results == [True, True] + [False] * 48
    clock.now += 9.9
    assert not passes(limiter, record("bad request from %s", "10.0.0.99", level=logging.WARNING))
    clock.now += 0.1
    later = record("bad request from %s", "10.0.1.1", level=logging.WARNING)
    assert passes(limiter, later)
    assert later.getMessage() == "bad request from 10.0.1.1 [49 similar lines held back before this one]"
    again = record("bad request from %s", "10.0.1.2", level=logging.WARNING)
    assert passes(limiter, again) and again.getMessage() == "bad request from 10.0.1.2"


def test_kinds_are_counted_apart_and_info_always_passes() -> None:
    limiter = RepeatLimiter(window=10, burst=1, clock=Clock())
    assert passes(limiter, record("a %s", 1, level=logging.WARNING))
    assert passes(limiter, record("b %s", 1, level=logging.WARNING))
    assert passes(limiter, record("a %s", 1, level=logging.ERROR))
    assert passes(limiter, record("a %s", 1, level=logging.WARNING, name="figrelay.other"))
    assert not passes(limiter, record("a %s", 2, level=logging.WARNING))
    assert all(passes(limiter, record("delivery %s delivered", i)) for i in range(1000))
    assert all(passes(limiter, record("debug %s", i, level=logging.DEBUG)) for i in range(1000))


def test_asyncio_errors_with_changing_details_are_one_kind() -> None:
    # asyncio's default exception handler builds the whole text as the message: only its first
    # line (the context's message) stays the same from one failure to the next
    clock = Clock()
    limiter = RepeatLimiter(window=10, burst=1, clock=clock)
    storm = [
        record(f"socket.accept() out of system resource\nsocket: <TransportSocket fd={i}>\nOSError: [Errno 24] Too many open files", level=logging.ERROR, name="asyncio")
        for i in range(1000)
    ]
    assert sum(passes(limiter, r) for r in storm) == 1
    clock.now += 10
    last = record("socket.accept() out of system resource\nsocket: <TransportSocket fd=7>", level=logging.ERROR, name="asyncio")
    assert passes(limiter, last)
    assert last.getMessage().endswith("[999 similar lines held back before this one]")


def test_the_count_on_a_message_object_stays_escaped() -> None:
    clock = Clock()
    limiter = RepeatLimiter(window=10, burst=1, clock=clock)
    assert passes(limiter, record(ValueError("x"), level=logging.ERROR))
    assert not passes(limiter, record(ValueError("y"), level=logging.ERROR))
    clock.now += 10
    rec = record(ValueError("z\n"), level=logging.ERROR)
    assert passes(limiter, rec)
    assert escaped(rec) == "z\\n [1 similar line held back before this one]"


def test_the_limiter_remembers_a_bounded_number_of_kinds() -> None:
    limiter = RepeatLimiter(window=10, burst=1, clock=Clock())
    for i in range(5000):
        passes(limiter, record(f"unique {i}", level=logging.WARNING))
    assert len(limiter._kinds) <= RepeatLimiter._MAX_KINDS


def test_a_flood_through_the_handler_writes_a_bounded_number_of_lines() -> None:
    out = io.StringIO()
    handler = make_handler("text", out)
    emit(handler, *(record("refused a request from %s: %s", "10.0.0.1", f"bad {i}", level=logging.WARNING, name="figrelay.server") for i in range(10_000)))
    assert len(out.getvalue().splitlines()) <= 10


# --- the real daemon ------------------------------------------------------------------------------

SECRET = "log-test-secret-0123"
AUTH = {"Authorization": f"Secret {SECRET}"}


def log_config() -> str:
    clients = "  - name: sink\n    type: log\n  - name: sink-json\n    type: log\n    format: json"
    hooks = "  - {event: SettingValueChanged, client: sink}\n  - {event: SettingValueChanged, client: sink-json}"
    return daemon_config(clients, hooks, f"  secret: {SECRET}")


FORGED = "2030-01-01 00:00:00,000 ERROR   figrelay.intake: forged line"


async def test_event_data_cannot_forge_log_lines_or_reach_the_terminal_raw(daemon_factory: Any) -> None:
    d = await daemon_factory(log_config())
    name = f"Orders\n{FORGED}\r\x1b[31mRED\x1b[0m\u2028"
    status, payload = await d.post("SettingValueChanged", event("SettingValueChanged", ClientName=name, ChangeMessage="why\nnot"), AUTH)
    assert status == 200, payload
    await d.wait_for_log(r"\[sink\] SettingValueChanged")
    await d.wait_for_log(r"\[sink-json\] ")
    await wait_until(lambda: sum("delivered" in line for line in d.lines) >= 2, what="both deliveries logged")
    forged_lines = [line for line in d.lines if "forged line" in line]
    assert len(forged_lines) >= 3  # the intake's line and both log clients' lines
    for line in forged_lines:
        assert not line.startswith(FORGED), line
        assert "Orders\\n2030-01-01" in line, line
    assert "\x1b" not in d.log and "\r" not in d.log and "\u2028" not in d.log
    assert "\\x1b[31mRED" in d.log


async def test_malformed_request_and_mid_body_disconnect_are_one_warning_line_each(daemon_factory: Any) -> None:
    d = await daemon_factory(log_config())
    host, port = d.url.removeprefix("http://").split(":")

    # not HTTP/1.1: aiohttp answers for the application; the answer is still JSON
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"POST /SettingValueChanged HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n")
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert re.match(rb"HTTP/1\.[01] 400 ", head) and b"application/json" in head
    assert json.loads(body)["error"] == "bad_request" and "Content-Length" in json.loads(body)["message"]

    # a client that announces 100 bytes, sends 10 and leaves; "100 Continue" says its request
    # has reached the application, so the disconnect happens while the body is being read
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"POST /SettingValueChanged HTTP/1.1\r\nHost: x\r\nAuthorization: Secret " + SECRET.encode()
        + b"\r\nContent-Type: application/json\r\nContent-Length: 100\r\nExpect: 100-continue\r\n\r\n"
    )
    assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)).startswith(b"HTTP/1.1 100")
    writer.write(b'{"ClientNa')
    await writer.drain()
    writer.close()
    await writer.wait_closed()

    malformed = await d.wait_for_log(r"WARNING .*127\.0\.0\.1.*not valid HTTP")
    left = await d.wait_for_log(r"WARNING .*127\.0\.0\.1.*closed the connection")
    # a later request's lines come after anything the two could still have logged
    status, _ = await d.post("SettingValueChanged", event("SettingValueChanged", ClientName="After"), AUTH)
    assert status == 200
    await d.wait_for_log(r"accepted SettingValueChanged for After")
    assert sum(malformed.group(0) in line for line in d.lines) == 1
    assert sum(re.search(r"WARNING .*closed the connection", line) is not None for line in d.lines) == 1
    assert "Traceback" not in d.log and " ERROR " not in d.log
    assert "10 of 100 bytes" in left.string or "closed the connection during its request" in left.string


# --- aiohttp's own refusals, in process -----------------------------------------------------------


async def test_intake_runner_answers_json_and_logs_one_line(caplog: pytest.LogCaptureFixture) -> None:
    async def broken(request: web.Request) -> web.Response:
        raise RuntimeError("a bug")

    app = web.Application()
    app.router.add_post("/broken", broken)
    runner = IntakeRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def send(raw: bytes) -> tuple[bytes, dict[str, Any]]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(raw)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        length = int(re.search(rb"Content-Length: (\d+)", head).group(1))  # type: ignore[union-attr]
        body = json.loads(await reader.readexactly(length))
        writer.close()
        return head, body

    try:
        with caplog.at_level(logging.DEBUG):
            head, body = await send(b"GARBAGE / HTTP/1.1\r\n\r\n")
            assert b" 400 " in head and body["error"] == "bad_request" and "Invalid method" in body["message"]
            head, body = await send(b"POST /broken HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
            assert b" 500 " in head and body["error"] == "internal_error"
    finally:
        await runner.cleanup()
    server = [r for r in caplog.records if r.name in ("figrelay.server", "aiohttp.server")]
    assert [(r.name, r.levelname) for r in server] == [("figrelay.server", "WARNING"), ("figrelay.server", "ERROR")]
    assert server[0].exc_info is None and "not valid HTTP/1.1" in server[0].getMessage()
    assert server[1].exc_info is not None  # a bug keeps its traceback


# --- refused requests: one line per reason and peer per window --------------------------------------


def test_once_per_key_writes_one_line_per_key_and_window_and_counts_the_rest() -> None:
    clock = Clock()
    limit = OncePerKey(window=10, clock=clock)
    assert limit.admit((401, "10.0.0.1")) == 0
    assert [limit.admit((401, "10.0.0.1")) for _ in range(49)] == [None] * 49
    assert limit.admit((401, "10.0.0.2")) == 0 and limit.admit((404, "10.0.0.1")) == 0  # another peer, another reason
    assert limit.due() == [] and limit.next_due() == 10
    clock.now += 9.9
    assert limit.admit((401, "10.0.0.1")) is None
    clock.now += 0.1
    assert limit.due() == [((401, "10.0.0.1"), 50)]
    assert limit.due() == [] and limit.next_due() is None
    assert limit.admit((401, "10.0.0.1")) == 0  # a new window: written at once


def test_once_per_key_reports_the_count_on_the_next_line_when_no_summary_was_written() -> None:
    clock = Clock()
    limit = OncePerKey(window=10, clock=clock)
    assert limit.admit("k") == 0 and limit.admit("k") is None and limit.admit("k") is None
    clock.now += 10
    assert limit.admit("k") == 2 and limit.due() == []


def test_once_per_key_keeps_a_bounded_number_of_keys_and_still_counts() -> None:
    limit = OncePerKey(window=10, clock=Clock(), max_keys=3)
    for peer in range(5):
        assert limit.admit(peer) == 0 and limit.admit(peer) is None
    assert len(limit._keys) == 3
    assert limit.drain() == [(2, 1), (3, 1), (4, 1), (None, 2)]
    assert limit.drain() == []


def test_refusal_log_writes_a_line_per_reason_and_peer_then_the_count(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    refusals = RefusalLog(window=10, clock=clock)
    with caplog.at_level(logging.WARNING, logger="figrelay.server"):
        for _ in range(50):
            refusals.refused("POST /SettingValueChanged", "10.0.0.1", 401, "unauthorized", "wrong secret in 'Authorization: Secret <secret>'")
        refusals.refused("GET /nope", "10.0.0.1", 404, "not_found", "no route /nope")
        refusals.summarise()  # the window is not over: nothing to say yet
        clock.now += 10
        refusals.summarise()
        refusals.refused("POST /SettingValueChanged", "10.0.0.1", 401, "unauthorized", "wrong secret")
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", "refused POST /SettingValueChanged from 10.0.0.1: 401 unauthorized: wrong secret in 'Authorization: Secret <secret>'"),
        ("WARNING", "refused GET /nope from 10.0.0.1: 404 not_found: no route /nope"),
        ("WARNING", "refused 49 more requests from 10.0.0.1 with 401 unauthorized within 10s of the one logged, not logged one by one"),
        ("WARNING", "refused POST /SettingValueChanged from 10.0.0.1: 401 unauthorized: wrong secret"),
    ]


def test_refusal_log_writes_what_it_still_holds_when_closed(caplog: pytest.LogCaptureFixture) -> None:
    refusals = RefusalLog(window=10, clock=Clock())
    with caplog.at_level(logging.WARNING, logger="figrelay.server"):
        for _ in range(3):
            refusals.refused("a malformed request", "10.0.0.9", 400, "bad_request", "the request is not valid HTTP/1.1")
        refusals.close()
    assert caplog.records[-1].getMessage() == (
        "refused 2 more requests from 10.0.0.9 with 400 bad_request within 10s of the one logged, not logged one by one"
    )


async def test_refusal_log_writes_the_count_when_the_window_is_over_without_another_refusal(caplog: pytest.LogCaptureFixture) -> None:
    refusals = RefusalLog(window=0.05)
    with caplog.at_level(logging.WARNING, logger="figrelay.server"):
        for _ in range(5):
            refusals.refused("POST /SecurityEvent", "10.0.0.1", 413, "payload_too_large", "the body is larger than 1024 bytes")
        await wait_until(lambda: any("4 more requests" in r.getMessage() for r in caplog.records), what="the count of held-back refusals")
        refusals.close()
    assert len(caplog.records) == 2


def refusal_lines(d: Any, status: int) -> list[str]:
    return [line for line in d.lines if re.search(rf"WARNING +figrelay\.server: refused .* {status} ", line)]


async def test_a_wrong_secret_is_one_warning_naming_the_route_the_peer_and_the_reason(daemon_factory: Any) -> None:
    d = await daemon_factory(log_config())
    status, payload = await d.post("SettingValueChanged", event("SettingValueChanged"), {"Authorization": "Secret not-the-secret"})
    assert status == 401, payload
    line = (await d.wait_for_log(r"WARNING .*refused .* 401 ")).string
    assert "refused POST /SettingValueChanged from 127.0.0.1: 401 unauthorized: wrong secret" in line
    assert "not-the-secret" not in d.log
    assert len(refusal_lines(d, 401)) == 1


async def test_every_kind_of_refusal_is_logged(daemon_factory: Any) -> None:
    d = await daemon_factory(log_config().replace("intake:\n", "intake:\n  max_body_bytes: 1024\n"))
    sends = [
        ("POST", "/SettingValueChanged", b"{}", {}, 401, "unauthorized"),
        ("POST", "/SettingValueChanged", b"{", AUTH, 400, "invalid_event"),
        ("POST", "/Nope", b"{}", AUTH, 404, "not_found"),
        ("GET", "/SettingValueChanged", None, {}, 405, "method_not_allowed"),
        ("POST", "/SettingValueChanged", b"x" * 2000, AUTH, 413, "payload_too_large"),
        ("POST", "/SettingValueChanged", b"{}", {**AUTH, "Content-Type": "text/plain"}, 415, "unsupported_media_type"),
    ]
    for method, path, body, headers, status, error in sends:
        assert (await d.request(method, path, body, headers))[0] == status
        line = (await d.wait_for_log(rf"WARNING .*refused {method} {path} from 127\.0\.0\.1: {status} {error}: ")).string
        assert line.split(f"{status} {error}: ", 1)[1], f"the line gives no reason: {line}"


async def test_a_flood_of_refusals_from_one_peer_is_a_bounded_number_of_lines_and_a_count(daemon_factory: Any) -> None:
    d = await daemon_factory(log_config())
    started = time.monotonic()
    for _ in range(50):
        assert (await d.post("SettingValueChanged", event("SettingValueChanged"), {"Authorization": "Secret wrong"}))[0] == 401
    elapsed = time.monotonic() - started
    assert await d.stop() == 0  # held-back counts are written at the latest when the daemon stops
    lines = refusal_lines(d, 401)
    text = "\n".join(lines)
    one_by_one = [line for line in lines if "refused POST /SettingValueChanged from 127.0.0.1: 401 unauthorized: wrong secret" in line]
    noted = sum(int(m.group(1)) for line in one_by_one if (m := re.search(r"\((\d+) more like it from this peer", line)))
    summed = sum(int(m.group(1)) for line in lines if (m := re.search(r"refused (\d+) more requests? from 127\.0\.0\.1 with 401 unauthorized", line)))
    assert len(one_by_one) + noted + summed == 50, f"every refusal is logged or counted:\n{text}"
    assert summed > 0, f"a line says how many were not logged one by one:\n{text}"
    # at most one line and one count per 10 s window, however many requests
    assert len(lines) <= 2 * (1 + int(elapsed // 10)), text


# --- ids as fields --------------------------------------------------------------------------------


def with_extra(rec: logging.LogRecord, extra: dict[str, object]) -> logging.LogRecord:
    """As ``log.info(..., extra=extra)`` makes it."""
    rec.__dict__.update(extra)
    return rec


@pytest.mark.usefixtures("secrets")
def test_json_lines_carry_the_ids_a_log_call_passes_as_fields_of_their_own() -> None:
    out = io.StringIO()
    handler = make_handler("json", out)
    extra = fields(
        event_id="e1", delivery_id="d1", client="ops\nslack hunter2-secret", route="SettingValueChanged", attempt=2, outcome="retry"
    )
    emit(handler, with_extra(record("delivery %s: retry", "d1", name="figrelay.dispatch"), extra), record("no ids here"))
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["message"] == "delivery d1: retry"
    # escaped and redacted as the message is; numbers stay numbers
    assert {k: first[k] for k in FIELDS} == {
        "event_id": "e1", "delivery_id": "d1", "client": "ops\\nslack ***", "route": "SettingValueChanged", "attempt": 2, "outcome": "retry",
    }
    assert set(second) == {"time", "level", "logger", "message"}


def test_fields_leaves_out_what_is_none_and_logging_accepts_it(caplog: pytest.LogCaptureFixture) -> None:
    assert fields(delivery_id="d1", attempt=None, client="siem") == {"delivery_id": "d1", "client": "siem"}
    assert fields() == {}
    with caplog.at_level(logging.INFO, logger="figrelay.test"):
        logging.getLogger("figrelay.test").info("delivered", extra=fields(event_id="e1", delivery_id="d1", client="c", route="r", attempt=1, outcome="delivered"))
    line = JsonLines().format(caplog.records[-1])
    assert json.loads(line)["attempt"] == 1 and json.loads(line)["outcome"] == "delivered"


def test_text_lines_are_unchanged_by_fields() -> None:
    out = io.StringIO()
    handler = make_handler("text", out)
    emit(handler, with_extra(record("delivery %s: delivered", "d1"), fields(event_id="e1", delivery_id="d1", client="siem")))
    assert out.getvalue().rstrip("\n").endswith("figrelay.intake: delivery d1: delivered")
    assert "e1" not in out.getvalue() and "siem" not in out.getvalue()


def test_json_fields_without_the_filters_are_still_escaped_and_json() -> None:
    class Odd:
        def __str__(self) -> str:
            return "odd\x1b\u2028"

    line = JsonLines().format(with_extra(record("x"), {"event_id": Odd(), "client": "a\u202eb", "attempt": 3}))
    assert "\x1b" not in line and "\u2028" not in line and "\u202e" not in line
    entry = json.loads(line)
    assert entry["event_id"] == "odd\\x1b\\u2028" and entry["client"] == "a\\u202eb" and entry["attempt"] == 3
