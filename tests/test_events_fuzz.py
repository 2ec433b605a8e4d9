"""Whatever a client sends, parsing ends in an event or an EventError (a 400), never a crash (a
500), and an accepted event always serialises to strict JSON (UTF-8, finite numbers, no
surrogates) that parses back to itself."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from figrelay.events import EVENT_TYPES, MAX_DEPTH, EventError, parse_event_body

KEYS = sorted({wf.wire for cls in EVENT_TYPES.values() for wf in cls._wire_fields} | {"Status", "Name", "Message", "Components"})

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=30)
    | st.sampled_from(["0", "1", "Disconnected", "healthy", "²", "2025-06-01T12:34:56.1234567Z", "0001-01-01T00:00:00+01:00", "\ud800", "1" * 5000]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), inner, max_size=6),
    max_leaves=20,
)
bodies = st.dictionaries(st.sampled_from(KEYS) | st.sampled_from([k.lower() for k in KEYS]), json_values, max_size=12)

# JSON text pieces that Python's json module reads but that are not JSON or not relayable
hostile_tokens = st.sampled_from(
    [b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e400", b"1" * 4301, b"-" + b"2" * 6000, b'"\\ud800"', b'"\\udc00x"', b'"\\ud83d\\ude00"', b'"\\u0000"', b"1e-400"]
)


@st.composite
def hostile_texts(draw: st.DrawFn) -> bytes:
    """A Fig body with one extra field whose value is nested (maybe too deep) around a hostile token."""
    route = draw(st.sampled_from(sorted(EVENT_TYPES)))
    depth = draw(st.sampled_from([0, 1, 3, MAX_DEPTH - 2, MAX_DEPTH - 1, MAX_DEPTH, 200, 1200]))
    opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"k":', b"}"), (b'{"\\ud800":', b"}")]))
    token = draw(hostile_tokens)
    base = b'{"ClientName":"C\\udbff","UpdatedSettings":[],"ConnectionEvent":0,"RunSessions":1,"RunSessionsEvent":0,"Status":0,"Success":true'
    return route.encode() + b"\n" + base + b',"X":' + opener * depth + token + closer * depth + b"}"


def _no_constants(token: str) -> None:
    raise AssertionError(f"{token} is not JSON")


def _check(route: str, raw: bytes) -> None:
    try:
        event = parse_event_body(route, raw)
    except EventError:
        return
    out = event.to_json()
    json.loads(out.decode("utf-8"), parse_constant=_no_constants)  # strict UTF-8, no NaN or Infinity
    assert parse_event_body(route, out).to_json() == out  # a relayed body parses back to itself


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(sorted(EVENT_TYPES)), bodies)
def test_structured_bodies_parse_or_refuse_cleanly(route: str, body: dict) -> None:
    _check(route, json.dumps(body).encode())


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(sorted(EVENT_TYPES)), st.binary(max_size=200))
def test_arbitrary_bytes_parse_or_refuse_cleanly(route: str, raw: bytes) -> None:
    _check(route, raw)


@settings(max_examples=150, deadline=None)
@given(hostile_texts())
def test_hostile_json_parses_or_refuses_cleanly(text: bytes) -> None:
    route, raw = text.split(b"\n", 1)
    _check(route.decode(), raw)
