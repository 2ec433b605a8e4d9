"""The log client type writes each relayed event to figrelay's log."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from figrelay.delivery import ClientContext, Delivered, Delivery
from figrelay.events import parse_event_body
from figrelay_log import LogOptions, LogTarget

BODY = b'{"ClientName":"OrdersApi","Instance":null,"UpdatedSettings":["Timeout"],"Username":"admin","Link":null,"ChangeMessage":null,"IsTest":true}'


@pytest.mark.parametrize("fmt, expected", [("json", BODY.decode()), ("summary", "SettingValueChanged [test] OrdersApi: UpdatedSettings=[Timeout], Username=admin")])
async def test_writes_the_event_to_the_log(caplog, fmt, expected):
    target = LogTarget(ClientContext("console", LogOptions(format=fmt, level="warning"), None, logging.getLogger("x"), Path(".")))  # type: ignore[arg-type]
    event = parse_event_body("SettingValueChanged", BODY)
    with caplog.at_level(logging.INFO, logger="figrelay.relay.console"):
        outcome = await target.deliver(Delivery("abc", "console", event, BODY, 1, 0.0))
    assert outcome == Delivered("logged")
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert expected in record.getMessage() and "delivery abc" in record.getMessage()
