"""The pagerduty client type inside real figrelay daemons (figrelay.testing's kit), against the fake
PagerDuty: Fig's events in, PagerDuty incidents opened and closed, across a restart."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from figrelay.testing import Daemon, DaemonFactory, FigSender, figrelay_config, wait_until
from pagerduty_testing import ROUTING_KEY, FakePagerDuty, running_fake_pagerduty

MIN_SESSIONS_KEY = "figrelay/oncall/MinRunSessions/OrdersApi/min 2"
HEALTH_KEY = "figrelay/oncall/HealthStatusChanged/OrdersApi//orders-1"


@pytest.fixture
async def fake_pagerduty() -> AsyncIterator[FakePagerDuty]:
    async with running_fake_pagerduty() as fake:
        yield fake


@pytest.fixture
def daemons(figrelay_daemon: DaemonFactory, monkeypatch: pytest.MonkeyPatch) -> DaemonFactory:
    """The kit's real ``figrelay run`` processes, the routing key in their environment."""
    monkeypatch.setenv("PAGERDUTY_ROUTING_KEY", ROUTING_KEY)
    return figrelay_daemon


def oncall_config(api_url: str, hooks: list[dict[str, Any]], **options: Any) -> str:
    client = {"name": "oncall", "type": "pagerduty", "routing_key": "${PAGERDUTY_ROUTING_KEY}", "api_url": api_url, "min_interval": "0s", **options}
    return figrelay_config(clients=[client], hooks=hooks)


def session(n: int, event: int) -> dict[str, Any]:
    """The fields of a ClientStatusChanged for OrdersApi's run session ``n`` (0 connected, 1 disconnected)."""
    return {"ConnectionEvent": event, "Instance": None, "Hostname": f"orders-{n}", "IpAddress": f"10.0.0.{n}", "StartTime": f"2025-06-01T12:00:0{n}Z"}


def health(status: int) -> dict[str, Any]:
    return {"Status": status, "Hostname": "orders-1", "IpAddress": "10.0.0.1", "HealthDetails": {"Status": status, "Components": []}}


async def send(daemon: Daemon, route: str, **fields: Any) -> None:
    sent = await FigSender(daemon.url, daemon.secret).send(route, **fields)
    assert sent.accepted, sent


def assert_no_routing_key(daemon: Daemon) -> None:
    assert ROUTING_KEY not in daemon.log
    for delivery in daemon.state.deliveries():
        for attempt in daemon.state.attempts(delivery.delivery_id):
            assert ROUTING_KEY not in (attempt.reason or "")


async def test_an_incident_opened_before_a_restart_is_resolved_after_it(daemons, fake_pagerduty):
    """The dedup_key is derived from the events, not remembered: a second process on the same
    state dir resolves the incidents the first one opened."""
    config = oncall_config(fake_pagerduty.url, [
        {"event": "MinRunSessions", "client": "oncall", "client_regex": "^Orders", "min_sessions": 2},
        {"event": "HealthStatusChanged", "client": "oncall"},
    ])
    first = await daemons(config)
    await send(first, "ClientStatusChanged", **session(1, 0))
    await send(first, "ClientStatusChanged", **session(2, 0))  # 2 sessions: MinimumRestored, a resolve of nothing
    await send(first, "ClientStatusChanged", **session(2, 1))  # 1 session: BelowMinimum
    await send(first, "HealthStatusChanged", **health(2))
    await wait_until(lambda: sorted(fake_pagerduty.open()) == [HEALTH_KEY, MIN_SESSIONS_KEY], what="two open incidents",
                     seen=lambda: f"PagerDuty got {fake_pagerduty.actions()}")
    await first.wait_for_deliveries(3, client="oncall")  # recorded as delivered: none is sent again after the restart
    assert await first.stop() == 0
    assert_no_routing_key(first)

    second = await daemons(config)
    assert second.state_dir == first.state_dir and second.proc is not None and first.proc is not None and second.proc.pid != first.proc.pid
    await send(second, "ClientStatusChanged", **session(3, 0))  # 2 sessions again (counted across the restart): MinimumRestored
    await send(second, "HealthStatusChanged", **health(0))
    await wait_until(lambda: len(fake_pagerduty.accepted) == 5, what="five events at PagerDuty", seen=lambda: f"PagerDuty got {fake_pagerduty.actions()}")
    assert fake_pagerduty.open() == {}
    assert [a for a in fake_pagerduty.actions() if a[1] == MIN_SESSIONS_KEY] == [
        ("resolve", MIN_SESSIONS_KEY), ("trigger", MIN_SESSIONS_KEY), ("resolve", MIN_SESSIONS_KEY)]
    assert [a for a in fake_pagerduty.actions() if a[1] == HEALTH_KEY] == [("trigger", HEALTH_KEY), ("resolve", HEALTH_KEY)]
    assert [a.resolved for a in fake_pagerduty.alerts] == [True, True] and not fake_pagerduty.refused
    trigger = next(e for e in fake_pagerduty.accepted if e["event_action"] == "trigger" and e["dedup_key"] == MIN_SESSIONS_KEY)
    assert trigger["payload"]["summary"] == "OrdersApi: below minimum run sessions"
    assert trigger["payload"]["custom_details"]["Text"] == "Only 1 run session left (minimum 2)."
    await second.stop()
    assert_no_routing_key(second)


async def test_429_and_503_are_retried_honouring_retry_after(daemons, fake_pagerduty):
    fake_pagerduty.fail_next(web.Response(status=429, headers={"Retry-After": "1"}), web.Response(status=503, text="busy"))
    daemon = await daemons(oncall_config(fake_pagerduty.url, [{"event": "HealthStatusChanged", "client": "oncall"}]))
    await send(daemon, "HealthStatusChanged", **health(2))
    [delivered] = await daemon.wait_for_deliveries(1, client="oncall")
    attempts = daemon.state.attempts(delivered.delivery_id)
    assert [(a.outcome, a.status) for a in attempts] == [("retry", 429), ("retry", 503), ("delivered", 202)]
    assert "HTTP 429: over PagerDuty's rate limit for this routing key" in (attempts[0].reason or "")
    assert (attempts[1].reason or "").endswith("HTTP 503: busy")
    assert (attempts[2].reason or "").startswith(f"trigger {HEALTH_KEY} (critical): HTTP 202 Event processed")
    first, second, _ = fake_pagerduty.requests
    assert second.at - first.at >= 1.0, "not sooner than PagerDuty's Retry-After"
    assert list(fake_pagerduty.open()) == [HEALTH_KEY]
    assert_no_routing_key(daemon)


async def test_400_is_a_dead_letter_with_pagerdutys_message(daemons, fake_pagerduty):
    fake_pagerduty.fail_next(web.json_response(
        {"status": "invalid event", "message": "Event object is invalid", "errors": ["'payload.source' is missing or blank"]}, status=400))
    daemon = await daemons(oncall_config(fake_pagerduty.url, [{"event": "HealthStatusChanged", "client": "oncall"}]))
    await send(daemon, "HealthStatusChanged", **health(2))
    [dead] = await daemon.wait_for_deliveries(1, client="oncall", state="dead")
    assert dead.attempts == 1 and len(fake_pagerduty.requests) == 1
    assert dead.last_reason is not None and dead.last_reason.endswith(
        "HTTP 400: PagerDuty refused the event: Event object is invalid: 'payload.source' is missing or blank")
    [row] = daemon.state.dead_letters("oncall")
    assert "PagerDuty refused the event" in (row.last_error or "")
    assert_no_routing_key(daemon)


@pytest.mark.parametrize(("options", "env", "says"), [
    ({}, {"PAGERDUTY_ROUTING_KEY": "abc123-not-a-key"}, "clients[0].routing_key: is 16 characters long; a routing key has 32"),
    ({"routing_key": "${file:routing-key}"}, {}, "clients[0].routing_key: must be 32 letters and digits"),
    ({"api_url": "http://events.pagerduty.com"}, {}, "clients[0].api_url: must use https://"),
    ({"api_url": "https://events.pagerduty.com/v2/enqueue"}, {}, "clients[0].api_url: must be the base URL, without /v2/enqueue"),
    ({"severity": {"Unhealty": "critical"}}, {}, "clients[0].severity: 'Unhealty' is not a condition; did you mean 'Unhealthy'?"),
])
async def test_check_names_the_key_of_a_bad_option_and_never_the_routing_key(options, env, says, daemons, tmp_path):
    (tmp_path / "routing-key").write_text(ROUTING_KEY[:31] + "!\n")
    config = oncall_config(**{"api_url": "https://events.pagerduty.com", "hooks": [{"event": "HealthStatusChanged", "client": "oncall"}], **options})
    result = await daemons.check(config, env=env)
    said = result.stdout + result.stderr
    assert not result.ok and says in said, said
    for secret in ("abc123-not-a-key", ROUTING_KEY[:31]):
        assert secret not in said

