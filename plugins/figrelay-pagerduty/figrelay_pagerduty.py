"""figrelay's ``pagerduty`` client type: PagerDuty incidents that open and close themselves from
Fig's events, through PagerDuty's Events API v2.

    clients:
      - name: oncall
        type: pagerduty
        routing_key: ${PAGERDUTY_ROUTING_KEY}  # the Integration Key of an "Events API V2" integration
    hooks:
      - {event: MinRunSessions, client: oncall, client_regex: ^Orders, min_sessions: 2}
      - {event: HealthStatusChanged, client: oncall}
      - {event: SecurityEvent, client: oncall}

What each Fig event becomes (``severity`` overrides a condition's severity; ``off`` sends nothing):

    MinRunSessions       BelowMinimum       trigger  critical    MinimumRestored  resolve
    HealthStatusChanged  Unhealthy          trigger  critical    Healthy          resolve
                         Degraded           trigger  warning     Unknown          (off: not sent)
    ClientStatusChanged  Disconnected       trigger  warning     Connected        resolve (resolve_on_connected)
    SecurityEvent        a failed Login     trigger  error       a success        not sent
    SettingValueChanged, New/UpdatedClientRegistration           a change event (change_events)

A trigger and the resolve that ends it share a ``dedup_key`` derived from the events themselves,
never remembered, so the pairing survives a restart, a reload and a second replica:

    MinRunSessions       figrelay/<client>/MinRunSessions/<setting client>/min <n>   (n: the hook's min_sessions; "fig" for Fig's own events)
    HealthStatusChanged  figrelay/<client>/HealthStatusChanged/<setting client>/<instance>/<host>
    ClientStatusChanged  figrelay/<client>/ClientStatusChanged/<setting client>/<instance>
    SecurityEvent        figrelay/<client>/SecurityEvent/<event type>/<user>        (repeated failures add to one alert)

``<client>`` is the figrelay client's name: a Delivery does not say which hook it came from, so
two hooks of one client with the same minimum share their incidents. A Test-button event starts
``figrelay-test/`` instead, is marked ``[TEST]`` and triggers at ``info``.

PagerDuty's rules followed here, from its developer documentation (github.com/PagerDuty/developer-docs,
docs/events-API-v2: 01-Overview, 02-Trigger-Events, 03-Change-Events, 05-Rate-Limits) and the
Events API v2 OpenAPI document (github.com/PagerDuty/api-schema, reference/events-v2/openapiv3.json):

- alert events are POSTed as JSON to ``/v2/enqueue``, change events to ``/v2/change/enqueue``; no
  auth header: the 32-character ``routing_key`` in the body is the credential;
- ``event_action`` trigger, acknowledge or resolve; ``dedup_key`` at most 255 characters;
  ``payload.summary`` (at most 1024 characters), ``payload.source`` and ``payload.severity``
  (critical, error, warning, info) are required on a trigger; ``timestamp``, ``component``,
  ``group``, ``class``, ``custom_details``, ``links``, ``client`` and ``client_url`` are optional;
- a trigger for the dedup_key of an open alert adds to it; a resolve for one with no open alert is
  dropped, harmlessly;
- 202 ``{"status": "success", "message": "Event processed", "dedup_key": ...}``; 400
  ``{"status": "invalid event", "message": ..., "errors": [...]}``, not to be retried; 429 (about
  120 events a minute per routing key; PagerDuty suggests retrying 30 seconds apart) and 5xx and
  network errors, to be retried;
- an event is at most 512 KB (counted as 512,000 bytes, as Prometheus Alertmanager does).

PagerDuty documents no limit for ``source``, ``component``, ``group`` and ``class``: figrelay
keeps them to 255 characters, like dedup_key.
"""

from __future__ import annotations

import asyncio
import difflib
import hashlib
import json
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import aiohttp
from pydantic import ConfigDict, Field, SecretStr, StringConstraints, field_validator

from figrelay.delivery import (
    RETRYABLE_STATUSES,
    ClientContext,
    ClientOptions,
    ClientType,
    Delivered,
    Delivery,
    Failed,
    Outcome,
    Retry,
    body_excerpt,
    check_https_url,
    parse_retry_after,
    read_capped,
)
from figrelay.durations import Timeout
from figrelay.events import (
    ClientStatusChanged,
    ConnectionEvent,
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
from figrelay.hookspecs import hookimpl
from figrelay.messages import Message, describe

FIGRELAY_PLUGIN_API = 1  # the figrelay plugin API versions this plugin works with (docs/plugins.md)

DEFAULT_API_URL = "https://events.pagerduty.com"
ALERT_PATH = "/v2/enqueue"
CHANGE_PATH = "/v2/change/enqueue"

# PagerDuty's limits (see the module's docstring)
ROUTING_KEY_LENGTH = 32
MAX_SUMMARY = 1024
MAX_DEDUP_KEY = 255
MAX_EVENT_BYTES = 512_000
RATE_LIMIT_WAIT = 30.0
"""Seconds to wait after a 429 that names no Retry-After: PagerDuty suggests retrying 30 s apart."""
# figrelay's own limits
MAX_NAME = 255
"""source, component, group and class (PagerDuty documents no limit)."""
MAX_LINK = 2048
"""A longer link to Fig is left out rather than sent."""
DETAIL_LIMITS = (4096, 1024, 256, 64)
"""The lengths each text of custom_details is cut to in turn, when the event is over MAX_EVENT_BYTES."""
MAX_ERROR = 500
"""PagerDuty's error message in a reason."""
MAX_RESPONSE = 64 * 1024
HOLD_MAX = 3600.0
"""Seconds an incident's later events wait behind an earlier one that is failing, at most
(refreshed by each of its attempts): so a delivery that died, or was purged, frees them."""

ELLIPSIS = "…"
SEVERITIES = ("critical", "error", "warning", "info")
OFF = "off"
DEFAULT_SEVERITY: Mapping[str, str] = {
    "BelowMinimum": "critical",
    "Unhealthy": "critical",
    "Degraded": "warning",
    "Unknown": OFF,
    "Disconnected": "warning",
    "FailedLogin": "error",
}
"""The conditions that trigger, and how loud. A failed SecurityEvent of another type than Login
is ``Failed<EventType>``, ``error`` unless set."""
FAILED_SEVERITY = "error"
TEST_SEVERITY = "info"
"""A Test-button event (IsTest) triggers at this severity, so a test pages nobody awake."""
_FAILED_TYPE = re.compile(r"Failed[A-Z][A-Za-z0-9]*")
_ROUTING_KEY_HELP = "the Integration Key of an Events API V2 integration (a service's Integrations tab in PagerDuty)"

Action = Literal["trigger", "resolve", "change"]
SeverityName = Literal["critical", "error", "warning", "info", "off"]
Condition = Annotated[str, StringConstraints(pattern=rf"^({'|'.join(DEFAULT_SEVERITY)}|{_FAILED_TYPE.pattern})$")]
"""A key of ``severity``: a condition that triggers (the pattern lets an editor check it)."""


# --- options ------------------------------------------------------------------------------------


class PagerDutyOptions(ClientOptions):
    # the routing key must never be echoed in a validation error
    model_config = ConfigDict(hide_input_in_errors=True)

    routing_key: SecretStr
    """The 32-character Integration Key of an Events API V2 integration on a PagerDuty service (a credential)."""
    api_url: str = DEFAULT_API_URL
    """PagerDuty's Events API: alerts go to ``<api_url>/v2/enqueue``, change events to
    ``<api_url>/v2/change/enqueue``. ``https://events.eu.pagerduty.com`` for an EU account."""
    severity: dict[Condition, SeverityName] = Field(default_factory=dict, json_schema_extra={"additionalProperties": False})
    """The severity of a condition (critical, error, warning, info), or ``off`` to send nothing
    for it nor for what would resolve it. Defaults: BelowMinimum critical, Unhealthy critical,
    Degraded warning, Unknown off, Disconnected warning, FailedLogin (and Failed<EventType>) error."""
    resolve_on_connected: bool = True
    """A run session that connects resolves the setting client's Disconnected incident."""
    change_events: bool = True
    """SettingValueChanged and the registrations go to the service's timeline as change events
    (they never page); false: they are not sent."""
    source: str | None = None
    """``payload.source`` for every event, instead of the host or setting client it is about."""
    component: str | None = None
    """``payload.component`` for every alert, instead of the setting client."""
    group: str | None = None
    """``payload.group`` for every alert, instead of the setting client's Fig instance."""
    timeout: Timeout = 10.0
    """How long one request to PagerDuty may take (at most 10m) before it counts as failed and is retried."""

    @field_validator("routing_key", mode="before")
    @classmethod
    def _strip(cls, v: Any) -> Any:
        # a value read from a file or an environment variable often ends in a newline
        return v.strip() if isinstance(v, str) else v

    @field_validator("routing_key")
    @classmethod
    def _routing_key(cls, v: SecretStr) -> SecretStr:
        key = v.get_secret_value()
        if "://" in key:
            raise ValueError(f"must be the key alone, not a URL: {_ROUTING_KEY_HELP}")
        if len(key) != ROUTING_KEY_LENGTH:
            rest = " (a REST API key has 20 and does not work here)" if len(key) == 20 else ""
            raise ValueError(f"is {len(key)} characters long; a routing key has {ROUTING_KEY_LENGTH}{rest}: {_ROUTING_KEY_HELP}")
        if not (key.isascii() and key.isalnum()):
            raise ValueError(f"must be {ROUTING_KEY_LENGTH} letters and digits: {_ROUTING_KEY_HELP}")
        return v

    @field_validator("api_url")
    @classmethod
    def _api_url(cls, v: str) -> str:
        check_https_url(v, DEFAULT_API_URL)
        parts = urlsplit(v)
        if parts.query or parts.fragment or parts.username or parts.password:
            raise ValueError(f"must be a plain base URL without a query, fragment or credentials, e.g. {DEFAULT_API_URL}")
        base = v.rstrip("/")
        if base.endswith((ALERT_PATH, CHANGE_PATH)):
            raise ValueError(f"must be the base URL, without {ALERT_PATH}: figrelay adds the path, e.g. {DEFAULT_API_URL}")
        return base

    @field_validator("severity", mode="before")
    @classmethod
    def _severity(cls, v: Any) -> Any:
        if not isinstance(v, Mapping):
            return v
        out: dict[str, str] = {}
        for condition, value in v.items():
            if not isinstance(condition, str) or not (condition in DEFAULT_SEVERITY or _FAILED_TYPE.fullmatch(condition)):
                known = list(DEFAULT_SEVERITY)
                close = difflib.get_close_matches(str(condition), known, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise ValueError(f"{condition!r} is not a condition; {hint}(conditions: {', '.join(known)}, or Failed<EventType> for SecurityEvent)")
            if value is False:
                value = OFF  # YAML reads a bare off as false
            if not isinstance(value, str) or value.strip().lower() not in (*SEVERITIES, OFF):
                raise ValueError(f"{condition}: must be one of {', '.join(SEVERITIES)} or {OFF}, got {value!r}")
            out[condition] = value.strip().lower()
        return out

    @field_validator("source", "component", "group")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        if v is not None:
            v = v.strip()
            if not 0 < len(v) <= MAX_NAME:
                raise ValueError(f"must be 1 to {MAX_NAME} characters")
        return v

    def severity_of(self, condition: str) -> str:
        """The severity a condition triggers at, or ``off``."""
        return self.severity.get(condition) or DEFAULT_SEVERITY.get(condition, FAILED_SEVERITY)


# --- what an event becomes ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Plan:
    """What one Fig event becomes in PagerDuty: an action (or None: not sent, and why)."""

    action: Action | None
    why: str = ""
    condition: str | None = None
    """The condition a trigger reports (``BelowMinimum`` ...): ``payload.class`` and the key of ``severity``."""
    severity: str | None = None
    dedup_key: str | None = None


def plan_event(event: FigEvent, client: str, minimum: int | None, options: PagerDutyOptions) -> Plan:
    """Decide what ``event``, on its way to the figrelay client ``client``, becomes."""
    if isinstance(event, (SettingValueChanged, NewClientRegistration, UpdatedClientRegistration)):
        if not options.change_events:
            return Plan(None, f"{event.route} is a change, and change_events is off")
        return Plan("change", f"{event.route}: a change event")

    key = dedup_key(client, event, minimum)
    if isinstance(event, MinRunSessions):
        condition = "BelowMinimum"
        trigger = event.run_sessions_event == RunSessionsEvent.BelowMinimum
        ends = "MinimumRestored"
    elif isinstance(event, HealthStatusChanged):
        if event.status == HealthStatus.Healthy:
            if all(options.severity_of(c) == OFF for c in ("Unhealthy", "Degraded", "Unknown")):
                return Plan(None, "Healthy resolves nothing: Unhealthy, Degraded and Unknown are off in severity")
            return Plan("resolve", "Healthy", dedup_key=key)
        condition, trigger, ends = event.status.name, True, ""
    elif isinstance(event, ClientStatusChanged):
        condition = "Disconnected"
        trigger = event.connection_event == ConnectionEvent.Disconnected
        if not trigger and not options.resolve_on_connected:
            return Plan(None, "Connected, and resolve_on_connected is off")
        ends = "Connected"
    elif isinstance(event, SecurityEvent):
        if event.success:
            return Plan(None, f"a successful {event.event_type} is not an incident")
        condition, trigger, ends = _failed(event.event_type), True, ""
    else:  # a newer Fig's event type: figrelay parses only the seven it knows, so never today
        return Plan(None, f"{event.route} has no meaning for PagerDuty")

    severity = options.severity_of(condition)
    if severity == OFF:
        return Plan(None, f"{condition} is off in severity" + ("" if trigger else f", so {ends} resolves nothing"), condition)
    if not trigger:
        return Plan("resolve", ends, condition, dedup_key=key)
    return Plan("trigger", condition, condition, TEST_SEVERITY if event.test else severity, key)


def _failed(event_type: str) -> str:
    """The condition of a failed SecurityEvent: ``FailedLogin`` for EventType ``Login``."""
    name = "".join(word[:1].upper() + word[1:] for word in re.split(r"[^A-Za-z0-9]+", event_type))
    return f"Failed{name or 'Event'}"


def _part(text: str | None) -> str:
    """One part of a dedup_key: ``/`` and ``%`` escaped, so that parts never run together."""
    return (text or "").replace("%", "%25").replace("/", "%2F")


def dedup_key(client: str, event: FigEvent, minimum: int | None = None) -> str | None:
    """The key of the incident an alert event belongs to, derived from the event alone; at most
    255 characters (a longer one keeps its start and ends with a hash of the whole)."""
    parts: list[str | None]
    if isinstance(event, MinRunSessions):
        parts = [event.client_name, f"min {minimum}" if minimum is not None else "fig"]
    elif isinstance(event, HealthStatusChanged):
        parts = [event.client_name, event.instance, event.hostname or event.ip_address]
    elif isinstance(event, ClientStatusChanged):
        parts = [event.client_name, event.instance]
    elif isinstance(event, SecurityEvent):
        parts = [event.event_type, event.username]
    else:
        return None
    key = "/".join(_part(p) for p in ["figrelay-test" if event.test else "figrelay", client, event.route, *parts])
    if len(key) <= MAX_DEDUP_KEY:
        return key
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return f"{key[: MAX_DEDUP_KEY - len(digest) - 1]}#{digest}"


# --- the event sent -------------------------------------------------------------------------------


def clip(text: str, limit: int) -> str:
    """``text`` if it fits in ``limit`` characters, else its start and an ellipsis."""
    return text if len(text) <= limit else text[: limit - len(ELLIPSIS)] + ELLIPSIS


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _http_link(url: str | None) -> str | None:
    """An http(s) link to Fig, or None (PagerDuty shows a link as it is: only ones a browser opens)."""
    if not url or len(url) > MAX_LINK or any(c.isspace() for c in url):
        return None
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    return url if parts.scheme in ("http", "https") and parts.netloc else None


def _timestamp(event: FigEvent, created_at: float) -> str:
    """When the condition was seen: the login's own time for a SecurityEvent, else when figrelay
    accepted the event (which may be long before a delivery that waited out an outage)."""
    when = event.timestamp.datetime if isinstance(event, SecurityEvent) and event.timestamp is not None else None
    when = when or datetime.fromtimestamp(created_at, timezone.utc)
    return when.isoformat(timespec="milliseconds")


def summary_of(message: Message, event: FigEvent) -> str:
    """``payload.summary``: the message's title on one line, ``[TEST]``-marked for a test event, at
    most 1024 characters."""
    title = _one_line(message.title) or _one_line(describe(event).title) or event.route
    if event.test and not title.lower().startswith("[test]"):
        title = f"[TEST] {title}"
    return clip(title, MAX_SUMMARY)


def _names(event: FigEvent, options: PagerDutyOptions) -> tuple[str, str | None, str | None]:
    """source, component and group: the host (or the setting client) that is affected, the
    setting client, and its Fig instance; each replaced by the option of that name when set."""
    if isinstance(event, SecurityEvent):
        source, component, group = event.hostname or "Fig", f"Fig {event.event_type}", None
    else:
        name = event.setting_client or "Fig"
        host = getattr(event, "hostname", None) or getattr(event, "ip_address", None)
        source, component, group = host or name, name, getattr(event, "instance", None)
    def name(value: str | None) -> str | None:
        return clip(_one_line(value), MAX_NAME) or None if value else None

    return name(options.source or source) or "Fig", name(options.component or component), name(options.group or group)


FIG_PAYLOAD = "Fig payload"
"""The custom_details entry holding the Fig event itself, field by field."""
LEFT_OUT = "Left out"


def custom_details(delivery: Delivery, message: Message, plan: Plan) -> dict[str, Any]:
    """What an on-call engineer reads below the summary: the message's text and facts, then where
    the event came from, then Fig's own payload (for event orchestration rules)."""
    event = delivery.event
    details: dict[str, Any] = {}
    if message.text.strip():
        details["Text"] = message.text.strip()
    for fact in message.facts:
        details.setdefault(fact.title, fact.value)
    for title, value in (
        ("Fig event", event.route + (f" ({plan.condition})" if plan.condition and plan.condition != event.route else "")),
        ("Setting client", event.setting_client),
        ("Minimum run sessions", delivery.minimum),
        ("figrelay client", delivery.client),
        ("figrelay delivery", delivery.id),
    ):
        if value is not None:
            details.setdefault(title, value)
    details[FIG_PAYLOAD] = event.to_wire()
    return details


def _size(event: Mapping[str, Any]) -> int:
    return len(json.dumps(event, ensure_ascii=False).encode("utf-8", "surrogatepass"))


def _clip_texts(value: Any, limit: int) -> Any:
    if isinstance(value, str):
        return clip(value, limit)
    if isinstance(value, Mapping):
        return {k: _clip_texts(v, limit) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clip_texts(v, limit) for v in value]
    return value


def fit(event: dict[str, Any], delivery_id: str) -> dict[str, Any]:
    """The event within PagerDuty's 512,000 bytes: when it is over, custom_details lose Fig's
    payload, then have each text cut, then keep only a note; what was left out is in figrelay's
    journal (``figrelay trace <delivery>``)."""
    size = _size(event)
    if size <= MAX_EVENT_BYTES:
        return event
    payload = event["payload"]
    details = payload.get("custom_details") or {}
    note = (f"the event was {size:,} bytes, over PagerDuty's {MAX_EVENT_BYTES:,}: details were cut; "
            f"figrelay trace {delivery_id} shows the whole event")
    rest = {k: v for k, v in details.items() if k != FIG_PAYLOAD}
    # without Fig's payload; then with every text cut shorter and shorter; then the note alone
    for shrunk in (rest, *(_clip_texts(rest, limit) for limit in DETAIL_LIMITS), {}):
        smaller = {**event, "payload": {**payload, "custom_details": {**shrunk, LEFT_OUT: note}}}
        if _size(smaller) <= MAX_EVENT_BYTES:
            break
    return smaller


def alert_event(delivery: Delivery, message: Message, plan: Plan, options: PagerDutyOptions, routing_key: str) -> dict[str, Any]:
    """The Events API v2 body of a trigger or a resolve."""
    assert plan.action in ("trigger", "resolve") and plan.dedup_key is not None
    event: dict[str, Any] = {"routing_key": routing_key, "event_action": plan.action, "dedup_key": plan.dedup_key}
    if plan.action == "resolve":
        return event
    fig = delivery.event
    source, component, group = _names(fig, options)
    payload: dict[str, Any] = {
        "summary": summary_of(message, fig),
        "source": source,
        "severity": plan.severity,
        "timestamp": _timestamp(fig, delivery.created_at),
    }
    if component:
        payload["component"] = component
    if group:
        payload["group"] = group
    if plan.condition:
        payload["class"] = clip(plan.condition, MAX_NAME)
    payload["custom_details"] = custom_details(delivery, message, plan)
    event["payload"] = payload
    link = _http_link(message.link) or _http_link(getattr(fig, "link", None) or getattr(fig, "uri", None))
    if link:
        event["client"] = "Fig"
        event["client_url"] = link
        event["links"] = [{"href": link, "text": clip(_one_line(message.link_label) or "Open in Fig", MAX_NAME)}]
    else:
        event["client"] = "figrelay"
    return fit(event, delivery.id)


def change_event(delivery: Delivery, message: Message, options: PagerDutyOptions, routing_key: str) -> dict[str, Any]:
    """The body of a change event (a setting change or a registration): no action, no key."""
    fig = delivery.event
    source, _, _ = _names(fig, options)
    event: dict[str, Any] = {
        "routing_key": routing_key,
        "payload": {
            "summary": summary_of(message, fig),
            "source": source,
            "timestamp": _timestamp(fig, delivery.created_at),
            "custom_details": custom_details(delivery, message, Plan("change")),
        },
    }
    link = _http_link(message.link) or _http_link(getattr(fig, "link", None))
    if link:
        event["links"] = [{"href": link, "text": clip(_one_line(message.link_label) or "Open in Fig", MAX_NAME)}]
    return fit(event, delivery.id)


# --- PagerDuty's answers --------------------------------------------------------------------------


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _said(data: Mapping[str, Any] | None) -> str:
    """PagerDuty's own words about a refused event: its message and its list of errors."""
    if data is None:
        return ""
    message = data.get("message") if isinstance(data.get("message"), str) else ""
    errors = data.get("errors")
    listed = "; ".join(str(e) for e in errors[:10] if isinstance(e, (str, int, float))) if isinstance(errors, list) else ""
    text = ": ".join(t for t in (_one_line(message), _one_line(listed)) if t)
    return clip(text, MAX_ERROR)


def answer_outcome(status: int, headers: Mapping[str, str], body: bytes, url: str) -> Outcome:
    """The outcome of one Events API answer (PagerDuty's rules in the module's docstring)."""
    data = _json_object(body)
    said = _said(data) or body_excerpt(body)
    if 200 <= status < 300:
        if data is not None and data.get("status") == "success":
            message = _one_line(str(data.get("message") or "accepted"))
            return Delivered(f"HTTP {status} {clip(message, 100)}", status)
        excerpt = f" ({body_excerpt(body)})" if body.strip() else ""
        return Failed(f"HTTP {status} but not an answer of PagerDuty's Events API{excerpt} from {url}; check api_url", status)
    if status == 429:
        wait = parse_retry_after(headers.get("Retry-After"))
        return Retry("HTTP 429: over PagerDuty's rate limit for this routing key (about 120 events a minute)", RATE_LIMIT_WAIT if wait is None else wait, 429)
    if status in RETRYABLE_STATUSES:
        return Retry(f"HTTP {status}" + (f": {said}" if said else ""), parse_retry_after(headers.get("Retry-After")), status)
    if status == 400:
        hint = ""
        if "routing_key" in said or "routing key" in said.lower():
            hint = f"; check routing_key: {_ROUTING_KEY_HELP}"
        elif url.endswith(CHANGE_PATH):
            hint = "; a ruleset or orchestration key (R…) may not take change events: then set change_events: false"
        return Failed(f"HTTP 400: PagerDuty refused the event: {said or 'no reason given'}{hint}", 400)
    if 300 <= status < 400:
        return Failed(f"HTTP {status}: a redirect, which figrelay does not follow; check api_url ({url})", status)
    if status == 404:
        return Failed(f"HTTP 404: no Events API at {url}; check api_url (figrelay adds {ALERT_PATH} to it)", status)
    return Failed(f"HTTP {status}" + (f": {said}" if said else ""), status)


# --- keeping an incident's events in order ----------------------------------------------------------


@dataclass(slots=True)
class _Waiting:
    delivery_id: str
    created_at: float
    since: float


class IncidentOrder:
    """Sends one incident's events one at a time, in the order figrelay accepted them.

    figrelay's dispatcher keeps a client's order only with ``max_in_flight: 1``. With more in
    flight, a trigger answered 429 could be retried after its resolve went through, leaving an
    incident open for ever. So, per dedup_key: one send at a time (in the order the sends start,
    which is the order figrelay accepted the events), and while an earlier event of the incident
    waits for its retry, the later ones are held back (Retry) rather than sent before it. Only in
    this process's memory: after a restart the dispatcher starts again with the oldest delivery.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic, hold_max: float = HOLD_MAX) -> None:
        self._clock = clock
        self._hold_max = hold_max
        self._locks: dict[str, asyncio.Lock] = {}
        self._users: dict[str, int] = {}
        self._waiting: dict[str, _Waiting] = {}

    @asynccontextmanager
    async def turn(self, key: str) -> AsyncIterator[None]:
        """Hold the incident ``key`` for one send."""
        lock = self._locks.setdefault(key, asyncio.Lock())
        self._users[key] = self._users.get(key, 0) + 1
        try:
            async with lock:
                yield
        finally:
            self._users[key] -= 1
            if not self._users[key]:
                del self._users[key], self._locks[key]

    def blocker(self, key: str, delivery: Delivery) -> str | None:
        """The id of an earlier delivery of the incident that is waiting for its retry, if any."""
        waiting = self._waiting.get(key)
        if waiting is None or waiting.delivery_id == delivery.id:
            return None
        if self._clock() - waiting.since > self._hold_max:
            del self._waiting[key]
            return None
        if (delivery.created_at, delivery.id) < (waiting.created_at, waiting.delivery_id):
            return None  # older than the one waiting: it goes first
        return waiting.delivery_id

    def record(self, key: str, delivery: Delivery, outcome: Outcome) -> None:
        waiting = self._waiting.get(key)
        if isinstance(outcome, Retry):
            if waiting is None or waiting.delivery_id == delivery.id or (delivery.created_at, delivery.id) < (waiting.created_at, waiting.delivery_id):
                self._waiting[key] = _Waiting(delivery.id, delivery.created_at, self._clock())
        elif waiting is not None and waiting.delivery_id == delivery.id:
            del self._waiting[key]

    @property
    def waiting(self) -> int:
        """Incidents with an event waiting for its retry."""
        return len(self._waiting)


# --- the target -----------------------------------------------------------------------------------


class PagerDutyTarget:
    def __init__(self, context: ClientContext) -> None:
        options: PagerDutyOptions = context.options
        self._options = options
        self._http = context.http
        self._routing_key = options.routing_key.get_secret_value()
        self._timeout = aiohttp.ClientTimeout(total=options.timeout)
        self._headers = {"Content-Type": "application/json; charset=utf-8"}
        self.order = IncidentOrder()

    async def deliver(self, delivery: Delivery) -> Outcome:
        outcome: Outcome = Delivered("nothing to send")
        # one delivery, unless the client set coalesce (max_batch 1 keeps those to one as well)
        for one in delivery.deliveries:
            outcome = await self._deliver_one(one, delivery.message if one is delivery else one.message)
            if not isinstance(outcome, Delivered):
                break
        return self._scrubbed(outcome)

    async def _deliver_one(self, delivery: Delivery, message: Message | None) -> Outcome:
        message = message if message is not None else describe(delivery.event, delivery.minimum)
        plan = plan_event(delivery.event, delivery.client, delivery.minimum, self._options)
        if plan.action is None:
            return Delivered(f"not sent: {plan.why}")
        if plan.action == "change":
            body = change_event(delivery, message, self._options, self._routing_key)
            outcome = await self._post(self._options.api_url + CHANGE_PATH, body)
            return self._labelled(outcome, "change event")
        assert plan.dedup_key is not None
        async with self.order.turn(plan.dedup_key):
            earlier = self.order.blocker(plan.dedup_key, delivery)
            if earlier is not None:
                return Retry(f"held back: delivery {earlier}, an earlier event of the same incident, is waiting for its retry, and "
                             f"PagerDuty must get them in order ({plan.action} {plan.dedup_key})")
            body = alert_event(delivery, message, plan, self._options, self._routing_key)
            outcome = await self._post(self._options.api_url + ALERT_PATH, body)
            self.order.record(plan.dedup_key, delivery, outcome)
        label = f"{plan.action} {plan.dedup_key}" + (f" ({plan.severity})" if plan.severity else "")
        return self._labelled(outcome, label)

    async def _post(self, url: str, event: dict[str, Any]) -> Outcome:
        body = json.dumps(event, ensure_ascii=False).encode("utf-8", "surrogatepass")
        try:
            async with self._http.post(url, data=body, headers=self._headers, timeout=self._timeout, allow_redirects=False) as response:
                answer = await read_capped(response, MAX_RESPONSE)
                return answer_outcome(response.status, response.headers, answer, url)
        except TimeoutError:
            return Retry(f"no answer from {url} within {self._options.timeout:g}s")
        except aiohttp.ClientError as exc:
            return Retry(f"cannot reach {url}: {type(exc).__name__}: {exc}")

    @staticmethod
    def _labelled(outcome: Outcome, label: str) -> Outcome:
        """The outcome with what was sent in front: ``trigger figrelay/…/min 2 (critical): HTTP 202 …``."""
        if isinstance(outcome, Delivered):
            return replace(outcome, detail=f"{label}: {outcome.detail}")
        return replace(outcome, reason=f"{label}: {outcome.reason}")

    def _scrubbed(self, outcome: Outcome) -> Outcome:
        """No text ever carries the routing key, whatever PagerDuty, a proxy or aiohttp said."""
        if isinstance(outcome, Delivered):
            return replace(outcome, detail=outcome.detail.replace(self._routing_key, "…"))
        return replace(outcome, reason=outcome.reason.replace(self._routing_key, "…"))

    async def aclose(self) -> None:
        return None


@hookimpl
def figrelay_client_types(register: Callable[[ClientType], None]) -> None:
    register(
        ClientType(
            name="pagerduty",
            options=PagerDutyOptions,
            open=PagerDutyTarget,
            description="open and resolve PagerDuty incidents from Fig's events (Events API v2); setting changes as change events",
            secret_options=("routing_key",),
            renders_messages=True,  # the summary is the message's title, so title templates apply
            default_min_interval=0.5,  # PagerDuty takes about 120 events a minute per routing key
            max_batch=1,  # one event per send, even with coalesce: each is its own trigger or resolve
        )
    )
