"""Unit tests for figrelay.sessions: run-session counting and MinRunSessions crossings
(FIG.md, "Run sessions and MinRunSessions", scenario 5)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from figrelay.config import HookConfig
from figrelay.events import ClientStatusChanged, MinRunSessions, RunSessionsEvent, parse_event
from figrelay.sessions import SessionChange, SessionTracker, crossings, session_key

FIXTURES = Path(__file__).parent / "fixtures" / "fig"
START = "2025-06-01T12:34:56.1234567Z"


def status(
    connected: bool = True,
    *,
    client: str = "OrdersApi",
    instance: str | None = None,
    hostname: str | None = "orders-host-1",
    ip: str | None = "10.0.0.12",
    start: str | None = START,
    link: str | None = "http://localhost:5050/clients",
    **extra: Any,
) -> ClientStatusChanged:
    data = json.loads((FIXTURES / "ClientStatusChanged.connected.json").read_bytes())
    data.update(
        ClientName=client,
        Instance=instance,
        ConnectionEvent=0 if connected else 1,
        StartTime=start,
        Hostname=hostname,
        IpAddress=ip,
        Link=link,
        **extra,
    )
    event = parse_event("ClientStatusChanged", data)
    assert isinstance(event, ClientStatusChanged)
    return event


def session(n: int, connected: bool = True, **kw: Any) -> ClientStatusChanged:
    """Session number n of OrdersApi: same host, its own start time."""
    return status(connected, start=f"2025-06-01T12:00:0{n}.5Z", **kw)


def min_hook(minimum: int, index: int = 0, client: str = "alert") -> HookConfig:
    return HookConfig(index, "MinRunSessions", client, re.compile(".*"), None, minimum)


def feed(tracker: SessionTracker, event: ClientStatusChanged, hooks: list[HookConfig]) -> list[tuple[RunSessionsEvent, int]]:
    change = tracker.apply(event)
    if change is None:
        return []
    return [(e.run_sessions_event, e.run_sessions) for _, e in crossings(change, event, hooks)]


def tracker_with(n: int) -> SessionTracker:
    tracker = SessionTracker()
    for i in range(1, n + 1):
        assert tracker.apply(session(i)) is not None
    assert tracker.count("OrdersApi") == n
    return tracker


MR, BM = RunSessionsEvent.MinimumRestored, RunSessionsEvent.BelowMinimum


# --- every crossing case ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("minimum", "before", "connect", "expected"),
    [
        # min 2
        (2, 1, True, [(MR, 2)]),
        (2, 2, False, [(BM, 1)]),
        (2, 3, False, []),
        (2, 2, True, []),
        (2, 0, True, []),
        (2, 1, False, []),
        (2, 4, True, []),
        # min 1
        (1, 0, True, [(MR, 1)]),
        (1, 1, False, [(BM, 0)]),
        (1, 1, True, []),
        (1, 2, False, []),
        # min 3
        (3, 2, True, [(MR, 3)]),
        (3, 3, False, [(BM, 2)]),
        (3, 3, True, []),
        (3, 4, False, []),
    ],
)
def test_crossing(minimum: int, before: int, connect: bool, expected: list[tuple[RunSessionsEvent, int]]) -> None:
    tracker = tracker_with(before)
    event = session(before + 1) if connect else session(before, connected=False)
    assert feed(tracker, event, [min_hook(minimum)]) == expected
    assert tracker.count("OrdersApi") == before + (1 if connect else -1)


def test_session_change_counts() -> None:
    tracker = tracker_with(2)
    change = tracker.apply(session(3))
    assert change is not None
    assert (change.client, change.connected, change.count) == ("OrdersApi", True, 3)
    change = tracker.apply(session(1, connected=False))
    assert change is not None
    assert (change.client, change.connected, change.count) == ("OrdersApi", False, 3)  # still including the leaving one
    assert tracker.count("OrdersApi") == 2


def test_scenario_5_exactly_three_messages_in_order() -> None:
    tracker = SessionTracker()
    hooks = [min_hook(2)]
    sent: list[tuple[RunSessionsEvent, int]] = []
    sent += feed(tracker, session(1), hooks)  # session 1 connects: nothing
    assert sent == []
    sent += feed(tracker, session(2), hooks)  # session 2 connects: MinimumRestored(2)
    sent += feed(tracker, session(1, connected=False), hooks)  # one expires: BelowMinimum(1)
    sent += feed(tracker, session(3), hooks)  # a third connects: MinimumRestored(2)
    assert sent == [(MR, 2), (BM, 1), (MR, 2)]


def test_each_hook_crosses_on_its_own_minimum() -> None:
    tracker = SessionTracker()
    hooks = [min_hook(1, index=0, client="one"), min_hook(2, index=1, client="two"), min_hook(2, index=2, client="two-again")]
    change = tracker.apply(session(1))
    assert change is not None
    assert [(h.client, e.run_sessions) for h, e in crossings(change, session(1), hooks)] == [("one", 1)]
    change = tracker.apply(session(2))
    assert change is not None
    assert [(h.client, e.run_sessions_event, e.run_sessions) for h, e in crossings(change, session(2), hooks)] == [
        ("two", MR, 2),
        ("two-again", MR, 2),
    ]


def test_hooks_without_min_sessions_never_cross() -> None:
    tracker = SessionTracker()
    plain = HookConfig(0, "MinRunSessions", "x", re.compile(".*"), None, None)
    assert feed(tracker, session(1), [plain]) == []
    assert feed(tracker, session(1, connected=False), [plain]) == []


def test_clients_are_counted_separately() -> None:
    tracker = SessionTracker()
    hooks = [min_hook(2)]
    assert feed(tracker, session(1), hooks) == []
    assert feed(tracker, session(1, client="PaymentsApi"), hooks) == []  # same identity, other client
    assert tracker.count("OrdersApi") == 1
    assert tracker.count("PaymentsApi") == 1
    assert tracker.total() == 2
    assert tracker.clients() == {"OrdersApi": 1, "PaymentsApi": 1}
    assert feed(tracker, session(2), hooks) == [(MR, 2)]
    assert feed(tracker, session(1, client="PaymentsApi", connected=False), hooks) == []
    assert tracker.clients() == {"OrdersApi": 2}


# --- repeats and unknown sessions ---------------------------------------------------------------


def test_repeated_connected_counted_once() -> None:
    tracker = SessionTracker()
    hooks = [min_hook(1), min_hook(2, index=1)]
    assert feed(tracker, session(1), hooks) == [(MR, 1)]
    assert tracker.apply(session(1)) is None
    assert feed(tracker, session(1), hooks) == []
    assert tracker.count("OrdersApi") == 1
    # the second session is the one that reaches 2, once
    assert feed(tracker, session(2), hooks) == [(MR, 2)]
    assert feed(tracker, session(2), hooks) == []
    assert tracker.count("OrdersApi") == 2


def test_disconnected_of_unknown_session_changes_nothing() -> None:
    tracker = SessionTracker()
    hooks = [min_hook(1)]
    assert tracker.apply(session(1, connected=False)) is None
    assert tracker.count("OrdersApi") == 0
    assert tracker.clients() == {}
    assert tracker.total() == 0
    for _ in range(3):
        assert feed(tracker, session(5, connected=False), hooks) == []
    assert tracker.count("OrdersApi") == 0
    # the next real connect is still 0 -> 1
    assert feed(tracker, session(1), hooks) == [(MR, 1)]
    assert tracker.count("OrdersApi") == 1


def test_disconnected_of_unknown_session_keeps_the_others() -> None:
    tracker = tracker_with(2)
    assert tracker.apply(session(7, connected=False)) is None
    assert tracker.count("OrdersApi") == 2
    assert feed(tracker, session(7, connected=False), [min_hook(2)]) == []


def test_disconnect_twice_is_counted_once_and_never_negative() -> None:
    tracker = tracker_with(1)
    hooks = [min_hook(1)]
    assert feed(tracker, session(1, connected=False), hooks) == [(BM, 0)]
    assert feed(tracker, session(1, connected=False), hooks) == []
    assert tracker.count("OrdersApi") == 0
    assert tracker.clients() == {}


# --- session identity ----------------------------------------------------------------------------


def test_different_start_time_is_a_different_session() -> None:
    tracker = SessionTracker()
    assert tracker.apply(status(start="2025-06-01T12:34:56.1234567Z")) is not None
    assert tracker.apply(status(start="2025-06-01T12:34:56.1234568Z")) is not None  # 100 ns later
    assert tracker.count("OrdersApi") == 2


@pytest.mark.parametrize(
    "changes",
    [{"instance": "blue"}, {"hostname": "orders-host-2"}, {"ip": "10.0.0.13"}, {"start": None}, {"hostname": None}, {"ip": None}],
)
def test_each_identity_field_distinguishes_sessions(changes: dict[str, Any]) -> None:
    tracker = SessionTracker()
    assert tracker.apply(status()) is not None
    assert tracker.apply(status(**changes)) is not None
    assert tracker.count("OrdersApi") == 2
    assert session_key(status()) != session_key(status(**changes))


@pytest.mark.parametrize(
    "spelling",
    [
        "2025-06-01T12:34:56.1234567+00:00",
        "2025-06-01T14:34:56.1234567+02:00",
        "2025-06-01T07:34:56.1234567-05:00",
    ],
)
def test_same_instant_in_another_spelling_is_the_same_session(spelling: str) -> None:
    tracker = SessionTracker()
    hooks = [min_hook(1)]
    assert feed(tracker, status(start=START), hooks) == [(MR, 1)]
    assert tracker.apply(status(start=spelling)) is None  # a repeat, not a second session
    assert tracker.count("OrdersApi") == 1
    assert session_key(status(start=spelling)) == session_key(status(start=START))
    assert feed(tracker, status(False, start=spelling), hooks) == [(BM, 0)]
    assert tracker.count("OrdersApi") == 0


def test_other_fields_do_not_change_identity() -> None:
    a = status(FigVersion="2.1.0", ApplicationVersion="1.0", link="http://a/clients")
    b = status(False, FigVersion="9.9.9", ApplicationVersion="2.0", link="http://b/clients", Extra="x")
    assert session_key(a) == session_key(b)
    tracker = SessionTracker()
    tracker.apply(a)
    change = tracker.apply(b)
    assert change is not None and not change.connected
    assert tracker.count("OrdersApi") == 0


def test_connected_and_disconnected_fixtures_are_one_session() -> None:
    tracker = SessionTracker()
    hooks = [min_hook(1)]
    connected = parse_event("ClientStatusChanged", json.loads((FIXTURES / "ClientStatusChanged.connected.json").read_bytes()))
    disconnected = parse_event("ClientStatusChanged", json.loads((FIXTURES / "ClientStatusChanged.disconnected.json").read_bytes()))
    assert isinstance(connected, ClientStatusChanged) and isinstance(disconnected, ClientStatusChanged)
    assert feed(tracker, connected, hooks) == [(MR, 1)]
    assert feed(tracker, disconnected, hooks) == [(BM, 0)]


def test_tracker_restored_from_stored_sessions() -> None:
    keys = [session_key(session(1)), session_key(session(2))]
    tracker = SessionTracker([("OrdersApi", keys[0]), ("OrdersApi", keys[1]), ("PaymentsApi", keys[0]), ("OrdersApi", keys[0])])
    assert tracker.count("OrdersApi") == 2
    assert tracker.count("PaymentsApi") == 1
    assert feed(tracker, session(2, connected=False), [min_hook(2)]) == [(BM, 1)]
    assert tracker.apply(session(1)) is None  # already known


# --- the raised payload --------------------------------------------------------------------------


def test_payload_fields_come_from_the_status_event() -> None:
    tracker = tracker_with(1)
    connect = session(2, instance="blue", link="https://fig.example.com/clients")
    change = tracker.apply(connect)
    assert change is not None
    [(hook, raised)] = crossings(change, connect, [min_hook(2, index=4)])
    assert hook.index == 4
    assert isinstance(raised, MinRunSessions)
    assert raised.client_name == "OrdersApi"
    assert raised.instance == "blue"
    assert raised.link == "https://fig.example.com/clients"
    assert raised.is_test is False
    assert raised.run_sessions == 2
    assert raised.run_sessions_event is MR
    assert raised.extra == ()
    assert raised.to_json() == (
        b'{"ClientName":"OrdersApi","Instance":"blue","RunSessions":2,"RunSessionsEvent":1,'
        b'"Link":"https://fig.example.com/clients","IsTest":false}'
    )


def test_payloads_equal_figs_own_fixtures() -> None:
    """With Fig's link and no instance, the raised bodies are byte-identical to Fig's."""
    hooks = [min_hook(2)]
    tracker = tracker_with(1)
    connect = session(2)
    change = tracker.apply(connect)
    assert change is not None
    [(_, restored)] = crossings(change, connect, hooks)
    assert restored.to_json() == (FIXTURES / "MinRunSessions.restored.json").read_bytes().removesuffix(b"\n")

    leave = session(1, connected=False)
    change = tracker.apply(leave)
    assert change is not None
    [(_, below)] = crossings(change, leave, hooks)
    assert below.to_json() == (FIXTURES / "MinRunSessions.below.json").read_bytes().removesuffix(b"\n")
    assert list(below.to_wire()) == ["ClientName", "Instance", "RunSessions", "RunSessionsEvent", "Link", "IsTest"]


def test_payload_ignores_extra_fields_of_the_status_event() -> None:
    tracker = SessionTracker()
    connect = status(NewFigField="x")
    change = tracker.apply(connect)
    assert change is not None
    [(_, raised)] = crossings(change, connect, [min_hook(1)])
    assert b"NewFigField" not in raised.to_json()


# --- undo ------------------------------------------------------------------------------------------


def test_undo_connect() -> None:
    tracker = tracker_with(1)
    change = tracker.apply(session(2))
    assert change is not None
    tracker.undo(change)
    assert tracker.count("OrdersApi") == 1
    # the same connect counts again, and crosses again
    assert feed(tracker, session(2), [min_hook(2)]) == [(MR, 2)]


def test_undo_first_connect_leaves_no_empty_client() -> None:
    tracker = SessionTracker()
    change = tracker.apply(session(1))
    assert change is not None
    tracker.undo(change)
    assert tracker.count("OrdersApi") == 0
    assert tracker.clients() == {}
    assert tracker.total() == 0


def test_undo_disconnect() -> None:
    tracker = tracker_with(2)
    change = tracker.apply(session(1, connected=False))
    assert change is not None
    assert tracker.count("OrdersApi") == 1
    tracker.undo(change)
    assert tracker.count("OrdersApi") == 2
    assert feed(tracker, session(1, connected=False), [min_hook(2)]) == [(BM, 1)]


def test_undo_last_disconnect_restores_the_client() -> None:
    tracker = tracker_with(1)
    change = tracker.apply(session(1, connected=False))
    assert change is not None
    assert tracker.clients() == {}
    tracker.undo(change)
    assert tracker.clients() == {"OrdersApi": 1}


def test_session_change_is_a_value() -> None:
    tracker = SessionTracker()
    change = tracker.apply(session(1))
    assert change == SessionChange("OrdersApi", session_key(session(1)), True, 1)
