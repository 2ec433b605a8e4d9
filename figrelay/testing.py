"""Helpers for testing delivery plugins against real local servers (used by figrelay's own tests
and available to third-party plugin authors).

    async with http_receiver() as receiver:
        receiver.responder = lambda request: web.Response(status=503, headers={"Retry-After": "1"})
        ... deliver to receiver.url ...
        assert receiver.requests[0].json["ClientName"] == "OrdersApi"
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    query: dict[str, str] = field(default_factory=dict)
    at: float = field(default_factory=time.monotonic)

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """A local HTTP server that records every request. ``responder`` (sync or async) decides each
    answer from the Received request; returning None answers 200 "ok"."""

    url: str = ""
    requests: list[Received] = field(default_factory=list)
    responder: Callable[[Received], Any] | None = None

    def paths(self) -> list[str]:
        return [r.path for r in self.requests]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        received = Received(request.path, dict(request.headers), await request.read(), dict(request.query))
        self.requests.append(received)
        answer = self.responder(received) if self.responder else None
        if asyncio.iscoroutine(answer):
            answer = await answer
        return answer if isinstance(answer, web.StreamResponse) else web.Response(text="ok")


@asynccontextmanager
async def http_receiver(host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[Receiver]:
    """Run a Receiver on ``port`` (a free one by default) for the duration of the block."""
    receiver = Receiver()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", receiver._handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    receiver.url = f"http://{host}:{port}"
    try:
        yield receiver
    finally:
        await runner.cleanup()
