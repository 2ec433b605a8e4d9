"""Storage: where accepted events wait for delivery, and where finished ones are remembered.

The contract the core depends on is ``Store`` with its value types and errors (base.py, all
re-exported here). Two back ends implement it:

- ``figrelay.storage.sqlite.Outbox``: a SQLite file in ``state_dir``, the default; one process
  owns it (the journal's tables are journal.py's, written in the outbox's own transactions);
- ``figrelay.storage.postgresql_store.PostgresStore``: a PostgreSQL database shared by several
  replicas (``storage: postgresql://…``); postgresql.py parses the URL, connects with retries and
  migrates the schema under a lock, and figrelay/lanes.py decides which replica sends to which
  client.

The daemon (daemon.serve) and ``figrelay deliveries`` (commands._open_outbox) choose the back end
from the configuration; everything else takes a ``Store``. Where each back end has code of its
own:

- noticing other processes' commits: SQLite's ``data_version``, polled by
  ``daemon._watch_outbox``; PostgreSQL's ``LISTEN/NOTIFY`` (``PostgresStore.listen``);
- the journal's read side (journal_queries.py, replay.py) runs the same SQL on a read-only
  connection of its own: ``journal_queries.open_read_only`` for the SQLite file,
  ``pg_read.PostgresReader`` for PostgreSQL;
- cli.py's ``state_dir`` check, which names the SQLite files (unused with ``storage:``).
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
