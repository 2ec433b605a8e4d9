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

With thousands of hooks, searching every regex for every event would cost in proportion to the
hooks. Names repeat, though, so a Rules (one per loaded configuration) keeps, in bounded LRU
caches, which of an event type's hooks a client name matches and whether a setting regex is found
in a setting name; a name seen for the first time is searched only by the hooks whose client regex
can match it (an index by the literal prefix a regex such as ``^OrdersApi$`` requires); and hooks
sharing a regex share its searches. A cached result costs no search and so none of the budget; a
search that ran out of time is never cached, so the next event with that name searches again.
"""

from __future__ import annotations

import dataclasses
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any

import regex

from .config import HookConfig
from .events import FigEvent, SettingValueChanged
from .hookregex import DEFAULT_TIME_LIMIT, HookPattern, required_prefix, time_limited


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
    ident: int = 0
    """The same for every hook with this pattern in one Rules: its results' cache key."""
    everything: bool = False
    """``.*``: found in every name, the empty one included, so never searched."""
    prefix: str = ""
    """A client regex's required prefix (hookregex.required_prefix): a name that does not start
    with it is not searched. '' when there is none known."""

    @classmethod
    def of(cls, key: str, pattern: HookPattern, ident: int = 0) -> _Search:
        prefix = required_prefix(pattern) if key == "client_regex" else ""
        return cls(key, pattern, time_limited(pattern), ident, pattern.pattern == ".*", prefix)


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


CLIENT_CACHE_SIZE = 4096
"""Setting-client names (per event type) whose matching hooks a Rules keeps."""
CLIENT_CACHE_HOOKS = 1_000_000
"""At most this many hook references across the client cache's entries (an entry costs one plus
the number of hooks it lists), so that names matching thousands of hooks cannot fill memory."""
SETTING_CACHE_SIZE = 16384
"""(setting regex, setting name) results a Rules keeps."""
MAX_CACHED_NAME = 256
"""Longer names are matched every time rather than kept: names come from whoever can post to Fig."""


class _LRU:
    """A bounded mapping that forgets its least recently used entries first: at most ``size``
    entries whose costs add up to at most ``max_cost``. Not thread-safe (matching runs on the
    event loop)."""

    __slots__ = ("_cost", "_data", "_max_cost", "_size")

    def __init__(self, size: int, max_cost: int) -> None:
        self._data: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._size = size
        self._max_cost = max_cost
        self._cost = 0

    def get(self, key: Hashable) -> Any:
        """The value, or None when absent (values are never None)."""
        item = self._data.get(key)
        if item is None:
            return None
        self._data.move_to_end(key)
        return item[0]

    def put(self, key: Hashable, value: Any, cost: int = 1) -> None:
        if cost > self._max_cost or self._size <= 0:
            return
        data = self._data
        old = data.pop(key, None)
        if old is not None:
            self._cost -= old[1]
        data[key] = (value, cost)
        self._cost += cost
        while len(data) > self._size or self._cost > self._max_cost:
            self._cost -= data.popitem(last=False)[1][1]

    def __len__(self) -> int:
        return len(self._data)

    @property
    def cost(self) -> int:
        return self._cost


class _Route:
    """The hooks of one event type, in hook order, indexed by the prefix their client regex
    requires, so that a name seen for the first time is searched only by the hooks that can match
    it (and those whose regex requires no known prefix)."""

    __slots__ = ("always", "entries", "lengths", "prefixes", "route")

    def __init__(self, route: str, entries: tuple[_Hook, ...]) -> None:
        self.route = route
        self.entries = entries
        prefixes: dict[str, list[int]] = {}
        always: list[int] = []
        for position, entry in enumerate(entries):
            prefix = entry.client.prefix
            if prefix:
                prefixes.setdefault(prefix, []).append(position)
            else:
                always.append(position)
        self.prefixes = {prefix: tuple(positions) for prefix, positions in prefixes.items()}
        self.lengths = tuple(sorted({len(prefix) for prefix in prefixes}))
        self.always = tuple(always)

    def candidates(self, name: str) -> Iterable[_Hook]:
        """The hooks whose client regex may be found in ``name``, in hook order."""
        if not self.prefixes:
            return self.entries
        hits: list[int] = []
        for length in self.lengths:
            if length > len(name):
                break
            found = self.prefixes.get(name[:length])
            if found is not None:
                hits.extend(found)
        if not hits:
            positions: Iterable[int] = self.always
        else:
            hits.extend(self.always)
            hits.sort()
            positions = hits
        entries = self.entries
        return [entries[position] for position in positions]


class Rules:
    """The hooks of one configuration, grouped by event type once at load time.

    Setting-client names and setting names repeat (an estate has tens to hundreds of setting
    clients), so a Rules remembers, in bounded LRU caches, which of an event type's hooks a client
    name matches, and whether a setting regex is found in a setting name. A reload builds a new
    Rules, so a changed hook takes effect with empty caches. Only completed searches are kept: a
    search that ran out of time is made again on the next event with that name, never taken as a
    non-match. A result served from a cache costs no search, so it uses none of the hook's time
    budget for that event.
    """

    def __init__(
        self,
        hooks: Iterable[HookConfig],
        regex_budget: float = DEFAULT_TIME_LIMIT,
        clock: Callable[[], float] = time.process_time,
        *,
        client_cache_size: int = CLIENT_CACHE_SIZE,
        setting_cache_size: int = SETTING_CACHE_SIZE,
    ) -> None:
        """``clock`` measures the budget; it must count what ``regex``'s timeout counts, the
        process's CPU time (tests inject a fake one). A cache size of 0 turns that cache off."""
        self._budget = regex_budget
        self._clock = clock
        self._once = _once(regex_budget)
        relay: dict[str, list[_Hook]] = {}
        thresholds: list[_Hook] = []
        searches: dict[tuple[Any, ...], _Search] = {}

        def search(key: str, pattern: HookPattern) -> _Search:
            # one _Search per distinct pattern: hooks sharing a regex share its results
            ident = (key, type(pattern), pattern.pattern, pattern.flags)
            found = searches.get(ident)
            if found is None:
                found = searches[ident] = _Search.of(key, pattern, len(searches))
            return found

        for hook in hooks:
            client = search("client_regex", hook.client_regex)
            setting = search("setting_regex", hook.setting_regex) if hook.setting_regex is not None else None
            shared = setting is not None and setting.limited is not None
            entry = _Hook(hook, client, setting, shared, shared or client.limited is not None)
            if hook.min_sessions is not None:
                thresholds.append(entry)
            else:
                relay.setdefault(hook.event, []).append(entry)
        self._relay = {event: _Route(event, tuple(entries)) for event, entries in relay.items()}
        self._thresholds = _Route(_THRESHOLDS, tuple(thresholds))
        self._clients = _LRU(client_cache_size, CLIENT_CACHE_HOOKS)
        self._settings = _LRU(setting_cache_size, setting_cache_size)

    @property
    def has_thresholds(self) -> bool:
        return bool(self._thresholds.entries)

    def cache_sizes(self) -> tuple[int, int]:
        """(client names, setting results) currently cached: for tests and diagnostics."""
        return len(self._clients), len(self._settings)

    def match(self, event: FigEvent) -> list[Match]:
        """The deliveries one received event makes, in hook order, including hooks whose regex ran
        out of time (``Match.timed_out``)."""
        route = self._relay.get(event.route)
        if route is None:
            return []
        client = event.setting_client
        settings = event.updated_settings if isinstance(event, SettingValueChanged) else None
        if client is None:  # SecurityEvent: every hook, the client regex does not apply
            candidates: tuple[_Hook, ...] = route.entries
        else:
            cached = self._clients.get((route.route, client)) if len(client) <= MAX_CACHED_NAME else None
            if cached is None:
                return self._match_searching(route, event, client, settings)
            candidates = cached
        if settings is None:
            return [Match(entry.hook, event) for entry in candidates]
        matches: list[Match] = []
        narrowing = _Narrowing(event, settings)
        for entry in candidates:
            if entry.setting is None:
                matches.append(Match(entry.hook, event))
                continue
            try:
                relayed = self._narrow(entry, narrowing, None)
            except _OutOfTime as out:
                matches.append(Match(entry.hook, event, out.timeout))
                continue
            if relayed is not None:
                matches.append(Match(entry.hook, relayed))
        return matches

    def _match_searching(self, route: _Route, event: FigEvent, client: str, settings: tuple[str, ...] | None) -> list[Match]:
        """``match`` for a client name not in the cache: search every hook's client regex (each
        distinct pattern once), with each hook's budget shared by its client and setting searches,
        and keep which hooks the name matches unless a client search ran out of time."""
        matches: list[Match] = []
        matched: list[_Hook] = []
        known: dict[int, bool] = {}
        keep = len(client) <= MAX_CACHED_NAME
        narrowing = _Narrowing(event, settings) if settings is not None else None
        for entry in route.candidates(client):
            ident = entry.client.ident
            found_client = known.get(ident)
            found = self._searcher(entry, settings is not None)
            try:
                if found_client is None:
                    found_client = known[ident] = found(entry.client, client)
                if not found_client:
                    continue
                matched.append(entry)
                relayed: FigEvent | None = event
                if narrowing is not None and entry.setting is not None:
                    relayed = self._narrow(entry, narrowing, found)
            except _OutOfTime as out:
                if out.timeout.key == "client_regex":
                    keep = False
                matches.append(Match(entry.hook, event, out.timeout))
                continue
            if relayed is not None:
                matches.append(Match(entry.hook, relayed))
        if keep:
            self._clients.put((route.route, client), tuple(matched), len(matched) + 1)
        return matches

    def _narrow(self, entry: _Hook, narrowing: _Narrowing, found: Callable[[_Search, str], bool] | None) -> FigEvent | None:
        """The event with only the setting names the hook's setting regex is found in, in their
        order; None when there are none. ``found`` searches within the hook's budget for this
        event (None: made when a search is needed). Raises _OutOfTime."""
        setting = entry.setting
        assert setting is not None
        done = narrowing.by_regex
        ident = setting.ident
        if ident in done:  # another hook with the same setting regex, on this event
            return done[ident]
        event, settings = narrowing.event, narrowing.settings
        if setting.everything:
            relayed = event if settings else None
            done[ident] = relayed
            return relayed
        cache = self._settings
        names: list[str] = []
        for name in settings:
            cacheable = len(name) <= MAX_CACHED_NAME
            hit = cache.get((ident, name)) if cacheable else None
            if hit is None:
                if found is None:
                    found = self._searcher(entry, True)
                hit = found(setting, name)
                if cacheable:
                    cache.put((ident, name), hit)
            if hit:
                names.append(name)
        if not names:
            relayed = None
        elif len(names) == len(settings):
            relayed = event
        else:
            key = tuple(names)
            relayed = narrowing.by_names.get(key)
            if relayed is None:  # hooks narrowing to the same names share one event (and one body)
                relayed = narrowing.by_names[key] = dataclasses.replace(event, updated_settings=key)
        done[ident] = relayed
        return relayed

    def threshold_matches(self, client_name: str) -> list[tuple[HookConfig, RegexTimeout | None]]:
        """The ``min_sessions`` hooks whose client regex matches a setting client, each with the
        RegexTimeout when its regex ran out of time (then whether it matches is unknown)."""
        route = self._thresholds
        if not route.entries:
            return []
        keep = len(client_name) <= MAX_CACHED_NAME
        if keep:
            cached = self._clients.get((route.route, client_name))
            if cached is not None:
                return [(entry.hook, None) for entry in cached]
        out: list[tuple[HookConfig, RegexTimeout | None]] = []
        matched: list[_Hook] = []
        known: dict[int, bool] = {}
        for entry in route.candidates(client_name):
            ident = entry.client.ident
            found_client = known.get(ident)
            try:
                if found_client is None:
                    found_client = known[ident] = self._searcher(entry, False)(entry.client, client_name)
            except _OutOfTime as timed_out:
                keep = False
                out.append((entry.hook, timed_out.timeout))
                continue
            if found_client:
                matched.append(entry)
                out.append((entry.hook, None))
        if keep:
            self._clients.put((route.route, client_name), tuple(matched), len(matched) + 1)
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


class _Narrowing:
    """One SettingValueChanged event's narrowings, made once per setting regex (not per hook):
    its results by the regex's ident, and the narrowed events by their names."""

    __slots__ = ("by_names", "by_regex", "event", "settings")

    def __init__(self, event: FigEvent, settings: tuple[str, ...]) -> None:
        self.event = event
        self.settings = settings
        self.by_regex: dict[int, FigEvent | None] = {}
        self.by_names: dict[tuple[str, ...], FigEvent] = {}


_THRESHOLDS = "min_sessions"
"""The client cache's key for the ``min_sessions`` hooks (not an event type's name)."""
