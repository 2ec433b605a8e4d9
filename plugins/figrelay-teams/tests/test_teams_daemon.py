"""The teams client type inside a real figrelay daemon, through figrelay's test kit
(figrelay.testing's fixtures), with a Teams Workflows webhook played by a recording receiver on
loopback: an Adaptive Card 1.4 for a Fig event, 202 taken as a delivery, a dropped connection
retried, a 400 kept as a dead letter, and the workflow's ``sig=`` (a credential) never in the log."""

from __future__ import annotations

from figrelay.testing import Answer, Close, Receiver, figrelay_config

WORKFLOW_PATH = "/workflows/5f0c2a9e8b7d4c3a/triggers/manual/paths/invoke"
SIG = "q7Xv9SecretSigQ2w-_Zr8LkMnOpQrStUvWxYz012345"


def config(receiver: Receiver) -> str:
    url = f"{receiver.url}{WORKFLOW_PATH}?api-version=2016-06-01&sp=%2Ftriggers%2Fmanual%2Frun&sv=1.0&sig={SIG}"
    # no pacing, no digest window: each event is sent at once (Teams' defaults are 1s and 10s)
    client = {"name": "ops-teams", "type": "teams", "webhook_url": url, "min_interval": 0, "coalesce": 0}
    return figrelay_config(clients=[client], hooks=[{"event": "HealthStatusChanged", "client": "ops-teams"}])


async def test_a_fig_event_becomes_an_adaptive_card_and_a_dropped_connection_is_retried(figrelay_daemon, recording_receiver, fig_sender):
    recording_receiver.script(Close(), then=Answer(202, ""))  # Workflows says yes with 202 and no body
    daemon = await figrelay_daemon(config(recording_receiver))
    await fig_sender(daemon).send("HealthStatusChanged", ClientName="PaymentsApi")
    dropped, posted = await recording_receiver.wait_for(2, path=WORKFLOW_PATH)
    assert dropped.body == posted.body and posted.query["sig"] == SIG
    [attachment] = posted.json["attachments"]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive" and attachment["content"]["version"] == "1.4"
    assert "PaymentsApi: Degraded" in posted.body.decode()
    [delivery] = await daemon.wait_for_deliveries(1)
    assert [(a.outcome, a.status) for a in daemon.state.attempts(delivery.delivery_id)] == [("retry", None), ("delivered", 202)]
    assert SIG not in daemon.log


async def test_a_400_from_the_workflow_is_a_dead_letter(figrelay_daemon, recording_receiver, fig_sender):
    recording_receiver.always(Answer(400, {"error": {"code": "InvalidRequestContent", "message": "The input body for trigger 'manual' is not valid"}}))
    daemon = await figrelay_daemon(config(recording_receiver))
    await fig_sender(daemon).send("HealthStatusChanged")
    [dead] = await daemon.wait_for_deliveries(1, state="dead")
    assert dead.attempts == 1 and "HTTP 400" in (dead.last_reason or "") and SIG not in (dead.last_reason or "")
    assert len(recording_receiver.requests) == 1
