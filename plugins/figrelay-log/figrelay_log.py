"""figrelay's ``log`` client type: writes each relayed event to the daemon's own log.

It needs no outside service, so a fresh install visibly relays; it is also handy while writing
hooks (`figrelay send` an event and watch which log clients print it).

    clients:
      - name: console
        type: log
        format: summary        # summary (one readable line) or json (the exact relayed body)
        level: info            # the log level to write at
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any, Literal

from figrelay.delivery import ClientContext, ClientOptions, ClientType, Delivered, Delivery, Outcome
from figrelay.hookspecs import hookimpl

FIGRELAY_PLUGIN_API = 1  # the figrelay plugin API versions this plugin works with (docs/plugins.md)


class LogOptions(ClientOptions):
    format: Literal["summary", "json"] = "summary"
    """``summary``: one readable line; ``json``: the exact relayed body."""
    level: Literal["debug", "info", "warning", "error"] = "info"
    """The log level to write at."""


def summarise(delivery: Delivery) -> str:
    """One line naming what happened, for people reading a terminal."""
    e = delivery.event.to_wire()
    subject = e.get("ClientName") or e.get("Username") or "?"
    details = {k: v for k, v in e.items() if k not in ("ClientName", "Link", "Uri", "IsTest") and v not in (None, [], "")}
    parts = ", ".join(f"{k}={_text(v)}" for k, v in details.items())
    test = " [test]" if e.get("IsTest") else ""
    return f"{delivery.route}{test} {subject}: {parts}"


def _text(value: Any) -> str:
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "[" + ", ".join(value) + "]"
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return str(value)


class LogTarget:
    def __init__(self, context: ClientContext) -> None:
        options: LogOptions = context.options
        self._json = options.format == "json"
        self._level = logging.getLevelName(options.level.upper())
        self._logger = logging.getLogger(f"figrelay.relay.{context.name}")
        self._name = context.name

    async def deliver(self, delivery: Delivery) -> Outcome:
        text = delivery.body.decode("utf-8") if self._json else summarise(delivery)
        self._logger.log(self._level, "[%s] %s (delivery %s)", self._name, text, delivery.id)
        return Delivered("logged")

    async def aclose(self) -> None:
        return None


@hookimpl
def figrelay_client_types(register: Callable[[ClientType], None]) -> None:
    register(ClientType(name="log", options=LogOptions, open=LogTarget, description="write each event to figrelay's log"))
