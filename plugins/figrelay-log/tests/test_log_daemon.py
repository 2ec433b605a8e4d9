"""The log client type inside a real figrelay daemon, through figrelay's test kit
(figrelay.testing's fixtures): each relayed event is a line of the daemon's own log, as a summary
or as Fig's exact body, Fig's Test button included."""

from __future__ import annotations

import re

from figrelay.events import ROUTES
from figrelay.testing import figrelay_config


def config(fmt: str) -> str:
    return figrelay_config(
        clients=[{"name": "console", "type": "log", "format": fmt}], hooks=[{"event": route, "client": "console"} for route in ROUTES],
        forward_test_events=True,
    )


async def test_each_event_is_a_line_of_the_daemons_log(figrelay_daemon, fig_sender):
    daemon = await figrelay_daemon(config("json"))
    sent = await fig_sender(daemon).press_test_button()
    delivered = await daemon.wait_for_deliveries(7, client="console")
    for s, delivery_id in zip(sent, [s.delivery_ids[0] for s in sent], strict=True):
        await daemon.wait_for_log(re.escape(f"[console] {s.body.decode()} (delivery {delivery_id})"))
    assert {d.delivery_id for d in delivered} == {s.delivery_ids[0] for s in sent}


async def test_a_summary_line_names_what_happened(figrelay_daemon, fig_sender):
    daemon = await figrelay_daemon(config("summary"))
    await fig_sender(daemon).send("SecurityEvent", Username="mallory")
    await daemon.wait_for_log(r"\[console\] SecurityEvent mallory: EventType=Login, Timestamp=\S+, Username=mallory, Success=False, .*FailureReason=Invalid password")
    [delivery] = await daemon.wait_for_deliveries(1)
    assert delivery.route == "SecurityEvent" and delivery.attempts == 1
