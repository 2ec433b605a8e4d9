"""Sample events: realistic ones of each type (to check templates at load time, to preview
messages with ``figrelay test --samples`` and in docs/messages.md) and the seven payloads of
Fig's Test button, exactly as Fig sends them (for ``figrelay test``)."""

from __future__ import annotations

from datetime import datetime, timezone

from .events import ROUTES, FigDateTime, FigEvent, parse_event

_SAMPLES: dict[str, list[dict[str, object]]] = {
    "ClientStatusChanged": [
        {"ClientName": "OrdersApi", "Instance": None, "ConnectionEvent": 0, "StartTime": "2025-06-01T12:34:56.1234567Z",
         "IpAddress": "10.0.0.12", "Hostname": "orders-host-1", "FigVersion": "2.1.0", "ApplicationVersion": "1.4.2",
         "Link": "http://localhost:5050/clients", "IsTest": False},
        {"ClientName": "OrdersApi", "Instance": "blue", "ConnectionEvent": 1, "StartTime": "2025-06-01T12:34:56.1234567Z",
         "IpAddress": "10.0.0.12", "Hostname": "orders-host-1", "FigVersion": "2.1.0", "ApplicationVersion": "1.4.2",
         "Link": "http://localhost:5050/clients", "IsTest": False},
    ],
    "SettingValueChanged": [
        {"ClientName": "OrdersApi", "Instance": None, "UpdatedSettings": ["Timeout", "RetryCount"], "Username": "admin",
         "Link": "http://localhost:5050/", "ChangeMessage": "Increase timeout for peak", "IsTest": False},
    ],
    "NewClientRegistration": [
        {"ClientName": "OrdersApi", "Instance": None, "Settings": ["Timeout", "RetryCount", "ConnectionString"], "RegistrationType": 0,
         "Link": "http://localhost:5050/", "IsTest": False},
    ],
    "UpdatedClientRegistration": [
        {"ClientName": "OrdersApi", "Instance": None, "Settings": ["Timeout", "RetryCount", "ConnectionString", "PoolSize"],
         "RegistrationType": 1, "Link": "http://localhost:5050/", "IsTest": False},
    ],
    "MinRunSessions": [
        {"ClientName": "OrdersApi", "Instance": None, "RunSessions": 1, "RunSessionsEvent": 0, "Link": "http://localhost:5050/clients", "IsTest": False},
        {"ClientName": "OrdersApi", "Instance": None, "RunSessions": 2, "RunSessionsEvent": 1, "Link": "http://localhost:5050/clients", "IsTest": False},
    ],
    "HealthStatusChanged": [
        {"ClientName": "OrdersApi", "Instance": None, "Hostname": "orders-host-1", "IpAddress": "10.0.0.12", "Status": 1, "FigVersion": "2.1.0",
         "ApplicationVersion": "1.4.2", "HealthDetails": {"Status": 1, "Components": [
             {"Name": "Database", "Status": 1, "Message": "CPU high"}, {"Name": "Cache", "Status": 0, "Message": None}]},
         "Link": "http://localhost:5050/clients", "IsTest": False},
    ],
    "SecurityEvent": [
        {"EventType": "Login", "Timestamp": "2025-06-01T12:35:10.9876543Z", "Username": "alice", "Success": False, "IpAddress": "10.0.0.5",
         "Hostname": "fig-api.example.com", "FailureReason": "Invalid password", "Uri": "http://localhost:5050/security", "IsTest": False},
        {"EventType": "Login", "Timestamp": "2025-06-01T12:36:00Z", "Username": "alice", "Success": True, "IpAddress": "10.0.0.5",
         "Hostname": "fig-api.example.com", "FailureReason": None, "Uri": "http://localhost:5050/security", "IsTest": False},
    ],
}


def sample_events(route: str | None = None) -> list[FigEvent]:
    """Realistic events of one type, or of every type in route order."""
    routes = [route] if route else list(ROUTES)
    return [parse_event(r, data) for r in routes for data in _SAMPLES[r]]


TEST_LINK = "https://localhost:7148/"
"""Fig's own web address in its Test-button payloads (``Link``, and ``Uri`` for a SecurityEvent)."""

_NOW = "<now>"
"""Stands for the time of the test in the bodies below (``StartTime``, ``Timestamp``)."""

# The bodies of Fig's Test button exactly as Fig's WebHookClientTestingService builds them (Fig
# 4.0.0), in Fig's declaration order and in the order Fig sends them, so that ``figrelay test``
# shows what the button will produce through figrelay. The odd values ("X", "server1",
# "1.2.3.4") are Fig's own: they are what a receiver of the button's test will see.
_TEST_BUTTON: dict[str, dict[str, object]] = {
    "ClientStatusChanged": {
        "ClientName": "Test", "Instance": None, "ConnectionEvent": 0, "StartTime": _NOW, "IpAddress": "192.168.1.1",
        "Hostname": "localhost", "FigVersion": "X", "ApplicationVersion": "X", "Link": TEST_LINK, "IsTest": True,
    },
    "SettingValueChanged": {
        "ClientName": "Test", "Instance": None, "UpdatedSettings": ["TestSetting"], "Username": "FigTester", "Link": TEST_LINK,
        "ChangeMessage": "TestOnly", "IsTest": True,
    },
    "NewClientRegistration": {
        "ClientName": "Test", "Instance": None, "Settings": ["TestSetting"], "RegistrationType": 0, "Link": TEST_LINK, "IsTest": True,
    },
    "UpdatedClientRegistration": {
        "ClientName": "Test", "Instance": None, "Settings": ["TestSetting"], "RegistrationType": 1, "Link": TEST_LINK, "IsTest": True,
    },
    "MinRunSessions": {
        "ClientName": "Test", "Instance": None, "RunSessions": 1, "RunSessionsEvent": 0, "Link": TEST_LINK, "IsTest": True,
    },
    "HealthStatusChanged": {
        "ClientName": "Test", "Instance": None, "Hostname": "server1", "IpAddress": "1.2.3.4", "Status": 0, "FigVersion": "v1",
        "ApplicationVersion": "v2", "HealthDetails": {"Status": 0, "Components": []}, "Link": TEST_LINK, "IsTest": True,
    },
    "SecurityEvent": {
        "EventType": "Login", "Timestamp": _NOW, "Username": "testuser", "Success": True, "IpAddress": "192.168.1.1",
        "Hostname": "testhost", "FailureReason": None, "Uri": TEST_LINK, "IsTest": True,
    },
}


def test_button_events(now: datetime | None = None) -> list[FigEvent]:
    """The seven payloads of Fig's Test button, exactly as Fig sends them and in its order; the
    time fields hold ``now`` (default: the current time), as Fig's hold the time of the test."""
    stamp = FigDateTime.from_datetime(now or datetime.now(timezone.utc)).text
    return [parse_event(route, {k: stamp if v == _NOW else v for k, v in body.items()}) for route, body in _TEST_BUTTON.items()]


test_button_events.__test__ = False  # type: ignore[attr-defined]  # not a pytest test, despite its name


def sample_test_events() -> list[FigEvent]:
    """Every realistic sample marked ``IsTest``: a preview of what real events look like
    (``figrelay test --samples``) that each target still shows as a test, so nobody acts on it."""
    return [parse_event(e.route, dict(e.to_wire(), IsTest=True)) for e in sample_events()]
