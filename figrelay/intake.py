"""Accepting one event: test handling, session counting, hook matching, and the durable write.

The intake answers Fig only after ``accept`` returns, that is once every delivery the event makes
(and the session change it caused) is committed to the outbox.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass

from .dispatch import Dispatcher
from .events import ClientStatusChanged, FigEvent
from .metrics import Metrics
from .outbox import NewDelivery, Outbox, SessionWrite
from .reload import ConfigHolder
from .sessions import SessionTracker, crossings

log = logging.getLogger("figrelay.intake")


@dataclass(frozen=True, slots=True)
class Accepted:
    event: FigEvent
    deliveries: tuple[NewDelivery, ...]
    test_only: bool = False
    """A Test-button event that was acknowledged and not relayed."""


def new_delivery_id() -> str:
    return uuid.uuid4().hex


class Intake:
    def __init__(self, holder: ConfigHolder, sessions: SessionTracker, outbox: Outbox, dispatcher: Dispatcher, metrics: Metrics | None = None) -> None:
        self._metrics = metrics or Metrics()
        self._holder = holder
        self._sessions = sessions
        self._outbox = outbox
        self._dispatcher = dispatcher

    @property
    def sessions(self) -> SessionTracker:
        return self._sessions

    async def accept(self, event: FigEvent) -> Accepted:
        """Match and store one event; raise OutboxError when it could not be stored."""
        live = self._holder.current  # one configuration for the whole event, even across a reload
        if event.test and not live.config.intake.forward_test_events:
            log.info("%s test event acknowledged, not relayed (intake.forward_test_events is off)", event.route)
            return Accepted(event, (), test_only=True)

        now = time.time()
        bodies: dict[int, bytes] = {}
        new: list[NewDelivery] = []
        for match in live.rules.match(event):
            body = bodies.get(id(match.event))
            if body is None:
                body = bodies[id(match.event)] = match.event.to_json()
            new.append(NewDelivery(new_delivery_id(), match.hook.client, event.route, body, match.hook.index, now))

        session_writes: list[SessionWrite] = []
        change = None
        if isinstance(event, ClientStatusChanged) and not event.test:
            change = self._sessions.apply(event)
            if change is not None:
                session_writes.append(SessionWrite(change.client, change.key, change.connected))
                for hook, raised in crossings(change, event, live.rules.thresholds_for(change.client)):
                    new.append(NewDelivery(new_delivery_id(), hook.client, raised.route, raised.to_json(), hook.index, now))
                    log.info(
                        "%s: %s (%d run sessions, hook %d minimum %s)",
                        change.client, raised.run_sessions_event.name, raised.run_sessions, hook.index, hook.min_sessions,
                    )

        if new or session_writes:
            try:
                await self._outbox.accept(new, session_writes)
            except Exception:
                if change is not None:
                    self._sessions.undo(change)
                raise
            self._dispatcher.schedule((d.id, d.client, now) for d in new)
            for d in new:
                self._metrics.matches.labels(d.client, d.route).inc()
        subject = event.setting_client or getattr(event, "username", None) or "-"
        if new:
            log.info(
                "accepted %s for %s: %s",
                event.route, subject, ", ".join(f"delivery {d.id} to {d.client}" for d in new),
            )
        else:
            log.info("accepted %s for %s: no hook matched", event.route, subject)
        return Accepted(event, tuple(new))
