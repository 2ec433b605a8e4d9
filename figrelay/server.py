"""The HTTP side of the intake: Fig's seven routes, authentication, limits, and health.

Every refusal is a 4xx with a JSON body ``{"error": ..., "message": ...}`` that says what is
wrong and how to fix it, and one WARNING line in the log (``RefusalLog``: at most one per reason
and peer per 10 s, then a count). Nothing a client sends produces a 500; a 503 means figrelay
could not store the event (the sender should retry, as Fig will not). No answer carries a
configured credential: every JSON answer and /metrics pass through the log's redactor.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler

from .config import Config
from .connections import track_requests
from .events import ROUTES, EventError, parse_event_body
from .intake import Intake
from .journal_queries import JournalUnavailable, QueryError, ReadConnection, UnknownIdError, open_read_only, query_errors
from .logs import OncePerKey, redactor
from .metrics import Metrics
from .reload import ConfigHolder
from .replay import ReplayPlan, ReplayRequest, answer, plan_replay, request_from_json, schedule_items, stored
from .storage import OutboxError, Store, UnstorableError
from .storage.pg_read import PostgresReader
from .storage.postgresql_store import PostgresStore
from .storage.sqlite import Outbox

log = logging.getLogger("figrelay.server")

INTAKE = web.AppKey("intake", Intake)
HOLDER = web.AppKey("holder", ConfigHolder)
READY = web.AppKey("ready", Callable[[], bool])
METRICS = web.AppKey("metrics", Metrics)
OUTBOX = web.AppKey("outbox", Store)

_JSON_TYPES = ("application/json", "text/json")
_ROUTE_LIST = [f"POST /{r}" for r in ROUTES]
_LOWER_ROUTES = {r.lower(): r for r in ROUTES}


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _json_text(value: Any) -> str:
    # A refusal may quote header bytes that are not UTF-8 (aiohttp hands them on as lone
    # surrogates), which cannot be encoded: they are written as U+FFFD. Any configured credential
    # (in an outbox error on /readyz, a reload's problems) is masked, in whatever form it is there.
    return redactor.redact(_LONE_SURROGATE.sub("\ufffd", json.dumps(value, ensure_ascii=False)))


def _redacted(body: bytes) -> bytes:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:  # not text: no credential can be read in it either
        return body
    clean = redactor.redact(text)
    return body if clean is text else clean.encode("utf-8")


@dataclass(frozen=True, slots=True)
class Refusal:
    """What a refused request was told: the JSON answer's error code and message."""

    error: str
    message: str


REFUSAL = web.ResponseKey("refusal", Refusal)


def error_response(status: int, error: str, message: str, **extra: Any) -> web.Response:
    body = {"error": error, "message": message, **extra}
    response = web.json_response(body, status=status, dumps=_json_text)
    response[REFUSAL] = Refusal(error, message)  # for the refusal's log line (json_errors)
    return response


REFUSAL_LOG_WINDOW = 10.0


class RefusalLog:
    """Logs each refused request as one WARNING line with the route, the peer and the reason (the
    error code and the message it was answered): a wrong secret is the most common Fig
    misconfiguration, and without a line it would only show in a metric. A flood cannot fill the
    journal: at most one line per (status, error, peer) per ``window`` seconds; the others are
    counted, and reported in one line when the window is over (or at shutdown). ``clock`` is
    injectable for tests."""

    def __init__(self, window: float = REFUSAL_LOG_WINDOW, clock: Callable[[], float] = time.monotonic, logger: logging.Logger = log) -> None:
        self._limit = OncePerKey(window, clock)
        self._log = logger
        self._timer: asyncio.TimerHandle | None = None

    def refused(self, what: str, peer: str, status: int, error: str, message: str) -> None:
        """``what`` is the request (``POST /SettingValueChanged``); ``peer`` its address."""
        held = self._limit.admit((status, error, peer))
        if held is None:
            self._summarise_later()
            return
        note = f" ({held} more like it from this peer within {self._limit.window:g}s were not logged one by one)" if held else ""
        # the status and error code are figrelay's own words: in the template, each reason is a
        # kind of its own for the handler's RepeatLimiter; the sender's words are arguments, escaped
        self._log.warning(f"refused %s from %s: {status} {_template_safe(error)}: %s%s", what, peer, message, note)

    def summarise(self, final: bool = False) -> None:
        """Log the counts of windows that are over; with ``final``, of all windows."""
        for key, count in self._limit.drain() if final else self._limit.due():
            requests = f"{count} more request{'s' if count != 1 else ''}"
            if key is None:
                self._log.warning("refused %s from other peers, not logged one by one (too many peers to count apart)", requests)
                continue
            status, error, peer = key  # type: ignore[misc]
            self._log.warning(
                f"refused %s from %s with {status} {_template_safe(error)} within %gs of the one logged, not logged one by one",
                requests, peer, self._limit.window,
            )

    def close(self) -> None:
        """Stop the timer and log every count still held."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.summarise(final=True)

    def _summarise_later(self) -> None:
        if self._timer is not None:
            return
        delay = self._limit.next_due()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop (a unit test): summarise() is called by hand
            return
        if delay is not None:
            self._timer = loop.call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.summarise()
        self._summarise_later()


def _template_safe(text: str) -> str:
    return text.replace("%", "%%")


REFUSALS = web.AppKey("refusals", RefusalLog)


def _peer(request: web.BaseRequest) -> str:
    return request.remote or "a unix socket client"


def _route_of(path: str) -> str | None:
    """The Fig route a path names: its last segment, so a base URI with a path prefix works."""
    last = path.rstrip("/").rsplit("/", 1)[-1]
    return last if last in ROUTES else None


@web.middleware
async def json_errors(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """Answers every refusal as JSON, and logs it: the one place where refusals reach the log, so
    that none is missed (requests that never reach the application: IntakeRequestHandler)."""
    response = await _answer(request, handler)
    if 400 <= response.status < 500:
        refusal = response.get(REFUSAL) or Refusal(response.reason or "refused", "")
        request.app[REFUSALS].refused(f"{request.method} {request.path}", _peer(request), response.status, refusal.error, refusal.message)
    return response


async def _answer(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPNotFound:
        last = request.path.rstrip("/").rsplit("/", 1)[-1]
        hint = ""
        if last.lower() in _LOWER_ROUTES:
            hint = f"; routes are case-sensitive: did you mean /{_LOWER_ROUTES[last.lower()]}?"
        return error_response(404, "not_found", f"no route {request.path}{hint}", routes=_ROUTE_LIST)
    except web.HTTPMethodNotAllowed as exc:
        allowed = sorted(exc.allowed_methods)
        response = error_response(405, "method_not_allowed", f"{request.method} is not allowed on {request.path}; use {', '.join(allowed)}")
        response.headers["Allow"] = ", ".join(allowed)
        return response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(exc.status, exc.reason.lower().replace(" ", "_"), exc.text or exc.reason)


class BodyNotReceived(Exception):
    """The request body did not arrive whole: ``outcome`` for the metrics, ``response`` to answer."""

    def __init__(self, outcome: str, response: web.Response) -> None:
        super().__init__(outcome)
        self.outcome = outcome
        self.response = response


async def _read_limited(request: web.Request, limit: int, timeout: float) -> bytes | None:
    """The body, or None when it is longer than ``limit`` bytes. Raises BodyNotReceived when it
    takes more than ``timeout`` seconds in all (a Content-Length longer than the body ends so)
    or the client leaves; json_errors logs the refusal, without a traceback."""
    length = request.content_length
    if length is not None and length > limit:
        return None
    if request.content.is_eof():  # the whole body came with the headers, as a small event does: no wait, no timer
        body = request.content.read_nowait()
        return body if len(body) <= limit else None
    chunks: list[bytes] = []
    size = 0
    expected = "?" if length is None else str(length)
    try:
        async with asyncio.timeout(timeout):
            while True:
                chunk = await request.content.read(65536)
                if not chunk:
                    return b"".join(chunks)
                size += len(chunk)
                if size > limit:
                    return None
                chunks.append(chunk)
    except TimeoutError:
        response = error_response(
            408, "body_timeout",
            f"the request body did not arrive within {timeout:g}s (intake.body_timeout): got {size} of {expected} bytes; "
            "send the whole body that Content-Length announces",
        )
        response.force_close()  # the rest of the body may still come: the connection is unusable
        raise BodyNotReceived("body_timeout", response) from None
    except (ConnectionError, web.RequestPayloadError) as exc:
        # aiohttp would log either as an "Error handling request" traceback: the client is the
        # cause, so one line is enough. Nobody reads the answer when the client has gone.
        if isinstance(exc, ConnectionError):
            what = f"the client closed the connection after {size} of {expected} bytes of the body"
        else:
            what = f"the body is cut short or malformed after {size} bytes ({exc})"
        response = error_response(400, "incomplete_body", f"{what}; nothing was stored")
        response.force_close()
        raise BodyNotReceived("incomplete_body", response) from None


def peer_key(request: web.Request) -> str:
    """Whose turn a secret check is: the peer's IP address; every unix socket peer shares one."""
    return request.remote or "unix socket"


async def receive_event(request: web.Request) -> web.Response:
    route = _route_of(request.path)
    if route is None:
        raise web.HTTPNotFound()
    holder = request.app[HOLDER]
    live = holder.current
    count = request.app[METRICS].event_count
    verdict = await live.checker.verify(request.headers.get("Authorization"), peer_key(request))
    if verdict.retry_after is not None:  # this peer's secret checks are queued up: not checked
        count(route, "throttled").inc()
        response = error_response(429, "too_many_secret_checks", verdict.message)
        response.headers["Retry-After"] = str(verdict.retry_after)
        return response
    if not verdict.ok:
        count(route, "unauthorized").inc()
        response = error_response(401, "unauthorized", verdict.message)
        response.headers["WWW-Authenticate"] = "Secret"
        return response

    content_type = request.headers.get("Content-Type")
    if content_type is not None:
        mime = content_type.split(";", 1)[0].strip().lower()
        if mime not in _JSON_TYPES and not mime.endswith("+json"):
            count(route, "unsupported_media_type").inc()
            return error_response(415, "unsupported_media_type", f"the body must be JSON (Content-Type: application/json), got {mime or 'an empty type'}")

    limit = live.config.intake.max_body_bytes
    try:
        body = await _read_limited(request, limit, live.config.intake.body_timeout)
    except BodyNotReceived as exc:
        count(route, exc.outcome).inc()
        return exc.response
    if body is None:
        count(route, "too_large").inc()
        return error_response(413, "payload_too_large", f"the body is larger than {limit} bytes (intake.max_body_bytes)")

    try:
        event = parse_event_body(route, body)
    except EventError as exc:
        count(route, "invalid").inc()
        return error_response(400, "invalid_event", f"{route}: {exc}", event=route, field=exc.field, problem=exc.message)

    try:
        accepted = await request.app[INTAKE].accept(event, body)
    except UnstorableError as exc:  # this event, not the outbox: sending it again cannot help
        count(route, "invalid").inc()
        return error_response(400, "invalid_event", f"{route}: the event cannot be stored: {exc}", event=route, field=None, problem=str(exc))
    except OutboxError as exc:
        count(route, "storage_error").inc()
        log.error("cannot store a %s event: %s", route, exc)
        response = error_response(503, "storage_unavailable", "figrelay could not store the event; try again later")
        response.headers["Retry-After"] = "5"
        return response

    count(route, "test" if accepted.test_only else "accepted").inc()
    if accepted.test_only:
        return web.json_response({"status": "test", "event": route, "event_id": accepted.event_id, "relayed": False})
    return web.json_response(
        {
            "status": "accepted",
            "event": route,
            "event_id": accepted.event_id,
            "deliveries": [{"id": d.id, "client": d.client, "hook": d.hook} for d in accepted.deliveries],
        }
    )


async def healthz(request: web.Request) -> web.Response:
    """Alive: the process answers. For liveness probes."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready: listening, the outbox takes a durable write, a configuration is loaded."""
    checks: dict[str, Any] = {"listening": request.app[READY]()}
    outbox = request.app[OUTBOX]
    # Not ready whenever the intake would answer 503: the outbox's health follows every write,
    # the intake's included. While it is unwritable, the outbox's own probe (not this request)
    # finds out when it heals; a tiny write here could fit where an event does not.
    error = None
    if outbox.health.writable:
        try:
            await outbox.check_writable()  # catches a disk that filled up while nothing was written
        except Exception as exc:
            error = str(exc)
    health = outbox.health
    checks["outbox_writable"] = health.writable and error is None
    if not checks["outbox_writable"]:
        checks["outbox_error"] = health.error or error
    if not health.writable:
        checks["outbox_unwritable_since"] = datetime.fromtimestamp(health.since, timezone.utc).isoformat(timespec="seconds")
    holder = request.app[HOLDER]
    checks["config_loaded"] = holder.loaded
    if holder.loaded:
        checks["config_hash"] = holder.current.config.digest
    checks["last_reload_successful"] = holder.last_reload_ok
    ready = checks["listening"] and checks["outbox_writable"] and checks["config_loaded"]
    return web.json_response({"status": "ready" if ready else "not_ready", **checks}, status=200 if ready else 503, dumps=_json_text)


async def metrics_endpoint(request: web.Request) -> web.Response:
    app = request.app
    metrics = app[METRICS]
    try:
        stats = await app[OUTBOX].stats()
    except Exception as exc:  # the rest of the metrics still help most when the outbox fails
        log.error("metrics: cannot read the outbox: %s", exc)
        stats = {}
    metrics.set_outbox(stats, list(app[HOLDER].current.config.clients))
    metrics.outbox_writable.set(1 if app[OUTBOX].health.writable else 0)
    try:
        metrics.sessions.set(await app[OUTBOX].session_count())
    except Exception as exc:
        log.error("metrics: cannot count the run sessions: %s", exc)
    try:
        metrics.set_journal(await app[OUTBOX].journal_stats())
    except Exception as exc:  # the journal's figures keep their last values
        log.error("metrics: cannot measure the journal: %s", exc)
    body, content_type = metrics.render(request.headers.get("Accept"))
    body = _redacted(body)  # labels are config values: a client name must not show a credential
    # set as a header, whole: aiohttp's content_type= would drop "version=...; charset=utf-8"
    return web.Response(body=body, headers={"Content-Type": content_type})


def _is_local(request: web.Request) -> bool:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    if not isinstance(peer, tuple):  # a unix socket
        return True
    try:
        return ipaddress.ip_address(peer[0]).is_loopback
    except ValueError:
        return False


async def reload_config(request: web.Request) -> web.Response:
    """``POST /-/reload``: from this machine, or with the intake secret."""
    holder = request.app[HOLDER]
    checker = holder.current.checker
    if not _is_local(request) and not (checker.required and await checker.check(request.headers.get("Authorization"), peer_key(request))):
        return error_response(403, "forbidden", "reload is allowed from this machine (loopback or unix socket) or with the intake secret")
    result = await holder.reload("POST /-/reload")
    if result.applied:
        return web.json_response(
            {"applied": True, "summary": result.summary, "removed_clients": list(result.removed_clients)}, dumps=_json_text
        )
    return error_response(
        422, "config_rejected", "the new configuration is invalid; the previous one keeps running",
        applied=False, problems=[str(p) for p in result.problems],
    )


REPLAY_MAX_BODY = 1 << 20


async def replay_deliveries(request: web.Request) -> web.Response:
    """``POST /-/replay``: send finished deliveries again, as new deliveries (replay.py); from this
    machine, or with the intake secret. Body: {"ids": [...]} or {"since": t, "until": t, "client":
    ..., "event": ...}, and "dry_run"."""
    holder = request.app[HOLDER]
    checker = holder.current.checker
    if not _is_local(request) and not (checker.required and await checker.check(request.headers.get("Authorization"), peer_key(request))):
        return error_response(403, "forbidden", "replay is allowed from this machine (loopback or unix socket) or with the intake secret")
    try:
        body = await _read_limited(request, REPLAY_MAX_BODY, 30.0)
    except BodyNotReceived as exc:
        return exc.response
    if body is None:
        return error_response(413, "payload_too_large", f"a replay request is at most {REPLAY_MAX_BODY} bytes; replay in parts")
    try:
        ask = request_from_json(json.loads(body or b"{}"))
    except ValueError as exc:  # QueryError, or JSON that does not parse
        message = str(exc) if isinstance(exc, QueryError) else f"the body is not JSON: {exc}"
        return error_response(400, "invalid_replay", message)
    outbox = request.app[OUTBOX]
    if not outbox.journal_enabled:
        return error_response(409, "journal_disabled", "replay selects from the event journal, and journal.enabled is false")
    config = holder.current.config  # one configuration for the whole replay, even across a reload
    try:
        plan = await asyncio.to_thread(_plan_replay, outbox, ask, config, time.time())
    except QueryError as exc:
        status, error = (404, "unknown_id") if isinstance(exc, UnknownIdError) else (400, "invalid_replay")
        return error_response(status, error, str(exc))
    except (JournalUnavailable, *query_errors()) as exc:
        log.error("replay: cannot read the journal: %s", exc)
        return error_response(503, "journal_unavailable", f"cannot read the journal: {exc}")
    if not ask.dry_run and plan.replays:
        try:
            await outbox.replay(stored(plan))
        except OutboxError as exc:
            log.error("replay: cannot store %d replays: %s", len(plan.replays), exc)
            response = error_response(503, "storage_unavailable", f"figrelay could not store the replays: {exc}; try again later")
            response.headers["Retry-After"] = "5"
            return response
        request.app[INTAKE].announce(list(schedule_items(plan)))
        for p in plan.replays:
            log.info(
                "replay %s of delivery %s (%s to %s, %s): body from the %s",
                p.delivery.delivery_id, p.original.delivery_id, p.delivery.route, p.delivery.client, p.original.state, p.body_from,
                extra={"event_id": p.delivery.event_id, "delivery_id": p.delivery.delivery_id, "client": p.delivery.client, "route": p.delivery.route},
            )
    for refusal in plan.refused:
        log.info("replay of %s refused: %s", refusal.id, refusal.reason)
    return web.json_response(answer(plan, ask.dry_run), dumps=_json_text)


def _plan_replay(outbox: Store, ask: ReplayRequest, config: Config, now: float) -> ReplayPlan:
    """Plan on a read-only connection of its own, in a thread: the store's own connections stay
    free for the intake's and the dispatcher's writes while the journal is read."""
    # the one place the server reads the journal itself: the SQLite file, or the shared database
    conn: ReadConnection
    if isinstance(outbox, PostgresStore):
        conn = PostgresReader.open(outbox.target)
    else:
        assert isinstance(outbox, Outbox), "replay planning reads the journal of a known back end"
        conn = open_read_only(outbox.path)
    try:
        return plan_replay(conn, ask, config, now)
    finally:
        conn.close()


async def other_method(request: web.Request) -> web.Response:
    if _route_of(request.path) is None:
        raise web.HTTPNotFound()
    raise web.HTTPMethodNotAllowed(request.method, ["POST"])


def create_app(intake: Intake, holder: ConfigHolder, ready: Callable[[], bool], outbox: Store, metrics: Metrics) -> web.Application:
    # aiohttp's own cap stays high: the configurable, reloadable limit is checked per request.
    app = web.Application(middlewares=[track_requests, json_errors], client_max_size=1024**3)
    app[INTAKE] = intake
    app[HOLDER] = holder
    app[READY] = ready
    app[OUTBOX] = outbox
    app[METRICS] = metrics
    app[REFUSALS] = RefusalLog()
    app.cleanup_ctx.append(_refusal_counts)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_endpoint)
    app.router.add_post("/-/reload", reload_config)
    app.router.add_post("/-/replay", replay_deliveries)
    app.router.add_post("/{path:.*}", receive_event)
    app.router.add_route("*", "/{path:.*}", other_method)
    return app


async def _refusal_counts(app: web.Application) -> AsyncIterator[None]:
    yield
    app[REFUSALS].close()  # the counts still held are logged before the daemon stops


# --- answers for requests that never reach a route ------------------------------------------------


_QUOTED_CREDENTIALS = re.compile(r"((?:proxy-)?authorization:)[^'\"]*", re.IGNORECASE)


def _http_problem(exc: HttpProcessingError) -> str:
    """aiohttp's parser message on one line: its text and the quoted bytes, without the caret line,
    and without the credentials of an Authorization line that it quotes."""
    lines = [line.strip() for line in (exc.message or str(exc)).splitlines()]
    text = " ".join(line for line in lines if line and set(line) != {"^"})
    return _QUOTED_CREDENTIALS.sub(r"\1 ***", text)


class IntakeRequestHandler(RequestHandler):
    """aiohttp's protocol for one connection, with figrelay's answer to a request that never
    reached a route: a JSON body like every other refusal, and a sender's mistake logged as one
    WARNING line through the same RefusalLog as the application's refusals (aiohttp logs an ERROR
    with a traceback for each)."""

    refusals: RefusalLog  # set by _IntakeServer; kept here since aiohttp drops its server reference when the peer leaves

    def handle_error(
        self, request: Any, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:  # as aiohttp: a half-sent answer cannot become another one
            raise ConnectionError("Response is sent already, cannot send another response with the error message")
        peer = _peer(request)
        refusals = self.refusals
        if isinstance(exc, HttpProcessingError):
            status = exc.code if 400 <= exc.code < 500 else 400
            problem = _http_problem(exc)
            response = error_response(status, "bad_request", f"the request is not valid HTTP/1.1: {problem}; send a well-formed HTTP/1.1 request")
            refusals.refused("a malformed request", peer, status, "bad_request", f"the request is not valid HTTP/1.1: {problem}")
        elif isinstance(exc, ConnectionError):
            response = error_response(400, "connection_lost", "the connection was closed during the request")
            refusals.refused("a request", peer, 400, "connection_lost", f"the client closed the connection during its request ({exc})")
        elif exc is None and status != 500:
            response = error_response(status, "request_failed", message or "the request could not be handled; try again")
            if 400 <= status < 500:
                refusals.refused("a request", peer, status, "request_failed", message or "no detail")
            else:
                log.warning("a request from %s ended with %d: %s", peer, status, message or "no detail")
        else:
            log.error("error handling a request from %s", peer, exc_info=exc)
            response = error_response(500, "internal_error", "figrelay failed to handle the request; this is a bug: report it with figrelay's log")
        response.force_close()
        return response


class _IntakeServer(web.Server):
    """aiohttp's protocol factory, making IntakeRequestHandler protocols."""

    refusals: RefusalLog
    """Where its connections log the requests they refuse: the application's own RefusalLog."""

    def __call__(self) -> RequestHandler:
        handler = IntakeRequestHandler(self, loop=self._loop, **self._kwargs)
        handler.refusals = self.refusals
        return handler


class IntakeRunner(web.AppRunner):
    """``web.AppRunner`` whose connections answer malformed requests as figrelay does."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # The application builds its own web.Server; only the protocol it makes differs, and
        # _IntakeServer adds one attribute, so the built server takes the subclass as it is.
        server.__class__ = _IntakeServer
        server.refusals = self.app.get(REFUSALS) or RefusalLog()  # type: ignore[attr-defined]
        return server
