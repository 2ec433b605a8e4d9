"""The dispatcher with a real SQLite outbox and an in-process target: pacing, coalescing,
message rendering, retries and dead letters."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from conftest import wait_until
from figrelay.config import DeliverySettings, HookConfig
from figrelay.delivery import Delivered, Delivery, Failed, Outcome, Retry
from figrelay.dispatch import ClientRoute, DeliveryObserver, Dispatcher, Routing, backoff_delay
from figrelay.messages import Severity
from figrelay.samples import sample_events
from figrelay.storage import NewDelivery, OutboxError, OutcomeWrites
from figrelay.storage.sqlite import Outbox
from figrelay.templates import MessageTemplates

SETTINGS = DeliverySettings(backoff_base=0.05, backoff_max=0.5, attempt_timeout=5, shutdown_timeout=1)


class Recorder:
    """A target that records each send and answers from a script of outcomes."""

    def __init__(self, *outcomes: Outcome) -> None:
        self.sent: list[tuple[float, Delivery]] = []
        self.outcomes = list(outcomes)

    async def deliver(self, delivery: Delivery) -> Outcome:
        self.sent.append((time.monotonic(), delivery))
        return self.outcomes.pop(0) if self.outcomes else Delivered()

    async def aclose(self) -> None:
        pass


@pytest.fixture
async def outbox(tmp_path: Path):
    box = Outbox(tmp_path / "outbox.sqlite3")
    await box.open()
    yield box
    await box.close()


def hook(index: int, event: str = "SettingValueChanged", client: str = "chat", min_sessions: int | None = None, templates=None) -> HookConfig:
    import re

    return HookConfig(index, event, client, re.compile(".*"), None, min_sessions, None, templates)


async def accept(
    outbox: Outbox, dispatcher: Dispatcher, n: int, *, client: str = "chat", hook_index: int = 0, name: str = "OrdersApi", schedule: bool = True
) -> list[str]:
    event = sample_events("SettingValueChanged")[0]
    now = time.time()
    rows = []
    for i in range(n):
        body = event.to_json().replace(b'"OrdersApi"', f'"{name}"'.encode()).replace(b"Increase timeout for peak", f"change {i}".encode())
        rows.append(NewDelivery(f"{name}-{i}-{now}", client, "SettingValueChanged", body, hook_index, now))
    await outbox.accept(rows)
    if schedule:
        dispatcher.schedule((r.id, r.client, now) for r in rows)
    return [r.id for r in rows]


async def run(dispatcher: Dispatcher) -> None:
    await dispatcher.stop(1)


async def test_coalescing_sends_the_first_at_once_and_the_burst_as_one_digest(outbox):
    target = Recorder()
    routing = Routing(SETTINGS, {"chat": ClientRoute(target, coalesce=0.3, renders_messages=True)}, {0: hook(0)})
    dispatcher = Dispatcher(outbox, routing)
    await accept(outbox, dispatcher, 1)
    await wait_until(lambda: len(target.sent) == 1)
    await accept(outbox, dispatcher, 5)
    await wait_until(lambda: len(target.sent) == 2)
    first, second = target.sent[0][1], target.sent[1][1]
    assert first.batch == () and first.message is not None and "changed" in first.message.title
    assert len(second.deliveries) == 5 and second.message is not None
    assert second.message.title == "OrdersApi: 5 events (SettingValueChanged)"
    assert second.message.items[0].text.endswith("Reason: change 0")
    assert target.sent[1][0] - target.sent[0][0] >= 0.29, "the digest waited for the window to close"
    await _drained(outbox)
    await run(dispatcher)


async def _drained(outbox: Outbox) -> bool:
    deadline = time.monotonic() + 5
    while await outbox.list():
        assert time.monotonic() < deadline, "deliveries left in the outbox"
        await asyncio.sleep(0.01)
    return True


async def test_coalescing_keeps_hooks_and_setting_clients_apart(outbox):
    target = Recorder()
    routing = Routing(SETTINGS, {"chat": ClientRoute(target, coalesce=0.2, renders_messages=True)}, {0: hook(0), 1: hook(1)})
    dispatcher = Dispatcher(outbox, routing)
    ids = await accept(outbox, dispatcher, 3, name="OrdersApi", schedule=False)
    ids += await accept(outbox, dispatcher, 3, name="PaymentsApi", schedule=False)
    ids += await accept(outbox, dispatcher, 3, name="OrdersApi", hook_index=1, schedule=False)
    dispatcher.schedule((i, "chat", time.time()) for i in ids)  # one burst
    await wait_until(lambda: sum(len(d.deliveries) for _, d in target.sent) == 9)
    groups = sorted((d.event.setting_client, d.deliveries[0].id.count("-"), len(d.deliveries)) for _, d in target.sent)
    # one digest for each (hook, setting client)
    assert [(client, size) for client, _, size in groups] == [("OrdersApi", 3), ("OrdersApi", 3), ("PaymentsApi", 3)]
    await _drained(outbox)
    await run(dispatcher)


async def test_pacing_spaces_sends(outbox):
    target = Recorder()
    routing = Routing(SETTINGS, {"chat": ClientRoute(target, min_interval=0.1, max_in_flight=4)}, {0: hook(0)})
    dispatcher = Dispatcher(outbox, routing)
    await accept(outbox, dispatcher, 4)
    await wait_until(lambda: len(target.sent) == 4)
    gaps = [b[0] - a[0] for a, b in zip(target.sent, target.sent[1:], strict=False)]
    assert all(gap >= 0.095 for gap in gaps), gaps
    await run(dispatcher)


async def test_unpaced_client_sends_concurrently_up_to_its_limit(outbox):
    gate = asyncio.Event()
    running = 0
    peak = 0

    class Slow(Recorder):
        async def deliver(self, delivery: Delivery) -> Outcome:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            await gate.wait()
            running -= 1
            return await super().deliver(delivery)

    target = Slow()
    dispatcher = Dispatcher(outbox, Routing(SETTINGS, {"chat": ClientRoute(target, max_in_flight=3)}, {0: hook(0)}))
    await accept(outbox, dispatcher, 10)
    await wait_until(lambda: running == 3)
    gate.set()
    await wait_until(lambda: len(target.sent) == 10)
    assert peak == 3
    await run(dispatcher)


async def test_templates_hook_over_client_and_minimum_in_messages(outbox):
    target = Recorder()
    client_templates = MessageTemplates(title="client: {{ ClientName }}", text="client text")
    hook_templates = MessageTemplates(title="hook: {{ UpdatedSettings|join('+') }}")
    routing = Routing(
        SETTINGS,
        {"chat": ClientRoute(target, renders_messages=True, templates=client_templates)},
        {0: hook(0, templates=hook_templates), 1: hook(1)},
    )
    dispatcher = Dispatcher(outbox, routing)
    await accept(outbox, dispatcher, 1, hook_index=0)
    await wait_until(lambda: len(target.sent) == 1)
    await accept(outbox, dispatcher, 1, hook_index=1)
    await wait_until(lambda: len(target.sent) == 2)
    first, second = (d.message for _, d in target.sent)
    assert first.title == "hook: Timeout+RetryCount" and first.text == "client text"
    assert second.title == "client: OrdersApi"
    await run(dispatcher)


async def test_a_template_failing_on_a_real_event_falls_back_to_the_default(outbox):
    target = Recorder()
    templates = MessageTemplates(title="{{ ChangeMessage.upper() }}")
    dispatcher = Dispatcher(outbox, Routing(SETTINGS, {"chat": ClientRoute(target, renders_messages=True, templates=templates)}, {0: hook(0)}))
    event = sample_events("SettingValueChanged")[0]
    body = event.to_json().replace(b'"ChangeMessage":"Increase timeout for peak"', b'"ChangeMessage":null')
    await outbox.accept([NewDelivery("x", "chat", "SettingValueChanged", body, 0, time.time())])
    dispatcher.schedule([("x", "chat", time.time())])
    await wait_until(lambda: len(target.sent) == 1)
    assert target.sent[0][1].message.title == "OrdersApi: 2 settings changed"
    await run(dispatcher)


async def test_retry_after_holds_the_client_and_permanent_failures_are_dead(outbox):
    target = Recorder(Retry("busy", retry_after=0.3), Failed("HTTP 400: nope"))
    dispatcher = Dispatcher(outbox, Routing(SETTINGS, {"chat": ClientRoute(target, max_in_flight=1)}, {0: hook(0)}))
    ids = await accept(outbox, dispatcher, 2)
    await wait_until(lambda: len(target.sent) == 3)
    assert target.sent[1][0] - target.sent[0][0] >= 0.29
    # the retried delivery keeps its place at the head: the client gets them in order
    assert [d.id for _, d in target.sent] == [ids[0], ids[0], ids[1]]
    dead = await outbox.list(state="dead")
    assert len(dead) == 1 and dead[0].id == ids[0] and dead[0].last_error == "HTTP 400: nope" and dead[0].attempts == 2
    await _drained_pending(outbox)
    await run(dispatcher)


async def _drained_pending(outbox: Outbox) -> None:
    deadline = time.monotonic() + 5
    while await outbox.list(state="pending"):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)


class FakeClock:
    """Unix time that a test moves forward in jumps (``clock.now += 3600``); between jumps it
    runs at the real pace, so short backoffs still pass by themselves."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._offset = start - time.monotonic()

    @property
    def now(self) -> float:
        return time.monotonic() + self._offset

    @now.setter
    def now(self, value: float) -> None:
        self._offset = value - time.monotonic()

    def __call__(self) -> float:
        return self.now


async def test_deliveries_past_max_age_become_dead_letters(outbox):
    clock = FakeClock()

    class Down(Recorder):
        async def deliver(self, delivery: Delivery) -> Outcome:
            await super().deliver(delivery)
            clock.now += 60  # each try takes a minute of the injected clock
            return Retry("down")

    target = Down()
    settings = DeliverySettings(backoff_base=0.01, backoff_max=0.02, max_age=150)
    dispatcher = Dispatcher(outbox, Routing(settings, {"chat": ClientRoute(target)}, {0: hook(0)}), clock=clock)
    [row_id] = await accept_at(outbox, dispatcher, clock.now, 1)
    await wait_until_async(lambda: outbox.list(state="dead"))
    [dead] = await outbox.list(state="dead")
    assert dead.id == row_id
    # tries at 0 and 60 s; the one at 120 s would retry past 150 s: it is the last
    assert len(target.sent) == 3 and dead.attempts == 3
    assert dead.last_error == "gave up after 3 attempts over 3m (delivery.max_age): down"
    await run(dispatcher)


async def accept_at(outbox: Outbox, dispatcher: Dispatcher, now: float, n: int, client: str = "chat") -> list[str]:
    body = sample_events("SettingValueChanged")[0].to_json()
    rows = [NewDelivery(f"{client}-{i:04d}", client, "SettingValueChanged", body, 0, now) for i in range(n)]
    await outbox.accept(rows)
    dispatcher.schedule((r.id, r.client, now) for r in rows)
    return [r.id for r in rows]


async def wait_until_async(check, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while not (result := await check()):
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)
    return result


class Switchable(Recorder):
    """A target that is down (Retry) until ``up`` is set; counts concurrent sends."""

    def __init__(self) -> None:
        super().__init__()
        self.up = False
        self.running = 0
        self.peak_while_down = 0
        self.delivered: list[str] = []

    async def deliver(self, delivery: Delivery) -> Outcome:
        self.running += 1
        try:
            await asyncio.sleep(0)  # let other sends start, if the lane allowed them
            self.sent.append((time.monotonic(), delivery))
            if not self.up:
                self.peak_while_down = max(self.peak_while_down, self.running)
                return Retry("HTTP 503: down")
            self.delivered.append(delivery.id)
            return Delivered()
        finally:
            self.running -= 1


class Watcher(DeliveryObserver):
    def __init__(self) -> None:
        self.circuits: list[tuple[str, bool]] = []

    def circuit(self, client: str, is_open: bool, failures: int) -> None:
        if not self.circuits or self.circuits[-1] != (client, is_open):
            self.circuits.append((client, is_open))


async def test_an_outage_costs_one_probe_at_a_time_and_the_backlog_drains_in_order(outbox):
    target = Switchable()
    settings = DeliverySettings(backoff_base=0.005, backoff_max=0.01, circuit_open_after=3)
    watcher = Watcher()
    dispatcher = Dispatcher(outbox, Routing(settings, {"chat": ClientRoute(target, max_in_flight=4)}, {0: hook(0)}), watcher)
    ids = await accept_at(outbox, dispatcher, time.time(), 200)
    await wait_until(lambda: len(target.sent) >= 30, what="probes while down")
    assert watcher.circuits == [("chat", True)]
    assert dispatcher.health()["chat"].state == "open"
    # an open circuit sends one probe at a time, always the oldest delivery; the rest wait
    opened_at = next(i for i, (_, d) in enumerate(target.sent) if i >= 3)
    probes = [d.id for _, d in target.sent[opened_at + 3 :]]
    assert set(probes) == {ids[0]}, "only the head of the lane is tried while the circuit is open"
    target.up = True
    await wait_until(lambda: len(target.delivered) == 200, what="the drain")
    assert target.delivered[:1] == [ids[0]] and sorted(target.delivered) == ids
    assert watcher.circuits == [("chat", True), ("chat", False)]
    assert dispatcher.health()["chat"].state == "closed"
    await _drained(outbox)
    await run(dispatcher)


async def test_order_is_kept_across_failures_with_one_in_flight(outbox):
    outcomes = [Retry("HTTP 503"), Delivered(), Retry("HTTP 502"), Retry("timeout"), Delivered()] * 8
    target = Recorder(*outcomes)
    settings = DeliverySettings(backoff_base=0.002, backoff_max=0.005)
    dispatcher = Dispatcher(outbox, Routing(settings, {"chat": ClientRoute(target, max_in_flight=1)}, {0: hook(0)}))
    ids = await accept_at(outbox, dispatcher, time.time(), 30)
    await _drained(outbox)
    delivered: list[str] = []
    scripted = list(outcomes)
    for _, d in target.sent:
        outcome = scripted.pop(0) if scripted else Delivered()
        if isinstance(outcome, Delivered):
            delivered.append(d.id)
    assert delivered == ids, "with max_in_flight 1 the target receives the events in the order they were accepted"
    await run(dispatcher)


async def test_order_is_kept_across_a_restart(tmp_path):
    path = tmp_path / "outbox.sqlite3"
    box = Outbox(path)
    await box.open()
    body = sample_events("SettingValueChanged")[0].to_json()
    # accepted in this order; the third was retried before the restart (later next_attempt_at)
    await box.accept([NewDelivery(f"d{i}", "chat", "SettingValueChanged", body, 0, 1000.0 + i) for i in range(5)])
    await box.record_outcomes(OutcomeWrites(1010.0, retry=[("d2", 3, 99999.0, "HTTP 503")]))
    await box.close()
    box = Outbox(path)
    await box.open()
    target = Recorder()
    dispatcher = Dispatcher(box, Routing(SETTINGS, {"chat": ClientRoute(target, max_in_flight=1)}, {0: hook(0)}))
    dispatcher.schedule(await box.pending_in_order())
    await wait_until(lambda: len(target.sent) == 5)
    assert [d.id for _, d in target.sent] == ["d0", "d1", "d2", "d3", "d4"]
    assert target.sent[2][1].attempt == 4
    await run(dispatcher)
    await box.close()


class HoldCounter(Recorder):
    """Records, at each send, how many deliveries the lane holds in memory (its order index)."""

    def __init__(self, *outcomes: Outcome) -> None:
        super().__init__(*outcomes)
        self.dispatcher: Dispatcher | None = None
        self.held: list[int] = []

    async def deliver(self, delivery: Delivery) -> Outcome:
        assert self.dispatcher is not None
        self.held.append(len(self.dispatcher._lanes[delivery.client].known))  # the lane's in-memory index
        return await super().deliver(delivery)


async def test_a_backlog_beyond_a_lanes_memory_waits_in_the_store_and_goes_in_order(outbox):
    # the lane holds 10 deliveries at most; the other 25 stay in the outbox alone and are read
    # back, oldest first, as the lane drains: the receiver gets all 35, in the order accepted
    target = HoldCounter()
    dispatcher = Dispatcher(outbox, Routing(SETTINGS, {"chat": ClientRoute(target, max_in_flight=1)}, {0: hook(0)}), lane_memory=10)
    target.dispatcher = dispatcher
    body = sample_events("SettingValueChanged")[0].to_json()
    rows = [NewDelivery(f"d{i:03d}", "chat", "SettingValueChanged", body, 0, 1000.0 + i) for i in range(35)]
    await outbox.accept(rows)
    dispatcher.schedule((r.id, r.client, r.created_at) for r in rows)
    await wait_until(lambda: len(target.sent) == 35, what="all 35 sent")
    assert [d.id for _, d in target.sent] == [r.id for r in rows]
    assert max(target.held) <= 10, target.held
    await _drained(outbox)
    await run(dispatcher)


async def test_a_spilled_backlog_keeps_its_order_across_retries(outbox):
    outcomes = [Retry("HTTP 503"), Delivered(), Delivered(), Retry("timeout"), Delivered()] * 10
    target = HoldCounter(*outcomes)
    settings = DeliverySettings(backoff_base=0.002, backoff_max=0.005)
    dispatcher = Dispatcher(outbox, Routing(settings, {"chat": ClientRoute(target, max_in_flight=1)}, {0: hook(0)}), lane_memory=6)
    target.dispatcher = dispatcher
    ids = await accept_at(outbox, dispatcher, time.time(), 30)
    await _drained(outbox)
    scripted = list(outcomes)
    delivered = [d.id for _, d in target.sent if isinstance(scripted.pop(0) if scripted else Delivered(), Delivered)]
    assert delivered == ids
    assert max(target.held) <= 6
    await run(dispatcher)


async def test_a_restart_with_a_large_backlog_reads_only_the_oldest_of_each_client(tmp_path):
    from figrelay.daemon import _schedule_waiting

    box = Outbox(tmp_path / "outbox.sqlite3")
    await box.open()
    body = sample_events("SettingValueChanged")[0].to_json()
    await box.accept([NewDelivery(f"{c}{i:03d}", c, "SettingValueChanged", body, 0, 1000.0 + i) for c in ("chat", "mail") for i in range(30)])
    chat, mail = HoldCounter(), HoldCounter()
    routes = {"chat": ClientRoute(chat, max_in_flight=2), "mail": ClientRoute(mail, max_in_flight=1)}
    dispatcher = Dispatcher(box, Routing(SETTINGS, routes, {0: hook(0)}), lane_memory=8)
    chat.dispatcher = mail.dispatcher = dispatcher
    assert await _schedule_waiting(box, dispatcher) == {"chat": 30, "mail": 30}
    await wait_until(lambda: len(chat.sent) == 30 and len(mail.sent) == 30, what="both backlogs drained")
    assert [d.id for _, d in mail.sent] == [f"mail{i:03d}" for i in range(30)]
    assert sorted(d.id for _, d in chat.sent) == [f"chat{i:03d}" for i in range(30)]
    assert max(chat.held + mail.held) <= 8
    await run(dispatcher)
    await box.close()


async def test_a_dead_letter_does_not_block_the_ones_behind_it(outbox):
    target = Recorder(Failed("HTTP 400: bad"), Delivered(), Failed("HTTP 404"), Delivered())
    dispatcher = Dispatcher(outbox, Routing(SETTINGS, {"chat": ClientRoute(target, max_in_flight=1)}, {0: hook(0)}))
    ids = await accept_at(outbox, dispatcher, time.time(), 4)
    await wait_until(lambda: len(target.sent) == 4)
    assert [d.id for _, d in target.sent] == ids
    assert sorted(r.id for r in await outbox.list(state="dead")) == [ids[0], ids[2]]
    await run(dispatcher)


async def test_deliveries_waiting_behind_an_open_circuit_expire_without_attempts(outbox):
    clock = FakeClock()
    target = Switchable()
    settings = DeliverySettings(backoff_base=0.005, backoff_max=0.01, circuit_open_after=2, max_age=3600)
    dispatcher = Dispatcher(outbox, Routing(settings, {"chat": ClientRoute(target, max_in_flight=1)}, {0: hook(0)}), clock=clock)
    old = await accept_at(outbox, dispatcher, clock.now, 3)
    await wait_until(lambda: len(target.sent) >= 3 and dispatcher.health()["chat"].state == "open")
    clock.now += 1800
    body = sample_events("SettingValueChanged")[0].to_json()
    await outbox.accept([NewDelivery("young", "chat", "SettingValueChanged", body, 0, clock.now)])
    dispatcher.schedule([("young", "chat", clock.now)])
    clock.now += 1801  # the first three are past max_age now; "young" is not
    dead = await wait_until_async(lambda: _dead_ids(outbox, 3))
    assert set(old) <= set(dead)
    tried = {d.id for _, d in target.sent}
    assert not tried & set(old[1:]), "deliveries behind the probe were never tried"
    [waiting_reason] = {r.last_error for r in await outbox.list(state="dead") if r.id in old[1:]}
    assert "waiting (delivery.max_age): client 'chat' has been failing: HTTP 503: down" in waiting_reason
    target.up = True
    await wait_until(lambda: "young" in target.delivered)
    await run(dispatcher)


async def _dead_ids(outbox: Outbox, n: int) -> list[str] | None:
    dead = [r.id for r in await outbox.list(state="dead")]
    return dead if len(dead) >= n else None


class FlakyStore(Outbox):
    """An outbox whose outcome writes fail until ``healthy`` is set (a full disk)."""

    healthy = True
    failed_writes = 0

    async def record_outcomes(self, outcomes):
        if not self.healthy:
            self.failed_writes += 1
            raise OutboxError("database or disk is full")
        await super().record_outcomes(outcomes)


async def test_when_outcomes_cannot_be_recorded_sending_stops_until_they_can(tmp_path):
    store = FlakyStore(tmp_path / "outbox.sqlite3")
    await store.open()
    store.healthy = False
    target = Recorder()
    watcher = PauseWatcher()
    dispatcher = Dispatcher(store, Routing(SETTINGS, {"chat": ClientRoute(target, max_in_flight=1)}, {0: hook(0)}), watcher, store_retry=(0.01, 0.02))
    ids = await accept_at(store, dispatcher, time.time(), 5)
    await wait_until(lambda: store.failed_writes >= 5, what="the outcome to be written again, with backoff")
    # the first delivery went out once; its success could not be written, so nothing else went
    assert [d.id for _, d in target.sent] == [ids[0]]
    assert dispatcher.store_error == "database or disk is full" and watcher.paused == [True]
    store.healthy = True
    await wait_until(lambda: len(target.sent) == 5)
    assert [d.id for _, d in target.sent] == ids, "each delivery was sent once"
    await _drained(store)
    assert dispatcher.store_error is None and watcher.paused == [True, False]
    await run(dispatcher)
    await store.close()


class PauseWatcher(DeliveryObserver):
    def __init__(self) -> None:
        self.paused: list[bool] = []

    def sending_paused(self, paused: bool) -> None:
        self.paused.append(paused)


async def test_a_removed_client_s_deliveries_wait_and_resume_when_it_returns(outbox):
    gate, started = asyncio.Event(), asyncio.Event()

    class Held(Recorder):
        async def deliver(self, delivery: Delivery) -> Outcome:
            started.set()
            await gate.wait()
            return await super().deliver(delivery)

    target = Held()
    routing = Routing(SETTINGS, {"chat": ClientRoute(target, max_in_flight=1)}, {0: hook(0)})
    dispatcher = Dispatcher(outbox, routing)
    ids = await accept_at(outbox, dispatcher, time.time(), 3)
    await started.wait()
    dispatcher.set_routing(Routing(SETTINGS, {}, {}))
    gate.set()
    await wait_until(lambda: len(target.sent) == 1)  # the one in flight finishes normally

    async def only_the_rest_pending() -> bool:
        return [r.id for r in await outbox.list(state="pending")] == ids[1:]

    await wait_until_async(only_the_rest_pending)
    assert not await outbox.list(state="dead")
    dispatcher.set_routing(routing)
    dispatcher.schedule(await outbox.pending_in_order("chat"))
    await wait_until(lambda: len(target.sent) == 3)
    assert [d.id for _, d in target.sent] == ids
    await run(dispatcher)


async def test_a_raising_or_hanging_plugin_is_retried(outbox):
    calls = 0

    class Flaky(Recorder):
        async def deliver(self, delivery: Delivery) -> Outcome:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise RuntimeError("bug in plugin")
            if calls == 2:
                await asyncio.sleep(10)
            return await super().deliver(delivery)

    target = Flaky()
    settings = DeliverySettings(backoff_base=0.01, backoff_max=0.02, attempt_timeout=0.2)
    dispatcher = Dispatcher(outbox, Routing(settings, {"chat": ClientRoute(target)}, {0: hook(0)}))
    await accept(outbox, dispatcher, 1)
    await wait_until(lambda: len(target.sent) == 1)
    assert calls == 3
    await run(dispatcher)


def test_backoff_is_full_jitter_capped_and_honours_retry_after():
    settings = DeliverySettings(backoff_base=2, backoff_max=60)
    assert backoff_delay(1, settings, None, rng=lambda lo, hi: hi) == 4
    assert backoff_delay(10, settings, None, rng=lambda lo, hi: hi) == 60
    assert backoff_delay(1, settings, None, rng=lambda lo, hi: lo) == 0
    assert backoff_delay(1, settings, 30, rng=lambda lo, hi: lo) == 30
    assert backoff_delay(1, settings, 600, rng=lambda lo, hi: lo) == 600  # honoured past backoff_max ...
    assert backoff_delay(1, settings, 86400, rng=lambda lo, hi: lo) == 3600  # ... up to an hour


def test_severity_order():
    assert max([Severity.GOOD, Severity.CRITICAL, Severity.INFO]) is Severity.CRITICAL


async def test_a_burst_larger_than_max_batch_goes_as_several_paced_digests(outbox):
    target = Recorder(Retry("HTTP 503"))  # the first part fails once: only its rows wait
    routing = Routing(SETTINGS, {"chat": ClientRoute(target, coalesce=0.3, min_interval=0.05, renders_messages=True, max_batch=25)}, {0: hook(0)})
    dispatcher = Dispatcher(outbox, routing)
    ids = await accept(outbox, dispatcher, 60, schedule=False)
    dispatcher.schedule((i, "chat", time.time()) for i in ids)  # one burst: one group of 60
    await _drained(outbox)
    sizes = [len(d.deliveries) for _, d in target.sent]
    assert sizes == [25, 25, 25, 10], sizes
    assert [d.id for d in target.sent[0][1].deliveries] == [d.id for d in target.sent[1][1].deliveries] == ids[:25]
    assert [x.id for _, d in target.sent[1:] for x in d.deliveries] == ids, "every event, in order, none left out"
    assert all(b[0] - a[0] >= 0.045 for a, b in zip(target.sent, target.sent[1:], strict=False)), "paced like any send"
    await run(dispatcher)


async def test_rows_handed_over_by_the_intake_are_sent_without_reading_them_back(outbox):
    """The intake hands over the rows it just stored, with their events: they go without a read
    and a parse; a row the dispatcher was not handed (a restart, a revived dead letter) is read."""
    target = Recorder()
    dispatcher = Dispatcher(outbox, Routing(SETTINGS, {"chat": ClientRoute(target, max_in_flight=1)}, {0: hook(0)}))
    reads: list[list[str]] = []
    real_fetch = outbox.fetch

    async def counting_fetch(ids):
        reads.append(list(ids))
        return await real_fetch(ids)

    outbox.fetch = counting_fetch
    event = sample_events("SettingValueChanged")[0]
    now = time.time()
    handed = NewDelivery("handed", "chat", "SettingValueChanged", event.to_json(), 0, now)
    other = NewDelivery("not-handed", "chat", "SettingValueChanged", event.to_json(), 0, now + 1)
    await outbox.accept([handed, other])
    dispatcher.schedule([(handed.id, "chat", now), (other.id, "chat", now + 1)], {handed.id: (handed, event)})
    await wait_until(lambda: len(target.sent) == 2)
    assert [d.id for _, d in target.sent] == ["handed", "not-handed"]
    assert target.sent[0][1].event is event and target.sent[0][1].body == handed.body
    assert reads == [["not-handed"]]
    await wait_until(lambda: not dispatcher.pending().get("chat"))
    assert await outbox.list() == [], "both recorded delivered"
    await run(dispatcher)


async def test_a_lane_remembers_nothing_per_delivery_once_it_is_sent(outbox):
    """A long run must not grow the dispatcher: a lane that does not coalesce keeps no trace of
    the deliveries it sent (it once kept the time of each, for ever)."""
    target = Recorder()
    dispatcher = Dispatcher(outbox, Routing(SETTINGS, {"chat": ClientRoute(target, max_in_flight=4)}, {0: hook(0)}))
    await accept(outbox, dispatcher, 200)
    await wait_until(lambda: len(target.sent) == 200)
    await wait_until(lambda: not dispatcher.pending().get("chat"))
    lane = dispatcher._lanes["chat"]
    assert lane.last_sent == {} and lane.known == {} and dispatcher._loaded == {}
    await run(dispatcher)
