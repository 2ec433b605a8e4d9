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
from figrelay.dispatch import ClientRoute, Dispatcher, Routing, backoff_delay
from figrelay.messages import Severity
from figrelay.outbox import NewDelivery, Outbox
from figrelay.samples import sample_events
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
    await accept(outbox, dispatcher, 2)
    await wait_until(lambda: len(target.sent) == 3)
    assert target.sent[1][0] - target.sent[0][0] >= 0.29
    dead = await outbox.list(state="dead")
    assert len(dead) == 1 and dead[0].last_error == "HTTP 400: nope" and dead[0].attempts == 1
    await _drained_pending(outbox)
    await run(dispatcher)


async def _drained_pending(outbox: Outbox) -> None:
    deadline = time.monotonic() + 5
    while await outbox.list(state="pending"):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)


async def test_deliveries_past_max_age_become_dead_letters(outbox):
    target = Recorder(*[Retry("down")] * 10)
    settings = DeliverySettings(backoff_base=0.01, backoff_max=0.02, max_age=0.1)
    dispatcher = Dispatcher(outbox, Routing(settings, {"chat": ClientRoute(target)}, {0: hook(0)}))
    await accept(outbox, dispatcher, 1)
    deadline = time.monotonic() + 5
    while not await outbox.list(state="dead"):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    [dead] = await outbox.list(state="dead")
    assert "(delivery.max_age): down" in dead.last_error and dead.attempts >= 2
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
    assert backoff_delay(1, settings, 3600, rng=lambda lo, hi: lo) == 60  # clamped to backoff_max


def test_severity_order():
    assert max([Severity.GOOD, Severity.CRITICAL, Severity.INFO]) is Severity.CRITICAL
