"""A recording HTTP receiver: a real local aiohttp server that keeps every request it gets and
answers as a test scripts it: a status (with ``Retry-After``), a hang until released, a closed
connection, or a sequence of these and then 200.

    async with http_receiver() as receiver:
        receiver.script(Answer(503, "busy", retry_after=1), Answer(503))   # two failures, then 200
        ... deliver to receiver.url ...
        first, second, third = await receiver.wait_for(3)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .waiting import DEFAULT_TIMEOUT, poll

__all__ = ["Answer", "Close", "Hang", "Received", "Receiver", "ReceiverFactory", "Scripted", "http_receiver"]


@dataclass
class Received:
    """One request as the receiver got it."""

    path: str
    headers: dict[str, str]
    """As sent (a plain dict: the header names keep the sender's case; ``header()`` ignores it)."""
    body: bytes
    query: dict[str, str] = field(default_factory=dict)
    at: float = field(default_factory=time.monotonic)
    """``time.monotonic()`` when the request's body had arrived."""
    method: str = "POST"
    answered: str = ""
    """How the receiver answered: ``"200"``, ``"503 Retry-After: 1"``, ``"hanging"``, ``"closed"``...
    (empty while the answer is being decided)."""

    @property
    def json(self) -> Any:
        """The body decoded as JSON."""
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        """A header's value by its name in any case, or None."""
        wanted = name.lower()
        return next((v for k, v in self.headers.items() if k.lower() == wanted), None)

    def describe(self) -> str:
        """One line for a failure message: method, path, answer and the first bytes of the body."""
        body = self.body[:80].decode("utf-8", "replace") + ("…" if len(self.body) > 80 else "")
        return f"{self.method} {self.path}{'?' if self.query else ''}{'&'.join(f'{k}={v}' for k, v in self.query.items())} -> {self.answered or '?'}: {body}"


@dataclass(frozen=True, slots=True)
class Answer:
    """An HTTP answer: ``Answer(503, "busy", retry_after=2)``, ``Answer(202, "")``,
    ``Answer(400, {"error": "bad"})`` (a dict or list is sent as JSON)."""

    status: int = 200
    body: str | bytes | dict[str, Any] | list[Any] = "ok"
    retry_after: float | str | None = None
    """Sent as the ``Retry-After`` header: seconds, or an HTTP-date as text."""
    headers: Mapping[str, str] = field(default_factory=dict)

    def response(self) -> web.Response:
        headers = dict(self.headers)
        if self.retry_after is not None:
            value = self.retry_after
            headers["Retry-After"] = value if isinstance(value, str) else (str(int(value)) if float(value).is_integer() else str(value))
        if isinstance(self.body, (dict, list)):
            return web.json_response(self.body, status=self.status, headers=headers)
        if isinstance(self.body, bytes):
            return web.Response(status=self.status, body=self.body, headers=headers)
        return web.Response(status=self.status, text=self.body, headers=headers)

    def describe(self) -> str:
        return f"{self.status}" + (f" Retry-After: {self.retry_after}" if self.retry_after is not None else "")


@dataclass(frozen=True, slots=True)
class Hang:
    """Never answer, until ``Receiver.release()``; then answer ``then``. The sender sees its own
    timeout (a hung target)."""

    then: Answer = field(default_factory=Answer)


@dataclass(frozen=True, slots=True)
class Close:
    """Close the connection without answering: the sender sees the server disconnect.
    ``reset=True`` aborts it (a TCP reset) instead of closing it cleanly."""

    reset: bool = False


Scripted = Answer | Hang | Close
"""What a receiver can be told to do with a request."""


@dataclass
class Receiver:
    """A local HTTP server that records every request (``requests``) and answers it:

    1. with the next of the answers queued by ``script()``, while there are any;
    2. else as ``responder`` decides, if set: a function (sync or async) of the Received
       request that returns an ``Answer``, ``Hang``, ``Close``, an aiohttp response, or None;
    3. else (or when the responder returns None) with ``default``: 200 "ok" unless ``always()``
       changed it.

    Run one with ``http_receiver()``, or the ``recording_receiver`` pytest fixture.
    """

    url: str = ""
    """``http://127.0.0.1:PORT``, with no trailing slash."""
    requests: list[Received] = field(default_factory=list)
    responder: Callable[[Received], Any] | None = None
    default: Scripted = field(default_factory=Answer)
    _script: deque[Scripted] = field(default_factory=deque, repr=False)
    _gate: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    _hanging: int = field(default=0, repr=False)

    # --- scripting --------------------------------------------------------------------------------

    def script(self, *answers: Scripted, then: Scripted | None = None) -> Receiver:
        """Answer the next requests with ``answers``, in order, and after them with ``then``
        (when given; else as before: ``responder`` or ``default``). Adds to answers already queued."""
        self._script.extend(answers)
        if then is not None:
            self.default = then
        return self

    def always(self, answer: Scripted) -> Receiver:
        """Answer every request from now on with ``answer`` (after any queued by ``script()``)."""
        self.default = answer
        return self

    def release(self) -> None:
        """Let every request hanging now (``Hang``) have its answer. Later ``Hang`` answers hang again."""
        self._gate.set()
        self._gate = asyncio.Event()

    @property
    def hanging(self) -> int:
        """Requests hanging now (including any whose sender has given up waiting)."""
        return self._hanging

    @property
    def scripted(self) -> int:
        """Scripted answers not used yet."""
        return len(self._script)

    # --- reading --------------------------------------------------------------------------------

    def paths(self) -> list[str]:
        return [r.path for r in self.requests]

    def clear(self) -> None:
        """Forget the requests received so far."""
        self.requests.clear()

    async def wait_for(
        self, count: int = 1, *, path: str | None = None, where: Callable[[Received], bool] | None = None, timeout: float = DEFAULT_TIMEOUT
    ) -> list[Received]:
        """Wait until at least ``count`` requests (to ``path``, and for which ``where`` holds, when
        given) have arrived; return those, oldest first. On time-out, fail with what was awaited
        and every request that did arrive."""

        def matching() -> list[Received]:
            return [r for r in self.requests if (path is None or r.path == path) and (where is None or where(r))]

        what = f"{count} request{'s' if count != 1 else ''}" + (f" to {path}" if path else "") + (" matching the condition" if where else "")
        await poll(lambda: len(matching()) >= count, timeout, f"{what} at the receiver {self.url}", self._arrived)
        return matching()

    def _arrived(self) -> str:
        if not self.requests:
            return "no request arrived"
        lines = [f"  {r.describe()}" for r in self.requests[-20:]]
        skipped = " (the last 20 shown)" if len(self.requests) > 20 else ""
        return f"{len(self.requests)} request{'s' if len(self.requests) != 1 else ''} arrived{skipped}:\n" + "\n".join(lines)

    # --- answering ------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        received = Received(request.path, dict(request.headers), await request.read(), dict(request.query), method=request.method)
        self.requests.append(received)
        answer: Any = None
        if self._script:
            answer = self._script.popleft()
        elif self.responder is not None:
            answer = self.responder(received)
            if asyncio.iscoroutine(answer):
                answer = await answer
        if answer is None:
            answer = self.default
        if isinstance(answer, web.StreamResponse):
            received.answered = str(answer.status)
            return answer
        if isinstance(answer, Hang):
            received.answered = "hanging"
            gate = self._gate
            self._hanging += 1
            try:
                await gate.wait()
            finally:
                self._hanging -= 1
            received.answered = f"hung, then {answer.then.describe()}"
            return answer.then.response()
        if isinstance(answer, Close):
            received.answered = "reset" if answer.reset else "closed"
            if request.transport is not None:
                if answer.reset:
                    request.transport.abort()
                else:
                    request.transport.close()
            return web.Response()  # never written: the connection is gone
        if not isinstance(answer, Answer):
            raise TypeError(f"a receiver's answer must be an Answer, Hang, Close, an aiohttp response or None, got {type(answer).__name__}")
        received.answered = answer.describe()
        return answer.response()


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
        receiver.release()  # a hung request answers rather than being cancelled mid-wait
        await runner.cleanup()


class ReceiverFactory:
    """Starts receivers on demand and stops them all in ``aclose()`` (the ``recording_receiver_factory``
    fixture): ``await factory()`` gives a new Receiver on a free port, ``await factory(port=8080)`` on that one."""

    def __init__(self) -> None:
        self._stack = contextlib.AsyncExitStack()

    async def __call__(self, port: int = 0, host: str = "127.0.0.1") -> Receiver:
        return await self._stack.enter_async_context(http_receiver(host, port))

    async def aclose(self) -> None:
        await self._stack.aclose()
