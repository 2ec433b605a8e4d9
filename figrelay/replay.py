"""Replay: which finished deliveries to send again, and what to send.

``plan_replay`` reads the journal (and the outbox) through a read-only connection, SQLite's or a
``storage.pg_read.PostgresReader`` (journal_queries.ReadConnection), and decides; it writes
nothing. The daemon's ``POST /-/replay`` (server.py) stores the plan with ``Outbox.replay`` and
schedules it on the dispatcher, so a replay is paced, coalesced and retried like any delivery.

A replay is a new delivery: a new id, the same event id, ``replay_of`` the delivery it repeats.
Only delivered and dead deliveries are replayed (a pending one is still being tried). An event id
stands for the deliveries its hooks made (not earlier replays of them), and a time window
for the original deliveries made in it, so replaying the same window twice sends each event
twice, never more.

What is sent (the body rule). The journal keeps the event as received, not each delivery's
body, and a SettingValueChanged delivery of a hook with a ``setting_regex`` lists only the
settings that matched. So the body of a replay is, in this order:

1. the original delivery's body, while the outbox still has it (a dead letter);
2. otherwise the body the journal kept for the delivery when it differed from the event as
   received (a SettingValueChanged narrowed by a setting regex, a MinRunSessions figrelay raised
   from run-session counts): exactly what was sent;
3. otherwise (a journal written before it kept those bodies) the journal's event matched again
   against the same hook, when the configuration still has it (same index, client and event
   type): what the hook would send today. A hook that no longer matches the event refuses the
   replay, rather than send what it now filters out;
4. otherwise the event as received, whole (its hook is gone; nothing is left to narrow it by).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from .config import Config, HookConfig, closest
from .events import EventError, parse_event_body
from .journal import JournalDelivery
from .journal_queries import DeliveryRecord, QueryError, ReadConnection, check_route, deliveries_of, dialect_of, query_errors, resolve_id
from .rules import Rules

MAX_REPLAY = 10_000
"""Deliveries one replay may create: a larger window is refused, to be replayed in parts (the
plan is stored in one transaction, which holds the intake's writes while it commits)."""

REPLAYABLE = ("delivered", "dead")


@dataclass(frozen=True, slots=True)
class ReplayRequest:
    """Either ``ids`` (event or delivery ids) or a window from ``since``; ``client`` and ``event``
    ``outcome`` narrow either. Times are unix seconds."""

    ids: tuple[str, ...] = ()
    since: float | None = None
    until: float | None = None
    client: str | None = None
    event: str | None = None
    """The event type the target received (MinRunSessions for one figrelay raised)."""
    dry_run: bool = False
    outcome: str | None = None
    """Only deliveries now in this state: delivered or dead (default both)."""


@dataclass(frozen=True, slots=True)
class PlannedReplay:
    original: DeliveryRecord
    delivery: JournalDelivery
    """The new delivery: pending, ``replay_of`` the original."""
    body: bytes
    body_from: str
    """Where the body came from: ``outbox``, ``journal`` (as sent), ``hook`` (matched again) or ``event`` (as received)."""


@dataclass(frozen=True, slots=True)
class ReplayRefusal:
    id: str
    reason: str


@dataclass(frozen=True, slots=True)
class ReplayPlan:
    replays: tuple[PlannedReplay, ...]
    refused: tuple[ReplayRefusal, ...]


def plan_replay(
    conn: ReadConnection, request: ReplayRequest, config: Config, now: float, new_id: Callable[[], str] = lambda: uuid.uuid4().hex
) -> ReplayPlan:
    """What ``request`` replays under ``config``. Raises QueryError for bad input: an unknown id,
    an unknown event type, no selection, both ids and a window, too many deliveries."""
    if request.event is not None:
        check_route(request.event)
    if request.outcome is not None and request.outcome not in REPLAYABLE:
        raise QueryError(f"only delivered or dead deliveries are replayed: the outcome {request.outcome!r} is not one of them")
    if request.ids and (request.since is not None or request.until is not None):
        raise QueryError("give delivery or event ids, or a time window (since/until), not both")
    if not request.ids and request.since is None:
        raise QueryError("nothing selected: give delivery or event ids, or the start of a time window (since)")
    if request.since is not None and request.until is not None and request.since > request.until:
        raise QueryError("the time window ends before it starts (since is after until)")
    selected: list[DeliveryRecord] = []
    refused: list[ReplayRefusal] = []
    if request.ids:
        for asked in dict.fromkeys(request.ids):  # an id given twice is replayed once
            _select_by_id(conn, asked, request, selected, refused)
    else:
        selected = _select_window(conn, request, request.since or 0.0, now if request.until is None else request.until)
    if len(selected) > MAX_REPLAY:
        raise QueryError(
            f"this selects {len(selected)} deliveries, more than {MAX_REPLAY} at once: narrow it (until, client, event) and replay it in parts"
        )
    planner = _Planner(conn, config, now, new_id)
    replays: list[PlannedReplay] = []
    for original in selected:
        planned = planner.plan(original)
        if isinstance(planned, ReplayRefusal):
            refused.append(planned)
        else:
            replays.append(planned)
    return ReplayPlan(tuple(replays), tuple(refused))


def _select_by_id(conn: ReadConnection, asked: str, request: ReplayRequest, out: list[DeliveryRecord], refused: list[ReplayRefusal]) -> None:
    event_id, delivery_id = resolve_id(conn, asked)
    deliveries = deliveries_of(conn, [event_id]).get(event_id, [])
    if delivery_id is not None:
        chosen = [d for d in deliveries if d.delivery_id == delivery_id]
    else:
        chosen = [d for d in deliveries if d.replay_of is None]
        if not chosen:
            refused.append(ReplayRefusal(asked, "no hook matched this event: it made no delivery to replay"))
            return
    narrowed = [
        d for d in chosen
        if (request.client is None or d.client == request.client) and (request.event is None or d.route == request.event)
        and (request.outcome is None or d.state == request.outcome)
    ]
    if not narrowed:
        wanted = ", ".join(f"{k} {v!r}" for k, v in (("client", request.client), ("event", request.event), ("outcome", request.outcome)) if v is not None)
        refused.append(ReplayRefusal(asked, f"none of its deliveries has {wanted}"))
        return
    for d in narrowed:
        if d.state in REPLAYABLE:
            out.append(d)
        elif d.state == "pending":
            reason = f"still pending ({d.attempts} attempts so far): it is being delivered; replay it once it is delivered or dead"
            refused.append(ReplayRefusal(d.delivery_id, reason))
        else:
            refused.append(ReplayRefusal(d.delivery_id, f"it is {d.state} (dropped from the outbox on purpose), not delivered or dead"))


def _select_window(conn: ReadConnection, request: ReplayRequest, since: float, until: float) -> list[DeliveryRecord]:
    """The original deliveries made in the window that are delivered or dead, oldest first,
    through journal_deliveries_by_client (or by_state, one range per state; ``no_index``, SQLite's
    unary ``+``, keeps SQLite on the client index when both would do)."""
    columns = "delivery_id, event_id, client, hook, route, created_at, state, attempts, finished_at, last_reason, replay_of"
    rows: list[tuple[object, ...]] = []
    states = REPLAYABLE if request.outcome is None else (request.outcome,)
    if request.client is not None:
        marks = ",".join("?" * len(states))
        rows = conn.execute(
            f"SELECT {columns} FROM journal_deliveries WHERE client = ? AND created_at >= ? AND created_at <= ?"
            f" AND {dialect_of(conn).no_index}state IN ({marks}) AND replay_of IS NULL",
            (request.client, since, until, *states),
        ).fetchall()
    else:
        for state in states:
            rows += conn.execute(
                f"SELECT {columns} FROM journal_deliveries WHERE state = ? AND created_at >= ? AND created_at <= ? AND replay_of IS NULL",
                (state, since, until),
            ).fetchall()
    records = [DeliveryRecord(*row) for row in rows]  # type: ignore[arg-type]
    if request.event is not None:
        records = [d for d in records if d.route == request.event]
    records.sort(key=lambda d: (d.created_at, d.delivery_id))
    return records


class _Planner:
    """Builds each replay under one configuration, reading each event once."""

    def __init__(self, conn: ReadConnection, config: Config, now: float, new_id: Callable[[], str]) -> None:
        self._conn = conn
        self._config = config
        self._now = now
        self._new_id = new_id
        self._hooks = {hook.index: hook for hook in config.hooks}
        self._events: dict[str, tuple[str, bytes] | None] = {}

    def plan(self, original: DeliveryRecord) -> PlannedReplay | ReplayRefusal:
        config = self._config
        if original.client not in config.clients:
            names = sorted(config.clients)
            return ReplayRefusal(
                original.delivery_id,
                f"client {original.client!r} is no longer in the configuration{closest(original.client, names)} "
                f"(clients: {', '.join(names) or 'none'}): nothing to send it to",
            )
        hook = self._same_hook(original)
        found = self._body(original, hook)
        if isinstance(found, str):
            return ReplayRefusal(original.delivery_id, found)
        body, body_from = found
        delivery = JournalDelivery(
            self._new_id(), original.event_id, original.client, hook.index if hook is not None else None, original.route, self._now,
            replay_of=original.delivery_id,
        )
        return PlannedReplay(original, delivery, body, body_from)

    def _same_hook(self, original: DeliveryRecord) -> HookConfig | None:
        """The configured hook that made the original delivery, if the configuration still has
        it: hooks are numbered by position, so a reload that moved them may have put another
        hook at the same index."""
        if original.hook is None:
            return None
        hook = self._hooks.get(original.hook)
        if hook is None or hook.client != original.client or hook.event != original.route:
            return None
        return hook

    def _event(self, event_id: str) -> tuple[str, bytes] | None:
        if event_id not in self._events:
            row = self._conn.execute("SELECT route, body FROM journal_events WHERE event_id = ?", (event_id,)).fetchone()
            self._events[event_id] = None if row is None else (row[0], _body_bytes(row[1]))
        return self._events[event_id]

    def _body(self, original: DeliveryRecord, hook: HookConfig | None) -> tuple[bytes, str] | str:
        """(body, where from), or why there is none (see the module's body rule)."""
        row = _outbox_body(self._conn, original.delivery_id)
        if row is not None:
            return row, "outbox"
        sent = self._conn.execute("SELECT body FROM journal_deliveries WHERE delivery_id = ?", (original.delivery_id,)).fetchone()
        if sent is not None and sent[0] is not None:
            return bytes(sent[0]), "journal"
        received = self._event(original.event_id)
        if received is None:
            return "its event is no longer in the journal (pruned by journal.retention)"
        route, body = received
        if original.route != route:
            return (
                f"a {original.route} event figrelay raised from run-session counts (on a {route}) whose body the journal did not "
                "keep (it was written before figrelay kept such bodies), and it left the outbox when it was delivered: it cannot be sent again"
            )
        try:
            event = parse_event_body(route, body)
        except EventError as exc:
            return f"the event as received no longer parses as {route}: {exc}"
        if hook is None:
            return event.to_json(), "event"
        matches = Rules([hook], self._config.intake.regex_timeout).match(event)
        if not matches:
            return (
                f"hook {hook.index} ({hook.event} to {hook.client}) no longer matches this event (its client_regex or setting_regex "
                "changed since): not replayed, so as not to send what the hook now filters out"
            )
        return matches[0].event.to_json(), "hook" if matches[0].timed_out is None else "event"


def _body_bytes(value: object) -> bytes:
    """A body column as bytes: a BLOB in SQLite (or TEXT, for a body once kept so), bytea in
    PostgreSQL, which a driver may give as a memoryview (``str()`` of one is not its bytes)."""
    return bytes(value) if isinstance(value, (bytes, bytearray, memoryview)) else str(value).encode()


def _outbox_body(conn: ReadConnection, delivery_id: str) -> bytes | None:
    try:
        row = conn.execute("SELECT body FROM deliveries WHERE id = ?", (delivery_id,)).fetchone()
    except query_errors():  # a store without an outbox table (a copied journal)
        return None
    return None if row is None else bytes(row[0])


def answer(plan: ReplayPlan, dry_run: bool) -> dict[str, object]:
    """The JSON answer of ``POST /-/replay``."""
    return {
        "dry_run": dry_run,
        "replays": [
            {
                "new_id": None if dry_run else p.delivery.delivery_id,
                "replay_of": p.original.delivery_id,
                "client": p.delivery.client,
                "event_id": p.delivery.event_id,
                "event": p.delivery.route,
                "state_was": p.original.state,
                "body_from": p.body_from,
            }
            for p in plan.replays
        ],
        "refused": [{"id": r.id, "reason": r.reason} for r in plan.refused],
    }


def request_from_json(data: object) -> ReplayRequest:
    """A ReplayRequest from ``POST /-/replay``'s body; raises QueryError naming the bad field."""
    if not isinstance(data, dict):
        raise QueryError('the body must be a JSON object: {"ids": [...]} or {"since": <unix time>, ...}')
    known = {"ids", "since", "until", "client", "event", "outcome", "dry_run"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise QueryError(f"unknown field {unknown[0]!r}{closest(unknown[0], sorted(known))} (fields: {', '.join(sorted(known))})")
    ids = data.get("ids", [])
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise QueryError('"ids" must be a list of event or delivery ids (strings)')

    def time_of(key: str) -> float | None:
        value = data.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            raise QueryError(f'"{key}" must be a unix time in seconds, got {value!r}')
        return float(value)

    def text_of(key: str) -> str | None:
        value = data.get(key)
        if value is not None and not isinstance(value, str):
            raise QueryError(f'"{key}" must be a string, got {value!r}')
        return value

    dry_run = data.get("dry_run", False)
    if not isinstance(dry_run, bool):
        raise QueryError(f'"dry_run" must be true or false, got {dry_run!r}')
    return ReplayRequest(tuple(ids), time_of("since"), time_of("until"), text_of("client"), text_of("event"), dry_run, text_of("outcome"))


def schedule_items(plan: ReplayPlan) -> Iterable[tuple[str, str, float]]:
    """(id, client, created_at) of the new deliveries, for ``Dispatcher.schedule``."""
    return [(p.delivery.delivery_id, p.delivery.client, p.delivery.created_at) for p in plan.replays]


def stored(plan: ReplayPlan) -> Sequence[tuple[JournalDelivery, bytes]]:
    """What ``Outbox.replay`` stores."""
    return [(p.delivery, p.body) for p in plan.replays]


__all__ = [
    "MAX_REPLAY",
    "PlannedReplay",
    "ReplayPlan",
    "ReplayRefusal",
    "ReplayRequest",
    "answer",
    "plan_replay",
    "request_from_json",
    "schedule_items",
    "stored",
]
