"""Connection limits for the intake: how many connections, how long a request head may take,
and how many file descriptors the process may open.

aiohttp bounds neither the number of connections nor the time a client may take to send its
request line and headers: a client that sends half its headers is kept until the keep-alive
timeout, and about a thousand such clients use up the default 1,024 file descriptors, after
which asyncio's accept loop logs ``Too many open files`` in a storm (CPython 3.11 keeps calling
``accept()`` after EMFILE and schedules one retry per failure). So figrelay accepts connections
itself and hands each to aiohttp:

- ``ConnectionGate`` owns the accept loop of every listening socket. Beyond
  ``intake.max_connections`` open connections, a new one gets a complete ``503`` JSON answer
  with ``Retry-After`` and is closed. When accepting fails for lack of descriptors or memory,
  it pauses accepting for a second and says so in one bounded WARNING line.
- Each served connection is wrapped in a ``_GuardedConnection``. While no request is being
  handled, bytes that arrive start a timer of ``intake.header_timeout``; the ``track_requests``
  middleware stops it when a request reaches the application. A connection whose request head
  does not arrive in time gets a ``408`` JSON answer and is closed. A new connection must start
  its first request within the same time. An idle keep-alive connection (no bytes at all) is
  left to aiohttp's ``keepalive_timeout`` (``KEEPALIVE_TIMEOUT``).
- ``DescriptorLimit`` raises the soft ``RLIMIT_NOFILE`` as far as ``max_connections`` needs,
  and lowers the effective limit, with one WARNING saying what to set, when the hard limit is
  too low.

Only public aiohttp and asyncio API is used: ``web.Server`` is a protocol factory (aiohttp's
documented low-level server), ``web.BaseSite`` is the site interface, ``loop.add_reader`` and
``loop.connect_accepted_socket`` accept and attach connections, and the middleware finds the
connection's wrapper through ``request.transport.get_protocol()``. The request body's timeout
is ``intake.body_timeout``, applied where the body is read (``server._read_limited``).
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import resource
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import cast

from aiohttp import StreamReader, web

log = logging.getLogger("figrelay.connections")

KEEPALIVE_TIMEOUT = 75.0
"""Seconds an idle keep-alive connection stays open. Above the 60 s after which .NET's
HttpClient (Fig) drops an idle pooled connection, so Fig never sends a request on a connection
that figrelay is closing at the same moment."""

DESCRIPTOR_RESERVE = 320
"""File descriptors kept for everything other than intake connections: outgoing deliveries (the
daemon's HTTP client opens at most 200 connections), plugins' own connections (SMTP), the
outbox's SQLite files, the configuration watcher, and refusals being written."""

ACCEPT_BATCH = 100
"""Connections accepted per event-loop turn, so a flood cannot starve requests in progress."""

ACCEPT_RETRY_DELAY = 1.0
"""Seconds accepting pauses after accept() fails (out of descriptors or memory), unless a
connection closes sooner and so gives a descriptor back."""

REFUSAL_LINGER = 2.0
"""Seconds a refused connection stays open to read the client's request, so the client gets the
503 instead of a reset (closing a socket with unread data sends RST)."""

MAX_LINGERING_REFUSALS = 32
"""Refusals that linger at once; beyond that a refusal is written and closed at once, so
refusing cannot itself use up descriptors."""

REPORT_EVERY = 60.0
"""A warning that repeats is logged once, then summarised at most once per this many seconds."""


# --- bounded warnings --------------------------------------------------------------------------


class RepeatedWarning:
    """A WARNING that may repeat thousands of times a second: the first occurrence is logged at
    once, later ones are counted and summarised in one line per ``every`` seconds."""

    def __init__(self, logger: logging.Logger, every: float = REPORT_EVERY) -> None:
        self._log = logger
        self._every = every
        self._suppressed = 0
        self._last = ""
        self._flush: asyncio.TimerHandle | None = None

    def __call__(self, message: str) -> None:
        if self._flush is None:
            self._log.warning("%s", message)
            self._flush = asyncio.get_running_loop().call_later(self._every, self._summarise)
        else:
            self._suppressed += 1
            self._last = message

    def _summarise(self) -> None:
        self._flush = None
        if self._suppressed:
            count, self._suppressed = self._suppressed, 0
            self._log.warning("%s (%d more like this in the last %gs)", self._last, count, self._every)
            self._flush = asyncio.get_running_loop().call_later(self._every, self._summarise)

    def close(self) -> None:
        """Log what is still counted, and stop the timer."""
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
            if self._suppressed:
                self._log.warning("%s (%d more like this)", self._last, self._suppressed)
                self._suppressed = 0


# --- file descriptors ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DescriptorPlan:
    """How many connections fit under an open-file limit, and the soft limit to ask for."""

    soft_limit: int
    max_connections: int
    wanted: int
    needed: int
    """Descriptors the configured ``max_connections`` needs, the reserve included."""

    @property
    def short(self) -> bool:
        return self.max_connections < self.wanted


def plan_descriptors(wanted: int, soft: int, hard: int, in_use: int) -> DescriptorPlan:
    """The soft limit to set and the connections to allow for ``wanted`` connections, given the
    current limits (``resource.RLIM_INFINITY`` for none) and the descriptors open now."""
    needed = in_use + DESCRIPTOR_RESERVE + wanted
    ceiling = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    limit = soft if soft == resource.RLIM_INFINITY else max(soft, ceiling)
    if limit == resource.RLIM_INFINITY or limit >= needed:
        return DescriptorPlan(limit, wanted, wanted, needed)
    room = limit - in_use - DESCRIPTOR_RESERVE
    if room < 1:
        # The reserve does not fit at all: share what there is, rather than refuse to start.
        room = max(1, (limit - in_use) // 2)
    return DescriptorPlan(limit, min(wanted, room), wanted, needed)


def open_descriptors() -> int:
    """How many file descriptors this process has open (an estimate where /proc is missing)."""
    for folder in ("/proc/self/fd", "/dev/fd"):
        try:
            return len(os.listdir(folder)) - 1  # the listing's own descriptor
        except OSError:
            continue
    return 64


class DescriptorLimit:
    """The process's open-file limit (``RLIMIT_NOFILE``), raised as far as the intake needs."""

    def __init__(self, in_use: int | None = None) -> None:
        self.in_use = open_descriptors() if in_use is None else in_use
        """Descriptors open before the intake listens: the baseline the plan adds to."""

    def allow(self, wanted: int) -> tuple[int, str | None]:
        """Raise the soft limit for ``wanted`` connections. Returns the connections to allow and,
        when that is fewer than ``wanted``, a warning that says what to set."""
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        plan = plan_descriptors(wanted, soft, hard, self.in_use)
        if plan.soft_limit != soft:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (plan.soft_limit, hard))
                log.info("raised the open-file limit from %d to %d for intake.max_connections %d", soft, plan.soft_limit, wanted)
            except (OSError, ValueError) as exc:
                log.debug("cannot raise the open-file limit from %d to %d: %s", soft, plan.soft_limit, exc)
                plan = plan_descriptors(wanted, soft, soft, self.in_use)
        if not plan.short:
            return plan.max_connections, None
        suggest = max(plan.needed, 65536)
        return plan.max_connections, (
            f"the open-file limit is {plan.soft_limit} (hard limit {'unlimited' if hard == resource.RLIM_INFINITY else hard}), "
            f"but intake.max_connections {wanted} needs about {plan.needed} file descriptors: figrelay accepts at most "
            f"{plan.max_connections} connections at once and refuses the rest with 503. Raise the limit: "
            f"LimitNOFILE={suggest} in the systemd unit (systemctl edit figrelay), or `ulimit -n {suggest}` "
            f"before starting; or lower intake.max_connections"
        )


# --- raw answers written outside aiohttp ------------------------------------------------------


def raw_json_response(status: int, error: str, message: str, retry_after: int | None = None) -> bytes:
    """A complete HTTP/1.1 answer with a JSON error body that closes the connection, for the
    moments when no aiohttp request exists (refused, or the head never arrived)."""
    body = json.dumps({"error": error, "message": message}, ensure_ascii=False).encode()
    head = [
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
        "Content-Type: application/json; charset=utf-8",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    if retry_after is not None:
        head.append(f"Retry-After: {retry_after}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def _peer(transport: asyncio.BaseTransport | None) -> str:
    peer = transport.get_extra_info("peername") if transport is not None else None
    if isinstance(peer, tuple) and peer:
        return f"[{peer[0]}]:{peer[1]}" if ":" in str(peer[0]) else f"{peer[0]}:{peer[1]}"
    return "a unix socket client"


# --- connections --------------------------------------------------------------------------------


class _GuardedConnection(asyncio.Protocol):
    """aiohttp's protocol for one connection, with a timer for the request head."""

    def __init__(self, gate: ConnectionGate, inner: asyncio.Protocol) -> None:
        self._gate = gate
        self._inner = inner
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._in_request = False
        self._unread_body: StreamReader | None = None
        self._released = False

    # asyncio.Protocol: each call goes on to aiohttp's RequestHandler unchanged.

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport = cast(asyncio.Transport, transport)
        self._inner.connection_made(transport)
        self._start_timer()  # the first request must begin within header_timeout, too

    def data_received(self, data: bytes) -> None:
        if self._unread_body is not None and self._unread_body.is_eof():
            self._unread_body = None
        if not self._in_request and self._timer is None and self._unread_body is None:
            self._start_timer()
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timer()
        self.release()
        self._transport = None
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    # the request's progress, from track_requests

    def request_started(self) -> None:
        self._in_request = True
        self._stop_timer()

    def request_finished(self, body: StreamReader) -> None:
        # Bytes of a next request that arrive from now on start the timer again. A pipelined
        # request already buffered is handled at once; a partial one stays bounded by
        # aiohttp's keep-alive timeout. While aiohttp still reads and drops the rest of a body
        # the handler did not read (a 401 or 413 answered early), bytes are body, not a head:
        # aiohttp bounds that by its lingering_time, then closes.
        self._in_request = False
        if not body.is_eof():
            self._unread_body = body

    def release(self) -> None:
        """Stop counting this connection against max_connections (idempotent)."""
        if not self._released:
            self._released = True
            self._gate._connections.discard(self)
            self._gate._descriptor_freed()

    def _start_timer(self) -> None:
        timeout = self._gate.header_timeout
        self._timer = asyncio.get_running_loop().call_later(timeout, self._head_timed_out, timeout)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _head_timed_out(self, timeout: float) -> None:
        self._timer = None
        transport = self._transport
        if transport is None or transport.is_closing() or self._in_request:
            return
        self._gate.report_head_timeout(
            f"closed the connection from {_peer(transport)}: its request line and headers did not arrive "
            f"within {timeout:g}s (intake.header_timeout); answered 408"
        )
        transport.write(raw_json_response(
            408, "header_timeout",
            f"the request line and headers did not arrive within {timeout:g}s (intake.header_timeout); send the whole request head at once",
        ))
        transport.close()  # after the 408 is flushed; aiohttp's connection_lost follows


class _Refusal(asyncio.Protocol):
    """A connection over ``max_connections``: answered 503 and closed without reaching aiohttp."""

    def __init__(self, gate: ConnectionGate, answer: bytes, linger: bool) -> None:
        self._gate = gate
        self._answer = answer
        self._linger = linger
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport = cast(asyncio.Transport, transport)
        transport.write(self._answer)
        if self._linger and transport.can_write_eof():
            # Half-close and read what the client sends until it closes, so it sees the 503.
            transport.write_eof()
            self._timer = asyncio.get_running_loop().call_later(REFUSAL_LINGER, transport.close)
        else:
            transport.close()

    def data_received(self, data: bytes) -> None:
        pass  # the request is not wanted

    def eof_received(self) -> bool:
        return False  # the client is done: close

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._gate._refusals.discard(self)
        self._gate._descriptor_freed()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()


class ConnectionGate:
    """Accepts the intake's connections and hands them to aiohttp's server, up to
    ``max_connections`` at once; refuses the rest with 503; times each request head."""

    def __init__(self, server: web.Server, *, max_connections: int, header_timeout: float, descriptors: DescriptorLimit | None = None) -> None:
        self._server = server
        self._descriptors = descriptors or DescriptorLimit()
        self._connections: set[_GuardedConnection] = set()
        self._refusals: set[_Refusal] = set()
        self._attaching: set[asyncio.Task[None]] = set()
        self._listening: dict[socket.socket, asyncio.TimerHandle | None] = {}
        self._refused = RepeatedWarning(log)
        self._timed_out = RepeatedWarning(log)
        self._starved = RepeatedWarning(log)
        self.configured_max = 0
        self.max_connections = 0
        self.header_timeout = header_timeout
        self.counted: Callable[[str], object] = lambda reason: None
        """Hears each refusal: ``too_many_connections``, ``header_timeout``, ``accept_failed`` (for metrics)."""
        self.configure(max_connections=max_connections, header_timeout=header_timeout)

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    def configure(self, *, max_connections: int, header_timeout: float) -> None:
        """Apply ``intake.max_connections`` and ``intake.header_timeout`` (at start and on
        reload). Connections already open keep their current head timer."""
        self.header_timeout = header_timeout
        if max_connections == self.configured_max:
            return
        allowed, warning = self._descriptors.allow(max_connections)
        if warning:
            log.warning("%s", warning)
        self.configured_max, self.max_connections = max_connections, allowed

    # --- accepting ---

    def serve(self, sock: socket.socket) -> None:
        """Accept connections on a bound, listening socket."""
        sock.setblocking(False)  # accept() runs in a loop until it would block
        self._listening[sock] = None
        asyncio.get_running_loop().add_reader(sock.fileno(), self._accept, sock)

    def stop_serving(self, sock: socket.socket) -> None:
        """Stop accepting on ``sock`` and close it; with the last socket, abort refusals."""
        if sock not in self._listening:
            return
        resume = self._listening.pop(sock)
        if resume is not None:
            resume.cancel()
        else:
            asyncio.get_running_loop().remove_reader(sock.fileno())
        sock.close()
        if not self._listening:
            for task in list(self._attaching):
                task.cancel()
            for refusal in list(self._refusals):
                refusal.abort()
            for report in (self._refused, self._timed_out, self._starved):
                report.close()

    def _accept(self, sock: socket.socket) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue  # the client gave up while waiting in the backlog
            except OSError as exc:
                self._pause(sock, exc)
                return
            conn.setblocking(False)
            if len(self._connections) < self.max_connections:
                self._attach(conn, _GuardedConnection(self, self._server()))
            else:
                self._refuse(conn)

    def _pause(self, sock: socket.socket, exc: OSError) -> None:
        # CPython 3.11's own accept loop keeps calling accept() after EMFILE and schedules a
        # retry for each failure, which is how 1.6 million log lines came about: stop for a
        # while instead, with the connections waiting in the listen backlog.
        loop = asyncio.get_running_loop()
        loop.remove_reader(sock.fileno())
        self._listening[sock] = loop.call_later(ACCEPT_RETRY_DELAY, self._resume, sock)
        self.counted("accept_failed")
        if exc.errno == errno.EMFILE:
            soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
            hint = (
                f"figrelay's open-file limit is {soft}, with {len(self._connections)} intake connections open: "
                "raise LimitNOFILE= or lower intake.max_connections"
            )
        elif exc.errno == errno.ENFILE:
            hint = "the system's open-file table is full: see sysctl fs.file-max and what else holds files"
        elif exc.errno in (errno.ENOBUFS, errno.ENOMEM):
            hint = "the system is short of memory for sockets"
        else:
            hint = "figrelay keeps retrying"
        self._starved(
            f"cannot accept connections: {exc.strerror or exc} ({errno.errorcode.get(exc.errno or 0, exc.errno)}); "
            f"accepting pauses for {ACCEPT_RETRY_DELAY:g}s and new connections wait; {hint}"
        )

    def _resume(self, sock: socket.socket) -> None:
        handle = self._listening.get(sock)
        if handle is not None:
            handle.cancel()
            self._listening[sock] = None
            asyncio.get_running_loop().add_reader(sock.fileno(), self._accept, sock)

    def _descriptor_freed(self) -> None:
        # A closed connection gave a descriptor back: accept again now rather than after the
        # pause. Bounded: at most one failed accept() per closed connection.
        for sock, handle in list(self._listening.items()):
            if handle is not None:
                self._resume(sock)

    def _refuse(self, conn: socket.socket) -> None:
        linger = len(self._refusals) < MAX_LINGERING_REFUSALS
        answer = raw_json_response(
            503, "too_many_connections",
            f"figrelay has {len(self._connections)} connections open, the most it accepts at once (intake.max_connections); "
            "try again shortly",
            retry_after=1,
        )
        refusal = _Refusal(self, answer, linger)
        self._refusals.add(refusal)
        self.counted("too_many_connections")
        self._refused(
            f"refused a connection: {len(self._connections)} connections are open, the most intake.max_connections "
            f"({self.configured_max}{'' if self.max_connections == self.configured_max else f', lowered to {self.max_connections} by the open-file limit'}) "
            "allows; answered 503. If a client holds connections open, find it; else raise intake.max_connections"
        )
        self._attach(conn, refusal)

    def _attach(self, conn: socket.socket, protocol: _GuardedConnection | _Refusal) -> None:
        if isinstance(protocol, _GuardedConnection):
            self._connections.add(protocol)  # counted now: accept runs ahead of connection_made
        task = asyncio.get_running_loop().create_task(self._connect(conn, protocol))
        self._attaching.add(task)
        task.add_done_callback(self._attaching.discard)

    async def _connect(self, conn: socket.socket, protocol: _GuardedConnection | _Refusal) -> None:
        try:
            await asyncio.get_running_loop().connect_accepted_socket(lambda: protocol, conn)
        except BaseException as exc:
            # The peer went away before the transport existed, or shutdown cancelled us.
            conn.close()
            if isinstance(protocol, _GuardedConnection):
                protocol.release()
            else:
                self._refusals.discard(protocol)
            if isinstance(exc, asyncio.CancelledError):
                raise
            log.debug("a new connection failed before it was served: %s", exc)

    def report_head_timeout(self, message: str) -> None:
        self.counted("header_timeout")
        self._timed_out(message)


# --- the site and the middleware ----------------------------------------------------------------


class IntakeSite(web.BaseSite):
    """``web.SockSite`` with figrelay's ``ConnectionGate`` in place of asyncio's accept loop."""

    __slots__ = ("_gate", "_name", "_sock")

    def __init__(self, runner: web.BaseRunner, sock: socket.socket, gate: ConnectionGate) -> None:
        super().__init__(runner)
        self._sock = sock
        self._gate = gate
        if sock.family == socket.AF_UNIX:
            self._name = f"http://unix:{sock.getsockname()}:"
        else:
            host, port = sock.getsockname()[:2]
            self._name = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    @property
    def name(self) -> str:
        return self._name

    async def start(self) -> None:
        await super().start()
        self._gate.serve(self._sock)

    async def stop(self) -> None:
        self._gate.stop_serving(self._sock)
        await super().stop()


def _guarded(request: web.Request) -> _GuardedConnection | None:
    transport = request.transport
    protocol = transport.get_protocol() if transport is not None else None
    return protocol if isinstance(protocol, _GuardedConnection) else None


@web.middleware
async def track_requests(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """Tells the connection that its request head has arrived (stopping the head timer) and when
    the application is done with it. Without a ConnectionGate (tests' TestServer) it does nothing."""
    connection = _guarded(request)
    if connection is None:
        return await handler(request)
    connection.request_started()
    try:
        return await handler(request)
    finally:
        connection.request_finished(request.content)


__all__ = [
    "KEEPALIVE_TIMEOUT",
    "ConnectionGate",
    "DescriptorLimit",
    "IntakeSite",
    "RepeatedWarning",
    "plan_descriptors",
    "raw_json_response",
    "track_requests",
]
