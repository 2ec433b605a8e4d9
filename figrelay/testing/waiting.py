"""Waiting in tests without sleeping for a guessed time: poll a condition until it holds, with a
deadline that only a failing test ever reaches, and fail saying what was awaited and what was
seen instead."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable

__all__ = ["DEFAULT_TIMEOUT", "poll", "wait_until"]

DEFAULT_TIMEOUT = 20.0
"""Seconds a wait may take before the test fails. Generous: a busy CI machine is slow, and a
passing test never waits for the deadline."""

POLL_INTERVAL = 0.01


async def poll(
    predicate: Callable[[], bool | Awaitable[bool]], timeout: float, what: str, seen: Callable[[], str | Awaitable[str]] | None = None
) -> None:
    """Call ``predicate`` (sync or async) until it returns true. After ``timeout`` seconds raise
    AssertionError: ``timed out after 20s waiting for <what>; <seen()>``."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            message = f"timed out after {timeout:g}s waiting for {what}"
            if seen is not None:
                found = seen()
                if inspect.isawaitable(found):
                    found = await found
                message += f"; {found}"
            raise AssertionError(message)
        await asyncio.sleep(POLL_INTERVAL)


async def wait_until(
    predicate: Callable[[], bool | Awaitable[bool]],
    timeout: float = DEFAULT_TIMEOUT,
    what: str = "condition",
    seen: Callable[[], str | Awaitable[str]] | None = None,
) -> None:
    """Poll ``predicate`` until it holds; fail after ``timeout`` seconds naming ``what`` was
    awaited and, when ``seen`` is given, what it reports was there instead."""
    await poll(predicate, timeout, what, seen)
