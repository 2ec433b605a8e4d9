"""Run sessions per setting client, and the MinRunSessions crossings they make (FIG.md).

A session is identified within its client by (Instance, Hostname, IpAddress, StartTime): its
Connected and Disconnected events carry the same values. A repeated Connected is not counted
twice and a Disconnected for an unknown session changes nothing, so a count never goes negative.

Crossings, for a hook with minimum ``min``:
- on connect, with ``count`` including the new session: ``count == min`` -> MinimumRestored(count);
- on disconnect, with ``count`` still including the leaving one: ``count == min`` ->
  BelowMinimum(count - 1).
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from .config import HookConfig
from .events import ClientStatusChanged, ConnectionEvent, MinRunSessions, RunSessionsEvent
from .storage.base import SessionChange, SessionWrite

SessionKey = str
"""A session's identity as stored: JSON of [Instance, Hostname, IpAddress, StartTime ticks]."""


def session_key(event: ClientStatusChanged) -> SessionKey:
    ticks = event.start_time.ticks if event.start_time is not None else None
    return json.dumps([event.instance, event.hostname, event.ip_address, ticks], separators=(",", ":"))


def session_write(event: ClientStatusChanged) -> SessionWrite:
    """The session change a status event asks for, before it is counted."""
    return SessionWrite(event.client_name, session_key(event), event.connection_event == ConnectionEvent.Connected)


class SessionTracker:
    """The live sessions of every setting client. Not thread-safe: used from the event loop."""

    def __init__(self, sessions: Iterable[tuple[str, SessionKey]] = ()) -> None:
        self._sessions: dict[str, set[SessionKey]] = {}
        for client, key in sessions:
            self._sessions.setdefault(client, set()).add(key)

    def count(self, client: str) -> int:
        return len(self._sessions.get(client, ()))

    def total(self) -> int:
        return sum(len(s) for s in self._sessions.values())

    def all(self) -> list[tuple[str, SessionKey]]:
        return [(client, key) for client, keys in self._sessions.items() for key in keys]

    def clients(self) -> dict[str, int]:
        return {client: len(keys) for client, keys in self._sessions.items()}

    def apply(self, event: ClientStatusChanged) -> SessionChange | None:
        """Count a status event; None when it changes nothing (a repeat or an unknown session)."""
        return self.apply_write(session_write(event))

    def apply_write(self, write: SessionWrite) -> SessionChange | None:
        """Count one session's connect or disconnect; None when it changes nothing."""
        key = write.key
        live = self._sessions.setdefault(write.client, set())
        if write.connected:
            if key in live:
                return None
            live.add(key)
            return SessionChange(write.client, key, True, len(live))
        if key not in live:
            if not live:
                del self._sessions[write.client]
            return None
        count = len(live)
        live.discard(key)
        if not live:
            del self._sessions[write.client]
        return SessionChange(write.client, key, False, count)

    def undo(self, change: SessionChange) -> None:
        """Reverse an applied change (when storing it failed)."""
        live = self._sessions.setdefault(change.client, set())
        if change.connected:
            live.discard(change.key)
        else:
            live.add(change.key)
        if not live:
            del self._sessions[change.client]


def crossings(change: SessionChange, status: ClientStatusChanged, hooks: Iterable[HookConfig]) -> list[tuple[HookConfig, MinRunSessions]]:
    """The MinRunSessions events that one counted change raises, one per hook that crosses."""
    out: list[tuple[HookConfig, MinRunSessions]] = []
    for hook in hooks:
        minimum = hook.min_sessions
        if minimum is None or change.count != minimum:
            continue
        if change.connected:
            kind, reported = RunSessionsEvent.MinimumRestored, change.count
        else:
            kind, reported = RunSessionsEvent.BelowMinimum, change.count - 1
        event = MinRunSessions(
            client_name=change.client,
            instance=status.instance,
            run_sessions=reported,
            run_sessions_event=kind,
            link=status.link,
            is_test=status.is_test,
        )
        out.append((hook, event))
    return out
