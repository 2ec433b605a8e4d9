"""Unit tests for figrelay.events: Fig's seven web hook contracts, parsed strictly and written
back byte-compatibly with Newtonsoft.Json (FIG.md, "Wire format")."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from figrelay.events import (
    EVENT_TYPES,
    MAX_DEPTH,
    ROUTES,
    ClientStatusChanged,
    ConnectionEvent,
    EventError,
    FigDateTime,
    HealthStatus,
    HealthStatusChanged,
    MinRunSessions,
    RegistrationType,
    RunSessionsEvent,
    SecurityEvent,
    SettingValueChanged,
    parse_event,
    parse_event_body,
)

FIXTURES = Path(__file__).parent / "fixtures" / "fig"
FIXTURE_FILES = sorted(FIXTURES.glob("*.json"))


def route_of(path: Path) -> str:
    return path.name.split(".", 1)[0]


def fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_bytes())


def fixture_bytes(name: str) -> bytes:
    return (FIXTURES / name).read_bytes().removesuffix(b"\n")


def camel(data: Any) -> Any:
    """PascalCase keys -> camelCase keys, recursively."""
    if isinstance(data, dict):
        return {k[:1].lower() + k[1:]: camel(v) for k, v in data.items()}
    if isinstance(data, list):
        return [camel(v) for v in data]
    return data


def compact(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


# --- fixtures: byte-identical round trip -----------------------------------------------------


def test_there_is_a_fixture_for_every_route() -> None:
    assert len(FIXTURE_FILES) >= 7
    assert {route_of(p) for p in FIXTURE_FILES} == set(ROUTES)


@pytest.mark.parametrize("path", FIXTURE_FILES, ids=lambda p: p.name)
def test_fixture_round_trips_byte_identically(path: Path) -> None:
    raw = path.read_bytes()
    assert raw.endswith(b"\n")
    expected = raw.removesuffix(b"\n")
    event = parse_event_body(route_of(path), raw)
    assert type(event) is EVENT_TYPES[route_of(path)]
    assert event.route == route_of(path)
    assert event.to_json() == expected
    # and again from the exact wire bytes, and from already-decoded JSON
    assert parse_event_body(route_of(path), expected).to_json() == expected
    assert parse_event(route_of(path), json.loads(expected)).to_json() == expected


@pytest.mark.parametrize("path", FIXTURE_FILES, ids=lambda p: p.name)
def test_fixture_to_wire_keeps_fig_key_order(path: Path) -> None:
    data = json.loads(path.read_bytes())
    event = parse_event_body(route_of(path), path.read_bytes())
    assert list(event.to_wire()) == list(data)
    assert event.to_wire() == data
    assert event.extra == ()


@pytest.mark.parametrize("path", FIXTURE_FILES, ids=lambda p: p.name)
def test_fixture_with_camel_case_keys_serialises_in_pascal_case(path: Path) -> None:
    data = json.loads(path.read_bytes())
    event = parse_event(route_of(path), camel(data))
    assert event.to_json() == path.read_bytes().removesuffix(b"\n")
    assert event.extra == ()


def test_typed_values_of_fixtures() -> None:
    csc = parse_event("ClientStatusChanged", fixture("ClientStatusChanged.disconnected.json"))
    assert isinstance(csc, ClientStatusChanged)
    assert csc.client_name == "OrdersApi"
    assert csc.instance is None
    assert csc.connection_event is ConnectionEvent.Disconnected
    assert csc.start_time == FigDateTime.parse("2025-06-01T12:34:56.1234567Z")
    assert csc.ip_address == "10.0.0.12"
    assert csc.hostname == "orders-host-1"
    assert csc.link == "http://localhost:5050/clients"
    assert csc.is_test is False
    assert csc.setting_client == "OrdersApi"

    health = parse_event("HealthStatusChanged", fixture("HealthStatusChanged.json"))
    assert isinstance(health, HealthStatusChanged)
    assert health.status is HealthStatus.Degraded
    assert health.health_details is not None
    assert health.health_details.status is HealthStatus.Degraded
    assert [c.name for c in health.health_details.components] == ["Database", "Cache"]
    assert health.health_details.components[0].message == "CPU high"
    assert health.health_details.components[1].status is HealthStatus.Healthy
    assert health.health_details.components[1].message is None

    svc = parse_event("SettingValueChanged", fixture("SettingValueChanged.json"))
    assert isinstance(svc, SettingValueChanged)
    assert svc.updated_settings == ("Timeout", "RetryCount")
    assert svc.username == "admin"

    sec = parse_event("SecurityEvent", fixture("SecurityEvent.json"))
    assert isinstance(sec, SecurityEvent)
    assert sec.success is False
    assert sec.failure_reason == "Invalid password"
    assert sec.setting_client is None

    mrs = parse_event("MinRunSessions", fixture("MinRunSessions.below.json"))
    assert isinstance(mrs, MinRunSessions)
    assert mrs.run_sessions == 1
    assert mrs.run_sessions_event is RunSessionsEvent.BelowMinimum

    upd = parse_event("UpdatedClientRegistration", fixture("UpdatedClientRegistration.json"))
    assert upd.registration_type is RegistrationType.Updated  # type: ignore[attr-defined]
    new = parse_event("NewClientRegistration", fixture("NewClientRegistration.json"))
    assert new.registration_type is RegistrationType.New  # type: ignore[attr-defined]


def test_routes_are_in_test_button_order() -> None:
    assert ROUTES == (
        "ClientStatusChanged",
        "SettingValueChanged",
        "NewClientRegistration",
        "UpdatedClientRegistration",
        "MinRunSessions",
        "HealthStatusChanged",
        "SecurityEvent",
    )


# --- lenient parsing -----------------------------------------------------------------------------


@pytest.mark.parametrize("spelling", ["Disconnected", "disconnected", "DISCONNECTED", "dIsCoNnEcTeD", 1, "1"])
def test_connection_event_accepts_names_any_case_and_digit_strings(spelling: Any) -> None:
    data = fixture("ClientStatusChanged.connected.json")
    data["ConnectionEvent"] = spelling
    event = parse_event("ClientStatusChanged", data)
    assert event.connection_event is ConnectionEvent.Disconnected  # type: ignore[attr-defined]
    assert event.to_json() == fixture_bytes("ClientStatusChanged.disconnected.json")


def test_every_enum_accepts_names_and_digit_strings() -> None:
    data = fixture("HealthStatusChanged.json")
    data["Status"] = "degraded"
    data["HealthDetails"]["Status"] = "1"
    data["HealthDetails"]["Components"][0]["Status"] = "Degraded"
    data["HealthDetails"]["Components"][1]["Status"] = "healthy"
    assert parse_event("HealthStatusChanged", data).to_json() == fixture_bytes("HealthStatusChanged.json")

    data = fixture("MinRunSessions.restored.json")
    data["RunSessionsEvent"] = "MinimumRestored"
    assert parse_event("MinRunSessions", data).to_json() == fixture_bytes("MinRunSessions.restored.json")
    data["RunSessionsEvent"] = "belowminimum"
    data["RunSessions"] = 1
    assert parse_event("MinRunSessions", data).to_json() == fixture_bytes("MinRunSessions.below.json")

    data = fixture("UpdatedClientRegistration.json")
    data["RegistrationType"] = "Updated"
    assert parse_event("UpdatedClientRegistration", data).to_json() == fixture_bytes("UpdatedClientRegistration.json")


@pytest.mark.parametrize("value", ["Connecting", 2, -1, "2", True, 0.5, None, [], {}])
def test_unknown_enum_value_is_an_error_naming_the_field(value: Any) -> None:
    data = fixture("ClientStatusChanged.connected.json")
    data["ConnectionEvent"] = value
    with pytest.raises(EventError) as err:
        parse_event("ClientStatusChanged", data)
    assert err.value.field == "ConnectionEvent"
    assert str(err.value).startswith("ConnectionEvent: ")


def test_enum_with_superscript_digit_is_an_event_error() -> None:
    data = fixture("ClientStatusChanged.connected.json")
    data["ConnectionEvent"] = "²"
    with pytest.raises(EventError) as err:
        parse_event("ClientStatusChanged", data)
    assert err.value.field == "ConnectionEvent"


def test_unknown_extra_fields_are_kept_and_written_after_known_ones() -> None:
    data = fixture("ClientStatusChanged.connected.json")
    items = list(data.items())
    # new fields first, in the middle and last; a nested value too
    reordered = dict([("Zeta", 1), *items[:3], ("NewThing", {"b": [1, None], "a": "x"}), *items[3:], ("alpha", None)])
    event = parse_event("ClientStatusChanged", reordered)
    assert event.extra == (("Zeta", 1), ("NewThing", {"b": [1, None], "a": "x"}), ("alpha", None))
    expected = fixture_bytes("ClientStatusChanged.connected.json")[:-1] + b',"Zeta":1,"NewThing":{"b":[1,null],"a":"x"},"alpha":null}'
    assert event.to_json() == expected
    assert list(event.to_wire())[-3:] == ["Zeta", "NewThing", "alpha"]


def test_unknown_extra_fields_kept_in_nested_objects() -> None:
    data = fixture("HealthStatusChanged.json")
    data["HealthDetails"] = {"Extra1": True, **data["HealthDetails"]}
    data["HealthDetails"]["Components"][1] = {"Duration": "00:00:01", **data["HealthDetails"]["Components"][1]}
    event = parse_event("HealthStatusChanged", data)
    wire = event.to_wire()
    assert list(wire["HealthDetails"]) == ["Status", "Components", "Extra1"]
    assert list(wire["HealthDetails"]["Components"][1]) == ["Name", "Status", "Message", "Duration"]
    assert list(wire["HealthDetails"]["Components"][0]) == ["Name", "Status", "Message"]
    assert b'"Components":[{"Name":"Database","Status":1,"Message":"CPU high"},{"Name":"Cache","Status":0,"Message":null,"Duration":"00:00:01"}],"Extra1":true}' in event.to_json()


@pytest.mark.parametrize("path", FIXTURE_FILES, ids=lambda p: p.name)
def test_missing_is_test_means_false(path: Path) -> None:
    data = json.loads(path.read_bytes())
    del data["IsTest"]
    event = parse_event(route_of(path), data)
    assert event.is_test is False  # type: ignore[attr-defined]
    assert event.test is False
    assert event.to_json() == path.read_bytes().removesuffix(b"\n")


def test_is_test_true_is_kept() -> None:
    data = fixture("SecurityEvent.json")
    data["IsTest"] = True
    event = parse_event("SecurityEvent", data)
    assert event.test is True
    assert event.to_json().endswith(b',"IsTest":true}')


@pytest.mark.parametrize("path", [p for p in FIXTURE_FILES if route_of(p) != "SecurityEvent"], ids=lambda p: p.name)
def test_missing_client_name_is_an_error(path: Path) -> None:
    data = json.loads(path.read_bytes())
    del data["ClientName"]
    with pytest.raises(EventError) as err:
        parse_event(route_of(path), data)
    assert err.value.field == "ClientName"
    assert "required" in err.value.message


@pytest.mark.parametrize("path", [p for p in FIXTURE_FILES if route_of(p) != "SecurityEvent"], ids=lambda p: p.name)
def test_null_client_name_is_an_error(path: Path) -> None:
    data = json.loads(path.read_bytes())
    data["ClientName"] = None
    with pytest.raises(EventError) as err:
        parse_event(route_of(path), data)
    assert err.value.field == "ClientName"


def test_missing_client_name_in_body_bytes() -> None:
    with pytest.raises(EventError) as err:
        parse_event_body("SettingValueChanged", b'{"UpdatedSettings":["a"]}')
    assert err.value.field == "ClientName"


@pytest.mark.parametrize(
    ("route", "mutate", "field"),
    [
        ("ClientStatusChanged", lambda d: d.update(ClientName=5), "ClientName"),
        ("ClientStatusChanged", lambda d: d.update(StartTime="yesterday"), "StartTime"),
        ("ClientStatusChanged", lambda d: d.update(StartTime=1748781296), "StartTime"),
        ("ClientStatusChanged", lambda d: d.update(IsTest="maybe"), "IsTest"),
        ("ClientStatusChanged", lambda d: d.update(Hostname=["a"]), "Hostname"),
        ("SettingValueChanged", lambda d: d.update(UpdatedSettings=["Timeout", 5]), "UpdatedSettings[1]"),
        ("SettingValueChanged", lambda d: d.update(UpdatedSettings="Timeout"), "UpdatedSettings"),
        ("SettingValueChanged", lambda d: d.update(UpdatedSettings=["Timeout", None]), "UpdatedSettings[1]"),
        ("NewClientRegistration", lambda d: d.update(Settings=["a", "b", {"c": 1}]), "Settings[2]"),
        ("MinRunSessions", lambda d: d.update(RunSessions="two"), "RunSessions"),
        ("MinRunSessions", lambda d: d.update(RunSessions=1.5), "RunSessions"),
        ("MinRunSessions", lambda d: d.update(RunSessions=-1), "RunSessions"),
        ("MinRunSessions", lambda d: d.update(RunSessions=True), "RunSessions"),
        ("MinRunSessions", lambda d: d.pop("RunSessionsEvent"), "RunSessionsEvent"),
        ("HealthStatusChanged", lambda d: d["HealthDetails"]["Components"][0].update(Status="Sick"), "HealthDetails.Components[0].Status"),
        ("HealthStatusChanged", lambda d: d["HealthDetails"]["Components"][1].update(Status=None), "HealthDetails.Components[1].Status"),
        ("HealthStatusChanged", lambda d: d["HealthDetails"]["Components"][1].update(Message=3), "HealthDetails.Components[1].Message"),
        ("HealthStatusChanged", lambda d: d["HealthDetails"]["Components"].__setitem__(0, "x"), "HealthDetails.Components[0]"),
        ("HealthStatusChanged", lambda d: d["HealthDetails"].update(Components={}), "HealthDetails.Components"),
        ("HealthStatusChanged", lambda d: d["HealthDetails"].pop("Status"), "HealthDetails.Status"),
        ("HealthStatusChanged", lambda d: d.update(HealthDetails=[]), "HealthDetails"),
        ("HealthStatusChanged", lambda d: d.pop("Status"), "Status"),
        ("SecurityEvent", lambda d: d.update(Success="yes"), "Success"),
        ("SecurityEvent", lambda d: d.pop("Success"), "Success"),
        ("SecurityEvent", lambda d: d.update(Timestamp="2025-13-01T00:00:00Z"), "Timestamp"),
        ("SecurityEvent", lambda d: d.update(Timestamp="2025-02-30T00:00:00Z"), "Timestamp"),
    ],
)
def test_wrong_type_names_the_field_path(route: str, mutate: Any, field: str) -> None:
    name = {"ClientStatusChanged": "ClientStatusChanged.connected.json", "MinRunSessions": "MinRunSessions.restored.json"}.get(route, f"{route}.json")
    data = fixture(name)
    mutate(data)
    with pytest.raises(EventError) as err:
        parse_event(route, data)
    assert err.value.field == field
    assert str(err.value) == f"{field}: {err.value.message}"
    # the same error from the raw bytes
    with pytest.raises(EventError) as err2:
        parse_event_body(route, compact(data))
    assert err2.value.field == field


def test_string_booleans_are_accepted() -> None:
    data = fixture("SecurityEvent.json")
    data["Success"] = "True"
    data["IsTest"] = "false"
    event = parse_event("SecurityEvent", data)
    assert event.success is True  # type: ignore[attr-defined]
    assert event.is_test is False  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("first", "second"),
    [("ClientName", "clientName"), ("clientname", "ClientName"), ("IsTest", "isTest"), ("ConnectionEvent", "CONNECTIONEVENT")],
)
def test_a_key_given_twice_in_two_casings_is_an_error(first: str, second: str) -> None:
    data = fixture("ClientStatusChanged.connected.json")
    value = data.pop(first[0].upper() + first[1:] if first != "clientname" else "ClientName")
    data[first] = value
    data[second] = value
    with pytest.raises(EventError) as err:
        parse_event("ClientStatusChanged", data)
    wire = {"clientname": "ClientName", "istest": "IsTest", "connectionevent": "ConnectionEvent"}[first.lower()]
    assert err.value.field == wire
    assert "twice" in err.value.message


def test_a_key_given_twice_in_a_nested_object_is_an_error() -> None:
    body = (
        b'{"ClientName":"A","Status":1,"HealthDetails":{"Status":1,"Components":'
        b'[{"Name":"a","Status":1,"status":2}]}}'
    )
    with pytest.raises(EventError) as err:
        parse_event_body("HealthStatusChanged", body)
    assert err.value.field == "HealthDetails.Components[0].Status"


@pytest.mark.parametrize(
    "body",
    [b"", b"{", b'{"ClientName":"A",}', b"{'ClientName':'A'}", b'{"ClientName":"A"} x', b"nul"],
)
def test_bad_json_is_an_event_error(body: bytes) -> None:
    with pytest.raises(EventError) as err:
        parse_event_body("ClientStatusChanged", body)
    assert err.value.field is None
    assert "not valid JSON" in str(err.value)


@pytest.mark.parametrize("body", [b'{"ClientName":"\xff","ConnectionEvent":0}', b'{"ClientName":"\xc3","ConnectionEvent":0}', b"\xfe\xff{}"])
def test_bad_utf8_is_an_event_error(body: bytes) -> None:
    with pytest.raises(EventError) as err:
        parse_event_body("ClientStatusChanged", body)
    assert err.value.field is None
    assert "UTF-8" in str(err.value)


@pytest.mark.parametrize("body", [b"[]", b"null", b"42", b'"OrdersApi"', b"true", b'[{"ClientName":"A","ConnectionEvent":0}]'])
def test_non_object_body_is_an_event_error(body: bytes) -> None:
    with pytest.raises(EventError) as err:
        parse_event_body("ClientStatusChanged", body)
    assert "JSON object" in str(err.value)


@pytest.mark.parametrize("data", [[], None, 42, "x"])
def test_parse_event_rejects_non_object(data: Any) -> None:
    with pytest.raises(EventError):
        parse_event("SecurityEvent", data)


@pytest.mark.parametrize("route", ["clientStatusChanged", "Nope", "", "ClientStatusChanged/"])
def test_unknown_route_is_an_error(route: str) -> None:
    with pytest.raises(EventError) as err:
        parse_event_body(route, fixture_bytes("ClientStatusChanged.connected.json"))
    assert "unknown event type" in str(err.value)


def test_utf8_bom_is_accepted() -> None:
    raw = fixture_bytes("SecurityEvent.json")
    assert parse_event_body("SecurityEvent", b"\xef\xbb\xbf" + raw).to_json() == raw


# --- Newtonsoft escaping -------------------------------------------------------------------------


def test_u2028_u2029_u0085_escaped_other_non_ascii_raw() -> None:
    data = fixture("SettingValueChanged.json")
    data["ChangeMessage"] = "a\u2028b\u2029c\u0085d é ü 中文 😀 \u00a0 \u200b \u007f"
    data["UpdatedSettings"] = ["Zeit\u2028Limit", "Größe"]
    event = parse_event("SettingValueChanged", data)
    out = event.to_json()
    assert b"\\u2028" in out and b"\\u2029" in out and b"\\u0085" in out
    assert "\u2028".encode() not in out and "\u2029".encode() not in out and "\u0085".encode() not in out
    expected = (
        '{"ClientName":"OrdersApi","Instance":null,"UpdatedSettings":["Zeit\\u2028Limit","Größe"],'
        '"Username":"admin","Link":"http://localhost:5050/","ChangeMessage":"a\\u2028b\\u2029c\\u0085d é ü 中文 😀 \u00a0 \u200b \u007f",'
        '"IsTest":false}'
    ).encode("utf-8")
    assert out == expected
    # the escaped output is itself valid JSON with the same content
    assert json.loads(out)["ChangeMessage"] == data["ChangeMessage"]
    # and a body already carrying the escapes round-trips byte-identically
    assert parse_event_body("SettingValueChanged", out).to_json() == out


def test_escaping_applies_in_extras_and_nested_objects() -> None:
    data = fixture("HealthStatusChanged.json")
    data["HealthDetails"]["Components"][0]["Message"] = "x\u2029y"
    data["Later"] = {"k\u0085": "v\u2028"}
    out = parse_event("HealthStatusChanged", data).to_json()
    assert b'"Message":"x\\u2029y"' in out
    assert out.endswith(b'"IsTest":false,"Later":{"k\\u0085":"v\\u2028"}}')


def test_control_characters_escaped_like_newtonsoft() -> None:
    data = fixture("SettingValueChanged.json")
    data["ChangeMessage"] = 'line1\nline2\ttab "quoted" back\\slash \x01\x1f'
    out = parse_event("SettingValueChanged", data).to_json()
    assert b'"ChangeMessage":"line1\\nline2\\ttab \\"quoted\\" back\\\\slash \\u0001\\u001f"' in out


def test_lone_surrogate_is_replaced_at_parse_time_for_every_event_type() -> None:
    # before: ClientStatusChanged kept "\ud800" (and failed later in SQLite) while
    # SettingValueChanged relayed U+FFFD; now every string is U+FFFD from the start
    for route, body in [
        ("ClientStatusChanged", b'{"ClientName":"Orders\\ud800Api","ConnectionEvent":0,"Hostname":"h\\udfff"}'),
        ("SettingValueChanged", b'{"ClientName":"Orders\\ud800Api","UpdatedSettings":["T\\udc00"]}'),
    ]:
        event = parse_event_body(route, body)
        assert event.client_name == "Orders\ufffdApi"
        out = event.to_json()
        assert "\ufffd".encode() in out and b"\\u" not in out
        assert parse_event_body(route, out) == event


def test_lone_surrogates_are_replaced_in_keys_extras_and_nested_values() -> None:
    data = fixture("HealthStatusChanged.json")
    data["HealthDetails"]["Components"][0]["Message"] = "cpu \ud83d"
    data["Extra\udc00"] = {"k\ud800": ["a\udbff", {"deep": "\ud800\udc00 pair, then \udc00"}]}
    body = json.dumps(data).encode()  # ensure_ascii: surrogates travel as \uXXXX escapes
    event = parse_event_body("HealthStatusChanged", body)
    assert event.health_details.components[0].message == "cpu \ufffd"
    assert event.extra == (("Extra\ufffd", {"k\ufffd": ["a\ufffd", {"deep": "\U00010000 pair, then \ufffd"}]}),)
    event.to_json().decode("utf-8")  # strict: no surrogate left anywhere


def test_a_valid_surrogate_pair_is_kept() -> None:
    event = parse_event_body("SettingValueChanged", b'{"ClientName":"A\\ud83d\\ude00","UpdatedSettings":[]}')
    assert event.client_name == "A\U0001f600"


# --- JSON that cannot be relayed as JSON ----------------------------------------------------------


def _with_extra(raw: bytes) -> bytes:
    return fixture_bytes("SettingValueChanged.json")[:-1] + b',"Extra":' + raw + b"}"


@pytest.mark.parametrize(
    ("raw", "field", "words"),
    [
        (b"NaN", "Extra", "NaN is not valid JSON"),
        (b"Infinity", "Extra", "Infinity is not valid JSON"),
        (b"-Infinity", "Extra", "-Infinity is not valid JSON"),
        (b"1e999", "Extra", "too large to relay"),
        (b"-1.5e400", "Extra", "too large to relay"),
        (b'{"a":[1,2,NaN]}', "Extra.a[2]", "NaN is not valid JSON"),
        (b"1" * 4301, "Extra", "an integer of 4301 digits"),
        (b"-" + b"9" * 5000, "Extra", "an integer of 5000 digits"),
        (b'[{"x":' + b"7" * 10000 + b"}]", "Extra[0].x", "send it as a string"),
    ],
)
def test_values_that_are_not_json_numbers_are_refused_with_their_path(raw: bytes, field: str, words: str) -> None:
    with pytest.raises(EventError) as refused:
        parse_event_body("SettingValueChanged", _with_extra(raw))
    assert refused.value.field == field
    assert words in refused.value.message


def test_numbers_that_fit_are_relayed_as_they_parse() -> None:
    event = parse_event_body("SettingValueChanged", _with_extra(b'[1e308, -0.5, ' + b"1" * 4300 + b"]"))
    out = json.loads(event.to_json(), parse_constant=_no_constants)
    assert out["Extra"][:2] == [1e308, -0.5] and out["Extra"][2] == int("1" * 4300)


def _no_constants(token: str) -> None:
    raise AssertionError(f"{token} in relayed JSON")


def test_a_refused_value_hidden_by_a_duplicate_key_is_still_refused() -> None:
    with pytest.raises(EventError, match="NaN is not valid JSON"):
        parse_event_body("SettingValueChanged", _with_extra(b'{"a":NaN,"a":1}'))


def test_a_huge_integer_in_a_known_field_or_an_enum_string_is_a_400_not_a_crash() -> None:
    with pytest.raises(EventError) as refused:
        parse_event_body("MinRunSessions", b'{"ClientName":"A","RunSessions":' + b"1" * 5000 + b',"RunSessionsEvent":0}')
    assert refused.value.field == "RunSessions"
    with pytest.raises(EventError) as refused:
        parse_event_body("ClientStatusChanged", b'{"ClientName":"A","ConnectionEvent":"' + b"1" * 5000 + b'"}')
    assert refused.value.field == "ConnectionEvent" and len(refused.value.message) < 200


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 999, 1000, 5000, 100_000])
def test_nesting_deeper_than_the_limit_is_refused(depth: int) -> None:
    inner = depth - 1  # the body's own object is the first level
    for open_, close in ((b"[", b"]"), (b'{"a":', b"}")):
        body = b'{"ClientName":"A","UpdatedSettings":[],"X":' + open_ * inner + b"1" + close * inner + b"}"
        with pytest.raises(EventError) as refused:
            parse_event_body("SettingValueChanged", body)
        assert f"nested more than {MAX_DEPTH} levels" in refused.value.message


def test_nesting_up_to_the_limit_is_accepted() -> None:
    inner = MAX_DEPTH - 1
    body = b'{"ClientName":"A","UpdatedSettings":[],"X":' + b"[" * inner + b"1" + b"]" * inner + b',"Y":"' + b"[" * 500 + b'"}'
    event = parse_event_body("SettingValueChanged", body)
    assert event.to_json().count(b"[") == inner + 1 + 500


# --- FigDateTime ----------------------------------------------------------------------------------

TICKS_123456 = (int(dt.datetime(2025, 6, 1, 12, 34, 56, tzinfo=dt.timezone.utc).timestamp())) * 10_000_000 + 1234567


@pytest.mark.parametrize(
    "text",
    [
        "2025-06-01T12:34:56.1234567Z",
        "2025-06-01T12:34:56.1234567+00:00",
        "2025-06-01T12:34:56.1234567-00:00",
        "2025-06-01T14:34:56.1234567+02:00",
        "2025-06-01T07:04:56.1234567-05:30",
        "2025-06-02T00:34:56.1234567+12:00",
    ],
)
def test_fig_datetime_ticks_equal_across_spellings(text: str) -> None:
    value = FigDateTime.parse(text)
    assert value.ticks == TICKS_123456
    assert value.text == text
    assert str(value) == text


def test_fig_datetime_trailing_zero_beyond_seven_digits_has_equal_ticks() -> None:
    assert FigDateTime.parse("2025-06-01T12:34:56.12345670Z").ticks == FigDateTime.parse("2025-06-01T12:34:56.1234567Z").ticks


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("2025-06-01T12:34:56.1Z", "2025-06-01T12:34:56.1000000Z"),
        ("2025-06-01T12:34:56Z", "2025-06-01T12:34:56.0000000Z"),
        ("2025-06-01T12:34:56.5Z", "2025-06-01T12:34:56.50Z"),
    ],
)
def test_fig_datetime_fraction_spellings(a: str, b: str) -> None:
    assert FigDateTime.parse(a).ticks == FigDateTime.parse(b).ticks
    assert FigDateTime.parse(a) != FigDateTime.parse(b)  # the spelling is kept ...
    assert FigDateTime.parse(a).text == a  # ... so re-serialising stays byte-identical


def test_fig_datetime_distinguishes_100ns() -> None:
    a = FigDateTime.parse("2025-06-01T12:34:56.1234567Z")
    b = FigDateTime.parse("2025-06-01T12:34:56.1234568Z")
    assert b.ticks - a.ticks == 1


def test_fig_datetime_before_epoch() -> None:
    assert FigDateTime.parse("1969-12-31T23:59:59.5Z").ticks == -5_000_000
    assert FigDateTime.parse("1970-01-01T00:00:00Z").ticks == 0


def test_fig_datetime_datetime_and_from_datetime() -> None:
    value = FigDateTime.parse("2025-06-01T14:34:56.1234567+02:00")
    assert value.datetime == dt.datetime(2025, 6, 1, 12, 34, 56, 123456, tzinfo=dt.timezone.utc)
    made = FigDateTime.from_datetime(dt.datetime(2025, 6, 1, 14, 34, 56, 120000, tzinfo=dt.timezone(dt.timedelta(hours=2))))
    assert made.text == "2025-06-01T12:34:56.12Z"
    assert made.ticks == TICKS_123456 - 1234567 + 1200000
    assert FigDateTime.from_datetime(dt.datetime(2025, 6, 1, tzinfo=dt.timezone.utc)).text == "2025-06-01T00:00:00Z"


@pytest.mark.parametrize(
    "text",
    ["2025-06-01", "2025-06-01 12:34:56Z", "2025-06-01T12:34:56.Z", "2025-06-01T25:00:00Z", "2025-06-01T12:34:56+0200", "x", ""],
)
def test_fig_datetime_rejects_malformed(text: str) -> None:
    with pytest.raises(ValueError):
        FigDateTime.parse(text)


def test_start_time_offset_spelling_kept_on_the_wire() -> None:
    data = fixture("ClientStatusChanged.connected.json")
    data["StartTime"] = "2025-06-01T14:34:56.1234567+02:00"
    event = parse_event("ClientStatusChanged", data)
    assert event.start_time.ticks == TICKS_123456  # type: ignore[attr-defined]
    assert b'"StartTime":"2025-06-01T14:34:56.1234567+02:00"' in event.to_json()


@pytest.mark.parametrize("text", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_datetime_out_of_range_after_offset_is_an_event_error(text: str) -> None:
    data = fixture("SecurityEvent.json")
    data["Timestamp"] = text
    with pytest.raises(EventError) as err:
        parse_event("SecurityEvent", data)
    assert err.value.field == "Timestamp"
