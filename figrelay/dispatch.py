"""The dispatcher: takes pending deliveries from the outbox to their targets.

Each client has its own lane with its own bound on sends in flight, so a slow or dead client
never delays the others. Within a lane:

- **order**: sends start oldest first, in the order the intake accepted the events, across
  retries and restarts. A delivery that failed keeps its place at the head of the lane and the
  client waits, so with ``max_in_flight: 1`` a target receives its events in order;
- **backoff and circuit breaker**: a failure worth retrying makes the *client* wait
  ``uniform(0, min(backoff_max, backoff_base * 2**failures))`` (full jitter), counted in the
  client's consecutive failures, never less than the target's Retry-After. After
  ``circuit_open_after`` failures in a row the circuit opens: one probe at a time (the oldest
  delivery), the others wait without attempts; the first send that the target answers closes it
  and the backlog drains at once. A target that is down costs one attempt per backoff, whatever
  the backlog;
- **pacing**: two sends to a client are at least ``min_interval`` apart (Slack and Teams take
  about one message a second);
- **coalescing**: with a ``coalesce`` window, the first event of a hook and setting client goes
  at once; the ones that follow within the window wait for its end and go together as one
  digest send, so fifty changes in a minute are two messages, not fifty;
- **dead letters**: failures that retrying will not mend, and deliveries still failing (or still
  waiting behind an open circuit) after ``max_age``, are kept in the outbox with the reason; a
  dead letter does not hold up the deliveries behind it.

Every row stays pending in the outbox until its outcome is recorded, so nothing held in a lane
is lost by a crash. When an outcome cannot be recorded (a full disk), the send has happened but
its record has not: the dispatcher then stops sending, keeps the outcome, writes it again with
backoff, and resumes once the outbox takes it, so a target never gets the same delivery again
and again because its success could not be written down.

Deliveries of a client that a reload removed stay pending and wait: they go again when a client
of that name comes back (the daemon schedules them), and die only by ``max_age`` or a purge.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import random
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace

from . import journal
from .config import DeliverySettings, HookConfig
from .delivery import Delivered, Delivery, Failed, Outcome, Retry, Target
from .events import EventError, FigEvent, parse_event_body
from .logs import redactor
from .messages import describe, digest
from .storage import ClientHealth, NewDelivery, OutcomeWrites, Store, StoredDelivery
from .templates import MessageTemplates
from .wording import plural

log = logging.getLogger("figrelay.dispatch")

LAST_SENT_MAX = 1000
"""Above this many remembered group sends, those whose coalescing window has passed are dropped."""
PRELOAD_MAX = 2_000
"""Rows handed over by the intake kept in memory at most; beyond, they are read back when due.
Each costs about 3 KB (the row and its parsed event): 10,000 held 25 MB more at the high-water
mark of a long burst, for no throughput the bench could measure."""
MAX_FETCH = 500
"""Rows read from the outbox at once for one lane."""
LANE_MEMORY = 10_000
"""Pending deliveries one lane keeps in memory at most (about 360 bytes each: its order heap and
index). Past it, new ones wait in the store alone, and the lane reads the oldest back as it
drains (``Store.pending_in_order(client, limit)``), so a long outage's backlog costs disk, not
memory."""

RETRY_AFTER_CAP = 3600.0
"""The longest Retry-After honoured (a larger one is taken as this), unless backoff_max is longer."""

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class ClientRoute:
    """How to deliver to one client under the live configuration."""

    target: Target
    max_in_flight: int = 4
    min_interval: float = 0.0
    coalesce: float = 0.0
    renders_messages: bool = False
    templates: MessageTemplates | None = None
    max_batch: int = 0
    """The most deliveries one digest send carries (0: no limit); a larger group goes in parts."""


@dataclass(frozen=True, slots=True)
class Routing:
    """What the dispatcher needs of the live configuration; swapped whole on reload."""

    settings: DeliverySettings
    clients: Mapping[str, ClientRoute]
    hooks: Mapping[int, HookConfig] = field(default_factory=dict)


def backoff_delay(failures: int, settings: DeliverySettings, retry_after: float | None, rng: Callable[[float, float], float] = random.uniform) -> float:
    """Seconds to wait after ``failures`` consecutive failed tries (full jitter, Retry-After honoured)."""
    ceiling = min(settings.backoff_max, settings.backoff_base * (2 ** min(failures, 32)))
    delay = rng(0.0, ceiling)
    if retry_after is not None:
        delay = max(delay, min(retry_after, max(settings.backoff_max, RETRY_AFTER_CAP)))
    return delay


GroupKey = tuple[object, ...]
OrderKey = tuple[float, int]
"""(created_at, sequence): the order in which the intake accepted a delivery."""


@dataclass
class _Group:
    """Rows that will go out together (one row unless the client coalesces)."""

    key: GroupKey
    rows: list[tuple[StoredDelivery, FigEvent | None]]
    release_at: float


@dataclass(frozen=True, slots=True)
class _Unrecorded:
    """A send whose outcome the outbox could not take yet."""

    lane: _Lane
    rows: list[StoredDelivery]
    writes: OutcomeWrites
    result: str


@dataclass
class _Lane:
    client: str
    heap: list[tuple[float, int, str]] = field(default_factory=list)
    """(created_at, sequence, id) of the rows waiting to be read, oldest first."""
    known: dict[str, OrderKey] = field(default_factory=dict)
    """Ids queued, fetched, held or in flight in this lane, with their order: scheduled again,
    they are ignored; retried, they go back to their place."""
    groups: dict[GroupKey, _Group] = field(default_factory=dict)
    fetching: int = 0
    sending: int = 0
    paused_until: float = 0.0
    """No send before this: a backoff after a failure, or the target's Retry-After."""
    next_send: float = 0.0
    failures: int = 0
    """Consecutive failed sends; at ``circuit_open_after`` the circuit opens."""
    open_since: float | None = None
    last_error: str | None = None
    last_sent: dict[GroupKey, float] = field(default_factory=dict)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    last_active: float = 0.0
    """When the lane last had a row or a send (the dispatcher's clock)."""
    spilled: bool = False
    """Pending deliveries of this client wait in the store beyond what the lane holds (LANE_MEMORY)."""
    refilling: bool = False
    refill_after: float = 0.0

    @property
    def is_open(self) -> bool:
        return self.open_since is not None


class Dispatcher:
    def __init__(
        self,
        outbox: Store,
        routing: Routing,
        observer: DeliveryObserver | None = None,
        clock: Clock = time.time,
        store_retry: tuple[float, float] = (0.2, 30.0),
        owns: Callable[[str], bool] | None = None,
        lane_memory: int = LANE_MEMORY,
    ) -> None:
        self._outbox = outbox
        self._lane_memory = lane_memory
        self._owns = owns or (lambda client: True)
        """Whether this process may send to a client now: always, alone on its store; with several
        replicas, while it holds the client's lane (figrelay.lanes)."""
        self._routing = routing
        self._lanes: dict[str, _Lane] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._seq = itertools.count()
        self._stopping = False
        self._observer = observer or DeliveryObserver()
        self._clock = clock
        self._store_retry = store_retry
        self._unrecorded: list[_Unrecorded] = []
        self._loaded: dict[str, tuple[StoredDelivery, FigEvent]] = {}
        """Rows the intake handed over as it stored them, until their lane reads them."""
        self._store_error: str | None = None
        self._recovery: asyncio.Task[None] | None = None

    # --- feeding --------------------------------------------------------------------------------

    def schedule(
        self, items: Iterable[tuple[str, str, float]], loaded: Mapping[str, tuple[NewDelivery, FigEvent]] | None = None, *, more: bool = False,
    ) -> None:
        """Queue (id, client, created_at) for delivery, in the order given for equal times; ids
        already in the lane, clients not configured now (their rows wait), and clients whose lane
        another replica holds, are ignored. ``loaded``: the intake's own just-stored rows and
        their events, kept (up to PRELOAD_MAX) so that sending them needs no read and no parse.
        A lane holding LANE_MEMORY ids takes no more: the rest stay in the store, read back as
        the lane drains. ``more``: the items are the oldest of their clients' pending rows, and
        the store holds more of them (a read with a limit)."""
        clients = self._routing.clients
        given: set[str] = set()
        for delivery_id, client, created_at in items:
            if client not in clients or not self._owns(client):
                continue
            lane = self._lane(client)
            given.add(client)
            if delivery_id in lane.known:
                continue
            if len(lane.known) >= self._lane_memory:
                lane.spilled = True  # it stays pending in the store; _refill reads it back in its turn
                continue
            if loaded is not None and delivery_id in loaded and len(self._loaded) < PRELOAD_MAX:
                new, event = loaded[delivery_id]
                row = StoredDelivery(new.id, new.client, new.route, new.body, new.hook, new.created_at, 0, new.created_at, "pending", None, None, new.event_id)
                self._loaded[delivery_id] = (row, event)
            key = (created_at, next(self._seq))
            lane.known[delivery_id] = key
            lane.last_active = self._clock()
            heapq.heappush(lane.heap, (*key, delivery_id))
            lane.wake.set()
        if more:
            for client in given:
                self._lanes[client].spilled = True

    def set_routing(self, routing: Routing) -> None:
        """Take a new configuration: lanes of removed clients stop and forget their rows (which
        stay pending in the outbox); the others pick up the new settings on their next send."""
        self._routing = routing
        for client in list(self._lanes):
            if client not in routing.clients:
                lane = self._lanes.pop(client)
                self._forget_loaded(lane)
                if lane.task is not None:
                    lane.task.cancel()
            else:
                self._lanes[client].wake.set()

    def took_lane(self, client: str) -> None:
        """This replica now holds ``client``'s lane (another held it, or nobody): the next send
        keeps ``min_interval`` from now, since the last owner may have just sent."""
        route = self._routing.clients.get(client)
        if route is not None:
            lane = self._lane(client)
            lane.next_send = max(lane.next_send, self._clock() + route.min_interval)

    def wake(self, client: str) -> None:
        """Look at ``client``'s lane again (its lease was renewed)."""
        lane = self._lanes.get(client)
        if lane is not None:
            lane.wake.set()

    def idle_for(self, client: str) -> float | None:
        """Seconds since ``client``'s lane last had work, counted only once any coalescing window
        and pacing interval of its last send have passed; None while it holds rows or sends (or
        is failing: its circuit's state is its own). A replica hands back a lane idle long enough."""
        lane = self._lanes.get(client)
        if lane is None:
            return float("inf")
        if lane.known or lane.sending or lane.fetching or lane.groups or lane.failures:
            return None
        route = self._routing.clients.get(client)
        hold = max(route.coalesce, route.min_interval) if route is not None else 0.0
        return max(0.0, self._clock() - lane.last_active - hold)

    def lost_lane(self, client: str) -> None:
        """Another replica may hold ``client``'s lane now: stop sending to it and forget its rows
        (they stay pending in the store, for the lane's owner); sends in flight finish."""
        lane = self._lanes.pop(client, None)
        if lane is not None:
            self._forget_loaded(lane)
            if lane.task is not None:
                lane.task.cancel()

    def _forget_loaded(self, lane: _Lane) -> None:
        for delivery_id in lane.known:
            self._loaded.pop(delivery_id, None)

    def restore_health(self, health: Mapping[str, ClientHealth]) -> None:
        """Take back the circuits remembered before a restart: an open one probes first."""
        for client, h in health.items():
            if client in self._routing.clients and h.state == "open":
                lane = self._lane(client)
                lane.failures = max(h.failures, self._routing.settings.circuit_open_after)
                lane.open_since = h.since if h.since is not None else self._clock()
                lane.last_error = h.last_error
                self._observer.circuit(client, True, lane.failures)

    def pending(self) -> dict[str, int]:
        return {c: len(l.known) for c, l in self._lanes.items()}

    def health(self) -> dict[str, ClientHealth]:
        """Each lane's circuit, as ``figrelay deliveries`` and /metrics show it."""
        return {c: self._health_of(l) for c, l in self._lanes.items()}

    @property
    def store_error(self) -> str | None:
        """Why outcomes cannot be recorded now (sending is paused), or None."""
        return self._store_error

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
            now = self._clock()
            wake_at: list[float] = []
            if route is not None and self._store_error is None and self._owns(lane.client):
                self._step(lane, route, now, wake_at)
            timeout = max(0.0, min(wake_at) - self._clock()) if wake_at else None
            try:
                await asyncio.wait_for(lane.wake.wait(), timeout)
            except TimeoutError:
                pass

    def _step(self, lane: _Lane, route: ClientRoute, now: float, wake_at: list[float]) -> None:
        settings = self._routing.settings
        limit = 1 if lane.is_open else route.max_in_flight  # an open circuit sends one probe at a time
        waiting = lane.paused_until > now

        # deliveries waiting in the store beyond LANE_MEMORY: read the oldest back once half are gone
        if lane.spilled and not lane.refilling and len(lane.known) <= self._lane_memory // 2:
            if lane.refill_after <= now:
                lane.spilled, lane.refilling = False, True
                self._spawn(self._refill(lane))
            else:
                wake_at.append(lane.refill_after)

        # 0. while the client fails, deliveries waiting behind it still expire by max_age
        if lane.failures and lane.heap and lane.heap[0][0] + settings.max_age < now:
            self._expire_waiting(lane, now, settings)

        # 1. read the oldest rows, no more than can be sent (or, when coalescing, a burst whole,
        #    holding at most MAX_FETCH rows in memory)
        if lane.heap and lane.fetching == 0 and not waiting:
            if route.coalesce and not lane.is_open:
                room = MAX_FETCH - sum(len(g.rows) for g in lane.groups.values())
            else:
                room = max(0, limit - lane.sending - len(lane.groups))
            if self._older_than_held(lane):
                room = max(room, 1)  # the held groups wait for it (below): it must be read
            ids = [heapq.heappop(lane.heap)[2] for _ in range(min(room, len(lane.heap)))]
            if ids:
                lane.fetching += 1
                self._spawn(self._fetch(lane, ids))

        # 2. send the groups whose time has come, oldest first, within the limits
        gate = max(lane.paused_until, lane.next_send)
        while lane.groups and lane.sending < limit and gate <= now:
            group = min(lane.groups.values(), key=lambda g: g.release_at)
            if group.release_at > now:
                wake_at.append(group.release_at)
                break
            if self._older_than_held(lane):
                break  # an older delivery (one retried meanwhile) is still to be read: it goes first
            if route.max_batch and len(group.rows) > route.max_batch:
                # too many for one message: the oldest go now, the rest stay for the next send,
                # paced like any other, so no digest has to leave events out
                sending = _Group(group.key, group.rows[: route.max_batch], now)
                group.rows = group.rows[route.max_batch :]
            else:
                sending = group
                del lane.groups[group.key]
            lane.sending += 1
            if route.coalesce:  # only a coalescing lane needs to know when a group last went
                lane.last_sent[group.key] = now
                if len(lane.last_sent) > LAST_SENT_MAX:
                    _forget_old_sends(lane.last_sent, now - route.coalesce)
            if route.min_interval:
                lane.next_send = now + route.min_interval
                gate = lane.next_send
            self._spawn(self._attempt(lane, sending))
        if (lane.groups or lane.heap) and gate > now:
            wake_at.append(gate)
        if lane.failures and lane.heap:
            wake_at.append(lane.heap[0][0] + settings.max_age)

    @staticmethod
    def _older_than_held(lane: _Lane) -> bool:
        """Whether the lane's next row to read is older than every row it holds ready to send."""
        if not lane.heap or not lane.groups:
            return False
        firsts = [lane.known.get(g.rows[0][0].id) for g in lane.groups.values()]
        return all(first is None or lane.heap[0][:2] < first for first in firsts)

    def _expire_waiting(self, lane: _Lane, now: float, settings: DeliverySettings) -> None:
        expired: list[str] = []
        while lane.heap and lane.heap[0][0] + settings.max_age < now:
            expired.append(heapq.heappop(lane.heap)[2])
        reason = (
            f"gave up after {_age(settings.max_age)} waiting (delivery.max_age): client {lane.client!r} has been failing"
            + (f": {lane.last_error}" if lane.last_error else "")
        )
        writes = OutcomeWrites(now, dead=[(i, None, reason) for i in expired])

        async def write() -> None:
            try:
                await self._outbox.record_outcomes(writes)
            except Exception as exc:
                log.error("deliveries to %s: cannot record that %d expired: %s; trying again", lane.client, len(expired), exc)
                for delivery_id in expired:  # back to their place: the next step expires them again
                    key = lane.known[delivery_id]
                    heapq.heappush(lane.heap, (*key, delivery_id))
                return
            for delivery_id in expired:
                lane.known.pop(delivery_id, None)
                self._loaded.pop(delivery_id, None)
                self._observer.expired(lane.client)
            log.warning("%s to %s expired while it was failing, kept as dead letters: %s", plural(len(expired), "delivery", "deliveries"), lane.client, reason)

        self._spawn(write())

    def _spawn(self, coro: object) -> None:
        task = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _refill(self, lane: _Lane) -> None:
        """Read back the oldest pending deliveries of a lane that spilled (those it holds already
        are skipped by ``schedule``); they take their place in the lane by their age."""
        try:
            rows = await self._outbox.pending_in_order(lane.client, limit=self._lane_memory)
        except Exception as exc:
            log.error("cannot read the waiting deliveries of %s from the outbox: %s; trying again in 5s", lane.client, exc)
            lane.spilled, lane.refill_after = True, self._clock() + 5
            return
        finally:
            lane.refilling = False
            lane.wake.set()
        self.schedule(rows, more=len(rows) >= self._lane_memory)

    async def _fetch(self, lane: _Lane, ids: list[str]) -> None:
        rows: dict[str, StoredDelivery] = {}
        events: dict[str, FigEvent] = {}
        for delivery_id in ids:
            held = self._loaded.pop(delivery_id, None)
            if held is not None:
                rows[delivery_id], events[delivery_id] = held
        try:
            if len(rows) < len(ids):
                rows.update(await self._outbox.fetch([i for i in ids if i not in rows]))
        except Exception as exc:
            log.error("cannot read deliveries of %s from the outbox: %s; trying again in 5s", lane.client, exc)
            self._requeue(lane, ids)
            lane.paused_until = max(lane.paused_until, self._clock() + 5)
            return
        finally:
            lane.fetching -= 1
            lane.wake.set()
        try:
            self._group(lane, ids, rows, events)
        except Exception as exc:  # e.g. out of file descriptors: the rows wait, the lane lives on
            log.error("cannot prepare deliveries of %s: %s: %s; trying again in 5s", lane.client, type(exc).__name__, exc)
            grouped = {row.id for group in lane.groups.values() for row, _ in group.rows}
            self._requeue(lane, [i for i in ids if i not in grouped and i in lane.known])
            lane.paused_until = max(lane.paused_until, self._clock() + 5)

    def _group(self, lane: _Lane, ids: list[str], rows: Mapping[str, StoredDelivery], events: Mapping[str, FigEvent]) -> None:
        route = self._routing.clients.get(lane.client)
        coalesce = route.coalesce if route else 0.0
        now = self._clock()
        for delivery_id in ids:
            row = rows.get(delivery_id)
            if row is None or row.state != "pending":
                lane.known.pop(delivery_id, None)
                continue
            event = events.get(delivery_id) or _parse(row)
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

    def _requeue(self, lane: _Lane, ids: Iterable[str]) -> None:
        """Put rows back at their place in the lane (they stay known)."""
        for delivery_id in ids:
            key = lane.known.get(delivery_id)
            if key is not None:
                heapq.heappush(lane.heap, (*key, delivery_id))

    async def _attempt(self, lane: _Lane, group: _Group) -> None:
        routing = self._routing
        settings = routing.settings
        rows = [row for row, _ in group.rows]
        try:
            route = routing.clients.get(lane.client)
            if route is None:
                # removed while it waited: the rows stay pending for the client's return
                for row in rows:
                    lane.known.pop(row.id, None)
                return
            started, clock = self._clock(), time.monotonic()
            if any(event is None for _, event in group.rows):
                outcome: Outcome = Failed("the stored event cannot be read")
            else:
                outcome = await self._call(route.target, self._delivery(route, routing, group), settings)
            writes, result = self._apply(lane, rows, outcome, settings, (started, time.monotonic() - clock))
            try:
                await self._outbox.record_outcomes(writes)
            except Exception as exc:
                self._store_failed(_Unrecorded(lane, rows, writes, result), exc)
                return
            self._finish(lane, rows, writes, result)
        finally:
            lane.sending -= 1
            lane.last_active = self._clock()
            lane.wake.set()

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

    def _apply(
        self, lane: _Lane, rows: list[StoredDelivery], outcome: Outcome, settings: DeliverySettings, timing: tuple[float, float] = (0.0, 0.0)
    ) -> tuple[OutcomeWrites, str]:
        """What one send's outcome does: to the lane (backoff, circuit) at once, and to the
        outbox and journal (returned, to be written). ``timing`` is (started, seconds) of the
        attempt. Returns (writes, result)."""
        now = self._clock()
        together = f" (with {len(rows) - 1} more in one digest)" if len(rows) > 1 else ""
        first = rows[0]
        if not isinstance(outcome, Delivered):
            # a target may echo a credential back (a proxy's error page): never store or show it
            outcome = replace(outcome, reason=redactor.redact(outcome.reason))
        if isinstance(outcome, (Delivered, Failed)):
            self._answered(lane, now)  # the target answered: whatever it said, it is up
        status = outcome.status if outcome.status is not None else _status_in(outcome.detail if isinstance(outcome, Delivered) else outcome.reason)

        def attempts(outcome_name: str, reason: str | None, dead: frozenset[str] = frozenset()) -> list[journal.Attempt]:
            return [
                journal.Attempt(row.id, row.attempts + 1, timing[0], timing[1], "dead" if row.id in dead else outcome_name, status, reason)
                for row in rows
            ]

        if isinstance(outcome, Delivered):
            log.info(
                "delivery %s: %s to %s delivered%s (%s, attempt %d)",
                first.id, first.route, first.client, together, outcome.detail or "ok", first.attempts + 1,
                extra=_fields(first, "delivered"),
            )
            return OutcomeWrites(now, delivered=[row.id for row in rows], attempts=attempts("delivered", outcome.detail or None)), "delivered"
        if isinstance(outcome, Failed):
            log.warning(
                "delivery %s: %s to %s failed for good%s, kept as a dead letter: %s",
                first.id, first.route, first.client, together, outcome.reason,
                extra=_fields(first, "dead"),
            )
            writes = OutcomeWrites(now, dead=[(row.id, row.attempts + 1, outcome.reason) for row in rows], attempts=attempts("dead", outcome.reason))
            return writes, "dead"

        lane.failures += 1
        lane.last_error = outcome.reason
        delay = backoff_delay(lane.failures, settings, outcome.retry_after)
        lane.paused_until = max(lane.paused_until, now + delay)
        if not lane.is_open and lane.failures >= settings.circuit_open_after:
            lane.open_since = now
            log.warning(
                "client %s is failing: circuit open after %d failed attempts in a row; one probe at a time from now on, "
                "the other %s wait: %s",
                lane.client, lane.failures, plural(len(lane.known) - len(rows), "delivery", "deliveries"), outcome.reason,
            )
        if lane.is_open:
            self._observer.circuit(lane.client, True, lane.failures)
            self._remember(lane)
        dead: list[tuple[str, int | None, str]] = []
        retry: list[tuple[str, int, float, str]] = []
        for row in rows:
            if now + delay - row.created_at > settings.max_age:
                reason = f"gave up after {row.attempts + 1} attempts over {_age(now - row.created_at)} (delivery.max_age): {outcome.reason}"
                dead.append((row.id, row.attempts + 1, reason))
                log.warning("delivery %s: %s to %s expired, kept as a dead letter: %s", row.id, row.route, row.client, reason, extra=_fields(row, "dead"))
            else:
                retry.append((row.id, row.attempts + 1, lane.paused_until, outcome.reason))
        if retry:
            log.info(
                "delivery %s: %s to %s failed%s (attempt %d), retrying in %.1fs: %s",
                first.id, first.route, first.client, together, first.attempts + 1, lane.paused_until - now, outcome.reason,
                extra=_fields(first, "retry"),
            )
        writes = OutcomeWrites(now, dead=dead, retry=retry, attempts=attempts("retry", outcome.reason, frozenset(d[0] for d in dead)))
        return writes, "retried"

    def _answered(self, lane: _Lane, now: float) -> None:
        was_open = lane.open_since
        lane.failures = 0
        lane.last_error = None
        if was_open is not None:
            lane.open_since = None
            log.warning(
                "client %s answers again: circuit closed after %s; sending the waiting %s",
                lane.client, _age(now - was_open), plural(len(lane.heap) + sum(len(g.rows) for g in lane.groups.values()), "delivery", "deliveries"),
            )
            self._observer.circuit(lane.client, False, 0)
            self._remember(lane)

    def _remember(self, lane: _Lane) -> None:
        health = self._health_of(lane)

        async def write() -> None:
            try:
                await self._outbox.set_client_health(health)
            except Exception as exc:  # only for display and restarts: never worth more than a line
                log.debug("cannot store the circuit state of %s: %s", lane.client, exc)

        self._spawn(write())

    def _health_of(self, lane: _Lane) -> ClientHealth:
        state = "open" if lane.is_open else "closed"
        return ClientHealth(lane.client, state, lane.failures, lane.open_since, lane.paused_until if lane.is_open else None, lane.last_error)

    def _finish(self, lane: _Lane, rows: list[StoredDelivery], writes: OutcomeWrites, result: str) -> None:
        """The outcome is recorded: forget the rows, or put the retried ones back at their place."""
        retried = {w[0] for w in writes.retry}
        live = not self._stopping and self._lanes.get(lane.client) is lane
        if retried and live:
            # the rows read but not sent yet are younger than the retried ones: back to their
            # places too, so the next sends start with the oldest again
            self._requeue(lane, [row.id for group in lane.groups.values() for row, _ in group.rows])
            lane.groups.clear()
        for row in rows:
            if row.id in retried:
                self._observer.retried(row)
                if live:
                    self._requeue(lane, [row.id])
                    continue
            else:
                self._observer.finished(row, result if result != "retried" else "dead")
            lane.known.pop(row.id, None)
        lane.wake.set()

    # --- when outcomes cannot be recorded --------------------------------------------------------

    def _store_failed(self, unrecorded: _Unrecorded, exc: Exception) -> None:
        self._unrecorded.append(unrecorded)
        if self._store_error is None:
            log.error(
                "cannot record delivery outcomes in the outbox (%s); sending is paused until it can, "
                "so no target gets a delivery again because its success could not be written down",
                exc,
            )
        self._store_error = str(exc)
        self._observer.sending_paused(True)
        if self._recovery is None or self._recovery.done():
            self._recovery = asyncio.get_running_loop().create_task(self._record_again(), name="figrelay-record-again")

    async def _record_again(self) -> None:
        first, longest = self._store_retry
        delay = first
        while self._unrecorded:
            await asyncio.sleep(delay)
            pending = self._unrecorded[0]
            try:
                await self._outbox.record_outcomes(pending.writes)
            except Exception as exc:
                self._store_error = str(exc)
                delay = min(longest, delay * 2)
                continue
            self._unrecorded.pop(0)
            self._finish(pending.lane, pending.rows, pending.writes, pending.result)
            delay = first
        self._store_error = None
        self._observer.sending_paused(False)
        log.warning("delivery outcomes are recorded again; sending resumes")
        for lane in self._lanes.values():
            lane.wake.set()

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
        if self._recovery is not None and not self._recovery.done():
            if self._unrecorded:
                log.warning("stopping with %d delivery outcomes unrecorded: those deliveries stay pending and may be sent again", len(self._unrecorded))
            self._recovery.cancel()
            await asyncio.gather(self._recovery, return_exceptions=True)
        return cancelled


_STATUS = re.compile(r"\b(?:HTTP|SMTP) ([1-5]\d\d)\b")


def _forget_old_sends(last_sent: dict[GroupKey, float], before: float) -> None:
    """Drop the sends whose coalescing window ended before ``before``: the next event of such a
    group goes at once either way, so nothing needs remembering of it."""
    for key in [k for k, at in last_sent.items() if at < before]:
        del last_sent[key]


def _status_in(text: str) -> int | None:
    """The ``HTTP nnn`` or ``SMTP nnn`` a plugin's text names, for a plugin that did not set
    ``status``."""
    m = _STATUS.search(text)
    return int(m.group(1)) if m else None


def _fields(row: StoredDelivery, outcome: str) -> dict[str, object]:
    """The ids a log line carries as fields of its own (JSON logs)."""
    return {"event_id": row.event_id, "delivery_id": row.id, "client": row.client, "route": row.route, "attempt": row.attempts + 1, "outcome": outcome}


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

    def expired(self, client: str) -> None:
        """A delivery died by max_age while waiting behind an open circuit, without an attempt."""

    def circuit(self, client: str, is_open: bool, failures: int) -> None:
        """A client's circuit opened (or failed another probe) or closed."""

    def sending_paused(self, paused: bool) -> None:
        """Sending paused (True) because outcomes cannot be recorded, or resumed (False)."""


def _age(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f}h"
    if seconds >= 60:
        return f"{seconds / 60:.0f}m"
    return f"{seconds:.0f}s"
