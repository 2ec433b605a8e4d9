"""figrelay's test kit (figrelay.testing) itself: the scripted receiver answers as told, the Fig
sender posts Fig's exact bytes and headers, the daemon fixtures and the journal readers work
against a real daemon, and every wait fails with a message that says what it waited for and what
it found."""

from __future__ import annotations

import ast
import asyncio
import re
import signal
from datetime import datetime, timezone

import aiohttp
import pytest
from aiohttp import web
from test_samples import FIG_TEST_BUTTON

import figrelay.testing
from conftest import REPO, fixture_bodies
from figrelay.events import parse_event_body
from figrelay.testing import (
    FIG_CONTENT_TYPE,
    TEST_SECRET,
    Answer,
    Close,
    DaemonFactory,
    FigSender,
    Hang,
    Receiver,
    ReceiverFactory,
    StateReader,
    fig_body,
    figrelay_config,
    wait_until,
)


async def post(url: str, body: bytes = b"{}", timeout: float = 10.0) -> tuple[int, str, dict[str, str]]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        async with session.post(url, data=body) as resp:
            return resp.status, await resp.text(), dict(resp.headers)


# --- the pytest plugin ----------------------------------------------------------------------------


async def test_the_kit_is_a_pytest_plugin_registered_by_entry_point(
    request: pytest.FixtureRequest, figrelay_daemon, recording_receiver_factory, recording_receiver, fig_sender
) -> None:
    assert request.config.pluginmanager.get_plugin("figrelay") is figrelay.testing  # the pytest11 entry point's name
    assert isinstance(figrelay_daemon, DaemonFactory) and isinstance(recording_receiver_factory, ReceiverFactory)
    assert isinstance(recording_receiver, Receiver) and recording_receiver.url.startswith("http://127.0.0.1:")
    assert isinstance(fig_sender(recording_receiver.url), FigSender)


# --- the recording receiver -----------------------------------------------------------------------


async def test_a_script_of_answers_then_200(recording_receiver: Receiver) -> None:
    recording_receiver.script(Answer(503, "busy", retry_after=7), Answer(429, {"error": "slow down"}, retry_after="Wed, 21 Oct 2037 07:28:00 GMT"))
    first = await post(recording_receiver.url + "/a")
    second = await post(recording_receiver.url + "/b")
    third = await post(recording_receiver.url + "/c")
    assert first[:2] == (503, "busy") and first[2]["Retry-After"] == "7"
    assert second[:2] == (429, '{"error": "slow down"}') and second[2]["Retry-After"] == "Wed, 21 Oct 2037 07:28:00 GMT"
    assert third[:2] == (200, "ok")
    assert [r.answered for r in recording_receiver.requests] == ["503 Retry-After: 7", "429 Retry-After: Wed, 21 Oct 2037 07:28:00 GMT", "200"]
    assert recording_receiver.paths() == ["/a", "/b", "/c"] and recording_receiver.scripted == 0


async def test_always_and_then(recording_receiver: Receiver) -> None:
    recording_receiver.always(Answer(400, "no"))
    assert (await post(recording_receiver.url))[0] == 400
    assert (await post(recording_receiver.url))[0] == 400
    recording_receiver.script(Answer(502), then=Answer(202, ""))
    assert [(await post(recording_receiver.url))[0] for _ in range(3)] == [502, 202, 202]


async def test_a_hang_lasts_until_released(recording_receiver: Receiver) -> None:
    recording_receiver.script(Hang(then=Answer(201, "late")))
    pending = asyncio.create_task(post(recording_receiver.url + "/slow"))
    await wait_until(lambda: recording_receiver.hanging == 1, what="the request to hang")
    assert not pending.done() and recording_receiver.requests[0].answered == "hanging"
    recording_receiver.release()
    assert (await pending)[:2] == (201, "late")
    assert recording_receiver.hanging == 0 and recording_receiver.requests[0].answered == "hung, then 201"


async def test_a_hang_outlasts_the_senders_timeout(recording_receiver: Receiver) -> None:
    recording_receiver.always(Hang())
    with pytest.raises(TimeoutError):
        await post(recording_receiver.url, timeout=0.2)
    assert recording_receiver.hanging == 1


@pytest.mark.parametrize("reset", [False, True])
async def test_close_drops_the_connection_without_an_answer(recording_receiver: Receiver, reset: bool) -> None:
    recording_receiver.script(Close(reset=reset))
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await post(recording_receiver.url)
    assert (await post(recording_receiver.url))[0] == 200  # the next request is answered as usual
    assert [r.answered for r in recording_receiver.requests] == ["reset" if reset else "closed", "200"]


async def test_a_responder_still_decides_and_may_return_an_answer(recording_receiver: Receiver) -> None:
    recording_receiver.responder = lambda r: web.Response(status=418) if r.path == "/teapot" else (Answer(409) if r.path == "/taken" else None)
    assert [(await post(recording_receiver.url + p))[0] for p in ("/teapot", "/taken", "/other")] == [418, 409, 200]


async def test_wait_for_returns_the_matching_requests_or_says_what_arrived(recording_receiver: Receiver) -> None:
    recording_receiver.script(Answer(503, "busy"))
    await post(recording_receiver.url + "/x", b'{"n":1}')
    await post(recording_receiver.url + "/y", b'{"n":2}')
    [got] = await recording_receiver.wait_for(1, path="/y")
    assert got.json == {"n": 2} and got.header("content-TYPE") == "application/octet-stream"
    with pytest.raises(AssertionError) as failure:
        await recording_receiver.wait_for(2, path="/x", timeout=0.2)
    message = str(failure.value)
    assert f"timed out after 0.2s waiting for 2 requests to /x at the receiver {recording_receiver.url}" in message
    assert '2 requests arrived:\n  POST /x -> 503: {"n":1}\n  POST /y -> 200: {"n":2}' in message


# --- the Fig sender ---------------------------------------------------------------------------------


async def test_the_samples_are_sent_byte_for_byte_as_fig_sends_them(recording_receiver: Receiver) -> None:
    sender = FigSender(recording_receiver.url + "/fig", "s3cret")
    sent = await sender.send_samples()
    # the disconnect of the fixtures is the connect's sample with its ConnectionEvent overridden
    sent.append(await sender.send("ClientStatusChanged", ConnectionEvent=1))
    assert all(s.status == 200 for s in sent)
    received = {r.body: r for r in recording_receiver.requests}
    for name, body in fixture_bodies().items():  # Fig's own bodies, tests/fixtures/fig
        assert body in received, f"{name} was not sent byte for byte"
        assert received[body].path == f"/fig/{name.split('.')[0]}"
    for request in recording_receiver.requests:
        assert request.headers["Content-Type"] == FIG_CONTENT_TYPE
        assert request.headers["Authorization"] == "Secret s3cret"


async def test_a_parsed_event_is_sent_as_fig_wrote_it(recording_receiver: Receiver) -> None:
    sender = FigSender(recording_receiver.url)
    for name, body in fixture_bodies().items():
        route = name.split(".")[0]
        await sender.send(route, parse_event_body(route, body))
        assert recording_receiver.requests[-1].body == body, name


async def test_the_test_button_posts_figs_seven_payloads_in_figs_order(recording_receiver: Receiver) -> None:
    now = datetime(2026, 3, 4, 5, 6, 7, 890120, tzinfo=timezone.utc)
    sent = await FigSender(recording_receiver.url).press_test_button(now)
    expected = [(f"/{route}", body.replace("<now>", "2026-03-04T05:06:07.89012Z").encode()) for route, body in FIG_TEST_BUTTON]
    assert [(r.path, r.body) for r in recording_receiver.requests] == expected
    assert [s.route for s in sent] == [route for route, _ in FIG_TEST_BUTTON]
    assert "Authorization" not in recording_receiver.requests[0].headers  # no secret given: none sent


def test_fields_are_overridden_in_place_and_added_at_the_end() -> None:
    body = fig_body("SettingValueChanged", ClientName="PaymentsApi", Extra="x")
    assert body == (
        b'{"ClientName":"PaymentsApi","Instance":null,"UpdatedSettings":["Timeout","RetryCount"],"Username":"admin",'
        b'"Link":"http://localhost:5050/","ChangeMessage":"Increase timeout for peak","IsTest":false,"Extra":"x"}'
    )
    assert fig_body({"ClientName": "A\u2028B", "Name": "Zoë"}) == b'{"ClientName":"A\\u2028B","Name":"Zo\xc3\xab"}'
    with pytest.raises(ValueError, match="unknown event type 'Settings'; Fig's routes are ClientStatusChanged, "):
        fig_body("Settings")


# --- a real daemon --------------------------------------------------------------------------------


def http_client(receiver: Receiver) -> dict[str, object]:
    return {"name": "siem", "type": "http", "base_uri": f"{receiver.url}/fig/"}


async def test_a_daemon_relays_what_the_sender_posts_and_the_journal_shows_it(figrelay_daemon, recording_receiver, fig_sender) -> None:
    recording_receiver.script(Answer(503, "busy"))
    config = figrelay_config(clients=[http_client(recording_receiver)], hooks=[{"event": "SettingValueChanged", "client": "siem"}])
    daemon = await figrelay_daemon(config)
    assert daemon.secret == TEST_SECRET and daemon.state_dir == figrelay_daemon.folder / "state"
    sent = await fig_sender(daemon).send("SettingValueChanged", ClientName="PaymentsApi")
    assert sent.accepted and len(sent.delivery_ids) == 1
    [delivery] = await daemon.wait_for_deliveries(1, client="siem")
    assert delivery.delivery_id == sent.delivery_ids[0] and delivery.attempts == 2
    assert [(a.outcome, a.status) for a in daemon.state.attempts(delivery.delivery_id)] == [("retry", 503), ("delivered", 200)]
    first, second = recording_receiver.requests
    assert first.body == second.body == sent.body and second.path == "/fig/SettingValueChanged"
    [event] = daemon.state.events()
    assert event.event_id == sent.event_id and event.setting_client == "PaymentsApi"
    assert daemon.state.trace(delivery.delivery_id).event.body == sent.body
    assert daemon.state.outbox() == []  # delivered: gone from the outbox
    metrics = await daemon.metrics()
    assert metrics.value("figrelay_deliveries", client="siem", outcome="delivered") == 1
    assert metrics.value("figrelay_deliveries", client="siem") == 2  # one retried, one delivered
    assert metrics.value("figrelay_no_such_metric") is None
    assert await daemon.stop() == 0


async def test_dead_letters_and_the_test_button_through_a_daemon(figrelay_daemon, recording_receiver, fig_sender) -> None:
    recording_receiver.always(Answer(400, "no such tenant"))
    hooks = [{"event": "SecurityEvent", "client": "siem"}, {"event": "HealthStatusChanged", "client": "siem"}]
    daemon = await figrelay_daemon(figrelay_config(clients=[http_client(recording_receiver)], hooks=hooks, forward_test_events=True))
    sent = await fig_sender(daemon).press_test_button()
    assert [s.status for s in sent] == [200] * 7
    dead = await daemon.wait_for_deliveries(2, state="dead")
    assert {d.route for d in dead} == {"SecurityEvent", "HealthStatusChanged"}
    assert all(d.last_reason == "HTTP 400: no such tenant" for d in dead)
    [letter, _] = daemon.state.dead_letters(client="siem")
    assert letter.attempts == 1 and letter.body in {r.body for r in recording_receiver.requests}


async def test_waiting_for_deliveries_says_what_the_journal_holds(figrelay_daemon, recording_receiver, fig_sender) -> None:
    recording_receiver.always(Answer(503, "down for maintenance"))
    config = figrelay_config(clients=[http_client(recording_receiver)], hooks=[{"event": "SecurityEvent", "client": "siem"}])
    daemon = await figrelay_daemon(config)
    sent = await fig_sender(daemon).send("SecurityEvent")
    await recording_receiver.wait_for(2)
    with pytest.raises(AssertionError) as failure:
        await daemon.wait_for_deliveries(1, client="siem", timeout=0.2)
    message = str(failure.value)
    assert "timed out after 0.2s waiting for 1 delivery in state 'delivered' to client 'siem' in the journal of" in message
    assert f"the journal holds 1 delivery:\n  {sent.delivery_ids[0][:8]} SecurityEvent -> siem: pending, " in message
    assert "last: HTTP 503: down for maintenance" in message
    assert "the daemon's log (the last 30 lines):" in message


async def test_a_missing_store_is_waited_for_then_reported(tmp_path) -> None:
    with pytest.raises(AssertionError, match=r"waiting for 1 delivery .*; no store at .*outbox.sqlite3: has figrelay run"):
        await StateReader(tmp_path / "state").wait_for_deliveries(timeout=0.1)


async def test_the_log_signals_and_restart(figrelay_daemon, recording_receiver, fig_sender) -> None:
    config = figrelay_config(clients=[{"name": "console", "type": "log"}], hooks=[{"event": "SecurityEvent", "client": "console"}])
    daemon = await figrelay_daemon(config)
    mark = daemon.mark()
    await fig_sender(daemon).send("SecurityEvent", Username="mallory")
    await daemon.wait_for_log(r"\[console\] SecurityEvent .*mallory", start=mark)
    first_url = daemon.url
    await daemon.restart()
    assert daemon.url and daemon.returncode is None and first_url
    daemon.signal(signal.SIGTERM)
    assert await daemon.wait() == 0
    with pytest.raises(AssertionError, match=r"figrelay exited \(0\) before logging 'never'"):
        await daemon.wait_for_log("never", start=daemon.mark())


async def test_check_runs_figrelay_check(figrelay_daemon) -> None:
    good = figrelay_config(clients=[{"name": "console", "type": "log"}], hooks=[{"event": "SecurityEvent", "client": "console"}])
    assert (await figrelay_daemon.check(good)).ok
    bad = await figrelay_daemon.check(good.replace("type: log", "type: log\n    level: loud"), name="bad.yaml")
    assert bad.returncode == 1 and "bad.yaml:14: clients[0].level: input should be " in bad.stderr


def test_figrelay_config_is_a_whole_configuration() -> None:
    text = figrelay_config(
        clients="- name: console\n  type: log\n", hooks=[{"event": "SecurityEvent", "client": "console"}], secret=None, delivery={"max_age": "1h"},
        extra="log_level: debug\n",
    )
    assert text == (
        "listen: 127.0.0.1:0\nstate_dir: ./state\nintake:\n  forward_test_events: false\n"
        "delivery:\n  backoff_base: 0.05s\n  backoff_max: 0.5s\n  attempt_timeout: 5s\n  shutdown_timeout: 2s\n  max_age: 1h\n"
        "log_level: debug\n"
        "clients:\n  - name: console\n    type: log\n"
        "hooks:\n  - event: SecurityEvent\n    client: console\n"
    )


# --- the guide ------------------------------------------------------------------------------------


def guide_section() -> str:
    text = (REPO / "docs" / "plugins.md").read_text()
    start = text.index("## Testing a plugin\n")
    return text[start : text.index("\n## ", start + 1)]


def test_every_public_name_of_the_kit_is_in_the_guide() -> None:
    section = guide_section()
    fixtures = ["figrelay_daemon", "recording_receiver", "recording_receiver_factory", "fig_sender"]
    prose = re.sub(r"```.*?```", "", section, flags=re.S)
    code = " ".join(re.findall(r"`([^`]+)`", prose))  # the names the guide shows as code
    missing = [name for name in [*figrelay.testing.__all__, *fixtures] if not re.search(rf"\b{name}\b", code)]
    assert not missing, f'docs/plugins.md, "Testing a plugin", does not mention {", ".join(missing)}: document them there'


def test_the_guides_example_is_valid_python_using_the_kits_names() -> None:
    [example] = re.findall(r"```python\n(.*?)```", guide_section(), re.S)
    tree = ast.parse(example)
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) for alias in node.names}
    assert imported <= set(figrelay.testing.__all__)
