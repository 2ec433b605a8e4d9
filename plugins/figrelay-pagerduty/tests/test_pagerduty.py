"""The pagerduty client type against a fake PagerDuty Events API v2 on a real local server."""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from pydantic import ValidationError

import figrelay_pagerduty
from figrelay.delivery import ClientContext, ClientType, Delivered, Delivery, Failed, Outcome, Retry
from figrelay.events import FigEvent, parse_event
from figrelay.messages import Message, Severity, describe
from figrelay.plugins import load_plugins
from figrelay.samples import sample_events
from figrelay.samples import test_button_events as fig_test_button_events  # not collected as a test
from figrelay.testing import Received, http_receiver
from figrelay_pagerduty import (
    MAX_DEDUP_KEY,
    MAX_EVENT_BYTES,
    MAX_NAME,
    MAX_SUMMARY,
    IncidentOrder,
    PagerDutyOptions,
    PagerDutyTarget,
    dedup_key,
)
from pagerduty_testing import ROUTING_KEY, FakePagerDuty, running_fake_pagerduty

ACCEPTED_AT = 1_750_000_000.25
"""When the intake took the events of these tests (a Unix time)."""


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def fake_pagerduty() -> AsyncIterator[FakePagerDuty]:
    async with running_fake_pagerduty() as fake:
        yield fake


def target(http: aiohttp.ClientSession, url: str, **options: Any) -> PagerDutyTarget:
    options = {"routing_key": ROUTING_KEY, "api_url": url, **options}
    return PagerDutyTarget(ClientContext("oncall", PagerDutyOptions(**options), http, logging.getLogger("test"), Path(".")))


def delivery(event: FigEvent, minimum: int | None = None, *, message: Message | None = None, at: float = ACCEPTED_AT,
             client: str = "oncall", delivery_id: str | None = None) -> Delivery:
    return Delivery(delivery_id or uuid.uuid4().hex, client, event, event.to_json(), 1, at,
                    message if message is not None else describe(event, minimum), (), minimum)


def fig(route: str, **fields: Any) -> FigEvent:
    """A Fig event of ``route``: its first sample's fields, overridden by ``fields`` (PascalCase)."""
    return parse_event(route, {**sample_events(route)[0].to_wire(), **fields})


def below(client: str = "OrdersApi", sessions: int = 1, **fields: Any) -> FigEvent:
    return fig("MinRunSessions", ClientName=client, RunSessions=sessions, RunSessionsEvent=0, **fields)


def restored(client: str = "OrdersApi", sessions: int = 2, **fields: Any) -> FigEvent:
    return fig("MinRunSessions", ClientName=client, RunSessions=sessions, RunSessionsEvent=1, **fields)


def health(status: int, host: str = "orders-host-1", **fields: Any) -> FigEvent:
    return fig("HealthStatusChanged", Status=status, Hostname=host, HealthDetails={"Status": status, "Components": []}, **fields)


def status(event: int, **fields: Any) -> FigEvent:
    return fig("ClientStatusChanged", ConnectionEvent=event, **fields)


def login(success: bool, **fields: Any) -> FigEvent:
    return fig("SecurityEvent", Success=success, FailureReason=None if success else "Invalid password", **fields)


async def send(t: PagerDutyTarget, *deliveries: Delivery) -> list[Outcome]:
    return [await t.deliver(d) for d in deliveries]


# --- what each event becomes ----------------------------------------------------------------------

SAMPLES = sample_events()
EXPECTED = [  # (action, severity, dedup_key) for each of figrelay's sample events, in order
    ("resolve", None, "figrelay/oncall/ClientStatusChanged/OrdersApi/"),
    ("trigger", "warning", "figrelay/oncall/ClientStatusChanged/OrdersApi/blue"),
    ("change", None, None),
    ("change", None, None),
    ("change", None, None),
    ("trigger", "critical", "figrelay/oncall/MinRunSessions/OrdersApi/min 2"),
    ("resolve", None, "figrelay/oncall/MinRunSessions/OrdersApi/min 2"),
    ("trigger", "warning", "figrelay/oncall/HealthStatusChanged/OrdersApi//orders-host-1"),
    ("trigger", "error", "figrelay/oncall/SecurityEvent/Login/alice"),
    (None, None, None),
]
TEST_BUTTON = fig_test_button_events()
EXPECTED_TEST_BUTTON = [  # the seven payloads of Fig's Test button, in its order
    ("resolve", None, "figrelay-test/oncall/ClientStatusChanged/Test/"),
    ("change", None, None),
    ("change", None, None),
    ("change", None, None),
    ("trigger", "info", "figrelay-test/oncall/MinRunSessions/Test/min 2"),
    ("resolve", None, "figrelay-test/oncall/HealthStatusChanged/Test//server1"),
    (None, None, None),
]


def sent_as(fake: FakePagerDuty, outcome: Outcome) -> tuple[str | None, str | None, str | None]:
    """(action, severity, dedup_key) of what one delivery made the fake PagerDuty receive."""
    assert not fake.refused, fake.refused
    if not fake.requests:
        assert isinstance(outcome, Delivered) and outcome.detail.startswith("not sent: "), outcome
        return None, None, None
    [request] = fake.requests
    if request.path == "/v2/change/enqueue":
        assert outcome == Delivered("change event: HTTP 202 Change event processed", 202)
        return "change", None, None
    sent = request.json
    assert isinstance(outcome, Delivered) and outcome.detail.startswith(f"{sent['event_action']} {sent['dedup_key']}")
    return sent["event_action"], sent.get("payload", {}).get("severity"), sent["dedup_key"]


@pytest.mark.parametrize(("event", "expected"), list(zip(SAMPLES + TEST_BUTTON, EXPECTED + EXPECTED_TEST_BUTTON, strict=True)),
                         ids=[f"{e.route}-{i}{'-test' if e.test else ''}" for i, e in enumerate(SAMPLES + TEST_BUTTON)])
async def test_what_every_sample_and_test_button_event_becomes(event, expected, fake_pagerduty, http):
    outcome = await target(http, fake_pagerduty.url).deliver(delivery(event, minimum=2 if event.route == "MinRunSessions" else None))
    assert sent_as(fake_pagerduty, outcome) == expected


async def test_a_trigger_carries_what_an_on_call_engineer_needs(fake_pagerduty, http):
    event = below(sessions=1, Instance="blue")
    d = delivery(event, minimum=2)
    assert await target(http, fake_pagerduty.url).deliver(d) == Delivered(
        "trigger figrelay/oncall/MinRunSessions/OrdersApi/min 2 (critical): HTTP 202 Event processed", 202)
    sent = fake_pagerduty.requests[0].json
    assert fake_pagerduty.requests[0].path == "/v2/enqueue"
    assert fake_pagerduty.requests[0].header("Content-Type") == "application/json; charset=utf-8"
    assert sent == {
        "routing_key": ROUTING_KEY,
        "event_action": "trigger",
        "dedup_key": "figrelay/oncall/MinRunSessions/OrdersApi/min 2",
        "payload": {
            "summary": "OrdersApi: below minimum run sessions",
            "source": "OrdersApi",
            "severity": "critical",
            "timestamp": "2025-06-15T15:06:40.250+00:00",
            "component": "OrdersApi",
            "group": "blue",
            "class": "BelowMinimum",
            "custom_details": {
                "Text": "Only 1 run session left (minimum 2).",
                "Run sessions": "1",
                "Instance": "blue",
                "Fig event": "MinRunSessions (BelowMinimum)",
                "Setting client": "OrdersApi",
                "Minimum run sessions": 2,
                "figrelay client": "oncall",
                "figrelay delivery": d.id,
                "Fig payload": event.to_wire(),
            },
        },
        "client": "Fig",
        "client_url": "http://localhost:5050/clients",
        "links": [{"href": "http://localhost:5050/clients", "text": "Open in Fig"}],
    }
    assert datetime.fromisoformat(sent["payload"]["timestamp"]).timestamp() == ACCEPTED_AT


async def test_a_resolve_names_only_the_incident(fake_pagerduty, http):
    await target(http, fake_pagerduty.url).deliver(delivery(restored(), minimum=2))
    assert fake_pagerduty.requests[0].json == {
        "routing_key": ROUTING_KEY, "event_action": "resolve", "dedup_key": "figrelay/oncall/MinRunSessions/OrdersApi/min 2"}


async def test_health_is_about_its_host(fake_pagerduty, http):
    event = parse_event("HealthStatusChanged", {
        "ClientName": "OrdersApi", "Instance": "eu", "Hostname": "orders-7", "IpAddress": "10.0.0.7", "Status": 2,
        "HealthDetails": {"Status": 2, "Components": [{"Name": "Database", "Status": 2, "Message": "connection refused"}]},
        "Link": "http://fig.example/clients", "IsTest": False})
    await target(http, fake_pagerduty.url).deliver(delivery(event))
    payload = fake_pagerduty.requests[0].json["payload"]
    assert (payload["summary"], payload["source"], payload["component"], payload["group"], payload["class"], payload["severity"]) == (
        "OrdersApi: Unhealthy", "orders-7", "OrdersApi", "eu", "Unhealthy", "critical")
    assert payload["custom_details"]["Database"] == "Unhealthy: connection refused"
    assert fake_pagerduty.requests[0].json["dedup_key"] == "figrelay/oncall/HealthStatusChanged/OrdersApi/eu/orders-7"


async def test_a_failed_login_carries_its_own_time_and_the_fig_server(fake_pagerduty, http):
    await target(http, fake_pagerduty.url).deliver(delivery(login(False)))
    sent = fake_pagerduty.requests[0].json
    assert sent["payload"]["timestamp"] == "2025-06-01T12:35:10.987+00:00"
    assert (sent["payload"]["source"], sent["payload"]["component"], sent["payload"]["summary"]) == ("fig-api.example.com", "Fig Login", "Failed login for alice")
    assert sent["client_url"] == "http://localhost:5050/security"
    assert sent["payload"]["custom_details"]["Reason"] == "Invalid password"


async def test_setting_changes_and_registrations_go_to_the_timeline_as_change_events(fake_pagerduty, http):
    t = target(http, fake_pagerduty.url)
    await send(t, *(delivery(e) for e in sample_events("SettingValueChanged") + sample_events("NewClientRegistration")))
    assert [r.path for r in fake_pagerduty.requests] == ["/v2/change/enqueue"] * 2
    change = fake_pagerduty.changes[0]
    assert set(change) == {"routing_key", "payload", "links"}, "a change event has no action, key or severity"
    assert change["payload"]["summary"] == "OrdersApi: 2 settings changed"
    assert change["payload"]["source"] == "OrdersApi"
    assert change["payload"]["custom_details"]["Changed by"] == "admin"
    assert change["payload"]["custom_details"]["Reason"] == "Increase timeout for peak"
    assert change["links"] == [{"href": "http://localhost:5050/", "text": "Open in Fig"}]
    assert fake_pagerduty.changes[1]["payload"]["summary"] == "OrdersApi: new client registered"


async def test_change_events_can_be_turned_off(fake_pagerduty, http):
    t = target(http, fake_pagerduty.url, change_events=False)
    [outcome] = await send(t, delivery(sample_events("SettingValueChanged")[0]))
    assert outcome == Delivered("not sent: SettingValueChanged is a change, and change_events is off")
    assert fake_pagerduty.requests == []


# --- pairing: a trigger and the event that ends it share a key ------------------------------------


async def test_below_minimum_and_minimum_restored_open_and_close_one_incident(fake_pagerduty, http):
    t = target(http, fake_pagerduty.url)
    await send(t, delivery(below(sessions=1), minimum=2))
    assert list(fake_pagerduty.open()) == ["figrelay/oncall/MinRunSessions/OrdersApi/min 2"]
    await send(t, delivery(restored(sessions=2), minimum=2))
    assert fake_pagerduty.open() == {}
    assert [a.resolved for a in fake_pagerduty.alerts] == [True]


async def test_each_minimum_and_each_setting_client_is_its_own_incident(fake_pagerduty, http):
    t = target(http, fake_pagerduty.url)
    await send(t, delivery(below("OrdersApi"), minimum=2), delivery(below("OrdersApi"), minimum=3), delivery(below("PaymentsApi"), minimum=2),
               delivery(below("OrdersApi")))  # Fig's own MinRunSessions (no min_sessions): its minimum is not known
    assert sorted(fake_pagerduty.open()) == [
        "figrelay/oncall/MinRunSessions/OrdersApi/fig", "figrelay/oncall/MinRunSessions/OrdersApi/min 2",
        "figrelay/oncall/MinRunSessions/OrdersApi/min 3", "figrelay/oncall/MinRunSessions/PaymentsApi/min 2"]
    await send(t, delivery(restored("OrdersApi"), minimum=3))
    assert "figrelay/oncall/MinRunSessions/OrdersApi/min 3" not in fake_pagerduty.open() and len(fake_pagerduty.open()) == 3


async def test_degraded_then_unhealthy_is_one_incident_that_healthy_resolves(fake_pagerduty, http):
    t = target(http, fake_pagerduty.url)
    await send(t, delivery(health(1)), delivery(health(2)), delivery(health(2, host="orders-host-2")))
    alerts = fake_pagerduty.open()
    assert [t["payload"]["severity"] for t in alerts["figrelay/oncall/HealthStatusChanged/OrdersApi//orders-host-1"].triggers] == ["warning", "critical"]
    await send(t, delivery(health(0)))
    assert list(fake_pagerduty.open()) == ["figrelay/oncall/HealthStatusChanged/OrdersApi//orders-host-2"], "another host's incident stays open"


async def test_a_disconnect_is_resolved_by_the_next_connect_of_that_client(fake_pagerduty, http):
    t = target(http, fake_pagerduty.url)
    await send(t, delivery(status(1, Hostname="orders-host-1")))
    assert list(fake_pagerduty.open()) == ["figrelay/oncall/ClientStatusChanged/OrdersApi/"]
    await send(t, delivery(status(0, Hostname="orders-host-9", StartTime="2025-06-02T00:00:00Z")))
    assert fake_pagerduty.open() == {}


async def test_without_resolve_on_connected_a_connect_is_not_sent(fake_pagerduty, http):
    t = target(http, fake_pagerduty.url, resolve_on_connected=False)
    outcomes = await send(t, delivery(status(1)), delivery(status(0)))
    assert outcomes[1] == Delivered("not sent: Connected, and resolve_on_connected is off")
    assert len(fake_pagerduty.open()) == 1


async def test_repeated_failed_logins_of_one_user_add_to_one_alert(fake_pagerduty, http):
    t = target(http, fake_pagerduty.url)
    await send(t, delivery(login(False)), delivery(login(False)), delivery(login(False, Username="bob")), delivery(login(True)))
    open_alerts = fake_pagerduty.open()
    assert sorted(open_alerts) == ["figrelay/oncall/SecurityEvent/Login/alice", "figrelay/oncall/SecurityEvent/Login/bob"]
    assert len(open_alerts["figrelay/oncall/SecurityEvent/Login/alice"].triggers) == 2
    assert len(fake_pagerduty.requests) == 3, "a successful login is not sent"


def test_the_key_is_derived_from_the_event_alone():
    """Nothing is remembered: the same event gives the same key in any process, at any time."""
    a, b = below(Instance="x"), restored(Instance="y", sessions=5)
    assert dedup_key("oncall", a, 2) == dedup_key("oncall", b, 2) == "figrelay/oncall/MinRunSessions/OrdersApi/min 2"
    assert dedup_key("other", a, 2) != dedup_key("oncall", a, 2)
    # parts never run together, whatever the names hold
    assert dedup_key("on/call", below("Orders")) != dedup_key("on", below("call/Orders"))
    assert dedup_key("oncall", below("a%2Fb")) != dedup_key("oncall", below("a/b"))
    assert dedup_key("oncall", fig("SettingValueChanged")) is None


# --- severity and which conditions trigger ------------------------------------------------------------


async def test_severity_per_condition_can_be_overridden_or_turned_off(fake_pagerduty, http):
    t = target(http, fake_pagerduty.url, severity={"Degraded": "critical", "BelowMinimum": "off", "FailedLogin": "Warning"})
    outcomes = await send(t, delivery(health(1)), delivery(below(), minimum=2), delivery(restored(), minimum=2), delivery(login(False)))
    assert [r.json["payload"]["severity"] for r in fake_pagerduty.requests] == ["critical", "warning"]
    assert outcomes[1] == Delivered("not sent: BelowMinimum is off in severity")
    assert outcomes[2] == Delivered("not sent: BelowMinimum is off in severity, so MinimumRestored resolves nothing")


async def test_unknown_health_is_off_unless_given_a_severity(fake_pagerduty, http):
    [outcome] = await send(target(http, fake_pagerduty.url), delivery(health(3)))
    assert outcome == Delivered("not sent: Unknown is off in severity") and fake_pagerduty.requests == []
    await send(target(http, fake_pagerduty.url, severity={"Unknown": "info"}), delivery(health(3)))
    assert fake_pagerduty.requests[0].json["payload"]["severity"] == "info"


async def test_a_failed_security_event_of_another_type_has_its_own_condition(fake_pagerduty, http):
    t = target(http, fake_pagerduty.url, severity={"FailedPasswordReset": "critical"})
    await send(t, delivery(login(False, EventType="password reset")), delivery(login(False, EventType="Logout")))
    sent = [r.json for r in fake_pagerduty.requests]
    assert [(s["payload"]["class"], s["payload"]["severity"]) for s in sent] == [("FailedPasswordReset", "critical"), ("FailedLogout", "error")]


def test_yaml_off_which_is_false_means_off():
    assert PagerDutyOptions(routing_key=ROUTING_KEY, severity={"Disconnected": False}).severity_of("Disconnected") == "off"


async def test_test_events_are_marked_and_page_nobody(fake_pagerduty, http):
    event = parse_event("HealthStatusChanged", {**health(2).to_wire(), "IsTest": True})
    await send(target(http, fake_pagerduty.url), delivery(event), delivery(event, message=Message("custom title", "", Severity.CRITICAL)))
    first, second = (r.json for r in fake_pagerduty.requests)
    assert first["payload"]["summary"] == "[Test] OrdersApi: Unhealthy" and first["payload"]["severity"] == "info"
    assert first["dedup_key"].startswith("figrelay-test/")
    assert second["payload"]["summary"] == "[TEST] custom title", "a template's title is marked too"


async def test_the_summary_is_the_message_title_so_templates_apply(fake_pagerduty, http):
    message = Message("Orders is down to {{ RunSessions }}\n  sessions", "Call the orders team.", Severity.CRITICAL, link="http://fig.example/")
    await send(target(http, fake_pagerduty.url), delivery(below(), minimum=2, message=message))
    sent = fake_pagerduty.requests[0].json
    assert sent["payload"]["summary"] == "Orders is down to {{ RunSessions }} sessions"
    assert sent["payload"]["custom_details"]["Text"] == "Call the orders team."
    assert sent["client_url"] == "http://fig.example/"
    await send(target(http, fake_pagerduty.url), delivery(below(), minimum=2, message=Message(" ", "", Severity.CRITICAL)))
    assert fake_pagerduty.requests[1].json["payload"]["summary"] == "OrdersApi: below minimum run sessions", "a blank title falls back"


async def test_source_component_and_group_can_be_set(fake_pagerduty, http):
    t = target(http, fake_pagerduty.url, source="fig-prod", component="orders", group="payments-stack")
    await send(t, delivery(health(2)), delivery(sample_events("SettingValueChanged")[0]))
    alert, change = (r.json for r in fake_pagerduty.requests)
    assert (alert["payload"]["source"], alert["payload"]["component"], alert["payload"]["group"]) == ("fig-prod", "orders", "payments-stack")
    assert change["payload"]["source"] == "fig-prod"


async def test_a_batch_is_sent_one_event_at_a_time_in_order(fake_pagerduty, http):
    """figrelay sends one delivery per send (max_batch 1), even when the client coalesces; a
    caller that hands over several gets each sent, oldest first."""
    first, second = delivery(below(), minimum=2), delivery(restored(), minimum=2)
    batch = Delivery(first.id, first.client, first.event, first.body, 1, first.created_at, None, (first, second), 2)
    assert isinstance(await target(http, fake_pagerduty.url).deliver(batch), Delivered)
    assert [a for a, _ in fake_pagerduty.actions()] == ["trigger", "resolve"]


# --- PagerDuty's answers ----------------------------------------------------------------------------


async def test_429_is_retried_after_its_retry_after(fake_pagerduty, http):
    fake_pagerduty.fail_next(web.Response(status=429, text="", headers={"Retry-After": "7"}), web.Response(status=429))
    t = target(http, fake_pagerduty.url)
    first = await t.deliver(delivery(sample_events("SettingValueChanged")[0]))
    assert first == Retry("change event: HTTP 429: over PagerDuty's rate limit for this routing key (about 120 events a minute)", 7.0, 429)
    second = await t.deliver(delivery(sample_events("SettingValueChanged")[0]))
    assert isinstance(second, Retry) and second.retry_after == 30.0, "without Retry-After, 30 s apart as PagerDuty suggests"


@pytest.mark.parametrize(("answer", "reason", "retry_after"), [
    (web.Response(status=503, text="<html>Service Unavailable</html>"), "HTTP 503: <html>Service Unavailable</html>", None),
    (web.Response(status=502, headers={"Retry-After": "2"}), "HTTP 502", 2.0),
    (web.json_response({"status": "error", "message": "Internal Server Error", "errors": ["try again"]}, status=500),
     "HTTP 500: Internal Server Error: try again", None),
    (web.Response(status=408), "HTTP 408", None),
])
async def test_5xx_and_timeouts_are_retried(answer, reason, retry_after, fake_pagerduty, http):
    fake_pagerduty.fail_next(answer)
    outcome = await target(http, fake_pagerduty.url).deliver(delivery(health(2)))
    assert outcome == Retry(f"trigger figrelay/oncall/HealthStatusChanged/OrdersApi//orders-host-1 (critical): {reason}", retry_after, answer.status)


async def test_400_is_a_dead_letter_with_pagerdutys_own_message(fake_pagerduty, http):
    fake_pagerduty.fail_next(web.json_response(
        {"status": "invalid event", "message": "Event object is invalid", "errors": ["'payload.summary' is missing or blank", "'payload.source' is missing"]},
        status=400))
    outcome = await target(http, fake_pagerduty.url).deliver(delivery(health(2)))
    assert outcome == Failed("trigger figrelay/oncall/HealthStatusChanged/OrdersApi//orders-host-1 (critical): HTTP 400: PagerDuty refused the event: "
                             "Event object is invalid: 'payload.summary' is missing or blank; 'payload.source' is missing", 400)


async def test_a_routing_key_pagerduty_does_not_know_says_which_key_to_check(http):
    async with http_receiver() as receiver:
        fake = FakePagerDuty(receiver, routing_key="another0routing0key0000000000000")
        outcome = await target(http, fake.url).deliver(delivery(health(2)))
    assert isinstance(outcome, Failed) and outcome.status == 400
    assert outcome.reason.endswith("HTTP 400: PagerDuty refused the event: Event object is invalid: Invalid routing key; check routing_key: the Integration "
                                   "Key of an Events API V2 integration (a service's Integrations tab in PagerDuty)")


@pytest.mark.parametrize(("answer", "words"), [
    (web.Response(status=200, text="<html>captive portal</html>"), "HTTP 200 but not an answer of PagerDuty's Events API (<html>captive portal</html>) from"),
    (web.json_response({"ok": True}, status=202), "HTTP 202 but not an answer of PagerDuty's Events API"),
    (web.Response(status=404, text="nope"), "HTTP 404: no Events API at"),
    (web.Response(status=301, headers={"Location": "https://elsewhere.example/"}), "HTTP 301: a redirect, which figrelay does not follow; check api_url"),
    (web.Response(status=403, text="forbidden"), "HTTP 403: forbidden"),
])
async def test_answers_that_are_not_pagerdutys_are_dead_letters_naming_api_url(answer, words, fake_pagerduty, http):
    fake_pagerduty.fail_next(answer)
    outcome = await target(http, fake_pagerduty.url).deliver(delivery(health(2)))
    assert isinstance(outcome, Failed) and words in outcome.reason, outcome


async def test_unreachable_or_silent_pagerduty_is_retried(http):
    async with http_receiver() as gone:
        url = gone.url
    outcome = await target(http, url).deliver(delivery(health(2)))
    assert isinstance(outcome, Retry) and f"cannot reach {url}/v2/enqueue" in outcome.reason
    gate = asyncio.Event()

    async def hang(request: Received) -> web.Response:
        await gate.wait()
        return web.Response(status=202)

    async with http_receiver() as slow:
        slow.responder = hang
        outcome = await target(http, slow.url, timeout="0.2s").deliver(delivery(health(2)))
        gate.set()
    assert isinstance(outcome, Retry) and outcome.reason.endswith(f"no answer from {slow.url}/v2/enqueue within 0.2s")


# --- order: a trigger that waits for its retry is never overtaken by its resolve -------------------


async def test_a_resolve_waits_for_its_trigger_that_is_being_retried(fake_pagerduty, http):
    t = target(http, fake_pagerduty.url)
    trigger, resolve = delivery(below(), minimum=2, at=100.0), delivery(restored(), minimum=2, at=101.0)
    fake_pagerduty.fail_next(web.Response(status=429, headers={"Retry-After": "1"}))
    assert isinstance(await t.deliver(trigger), Retry)
    held = await t.deliver(resolve)
    assert isinstance(held, Retry) and held.reason.startswith(f"held back: delivery {trigger.id}, an earlier event of the same incident")
    assert len(fake_pagerduty.requests) == 1, "the resolve was not sent"
    assert isinstance(await t.deliver(delivery(health(2))), Delivered), "other incidents go on"
    assert isinstance(await t.deliver(trigger), Delivered)
    assert isinstance(await t.deliver(resolve), Delivered)
    assert [a for a, _ in fake_pagerduty.actions()] == ["trigger", "trigger", "resolve"] and len(fake_pagerduty.open()) == 1
    assert t.order.waiting == 0


async def test_concurrent_sends_of_one_incident_go_one_at_a_time_in_order(http):
    """With max_in_flight above 1 the dispatcher starts the trigger and its resolve together:
    the resolve waits for the trigger's answer, and is held back when it must be retried."""
    gate = asyncio.Event()
    async with http_receiver() as receiver:
        fake = FakePagerDuty(receiver)

        async def slow_429(request: Received) -> web.Response:
            await gate.wait()
            return web.Response(status=429)

        receiver.responder = slow_429
        t = target(http, fake.url)
        trigger, resolve = delivery(below(), minimum=2, at=100.0), delivery(restored(), minimum=2, at=101.0)
        sends = [asyncio.ensure_future(t.deliver(trigger)), asyncio.ensure_future(t.deliver(resolve))]
        await receiver.wait_for(1)
        gate.set()
        first, second = await asyncio.gather(*sends)
    assert isinstance(first, Retry) and isinstance(second, Retry) and second.reason.startswith("held back")
    assert len(receiver.requests) == 1


def test_a_hold_ends_when_the_earlier_delivery_stops_being_retried():
    now = [0.0]
    order = IncidentOrder(clock=lambda: now[0], hold_max=60.0)
    trigger, resolve, older = delivery(below(), at=100.0), delivery(restored(), at=101.0), delivery(below(), at=50.0)
    order.record("k", trigger, Retry("HTTP 503"))
    assert order.blocker("k", resolve) == trigger.id
    assert order.blocker("k", trigger) is None and order.blocker("k", older) is None, "the waiting one itself, and older ones, go"
    now[0] = 61.0
    assert order.blocker("k", resolve) is None, "a delivery not retried within hold_max (dead, purged) no longer holds the rest"
    order.record("k", trigger, Retry("HTTP 503"))
    order.record("k", trigger, Failed("HTTP 400"))
    assert order.blocker("k", resolve) is None, "a dead letter holds nothing back"


# --- limits -------------------------------------------------------------------------------------------


async def test_a_long_summary_is_cut_to_1024_characters_with_an_ellipsis(fake_pagerduty, http):
    event = below("Orders" + "Api" * 700)
    await send(target(http, fake_pagerduty.url), delivery(event, minimum=2))
    assert not fake_pagerduty.refused
    sent = fake_pagerduty.requests[0].json
    summary = sent["payload"]["summary"]
    assert len(summary) == MAX_SUMMARY and summary.endswith("…") and summary.startswith("OrdersApiApi")
    assert len(sent["dedup_key"]) <= MAX_DEDUP_KEY
    for name in ("source", "component"):
        assert len(sent["payload"][name]) == MAX_NAME and sent["payload"][name].endswith("…")


def test_a_long_dedup_key_stays_unique_and_stable():
    a, b = "Orders" + "x" * 400 + "A", "Orders" + "x" * 400 + "B"
    key_a, key_b = dedup_key("oncall", below(a), 2), dedup_key("oncall", below(b), 2)
    assert len(key_a) == len(key_b) == MAX_DEDUP_KEY
    assert key_a != key_b and key_a == dedup_key("oncall", restored(a), 2)
    assert key_a.startswith("figrelay/oncall/MinRunSessions/Ordersxxx")


async def test_an_event_over_512000_bytes_loses_details_not_the_alert(fake_pagerduty, http):
    components = [{"Name": f"Component{i}", "Status": 2, "Message": "down " * 400} for i in range(400)]  # ~800 kB, twice
    event = parse_event("HealthStatusChanged", {**health(2).to_wire(), "HealthDetails": {"Status": 2, "Components": components}})
    d = delivery(event)
    await send(target(http, fake_pagerduty.url), d)
    assert not fake_pagerduty.refused
    request = fake_pagerduty.requests[0]
    assert len(request.body) <= MAX_EVENT_BYTES
    details = request.json["payload"]["custom_details"]
    assert "Fig payload" not in details
    assert details["Left out"].endswith(f"details were cut; figrelay trace {d.id} shows the whole event")
    assert details["Component0"].startswith("Unhealthy: down down") and details["Component0"].endswith("…")


async def test_a_link_that_is_not_http_or_too_long_is_left_out(fake_pagerduty, http):
    t = target(http, fake_pagerduty.url)
    for link in ("javascript:alert(1)", "http://fig.example/" + "a" * 3000, "http://fig.example/ x", None):
        await send(t, delivery(below(Link=link), minimum=2))
    for request in fake_pagerduty.requests:
        assert "links" not in request.json and "client_url" not in request.json and request.json["client"] == "figrelay"


# --- secrets ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("answer_status", [202, 400, 429, 500, 302])
async def test_no_text_names_the_routing_key_even_when_the_server_echoes_it(answer_status, http):
    def echo(request: Received) -> web.Response:
        key = request.json["routing_key"]
        if answer_status == 202:
            return web.json_response({"status": "success", "message": f"Event processed for {key}", "dedup_key": key}, status=202)
        return web.json_response({"status": "invalid event", "message": f"bad {key}", "errors": [key]}, status=answer_status,
                                 headers={"Location": f"https://x.example/{key}"})

    async with http_receiver() as receiver:
        receiver.responder = echo
        outcome = await target(http, receiver.url).deliver(delivery(health(2)))
    text = outcome.detail if isinstance(outcome, Delivered) else outcome.reason
    assert ROUTING_KEY not in text


def test_the_options_never_show_the_routing_key():
    options = PagerDutyOptions(routing_key=ROUTING_KEY)
    assert ROUTING_KEY not in repr(options) and ROUTING_KEY not in str(options.model_dump())


# --- options ------------------------------------------------------------------------------------------


def test_the_routing_key_is_required():
    with pytest.raises(ValidationError) as info:
        PagerDutyOptions()
    assert "routing_key\n  Field required" in str(info.value)


@pytest.mark.parametrize(("options", "message"), [
    ({"routing_key": ROUTING_KEY[:20]}, "is 20 characters long; a routing key has 32 (a REST API key has 20 and does not work here)"),
    ({"routing_key": ROUTING_KEY + "x"}, "is 33 characters long; a routing key has 32: the Integration Key of an Events API V2 integration"),
    ({"routing_key": ROUTING_KEY[:31] + "-"}, "must be 32 letters and digits"),
    ({"routing_key": f"https://events.pagerduty.com/{ROUTING_KEY}"}, "must be the key alone, not a URL"),
    ({"api_url": "http://events.pagerduty.com"}, "must use https://"),
    ({"api_url": "events.pagerduty.com"}, "must be an https:// URL with a host"),
    ({"api_url": "https://events.pagerduty.com/v2/enqueue"}, "must be the base URL, without /v2/enqueue"),
    ({"api_url": "https://events.pagerduty.com/?x=1"}, "without a query"),
    ({"severity": {"Unhealty": "error"}}, "'Unhealty' is not a condition; did you mean 'Unhealthy'?"),
    ({"severity": {"Degraded": "high"}}, "Degraded: must be one of critical, error, warning, info or off, got 'high'"),
    ({"severity": {"Degraded": True}}, "must be one of critical, error, warning, info or off, got True"),
    ({"source": " "}, "must be 1 to 255 characters"),
    ({"timeout": "0s"}, "more than 0"),
    ({"routing_key_": ROUTING_KEY}, "Extra inputs are not permitted"),
])
def test_options_are_validated_without_echoing_the_routing_key(options, message):
    with pytest.raises(ValidationError) as info:
        PagerDutyOptions(**{"routing_key": ROUTING_KEY, **options})
    assert message in str(info.value)
    assert ROUTING_KEY not in str(info.value) and ROUTING_KEY[:20] not in str(info.value)


@pytest.mark.parametrize(("api_url", "base"), [
    ("https://events.pagerduty.com/", "https://events.pagerduty.com"),
    ("https://events.eu.pagerduty.com", "https://events.eu.pagerduty.com"),
    ("https://proxy.example/pagerduty/", "https://proxy.example/pagerduty"),
    ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
    ("http://[::1]:8080/", "http://[::1]:8080"),
])
def test_api_url_forms(api_url, base):
    assert PagerDutyOptions(routing_key=f" {ROUTING_KEY}\n", api_url=api_url).api_url == base


def test_option_defaults():
    options = PagerDutyOptions(routing_key=ROUTING_KEY)
    assert options.routing_key.get_secret_value() == ROUTING_KEY
    assert (options.api_url, options.resolve_on_connected, options.change_events, options.timeout) == ("https://events.pagerduty.com", True, True, 10.0)
    assert [options.severity_of(c) for c in ("BelowMinimum", "Unhealthy", "Degraded", "Unknown", "Disconnected", "FailedLogin", "FailedLogout")] == [
        "critical", "critical", "warning", "off", "warning", "error", "error"]


# --- registration -------------------------------------------------------------------------------------


def test_registers_the_pagerduty_client_type():
    registry = load_plugins(extra=[("pagerduty", figrelay_pagerduty)], entry_points=False)
    assert not registry.failures
    pagerduty: ClientType = registry.client_types["pagerduty"]
    assert pagerduty.options is PagerDutyOptions and pagerduty.open is PagerDutyTarget
    assert pagerduty.renders_messages is True and pagerduty.max_batch == 1
    assert pagerduty.default_min_interval == 0.5 and pagerduty.default_coalesce == 0
    assert set(pagerduty.secret_options) == {"routing_key"}
    assert figrelay_pagerduty.FIGRELAY_PLUGIN_API == 1


def test_installed_as_a_distribution_with_a_figrelay_entry_point():
    [entry] = [e for e in importlib.metadata.entry_points(group="figrelay") if e.name == "pagerduty"]
    assert entry.value == "figrelay_pagerduty" and entry.dist is not None and entry.dist.name == "figrelay-pagerduty"

