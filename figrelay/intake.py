"""Accepting one event: test handling, session counting, hook matching, and the durable write.

The intake answers Fig only after ``accept`` returns, that is once every delivery the event makes
(and the session change it caused) is committed to the outbox.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from . import journal
from .config import HookConfig
from .dispatch import Dispatcher
from .events import ClientStatusChanged, FigEvent
from .metrics import Metrics
from .reload import ConfigHolder, LiveConfig
from .rules import RegexTimeout
from .sessions import crossings, session_write
from .storage import NewDelivery, SessionChange, Store

log = logging.getLogger("figrelay.intake")


@dataclass(frozen=True, slots=True)
class Accepted:
    event: FigEvent
    deliveries: tuple[NewDelivery, ...]
    test_only: bool = False
    """A Test-button event that was acknowledged and not relayed."""
    event_id: str = ""
    """The event's id in the journal, carried by every delivery it made."""


class Announce(Protocol):
    """Where stored deliveries go: ``(id, client, created_at)`` of each, and, for those it has them,
    the stored row and the event it carries (a receiver may use them rather than read them back)."""

    def __call__(self, rows: Sequence[tuple[str, str, float]], loaded: Mapping[str, tuple[NewDelivery, FigEvent]] = ..., /) -> None: ...


def new_event_id() -> str:
    """32 hex digits that sort by time (milliseconds, then 80 random bits, like a ULID), so the
    journal's newest events sit together and pruning the oldest frees whole pages."""
    # ids name, they guard nothing: the fast generator (seeded from the OS) serves, where secrets
    # would make a system call for each one
    return f"{int(time.time() * 1000):012x}{random.getrandbits(80):020x}"


def new_delivery_id() -> str:
    """Time-ordered like an event id: the outbox's and the journal's indexes keyed by delivery id
    then grow at their end, instead of at a random page each (which, once the journal outgrows
    the page cache, costs a read per insert and slows the relay down as it runs)."""
    return new_event_id()


class Intake:
    def __init__(
        self, holder: ConfigHolder, outbox: Store, dispatcher: Dispatcher, metrics: Metrics | None = None,
        announce: Announce | None = None,
    ) -> None:
        self._metrics = metrics or Metrics()
        self.announce = announce or dispatcher.schedule
        """Where stored deliveries (id, client, created_at) go: the dispatcher, alone on the store;
        with several replicas, the lane keeper, which reads them back from the store in its order,
        with the other replicas' rows accepted before them."""
        self._holder = holder
        self._outbox = outbox
        self._dispatcher = dispatcher

    @property
    def store(self) -> Store:
        return self._outbox

    @property
    def dispatcher(self) -> Dispatcher:
        """Where stored deliveries are scheduled; ``POST /-/replay`` schedules its replays here."""
        return self._dispatcher

    async def accept(self, event: FigEvent, received: bytes | None = None) -> Accepted:
        """Match and store one event (``received``: its body as it came, for the journal); raise
        OutboxError when it could not be stored."""
        live = self._holder.current  # one configuration for the whole event, even across a reload
        event_id = new_event_id()
        now = time.time()
        if event.test and not live.config.intake.forward_test_events:
            if self._outbox.journal_enabled:
                await self._outbox.accept([], [], self._journal_event(event_id, event, received, now, []))
            log.info(
                "%s test event acknowledged, not relayed (intake.forward_test_events is off)", event.route,
                extra={"event_id": event_id, "route": event.route},
            )
            return Accepted(event, (), test_only=True, event_id=event_id)

        bodies: dict[int, bytes] = {}
        new: list[NewDelivery] = []
        made: dict[str, FigEvent] = {}
        """delivery id -> the event it carries (narrowed, or raised): handed to the dispatcher with
        the id, so that it need not read the row back and parse it again to send it"""
        for match in live.rules.match(event):
            body = bodies.get(id(match.event))
            if body is None:
                body = bodies[id(match.event)] = match.event.to_json()
            if match.timed_out is not None:
                new.append(self._dead_letter(match.hook, match.timed_out, event, event.route, body, now, event_id))
                continue
            new.append(NewDelivery(new_delivery_id(), match.hook.client, event.route, body, match.hook.index, now, event_id=event_id))
            made[new[-1].id] = match.event

        if isinstance(event, ClientStatusChanged) and not event.test:
            # the count, and the crossings it raises, are decided inside the store's transaction,
            # against the sessions every replica committed (not this process's memory)
            def complete(change: SessionChange | None) -> tuple[list[NewDelivery], journal.JournalEvent | None]:
                rows = new + (self._crossings(live, change, event, now, made, event_id) if change is not None else [])
                return rows, (self._journal_event(event_id, event, received, now, rows) if self._outbox.journal_enabled else None)

            _, stored = await self._outbox.accept_counted(session_write(event), complete)
            new = list(stored)
        else:
            journal_event = self._journal_event(event_id, event, received, now, new) if self._outbox.journal_enabled else None
            if new or journal_event is not None:
                await self._outbox.accept(new, (), journal_event)
        self.announce([(d.id, d.client, now) for d in new if d.dead_reason is None], {d.id: (d, made[d.id]) for d in new if d.id in made})
        for d in new:
            if d.dead_reason is None:
                self._metrics.match_count(d.client, d.route).inc()
        subject = event.setting_client or getattr(event, "username", None) or "-"
        fields = {"event_id": event_id, "route": event.route}
        if new:
            log.info(
                "accepted %s for %s: %s",
                event.route, subject, ", ".join(f"{'delivery' if d.dead_reason is None else 'dead letter'} {d.id} to {d.client}" for d in new),
                extra=fields,
            )
        else:
            log.info("accepted %s for %s: no hook matched", event.route, subject, extra=fields)
        return Accepted(event, tuple(new), event_id=event_id)

    def _crossings(
        self, live: LiveConfig, change: SessionChange, event: ClientStatusChanged, now: float, made: dict[str, FigEvent], event_id: str
    ) -> list[NewDelivery]:
        """The MinRunSessions deliveries one counted change raises. A hook whose regex ran out of
        time is treated as matching: if it would cross, the raised event is kept as a dead letter;
        if not, nothing would have been sent anyway (logged, counted)."""
        new: list[NewDelivery] = []
        thresholds = live.rules.threshold_matches(change.client)
        unknown = {hook.index: (hook, timed_out) for hook, timed_out in thresholds if timed_out is not None}
        for hook, raised in crossings(change, event, [hook for hook, _ in thresholds]):
            if hook.index in unknown:
                new.append(self._dead_letter(hook, unknown.pop(hook.index)[1], event, raised.route, raised.to_json(), now, event_id))
                continue
            new.append(NewDelivery(new_delivery_id(), hook.client, raised.route, raised.to_json(), hook.index, now, event_id=event_id))
            made[new[-1].id] = raised
            log.info(
                "%s: %s (%d run sessions, hook %d minimum %s)",
                change.client, raised.run_sessions_event.name, raised.run_sessions, hook.index, hook.min_sessions,
            )
        for hook, timed_out in unknown.values():
            self._metrics.regex_timeouts.labels(hook.client, timed_out.key).inc()
            log.warning(
                "hook %d (%s to %s), %s for %s: %s '%s' took longer than %gms; no run-session minimum was crossed, so nothing is kept",
                hook.index, hook.event, hook.client, event.route, _shown(event.client_name), timed_out.key, timed_out.pattern, timed_out.budget * 1000,
            )
        return new

    @staticmethod
    def _journal_event(event_id: str, event: FigEvent, received: bytes | None, now: float, new: list[NewDelivery]) -> journal.JournalEvent:
        matched = tuple(
            journal.HookMatch(
                d.hook if d.hook is not None else -1, d.client, d.id,
                "its regex ran out of time: kept as a dead letter" if d.dead_reason is not None
                else (f"raised {d.route} from the run-session count" if d.route != event.route else ""),
            )
            for d in new
        )
        body = received if received is not None else event.to_json()
        return journal.JournalEvent(event_id, now, event.route, event.setting_client, body, event.test, matched)

    def _dead_letter(
        self, hook: HookConfig, timed_out: RegexTimeout, event: FigEvent, route: str, body: bytes, now: float, event_id: str
    ) -> NewDelivery:
        """A hook whose regex ran out of time neither sends nor drops the event: it keeps it for
        the operator, who sends it with ``figrelay deliveries retry`` or drops it with ``purge``."""
        delivery_id = new_delivery_id()
        reason = timed_out.reason(delivery_id)
        self._metrics.regex_timeouts.labels(hook.client, timed_out.key).inc()
        log.warning("hook %d (%s to %s), %s for %s: %s", hook.index, hook.event, hook.client, event.route, _shown(event.setting_client), reason)
        return NewDelivery(delivery_id, hook.client, route, body, hook.index, now, dead_reason=reason, event_id=event_id)


def _shown(name: str | None) -> str:
    """A setting client's name for the log: the name that made a regex backtrack may be long."""
    if name is None:
        return "-"
    return repr(name if len(name) <= 60 else name[:60] + "...")
