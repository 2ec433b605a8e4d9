"""Hostile requests against a live daemon, over a raw socket: whatever the bytes of the request
line, headers and body, every answer is a 2xx or a 4xx with a JSON body (never a 500, never a
hang), everything relayed is strict JSON, and the daemon keeps answering.

The requests are built by hand so that nothing a client library would tidy up (non-UTF-8 header
bytes, a wrong Content-Length, a body of a thousand brackets) is lost on the way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import FAST_DELIVERY, Daemon, event, fixture_bodies, route_of, wait_until, write_config
from figrelay.auth import fig_prehash
from figrelay.events import MAX_DEPTH, ROUTES
from figrelay.testing import Receiver, http_receiver

SECRET = "fuzz-9b1d4c55-8e0f-4a1e-b6a3-2f3f0c7d1e42"
ANSWER_DEADLINE = 20.0  # a request that gets no answer at all in this time hangs: a failure

BODIES: dict[str, list[bytes]] = {}
for _name, _body in fixture_bodies().items():
    BODIES.setdefault(route_of(_name), []).append(_body)


# --- what a hostile client sends --------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**80), 2**80) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def nested(depth: int, inner: bytes, opener: bytes = b"[", closer: bytes = b"]") -> bytes:
    return opener * depth + inner + closer * depth


hostile_values = st.one_of(
    st.sampled_from([
        b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-2.5e400", b"1e-400",
        b"1" * 4300, b"1" * 4301, b"-" + b"9" * 20_000,
        b'"\\ud800"', b'"x\\udfff\\ud800y"', b'"\\ud83d\\ude00"', b'{"\\udc00":"\\ud800"}',
        b'"a\\nb\\r\\u001b[31m\\u0000\\u2028\\u0085"', b'"' + b"\\u0041" * 1000 + b'"',
    ]),
    st.builds(nested, st.sampled_from([2, MAX_DEPTH - 2, MAX_DEPTH - 1, MAX_DEPTH, 200, 999, 1000, 5000]), st.sampled_from([b"1", b"NaN", b'"\\ud800"'])),
    st.builds(lambda d, v: nested(d, v, b'{"k":', b"}"), st.sampled_from([MAX_DEPTH - 1, MAX_DEPTH, 1500]), st.sampled_from([b"0", b"1e999"])),
    json_values.map(lambda v: json.dumps(v).encode()),
)

hostile_names = st.sampled_from([
    b'"\\ud800"', b'"Orders\\udbffApi"', b'"a\\nb\\u001b[31mc"', b'"\\u0000"', b'""', b'"' + b"x" * 5000 + b'"', b"1e999", b"NaN", b"null", b"[]",
])


@st.composite
def bodies(draw: st.DrawFn, route: str) -> bytes:
    fig = draw(st.sampled_from(BODIES.get(route, BODIES["SecurityEvent"])))
    kind = draw(st.sampled_from(["fig", "extra", "extra", "name", "json", "bytes"]))
    if kind == "fig":
        return fig
    if kind == "extra":
        return fig[:-1] + b',"X":' + draw(hostile_values) + b"}"
    if kind == "name" and b'"ClientName":' in fig:
        return re.sub(rb'"ClientName":"[^"]*"', lambda _: b'"ClientName":' + draw(hostile_names), fig, count=1)
    if kind == "json":
        return json.dumps(draw(json_values)).encode()
    return draw(st.binary(max_size=300))


def header_bytes(max_size: int = 60) -> st.SearchStrategy[bytes]:
    """Any bytes but CR and LF, which would end the header (covered by the raw-request strategy)."""
    return st.binary(max_size=max_size).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))


authorizations = st.one_of(
    st.just(None),
    st.just(b"Secret " + SECRET.encode()),
    st.just(b"  sEcReT\t" + SECRET.encode() + b"  "),
    st.sampled_from([b"Bearer " + SECRET.encode(), b"a b c " + SECRET.encode(), b"Secret", b"Secret " + SECRET.encode() + b" x"]),
    header_bytes().map(lambda b: b"Secret " + b),
    header_bytes(),
)
content_types = st.one_of(
    st.sampled_from([None, b"application/json", b"application/json; charset=utf-8", b"text/plain", b"application/fig+json", b"", b";"]),
    header_bytes(30),
)
length_styles = st.sampled_from(["exact", "exact", "exact", "missing", "short", "long", "garbage", "duplicate", "chunked", "chunked+length"])


@dataclass
class Exchange:
    request: bytes
    truncated: bool
    """The body is shorter than announced, so the socket is half-closed and no answer is due."""


@st.composite
def exchanges(draw: st.DrawFn) -> Exchange:
    route = draw(st.sampled_from(ROUTES))
    body = draw(bodies(route))
    # Half the requests are framed as Fig frames them, so that hostile bodies get past the
    # secret and the headers and reach parsing, storage and relaying; the rest are anything.
    framed = draw(st.booleans())
    method = b"POST" if framed else draw(st.sampled_from([b"POST"] * 6 + [b"GET", b"PUT"]))
    path = draw(st.sampled_from([b"/", b"/fig/", b"/x/y/"])) + route.encode()
    version = b"HTTP/1.1" if framed else draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0"]))
    headers = [b"Host: 127.0.0.1"]
    auth = b"Secret " + SECRET.encode() if framed else draw(authorizations)
    if auth is not None:
        headers.append(b"Authorization: " + auth)
    content_type = b"application/json; charset=utf-8" if framed else draw(content_types)
    if content_type is not None:
        headers.append(b"Content-Type: " + content_type)
    style = draw(st.sampled_from(["exact", "chunked"]) if framed else length_styles)
    truncated = False
    if style == "exact":
        headers.append(b"Content-Length: %d" % len(body))
    elif style == "short":
        headers.append(b"Content-Length: %d" % max(0, len(body) - 1))
    elif style == "long":
        headers.append(b"Content-Length: %d" % (len(body) + 5))
        truncated = True
    elif style == "garbage":
        headers.append(b"Content-Length: " + draw(st.sampled_from([b"abc", b"-1", b"1,2", b"+5", b" 7 ", b"99999999999999999999999", b"0x10", b""])))
        truncated = True  # some of these are read as a length longer than the body
    elif style == "duplicate":
        headers += [b"Content-Length: %d" % len(body), b"Content-Length: %d" % draw(st.sampled_from([len(body), len(body) + 1]))]
        truncated = True
    elif style.startswith("chunked"):
        headers.append(b"Transfer-Encoding: chunked")
        if style == "chunked+length":
            headers.append(b"Content-Length: %d" % len(body))
        body = (b"%x\r\n" % len(body) + body + b"\r\n" if body else b"") + b"0\r\n\r\n"
    headers.append(b"Connection: close")
    return Exchange(method + b" " + path + b" " + version + b"\r\n" + b"\r\n".join(headers) + b"\r\n\r\n" + body, truncated)


# --- what the daemon answers --------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: Any


async def exchange(port: int, sent: Exchange) -> Answer | None:
    """Send one raw request and read the first answer, by its Content-Length (the connection may
    stay open a while after it). None when a truncated request gets no answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(sent.request)
        if sent.truncated:
            writer.write_eof()  # the rest of the body never comes
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionResetError):
            assert sent.truncated, "a complete request got no answer"
            return None
        status_line, *lines = head.decode("latin-1").split("\r\n")
        m = re.fullmatch(r"HTTP/1\.[01] (\d{3}) .*", status_line)
        assert m, status_line
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines if line)}
        assert "content-length" in headers, head
        raw = await reader.readexactly(int(headers["content-length"]))
        return Answer(int(m.group(1)), headers, raw)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def no_constants(token: str) -> None:
    raise ValueError(f"{token} is not JSON")


def strict_json(raw: bytes) -> Any:
    """Parse as RFC 8259 JSON only: strict UTF-8 (no surrogates), no NaN or Infinity."""
    return json.loads(raw.decode("utf-8"), parse_constant=no_constants)


def check_answer(sent: Exchange, answer: Answer | None) -> None:
    if answer is None:
        return
    assert 200 <= answer.status < 300 or 400 <= answer.status < 500, (answer.status, answer.body, sent.request[:300])
    assert answer.headers.get("content-type", "").startswith("application/json"), (answer.headers, answer.body)
    payload = strict_json(answer.body)
    assert isinstance(payload, dict)
    if answer.status >= 400:
        assert isinstance(payload.get("error"), str) and isinstance(payload.get("message"), str), payload
    answer.body = payload


# --- the live daemon --------------------------------------------------------------------------------


@dataclass
class Harness:
    daemon: Daemon
    receiver: Receiver
    port: int
    stack: contextlib.AsyncExitStack
    relayed: int = 0
    """Deliveries to the receiver that accepted answers announced."""
    statuses: dict[int, int] = field(default_factory=dict)


def fuzz_config(receiver: Receiver) -> str:
    hashed = bcrypt.hashpw(fig_prehash(SECRET), bcrypt.gensalt(4)).decode()  # cheap: many wrong secrets get checked
    hooks = "\n".join(f"  - {{event: {r}, client: sink}}\n  - {{event: {r}, client: console}}" for r in ROUTES)
    return f"""listen: 127.0.0.1:0
state_dir: ./state
intake:
  hashed_secret: "{hashed}"
{FAST_DELIVERY}
clients:
  - name: sink
    type: http
    base_uri: {receiver.url}/fig/
  - name: console
    type: log
hooks:
{hooks}
"""


async def start(tmp_path: Path) -> Harness:
    stack = contextlib.AsyncExitStack()
    receiver = await stack.enter_async_context(http_receiver())
    daemon = Daemon(write_config(tmp_path / "figrelay.yaml", fuzz_config(receiver)))
    stack.push_async_callback(daemon.close)
    await daemon.start()
    return Harness(daemon, receiver, int(daemon.url.rsplit(":", 1)[1]), stack)


async def probe(h: Harness, sent: Exchange) -> None:
    answer = await asyncio.wait_for(exchange(h.port, sent), ANSWER_DEADLINE)
    check_answer(sent, answer)
    if answer is not None:
        h.statuses[answer.status] = h.statuses.get(answer.status, 0) + 1
        if answer.status == 200 and answer.body.get("status") == "accepted":
            h.relayed += sum(1 for d in answer.body["deliveries"] if d["client"] == "sink")


async def finish(h: Harness) -> None:
    await wait_until(lambda: len(h.receiver.requests) >= h.relayed, timeout=30, what=f"{h.relayed} relayed events")
    assert len(h.receiver.requests) == h.relayed
    for request in h.receiver.requests:
        assert isinstance(strict_json(request.body), dict), request.body[:200]
    assert h.daemon.proc is not None and h.daemon.proc.returncode is None, "the daemon died"
    status, payload, _ = await h.daemon.request("GET", "/healthz")
    assert status == 200 and payload == {"status": "ok"}
    # and it still takes a plain, correct event
    status, payload = await h.daemon.post("SecurityEvent", event("SecurityEvent"), {"Authorization": f"Secret {SECRET}"})
    assert status == 200, payload
    assert "Traceback" not in h.daemon.log and "\x1b" not in h.daemon.log


@pytest.fixture
def runner() -> Iterator[asyncio.Runner]:
    with asyncio.Runner() as r:
        yield r


def test_hostile_requests_get_json_4xx_and_never_break_the_daemon(tmp_path: Path, runner: asyncio.Runner) -> None:
    # Hypothesis drives the examples synchronously; the daemon and the receiver live on one event
    # loop that runs whenever an example is sent.
    h = runner.run(start(tmp_path))
    try:

        @settings(max_examples=150, derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck))
        @given(exchanges())
        def send(sent: Exchange) -> None:
            runner.run(probe(h, sent))

        send()
        runner.run(finish(h))
        # the examples reached every kind of answer, so the run proves something
        assert 200 in h.statuses and 400 in h.statuses and 401 in h.statuses, h.statuses
        assert h.relayed >= 5, h.statuses
    finally:
        runner.run(h.stack.aclose())


# --- the cases the issue names, each once, as regression tests ----------------------------------------

NAMED_BODIES = [
    (nested(1000, b"1"), None, "nested more than 64"),
    (nested(65, b"1", b'{"k":', b"}"), "X" + ".k" * 63, "nested more than 64"),
    (b"1" * 4301, "X", "4301 digits"),
    (b"[1e999]", "X[0]", "too large to relay"),
    (b'{"y":NaN}', "X.y", "NaN is not valid JSON"),
    (b"Infinity", "X", "Infinity is not valid JSON"),
]


def raw_post(route: str, body: bytes, authorization: bytes = b"Secret " + SECRET.encode()) -> Exchange:
    return Exchange(
        b"POST /" + route.encode() + b" HTTP/1.1\r\nHost: x\r\nAuthorization: " + authorization
        + b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body,
        False,
    )


async def named_cases(h: Harness) -> None:
    for value, field_, words in NAMED_BODIES:
        sent = raw_post("SettingValueChanged", b'{"ClientName":"A","UpdatedSettings":[],"X":' + value + b"}")
        answer = await exchange(h.port, sent)
        assert answer is not None
        check_answer(sent, answer)
        assert answer.status == 400 and answer.body["error"] == "invalid_event", answer.body
        got = answer.body["field"]
        assert got == field_ or (got.endswith("…") and field_.startswith(got[:-1])), got  # a long path is clipped
        assert words in answer.body["message"], answer.body

    # bytes that are not UTF-8 in the Authorization header: a 401 that says the expected form
    answer = await exchange(h.port, raw_post("SecurityEvent", event("SecurityEvent"), b"Secret \xff\xfe\x80"))
    assert answer is not None and answer.status == 401
    check_answer(raw_post("SecurityEvent", b""), answer)
    assert "Secret <secret>" in answer.body["message"]

    # a header aiohttp cannot parse: a JSON 400, and the credentials it quotes are not repeated
    answer = await exchange(h.port, raw_post("SecurityEvent", b"{}", b"Secret top-secret-\x00-value"))
    assert answer is not None and answer.status == 400
    check_answer(raw_post("SecurityEvent", b""), answer)
    assert answer.body["error"] == "bad_request" and "Authorization: ***" in answer.body["message"], answer.body
    await h.daemon.wait_for_log(r"WARNING .*not valid HTTP.*Authorization: \*\*\*")
    assert "top-secret" not in h.daemon.log and "top-secret" not in answer.body["message"]

    # a lone surrogate is U+FFFD for every event type, stored (sessions too) and relayed alike
    for route in ("ClientStatusChanged", "SettingValueChanged"):
        body = event(route, ClientName="Orders-marker-Api").replace(b"-marker-", b"\\ud800")  # the JSON escape
        answer = await exchange(h.port, raw_post(route, body))
        assert answer is not None and answer.status == 200, answer.body
    await wait_until(lambda: len(h.receiver.requests) == 2, what="both events relayed")
    assert [strict_json(r.body)["ClientName"] for r in h.receiver.requests] == ["Orders\ufffdApi"] * 2


def test_the_cases_the_issue_names(tmp_path: Path, runner: asyncio.Runner) -> None:
    h = runner.run(start(tmp_path))
    try:
        runner.run(named_cases(h))
    finally:
        runner.run(h.stack.aclose())
