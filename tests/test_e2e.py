"""End to end: the real daemon process, driven the way Fig and an operator drive it."""

from __future__ import annotations

import asyncio
import re
import signal
import sqlite3
from pathlib import Path

import aiohttp
from aiohttp import web

from conftest import FAST_DELIVERY, Receiver, event, fixture_bodies, route_of, wait_until, write_config
from figrelay.events import ROUTES

SECRET = "d21b0b4b-b978-4048-85be-eb73e057f6fb"
HASHED = "$2a$11$3xvQfzPYHvedNwRz.DWX8ecezdoiarEEuvAjL9BxBiUiPZ9BC/oYC"
AUTH = {"Authorization": f"Secret {SECRET}"}


def relay_config(receivers: dict[str, Receiver], hooks: str, extra: str = "", intake: str = f'  hashed_secret: "{HASHED}"') -> str:
    clients = "\n".join(
        f"""  - name: {name}
    type: http
    base_uri: {rec.url}/fig
    secret: downstream-{name}
""" for name, rec in receivers.items()
    )
    return daemon_config(clients, hooks, intake, extra)


def daemon_config(clients: str, hooks: str, intake: str, extra: str = "") -> str:
    """A whole configuration for a test daemon: a free port, fast retries, these parts."""
    return f"""listen: 127.0.0.1:0
state_dir: ./state
intake:
{intake}
{FAST_DELIVERY}
{extra}
clients:
{clients}
hooks:
{hooks}
"""


def all_routes_to(client: str) -> str:
    return "\n".join(f"  - {{event: {r}, client: {client}}}" for r in ROUTES)


def outbox_rows(daemon_dir: Path, state: str | None = None) -> list[tuple]:
    conn = sqlite3.connect(daemon_dir / "state" / "outbox.sqlite3")
    try:
        query = "SELECT id, client, route, state, attempts, last_error FROM deliveries"
        if state:
            return conn.execute(query + " WHERE state = ?", (state,)).fetchall()
        return conn.execute(query).fetchall()
    finally:
        conn.close()


async def test_every_fig_fixture_is_relayed_byte_identically(daemon_factory, receiver):
    d = await daemon_factory(relay_config({"siem": receiver}, all_routes_to("siem")))
    bodies = fixture_bodies()
    for name, body in bodies.items():
        status, payload = await d.post(route_of(name), body + b"\n", AUTH)
        assert status == 200, payload
        assert payload["status"] == "accepted" and len(payload["deliveries"]) == 1
    await wait_until(lambda: len(receiver.requests) == len(bodies), what="all fixtures relayed")
    by_body = {r.body: r for r in receiver.requests}
    for name, body in bodies.items():
        got = by_body.get(body)
        assert got is not None, f"{name} was not relayed byte-identically"
        assert got.path == f"/fig/{route_of(name)}"
        assert got.headers["Authorization"] == "Secret downstream-siem"
        assert got.headers["Content-Type"] == "application/json; charset=utf-8"
        assert len(got.headers["X-Figrelay-Delivery"]) == 32
    assert await d.stop() == 0
    assert outbox_rows(d.config_path.parent) == []


async def test_fig_test_button_is_acknowledged_fast_and_not_relayed(daemon_factory, receiver):
    d = await daemon_factory(relay_config({"siem": receiver}, all_routes_to("siem")))
    order = ["ClientStatusChanged", "SettingValueChanged", "NewClientRegistration", "UpdatedClientRegistration",
             "MinRunSessions", "HealthStatusChanged", "SecurityEvent"]
    for route in order:
        fields = {"IsTest": True, "Link": "https://localhost:7148/"}
        if route != "SecurityEvent":
            fields["ClientName"] = "Test"
        status, payload = await asyncio.wait_for(d.post(route, event(route, **fields), AUTH), timeout=2)
        assert status == 200 and payload == {"status": "test", "event": route, "event_id": payload["event_id"], "relayed": False}
        assert re.fullmatch(r"[0-9a-f]{32}", payload["event_id"])
    # a real event after them is relayed, so the test ones would have been too by now
    await d.post("SecurityEvent", event("SecurityEvent"), AUTH)
    await wait_until(lambda: len(receiver.requests) == 1)
    assert receiver.requests[0].json["IsTest"] is False


async def test_test_events_are_relayed_when_asked_and_never_count_sessions(daemon_factory, receiver):
    hooks = all_routes_to("siem") + "\n  - {event: MinRunSessions, client: siem, min_sessions: 1}"
    d = await daemon_factory(relay_config({"siem": receiver}, hooks, intake=f'  secret: {SECRET}\n  forward_test_events: true'))
    status, _ = await d.post("ClientStatusChanged", event("ClientStatusChanged", IsTest=True), AUTH)
    assert status == 200
    await wait_until(lambda: len(receiver.requests) == 1)
    assert receiver.requests[0].json["IsTest"] is True
    assert receiver.paths() == ["/fig/ClientStatusChanged"]  # no MinimumRestored from a test event


async def test_fig_scenarios_filters(daemon_factory, receiver_factory):
    rec = {n: await receiver_factory() for n in ("threes", "abool", "orders", "payments")}
    hooks = """
  - {event: SettingValueChanged, client: threes, client_regex: ThreeSettings}
  - {event: SettingValueChanged, client: abool, setting_regex: ABoolSetting}
  - {event: NewClientRegistration, client: orders, client_regex: ^Orders}
  - {event: NewClientRegistration, client: payments, client_regex: ^Payments}
"""
    d = await daemon_factory(relay_config(rec, hooks))
    # scenario 6: only ThreeSettings reaches the ThreeSettings hook
    await d.post("SettingValueChanged", event("SettingValueChanged", ClientName="ClientA", UpdatedSettings=["X"]), AUTH)
    await d.post("SettingValueChanged", event("SettingValueChanged", ClientName="ThreeSettings", UpdatedSettings=["X"]), AUTH)
    # scenario 7: AStringSetting alone -> nothing; with ABoolSetting -> exactly ["ABoolSetting"]
    await d.post("SettingValueChanged", event("SettingValueChanged", ClientName="Other", UpdatedSettings=["AStringSetting"]), AUTH)
    await d.post("SettingValueChanged", event("SettingValueChanged", ClientName="Other", UpdatedSettings=["AStringSetting", "ABoolSetting"]), AUTH)
    # scenario 9: ^Orders gets OrdersApi, ^Payments does not
    await d.post("NewClientRegistration", event("NewClientRegistration", ClientName="OrdersApi"), AUTH)
    await wait_until(lambda: len(rec["orders"].requests) == 1 and len(rec["abool"].requests) == 1 and len(rec["threes"].requests) == 1)
    await d.stop()  # everything accepted is delivered or pending by now; nothing more may arrive
    assert [r.json["ClientName"] for r in rec["threes"].requests] == ["ThreeSettings"]
    assert [r.json["UpdatedSettings"] for r in rec["abool"].requests] == [["ABoolSetting"]]
    assert rec["payments"].requests == []
    assert rec["orders"].requests[0].json["RegistrationType"] == 0


async def test_min_run_sessions_scenario(daemon_factory, receiver):
    hooks = "  - {event: MinRunSessions, client: siem, client_regex: ^Orders, min_sessions: 2}"
    d = await daemon_factory(relay_config({"siem": receiver}, hooks))

    def status(start: str, connected: bool, host: str = "h") -> bytes:
        return event("ClientStatusChanged", ClientName="OrdersApi", StartTime=start, Hostname=host, ConnectionEvent=0 if connected else 1)

    s1, s2, s3 = "2025-06-01T10:00:00Z", "2025-06-01T10:00:01Z", "2025-06-01T10:00:02Z"
    for body in (status(s1, True), status(s2, True), status(s1, False), status(s3, True)):
        code, _ = await d.post("ClientStatusChanged", body, AUTH)
        assert code == 200
    await wait_until(lambda: len(receiver.requests) >= 3)
    got = [(r.json["RunSessionsEvent"], r.json["RunSessions"]) for r in receiver.requests]
    assert sorted(got) == sorted([(1, 2), (0, 1), (1, 2)])
    assert all(r.path == "/fig/MinRunSessions" for r in receiver.requests)
    assert list(receiver.requests[0].json) == ["ClientName", "Instance", "RunSessions", "RunSessionsEvent", "Link", "IsTest"]

    # session state survives a restart: one more disconnect crosses below the minimum
    assert await d.stop() == 0
    await d.start()
    await d.post("ClientStatusChanged", status(s2, False), AUTH)
    await wait_until(lambda: len(receiver.requests) == 4)
    assert (receiver.requests[3].json["RunSessionsEvent"], receiver.requests[3].json["RunSessions"]) == (0, 1)


async def test_retry_after_is_honoured_while_other_clients_are_served(daemon_factory, receiver_factory):
    flaky, steady = await receiver_factory(), await receiver_factory()
    answers = iter([web.Response(status=503, headers={"Retry-After": "1"}, text="busy")])
    flaky.responder = lambda r: next(answers, None)
    config = relay_config({"flaky": flaky, "steady": steady}, all_routes_to("flaky") + "\n" + all_routes_to("steady"))
    d = await daemon_factory(config.replace("backoff_max: 0.5s", "backoff_max: 5s"))
    await d.post("SecurityEvent", event("SecurityEvent"), AUTH)
    await wait_until(lambda: len(flaky.requests) == 1 and len(steady.requests) == 1)
    await d.post("SecurityEvent", event("SecurityEvent", Username="bob"), AUTH)
    await wait_until(lambda: len(steady.requests) == 2, what="the steady client served while the flaky one waits")
    assert steady.requests[1].at - flaky.requests[0].at < 1.0
    await wait_until(lambda: len(flaky.requests) == 3)
    first_id = flaky.requests[0].headers["X-Figrelay-Delivery"]
    assert first_id in {r.headers["X-Figrelay-Delivery"] for r in flaky.requests[1:]}, "a retry keeps its delivery id"
    # neither the retry nor the client's other delivery went out before Retry-After ran out
    assert min(r.at for r in flaky.requests[1:]) - flaky.requests[0].at >= 1.0
    await wait_until(lambda: outbox_rows(d.config_path.parent) == [])


async def test_permanent_failure_becomes_a_dead_letter_without_retry(daemon_factory, receiver):
    receiver.responder = lambda r: web.Response(status=400, text="invalid payload: missing Foo")
    d = await daemon_factory(relay_config({"siem": receiver}, all_routes_to("siem")))
    await d.post("SecurityEvent", event("SecurityEvent"), AUTH)
    await d.wait_for_log(r"failed for good")
    dead = outbox_rows(d.config_path.parent, "dead")
    assert len(dead) == 1 and dead[0][4] == 1
    assert "HTTP 400: invalid payload: missing Foo" in dead[0][5]
    await d.stop()
    assert len(receiver.requests) == 1


async def test_kill_9_loses_no_acknowledged_event(daemon_factory, receiver):
    release = asyncio.Event()

    async def hang(request):
        await release.wait()
        return web.Response(text="ok")

    receiver.responder = hang
    config = relay_config({"siem": receiver}, all_routes_to("siem")).replace("    secret: downstream-siem", "    secret: downstream-siem\n    max_in_flight: 2")
    d = await daemon_factory(config)
    sent = []
    for i in range(20):
        body = event("SettingValueChanged", ChangeMessage=f"change {i}")
        status, _ = await d.post("SettingValueChanged", body, AUTH)
        assert status == 200
        sent.append(body)
    await wait_until(lambda: len(receiver.requests) == 2, what="two deliveries in flight")
    await d.kill()
    release.set()
    receiver.requests.clear()
    await d.start()
    await wait_until(lambda: {r.body for r in receiver.requests} >= set(sent), what="every acknowledged event after the restart")
    await wait_until(lambda: outbox_rows(d.config_path.parent) == [])


async def test_reload_on_file_change_and_sighup_keeps_last_good_config(daemon_factory, receiver_factory):
    a, b = await receiver_factory(), await receiver_factory()
    base = relay_config({"a": a, "b": b}, "  - {event: SecurityEvent, client: a}")
    d = await daemon_factory(base)
    await d.post("SecurityEvent", event("SecurityEvent"), AUTH)
    await wait_until(lambda: len(a.requests) == 1)

    # a new hook through a file change
    mark = len(d.lines)
    write_config(d.config_path, relay_config({"a": a, "b": b}, "  - {event: SecurityEvent, client: a}\n  - {event: SecurityEvent, client: b}"))
    await d.wait_for_log(r"reload \(file changed\) applied", start=mark)
    await d.post("SecurityEvent", event("SecurityEvent"), AUTH)
    await wait_until(lambda: len(a.requests) == 2 and len(b.requests) == 1)

    # a broken file is rejected and the running config keeps serving
    mark = len(d.lines)
    write_config(d.config_path, base.replace("event: SecurityEvent", "event: SecurityEvnt"))
    await d.wait_for_log(r"reload \(file changed\) rejected", start=mark)
    m = await d.wait_for_log(r"hooks\[0\]\.event: unknown event 'SecurityEvnt'; did you mean 'SecurityEvent'", start=mark)
    assert "figrelay.yaml:" in m.string
    await d.post("SecurityEvent", event("SecurityEvent"), AUTH)
    await wait_until(lambda: len(a.requests) == 3 and len(b.requests) == 2)

    # SIGHUP reloads too (the file is written in place, then the daemon told)
    d.config_path.write_text(base)
    mark = len(d.lines)
    d.signal(signal.SIGHUP)
    await d.wait_for_log(r"reload \((SIGHUP|file changed)\) applied", start=mark)
    await d.post("SecurityEvent", event("SecurityEvent"), AUTH)
    await wait_until(lambda: len(a.requests) == 4)
    assert len(b.requests) == 2


async def test_a_removed_client_s_deliveries_wait_for_its_return(daemon_factory, receiver_factory):
    from test_operations import afigrelay

    a, gone = await receiver_factory(), await receiver_factory()
    gone.responder = lambda r: web.Response(status=503)
    with_gone = relay_config({"a": a, "gone": gone}, "  - {event: SecurityEvent, client: gone}").replace("backoff_base: 0.05s", "backoff_base: 30s").replace("backoff_max: 0.5s", "backoff_max: 60s")
    d = await daemon_factory(with_gone)
    await d.post("SecurityEvent", event("SecurityEvent", Username="first"), AUTH)
    await d.wait_for_log(r"retrying in")
    mark = len(d.lines)
    without = relay_config({"a": a}, "  - {event: SecurityEvent, client: a}")
    write_config(d.config_path, without)
    await d.wait_for_log(r"client 'gone' was removed: its pending deliveries wait", start=mark)
    assert [(row[1], row[3]) for row in outbox_rows(d.config_path.parent)] == [("gone", "pending")], "never a dead letter"

    code, out, _ = await afigrelay("deliveries", "--config", str(d.config_path))
    assert code == 0 and "waiting" in out and "client removed" in out and "1 pending (1 waiting for a removed client to return)" in out
    _, metrics, _ = await d.request("GET", "/metrics")
    assert 'figrelay_outbox_waiting_for_removed_client{client="gone"} 1.0' in metrics

    # the client comes back (now healthy): its delivery goes, with the same id
    gone.responder = lambda r: web.Response(status=200)
    mark = len(d.lines)
    write_config(d.config_path, with_gone.replace("backoff_base: 30s", "backoff_base: 0.05s"))
    await d.wait_for_log(r"client gone is configured again: resuming its waiting 1 delivery", start=mark)
    await wait_until(lambda: [r.json["Username"] for r in gone.requests if r.json].count("first") >= 2, what="the delivery after the return")
    await wait_until(lambda: outbox_rows(d.config_path.parent) == [])

    # removed again with a delivery pending: an explicit purge drops it
    gone.responder = lambda r: web.Response(status=503)
    await d.post("SecurityEvent", event("SecurityEvent", Username="second"), AUTH)
    await wait_until(lambda: any(r.json and r.json["Username"] == "second" for r in gone.requests))
    mark = len(d.lines)
    write_config(d.config_path, without)
    await d.wait_for_log(r"client 'gone' was removed", start=mark)
    code, out, _ = await afigrelay("deliveries", "purge", "--client", "gone", "--config", str(d.config_path))
    assert code == 0 and "1 pending delivery of removed client 'gone' deleted" in out, out
    assert outbox_rows(d.config_path.parent) == []


async def test_bad_requests_get_clear_4xx(daemon_factory, receiver):
    d = await daemon_factory(relay_config({"siem": receiver}, all_routes_to("siem"), extra=""))
    good = event("SettingValueChanged")

    status, body = await d.post("SettingValueChanged", good)
    assert status == 401 and body["error"] == "unauthorized"
    status, body = await d.post("SettingValueChanged", good, {"Authorization": "Secret wrong"})
    assert status == 401

    status, body = await d.post("SettingValueChanged", b'{"UpdatedSettings":["A"]}', AUTH)
    assert status == 400 and body["field"] == "ClientName" and "required" in body["message"]
    status, body = await d.post("HealthStatusChanged", event("HealthStatusChanged", Status=7), AUTH)
    assert status == 400 and body["field"] == "Status"
    status, body = await d.post("SettingValueChanged", b"{not json", AUTH)
    assert status == 400 and "not valid JSON" in body["message"]
    status, body = await d.post("SettingValueChanged", b"[1,2]", AUTH)
    assert status == 400 and "JSON object" in body["message"]

    status, body = await d.post("NoSuchEvent", good, AUTH)
    assert status == 404 and "POST /SecurityEvent" in body["routes"]
    status, body, headers = await d.request("GET", "/SettingValueChanged")
    assert status == 405 and headers["Allow"] == "POST"
    status, body = await d.post("SettingValueChanged", good, {**AUTH, "Content-Type": "text/plain"})
    assert status == 415 and body["error"] == "unsupported_media_type"
    status, body = await d.post("SettingValueChanged", b"{" + b" " * (1024 * 1024 + 10) + b"}", AUTH)
    assert status == 413 and "max_body_bytes" in body["message"]

    status, body, _ = await d.request("GET", "/healthz")
    assert status == 200
    # after all that, the daemon still relays
    status, _ = await d.post("SettingValueChanged", good, AUTH)
    assert status == 200
    await wait_until(lambda: len(receiver.requests) == 1)


async def test_no_secret_needed_on_loopback(daemon_factory, receiver):
    d = await daemon_factory(relay_config({"siem": receiver}, all_routes_to("siem"), intake="  forward_test_events: false"))
    status, _ = await d.post("SecurityEvent", event("SecurityEvent"))
    assert status == 200


async def test_invalid_config_refuses_to_start(daemon_factory, tmp_path):
    d = await daemon_factory("listen: 127.0.0.1:0\nclients:\n  - {name: x, type: nope}\nhooks: []\n", start=False)
    await d.start(expect_ready=False)
    assert await d.wait() == 1
    assert "figrelay.yaml:3: clients[0].type: unknown client type 'nope'" in d.log


async def test_sigterm_stops_cleanly(daemon_factory, receiver):
    d = await daemon_factory(relay_config({"siem": receiver}, all_routes_to("siem")))
    assert await d.stop() == 0
    assert "stopped" in d.lines[-1]


async def test_sigterm_lets_deliveries_in_flight_finish_and_keeps_the_rest(daemon_factory, receiver):
    gate = asyncio.Event()

    async def slow(request):
        await gate.wait()
        return web.Response(text="ok")

    receiver.responder = slow
    config = relay_config({"siem": receiver}, all_routes_to("siem")).replace("    secret: downstream-siem", "    secret: downstream-siem\n    max_in_flight: 1")
    d = await daemon_factory(config)
    for name in ("alice", "bob"):
        assert (await d.post("SecurityEvent", event("SecurityEvent", Username=name), AUTH))[0] == 200
    await wait_until(lambda: len(receiver.requests) == 1, what="alice's delivery in flight")
    d.signal(signal.SIGTERM)
    await d.wait_for_log("stopping")
    gate.set()  # the delivery in flight may still finish
    assert await d.wait() == 0
    assert [r.json["Username"] for r in receiver.requests] == ["alice"]
    rows = outbox_rows(d.config_path.parent)
    assert len(rows) == 1 and rows[0][3] == "pending"  # bob waits for the next start
    await d.start()
    await wait_until(lambda: [r.json["Username"] for r in receiver.requests] == ["alice", "bob"])


async def test_changed_client_carries_on_with_its_pending_deliveries(daemon_factory, receiver_factory):
    old, new = await receiver_factory(), await receiver_factory()
    old.responder = lambda r: web.Response(status=503)
    config = relay_config({"siem": old}, all_routes_to("siem")).replace("backoff_base: 0.05s", "backoff_base: 0.5s")
    d = await daemon_factory(config)
    await d.post("SecurityEvent", event("SecurityEvent"), AUTH)
    await d.wait_for_log("retrying in")
    write_config(d.config_path, relay_config({"siem": new}, all_routes_to("siem")))
    await wait_until(lambda: len(new.requests) == 1, what="the pending delivery reaching the client's new address")
    assert new.requests[0].headers["X-Figrelay-Delivery"] == old.requests[0].headers["X-Figrelay-Delivery"]
    await wait_until(lambda: outbox_rows(d.config_path.parent) == [])


async def test_unix_socket_listener(daemon_factory, receiver, tmp_path):
    sock = tmp_path / "intake.sock"
    config = relay_config({"siem": receiver}, all_routes_to("siem"), intake="  forward_test_events: false")
    config = config.replace("listen: 127.0.0.1:0", f"listen: [unix:{sock}, 127.0.0.1:0]")
    d = await daemon_factory(config)
    await d.wait_for_log(rf"listening on unix:{sock}")
    connector = aiohttp.UnixConnector(path=str(sock))
    async with aiohttp.ClientSession(connector=connector) as http:
        async with http.post("http://figrelay/SecurityEvent", data=event("SecurityEvent"), headers={"Content-Type": "application/json"}) as resp:
            assert resp.status == 200
    await wait_until(lambda: len(receiver.requests) == 1)
