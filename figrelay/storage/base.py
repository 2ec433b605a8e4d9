"""The storage contract: what the core (intake, dispatcher, daemon, server, commands) asks of a store.

``Store`` lists every method and property the core calls, each with the promise a back end must
keep (durability, ordering, idempotence); the value types below are what goes in and comes out.
The core is typed against ``Store``; only the wiring that opens a store, and the few places that
use SQLite itself (see this package's docstring), know which back end they have.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from .. import journal

# --- errors --------------------------------------------------------------------------------------


class OutboxError(Exception):
    """The outbox could not be opened or written."""


class UnstorableError(OutboxError):
    """This one write cannot be stored as it is (a text SQLite cannot encode, a broken
    constraint): trying it again will not help, and it says nothing about the outbox's health."""


class StoreLostError(OutboxError):
    """The marker says a store existed, but the database is missing, empty or another store."""


# --- values --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OutboxHealth:
    """Whether the outbox takes writes. While it does not, ``error`` is the last storage error;
    ``since`` (wall clock) is when the current state began."""

    writable: bool
    since: float
    error: str | None = None


@dataclass(frozen=True, slots=True)
class NewDelivery:
    id: str
    client: str
    route: str
    body: bytes
    hook: int | None
    created_at: float
    dead_reason: str | None = None
    """Store it as a dead letter at once, with this as its last error (a hook regex that ran out
    of time: the operator decides whether to send it)."""
    event_id: str | None = None
    """The accepted event it was made from (the journal's key)."""


@dataclass(frozen=True, slots=True)
class StoredDelivery:
    id: str
    client: str
    route: str
    body: bytes
    hook: int | None
    created_at: float
    attempts: int
    next_attempt_at: float
    state: str
    last_error: str | None
    dead_at: float | None
    event_id: str | None = None


@dataclass(frozen=True, slots=True)
class SessionWrite:
    client: str
    key: str
    connected: bool


@dataclass(frozen=True, slots=True)
class SessionChange:
    """One counted change: a new session connected or a known one left."""

    client: str
    key: str
    connected: bool
    count: int
    """Fig's ``count``: after a connect, the sessions including the new one; before a
    disconnect, the sessions still including the leaving one."""


Completion = Callable[["SessionChange | None"], "tuple[Sequence[NewDelivery], journal.JournalEvent | None]"]
"""What an event makes once its session change is counted: its deliveries (including the
MinRunSessions crossings the count raises) and its journal event. Called inside the store's
transaction, so it must be quick and pure (no I/O, no await)."""


@dataclass(frozen=True, slots=True)
class OutcomeWrites:
    """The outbox writes one send's outcome makes."""

    now: float
    delivered: Sequence[str] = ()
    dead: Sequence[tuple[str, int | None, str]] = ()
    """(id, attempts, reason); attempts None keeps the stored count (expired without a try)"""
    retry: Sequence[tuple[str, int, float, str]] = ()
    """(id, attempts, next_attempt_at, reason)"""
    attempts: Sequence[journal.Attempt] = ()
    """The tries this outcome ends, for the journal."""


@dataclass(frozen=True, slots=True)
class ClientHealth:
    """A client's circuit as the dispatcher sees it: ``closed`` (sending), ``open`` (failing:
    one probe at a time, the rest wait)."""

    client: str
    state: str
    failures: int
    since: float | None = None
    next_probe_at: float | None = None
    last_error: str | None = None


# --- the contract --------------------------------------------------------------------------------


@runtime_checkable
class Store(Protocol):
    """A durable store of pending deliveries, dead letters, run sessions, circuits and the journal.

    Every write is durable when its coroutine returns (a crash of the process or the machine
    keeps it), and refused as a whole when it raises: UnstorableError for a value this one write
    cannot store (trying again will not help), OutboxError when the store cannot be written
    (``health`` then says so, and the store recovers by itself). tests/test_storage_contract.py
    holds every back end to these signatures."""

    journal_enabled: bool
    """``journal.enabled``: accept, record_outcomes and replay write the journal, prune_journal keeps it; set at start and on reload."""

    @property
    def health(self) -> OutboxHealth:
        """Whether the store takes writes now, read without I/O (the intake answers 503, /readyz not ready, while it does not)."""
        ...

    # --- lifecycle: the daemon and the operator commands

    async def open(self, *, accept_empty: bool = False) -> None:
        """Open or create the store and prove a durable write; OutboxError if unusable, StoreLostError if a store that existed is gone."""
        ...

    async def close(self) -> None:
        """Let the writes already queued commit, then release the store; safe after a failed ``open``."""
        ...

    # --- the intake

    async def accept(self, deliveries: Sequence[NewDelivery], sessions: Sequence[SessionWrite] = (), event: journal.JournalEvent | None = None) -> None:
        """Commit the deliveries (due now), session changes and journal event in one transaction, durably, before returning."""
        ...

    async def accept_counted(self, session: SessionWrite, complete: Completion) -> tuple[SessionChange | None, Sequence[NewDelivery]]:
        # The change is applied against the committed sessions (None when it changes nothing: a
        # repeated Connected, an unknown Disconnected); ``complete`` turns it into deliveries and a
        # journal event inside the transaction. Serialised per setting client across every process
        # sharing the store, so two replicas counting at once see each other's change.
        """Count one run-session change and commit what it makes with it, once across replicas; return (change, deliveries stored)."""
        ...

    async def session_count(self) -> int:
        """How many run sessions are open now, across every process sharing the store (/metrics)."""
        ...

    # --- the dispatcher

    async def pending_in_order(self, client: str | None = None, limit: int | None = None) -> list[tuple[str, str, float]]:
        """(id, client, created_at) of every pending delivery (of one client; the oldest ``limit``) in acceptance order: the order they are sent in."""
        ...

    async def fetch(self, ids: Sequence[str]) -> dict[str, StoredDelivery]:
        """The stored rows of these ids, by id; an id left out was delivered or purged meanwhile (not an error)."""
        ...

    async def record_outcomes(self, outcomes: OutcomeWrites) -> None:
        """Commit one send's outcome (and its journal attempts) in one transaction; idempotent, so a failed record can be repeated."""
        ...

    async def set_client_health(self, health: ClientHealth) -> None:
        """Remember a client's circuit state, replacing the last one, for ``figrelay deliveries`` and the next start."""
        ...

    async def client_health(self) -> dict[str, ClientHealth]:
        """The last remembered circuit state of every client that has one, by client name."""
        ...

    # --- the daemon's chores, /metrics and ``figrelay deliveries``

    async def stats(self) -> dict[str, tuple[int, int, float | None]]:
        """Per client with stored deliveries: (pending, dead, created_at of the oldest pending or None)."""
        ...

    async def expire_waiting(self, clients: Iterable[str], max_age: float, now: float, reason: str) -> list[tuple[str, str]]:
        """Dead-letter, in one transaction, these clients' pending deliveries accepted before ``now - max_age``; return (id, client)."""
        ...

    async def list(self, state: str | None = None, client: str | None = None, limit: int = 1000) -> list[StoredDelivery]:
        """Stored deliveries (of one state, of one client), at most ``limit``, in acceptance order."""
        ...

    async def revive(self, ids: Iterable[str] = (), *, client: str | None = None, all_dead: bool = False) -> list[tuple[str, str]]:
        """Make the chosen dead letters pending again, due now, in one transaction with the journal; return (id, client)."""
        ...

    async def purge(self, ids: Iterable[str] = (), *, client: str | None = None, all_dead: bool = False) -> int:
        """Delete the chosen dead letters in one transaction with the journal; return how many."""
        ...

    async def purge_waiting(self, client: str) -> int:
        """Delete one (removed) client's pending deliveries in one transaction with the journal; return how many."""
        ...

    async def check_writable(self) -> None:
        """A real, durable write (``/readyz``); raises OutboxError when the store cannot be written."""
        ...

    # --- the journal: ``POST /-/replay``, retention, /metrics

    async def replay(self, replays: Sequence[tuple[journal.JournalDelivery, bytes]]) -> None:
        """Store each (journal row, body) as a new pending delivery due now, with its journal row, all in one transaction or none."""
        ...

    async def prune_journal(self, *, now: float, retention: float, max_bytes: int, batch: int = journal.PRUNE_BATCH) -> journal.Pruned:
        """Cut the journal to ``retention`` and ``max_bytes`` in small transactions between other writes; keep events still stored."""
        ...

    async def journal_stats(self) -> journal.JournalStats:
        """The journal's size and oldest event, read without waiting for the store's writes or holding them up."""
        ...


__all__ = [
    "ClientHealth",
    "NewDelivery",
    "OutboxError",
    "OutboxHealth",
    "OutcomeWrites",
    "Completion",
    "SessionChange",
    "SessionWrite",
    "Store",
    "StoreLostError",
    "StoredDelivery",
    "UnstorableError",
]
