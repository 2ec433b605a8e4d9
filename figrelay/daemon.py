"""Wiring and lifecycle of the daemon: start, serve, reload on SIGHUP, stop gracefully.

Start: plugins, configuration (refusing to start on an invalid one), outbox, sessions, targets,
dispatcher (resuming what was pending), then the listeners. Stop (SIGTERM/SIGINT): close the
listeners and finish the requests in progress, give deliveries in flight
``delivery.shutdown_timeout`` to finish, keep the rest pending for the next start.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import stat
import time
from collections.abc import Callable, Coroutine, Iterable
from pathlib import Path

import aiohttp

from . import __version__
from .config import ConfigError, Listener
from .connections import KEEPALIVE_TIMEOUT, ConnectionGate, IntakeSite
from .dispatch import LANE_MEMORY, ClientRoute, Dispatcher, Routing
from .intake import Intake
from .lanes import LaneKeeper
from .logs import redactor
from .metrics import Metrics
from .plugins import PluginRegistry
from .reload import ConfigHolder, LiveConfig, watch_config
from .server import IntakeRunner, create_app
from .sizes import format_size
from .storage import OutboxError, Store
from .storage.postgresql_store import PostgresStore
from .storage.sqlite import Outbox
from .systemd import Notifier, inherited_sockets
from .wording import plural

log = logging.getLogger("figrelay")

OUTBOX_FILE = "outbox.sqlite3"
"""The SQLite back end's file in ``state_dir`` (also read by ``figrelay deliveries``, ``events``, ``trace``)."""


class StartupError(Exception):
    """The daemon cannot start; the message says why and what to do."""


def routing_of(live: LiveConfig) -> Routing:
    clients = {
        name: ClientRoute(live.targets[name], c.max_in_flight, c.min_interval, c.coalesce, c.renders_messages, c.templates, c.max_batch)
        for name, c in live.config.clients.items()
    }
    return Routing(live.config.delivery, clients, {hook.index: hook for hook in live.config.hooks})


def bind(listener: Listener) -> socket.socket:
    try:
        if listener.unix_path is not None:
            path = Path(listener.unix_path)
            if path.exists() and stat.S_ISSOCK(path.stat().st_mode):
                path.unlink()  # a stale socket from a previous run
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.bind(str(path))
            os.chmod(path, 0o660)
        else:
            family = socket.AF_INET6 if ":" in (listener.host or "") else socket.AF_INET
            sock = socket.create_server((listener.host or "0.0.0.0", listener.port or 0), family=family, backlog=1024)
    except OSError as exc:
        raise StartupError(f"cannot listen on {listener}: {exc.strerror or exc}") from None
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def describe(sock: socket.socket) -> str:
    if sock.family == socket.AF_UNIX:
        return f"unix:{sock.getsockname()}"
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def _watch_outbox(outbox: Outbox, dispatcher: Dispatcher, every: float = 1.0) -> None:
    """Pick up deliveries another process revived (``figrelay deliveries retry``): SQLite's
    data_version changes exactly when another connection commits."""
    # SQLite-specific (typed against the SQLite Outbox, not Store): the PostgreSQL back end will
    # hear other processes' commits through LISTEN/NOTIFY instead of polling data_version.
    version = await outbox.data_version()
    while True:
        await asyncio.sleep(every)
        try:
            now = await outbox.data_version()
            if now == version:
                continue
            version = now
            await _schedule_waiting(outbox, dispatcher)
        except Exception as exc:
            log.error("cannot check the outbox for outside changes: %s", exc)


async def _schedule_waiting(outbox: Store, dispatcher: Dispatcher, clients: Iterable[str] | None = None) -> dict[str, int]:
    """Hand the dispatcher the oldest pending deliveries of each client (of ``clients``), at most
    LANE_MEMORY of each: it reads the rest back as its lanes drain. Returns the number pending
    for each client that has some."""
    wanted = None if clients is None else set(clients)
    counts = {c: pending for c, (pending, _, _) in (await outbox.stats()).items() if pending and (wanted is None or c in wanted)}
    for client, pending in counts.items():
        rows = await outbox.pending_in_order(client, limit=LANE_MEMORY)
        dispatcher.schedule(rows, more=len(rows) < pending)
    return counts


async def _expire_waiting(outbox: Store, holder: ConfigHolder, every: float = 60.0) -> None:
    """Deliveries of a client that a reload removed wait for its return, but not for ever:
    past ``delivery.max_age`` they become dead letters, as they would have while failing."""
    while True:
        try:
            config = holder.current.config
            waiting = [c for c, (pending, _, _) in (await outbox.stats()).items() if pending and c not in config.clients]
            if waiting:
                reason = "gave up waiting for the removed client's return (delivery.max_age)"
                expired = await outbox.expire_waiting(waiting, config.delivery.max_age, time.time(), reason)
                if expired:
                    log.warning(
                        "%s waiting for removed clients (%s) now dead letters: %s",
                        plural(len(expired), "delivery", "deliveries"), ", ".join(waiting), reason,
                    )
        except Exception as exc:
            log.error("cannot expire deliveries waiting for removed clients: %s", exc)
        await asyncio.sleep(every)


JOURNAL_PRUNE_FIRST = 5.0
"""Seconds after start of the first pruning pass: after the start's own work (resuming pending
deliveries), soon enough that a journal left too large by a lowered limit shrinks at once."""
JOURNAL_PRUNE_EVERY = 60.0


JOURNAL_SIZE_CHECK_EVERY = 5.0
"""Seconds between two measurements of the journal's size between passes: a journal past
``journal.max_bytes`` is pruned then, not up to a minute later (at 2,000 events a second a
minute's events take over 100 MB)."""


async def _prune_journal(
    outbox: Store, holder: ConfigHolder, metrics: Metrics, every: float = JOURNAL_PRUNE_EVERY, first: float = JOURNAL_PRUNE_FIRST,
    clock: Callable[[], float] = time.time, check: float = JOURNAL_SIZE_CHECK_EVERY,
) -> None:
    """Keep the journal within ``journal.retention`` and ``journal.max_bytes``, and empty it while
    ``journal.enabled`` is off: one pass shortly after start, then one a minute, each with the
    settings in force then, and one as soon as a measurement (every ``check`` seconds, cheap: see
    ``journal.stats``) finds the journal past ``max_bytes``. A pass deletes in small
    transactions between the intake's and the dispatcher's writes (``Outbox.prune_journal``).
    Logs when the size limit, rather than the retention, starts or stops deciding what is kept,
    and when the limit cannot be kept."""
    await asyncio.sleep(first)
    size_bound = False
    over_limit = False
    last_pass: float | None = None
    while True:
        try:
            if not outbox.health.writable:  # a full disk: the outbox reports it, and retries by itself
                await asyncio.sleep(min(every, check))
                continue
            settings = holder.current.config.journal
            if last_pass is not None and time.monotonic() - last_pass < every:
                # between passes: measure, and prune early only when past the limit (and the last
                # pass could keep it: when every event left waits for its deliveries, a pass now
                # would walk the whole journal to delete nothing)
                if not settings.enabled or over_limit:
                    await asyncio.sleep(check)
                    continue
                measured = await outbox.journal_stats()
                metrics.set_journal(measured)
                if measured.bytes <= settings.max_bytes:
                    await asyncio.sleep(check)
                    continue
            last_pass = time.monotonic()
            pruned = await outbox.prune_journal(now=clock(), retention=settings.retention, max_bytes=settings.max_bytes)
            metrics.record_journal_pruning(pruned)
            stats = pruned.stats
            if stats is None:
                if pruned.by_age:
                    log.info("journal.enabled is false: removed %s from the journal", plural(pruned.by_age, "event"))
            else:
                log.debug(
                    "pruned the journal: %d events by age, %d by size (%d batches); it takes %s now",
                    pruned.by_age, pruned.by_size, pruned.batches, format_size(stats.bytes, exact=False),
                )
                if pruned.by_size and not size_bound and stats.oldest_event is not None:
                    log.info(
                        "the journal reached journal.max_bytes (%s): it keeps the events of the last %s, less than journal.retention (%s); "
                        "raise max_bytes to keep more", format_size(settings.max_bytes), _span(clock() - stats.oldest_event), _span(settings.retention),
                    )
                elif not pruned.by_size and size_bound and pruned.by_age:
                    log.info("the journal is within journal.max_bytes again: it keeps journal.retention (%s) of events", _span(settings.retention))
                size_bound = bool(pruned.by_size) or (size_bound and not pruned.by_age)
                over = stats.bytes > settings.max_bytes
                if over and not over_limit:
                    log.warning(
                        "the journal takes %s, more than journal.max_bytes (%s), and the events left all have deliveries still in the outbox "
                        "(pending, or dead letters): each goes once its deliveries are delivered or purged ('figrelay deliveries')",
                        format_size(stats.bytes, exact=False), format_size(settings.max_bytes),
                    )
                over_limit = over
        except Exception as exc:
            log.error("cannot prune the journal: %s; trying again in %s", exc, _span(every))
            last_pass = time.monotonic()
            await asyncio.sleep(every)
            continue
        await asyncio.sleep(min(every, check))


_SPAN_UNITS = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))


def _span(seconds: float) -> str:
    """A duration as the configuration writes it, in its largest unit and the next: 45s, 3h12m,
    6d23h, 7d (the next left out when 0)."""
    left = max(0, round(seconds))
    for i, (unit, size) in enumerate(_SPAN_UNITS):
        if left >= size or unit == "s":
            text = f"{left // size}{unit}"
            if i + 1 < len(_SPAN_UNITS) and (rest := left % size // _SPAN_UNITS[i + 1][1]):
                text += f"{rest}{_SPAN_UNITS[i + 1][0]}"
            return text
    return "0s"


async def _watchdog(notifier: Notifier, interval: float) -> None:
    """Ping systemd's watchdog from the event loop: a wedged loop stops the pings."""
    while True:
        notifier.watchdog()
        await asyncio.sleep(interval)


async def serve(
    config_path: Path, registry: PluginRegistry, stop: asyncio.Event | None = None, log_level: str | None = None,
    accept_empty_state: bool = False,
) -> None:
    """Run until SIGTERM/SIGINT (or ``stop`` is set). Raises ConfigError or StartupError.
    ``log_level`` (the command line's) overrides the configuration's ``log_level``.
    ``accept_empty_state`` starts even when the outbox's marker shows that a store existed and
    the outbox is now missing, empty or another one (``figrelay run --accept-empty-state``)."""
    loop = asyncio.get_running_loop()
    notifier = Notifier()
    metrics = Metrics()
    metrics.plugin_failures.set(len(registry.failures))
    stop = stop or asyncio.Event()
    background: set[asyncio.Task[object]] = set()

    def spawn(coro: Coroutine[object, object, object]) -> None:
        task = loop.create_task(coro)
        background.add(task)
        task.add_done_callback(background.discard)

    ready = False
    started = time.monotonic()

    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
    connector = aiohttp.TCPConnector(limit=200, limit_per_host=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector, headers={"User-Agent": f"figrelay/{__version__}"}) as http:
        holder = ConfigHolder(config_path, registry, http)
        holder.listeners.append(lambda live, old, removed: redactor.update(live.config.secrets))
        if log_level is None:
            holder.listeners.append(lambda live, old, removed: logging.getLogger().setLevel(live.config.log_level.upper()))
        holder.reload_started.append(notifier.reloading)
        holder.reload_finished.append(lambda result: metrics.reloaded(result.applied))
        holder.reload_finished.append(lambda result: notifier.ready(f"serving {holder.current.config.summary()}"))
        live = await holder.load()
        config = live.config

        # The one place the daemon chooses its back end: SQLite in state_dir (the default), opened
        # before the listeners, or PostgreSQL shared by replicas, opened after them so that /readyz
        # can say "not ready" while the database is being waited for.
        keeper: LaneKeeper | None = None
        outbox: Store
        if config.storage is None:
            sqlite = Outbox(config.state_dir / OUTBOX_FILE)
            outbox = sqlite
            try:
                await sqlite.open(accept_empty=accept_empty_state)
            except OutboxError as exc:
                await sqlite.close()
                await holder.close()
                raise StartupError(f"{exc} (check state_dir in {config_path})") from None
        else:
            shared = PostgresStore(config.storage.target, lease=config.storage.lease, config_hash=config.digest)
            shared.on_claim = metrics.claims.inc
            outbox = shared
            holder.listeners.append(lambda live, old, removed: setattr(shared, "config_hash", live.config.digest))
        metrics.set_config_hash(config.digest)
        holder.listeners.append(lambda live, old, removed: metrics.set_config_hash(live.config.digest))
        # before the first event: the intake and dispatcher read it on every write
        outbox.journal_enabled = config.journal.enabled
        holder.listeners.append(lambda live, old, removed: setattr(outbox, "journal_enabled", live.config.journal.enabled))
        try:
            dispatcher = Dispatcher(outbox, routing_of(live), metrics, owns=lambda client: keeper is None or keeper.owns(client))
            if isinstance(outbox, PostgresStore):
                keeper = LaneKeeper(outbox, dispatcher, lambda: holder.current.config.clients, metrics)

            async def resume_returned(clients: list[str]) -> None:
                for client, pending in (await _schedule_waiting(outbox, dispatcher, clients)).items():
                    log.info("client %s is configured again: resuming its waiting %s", client, plural(pending, "delivery", "deliveries"))

            def on_swap(new: LiveConfig, old: LiveConfig | None, removed: tuple[str, ...]) -> None:
                dispatcher.set_routing(routing_of(new))
                for client in removed:
                    log.warning(
                        "client %r was removed: its pending deliveries wait for a client of that name to return "
                        "(they die after delivery.max_age; 'figrelay deliveries purge --client %s' drops them now)", client, client,
                    )
                added = [c for c in new.config.clients if old is not None and c not in old.config.clients]
                if added:
                    spawn(resume_returned(added))

            holder.listeners.append(on_swap)

            async def resume() -> None:
                """Take up the work left in the store: SQLite's pending rows (all of them are this
                process's); with PostgreSQL, the lane keeper takes lanes and their rows itself."""
                dispatcher.restore_health(await outbox.client_health())
                if keeper is not None:
                    return
                pending = await _schedule_waiting(outbox, dispatcher)
                waiting = sorted(client for client in pending if client not in config.clients)
                if pending:
                    log.info("resuming %s", plural(sum(n for c, n in pending.items() if c in config.clients), "pending delivery", "pending deliveries"))
                if waiting:
                    log.warning("deliveries of clients not in the configuration wait for them: %s", ", ".join(waiting))

            if keeper is None:
                await resume()

            intake = Intake(holder, outbox, dispatcher, metrics, announce=keeper.announce if keeper is not None else None)
            app = create_app(intake, holder, lambda: ready, outbox, metrics)
            runner = IntakeRunner(  # JSON answers and WARNING lines for malformed requests
                app, handle_signals=False, access_log=None, shutdown_timeout=config.delivery.shutdown_timeout,
                keepalive_timeout=KEEPALIVE_TIMEOUT,
            )
            await runner.setup()
            assert runner.server is not None
            # Counts the descriptors open now (outbox, HTTP client, plugins) as the baseline for
            # the open-file limit; the limits follow the configuration on reload.
            gate = ConnectionGate(runner.server, max_connections=config.intake.max_connections, header_timeout=config.intake.header_timeout)
            gate.counted = lambda reason: metrics.connections_refused.labels(reason).inc()
            metrics.connections_open.set_function(lambda: gate.open_connections)
            holder.listeners.append(
                lambda live, old, removed: gate.configure(max_connections=live.config.intake.max_connections, header_timeout=live.config.intake.header_timeout)
            )
            try:
                sockets = inherited_sockets()
                if sockets:
                    log.info("using %d socket(s) from systemd socket activation; 'listen' is not used", len(sockets))
                else:
                    sockets = [bind(listener) for listener in config.listen]
                for sock in sockets:
                    await IntakeSite(runner, sock, gate).start()
                    log.info("listening on %s", describe(sock))

                loop.add_signal_handler(signal.SIGTERM, stop.set)
                loop.add_signal_handler(signal.SIGINT, stop.set)
                loop.add_signal_handler(signal.SIGHUP, lambda: spawn(holder.reload("SIGHUP")))
                state_dir = config.state_dir.resolve()
                chores = [loop.create_task(watch_config(holder, ignore=lambda p: state_dir in p.resolve().parents or p.resolve() == state_dir))]
                if notifier.watchdog_interval:
                    chores.append(loop.create_task(_watchdog(notifier, notifier.watchdog_interval)))
                if isinstance(outbox, PostgresStore) and keeper is not None:
                    notifier.status(f"connecting to PostgreSQL at {outbox.target.address()}")
                    opening = loop.create_task(outbox.open())
                    stopped = loop.create_task(stop.wait())
                    await asyncio.wait({opening, stopped}, return_when=asyncio.FIRST_COMPLETED)
                    stopped.cancel()
                    if not opening.done():
                        opening.cancel()
                        await asyncio.gather(opening, return_exceptions=True)
                    else:
                        try:
                            opening.result()
                        except OutboxError as exc:  # a schema this release cannot use: no retry mends it
                            raise StartupError(f"{exc} (check storage in {config_path})") from None
                        await resume()
                        outbox.listen(keeper.on_work, keeper.on_reconnect)
                        chores.append(loop.create_task(keeper.run()))
                else:
                    assert isinstance(outbox, Outbox)
                    chores.append(loop.create_task(_watch_outbox(outbox, dispatcher)))
                chores += [loop.create_task(_expire_waiting(outbox, holder)), loop.create_task(_prune_journal(outbox, holder, metrics))]
                if not stop.is_set():
                    ready = True
                    notifier.ready(f"serving {config.summary()}")
                    log.info(
                        "figrelay %s ready in %.2fs: %s; %d sessions tracked",
                        __version__, time.monotonic() - started, config.summary(), await outbox.session_count(),
                    )
                await stop.wait()
                ready = False
                notifier.stopping()
                log.info("stopping: no new events; finishing requests in progress")
                for chore in chores:
                    chore.cancel()
                await asyncio.gather(*chores, return_exceptions=True)
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                    loop.remove_signal_handler(sig)
            finally:
                await runner.cleanup()
            await asyncio.gather(*background, return_exceptions=True)
            grace = holder.current.config.delivery.shutdown_timeout
            cancelled = await dispatcher.stop(grace)
            if cancelled:
                log.info("%s still in flight after %gs; they stay pending for the next start", plural(cancelled, "delivery was", "deliveries were"), grace)
            await holder.close()
        finally:
            await outbox.close()
    log.info("stopped")


__all__ = ["serve", "StartupError", "ConfigError"]
