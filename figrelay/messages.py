"""Human messages from Fig events: the one rendering layer that Slack, Teams and email share.

``describe(event)`` turns each of the seven events into a Message: a title, a short text, the
facts that matter for that event type, a severity, and a link to Fig. A target renders the Message
in its own idiom (Block Kit, an Adaptive Card, an HTML mail), so all of them say the same thing.
``digest(messages)`` folds a burst of messages into one.

Messages hold plain text; each target escapes it for its own markup.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from .events import (
    ClientStatusChanged,
    ConnectionEvent,
    FigDateTime,
    FigEvent,
    HealthStatus,
    HealthStatusChanged,
    MinRunSessions,
    NewClientRegistration,
    RunSessionsEvent,
    SecurityEvent,
    SettingValueChanged,
    UpdatedClientRegistration,
)


class Severity(enum.Enum):
    """How much a message should stand out. Ordered: ``Severity.CRITICAL > Severity.INFO``."""

    GOOD = "good"
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return _RANK[self]

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Severity):
            return NotImplemented
        return self.rank < other.rank

    @property
    def emoji(self) -> str:
        return _EMOJI[self]

    @property
    def colour(self) -> str:
        """A hex colour for the severity (Slack attachment bars, HTML accents)."""
        return _COLOUR[self]


_RANK = {Severity.GOOD: 0, Severity.INFO: 1, Severity.WARNING: 2, Severity.CRITICAL: 3}
_EMOJI = {Severity.GOOD: "✅", Severity.INFO: "\N{INFORMATION SOURCE}\ufe0f", Severity.WARNING: "⚠️", Severity.CRITICAL: "🚨"}
_COLOUR = {Severity.GOOD: "#2EB67D", Severity.INFO: "#1D9BD1", Severity.WARNING: "#ECB22E", Severity.CRITICAL: "#E01E5A"}


@dataclass(frozen=True, slots=True)
class Fact:
    title: str
    value: str


@dataclass(frozen=True, slots=True)
class Message:
    title: str
    """One line, e.g. ``OrdersApi: 2 settings changed``."""
    text: str
    """A short plain-text paragraph; may hold line breaks."""
    severity: Severity
    facts: tuple[Fact, ...] = ()
    link: str | None = None
    link_label: str = "Open in Fig"
    is_test: bool = False
    event: str = ""
    """The Fig event type (route) it describes; ``digest`` for a digest of several types."""
    client: str | None = None
    """The setting client it is about, if any."""
    items: tuple[Message, ...] = field(default=())
    """For a digest: the messages it folds together, oldest first."""

    @property
    def summary(self) -> str:
        """A one-line fallback (notifications, plain-text parts): emoji, test marker, title."""
        test = "[TEST] " if self.is_test and not self.title.lower().startswith("[test]") else ""
        return f"{self.severity.emoji} {test}{self.title}"


MAX_LISTED = 20


def _listing(names: Sequence[str], limit: int = MAX_LISTED) -> str:
    shown = ", ".join(names[:limit])
    more = len(names) - limit
    return f"{shown} and {more} more" if more > 0 else shown


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _where(instance: str | None, hostname: str | None) -> str:
    parts = []
    if instance:
        parts.append(f"instance {instance}")
    if hostname:
        parts.append(f"on {hostname}")
    return " ".join(parts)


def _facts(*pairs: tuple[str, object]) -> tuple[Fact, ...]:
    return tuple(Fact(title, _text(value)) for title, value in pairs if value not in (None, "", ()))


def _text(value: object) -> str:
    if isinstance(value, FigDateTime):
        return value.datetime.strftime("%Y-%m-%d %H:%M:%S UTC")
    return str(value)


def describe(event: FigEvent, minimum: int | None = None) -> Message:
    """The default message for an event. ``minimum`` is the hook's ``min_sessions``, when known."""
    message = _describe(event, minimum)
    if event.test:  # each target adds its own banner too; the text stays the event's
        message = replace(message, title=f"[Test] {message.title}")
    return replace(message, is_test=event.test, event=event.route, client=event.setting_client)


def _describe(event: FigEvent, minimum: int | None) -> Message:
    if isinstance(event, ClientStatusChanged):
        where = _where(event.instance, event.hostname)
        facts = _facts(
            ("Instance", event.instance), ("Host", event.hostname), ("IP address", event.ip_address),
            ("Session started", event.start_time), ("App version", event.application_version), ("Fig version", event.fig_version),
        )
        if event.connection_event == ConnectionEvent.Connected:
            return Message(f"{event.client_name}: run session connected", f"A run session connected{' ' + where if where else ''}.",
                           Severity.INFO, facts, event.link)
        return Message(f"{event.client_name}: run session disconnected",
                       f"A run session{' ' + where if where else ''} stopped polling Fig and was removed.", Severity.WARNING, facts, event.link)

    if isinstance(event, SettingValueChanged):
        names = list(event.updated_settings)
        title = f"{event.client_name}: {names[0]} changed" if len(names) == 1 else f"{event.client_name}: {_plural(len(names), 'setting')} changed"
        by = f" by {event.username}" if event.username else ""
        text = f"{_listing(names)} changed{by}."
        if event.change_message:
            text += f"\nReason: {event.change_message}"
        facts = _facts(("Settings", _listing(names)), ("Changed by", event.username), ("Reason", event.change_message), ("Instance", event.instance))
        return Message(title, text, Severity.INFO, facts, event.link)

    if isinstance(event, UpdatedClientRegistration):
        names = list(event.settings)
        return Message(f"{event.client_name}: registration updated",
                       f"{event.client_name} registered again with a changed definition; it now has {_plural(len(names), 'setting')}.",
                       Severity.INFO, _facts(("Settings", _listing(names)), ("Instance", event.instance)), event.link)

    if isinstance(event, NewClientRegistration):
        names = list(event.settings)
        return Message(f"{event.client_name}: new client registered",
                       f"{event.client_name} registered with Fig for the first time, with {_plural(len(names), 'setting')}.",
                       Severity.GOOD, _facts(("Settings", _listing(names)), ("Instance", event.instance)), event.link)

    if isinstance(event, MinRunSessions):
        running = _plural(event.run_sessions, "run session")
        of = f" (minimum {minimum})" if minimum is not None else ""
        facts = _facts(("Run sessions", event.run_sessions), ("Instance", event.instance))
        if event.run_sessions_event == RunSessionsEvent.BelowMinimum:
            return Message(f"{event.client_name}: below minimum run sessions",
                           f"Only {running} left{of}.", Severity.CRITICAL, facts, event.link)
        return Message(f"{event.client_name}: minimum run sessions restored",
                       f"{running.capitalize()} running again{of}.", Severity.GOOD, facts, event.link)

    if isinstance(event, HealthStatusChanged):
        severity = {HealthStatus.Healthy: Severity.GOOD, HealthStatus.Degraded: Severity.WARNING,
                    HealthStatus.Unhealthy: Severity.CRITICAL}.get(event.status, Severity.WARNING)
        where = _where(event.instance, event.hostname)
        components = event.health_details.components if event.health_details else ()
        facts = [Fact(c.name or "(unnamed)", c.status.name + (f": {c.message}" if c.message else "")) for c in components]
        facts += _facts(("Host", event.hostname), ("IP address", event.ip_address), ("App version", event.application_version))
        unwell = sum(c.status != HealthStatus.Healthy for c in components)
        of = f" ({unwell} of {len(components)} components not healthy)" if components else ""
        text = f"Health is now {event.status.name}{' ' + where if where else ''}{of}."
        return Message(f"{event.client_name}: {event.status.name}", text, severity, tuple(facts), event.link)

    if isinstance(event, SecurityEvent):
        who = event.username or "unknown user"
        facts = _facts(("User", event.username), ("Reason", event.failure_reason), ("IP address", event.ip_address),
                       ("Fig server", event.hostname), ("Time", event.timestamp))
        if event.success:
            return Message(f"{event.event_type} by {who}", f"{who} logged in to Fig.", Severity.INFO, facts, event.uri)
        return Message(f"Failed {event.event_type.lower()} for {who}", f"A {event.event_type.lower()} to Fig failed.", Severity.CRITICAL, facts, event.uri)

    return Message(event.route, "", Severity.INFO)


MAX_DIGEST_LINES = 25
"""The most events one chat message lists (Slack's and Teams' ``max_batch``): a longer burst is
sent as several digests, so every event is shown and none is summed up as "… and N more"."""


def digest(messages: Sequence[Message]) -> Message:
    """One message standing for several (a burst coalesced): the worst severity, one line each."""
    if len(messages) == 1:
        return messages[0]
    clients = {m.client for m in messages}
    events = {m.event for m in messages}
    client = next(iter(clients)) if len(clients) == 1 else None
    what = _plural(len(messages), "event")
    if len(events) == 1:
        what = f"{what} ({next(iter(events))})"
    title = f"{client}: {what}" if client else what
    lines = [f"• {m.title}" for m in messages]  # every one: the dispatcher splits what a message cannot hold
    return Message(
        title=title,
        text="\n".join(lines),
        severity=max(m.severity for m in messages),
        link=next((m.link for m in reversed(messages) if m.link), None),
        is_test=all(m.is_test for m in messages),
        event=next(iter(events)) if len(events) == 1 else "digest",
        client=client,
        items=tuple(messages),
    )
