"""A Fig sender for tests: posts Fig's exact web hook payloads to a daemon (or any receiver) the
way a Fig server does: one POST per event to ``<base>/<Route>``, the body in Fig's wire format
(Newtonsoft.Json: PascalCase keys in declaration order, compact, nulls written, non-ASCII raw),
``Content-Type: application/json; charset=utf-8`` and ``Authorization: Secret <secret>``.

    sender = FigSender(daemon.url, secret)
    sent = await sender.send("SettingValueChanged", ClientName="PaymentsApi")   # a sample, overridden
    await sender.send_samples()                                                  # every realistic sample
    await sender.press_test_button()                                             # Fig's seven Test payloads
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiohttp

from figrelay.events import ROUTES, FigEvent
from figrelay.samples import sample_events, test_button_events

__all__ = ["FIG_CONTENT_TYPE", "FIG_TEST_BUTTON_TIMEOUT", "FIG_TIMEOUT", "FigSender", "Sent", "fig_body", "fig_json"]

FIG_CONTENT_TYPE = "application/json; charset=utf-8"
FIG_TIMEOUT = 10.0
"""Seconds Fig waits for a receiver's answer to a web hook."""
FIG_TEST_BUTTON_TIMEOUT = 2.0
"""Seconds Fig waits for each answer when an admin presses a web hook client's Test button."""


def fig_json(data: Mapping[str, Any]) -> bytes:
    """A body exactly as Fig's Newtonsoft.Json writes ``data`` (keys in the mapping's order)."""
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    # Newtonsoft escapes these three where Python writes them raw
    for char, escaped in (("\u0085", "\\u0085"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(char, escaped)
    return text.encode("utf-8")


def fig_body(event: str | FigEvent | Mapping[str, Any], **fields: Any) -> bytes:
    """Fig's body for ``event`` (a route, whose first realistic sample is taken; a parsed event; or
    a mapping of wire fields) with ``fields`` (PascalCase wire names, e.g. ``ClientName="PaymentsApi"``)
    put in its place, or added at the end. Nothing is validated, so a test can send a bad field too."""
    if isinstance(event, str):
        if event not in ROUTES:
            raise ValueError(f"unknown event type {event!r}; Fig's routes are {', '.join(ROUTES)}")
        data = sample_events(event)[0].to_wire()
    elif isinstance(event, FigEvent):
        data = event.to_wire()
    else:
        data = dict(event)
    data.update(fields)
    return fig_json(data)


@dataclass(frozen=True, slots=True)
class Sent:
    """One POST and the receiver's answer."""

    route: str
    body: bytes
    status: int
    answer: Any
    """The answer's body: decoded JSON, or its text."""

    @property
    def accepted(self) -> bool:
        """figrelay stored the event (and made a delivery for each hook it matched)."""
        return self.status == 200 and isinstance(self.answer, dict) and self.answer.get("status") == "accepted"

    @property
    def event_id(self) -> str | None:
        return self.answer.get("event_id") if isinstance(self.answer, dict) else None

    @property
    def delivery_ids(self) -> list[str]:
        """The ids of the deliveries figrelay made (one per matching hook), as it answered."""
        if not isinstance(self.answer, dict):
            return []
        return [d["id"] for d in self.answer.get("deliveries", ()) if isinstance(d, dict) and "id" in d]


class FigSender:
    """Posts events to ``url`` (a daemon's address, or any base URI) as Fig does. Each call uses
    a connection of its own and needs no cleanup, so a sender is also usable outside pytest."""

    def __init__(self, url: str, secret: str | None = None, *, timeout: float = FIG_TIMEOUT) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"FigSender needs the receiver's base URL, e.g. http://127.0.0.1:8970; got {url!r}")
        self.url = url.rstrip("/")
        self.secret = secret
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"FigSender({self.url!r}, secret={'…' if self.secret else None})"

    def headers(self) -> dict[str, str]:
        """The headers Fig sends with every web hook."""
        headers = {"Content-Type": FIG_CONTENT_TYPE}
        if self.secret is not None:
            headers["Authorization"] = f"Secret {self.secret}"
        return headers

    async def post(self, route: str, body: bytes, *, timeout: float | None = None) -> Sent:
        """POST ``body`` as it is to ``<url>/<route>``."""
        [sent] = await self._post_all([(route, body)], timeout)
        return sent

    async def send(self, route: str, event: FigEvent | Mapping[str, Any] | None = None, /, **fields: Any) -> Sent:
        """Send one event of type ``route``: ``event`` (default: the first realistic sample of that
        type from ``figrelay.samples``) with ``fields`` overridden, e.g.
        ``send("ClientStatusChanged", ConnectionEvent=1, Instance="blue")``."""
        body = fig_body(route if event is None else event, **fields)
        return await self.post(route, body)

    async def send_samples(self, routes: Sequence[str] | None = None, **fields: Any) -> list[Sent]:
        """Send every realistic sample (``figrelay.samples.sample_events()``: each type, some more
        than once, e.g. a connect and a disconnect), of ``routes`` when given, in Fig's route order,
        one after the other, with ``fields`` overridden in each."""
        events = [e for e in sample_events() if routes is None or e.route in routes]
        return await self._post_all([(e.route, fig_body(e, **fields)) for e in events], None)

    async def press_test_button(self, now: datetime | None = None) -> list[Sent]:
        """Do what Fig's Test button does: POST its seven payloads (``IsTest: true``, ClientName
        ``Test``, the time of the test) one after the other in Fig's order, each with Fig's
        2-second timeout. figrelay relays them only with ``intake.forward_test_events: true``."""
        return await self._post_all([(e.route, e.to_json()) for e in test_button_events(now)], FIG_TEST_BUTTON_TIMEOUT)

    async def _post_all(self, bodies: Sequence[tuple[str, bytes]], timeout: float | None) -> list[Sent]:
        out: list[Sent] = []
        client_timeout = aiohttp.ClientTimeout(total=self.timeout if timeout is None else timeout)
        async with aiohttp.ClientSession(timeout=client_timeout) as session:
            for route, body in bodies:
                async with session.post(f"{self.url}/{route}", data=body, headers=self.headers(), allow_redirects=False) as resp:
                    text = await resp.text()
                    try:
                        answer: Any = json.loads(text)
                    except ValueError:
                        answer = text
                    out.append(Sent(route, body, resp.status, answer))
        return out
