"""Which hooks an event matches, with Fig's filter semantics (FIG.md).

- the client regex is *searched* (``re.search``) in the setting client's name, case-sensitively;
- SettingValueChanged also searches each changed setting name; the relayed event lists only the
  matching names, in their order, and a hook with no matching name sends nothing;
- SecurityEvent ignores the client regex: every SecurityEvent hook gets every event;
- each matching hook is one delivery, even when two hooks name the same client.

Hooks with ``min_sessions`` never relay Fig's own MinRunSessions events: figrelay raises those
itself from run-session counts (sessions.py).

Matching runs on the event loop, and names come from whoever can post to Fig, so a pattern that
can backtrack gets a time budget for each event (hookregex.py): ``regex_budget`` seconds of CPU
time for the client name and all the setting names together. A hook whose budget runs out neither
sends nor drops the event: its Match carries ``timed_out``, and the intake keeps the whole event
as a dead letter for the operator to send or drop.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import regex

from .config import HookConfig
from .events import FigEvent, SettingValueChanged
from .hookregex import DEFAULT_TIME_LIMIT, HookPattern, time_limited


@dataclass(frozen=True, slots=True)
class RegexTimeout:
    """A hook's regex ran out of time on one event: whether the hook matches is unknown."""

    key: str
    """``client_regex`` or ``setting_regex``."""
    pattern: str
    budget: float

    def reason(self, delivery_id: str) -> str:
        """The dead letter's last error: what happened, and the two ways on."""
        return (
            f"{self.key} '{self.pattern}' took longer than {self.budget * 1000:g}ms on this event; matching was abandoned. "
            f"Send it anyway with `figrelay deliveries retry {delivery_id}` or drop it with `figrelay deliveries purge {delivery_id}`"
        )


@dataclass(frozen=True, slots=True)
class Match:
    hook: HookConfig
    event: FigEvent
    """The event to relay: for SettingValueChanged, narrowed to the matching setting names."""
    timed_out: RegexTimeout | None = None
    """Set when the hook's regex ran out of time: ``event`` is then the whole received event, to be
    kept as a dead letter rather than sent or dropped."""


class _OutOfTime(Exception):
    def __init__(self, timeout: RegexTimeout) -> None:
        self.timeout = timeout


@dataclass(frozen=True, slots=True)
class _Search:
    """One hook regex, ready to search: ``limited`` is None when it cannot backtrack."""

    key: str
    pattern: HookPattern
    limited: regex.Pattern[str] | None

    @classmethod
    def of(cls, key: str, pattern: HookPattern) -> _Search:
        return cls(key, pattern, time_limited(pattern))


@dataclass(frozen=True, slots=True)
class _Hook:
    hook: HookConfig
    client: _Search
    setting: _Search | None
    shared: bool
    """Whether its setting regex needs the time limit: then one event makes several limited
    searches (one per setting name), which share one budget measured by the clock."""
    limited: bool
    """Whether any of its searches needs the time limit."""


class _Budget:
    """What is left of one hook's time on one event. The clock starts at the first limited search,
    so hooks whose patterns cannot backtrack never read it (a read costs a system call)."""

    __slots__ = ("clock", "limit", "started")

    def __init__(self, limit: float, clock: Callable[[], float]) -> None:
        self.limit = limit
        self.clock = clock
        self.started: float | None = None

    def found(self, search: _Search, text: str) -> bool:
        limited = search.limited
        if limited is None:
            return search.pattern.search(text) is not None
        if self.started is None:
            self.started = self.clock()
            left = self.limit
        else:
            left = self.limit - (self.clock() - self.started)
        # never pass regex a timeout <= 0: a negative one means "no limit" to it
        if left > 0:
            try:
                return limited.search(text, timeout=left) is not None
            except TimeoutError:
                pass
        raise _OutOfTime(RegexTimeout(search.key, search.pattern.pattern, self.limit))


def _unlimited(search: _Search, text: str) -> bool:
    return search.pattern.search(text) is not None


def _once(limit: float) -> Callable[[_Search, str], bool]:
    """For a hook that makes a single limited search per event: the whole budget is that search's
    timeout, and no clock needs reading."""

    def found(search: _Search, text: str) -> bool:
        limited = search.limited
        if limited is None:
            return search.pattern.search(text) is not None
        try:
            return limited.search(text, timeout=limit) is not None
        except TimeoutError:
            raise _OutOfTime(RegexTimeout(search.key, search.pattern.pattern, limit)) from None

    return found


class Rules:
    """The hooks of one configuration, grouped by event type once at load time."""

    def __init__(
        self, hooks: Iterable[HookConfig], regex_budget: float = DEFAULT_TIME_LIMIT, clock: Callable[[], float] = time.process_time
    ) -> None:
        """``clock`` measures the budget; it must count what ``regex``'s timeout counts, the
        process's CPU time (tests inject a fake one)."""
        self._budget = regex_budget
        self._clock = clock
        self._once = _once(regex_budget)
        relay: dict[str, list[_Hook]] = {}
        thresholds: list[_Hook] = []
        for hook in hooks:
            client = _Search.of("client_regex", hook.client_regex)
            setting = _Search.of("setting_regex", hook.setting_regex) if hook.setting_regex is not None else None
            shared = setting is not None and setting.limited is not None
            entry = _Hook(hook, client, setting, shared, shared or client.limited is not None)
            if hook.min_sessions is not None:
                thresholds.append(entry)
            else:
                relay.setdefault(hook.event, []).append(entry)
        self._relay = {event: tuple(entries) for event, entries in relay.items()}
        self._thresholds = tuple(thresholds)

    @property
    def has_thresholds(self) -> bool:
        return bool(self._thresholds)

    def match(self, event: FigEvent) -> list[Match]:
        """The deliveries one received event makes, in hook order, including hooks whose regex ran
        out of time (``Match.timed_out``)."""
        entries = self._relay.get(event.route, ())
        if not entries:
            return []
        client = event.setting_client
        settings = event.updated_settings if isinstance(event, SettingValueChanged) else None
        matches: list[Match] = []
        for entry in entries:
            found = self._searcher(entry, settings is not None)
            try:
                if client is not None and not found(entry.client, client):
                    continue
                relayed = event
                if settings is not None and entry.setting is not None:
                    setting = entry.setting
                    names = tuple(name for name in settings if found(setting, name))
                    if not names:
                        continue
                    if len(names) != len(settings):
                        relayed = dataclasses.replace(event, updated_settings=names)
            except _OutOfTime as out:
                matches.append(Match(entry.hook, event, out.timeout))
                continue
            matches.append(Match(entry.hook, relayed))
        return matches

    def threshold_matches(self, client_name: str) -> list[tuple[HookConfig, RegexTimeout | None]]:
        """The ``min_sessions`` hooks whose client regex matches a setting client, each with the
        RegexTimeout when its regex ran out of time (then whether it matches is unknown)."""
        out: list[tuple[HookConfig, RegexTimeout | None]] = []
        for entry in self._thresholds:
            found = self._searcher(entry, False)
            try:
                if found(entry.client, client_name):
                    out.append((entry.hook, None))
            except _OutOfTime as timed_out:
                out.append((entry.hook, timed_out.timeout))
        return out

    def _searcher(self, entry: _Hook, with_settings: bool) -> Callable[[_Search, str], bool]:
        if not entry.limited:
            return _unlimited
        if entry.shared and with_settings:
            return _Budget(self._budget, self._clock).found
        return self._once

    def thresholds_for(self, client_name: str) -> list[HookConfig]:
        """The ``min_sessions`` hooks whose client regex certainly matches a setting client (those
        that ran out of time are left out: see ``threshold_matches``)."""
        return [hook for hook, timed_out in self.threshold_matches(client_name) if timed_out is None]
