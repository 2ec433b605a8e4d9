"""The slack client type against a real local server standing in for Slack (webhook and Web API)."""

from __future__ import annotations

import asyncio
import json
import logging
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from pydantic import ValidationError

import figrelay_slack
from figrelay.config import ConfigError, load_config
from figrelay.delivery import ClientContext, ClientType, Delivered, Delivery, Failed, Retry
from figrelay.events import FigEvent, parse_event
from figrelay.messages import MAX_DIGEST_LINES, Message, Severity, describe, digest
from figrelay.plugins import load_plugins
from figrelay.samples import sample_events
from figrelay.samples import test_button_events as fig_test_button_events  # not collected as a test
from figrelay.testing import Received, Receiver, http_receiver
from figrelay_slack import (
    FIELDS_BUDGET,
    MAX_HEADER,
    TRUNCATED,
    SlackOptions,
    SlackTarget,
    clip,
    escape,
    render,
    units,
)

TOKEN = "xoxb-1111-2222-SECRETTOKENVALUE"
HOOK_PATH = "/services/T000/B000/SECRETHOOKPATH"
CHANNEL = "C0123456789"
SECRETS = ("SECRETTOKENVALUE", "SECRETHOOKPATH")
INFO = Severity.INFO.emoji  # U+2139 U+FE0F
ALL_EVENTS = sample_events() + fig_test_button_events()


def ids(events: list[FigEvent]) -> list[str]:
    return [f"{e.route}-{i}{'-test' if e.test else ''}" for i, e in enumerate(events)]


def delivery_of(message: Message | None = None, event: FigEvent | None = None) -> Delivery:
    event = event or sample_events("SettingValueChanged")[0]
    return Delivery("d" * 32, "ops", event, event.to_json(), 1, 0.0, message=message if message is not None else describe(event))


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def rec() -> AsyncIterator[Receiver]:
    async with http_receiver() as receiver:
        yield receiver


def open_target(http: aiohttp.ClientSession, **options: Any) -> SlackTarget:
    return SlackTarget(ClientContext("ops", SlackOptions(**options), http, logging.getLogger("test"), Path(".")))


def webhook(http: aiohttp.ClientSession, url: str, **options: Any) -> SlackTarget:
    return open_target(http, webhook_url=url + HOOK_PATH, **options)


def bot(http: aiohttp.ClientSession, url: str, **options: Any) -> SlackTarget:
    return open_target(http, token=TOKEN, channel=CHANNEL, api_url=url + "/api/", **options)


def api_ok(request: Received) -> web.Response:
    return web.json_response({"ok": True, "channel": CHANNEL, "ts": "1700000000.000100", "message": {}})


def all_blocks(payload: dict[str, Any]) -> list[dict[str, Any]]:
    return payload["blocks"] + [b for a in payload.get("attachments", []) for b in a["blocks"]]


def details(payload: dict[str, Any]) -> list[dict[str, Any]]:
    [attachment] = payload["attachments"]
    return attachment["blocks"]


def section_text(payload: dict[str, Any]) -> str:
    return next(b["text"]["text"] for b in details(payload) if b["type"] == "section" and "text" in b)


def fields(payload: dict[str, Any]) -> list[str]:
    return next([f["text"] for f in b["fields"]] for b in details(payload) if "fields" in b)


def context_texts(payload: dict[str, Any]) -> list[str]:
    [context] = [b for b in details(payload) if b["type"] == "context"]
    return [e["text"] for e in context["elements"]]


def assert_within_limits(payload: dict[str, Any]) -> None:
    """Block Kit's limits, and the whole message well under Slack's ~12 k characters."""
    blocks = all_blocks(payload)
    assert 1 <= len(blocks) <= 50
    assert payload["text"] and units(payload["text"]) <= 3000
    assert payload["blocks"][0]["type"] == "header"
    for block in blocks:
        assert block["type"] in ("header", "section", "context")
        if block["type"] == "header":
            assert block["text"]["type"] == "plain_text"
            assert 0 < units(block["text"]["text"]) <= 150
        elif block["type"] == "section":
            if "text" in block:
                assert block["text"]["type"] == "mrkdwn"
                assert 0 < units(block["text"]["text"]) <= 3000
            if "fields" in block:
                assert 0 < len(block["fields"]) <= 10
                assert all(f["type"] == "mrkdwn" and 0 < units(f["text"]) <= 2000 for f in block["fields"])
                assert sum(units(f["text"]) for f in block["fields"]) <= FIELDS_BUDGET
        else:
            assert 0 < len(block["elements"]) <= 10
            assert all(0 < units(e["text"]) <= 3000 for e in block["elements"])
    assert len(json.dumps(payload, ensure_ascii=False)) < 12000


def assert_rendered(payload: dict[str, Any], message: Message) -> None:
    assert_within_limits(payload)
    assert payload["text"] == escape(message.summary)
    header = payload["blocks"][0]["text"]["text"]
    assert header.startswith(message.severity.emoji) and message.title in header
    [attachment] = payload["attachments"]
    assert attachment["color"] == message.severity.colour
    types = [b["type"] for b in attachment["blocks"]]
    assert types == ["section"] * (bool(message.text) + bool(message.facts)) + ["context"]
    if message.facts:
        got = fields(payload)
        assert len(got) == min(len(message.facts), 10)
        assert got[0] == f"*{escape(message.facts[0].title)}*\n{escape(message.facts[0].value)}"
    assert context_texts(payload) == [f"<{message.link}|Open in Fig>", f"figrelay · {message.severity.value}" + (" · *test event*" if message.is_test else "")]


# --- payloads -----------------------------------------------------------------------------------


@pytest.mark.parametrize("event", ALL_EVENTS, ids=ids(ALL_EVENTS))
async def test_webhook_payload_for_every_sample_event(event, http, rec):
    message = describe(event)
    outcome = await webhook(http, rec.url).deliver(delivery_of(message, event))
    assert outcome == Delivered("HTTP 200 ok")
    [got] = rec.requests
    assert got.path == HOOK_PATH
    assert got.headers["Content-Type"] == "application/json; charset=utf-8"
    assert "Authorization" not in got.headers
    assert "channel" not in got.json
    assert got.json["unfurl_links"] is False
    assert_rendered(got.json, message)


@pytest.mark.parametrize("event", ALL_EVENTS, ids=ids(ALL_EVENTS))
async def test_bot_payload_for_every_sample_event(event, http, rec):
    rec.responder = api_ok
    message = describe(event)
    outcome = await bot(http, rec.url).deliver(delivery_of(message, event))
    assert outcome == Delivered("posted, ts 1700000000.000100")
    [got] = rec.requests
    assert got.path == "/api/chat.postMessage"
    assert got.headers["Authorization"] == f"Bearer {TOKEN}"
    assert got.headers["Content-Type"] == "application/json; charset=utf-8"
    assert got.json["channel"] == CHANNEL
    assert_rendered(got.json, message)


async def test_cosmetics_in_both_modes(http, rec):
    rec.responder = lambda r: api_ok(r) if r.path.startswith("/api/") else None
    await webhook(http, rec.url, username="Fig", icon_emoji=":gear:").deliver(delivery_of())
    await bot(http, rec.url, username="Fig", icon_emoji=":gear:").deliver(delivery_of())
    for got in rec.requests:
        assert (got.json["username"], got.json["icon_emoji"]) == ("Fig", ":gear:")


async def test_without_a_rendered_message_the_default_one_is_sent(http, rec):
    event = sample_events("MinRunSessions")[0]
    plain = Delivery("d" * 32, "ops", event, event.to_json(), 1, 0.0, minimum=3)
    await webhook(http, rec.url).deliver(plain)
    assert_rendered(rec.requests[0].json, describe(event, 3))


def test_mrkdwn_is_escaped_and_cannot_ping_or_link():
    event = parse_event("SettingValueChanged", {"ClientName": "A&B", "UpdatedSettings": ["X<y>"], "Username": "<!channel>",
                                                "ChangeMessage": "see <https://evil.example|here> & *bold*", "IsTest": False,
                                                "Link": "http://fig.example/?a=1&b=<2>|x"})
    payload = render(describe(event))
    text = section_text(payload)
    assert "<" not in text and ">" not in text
    assert "&lt;!channel&gt;" in text and "&lt;https://evil.example|here&gt; &amp; *bold*" in text
    assert all("<" not in f and ">" not in f for f in fields(payload))
    assert payload["blocks"][0]["text"]["text"] == f"{INFO} A&B: X<y> changed"  # plain_text is shown as it is
    assert payload["text"] == f"{INFO} A&amp;B: X&lt;y&gt; changed"
    assert context_texts(payload)[0] == "<http://fig.example/?a=1&amp;b=%3C2%3E%7Cx|Open in Fig>"


@pytest.mark.parametrize("link", [None, "", "javascript:alert(1)", "ftp://fig.example/", "http://fig.example/ a"])
def test_a_link_that_is_not_http_is_left_out(link):
    event = parse_event("MinRunSessions", {"ClientName": "A", "RunSessions": 1, "RunSessionsEvent": 0, "Link": link, "IsTest": False})
    assert context_texts(render(describe(event))) == ["figrelay · critical"]


# --- test events and digests --------------------------------------------------------------------


@pytest.mark.parametrize("event", fig_test_button_events(), ids=ids(fig_test_button_events()))
def test_test_events_are_visibly_marked(event):
    payload = render(describe(event))
    assert "[test]" in payload["text"].lower()
    assert "[test]" in payload["blocks"][0]["text"]["text"].lower()
    assert "*test event*" in context_texts(payload)[-1]


def test_a_test_title_without_its_own_marker_gets_one():
    message = Message("OrdersApi: settings changed", "x", Severity.INFO, is_test=True)
    assert render(message)["blocks"][0]["text"]["text"] == f"{INFO} [TEST] OrdersApi: settings changed"


async def test_digest_lists_its_items_with_their_severity(http, rec):
    messages = [describe(e) for e in sample_events()]
    message = digest(messages)
    events = sample_events()
    batch = tuple(delivery_of(m, e) for m, e in zip(messages, events, strict=True))
    d = Delivery("d" * 32, "ops", events[-1], events[-1].to_json(), 1, 0.0, message=message, batch=batch)
    assert isinstance(await webhook(http, rec.url).deliver(d), Delivered)
    payload = rec.requests[0].json
    assert_within_limits(payload)
    assert payload["attachments"][0]["color"] == Severity.CRITICAL.colour  # the worst of the burst
    assert payload["blocks"][0]["text"]["text"] == f"🚨 {message.title}"
    lines = section_text(payload).split("\n")
    assert lines == [f"{m.severity.emoji} {escape(m.title)}" for m in messages]
    assert context_texts(payload)[-1] == f"figrelay · critical · digest of {len(messages)}"


def test_digest_of_test_events_is_marked():
    message = digest([describe(e) for e in fig_test_button_events()])
    payload = render(message)
    assert payload["blocks"][0]["text"]["text"].startswith(f"{message.severity.emoji} [TEST] ")
    assert context_texts(payload)[-1].endswith("· *test event*")


def test_a_huge_digest_is_cut_with_a_count_of_the_rest():
    event = sample_events("SettingValueChanged")[0]
    messages = [describe(parse_event("SettingValueChanged", {**event.to_wire(), "UpdatedSettings": [f"Setting{i:03}" + "x" * 80]})) for i in range(500)]
    payload = render(digest(messages))
    assert_within_limits(payload)
    lines = "\n".join(digest_sections(payload)).split("\n")
    shown = len(lines) - 1
    assert shown == MAX_DIGEST_LINES, "figrelay's dispatcher never sends more than max_batch; a direct caller gets a count"
    assert lines[-1] == f"… and {500 - shown} more (truncated)"


def test_a_full_digest_of_long_titles_lists_every_event():
    """A burst the dispatcher sends as one digest (max_batch items, the longest titles) is listed
    whole, over as many sections as it needs: nothing is left out."""
    assert slack_client_type().max_batch == MAX_DIGEST_LINES
    event = sample_events("SettingValueChanged")[0]
    messages = [
        describe(parse_event("SettingValueChanged", {**event.to_wire(), "ClientName": f"Client{i:02}" + "y" * 400})) for i in range(MAX_DIGEST_LINES)
    ]
    payload = render(digest(messages))
    assert_within_limits(payload)
    sections = digest_sections(payload)
    assert len(sections) > 1
    lines = "\n".join(sections).split("\n")
    assert len(lines) == MAX_DIGEST_LINES and not any("more" in line for line in lines)
    assert [line.split("Client")[1][:2] for line in lines] == [f"{i:02}" for i in range(MAX_DIGEST_LINES)]


def digest_sections(payload: dict[str, Any]) -> list[str]:
    """The text of a digest's sections, one event a line."""
    return [b["text"]["text"] for b in details(payload) if b["type"] == "section" and "text" in b]


def slack_client_type():
    registered = []
    figrelay_slack.figrelay_client_types(registered.append)
    return registered[0]


# --- limits and truncation ----------------------------------------------------------------------


def test_500_long_setting_names_and_a_10kb_change_message_stay_within_limits():
    names = [f"Section{i:03}:" + "VeryLongSettingName" * 6 for i in range(500)]
    event = parse_event("SettingValueChanged", {"ClientName": "OrdersApi", "UpdatedSettings": names, "Username": "admin",
                                                "ChangeMessage": "because & <why> " * 640, "Link": "http://localhost:5050/", "IsTest": False})
    payload = render(describe(event))
    assert_within_limits(payload)
    assert section_text(payload).endswith(TRUNCATED)
    reason = next(f for f in fields(payload) if f.startswith("*Reason*"))
    assert reason.endswith(TRUNCATED)
    assert "*Changed by*\nadmin" in fields(payload)  # short facts stay whole


def test_a_10kb_change_message_alone_is_cut_visibly():
    event = parse_event("SettingValueChanged", {"ClientName": "OrdersApi", "UpdatedSettings": ["Timeout"], "Username": "admin",
                                                "ChangeMessage": "x" * 10240, "Link": "http://localhost:5050/", "IsTest": False})
    payload = render(describe(event))
    assert_within_limits(payload)
    assert units(section_text(payload)) == 3000 and section_text(payload).endswith("… (truncated)")


def test_a_long_title_and_many_facts_are_cut():
    components = [{"Name": f"Component{i}", "Status": 2, "Message": "down " * 50} for i in range(30)]
    event = parse_event("HealthStatusChanged", {"ClientName": "Orders" + "Api" * 100, "Status": 2, "Hostname": "h",
                                                "HealthDetails": {"Status": 2, "Components": components}, "IsTest": False})
    payload = render(describe(event))
    assert_within_limits(payload)
    header = payload["blocks"][0]["text"]["text"]
    assert units(header) <= MAX_HEADER and header.endswith(TRUNCATED)
    got = fields(payload)
    assert len(got) == 10 and got[-1] == f"*…*\n{len(describe(event).facts) - 9} more not shown (truncated)"


def test_non_bmp_characters_count_double_and_entities_are_not_split():
    assert units("🚨") == 2 and units(INFO) == 2 and units("é") == 1
    assert units(clip("🚨" * 200, 150)) <= 150
    cut = clip(escape("&" * 100), 50)
    assert cut.endswith(TRUNCATED) and cut.removesuffix(TRUNCATED).endswith("&amp;")
    assert clip("short", 150) == "short"


def test_a_template_title_over_several_lines_becomes_one_header_line():
    payload = render(Message("first\nsecond", "", Severity.WARNING))
    assert payload["blocks"][0]["text"]["text"] == "⚠️ first second"
    assert [b["type"] for b in details(payload)] == ["context"]  # no empty section


# --- outcomes: incoming webhook -----------------------------------------------------------------


@pytest.mark.parametrize(
    "status, body, kind, words",
    [
        (200, "ok", Delivered, "HTTP 200 ok"),
        (400, "invalid_payload", Failed, "HTTP 400 invalid_payload: Slack refused the message figrelay built"),
        (403, "action_prohibited", Failed, "HTTP 403 action_prohibited: a workspace admin has restricted"),
        (404, "channel_not_found", Failed, "HTTP 404 channel_not_found: the target is gone"),
        (404, "no_service", Failed, "HTTP 404 no_service: the target is gone"),
        (410, "channel_is_archived", Failed, "HTTP 410 channel_is_archived: the target is gone"),
        (500, "rollup_error", Retry, "HTTP 500 rollup_error"),
        (503, "<html>busy</html>", Retry, "HTTP 503: <html>busy</html>"),
        (302, "", Failed, "HTTP 302: a redirect, which figrelay does not follow"),
    ],
)
async def test_webhook_answers(status, body, kind, words, http, rec):
    rec.responder = lambda r: web.Response(status=status, text=body, headers={"Location": rec.url + "/elsewhere"})
    outcome = await webhook(http, rec.url).deliver(delivery_of())
    assert isinstance(outcome, kind)
    assert (outcome.detail if kind is Delivered else outcome.reason).startswith(words)
    assert rec.paths() == [HOOK_PATH]


async def test_webhook_429_retries_after_the_given_seconds(http, rec):
    rec.responder = lambda r: web.Response(status=429, text="rate_limited", headers={"Retry-After": "7"})
    assert await webhook(http, rec.url).deliver(delivery_of()) == Retry("HTTP 429 rate_limited", 7.0)


async def test_webhook_other_2xx_bodies_count_as_delivered(http, rec):
    rec.responder = lambda r: web.json_response({"ok": True})
    assert await webhook(http, rec.url).deliver(delivery_of()) == Delivered('HTTP 200: {"ok": true}')


# --- outcomes: bot token (chat.postMessage) -----------------------------------------------------


@pytest.mark.parametrize(
    "code, words",
    [
        ("invalid_auth", "check the token"),
        ("not_authed", "check the token"),
        ("account_inactive", "deactivated"),
        ("token_revoked", "revoked"),
        ("channel_not_found", "the target is gone or hidden"),
        ("not_in_channel", "invite it"),
        ("is_archived", "the target is gone: the channel is archived"),
        ("invalid_blocks", "Slack refused the message figrelay built"),
        ("msg_too_long", "Slack refused the message figrelay built"),
        ("restricted_action", "restricted"),
        ("some_future_error", ""),
    ],
)
async def test_api_ok_false_is_a_failure_naming_the_code(code, words, http, rec):
    rec.responder = lambda r: web.json_response({"ok": False, "error": code})
    outcome = await bot(http, rec.url).deliver(delivery_of())
    assert isinstance(outcome, Failed)
    assert outcome.reason.startswith(f"Slack error {code}") and words in outcome.reason


async def test_api_missing_scope_says_which(http, rec):
    rec.responder = lambda r: web.json_response({"ok": False, "error": "missing_scope", "needed": "chat:write", "provided": "users:read"})
    outcome = await bot(http, rec.url).deliver(delivery_of())
    assert isinstance(outcome, Failed) and outcome.reason.endswith("it needs chat:write")


@pytest.mark.parametrize(
    "status, answer, retry_after, words",
    [
        (200, {"ok": False, "error": "ratelimited"}, 30.0, "Slack error ratelimited"),
        (429, {"ok": False, "error": "ratelimited"}, 30.0, "Slack error ratelimited (HTTP 429)"),
        (429, None, 30.0, "Slack error ratelimited (HTTP 429)"),
        (200, {"ok": False, "error": "internal_error"}, 30.0, "Slack error internal_error"),
        (200, {"ok": False, "error": "service_unavailable"}, 30.0, "Slack error service_unavailable"),
        (500, None, 30.0, "HTTP 500: oops"),
        (503, {"ok": False, "error": "service_unavailable"}, 30.0, "HTTP 503 service_unavailable"),
    ],
)
async def test_api_retryable_answers(status, answer, retry_after, words, http, rec):
    def respond(r: Received) -> web.Response:
        headers = {"Retry-After": "30"}
        if answer is None:
            return web.Response(status=status, text="oops", headers=headers)
        return web.json_response(answer, status=status, headers=headers)

    rec.responder = respond
    outcome = await bot(http, rec.url).deliver(delivery_of())
    assert isinstance(outcome, Retry)
    assert outcome.reason.startswith(words) and outcome.retry_after == retry_after


@pytest.mark.parametrize(
    "status, body, words",
    [
        (200, "<html>captive portal</html>", "HTTP 200 but not a Slack Web API answer (<html>captive portal</html>); check api_url"),
        (200, '["ok"]', "HTTP 200 but not a Slack Web API answer"),
        (200, '{"ok": "yes"}', "Slack error unknown_error"),
        (404, "no such method", "HTTP 404: no such method"),
        (401, "", "HTTP 401: check the token"),
        (301, "", "HTTP 301"),
    ],
)
async def test_api_permanent_answers(status, body, words, http, rec):
    rec.responder = lambda r: web.Response(status=status, text=body, headers={"Location": "http://elsewhere.example/"})
    outcome = await bot(http, rec.url).deliver(delivery_of())
    assert isinstance(outcome, Failed) and outcome.reason.startswith(words)


async def test_api_ok_true_with_a_warning(http, rec):
    rec.responder = lambda r: web.json_response({"ok": True, "ts": "1.2", "warning": "missing_charset"})
    assert await bot(http, rec.url).deliver(delivery_of()) == Delivered("posted, ts 1.2 (Slack warning missing_charset)")


# --- outcomes: the network ----------------------------------------------------------------------


@pytest.mark.parametrize("mode", [webhook, bot])
async def test_connection_refused_is_retryable(mode, http):
    async with http_receiver() as gone:
        url = gone.url
    outcome = await mode(http, url).deliver(delivery_of())
    assert isinstance(outcome, Retry) and outcome.reason.startswith("cannot reach http://127.0.0.1:")


@pytest.mark.parametrize("mode", [webhook, bot])
async def test_timeout_is_retryable(mode, http):
    gate = asyncio.Event()

    async def hang(request: Received) -> web.Response:
        await gate.wait()
        return web.Response(text="ok")

    async with http_receiver() as slow:
        slow.responder = hang
        outcome = await mode(http, slow.url, timeout="0.2s").deliver(delivery_of())
        gate.set()
    assert isinstance(outcome, Retry) and outcome.reason == f"no answer from {slow.url}/… within 0.2s"


# --- secrets ------------------------------------------------------------------------------------


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


@pytest.mark.parametrize("status", [200, 302, 400, 404, 429, 500])
@pytest.mark.parametrize("mode", [webhook, bot])
async def test_no_reason_names_the_webhook_url_or_token_even_when_the_server_echoes_them(mode, status, http, rec):
    def echo(r: Received) -> web.Response:
        said = f"{rec.url}{r.path} {r.path} {r.headers.get('Authorization', '')}"
        if status == 200 and r.path.startswith("/api/"):
            return web.json_response({"ok": False, "error": said, "needed": said})
        return web.Response(status=status, text=said, headers={"Location": rec.url + r.path})

    rec.responder = echo
    outcome = await mode(http, rec.url).deliver(delivery_of())
    assert_no_secret(outcome.detail if isinstance(outcome, Delivered) else outcome.reason)


@pytest.mark.parametrize("mode", [webhook, bot])
async def test_network_errors_do_not_name_the_secrets(mode, http):
    async with http_receiver() as gone:
        url = gone.url
    target = mode(http, url)
    assert_no_secret((await target.deliver(delivery_of())).reason)
    assert_no_secret(repr(target._options))


# --- options ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options, message",
    [
        ({"webhook_url": "https://hooks.slack.com" + HOOK_PATH, "token": TOKEN, "channel": CHANNEL}, "not both"),
        ({}, "set webhook_url (incoming-webhook mode) or token and channel"),
        ({"username": "Fig"}, "set webhook_url"),
        ({"webhook_url": "http://hooks.slack.com" + HOOK_PATH}, "must use https://"),
        ({"webhook_url": "http://10.0.0.1" + HOOK_PATH}, "must use https://"),
        ({"webhook_url": "ftp://hooks.slack.com" + HOOK_PATH}, "must be an https:// URL"),
        ({"webhook_url": "hooks.slack.com" + HOOK_PATH}, "must be an https:// URL"),
        ({"webhook_url": "https://hooks.slack.com/"}, "the whole webhook URL"),
        ({"webhook_url": "https://[::1" + HOOK_PATH}, "not a valid URL"),
        ({"webhook_url": "https://hooks.slack.com" + HOOK_PATH, "channel": CHANNEL}, "channel works only with token"),
        ({"webhook_url": "https://hooks.slack.com" + HOOK_PATH, "api_url": "https://slack.com/api/"}, "api_url works only with token"),
        ({"token": "SECRETTOKENVALUE", "channel": CHANNEL}, "must be a bot token (xoxb-…) or a user token (xoxp-…)"),
        ({"token": "xoxa-SECRETTOKENVALUE", "channel": CHANNEL}, "must be a bot token"),
        ({"token": "xapp-SECRETTOKENVALUE", "channel": CHANNEL}, "app-level token"),
        ({"token": "xoxb-SECRET TOKENVALUE", "channel": CHANNEL}, "must not contain spaces"),
        ({"token": TOKEN}, "channel is required with token"),
        ({"token": TOKEN, "channel": "my channel"}, "must be a channel ID"),
        ({"token": TOKEN, "channel": CHANNEL, "api_url": "http://slack.example/api/"}, "must use https://"),
        ({"token": TOKEN, "channel": CHANNEL, "api_url": "https://user:pw@slack.example/api/"}, "without a query, fragment or credentials"),
        ({"token": TOKEN, "channel": CHANNEL, "icon_emoji": "gear"}, "between colons"),
        ({"token": TOKEN, "channel": CHANNEL, "username": " "}, "1 to 80 characters"),
        ({"token": TOKEN, "channel": CHANNEL, "timeout": "0s"}, "more than 0"),
        ({"token": TOKEN, "channel": CHANNEL, "chanel": "C1"}, "Extra inputs"),
    ],
)
def test_options_are_validated_without_echoing_secrets(options, message):
    with pytest.raises(ValidationError) as info:
        SlackOptions(**options)
    assert message in str(info.value)
    assert_no_secret(str(info.value))


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]"])
def test_plain_http_is_allowed_for_loopback_only(host):
    assert SlackOptions(webhook_url=f"http://{host}:8080{HOOK_PATH}").webhook_url is not None
    assert SlackOptions(token=TOKEN, channel=CHANNEL, api_url=f"http://{host}:8080/api").api_url == f"http://{host}:8080/api/"


def test_option_defaults_and_stray_whitespace():
    options = SlackOptions(token=f" {TOKEN}\n", channel=" #ops ")
    assert options.token is not None and options.token.get_secret_value() == TOKEN
    assert (options.channel, options.api_url, options.timeout) == ("#ops", "https://slack.com/api/", 10.0)
    assert SlackOptions(token="xoxp-1-2", channel=CHANNEL, timeout="1m").timeout == 60.0


def test_a_config_error_names_the_key_but_not_the_webhook_url(tmp_path):
    config = tmp_path / "figrelay.yaml"
    config.write_text(textwrap.dedent(f"""\
        state_dir: ./state
        clients:
          - name: ops
            type: slack
            webhook_url: http://hooks.slack.com{HOOK_PATH}
        hooks:
          - event: SettingValueChanged
            client: ops
        """))
    registry = load_plugins(extra=[("slack", figrelay_slack)], entry_points=False)
    with pytest.raises(ConfigError) as info:
        load_config(config, registry)
    assert "clients[0].webhook_url" in str(info.value) and "must use https://" in str(info.value)
    assert_no_secret(str(info.value))


# --- registration -------------------------------------------------------------------------------


def test_registers_the_slack_client_type():
    registry = load_plugins(extra=[("slack", figrelay_slack)], entry_points=False)
    assert not registry.failures
    slack: ClientType = registry.client_types["slack"]
    assert slack.options is SlackOptions and slack.open is SlackTarget
    assert slack.renders_messages is True
    assert (slack.default_min_interval, slack.default_coalesce) == (1.0, 10.0)
    assert set(slack.secret_options) >= {"webhook_url", "token"}
