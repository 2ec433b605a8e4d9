"""The pytest fixtures of figrelay's test kit. pytest finds them through the ``pytest11`` entry
point ``figrelay = "figrelay.testing"``, in any project where figrelay is installed: a plugin's
tests ask for them by name, with nothing to import or configure.

- ``figrelay_daemon``: a DaemonFactory on the test's ``tmp_path``; every daemon it started is
  ended after the test.
- ``recording_receiver``: a running Receiver on a free loopback port.
- ``recording_receiver_factory``: more of them (``await recording_receiver_factory()``).
- ``fig_sender``: ``fig_sender(daemon)`` gives a FigSender to that daemon, with its secret.

They are async fixtures of pytest-asyncio (declared with ``pytest_asyncio.fixture``, so they work
in its strict mode as in auto mode); each runs in the test's own event loop. Without
pytest-asyncio, a test that asks for one fails saying what to install.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from .daemon import Daemon, DaemonFactory
from .receiver import Receiver, ReceiverFactory
from .sender import FigSender

__all__ = ["fig_sender", "figrelay_daemon", "recording_receiver", "recording_receiver_factory"]

_DAEMONS_SECRET = object()

try:
    from pytest_asyncio import fixture as async_fixture
except ImportError:  # say so when a test asks for a fixture, rather than "fixture not found"

    def async_fixture(function: Any) -> Any:  # type: ignore[no-redef]
        def needs_pytest_asyncio() -> None:
            pytest.fail(
                f"figrelay.testing's fixture {function.__name__!r} needs pytest-asyncio, which is not installed here: "
                "pip install 'figrelay[testing]' (pytest and pytest-asyncio)",
                pytrace=False,
            )

        needs_pytest_asyncio.__doc__ = function.__doc__
        return pytest.fixture(name=function.__name__)(needs_pytest_asyncio)


@async_fixture
async def figrelay_daemon(tmp_path: Path) -> AsyncIterator[DaemonFactory]:
    """Starts real ``figrelay run`` processes: ``daemon = await figrelay_daemon(config_text)``
    writes the configuration to ``tmp_path/figrelay.yaml`` (``name=`` for another file) and waits
    until the daemon listens on its free port; ``await figrelay_daemon.check(config_text)`` runs
    ``figrelay check``. Every daemon is killed after the test if it still runs."""
    factory = DaemonFactory(tmp_path)
    try:
        yield factory
    finally:
        await factory.aclose()


@async_fixture
async def recording_receiver_factory() -> AsyncIterator[ReceiverFactory]:
    """``await recording_receiver_factory()`` starts another recording HTTP receiver (``port=`` for
    a given port); all of them stop after the test."""
    factory = ReceiverFactory()
    try:
        yield factory
    finally:
        await factory.aclose()


@async_fixture
async def recording_receiver(recording_receiver_factory: ReceiverFactory) -> Receiver:
    """A recording HTTP receiver on a free loopback port (``.url``), answering 200 "ok" until
    scripted otherwise (``script()``, ``always()``, ``responder``)."""
    return await recording_receiver_factory()


@pytest.fixture
def fig_sender() -> Callable[..., FigSender]:
    """``fig_sender(daemon)`` is a FigSender posting to that daemon with its intake secret;
    ``fig_sender(url, secret="…")`` posts to any address."""

    def make(target: Daemon | str, secret: str | object | None = _DAEMONS_SECRET) -> FigSender:
        if isinstance(target, Daemon):
            if not target.url:
                raise AssertionError("fig_sender(daemon): the daemon has no address yet; start it first (figrelay_daemon starts it by default)")
            return FigSender(target.url, target.secret if secret is _DAEMONS_SECRET else secret)  # type: ignore[arg-type]
        return FigSender(target, None if secret is _DAEMONS_SECRET else secret)  # type: ignore[arg-type]

    return make
