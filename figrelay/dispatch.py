"""The dispatcher: takes due deliveries from the outbox to their targets.

Each client has its own lane with its own bound on sends in flight, so a slow or dead client
never delays the others. Within a lane:

- **pacing**: two sends to a client are at least ``min_interval`` apart (Slack and Teams take
  about one message a second);
- **coalescing**: with a ``coalesce`` window, the first event of a hook and setting client goes
  at once; the ones that follow within the window wait for its end and go together as one
  digest send, so fifty changes in a minute are two messages, not fifty;
- **retries**: a failure worth retrying waits an exponential backoff with full jitter,
  ``uniform(0, min(backoff_max, backoff_base * 2**attempt))``, never less than the target's
  Retry-After, which also holds back the client's other sends for as long. Failures that
  retrying will not mend, and deliveries still failing after ``max_age``, become dead letters
  kept in the outbox with the reason.

Every row stays pending in the outbox until its outcome is recorded, so nothing held in a lane
is lost by a crash.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace

from .config import DeliverySettings, HookConfig
from .delivery import Delivered, Delivery, Failed, Outcome, Retry, Target
from .events import EventError, FigEvent, parse_event_body
from .logs import redactor
from .messages import describe, digest
from .outbox import Outbox, StoredDelivery
from .templates import MessageTemplates

log = logging.getLogger("figrelay.dispatch")

MAX_FETCH = 500
"""Rows read from the outbox at once for one lane."""


@dataclass(frozen=True, slots=True)
class ClientRoute:
    """How to deliver to one client under the live configuration."""

    target: Target
    max_in_flight: int = 4
    min_interval: float = 0.0
    coalesce: float = 0.0
    renders_messages: bool = False
    templates: MessageTemplates | None = None


@dataclass(frozen=True, slots=True)
class Routing:
    """What the dispatcher needs of the live configuration; swapped whole on reload."""

    settings: DeliverySettings
    clients: Mapping[str, ClientRoute]
    hooks: Mapping[int, HookConfig] = field(default_factory=dict)


def backoff_delay(attempts: int, settings: DeliverySettings, retry_after: float | None, rng: Callable[[float, float], float] = random.uniform) -> float:
    """Seconds until the next try after ``attempts`` failed ones (full jitter, Retry-After honoured)."""
    ceiling = min(settings.backoff_max, settings.backoff_base * (2 ** min(attempts, 32)))
    delay = rng(0.0, ceiling)
    if retry_after is not None:
        delay = max(delay, min(retry_after, settings.backoff_max))
    return delay


GroupKey = tuple[object, ...]


@dataclass
class _Group:
    """Rows that will go out together (one row unless the client coalesces)."""

    key: GroupKey
    rows: list[tuple[StoredDelivery, FigEvent | None]]
    release_at: float


@dataclass
class _Lane:
    client: str
    heap: list[tuple[float, int, str]] = field(default_factory=list)
    known: set[str] = field(default_factory=set)
    """Ids queued, fetched, held or in flight in this lane: scheduled again, they are ignored."""
    groups: dict[GroupKey, _Group] = field(default_factory=dict)
    fetching: int = 0
    sending: int = 0
    paused_until: float = 0.0
    next_send: float = 0.0
    last_sent: dict[GroupKey, float] = field(default_factory=dict)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class Dispatcher:
    def __init__(self, outbox: Outbox, routing: Routing, observer: DeliveryObserver | None = None) -> None:
        self._outbox = outbox
        self._routing = routing
        self._lanes: dict[str, _Lane] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._seq = itertools.count()
        self._stopping = False
        self._observer = observer or DeliveryObserver()

    # --- feeding --------------------------------------------------------------------------------

    def schedule(self, items: Iterable[tuple[str, str, float]]) -> None:
        """Queue (id, client, due unix time) for delivery; ids already in the lane are ignored."""
        for delivery_id, client, due in items:
            lane = self._lane(client)
            if delivery_id in lane.known:
                continue
            lane.known.add(delivery_id)
            heapq.heappush(lane.heap, (due, next(self._seq), delivery_id))
            lane.wake.set()

    def set_routing(self, routing: Routing) -> None:
        """Take a new configuration: lanes of removed clients stop (their rows are dead-lettered
        by the caller); the others pick up the new settings on their next send."""
        self._routing = routing
        for client in list(self._lanes):
            if client not in routing.clients:
                lane = self._lanes.pop(client)
                if lane.task is not None:
                    lane.task.cancel()
            else:
                self._lanes[client].wake.set()

    def pending(self) -> dict[str, int]:
        return {c: len(l.known) for c, l in self._lanes.items()}

    def _lane(self, client: str) -> _Lane:
        lane = self._lanes.get(client)
        if lane is None:
            lane = self._lanes[client] = _Lane(client)
            if not self._stopping:
                lane.task = asyncio.get_running_loop().create_task(self._run_lane(lane), name=f"figrelay-lane-{client}")
        return lane

    # --- running --------------------------------------------------------------------------------

    async def _run_lane(self, lane: _Lane) -> None:
        while not self._stopping:
            lane.wake.clear()
            route = self._routing.clients.get(lane.client)
            now = time.time()
            wake_at: list[float] = []

            # 1. take due rows out of the heap and read them
            if lane.heap and lane.fetching == 0:
                if lane.heap[0][0] <= now:
                    # group a burst whole when coalescing (holding at most MAX_FETCH rows in
                    # memory); else read no more than can be sent
                    if route and route.coalesce:
                        room = MAX_FETCH - sum(len(g.rows) for g in lane.groups.values())
                    else:
                        room = max(0, (route.max_in_flight if route else 1) - lane.sending - len(lane.groups))
                    ids = []
                    while lane.heap and len(ids) < room and lane.heap[0][0] <= now:
                        ids.append(heapq.heappop(lane.heap)[2])
                    if ids:
                        lane.fetching += 1
                        self._spawn(self._fetch(lane, ids))
                else:
                    wake_at.append(lane.heap[0][0])

            # 2. send the groups whose time has come, within the limits
            if route is not None and lane.groups:
                limit = route.max_in_flight
                gate = max(lane.paused_until, lane.next_send)
                while lane.groups and lane.sending < limit and gate <= now:
                    group = min(lane.groups.values(), key=lambda g: g.release_at)
                    if group.release_at > now:
                        wake_at.append(group.release_at)
                        break
                    del lane.groups[group.key]
                    lane.sending += 1
                    lane.last_sent[group.key] = now
                    if route.min_interval:
                        lane.next_send = now + route.min_interval
                        gate = lane.next_send
                    self._spawn(self._attempt(lane, group))
                if lane.groups and gate > now:
                    wake_at.append(gate)

            timeout = max(0.0, min(wake_at) - time.time()) if wake_at else None
            try:
                await asyncio.wait_for(lane.wake.wait(), timeout)
            except TimeoutError:
                pass

    def _spawn(self, coro: object) -> None:
        task = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _fetch(self, lane: _Lane, ids: list[str]) -> None:
        try:
            rows = await self._outbox.fetch(ids)
        except Exception as exc:
            log.error("cannot read deliveries of %s from the outbox: %s; trying again in 5s", lane.client, exc)
            for delivery_id in ids:
                lane.known.discard(delivery_id)
            self.schedule((i, lane.client, time.time() + 5) for i in ids)
            return
        finally:
            lane.fetching -= 1
            lane.wake.set()
        route = self._routing.clients.get(lane.client)
        coalesce = route.coalesce if route else 0.0
        now = time.time()
        for delivery_id in ids:
            row = rows.get(delivery_id)
            if row is None or row.state != "pending":
                lane.known.discard(delivery_id)
                continue
            event = _parse(row)
            if coalesce and event is not None:
                key: GroupKey = ("hook", row.hook, row.route if row.hook is None else None, event.setting_client)
            else:
                key = ("row", row.id)
            group = lane.groups.get(key)
            if group is None:
                release_at = max(now, lane.last_sent.get(key, float("-inf")) + coalesce) if coalesce else now
                lane.groups[key] = _Group(key, [(row, event)], release_at)
            else:
                group.rows.append((row, event))

    async def _attempt(self, lane: _Lane, group: _Group) -> None:
        routing = self._routing
        settings = routing.settings
        rows = [row for row, _ in group.rows]
        retry_at: float | None = None
        try:
            route = routing.clients.get(lane.client)
            if route is None:
                outcome: Outcome = Failed(f"client {lane.client!r} is no longer configured")
            elif any(event is None for _, event in group.rows):
                outcome = Failed("the stored event cannot be read")
            else:
                delivery = self._delivery(route, routing, group)
                outcome = await self._call(route.target, delivery, settings)
            retry_at = await self._record(lane, rows, outcome, settings)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("deliveries %s to %s: recording the outcome failed; they stay pending", ", ".join(r.id for r in rows), lane.client)
            retry_at = time.time() + settings.backoff_base
        finally:
            lane.sending -= 1
            for row in rows:
                lane.known.discard(row.id)
            lane.wake.set()
        if retry_at is not None and not self._stopping and lane.client in self._routing.clients:
            self.schedule((row.id, row.client, retry_at) for row in rows)

    def _delivery(self, route: ClientRoute, routing: Routing, group: _Group) -> Delivery:
        """The Delivery handed to the target: one, or the first of a batch carrying them all."""
        deliveries = []
        for row, event in group.rows:
            assert event is not None
            hook = routing.hooks.get(row.hook) if row.hook is not None else None
            if hook is not None and hook.client != row.client:
                hook = None  # the hooks were reordered by a reload since the event was accepted
            minimum = hook.min_sessions if hook is not None else None
            message = None
            if route.renders_messages:
                message = describe(event, minimum)
                templates = hook.templates.over(route.templates) if hook is not None and hook.templates else route.templates
                if templates is not None:
                    message = templates.apply(event, message)
            deliveries.append(Delivery(row.id, row.client, event, row.body, row.attempts + 1, row.created_at, message, (), minimum))
        first = deliveries[0]
        if len(deliveries) == 1:
            return first
        message = digest([d.message for d in deliveries if d.message is not None]) if route.renders_messages else None
        return Delivery(first.id, first.client, first.event, first.body, first.attempt, first.created_at, message, tuple(deliveries), first.minimum)

    async def _call(self, target: Target, delivery: Delivery, settings: DeliverySettings) -> Outcome:
        started = time.monotonic()
        try:
            async with asyncio.timeout(settings.attempt_timeout):
                outcome = await target.deliver(delivery)
        except TimeoutError:
            outcome = Retry(f"the delivery took longer than {settings.attempt_timeout:g}s (delivery.attempt_timeout)")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("delivery %s to %s: the plugin raised", delivery.id, delivery.client)
            outcome = Retry(f"plugin error: {type(exc).__name__}: {exc}")
        if not isinstance(outcome, (Delivered, Retry, Failed)):
            outcome = Failed(f"plugin returned {type(outcome).__name__}, not Delivered, Retry or Failed")
        self._observer.attempted(delivery, outcome, time.monotonic() - started)
        return outcome

    async def _record(self, lane: _Lane, rows: list[StoredDelivery], outcome: Outcome, settings: DeliverySettings) -> float | None:
        """Store a send's outcome for every row it stood for; return when to try again, or None."""
        together = f" (with {len(rows) - 1} more in one digest)" if len(rows) > 1 else ""
        first = rows[0]
        if not isinstance(outcome, Delivered):
            # a target may echo a credential back (a proxy's error page): never store or show it
            outcome = replace(outcome, reason=redactor.redact(outcome.reason))
        if isinstance(outcome, Delivered):
            for row in rows:
                await self._outbox.delivered(row.id)
                self._observer.finished(row, "delivered")
            log.info(
                "delivery %s: %s to %s delivered%s (%s, attempt %d)",
                first.id, first.route, first.client, together, outcome.detail or "ok", first.attempts + 1,
            )
            return None
        if isinstance(outcome, Failed):
            for row in rows:
                await self._outbox.dead(row.id, row.attempts + 1, outcome.reason)
                self._observer.finished(row, "dead")
            log.warning(
                "delivery %s: %s to %s failed for good%s, kept as a dead letter: %s",
                first.id, first.route, first.client, together, outcome.reason,
            )
            return None
        now = time.time()
        attempt = max(row.attempts for row in rows) + 1
        delay = backoff_delay(attempt, settings, outcome.retry_after)
        if outcome.retry_after is not None:
            lane.paused_until = max(lane.paused_until, now + min(outcome.retry_after, settings.backoff_max))
        retry = False
        for row in rows:
            if now + delay - row.created_at > settings.max_age:
                reason = f"gave up after {row.attempts + 1} attempts over {_age(now - row.created_at)} (delivery.max_age): {outcome.reason}"
                await self._outbox.dead(row.id, row.attempts + 1, reason)
                log.warning("delivery %s: %s to %s expired, kept as a dead letter: %s", row.id, row.route, row.client, reason)
                self._observer.finished(row, "dead")
            else:
                await self._outbox.retry_later(row.id, row.attempts + 1, now + delay, outcome.reason)
                self._observer.retried(row)
                retry = True
        if not retry:
            return None
        log.info(
            "delivery %s: %s to %s failed%s (attempt %d), retrying in %.1fs: %s",
            first.id, first.route, first.client, together, attempt, delay, outcome.reason,
        )
        return now + delay

    async def stop(self, timeout: float) -> int:
        """Stop starting sends, give those in flight ``timeout`` seconds, cancel the rest (they
        stay pending for the next start). Returns how many tasks were cancelled."""
        self._stopping = True
        for lane in self._lanes.values():
            if lane.task is not None:
                lane.task.cancel()
        await asyncio.gather(*(l.task for l in self._lanes.values() if l.task is not None), return_exceptions=True)
        deadline = time.monotonic() + timeout
        cancelled = 0
        while self._tasks:
            pending = set(self._tasks)
            left = deadline - time.monotonic()
            if left > 0:
                await asyncio.wait(pending, timeout=left)
                continue
            for task in pending:
                task.cancel()
            cancelled += len(pending)
            await asyncio.gather(*pending, return_exceptions=True)
        return cancelled


def _parse(row: StoredDelivery) -> FigEvent | None:
    try:
        return parse_event_body(row.route, row.body)
    except EventError as exc:
        log.error("delivery %s: the stored %s event cannot be read: %s", row.id, row.route, exc)
        return None


class DeliveryObserver:
    """Hears what the dispatcher does; the metrics module subclasses it. Does nothing here."""

    def attempted(self, delivery: Delivery, outcome: Outcome, seconds: float) -> None:
        pass

    def finished(self, row: StoredDelivery, result: str) -> None:
        pass

    def retried(self, row: StoredDelivery) -> None:
        pass


def _age(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f}h"
    if seconds >= 60:
        return f"{seconds / 60:.0f}m"
    return f"{seconds:.0f}s"
