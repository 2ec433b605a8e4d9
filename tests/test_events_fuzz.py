"""Whatever a client sends, parsing ends in an event or an EventError (a 400), never a crash (a
500), and an accepted event always serialises."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from figrelay.events import EVENT_TYPES, EventError, parse_event_body

KEYS = sorted({wf.wire for cls in EVENT_TYPES.values() for wf in cls._wire_fields} | {"Status", "Name", "Message", "Components"})

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=30)
    | st.sampled_from(["0", "1", "Disconnected", "healthy", "²", "2025-06-01T12:34:56.1234567Z", "0001-01-01T00:00:00+01:00", "\ud800"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), inner, max_size=6),
    max_leaves=20,
)
bodies = st.dictionaries(st.sampled_from(KEYS) | st.sampled_from([k.lower() for k in KEYS]), json_values, max_size=12)


def _check(route: str, raw: bytes) -> None:
    try:
        event = parse_event_body(route, raw)
    except EventError:
        return
    out = event.to_json()
    assert parse_event_body(route, out).to_json() == out  # a relayed body parses back to itself


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(sorted(EVENT_TYPES)), bodies)
def test_structured_bodies_parse_or_refuse_cleanly(route: str, body: dict) -> None:
    _check(route, json.dumps(body).encode())


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(sorted(EVENT_TYPES)), st.binary(max_size=200))
def test_arbitrary_bytes_parse_or_refuse_cleanly(route: str, raw: bytes) -> None:
    _check(route, raw)
