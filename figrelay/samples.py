"""Sample events: realistic ones of each type (to check templates at load time, to preview
messages) and the seven payloads of Fig's Test button (for ``figrelay test``)."""

from __future__ import annotations

from .events import ROUTES, FigEvent, parse_event

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


def test_button_events() -> list[FigEvent]:
    """The seven payloads of Fig's Test button, in its order: IsTest true, ClientName "Test"."""
    events = []
    for route in ROUTES:
        data = dict(_SAMPLES[route][0], IsTest=True)
        if route == "SecurityEvent":
            data.update(Uri=TEST_LINK, Username="Test")
        else:
            data.update(ClientName="Test", Link=TEST_LINK)
        events.append(parse_event(route, data))
    return events


test_button_events.__test__ = False  # type: ignore[attr-defined]  # not a pytest test, despite its name
