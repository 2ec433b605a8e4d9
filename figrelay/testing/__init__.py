"""figrelay's test kit: test a delivery plugin inside a real figrelay daemon, the way it will run.

- ``Daemon`` / ``DaemonFactory`` (figrelay/testing/daemon.py): ``figrelay run`` as a child process
  on a free port with a temporary state dir, its log captured; post events, request paths, wait
  for a log line, read ``/metrics``, signal, stop or kill it; ``figrelay check`` a configuration.
  ``figrelay_config()`` writes a whole test configuration from a list of clients and hooks.
- ``FigSender`` (sender.py): posts Fig's exact payloads (the realistic samples and the Test
  button's seven), with Fig's headers and secret, fields overridable.
- ``Receiver`` / ``http_receiver()`` (receiver.py): a recording HTTP server that can be scripted
  to fail: a status with Retry-After (``Answer``), a hang until released (``Hang``), a closed
  connection (``Close``), a sequence of them and then 200.
- ``StateReader`` (state.py): the outbox and the event journal of a state dir, read-only, and
  ``wait_for_deliveries``; ``wait_until`` (waiting.py) for anything else.

Under pytest (with pytest-asyncio) the same parts are fixtures, registered through the
``pytest11`` entry point: ``figrelay_daemon``, ``recording_receiver``,
``recording_receiver_factory`` and ``fig_sender`` (fixtures.py). See docs/plugins.md, "Testing a
plugin". Everything here is importable without pytest too.
"""

from __future__ import annotations

from .daemon import FAST_DELIVERY, TEST_SECRET, CheckResult, Daemon, DaemonFactory, Metrics, figrelay_config, write_config
from .receiver import Answer, Close, Hang, Received, Receiver, ReceiverFactory, Scripted, http_receiver
from .sender import FIG_CONTENT_TYPE, FIG_TEST_BUTTON_TIMEOUT, FIG_TIMEOUT, FigSender, Sent, fig_body, fig_json
from .state import STORE_FILE, OutboxRow, StateReader
from .waiting import DEFAULT_TIMEOUT, wait_until

__all__ = [
    "DEFAULT_TIMEOUT",
    "FAST_DELIVERY",
    "FIG_CONTENT_TYPE",
    "FIG_TEST_BUTTON_TIMEOUT",
    "FIG_TIMEOUT",
    "STORE_FILE",
    "TEST_SECRET",
    "Answer",
    "CheckResult",
    "Close",
    "Daemon",
    "DaemonFactory",
    "FigSender",
    "Hang",
    "Metrics",
    "OutboxRow",
    "Received",
    "Receiver",
    "ReceiverFactory",
    "Scripted",
    "Sent",
    "StateReader",
    "fig_body",
    "fig_json",
    "figrelay_config",
    "http_receiver",
    "wait_until",
    "write_config",
]

try:  # the fixtures exist where pytest does (they need pytest-asyncio too); the rest of the kit needs neither
    import pytest  # noqa: F401
except ImportError:
    pass
else:
    from .fixtures import fig_sender, figrelay_daemon, recording_receiver, recording_receiver_factory  # noqa: F401
