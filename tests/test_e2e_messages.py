"""End to end with one client of each type (http, Slack webhook, Slack bot, Teams, email): every Fig
fixture goes through the real daemon to real local servers; bursts become digests; and no
credential ever shows up in what figrelay prints, stores or serves."""

from __future__ import annotations

import asyncio
import email
import email.policy
import itertools
import json
import re
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from urllib.parse import quote, quote_plus

import pytest
from aiohttp import web
from aiosmtpd.controller import Controller

from conftest import event, fixture_bodies, route_of, wait_until, write_config
from figrelay.events import ROUTES
from figrelay.testing import Received
from test_e2e import AUTH, SECRET, daemon_config, outbox_rows


@dataclass
class Mailbox:
    messages: list[tuple[str, list[str], bytes]] = field(default_factory=list)

    async def handle_DATA(self, server, session, envelope):  # aiosmtpd handler hook
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content or envelope.content))
        return "250 OK"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def smtp() -> Iterator[tuple[Mailbox, int]]:
    mailbox = Mailbox()
    port = free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield mailbox, port
    finally:
        controller.stop()


def every_type_config(http_url: str, slack_url: str, teams_url: str, smtp_port: int, *, pace: str = "0s", coalesce: str = "0s", extra: str = "") -> str:
    clients = f"""
  - name: fwd
    type: http
    base_uri: {http_url}/fig/
    secret: http-downstream-secret
  - name: slack-hook
    type: slack
    webhook_url: {slack_url}/services/T000/B000/XXXXslackpath
    min_interval: {pace}
    coalesce: {coalesce}
  - name: slack-bot
    type: slack
    token: xoxb-1234-5678-botsecrettoken
    channel: C0123456789
    api_url: {slack_url}/api/
    min_interval: {pace}
    coalesce: {coalesce}
  - name: teams
    type: teams
    webhook_url: {teams_url}/workflows/abc/triggers/manual/paths/invoke?api-version=1&sig=TEAMSsigSECRET123
    min_interval: {pace}
    coalesce: {coalesce}
  - name: mail
    type: email
    host: 127.0.0.1
    port: {smtp_port}
    security: none
    from: figrelay@example.com
    to: [ops@example.com]
    coalesce: {coalesce}
"""
    hooks = "\n".join(f"  - {{event: {r}, client: {c}}}" for c in ("fwd", "slack-hook", "slack-bot", "teams", "mail") for r in ROUTES)
    return daemon_config(clients, hooks, f"  secret: {SECRET}", extra)


def slack_responder(request):
    if request.path.endswith("chat.postMessage"):
        return web.json_response({"ok": True, "channel": "C0123456789", "ts": "1.2"})
    return web.Response(text="ok")


async def test_every_fixture_through_every_client_type(daemon_factory, receiver_factory, smtp):
    mailbox, smtp_port = smtp
    fwd, slack, teams = await receiver_factory(), await receiver_factory(), await receiver_factory()
    slack.responder = slack_responder
    teams.responder = lambda r: web.Response(status=202)
    d = await daemon_factory(every_type_config(fwd.url, slack.url, teams.url, smtp_port))
    bodies = fixture_bodies()
    for name, body in bodies.items():
        status, payload = await d.post(route_of(name), body, AUTH)
        assert status == 200 and len(payload["deliveries"]) == 5, payload
    n = len(bodies)
    await wait_until(
        lambda: len(fwd.requests) == n and len(slack.requests) == 2 * n and len(teams.requests) == n and len(mailbox.messages) == n,
        timeout=30, what="every fixture at every client",
    )
    assert {r.body for r in fwd.requests} == set(bodies.values())

    webhook = [r for r in slack.requests if "/services/" in r.path]
    bot = [r for r in slack.requests if r.path == "/api/chat.postMessage"]
    assert len(webhook) == len(bot) == n
    for r in bot:
        assert r.headers["Authorization"] == "Bearer xoxb-1234-5678-botsecrettoken" and r.json["channel"] == "C0123456789"
    texts = " ".join(json.dumps(r.json) for r in webhook)
    assert "OrdersApi: 2 settings changed" in texts and "Failed login for alice" in texts and "below minimum" in texts
    assert all(r.json["text"] and "blocks" in json.dumps(r.json) for r in webhook)

    for r in teams.requests:
        card = r.json["attachments"][0]
        assert r.json["type"] == "message" and card["contentType"] == "application/vnd.microsoft.card.adaptive"
        assert card["content"]["version"] == "1.4"
    assert "OrdersApi: Degraded" in " ".join(json.dumps(r.json, ensure_ascii=False) for r in teams.requests)

    subjects = []
    for mail_from, rcpt, raw in mailbox.messages:
        message = email.message_from_bytes(raw, policy=email.policy.default)
        assert mail_from == "figrelay@example.com" and rcpt == ["ops@example.com"]
        assert message["Message-ID"] and message["Date"] and message.get_body(("plain",)) and message.get_body(("html",))
        subjects.append(str(message["Subject"]))
    assert any("Failed login for alice" in s for s in subjects)

    await wait_until(lambda: outbox_rows(d.config_path.parent) == [])


async def test_a_burst_becomes_a_digest_and_sends_are_paced(daemon_factory, receiver_factory, smtp):
    mailbox, smtp_port = smtp
    fwd, slack, teams = await receiver_factory(), await receiver_factory(), await receiver_factory()
    slack.responder = slack_responder
    d = await daemon_factory(every_type_config(fwd.url, slack.url, teams.url, smtp_port, pace="0.3s", coalesce="1s"))
    for i in range(20):
        body = event("SettingValueChanged", UpdatedSettings=[f"Setting{i}"], ChangeMessage=f"change {i}")
        assert (await d.post("SettingValueChanged", body, AUTH))[0] == 200
    await wait_until(lambda: len(fwd.requests) == 20)  # http forwards each event: Fig's own format
    await wait_until(lambda: outbox_rows(d.config_path.parent) == [], timeout=20, what="every delivery done")
    webhook = [r for r in slack.requests if "/services/" in r.path]
    assert 1 <= len(webhook) <= 3, f"20 events in a burst must not become {len(webhook)} Slack messages"
    digest = json.dumps(webhook[-1].json, ensure_ascii=False)
    assert "events (SettingValueChanged)" in digest and "Setting19 changed" in digest
    assert len(teams.requests) <= 3 and len(mailbox.messages) <= 3
    gaps = [b.at - a.at for a, b in itertools.pairwise(webhook)]
    assert all(g >= 0.29 for g in gaps), gaps



async def test_a_burst_larger_than_a_message_goes_as_several_digests_that_show_every_event(daemon_factory, receiver_factory, smtp):
    mailbox, smtp_port = smtp
    fwd, slack, teams = await receiver_factory(), await receiver_factory(), await receiver_factory()
    slack.responder = slack_responder
    teams.responder = lambda r: web.Response(status=202)
    d = await daemon_factory(every_type_config(fwd.url, slack.url, teams.url, smtp_port, pace="0.05s", coalesce="1s"))
    n = 60
    for i in range(n):
        body = event("SettingValueChanged", UpdatedSettings=[f"Setting{i:02}"], ChangeMessage=f"change {i}")
        assert (await d.post("SettingValueChanged", body, AUTH))[0] == 200
    await wait_until(lambda: outbox_rows(d.config_path.parent) == [], timeout=30, what="every delivery done")
    wanted = [f"Setting{i:02} changed" for i in range(n)]
    for name, texts in (
        ("slack", [json.dumps(r.json, ensure_ascii=False) for r in slack.requests if "/services/" in r.path]),
        ("teams", [json.dumps(r.json, ensure_ascii=False) for r in teams.requests]),
        ("email", [email.message_from_bytes(raw, policy=email.policy.default).get_body(("plain",)).get_content() for _, _, raw in mailbox.messages]),
    ):
        everything = "\n".join(texts)
        assert all(everything.count(w) >= 1 for w in wanted), f"{name}: an event is missing from the messages"
        assert " more" not in everything, f"{name}: a digest left events out"
        if name != "email":  # chat messages list at most 25 events each; a mail takes the burst whole
            assert len(texts) >= 3, f"{name}: {n} events must be split into digests of at most 25"

SECRETS = [
    SECRET, "http-downstream-secret", "XXXXslackpath", "xoxb-1234-5678-botsecrettoken", "TEAMSsigSECRET123", "smtp-PASS-word-9",
    "whsec_c2lnbmluZy1rZXktZm9yLXRlc3Rz", "file-held-secret-77",
]


def _json_escaped(text: str) -> str:
    # as strict JSON encoders write it: "\/" for a slash, and \uXXXX for more than ASCII needs
    return json.dumps(text)[1:-1].replace("/", "\\/").replace("-", "\\u002d").replace("+", "\\u002B")


ENCODINGS: dict[str, Callable[[str], str]] = {
    "plain": lambda t: t,
    "url-encoded": lambda t: quote(t, safe=""),
    "url-encoded, lower-case hex": lambda t: re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), quote(t, safe="")),
    "form-encoded": lambda t: quote_plus(t, safe=""),
    "JSON-escaped": _json_escaped,
}


def _cut(text: str) -> str:
    """``text`` cut short inside the secret it holds, 3 characters before the secret's end."""
    ends = [text.index(s) + len(s) for s in SECRETS if s in text]
    return text[: min(ends, default=len(text)) - 3]


# what a hostile receiver echoes: each encoding, and the text cut short inside its secret, with and
# without a mark of the cut ("Bearer xoxb-1234-5678-botsecretto…")
ECHO_FORMS: list[Callable[[str], str]] = [*ENCODINGS.values(), lambda t: _cut(t) + "…", _cut]


def hostile_echo() -> Callable[[Received], web.Response]:
    """A receiver that puts the request line, the headers that carry credentials, and the body into
    its error answer, in a different form for each request to one target (by its first path segment)."""
    counters: dict[str, itertools.count[int]] = {}

    def respond(request: Received) -> web.Response:
        query = "&".join(f"{k}={v}" for k, v in request.query.items())
        items = [f"POST {request.path}{'?' + query if query else ''} HTTP/1.1"]
        items += [f"{k}: {v}" for k, v in request.headers.items() if k.lower() in ("authorization", "x-key")]
        items.append(request.body.decode("utf-8", "replace"))
        form = ECHO_FORMS[next(counters.setdefault(request.path.split("/")[1], itertools.count())) % len(ECHO_FORMS)]
        # the items that hold credentials first: a plugin keeps only the first 200 characters
        ordered = sorted(items[:-1], key=lambda item: not any(s in item for s in SECRETS)) + items[-1:]
        return web.Response(status=400, text="bad request " + " | ".join(form(item) for item in ordered))

    return respond


async def test_no_secret_leaks_into_logs_errors_metrics_or_command_output(daemon_factory, receiver_factory, tmp_path):
    """Known secrets go through every path that prints, stores or serves text, echoed back by a
    hostile target in plain, URL-encoded, JSON-escaped and cut-off forms; none comes out, nor the
    first 8 characters of one, in any of those forms."""
    echo = await receiver_factory()
    echo.responder = hostile_echo()
    (tmp_path / "cred").write_text("file-held-secret-77\n")
    smtp_port = free_port()  # nothing listens: connection refused, retried, then a dead letter
    config = every_type_config(echo.url, echo.url, echo.url, smtp_port, extra="log_level: debug")
    config = config.replace("    security: none\n", "    security: tls\n    username: figrelay\n    password: smtp-PASS-word-9\n")
    config = config.replace("    secret: http-downstream-secret\n", "    secret: http-downstream-secret\n    signing_secret: whsec_c2lnbmluZy1rZXktZm9yLXRlc3Rz\n    headers: {X-Key: \"${file:cred}\"}\n")
    config = config.replace("  backoff_max: 0.5s", "  backoff_max: 0.5s\n  max_age: 1s")
    d = await daemon_factory(config)
    for name, body in fixture_bodies().items():
        await d.post(route_of(name), body, AUTH)
    await d.post("SecurityEvent", event("SecurityEvent"), {"Authorization": f"Secret {SECRET}x"})  # a wrong secret
    await wait_until(lambda: len(outbox_rows(d.config_path.parent, "dead")) == 5 * len(fixture_bodies()), timeout=30, what="every delivery dead")
    metrics = (await d.request("GET", "/metrics"))[1]
    readyz = json.dumps((await d.request("GET", "/readyz"))[1])
    write_config(d.config_path, config.replace("type: teams", "type: teams\n    bogus: ${file:cred}"))
    reload_answer = json.dumps((await d.request("POST", "/-/reload"))[1])
    await d.stop()
    write_config(d.config_path, config)  # the commands below read the valid file

    config_path = str(d.config_path)
    outputs = [d.log, metrics, readyz, reload_answer]
    commands = [["check"], ["deliveries"], *(["test", client] for client in ("fwd", "slack-hook", "slack-bot", "teams", "mail"))]
    for args in commands:
        result = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "figrelay", *args, "--config", config_path], capture_output=True, text=True, timeout=120,
        )
        outputs.append(result.stdout + result.stderr)
    outputs.append("\n".join(str(row) for row in outbox_rows(d.config_path.parent)))  # the stored dead letters
    everything = "\n".join(outputs)

    assert "HTTP 400" in everything and "bad request" in everything, "the hostile answers did reach figrelay"
    assert "Authorization%3A" in everything and "X\\u002dKey" in everything and "…" in everything, "each form of echo reached figrelay"
    assert "no deliveries" not in outputs[5] and "slack-bot" in outputs[5], "figrelay deliveries listed the dead letters"
    for secret in SECRETS:
        for encoding, encode in ENCODINGS.items():
            for shown in {encode(secret), encode(secret[:8])}:
                leaks = [line for line in everything.splitlines() if shown in line]
                assert not leaks, f"{secret!r} ({encoding}: {shown!r}) leaked:\n" + "\n".join(leaks[:5])
    assert re.search(r"\*\*\*", everything), "redaction markers show where a secret was blanked"
