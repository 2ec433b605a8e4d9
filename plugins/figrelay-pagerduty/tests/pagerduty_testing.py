"""A fake PagerDuty for the pagerduty client type's tests: the Events API v2 on a real local
aiohttp server (figrelay.testing's recording receiver), as PagerDuty documents it.

It lives here rather than in a ``conftest.py``: figrelay's whole suite collects every plugin's
tests in one run, where a second non-package ``conftest`` module would take the name ``conftest``
from tests/conftest.py, which some of those tests import by that name while they run.
"""

from __future__ import annotations

import json
import uuid
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aiohttp import web

from figrelay.testing import Received, Receiver, http_receiver

ROUTING_KEY = "R0UT1NGKEYSECRETVALUE0123456789a"
"""A well-formed routing key (32 letters and digits) that must never show in any text figrelay writes."""
assert len(ROUTING_KEY) == 32

SEVERITIES = ("critical", "error", "warning", "info")


@dataclass
class Alert:
    """An alert as PagerDuty keeps it: opened by a trigger, added to by later triggers with its
    dedup_key, closed by a resolve."""

    dedup_key: str
    triggers: list[dict[str, Any]] = field(default_factory=list)
    resolved: bool = False


class FakePagerDuty:
    """PagerDuty's Events API v2 as its documentation describes it (see figrelay_pagerduty's
    docstring for the sources): each event is checked against the documented rules and refused
    with PagerDuty's 400 shape when it breaks one, alerts are kept by dedup_key (a trigger opens
    one or adds to the open one, a resolve closes the open one or is dropped), and the answers of
    the next requests can be scripted to fail."""

    def __init__(self, receiver: Receiver, routing_key: str = ROUTING_KEY) -> None:
        self.receiver = receiver
        self.url = receiver.url
        self.routing_key = routing_key
        self.alerts: list[Alert] = []
        self.accepted: list[dict[str, Any]] = []
        """Alert events (trigger, resolve) PagerDuty took, in order."""
        self.changes: list[dict[str, Any]] = []
        """Change events PagerDuty took, in order."""
        self.refused: list[tuple[dict[str, Any] | None, list[str]]] = []
        self._failures: deque[web.Response] = deque()
        receiver.responder = self._answer

    # --- scripting -----------------------------------------------------------------------------

    def fail_next(self, *answers: web.Response) -> None:
        """Answer the next requests with these instead of processing them."""
        self._failures.extend(answers)

    # --- reading -------------------------------------------------------------------------------

    @property
    def requests(self) -> list[Received]:
        return self.receiver.requests

    def open(self) -> dict[str, Alert]:
        """The open alerts by dedup_key."""
        return {a.dedup_key: a for a in self.alerts if not a.resolved}

    def actions(self) -> list[tuple[str, str]]:
        """(event_action, dedup_key) of every accepted alert event, in order."""
        return [(e["event_action"], e["dedup_key"]) for e in self.accepted]

    # --- answering -----------------------------------------------------------------------------

    def _answer(self, request: Received) -> web.Response:
        if self._failures:
            return self._failures.popleft()
        if request.path not in ("/v2/enqueue", "/v2/change/enqueue"):
            return web.Response(status=404, text="not found")
        try:
            event = json.loads(request.body)
        except ValueError:
            return self._refuse(None, ["JSON parse error"], "Unrecognized object", "Event object format is unrecognized")
        if not isinstance(event, dict):
            return self._refuse(None, ["JSON parse error"], "Unrecognized object", "Event object format is unrecognized")
        errors = self._check_common(event, len(request.body))
        if request.path == "/v2/change/enqueue":
            errors += self._check_payload(event, change=True)
            if errors:
                return self._refuse(event, errors)
            self.changes.append(event)
            return web.json_response({"status": "success", "message": "Change event processed"}, status=202)
        errors += self._check_alert(event)
        if errors:
            return self._refuse(event, errors)
        return web.json_response({"status": "success", "message": "Event processed", "dedup_key": self._apply(event)}, status=202)

    def _refuse(self, event: dict[str, Any] | None, errors: list[str], status: str = "invalid event", message: str = "Event object is invalid") -> web.Response:
        self.refused.append((event, errors))
        return web.json_response({"status": status, "message": message, "errors": errors}, status=400)

    def _check_common(self, event: dict[str, Any], size: int) -> list[str]:
        errors = []
        if size > 512_000:
            errors.append(f"Event object is too large ({size} bytes; the limit is 512 KB)")
        key = event.get("routing_key")
        if not isinstance(key, str) or len(key) != 32:
            errors.append("Length of 'routing_key' is incorrect (should be 32 characters)")
        elif key != self.routing_key:
            errors.append("Invalid routing key")
        links = event.get("links", [])
        if not isinstance(links, list) or not all(isinstance(link, dict) and isinstance(link.get("href"), str) for link in links):
            errors.append("'links' must be a list of objects with an 'href'")
        return errors

    def _check_alert(self, event: dict[str, Any]) -> list[str]:
        errors = []
        action = event.get("event_action")
        if action not in ("trigger", "acknowledge", "resolve"):
            errors.append("'event_action' is invalid (must be one of the following: 'trigger', 'acknowledge' or 'resolve')")
        key = event.get("dedup_key")
        if key is not None and (not isinstance(key, str) or len(key) > 255):
            errors.append("'dedup_key' must be a string of at most 255 characters")
        if action in ("acknowledge", "resolve") and not key:
            errors.append("'dedup_key' is required for acknowledge and resolve events")
        if action == "trigger":
            errors += self._check_payload(event, change=False)
        for name in ("client", "client_url"):
            if name in event and not isinstance(event[name], str):
                errors.append(f"'{name}' must be a string")
        return errors

    @staticmethod
    def _check_payload(event: dict[str, Any], change: bool) -> list[str]:
        payload = event.get("payload")
        if not isinstance(payload, dict):
            return ["'payload' is missing or not an object"]
        errors = []
        summary = payload.get("summary")
        if not isinstance(summary, str) or not summary:
            errors.append("'payload.summary' is missing or blank")
        elif len(summary) > 1024:
            errors.append("'payload.summary' is longer than 1024 characters")
        source = payload.get("source")
        if not change and (not isinstance(source, str) or not source):
            errors.append("'payload.source' is missing or blank")
        if not change and payload.get("severity") not in SEVERITIES:
            errors.append("'payload.severity' is invalid (must be one of the following: 'critical', 'warning', 'error' or 'info')")
        stamp = payload.get("timestamp")
        if stamp is not None:
            try:
                datetime.fromisoformat(stamp)
            except (TypeError, ValueError):
                errors.append("'payload.timestamp' is not an ISO 8601 date and time")
        if "custom_details" in payload and not isinstance(payload["custom_details"], dict):
            errors.append("'payload.custom_details' must be an object")
        for name in ("component", "group", "class"):
            if name in payload and not isinstance(payload[name], str):
                errors.append(f"'payload.{name}' must be a string")
        return errors

    def _apply(self, event: dict[str, Any]) -> str:
        self.accepted.append(event)
        key = event.get("dedup_key") or uuid.uuid4().hex
        current = self.open().get(key)
        if event["event_action"] == "trigger":
            if current is None:
                current = Alert(key)
                self.alerts.append(current)
            current.triggers.append(event)
        elif event["event_action"] == "resolve" and current is not None:
            current.resolved = True
        return key


@asynccontextmanager
async def running_fake_pagerduty(routing_key: str = ROUTING_KEY) -> AsyncIterator[FakePagerDuty]:
    """A FakePagerDuty on a free loopback port for the duration of the block."""
    async with http_receiver() as receiver:
        yield FakePagerDuty(receiver, routing_key)
