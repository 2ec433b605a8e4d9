"""The dispatcher: takes due deliveries from the outbox to their targets.

Each client has its own lane with its own bound on deliveries in flight, so a slow or dead client
never delays the others. A failed delivery worth retrying waits an exponential backoff with full
jitter, ``uniform(0, min(backoff_max, backoff_base * 2**attempt))``, and never less than the
target's Retry-After; a Retry-After also holds back the client's other deliveries for as long.
Failures that retrying will not mend, and deliveries still failing after ``max_age``, become dead
letters kept in the outbox with the reason.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from .config import DeliverySettings
from .delivery import Delivered, Delivery, Failed, Outcome, Retry, Target
from .events import EventError, parse_event_body
from .outbox import Outbox, StoredDelivery

log = logging.getLogger("figrelay.dispatch")


@dataclass(frozen=True, slots=True)
class Routing:
    """What the dispatcher needs of the live configuration; swapped whole on reload."""

    settings: DeliverySettings
    targets: Mapping[str, Target]
    limits: Mapping[str, int]


def backoff_delay(attempts: int, settings: DeliverySettings, retry_after: float | None, rng: Callable[[float, float], float] = random.uniform) -> float:
    """Seconds until the next try after ``attempts`` failed ones (full jitter, Retry-After honoured)."""
    ceiling = min(settings.backoff_max, settings.backoff_base * (2 ** min(attempts, 32)))
    delay = rng(0.0, ceiling)
    if retry_after is not None:
        delay = max(delay, min(retry_after, settings.backoff_max))
    return delay


@dataclass
class _Lane:
    client: str
    heap: list[tuple[float, int, str]] = field(default_factory=list)
    queued: set[str] = field(default_factory=set)
    in_flight: set[str] = field(default_factory=set)
    paused_until: float = 0.0
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
        """Queue (id, client, due unix time) for delivery; ids already queued are ignored."""
        for delivery_id, client, due in items:
            lane = self._lane(client)
            if delivery_id in lane.queued or delivery_id in lane.in_flight:
                continue
            lane.queued.add(delivery_id)
            heapq.heappush(lane.heap, (due, next(self._seq), delivery_id))
            lane.wake.set()

    def set_routing(self, routing: Routing) -> None:
        """Take a new configuration: lanes of removed clients stop (their rows are dead-lettered
        by the caller); the others pick up new limits and targets on their next delivery."""
        self._routing = routing
        for client in list(self._lanes):
            if client not in routing.targets:
                lane = self._lanes.pop(client)
                if lane.task is not None:
                    lane.task.cancel()
            else:
                self._lanes[client].wake.set()

    def pending(self) -> dict[str, int]:
        return {c: len(l.queued) + len(l.in_flight) for c, l in self._lanes.items()}

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
            now = time.time()
            limit = self._routing.limits.get(lane.client, 1)
            free = limit - len(lane.in_flight)
            wait: float | None = None
            if lane.heap and free > 0:
                start = max(lane.heap[0][0], lane.paused_until)
                if start <= now:
                    batch = []
                    while lane.heap and len(batch) < free and lane.heap[0][0] <= now:
                        _, _, delivery_id = heapq.heappop(lane.heap)
                        lane.queued.discard(delivery_id)
                        lane.in_flight.add(delivery_id)
                        batch.append(delivery_id)
                    self._spawn(self._start_batch(lane, batch))
                    continue
                wait = start - now
            try:
                await asyncio.wait_for(lane.wake.wait(), wait)
            except TimeoutError:
                pass

    def _spawn(self, coro: object) -> None:
        task = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _start_batch(self, lane: _Lane, ids: list[str]) -> None:
        try:
            rows = await self._outbox.fetch(ids)
        except Exception as exc:
            log.error("cannot read deliveries of %s from the outbox: %s; retrying in 5s", lane.client, exc)
            for delivery_id in ids:
                lane.in_flight.discard(delivery_id)
            self.schedule((i, lane.client, time.time() + 5) for i in ids)
            return
        for delivery_id in ids:
            row = rows.get(delivery_id)
            if row is None or row.state != "pending":
                lane.in_flight.discard(delivery_id)
                lane.wake.set()
                continue
            self._spawn(self._attempt(lane, row))

    async def _attempt(self, lane: _Lane, row: StoredDelivery) -> None:
        routing = self._routing
        settings = routing.settings
        attempt = row.attempts + 1
        retry_at: float | None = None
        try:
            target = routing.targets.get(row.client)
            if target is None:
                outcome: Outcome = Failed(f"client {row.client!r} is no longer configured")
            else:
                try:
                    event = parse_event_body(row.route, row.body)
                except EventError as exc:
                    outcome = Failed(f"stored event cannot be read: {exc}")
                else:
                    delivery = Delivery(row.id, row.client, event, row.body, attempt, row.created_at)
                    outcome = await self._call(target, delivery, settings)
            retry_at = await self._record(lane, row, attempt, outcome, settings)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("delivery %s to %s: recording the outcome failed; it stays pending", row.id, row.client)
            retry_at = time.time() + settings.backoff_base
        finally:
            lane.in_flight.discard(row.id)
            lane.wake.set()
        if retry_at is not None and not self._stopping and row.client in self._routing.targets:
            self.schedule([(row.id, row.client, retry_at)])

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

    async def _record(self, lane: _Lane, row: StoredDelivery, attempt: int, outcome: Outcome, settings: DeliverySettings) -> float | None:
        """Store an attempt's outcome; return when to try again, or None."""
        if isinstance(outcome, Delivered):
            await self._outbox.delivered(row.id)
            log.info("delivery %s: %s to %s delivered (%s, attempt %d)", row.id, row.route, row.client, outcome.detail or "ok", attempt)
            self._observer.finished(row, "delivered")
            return None
        if isinstance(outcome, Failed):
            await self._outbox.dead(row.id, attempt, outcome.reason)
            log.warning("delivery %s: %s to %s failed for good, kept as a dead letter: %s", row.id, row.route, row.client, outcome.reason)
            self._observer.finished(row, "dead")
            return None
        now = time.time()
        delay = backoff_delay(attempt, settings, outcome.retry_after)
        if outcome.retry_after is not None:
            lane.paused_until = max(lane.paused_until, now + min(outcome.retry_after, settings.backoff_max))
        if now + delay - row.created_at > settings.max_age:
            reason = f"gave up after {attempt} attempts over {_age(now - row.created_at)} (delivery.max_age): {outcome.reason}"
            await self._outbox.dead(row.id, attempt, reason)
            log.warning("delivery %s: %s to %s expired, kept as a dead letter: %s", row.id, row.route, row.client, reason)
            self._observer.finished(row, "dead")
            return None
        await self._outbox.retry_later(row.id, attempt, now + delay, outcome.reason)
        log.info("delivery %s: %s to %s failed (attempt %d), retrying in %.1fs: %s", row.id, row.route, row.client, attempt, delay, outcome.reason)
        self._observer.retried(row)
        return now + delay

    async def stop(self, timeout: float) -> int:
        """Stop starting deliveries, give those in flight ``timeout`` seconds, cancel the rest
        (they stay pending for the next start). Returns how many were cancelled."""
        self._stopping = True
        for lane in self._lanes.values():
            if lane.task is not None:
                lane.task.cancel()
        lanes = [l.task for l in self._lanes.values() if l.task is not None]
        await asyncio.gather(*lanes, return_exceptions=True)
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
