"""End to end with one client of each type (http, Slack webhook, Slack bot, Teams, email): every Fig
fixture goes through the real daemon to real local servers; bursts become digests; and no
credential ever shows up in what figrelay prints, stores or serves."""

from __future__ import annotations

import asyncio
import email
import email.policy
import itertools
import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from aiosmtpd.controller import Controller

from conftest import event, fixture_bodies, route_of, wait_until, write_config
from figrelay.events import ROUTES
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


SECRETS = [
    SECRET, "http-downstream-secret", "XXXXslackpath", "botsecrettoken", "TEAMSsigSECRET123", "smtp-PASS-word-9",
    "whsec_c2lnbmluZy1rZXktZm9yLXRlc3Rz", "file-held-secret-77",
]


async def test_no_secret_leaks_into_logs_errors_metrics_or_command_output(daemon_factory, receiver_factory, tmp_path):
    """Known secrets go through every path that prints, stores or serves text; none comes out."""
    echo = await receiver_factory()

    def echo_everything(request):  # a hostile receiver: echoes the request back in its errors
        return web.Response(status=400, text=f"bad request {request.path}?{request.query} {request.headers} {request.body[:200]!r}")

    echo.responder = echo_everything
    (tmp_path / "cred").write_text("file-held-secret-77\n")
    smtp_port = free_port()  # nothing listens: connection refused, retried, then a dead letter
    extra = "\n".join([
        "log_level: debug",
    ])
    config = every_type_config(echo.url, echo.url, echo.url, smtp_port, extra=extra)
    config = config.replace("    security: none\n", "    security: tls\n    username: figrelay\n    password: smtp-PASS-word-9\n")
    config = config.replace("    secret: http-downstream-secret\n", "    secret: http-downstream-secret\n    signing_secret: whsec_c2lnbmluZy1rZXktZm9yLXRlc3Rz\n    headers: {X-Key: \"${file:cred}\"}\n")
    config = config.replace("  backoff_max: 0.5s", "  backoff_max: 0.5s\n  max_age: 1s")
    d = await daemon_factory(config)
    for name, body in fixture_bodies().items():
        await d.post(route_of(name), body, AUTH)
    await d.post("SecurityEvent", event("SecurityEvent"), {"Authorization": f"Secret {SECRET}x"})  # a wrong secret
    await wait_until(lambda: len(outbox_rows(d.config_path.parent, "dead")) == 5 * len(fixture_bodies()), timeout=30, what="every delivery dead")
    metrics = (await d.request("GET", "/metrics"))[1]
    write_config(d.config_path, config.replace("type: teams", "type: teams\n    bogus: ${file:cred}"))
    reload_answer = json.dumps((await d.request("POST", "/-/reload"))[1])
    await d.stop()

    env = {**os.environ}
    config_path = str(d.config_path)
    outputs = [d.log, metrics, reload_answer]
    for args in (["check", "--config", config_path], ["deliveries", "--config", config_path], ["test", "slack-hook", "--config", config_path],
                 ["test", "mail", "--config", config_path], ["test", "fwd", "--config", config_path]):
        result = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "figrelay", *args], capture_output=True, text=True, timeout=120, env=env
        )
        outputs.append(result.stdout + result.stderr)
    stored = "\n".join(str(row) for row in outbox_rows(d.config_path.parent))
    outputs.append(stored)
    everything = "\n".join(outputs)
    assert "HTTP 400" in everything and "bad request" in everything, "the hostile answers did reach figrelay"
    for secret in SECRETS:
        leaks = [line for line in everything.splitlines() if secret in line]
        assert not leaks, f"{secret!r} leaked:\n" + "\n".join(leaks[:5])
    assert re.search(r"\*\*\*", everything), "redaction markers show where a secret was blanked"
