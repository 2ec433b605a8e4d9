"""The slack client type inside a real figrelay daemon, through figrelay's test kit
(figrelay.testing's fixtures), with Slack played by a recording receiver on loopback: a message
for a Fig event, a 429 retried no sooner than Retry-After, chat.postMessage's ``"ok": false``
kept as a dead letter, and the webhook URL (a credential) never in the log."""

from __future__ import annotations

import json

from figrelay.testing import Answer, Receiver, figrelay_config

WEBHOOK_PATH = "/services/T0000/B0000/s3cretW3bhookPath"
BOT_TOKEN = "xoxb-1234-5678-botsecrettoken"


def config(client: dict[str, object], route: str = "SettingValueChanged") -> str:
    # no pacing, no digest window: each event is sent at once (Slack's defaults are 1s and 10s)
    return figrelay_config(clients=[{"name": "ops-slack", "type": "slack", "min_interval": 0, "coalesce": 0, **client}],
                           hooks=[{"event": route, "client": "ops-slack"}])  # fmt: skip


def webhook(receiver: Receiver) -> dict[str, object]:
    return {"webhook_url": receiver.url + WEBHOOK_PATH}


async def test_a_fig_event_becomes_a_slack_message_and_a_429_waits_for_retry_after(figrelay_daemon, recording_receiver, fig_sender):
    recording_receiver.script(Answer(429, "rate_limited", retry_after=1))  # then 200 "ok", as Slack answers
    daemon = await figrelay_daemon(config(webhook(recording_receiver)))
    sent = await fig_sender(daemon).send("SettingValueChanged", ClientName="PaymentsApi")
    limited, posted = await recording_receiver.wait_for(2, path=WEBHOOK_PATH)
    assert posted.at - limited.at >= 1.0, "retried before Retry-After ran out"
    message = posted.json
    assert "PaymentsApi: 2 settings changed" in message["text"] and message["blocks"]
    assert "Increase timeout for peak" in json.dumps(message)
    [delivery] = await daemon.wait_for_deliveries(1)
    assert delivery.delivery_id == sent.delivery_ids[0]
    assert [(a.outcome, a.status) for a in daemon.state.attempts(delivery.delivery_id)] == [("retry", 429), ("delivered", 200)]
    assert WEBHOOK_PATH not in daemon.log and "s3cretW3bhookPath" not in str(daemon.state.attempts(delivery.delivery_id))


async def test_chat_post_message_not_ok_is_a_dead_letter(figrelay_daemon, recording_receiver, fig_sender):
    recording_receiver.always(Answer(200, {"ok": False, "error": "channel_not_found"}))
    client = {"token": BOT_TOKEN, "channel": "C0123456789", "api_url": f"{recording_receiver.url}/api/"}
    daemon = await figrelay_daemon(config(client, route="SecurityEvent"))
    await fig_sender(daemon).send("SecurityEvent")
    [dead] = await daemon.wait_for_deliveries(1, state="dead")
    assert "channel_not_found" in (dead.last_reason or "")
    [request] = recording_receiver.requests
    assert request.path == "/api/chat.postMessage" and request.header("authorization") == f"Bearer {BOT_TOKEN}"
    assert request.json["channel"] == "C0123456789" and "Failed login for alice" in request.json["text"]
    assert BOT_TOKEN not in daemon.log
