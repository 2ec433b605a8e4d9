"""The teams client type against a real local server standing in for the Workflows endpoint."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from pydantic import ValidationError

import figrelay_teams
from figrelay.config import ConfigError, parse_config
from figrelay.delivery import ClientContext, ClientType, Delivered, Delivery, Failed, Outcome, Retry
from figrelay.events import FigEvent, parse_event
from figrelay.messages import Fact, Message, Severity, describe, digest
from figrelay.plugins import load_plugins
from figrelay.samples import sample_events
from figrelay.samples import test_button_events as button_events
from figrelay.testing import Received, Receiver, http_receiver
from figrelay_teams import (
    ALLOWED_ACTIONS,
    MAX_BODY_BYTES,
    TEST_MARKER,
    TRUNCATED,
    TeamsOptions,
    TeamsTarget,
    adaptive_card,
    escape_markdown,
    fit_body,
    markdown_paragraphs,
    message_card,
)

# the shape of a real Workflows URL: the path names the flow, sig= is the credential
WORKFLOW_PATH = "/workflows/5f0c2a9e8b7d4c3a/triggers/manual/paths/invoke"
SIG = "q7Xv9SecretSigQ2w-_Zr8LkMnOpQrStUvWxYz012345"
QUERY = f"api-version=2016-06-01&sp=%2Ftriggers%2Fmanual%2Frun&sv=1.0&sig={SIG}"
CARD_COLOURS = {Severity.GOOD: "Good", Severity.INFO: "Accent", Severity.WARNING: "Warning", Severity.CRITICAL: "Attention"}


def workflow_url(receiver: Receiver) -> str:
    return f"{receiver.url}{WORKFLOW_PATH}?{QUERY}"


def assert_no_secret(text: str, url: str = "") -> None:
    for secret in (SIG, WORKFLOW_PATH, QUERY, *([url] if url else [])):
        assert secret not in text, f"{secret!r} leaked into {text!r}"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def make_target(http: aiohttp.ClientSession, url: str, **options: Any) -> TeamsTarget:
    context = ClientContext("ops", TeamsOptions(webhook_url=url, **options), http, logging.getLogger("test"), Path("."))
    return TeamsTarget(context)


def delivery_of(message: Message | None, event: FigEvent | None = None) -> Delivery:
    event = event or sample_events("SettingValueChanged")[0]
    return Delivery("d" * 32, "ops", event, b"", 1, 0.0, message=message)


async def send(http: aiohttp.ClientSession, url: str, message: Message, **options: Any) -> Outcome:
    return await make_target(http, url, **options).deliver(delivery_of(message))


def accepted(request: Received) -> web.Response:
    return web.Response(status=202)  # what a flow answers: 202 Accepted, empty body


def card_of(received: Received) -> dict[str, Any]:
    payload = received.json
    assert payload["type"] == "message"
    [attachment] = payload["attachments"]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    assert attachment["contentUrl"] is None
    return attachment["content"]


def walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def action_types(card: dict[str, Any]) -> set[str]:
    return {d["type"] for d in walk(card) if str(d.get("type", "")).startswith("Action.")}


def heading(card: dict[str, Any]) -> dict[str, Any]:
    # the one Medium TextBlock: a 1.4 card has no "style": "heading" to mark it
    [block] = [b for b in card["body"] if b["type"] == "TextBlock" and b.get("size") == "Medium"]
    return block


def texts(card: dict[str, Any]) -> list[str]:
    return [b["text"] for b in card["body"] if b["type"] == "TextBlock"]


def setting_changed(**fields: Any) -> FigEvent:
    data = {"ClientName": "OrdersApi", "Instance": None, "UpdatedSettings": ["Timeout"], "Username": "admin",
            "Link": "http://localhost:5050/", "ChangeMessage": None, "IsTest": False}
    return parse_event("SettingValueChanged", {**data, **fields})


ALL_SAMPLES = [*sample_events(), *button_events()]


# --- the Adaptive Card --------------------------------------------------------------------------


@pytest.mark.parametrize("event", ALL_SAMPLES, ids=[f"{e.route}-{i}{'-test' if e.test else ''}" for i, e in enumerate(ALL_SAMPLES)])
async def test_card_shape_for_every_sample_event(http, event):
    message = describe(event)
    async with http_receiver() as rec:
        rec.responder = accepted
        outcome = await send(http, workflow_url(rec), message)
        [got] = rec.requests
    assert isinstance(outcome, Delivered)
    assert got.headers["Content-Type"].startswith("application/json")
    assert len(got.body) <= MAX_BODY_BYTES
    card = card_of(got)
    assert card["type"] == "AdaptiveCard"
    assert card["version"] == "1.4"
    assert card["$schema"] == "http://adaptivecards.io/schemas/adaptive-card.json"
    assert card["msteams"] == {"width": "full"}
    assert action_types(card) <= ALLOWED_ACTIONS
    assert "Action.Submit" not in json.dumps(card)

    head = heading(card)
    assert head["text"] == escape_markdown(f"{message.severity.emoji} {message.title}")
    assert head["color"] == CARD_COLOURS[message.severity]
    assert head["wrap"] is True and head["weight"] == "Bolder"
    assert markdown_paragraphs(message.text) in texts(card)

    [factset] = [b for b in card["body"] if b["type"] == "FactSet"]
    assert factset["facts"] == [{"title": escape_markdown(f.title), "value": escape_markdown(f.value)} for f in message.facts]
    assert message.facts  # every sample has facts worth showing

    assert card["actions"] == [{"type": "Action.OpenUrl", "title": "Open in Fig", "url": message.link}]
    assert (escape_markdown(TEST_MARKER) in texts(card)) is event.test


@pytest.mark.parametrize("severity", list(Severity))
def test_heading_colour_follows_severity(severity):
    card = adaptive_card_for(Message("OrdersApi: something", "text", severity))
    assert heading(card)["color"] == CARD_COLOURS[severity]


def adaptive_card_for(message: Message) -> dict[str, Any]:
    return json.loads(fit_body(message, adaptive_card))["attachments"][0]["content"]


def test_critical_stands_out_from_good():
    below, restored = sample_events("MinRunSessions")
    critical, good = adaptive_card_for(describe(below)), adaptive_card_for(describe(restored))
    assert heading(critical)["color"] == "Attention" and heading(critical)["text"].startswith("🚨")
    assert heading(good)["color"] == "Good" and heading(good)["text"].startswith("✅")


def test_test_marker_is_visible_on_test_events_only():
    for event in button_events():
        card = adaptive_card_for(describe(event))
        [marker] = [b for b in card["body"] if b["text" if b["type"] == "TextBlock" else "type"] == escape_markdown(TEST_MARKER)]
        assert marker["weight"] == "Bolder" and marker["color"] == "Warning"
        assert card["body"].index(marker) < card["body"].index(heading(card))  # above the heading
    for event in sample_events():
        assert escape_markdown(TEST_MARKER) not in texts(adaptive_card_for(describe(event)))
    # a title template may drop "[Test]" from the title: the marker still shows
    assert escape_markdown(TEST_MARKER) in texts(adaptive_card_for(Message("custom title", "", Severity.INFO, is_test=True)))


async def test_digest_renders_one_line_per_item(http):
    messages = [describe(e) for e in sample_events()]
    message = digest(messages)
    async with http_receiver() as rec:
        rec.responder = accepted
        assert isinstance(await send(http, workflow_url(rec), message), Delivered)
        card = card_of(rec.requests[0])
    head = heading(card)
    assert head["text"] == escape_markdown(f"🚨 {message.title}")  # the worst severity of the burst
    assert head["color"] == "Attention"
    lines = [b for b in card["body"] if b["type"] == "TextBlock" and b is not head]
    assert [b["text"] for b in lines] == [escape_markdown(f"{m.severity.emoji} {m.title}") for m in messages]
    assert all(b["wrap"] for b in lines)
    assert card["actions"] == [{"type": "Action.OpenUrl", "title": "Open in Fig", "url": messages[-1].link}]


def test_long_digest_is_capped_with_a_count():
    messages = [describe(setting_changed(UpdatedSettings=[f"Setting{i}"])) for i in range(40)]
    card = adaptive_card_for(digest(messages))
    lines = texts(card)[1:]
    assert len(lines) == 26
    assert lines[0] == escape_markdown(f"{Severity.INFO.emoji} {messages[0].title}")
    assert lines[-1] == "… and 15 more"


def test_digest_of_test_events_carries_the_marker():
    card = adaptive_card_for(digest([describe(e) for e in button_events()]))
    assert escape_markdown(TEST_MARKER) in texts(card)


async def test_a_delivery_without_a_message_is_described(http):
    [below, _] = sample_events("MinRunSessions")
    async with http_receiver() as rec:
        rec.responder = accepted
        outcome = await make_target(http, workflow_url(rec)).deliver(delivery_of(None, below))
        card = card_of(rec.requests[0])
    assert isinstance(outcome, Delivered)
    assert heading(card)["text"] == escape_markdown(f"🚨 {describe(below).title}")


def test_no_link_no_action():
    card = adaptive_card_for(Message("t", "x", Severity.INFO))
    assert "actions" not in card
    card = adaptive_card_for(Message("t", "x", Severity.INFO, link="javascript:alert(1)"))
    assert "actions" not in card


def test_markdown_is_escaped():
    message = Message(
        "Deploy *now* to prod_eu",
        "- not a bullet\n1. not a list\nsee [docs](http://x) and C:\\temp\\* and [Test]",
        Severity.INFO,
        facts=(Fact("max_pool_size", "**2**"),),
    )
    card = adaptive_card_for(message)
    assert heading(card)["text"] == Severity.INFO.emoji + " Deploy \\*now\\* to prod\\_eu"
    assert texts(card)[1] == "\\- not a bullet\n\n1\\. not a list\n\nsee [docs\\](http://x) and C:\\temp\\\\\\* and [Test]"
    [factset] = [b for b in card["body"] if b["type"] == "FactSet"]
    assert factset["facts"] == [{"title": "max\\_pool\\_size", "value": "\\*\\*2\\*\\*"}]


@pytest.mark.parametrize(
    "plain, escaped",
    [
        ("plain text 1.4.2", "plain text 1.4.2"),
        ("a_b", "a\\_b"),
        ("*x*", "\\*x\\*"),
        ("- x", "\\- x"),
        ("+ x", "\\+ x"),
        ("12. x", "12\\. x"),
        ("[x](y)", "[x\\](y)"),
        ("[x]", "[x]"),
        ("C:\\Temp", "C:\\Temp"),
        ("\\_", "\\\\\\_"),
        ("<b>&amp;</b>", "<b>&amp;</b>"),
    ],
)
def test_escape_markdown(plain, escaped):
    assert escape_markdown(plain) == escaped


# --- the size limit -----------------------------------------------------------------------------


LONG_NAMES = [f"Section{i:04d}:" + "VeryLongNestedSettingName" * 40 for i in range(2000)]  # ~1 kB each
CHANGE_MESSAGE = ("Rotated the connection string after the incident review; " * 800)[:40_000]
HUGE = {
    "2000-long-names": {"UpdatedSettings": LONG_NAMES},
    "40kB-change-message": {"ChangeMessage": CHANGE_MESSAGE},
    "both": {"UpdatedSettings": LONG_NAMES, "ChangeMessage": CHANGE_MESSAGE},
    "one-huge-name": {"UpdatedSettings": ["x" * 60_000]},
}


@pytest.mark.parametrize("fmt", ["adaptive", "messagecard"])
@pytest.mark.parametrize("case", list(HUGE))
async def test_size_limit_holds(http, fmt, case):
    message = describe(setting_changed(**HUGE[case]))
    assert len(json.dumps(message.text + "".join(f.value for f in message.facts))) > 40_000
    async with http_receiver() as rec:
        rec.responder = accepted
        outcome = await send(http, workflow_url(rec), message, format=fmt)
        [got] = rec.requests
    assert isinstance(outcome, Delivered)
    assert len(got.body) <= MAX_BODY_BYTES
    assert "(truncated)" in got.body.decode("unicode_escape")  # a visible marker
    payload = got.json
    if fmt == "adaptive":
        card = card_of(got)
        assert card["version"] == "1.4"
        assert heading(card)["text"].startswith(f"{Severity.INFO.emoji} OrdersApi: ")
        assert len(heading(card)["text"]) < 200  # a heading, even for a 60 kB setting name
        [factset] = [b for b in card["body"] if b["type"] == "FactSet"]
        assert [f["title"] for f in factset["facts"]] == [escape_markdown(f.title) for f in message.facts]  # shortened, not dropped
        assert card["actions"][0]["url"] == "http://localhost:5050/"
    else:
        assert payload["@type"] == "MessageCard"
        assert payload["title"].startswith(f"{Severity.INFO.emoji} OrdersApi: ")
        assert len(payload["title"]) < 200
        assert [f["name"] for f in payload["sections"][0]["facts"]] == [escape_markdown(f.title) for f in message.facts]
    # the budget is used rather than wasted: the text keeps thousands of characters
    assert len(got.body) > MAX_BODY_BYTES * 0.8


@pytest.mark.parametrize("render", [adaptive_card, message_card])
def test_digest_of_huge_messages_fits(render):
    messages = [describe(setting_changed(UpdatedSettings=[f"{i}" + "y" * 20_000])) for i in range(40)]
    body = fit_body(digest(messages), render)
    assert len(body) <= MAX_BODY_BYTES
    assert TRUNCATED in body.decode("unicode_escape")


@pytest.mark.parametrize("render", [adaptive_card, message_card])
@pytest.mark.parametrize("limit", [1_500, 4_000, 12_000, MAX_BODY_BYTES])
def test_any_limit_is_held(render, limit):
    message = Message(
        "t" * 5000, "line\n" * 9000, Severity.CRITICAL,
        facts=tuple(Fact(f"f{i}" * 50, "v_" * 3000) for i in range(60)),
        link="http://localhost:5050/" + "p" * 300, is_test=True,
    )
    assert len(fit_body(message, render, limit)) <= limit


def factset(card: dict[str, Any]) -> list[dict[str, str]]:
    [block] = [b for b in card["body"] if b["type"] == "FactSet"]
    return block["facts"]


def test_facts_are_shortened_first_then_dropped_with_a_count():
    message = Message("OrdersApi: Unhealthy", "short", Severity.CRITICAL, facts=tuple(Fact(f"Component{i}", "Unhealthy: " + "x" * 300) for i in range(400)))
    card = adaptive_card_for(message)
    facts = factset(card)
    kept = len(facts) - 1
    assert 50 < kept < 400
    assert facts[-1] == {"title": "…", "value": f"{400 - kept} more facts (truncated)"}
    assert all(f["value"].endswith(TRUNCATED) and len(f["value"]) < 100 for f in facts[:-1])
    assert texts(card)[1] == "short"  # the text was not touched before the facts


def test_digest_lines_dropped_with_a_count():
    messages = [describe(setting_changed(UpdatedSettings=[f"S{i}_" + "z" * 500])) for i in range(40)]
    card = json.loads(fit_body(digest(messages), adaptive_card, 2_500))["attachments"][0]["content"]
    lines = texts(card)[1:]
    assert 0 < len(lines) - 1 < 25
    assert lines[-1] == f"… and {40 - (len(lines) - 1)} more (truncated)"
    assert all(line.endswith(TRUNCATED) for line in lines[:-1])


@pytest.mark.parametrize("char", ["_", "*", "\\*"])
def test_truncation_never_splits_an_escape(char):
    card = adaptive_card_for(Message("t", char * 60_000, Severity.INFO))
    text = texts(card)[1]
    assert text.endswith(TRUNCATED)
    head = text.removesuffix(TRUNCATED)
    assert (len(head) - len(head.rstrip("\\"))) % 2 == 0


def test_small_messages_are_untouched():
    for event in sample_events():
        body = fit_body(describe(event), adaptive_card)
        assert TRUNCATED not in body.decode("unicode_escape")


# --- the MessageCard option ---------------------------------------------------------------------


async def test_messagecard_format(http):
    [event] = sample_events("SettingValueChanged")
    message = describe(event)
    async with http_receiver() as rec:
        rec.responder = accepted
        assert isinstance(await send(http, workflow_url(rec), message, format="messagecard"), Delivered)
        card = rec.requests[0].json
    assert card["@type"] == "MessageCard"
    assert card["@context"] == "https://schema.org/extensions"
    assert card["themeColor"] == "1D9BD1"
    assert card["summary"] == message.summary
    assert card["title"] == escape_markdown(f"{Severity.INFO.emoji} {message.title}")
    assert card["text"] == markdown_paragraphs(message.text)
    assert card["sections"] == [{"facts": [{"name": escape_markdown(f.title), "value": escape_markdown(f.value)} for f in message.facts]}]
    assert card["potentialAction"] == [{"@type": "OpenUri", "name": "Open in Fig", "targets": [{"os": "default", "uri": "http://localhost:5050/"}]}]
    assert "attachments" not in card


def test_messagecard_colour_marker_and_digest():
    below = describe(sample_events("MinRunSessions")[0])
    card = json.loads(fit_body(below, message_card))
    assert card["themeColor"] == "E01E5A" and not card["themeColor"].startswith("#")
    test = json.loads(fit_body(describe(button_events()[0]), message_card))
    assert test["sections"][0] == {"activityTitle": escape_markdown(TEST_MARKER)}
    messages = [describe(e) for e in sample_events()]
    card = json.loads(fit_body(digest(messages), message_card))
    assert card["text"].split("\n\n") == [escape_markdown(f"{m.severity.emoji} {m.title}") for m in messages]


# --- outcomes -----------------------------------------------------------------------------------


async def answer(http, response: web.Response | None, **options) -> tuple[Outcome, Receiver, str]:
    async with http_receiver() as rec:
        rec.responder = lambda r: response
        url = workflow_url(rec)
        outcome = await send(http, url, describe(sample_events("SettingValueChanged")[0]), **options)
    assert_no_secret(getattr(outcome, "reason", getattr(outcome, "detail", "")), url)
    return outcome, rec, url


async def test_202_with_empty_body_is_success(http):
    outcome, rec, _ = await answer(http, web.Response(status=202))
    assert outcome == Delivered("HTTP 202 (the flow accepted it)")
    [got] = rec.requests
    assert got.path == WORKFLOW_PATH
    assert got.query["sig"] == SIG and got.query["sp"] == "/triggers/manual/run"  # the signed query arrives intact


@pytest.mark.parametrize("status", [200, 201, 204])
async def test_other_2xx_are_success(http, status):
    outcome, _, _ = await answer(http, web.Response(status=status))
    assert isinstance(outcome, Delivered) and outcome.detail == f"HTTP {status}"


async def test_400_fails_with_the_first_bytes_of_the_body(http):
    body = '{"error":{"code":"InvalidRequestContent","message":"The input body for trigger \'manual\' of type \'Request\' did not match its schema."}}'
    outcome, _, _ = await answer(http, web.Response(status=400, text=body + " " * 5000 + "tail"))
    assert isinstance(outcome, Failed)
    assert outcome.reason.startswith("HTTP 400: the workflow rejected the message: {\"error\":{\"code\":\"InvalidRequestContent\"")
    assert "tail" not in outcome.reason and len(outcome.reason) < 400


@pytest.mark.parametrize("status", [401, 403, 404])
async def test_wrong_url_or_flow_off_fails(http, status):
    body = '{"error":{"code":"WorkflowNotFound","message":"The workflow was not found."}}'
    outcome, _, _ = await answer(http, web.Response(status=status, text=body))
    assert isinstance(outcome, Failed)
    assert outcome.reason.startswith(f"HTTP {status}: ")
    assert "webhook_url is wrong" in outcome.reason and "turned off" in outcome.reason and "deleted" in outcome.reason
    assert "WorkflowNotFound" in outcome.reason


async def test_429_retries_after_retry_after(http):
    outcome, _, _ = await answer(http, web.Response(status=429, text="Rate limit is exceeded.", headers={"Retry-After": "7"}))
    assert isinstance(outcome, Retry) and outcome.retry_after == 7.0
    assert outcome.reason == "HTTP 429: Rate limit is exceeded."


async def test_429_retry_after_as_a_date(http):
    outcome, _, _ = await answer(http, web.Response(status=429, headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}))
    assert isinstance(outcome, Retry) and outcome.retry_after == 0.0  # a date in the past: no wait, never negative


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408, 425])
async def test_server_errors_and_408_retry(http, status):
    outcome, _, _ = await answer(http, web.Response(status=status, text="BadGateway"))
    assert isinstance(outcome, Retry) and outcome.retry_after is None
    assert outcome.reason == f"HTTP {status}: BadGateway"


@pytest.mark.parametrize("status", [301, 302, 307])
async def test_redirects_are_not_followed(http, status):
    async with http_receiver() as rec:
        rec.responder = lambda r: web.Response(status=status, headers={"Location": workflow_url(rec).replace("/workflows/", "/elsewhere/")})
        url = workflow_url(rec)
        outcome = await send(http, url, Message("t", "x", Severity.INFO))
        assert len(rec.requests) == 1
    assert isinstance(outcome, Failed) and "redirects" in outcome.reason
    assert_no_secret(outcome.reason, url)


@pytest.mark.parametrize("status", [410, 413, 422])
async def test_other_client_errors_fail(http, status):
    outcome, _, _ = await answer(http, web.Response(status=status, text="nope"))
    assert outcome == Failed(f"HTTP {status}: nope")


async def test_connection_refused_retries(http):
    async with http_receiver() as rec:
        url = workflow_url(rec)
    outcome = await send(http, url, Message("t", "x", Severity.INFO))
    assert isinstance(outcome, Retry) and "cannot reach the workflow at http://127.0.0.1:" in outcome.reason
    assert_no_secret(outcome.reason, url)


async def test_timeout_retries(http):
    gate = asyncio.Event()

    async def stall(request: Received) -> web.Response:
        await gate.wait()
        return web.Response(status=202)

    async with http_receiver() as rec:
        rec.responder = stall
        url = workflow_url(rec)
        outcome = await send(http, url, Message("t", "x", Severity.INFO), timeout="0.2s")
        gate.set()
    assert isinstance(outcome, Retry) and "within 0.2s" in outcome.reason
    assert_no_secret(outcome.reason, url)


@pytest.mark.parametrize("status", [400, 404, 500])
async def test_a_body_echoing_the_url_is_scrubbed(http, status):
    async with http_receiver() as rec:
        url = workflow_url(rec)
        echo = f"Bad request to {url} (path {WORKFLOW_PATH}, query {QUERY}, sig={SIG}, signature {SIG})"
        rec.responder = lambda r: web.Response(status=status, text=echo)
        outcome = await send(http, url, Message("t", "x", Severity.INFO))
    assert isinstance(outcome, (Failed, Retry))
    assert "Bad request to" in outcome.reason
    assert_no_secret(outcome.reason, url)


def test_outcome_scrubs_every_form_of_the_signature():
    target = make_target(None, f"https://prod-01.westeurope.logic.azure.com{WORKFLOW_PATH}?api-version=1&sig=a%2Fb%2Bc%3D%3Dsecret")  # type: ignore[arg-type]
    for leaked in ("a%2Fb%2Bc%3D%3Dsecret", "a/b+c==secret", "sig=anything-else", "SIG=upper"):
        outcome = target.outcome(400, None, f"oops {leaked} end".encode())
        assert isinstance(outcome, Failed)
        assert "secret" not in outcome.reason and "anything-else" not in outcome.reason and "upper" not in outcome.reason, outcome.reason
        assert outcome.reason.endswith(" end")


def cut_off_echo(url: str, tail: str) -> str:
    """An error body whose first MAX_ERROR_BODY bytes end halfway through ``tail``: copies of the
    URL first (scrubbed to almost nothing), so that the cut lands within the excerpt shown."""
    read = figrelay_teams.MAX_ERROR_BODY - len(tail) // 2
    head = f"{url} " * (read // (len(url) + 1))
    return head + "x" * (read - len(head)) + tail + " and more"


async def test_a_url_cut_off_at_the_end_of_the_read_is_scrubbed(http):
    async with http_receiver() as rec:
        url = workflow_url(rec)
        rec.responder = lambda r: web.Response(status=400, text=cut_off_echo(url, url))
        outcome = await send(http, url, Message("t", "x", Severity.INFO))
    assert isinstance(outcome, Failed)
    assert_no_secret(outcome.reason, url)
    assert url[: len(url) // 2] not in outcome.reason and "/workflows/" not in outcome.reason


def test_a_signature_cut_off_is_scrubbed():
    url = f"https://prod-01.westeurope.logic.azure.com{WORKFLOW_PATH}?{QUERY}"
    target = make_target(None, url)  # type: ignore[arg-type]
    outcome = target.outcome(400, None, cut_off_echo(url, SIG).encode()[: figrelay_teams.MAX_ERROR_BODY])
    assert "xxxx" in outcome.reason  # the cut landed within the excerpt
    assert SIG[:5] not in outcome.reason


# --- options ------------------------------------------------------------------------------------


def options_error(url: str, **options: Any) -> str:
    with pytest.raises(ValidationError) as info:
        TeamsOptions(webhook_url=url, **options)
    text = str(info.value)
    assert_no_secret(text, url)
    return text


LEGACY = [
    "https://contoso.webhook.office.com/webhookb2/1c2d3e4f-aaaa@72f988bf/IncomingWebhook/0123456789abcdef/SECRETPART-9f8e",
    "https://webhook.office.com/webhookb2/1c2d3e4f@72f988bf/IncomingWebhook/0123456789abcdef/SECRETPART-9f8e",
    "https://outlook.office.com/webhook/1c2d3e4f@72f988bf/IncomingWebhook/0123456789abcdef/SECRETPART-9f8e",
    "https://outlook.office365.com/webhook/1c2d3e4f@72f988bf/IncomingWebhook/0123456789abcdef/SECRETPART-9f8e",
    "http://contoso.webhook.office.com/webhookb2/x/IncomingWebhook/SECRETPART-9f8e",
]


@pytest.mark.parametrize("url", LEGACY)
def test_legacy_connector_urls_are_refused_with_what_to_do(url):
    text = options_error(url)
    assert "legacy Office 365 connector" in text and "retired" in text
    assert "Workflows" in text and '"Post to a channel when a webhook request is received"' in text
    assert "SECRETPART" not in text and "IncomingWebhook" not in text


@pytest.mark.parametrize(
    "url",
    [
        f"http://prod-01.westeurope.logic.azure.com{WORKFLOW_PATH}?{QUERY}",
        f"http://10.0.0.5{WORKFLOW_PATH}?{QUERY}",
        f"http://example.localhost.evil.com{WORKFLOW_PATH}?{QUERY}",
    ],
)
def test_plain_http_refused_unless_loopback(url):
    assert "must use https://" in options_error(url)


@pytest.mark.parametrize(
    "url",
    [
        f"https://prod-01.westeurope.logic.azure.com:443{WORKFLOW_PATH}?{QUERY}",
        f"https://default0123.ab.environment.api.powerplatform.com:443/powerautomate/automations/direct{WORKFLOW_PATH}?{QUERY}",
        f"http://127.0.0.1:8080{WORKFLOW_PATH}?{QUERY}",
        f"http://127.0.0.2{WORKFLOW_PATH}",
        f"http://localhost:9000{WORKFLOW_PATH}?{QUERY}",
        f"http://[::1]:9000{WORKFLOW_PATH}?{QUERY}",
    ],
)
def test_accepted_urls(url):
    options = TeamsOptions(webhook_url=f"  {url}\n")
    assert options.webhook_url.get_secret_value() == url
    assert options.format == "adaptive" and options.timeout == 10.0
    assert SIG not in repr(options) and SIG not in str(options)


@pytest.mark.parametrize(
    "url, message",
    [
        ("", "is empty"),
        (f"ftp://prod-01.westeurope.logic.azure.com{WORKFLOW_PATH}?{QUERY}", "must be the https:// URL of a Teams Workflows webhook"),
        (f"prod-01.westeurope.logic.azure.com{WORKFLOW_PATH}?{QUERY}", "must be the https:// URL"),
        (f"https://prod-01.westeurope.logic.azure.com{WORKFLOW_PATH}?{QUERY} extra", "contains spaces"),
        (f"https://prod-01.westeurope.logic.azure.com:99999{WORKFLOW_PATH}?{QUERY}", "is not a valid URL"),
    ],
)
def test_bad_urls_are_explained(url, message):
    assert message in options_error(url)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"format": "html"}, "'adaptive' or 'messagecard'"),
        ({"timeout": "0s"}, "more than 0"),
        ({"timeout": "1h"}, "at most 10m"),
        ({"webhook": "x"}, "Extra inputs"),
    ],
)
def test_other_options_are_validated(options, message):
    assert message in options_error(f"https://prod-01.westeurope.logic.azure.com{WORKFLOW_PATH}?{QUERY}", **options)


def test_options_accept_durations_and_messagecard():
    options = TeamsOptions(webhook_url=f"https://x.logic.azure.com{WORKFLOW_PATH}?{QUERY}", format="messagecard", timeout="30s")
    assert (options.format, options.timeout) == ("messagecard", 30.0)


# --- registration and configuration -------------------------------------------------------------


def test_registration():
    registered: list[ClientType] = []
    figrelay_teams.figrelay_client_types(registered.append)
    [client_type] = registered
    assert client_type.name == "teams"
    assert client_type.options is TeamsOptions and client_type.open is TeamsTarget
    assert client_type.secret_options == ("webhook_url",)
    assert client_type.renders_messages is True
    assert client_type.default_min_interval == 1.0
    assert client_type.default_coalesce == 10.0


def test_found_through_the_entry_point(monkeypatch):
    monkeypatch.setenv("FIGRELAY_PLUGINS", "teams")
    registry = load_plugins()
    assert registry.client_types["teams"].open is TeamsTarget, registry.failures


CONFIG = """
clients:
  - name: ops-teams
    type: teams
    webhook_url: {url}
hooks:
  - event: HealthStatusChanged
    client: ops-teams
"""


def test_legacy_url_refused_at_config_load(tmp_path):
    registry = load_plugins([("teams", figrelay_teams)], entry_points=False)
    url = LEGACY[0]
    with pytest.raises(ConfigError) as info:
        parse_config(CONFIG.format(url=url), tmp_path / "figrelay.yaml", registry)
    text = str(info.value)
    assert "webhook_url" in text and "retired" in text and "Post to a channel when a webhook request is received" in text
    assert "SECRETPART" not in text


def test_valid_config_treats_the_url_as_a_secret(tmp_path):
    registry = load_plugins([("teams", figrelay_teams)], entry_points=False)
    url = f"https://prod-01.westeurope.logic.azure.com:443{WORKFLOW_PATH}?{QUERY}"
    config = parse_config(CONFIG.format(url=url), tmp_path / "figrelay.yaml", registry)
    assert url in config.secrets
    assert SIG not in repr(config.clients["ops-teams"])
