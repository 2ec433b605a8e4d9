"""Which hooks an event matches, with Fig's filter semantics (FIG.md).

- the client regex is *searched* (``re.search``) in the setting client's name, case-sensitively;
- SettingValueChanged also searches each changed setting name; the relayed event lists only the
  matching names, in their order, and a hook with no matching name sends nothing;
- SecurityEvent ignores the client regex: every SecurityEvent hook gets every event;
- each matching hook is one delivery, even when two hooks name the same client.

Hooks with ``min_sessions`` never relay Fig's own MinRunSessions events: figrelay raises those
itself from run-session counts (sessions.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass

from .config import HookConfig
from .events import FigEvent, SettingValueChanged


@dataclass(frozen=True, slots=True)
class Match:
    hook: HookConfig
    event: FigEvent
    """The event to relay: for SettingValueChanged, narrowed to the matching setting names."""


class Rules:
    """The hooks of one configuration, grouped by event type once at load time."""

    def __init__(self, hooks: Iterable[HookConfig]) -> None:
        relay: dict[str, list[HookConfig]] = {}
        thresholds: list[HookConfig] = []
        for hook in hooks:
            if hook.min_sessions is not None:
                thresholds.append(hook)
            else:
                relay.setdefault(hook.event, []).append(hook)
        self._relay = {event: tuple(hooks) for event, hooks in relay.items()}
        self._thresholds = tuple(thresholds)

    @property
    def has_thresholds(self) -> bool:
        return bool(self._thresholds)

    def match(self, event: FigEvent) -> list[Match]:
        """The deliveries one received event makes, in hook order."""
        hooks = self._relay.get(event.route, ())
        if not hooks:
            return []
        client = event.setting_client
        matches: list[Match] = []
        for hook in hooks:
            if client is not None and not hook.client_regex.search(client):
                continue
            relayed = event
            if isinstance(event, SettingValueChanged) and hook.setting_regex is not None:
                pattern = hook.setting_regex
                names = tuple(name for name in event.updated_settings if pattern.search(name))
                if not names:
                    continue
                if len(names) != len(event.updated_settings):
                    relayed = dataclasses.replace(event, updated_settings=names)
            matches.append(Match(hook, relayed))
        return matches

    def thresholds_for(self, client_name: str) -> list[HookConfig]:
        """The ``min_sessions`` hooks whose client regex matches a setting client."""
        return [hook for hook in self._thresholds if hook.client_regex.search(client_name)]
