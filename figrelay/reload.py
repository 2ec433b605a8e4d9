"""The live configuration and its reloads (file change or SIGHUP).

A reload reads and fully validates the file (plugin options included) and indexes its hooks (a
new ``Rules``, whose match caches start empty) off the event loop, so the intake keeps answering
with the running configuration meanwhile; it then opens targets for new or changed clients on the
loop (plugins' targets belong to it), and swaps one reference: an event is matched against the old
configuration or the new one, never a mix. An invalid file is logged with every error and the
running configuration stays; a later good file is picked up as usual.

A change of the file is applied only once the file has stopped changing for a quiet period
(``FIGRELAY_RELOAD_QUIET_PERIOD``, 1s by default): a tool that writes the file in place, in
several writes, would otherwise have its half-written file read and applied. Renaming a complete
file into place is the safe way to write it. SIGHUP and ``POST /-/reload`` read the file at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import aiohttp

from .auth import SecretChecker
from .config import Config, ConfigError, Problem, load_config
from .delivery import Target
from .durations import parse_duration
from .plugins import PluginRegistry, client_context
from .rules import Rules
from .wording import plural

log = logging.getLogger("figrelay.reload")

T = TypeVar("T")


@dataclass(frozen=True)
class LiveConfig:
    """Everything derived from one configuration file, built once per (re)load."""

    config: Config
    rules: Rules
    checker: SecretChecker
    targets: Mapping[str, Target]
    generation: int
    digest: str


@dataclass(frozen=True, slots=True)
class ReloadResult:
    applied: bool
    reason: str
    problems: tuple[Problem, ...] = ()
    removed_clients: tuple[str, ...] = ()
    summary: str = ""


SwapListener = Callable[[LiveConfig, LiveConfig | None, tuple[str, ...]], object]


@dataclass
class ConfigHolder:
    path: Path
    registry: PluginRegistry
    http: aiohttp.ClientSession
    listeners: list[SwapListener] = field(default_factory=list)
    reload_started: list[Callable[[], object]] = field(default_factory=list)
    reload_finished: list[Callable[[ReloadResult], object]] = field(default_factory=list)
    _current: LiveConfig | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _closing: set[asyncio.Task[None]] = field(default_factory=set)
    last_reload_ok: bool = True
    _seen_digest: str = ""
    _in_effect: dict[str, object] = field(default_factory=dict)
    """The values of the keys a reload cannot change (bound at start), to compare reloads with."""
    _told: dict[str, object] = field(default_factory=dict)
    """Per key, the differing value the log last warned about, so that it is told once."""

    @property
    def loaded(self) -> bool:
        return self._current is not None

    @property
    def current(self) -> LiveConfig:
        assert self._current is not None, "the configuration is not loaded yet"
        return self._current

    async def load(self) -> LiveConfig:
        """The first load; raises ConfigError."""
        async with self._lock:
            config, digest, rules = await asyncio.to_thread(self._read)
            live = self._build(config, digest, rules, None)
            self._swap(live, None)
            self._in_effect = {key: getattr(config, key) for key in RESTART_KEYS}
            return live

    def _read(self) -> tuple[Config, str, Rules]:
        """In a thread: read, validate (plugin options included) and index the file, all of which
        is plain computation on new objects; opening targets is left to the event loop."""
        try:
            digest = hashlib.sha256(self.path.read_bytes()).hexdigest()
        except OSError:
            digest = ""
        self._seen_digest = digest  # even when invalid: the same bad bytes are not reloaded again
        config = load_config(self.path, self.registry)
        return config, digest, Rules(config.hooks, config.intake.regex_timeout)

    def file_changed(self) -> bool:
        """Blocking: whether the file's bytes differ from those last applied or rejected."""
        try:
            digest = hashlib.sha256(self.path.read_bytes()).hexdigest()
        except OSError:
            return True
        return digest != self._seen_digest

    async def reload(self, reason: str) -> ReloadResult:
        async with self._lock:
            for started in self.reload_started:
                started()
            result = await self._reload(reason)
            for finished in self.reload_finished:
                finished(result)
            return result

    async def _reload(self, reason: str) -> ReloadResult:
        old = self.current
        try:
            config, digest, rules = await _sharing_the_gil(self._read)
            live = self._build(config, digest, rules, old)
        except ConfigError as exc:
            self.last_reload_ok = False
            log.error(
                # one line per problem from the template itself: the log escapes line breaks in arguments
                "reload (%s) rejected; still serving the previous configuration. Problems:" + "\n  %s" * len(exc.problems),
                reason, *exc.problems,
            )
            return ReloadResult(False, reason, tuple(exc.problems))
        removed = tuple(sorted(set(old.config.clients) - set(config.clients)))
        was_bad = not self.last_reload_ok
        self._swap(live, old)
        self.last_reload_ok = True
        self._warn_restart_keys(config, reason)
        note = " (the file is valid again)" if was_bad else ""
        log.info("reload (%s) applied%s: %s", reason, note, _counts(config))
        return ReloadResult(True, reason, (), removed, config.summary())

    def _warn_restart_keys(self, config: Config, reason: str) -> None:
        """Warn once when the file newly asks for a value that only a restart applies. Compared
        with the values in effect, not with the last file: a file restored to them says nothing."""
        for key, running in self._in_effect.items():
            wanted = getattr(config, key)
            if wanted == running:
                self._told.pop(key, None)
            elif self._told.get(key) != wanted:
                self._told[key] = wanted
                log.warning(
                    "reload (%s): '%s' changed to %s; restart figrelay to apply it (still using %s)",
                    reason, key, _shown(wanted), _shown(running),
                )

    def _build(self, config: Config, digest: str, rules: Rules, old: LiveConfig | None) -> LiveConfig:
        targets: dict[str, Target] = {}
        problems: list[Problem] = []
        for name, client in config.clients.items():
            previous = old.config.clients.get(name) if old else None
            if old is not None and previous is not None and previous.fingerprint == client.fingerprint:
                targets[name] = old.targets[name]
                continue
            client_type = self.registry.client_types[client.type]
            context = client_context(config, name, self.http)
            try:
                targets[name] = client_type.open(context)
            except Exception as exc:
                problems.append(Problem(str(config.path), None, f"clients.{name}", f"the {client.type!r} plugin cannot open it: {type(exc).__name__}: {exc}"))
        if problems:
            for name, target in targets.items():
                if old is None or old.targets.get(name) is not target:
                    self._close_later(target, 0)
            raise ConfigError(problems)
        intake = config.intake
        secret = intake.secret.get_secret_value() if intake.secret else None
        hashed = intake.hashed_secret.get_secret_value() if intake.hashed_secret else None
        checker = old.checker if old is not None and old.checker.same_as(secret, hashed) else SecretChecker(secret, hashed)
        generation = old.generation + 1 if old else 1
        self._seen_digest = digest
        # a new Rules, with empty caches: what the old hooks matched says nothing of the new ones
        return LiveConfig(config, rules, checker, targets, generation, digest)

    def _swap(self, live: LiveConfig, old: LiveConfig | None) -> None:
        self._current = live
        removed = tuple(sorted(set(old.config.clients) - set(live.config.clients))) if old else ()
        for listener in self.listeners:
            listener(live, old, removed)
        if old is not None:
            kept = {id(t) for t in live.targets.values()}
            for target in old.targets.values():
                if id(target) not in kept:
                    # deliveries already in flight may still be using it
                    self._close_later(target, old.config.delivery.attempt_timeout)

    def _close_later(self, target: Target, delay: float) -> None:
        async def close() -> None:
            try:
                if delay:
                    await asyncio.sleep(delay)
            finally:
                try:
                    await target.aclose()
                except Exception:
                    log.exception("closing a replaced target failed")

        task = asyncio.get_running_loop().create_task(close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        """Close every target, including those waiting to close after a reload."""
        for task in list(self._closing):
            task.cancel()
        await asyncio.gather(*self._closing, return_exceptions=True)
        if self._current is not None:
            for target in self._current.targets.values():
                try:
                    await target.aclose()
                except Exception:
                    log.exception("closing a target failed")


RESTART_KEYS = ("listen", "state_dir")
"""Keys bound at start: a reload logs that they changed but keeps the values in effect."""


RELOAD_SWITCH_INTERVAL = 0.0005
"""Seconds the reading thread of a reload may hold the GIL while the event loop waits for it
(Python's default is 5 ms). Reading a large file is seconds of Python: at 5 ms a turn, every
system call the loop makes costs it up to 5 ms, and an event's answer took over 400 ms during the
reload of a 10,000-hook file."""


async def _sharing_the_gil(read: Callable[[], T]) -> T:
    """``read()`` in a thread, the GIL handed back to the event loop every RELOAD_SWITCH_INTERVAL."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(min(before, RELOAD_SWITCH_INTERVAL))
    try:
        return await asyncio.to_thread(read)
    finally:
        sys.setswitchinterval(before)


def _shown(value: object) -> str:
    if isinstance(value, tuple):
        return ", ".join(str(v) for v in value)
    return str(value)


def _counts(config: Config) -> str:
    return f"{plural(len(config.clients), 'client')}, {plural(len(config.hooks), 'hook')}"


# --- waiting for a file to be written whole -----------------------------------------------------

QUIET_PERIOD = 1.0
"""Seconds a changed file must stay unchanged before it is reloaded."""
QUIET_PERIOD_ENV = "FIGRELAY_RELOAD_QUIET_PERIOD"

FileState = tuple[int, int, str]
"""(size, mtime_ns, sha256) of a file."""


def quiet_period() -> float:
    """The quiet period: $FIGRELAY_RELOAD_QUIET_PERIOD (a duration such as 2s), or 1s."""
    text = os.environ.get(QUIET_PERIOD_ENV)
    if not text:
        return QUIET_PERIOD
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise ValueError(f"{QUIET_PERIOD_ENV}: {exc}") from None


def file_state(path: Path) -> FileState | None:
    """Blocking: the file's size, modification time and content digest, or None when it cannot be
    read (for a moment during a rename, say). The digest catches a rewrite of the same size
    within the file system's timestamp granularity."""
    try:
        with open(path, "rb") as f:
            stat = os.fstat(f.fileno())
            data = f.read()
    except OSError:
        return None
    return (stat.st_size, stat.st_mtime_ns, hashlib.sha256(data).hexdigest())


async def wait_for_quiet(
    read: Callable[[], T],
    quiet: float,
    *,
    step: float = 0.1,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    changed: Callable[[T], object] = lambda state: None,
) -> T:
    """Read a state (in a thread) every ``step`` seconds until it has stayed the same for ``quiet``
    seconds, and return it. ``changed`` hears the first state and each new one."""
    state = await asyncio.to_thread(read)
    changed(state)
    since = clock()
    while (left := quiet - (clock() - since)) > 0:
        await sleep(min(step, left))
        now = await asyncio.to_thread(read)
        if now != state:
            state, since = now, clock()
            changed(state)
    return state


async def watch_config(holder: ConfigHolder, ignore: Callable[[Path], bool] = lambda p: False, quiet: float | None = None) -> None:
    """Reload whenever the file's content changes, once it has stopped changing for ``quiet``
    seconds (default: ``quiet_period()``). Watches the folder, not the file, so editors that write
    a new file and rename it over the old one (and Kubernetes' symlink swaps) count."""
    import watchfiles

    if quiet is None:
        try:
            quiet = quiet_period()
        except ValueError as exc:
            log.error("%s; using %gs", exc, QUIET_PERIOD)
            quiet = QUIET_PERIOD
    wait = quiet

    def seen(state: FileState | None) -> None:
        what = f"{state[0]} bytes" if state is not None else "unreadable for now"
        log.debug("%s changed (%s); reloading once it has not changed for %gs", holder.path, what, wait)

    folder = holder.path.parent.resolve()
    name = holder.path.name

    def relevant(change: watchfiles.Change, changed: str) -> bool:
        path = Path(changed)
        return not ignore(path) and (path.name == name or path.name.startswith(".."))

    try:
        async for _changes in watchfiles.awatch(folder, watch_filter=relevant, debounce=200, step=50, recursive=False):
            await wait_for_quiet(lambda: file_state(holder.path), wait, changed=seen)
            if await asyncio.to_thread(holder.file_changed):
                await holder.reload("file changed")
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # e.g. inotify watches exhausted: reloads still work through SIGHUP
        log.error("cannot watch %s for changes (%s: %s); reload with SIGHUP instead", folder, type(exc).__name__, exc)
