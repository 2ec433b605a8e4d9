"""The http client type inside a real figrelay daemon, through figrelay's test kit
(figrelay.testing's fixtures): Fig's events forwarded byte for byte, and a receiver that drops
the connection, answers 503 with Retry-After or hangs is retried with the same delivery id."""

from __future__ import annotations

from figrelay.events import ROUTES
from figrelay.testing import Answer, Close, Hang, Receiver, figrelay_config


def config(receiver: Receiver, **options: object) -> str:
    client = {"name": "siem", "type": "http", "base_uri": f"{receiver.url}/fig/", "secret": "downstream-secret", **options}
    return figrelay_config(clients=[client], hooks=[{"event": route, "client": "siem"} for route in ROUTES], forward_test_events=True)


async def test_figs_events_are_forwarded_byte_for_byte(figrelay_daemon, recording_receiver, fig_sender):
    daemon = await figrelay_daemon(config(recording_receiver))
    sender = fig_sender(daemon)
    sent = await sender.send_samples() + await sender.press_test_button()
    assert all(s.accepted for s in sent)
    received = await recording_receiver.wait_for(len(sent))
    assert sorted((r.path, r.body) for r in received) == sorted((f"/fig/{s.route}", s.body) for s in sent)
    for request in received:
        assert request.headers["Authorization"] == "Secret downstream-secret"
        assert request.headers["Content-Type"] == "application/json; charset=utf-8"
    delivered = await daemon.wait_for_deliveries(len(sent), client="siem")
    assert {r.headers["X-Figrelay-Delivery"] for r in received} == {d.delivery_id for d in delivered}


async def test_a_dropped_connection_and_a_503_are_retried_with_the_same_delivery_id(figrelay_daemon, recording_receiver, fig_sender):
    recording_receiver.script(Close(), Answer(503, "busy", retry_after=1))  # then 200
    daemon = await figrelay_daemon(config(recording_receiver))
    sent = await fig_sender(daemon).send("SettingValueChanged")
    dropped, busy, taken = await recording_receiver.wait_for(3)
    assert {r.headers["X-Figrelay-Delivery"] for r in (dropped, busy, taken)} == set(sent.delivery_ids)
    assert taken.at - busy.at >= 1.0, "retried before Retry-After ran out"
    [delivery] = await daemon.wait_for_deliveries(1)
    attempts = daemon.state.attempts(delivery.delivery_id)
    assert [(a.outcome, a.status) for a in attempts] == [("retry", None), ("retry", 503), ("delivered", 200)]


async def test_a_hung_receiver_times_out_and_is_retried(figrelay_daemon, recording_receiver, fig_sender):
    recording_receiver.script(Hang())  # never answers the first request; 200 after
    daemon = await figrelay_daemon(config(recording_receiver, timeout="0.5s"))
    await fig_sender(daemon).send("SecurityEvent")
    [delivery] = await daemon.wait_for_deliveries(1)
    assert recording_receiver.hanging == 1 and len(recording_receiver.requests) == 2
    first, second = daemon.state.attempts(delivery.delivery_id)
    assert first.outcome == "retry" and first.status is None and first.duration >= 0.5
    assert (second.outcome, second.status) == ("delivered", 200)
