"""Which replica sends to which client, when several share one PostgreSQL store.

A client's lane (its order, pacing, digests and circuit) is run by one replica at a time: the one
holding the client's row in ``lanes`` with a lease that has not run out. The ``LaneKeeper`` of each
replica, every third of the lease:

1. renews its presence, its lanes and its claims on rows in one transaction (``heartbeat``); a
   lane it could not renew is dropped from its dispatcher at once;
2. takes lanes of clients with pending deliveries that nobody holds (free, or a lapsed lease: a
   replica died), no more than its share (clients with work divided by live replicas, rounded up)
   unless a lane has gone unheld for a whole lease;
3. hands the dispatcher every pending row of its lanes (rows it knows are ignored), which catches
   whatever a missed notification left behind.

Between rounds, ``NOTIFY figrelay_work`` from any replica's intake wakes it: rows for a lane it
holds are scheduled at once, and the clients without an owner are dealt out at once, the same
way by every replica (round robin over the live replicas in name order), so they spread evenly.
A lane that has had no work for a whole lease is handed back while other replicas live, so the
lanes spread out again after a replica restarts.

The keeper believes it holds a lane only until ``renewed + lease * SAFETY`` on its own monotonic
clock, measured from before the renewal was sent, so it stops sending before the database lets
another replica take over, whatever the network delay.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections.abc import Callable, Collection, Iterable

from .dispatch import Dispatcher
from .metrics import Metrics
from .storage.postgresql_store import PostgresStore

log = logging.getLogger("figrelay.lanes")

SAFETY = 0.8
"""The part of a lease this replica counts on: the rest absorbs a slow round trip."""
BATCH_WAIT = 0.02
"""After a notification, wait this long for others before reading: a burst becomes one query."""


class LaneKeeper:
    def __init__(
        self, store: PostgresStore, dispatcher: Dispatcher, clients: Callable[[], Collection[str]], metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._dispatcher = dispatcher
        self._clients = clients
        self._metrics = metrics
        self._clock = clock
        self._held: dict[str, float] = {}
        """client -> until when (own clock) this replica may send to it."""
        self._seen: dict[str, int] = {}
        """client -> the store's transaction horizon up to which its pending rows were scheduled."""
        self._unheld_since: dict[str, float] = {}
        self._others: dict[str, float] = {}
        """client -> until when (own clock) another replica is known to hold its lane."""
        self._notified: set[str] = set()
        self._wake = asyncio.Event()
        self.replicas = 1

    def owns(self, client: str) -> bool:
        until = self._held.get(client)
        return until is not None and self._clock() < until

    @property
    def held(self) -> list[str]:
        return sorted(self._held)

    def on_work(self, client: str) -> None:
        """A NOTIFY: ``client`` has new pending rows (empty: a replica left, look at every lane)."""
        self._notified.add(client)
        self._wake.set()

    def announce(self, rows: Iterable[tuple[str, str, float]], loaded: object = None) -> None:
        """This replica's intake stored these rows: read them back from the store (with the rows
        other replicas committed before them, in the store's order), as for a NOTIFY; ``loaded``
        is not used (the row is read back to be claimed anyway)."""
        for client in {client for _, client, _ in rows}:
            self.on_work(client)

    def on_reconnect(self) -> None:
        self._notified.add("")
        self._wake.set()

    async def run(self) -> None:
        every = self._store.lease / 3
        next_round = 0.0
        while True:
            now = self._clock()
            try:
                if now >= next_round or "" in self._notified:
                    if "" in self._notified:  # a replica left: what it held is free now
                        self._others.clear()
                    self._notified.discard("")
                    next_round = now + every
                    await self._round()
                if self._notified:
                    await asyncio.sleep(BATCH_WAIT)
                    notified, self._notified = self._notified, set()
                    await self._notified_work(notified)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.error("cannot renew or take lanes: %s; trying again", exc)
                next_round = min(next_round, self._clock() + 1.0)
            self._expire()
            try:
                async with asyncio.timeout(max(0.0, next_round - self._clock())):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()

    def _expire(self) -> None:
        now = self._clock()
        for client, until in list(self._held.items()):
            if until <= now:
                self._lose(client, "its lease ran out before it could be renewed")

    def _lose(self, client: str, why: str) -> None:
        if self._held.pop(client, None) is not None:
            self._seen.pop(client, None)
            self._dispatcher.lost_lane(client)
            log.warning("gave up the lane of client %s: %s; another replica takes it", client, why)
            self._count()

    def _gain(self, client: str, renewed: float) -> None:
        self._held[client] = renewed + self._store.lease * SAFETY
        self._unheld_since.pop(client, None)
        self._dispatcher.took_lane(client)
        log.info("took the lane of client %s", client)
        self._count()

    def _count(self) -> None:
        if self._metrics is not None:
            self._metrics.set_lanes(self.held)

    async def _round(self) -> None:
        started = self._clock()
        owned = list(self._held)
        grants, self.replicas = await self._store.heartbeat(owned)
        if self._metrics is not None:
            self._metrics.replicas.set(self.replicas)
        kept = {g.client for g in grants}
        for client in owned:
            if client in kept:
                self._held[client] = started + self._store.lease * SAFETY
                self._dispatcher.wake(client)
            else:
                self._lose(client, "another replica holds it now")
        await self._take(started)
        for client in list(self._held):
            await self._schedule(client, full=True)
        await self._hand_back_idle()

    async def _hand_back_idle(self) -> None:
        """Give back the lanes that have had no work for a whole lease, when other replicas are
        alive: the next work for such a client goes to whichever replica has room, so the lanes
        spread out again after a replica restarts, instead of staying with whoever took them."""
        if self.replicas < 2:
            return
        idle = [c for c in self._held if (quiet := self._dispatcher.idle_for(c)) is not None and quiet >= self._store.lease]
        if not idle:
            return
        for client in idle:
            self._held.pop(client, None)
            self._seen.pop(client, None)
            self._dispatcher.lost_lane(client)
        await self._store.release_lanes(idle)
        log.info("handed back the idle lane%s of %s", "s" if len(idle) > 1 else "", ", ".join(idle))
        self._count()

    async def _take(self, started: float) -> None:
        configured = set(self._clients())
        wanted = [(c, owner, live) for c, owner, live in await self._store.lanes_wanted() if c in configured]
        now = self._clock()
        free = [c for c, _, live in wanted if not live and c not in self._held]
        self._others = {c: now + self._store.lease * SAFETY for c, owner, live in wanted if live and owner != self._store.replica}
        for c, _, live in wanted:
            if live:
                self._unheld_since.pop(c, None)
        for c in free:
            self._unheld_since.setdefault(c, now)
        share = math.ceil(len(wanted) / max(1, self.replicas))
        room = max(0, share - len(self._held))
        take = free[:room] + [c for c in free[room:] if now - self._unheld_since[c] >= self._store.lease]
        if take:
            for grant in await self._store.acquire_lanes(take):
                self._gain(grant.client, started)

    async def _notified_work(self, clients: set[str]) -> None:
        configured = set(self._clients())
        now = self._clock()
        unheld = [c for c in clients if c and c not in self._held and c in configured and self._others.get(c, 0.0) <= now]
        if unheld:
            # every replica hears the same notifications and shares them out the same way: the
            # clients in a fixed order, dealt round robin to the live replicas in name order. Each
            # takes its own first, then, a moment later, whatever nobody took meanwhile (a replica
            # that just left or came), so the lanes spread out and none waits for the next round.
            names = sorted(name for name, *_ in await self._store.replicas())
            self.replicas = max(1, len(names))
            dealt = sorted(unheld, key=lambda c: hashlib.blake2b(c.encode(), digest_size=8).digest())
            mine = [c for i, c in enumerate(dealt) if names[i % len(names)] == self._store.replica] if self._store.replica in names else dealt
            rest = [c for c in dealt if c not in mine]
            for second, batch in enumerate((mine, rest)):
                if not batch:
                    continue
                if second:
                    await asyncio.sleep(BATCH_WAIT * 2)
                started = self._clock()
                granted = {grant.client for grant in await self._store.acquire_lanes(batch)}
                for client in batch:
                    if client in granted:
                        self._gain(client, started)
                    else:  # another replica holds it: no need to ask again until its lease could lapse
                        self._others[client] = started + self._store.lease * SAFETY
        for client in clients:
            if client in self._held:
                await self._schedule(client, full=False)

    async def _schedule(self, client: str, *, full: bool) -> None:
        rows, horizon = await self._store.pending_after(client, 0 if full else self._seen.get(client, 0))
        self._seen[client] = max(horizon, self._seen.get(client, 0))
        if self.owns(client):
            self._dispatcher.schedule(rows)
