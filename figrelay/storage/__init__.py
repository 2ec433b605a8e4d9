"""Storage: where accepted events wait for delivery, and where finished ones are remembered.

The contract the core depends on is ``Store`` with its value types and errors (base.py, all
re-exported here). One back end implements it today:

- ``figrelay.storage.sqlite.Outbox``: a SQLite file in ``state_dir`` (the default, and the only
  one so far). The daemon and ``figrelay deliveries`` open it; everything else takes a ``Store``.

Where SQLite-specific code lives, which a PostgreSQL back end needs its own of:

- storage/sqlite.py: the outbox's schema and every statement on it, the group commit, the store
  marker, the full-disk recovery, and ``data_version`` (polled by ``daemon._watch_outbox`` to see
  another process's commits; PostgreSQL: LISTEN/NOTIFY).
- journal.py: the journal's tables and its writes, pruning and size measurement, which
  storage/sqlite.py runs inside its own transactions (the value types there, ``JournalEvent``,
  ``JournalDelivery``, ``Attempt``, ``Pruned``, ``JournalStats``, belong to the contract).
- journal_queries.py and replay.py: the read-only queries of ``figrelay events``, ``trace`` and
  replay planning, on a ``sqlite3`` connection of their own (``open_read_only``); they reach the
  file through ``daemon.OUTBOX_FILE`` (commands_journal.py) or ``Outbox.path``
  (``server._plan_replay``).
- cli.py's ``state_dir`` check, which names the SQLite files.
"""

from __future__ import annotations

from .base import (
    ClientHealth,
    Completion,
    NewDelivery,
    OutboxError,
    OutboxHealth,
    OutcomeWrites,
    SessionChange,
    SessionWrite,
    Store,
    StoredDelivery,
    StoreLostError,
    UnstorableError,
)

__all__ = [
    "ClientHealth",
    "Completion",
    "NewDelivery",
    "OutboxError",
    "OutboxHealth",
    "OutcomeWrites",
    "SessionChange",
    "SessionWrite",
    "Store",
    "StoreLostError",
    "StoredDelivery",
    "UnstorableError",
]
