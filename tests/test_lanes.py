"""The lane keeper (figrelay/lanes.py) on a real PostgreSQL store, with its clock injected: a
lane is believed held only while its lease certainly runs, and is let go when it cannot be renewed."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from figrelay.config import DeliverySettings
from figrelay.dispatch import ClientRoute, Dispatcher, Routing
from figrelay.lanes import SAFETY, LaneKeeper
from figrelay.storage import NewDelivery
from figrelay.storage.postgresql import parse_storage_url
from figrelay.storage.postgresql_store import PostgresStore

LEASE = 10.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class NeverSends:
    """A target that is never reached in these tests: the keeper decides, nothing is sent."""

    async def deliver(self, delivery: object) -> object:
        raise AssertionError("nothing is sent in these tests")


@pytest.fixture
async def store(pg_database: str) -> AsyncIterator[PostgresStore]:
    s = PostgresStore(parse_storage_url(pg_database), replica="solo", lease=LEASE)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


def keeper_of(store: PostgresStore, clock: Clock) -> tuple[LaneKeeper, Dispatcher]:
    routing = Routing(DeliverySettings(), {"siem": ClientRoute(NeverSends())})  # type: ignore[arg-type]
    holder: list[LaneKeeper] = []
    dispatcher = Dispatcher(store, routing, owns=lambda c: holder[0].owns(c), clock=clock)
    keeper = LaneKeeper(store, dispatcher, lambda: {"siem"}, clock=clock)
    holder.append(keeper)
    return keeper, dispatcher


async def test_a_lane_is_held_only_while_its_lease_certainly_runs(store: PostgresStore) -> None:
    clock = Clock()
    keeper, dispatcher = keeper_of(store, clock)
    await store.accept([NewDelivery("d1", "siem", "SecurityEvent", b"{}", 0, 1.0, dead_reason="kept aside")])
    await keeper._round()
    assert not keeper.owns("siem"), "a client with no pending work gets no lane"

    await store.accept([NewDelivery("d2", "siem", "SecurityEvent", b"{}", 0, 2.0)])
    await keeper._round()
    assert keeper.owns("siem") and (await store.lane_owners())["siem"][0] == "solo"
    # renewed every round: still held a whole lease later
    clock.now += LEASE * SAFETY * 0.9
    await keeper._round()
    clock.now += LEASE * SAFETY * 0.9
    assert keeper.owns("siem")
    # no renewal for longer than the part of the lease it counts on: let go before the database would
    clock.now += LEASE * SAFETY * 0.2
    assert not keeper.owns("siem")
    keeper._expire()
    assert keeper.held == [] and "siem" not in dispatcher.pending()
    await dispatcher.stop(0)


async def test_a_lane_another_replica_holds_is_not_taken(store: PostgresStore, pg_database: str) -> None:
    other = PostgresStore(parse_storage_url(pg_database), replica="other", lease=LEASE)
    await other.open()
    try:
        assert [g.client for g in await other.acquire_lanes(["siem"])] == ["siem"]
        keeper, dispatcher = keeper_of(store, Clock())
        await store.accept([NewDelivery("d1", "siem", "SecurityEvent", b"{}", 0, 1.0)])
        await keeper._round()
        await keeper._notified_work({"siem"})
        assert not keeper.owns("siem") and (await store.lane_owners())["siem"][0] == "other"
    finally:
        await other.close()
    # the other replica left (close hands its lanes back): the next round takes the lane
    await keeper._round()
    assert keeper.owns("siem")
    await dispatcher.stop(0)
